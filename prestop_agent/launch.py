"""The installed command's entry point: start with as little as the command needs.

The hook runs inside the application's container, under its CPU and memory limits, at the
worst moment (shutdown). So ``--version`` answers before any dependency is imported, and
every other command starts with less than its dependencies would load by themselves:

- ``rich`` is kept out: help and usage errors are plain text (``cli.app``), yet httpx (for
  its command-line helper) and structlog (for its dev console) import rich whenever it is
  installed, which costs about 25 MB and a tenth of a second. ``anyio`` likewise: httpcore
  imports it for its async connection pools only, and the agent's requests are synchronous.
- The cyclic garbage collector is paused while the modules load: the start-up creates some
  50,000 tracked objects that live until exit and almost no garbage, so the collector's passes
  over them are wasted work (a fifth to a quarter of the import's CPU, measured in paired
  runs). Then what was loaded is frozen out of later collections (``gc.freeze``) and the
  collector runs as usual.

``asyncio`` (imported by structlog for its async API, about 1.3 MB) stays: a stand-in module
that imports it on first use crashed the interpreter when a submodule (``asyncio.events``)
was imported through it, and making it safe takes import-system machinery we would rather
not own.
"""

from __future__ import annotations

import gc
import sys

from prestop_agent import __version__

_NEVER_USED = ("rich", "pygments", "anyio")


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(f"prestop-agent {__version__}\n")
        return
    gc.disable()
    try:
        for name in _NEVER_USED:
            # None in sys.modules marks it unavailable to importlib: importing it fails, the importer does without.
            sys.modules.setdefault(name, None)  # type: ignore[arg-type]
        from prestop_agent.cli import main as run
    finally:
        gc.freeze()
        gc.enable()
    run()
