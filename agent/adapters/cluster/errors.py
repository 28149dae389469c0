"""Adapters / cluster: etcd failures as Setpoint errors (see agent.errors).

TransientError
├── ClusterUnavailable   etcd unreachable, no quorum, timed out: the answer is unknown
└── LeaseLost            etcd no longer knows this node's lease: re-grant, re-campaign
PermanentError
└── ClusterRefused       etcd refused the request itself (bad argument, auth, TLS files)
"""

from __future__ import annotations

from agent.errors import PermanentError, TransientError


class ClusterUnavailable(TransientError):
    """etcd did not answer in time or has no quorum; a write may or may not have happened."""


class LeaseLost(TransientError):
    """The lease expired or was revoked: keys attached to it are gone."""


class ClusterRefused(PermanentError):
    """etcd (or the local configuration) refused the request; retrying cannot help."""
