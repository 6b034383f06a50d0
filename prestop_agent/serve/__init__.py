"""Sidecar mode (``prestop-agent serve``): the agent as a small HTTP server the app's ``preStop.httpGet`` calls.

The kubelet runs a ``preStop.httpGet`` hook against the pod IP and holds SIGTERM until the
answer arrives, so a sidecar sharing the pod's network namespace can drain any app, whatever
its image. Endpoints (paths as defaults):

    GET  /prestop   exactly ``deregister --wait``, under the same budget, counted from the first
                    call's arrival; answers when done. Later calls join the running drain, or get
                    its result again once it has finished. 200 drained · 502 registry failed ·
                    504 budget ran out · 500 unexpected error.
    GET  /status    what ``status --json`` prints. 200, or 502 when no server answered.
    POST /register  what ``register`` does (``?wait=true`` for ``register --wait``); resets the
                    finished drain so a later /prestop drains again. 409 while a drain or another
                    register runs. ``GET /register`` only with PRESTOP_SERVE_REGISTER_GET=true.
    GET  /healthz   200 while the server runs (for the sidecar's own startup/readiness probe).

Callers: /prestop, /register and /status are answered only for the node (HOST_IP, where the
kubelet calls from), loopback, and PRESTOP_SERVE_ALLOW_FROM; /prestop and /register also need
the PRESTOP_SERVE_TOKEN header value when one is set. Everything else gets 403, logged with the
source. /healthz answers anyone and reveals nothing.

Idle, the server blocks in one ``select`` with no timeout: no thread wakes up until a
connection or a signal arrives. SIGTERM/SIGINT close the listener, let a running drain finish
(it is bounded by its budget), give other requests up to a second, and exit 0.

In the order a call flows: ``listener`` accepts it and handles the signals, ``routes`` checks
the caller and answers over HTTP, ``operations`` runs the drain (started, joined or cached),
register and status; ``settings`` holds the sidecar's own settings.
"""
