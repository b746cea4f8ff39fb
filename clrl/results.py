"""What a run records: :class:`TrainResult` (``results.json``), the run's configuration, and the checks that
a resumed run is the same run."""

from __future__ import annotations

import inspect
import json
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import stable_baselines3
import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from clrl import metrics
from clrl.errors import CheckpointError, ConfigError
from clrl.hyperparameters import is_integer, is_number
from clrl.logger import to_jsonable, write_json_atomic
from clrl.modules.base import ContinualModule
from clrl.streams import TaskStream


@dataclass
class TrainResult:
    """The outcome of a continual run.

    Attributes:
        matrix: Return matrix, shape ``(n_tasks + 1, n_tasks)``: row 0 untrained, row ``i`` after task ``i``.
        metrics: ``acc``, ``bwt``, ``fwt``, ``forgetting`` (see :mod:`clrl.metrics`).
        task_names: The stream's task names (the matrix's columns).
        steps: Global environment step of each matrix row.
        curves: Evaluations during training: ``(step, task being trained, returns on every task)``.
        config: Stream, algorithm, method, seed, hyperparameters (scalars; ``policy_kwargs`` apart, classes
            by name) and torch threads of the run.
        logdir: The run directory, if one was written.
        timings: Wall-clock seconds of the whole run (``total``) and of its evaluations (``evaluation``).
        random_returns: Mean return of a uniformly random policy on each task, on the evaluation episodes.
        module_stats: After each task, per module name: ``state_bytes`` (what the module holds: anchors,
            importances, memories) and its TensorBoard scalars (e.g. Replay's ``bytes/task<j>``).
        plasticity: The measurements of :class:`clrl.PlasticityMonitor`, during training and at every task
            boundary: ``{"step", "task" (the task that ended, or null), "values": {name: number}}``.
    """

    matrix: np.ndarray
    metrics: dict[str, float]
    task_names: list[str]
    steps: list[int]
    curves: list[tuple[int, int, list[float]]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    logdir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    random_returns: np.ndarray | None = None
    module_stats: list[dict[str, dict[str, float]]] = field(default_factory=list)
    plasticity: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainResult:
        """Read a ``results.json`` back (e.g. a single-task run to pass as ``reference``).

        Every field is checked for its type and shape (a matrix of ``n_tasks + 1`` rows of ``n_tasks``
        numbers, ``n_tasks`` names, integer steps, ...).

        Raises:
            ConfigError: The file cannot be read, or a field is missing or damaged (named).
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read results from {str(path)!r}: {exc}") from exc
        try:
            return cls._from_data(data, path.parent)
        except _Damaged as exc:
            raise ConfigError(f"cannot read results from {str(path)!r}: {exc}") from None

    @classmethod
    def _from_data(cls, data: Any, logdir: Path) -> TrainResult:
        if not isinstance(data, dict):
            raise _Damaged("the file is not a JSON object")
        names = _field(data, "task_names", list)
        if not names or not all(isinstance(n, str) for n in names):
            raise _Damaged("field 'task_names' must be a non-empty list of names")
        n = len(names)
        matrix = _numbers(_field(data, "matrix", list), "matrix", (n + 1, n))
        steps = _field(data, "steps", list)
        if len(steps) > n + 1 or not all(is_integer(s) and s >= 0 for s in steps) or steps != sorted(steps):
            raise _Damaged(f"field 'steps' must be at most {n + 1} increasing step counts, got {steps!r}")
        curves = []
        for curve in _field(data, "curves", list):
            if (
                not isinstance(curve, dict)
                or not is_integer(curve.get("step"))
                or curve.get("task") not in range(n)
            ):
                raise _Damaged(f"field 'curves' holds a damaged entry {curve!r}")
            curves.append(
                (curve["step"], curve["task"], _numbers(curve.get("returns"), "curves", (n,)).tolist())
            )
        metrics_ = _field(data, "metrics", dict)
        if not all(isinstance(k, str) and (v is None or is_number(v)) for k, v in metrics_.items()):
            raise _Damaged("field 'metrics' must map names to numbers")
        random_returns = data.get("random_returns")
        timings = data.get("timings", {})
        if not isinstance(timings, dict) or not all(is_number(v) for v in timings.values()):
            raise _Damaged("field 'timings' must map names to seconds")
        module_stats = data.get("module_stats", [])
        if not isinstance(module_stats, list) or not all(isinstance(m, dict) for m in module_stats):
            raise _Damaged("field 'module_stats' must be a list of tables")
        plasticity = data.get("plasticity", [])
        if not isinstance(plasticity, list) or not all(_plasticity_record(r, n) for r in plasticity):
            raise _Damaged("field 'plasticity' must be a list of {step, task, values} measurements")
        return cls(
            matrix=matrix,
            metrics={k: float("nan") if v is None else v for k, v in metrics_.items()},
            task_names=list(names),
            steps=list(steps),
            curves=curves,
            config=_field(data, "config", dict),
            logdir=logdir,
            timings=timings,
            random_returns=None
            if random_returns is None
            else _numbers(random_returns, "random_returns", (n,)),
            module_stats=module_stats,
            plasticity=plasticity,
        )

    def table(self) -> str:
        """The return matrix as an aligned text table: a row per training stage, a column per task."""
        names = self.task_names
        width = max(10, *(len(n) + 2 for n in names))
        labels = ["untrained", *(f"{i}. {name}" for i, name in enumerate(names, start=1))]
        label_width = max(len(label) for label in labels) + 2
        lines = ["after \\ on".ljust(label_width) + "".join(n.rjust(width) for n in names)]
        for label, row in zip(labels, self.matrix, strict=True):
            lines.append(label.ljust(label_width) + "".join(f"{v:{width}.1f}" for v in row))
        return "\n".join(lines)

    def __str__(self) -> str:
        """The matrix table and the metrics, rounded (what ``clrl run`` prints): ``print(result)``."""
        line = "  ".join(f"{key} {value:.3g}" for key, value in self.metrics.items())
        return f"{self.table()}\n{line}"

    @property
    def reference(self) -> np.ndarray:
        """Return on each task right after training it, ``R[j + 1, j]`` (the single-task references when
        this is a single-task baseline run)."""
        n = len(self.task_names)
        return np.array([self.matrix[j + 1, j] for j in range(n)])

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as written to ``results.json``."""
        return {
            "matrix": self.matrix,
            "metrics": self.metrics,
            "task_names": self.task_names,
            "steps": self.steps,
            "curves": [{"step": s, "task": t, "returns": r} for s, t, r in self.curves],
            "config": self.config,
            "timings": self.timings,
            "random_returns": self.random_returns,
            "module_stats": self.module_stats,
            "plasticity": self.plasticity,
            "versions": versions(),
        }


def _plasticity_record(record: Any, n_tasks: int) -> bool:
    return (
        isinstance(record, dict)
        and is_integer(record.get("step"))
        and (record.get("task") is None or record.get("task") in range(n_tasks))
        and isinstance(record.get("values"), dict)
        and all(isinstance(k, str) and (v is None or is_number(v)) for k, v in record["values"].items())
    )


class _Damaged(ValueError):
    """A field of a ``results.json`` of the wrong type or shape."""


def _field(data: dict[str, Any], name: str, kind: type) -> Any:
    if name not in data:
        raise _Damaged(f"field {name!r} is missing")
    if not isinstance(data[name], kind):
        raise _Damaged(f"field {name!r} must be a {kind.__name__}, got {type(data[name]).__name__}")
    return data[name]


def _numbers(value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """``value`` as a float array of ``shape`` (``null`` is NaN: an evaluation not made yet)."""

    def valid(item: Any, depth: int) -> bool:
        if depth == len(shape):
            return item is None or is_number(item)
        return isinstance(item, list) and len(item) == shape[depth] and all(valid(i, depth + 1) for i in item)

    if not valid(value, 0):
        raise _Damaged(f"field {name!r} must be numbers of shape {shape}, got {str(value)[:80]}")
    return np.array(value, dtype=float)


def versions() -> dict[str, str]:
    """Versions of clrl and the libraries that decide its results."""
    from clrl import __version__

    return {
        "clrl": __version__,
        "stable_baselines3": stable_baselines3.__version__,
        "gymnasium": gymnasium.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def reference_metrics(result: TrainResult, reference: TrainResult, n_done: int) -> dict[str, float]:
    """Metrics of ``result``'s first ``n_done`` tasks normalised by a single-task ``reference``.

    Returns ``acc_norm``, ``bwt_norm``, ``fwt_norm`` and ``forgetting_norm`` (the matrix normalised between
    the random policy's returns and the reference's ``R[j + 1, j]``), and ``fwt_cw`` (Continual World's
    forward transfer, the mean over tasks of :func:`clrl.metrics.auc_forward_transfer` of the normalised,
    clipped training curves) when both runs recorded curves for every task. A task whose reference curve is
    at 1 throughout has no defined transfer and is left out of that mean.
    """
    if result.random_returns is None:
        return {}
    low, high = result.random_returns[:n_done], reference.reference[:n_done]
    if np.any(high == low):
        return {}
    seen = metrics.normalize(result.matrix[: n_done + 1, :n_done], low, high)
    out = {f"{k}_norm": v for k, v in metrics.summary(seen).items()}
    transfers = []
    for j in range(n_done):
        ours = [row[j] for _, task, row in result.curves if task == j]
        theirs = [row[j] for _, task, row in reference.curves if task == j]
        length = min(len(ours), len(theirs))
        if length == 0:
            break
        scale = high[j] - low[j]
        a = np.clip((np.array(ours[:length]) - low[j]) / scale, 0, 1)
        b = np.clip((np.array(theirs[:length]) - low[j]) / scale, 0, 1)
        if b.mean() < 1:
            transfers.append(metrics.auc_forward_transfer(a, b))
    else:
        if transfers:
            out["fwt_cw"] = float(np.mean(transfers))
    return out


def write_summary(root: Path, result: TrainResult, completed: int) -> None:
    data = result.to_dict()
    data["completed_tasks"] = completed
    write_json_atomic(root / "results.json", data)


def read_previous(root: Path | None) -> tuple[TrainResult, int] | None:
    """The result and number of completed tasks recorded in ``root/results.json`` (``None``: no run yet)."""
    assert root is not None
    path = root / "results.json"
    if not path.exists():
        return None
    try:
        completed = json.loads(path.read_text(encoding="utf-8")).get("completed_tasks")
        result = TrainResult.from_json(path)
    except (OSError, ValueError, AttributeError, ConfigError) as exc:
        raise CheckpointError(f"cannot resume from {str(path)!r}: {exc}") from exc
    if not is_integer(completed) or not 0 <= completed < len(result.steps):
        raise CheckpointError(f"cannot resume from {str(path)!r}: bad completed_tasks {completed!r}")
    if not np.isfinite(result.matrix[: completed + 1]).all():
        raise CheckpointError(
            f"cannot resume from {str(path)!r}: the matrix lacks rows of the {completed} completed tasks"
        )
    del result.steps[completed + 1 :]
    return result, completed


SAME_RUN_KEYS = (
    "stream_spec",
    "algorithm",
    "method",
    "seed",
    "n_envs",
    "eval_episodes",
    "hyperparameters",
    "modules",
)


REFERENCE_KEYS = ("stream_spec", "algorithm", "seed", "n_envs", "eval_episodes", "hyperparameters")
"""What a single-task reference run must share with the run it normalises (the policy and the modules
differ by design)."""


def _differing(saved: dict[str, Any], ours: dict[str, Any], keys: Sequence[str]) -> str:
    """The settings among ``keys`` that differ, one ``key (saved against ours)`` each, nested tables by their
    dotted path to the entries that differ (``stream_spec.steps_per_task (256 against 50000)``); empty when
    none does."""

    def show(value: Any) -> str:
        text = json.dumps(value, sort_keys=True)
        return text if len(text) <= 60 else text[:57] + "..."

    def walk(path: str, a: Any, b: Any) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [change for k in sorted({*a, *b}) for change in walk(f"{path}.{k}", a.get(k), b.get(k))]
        if json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True):
            return []
        return [f"{path} ({show(a)} against {show(b)})"]

    changes = [c for k in keys for c in walk(k, to_jsonable(saved.get(k)), to_jsonable(ours.get(k)))]
    return "; ".join(changes)


def reference_mismatch(reference: TrainResult, ours: dict[str, Any]) -> str | None:
    """Why ``reference`` cannot normalise the run of configuration ``ours`` (``None``: it can): it must be a
    finished single-task run of the same stream (tasks and steps per task), algorithm, seed, environments,
    evaluation episodes and hyperparameters."""
    if reference.config.get("method") != "single-task":
        return f"it is a {reference.config.get('method')!r} run, not a single-task one"
    if not np.isfinite(reference.reference).all():
        return "it is unfinished"
    differ = _differing(reference.config, ours, REFERENCE_KEYS)
    return f"it differs in {differ}" if differ else None


def check_same_run(saved: dict[str, Any], ours: dict[str, Any]) -> None:
    """Refuse to resume a run whose stream, algorithm, method, seed or settings differ from this call's."""
    differ = _differing(saved, ours, SAME_RUN_KEYS)
    if differ:
        raise CheckpointError(
            f"cannot resume: the run was made with other settings (the run's against this call's: {differ}); "
            "pass overwrite=True (--overwrite) to start afresh, or another logdir"
        )


def run_config(
    model: BaseAlgorithm,
    stream: TaskStream,
    method: str,
    seed: int,
    eval_episodes: int,
    modules: Sequence[ContinualModule],
) -> dict[str, Any]:
    hyper: dict[str, Any] = {}
    for name in inspect.signature(type(model).__init__).parameters:
        value = getattr(model, name, None)
        if isinstance(value, bool | int | float | str) and name not in ("verbose", "seed"):
            hyper[name] = value
    return {
        "stream": stream.name,
        "stream_spec": stream.to_dict(),
        "metric": stream.metric,
        "algorithm": type(model).__name__,
        "method": method,
        "seed": seed,
        "n_envs": model.n_envs,
        "torch_threads": torch.get_num_threads(),  # results depend on it (the order of float sums)
        "eval_episodes": eval_episodes,
        "hyperparameters": hyper,
        # Classes by name; any other object that JSON cannot hold by its repr.
        "policy_kwargs": json.loads(
            json.dumps(to_jsonable(getattr(model, "policy_kwargs", None) or {}), default=repr)
        ),
        "modules": [{"class": type(m).__name__, "config": m.get_config()} for m in modules],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_hparams(config: dict[str, Any]) -> dict[str, Any]:
    """A run's HParams columns: stream, algorithm, method, seed, ``modules`` (every module with its
    settings in one string, so that TensorBoard, which shows the first five columns whose values differ
    between runs, shows each run's own settings), ``algo/<name>`` and ``<Module>/<name>`` one by one."""
    flat: dict[str, Any] = {k: config[k] for k in ("stream", "algorithm", "method", "seed")}

    def settings(module: dict[str, Any]) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in module["config"].items() if k != "verbose")
        return f"{module['class']}({shown})"

    flat["modules"] = " + ".join(settings(m) for m in config["modules"]) or "none"
    flat.update({f"algo/{k}": v for k, v in config["hyperparameters"].items()})
    for m in config["modules"]:
        for k, v in m["config"].items():
            if k != "verbose" and (not isinstance(v, float) or math.isfinite(v)):
                flat[f"{m['class']}/{k}"] = v
    return flat
