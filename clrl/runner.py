"""The continual runner: learn a stream task after task, evaluate on every task, fill the return matrix.

What happens between tasks (SB3 semantics, decided here once):

* **Step axis.** ``learn(steps, reset_num_timesteps=False)``: ``num_timesteps`` and SB3's TensorBoard
  scalars continue across tasks on one axis. On-policy budgets round up to whole rollouts, as in SB3.
* **Schedules.** SB3 computes progress per ``learn`` call as ``1 - t / (t_start + steps)``, so a linear
  schedule does not restart at 1 on a new task: it resumes part-way (task ``k`` of equal budgets starts at
  ``1 - (k-1)/k``). Constant schedules, the defaults, are unaffected. Use constants for continual runs.
* **Off-policy buffer and warm-up** (``reset_buffer=True``, the default): at the start of every task after
  the first, the replay buffer is emptied and ``learning_starts`` is applied again from the current step, so
  fine-tuning learns from the current task only (Continual World does the same); replay of earlier tasks
  is the job of a replay module. With ``reset_buffer=False`` the FIFO buffer carries over and no warm-up
  is repeated.
* **Episode statistics.** SB3's ``rollout/ep_rew_mean`` averages the last 100 episodes, so it mixes the
  old and new task for a short while after a switch; ``eval/<task>/return`` is the clean measure.
* **VecNormalize** is refused: its running statistics would drift from task to task unnoticed.
"""

from __future__ import annotations

import inspect
import math
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import stable_baselines3
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize, unwrap_vec_normalize
from torch.utils.tensorboard import SummaryWriter

from clrl import checkpoint, metrics
from clrl.errors import ConfigError, RunExistsError, StreamError
from clrl.evaluation import Evaluator
from clrl.logger import RunLogger, log_eval_row, write_json_atomic
from clrl.modules.base import ContinualModule, TaskInfo
from clrl.streams import TaskStream

EVAL_SEED_OFFSET = 100_000
"""Evaluation episodes are seeded from ``seed + EVAL_SEED_OFFSET``, far from the training envs' seeds."""


@dataclass
class TrainResult:
    """The outcome of a continual run.

    Attributes:
        matrix: Return matrix, shape ``(n_tasks + 1, n_tasks)``: row 0 untrained, row ``i`` after task ``i``.
        metrics: ``acc``, ``bwt``, ``fwt``, ``forgetting`` (see :mod:`clrl.metrics`).
        task_names: The stream's task names (the matrix's columns).
        steps: Global environment step of each matrix row.
        curves: Evaluations during training: ``(step, task being trained, returns on every task)``.
        config: Stream, algorithm, method, seed and hyperparameters of the run.
        logdir: The run directory, if one was written.
        timings: Wall-clock seconds of the whole run (``total``) and of its evaluations (``evaluation``).
    """

    matrix: np.ndarray
    metrics: dict[str, float]
    task_names: list[str]
    steps: list[int]
    curves: list[tuple[int, int, list[float]]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    logdir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)

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
            "versions": versions(),
        }


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


def train(
    model: BaseAlgorithm,
    stream: TaskStream,
    modules: Sequence[ContinualModule] = (),
    *,
    logdir: str | Path | None = None,
    seed: int = 0,
    eval_episodes: int = 10,
    eval_freq: int | None = None,
    reset_buffer: bool = True,
    checkpoints: bool = True,
    overwrite: bool = False,
    progress_bar: bool = False,
    method: str | None = None,
) -> TrainResult:
    """Learn ``stream`` task after task with ``model`` and the given continual modules.

    For each task: switch the model's env (``set_env``), ``learn`` the task's budget, evaluate on every task,
    fill one row of the return matrix, log, and checkpoint the model with the modules' state.

    Args:
        model: Any SB3 (or sb3-contrib) model whose spaces match the stream's.
        stream: The task stream.
        modules: Continual modules (none: fine-tuning).
        logdir: Run directory for TensorBoard events, ``results.json`` and ``checkpoints/``; ``None`` writes
            nothing. Replaces the model's logger.
        seed: Seeds the model (``set_random_seed``) and the task environments; the same seed gives the same
            return matrix.
        eval_episodes: Episodes per task at each evaluation.
        eval_freq: Also evaluate every task every ``eval_freq`` environment steps during training (the
            forgetting curves in TensorBoard); ``None`` evaluates at task boundaries only.
        reset_buffer: Off-policy only: empty the replay buffer and repeat the warm-up at each new task
            (see the module docstring).
        checkpoints: Save ``checkpoints/taskNN-<name>.zip`` at each task boundary (needs ``logdir``).
        overwrite: Replace an existing run in ``logdir`` (otherwise that is an error).
        progress_bar: Show a progress bar over tasks and steps.
        method: Name of the method in ``results.json`` (default: the modules' names, or ``"finetune"``).

    Returns:
        The return matrix, metrics and run information.

    Raises:
        StreamError: The stream is invalid or its spaces differ from the model's.
        ConfigError: Bad arguments (unknown module type, VecNormalize, ...).
        RunExistsError: ``logdir`` holds a run and ``overwrite`` is false.
    """
    modules = list(modules)
    for m in modules:
        if not isinstance(m, ContinualModule):
            raise ConfigError(f"modules must be clrl ContinualModule instances, got {type(m).__name__}")
    if len({id(m) for m in modules}) != len(modules):
        raise ConfigError("the same module instance is listed twice")
    method = method or ("+".join(m.name for m in modules) or "finetune")
    return _Run(
        model,
        stream,
        modules,
        logdir,
        seed,
        eval_episodes,
        eval_freq,
        checkpoints,
        overwrite,
        progress_bar,
        method,
    ).run(
        lambda i: stream.make_vec_env(i, n_envs=model.n_envs, seed=seed + 1000 * i),
        reset_buffer=reset_buffer,
    )


