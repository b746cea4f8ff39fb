"""Opening a checkpoint runs no code: parameters as tensors, counters as checked JSON, SB3's pickled
entries from clrl's plain copy, replay buffers as NumPy arrays."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
import torch
from conftest import ALGO_SETUPS, DEVICE, make_model, rewrite_zip
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm

import clrl
from clrl import checkpoint


class _Payload:
    """Unpickling this touches ``marker``: a stand-in for any code a file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _poisoned(path: Path, out: Path, marker: Path, key: str = "policy_class") -> Path:
    """``path`` with SB3's data entry ``key`` replaced by a pickle that creates ``marker``."""
    with zipfile.ZipFile(path) as archive:
        data = json.loads(archive.read("data"))
    data[key] = {
        ":type:": "<class 'type'>",
        ":serialized:": base64.b64encode(cloudpickle.dumps(_Payload(marker))).decode(),
    }
    return rewrite_zip(path, out, {"data": json.dumps(data).encode()})


def _trained(algo: str, tmp_path: Path, **overrides: Any) -> tuple[BaseAlgorithm, Path]:
    model, _ = make_model(algo, **overrides)
    model.learn(64)
    return model, clrl.save(model, tmp_path / algo, [clrl.L2()], {"task_index": 0})


def test_a_pickled_payload_in_sb3_data_never_runs_on_load_or_resume(tmp_path: Path) -> None:
    model, path = _trained("ppo", tmp_path)
    marker = tmp_path / "ran"
    evil = _poisoned(path, tmp_path / "evil.zip", marker)
    loaded, _ = clrl.load(evil)
    assert type(loaded.policy) is type(model.policy)  # the class from clrl's plain copy
    fresh, _ = make_model("ppo")
    checkpoint.restore(evil, fresh, [clrl.L2()])
    assert fresh.num_timesteps == model.num_timesteps
    assert not marker.exists()
    with pytest.raises(clrl.CheckpointError):  # SB3's own loading unpickles: the payload is live
        clrl.load(evil, trusted=True)
    assert marker.exists()


def test_a_pickled_entry_clrl_did_not_write_is_refused_not_unpickled(tmp_path: Path) -> None:
    _, path = _trained("ppo", tmp_path)
    marker = tmp_path / "ran"
    with pytest.raises(clrl.CheckpointError, match="pickled 'extra' that clrl did not write"):
        clrl.load(_poisoned(path, tmp_path / "evil.zip", marker, key="extra"))
    assert not marker.exists()


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "sac", "td3", "qrdqn", "tqc", "recurrentppo"])
def test_the_safe_load_gives_the_model_sb3s_unpickling_gives(tmp_path: Path, algo: str) -> None:
    _, path = _trained(algo, tmp_path)
    safe, modules = clrl.load(path)
    trusted, _ = clrl.load(path, trusted=True)
    assert [type(m) for m in modules] == [clrl.L2]
    for name, tensor in trusted.policy.state_dict().items():
        torch.testing.assert_close(safe.policy.state_dict()[name], tensor, rtol=0, atol=0)
    plain = (bool, int, float, str, type(None))
    for key, value in vars(trusted).items():
        if isinstance(value, plain) and key != "start_time":
            assert vars(safe)[key] == value, key
    assert safe.observation_space == trusted.observation_space
    assert safe.action_space == trusted.action_space
    assert safe.policy_kwargs == trusted.policy_kwargs
    assert list(safe.ep_info_buffer) == list(trusted.ep_info_buffer)
    for progress in (1.0, 0.5, 0.0):
        assert safe.lr_schedule(progress) == trusted.lr_schedule(progress)
        if hasattr(trusted, "clip_range"):
            assert safe.clip_range(progress) == trusted.clip_range(progress)
    obs = np.stack([safe.observation_space.sample() for _ in range(5)])
    safe.set_random_seed(3)
    trusted.set_random_seed(3)
    np.testing.assert_array_equal(
        safe.predict(obs, deterministic=True)[0], trusted.predict(obs, deterministic=True)[0]
    )


def test_classes_in_policy_kwargs_come_back_and_a_lambda_schedule_needs_trust(tmp_path: Path) -> None:
    _, path = _trained("ppo", tmp_path, policy_kwargs={"net_arch": [8], "activation_fn": torch.nn.Tanh})
    assert clrl.load(path)[0].policy_kwargs["activation_fn"] is torch.nn.Tanh
    _, path = _trained("ppo", tmp_path, learning_rate=lambda progress: 1e-3 * progress)
    with pytest.raises(clrl.CheckpointError, match=r"learning_rate.*trusted=True"):
        clrl.load(path)
    assert clrl.load(path, trusted=True)[0].lr_schedule(0.5) == pytest.approx(5e-4)


def _with_plain_entry(path: Path, out: Path, key: str, value: Any) -> Path:
    payload = checkpoint.read_payload(path)
    payload["sb3"]["entries"][key] = value
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return rewrite_zip(path, out, {checkpoint.ENTRY: buffer.getvalue()})


