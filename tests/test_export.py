"""export_policy: a plain SB3 zip that, loaded with the algorithm's own load, acts as the evaluated policy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import ALGO_SETUPS, DEVICE
from stable_baselines3 import PPO

import clrl

EVAL_SEED = 123


def build(policy: str, module: Callable[[], clrl.ContinualModule]) -> tuple[PPO, clrl.TaskStream, list]:
    _, stream_fn, kwargs = ALGO_SETUPS["ppo"]
    stream = stream_fn()
    policy_kwargs = dict(kwargs["policy_kwargs"])
    policy_class: object = "MlpPolicy"
    routed = {
        "multihead": clrl.multihead_policy,
        "progressive": clrl.progressive_policy,
        "masked": clrl.masked_policy,
        "hat": clrl.hat_policy,
        "hypernetwork": clrl.hypernetwork_policy,
    }
    if policy in routed:
        policy_class, policy_kwargs["n_tasks"] = routed[policy](PPO), 2
    model = PPO(
        policy_class,  # type: ignore[arg-type]
        stream.make_vec_env(0, seed=0),
        seed=0,
        device=DEVICE,
        **{**kwargs, "policy_kwargs": policy_kwargs},
    )
    modules = [module()]
    clrl.train(model, stream, modules, seed=0, eval_episodes=1)
    return model, stream, modules


CASES = {
    "multihead": ("multihead", clrl.MultiHead),
    "packnet": ("mlp", lambda: clrl.PackNet(prune=0.5, retrain=0.0)),
    "clser": ("mlp", lambda: clrl.CLSER(stable_rate=0.3)),
    "pnc": ("progressive", lambda: clrl.ProgressAndCompress(compress_steps=8, batch_size=16)),
    "hat": ("hat", clrl.HAT),
    "piggyback": ("masked", clrl.Piggyback),
    "supsup": ("masked", clrl.SupSup),
    "cpg": ("masked", clrl.CPG),
    "hypernetwork": ("hypernetwork", clrl.HyperNetwork),
}


@pytest.mark.parametrize("case", list(CASES))
def test_exported_policy_loaded_by_plain_sb3_scores_the_return_matrix_row(case: str, tmp_path: Path) -> None:
    policy, module = CASES[case]
    model, stream, modules = build(policy, module)
    evaluator = clrl.Evaluator(stream, n_episodes=3, seed=EVAL_SEED)
    evaluated = evaluator(model, modules, current_task=1)
    for task in range(len(stream)):
        path = clrl.export_policy(model, modules, tmp_path / f"task{task}", task=task)
        loaded = PPO.load(path, device=DEVICE)
        assert evaluator(loaded)[task] == evaluated[task], (case, task)
    assert evaluator(model, modules, current_task=1).tolist() == evaluated.tolist()  # model left as it was
    # The export matters: the trained model alone (a plain load of clrl.save) is another policy.
    if CASES[case][0] == "mlp" or case == "pnc":
        # (a routed policy's plain load routes by the observation's id: the same task on its own states)
        exported = PPO.load(tmp_path / "task0.zip", device=DEVICE)
        clrl.save(model, tmp_path / "trained", modules)
        trained = PPO.load(tmp_path / "trained.zip", device=DEVICE)
        assert not np.allclose(probabilities(trained), probabilities(exported))


def probabilities(model: PPO) -> np.ndarray:
    """Action probabilities on fixed random observations."""
    obs = np.random.default_rng(0).normal(size=(256, *model.observation_space.shape)).astype(np.float32)
    tensor, _ = model.policy.obs_to_tensor(obs)
    return model.policy.get_distribution(tensor).distribution.probs.detach().numpy()


def test_a_saved_routed_policy_routes_by_observation_and_an_exported_one_does_not(tmp_path: Path) -> None:
    model, _stream, modules = build("multihead", clrl.MultiHead)
    path = clrl.export_policy(model, modules, tmp_path / "head0", task=0)
    loaded = PPO.load(path, device=DEVICE)
    assert loaded.policy.router.forced == 0
    clrl.save(model, tmp_path / "trained", modules)
    assert PPO.load(tmp_path / "trained.zip", device=DEVICE).policy.router.forced is None
    with pytest.raises(clrl.ConfigError, match="no task 5"):
        clrl.export_policy(model, modules, tmp_path / "bad", task=5)
