"""``check`` on hostile or foreign input: bounded work, exit 2 with one line, or a note and the rest checked."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from prestop_agent.check.manifests import expanded_size
from prestop_agent.cli import EXIT_CONFIG, app

runner = CliRunner()


def laughs(levels: int = 9) -> str:
    """A top-level block of anchors, each ten aliases of the one before: level N stands for 10**N strings."""
    lines = ["x-laughs:", '  l0: &l0 "lol"']
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def workload(*, name: str = "web", value: str = '"8080"', annotations: str = "{}") -> str:
    return (
        "apiVersion: apps/v1\nkind: Deployment\n"
        f"metadata:\n  name: {name}\n  annotations: {annotations}\n"
        "spec:\n  template:\n    spec:\n      containers:\n        - name: web\n          image: web:1\n"
        f"          env:\n            - name: NACOS_SERVICE_PORT\n              value: {value}\n"
        "          lifecycle:\n            preStop:\n"
        '              exec: {command: ["prestop-agent", "deregister", "--wait"]}\n'
    )


@pytest.mark.parametrize(
    "doc",
    [
        workload(value="*l9"),  # an env value
        workload(name="*l9"),  # metadata.name
        workload(annotations="{prestop-agent.io/lb-idle-timeout-seconds: *l9}"),  # an annotation
    ],
    ids=["env-value", "metadata-name", "annotation"],
)
def test_an_alias_bomb_is_refused_before_anything_reads_it(tmp_path: Path, doc: str) -> None:
    # Expanded, level 9 holds 10**9 strings: reading one field of it used to take minutes and gigabytes.
    path = tmp_path / "bomb.yaml"
    path.write_text(laughs() + doc, encoding="utf-8")
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == EXIT_CONFIG, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"prestop-agent: {path}: document 1 grows past 1,000,000 characters and nodes")
    assert "aliases" in lines[0]


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(laughs(levels=2) + workload(annotations="{x-repeated: *l2}"), encoding="utf-8")
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code != EXIT_CONFIG, result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &a [1, *a]\n", "refers to itself"),
        ("[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        ("a: " + "1" * 5000 + "\n", "Exceeds the limit (4300 digits)"),
    ],
    ids=["cycle", "deep", "long-integer"],
)
def test_other_unbounded_input_is_one_line_and_exit_2(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(text, encoding="utf-8")
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == EXIT_CONFIG
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"prestop-agent: {path}: ")
    assert message in lines[0]


def test_expanded_size_counts_shared_objects_as_often_as_they_are_referred_to() -> None:
    shared = ["ab", "cd"]  # 1 node + 3 + 3
    assert expanded_size({"k": shared, "j": shared}, 100) == 1 + 2 + 2 + 7 + 7
    assert expanded_size({"k": shared, "j": shared}, 18) is None
    assert expanded_size("text", 100) == 5
