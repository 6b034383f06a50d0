"""Reading manifests: YAML files and directories into Kubernetes objects (multi-document, ``kind: List``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prestop_agent.errors import ConfigError

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


@dataclass(frozen=True)
class Doc:
    file: str
    obj: Mapping[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind", ""))

    @property
    def name(self) -> str:
        return str(mapping(self.obj.get("metadata")).get("name", "?"))

    @property
    def namespace(self) -> str | None:
        ns = mapping(self.obj.get("metadata")).get("namespace")
        return str(ns) if ns is not None else None

    @property
    def annotations(self) -> Mapping[str, Any]:
        return mapping(mapping(self.obj.get("metadata")).get("annotations"))


def mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


@dataclass
class Found:
    """The files read, each with its Kubernetes objects, and one note per file of a directory skipped."""

    files: list[tuple[Path, list[Doc]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


KUSTOMIZATIONS = ("kustomization.yaml", "kustomization.yml")


def read_manifests(paths: Sequence[Path]) -> Found:
    """Files named are read as manifests (ConfigError if one is not); directories are searched for YAML files.

    In a directory, what is not a manifest is skipped with a note: Helm charts (a folder with a
    ``Chart.yaml``: values and templates are not manifests until rendered), Kustomize files and the
    patches they list, templates that are not YAML, and YAML without any Kubernetes object.
    """
    found = Found()
    for path in paths:
        if path.is_dir():
            _read_directory(path, found)
        else:
            found.files.append((path, _objects(path, _parse(path, _read(path)))))
    return found


def _read_directory(root: Path, found: Found) -> None:
    files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    charts = sorted({p.parent for p in files if p.name == "Chart.yaml"})
    for chart in charts:
        count = sum(1 for p in files if p.is_relative_to(chart))
        found.notes.append(
            f"skipped {chart}: a Helm chart ({count} YAML files), not manifests until rendered; "
            f"check what it renders: helm template {chart} > rendered.yaml && prestop-agent check rendered.yaml"
        )
    patches = _kustomize_patches([p for p in files if p.name in KUSTOMIZATIONS])
    for path in files:
        if any(path.is_relative_to(chart) for chart in charts):
            continue
        if path.name in KUSTOMIZATIONS:
            found.notes.append(
                f"skipped {path}: a Kustomize file; the manifests beside it are checked as written, without "
                f"its patches; check the built result: kubectl kustomize {path.parent} > built.yaml"
            )
        elif path.resolve() in patches:
            found.notes.append(f"skipped {path}: a Kustomize patch listed in {patches[path.resolve()]}")
        else:
            _read_member(path, found)


def _read_member(path: Path, found: Found) -> None:
    text = _read(path)
    try:
        raw = _parse(path, text)
    except ConfigError:
        if "{{" not in text:
            raise  # a manifest with a mistake in it is an error, not something to pass over
        found.notes.append(f"skipped {path}: a template ({{{{ ... }}}}), not YAML until rendered")
        return
    if not any(isinstance(obj, Mapping) and isinstance(obj.get("kind"), str) for obj in raw):
        if any(obj is not None for obj in raw):
            found.notes.append(f"skipped {path}: YAML without a Kubernetes object (no document has a kind)")
        return
    found.files.append((path, _objects(path, raw)))


def _kustomize_patches(kustomizations: Sequence[Path]) -> dict[Path, Path]:
    """The patch files the kustomizations list (resolved path -> the kustomization that lists it)."""
    patches: dict[Path, Path] = {}
    for kustomization in kustomizations:
        for spec in _parse(kustomization, _read(kustomization)):
            spec_map = mapping(spec)
            listed = [p for p in as_list(spec_map.get("patchesStrategicMerge")) if isinstance(p, str)]
            for key in ("patches", "patchesJson6902"):
                listed += [str(mapping(p)["path"]) for p in as_list(spec_map.get(key)) if "path" in mapping(p)]
            for name in listed:
                if "\n" not in name:  # an inline patch is not a file
                    patches[(kustomization.parent / name).resolve()] = kustomization
    return patches


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: cannot read it: not UTF-8 text") from None


def _parse(path: Path, text: str) -> list[object]:
    """The documents of a YAML file; ConfigError for invalid YAML or a document too big once expanded."""
    try:
        raw = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a manifest") from None
    except ValueError as exc:  # an integer longer than Python converts (4300 digits)
        raise ConfigError(f"{path}: not a manifest: {exc}") from None
    limit = max(EXPANDED_LIMIT, EXPANDED_PER_CHARACTER * len(text))
    for index, obj in enumerate(raw, start=1):
        if expanded_size(obj, limit) is None:
            raise ConfigError(
                f"{path}: document {index} grows past {limit:,} characters and nodes once its YAML aliases (*name) "
                "are expanded, or refers to itself; write the repeated parts out"
            )
    return raw


def _objects(path: Path, raw: list[object]) -> list[Doc]:
    docs: list[Doc] = []
    for index, obj in enumerate(raw, start=1):
        docs.extend(_flatten(path, index, obj))
    return docs


# YAML aliases share one object, so a small file can stand for a document of billions of nodes
# (an "alias bomb"); reading a field of it (str() of an env value, a name, an annotation) would
# expand it. Manifests use aliases, if at all, to repeat a block a few times.
EXPANDED_LIMIT = 1_000_000
EXPANDED_PER_CHARACTER = 10


def expanded_size(root: object, limit: int) -> int | None:
    """Nodes plus characters of the document with every alias written out; None past ``limit`` or for a cycle.

    Each shared object is measured once, so this takes time in the number of distinct objects.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[object, bool]] = [(root, False)]
    while stack:
        obj, children_done = stack.pop()
        if not isinstance(obj, (list, dict)):
            continue
        key = id(obj)
        children = [*obj.keys(), *obj.values()] if isinstance(obj, dict) else obj
        if children_done:
            total = 1 + sum(sizes[id(c)] if isinstance(c, (list, dict)) else _scalar_size(c) for c in children)
            if total > limit:
                return None
            sizes[key] = total
            on_path.discard(key)
        elif key in on_path:
            return None  # the object contains itself
        elif key not in sizes:
            on_path.add(key)
            stack.append((obj, True))
            stack.extend((c, False) for c in children if isinstance(c, (list, dict)))
    return sizes.get(id(root), _scalar_size(root))


