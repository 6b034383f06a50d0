"""Each component's configuration and command line, as plain data (flags as in hack/local-up-cluster.sh).

Nothing here starts anything: :mod:`localkube.cluster` writes these files and runs these commands
in this order: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd, kubelet,
kube-proxy, CoreDNS.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from localkube.layout import (
    APISERVER_PORT,
    BRIDGE,
    CLUSTER_DOMAIN,
    CNI_NETWORK,
    DNS_SERVICE_IP,
    ETCD_CLIENT_PORT,
    ETCD_PEER_PORT,
    NODE_IP,
    NODE_NAME,
    POD_CIDR,
    SERVICE_CIDR,
    Layout,
)
from localkube.pki import Pki

ETCD_URL = f"http://{NODE_IP}:{ETCD_CLIENT_PORT}"
#: Cluster DNS: CoreDNS listens here on the host; pods reach it through the kube-dns Service.
DNS_PORT = 53
DNS_HEALTH_PORT = 8080
DNS_READY_PORT = 8181
#: CNI plugins from Debian's containernetworking-plugins.
CNI_BIN_DIR = Path("/usr/lib/cni")


def etcd(binary: Path, data: Path) -> list[str]:
    return [
        str(binary),
        "--name=localkube",
        f"--data-dir={data}",
        f"--listen-client-urls={ETCD_URL}",
        f"--advertise-client-urls={ETCD_URL}",
        f"--listen-peer-urls=http://{NODE_IP}:{ETCD_PEER_PORT}",
        f"--initial-advertise-peer-urls=http://{NODE_IP}:{ETCD_PEER_PORT}",
        f"--initial-cluster=localkube=http://{NODE_IP}:{ETCD_PEER_PORT}",
        "--log-level=warn",
        # A throwaway store: no fsync per write, so a busy disk does not slow the API server.
        "--unsafe-no-fsync",
        "--quota-backend-bytes=1073741824",
    ]


def apiserver(binary: Path, pki: Pki) -> list[str]:
    return [
        str(binary),
        f"--etcd-servers={ETCD_URL}",
        f"--bind-address={NODE_IP}",
        f"--advertise-address={NODE_IP}",
        f"--secure-port={APISERVER_PORT}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--client-ca-file={pki.ca_cert}",
        f"--tls-cert-file={pki.cert('apiserver')}",
        f"--tls-private-key-file={pki.key('apiserver')}",
        f"--kubelet-client-certificate={pki.cert('apiserver-kubelet-client')}",
        f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
        # The node's name resolves nowhere (and must not be looked up outside): use its address.
        "--kubelet-preferred-address-types=InternalIP",
        f"--service-account-key-file={pki.service_account_public_key}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
        "--authorization-mode=Node,RBAC",
        "--allow-privileged=true",
        "--profiling=false",
        "--v=1",
    ]


def _api_client(binary: Path, pki: Pki, name: str, *flags: str) -> list[str]:
    """A control-plane component that reaches the API server with its own kubeconfig, alone on the node."""
    kubeconfig = pki.kubeconfig(name)
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={NODE_IP}",
        *flags,
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]


def controller_manager(binary: Path, pki: Pki) -> list[str]:
    return _api_client(
        binary,
        pki,
        "controller-manager",
        f"--service-account-private-key-file={pki.service_account_key}",
        f"--root-ca-file={pki.ca_cert}",
        f"--cluster-signing-cert-file={pki.ca_cert}",
        f"--cluster-signing-key-file={pki.ca_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--use-service-account-credentials=true",
    )


def scheduler(binary: Path, pki: Pki) -> list[str]:
    return _api_client(binary, pki, "scheduler")


def containerd_config(layout: Layout, sandbox_image: str) -> str:
    """containerd's own root, state and socket, so a system containerd (if any) is never touched."""
    run = layout.run / "containerd"
    return f"""version = 2
root = "{layout.containerd_root}"
state = "{run / "state"}"
# Plugins that would create directories or devices outside our own.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{layout.containerd_socket}"

[ttrpc]
  address = "{run / "containerd.sock.ttrpc"}"

[debug]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # This machine refuses a negative oom_score_adj; without this runc fails every sandbox.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{layout.run / "cni" / "net.d"}"
"""


