"""The checks a run makes before anything trains (seed, model, evaluation frequency, run directory) and
after each task (finite parameters)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecNormalize, unwrap_vec_normalize

from clrl.errors import ConfigError, NumericalError, RunExistsError, StreamError
from clrl.evaluation import EVAL_SEED_OFFSET
from clrl.streams import TaskStream


def check_model(model: BaseAlgorithm, stream: TaskStream) -> None:
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


def check_eval_freq(eval_freq: int | None) -> None:
    if eval_freq is not None and eval_freq < 1:
        raise ConfigError(f"eval_freq must be a positive number of steps or None, got {eval_freq}")


def prepare_logdir(logdir: str | Path | None, overwrite: bool, resume: bool = False) -> Path | None:
    if logdir is None:
        if resume:
            raise ConfigError("resume needs the run directory (logdir) of the run to continue")
        return None
    if resume and overwrite:
        raise ConfigError(
            "resume and overwrite exclude each other: resume continues the run, overwrite replaces it"
        )
    root = Path(logdir)
    if resume:
        root.mkdir(parents=True, exist_ok=True)
        return root
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise RunExistsError(
                f"run directory {str(root)!r} already holds a run; choose another logdir or pass "
                "overwrite=True (--overwrite on the command line) to replace it"
            )
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    return root
