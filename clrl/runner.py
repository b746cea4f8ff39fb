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

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from clrl import checkpoint, metrics
from clrl.algorithms import restart_replay
from clrl.boundaries import check_fit, check_modules, training_task
from clrl.callbacks import ContinualEvalCallback, EpisodeReturns
from clrl.checks import (
    check_eval_episodes,
    check_eval_freq,
    check_finite,
    check_model,
    check_seed,
    inside,
    prepare_logdir,
)
from clrl.errors import CheckpointError, ClrlError, ConfigError, TrainingError
from clrl.evaluation import EVAL_SEED_OFFSET, Evaluator
from clrl.logger import RunLogger
from clrl.modules.base import ContinualModule
from clrl.plasticity import PlasticityMonitor, monitor_for
from clrl.progress import progress
from clrl.results import (
    TrainResult,
    check_same_run,
    read_previous,
    reference_metrics,
    reference_mismatch,
    run_config,
    run_hparams,
    write_summary,
)
from clrl.streams import TaskStream

__all__ = [
    "EVAL_SEED_OFFSET",
    "VEC_ENVS",
    "TrainResult",
    "train",
    "train_cumulative",
    "train_ensemble",
    "train_multitask",
    "train_single_task",
]

VEC_ENVS: dict[str, type[DummyVecEnv | SubprocVecEnv]] = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}
"""The vectorised environments a run can train on, by name (``--vec-env``)."""


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
    resume: bool = False,
    progress_bar: bool = False,
    method: str | None = None,
    reference: TrainResult | None = None,
    vec_env_cls: type[DummyVecEnv | SubprocVecEnv] | None = None,
    plasticity: bool | PlasticityMonitor = True,
) -> TrainResult:
    """Learn ``stream`` task after task with ``model`` and the given continual modules.

    For each task: switch the model's env (``set_env``), ``learn`` the task's budget inside
    :func:`clrl.training_task` (the modules' task boundaries), evaluate on every task, fill one row of the
    return matrix, log, and checkpoint the model with the modules' state. Every module is checked against
    the stream and the model (:meth:`~clrl.ContinualModule.check_model`) before anything trains.

    Args:
        model: Any SB3 (or sb3-contrib) model whose spaces match the stream's.
        stream: The task stream.
        modules: Continual modules (none: fine-tuning).
        logdir: Run directory for TensorBoard events, ``results.json`` and ``checkpoints/``; ``None`` writes
            nothing. Replaces the model's logger while training.
        seed: Seeds the model (``set_random_seed``) and the task environments; the same seed gives the same
            return matrix.
        eval_episodes: Episodes per task at each evaluation.
        eval_freq: Also evaluate every task every ``eval_freq`` environment steps during training (the
            forgetting curves in TensorBoard); ``None`` evaluates at task boundaries only.
        reset_buffer: Off-policy only: empty the replay buffer and repeat the warm-up at each new task
            (see the module docstring).
        checkpoints: Save ``checkpoints/taskNN-<name>.zip`` at each task boundary (needs ``logdir``).
        overwrite: Replace an existing run in ``logdir`` (otherwise that is an error).
        resume: Continue the run in ``logdir`` from its last completed task (README: "Resuming and
            failures"): the model, optimisers, modules, random generators and, without
            ``reset_buffer``, the replay buffer are restored from that task's checkpoint into ``model``
            and ``modules``, which must be built as for the original run. For the same seed, the return
            matrix is the one an uninterrupted run gives. Starts afresh when ``logdir`` holds no run; returns
            at once when the run is complete.
        progress_bar: Show a progress bar over tasks and steps.
        method: Name of the method in ``results.json`` (default: the modules' names, or ``"finetune"``).
        reference: A finished :func:`train_single_task` result of the same stream (tasks and steps per
            task), algorithm, seed, environments, evaluation episodes and hyperparameters (else a
            ``ConfigError`` says which differ). Adds the metrics of the matrix
            normalised between a random policy (0) and the single-task returns (1) as ``<metric>_norm``, and,
            when both runs have ``eval_freq`` curves, Continual World's forward transfer as ``fwt_cw``.
        vec_env_cls: ``DummyVecEnv`` or ``SubprocVecEnv`` for the tasks' training environments (one process
            per environment copy); default: the kind the model was built on. Each environment the run
            replaces, the model's own first, is closed (its worker processes end).
        plasticity: Measure the networks' plasticity (:class:`clrl.PlasticityMonitor`, its defaults for
            ``True``, or the given one) during training and at every task boundary: TensorBoard's
            ``plasticity/*`` scalars and ``results.json``'s ``plasticity``. Training is unchanged by it.
            ``True`` skips policies the monitor cannot measure (recurrent ones, ARS); a given monitor
            refuses them.

    Returns:
        The return matrix, metrics and run information.

    Raises:
        StreamError: The stream is invalid or its spaces differ from the model's.
        ConfigError: Bad arguments (unknown module type, VecNormalize, a reference of another stream, ...).
        RunExistsError: ``logdir`` holds a run and neither ``overwrite`` nor ``resume`` is set.
        CheckpointError: ``resume`` on a run of another stream, algorithm, method, seed or clrl version, or
            whose checkpoint is missing or corrupt.
    """
    modules = check_modules(modules)
    if reference is not None and reference.task_names != stream.task_names:
        raise ConfigError(
            f"the reference run has tasks {reference.task_names}, the stream {stream.task_names}"
        )
    if stream.boundaries == "hidden":
        raise ConfigError(
            f"stream {stream.name!r} hides its task boundaries: clrl.train tells modules where each task "
            "starts; learn it in one learn with clrl.StreamCallback"
        )
    check_fit(modules, stream, model)
    method = method or ("+".join(m.name for m in modules) or "finetune")
    if vec_env_cls is None:
        vec_env_cls = SubprocVecEnv if isinstance(model.get_env(), SubprocVecEnv) else DummyVecEnv
    elif vec_env_cls not in VEC_ENVS.values():
        raise ConfigError(f"vec_env_cls must be DummyVecEnv or SubprocVecEnv, got {vec_env_cls!r}")
    run = _Run(
        model, stream, modules, logdir, seed, eval_episodes, eval_freq, overwrite, method, resume,
        monitor=monitor_for(plasticity, model),
    )  # fmt: skip
    problem = None if reference is None else reference_mismatch(reference, run.config)
    if problem is not None:
        run.release()
        raise ConfigError(f"the reference run cannot normalise this run: {problem}")
    return run.run(
        lambda i: stream.make_vec_env(i, n_envs=model.n_envs, seed=seed + 1000 * i, vec_env_cls=vec_env_cls),
        reset_buffer=reset_buffer,
        checkpoints=checkpoints,
        progress_bar=progress_bar,
        reference=reference,
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
    resume: bool = False,
    progress_bar: bool = False,
    plasticity: bool | PlasticityMonitor = True,
) -> TrainResult:
    """Multi-task baseline (the usual upper bound): train on all tasks at once, each episode a random task.

    The total budget is the stream's; the model is evaluated after each task's share of it, so that row
    ``i`` of the matrix is measured at the same step as in a continual run. Arguments as in :func:`train`;
    a resumed multi-task run restarts its mixed environment at the task boundary, so its matrix can differ
    slightly from an uninterrupted one.
    """
    run = _Run(
        model, stream, [], logdir, seed, eval_episodes, eval_freq, overwrite, "multitask", resume,
        monitor=monitor_for(plasticity, model),
    )  # fmt: skip
    env = stream.make_multitask_vec_env(n_envs=model.n_envs, seed=seed)
    return run.run(
        lambda i: env if i == run.start else None,
        reset_buffer=False,
        checkpoints=checkpoints,
        progress_bar=progress_bar,
    )


