"""Multi-head policies: per-sample routing by task id, untouched heads, saving, the module, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import ALGO_SETUPS, DEVICE, cartpole_stream
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm

import clrl
from clrl.modules.multihead import TaskLinear, TaskRouter, task_router


def multihead_model(algo: str, stream: clrl.TaskStream | None = None, seed: int = 0) -> BaseAlgorithm:
    cls, make_stream, hyper = ALGO_SETUPS[algo]
    stream = stream or make_stream()
    kwargs = dict(hyper)
    policy_kwargs = {**kwargs.pop("policy_kwargs", {}), "n_tasks": len(stream)}
    return cls(
        clrl.multihead_policy(cls), stream.make_vec_env(0, seed=seed), seed=seed, device=DEVICE,
        policy_kwargs=policy_kwargs, **kwargs,
    )  # fmt: skip


def task_obs(stream: clrl.TaskStream, task: int, n: int = 4) -> torch.Tensor:
    env = stream.make_env(task)
    return torch.as_tensor(np.stack([env.reset(seed=s)[0] for s in range(n)]))


def heads(model: BaseAlgorithm) -> dict[str, TaskLinear]:
    return {n: m for n, m in model.policy.named_modules() if isinstance(m, TaskLinear)}


def outputs(model: BaseAlgorithm, obs: torch.Tensor) -> torch.Tensor:
    """The actor's output: action logits or means, or Q-values."""
    policy: Any = model.policy
    with torch.no_grad():
        if hasattr(policy, "q_net"):
            return policy.q_net(obs)
        if hasattr(policy, "actor"):
            return policy.actor(obs, deterministic=True)
        return policy.get_distribution(obs).distribution.logits


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "sac", "td3"])
def test_every_output_layer_has_one_head_per_task_and_other_heads_stay_untouched(algo: str) -> None:
    model = multihead_model(algo)
    found = heads(model)
    assert found and all(len(h.weight) == 2 for h in found.values())
    before = {n: [w.detach().clone() for w in h.weight] for n, h in found.items()}
    assert all(torch.equal(w[0], w[1]) for w in before.values())  # every head starts as SB3 built it
    model.learn(128, callback=clrl.MultiHead())
    trained = [n for n, h in found.items() if not torch.equal(h.weight[0], before[n][0])]
    assert trained  # task 0's heads learned
    for name, head in found.items():
        if "target" not in name:
            torch.testing.assert_close(head.weight[1], before[name][1], rtol=0, atol=0)


@pytest.mark.parametrize("algo", ["ppo", "dqn", "sac"])
def test_a_mixed_batch_routes_each_sample_to_its_own_head(algo: str) -> None:
    model = multihead_model(algo)
    stream = ALGO_SETUPS[algo][1]()
    with torch.no_grad():
        for head in heads(model).values():
            head.weight[1].mul_(-2.0)  # make the heads differ
    first, second = task_obs(stream, 0), task_obs(stream, 1)
    mixed = outputs(model, torch.cat([first[:2], second[2:]]))
    expected = torch.cat([outputs(model, first)[:2], outputs(model, second)[2:]])
    torch.testing.assert_close(mixed, expected)
    relabelled = first.clone()
    relabelled[:, -2:] = second[:, -2:]  # task 0's states with task 1's id
    assert not torch.allclose(outputs(model, relabelled), outputs(model, first))


def test_a_mixed_batch_gives_each_head_exactly_its_rows_outputs_and_gradients() -> None:
    # Replayed batches mix tasks in any order; each head must compute what it would on its own rows alone,
    # bit for bit, and a head whose task is absent must get no gradient (Adam then skips it).
    torch.manual_seed(0)
    router = TaskRouter(4)
    layer = TaskLinear(torch.nn.Linear(5, 3), router)
    with torch.no_grad():
        for i, w in enumerate(layer.weight):
            w.add_(0.1 * i)
    ids = torch.tensor([2, 0, 2, 1, 0, 0, 2, 1])  # task 3 absent
    obs = torch.cat([torch.randn(8, 5), torch.nn.functional.one_hot(ids, 4).float()], dim=1)
    router.observe(layer, (obs,))
    x = obs[:, :5].clone().requires_grad_()
    out = layer(x)
    out.square().sum().backward()
    assert layer.weight[3].grad is None and layer.bias[3].grad is None
    for task in range(3):
        rows = ids == task
        weight = layer.weight[task].detach().clone().requires_grad_()
        bias = layer.bias[task].detach().clone().requires_grad_()
        x_rows = x.detach()[rows].clone().requires_grad_()
        alone = torch.nn.functional.linear(x_rows, weight, bias)
        alone.square().sum().backward()
        torch.testing.assert_close(out[rows], alone, rtol=0, atol=0)
        torch.testing.assert_close(layer.weight[task].grad, weight.grad, rtol=0, atol=0)
        torch.testing.assert_close(layer.bias[task].grad, bias.grad, rtol=0, atol=0)
        torch.testing.assert_close(x.grad[rows], x_rows.grad, rtol=0, atol=0)  # type: ignore[index]


