"""Adapters / cluster: etcd for high availability (lease, election, fenced writes, facts).

config.py   ClusterConfig and the key space under /setpoint/<cluster>/
link.py     ClusterLink: one node's lease, campaign, view of the cluster, fenced txns
etcd.py     a narrow typed etcd v3 client (aetcd's gRPC stubs, our channel)
errors.py   etcd failures as Setpoint errors
"""

from agent.adapters.cluster.config import ClusterConfig, Keys
from agent.adapters.cluster.errors import ClusterRefused, ClusterUnavailable, LeaseLost
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
