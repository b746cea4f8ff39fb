"""Fuzzing the stream loader and the command line: bad input gets clrl's own errors, never a traceback."""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clrl
from clrl import cli, experiment
from clrl.results import TrainResult
from clrl.runner import _Run

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def keyed(keys: list[str]) -> st.SearchStrategy[str]:
    """Mostly the keys that mean something, sometimes anything."""
    return st.sampled_from(keys) | st.text(max_size=8)


wrappers = st.one_of(
    st.sampled_from(["PermuteActions", "TimeLimit", "NoSuchWrapper", "RescaleAction"]),
    st.fixed_dictionaries(
        {"name": st.sampled_from(["PermuteActions", "TimeLimit", "ClipAction", "bogus"]) | values},
        optional={
            "kwargs": st.dictionaries(
                keyed(["permutation", "max_episode_steps", "min_action", "max_action"]), values, max_size=2
            )
            | values,
            "extra": values,
        },
    ),
    values,
)
tasks = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["a", "b", "a b", "", "../x"]) | values,
        "env_id": st.sampled_from(
            ["CartPole-v1", "Pendulum-v1", "MountainCar-v0", "Nope-v0", "", "CartPole-v0"]
        )
        | values,
        "make_kwargs": st.dictionaries(
            keyed(["max_episode_steps", "render_mode", "g", "sutton_barto_reward"]), values, max_size=2
        )
        | values,
        "attributes": st.dictionaries(
            keyed(["length", "masspole", "gravity", "g", "max_speed", "reset", "_np_random", "__class__"]),
            values,
            max_size=2,
        )
        | values,
        "wrappers": st.lists(wrappers, max_size=2) | values,
        "steps": st.integers(-5, 10**6) | values,
        "colour": values,
    },
)
streams = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["s", ""]) | values,
        "description": values,
        "steps_per_task": st.integers(-5, 10**6) | values,
        "task_id": st.sampled_from(["observed", "hidden", "both"]) | values,
        "tasks": st.lists(tasks, max_size=3) | values,
        "unknown": values,
    },
)


@FUZZ
@given(data=streams)
def test_any_stream_data_builds_or_raises_stream_error(data: dict[str, Any]) -> None:
    try:
        stream = clrl.streams.stream_from_dict(data)
        stream.validate()
    except clrl.StreamError as exc:
        assert str(exc)
    else:
        assert len(stream) >= 1


@FUZZ
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_any_stream_file_loads_or_raises_stream_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "stream.toml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        try:
            clrl.load_stream(path)
        except clrl.StreamError as exc:
            assert str(exc)


def test_fuzzed_stream_files_include_valid_ones() -> None:
    """The file fuzzer can reach the checks past the TOML parser: a hand-written neighbour loads."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "stream.toml"
        path.write_text('name = "s"\n[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"\n')
        assert clrl.load_stream(path).task_names == ["a"]


OPTIONS: dict[str, list[str]] = {
    "--algo": ["ppo", "dqn", "sac", "A2C", "zzz", "qrdqn", "td3"],
    "--method": [*cli.METHODS, "multitask", "single-task", "bogus"],
    "--steps": ["64", "0", "-1", "abc", "1e9"],
    "--seeds": ["0", "1", "-1", "x"],
    "--eval-episodes": ["0", "-3", "2"],
    "--eval-freq": ["0", "100", "-1"],
    "--hp": [
        "n_steps=32", "learning_rate=abc", "policy_kwargs={ net_arch = [-1] }", "policy_kwargs=5", "gamma=",
        "=3", "batch_size=0", "n_envs=0", "n_envs=2", "buffer_size=-4", "policy=Nope", "oops", "n_steps=[1]",
    ],
    "--method-arg": [
        "strength=-1", "strength=abc", "strength=1e400", "strength=nan", "budget=0", "budget=all",
        "budget=-3", "fraction=2", "gamma=0.5", "x=1", "samples=0", "batch_size=-1", "networks=nope",
    ],
    "--device": ["cpu", "nonsense", "cuda:9"],
}  # fmt: skip
FLAGS = ["--resume", "--overwrite", "-v", "--help", "--bogus"]
option_pairs = st.sampled_from(list(OPTIONS)).flatmap(
    lambda option: st.tuples(
        st.just(option),
        st.one_of(st.sampled_from(OPTIONS[option]), st.sampled_from(OPTIONS[option]), st.text()),
    )
)
# Mostly well-formed options with odd values (they reach the checks past argparse), some noise.
arguments = st.one_of(
    option_pairs,
    option_pairs,
    option_pairs,
    st.sampled_from(FLAGS).map(lambda flag: (flag,)),
    st.text(max_size=6).map(lambda text: (text,)),
)
STREAM_ARGS = ["cartpole-flip", "pendulum-physics", "no-such-stream", "BAD_FILE", "GOOD_FILE"]


@FUZZ
@given(
    command=st.sampled_from(["run", "run", "run", "list", "runn"]),
    stream=st.sampled_from(STREAM_ARGS) | st.text(max_size=10),
    pairs=st.lists(arguments, max_size=6),
)
def test_any_command_line_exits_cleanly(
    monkeypatch: pytest.MonkeyPatch, command: str, stream: str, pairs: list[tuple[str, ...]]
) -> None:
    """Everything up to training runs for real (parsing, stream, model, modules, run directory checks)."""

    def empty(stream: clrl.TaskStream) -> TrainResult:
        n = len(stream)
        return TrainResult(np.zeros((n + 1, n)), {"acc": 0.0}, stream.task_names, [0] * (n + 1))

    def no_training(self: _Run, *args: Any, **kwargs: Any) -> TrainResult:
        return empty(self.stream)

    def single_task(factory: Any, stream: clrl.TaskStream, **kwargs: Any) -> TrainResult:
        factory(0)
        return empty(stream)

    monkeypatch.setattr(_Run, "run", no_training)
    monkeypatch.setattr(experiment, "train_single_task", single_task)
    with tempfile.TemporaryDirectory() as folder:
        bad, good = Path(folder) / "bad.toml", Path(folder) / "good.toml"
        bad.write_text('name = "x"\n[[tasks]]\nname = 3\n')
        good.write_text('name = "g"\ntask_id = "observed"\n[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"\n')
        stream = {"BAD_FILE": str(bad), "GOOD_FILE": str(good)}.get(stream, stream)
        tokens = [token for pair in pairs for token in pair]
        argv = [command, stream, *tokens, "--logdir", str(Path(folder) / "runs"), "--no-progress"]
        try:
            status = cli.main(argv)
        except SystemExit as exit:  # argparse: usage errors exit 2, --help exits 0
            assert exit.code in (0, 2)
        else:
            assert status in (0, 2)


MODULES = [cls for cls in cli.METHODS.values() if cls is not None]


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize("cls", MODULES, ids=lambda cls: cls.__name__)
def test_any_module_hyperparameters_build_or_raise_config_error(cls: type, data: st.DataObject) -> None:
    names = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "verbose")]
    kwargs = data.draw(st.dictionaries(st.sampled_from(names), values, max_size=3))
    try:
        module = cls(**kwargs)
    except clrl.ConfigError as exc:
        assert str(exc)
    else:
        assert module.get_config().keys() >= kwargs.keys()
