"""The ``prestop-agent`` command's entry point: start only what the command needs.

The hook runs inside the application's container, under its CPU and memory limits, at the
worst moment (shutdown). So ``--version`` answers before any dependency is imported, and
every other command starts with less than its dependencies would load by themselves:

- ``rich`` is kept out: help and usage errors are plain text (``cli.app``), yet httpx (for
  its command-line helper) and structlog (for its dev console) import rich whenever it is
  installed, which costs about 25 MB and a tenth of a second. ``anyio`` likewise: httpcore
  imports it for its async connection pools only, and the agent's requests are synchronous.
- ``asyncio`` is imported by structlog and tenacity for their async APIs, which the agent
  never calls: a stand-in module imports it at its first use instead (about 1.3 MB and
  15 ms of CPU saved at every start).
- The cyclic garbage collector is paused while the modules load: the start-up creates some
  100,000 objects that live until exit and almost no garbage, so the collector's passes over
  them are wasted work (about a sixth of the start-up's CPU). Then what was loaded is frozen
  out of later collections (``gc.freeze``) and the collector runs as usual.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import sys
import threading
import types

from prestop_agent import __version__

_NEVER_USED = ("rich", "pygments", "anyio")
_DEFERRED = ("asyncio",)

_loading = threading.RLock()


class Deferred(types.ModuleType):
    """Stands in ``sys.modules`` for a module until something uses it, then imports the module itself.

    ``import asyncio`` finds the stand-in and costs nothing. The first attribute read
    (``asyncio.run``, ``from asyncio import Lock``) imports the real module, which replaces
    the stand-in in ``sys.modules``; reads through the stand-in keep reaching the real one.
    """

    def __getattr__(self, name: str) -> object:
        return getattr(_import(self), name)


def _import(placeholder: Deferred) -> types.ModuleType:
    with _loading:
        if sys.modules.get(placeholder.__name__) is placeholder:
            del sys.modules[placeholder.__name__]
            try:
                importlib.import_module(placeholder.__name__)
            except BaseException:
                sys.modules[placeholder.__name__] = placeholder
                raise
    return sys.modules[placeholder.__name__]


def defer(name: str) -> None:
    """Put a stand-in for module ``name`` in ``sys.modules``, unless it is imported already or not installed."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    placeholder = Deferred(name)
    placeholder.__spec__ = spec
    if spec.submodule_search_locations is not None:
        # The import system reads a package's __path__ to import a submodule (asyncio.events):
        # answering it here keeps that from importing the package a second time.
        placeholder.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = placeholder


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(f"prestop-agent {__version__}\n")
        return
    gc.disable()
    try:
        for name in _NEVER_USED:
            # None in sys.modules marks it unavailable to importlib: importing it fails, the importer does without.
            sys.modules.setdefault(name, None)  # type: ignore[arg-type]
        for name in _DEFERRED:
            defer(name)
        from prestop_agent.cli import main as run
    finally:
        gc.freeze()
        gc.enable()
    run()