def train_multitask(
    model: BaseAlgorithm,
    stream: TaskStream,
    *,
    logdir: str | Path | None = None,
    seed: int = 0,
    eval_episodes: int = 10,
    eval_freq: int | None = None,
    checkpoints: bool = True,
    overwrite: bool = False,
    progress_bar: bool = False,
) -> TrainResult:
    """Multi-task baseline (the usual upper bound): train on all tasks at once, each episode a random task.

    The total budget is the stream's; the model is evaluated after each task's share of it, so that row
    ``i`` of the matrix is measured at the same step as in a continual run. Arguments as in :func:`train`.
    """
    run = _Run(
        model,
        stream,
        [],
        logdir,
        seed,
        eval_episodes,
        eval_freq,
        checkpoints,
        overwrite,
        progress_bar,
        "multitask",
    )
    env = stream.make_multitask_vec_env(n_envs=model.n_envs, seed=seed)
    return run.run(lambda i: env if i == 0 else None, reset_buffer=False)


def train_single_task(
    make_model: Callable[[int], BaseAlgorithm],
    stream: TaskStream,
    *,
    logdir: str | Path | None = None,
    seed: int = 0,
    eval_episodes: int = 10,
    overwrite: bool = False,
    progress_bar: bool = False,
) -> TrainResult:
    """Single-task baseline: a fresh model per task, trained on that task alone for its budget.

    Row 0 of the matrix is the untrained model of task 0; row ``i`` the model trained on task ``i - 1``
    alone, evaluated on every task. :attr:`TrainResult.reference` (``R[j + 1, j]``) gives the reference
    returns for forward transfer and normalised scores. SB3's own scalars of each task go to
    ``logdir/<task>/``; ``eval/<task>/return`` to ``logdir``, at the cumulative step count.

    Args:
        make_model: Builds and seeds a new model on task ``i``'s environment, e.g.
            ``lambda i: PPO("MlpPolicy", stream.make_vec_env(i, n_envs=4, seed=0), seed=0)``.
        stream: The task stream.
        logdir, seed, eval_episodes, overwrite, progress_bar: As in :func:`train` (``seed`` seeds the
            evaluation episodes; the models are seeded by ``make_model``).
    """
    n = len(stream)
    stream.validate()
    root = _prepare_logdir(logdir, overwrite)
    evaluator = Evaluator(stream, eval_episodes, seed + EVAL_SEED_OFFSET)
    result = TrainResult(np.full((n + 1, n), np.nan), {}, stream.task_names, [0], [], {}, root)
    bar = _progress(progress_bar, sum(stream.steps(i) for i in range(n)))
    writer = None
    try:
        for i, task in enumerate(stream.tasks):
            model = make_model(i)
            _check_model(model, stream)
            if i == 0:
                result.config = _config(model, stream, "single-task", seed, eval_episodes, [])
                result.matrix[0] = evaluator(model)
            task_logger = RunLogger(root / task.name, model) if root else None
            model.learn(stream.steps(i), callback=_ProgressCallback(bar, i, stream) if bar else None)
            if task_logger:
                task_logger.close()
            result.matrix[i + 1] = evaluator(model)
            result.steps.append(result.steps[-1] + model.num_timesteps)
            if root:
                if writer is None:
                    writer = SummaryWriter(str(root))
                    log_eval_row(writer, 0, stream.task_names, result.matrix[0])
                log_eval_row(writer, result.steps[-1], stream.task_names, result.matrix[i + 1])
                _write_summary(root, result, np.arange(i + 1))
    finally:
        evaluator.close()
        if writer is not None:
            writer.close()
        if bar:
            bar.close()
    result.metrics = metrics.summary(result.matrix)
    if root:
        _write_summary(root, result, np.arange(n))
    return result


