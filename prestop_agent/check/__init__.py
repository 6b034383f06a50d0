"""``prestop-agent check``: do a workload's shutdown timings fit together?"""

from prestop_agent.check.rules import *  # noqa: F403 - one step: the module becomes a package
