"""The watchers users can name in PRESTOP_WAIT_FOR, in one plain table.

Each evidence module offers ``load_config(Source, watched)``, which returns a ``WatcherConfig``
whose ``build(WatchContext)`` makes the watcher for a run. ``watched`` is every name the user
listed, since one watcher's defaults can depend on the others (the registry's consumer-cache
allowance is 0 when traffic is watched). Modules are imported only when named, so an optional
cloud SDK is needed only by those who ask for it.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterable, Iterator, Mapping
from typing import cast

from prestop_agent.errors import ConfigError
from prestop_agent.source import Source
from prestop_agent.watchers.base import WatchContext, Watcher, WatcherConfig

MODULES: Mapping[str, str] = {
    "registry": "prestop_agent.watchers.registry",
    "traffic": "prestop_agent.watchers.traffic",
    "endpoints": "prestop_agent.watchers.endpoints",
    "aws-alb": "prestop_agent.watchers.aws_alb",
    "aliyun-alb": "prestop_agent.watchers.aliyun_alb",
}
NAMES = tuple(MODULES)


def watcher_names(items: Iterable[str]) -> tuple[str, ...]:
    """The names of a PRESTOP_WAIT_FOR list as the agent reads them: trimmed, lower case, first mention kept."""
    return tuple(dict.fromkeys(item.strip().lower() for item in items if item.strip()))


def load_configs(names: tuple[str, ...], src: Source, origin: str) -> dict[str, WatcherConfig]:
    """Each named watcher's config, in the order named; ConfigError for an unknown name or bad settings."""
    configs: dict[str, WatcherConfig] = {}
    for name in names:
        if name not in MODULES:
            raise ConfigError(f"{origin} names an unknown watcher {name!r}; choose from {', '.join(NAMES)}")
        module = importlib.import_module(MODULES[name])
        configs[name] = cast(WatcherConfig, module.load_config(src, names))
    return configs


@contextlib.contextmanager
def built(configs: Iterable[WatcherConfig], context: WatchContext) -> Iterator[list[Watcher]]:
    """The watchers of one run, closed when the run is done with them (also when a later one fails to build)."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(contextlib.closing(config.build(context))) for config in configs]
