"""``prestop-agent check``: read workload manifests and check that their shutdown timings fit together.

In the order data flows: ``manifests`` reads the files, ``workloads`` matches each workload
with the Services, Ingresses and ConfigMaps of its directory, ``hooks`` recognises each
container's preStop hook (``arguments`` reads the agent's arguments with the agent's own
command line), ``environment`` resolves its variables, ``settings`` runs the agent's own
settings validation on them, ``balancers`` and ``annotations`` find the load balancer in
front of it, ``rules`` derives the timeline and checks it, ``report`` holds and prints the
result.
"""

from prestop_agent.check.report import CheckReport, render
from prestop_agent.check.workloads import run_check

__all__ = ["CheckReport", "render", "run_check"]