def _scalar_size(value: object) -> int:
    return 1 + (len(value) if isinstance(value, (str, bytes)) else 0)


def _flatten(path: Path, index: int, obj: object) -> Iterator[Doc]:
    if obj is None:
        return
    if not isinstance(obj, Mapping) or not isinstance(obj.get("kind"), str):
        raise ConfigError(f"{path}: document {index} is not a Kubernetes object (a mapping with a kind)")
    if obj["kind"] == "List" or (obj["kind"].endswith("List") and isinstance(obj.get("items"), list)):
        for item in as_list(obj.get("items")):
            yield from _flatten(path, index, item)
        return
    yield Doc(str(path), obj)


@dataclass
class Directory:
    """The objects of one directory, by kind: one directory holds one application's manifests."""

    workloads: list[Doc] = field(default_factory=list)
    services: list[Doc] = field(default_factory=list)
    ingresses: list[Doc] = field(default_factory=list)
    configmaps: dict[str, Doc] = field(default_factory=dict)
    ingress_classes: dict[str, str] = field(default_factory=dict)  # name -> controller

    def add(self, doc: Doc) -> None:
        if doc.kind in WORKLOAD_KINDS:
            self.workloads.append(doc)
        elif doc.kind == "Service":
            self.services.append(doc)
        elif doc.kind == "Ingress":
            self.ingresses.append(doc)
        elif doc.kind == "ConfigMap":
            self.configmaps[doc.name] = doc
        elif doc.kind == "IngressClass":
            self.ingress_classes[doc.name] = str(mapping(doc.obj.get("spec")).get("controller", ""))
