"""Hyperparameters and stream numbers are checked against their documented ranges before anything trains."""

from __future__ import annotations

import inspect
import math
from typing import Any

import pytest
from conftest import DEVICE, cartpole_stream
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3 import PPO, SAC

import clrl
from clrl._data import data_dir
from clrl.experiment import METHODS, make_modules
from clrl.hyperparameters import RANGES, check_hyperparameters
from clrl.presets import tomllib
from clrl.streams import MAX_STEPS


@pytest.mark.parametrize(
    "hp",
    [
        {"gamma": 0.99, "gae_lambda": 1.0, "clip_range": 0.2, "target_kl": None, "n_epochs": 1},
        {"ent_coef": "auto", "train_freq": [1, "episode"], "gradient_steps": -1, "learning_starts": 0},
        {"ent_coef": "auto_0.1", "policy_kwargs": {"net_arch": {"pi": [64], "qf": [64, 64]}}},
        {"learning_rate": lambda progress: 1e-3 * progress, "policy_kwargs": {"net_arch": []}},
        {"unknown_to_clrl": -5},  # left to the algorithm's constructor, which refuses unknown names
    ],
)
def test_values_in_range_pass(hp: dict[str, Any]) -> None:
    check_hyperparameters(hp)


@given(
    name=st.sampled_from(sorted(RANGES)),
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**6), 10**6), st.booleans(), st.text()
    ),
)
@settings(max_examples=300, deadline=None)
def test_any_value_is_accepted_only_inside_its_range(name: str, value: Any) -> None:
    """Fuzzed: a value passes exactly when it is in range, and a refusal is one ConfigError naming it."""
    check, _ = RANGES[name]
    finite = not (isinstance(value, float) and not math.isfinite(value))
    if finite and check(value):
        check_hyperparameters({name: value})
    else:
        with pytest.raises(clrl.ConfigError, match=f"hyperparameter {name} must be"):
            check_hyperparameters({name: value})


def test_the_users_own_model_is_checked_by_train_before_it_trains() -> None:
    stream = cartpole_stream()
    model = PPO("MlpPolicy", stream.make_vec_env(0), n_steps=32, batch_size=32, gamma=2.0, device=DEVICE)
    with pytest.raises(clrl.ConfigError, match=r"the model's gamma must be a discount in \[0, 1\], got 2.0"):
        clrl.train(model, stream, [clrl.L2()])
    assert model.num_timesteps == 0
    ppo = PPO("MlpPolicy", stream.make_vec_env(0), n_steps=32, batch_size=32, n_epochs=0, device=DEVICE)
    with pytest.raises(clrl.ConfigError, match="the model's n_epochs must be a positive integer"):
        clrl.train(ppo, stream)


def test_a_sac_model_with_auto_entropy_passes_the_models_check() -> None:
    from conftest import pendulum_stream

    stream = pendulum_stream()
    model = SAC("MlpPolicy", stream.make_vec_env(0), buffer_size=100, learning_starts=10, device=DEVICE)
    clrl.checks.check_model(model, stream)


@pytest.mark.parametrize(
    ("task", "match"),
    [
        (dict(attributes={"length": float("nan")}), "attributes.length must be a finite number, got nan"),
        (dict(attributes={"length": float("inf")}), "attributes.length must be a finite number, got inf"),
        (dict(make_kwargs={"max_episode_steps": -1}), "max_episode_steps must be a positive integer, got -1"),
        (dict(make_kwargs={"max_episode_steps": 1.5}), "max_episode_steps must be a positive integer"),
        (dict(steps=10**29), f"steps must be an integer in \\[1, {MAX_STEPS:_}\\]"),
    ],
)
def test_a_stream_number_that_is_not_finite_or_out_of_range_is_refused(task: dict, match: str) -> None:
    with pytest.raises(clrl.StreamError, match=match):
        clrl.Task("a", "CartPole-v1", **task)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("ScaleReward", {"scale": float("nan")}), ("AddObservationNoise", {"std": float("inf")})],
)
def test_a_wrapper_argument_that_is_not_finite_is_refused(name: str, kwargs: dict) -> None:
    key = next(iter(kwargs))
    with pytest.raises(clrl.StreamError, match=f"wrapper '{name}': kwargs.{key} must be a finite number"):
        clrl.WrapperSpec(name, kwargs)


def test_a_stream_file_with_a_nan_attribute_is_refused_when_read() -> None:
    with pytest.raises(clrl.StreamError, match=r"attributes\.length must be a finite number"):
        clrl.streams.stream_from_dict(
            {
                "name": "s",
                "steps_per_task": 10,
                "tasks": [{"name": "a", "env_id": "CartPole-v1", "attributes": {"length": float("nan")}}],
            }
        )


# ------------------------------------------------------------------------------------------ module defaults
@pytest.mark.parametrize(
    ("method", "args", "algo", "attribute", "expected"),
    [
        ("ewc", {}, "sac", "strength", 20_000.0),  # Continual World's λ = 1e4 in clrl's convention
        ("ewc", {}, "td3", "strength", 20_000.0),
        ("ewc", {}, "ppo", "strength", 1000.0),
        ("ewc", {"strength": 5.0}, "sac", "strength", 5.0),  # what the user says wins
        ("l2", {}, "sac", "strength", 200_000.0),
        ("l2", {}, "a2c", "strength", 0.01),
        ("l2", {}, None, "strength", 1.0),  # without an algorithm: the constructor's default
        ("ewc", {}, "dqn", "strength", 1000.0),  # no q-learning defaults: the constructor's
        ("packnet", {}, "sac", "retrain", 0.1),
        ("packnet", {}, "ppo", "retrain", 0.2),
        ("agem", {}, "sac", "networks", "all"),
    ],
)
def test_clrl_run_uses_module_defaults_per_algorithm_family(
    method: str, args: dict[str, Any], algo: str | None, attribute: str, expected: Any
) -> None:
    (module,) = make_modules(method, args, algo)
    assert getattr(module, attribute) == expected


def test_module_defaults_reach_each_part_of_a_combination() -> None:
    _, ewc = make_modules("multihead+ewc", {}, "sac")
    assert isinstance(ewc, clrl.EWC) and ewc.strength == 20_000.0


def test_every_module_default_names_a_method_and_its_arguments() -> None:
    table = tomllib.loads((data_dir("_presets") / "modules.toml").read_text(encoding="utf-8"))
    assert set(table) <= {"on-policy", "off-policy", "q-learning"}
    for family, methods in table.items():
        for method, values in methods.items():
            cls = METHODS[method]
            assert cls is not None, (family, method)
            assert set(values) <= set(inspect.signature(cls.__init__).parameters), (family, method)
            cls(**values)  # and the values are valid
