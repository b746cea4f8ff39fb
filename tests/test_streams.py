"""Task streams: built-in files, Python construction, validation errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import cartpole_stream
from gymnasium.utils.env_checker import check_env

import clrl
from clrl import StreamError, Task, TaskStream
from clrl.streams import stream_from_dict

TWO_TASKS = (
    'name = "s"\n[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"\n[[tasks]]\nname = "{b}"\nenv_id = "{env}"'
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stream.toml"
    path.write_text(text)
    return path


@pytest.mark.filterwarnings("ignore:.*is different from the unwrapped version")
@pytest.mark.parametrize("name", ["cartpole-flip", "cartpole-physics", "pendulum-physics", "pendulum-flip"])
def test_builtin_streams_load_and_every_task_passes_check_env(name: str) -> None:
    stream = clrl.make_stream(name)
    assert len(stream) >= 3
    for i in range(len(stream)):
        env = stream.make_env(i)
        check_env(env.unwrapped, skip_render_check=True)
        check_env(env, skip_render_check=True)
        env.close()


def test_builtin_stream_modes() -> None:
    assert clrl.make_stream("cartpole-flip").task_id == "observed"
    assert clrl.make_stream("cartpole-physics").task_id == "hidden"
    assert set(clrl.builtin_streams()) >= {"cartpole-flip", "cartpole-physics", "pendulum-physics"}


def test_pendulum_physics_tasks_differ_in_their_physics() -> None:
    stream = clrl.make_stream("pendulum-physics")
    physics = [(env.unwrapped.g, env.unwrapped.m, env.unwrapped.l) for env in map(stream.make_env, range(3))]
    assert physics == [(10.0, 1.0, 1.0), (3.0, 1.0, 1.0), (10.0, 1.3, 1.3)]
    assert stream.task_id == "observed"


def test_pendulum_flip_reverses_the_torque_of_its_second_task() -> None:
    stream = clrl.make_stream("pendulum-flip")
    first, second = stream.make_env(0), stream.make_env(1)
    first.reset(seed=0)
    second.reset(seed=0)
    pushed, *_ = first.step(np.array([-1.0], dtype=np.float32))
    reversed_, *_ = second.step(np.array([1.0], dtype=np.float32))
    np.testing.assert_array_equal(pushed[:3], reversed_[:3])  # same physics, the task id differs
    assert stream.task_id == "observed"


def test_observed_task_id_is_a_one_hot_suffix() -> None:
    stream = clrl.make_stream("cartpole-flip")
    obs, _ = stream.make_env(2).reset(seed=0)
    assert obs.shape == (4 + len(stream),)
    assert obs[4:].tolist() == [0.0, 0.0, 1.0, 0.0]
    hidden, _ = clrl.make_stream("cartpole-physics").make_env(2).reset(seed=0)
    assert hidden.shape == (4,)


def test_attributes_are_set_and_derived_quantities_recomputed() -> None:
    env = Task("long", "CartPole-v1", attributes={"length": 1.0, "masspole": 0.2}).make_env()
    base = env.unwrapped
    assert base.length == 1.0  # type: ignore[attr-defined]
    assert base.polemass_length == pytest.approx(0.2)  # type: ignore[attr-defined]
    assert base.total_mass == pytest.approx(1.2)  # type: ignore[attr-defined]


def test_flipped_task_swaps_the_effect_of_actions() -> None:
    stream = clrl.make_stream("cartpole-flip")
    normal, flipped = stream.make_env(0), stream.make_env(1)
    normal.reset(seed=1)
    flipped.reset(seed=1)
    a, *_ = normal.step(0)
    b, *_ = flipped.step(1)
    np.testing.assert_array_equal(a[:4], b[:4])


def test_vec_env_is_seeded() -> None:
    stream = clrl.make_stream("cartpole-physics")
    first = stream.make_vec_env(1, n_envs=2, seed=7).reset()
    again = stream.make_vec_env(1, n_envs=2, seed=7).reset()
    np.testing.assert_array_equal(first, again)


def test_file_roundtrip_through_to_dict(tmp_path: Path) -> None:
    stream = clrl.make_stream("cartpole-flip")
    assert stream_from_dict(stream.to_dict()) == stream


def test_steps_override_scales_per_task_budgets() -> None:
    stream = TaskStream(
        "s", [Task("a", "CartPole-v1"), Task("b", "CartPole-v1", steps=200)], steps_per_task=100
    )
    assert [stream.steps(0), stream.steps(1)] == [100, 200]
    short = clrl.streams.with_steps(stream, 10)
    assert [short.steps(0), short.steps(1)] == [10, 20]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'name = "s"\n[[tasks]]\nname = "a"\nenv_id = "NoSuchEnv-v0"',
            "task 'a': cannot make env_id 'NoSuchEnv-v0'",
        ),
        (
            'name = "s"\n[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"\nattributes = { polelength = 2.0 }',
            "task 'a': CartPoleEnv has no attribute 'polelength'",
        ),
        (
            'name = "s"\n[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"\nstep = 5',
            "task 0 ('a'): unknown key 'step'",
        ),
        (
            'name = "s"\ncolour = 1\n[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"',
            "stream 's': unknown key 'colour'",
        ),
        ('name = "s"\n[[tasks]]\nname = "a"\nenv_id = 3', "env_id must be a str"),
        (
            'name = "s"\nsteps_per_task = 0\n[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"',
            "steps_per_task must be",
        ),
        ('name = "s"\n[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"\nsteps = -3', "steps must be an integer"),
        ('name = "s"\ntask_id = "maybe"\n[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"', "task_id must be"),
        ('name = "s"', "has no tasks"),
        ('[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"', "missing required key 'name'"),
        ('name = "s"\n[[tasks]]\nenv_id = "CartPole-v1"', "missing required key 'name'"),
        (
            TWO_TASKS.format(b="a", env="CartPole-v1"),
            "duplicate task name 'a'",
        ),
        ('name = "s"\n[[tasks]]\nname = "a b"\nenv_id = "CartPole-v1"', "task name 'a b'"),
        (
            'name = "s"\n[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"\nwrappers = [{ name = "Nope" }]',
            "unknown wrapper 'Nope'",
        ),
        (
            'name = "s"\n[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"\n'
            'wrappers = [{ name = "PermuteActions", kwargs = { permutation = [0, 0] } }]',
            "wrapper 'PermuteActions': permutation must be a permutation",
        ),
        (
            TWO_TASKS.format(b="b", env="Acrobot-v1"),
            "task 'b' has observation space",
        ),
        (
            'name = "s"\n[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"\nmake_kwargs = { colour = 1 }',
            "bad make_kwargs",
        ),
        ("name = [", "not valid TOML"),
    ],
)
def test_malformed_streams_get_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(
        StreamError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        clrl.make_stream(write(tmp_path, text))


def test_unknown_stream_name_lists_the_builtin_ones() -> None:
    with pytest.raises(StreamError, match="cartpole-flip"):
        clrl.make_stream("no-such-stream")


def test_mismatched_action_spaces_name_the_task() -> None:
    stream = TaskStream("s", [Task("cart", "CartPole-v1"), Task("pend", "Pendulum-v1")])
    with pytest.raises(StreamError, match="task 'pend' has observation space"):
        stream.validate()


def test_observed_task_id_needs_a_flat_or_dict_space() -> None:
    stream = TaskStream("s", [Task("lake", "FrozenLake-v1")], task_id="observed")
    with pytest.raises(StreamError, match="task 'lake': an observed task id needs"):
        stream.validate()


# ------------------------------------------------------------------------------------------------ cycles
def test_a_cycled_stream_repeats_its_tasks_under_visit_names_with_their_task_ids() -> None:
    base = cartpole_stream()
    stream = clrl.streams.cycled(base, 3)
    assert stream.task_names == ["normal", "flipped", "normal.2", "flipped.2", "normal.3", "flipped.3"]
    assert (len(stream), stream.cycle_length, stream.cycles) == (6, 2, 3)
    assert [stream.visit(i) for i in (0, 3, 4)] == [(0, 0), (1, 1), (0, 2)]
    first, third = stream.make_env(0), stream.make_env(4)
    assert first.observation_space == third.observation_space == base.make_env(0).observation_space
    np.testing.assert_array_equal(first.reset(seed=1)[0], third.reset(seed=1)[0])  # same task, same id
    assert clrl.streams.stream_from_dict(stream.to_dict()) == stream
    assert stream.to_dict()["cycles"] == 3 and len(stream.to_dict()["tasks"]) == 2
    assert clrl.streams.with_steps(stream, 64).steps(5) == 64


def test_cycles_in_a_stream_file(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        'name = "s"\ncycles = 2\nsteps_per_task = 100\n[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"\n'
        '[[tasks]]\nname = "b"\nenv_id = "CartPole-v1"\nattributes = { length = 1.0 }\n'
    )
    stream = clrl.make_stream(path)
    assert stream.task_names == ["a", "b", "a.2", "b.2"]
    assert stream.tasks[3].attributes == {"length": 1.0}


@pytest.mark.parametrize("cycles", [0, -1, True, "2", 1.5, 1001])
def test_bad_cycles_are_refused_in_one_line(cycles: object) -> None:
    data = {"name": "s", "cycles": cycles, "tasks": [{"name": "a", "env_id": "CartPole-v1"}]}
    with pytest.raises(clrl.StreamError, match="cycles must be an integer") as caught:
        clrl.streams.stream_from_dict(data)
    assert "\n" not in str(caught.value)


def test_tasks_that_are_not_cycles_are_refused() -> None:
    a = clrl.Task("a", "CartPole-v1")
    with pytest.raises(clrl.StreamError, match=r"must repeat task 'a' as 'a\.2'"):
        clrl.TaskStream("s", [a, clrl.Task("b", "CartPole-v1")], cycles=2)
    with pytest.raises(clrl.StreamError, match="not 2 cycles"):
        clrl.TaskStream("s", [a, clrl.Task("a.2", "CartPole-v1"), clrl.Task("c", "CartPole-v1")], cycles=2)
    different = clrl.Task("a.2", "CartPole-v1", attributes={"length": 2.0})
    with pytest.raises(clrl.StreamError, match="must repeat"):
        clrl.TaskStream("s", [a, different], cycles=2)