def test_set_task_routes_every_sample_to_one_head(tiny_stream: clrl.TaskStream) -> None:
    model = multihead_model("ppo", tiny_stream)
    module = clrl.MultiHead()
    model.learn(64, callback=module)
    with torch.no_grad():
        heads(model)["action_net"].weight[1].add_(1.0)
    obs = task_obs(tiny_stream, 0)
    own = outputs(model, obs)
    module.set_task(1)
    forced = outputs(model, obs)
    module.set_task(0)
    assert not torch.allclose(own, forced)
    torch.testing.assert_close(outputs(model, obs), own)
    with_id_1 = obs.clone()
    with_id_1[:, -2:] = torch.tensor([0.0, 1.0])
    routed = outputs(model, with_id_1)
    module.set_task(1)
    torch.testing.assert_close(outputs(model, with_id_1), routed)  # task 1's id selects head 1
    module.set_task(0)


def test_saved_model_loads_with_its_heads(tmp_path: Path, tiny_stream: clrl.TaskStream) -> None:
    model = multihead_model("ppo", tiny_stream)
    module = clrl.MultiHead()
    clrl.train(model, tiny_stream, [module, clrl.EWC(strength=10.0, samples=32)], eval_episodes=2)
    clrl.save(model, tmp_path / "model.zip", [module])
    loaded, _ = clrl.load(tmp_path / "model.zip")
    plain = PPO.load(tmp_path / "model.zip", device=DEVICE)  # SB3 alone reads it too
    for task in range(2):
        obs = task_obs(tiny_stream, task)
        torch.testing.assert_close(outputs(loaded, obs), outputs(model, obs), rtol=0, atol=0)
        torch.testing.assert_close(outputs(plain, obs), outputs(model, obs), rtol=0, atol=0)


def test_multihead_with_replay_trains_on_mixed_batches() -> None:
    model = multihead_model("dqn")
    stream = ALGO_SETUPS["dqn"][1]()
    replay = clrl.Replay(budget=200, fraction=0.5)
    result = clrl.train(model, stream, [clrl.MultiHead(), replay], eval_episodes=2)
    assert np.isfinite(result.matrix).all() and replay.replayed > 0


def test_multihead_refuses_what_it_cannot_serve(tiny_stream: clrl.TaskStream) -> None:
    with pytest.raises(clrl.ConfigError, match="multi-head policy"):
        clrl.train(
            ALGO_SETUPS["ppo"][0]("MlpPolicy", tiny_stream.make_vec_env(0)), tiny_stream, [clrl.MultiHead()]
        )
    hidden = cartpole_stream(task_id="hidden")
    with pytest.raises(clrl.ConfigError, match="hides it"):
        clrl.train(multihead_model("ppo", hidden), hidden, [clrl.MultiHead()])
    with pytest.raises(clrl.ConfigError, match="n_tasks"):
        PPO(clrl.MultiHeadActorCriticPolicy, tiny_stream.make_vec_env(0), policy_kwargs={"n_tasks": 0})
    with pytest.raises(clrl.ConfigError, match="no multi-head policy for qrdqn"):
        clrl.multihead_policy("qrdqn")
    model = multihead_model("ppo", tiny_stream)
    assert task_router(model) is not None and task_router(model).n_tasks == 2  # type: ignore[union-attr]
    cls, _, hyper = ALGO_SETUPS["ppo"]
    hyper = {k: v for k, v in hyper.items() if k != "policy_kwargs"}
    one_head = cls(
        clrl.MultiHeadActorCriticPolicy, tiny_stream.make_vec_env(0), policy_kwargs={"n_tasks": 1}, **hyper
    )
    with pytest.raises(clrl.ConfigError, match="1 heads but the stream 2 tasks"):
        clrl.train(one_head, tiny_stream, [clrl.MultiHead()], eval_episodes=1)
    module = clrl.MultiHead()
    one_head.learn(32, callback=module)
    with pytest.raises(clrl.ConfigError, match="no head for task index 1"):
        one_head.learn(32, callback=module)


