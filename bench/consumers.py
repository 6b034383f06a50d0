"""The consumers the benchmark rolls against: the same Spring app with its load-balancer cache on or off.

``cached`` is Spring Cloud LoadBalancer's default (instance lists cached 35 s); ``push`` turns
the cache off, so every call reads the Nacos client's own list, which the server keeps current
by push. Each writes one JSON line per request (``consumer-<kind>.jsonl`` in the run directory).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from pods import Nacos, Pod, java_command, spawn
from summary import read_outcomes

CONSUMERS = {
    "cached": "Spring Cloud LoadBalancer defaults: round robin, 35 s cache (Caffeine), no retries",
    "push": "Spring Cloud LoadBalancer, cache off: every call reads the Nacos client's push-updated list; no retries",
}
PUSH_SETTLE_S = 10.0  # a push-following consumer drops an instance within about a second: no cache to outwait


def start_consumer(
    jar: Path, nacos: Nacos, run_dir: Path, rate: int, kind: str
) -> tuple[subprocess.Popen[bytes], Path]:
    out = run_dir / f"consumer-{kind}.jsonl"
    home = run_dir / f"consumer-{kind}"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "SPRING_CLOUD_NACOS_DISCOVERY_SERVER_ADDR": nacos.addr,
        "BENCH_OUT": str(out),
        "BENCH_RATE": str(rate),
    }
    if kind == "push":
        env["SPRING_CLOUD_LOADBALANCER_CACHE_ENABLED"] = "false"
    log_path = run_dir / f"consumer-{kind}.log"
    return spawn(java_command(jar, home), env=env, log=log_path, cwd=home), out


def stop_consumer(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def wait_consumer_sees(out: Path, pods: Sequence[Pod], proc: subprocess.Popen[bytes], timeout: float) -> None:
    want = {(p.ip, p.port) for p in pods}
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the consumer exited with {proc.returncode}")
        recent = [o for o in read_outcomes(out)[-500:] if o.kind == "ok"]
        if want <= {(o.host, o.port) for o in recent}:
            return
        time.sleep(1.0)
    raise RuntimeError("the consumer never reached every provider")