def cni_config(layout: Layout) -> str:
    """A bridge network on our own bridge; no masquerading, so pods reach nothing beyond this machine."""
    network = {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.run / "cni" / "ipam"),
                },
            },
        ],
    }
    return json.dumps(network, indent=2)


def kubelet_config(layout: Layout, pki: Pki) -> str:
    """The kubelet on cgroup v1 with the cgroupfs driver, no per-QoS cgroups and no evictions."""
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # Kubernetes 1.34 still runs on cgroup v1 when told to; 1.35 refuses it by default.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "localStorageCapacityIsolation": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "podLogsDir": str(layout.run / "pod-logs"),
        "address": NODE_IP,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": NODE_IP,
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki.ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [DNS_SERVICE_IP],
        # No host search domains or resolvers in pods: names resolve in the cluster or not at all.
        "resolvConf": str(layout.run / "resolv.conf"),
        # A busy shared disk must not evict pods or collect the images nobody can pull again.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "maxPods": 60,
        "nodeStatusReportFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "5s",
    }
    return yaml.safe_dump(config, sort_keys=False)


def kubelet(binary: Path, layout: Layout, pki: Pki) -> list[str]:
    root = layout.run / "kubelet"
    return [
        str(binary),
        f"--config={layout.run / 'kubelet.yaml'}",
        f"--kubeconfig={pki.kubeconfig('kubelet')}",
        f"--root-dir={root}",
        f"--cert-dir={root / 'pki'}",
        f"--hostname-override={NODE_NAME}",
        f"--node-ip={NODE_IP}",
        "--v=1",
    ]


def kube_proxy_config(pki: Pki) -> str:
    """iptables mode; conntrack limits and localhost NodePorts left alone so no other sysctl changes."""
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(pki.kubeconfig("kube-proxy"))},
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_IP,
        "healthzBindAddress": f"{NODE_IP}:10256",
        "metricsBindAddress": f"{NODE_IP}:10249",
        "clusterCIDR": POD_CIDR,
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": False, "syncPeriod": "10s", "minSyncPeriod": "0s"},
        "nodePortAddresses": [f"{NODE_IP}/32"],
    }
    return yaml.safe_dump(config, sort_keys=False)


def kube_proxy(binary: Path, layout: Layout) -> list[str]:
    return [str(binary), f"--config={layout.run / 'kube-proxy.yaml'}", "--v=1"]


def corefile(pki: Pki) -> str:
    """Service and pod names from the API server; any other name is refused, never forwarded."""
    return f"""{CLUSTER_DOMAIN}:{DNS_PORT} in-addr.arpa:{DNS_PORT} ip6.arpa:{DNS_PORT} {{
    bind {NODE_IP}
    errors
    health {NODE_IP}:{DNS_HEALTH_PORT}
    ready {NODE_IP}:{DNS_READY_PORT}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {pki.kubeconfig("coredns")} localkube
        pods insecure
        ttl 5
    }}
    cache 5
    loadbalance
}}
"""


def coredns(binary: Path, layout: Layout) -> list[str]:
    return [str(binary), "-conf", str(layout.run / "Corefile")]


def cluster_objects() -> str:
    """What a cluster's add-on manager would create: CoreDNS's read access and the kube-dns Service.

    The Service has no selector: its EndpointSlice names CoreDNS on the node address, and
    kube-proxy routes the Service address there as for any other Service.
    """
    rules = [
        {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
    ]
    ports = [
        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": DNS_PORT},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": DNS_PORT},
    ]
    objects = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "localkube:coredns"},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "localkube:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "localkube:coredns"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "localkube:coredns"}],
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "spec": {"clusterIP": DNS_SERVICE_IP, "ports": ports},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kube-dns-localkube",
                "namespace": "kube-system",
                "labels": {
                    "kubernetes.io/service-name": "kube-dns",
                    "endpointslice.kubernetes.io/managed-by": "localkube",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}, "nodeName": NODE_NAME}],
            "ports": [{"name": p["name"], "port": DNS_PORT, "protocol": p["protocol"]} for p in ports],
        },
    ]
    return yaml.safe_dump_all(objects, sort_keys=False)
