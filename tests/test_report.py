"""Reports on synthetic results.json files: tables equal hand-computed values; plots are real PNGs."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import clrl
from clrl import ConfigError, metrics, write_report
from clrl.cli import main
from clrl.reports import _plasticity_series, _points, collect

TASKS = ["a", "b", "c"]
RANDOM = [10.0, 20.0, 30.0]


def write_run(
    root: Path,
    method: str,
    seed: int,
    matrix: np.ndarray,
    *,
    total: float = 10.0,
    evaluation: float = 2.0,
    completed: int = 3,
    curves: list[dict[str, Any]] | None = None,
    stream: str = "toy",
    plasticity: list[dict[str, Any]] | None = None,
) -> Path:
    run = root / stream / f"ppo-{method}" / f"seed{seed}"
    run.mkdir(parents=True)
    data = {
        "matrix": matrix.tolist(),
        "metrics": {"acc": float(matrix[-1].mean())} if method == "single-task" else metrics.summary(matrix),
        "task_names": TASKS,
        "steps": [0, 100, 200, 300][: completed + 1],
        "curves": curves or [],
        "config": {"stream": stream, "algorithm": "PPO", "method": method, "seed": seed, "eval_episodes": 5},
        "timings": {"total": total, "evaluation": evaluation},
        "random_returns": RANDOM,
        "completed_tasks": completed,
        "plasticity": plasticity or [],
    }
    (run / "results.json").write_text(json.dumps(data))
    return run


def matrices(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    finetune = np.array([[10, 20, 30], [100, 20, 30], [40, 200, 30], [30, 50, 300]], float) + rng.integers(
        0, 9
    )
    ewc = finetune.copy()
    ewc[3, :2] = [90, 180]
    single = np.array([[10, 20, 30], [110, 20, 30], [10, 210, 30], [10, 20, 310]], float) + seed
    return {"finetune": finetune, "ewc": ewc, "single-task": single, "multitask": ewc * 0.9 + 5}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed in range(3):
        for method, matrix in matrices(seed).items():
            total = {"finetune": 10.0, "ewc": 12.5, "single-task": 30.0, "multitask": 9.0}[method] + seed
            write_run(root, method, seed, matrix, total=total)
    write_run(root, "l2", 0, matrices(0)["finetune"], completed=1)  # unfinished: left out
    return root


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def test_table_equals_hand_computed_means_intervals_and_ratios(runs: Path) -> None:
    report = write_report(runs)
    assert report.out_dir == runs / "report" and report.n_runs == 12
    assert any("unfinished (1 of 3 tasks)" in w for w in report.warnings)
    table = read_csv(runs / "report" / "toy-ppo.csv")
    assert list(table) == ["finetune", "multitask", "single-task", "ewc"]  # references first
    for method in ("finetune", "ewc", "multitask"):
        per_seed = [metrics.summary(matrices(s)[method]) for s in range(3)]
        for key in ("acc", "bwt", "fwt", "forgetting"):
            mean, lo, hi = metrics.bootstrap_ci([m[key] for m in per_seed])
            row = table[method]
            assert float(row[key]) == pytest.approx(mean)
            assert (float(row[f"{key}_lo"]), float(row[f"{key}_hi"])) == pytest.approx((lo, hi))
        # Normalised between the random returns (0) and the single-task run of the same seed (1).
        norm = [
            metrics.summary(
                metrics.normalize(matrices(s)[method], RANDOM, np.diag(matrices(s)["single-task"][1:]))
            )
            for s in range(3)
        ]
        assert float(table[method]["acc_norm"]) == pytest.approx(np.mean([m["acc"] for m in norm]))
        assert float(table[method]["forgetting_norm"]) == pytest.approx(
            np.mean([m["forgetting"] for m in norm])
        )
    # Training time = total - evaluation, over fine-tuning's: (10.5 + 1) / (8 + 1) for EWC.
    assert float(table["ewc"]["time_ratio"]) == pytest.approx((10.5 + 1) / (8 + 1))
    assert float(table["finetune"]["time_ratio"]) == pytest.approx(1.0)
    assert table["single-task"]["bwt"] == "" and table["single-task"]["forgetting_norm"] == ""
    assert float(table["ewc"]["forgetting"]) < float(table["finetune"]["forgetting"])


def test_markdown_and_plots(runs: Path) -> None:
    report = write_report(runs, runs / "out")
    text = report.markdown.read_text()
    assert "## toy / PPO" in text and "R = episode return, mean over 5 evaluation episodes" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows] == [
        "| method",
        "| finetune",
        "| multitask",
        "| single-task",
        "| ewc",
    ]
    mean, lo, hi = metrics.bootstrap_ci([metrics.average_return(matrices(s)["ewc"]) for s in range(3)])
    assert f"{mean:.1f} [{lo:.1f}, {hi:.1f}]" in rows[-1]
    assert "unfinished" in text  # the left-out run is listed
    names = {p.name for p in report.plots}
    assert {"bars.png", "heatmap-ewc.png", "curves-ewc.png", "heatmap-single-task.png"} <= names
    for plot in report.plots:
        with Image.open(plot) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
        assert f"({plot.parent.name}/{plot.name})" in text  # linked from the markdown
    assert not list((runs / "out").rglob("*.tmp"))


def test_streams_and_algorithms_get_their_own_tables(runs: Path) -> None:
    write_run(runs, "finetune", 0, matrices(0)["finetune"], stream="other")
    report = write_report(runs)
    assert sorted(p.name for p in report.tables) == ["other-ppo.csv", "toy-ppo.csv"]
    assert list(read_csv(runs / "report" / "other-ppo.csv")) == ["finetune"]
    other = read_csv(runs / "report" / "other-ppo.csv")["finetune"]
    assert other["acc_norm"] == ""  # no single-task run of that stream


def test_curves_merge_matrix_rows_and_eval_freq_points(tmp_path: Path) -> None:
    m = matrices(0)["finetune"]
    curves = [
        {"step": 50, "task": 0, "returns": [55.0, 21.0, 31.0]},
        {"step": 250, "task": 2, "returns": [7, 8, 9]},
    ]
    write_run(tmp_path, "finetune", 0, m, curves=curves)
    (group,), _ = collect(tmp_path)
    steps, values = _points(group.runs[0].result, 0)
    np.testing.assert_array_equal(steps, [0, 50, 100, 200, 250, 300])
    np.testing.assert_array_equal(values, [m[0, 0], 55.0, m[1, 0], m[2, 0], 7.0, m[3, 0]])


def test_plasticity_is_plotted_when_the_runs_recorded_it(tmp_path: Path) -> None:
    def record(step: int, task: int | None, dormant: float) -> dict[str, Any]:
        values = {"actor/dormant": dormant, "actor/effective_rank": 3.0, "actor/policy_net.1/dormant": 0.5}
        return {"step": step, "task": task, "values": values}

    for seed in range(2):
        records = [record(50, None, 0.1 + seed), record(100, 0, 0.2), record(150, None, 0.3 + seed)]
        write_run(tmp_path, "finetune", seed, matrices(seed)["finetune"], plasticity=records)
    write_run(tmp_path, "ewc", 0, matrices(0)["ewc"])  # recorded none: no plasticity figure
    report = write_report(tmp_path)
    names = {p.name for p in report.plots}
    assert "plasticity-finetune.png" in names and "plasticity-ewc.png" not in names
    assert "(toy-ppo/plasticity-finetune.png)" in report.markdown.read_text()
    (group, _), _ = collect(tmp_path)
    steps, values = _plasticity_series(group.runs[1].result, "actor/dormant")
    np.testing.assert_array_equal(steps, [50, 100, 150])
    np.testing.assert_array_equal(values, [1.1, 0.2, 1.3])


def test_no_runs_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        write_report(tmp_path / "missing")
    bad = tmp_path / "toy" / "ppo-ewc" / "seed0"
    bad.mkdir(parents=True)
    (bad / "results.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"(?s)no finished run.*unreadable results\.json"):
        write_report(tmp_path)


def test_cli_report(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(runs), "--out", str(runs / "r")]) == 0
    out = capsys.readouterr().out
    assert "report of 12 runs" in out and "warning" in out
    assert (runs / "r" / "report.md").is_file()
    assert main(["report", str(runs / "nothing")]) == 2


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ({"matrix": [[1.0]]}, "field 'matrix' must be numbers of shape (4, 3)"),
        ({"matrix": [["a", 1, 2]] * 4}, "field 'matrix' must be numbers of shape (4, 3)"),
        ({"task_names": 5}, "field 'task_names' must be a list"),
        ({"steps": ["a"]}, "field 'steps' must be at most 4 increasing step counts"),
        ({"curves": [{"step": 1, "task": 7, "returns": [1, 2, 3]}]}, "field 'curves' holds a damaged entry"),
        ({"random_returns": [1.0]}, "field 'random_returns' must be numbers of shape (3,)"),
        ({"metrics": {"acc": "high"}}, "field 'metrics' must map names to numbers"),
    ],
)
def test_a_results_file_of_the_wrong_shape_or_types_is_named_and_left_out(
    runs: Path, damage: dict[str, Any], message: str
) -> None:
    path = runs / "toy" / "ppo-ewc" / "seed0" / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **damage}))
    with pytest.raises(ConfigError, match=re.escape(message)):
        clrl.TrainResult.from_json(path)
    report = write_report(runs, runs / "out")
    assert report.n_runs == 11  # the damaged run is left out, and said to be
    assert any(message in w and "ppo-ewc/seed0" in w for w in report.warnings)