def test_multihead_plus_ewc_from_the_command_line(tmp_path: Path) -> None:
    from test_cli import TINY

    from clrl.cli import main

    args = ["run", "cartpole-flip", "--method", "multihead+ewc", "--method-arg", "strength=5.0", "samples=16"]
    assert main([*args, "--logdir", str(tmp_path), *TINY]) == 0
    saved = json.loads(
        (tmp_path / "cartpole-flip" / "ppo-multihead+ewc" / "seed0" / "results.json").read_text()
    )
    assert [m["class"] for m in saved["config"]["modules"]] == ["MultiHead", "EWC"]
    assert saved["config"]["modules"][1]["config"]["strength"] == 5.0
    checkpoint = (
        tmp_path
        / "cartpole-flip"
        / "ppo-multihead+ewc"
        / "seed0"
        / "checkpoints"
        / "task04-long-pole-flipped"
    )
    model, _ = clrl.load(checkpoint)
    assert len(heads(model)["action_net"].weight) == 4
    assert main(["run", "cartpole-flip", "--method", "ewc+ewc", "--logdir", str(tmp_path), *TINY]) == 2
    assert main(["run", "cartpole-flip", "--method", "finetune+l2", "--logdir", str(tmp_path), *TINY]) == 2


@pytest.mark.parametrize("algo", ["ppo", "dqn", "sac"])
def test_a_finished_tasks_heads_never_move_again(algo: str) -> None:
    """Separate parameters per head: training task 1 gives task 0's heads no gradient, so Adam's momentum
    from task 0 cannot move them (one stacked tensor would let it)."""
    model = multihead_model(algo)
    stream = ALGO_SETUPS[algo][1]()
    module = clrl.MultiHead()
    model.set_env(stream.make_vec_env(0, seed=0))
    model.learn(128, callback=module)
    first = {n: h.weight[0].detach().clone() for n, h in heads(model).items() if "target" not in n}
    model.set_env(stream.make_vec_env(1, seed=1))
    if getattr(model, "replay_buffer", None) is not None:
        model.replay_buffer.reset()  # as clrl.train does: task 1's batches hold no task-0 samples
    model.learn(128, callback=module, reset_num_timesteps=False)
    for name, weight in first.items():
        torch.testing.assert_close(heads(model)[name].weight[0], weight, rtol=0, atol=0)


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "sac"])
def test_optimisers_step_all_tensors_at_once_with_the_same_results(algo: str) -> None:
    """Per-task parameters multiply the tensors an optimiser steps: the policies step them together
    (``foreach``), which must train exactly as torch's one-by-one default (Adam; RMSprop for A2C)."""
    stream = ALGO_SETUPS[algo][1]()
    optimizers = clrl.modules.multihead.policy_optimizers

    def trained(foreach: bool) -> BaseAlgorithm:
        model = multihead_model(algo, stream)
        for optimizer in optimizers(model.policy):
            assert all(g["foreach"] is True for g in optimizer.param_groups)
            for group in optimizer.param_groups:
                group["foreach"] = foreach
        module = clrl.MultiHead()
        for task in range(2):  # off-policy: task 1's batches mix both tasks' transitions
            model.set_env(stream.make_vec_env(task, seed=task))
            model.learn(128, callback=module, reset_num_timesteps=False)
        return model

    together, one_by_one = trained(True), trained(False)
    for (name, a), b in zip(together.policy.named_parameters(), one_by_one.policy.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    online = [h for n, h in heads(together).items() if "target" not in n]
    assert online and all(not torch.equal(h.weight[0], h.weight[1]) for h in online)  # both heads trained


def test_a_users_choice_of_optimiser_stepping_stays() -> None:
    model = multihead_model("dqn")
    stream = ALGO_SETUPS["dqn"][1]()
    chosen = PPO(
        clrl.MultiHeadActorCriticPolicy, stream.make_vec_env(0), device=DEVICE,
        policy_kwargs={"n_tasks": len(stream), "optimizer_kwargs": {"foreach": False, "eps": 1e-5}},
    )  # fmt: skip
    assert model.policy.optimizer.param_groups[0]["foreach"] is True
    assert model.policy.optimizer.defaults["foreach"] is True  # groups added later step together too
    assert chosen.policy.optimizer.param_groups[0]["foreach"] is False


POLICIES_WITH_ADDED_PARAMETERS = {
    "hat": (clrl.hat_policy, clrl.HAT),
    "masked": (clrl.masked_policy, clrl.Piggyback),
}


def added_parameters_model(kind: str, algo: str, **policy_kwargs: Any) -> BaseAlgorithm:
    cls, make_stream, hyper = ALGO_SETUPS[algo]
    stream = make_stream()
    kwargs = dict(hyper)
    policy_kwargs = {**kwargs.pop("policy_kwargs", {}), "n_tasks": len(stream), **policy_kwargs}
    policy = POLICIES_WITH_ADDED_PARAMETERS[kind][0](cls)
    return cls(policy, stream.make_vec_env(0), seed=0, device=DEVICE, policy_kwargs=policy_kwargs, **kwargs)


def added(model: BaseAlgorithm) -> list[torch.nn.Parameter]:
    """The gates' embeddings and the masks' scores of the networks that train."""
    found = []
    for name, module in model.policy.named_modules():
        if "target" not in name:
            found += [*getattr(module, "embedding", []), getattr(module, "scores", None)]
    return [p for p in found if isinstance(p, torch.nn.Parameter)]


@pytest.mark.parametrize("kind", ["hat", "masked"])
@pytest.mark.parametrize("algo", ["ppo", "dqn", "sac"])
def test_added_parameters_join_the_optimisers_group(kind: str, algo: str) -> None:
    """A gate's embeddings and a mask's scores are stepped in the group SB3 built (a group of their own
    costs a second call of the optimiser's step per update), after SB3's parameters."""
    model = added_parameters_model(kind, algo)
    optimizers = clrl.modules.multihead.policy_optimizers(model.policy)
    new = added(model)
    assert new and all(len(optimizer.param_groups) == 1 for optimizer in optimizers)
    stepped = [p for optimizer in optimizers for p in optimizer.param_groups[0]["params"]]
    assert {id(p) for p in new} <= {id(p) for p in stepped}
    assert len(stepped) == len({id(p) for p in stepped})  # each once
    for optimizer in optimizers:
        params = optimizer.param_groups[0]["params"]
        joined = [i for i, p in enumerate(params) if any(p is q for q in new)]
        assert joined == list(range(len(params) - len(joined), len(params)))


def saved_with_own_group(optimizer: torch.optim.Optimizer, own: int) -> dict[str, Any]:
    """``optimizer``'s state as saved when its last ``own`` parameters had a group of their own."""
    state = optimizer.state_dict()
    (group,) = state["param_groups"]
    split = len(group["params"]) - own
    first, second = {**group, "params": group["params"][:split]}, {**group, "params": group["params"][split:]}
    return {**state, "param_groups": [first, second]}


@pytest.mark.parametrize(("kind", "trac"), [("hat", False), ("masked", False), ("masked", True)])
def test_an_optimiser_state_saved_with_the_added_parameters_own_group_loads(kind: str, trac: bool) -> None:
    """Checkpoints written while the embeddings or scores had a parameter group of their own load into the
    one group, with every parameter's state where it was (TRAC's too); other mismatches are still refused."""
    options = {"optimizer_class": clrl.presets.optimizer_class("trac-adam")} if trac else {}
    model = added_parameters_model(kind, "ppo", **options)
    model.learn(64, callback=POLICIES_WITH_ADDED_PARAMETERS[kind][1]())
    optimizer = model.policy.optimizer
    state = optimizer.state_dict()
    own = len([p for p in added(model) if any(p is q for q in optimizer.param_groups[0]["params"])])
    fresh = added_parameters_model(kind, "ppo", **options)
    fresh.policy.optimizer.load_state_dict(saved_with_own_group(optimizer, own))
    loaded = fresh.policy.optimizer.state_dict()
    assert loaded["param_groups"] == state["param_groups"]
    assert ("trac" in state["state"]) is trac  # TRAC stepped: its references are compared too
    torch.testing.assert_close(loaded["state"], state["state"], rtol=0, atol=0)
    wrong = saved_with_own_group(optimizer, own)
    wrong["param_groups"][1]["params"] = wrong["param_groups"][1]["params"][:-1]
    with pytest.raises(ValueError):
        added_parameters_model(kind, "ppo", **options).policy.optimizer.load_state_dict(wrong)
