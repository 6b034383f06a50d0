"""The watchers users can name in PRESTOP_WAIT_FOR, in one plain table.

Each evidence module offers ``load_config(Source)`` and ``build(config, PodTarget)``; they are
imported only when named, so an optional cloud SDK is needed only by those who ask for it.
The registry watcher is built by the agent itself, since it shares the agent's Nacos connection.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, cast

from prestop_agent.errors import ConfigError
from prestop_agent.source import Source
from prestop_agent.watchers.base import PodTarget, Watcher

REGISTRY = "registry"
MODULES: Mapping[str, str] = {
    "traffic": "prestop_agent.watchers.traffic",
    "endpoints": "prestop_agent.watchers.endpoints",
    "aws-alb": "prestop_agent.watchers.aws_alb",
    "aliyun-alb": "prestop_agent.watchers.aliyun_alb",
}
NAMES = (REGISTRY, *MODULES)


def _module(name: str) -> Any:
    return importlib.import_module(MODULES[name])


def load_configs(names: tuple[str, ...], src: Source, origin: str) -> dict[str, object]:
    """Each named watcher's config; ConfigError for an unknown name or a watcher's bad settings."""
    configs: dict[str, object] = {}
    for name in names:
        if name == REGISTRY:
            continue
        if name not in MODULES:
            raise ConfigError(f"{origin} names an unknown watcher {name!r}; choose from {', '.join(NAMES)}")
        configs[name] = _module(name).load_config(src)
    return configs


def build(name: str, config: object, target: PodTarget) -> Watcher:
    return cast(Watcher, _module(name).build(config, target))
