"""Saving and loading a model with its modules' state."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from conftest import ALGO_SETUPS, DEVICE, make_model

import clrl


@pytest.mark.parametrize("algo", list(ALGO_SETUPS))
def test_module_state_survives_save_and_load(tmp_path: Path, algo: str) -> None:
    model, stream = make_model(algo)
    module = clrl.L2(strength=2.5, networks="all")
    model.learn(64, callback=module)
    path = clrl.save(model, tmp_path / "ckpt", [module], {"stream": stream.name})
    assert path.name == "ckpt.zip"

    loaded, modules = clrl.load(path, device=DEVICE)
    assert type(loaded) is type(model)
    (restored,) = modules
    assert isinstance(restored, clrl.L2)
    assert restored.get_config() == module.get_config()
    assert restored.tasks_seen == 1
    assert restored.anchor.keys() == module.anchor.keys()
    for name, tensor in module.anchor.items():
        assert torch.equal(restored.anchor[name], tensor)
    assert clrl.checkpoint.read_payload(path)["metadata"] == {"stream": stream.name}


def test_loaded_module_keeps_regularising(tmp_path: Path) -> None:
    model, stream = make_model("ppo")
    module = clrl.L2(strength=1e4)
    model.learn(64, callback=module)
    path = clrl.save(model, tmp_path / "ckpt", [module])
    loaded, (restored,) = clrl.load(path, env=stream.make_vec_env(1), device=DEVICE)
    anchor = {n: t.clone() for n, t in restored.anchor.items()}  # type: ignore[attr-defined]
    loaded.learn(256, callback=restored, reset_num_timesteps=False)
    params = dict(loaded.policy.named_parameters())
    drift = sum(float((params[n].detach() - a).abs().max()) for n, a in anchor.items())
    assert drift < 1e-2


def test_checkpoint_is_still_a_plain_sb3_model(tmp_path: Path) -> None:
    model, _ = make_model("ppo")
    path = clrl.save(model, tmp_path / "ckpt.zip", [clrl.L2()])
    plain = type(model).load(path, device=DEVICE)
    for a, b in zip(plain.policy.parameters(), model.policy.parameters(), strict=True):
        assert torch.equal(a, b)


def test_missing_corrupt_and_foreign_checkpoints_raise_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(clrl.CheckpointError, match="no checkpoint"):
        clrl.load(tmp_path / "missing.zip")
    (tmp_path / "junk.zip").write_bytes(b"not a zip at all")
    with pytest.raises(clrl.CheckpointError, match="not a readable checkpoint"):
        clrl.load(tmp_path / "junk.zip")
    model, _ = make_model("ppo")
    model.save(tmp_path / "sb3only.zip")
    with pytest.raises(clrl.CheckpointError, match="without clrl state"):
        clrl.load(tmp_path / "sb3only.zip")
    with zipfile.ZipFile(tmp_path / "sb3only.zip", "a") as archive:
        archive.writestr(clrl.checkpoint.ENTRY, b"garbage")
    with pytest.raises(clrl.CheckpointError, match="corrupt"):
        clrl.load(tmp_path / "sb3only.zip")
