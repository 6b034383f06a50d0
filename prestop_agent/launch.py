"""The ``prestop-agent`` command's entry point: start only what the command needs.

The hook runs inside the application's container, under its CPU and memory limits, at the
worst moment (shutdown). So ``--version`` answers before any dependency is imported, and
runs that print no help keep ``rich`` out: it only draws help, yet httpx (its command-line
helper) and structlog (its dev console) import it whenever it is installed, which costs
about 25 MB and a tenth of a second.
"""

from __future__ import annotations

import sys

from prestop_agent import __version__

_HELP = frozenset({"--help", "-h"})
_ONLY_FOR_HELP = ("rich", "pygments")


def main() -> None:
    args = sys.argv[1:]
    if args == ["--version"]:
        sys.stdout.write(f"prestop-agent {__version__}\n")
        return
    if args and not _HELP.intersection(args):
        for name in _ONLY_FOR_HELP:
            # None in sys.modules marks it unavailable to importlib: importing it fails, the importer does without.
            sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    from prestop_agent.cli import main as run

    run()
