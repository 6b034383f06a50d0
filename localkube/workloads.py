"""Manifests the end-to-end tests and the benchmark apply: a real Nacos behind a headless Service, the
Spring provider as a Deployment whose pod spec carries the README's preStop snippet unchanged, and the
benchmark's Spring Cloud consumer as a pod; and what that Nacos serves."""

from __future__ import annotations

import copy
import re
from typing import Any

import httpx
import yaml

from localkube.errors import HarnessError
from localkube.layout import REPO

NACOS_NAMESPACE = "nacos"
NACOS_SERVICE = "nacos-headless"
#: Where the cluster's Nacos answers from inside the cluster (the README snippet's value).
NACOS_ADDR = f"{NACOS_SERVICE}.{NACOS_NAMESPACE}:8848"
PROVIDER_SERVICE = "demo-provider"


def readme_prestop_snippet() -> dict[str, Any]:
    """The pod spec fragment under README.md's "The preStop hook", parsed."""
    text = (REPO / "README.md").read_text()
    section = text.split("## The preStop hook", 1)[1]
    match = re.search(r"```yaml\n(.*?)```", section, re.S)
    if match is None:
        raise HarnessError("README.md's preStop section has no yaml block")
    snippet: dict[str, Any] = yaml.safe_load(match.group(1))["spec"]
    return snippet


def nacos(image: str) -> str:
    labels = {"app": "nacos"}
    ports = [{"name": "http", "port": 8848}, {"name": "grpc", "port": 9848}, {"name": "grpc-cluster", "port": 9849}]
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NACOS_NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": NACOS_SERVICE, "namespace": NACOS_NAMESPACE},
            "spec": {"clusterIP": "None", "selector": dict(labels), "ports": ports},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "nacos", "namespace": NACOS_NAMESPACE},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": dict(labels)},
                "template": {
                    "metadata": {"labels": dict(labels)},
                    "spec": {
                        "terminationGracePeriodSeconds": 5,
                        "containers": [
                            {
                                "name": "nacos",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "env": [
                                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                                    {"name": "JDK_JAVA_OPTIONS", "value": "-Dnacos.inetutils.ip-address=$(POD_IP)"},
                                ],
                                "ports": [{"containerPort": p["port"], "name": p["name"]} for p in ports],
                                # Tolerant: an unready Nacos drops out of the headless Service's DNS,
                                # and a busy 2-core machine can hold an answer for a second or more.
                                "readinessProbe": {
                                    "httpGet": {"path": "/nacos/v1/ns/operator/metrics", "port": 8848},
                                    "periodSeconds": 2,
                                    "timeoutSeconds": 5,
                                    "failureThreshold": 3,
                                },
                            }
                        ],
                    },
                },
            },
        },
    ]
    return yaml.safe_dump_all(objects, sort_keys=False)


def provider_objects(image: str, namespace: str, *, replicas: int = 1) -> list[dict[str, Any]]:
    """The provider's Namespace and Deployment: the README's snippet, plus only what the app itself needs."""
    snippet = readme_prestop_snippet()
    container = copy.deepcopy(snippet["containers"][0])
    container.update(
        {
            "image": image,
            "imagePullPolicy": "Never",
            "ports": [{"containerPort": 8080, "name": "http"}],
            "readinessProbe": {"httpGet": {"path": "/hello", "port": 8080}, "periodSeconds": 2},
        }
    )
    # The app's own setting; it reads the snippet's NACOS_SERVER_ADDR so both name one server.
    container["env"].append({"name": "SPRING_CLOUD_NACOS_DISCOVERY_SERVER_ADDR", "value": "$(NACOS_SERVER_ADDR)"})
    labels = {"app": PROVIDER_SERVICE}
    pod_spec = {key: value for key, value in snippet.items() if key != "containers"}
    pod_spec["containers"] = [container]
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": PROVIDER_SERVICE, "namespace": namespace},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": dict(labels)},
                "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
            },
        },
    ]


def provider(image: str, namespace: str, *, replicas: int = 1) -> str:
    """The provider Deployment (:func:`provider_objects`) as YAML."""
    return yaml.safe_dump_all(provider_objects(image, namespace, replicas=replicas), sort_keys=False)


def consumer(
    name: str,
    namespace: str,
    image: str,
    *,
    nacos_namespace: str,
    url: str,
    rate: int,
    env: dict[str, str] | None = None,
) -> str:
    """The benchmark's consumer as a pod: it calls ``url`` through Nacos ``rate`` times a second, one
    JSON line per call on its stdout (``kubectl logs`` is the full record); ``env`` adds settings."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "consumer"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "consumer",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "env": [
                        {"name": "SPRING_CLOUD_NACOS_DISCOVERY_SERVER_ADDR", "value": NACOS_ADDR},
                        {"name": "SPRING_CLOUD_NACOS_DISCOVERY_NAMESPACE", "value": nacos_namespace},
                        {"name": "BENCH_URL", "value": url},
                        {"name": "BENCH_RATE", "value": str(rate)},
                        # As bench/ runs it: small and quick to start on a busy two-core node.
                        {"name": "JAVA_TOOL_OPTIONS", "value": "-Xmx128m -XX:CICompilerCount=1"},
                        *({"name": key, "value": value} for key, value in (env or {}).items()),
                    ],
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }
    return yaml.safe_dump(pod, sort_keys=False)


def _nacos_get(nacos_ip: str, path: str, params: dict[str, str | int]) -> httpx.Response:
    """A GET to the Nacos pod; a timeout or transport error is a HarnessError, which ``poll`` retries."""
    try:
        return httpx.get(f"http://{nacos_ip}:8848/nacos{path}", params=params, timeout=10)
    except httpx.HTTPError as exc:
        raise HarnessError(f"Nacos {path}: {type(exc).__name__}: {exc}") from exc


def served(nacos_ip: str, service: str, namespace: str = "public") -> set[tuple[str, int]]:
    """ip:port pairs the Nacos pod serves to consumers for a service (enabled and healthy only)."""
    params: dict[str, str | int] = {"serviceName": service, "healthyOnly": "true", "namespaceId": namespace}
    response = _nacos_get(nacos_ip, "/v1/ns/instance/list", params)
    response.raise_for_status()
    return {(h["ip"], int(h["port"])) for h in response.json().get("hosts", []) if h.get("enabled", True)}


def registered(nacos_ip: str, service: str, namespace: str = "public") -> dict[tuple[str, int], bool]:
    """Every instance Nacos holds for a service, disabled ones included: ip:port -> enabled."""
    params: dict[str, str | int] = {
        "serviceName": service,
        "namespaceId": namespace,
        "clusterName": "DEFAULT",
        "pageNo": 1,
        "pageSize": 100,
    }
    response = _nacos_get(nacos_ip, "/v1/ns/catalog/instances", params)
    if response.status_code == 404:  # no such service (yet, or any more)
        return {}
    response.raise_for_status()
    return {(h["ip"], int(h["port"])): bool(h.get("enabled", True)) for h in response.json().get("list", [])}
