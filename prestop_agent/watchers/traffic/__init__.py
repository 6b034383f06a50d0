"""Watcher ``traffic``: has the pod's service port gone quiet, as seen from inside the pod?

No credentials needed: all containers of a pod share one network namespace, so the
agent sees the TCP sockets of the app, and the kernel announces each connection that
ends. The verdict is GONE when every caller (peer address) has been silent for its own
quiet time: about four times the longest gap seen between its requests, at least
``PRESTOP_QUIET_MIN_SECONDS`` (2 s) and at most ``PRESTOP_QUIET_SECONDS`` (10 s). A
caller heard too little to have a rate, or traffic that names no caller, gets the full
``PRESTOP_QUIET_SECONDS``; so does a watch that heard nothing (the fixed rule of earlier
versions). The rule and why its false positives are rare: ``quiet``.

Why these bounds. Callers that still hold this pod (consumers with a cached instance
list, kube-proxy rules, ingress or load-balancer pools) keep sending requests at their
normal rate; one that calls 50 times a second and then goes silent for two seconds has
dropped the pod, one that calls every 5 s has not. 10 s is the figure a Nacos maintainer
gives for this problem ("wait until no new request for about 10 s") and fits inside the
default grace budget. Low-traffic services that see fewer than one request per 10 s
should raise it, or combine this watcher with ``endpoints``.

Peers ignored by default: the node (``HOST_IP``: kubelet probes come from it), loopback
and the pod's own IP (traffic from inside the pod). Behind a sidecar proxy (Istio and
the like) the app's peers are loopback or the pod IP; set
``PRESTOP_TRAFFIC_IGNORE_LOOPBACK=false`` there. ``/proc/net/snmp`` ``PassiveOpens`` is
reported in the details but is not evidence: it is namespace-wide and counts probes and
other ports too.

In the order data flows: ``sockets`` lists the watched ports' TCP sockets and the
namespace's counters, ``closed`` hears of the connections that ended between polls,
``activity`` reads one poll of them as dated evidence per caller, ``quiet`` holds the
rule, ``watcher`` polls and judges.
"""

from prestop_agent.watchers.traffic.watcher import DEFAULT_QUIET_SECONDS, NAME, TrafficConfig, load_config

__all__ = ["DEFAULT_QUIET_SECONDS", "NAME", "TrafficConfig", "load_config"]
