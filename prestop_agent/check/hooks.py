"""Recognising a container's preStop hook: the agent (exec, in a shell, or a sidecar's httpGet) or a sleep.

* agent: ``exec`` running ``prestop-agent deregister`` (directly or in ``sh -c``), or an
  ``httpGet`` to a sidecar's ``/prestop`` (``prestop-agent serve``; its env holds the
  agent's settings). The preStop wait is at most the agent's budget.
* sleep: ``exec`` ``sleep N`` (directly or in ``sh -c``) or the native ``sleep`` action.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from prestop_agent.check.manifests import as_list, mapping
from prestop_agent.errors import ConfigError

_SLEEP_IN_SHELL = re.compile(r"(?:^|[\s;&|(])(?:\S*/)?sleep\s+(\d+(?:\.\d+)?)([smhd]?)(?=$|[\s;&|)])")
_AGENT_IN_SHELL = re.compile(r"(?:^|[\s;&|(])(?:\S*/)?prestop-agent\s+(deregister|serve)\b([^;&|\n]*)")
SHELLS = ("sh", "bash", "ash", "dash")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Hook:
    kind: str  # "agent" or "sleep"
    text: str
    sleep_s: float = 0.0
    flags: Mapping[str, str] = field(default_factory=dict)
    wait: bool = True
    settings_from: Mapping[str, Any] | None = None  # the sidecar container holding the agent's env


def _agent_flags(args: Sequence[str]) -> tuple[dict[str, str], bool]:
    flags: dict[str, str] = {}
    wait = True
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        if arg == "--no-wait":
            wait = False
        elif arg == "--wait":
            wait = True
        elif arg.startswith("--") and "=" in arg:
            key, _, value = arg[2:].partition("=")
            flags[key] = value
        elif arg.startswith("--") and i + 1 < len(items) and not items[i + 1].startswith("--"):
            flags[arg[2:]] = items[i + 1]
            i += 1
        i += 1
    return flags, wait


def _shell_hook(shown: str, script: str) -> Hook | None:
    agent = _AGENT_IN_SHELL.search(script)
    if agent and agent.group(1) == "deregister":
        try:
            args = shlex.split(agent.group(2))
        except ValueError:
            args = agent.group(2).split()
        flags, wait = _agent_flags(args)
        return Hook("agent", f"exec {shown}", flags=flags, wait=wait)
    sleeps = [float(m.group(1)) * _UNITS[m.group(2)] for m in _SLEEP_IN_SHELL.finditer(script)]
    return Hook("sleep", f"exec {shown}", sleep_s=sum(sleeps)) if sleeps else None


def _exec_hook(words: Sequence[str]) -> Hook | None:
    if not words:
        return None
    shown = " ".join(shlex.quote(w) for w in words)
    base = PurePosixPath(words[0]).name
    if base in SHELLS and len(words) >= 3 and words[1] in ("-c", "-ec", "-ce", "-lc"):
        return _shell_hook(shown, words[2])
    for index, word in enumerate(words):
        if PurePosixPath(word).name == "prestop-agent" and words[index + 1 : index + 2] == ["deregister"]:
            flags, wait = _agent_flags(words[index + 2 :])
            return Hook("agent", f"exec {shown}", flags=flags, wait=wait)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", words[1]) if base == "sleep" and len(words) == 2 else None
    if match:
        return Hook("sleep", f"exec {shown}", sleep_s=float(match.group(1)) * _UNITS[match.group(2)])
    return None


def runs_serve(container: Mapping[str, Any]) -> bool:
    """Whether the container runs ``prestop-agent serve`` (the sidecar of issue 7)."""
    words = [str(w) for w in [*as_list(container.get("command")), *as_list(container.get("args"))]]
    if "prestop-agent" in str(container.get("image", "")) and words[:1] == ["serve"]:
        return True  # the agent's image, its entrypoint given the ``serve`` argument
    for index, word in enumerate(words):
        if PurePosixPath(word).name == "prestop-agent" and "serve" in words[index + 1 :]:
            return True
        match = _AGENT_IN_SHELL.search(word)
        if match and match.group(1) == "serve":
            return True
    return False


def _ports(container: Mapping[str, Any]) -> set[str]:
    ports: set[str] = set()
    for port in as_list(container.get("ports")):
        item = mapping(port)
        if "containerPort" in item:
            ports.add(str(item["containerPort"]))
        if "name" in item:
            ports.add(str(item["name"]))
    return ports


def _http_hook(
    container: Mapping[str, Any], pod_spec: Mapping[str, Any], get: Mapping[str, Any]
) -> tuple[Hook | None, str | None]:
    path = str(get.get("path", "/")).split("?", 1)[0]
    port = str(get.get("port", ""))
    sidecars: list[Mapping[str, Any]] = [
        c
        for c in [*as_list(pod_spec.get("initContainers")), *as_list(pod_spec.get("containers"))]
        if isinstance(c, Mapping) and c is not container and runs_serve(c)
    ]
    by_port = [c for c in sidecars if port in _ports(c)]
    if not by_port and not path.rstrip("/").endswith("/prestop"):
        return None, f"preStop httpGet {path} on port {port} is not a prestop-agent sidecar"
    chosen = by_port or sidecars
    sidecar = chosen[0] if chosen else None
    flags, _ = _agent_flags([str(a) for a in as_list(sidecar.get("args"))] if sidecar is not None else [])
    return Hook("agent", f"httpGet {path} port {port}", flags=flags, settings_from=sidecar), None


def find_hook(container: Mapping[str, Any], pod_spec: Mapping[str, Any]) -> tuple[Hook | None, str | None]:
    """The container's preStop hook as the check understands it, or (None, why it is not checked)."""
    pre_stop = mapping(mapping(container.get("lifecycle")).get("preStop"))
    if not pre_stop:
        return None, "no preStop hook"
    if "exec" in pre_stop:
        command = [str(c) for c in as_list(mapping(pre_stop["exec"]).get("command"))]
        hook = _exec_hook(command)
        if hook is None:
            return None, f"preStop runs {' '.join(command)!r}, neither prestop-agent nor a plain sleep"
        return hook, None
    if "sleep" in pre_stop:
        seconds = mapping(pre_stop["sleep"]).get("seconds")
        if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 0:
            raise ConfigError(f"lifecycle.preStop.sleep.seconds={seconds!r} is not a whole number of seconds")
        return Hook("sleep", f"sleep action {seconds} s", sleep_s=float(seconds)), None
    if "httpGet" in pre_stop:
        return _http_hook(container, pod_spec, mapping(pre_stop["httpGet"]))
    return None, "preStop hook of an unknown kind"
