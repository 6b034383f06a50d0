"""Every manifest under ``k8s-examples/`` is accepted by the real API server, as written.

``kubectl apply --dry-run=server --validate=strict`` sends each file to the API server, which runs
everything a real apply runs except the write to etcd: defaulting, schema validation with unknown
or duplicated fields refused, and the admission plugins (PodSecurity, ServiceAccount, ...). Only
the namespaces the examples name (``shop``, ``tea``) are created first, as users create them.

What this cannot check, and the examples' READMEs say so: nothing here acts on an Ingress of
class ``alb`` (no AWS Load Balancer Controller, no Alibaba Cloud ALB Ingress controller, no such
IngressClass), so their ``alb.ingress.kubernetes.io/*`` annotations are stored, not read; the
webhooks that would inject readiness gates (``elbv2.k8s.aws/pod-readiness-gate-inject``) and
cloud credentials (IRSA's ``eks.amazonaws.com/role-arn``, RRSA's ``pod-identity.alibabacloud.com``)
do not exist here. None of the examples uses a custom resource.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from localkube.layout import REPO

from .conftest import LocalCluster

pytestmark = pytest.mark.e2e

EXAMPLES = sorted((REPO / "k8s-examples").rglob("*.yaml"))
#: The namespaces the examples are written for; users create them (aws-alb's file also does).
NAMESPACES = ("shop", "tea")


def test_every_example_is_found() -> None:
    names = {str(path.relative_to(REPO / "k8s-examples")) for path in EXAMPLES}
    assert {"nacos-spring-cloud/orders.yaml", "sidecar/native-sidecar.yaml", "aws-alb/orders.yaml"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: str(path.relative_to(REPO / "k8s-examples")))
def test_the_api_server_accepts_the_example(cluster: LocalCluster, example: Path) -> None:
    kube = cluster.kube
    for namespace in NAMESPACES:
        # create, not apply: a scenario may have labelled the namespace, and apply would undo that.
        kube.run("create", "namespace", namespace, "--save-config", check=False)
    result = kube.run("apply", "--dry-run=server", "--validate=strict", "-f", str(example), check=False)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    objects = [doc for doc in yaml.safe_load_all(example.read_text()) if doc]
    accepted = [line for line in result.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(objects), result.stdout
