"""``k8s-examples/`` applied to the cluster as users copy them, through kustomize overlays.

An overlay keeps the example file byte for byte and changes what cannot be the same here: the
image names (the cluster has no registry), the pull policy, and the values the example itself
marks as the site's (where Nacos is and its credentials: this Nacos runs without auth). Each
scenario says what else it changes and why; :func:`changed_paths` lists every field an overlay
changed, so a test can prove the pod template it ran is the example's.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from localkube import Kube, workloads
from localkube.layout import REPO

EXAMPLES = REPO / "k8s-examples"
#: The examples' placeholder images, and the localkube image that plays each.
IMAGES = {
    "registry.example.com/shop/orders": "shop",
    "registry.example.com/shop/inventory": "shop",
    "registry.example.com/prestop-agent": "prestop-agent",
}
NACOS_ADDR = workloads.NACOS_ADDR

Doc = dict[str, Any]


@dataclass
class Overlay:
    """A kustomization over one example file: images, pull policy, namespace, replicas and patches."""

    example: str  # path below k8s-examples/
    images: Mapping[str, str]  # localkube image name -> reference
    namespace: str | None = None
    replicas: Mapping[str, int] = field(default_factory=dict)
    patches: list[Doc] = field(default_factory=list)

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        source = EXAMPLES / self.example
        shutil.copyfile(source, directory / source.name)
        kustomization: Doc = {"resources": [source.name]}
        if self.namespace:
            kustomization["namespace"] = self.namespace
        kustomization["images"] = []
        for placeholder, name in IMAGES.items():
            new_name, _, tag = self.images[name].rpartition(":")
            kustomization["images"].append({"name": placeholder, "newName": new_name, "newTag": tag})
        if self.replicas:
            kustomization["replicas"] = [{"name": n, "count": c} for n, c in self.replicas.items()]
        patches = [*self._pull_policy(), *self.patches]
        kustomization["patches"] = [{"patch": yaml.safe_dump(patch, sort_keys=False)} for patch in patches]
        (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
        return directory

    def _pull_policy(self) -> list[Doc]:
        """``imagePullPolicy: Never`` on every container: the images are imported, not pulled."""
        patches = []
        for doc in self.documents():
            spec = doc.get("spec", {}).get("template", {}).get("spec")
            if not spec:
                continue
            patch_spec: Doc = {}
            for key in ("initContainers", "containers"):
                if spec.get(key):
                    patch_spec[key] = [{"name": c["name"], "imagePullPolicy": "Never"} for c in spec[key]]
            patches.append(_patch(doc, {"spec": {"template": {"spec": patch_spec}}}))
        return patches

    def documents(self) -> list[Doc]:
        return [doc for doc in yaml.safe_load_all((EXAMPLES / self.example).read_text()) if doc]

    def apply(self, kube: Kube, directory: Path) -> list[Doc]:
        """Apply the overlay (``kubectl apply -k``); the objects as kustomize rendered them."""
        self.write(directory)
        kube.apply(directory)
        return [doc for doc in yaml.safe_load_all(kube.run("kustomize", str(directory)).stdout) if doc]


def _patch(doc: Doc, body: Doc) -> Doc:
    """A strategic-merge patch addressed to one of the example's objects."""
    meta = {"name": doc["metadata"]["name"]}
    if "namespace" in doc["metadata"]:
        meta["namespace"] = doc["metadata"]["namespace"]
    return {"apiVersion": doc["apiVersion"], "kind": doc["kind"], "metadata": meta, **body}


def patch(kind: str, name: str, namespace: str, body: Doc) -> Doc:
    """A strategic-merge patch of one object (Deployment, ConfigMap, Secret, Service) of an example."""
    api_version = "apps/v1" if kind == "Deployment" else "v1"
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": namespace}, **body}


def container_patch(deployment: str, namespace: str, container: Doc, *, init: bool = False) -> Doc:
    """A patch of one container (matched by name) of a Deployment's pod template."""
    key = "initContainers" if init else "containers"
    return patch("Deployment", deployment, namespace, {"spec": {"template": {"spec": {key: [container]}}}})


#: The node has 2 cores, and a scheduler that places pods by their requests: copies that are not the
#: one under the spotlight ask for a fifth of the examples' CPU, so that every scenario fits at
#: once. A request only places the pod and weighs its CPU share; no example sets a CPU limit.
SMALL_CPU = "50m"


def small_cpu(deployment: str, namespace: str, container: str) -> Doc:
    """A patch that lowers one container's CPU request to :data:`SMALL_CPU`."""
    return container_patch(deployment, namespace, {"name": container, "resources": {"requests": {"cpu": SMALL_CPU}}})


def env(**values: str) -> list[Doc]:
    return [{"name": name, "value": value} for name, value in values.items()]


def changed_paths(before: Sequence[Doc], after: Sequence[Doc]) -> set[str]:
    """Every field that differs between the example's objects and the rendered ones, as dotted paths.

    Objects are matched by kind and name; list items by their ``name`` where they have one.
    """

    def key(doc: Doc) -> str:
        return f"{doc['kind']}/{doc['metadata']['name']}"

    paths: set[str] = set()
    old = {key(doc): doc for doc in before}
    new = {key(doc): doc for doc in after}
    for name in old.keys() | new.keys():
        if name not in old or name not in new:
            paths.add(name)
            continue
        _diff(old[name], new[name], name, paths)
    return paths


def _diff(a: Any, b: Any, at: str, paths: set[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a.keys() | b.keys():
            _diff(a.get(k), b.get(k), f"{at}.{k}", paths)
    elif isinstance(a, list) and isinstance(b, list) and _named(a) and _named(b):
        left = {item["name"]: item for item in a}
        right = {item["name"]: item for item in b}
        for k in left.keys() | right.keys():
            _diff(left.get(k), right.get(k), f"{at}[{k}]", paths)
    elif a != b:
        paths.add(at)


def _named(items: list[Any]) -> bool:
    return all(isinstance(item, dict) and "name" in item for item in items)