def _write_summary(root: Path, result: TrainResult, done: np.ndarray) -> None:
    data = result.to_dict()
    data["completed_tasks"] = len(done)
    write_json_atomic(root / "results.json", data)


class _Run:
    """One sequential run; :func:`train` and :func:`train_multitask` differ only in the env per task."""

    def __init__(
        self,
        model: BaseAlgorithm,
        stream: TaskStream,
        modules: list[ContinualModule],
        logdir: str | Path | None,
        seed: int,
        eval_episodes: int,
        eval_freq: int | None,
        checkpoints: bool,
        overwrite: bool,
        progress_bar: bool,
        method: str,
    ) -> None:
        if eval_freq is not None and eval_freq < 1:
            raise ConfigError(f"eval_freq must be a positive number of steps or None, got {eval_freq}")
        stream.validate()
        _check_model(model, stream)
        self.model, self.stream, self.modules = model, stream, modules
        self.seed, self.eval_freq, self.checkpoints = seed, eval_freq, checkpoints
        self.root = _prepare_logdir(logdir, overwrite)
        self.config = _config(model, stream, method, seed, eval_episodes, modules)
        self.evaluator = Evaluator(stream, eval_episodes, seed + EVAL_SEED_OFFSET)
        self.progress_bar = progress_bar
        self.eval_seconds = 0.0

    def evaluate(self, current_task: int) -> np.ndarray:
        """One row of the return matrix, timed."""
        start = time.perf_counter()
        row = self.evaluator(self.model, self.modules, current_task=current_task)
        self.eval_seconds += time.perf_counter() - start
        return row

    def run(self, env_for_task: Callable[[int], VecEnv | None], reset_buffer: bool) -> TrainResult:
        model, stream, n = self.model, self.stream, len(self.stream)
        model.set_random_seed(self.seed)
        logger = RunLogger(self.root, model) if self.root else None
        result = TrainResult(
            np.full((n + 1, n), np.nan), {}, stream.task_names, [], [], self.config, self.root
        )
        bar = _progress(self.progress_bar, sum(stream.steps(i) for i in range(n)))
        start = time.perf_counter()
        try:
            result.matrix[0] = self.evaluate(current_task=0)
            result.steps.append(model.num_timesteps)
            if logger:
                logger.eval_row(model.num_timesteps, stream.task_names, result.matrix[0])
            for i, task in enumerate(stream.tasks):
                env = env_for_task(i)
                if env is not None:
                    model.set_env(env)
                self._learn(i, reset_buffer and i > 0, logger, result, bar)
                result.matrix[i + 1] = self.evaluate(current_task=i)
                result.steps.append(model.num_timesteps)
                seen = result.matrix[: i + 2, : i + 1]
                result.metrics = metrics.summary(seen)
                result.timings = {"total": time.perf_counter() - start, "evaluation": self.eval_seconds}
                if logger:
                    logger.eval_row(model.num_timesteps, stream.task_names, result.matrix[i + 1])
                    logger.task_end(model.num_timesteps, i, stream.task_names, result.matrix, result.metrics)
                if self.root:
                    if self.checkpoints:
                        checkpoint.save(
                            model,
                            self.root / "checkpoints" / f"task{i + 1:02d}-{task.name}.zip",
                            self.modules,
                            {"stream": stream.name, "task_index": i, "method": self.config["method"]},
                        )
                    _write_summary(self.root, result, np.arange(i + 1))
            if logger:
                logger.hparams(_hparams(self.config), result.metrics)
        finally:
            for m in self.modules:
                m.detach()
            self.evaluator.close()
            if logger:
                logger.close()
            if bar:
                bar.close()
        return result

    def _learn(
        self, i: int, reset_buffer: bool, logger: RunLogger | None, result: TrainResult, bar: Any
    ) -> None:
        model, task = self.model, self.stream.tasks[i]
        learning_starts = getattr(model, "learning_starts", None)
        if reset_buffer and isinstance(model, OffPolicyAlgorithm):
            assert model.replay_buffer is not None
            model.replay_buffer.reset()
            model.learning_starts = model.num_timesteps + model.learning_starts
        for m in self.modules:
            m.set_next_task(TaskInfo(i, task.name))
            m.set_task(i)
        callbacks: list[BaseCallback] = list(self.modules)
        if bar is not None:
            callbacks.append(_ProgressCallback(bar, i, self.stream))
        if self.eval_freq:
            callbacks.append(_PeriodicEval(self, i, logger, result))
        try:
            model.learn(self.stream.steps(i), callback=CallbackList(callbacks), reset_num_timesteps=False)
        finally:
            if learning_starts is not None:
                model.learning_starts = learning_starts  # type: ignore[attr-defined]


