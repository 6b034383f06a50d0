"""A container's environment as far as the manifests tell: env, envFrom, ConfigMaps of the same directory.

Values the files cannot give (Secrets, the downward API, ``$(VAR)`` references) are kept as
unresolved, with the reason, so that a rule depending on them says so instead of guessing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prestop_agent.check.arguments import shell_fills_in
from prestop_agent.check.manifests import Doc, as_list, mapping
from prestop_agent.check.report import ContainerCheck, Value, Violation
from prestop_agent.config import DEFAULT_WAIT_FOR
from prestop_agent.errors import ConfigError
from prestop_agent.source import parse_seconds
from prestop_agent.watchers.catalog import watcher_names


@dataclass(frozen=True)
class ContainerEnv:
    values: Mapping[str, str]
    unresolved: Mapping[str, str]  # name (or "PREFIX*" for a whole envFrom source) -> why it cannot be known
    explicit: frozenset[str] = frozenset()  # names an ``env`` entry sets: no envFrom source can change them
    field_paths: Mapping[str, str] = field(default_factory=dict)  # name -> the downward API field it holds
    from_secrets: frozenset[str] = frozenset()  # names a secretKeyRef sets

    def get(self, name: str) -> tuple[str | None, str | None]:
        """(value, None), (None, why unknown) or (None, None) when unset."""
        if name in self.values:
            return self.values[name], None
        if name in self.unresolved:
            return None, self.unresolved[name]
        return None, None


def container_env(container: Mapping[str, Any], ns: str | None, configmaps: Mapping[str, Doc]) -> ContainerEnv:
    values: dict[str, str] = {}
    unresolved: dict[str, str] = {}
    _env_from(container, ns, configmaps, values, unresolved)
    explicit: set[str] = set()
    field_paths: dict[str, str] = {}
    from_secrets: set[str] = set()
    for entry in as_list(container.get("env")):
        item = mapping(entry)
        name = str(item.get("name", ""))
        explicit.add(name)
        field_paths.pop(name, None)
        from_secrets.discard(name)
        if "valueFrom" in item:
            values.pop(name, None)
            value_from = mapping(item.get("valueFrom"))
            ref = mapping(value_from.get("configMapKeyRef"))
            cm = _configmap(configmaps, str(ref.get("name")), ns) if ref else None
            data = mapping(cm.obj.get("data")) if cm is not None else {}
            if ref and str(ref.get("key")) in data:
                values[name] = str(data[str(ref.get("key"))])
                unresolved.pop(name, None)
            else:
                kind = next(iter(value_from), "valueFrom")
                unresolved[name] = f"{name} comes from {kind}, " + _UNREADABLE.get(kind, "which the check cannot read")
                if "fieldRef" in value_from:
                    field_paths[name] = str(mapping(value_from["fieldRef"]).get("fieldPath", ""))
                if "secretKeyRef" in value_from:
                    from_secrets.add(name)
            continue
        value = str(item.get("value", ""))
        if "$(" in value:
            unresolved[name] = f"{name}={value!r} refers to other variables"
            values.pop(name, None)
            continue
        values[name] = value
        unresolved.pop(name, None)
    return ContainerEnv(values, unresolved, frozenset(explicit), field_paths, frozenset(from_secrets))


def _env_from(
    container: Mapping[str, Any],
    ns: str | None,
    configmaps: Mapping[str, Doc],
    values: dict[str, str],
    unresolved: dict[str, str],
) -> None:
    """What ``envFrom`` sets: a ConfigMap of the directory's keys, or "PREFIX*" as unknown."""
    for source in as_list(container.get("envFrom")):
        source_map = mapping(source)
        prefix = str(source_map.get("prefix") or "")
        ref = mapping(source_map.get("configMapRef"))
        if ref:
            cm = _configmap(configmaps, str(ref.get("name")), ns)
            if cm is None:
                unresolved[f"{prefix}*"] = f"envFrom configMapRef {ref.get('name')} is not in the same directory"
            else:
                for key, value in mapping(cm.obj.get("data")).items():
                    values[prefix + str(key)] = str(value)
        secret = mapping(source_map.get("secretRef"))
        if secret:
            unresolved[f"{prefix}*"] = f"envFrom secretRef {secret.get('name')} cannot be read from manifests"


_UNREADABLE = {
    "configMapKeyRef": "and that ConfigMap key is not in the files of the same directory",
    "secretKeyRef": "and the check never reads Secrets",
    "fieldRef": "known only in the running pod",
    "resourceFieldRef": "known only in the running pod",
}


def _configmap(configmaps: Mapping[str, Doc], name: str, ns: str | None) -> Doc | None:
    cm = configmaps.get(name)
    if cm is None or (ns is not None and cm.namespace is not None and cm.namespace != ns):
        return None
    return cm


def env_seconds(
    check: ContainerCheck, env: ContainerEnv, flags: Mapping[str, str], flag: str, *names: str
) -> Value | None:
    """The first of the flag and the variables that is set: a Value, or a Value without seconds if unknown."""
    if flag in flags and shell_fills_in(flags[flag]):
        check.notes.append(f"--{flag} {flags[flag]} is filled in at run time; the check assumes nothing for it")
        return Value(None, f"--{flag} (unresolved)")
    if flag in flags:
        text, name, origin = flags[flag], f"--{flag}", f"--{flag}"
    else:
        for name in names:
            text_or_none, why = env.get(name)
            if why is not None:
                check.notes.append(f"{why}; the check assumes nothing for it")
                return Value(None, f"env {name} (unresolved)")
            if text_or_none is not None and text_or_none.strip():
                text, origin = text_or_none.strip(), f"env {name}"
                break
        else:
            return None
    try:
        return Value(parse_seconds(name, text), origin)
    except ConfigError as exc:
        if not any(v.rule == "config" for v in check.violations):  # the agent's own validation says it first
            check.violations.append(Violation("config", f"{exc}; the agent would refuse it and exit 2 without waiting"))
        return Value(None, f"{origin} (invalid)")


def watched_by(
    env: ContainerEnv, flags: Mapping[str, str], check: ContainerCheck
) -> tuple[tuple[str, ...], str] | None:
    """The watchers the agent would run, and where that list comes from; None when the manifests cannot tell."""
    if "wait-for" in flags and shell_fills_in(flags["wait-for"]):
        check.notes.append(f"--wait-for {flags['wait-for']} is filled in at run time; watchers unknown")
        return None
    if "wait-for" in flags:
        text, origin = flags["wait-for"], "--wait-for"
    else:
        text_or_none, why = env.get("PRESTOP_WAIT_FOR")
        if why is not None:
            check.notes.append(f"{why}; watchers unknown")
            return None
        if text_or_none is None or not text_or_none.strip():
            return DEFAULT_WAIT_FOR, "default"
        text, origin = text_or_none, "env PRESTOP_WAIT_FOR"
    return watcher_names(text.split(",")), origin
