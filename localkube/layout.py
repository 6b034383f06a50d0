"""Versions, addresses and directories of the one local cluster: every name and number in one place.

The network is chosen to stay out of the way of the host and of other clusters: a bridge of our own
(``lkbr0``) whose address is also the node's, a /24 for pods on it and a /24 for Services, both in
10.213/16. Everything the cluster serves binds to that bridge address or to loopback.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent

KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"
COREDNS_VERSION = "v1.12.4"

NODE_NAME = "localkube"
BRIDGE = "lkbr0"
NODE_IP = "10.213.0.1"
POD_CIDR = "10.213.0.0/24"
SERVICE_CIDR = "10.213.128.0/24"
KUBERNETES_SERVICE_IP = "10.213.128.1"
DNS_SERVICE_IP = "10.213.128.10"
CLUSTER_DOMAIN = "cluster.local"
APISERVER_PORT = 6443
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
#: CNI network name; also the prefix of the CNI plugins' iptables chains and IPAM directory.
CNI_NETWORK = "localkube"
#: containerd's namespace for everything the kubelet runs (the CRI plugin's fixed choice).
CRI_NAMESPACE = "k8s.io"


def cache_dir() -> Path:
    """The project's cache (``$PRESTOP_CACHE_DIR``, default ``~/.cache/prestop-agent``)."""
    configured = os.environ.get("PRESTOP_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "prestop-agent"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the cluster keeps things: built artefacts survive runs, run state does not."""

    cache: Path

    @classmethod
    def default(cls) -> Layout:
        return cls(cache_dir())

    @property
    def home(self) -> Path:
        return self.cache / "localkube"

    @property
    def go_modules(self) -> Path:
        return self.cache / "go" / "mod"

    @property
    def go_build_cache(self) -> Path:
        return self.cache / "go" / "build"

    @property
    def images(self) -> Path:
        """Image tars, named after their inputs' hash."""
        return self.home / "images"

    @property
    def buildah_root(self) -> Path:
        return self.home / "buildah"

    @property
    def containerd_root(self) -> Path:
        """containerd's content and snapshots: kept between runs, so imported images stay imported."""
        return self.home / "containerd"

    @property
    def lock(self) -> Path:
        """Held while a cluster runs. Machine-wide, not per cache: the bridge and ports exist once."""
        run_lock = Path("/run/lock")
        return (run_lock if run_lock.is_dir() else Path("/tmp")) / "localkube.lock"  # noqa: S108 - a lock, no data

    @property
    def run(self) -> Path:
        """The running cluster's state: certificates, configs, sockets, logs. Removed at stop."""
        return self.home / "run"

    @property
    def kubeconfig(self) -> Path:
        return self.run / "admin.kubeconfig"

    @property
    def containerd_socket(self) -> Path:
        return self.run / "containerd" / "containerd.sock"

    @property
    def logs(self) -> Path:
        return self.run / "logs"

    @property
    def last_logs(self) -> Path:
        """The last stopped cluster's component logs, kept until the next one stops."""
        return self.home / "last-run-logs"
