"""Adapters / cluster: etcd for high availability (lease, election, fenced writes, facts).

config.py   ClusterConfig and the key space under /setpoint/<cluster>/
link.py     ClusterLink: one node's lease, campaign, view of the cluster, fenced txns
etcd.py     a narrow typed etcd v3 client (aetcd's gRPC stubs, our channel)
errors.py   etcd failures as Setpoint errors

The link (and with it grpc and aetcd, ~20 MB) is imported on first use: an agent without
--etcd-endpoints never loads it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from agent.adapters.cluster.config import ClusterConfig, Keys
from agent.adapters.cluster.errors import ClusterRefused, ClusterUnavailable, LeaseLost

if TYPE_CHECKING:
    from agent.adapters.cluster.link import ClusterLink, ClusterView, Term

__all__ = [
    "ClusterConfig",
    "ClusterLink",
    "ClusterRefused",
    "ClusterUnavailable",
    "ClusterView",
    "Keys",
    "LeaseLost",
    "Term",
]
_FROM_LINK = {"ClusterLink", "ClusterView", "Term"}


def __getattr__(name: str) -> object:
    if name in _FROM_LINK:
        return getattr(importlib.import_module("agent.adapters.cluster.link"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
