"""A real single-node Kubernetes on this machine, for the end-to-end tests, the demo and the benchmark.

Not part of the ``prestop-agent`` package. See README.md beside this file.
"""

from localkube.cluster import Cluster, import_image
from localkube.errors import HarnessError
from localkube.images import Image
from localkube.images import build as build_image
from localkube.kubectl import Kube, poll
from localkube.layout import KUBERNETES_VERSION, Layout

__all__ = [
    "KUBERNETES_VERSION",
    "Cluster",
    "HarnessError",
    "Image",
    "Kube",
    "Layout",
    "build_image",
    "import_image",
    "poll",
]
