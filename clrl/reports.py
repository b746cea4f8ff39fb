"""Comparison reports: tables and plots of every run under a directory (``clrl report RUNS_DIR``).

Runs are read from their ``results.json`` (any depth; ``clrl run`` and ``clrl sweep`` lay them out as
``<stream>/<algo>-<method>/seed<seed>/``) and grouped by stream, algorithm and method; the seeds of a group
give the mean and a 95% percentile-bootstrap confidence interval (:func:`clrl.metrics.bootstrap_ci`) of
each metric. Unfinished runs are left out, with a warning. For every stream and algorithm the report has:

- a table (``report.md`` and ``<stream>-<algo>.csv``) of ACC, BWT, FWT and forgetting, raw and normalised
  (``*_norm``: between a random policy, 0, and the single-task run of the same seed, 1, when the directory
  has single-task runs), and the training wall time (evaluations excluded) as a ratio against fine-tuning;
  the fine-tuning, multi-task and single-task rows come first, as references;
- ``heatmap-<method>.png``: the return matrix, mean over seeds;
- ``curves-<method>.png``: the return on each task against environment steps, task boundaries marked
  (the forgetting curves; denser with ``eval_freq``);
- ``plasticity-<method>.png``: the networks' plasticity statistics (:class:`clrl.PlasticityMonitor`:
  dormant-unit ratio, effective rank of the last hidden layer, distance from the initial weights, gradient
  norm) against environment steps, mean over seeds, task boundaries marked (runs that recorded them);
- ``bars.png``: ACC and forgetting of every method with their confidence intervals.

Every file is written through a temporary file and a rename, so a report is never half-written.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clrl import metrics
from clrl.checks import make_directory
from clrl.errors import ConfigError
from clrl.results import TrainResult, reference_metrics

RAW = ("acc", "bwt", "fwt", "forgetting", "forgetting_cw")
NORMALISED = ("acc_norm", "bwt_norm", "fwt_norm", "forgetting_norm", "forgetting_cw_norm")
REFERENCE_METHODS = ("finetune", "multitask", "cumulative", "ensemble", "single-task")
"""Rows put first in every table, as references for the others."""
_TITLES = {
    "acc": "ACC",
    "bwt": "BWT",
    "fwt": "FWT",
    "forgetting": "forgetting",
    "forgetting_cw": "forgetting (CW)",
    "acc_norm": "ACC norm",
    "bwt_norm": "BWT norm",
    "fwt_norm": "FWT norm",
    "forgetting_norm": "forgetting norm",
    "forgetting_cw_norm": "forgetting (CW) norm",
}


@dataclass
class Run:
    """One finished run: its result and the metrics the report shows (normalised ones added)."""

    result: TrainResult
    path: Path
    metrics: dict[str, float]

    @property
    def seed(self) -> int:
        return int(self.result.config.get("seed", 0))

    @property
    def training_seconds(self) -> float:
        """Wall time without the evaluations (``nan`` when the run did not record it)."""
        timings = self.result.timings
        if "total" not in timings:
            return float("nan")
        return float(timings["total"]) - float(timings.get("evaluation", 0.0))


@dataclass
class Group:
    """The seeds of one stream × algorithm × method."""

    stream: str
    algorithm: str
    method: str
    runs: list[Run] = field(default_factory=list)

    def summary(self, key: str) -> tuple[float, float, float]:
        """Mean and 95% bootstrap interval of metric ``key`` over seeds (``nan`` when no seed has it)."""
        return metrics.bootstrap_ci([run.metrics.get(key, float("nan")) for run in self.runs])

    @property
    def mean_matrix(self) -> np.ndarray:
        return np.mean([run.result.matrix for run in self.runs], axis=0)


@dataclass
class Report:
    """What :func:`write_report` wrote."""

    out_dir: Path
    markdown: Path
    tables: list[Path]
    plots: list[Path]
    n_runs: int
    warnings: list[str]


def collect(runs_dir: str | Path) -> tuple[list[Group], list[str]]:
    """Every finished run under ``runs_dir``, grouped by stream, algorithm and method.

    Returns:
        The groups (references first within a stream and algorithm) and warnings about runs left out.

    Raises:
        ConfigError: ``runs_dir`` is not a directory.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise ConfigError(f"{str(root)!r} is not a directory of runs")
    warnings: list[str] = []
    runs: list[Run] = []
    for path in sorted(root.rglob("results.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            result = TrainResult.from_json(path)
            done = data["completed_tasks"]
        except (OSError, ValueError, KeyError, ConfigError) as exc:
            warnings.append(f"{path.parent}: unreadable results.json ({exc}); left out")
            continue
        n = len(result.task_names)
        if done != n:
            warnings.append(f"{path.parent}: unfinished ({done} of {n} tasks); left out")
            continue
        if not {"stream", "algorithm", "method"} <= set(result.config):
            warnings.append(f"{path.parent}: results.json names no stream, algorithm or method; left out")
            continue
        runs.append(Run(result, path.parent, dict(result.metrics)))
    groups: dict[tuple[str, str, str], Group] = {}
    for run in runs:
        config = run.result.config
        key = (str(config["stream"]), str(config["algorithm"]), str(config["method"]))
        group = groups.setdefault(key, Group(*key))
        if any(other.seed == run.seed for other in group.runs):
            warnings.append(f"{run.path}: a second run of {'/'.join(key)} seed {run.seed}; left out")
            continue
        group.runs.append(run)
    _normalise(list(groups.values()), warnings)
    return sorted(groups.values(), key=_order), warnings


def _order(group: Group) -> tuple[str, str, int, str]:
    rank = (
        REFERENCE_METHODS.index(group.method) if group.method in REFERENCE_METHODS else len(REFERENCE_METHODS)
    )
    return (group.stream, group.algorithm, rank, group.method)


def _normalise(groups: list[Group], warnings: list[str]) -> None:
    """Add the ``*_norm`` metrics to every run that has a single-task run of the same stream, algo, seed."""
    references = {
        (g.stream, g.algorithm, run.seed): run.result
        for g in groups
        if g.method == "single-task"
        for run in g.runs
    }
    for group in groups:
        if group.method == "single-task":
            continue
        for run in group.runs:
            reference = references.get((group.stream, group.algorithm, run.seed))
            if reference is None:
                continue
            if reference.task_names != run.result.task_names:
                warnings.append(f"{run.path}: its single-task run has other tasks; not normalised")
                continue
            run.metrics.update(reference_metrics(run.result, reference, len(run.result.task_names)))


def table_rows(groups: Sequence[Group]) -> list[dict[str, Any]]:
    """One row per group: seeds, each metric's ``<key>``, ``<key>_lo``, ``<key>_hi``, and ``time_ratio``
    (mean training time over that of fine-tuning on the same stream and algorithm; ``nan`` without it)."""
    baseline = {
        (g.stream, g.algorithm): _nanmean([r.training_seconds for r in g.runs])
        for g in groups
        if g.method == "finetune"
    }
    rows = []
    for group in groups:
        row: dict[str, Any] = {
            "stream": group.stream,
            "algorithm": group.algorithm,
            "method": group.method,
            "seeds": len(group.runs),
        }
        for key in (*RAW, *NORMALISED):
            mean, lo, hi = group.summary(key)
            row.update({key: mean, f"{key}_lo": lo, f"{key}_hi": hi})
        seconds = _nanmean([r.training_seconds for r in group.runs])
        row["train_seconds"] = seconds
        row["time_ratio"] = seconds / baseline.get((group.stream, group.algorithm), float("nan"))
        rows.append(row)
    return rows


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def write_report(runs_dir: str | Path, out_dir: str | Path | None = None) -> Report:
    """Write the tables and plots of every finished run under ``runs_dir`` (see the module docstring).

    Args:
        runs_dir: A directory of runs (``clrl run``'s or ``clrl sweep``'s ``logdir``).
        out_dir: Where to write (default: ``runs_dir/report``).

    Raises:
        ConfigError: ``runs_dir`` is not a directory, or holds no finished run.
    """
    groups, warnings = collect(runs_dir)
    if not groups:
        raise ConfigError(f"no finished run under {str(runs_dir)!r}" + "".join(f"\n  {w}" for w in warnings))
    out = Path(out_dir) if out_dir is not None else Path(runs_dir) / "report"
    make_directory(out, "report folder")
    tables: list[Path] = []
    plots: list[Path] = []
    lines = [
        "# clrl report",
        "",
        f"Runs under `{runs_dir}`: {sum(len(g.runs) for g in groups)} finished, in {len(groups)} groups. "
        "Each cell is the mean over seeds and its 95% bootstrap confidence interval. `*_norm`: normalised "
        "between a random policy (0) and the single-task run of the same seed (1). Time: training wall "
        "time (evaluations excluded) over fine-tuning's.",
        "",
    ]
    for (stream, algorithm), members in _by_stream(groups).items():
        slug = f"{stream}-{algorithm.lower()}"
        rows = table_rows(members)
        tables.append(out / f"{slug}.csv")
        _write(tables[-1], _csv(rows).encode("utf-8"))
        metric = _metric_label(members)
        episodes = sorted({str(r.result.config.get("eval_episodes", "?")) for g in members for r in g.runs})
        lines += [
            f"## {stream} / {algorithm}",
            "",
            f"R = {metric}, mean over {'/'.join(episodes)} evaluation episodes per task. "
            f"Table: [`{slug}.csv`]({slug}.csv).",
            "",
            *_markdown_table(rows),
            "",
        ]
        figures = out / slug
        figures.mkdir(exist_ok=True)
        plots.append(figures / "bars.png")
        _save(plots[-1], _bars(members, f"{stream} / {algorithm}", metric))
        lines += [f"![bars]({slug}/bars.png)", ""]
        for group in members:
            name = group.method.replace("+", "_")
            heatmap = figures / f"heatmap-{name}.png"
            curves = figures / f"curves-{name}.png"
            _save(heatmap, _heatmap(group, metric))
            _save(curves, _curves(group, metric))
            plots += [heatmap, curves]
            lines += [
                f"### {group.method}",
                "",
                f"![return matrix]({slug}/{heatmap.name}) ![forgetting curves]({slug}/{curves.name})",
                "",
            ]
            figure = _plasticity(group)
            if figure is not None:
                plots.append(figures / f"plasticity-{name}.png")
                _save(plots[-1], figure)
                lines += [f"![plasticity]({slug}/{plots[-1].name})", ""]
    if warnings:
        lines += ["## Left out", "", *(f"- {w}" for w in warnings), ""]
    markdown = out / "report.md"
    _write(markdown, "\n".join(lines).encode("utf-8"))
    return Report(out, markdown, tables, plots, sum(len(g.runs) for g in groups), warnings)


def _by_stream(groups: Sequence[Group]) -> dict[tuple[str, str], list[Group]]:
    out: dict[tuple[str, str], list[Group]] = {}
    for group in groups:
        out.setdefault((group.stream, group.algorithm), []).append(group)
    return out


def _metric_label(groups: Sequence[Group]) -> str:
    names = {str(r.result.config.get("metric", "return")) for g in groups for r in g.runs}
    label = " / ".join(sorted(names))
    return "episode return" if label == "return" else f"episode {label} (from info)"


def _fmt(key: str, value: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.2f}" if key.endswith("_norm") or key == "time_ratio" else f"{value:.1f}"


def _markdown_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    keys = [k for k in (*RAW, *NORMALISED) if any(np.isfinite(row[k]) for row in rows)]
    header = ["method", "seeds", *(_TITLES[k] for k in keys), "time ×"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"], str(row["seeds"])]
        for k in keys:
            mean, lo, hi = row[k], row[f"{k}_lo"], row[f"{k}_hi"]
            cells.append(
                _fmt(k, mean)
                if row["seeds"] < 2 or not np.isfinite(mean)
                else f"{_fmt(k, mean)} [{_fmt(k, lo)}, {_fmt(k, hi)}]"
            )
        cells.append(_fmt("time_ratio", row["time_ratio"]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if isinstance(v, float) and not np.isfinite(v) else v for k, v in row.items()})
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save(path: Path, figure: Any) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _write(path, buffer.getvalue())


def _figure(width: float, height: float) -> Any:
    # Figure without pyplot: no global state, no display backend.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _heatmap(group: Group, metric: str) -> Any:
    matrix = group.mean_matrix
    names = group.runs[0].result.task_names
    n = len(names)
    fig = _figure(max(4.5, 1.3 * n + 2.5), max(3.0, 0.55 * (n + 1) + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="viridis", aspect="auto")
    colorbar = fig.colorbar(image, ax=ax)
    colorbar.set_label(f"mean {metric}")
    span = float(np.nanmax(matrix) - np.nanmin(matrix)) or 1.0
    for i in range(matrix.shape[0]):
        for j in range(n):
            light = (matrix[i, j] - np.nanmin(matrix)) / span > 0.6
            ax.text(
                j, i, f"{matrix[i, j]:.3g}", ha="center", va="center", color="black" if light else "white"
            )
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    rows = ["untrained", *(f"after {i}. {name}" for i, name in enumerate(names, start=1))]
    if group.method == "single-task":
        rows = ["untrained", *(f"trained on {name} only" for name in names)]
    ax.set_yticks(range(n + 1), rows)
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after training")
    ax.set_title(f"{group.stream} / {group.algorithm} / {group.method}: R[i, j], {len(group.runs)} seeds")
    return fig


def _points(result: TrainResult, task: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of ``task`` at every evaluation of a run (task ends and ``eval_freq`` points)."""
    by_step = {int(step): float(result.matrix[i, task]) for i, step in enumerate(result.steps)}
    for step, _, row in result.curves:
        by_step.setdefault(int(step), float(row[task]))
    steps = np.array(sorted(by_step), dtype=float)
    return steps, np.array([by_step[int(s)] for s in steps])


def _curves(group: Group, metric: str) -> Any:
    first = group.runs[0].result
    fig = _figure(7.5, 4.0)
    ax = fig.add_subplot()
    for j, name in enumerate(first.task_names):
        grid, _ = _points(first, j)
        values = np.array([np.interp(grid, *_points(run.result, j)) for run in group.runs])
        (line,) = ax.plot(grid, values.mean(axis=0), marker=".", label=name)
        if len(group.runs) > 1:
            ax.fill_between(grid, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.15)
    if group.method != "single-task":
        for step, name in zip(first.steps[1:-1], first.task_names[1:], strict=False):
            ax.axvline(step, color="grey", linestyle="--", linewidth=0.8)
            ax.annotate(
                f"→ {name}",
                (step, 1.0),
                xycoords=("data", "axes fraction"),
                fontsize=8,
                ha="left",
                va="bottom",
                color="grey",
            )
    ax.set_xlabel(
        "environment steps" + (" (each task trained alone)" if group.method == "single-task" else "")
    )
    ax.set_ylabel(metric)
    spread = ", band from min to max" if len(group.runs) > 1 else ""
    ax.set_title(
        f"{group.stream} / {group.algorithm} / {group.method}: mean of {len(group.runs)} seeds{spread}",
        pad=16,
    )
    ax.legend(title="task", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


PLASTICITY_PANELS = {
    "dormant": "dormant units (share)",
    "effective_rank": "effective rank, last hidden layer",
    "weight_distance": "RMS distance from initial weights",
    "grad_norm": "gradient norm",
}
"""The statistics ``plasticity-<method>.png`` plots, one panel each, a line per network."""


def _plasticity_series(result: TrainResult, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of one statistic (``"<network>/<name>"``) over a run's measurements."""
    by_step: dict[int, float] = {}
    for record in result.plasticity:
        value = record["values"].get(key)
        if value is not None:
            by_step[int(record["step"])] = float(value)  # a boundary's measurement replaces its step's
    steps = np.array(sorted(by_step), dtype=float)
    return steps, np.array([by_step[int(s)] for s in steps])


def _plasticity(group: Group) -> Any:
    """The plasticity figure of a group, or ``None`` when its runs recorded no measurements."""
    first = group.runs[0].result
    keys = {k for record in first.plasticity for k in record["values"]}
    networks = sorted({k.split("/")[0] for k in keys if k.count("/") == 1})
    if not networks or any(not run.result.plasticity for run in group.runs):
        return None
    fig = _figure(10.0, 6.0)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for ax, (stat, title) in zip(axes, PLASTICITY_PANELS.items(), strict=True):
        for network in networks:
            key = f"{network}/{stat}"
            grid, _ = _plasticity_series(first, key)
            if len(grid) == 0:
                continue
            series = [_plasticity_series(run.result, key) for run in group.runs]
            values = np.array([np.interp(grid, s, v) for s, v in series if len(s)])
            ax.plot(grid, values.mean(axis=0), marker=".", label=network)
        if group.method != "single-task":
            for step in first.steps[1:-1]:
                ax.axvline(step, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(title="network", fontsize=8)
    for ax in axes[2:]:
        ax.set_xlabel("environment steps")
    fig.suptitle(
        f"{group.stream} / {group.algorithm} / {group.method}: plasticity, mean of {len(group.runs)} seeds "
        "(dashed: task boundaries)"
    )
    return fig


def _bars(groups: Sequence[Group], title: str, metric: str) -> Any:
    fig = _figure(max(6.0, 0.9 * len(groups) + 3.0), 3.8)
    panels: list[tuple[str, str, Callable[[Group], tuple[float, float, float]]]] = [
        ("acc", f"ACC (final mean {metric}, higher is better)", lambda g: g.summary("acc")),
        ("forgetting", f"forgetting ({metric}, lower is better)", lambda g: g.summary("forgetting")),
    ]
    names = [g.method for g in groups]
    for index, (_, label, summarise) in enumerate(panels):
        ax = fig.add_subplot(1, 2, index + 1)
        stats = np.array([summarise(g) for g in groups])
        means = stats[:, 0]  # nan (single-task's forgetting): no bar
        errors = np.nan_to_num(np.abs(np.stack([stats[:, 0] - stats[:, 1], stats[:, 2] - stats[:, 0]])))
        colours = ["#999999" if n in REFERENCE_METHODS else "#3366aa" for n in names]
        ax.bar(range(len(groups)), means, yerr=errors, color=colours, capsize=3)
        ax.set_xticks(range(len(groups)), names, rotation=40, ha="right")
        ax.set_ylabel(label, fontsize=8)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{title}: mean over seeds, 95% bootstrap CI (grey: references)")
    return fig
