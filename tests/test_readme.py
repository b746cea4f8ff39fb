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
    assert namespace["monitor"].records[-1]["task"] == 0


def _readme_commands() -> list[str]:
    """Every ``clrl ...`` command line of the README's code blocks (continuations joined, comments cut)."""
    commands = []
    for language, block in re.findall(r"```(\w*)\n(.*?)```", README.read_text(), flags=re.S):
        if language not in ("", "bash"):
            continue
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #")[0].strip()
            tail = line.rpartition("&& ")[2] if "&& clrl " in line else line
            if tail.startswith("clrl "):
                commands.append(tail)
    return commands


@pytest.mark.parametrize("command", _readme_commands())
def test_every_readme_command_line_is_one_the_cli_accepts(command: str) -> None:
    """The README's shell commands parse as written (the Python blocks run, above; these would train for
    minutes to hours, so they are parsed, and their streams, methods and files checked to exist)."""
    import shlex

    from clrl.cli import _build_parser
    from clrl.experiment import method_parts

    ns = _build_parser().parse_args(shlex.split(command)[1:])
    if getattr(ns, "stream", None):
        clrl.make_stream(ns.stream, validate=False)
    for stream in getattr(ns, "streams", None) or []:
        clrl.make_stream(stream, validate=False)
    for method in [getattr(ns, "method", None), *(getattr(ns, "methods", None) or [])]:
        if method:
            method_parts(method)
    if getattr(ns, "file", None):
        assert (README.parent / ns.file).is_file(), ns.file


def test_the_readme_names_the_main_commands() -> None:
    commands = _readme_commands()
    assert "clrl demo" in commands and "clrl list" in commands
    assert len(commands) >= 10
