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
        "          env:\n"
        "            - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}\n"
        "            - {name: NACOS_SERVER_ADDR, value: nacos:8848}\n"
        f"            - name: NACOS_SERVICE_PORT\n              value: {value}\n"
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


# -- directories hold more than manifests ----------------------------------------------------------

DEPLOYMENT = workload().replace("    spec:\n", "    spec:\n      terminationGracePeriodSeconds: 30\n", 1)


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def test_a_directory_passes_over_helm_and_kustomize_files_with_a_note(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "app.yaml": DEPLOYMENT,
            "kustomization.yaml": (
                "resources: [app.yaml]\npatches:\n  - path: more-replicas.yaml\npatchesStrategicMerge: [env.yml]\n"
            ),
            "more-replicas.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 5}\n",
            "env.yml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {template: {spec: {}}}\n",
            "values.yaml": "replicaCount: 2\nimage: {repository: web}\n",
            "chart/Chart.yaml": "apiVersion: v2\nname: web\nversion: 0.1.0\n",
            "chart/values.yaml": "replicaCount: 1\n",
            "chart/templates/deployment.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n"
            "  name: {{ .Release.Name }}\n{{- if .Values.x }}\n",
            "templated/job.yaml": "kind: {{ .Kind }}\n  bad: [\n",
        },
    )
    result = runner.invoke(app, ["check", str(root)])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: skipped")]
    assert notes == [
        f"note: skipped {root / 'chart'}: a Helm chart (3 YAML files), not manifests until rendered; check what it "
        f"renders: helm template {root / 'chart'} > rendered.yaml && prestop-agent check rendered.yaml",
        f"note: skipped {root / 'env.yml'}: a Kustomize patch listed in {root / 'kustomization.yaml'}",
        f"note: skipped {root / 'kustomization.yaml'}: a Kustomize file; the manifests beside it are checked as "
        f"written, without its patches; check the built result: kubectl kustomize {root} > built.yaml",
        f"note: skipped {root / 'more-replicas.yaml'}: a Kustomize patch listed in {root / 'kustomization.yaml'}",
        f"note: skipped {root / 'templated' / 'job.yaml'}: a template ({{{{ ... }}}}), not YAML until rendered",
        f"note: skipped {root / 'values.yaml'}: YAML without a Kubernetes object (no document has a kind)",
    ]
    assert "all timing rules hold in 1 container(s) checked" in result.stdout


def test_a_broken_manifest_in_a_directory_is_still_an_error(tmp_path: Path) -> None:
    root = tree(tmp_path, {"app.yaml": DEPLOYMENT, "broken.yaml": "apiVersion: v1\nkind: [unclosed\n"})
    result = runner.invoke(app, ["check", str(root)])
    assert result.exit_code == EXIT_CONFIG
    assert f"{root / 'broken.yaml'}: not valid YAML at line" in result.stderr


def test_a_file_named_on_the_command_line_must_be_a_manifest(tmp_path: Path) -> None:
    root = tree(tmp_path, {"Chart.yaml": "apiVersion: v2\nname: web\n"})
    result = runner.invoke(app, ["check", str(root / "Chart.yaml")])
    assert result.exit_code == EXIT_CONFIG
    assert "document 1 is not a Kubernetes object" in result.stderr


def test_a_directory_with_nothing_to_check_says_what_it_passed_over(tmp_path: Path) -> None:
    root = tree(tmp_path, {"Chart.yaml": "apiVersion: v2\nname: web\n", "values.yaml": "a: 1\n"})
    result = runner.invoke(app, ["check", str(root)])
    assert result.exit_code == EXIT_CONFIG
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"prestop-agent: no Deployment, StatefulSet or DaemonSet found in {root} (passed over as not manifests: 1); "
        "nothing to check"
    ]
