"""SB3 callbacks that bring clrl's evaluation and checkpoints into anyone's ``learn`` loop."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from clrl import checkpoint
from clrl.algorithms import finished_returns
from clrl.boundaries import check_modules, open_task_index
from clrl.errors import ConfigError
from clrl.evaluation import EVAL_SEED_OFFSET, Evaluator
from clrl.modules.base import ContinualModule, check_positive_int
from clrl.streams import TaskStream


class ContinualEvalCallback(BaseCallback):
    """Evaluate every task of a stream during training, exactly as the return matrix is measured.

    Every ``eval_freq`` environment steps the model plays ``n_eval_episodes`` seeded episodes of each task
    through a :class:`clrl.Evaluator`: each module selects the evaluated task (its head, column or mask,
    :meth:`~clrl.ContinualModule.set_task`) and its :meth:`~clrl.ContinualModule.evaluating` context is
    entered (CLSER's stable copy, Progress & Compress's knowledge base), then the task being trained is
    selected again. SB3's ``EvalCallback`` does neither, so it scores another policy than the return
    matrix does. Results go to SB3's logger as ``eval/<task>/return`` (``eval/<task>/<metric>`` for a
    stream scored by an info metric) at the current step, and are kept in :attr:`curves`.
    ``clrl.train``'s periodic evaluation (``eval_freq``) is this callback.

    Unlike SB3's ``EvalCallback``, whose ``eval_freq`` counts callback calls (``n_envs`` steps each),
    ``eval_freq`` here counts environment steps, as the step axis of every clrl curve does.

    Args:
        stream: The stream whose tasks are evaluated.
        modules: The continual modules of the model (those passed to ``learn``).
        eval_freq: Environment steps between evaluations (>= 1).
        n_eval_episodes: Episodes per task at each evaluation (>= 1).
        seed: The run's seed; episodes are seeded from ``seed + 100_000``, as in ``clrl.train``, so the same
            seed scores the same episodes.
        deterministic: Evaluate the deterministic action.
        end_step: No evaluation at or after this global step (``clrl.train`` evaluates at a task's end
            itself); ``None``: no limit.
        on_evaluation: Called with ``(step, task being trained, row)`` after each evaluation.
        log: Record the results in SB3's logger (and dump it at the current step).
        evaluator: An evaluator of ``stream`` to use (its episodes and seed) instead of building one.
        task: The index of the task being trained, selected again after each evaluation and recorded with
            it (default: the task the modules have open, else 0).
        verbose: Print each row when ``>= 1``.
    """

    def __init__(
        self,
        stream: TaskStream,
        modules: Sequence[ContinualModule] = (),
        eval_freq: int = 10_000,
        n_eval_episodes: int = 10,
        seed: int = 0,
        deterministic: bool = True,
        end_step: int | None = None,
        on_evaluation: Callable[[int, int, np.ndarray], None] | None = None,
        log: bool = True,
        evaluator: Evaluator | None = None,
        task: int | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if not isinstance(stream, TaskStream):
            raise ConfigError(f"stream must be a clrl.TaskStream, got {type(stream).__name__}")
        self.stream = stream
        self.modules = check_modules(modules)
        self.eval_freq = check_positive_int(eval_freq, "eval_freq")
        self.n_eval_episodes = check_positive_int(n_eval_episodes, "n_eval_episodes")
        self.seed = seed
        self.deterministic = deterministic
        self.end_step = end_step
        self.on_evaluation = on_evaluation
        self.log = log
        self.curves: list[tuple[int, int, list[float]]] = []
        """Every evaluation: ``(step, task being trained, returns on every task)``."""
        self.task = task
        self.seconds = 0.0
        """Wall-clock seconds spent evaluating."""
        self._evaluator = evaluator
        self._last = 0

    @property
    def evaluator(self) -> Evaluator:
        """The evaluator (its environments are built on first use and kept until :meth:`close`)."""
        if self._evaluator is None:
            self._evaluator = Evaluator(
                self.stream,
                self.n_eval_episodes,
                self.seed + EVAL_SEED_OFFSET,
                deterministic=self.deterministic,
            )
        return self._evaluator

    def _on_training_start(self) -> None:
        self._last = self.num_timesteps

    def _on_step(self) -> bool:
        if self.num_timesteps - self._last >= self.eval_freq and (
            self.end_step is None or self.num_timesteps < self.end_step
        ):
            self._last = self.num_timesteps
            self.evaluate()
        return True

    def evaluate(self) -> np.ndarray:
        """Evaluate every task now; log and keep the row."""
        current = self.task if self.task is not None else open_task_index(self.modules)
        current = 0 if current is None else current
        start = time.perf_counter()
        row = self.evaluator(self.model, self.modules, current_task=current)
        self.seconds += time.perf_counter() - start
        step = self.num_timesteps
        self.curves.append((step, current, row.tolist()))
        if self.log:
            metric = self.stream.metric
            for name, value in zip(self.stream.task_names, row, strict=True):
                self.logger.record(f"eval/{name}/{metric}", float(value))
            self.logger.dump(step)
        if self.verbose >= 1:
            cells = ", ".join(f"{n} {v:.1f}" for n, v in zip(self.stream.task_names, row, strict=True))
            print(f"Eval at step {step} (training task {current}): {cells}")
        if self.on_evaluation is not None:
            self.on_evaluation(step, current, row)
        return row

    def close(self) -> None:
        """Close the evaluation environments."""
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None


class ContinualCheckpointCallback(BaseCallback):
    """SB3's ``CheckpointCallback`` for models with continual modules: every ``save_freq`` environment
    steps, save the model *with* its modules' state (:func:`clrl.save`), so :func:`clrl.load` rebuilds both.

    SB3's own ``CheckpointCallback`` writes ``model.save`` zips, which hold no module state (no anchors,
    Fisher, masks or memories): :func:`clrl.load` refuses them, and ``PPO.load`` gives the bare model.
    Files are ``<save_path>/<name_prefix>_<steps>_steps.zip``, as SB3 names them; each is written under a
    temporary name and renamed, so a crash leaves the previous checkpoints intact. With
    ``save_replay_buffer`` the off-policy replay buffer is saved beside it, named as SB3 names it but as
    NumPy arrays rather than a pickle (``<name_prefix>_replay_buffer_<steps>_steps.npz``, read back with
    :func:`clrl.load_replay_buffer`).

    Args:
        save_freq: Environment steps between checkpoints (>= 1). SB3's callback counts calls instead.
        save_path: Folder of the checkpoints (created when missing).
        modules: The continual modules of the model (those passed to ``learn``).
        name_prefix: File name prefix.
        save_replay_buffer: Also save the replay buffer of off-policy models.
        verbose: Print each path written when ``>= 1``.
    """

    def __init__(
        self,
        save_freq: int,
        save_path: str | os.PathLike[str],
        modules: Sequence[ContinualModule] = (),
        name_prefix: str = "rl_model",
        save_replay_buffer: bool = False,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.save_freq = check_positive_int(save_freq, "save_freq")
        self.save_path = Path(save_path)
        if self.save_path.exists() and not self.save_path.is_dir():
            raise ConfigError(f"save_path {str(self.save_path)!r} is a file, not a folder")
        if not name_prefix or "/" in name_prefix or "\\" in name_prefix or "\0" in name_prefix:
            raise ConfigError(f"name_prefix must be a plain file name, got {name_prefix!r}")
        self.modules = check_modules(modules)
        self.name_prefix = name_prefix
        self.save_replay_buffer = save_replay_buffer
        self._last = 0

    def _on_training_start(self) -> None:
        self._last = self.num_timesteps

    def _on_step(self) -> bool:
        if self.num_timesteps - self._last >= self.save_freq:
            self._last = self.num_timesteps
            self.save()
        return True

    def save(self) -> Path:
        """Write a checkpoint now and return its path."""
        steps = self.num_timesteps
        path = checkpoint.save(
            self.model, self.save_path / f"{self.name_prefix}_{steps}_steps.zip", self.modules
        )
        if self.save_replay_buffer and getattr(self.model, "replay_buffer", None) is not None:
            checkpoint.save_replay_buffer(
                self.model, self.save_path / f"{self.name_prefix}_replay_buffer_{steps}_steps.npz"
            )
        if self.verbose >= 1:
            print(f"Saving model checkpoint to {path}")
        return path


class EpisodeReturns(BaseCallback):
    """Sum the returns of the training episodes that SB3's ``Monitor`` reports (``info["episode"]``), for
    :func:`clrl.metrics.online_performance`; ``clrl.train`` and :class:`clrl.StreamCallback` record it in
    ``results.json`` as ``online_performance`` (their mean) with ``training_episodes`` (their count).

    Args:
        total: Sum of the returns counted so far (a resumed run's).
        count: Episodes counted so far.
    """

    def __init__(self, total: float = 0.0, count: int = 0) -> None:
        super().__init__()
        self.total = float(total)
        self.count = int(count)

    @classmethod
    def from_metrics(cls, metrics: dict[str, float]) -> EpisodeReturns:
        """Continue the count a run's metrics hold (up to the rounding of their mean)."""
        count = int(metrics.get("training_episodes", 0))
        return cls(metrics.get("online_performance", 0.0) * count if count else 0.0, count)

    def add(self, infos: Sequence[dict[str, object]]) -> None:
        """Count the episodes that ended in one step of a vectorised env (its ``infos``)."""
        for value in finished_returns(infos):
            self.total += value
            self.count += 1

    def _on_step(self) -> bool:
        self.add(self.locals.get("infos", ()))
        return True

    def record(self, metrics: dict[str, float]) -> None:
        """Put ``online_performance`` and ``training_episodes`` into ``metrics`` (none before an episode)."""
        if self.count:
            metrics["online_performance"] = self.total / self.count
            metrics["training_episodes"] = float(self.count)
