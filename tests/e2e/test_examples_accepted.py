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


#: The examples whose app pods are meant to meet the "restricted" Pod Security Standard (the
#: sidecar examples leave the app's own container, an image they do not change, as it is).
RESTRICTED = ("nacos-spring-cloud/orders.yaml", "aws-alb/orders.yaml", "ack-alb-ingress/tea.yaml")
RESTRICTED_NAMESPACE = "restricted-check"


@pytest.mark.parametrize("example", RESTRICTED)
def test_the_examples_pods_meet_the_restricted_pod_security_standard(cluster: LocalCluster, example: str) -> None:
    """The API server's PodSecurity admission warns about every pod template that would violate it."""
    warnings = _restricted_warnings(cluster, example)
    assert "PodSecurity" not in warnings, warnings


def test_the_restricted_check_sees_a_pod_that_does_not_meet_it(cluster: LocalCluster) -> None:
    # The sidecar example's app container is the vendor's, without a securityContext.
    warnings = _restricted_warnings(cluster, "sidecar/native-sidecar.yaml")
    assert 'would violate PodSecurity "restricted:v1.34"' in warnings, warnings
    assert 'container "inventory"' in warnings, warnings
    assert 'container "prestop"' not in warnings, warnings


def _restricted_warnings(cluster: LocalCluster, example: str) -> str:
    kube = cluster.kube
    labels = {"pod-security.kubernetes.io/warn": "restricted", "pod-security.kubernetes.io/warn-version": "v1.34"}
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RESTRICTED_NAMESPACE, "labels": labels}}
    kube.run("create", "-f", "-", "--save-config", stdin=yaml.safe_dump(namespace), check=False)
    deployments = [
        {**doc, "metadata": {**doc["metadata"], "namespace": RESTRICTED_NAMESPACE}}
        for doc in yaml.safe_load_all((REPO / "k8s-examples" / example).read_text())
        if doc and doc["kind"] == "Deployment"
    ]
    assert deployments
    result = kube.run("apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(deployments), check=False)
    assert result.returncode == 0, result.stderr
    return result.stderr
