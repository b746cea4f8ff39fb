"""RL Baselines3 Zoo's own train script learns a clrl stream with a module, configured by its YAML file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import clrl
from clrl.cli import main
from clrl.zoo import parse_policy_kwargs, zoo_hyperparameters

ZOO_FILE = Path(__file__).resolve().parent.parent / "agents" / "zoo" / "ppo.yml"


def test_rl_zoo_train_learns_a_stream_with_ewc_from_its_hyperparameter_file(tmp_path: Path) -> None:
    config = yaml.safe_load(ZOO_FILE.read_text())
    (env_id,) = config
    settings = config[env_id]
    settings.update(n_envs=1, n_steps=64, batch_size=64, n_timesteps=4 * 128)
    stream_callback = settings["callback"][0]["clrl.StreamCallback"]
    stream_callback.update(steps_per_task=128, eval_episodes=1)
    (tmp_path / "ppo.yml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo", "--env", env_id, "--gym-packages"]
    command += ["clrl", "-conf", "ppo.yml", "--eval-freq", "-1", "--seed", "0", "--log-folder", "logs"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / stream_callback["logdir"] / "results.json").read_text())
    assert results["completed_tasks"] == 4
    assert results["config"]["modules"][0]["class"] == "EWC"
    assert results["steps"][:4] == [0, 128, 256, 384]


# ------------------------------------------------------------------ Zoo files as presets
def test_policy_kwargs_strings_are_parsed_as_data_never_run(tmp_path: Path) -> None:
    parsed = parse_policy_kwargs(
        "dict(net_arch=dict(pi=[64], vf=[64]), activation_fn=nn.ReLU, log_std_init=-2)"
    )
    assert parsed == {"net_arch": {"pi": [64], "vf": [64]}, "activation_fn": "ReLU", "log_std_init": -2}
    marker = tmp_path / "ran"
    for text in (f"__import__('pathlib').Path({str(marker)!r}).touch()", "dict(x=open('f'))", "dict(**y)"):
        with pytest.raises(clrl.ConfigError, match="not data"):
            parse_policy_kwargs(text)
    assert not marker.exists()


def test_a_zoo_entry_becomes_hyperparameters_with_constant_schedules(tmp_path: Path) -> None:
    path = tmp_path / "ppo.yml"
    path.write_text(
        "CartPole-v1:\n  n_timesteps: !!float 1e5\n  n_envs: 8\n  learning_rate: lin_0.001\n"
        "  policy_kwargs: 'dict(net_arch=[32])'\nMountainCar-v0:\n  normalize: true\n"
    )
    hp, notes = zoo_hyperparameters(path, "CartPole-v1")
    assert hp == {"n_envs": 8, "learning_rate": 0.001, "policy_kwargs": {"net_arch": [32]}}
    assert notes == ["learning_rate: linear schedule from 0.001 read as the constant 0.001"]
    with pytest.raises(clrl.ConfigError, match="'normalize' is not supported"):
        zoo_hyperparameters(path, "MountainCar-v0")
    with pytest.raises(clrl.ConfigError, match="no settings for 'Pendulum-v1'"):
        zoo_hyperparameters(path, "Pendulum-v1")


def test_clrl_run_takes_the_zoos_own_tuned_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["run", "cartpole-flip", "--hyperparams", "zoo", "--steps", "64", "--eval-episodes", "1"]
    main([*args, "--logdir", str(tmp_path), "--no-progress"])
    assert "linear schedule" in capsys.readouterr().out
    results = json.loads((tmp_path / "cartpole-flip" / "ppo-finetune" / "seed0" / "results.json").read_text())
    hp = results["config"]["hyperparameters"]
    assert hp["n_epochs"] == 20 and hp["gae_lambda"] == 0.8 and results["config"]["n_envs"] == 8  # the Zoo's
