"""The ``prestop-agent`` command's entry point: start only what the command needs.

The hook runs inside the application's container, under its CPU and memory limits, at the
worst moment (shutdown). So ``--version`` answers before any dependency is imported, and
``rich`` is kept out: help and usage errors are plain text (``cli.app``), yet httpx (for
its command-line helper) and structlog (for its dev console) import rich whenever it is
installed, which costs about 25 MB and a tenth of a second.
"""

from __future__ import annotations

import sys

from prestop_agent import __version__

_NEVER_USED = ("rich", "pygments")


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(f"prestop-agent {__version__}\n")
        return
    for name in _NEVER_USED:
        # None in sys.modules marks it unavailable to importlib: importing it fails, the importer does without.
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    from prestop_agent.cli import main as run

    run()