@pytest.mark.parametrize(
    ("name", "match"),
    [("subprocess:Popen", "not a BasePolicy class"), ("this:X", "module 'this' is not allowed")],
)
def test_a_class_in_the_plain_copy_must_be_allowed_and_of_its_fields_kind(
    tmp_path: Path, name: str, match: str
) -> None:
    _, path = _trained("ppo", tmp_path)
    damaged = _with_plain_entry(path, tmp_path / "d.zip", "policy_class", {"__clrl__": "class", "name": name})
    with pytest.raises(clrl.CheckpointError, match=match):
        clrl.load(damaged)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("num_timesteps", "many", "field 'num_timesteps' is 'many', not an integer"),
        ("num_timesteps", -5, "field 'num_timesteps' is -5"),
        ("learning_rate", float("nan"), "field 'learning_rate' is nan, not a finite number"),
        ("gamma", True, "field 'gamma' is True"),
        ("_n_updates", None, "'_n_updates' is None"),
    ],
)
def test_a_damaged_field_of_sb3_data_is_named_and_nothing_is_restored(
    tmp_path: Path, key: str, value: Any, match: str
) -> None:
    _, path = _trained("ppo", tmp_path)
    with zipfile.ZipFile(path) as archive:
        data = json.loads(archive.read("data"))
    data[key] = value
    damaged = rewrite_zip(path, tmp_path / "d.zip", {"data": json.dumps(data).encode()})
    fresh, _ = make_model("ppo")
    before = {k: v.clone() for k, v in fresh.policy.state_dict().items()}
    with pytest.raises(clrl.CheckpointError, match=match):
        checkpoint.restore(damaged, fresh, [clrl.L2()])
    assert fresh.num_timesteps == 0
    for name, tensor in fresh.policy.state_dict().items():
        assert torch.equal(tensor, before[name])


def test_a_missing_counter_or_a_damaged_class_entry_is_named(tmp_path: Path) -> None:
    model, path = _trained("ppo", tmp_path)
    with zipfile.ZipFile(path) as archive:
        data = json.loads(archive.read("data"))
    del data["_episode_num"]
    damaged = rewrite_zip(path, tmp_path / "d.zip", {"data": json.dumps(data).encode()})
    with pytest.raises(clrl.CheckpointError, match=r"lacks \['_episode_num'\]"):
        checkpoint.restore(damaged, make_model("ppo")[0], [clrl.L2()])
    data = {**json.loads(zipfile.ZipFile(path).read("data")), "policy_class": 5}
    damaged = rewrite_zip(path, tmp_path / "e.zip", {"data": json.dumps(data).encode()})
    fresh = make_model("ppo")[0]
    checkpoint.restore(damaged, fresh, [clrl.L2()])  # the model keeps its own class; counters come back
    assert fresh.num_timesteps == model.num_timesteps and fresh._n_updates == model._n_updates
    with pytest.raises(clrl.CheckpointError, match="cannot load the SB3 model"):
        clrl.load(damaged)


@pytest.mark.parametrize("entry", ["policy.pth", "policy.optimizer.pth", "pytorch_variables.pth"])
def test_a_garbage_parameter_file_is_one_checkpoint_error(tmp_path: Path, entry: str) -> None:
    _, path = _trained("sac", tmp_path)
    damaged = rewrite_zip(path, tmp_path / "d.zip", {entry: b"\x80\x04garbage"})
    with pytest.raises(clrl.CheckpointError, match="cannot read the SB3 model"):
        checkpoint.restore(damaged, make_model("sac")[0], [clrl.L2()])
    with pytest.raises(clrl.CheckpointError, match="cannot load the SB3 model"):
        clrl.load(damaged)


def _dqn(seed: int = 0) -> DQN:
    cls, make_stream, kwargs = ALGO_SETUPS["dqn"]
    return cls("MlpPolicy", make_stream().make_vec_env(0, seed=seed), seed=seed, device=DEVICE, **kwargs)


def test_a_replay_buffer_round_trips_as_arrays_and_damage_is_named(tmp_path: Path) -> None:
    model = _dqn()
    model.learn(150)
    path = clrl.save_replay_buffer(model, tmp_path / "buffer")
    assert path.name == "buffer.npz"
    other = _dqn(seed=1)
    clrl.load_replay_buffer(other, path)
    for name in ("observations", "actions", "rewards", "dones", "timeouts"):
        np.testing.assert_array_equal(getattr(other.replay_buffer, name), getattr(model.replay_buffer, name))
    assert (other.replay_buffer.pos, other.replay_buffer.full) == (
        model.replay_buffer.pos,
        model.replay_buffer.full,
    )

    arrays = dict(np.load(path))
    np.savez(tmp_path / "short.npz", **{**arrays, "rewards": arrays["rewards"][:3]})
    with pytest.raises(clrl.CheckpointError, match="array 'rewards' is float32"):
        clrl.load_replay_buffer(other, tmp_path / "short.npz")
    np.savez(tmp_path / "pos.npz", **{**arrays, "pos": np.asarray(10**6)})
    with pytest.raises(clrl.CheckpointError, match="position 1000000 is outside the buffer"):
        clrl.load_replay_buffer(other, tmp_path / "pos.npz")
    np.savez(
        tmp_path / "object.npz", **{**arrays, "rewards": np.array([_Payload(tmp_path / "ran")], dtype=object)}
    )
    with pytest.raises(clrl.CheckpointError, match="array 'rewards' is object"):
        clrl.load_replay_buffer(other, tmp_path / "object.npz")
    assert not (tmp_path / "ran").exists()
    (tmp_path / "garbage.npz").write_bytes(b"garbage")
    with pytest.raises(clrl.CheckpointError, match="not a readable replay buffer"):
        clrl.load_replay_buffer(other, tmp_path / "garbage.npz")


def test_ppo_model_has_no_replay_buffer_to_save(tmp_path: Path) -> None:
    model, _ = make_model("ppo")
    assert isinstance(model, PPO)
    with pytest.raises(clrl.ConfigError, match="no replay buffer"):
        clrl.save_replay_buffer(model, tmp_path / "b")