class _PeriodicEval(BaseCallback):
    """Evaluates every task every ``eval_freq`` steps during training (the forgetting curves)."""

    def __init__(self, run: _Run, task_index: int, logger: RunLogger | None, result: TrainResult) -> None:
        super().__init__()
        self.run, self.task_index, self.run_logger, self.result = run, task_index, logger, result
        self.last = 0

    def _on_training_start(self) -> None:
        self.last = self.num_timesteps
        self.end = self.num_timesteps + self.run.stream.steps(self.task_index)

    def _on_step(self) -> bool:
        assert self.run.eval_freq is not None
        # The task's last step is left to the evaluation at the task boundary, after the final update.
        if self.num_timesteps - self.last >= self.run.eval_freq and self.num_timesteps < self.end:
            self.last = self.num_timesteps
            row = self.run.evaluate(self.task_index)
            self.result.curves.append((self.num_timesteps, self.task_index, row.tolist()))
            if self.run_logger:
                self.run_logger.eval_row(self.num_timesteps, self.run.stream.task_names, row)
        return True


class _ProgressCallback(BaseCallback):
    def __init__(self, bar: Any, task_index: int, stream: TaskStream) -> None:
        super().__init__()
        self.bar, self.task_index, self.stream = bar, task_index, stream
        self.start = 0

    def _on_training_start(self) -> None:
        self.start = self.num_timesteps
        self.done = 0
        name = self.stream.tasks[self.task_index].name
        self.bar.set_description(f"task {self.task_index + 1}/{len(self.stream)} {name}")

    def _on_step(self) -> bool:
        budget = self.stream.steps(self.task_index)
        done = min(self.num_timesteps - self.start, budget)
        self.bar.update(done - self.done)
        self.done = done
        return True


def _progress(enabled: bool, total: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True)


def _check_model(model: BaseAlgorithm, stream: TaskStream) -> None:
    env = model.get_env()
    if env is not None and (isinstance(env, VecNormalize) or unwrap_vec_normalize(env) is not None):
        raise ConfigError(
            "VecNormalize is not supported by clrl.train: its statistics would drift across tasks; "
            "build the model on stream.make_vec_env(0, ...)"
        )
    probe = stream.make_env(0)
    try:
        for kind, ours, theirs in (
            ("observation", probe.observation_space, model.observation_space),
            ("action", probe.action_space, model.action_space),
        ):
            if ours != theirs:
                raise StreamError(
                    f"stream {stream.name!r} has {kind} space {ours}, but the model was built for {theirs}; "
                    f"build the model on stream.make_vec_env(0, ...)"
                )
    finally:
        probe.close()


def _prepare_logdir(logdir: str | Path | None, overwrite: bool) -> Path | None:
    if logdir is None:
        return None
    root = Path(logdir)
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise RunExistsError(
                f"run directory {str(root)!r} already holds a run; choose another logdir or pass "
                "overwrite=True (--overwrite on the command line) to replace it"
            )
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _config(
    model: BaseAlgorithm,
    stream: TaskStream,
    method: str,
    seed: int,
    eval_episodes: int,
    modules: Sequence[ContinualModule],
) -> dict[str, Any]:
    hyper = {}
    for name in inspect.signature(type(model).__init__).parameters:
        value = getattr(model, name, None)
        if isinstance(value, bool | int | float | str) and name not in ("verbose", "seed"):
            hyper[name] = value
    return {
        "stream": stream.name,
        "stream_spec": stream.to_dict(),
        "algorithm": type(model).__name__,
        "method": method,
        "seed": seed,
        "n_envs": model.n_envs,
        "eval_episodes": eval_episodes,
        "hyperparameters": hyper,
        "modules": [{"class": type(m).__name__, "config": m.get_config()} for m in modules],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _hparams(config: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {k: config[k] for k in ("stream", "algorithm", "method", "seed")}
    flat.update({f"algo/{k}": v for k, v in config["hyperparameters"].items()})
    for m in config["modules"]:
        for k, v in m["config"].items():
            if k != "verbose" and (not isinstance(v, float) or math.isfinite(v)):
                flat[f"{m['class']}/{k}"] = v
    return flat
