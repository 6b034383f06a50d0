"""What ``check`` found: each container's timeline and values, the rules it breaks, and the text printed."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Value:
    """A number of seconds and where it came from; ``seconds`` is None when it could not be known."""

    seconds: float | None
    source: str

    @property
    def known(self) -> bool:
        return self.seconds is not None


@dataclass(frozen=True)
class Violation:
    rule: str
    message: str


@dataclass
class ContainerCheck:
    """One container's derived timeline, the rules it breaks, and what could not be checked."""

    file: str
    workload: str
    container: str
    hook: str
    values: list[tuple[str, Value]] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.workload} container {self.container}"


@dataclass
class CheckReport:
    containers: list[ContainerCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def violations(self) -> list[tuple[ContainerCheck, Violation]]:
        return [(c, v) for c in self.containers for v in c.violations]

    @property
    def ok(self) -> bool:
        return not self.violations


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:g}"


def render(report: CheckReport) -> str:
    """The timelines, then one line per violated rule with its fix, then a summary line."""
    lines: list[str] = []
    for check in report.containers:
        lines.append(f"{check.label} ({check.file}): preStop {check.hook}")
        for name, value in check.values:
            number = f"{fmt(value.seconds)} s" if value.seconds is not None else ""
            lines.append(f"  {name:26} {number or '-':>7}  {value.source}")
        lines.append("  timeline:")
        lines.extend(f"    t={fmt(t):<6} {text}" for t, text in check.events)
        lines.extend(f"  note: {note}" for note in check.notes)
        lines.append("")
    lines.extend(f"note: {note}" for note in report.notes)
    for check, violation in report.violations:
        lines.append(f"FAIL [{violation.rule}] {check.label}: {violation.message}")
    count = len(report.violations)
    checked = len(report.containers)
    if count:
        lines.append(f"{count} rule(s) violated in {checked} container(s) checked")
    else:
        lines.append(f"all timing rules hold in {checked} container(s) checked")
    return "\n".join(lines)
