"""Watcher ``traffic``: has the pod's service port gone quiet, as seen from inside the pod?"""

from prestop_agent.watchers.traffic.watcher import *  # noqa: F403 - one step: the module becomes a package
