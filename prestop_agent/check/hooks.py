"""Recognising a container's preStop hook: the agent (exec, in a shell, or a sidecar's httpGet) or a sleep.

* agent: ``exec`` running ``prestop-agent deregister`` (directly or in ``sh -c``), or an
  ``httpGet`` to a sidecar's ``/prestop`` (``prestop-agent serve``; its env holds the
  agent's settings). The preStop wait is at most the agent's budget, plus any ``sleep`` in
  the same shell script (counted whole: ``deregister --wait; sleep 30`` can take both).
* sleep: ``exec`` ``sleep N...`` (directly or in ``sh -c``; GNU and busybox ``sleep`` add up
  their arguments, so ``sleep 1m 30s`` is 90 s) or the native ``sleep`` action.

The agent's arguments are read by the agent's own command line (``arguments``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from prestop_agent.check.arguments import Arguments, Commands, parse_arguments
from prestop_agent.check.manifests import as_list, mapping
from prestop_agent.errors import ConfigError

_DURATION = r"\d+(?:\.\d+)?[smhd]?"
_SLEEP_IN_SHELL = re.compile(rf"(?:^|[\s;&|(])(?:\S*/)?sleep((?:\s+{_DURATION})+)(?=$|[\s;&|)])")
_AGENT_IN_SHELL = re.compile(r"(?:^|[\s;&|(])(?:\S*/)?prestop-agent\s+(deregister|serve)\b")
_FD_BEFORE_REDIRECT = re.compile(r"(?<![^\s;&|])\d+(?=[<>])")
_OPERATOR = set("<>&|;()")
SHELLS = ("sh", "bash", "ash", "dash")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Hook:
    kind: str  # "agent" or "sleep"
    text: str
    sleep_s: float = 0.0  # a sleep hook's wait; for the agent, sleeps beside it in the same script
    arguments: Arguments = field(default_factory=Arguments)
    command: str = "deregister"  # the agent's command whose settings apply: deregister, or the sidecar's serve
    settings_from: Mapping[str, Any] | None = None  # the sidecar container holding the agent's env

    @property
    def flags(self) -> Mapping[str, str]:
        return self.arguments.flags

    @property
    def wait(self) -> bool:
        return self.arguments.wait


def _seconds(words: Sequence[str]) -> float | None:
    """What ``sleep WORDS`` waits (the arguments add up), or None if it is not plain numbers."""
    matches = [re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", w) for w in words]
    if not words or not all(matches):
        return None
    return sum(float(m.group(1)) * _UNITS[m.group(2)] for m in matches if m)


def shell_arguments(text: str) -> list[str]:
    """The words of one shell command, up to the first operator, without its redirections."""
    line = _FD_BEFORE_REDIRECT.sub("", text.split("\n", 1)[0])
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # an unclosed quote: the shell would refuse the script anyway
        tokens = line.split()
    words: list[str] = []
    redirect_target = False
    for token in tokens:
        if redirect_target:
            redirect_target = False
        elif token and set(token) <= _OPERATOR:
            if token[0] not in "<>" and token not in ("&>", "&>>"):
                break  # ; & && || | ( ): the command ends here
            redirect_target = True
        else:
            words.append(token)
    return words


def _shell_hook(commands: Commands, shown: str, script: str) -> Hook | None:
    sleeps = [_seconds(m.group(1).split()) or 0.0 for m in _SLEEP_IN_SHELL.finditer(script)]
    agent = _AGENT_IN_SHELL.search(script)
    if agent and agent.group(1) == "deregister":
        arguments = parse_arguments(commands, "deregister", shell_arguments(script[agent.end() :]), expanded=True)
        return Hook("agent", f"exec {shown}", sleep_s=sum(sleeps), arguments=arguments)
    return Hook("sleep", f"exec {shown}", sleep_s=sum(sleeps)) if sleeps else None


def _exec_hook(commands: Commands, words: Sequence[str]) -> Hook | None:
    if not words:
        return None
    shown = " ".join(shlex.quote(w) for w in words)
    base = PurePosixPath(words[0]).name
    if base in SHELLS and len(words) >= 3 and words[1] in ("-c", "-ec", "-ce", "-lc"):
        return _shell_hook(commands, shown, words[2])
    for index, word in enumerate(words):
        if PurePosixPath(word).name == "prestop-agent" and words[index + 1 : index + 2] == ["deregister"]:
            arguments = parse_arguments(commands, "deregister", words[index + 2 :], expanded=False)
            return Hook("agent", f"exec {shown}", arguments=arguments)
    seconds = _seconds(words[1:]) if base == "sleep" else None
    return Hook("sleep", f"exec {shown}", sleep_s=seconds) if seconds is not None else None


def serve_arguments(container: Mapping[str, Any]) -> list[str] | None:
    """The arguments after ``serve`` if the container runs ``prestop-agent serve`` (a sidecar), else None."""
    words = [str(w) for w in [*as_list(container.get("command")), *as_list(container.get("args"))]]
    if "prestop-agent" in str(container.get("image", "")) and words[:1] == ["serve"]:
        return words[1:]  # the agent's image, its entrypoint given the ``serve`` argument
    for index, word in enumerate(words):
        if PurePosixPath(word).name == "prestop-agent" and "serve" in words[index + 1 :]:
            return words[words.index("serve", index + 1) + 1 :]
        match = _AGENT_IN_SHELL.search(word)
        if match and match.group(1) == "serve":
            return shell_arguments(word[match.end() :])
    return None


def runs_serve(container: Mapping[str, Any]) -> bool:
    """Whether the container runs ``prestop-agent serve`` (the sidecar)."""
    return serve_arguments(container) is not None


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
    commands: Commands, container: Mapping[str, Any], pod_spec: Mapping[str, Any], get: Mapping[str, Any]
) -> tuple[Hook | None, str | None]:
    path = str(get.get("path", "/")).split("?", 1)[0]
    port = str(get.get("port", ""))
    sidecars: list[Mapping[str, Any]] = [
        c
        for c in [*as_list(pod_spec.get("initContainers")), *as_list(pod_spec.get("containers"))]
        if isinstance(c, Mapping) and runs_serve(c)  # the sidecar, also when its own hook joins the drain
    ]
    by_port = [c for c in sidecars if port in _ports(c)]
    if not by_port and not path.rstrip("/").endswith("/prestop"):
        return None, f"preStop httpGet {path} on port {port} is not a prestop-agent sidecar"
    chosen = by_port or sidecars
    sidecar = chosen[0] if chosen else None
    serve_args = serve_arguments(sidecar) if sidecar is not None else None
    # The kubelet expands $(VAR) in a container's command and args (not in a hook's).
    arguments = parse_arguments(commands, "serve", serve_args, expanded=True) if serve_args is not None else Arguments()
    hook = Hook("agent", f"httpGet {path} port {port}", arguments=arguments, command="serve", settings_from=sidecar)
    return hook, None


def find_hook(
    commands: Commands, container: Mapping[str, Any], pod_spec: Mapping[str, Any]
) -> tuple[Hook | None, str | None]:
    """The container's preStop hook as the check understands it, or (None, why it is not checked).

    ``commands``: the program's own commands, which parse the hook's arguments exactly as a run would.
    """
    pre_stop = mapping(mapping(container.get("lifecycle")).get("preStop"))
    if not pre_stop:
        return None, "no preStop hook"
    if "exec" in pre_stop:
        command = [str(c) for c in as_list(mapping(pre_stop["exec"]).get("command"))]
        hook = _exec_hook(commands, command)
        if hook is None:
            return None, f"preStop runs {' '.join(command)!r}, neither prestop-agent nor a plain sleep"
        return hook, None
    if "sleep" in pre_stop:
        seconds = mapping(pre_stop["sleep"]).get("seconds")
        if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 0:
            raise ConfigError(f"lifecycle.preStop.sleep.seconds={seconds!r} is not a whole number of seconds")
        return Hook("sleep", f"sleep action {seconds} s", sleep_s=float(seconds)), None
    if "httpGet" in pre_stop:
        return _http_hook(commands, container, pod_spec, mapping(pre_stop["httpGet"]))
    return None, "preStop hook of an unknown kind"