def train_cumulative(
    model: BaseAlgorithm,
    stream: TaskStream,
    *,
    logdir: str | Path | None = None,
    seed: int = 0,
    eval_episodes: int = 10,
    eval_freq: int | None = None,
    checkpoints: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    progress_bar: bool = False,
    plasticity: bool | PlasticityMonitor = True,
) -> TrainResult:
    """Cumulative baseline (the continual-learning literature's "joint so far" bound): task ``i``'s budget
    is spent on tasks ``0..i`` mixed, each episode a random one of them, by the same model throughout.

    Row ``i + 1`` of the matrix is measured after task ``i``'s budget, as in a continual run; the replay
    buffer is kept across tasks (it holds the mix). Arguments as in :func:`train`; a resumed run restarts
    its mixed environment at the task boundary.
    """
    run = _Run(
        model, stream, [], logdir, seed, eval_episodes, eval_freq, overwrite, "cumulative", resume,
        monitor=monitor_for(plasticity, model),
    )  # fmt: skip
    return run.run(
        lambda i: stream.make_multitask_vec_env(n_envs=model.n_envs, seed=seed + 1000 * i, tasks=i + 1),
        reset_buffer=False,
        checkpoints=checkpoints,
        progress_bar=progress_bar,
    )


def train_single_task(
    make_model: Callable[[int], BaseAlgorithm],
    stream: TaskStream,
    *,
    logdir: str | Path | None = None,
    seed: int = 0,
    eval_episodes: int = 10,
    eval_freq: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress_bar: bool = False,
) -> TrainResult:
    """Single-task baseline: a fresh model per task, trained on that task alone for its budget.

    Row 0 of the matrix is the untrained model of task 0; row ``i`` the model trained on task ``i - 1``
    alone, evaluated on every task. :attr:`TrainResult.reference` (``R[j + 1, j]``) gives the reference
    returns; pass the whole result as ``reference`` to :func:`train`. The rows are not a sequence, so the
    only metric is ``acc``: the mean over tasks of the return of the model trained on that task. SB3's own
    scalars of each task go to ``logdir/<task>/``; ``eval/<task>/return`` to ``logdir``, at the cumulative
    step count.

    It runs through the same loop as :func:`train` (results.json, TensorBoard, HParams, resume), with a
    new model per task built just before it trains.

    Args:
        make_model: Builds and seeds a new model on task ``i``'s environment, e.g.
            ``lambda i: PPO("MlpPolicy", stream.make_vec_env(i, n_envs=4, seed=0), seed=0)``. Called once
            per task, and once more for task 0 first (not on a resume): that untrained model is the one
            row 0 evaluates.
        stream: The task stream.
        logdir, seed, eval_episodes, eval_freq, overwrite, progress_bar: As in :func:`train` (``seed`` seeds
            the evaluation episodes; the models are seeded by ``make_model``).
        resume: Skip the tasks ``logdir``'s ``results.json`` records as done (each task's model is
            independent of the others, so nothing else needs restoring).
    """
    run = _Run(
        None, stream, [], logdir, seed, eval_episodes, eval_freq, overwrite, "single-task", resume,
        fresh_model=make_model,
    )  # fmt: skip
    return run.run(lambda i: None, reset_buffer=False, checkpoints=False, progress_bar=progress_bar)


