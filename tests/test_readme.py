"""The README's Python examples run as written (with a tiny budget)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import stable_baselines3
from stable_baselines3 import PPO

import clrl

README = Path(__file__).resolve().parent.parent / "README.md"


class ShortRolloutPPO(PPO):
    """SB3's PPO with 32-step rollouts, so that a few hundred steps per task train."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, n_steps=32, batch_size=64, n_epochs=2, **kwargs)


def test_readme_python_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    make_stream = clrl.make_stream

    def tiny(name: str, **_: object) -> clrl.TaskStream:
        return make_stream(name, steps_per_task=256)

    monkeypatch.setattr(clrl, "make_stream", tiny)
    monkeypatch.setattr(clrl.stream_callback, "make_stream", tiny)
    monkeypatch.setattr(stable_baselines3, "PPO", ShortRolloutPPO)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(textwrap.dedent(block), str(README), "exec"), namespace)
    assert namespace["result"].matrix.shape == (5, 4)
    assert np.isfinite(namespace["result"].matrix).all()
    assert isinstance(namespace["modules"][0], clrl.EWC)
    assert (tmp_path / "model.zip").is_file()
    assert namespace["ewc"].tasks_seen == 4  # two learn calls per task inside clrl.training_task
    assert isinstance(namespace["deployed"], ShortRolloutPPO)
    assert np.isfinite(namespace["callback"].result.matrix).all()
