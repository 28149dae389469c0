"""Adapters / cluster: what a node needs to join (endpoints, names, lease TTL) and the key space.

Every key of a cluster lives under `/setpoint/<cluster>/`:

    election/<lease id hex>   = node name   attached to the node's lease (etcd's election recipe)
    facts/<node>/<name>       = value       attached to the lease: they vanish with the node
    digests/<node>            = digest      attached to the lease
    state/<key>               = value       durable; written only by the leader's fenced txns
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ClusterConfig:
    """How this node joins the cluster.

    `endpoints` are etcd client URLs (`http://10.0.0.1:2379`, `https://...` or `host:port`),
    tried in order; list the member on this host first. `ttl` is the lease TTL in whole seconds
    (etcd grants whole seconds; 3.4 raises anything below its minimum, 2 s with default raft
    timing). `margin` is how long before the lease could expire the link stops claiming it
    (default ttl/4): it covers the time between checking leadership and acting on it.
    `ca`, `cert` and `key` are PEM files for TLS (`cert` and `key` together, for client auth).
    `timeout` bounds reads and fenced writes.
    """

    endpoints: Sequence[str]
    cluster: str
    node: str
    ttl: int = 2
    margin: float | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    timeout: float = 2.0
    keys: Keys = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoints", tuple(self.endpoints))
        if not self.endpoints:
            raise ValueError("cluster: at least one etcd endpoint is needed")
        for what, name in (("cluster", self.cluster), ("node", self.node)):
            if not name or "/" in name or name != name.strip():
                raise ValueError(f"cluster: invalid {what} name {name!r} (non-empty, no '/')")
        if self.ttl < 1:
            raise ValueError(f"cluster: lease TTL must be at least 1 s, not {self.ttl}")
        if not 0 <= self.lease_margin < self.ttl:
            raise ValueError(f"cluster: margin {self.margin} must lie in [0, ttl)")
        if (self.cert is None) != (self.key is None):
            raise ValueError("cluster: a client certificate needs its key, and the other way")
        if self.timeout <= 0:
            raise ValueError("cluster: timeout must be positive")
        object.__setattr__(self, "keys", Keys(self.cluster))

    @property
    def lease_margin(self) -> float:
        return self.ttl / 4 if self.margin is None else self.margin

    @property
    def tls(self) -> bool:
        return (
            self.ca is not None
            or self.cert is not None
            or any(e.startswith("https://") for e in self.endpoints)
        )


@dataclass(frozen=True)
class Keys:
    """The key space of one cluster (see the module docstring). Pure."""

    cluster: str

    @property
    def root(self) -> str:
        return f"/setpoint/{self.cluster}/"

    @property
    def election(self) -> str:
        return f"{self.root}election/"

    @property
    def facts(self) -> str:
        return f"{self.root}facts/"

    @property
    def digests(self) -> str:
        return f"{self.root}digests/"

    @property
    def state(self) -> str:
        return f"{self.root}state/"

    def candidate(self, lease: int) -> str:
        """The election key of a lease, as etcd's concurrency package names it (hex id)."""
        return f"{self.election}{lease:x}"

    def fact(self, node: str, name: str) -> str:
        return f"{self.facts}{node}/{name}"

    def digest(self, node: str) -> str:
        return f"{self.digests}{node}"

    def state_key(self, key: str) -> str:
        if not key:
            raise ValueError("cluster: empty state key")
        return f"{self.state}{key}"

    @property
    def observed(self) -> tuple[str, str]:
        """The one key range a link watches: [digests/, facts0) holds digests/, election/
        and facts/ (they sort together) but not state/, which only the leader reads."""
        return self.digests, f"{self.root}facts0"
