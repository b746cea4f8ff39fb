"""The README's Python examples run as written (with a tiny budget)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import stable_baselines3
from stable_baselines3 import PPO

import clrl
from clrl.cli import SMOKE_TEST_VARIABLE

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
    assert namespace["monitor"].records[-1]["task"] == 0


def _command_blocks() -> list[tuple[int, list[str]]]:
    """The README's shell blocks that hold ``clrl ...`` commands: each block's first line number and its
    commands (continuations joined, comments cut; a command already in an earlier block is not repeated)."""
    text = README.read_text()
    blocks, seen = [], set()
    for match in re.finditer(r"```(\w*)\n(.*?)```", text, flags=re.S):
        if match.group(1) not in ("", "bash"):
            continue
        commands = []
        for line in match.group(2).replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            tail = line.rpartition("&& ")[2] if "&& clrl " in line else line
            if tail.startswith("clrl ") and tail not in seen:
                seen.add(tail)
                commands.append(" ".join(tail.split()))
        if commands:
            blocks.append((text.count("\n", 0, match.start()) + 1, commands))
    return blocks


def _readme_commands() -> list[str]:
    return [command for _, commands in _command_blocks() for command in commands]


def _clrl() -> list[str]:
    """The ``clrl`` command of this environment (its console script; else through this interpreter)."""
    script = Path(sys.executable).with_name("clrl")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from clrl.cli import main; sys.exit(main())"]


@pytest.mark.parametrize(
    ("line", "commands"), _command_blocks(), ids=[f"line{line}" for line, _ in _command_blocks()]
)
def test_every_readme_shell_block_runs_as_written(line: int, commands: list[str], tmp_path: Path) -> None:
    """Each README block of ``clrl`` commands runs as written, in order, in a fresh directory (where the
    repository's ``benchmarks/`` is), under ``CLRL_SMOKE_TEST=1``, as the README says: 256 steps per task,
    one evaluation episode, the smallest seed. Every command exits 0 and prints what it computed. Other
    commands (pip, pytest, tensorboard) are not run; a Ray line follows the same sweep on the process
    backend, so it finds every run finished (Ray itself: tests/test_sweep.py)."""
    (tmp_path / "benchmarks").symlink_to(README.parent / "benchmarks")
    env = {**os.environ, SMOKE_TEST_VARIABLE: "1", "PYTHONHASHSEED": "0"}
    for command in commands:
        done = subprocess.run(
            [*_clrl(), *shlex.split(command)[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert done.returncode == 0, (
            f"README line {line}: {command}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
        assert done.stdout.strip(), f"README line {line}: {command} printed nothing"
        if command.split()[1] in ("run", "demo", "sweep"):
            assert SMOKE_TEST_VARIABLE in done.stderr  # the shrunk budget is said, never silent


def test_the_readme_names_the_main_commands() -> None:
    commands = _readme_commands()
    assert "clrl demo" in commands and "clrl list" in commands
    assert len(commands) >= 10


def test_the_readme_data_blocks_are_what_clrl_reads() -> None:
    """The YAML block is agents/zoo/ppo.yml (which tests/test_zoo.py runs with the Zoo); the TOML blocks
    are a stream file and a task's schedule keys that validate as written."""
    import tomllib
    import yaml

    text = README.read_text()
    (zoo,) = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert yaml.safe_load(zoo) == yaml.safe_load((README.parent / "agents" / "zoo" / "ppo.yml").read_text())
    stream_file, schedules = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    stream = clrl.streams.stream_from_dict(tomllib.loads(stream_file))
    stream.validate()
    task = {"name": "drifting", "env_id": "CartPole-v1", **tomllib.loads(schedules)}
    drifting = clrl.streams.stream_from_dict({"name": "drift", "steps_per_task": 10_000, "tasks": [task]})
    drifting.validate()
    assert drifting.tasks[0].schedules
