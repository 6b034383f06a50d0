"""What a roll records (terminations, the consumer's outcomes) and how a run is summarised: rows, tables, machine."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


@dataclasses.dataclass(frozen=True)
class Strategy:
    name: str
    label: str
    grace_s: float
    hook: tuple[str, ...] | None
    env: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass
class Termination:
    pod: str
    ip: str
    port: int
    deleted: float
    hook_exit: int | None = None
    hook_timed_out: bool = False
    prestop_s: float = 0.0
    sigterm: float = 0.0
    exited: float = 0.0
    sigkilled: bool = False
    hook_cpu_s: float | None = None
    hook_peak_rss_kib: int | None = None
    # In a cluster: the container's exit code, the kubelet's FailedPreStopHook messages, and the
    # outcome in the agent's deregister_finished line.
    exit_code: int | None = None
    hook_events: list[str] = dataclasses.field(default_factory=list)
    agent_outcome: str | None = None


@dataclasses.dataclass
class Phase:
    strategy: Strategy
    started: float
    consumer: str = "cached"
    ended: float = 0.0  # the last old pod is gone
    settled: float = 0.0  # end of the window failures are counted in
    terminations: list[Termination] = dataclasses.field(default_factory=list)
    starts: list[tuple[str, float, float]] = dataclasses.field(default_factory=list)  # pod, started, ready


@dataclasses.dataclass
class Outcome:
    t: float
    status: int | None
    error: str | None
    host: str | None
    port: int | None

    @property
    def kind(self) -> str:
        if self.error is not None:
            return "conn_error" if self.error in CONNECTION_ERRORS else "other_error"
        if self.status is not None and self.status >= 500:
            return "5xx"
        if self.status is not None and self.status >= 400:
            return "4xx"
        return "ok"


CONNECTION_ERRORS = frozenset(
    {"ConnectException", "SocketTimeoutException", "SocketException", "NoRouteToHostException", "IOException"}
)


def read_outcomes(path: Path) -> list[Outcome]:
    outcomes: list[Outcome] = []
    if not path.exists():
        return outcomes
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by the consumer's exit
            if "seq" not in row:
                continue
            outcomes.append(Outcome(row["t"] / 1000.0, row["status"], row["error"], row["host"], row["port"]))
    outcomes.sort(key=lambda o: o.t)
    return outcomes


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(phase: Phase, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    window = [o for o in outcomes if phase.started <= o.t < phase.settled]
    kinds: dict[str, int] = {}
    errors: dict[str, int] = {}
    for o in window:
        kinds[o.kind] = kinds.get(o.kind, 0) + 1
        if o.error is not None:
            errors[o.error] = errors.get(o.error, 0) + 1
        elif o.status is not None and o.status >= 400:
            errors[str(o.status)] = errors.get(str(o.status), 0) + 1
    prestops = [t.prestop_s for t in phase.terminations]
    cpus = [t.hook_cpu_s for t in phase.terminations if t.hook_cpu_s is not None]
    rss = [t.hook_peak_rss_kib for t in phase.terminations if t.hook_peak_rss_kib is not None]
    s = phase.strategy
    return {
        "strategy": s.name,
        "consumer": phase.consumer,
        "label": s.label,
        "grace_s": s.grace_s,
        "hook": [_repo_relative(a) for a in s.hook] if s.hook else None,
        "hook_env": dict(s.env),
        "started": phase.started,
        "ended": phase.ended,
        "settled": phase.settled,
        "rollout_s": round(phase.ended - phase.started, 2),
        "requests": len(window),
        "ok": kinds.get("ok", 0),
        "status_5xx": kinds.get("5xx", 0),
        "status_4xx": kinds.get("4xx", 0),
        "connection_errors": kinds.get("conn_error", 0),
        "other_errors": kinds.get("other_error", 0),
        "failed": kinds.get("5xx", 0) + kinds.get("conn_error", 0) + kinds.get("other_error", 0),
        "errors_by_kind": errors,
        "prestop_mean_s": _round(mean(prestops)),
        "prestop_max_s": _round(max(prestops, default=None)),
        "hook_cpu_mean_s": _round(mean(cpus), 3),
        "hook_cpu_max_s": _round(max(cpus, default=None), 3),
        "hook_peak_rss_mib": _round(max(rss) / 1024 if rss else None, 1),
        "terminations": [dataclasses.asdict(t) for t in sorted(phase.terminations, key=lambda t: t.deleted)],
        "replacements": [{"pod": n, "started": a, "ready": b} for n, a, b in phase.starts],
    }


def _repo_relative(arg: str) -> str:
    return arg.removeprefix(f"{REPO}/")


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def compare(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per consumer and strategy, over its rolls: failures, per-pod preStop and rollout (each, and the median),
    and the agent strategies' median rollout and preStop as a ratio of the seed 001 script's."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row.get("consumer", "cached"), row["strategy"]), []).append(row)
    out: list[dict[str, Any]] = []
    for (consumer, strategy), group in groups.items():
        prestops = [t["prestop_s"] for r in group for t in r["terminations"]]
        rollouts = [r["rollout_s"] for r in group]
        out.append(
            {
                "consumer": consumer,
                "strategy": strategy,
                "rolls": len(group),
                "failed": sum(r["failed"] for r in group),
                "requests": sum(r["requests"] for r in group),
                "prestop_s": [round(p, 2) for p in prestops],
                "prestop_median_s": _round(median(prestops), 2),
                "rollout_s": rollouts,
                "rollout_median_s": _round(median(rollouts), 2),
                "hook_cpu_median_s": _round(
                    median([t["hook_cpu_s"] for r in group for t in r["terminations"] if t["hook_cpu_s"] is not None]),
                    3,
                ),
                "hook_peak_rss_max_mib": max((r["hook_peak_rss_mib"] or 0.0 for r in group), default=None) or None,
            }
        )
    for entry in out:
        base = next((e for e in out if e["consumer"] == entry["consumer"] and e["strategy"] == "seed001"), None)
        for key in ("rollout", "prestop"):
            ours, theirs = entry[f"{key}_median_s"], base and base[f"{key}_median_s"]
            entry[f"{key}_vs_seed001"] = round(ours / theirs, 2) if ours is not None and theirs else None
    return out


def comparison_table(entries: Sequence[dict[str, Any]]) -> str:
    head = ("consumer", "strategy", "rolls", "failed", "preStop per pod (median)", "rollouts (median)", "vs seed001")
    lines = [
        (
            e["consumer"],
            e["strategy"],
            str(e["rolls"]),
            str(e["failed"]),
            f"{', '.join(f'{p:.1f}' for p in e['prestop_s'])} ({_fmt(e['prestop_median_s'], ' s')})",
            f"{', '.join(f'{r:.1f}' for r in e['rollout_s'])} ({_fmt(e['rollout_median_s'], ' s')})",
            "-" if e["rollout_vs_seed001"] is None else f"{e['rollout_vs_seed001']}x rollout",
        )
        for e in entries
    ]
    return _markdown(head, lines)


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        "consumer",
        "strategy",
        "requests",
        "5xx",
        "conn err",
        "other err",
        "preStop mean",
        "preStop max",
        "rollout",
        "hook CPU",
        "hook peak RSS",
    )
    lines = []
    for r in rows:
        lines.append(
            (
                r.get("consumer", "cached"),
                r["strategy"],
                str(r["requests"]),
                str(r["status_5xx"]),
                str(r["connection_errors"]),
                str(r["other_errors"]),
                _fmt(r["prestop_mean_s"], " s"),
                _fmt(r["prestop_max_s"], " s"),
                _fmt(r["rollout_s"], " s"),
                _fmt(r["hook_cpu_mean_s"], " s"),
                _fmt(r["hook_peak_rss_mib"], " MiB"),
            )
        )
    return _markdown(head, lines)


def _markdown(head: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines, strict=True)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
    return "\n".join(out)


def _fmt(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value}{unit}"


def machine() -> dict[str, Any]:
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
    }


def versions(nacos_version: str) -> dict[str, str]:
    pom = (BENCH / "pom.xml").read_text()

    def pom_value(pattern: str) -> str:
        found = re.search(pattern, pom, re.S)
        return found.group(1) if found else "unknown"

    java_bin = shutil.which("java") or "java"
    java = subprocess.run([java_bin, "-version"], capture_output=True, text=True, check=False).stderr.splitlines()
    from prestop_agent import __version__

    return {
        "prestop_agent": __version__,
        "nacos_server": nacos_version,
        "spring_boot": pom_value(r"spring-boot-starter-parent</artifactId>\s*<version>([^<]+)"),
        "spring_cloud": pom_value(r"<spring-cloud.version>([^<]+)"),
        "spring_cloud_alibaba": pom_value(r"<spring-cloud-alibaba.version>([^<]+)"),
        "nacos_client": "2.4.3 (from Spring Cloud Alibaba)",
        "java": java[0] if java else "unknown",
        "python": platform.python_version(),
    }


def outcomes_as_rows(outcomes: Sequence[Outcome], began: float) -> list[tuple[float, str, str]]:
    return [(o.t - began, o.kind, f"{o.host}:{o.port}" if o.host else "none") for o in outcomes]


def write_results(
    phases: Sequence[Phase],
    outcomes: dict[str, list[Outcome]],
    *,
    machine: dict[str, Any],
    versions: dict[str, str],
    settings: dict[str, Any],
    total_s: float,
    run_dir: Path,
    results: Path,
    stem: str,
    chart: bool,
) -> dict[str, Any]:
    """The run's JSON (every number, per pod too), its tables on the terminal, and the chart."""
    rows = [summarize(p, outcomes.get(p.consumer, [])) for p in phases]
    comparison = compare(rows)
    began = phases[0].started if phases else 0.0
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": versions,
        "settings": settings,
        "total_s": round(total_s, 1),
        "run_dir": str(run_dir.relative_to(REPO)) if run_dir.is_relative_to(REPO) else str(run_dir),
        "strategies": rows,
        "comparison": comparison,
    }
    results.mkdir(parents=True, exist_ok=True)
    json_path = results / f"{stem}.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    print()
    print(comparison_table(comparison))
    print(f"\nresults: {json_path}")
    if chart and phases:
        from chart import draw

        png = results / f"{stem}.png"
        origin = began - 15.0
        every = sorted((o for kind in outcomes.values() for o in kind), key=lambda o: o.t)
        draw(result, outcomes_as_rows(every, origin), png, origin)
        print(f"chart:   {png}")
    return result
