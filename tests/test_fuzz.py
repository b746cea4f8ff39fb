"""Fuzzing the stream loader and the command line: bad input gets clrl's own errors, never a traceback."""

from __future__ import annotations

import inspect
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import DEVICE
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


schedule_keys = [
    "from",
    "to",
    "start",
    "end",
    "values",
    "at",
    "every",
    "mean",
    "amplitude",
    "period",
    "phase",
]
schedules = st.fixed_dictionaries(
    {
        "schedule": st.sampled_from(["linear", "step", "sinusoid", "random-walk", "piecewise", "cubic"])
        | values
    },
    optional={
        key: st.integers(-3, 200)
        | st.floats(allow_nan=True)
        | st.lists(st.integers(-1, 100), max_size=3)
        | values
        for key in [*schedule_keys, "std", "low", "high", "seed", "points"]
    },
)
"""A schedule table: the kinds and keys that mean something, with values of any kind."""
scheduled = values | schedules

wrappers = st.one_of(
    st.sampled_from(["PermuteActions", "TimeLimit", "NoSuchWrapper", "RescaleAction"]),
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["PermuteActions", "TimeLimit", "ClipAction", "ScaleReward", "bogus"])
            | values
        },
        optional={
            "kwargs": st.dictionaries(
                keyed(["permutation", "max_episode_steps", "min_action", "max_action", "scale"]),
                scheduled,
                max_size=2,
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
            scheduled,
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
        "cycles": st.integers(-2, 1002) | values,
        "boundaries": st.sampled_from(["announced", "hidden", "never"]) | values,
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
        "gamma=2", "learning_rate=inf", "learning_rate=1e400", "ent_coef=nan", "n_epochs=0", "clip_range=-1",
        "max_grad_norm=nan", "tau=1.5", "train_freq=0", "gradient_steps=-2", "ent_coef='auto_x'",
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
    kwargs = data.draw(st.dictionaries(st.sampled_from(names), values, max_size=3)) if names else {}
    try:
        module = cls(**kwargs)
    except clrl.ConfigError as exc:
        assert str(exc)
    else:
        assert module.get_config().keys() >= kwargs.keys()


ALGOS_AND_STREAMS = [("ppo", "cartpole-flip"), ("a2c", "cartpole-flip"), ("dqn", "cartpole-flip"),
                     ("sac", "pendulum-flip"), ("td3", "pendulum-flip")]  # fmt: skip


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize(("algo", "stream_name"), ALGOS_AND_STREAMS)
def test_any_hyperparameter_values_build_a_model_or_raise_config_error(
    algo: str, stream_name: str, data: st.DataObject
) -> None:
    """Every algorithm, its documented names with any values: a model whose settings are in range, or one
    ConfigError; never a model holding a value outside its range."""
    from clrl.hyperparameters import RANGES
    from clrl.presets import make_model

    stream = clrl.make_stream(stream_name, steps_per_task=64)
    names = sorted(n for n in RANGES if n in inspect.signature(clrl.get_algorithm(algo).__init__).parameters)
    hp = data.draw(st.dictionaries(st.sampled_from(names), scalars, max_size=3))
    try:
        model = make_model(algo, stream, seed=0, overrides=hp, device=DEVICE)
    except clrl.ConfigError as exc:
        assert str(exc)
    else:
        for name, value in hp.items():
            check, _ = RANGES[name]
            assert check(value), (name, value)
        model.get_env().close()


@FUZZ
@given(name=st.text(max_size=120))
def test_any_stream_name_is_refused_or_stays_inside_the_logdir(tmp_path: Path, name: str) -> None:
    data = {"name": name, "tasks": [{"name": "a", "env_id": "CartPole-v1"}]}
    try:
        stream = clrl.streams.stream_from_dict(data)
    except clrl.StreamError as exc:
        assert str(exc)
        return
    run_dir = clrl.RunSpec(stream="x").run_dir(tmp_path, stream.name).resolve()
    assert run_dir.is_relative_to(tmp_path.resolve()) and run_dir != tmp_path.resolve()


GRID_KEYS = [
    "streams",
    "algos",
    "methods",
    "seeds",
    "steps",
    "eval_episodes",
    "eval_freq",
    "device",
    "logdir",
]


def _toml(value: Any) -> str:
    """``value`` as a TOML literal (JSON's strings, numbers and arrays are TOML's, but for nan and inf)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not np.isfinite(value):
        return "nan" if np.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    return json.dumps(value)


@FUZZ
@given(
    key=st.sampled_from(GRID_KEYS),
    value=st.one_of(
        scalars, st.lists(scalars, max_size=3), st.sampled_from([["cartpole-flip"], ["ppo"], [0]])
    ),
)
def test_any_sweep_field_is_checked_before_any_run_starts(tmp_path: Path, key: str, value: Any) -> None:
    base = {"streams": ["cartpole-flip"], "algos": ["ppo"], "methods": ["finetune"], "seeds": [0]}
    fields = {**base, key: value}
    path = tmp_path / "sweep.toml"
    path.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in fields.items()))
    try:
        runs, _ = clrl.load_sweep(path)
        for spec in runs:
            spec.check()
    except (clrl.ConfigError, clrl.StreamError) as exc:
        assert str(exc)


RESULT = {
    "matrix": [[1.0, 2.0], [3.0, 2.0], [3.0, 4.0]],
    "metrics": {"acc": 3.5},
    "task_names": ["a", "b"],
    "steps": [0, 10, 20],
    "curves": [{"step": 5, "task": 0, "returns": [1.0, 2.0]}],
    "config": {"stream": "s"},
    "timings": {"total": 1.0},
    "random_returns": [0.5, 0.5],
    "module_stats": [],
    "plasticity": [{"step": 10, "task": 0, "values": {"actor/dormant": 0.5}}],
    "completed_tasks": 2,
}


@FUZZ
@given(key=st.sampled_from(sorted(RESULT)), value=values)
def test_any_results_field_reads_back_or_raises_config_error(tmp_path: Path, key: str, value: Any) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({**RESULT, key: value}))
    try:
        result = TrainResult.from_json(path)
    except clrl.ConfigError as exc:
        assert str(exc)
    else:
        n = len(result.task_names)
        assert result.matrix.shape == (n + 1, n) and all(isinstance(s, int) for s in result.steps)


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stable_baselines3 import PPO

    stream = clrl.make_stream("cartpole-flip", steps_per_task=64)
    model = PPO("MlpPolicy", stream.make_vec_env(0), n_steps=32, batch_size=32, n_epochs=1, device=DEVICE)
    model.learn(64)
    return clrl.save(model, tmp_path_factory.mktemp("ckpt") / "m", [clrl.L2()])


@FUZZ
@given(data=st.data())
def test_any_checkpoint_entry_restores_or_raises_checkpoint_error(
    tmp_path: Path, saved_checkpoint: Path, data: st.DataObject
) -> None:
    """A field of SB3's data entry or of clrl's plain copy of its pickled entries, set to any JSON or
    plain value: the resume and the load restore or raise CheckpointError, and never build anything else."""
    import io
    import zipfile

    import torch
    from conftest import rewrite_zip
    from stable_baselines3 import PPO

    from clrl import checkpoint

    with zipfile.ZipFile(saved_checkpoint) as archive:
        sb3 = json.loads(archive.read("data"))
    payload = checkpoint.read_payload(saved_checkpoint)
    entries = payload["sb3"]["entries"]
    target = data.draw(st.sampled_from(["data", "plain"]))
    if target == "data":
        key = data.draw(st.sampled_from(sorted(sb3)))
        sb3[key] = data.draw(values)
        damaged = rewrite_zip(saved_checkpoint, tmp_path / "d.zip", {"data": json.dumps(sb3).encode()})
    else:
        key = data.draw(st.sampled_from(sorted(entries)))
        kinds = ["class", "box", "discrete", "float_schedule", "constant_schedule", "array", "bogus"]
        entries[key] = data.draw(
            values
            | st.builds(
                lambda kind, rest: {"__clrl__": kind, **rest},
                st.sampled_from(kinds),
                st.dictionaries(
                    st.sampled_from(["name", "n", "val", "inner", "low", "high", "dtype", "start", "data"]),
                    values,
                    max_size=3,
                ),
            )
        )
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        damaged = rewrite_zip(saved_checkpoint, tmp_path / "d.zip", {checkpoint.ENTRY: buffer.getvalue()})
    fresh = PPO(
        "MlpPolicy",
        clrl.make_stream("cartpole-flip").make_vec_env(0),
        n_steps=32,
        batch_size=32,
        device=DEVICE,
    )
    for action in (lambda: checkpoint.restore(damaged, fresh, [clrl.L2()]), lambda: clrl.load(damaged)):
        try:
            action()
        except clrl.CheckpointError as exc:
            assert str(exc)
