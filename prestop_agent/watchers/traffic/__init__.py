"""Watcher ``traffic``: has the pod's service port gone quiet, as seen from inside the pod?

No credentials needed: all containers of a pod share one network namespace, so the
agent sees the TCP sockets of the app. The verdict is GONE when, for
``PRESTOP_QUIET_SECONDS``, no outside peer has opened a connection to a watched port
and no connection on it has carried inbound data.

Default quiet time: 10 s. Callers that still hold this pod (consumers with a cached
instance list, kube-proxy rules, ingress or load-balancer pools) keep sending requests
at their normal rate; a service that got nothing for 10 s after it was taken out of
the registry has almost certainly been dropped by them. 10 s is also the figure a Nacos
maintainer gives for this problem ("wait until no new request for about 10 s"), it is
longer than the 1-5 s poll interval (so one quiet poll never suffices on its own), and
it fits inside the default grace budget. Low-traffic services that see fewer than one
request per 10 s should raise it, or combine this watcher with ``endpoints``.

Peers ignored by default: the node (``HOST_IP``: kubelet probes come from it), loopback
and the pod's own IP (traffic from inside the pod). Behind a sidecar proxy (Istio and
the like) the app's peers are loopback or the pod IP; set
``PRESTOP_TRAFFIC_IGNORE_LOOPBACK=false`` there. ``/proc/net/snmp`` ``PassiveOpens`` is
reported in the details but is not evidence: it is namespace-wide and counts probes and
other ports too.

In the order data flows: ``sockets`` lists the namespace's TCP sockets and counters from
the kernel, ``activity`` reads one poll of them as evidence, ``watcher`` judges quiet.
"""

from prestop_agent.watchers.traffic.watcher import DEFAULT_QUIET_SECONDS, NAME, TrafficConfig, load_config

__all__ = ["DEFAULT_QUIET_SECONDS", "NAME", "TrafficConfig", "load_config"]