def train_ensemble(
    make_model: Callable[[int], BaseAlgorithm],
    stream: TaskStream,
    *,
    logdir: str | Path | None = None,
    seed: int = 0,
    eval_episodes: int = 10,
    eval_freq: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress_bar: bool = False,
) -> TrainResult:
    """Ensemble baseline (the forgetting-free reference of the architectural methods): a fresh model per
    task, as :func:`train_single_task`, each task evaluated with its own model.

    Row ``i + 1`` of the matrix holds, for every task ``j <= i``, the return of task ``j``'s model (as
    measured after its task: those models never change again), and for the tasks not yet trained the
    return of task ``i``'s model; so nothing is forgotten by construction (``bwt`` and ``forgetting_cw``
    are 0; Chaudhry's ``forgetting`` counts a return an earlier task's model had on a task before its own
    training, so it can be above 0) and the metrics are a continual run's. Arguments as in
    :func:`train_single_task`.
    """
    run = _Run(
        None, stream, [], logdir, seed, eval_episodes, eval_freq, overwrite, "ensemble", resume,
        fresh_model=make_model,
    )  # fmt: skip
    return run.run(lambda i: None, reset_buffer=False, checkpoints=False, progress_bar=progress_bar)


class _Run:
    """One run over a stream, task after task: :func:`train` and :func:`train_multitask` differ only in the
    env per task; :func:`train_single_task` gives a fresh model per task (``fresh_model``), whose SB3
    scalars go to ``<run>/<task>/`` and whose steps are counted on from the previous task's."""

    def __init__(
        self,
        model: BaseAlgorithm | None,
        stream: TaskStream,
        modules: list[ContinualModule],
        logdir: str | Path | None,
        seed: int,
        eval_episodes: int,
        eval_freq: int | None,
        overwrite: bool,
        method: str,
        resume: bool = False,
        fresh_model: Callable[[int], BaseAlgorithm] | None = None,
        monitor: PlasticityMonitor | None = None,
    ) -> None:
        """``model`` is the model that learns every task; with ``fresh_model`` instead (``model=None``), the
        first task this call trains gets ``fresh_model(i)``, built once the run directory is taken."""
        check_eval_freq(eval_freq)
        check_eval_episodes(eval_episodes)
        check_seed(seed, len(stream))
        stream.validate()
        if model is not None:
            check_model(model, stream)
        self.stream, self.modules = stream, modules
        self.method = method
        self.seed, self.eval_freq, self.eval_episodes = seed, eval_freq, eval_episodes
        self.fresh_model = fresh_model
        self.monitor = monitor
        self.episodes = EpisodeReturns()
        """The training episodes' returns (``online_performance``)."""
        self.offset = 0
        """Steps of the tasks before the current model's first (a fresh model per task counts from 0)."""
        self.root, self._lock = prepare_logdir(logdir, overwrite, resume)
        try:
            self.previous = read_previous(self.root) if resume else None
            self.resume = resume
            self.start = self.previous[1] if self.previous else 0
            """Index of the first task this call trains (the tasks before it are restored)."""
            self.evaluator = Evaluator(stream, eval_episodes, seed + EVAL_SEED_OFFSET)
            if model is None:
                assert fresh_model is not None
                # Task 0: the untrained model row 0 evaluates; a finished run builds its last task's, which
                # only checks the settings (nothing trains).
                model = fresh_model(min(self.start, len(stream) - 1))
                check_model(model, stream)
            self.model = model
            self.config = run_config(model, stream, method, seed, eval_episodes, modules)
            if self.previous:
                check_same_run(self.previous[0].config, self.config)
        except BaseException:
            self.release()
            raise
        self.eval_seconds = 0.0
        self.logger: RunLogger | None = None
        self.result: TrainResult | None = None

    def release(self) -> None:
        """Give up the run directory's lock (idempotent)."""
        if self._lock is not None:
            self._lock.release()

    def evaluate(self, current_task: int) -> np.ndarray:
        """One row of the return matrix, timed."""
        return self._timed(lambda: self.evaluator(self.model, self.modules, current_task=current_task))

    def _timed(self, evaluation: Callable[[], np.ndarray]) -> np.ndarray:
        start = time.perf_counter()
        row = evaluation()
        self.eval_seconds += time.perf_counter() - start
        return row

    def record_curve(self, step: int, task_index: int, row: np.ndarray) -> None:
        """Keep and log an evaluation made during training."""
        assert self.result is not None
        step += self.offset
        self.result.curves.append((step, task_index, row.tolist()))
        if self.logger:
            self.logger.eval_row(step, self.stream.task_names, row, self.stream.metric)

    def run(
        self,
        env_for_task: Callable[[int], VecEnv | None],
        reset_buffer: bool,
        checkpoints: bool,
        progress_bar: bool,
        reference: TrainResult | None = None,
    ) -> TrainResult:
        model, stream, n, first = self.model, self.stream, len(self.stream), self.start
        elapsed = 0.0
        if self.monitor is not None:
            self.monitor.bind(model)  # the initial weights: a resumed model is still as built
        if first > 0:
            assert self.previous is not None
            self.result = result = self.previous[0]
            self.episodes = EpisodeReturns.from_metrics(result.metrics)
            if self.fresh_model is None:
                self._restore(first, reset_buffer)
            else:  # a fresh model per task restores nothing; its steps count on from the last task's
                self.offset = result.steps[first]
            elapsed = result.timings.get("total", 0.0)
            self.eval_seconds = result.timings.get("evaluation", 0.0)
            result.config["resumed"] = [
                *result.config.get("resumed", []),
                time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            ]
            # Results depend on the thread count: record each resumed part's, beside the first part's.
            result.config["resumed_torch_threads"] = [
                *result.config.get("resumed_torch_threads", []),
                torch.get_num_threads(),
            ]
        else:
            if self.fresh_model is None:  # fresh models are seeded by their factory
                model.set_random_seed(self.seed)
            self.result = result = TrainResult(
                np.full((n + 1, n), np.nan), {}, stream.task_names, [], [], self.config, self.root
            )
        if self.monitor is not None:
            self.monitor.records = result.plasticity  # measurements go straight into results.json
        # A resumed run hides the events its killed predecessor wrote after the last kept row.
        purge = (result.steps[first] + 1 if first > 0 else 0) if self.resume else None
        sb3_model = None if self.fresh_model else model  # fresh models log SB3's scalars per task
        self.logger = logger = RunLogger(self.root, sb3_model, purge_step=purge) if self.root else None
        if logger and first == 0:
            logger.layout(stream.task_names, stream.metric)
        bar = progress(progress_bar, sum(stream.steps(i) for i in range(first, n)), "step")
        start = time.perf_counter() - elapsed
        try:
            if first == 0:
                with self._failing(0, "the evaluation before training"):
                    result.matrix[0] = self.evaluate(current_task=0)
                    result.random_returns = self._timed(self.evaluator.random_returns)
                result.steps.append(model.num_timesteps)
                if logger:
                    logger.eval_row(model.num_timesteps, stream.task_names, result.matrix[0], stream.metric)
                if self.root:
                    write_summary(self.root, result, 0)
            for i in range(first, n):
                if self.fresh_model is not None and (i != first or first == 0):  # a resumed one is built
                    model = self._fresh(i)
                env = env_for_task(i)
                if env is not None:
                    replaced = model.get_env()
                    model.set_env(env)
                    if replaced is not None and replaced is not env:
                        replaced.close()  # SubprocVecEnv: its worker processes end here
                with self._failing(i, "training"):
                    self._learn(i, reset_buffer and i > 0, bar)
                check_finite(model, self.stream.tasks[i].name, i)
                if self.monitor is not None:
                    self.monitor.measure(task=i)
                with self._failing(i, "the evaluation after training"):
                    row = self.evaluate(current_task=i)
                    if self.method == "ensemble":  # the earlier tasks by their own models, as measured then
                        row[:i] = [result.matrix[j + 1, j] for j in range(i)]
                    result.matrix[i + 1] = row
                step = self.offset + model.num_timesteps
                result.steps.append(step)
                result.module_stats.append(
                    {m.name: {"state_bytes": m.state_bytes(), **m.log_scalars()} for m in self.modules}
                )
                if self.method == "single-task":  # the rows are not a sequence: only their diagonal counts
                    result.metrics = {"acc": float(result.reference[: i + 1].mean())}
                else:
                    done = result.matrix[: i + 2, : i + 1]
                    result.metrics = metrics.summary(done)
                    result.metrics.update(metrics.cycle_summary(done, result.curves, stream.cycle_length))
                    self.episodes.record(result.metrics)
                if reference is not None:
                    result.metrics.update(reference_metrics(result, reference, i + 1))
                result.timings = {"total": time.perf_counter() - start, "evaluation": self.eval_seconds}
                if logger:
                    logger.eval_row(step, stream.task_names, result.matrix[i + 1], stream.metric)
                    logger.task_end(step, i, stream.task_names, result.matrix, result.metrics)
                if self.root:
                    if checkpoints:
                        # The next task starts from this buffer unless it empties it: keep it for a resume.
                        keep_buffer = isinstance(model, OffPolicyAlgorithm) and not reset_buffer and i + 1 < n
                        self._checkpoint(i, keep_buffer)
                    write_summary(self.root, result, i + 1)
                    for old in self._buffer_path(i).parent.glob("*.replay_buffer.npz"):
                        if old != self._buffer_path(i):
                            old.unlink()
            if logger and first < n:
                logger.hparams(run_hparams(self.config), result.metrics)
        finally:
            for m in self.modules:
                m.detach()
            self.evaluator.close()
            if logger:
                logger.close()
            if bar:
                bar.close()
            self.release()
        return result

    def _fresh(self, i: int) -> BaseAlgorithm:
        """Task ``i``'s own new model (the single-task baseline), built just before it trains (task 0's
        too: the run's first model is the untrained one row 0 evaluates), checked as that one was."""
        assert self.fresh_model is not None and self.result is not None
        model = self.fresh_model(i)
        check_model(model, self.stream)
        previous = self.model.get_env()
        if previous is not None and previous is not model.get_env():
            previous.close()  # the previous task's model is done with its environments
        self.model, self.offset = model, self.result.steps[-1]
        return model

    @contextlib.contextmanager
    def _failing(self, i: int, what: str) -> Iterator[None]:
        """Turn an exception of the env, SB3 or torch into a :class:`TrainingError` that names the task."""
        try:
            yield
        except ClrlError:
            raise
        except Exception as exc:
            # A loss that diverged often surfaces as another error (a distribution refusing NaN logits):
            # name the divergence, which resuming would repeat, rather than the symptom.
            check_finite(self.model, self.stream.tasks[i].name, i)
            kept = (
                f"; the {i} task(s) completed before it are kept in {str(self.root)!r}" if self.root else ""
            )
            first, *rest = str(exc).splitlines() or [""]
            raise TrainingError(
                f"task {self.stream.tasks[i].name!r} (index {i}) failed during {what}: "
                f"{type(exc).__name__}: {first[:300]}{' ...' if rest or len(first) > 300 else ''}{kept}"
            ) from exc

    def _checkpoint_path(self, i: int) -> Path:
        assert self.root is not None
        return inside(self.root, "checkpoints", f"task{i + 1:02d}-{self.stream.tasks[i].name}.zip")

    def _buffer_path(self, i: int) -> Path:
        return self._checkpoint_path(i).with_suffix(".replay_buffer.npz")

    def _checkpoint(self, i: int, with_buffer: bool) -> None:
        """Save the model, modules and random generators after task ``i`` (and the replay buffer)."""
        from clrl import __version__

        model = self.model
        if with_buffer:
            checkpoint.save_replay_buffer(model, self._buffer_path(i))
        metadata = {
            "stream": self.stream.name,
            "task_index": i,
            "method": self.config["method"],
            "seed": self.seed,
            "clrl": __version__,
            "rng": checkpoint.rng_state(model),
        }
        checkpoint.save(model, self._checkpoint_path(i), self.modules, metadata)

    def _restore(self, first: int, reset_buffer: bool) -> None:
        """Load the state after task ``first - 1`` into the model and modules (for ``resume``), and the
        replay buffer the next task starts from (an off-policy run that does not empty it between tasks)."""
        from clrl import __version__

        path = self._checkpoint_path(first - 1)
        if not path.exists():
            raise CheckpointError(
                f"cannot resume {str(self.root)!r}: results.json records {first} completed task(s), but "
                f"{str(path)!r} is missing (was the run made with checkpoints=False?)"
            )
        expected = {"stream": self.stream.name, "task_index": first - 1, "method": self.config["method"]}
        expected.update(seed=self.seed, clrl=__version__)

        def same_run(meta: dict[str, Any]) -> None:
            wrong = {k: meta.get(k) for k, v in expected.items() if meta.get(k) != v}
            if wrong or "rng" not in meta:
                raise CheckpointError(
                    f"cannot resume from {str(path)!r}: it was written for {wrong or 'no random state'}, "
                    f"this run has {expected}; pass overwrite=True (--overwrite) to start afresh"
                )

        checkpoint.restore(path, self.model, self.modules, validate=same_run)
        # A finished run has no next task, and its last task kept no buffer.
        if isinstance(self.model, OffPolicyAlgorithm) and not reset_buffer and first < len(self.stream):
            buffer = self._buffer_path(first - 1)
            if not buffer.exists():
                raise CheckpointError(
                    f"cannot resume {str(self.root)!r}: the replay buffer {str(buffer)!r} the next task "
                    "starts from is missing; pass overwrite=True (--overwrite) to start afresh"
                )
            checkpoint.load_replay_buffer(self.model, buffer)

    def _learn(self, i: int, reset_buffer: bool, bar: Any) -> None:
        model, task = self.model, self.stream.tasks[i]
        learning_starts = getattr(model, "learning_starts", None)
        if reset_buffer and isinstance(model, OffPolicyAlgorithm):
            restart_replay(model, model.learning_starts)
        callbacks: list[BaseCallback] = [*self.modules, self.episodes]
        if self.monitor is not None:
            callbacks.append(self.monitor)
        if bar is not None:
            callbacks.append(_ProgressCallback(bar, i, self.stream))
        periodic = None
        if self.eval_freq:
            periodic = ContinualEvalCallback(
                self.stream,
                self.modules,
                self.eval_freq,
                end_step=model.num_timesteps + self.stream.steps(i),  # the boundary evaluates the last step
                on_evaluation=self.record_curve,
                log=False,
                evaluator=self.evaluator,
                task=i,
            )
            callbacks.append(periodic)
        # A fresh model's SB3 scalars go to the task's folder (a resumed task hides what its killed attempt
        # logged there: its steps restart at 0).
        task_logger = None
        if self.fresh_model is not None and self.root is not None:
            purge = 0 if self.resume and i == self.start else None
            task_logger = RunLogger(inside(self.root, task.name), model, purge_step=purge)
        try:
            with training_task(model, self.modules, i, task.name, self.stream.steps(i)):
                model.learn(self.stream.steps(i), callback=CallbackList(callbacks), reset_num_timesteps=False)
        finally:
            if task_logger is not None:
                task_logger.close()
            if periodic is not None:
                self.eval_seconds += periodic.seconds
            if learning_starts is not None:
                model.learning_starts = learning_starts  # type: ignore[attr-defined]


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
