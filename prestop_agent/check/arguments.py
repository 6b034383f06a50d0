"""A hook's ``prestop-agent`` arguments, parsed by the agent's own command line.

The check must accept exactly what the agent accepts: an option the command does not have
(``--grace``), a missing value or a stray word ends the real run with exit 2 before it drains
anything. So the arguments go through the same parser, not a look-alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: The program's commands by name, as its command line runs them: click's ``Command`` objects
#: (or those of the copy of click that newer typer ships), handed in by the CLI.
Commands = Mapping[str, Any]


@dataclass(frozen=True)
class Arguments:
    """What ``prestop-agent COMMAND ARGS`` would run with, or why it would refuse to run."""

    flags: Mapping[str, str] = field(default_factory=dict)  # flag name (no dashes) -> value as written
    unknown: frozenset[str] = frozenset()  # flags whose value only the shell knows ($VAR), as "--name"
    wait: bool = True
    dry_run: bool = False
    refused: str | None = None  # why the run ends at once (exit 2, or --help's exit 0)
    literal_dollar: bool = False  # a "$" reaches the agent as it is: nothing expands it


def parse_arguments(commands: Commands, command: str, args: Sequence[str], *, expanded: bool) -> Arguments:
    """``args`` (what follows the command's name) as the agent's command line reads them.

    ``expanded``: something replaces ``$VAR`` or ``$(VAR)`` before the agent runs (a shell, or
    the kubelet in a container's command and args). The kubelet does not expand a lifecycle
    hook's ``exec`` command: there the agent gets the ``$`` as it is written.
    """
    if "--help" in args:
        return Arguments(refused="`--help` prints the help and exits 0 without draining")
    parser = commands[command]
    try:
        context = parser.make_context(f"prestop-agent {command}", list(args))
    except Exception as exc:  # a usage error, of whichever click the program runs on
        said = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        return Arguments(refused=f"`prestop-agent {command} {' '.join(args)}`: {said}")
    flags: dict[str, str] = {}
    unknown: set[str] = set()
    for param in parser.params:
        value = context.params.get(param.name or "")
        if not isinstance(value, str) or not param.opts[0].startswith("--"):
            continue
        name = param.opts[0].removeprefix("--")
        flags[name] = value
        if expanded and shell_fills_in(value):
            unknown.add(f"--{name}")
    return Arguments(
        flags,
        frozenset(unknown),
        wait=context.params.get("wait") is not False,
        dry_run=context.params.get("dry_run") is True,
        literal_dollar=not expanded and any("$" in a for a in args),
    )


def shell_fills_in(value: str) -> bool:
    """Whether a shell replaces part of this word at run time (``$VAR``, ``$(command)``, backticks)."""
    return "$" in value or "`" in value
