"""Every pair of modules the command line accepts (``a+b``) learns the stream, or is refused before anything
trains: none fails half-way (as ``ewc+dualnet`` and ``mas+dualnet`` did at their second task)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

import clrl
from clrl.experiment import METHODS, RunSpec, completed_tasks, run_experiment

PAIRS = [f"{a}+{b}" for a, b in itertools.combinations([n for n in METHODS if n != "finetune"], 2)]
TINY = {"n_envs": 1, "n_steps": 32, "batch_size": 32, "n_epochs": 1, "policy_kwargs": {"net_arch": [8]}}
TINY_ARGS = {"pnc": {"compress_steps": 8}, "gdumb": {"steps": 8}, "generative-replay": {"generator_steps": 8}}
"""Module arguments that shrink a part's own budget to the tiny runs' (P&C compresses for 1,000 steps, GDumb
trains its learner for 2,000 at every evaluation, generative replay its generator for 2,000 at every task
end)."""


@pytest.mark.parametrize("method", PAIRS)
def test_a_pair_of_modules_learns_or_is_refused_up_front(tmp_path: Path, method: str) -> None:
    args = {k: v for part in method.split("+") for k, v in TINY_ARGS.get(part, {}).items()}
    spec = RunSpec(
        "cartpole-flip", method=method, steps=32, eval_episodes=1, hyperparameters=TINY, method_args=args
    )
    try:
        result = run_experiment(spec, tmp_path, log=lambda _: None)
    except clrl.ClrlError as exc:
        done = completed_tasks(spec.run_dir(tmp_path))
        assert not done, f"{method} was refused after {done} task(s): {exc}"
        return
    assert result.matrix.shape == (5, 4) and np.isfinite(result.matrix).all()
    assert result.config["method"] == method
