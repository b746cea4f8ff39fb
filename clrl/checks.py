"""The checks a run makes before anything trains (seed, model, evaluation frequency, run directory) and
after each task (finite parameters)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

import filelock
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecNormalize, unwrap_vec_normalize

from clrl.errors import ConfigError, NumericalError, RunExistsError, StreamError
from clrl.evaluation import EVAL_SEED_OFFSET
from clrl.hyperparameters import RANGES, check_hyperparameters
from clrl.streams import TaskStream


def check_model(model: BaseAlgorithm, stream: TaskStream) -> None:
    """Refuse VecNormalize, a model whose spaces are not the stream's, and one whose hyperparameters lie
    outside their documented ranges (:func:`clrl.hyperparameters.check_hyperparameters`)."""
    settings = {
        name: value
        for name, value in vars(model).items()
        if name in RANGES and name != "train_freq" and not callable(value)  # SB3 keeps a TrainFreq tuple
    }
    check_hyperparameters({**settings, "policy_kwargs": model.policy_kwargs}, where="the model's")
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


def check_finite(model: BaseAlgorithm, task: str, index: int) -> None:
    """Refuse to evaluate and checkpoint a model whose parameters became NaN or infinite."""
    bad = [name for name, p in model.policy.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise NumericalError(
            f"the model's parameters {bad[:5]} became NaN or infinite while training task {task!r} "
            f"(index {index}): a loss diverged; the last good checkpoint is the previous task's"
        )


def check_seed(seed: Any, n_tasks: int) -> None:
    """Refuse a seed that is not a non-negative integer, or that leaves no room for the per-task seeds
    (``seed + 1000 * task`` for training, ``seed + EVAL_SEED_OFFSET + 1000 * task`` for evaluation)."""
    limit = 2**32 - EVAL_SEED_OFFSET - 1000 * n_tasks
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < limit:
        raise ConfigError(f"seed must be an integer in [0, {limit}), got {seed!r}")


def check_eval_freq(eval_freq: Any) -> None:
    """Refuse an ``eval_freq`` that is not a positive integer (``None``: evaluate at task boundaries only)."""
    if eval_freq is not None and (
        isinstance(eval_freq, bool) or not isinstance(eval_freq, int) or eval_freq < 1
    ):
        raise ConfigError(f"eval_freq must be a positive number of steps or None, got {eval_freq!r}")


def check_eval_episodes(eval_episodes: Any) -> None:
    """Refuse an ``eval_episodes`` that is not a positive integer."""
    if isinstance(eval_episodes, bool) or not isinstance(eval_episodes, int) or eval_episodes < 1:
        raise ConfigError(f"eval_episodes must be a positive integer, got {eval_episodes!r}")


def inside(root: Path, *parts: str) -> Path:
    """``root`` joined with ``parts``, or :class:`ConfigError` if that path would lie outside ``root`` (names
    come from files: they are checked where they are read, and again here where they become paths)."""
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()):
        raise ConfigError(f"{str(path)!r} is outside the run directory {str(root)!r}")
    return path


class RunLock:
    """An exclusive lock on one run directory, held for the run's life (``filelock``: ``flock`` on POSIX,
    released by the OS when the process dies, so a killed run never leaves its directory locked).

    The lock file ``.clrl.lock`` and the holder's PID in ``.clrl.pid`` lie inside the run directory.
    """

    FILES = (".clrl.lock", ".clrl.pid")

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = filelock.FileLock(str(root / self.FILES[0]), timeout=0)

    def acquire(self) -> RunLock:
        """Take the lock now, or raise :class:`RunExistsError` naming the process that holds it."""
        try:
            self._lock.acquire()
        except filelock.Timeout:
            try:
                holder = (self.root / self.FILES[1]).read_text(encoding="utf-8").strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise RunExistsError(
                f"run directory {str(self.root)!r} is in use by another clrl process (PID {holder})"
            ) from None
        (self.root / self.FILES[1]).write_text(f"{os.getpid()}\n", encoding="utf-8")
        return self

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        if self._lock.is_locked:
            (self.root / self.FILES[1]).unlink(missing_ok=True)
            self._lock.release()


def make_directory(path: Path, what: str) -> None:
    """``mkdir -p path``, or :class:`ConfigError` naming ``path`` and why (a file there, no permission)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {what} {str(path)!r}: {exc.strerror or exc}") from exc


TEMPORARY_FILES = (".*.tmp.zip", ".*.tmp.npz", ".results.json.*.tmp")
"""The names clrl writes under before renaming (a kill between the two leaves one behind)."""


def remove_temporary_files(root: Path) -> list[Path]:
    """Delete the temporary files a killed run left in ``root`` and its ``checkpoints/``; return them."""
    found = [
        p
        for folder in (root, root / "checkpoints")
        for pattern in TEMPORARY_FILES
        for p in folder.glob(pattern)
    ]
    for path in found:
        path.unlink(missing_ok=True)
    return found


def prepare_logdir(
    logdir: str | Path | None, overwrite: bool, resume: bool = False, keep: Collection[str] = ()
) -> tuple[Path | None, RunLock | None]:
    """Create and lock the run directory (:class:`RunLock`), and check it may be used; files named in
    ``keep`` are not the run's (a sweep's record and log of it): they neither count as a run nor go.

    Returns:
        The directory and its lock (release it when the run ends), or ``(None, None)`` without ``logdir``.

    Raises:
        ConfigError: ``resume`` without ``logdir``, or with ``overwrite``; ``logdir`` names a file.
        RunExistsError: The directory holds a run and neither ``overwrite`` nor ``resume`` is set, or another
            process runs in it.
    """
    if logdir is None:
        if resume:
            raise ConfigError("resume needs the run directory (logdir) of the run to continue")
        return None, None
    if resume and overwrite:
        raise ConfigError(
            "resume and overwrite exclude each other: resume continues the run, overwrite replaces it"
        )
    root = Path(logdir)
    make_directory(root, "run directory")
    lock = RunLock(root).acquire()
    try:
        remove_temporary_files(root)  # of a killed run: whatever wrote them is gone (we hold the lock)
        held = [p for p in root.iterdir() if p.name not in RunLock.FILES and p.name not in keep]
        if held and not resume:
            if not overwrite:
                raise RunExistsError(
                    f"run directory {str(root)!r} already holds a run; choose another logdir or pass "
                    "overwrite=True (--overwrite on the command line) to replace it"
                )
            for path in held:  # the lock stays: another launch cannot slip in while the old run goes
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
    except BaseException:
        lock.release()
        raise
    return root, lock
