"""Piggyback and SupSup: the backbone never changes once frozen, each task's stored mask reproduces its policy
bit for bit, the live mask follows its rule, and SupSup infers a hidden task by its one-shot rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import ALGO_SETUPS, DEVICE, TINY_RUN, cartpole_stream, pendulum_stream
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm

import clrl
from clrl.algorithms import acts
from clrl.cli import main
from clrl.modules.masks import MaskedLinear, NearbyKth, TaskMasks, _StraightThrough, masked
from clrl.modules.multihead import HeldEntries, TaskLinear

ALGOS = ["ppo", "a2c", "dqn", "sac", "td3"]
METHODS: dict[str, type[TaskMasks]] = {"piggyback": clrl.Piggyback, "supsup": clrl.SupSup}


def masked_model(
    algo: str, net_arch: list[int] | None = None, **overrides: Any
) -> tuple[BaseAlgorithm, clrl.TaskStream]:
    cls, stream_fn, kwargs = ALGO_SETUPS[algo]
    stream = stream_fn()
    policy_kwargs = {**kwargs.get("policy_kwargs", {}), "n_tasks": len(stream)}
    if net_arch is not None:
        policy_kwargs["net_arch"] = net_arch
    settings = {**kwargs, **overrides, "policy_kwargs": policy_kwargs}
    model = cls(clrl.masked_policy(cls), stream.make_vec_env(0, seed=0), seed=0, device=DEVICE, **settings)
    return model, stream


def task_observations(model: BaseAlgorithm, task: int, n_tasks: int) -> torch.Tensor:
    """A batch of observations of task ``task`` (its one-hot id at the end)."""
    generator = torch.Generator().manual_seed(task)
    shape = model.observation_space.shape
    assert shape is not None
    obs = torch.randn(16, *shape, generator=generator)
    obs[:, -n_tasks:] = 0.0
    obs[:, shape[0] - n_tasks + task] = 1.0
    return obs.to(DEVICE)


def online_outputs(model: BaseAlgorithm, obs: torch.Tensor, networks: str = "all") -> list[torch.Tensor]:
    """What the trained (not target) networks compute: action distribution and value, Q-values, actor and
    critics (``networks="actor"``: what chooses actions only)."""
    policy: Any = model.policy
    with torch.no_grad():
        if hasattr(policy, "mlp_extractor"):
            logits = policy.get_distribution(obs).distribution.logits
            return [logits] if networks == "actor" else [logits, policy.predict_values(obs)]
        if hasattr(policy, "q_net"):
            return [policy.q_net(obs)]
        deterministic = {"deterministic": True} if hasattr(policy.actor, "latent_pi") else {}
        action = policy.actor(obs, **deterministic)
        return [action] if networks == "actor" else [action, *policy.critic(obs, action)]


def backbone(model: BaseAlgorithm, networks: str = "all") -> dict[str, torch.Tensor]:
    """The masked layers' weights and biases (``networks="actor"``: of what chooses actions only)."""
    return {
        f"{name}.{kind}": getattr(m, kind).detach().clone()
        for name, m in model.policy.named_modules()
        if isinstance(m, MaskedLinear) and (networks == "all" or acts(model.policy, name))
        for kind in ("weight", "bias")
    }


def train_tasks(model: BaseAlgorithm, stream: clrl.TaskStream, module: TaskMasks, record: Any = None) -> None:
    for i, task in enumerate(stream.tasks):
        model.set_env(stream.make_vec_env(i, seed=0))
        with clrl.training_task(model, [module], i, task.name, stream.steps(i)):
            model.learn(stream.steps(i), callback=module, reset_num_timesteps=False)
        if record is not None:
            record(i)


@pytest.mark.parametrize("networks", ["actor", "all"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("algo", ALGOS)
def test_each_tasks_mask_reproduces_its_policy_and_the_backbone_holds(
    algo: str, method: str, networks: str
) -> None:
    model, stream = masked_model(algo)
    module = METHODS[method](networks=networks)
    n = len(stream)
    ended: dict[int, list[torch.Tensor]] = {}
    weights: dict[int, dict[str, torch.Tensor]] = {}
    free: dict[int, dict[str, torch.Tensor]] = {}

    def record(i: int) -> None:
        module.set_task(i)
        ended[i] = online_outputs(model, task_observations(model, i, n), networks)
        weights[i] = backbone(model, networks)
        free[i] = {k: v for k, v in backbone(model).items() if k not in weights[i]}

    train_tasks(model, stream, module, record)
    for name, value in backbone(
        model, networks
    ).items():  # frozen after the first task (SupSup: from its start)
        if "target" not in name:
            assert torch.equal(value, weights[0][name]), name
    if networks == "actor" and algo != "dqn":  # the critics and value function train on every task, unmasked
        assert free[0] and all(
            not torch.equal(free[0][k], free[n - 1][k]) for k in free[0] if "target" not in k
        )
        unmasked = [
            m for m in model.policy.modules() if isinstance(m, MaskedLinear) and m not in module.layers()
        ]
        assert unmasked and all(bool(m.masks.all()) and m.weight.requires_grad for m in unmasked)
    elif networks == "actor":
        assert not free[0]  # DQN's Q-network is what chooses actions: every layer is masked
    for online, target in module.target_pairs():  # the targets' backbone is the same (up to SAC's and
        # TD3's averaging, which rounds: (1 - τ) w + τ w is not always w)
        assert torch.allclose(online.weight, target.weight) and torch.equal(online.masks, target.masks)
    for i in range(n):
        module.set_task(i)
        now = online_outputs(model, task_observations(model, i, n), networks)
        for before, after in zip(ended[i], now, strict=True):
            assert torch.equal(before, after)
    layers = module.online_layers()
    assert all(bool(layer.masks[n - 1].any()) for layer in layers)
    if method == "supsup":  # the fixed weights are the signed Kaiming constant; each mask keeps its share
        for layer in layers:
            assert torch.equal(
                layer.weight.abs(), torch.full_like(layer.weight, (2 / layer.in_features) ** 0.5)
            )
            for i in range(n):
                assert int(layer.masks[i].sum()) == round(0.5 * layer.weight.numel())
        assert any(not torch.equal(layer.masks[0], layer.masks[1]) for layer in layers)


def test_piggyback_trains_the_backbone_on_the_first_task_and_masks_on_the_later_ones() -> None:
    model, stream = masked_model("ppo", learning_rate=0.01)
    module = clrl.Piggyback()
    start = backbone(model)
    seen: dict[int, dict[str, float]] = {}
    train_tasks(model, stream, module, lambda i: seen.setdefault(i, module.log_scalars()))
    first, second = seen[0]["kept"], seen[1]["kept"]
    assert first == 1.0  # the first task's network is the whole backbone
    assert 0.0 < second < 1.0  # the second task's mask released weights (scores fell below 5e-3)
    assert any(not torch.equal(start[k], v) for k, v in backbone(model).items())  # the backbone trained
    layer = module.online_layers()[0]
    assert torch.equal(layer.masks[1], layer.scores.detach() > module.threshold)
    assert not layer.weight.requires_grad and layer.scores.requires_grad


def test_the_live_mask_gets_the_straight_through_gradient() -> None:
    router = clrl.modules.multihead.TaskRouter(2)
    router.forced = 1
    base = torch.nn.Linear(3, 2)
    layer = MaskedLinear(base, router)
    layer.weight.requires_grad_(False)
    with torch.no_grad():
        layer.scores.copy_(torch.tensor([[0.0123, -1.0, 0.7071], [-1.0, 0.0331, 0.1]]))  # (1 + s) - s != 1
    layer.live_task, layer.rule = 1, ("threshold", 0.0)
    x = torch.randn(4, 3)
    out = layer(x)
    mask = layer.scores.detach() > 0
    assert torch.equal(out, torch.nn.functional.linear(x, base.weight * mask, base.bias))  # exactly the
    # stored mask's output: a task computes the same before and after its mask is stored
    out.sum().backward()
    assert layer.scores.grad is not None
    expected = torch.ones(4, 2).T @ x * base.weight  # ∂L/∂(W ⊙ M) ⊙ W
    assert torch.allclose(layer.scores.grad, expected)
    layer.rule = ("keep", 0.5)
    assert int(layer.live_mask().sum()) == 3


def test_the_one_operation_straight_through_computes_what_the_plain_operations_do() -> None:
    """The live mask's forward and both gradients (weight, scores) equal ``W ⊙ (M + (s - s.detach()))``
    bit for bit, as does the masked weight of a stored mask read as bytes."""
    torch.manual_seed(0)
    weight, scores = torch.randn(7, 5, requires_grad=True), torch.randn(7, 5, requires_grad=True)
    hard = scores.detach() > 0.1
    grad = torch.randn(7, 5)
    out = _StraightThrough.apply(weight, scores, hard)
    out.backward(grad)
    w2, s2 = weight.detach().clone().requires_grad_(), scores.detach().clone().requires_grad_()
    reference = w2 * (hard.to(w2.dtype) + (s2 - s2.detach()))
    reference.backward(grad)
    assert torch.equal(out, reference) and torch.equal(out, weight.detach() * hard)
    assert torch.equal(weight.grad, w2.grad) and torch.equal(scores.grad, s2.grad)  # type: ignore[arg-type]
    assert torch.equal(masked(weight.detach(), hard), weight.detach() * hard)
    frozen = weight.detach().clone()  # a frozen backbone: only the scores get a gradient
    scores.grad = None
    _StraightThrough.apply(frozen, scores, hard).backward(grad)
    assert torch.equal(scores.grad, grad * frozen)  # type: ignore[arg-type]


def test_the_kth_smallest_is_torchs_kthvalue(monkeypatch: pytest.MonkeyPatch) -> None:
    """NearbyKth finds kthvalue's element, from a search of the whole tensor and from a band around its
    last answer, with ties, at either end and after a jump that leaves the band."""
    sizes: list[int] = []
    partition = np.partition

    def counted(array: np.ndarray, kth: Any) -> np.ndarray:
        sizes.append(array.size)
        return partition(array, kth)

    monkeypatch.setattr(clrl.modules.masks.np, "partition", counted)
    torch.manual_seed(0)
    for values in (torch.randn(1000), torch.randint(0, 5, (300,)).float(), torch.randn(50).double()):
        for k in (1, 2, len(values) // 2, len(values)):
            kth = NearbyKth(band=16)
            for step in range(6):
                moved = values + 1e-3 * step * torch.randn_like(values) + (5.0 if step == 4 else 0.0) * values
                expected = moved.kthvalue(k).values
                found = kth(moved, k)
                assert found.dtype == expected.dtype and torch.equal(found, expected), (k, step)
    assert min(sizes) < 50 and max(sizes) == 1000  # both searches ran
    half = torch.randn(9).bfloat16()  # no NumPy dtype: torch's kthvalue
    assert torch.equal(NearbyKth()(half, 3), half.kthvalue(3).values)


@pytest.mark.parametrize("contiguous", [True, False])
def test_held_entries_are_zeroed_and_written_back_exactly(contiguous: bool) -> None:
    torch.manual_seed(0)
    data = torch.randn(6, 4) if contiguous else torch.randn(4, 6).T
    param = torch.nn.Parameter(data)
    assert param.is_contiguous() is contiguous
    entries = torch.rand(6, 4) > 0.5
    before = param.detach().clone()
    held = HeldEntries()
    held.hold("w", param, entries)
    param.grad = torch.randn(6, 4)
    grad = param.grad.clone()
    held.zero_grad("w", param)
    assert torch.equal(param.grad, grad.masked_fill(entries, 0.0))
    with torch.no_grad():
        param.add_(torch.randn(6, 4))  # an optimiser step moves every entry
        row, column = entries.nonzero()[0].tolist()
        param[row, column] = float("nan")  # even a diverged entry is written back
    moved = param.detach().clone()
    held.restore(["w"])
    assert torch.equal(param, torch.where(entries, before, moved))
    held.hold("w", param, torch.zeros_like(entries))  # nothing held: released
    assert held.parameters() == {}


def loads_per_task(model: BaseAlgorithm, stream: clrl.TaskStream, tmp_path: Path) -> BaseAlgorithm:
    """SB3's ``save`` and ``load`` of ``model``; the loaded model computes each task's outputs bit for bit."""
    model.save(tmp_path / "model.zip")
    loaded = type(model).load(tmp_path / "model.zip", device=DEVICE)
    for i in range(len(stream)):
        obs = task_observations(model, i, len(stream))
        for a, b in zip(online_outputs(model, obs), online_outputs(loaded, obs), strict=True):
            assert torch.equal(a, b)
    return loaded


def test_masks_and_heads_load_with_sb3(tmp_path: Path) -> None:
    model, stream = masked_model("dqn")
    train_tasks(model, stream, clrl.SupSup())
    loads_per_task(model, stream, tmp_path)


def test_supsup_infers_the_task_whose_superposed_mask_lowers_the_entropy() -> None:
    model, stream = masked_model("ppo")
    module = clrl.SupSup()
    train_tasks(model, stream, module)
    heads = [m for m in model.policy.modules() if isinstance(m, TaskLinear)]
    action = next(h for h in heads if h.out_features == 2)
    obs = task_observations(model, 0, 2)
    with torch.no_grad():
        action.weight[0].zero_()  # task 0's policy: uniform (entropy log 2) wherever it is
        action.bias[0].zero_()
        action.weight[1].mul_(50.0)  # task 1's: nearly deterministic
    assert module.infer(obs) == 1
    with torch.no_grad():
        action.weight[0].copy_(action.weight[1] * 10)
        action.weight[1].zero_()
        action.bias[1].zero_()
    assert module.infer(obs) == 0


def test_supsup_learns_a_stream_with_a_hidden_task_id_and_logs_the_inference() -> None:
    stream = cartpole_stream(task_id="hidden")
    cls, _, kwargs = ALGO_SETUPS["ppo"]
    policy_kwargs = {**kwargs["policy_kwargs"], "n_tasks": 2}
    model = cls(
        clrl.masked_policy(cls),
        stream.make_vec_env(0, seed=0),
        seed=0,
        device=DEVICE,
        **{**kwargs, "policy_kwargs": policy_kwargs},
    )
    with pytest.raises(clrl.ConfigError, match="leave infer_task unset"):
        clrl.train(model, stream, [clrl.SupSup(infer_task=False)], seed=0, eval_episodes=1)
    module = clrl.SupSup()  # infers the task: the stream hides it
    scalars: list[dict[str, float]] = []
    original = module.log_scalars
    module.log_scalars = lambda: scalars.append(original()) or scalars[-1]  # type: ignore[method-assign]
    result = clrl.train(model, stream, [module], seed=0, eval_episodes=1)
    assert np.isfinite(result.matrix).all()
    inferred = [s["inferred"] for s in scalars if "inferred" in s]
    assert inferred and all(0.0 <= v <= 1.0 for v in inferred)
    assert module._router().forced == 1  # training's task again after the evaluation


def test_refusals_come_before_training() -> None:
    stream = cartpole_stream()
    plain = PPO("MlpPolicy", stream.make_vec_env(0), n_steps=32, batch_size=32, device=DEVICE)
    with pytest.raises(clrl.ConfigError, match=r"clrl.masked_policy\(PPO\)"):
        clrl.train(plain, stream, [clrl.Piggyback()], seed=0, eval_episodes=1)
    td3, _ = masked_model("td3")
    with pytest.raises(clrl.ConfigError, match="entropy"):
        clrl.SupSup(infer_task=True).check_model(td3)
    for bad in ({"threshold": 0.02}, {"threshold": -1.0}, {"init": 0.0}):
        with pytest.raises(clrl.ConfigError):
            clrl.Piggyback(**bad)
    for keep in (0.0, 1.5):
        with pytest.raises(clrl.ConfigError, match="keep"):
            clrl.SupSup(keep=keep)


@pytest.mark.parametrize("method", METHODS)
def test_the_command_line_builds_the_masked_policy(tmp_path: Path, method: str) -> None:
    code = main(["run", "cartpole-flip", "--method", method, "--logdir", str(tmp_path), *TINY_RUN])
    assert code == 0
    result = clrl.TrainResult.from_json(next(tmp_path.rglob("results.json")))
    assert result.matrix.shape == (5, 4) and np.isfinite(result.matrix).all()
    assert result.metrics["bwt"] == 0.0  # a finished task's mask and heads never change, nor does its return


@pytest.mark.parametrize("method", METHODS)
def test_the_plasticity_monitor_measures_a_network_with_frozen_parts(method: str) -> None:
    """The monitor hooks the gradients of the parameters the optimiser steps: a frozen backbone (and
    Piggyback's scores while its first task trains) has none; hooking it failed the reference sweep."""
    model, stream = masked_model("ppo")
    monitor = clrl.PlasticityMonitor(interval=32)
    result = clrl.train(model, stream, [METHODS[method]()], seed=0, eval_episodes=1, plasticity=monitor)
    assert np.isfinite(result.matrix).all()
    assert any(key.endswith("/grad_norm") for record in result.plasticity for key in record["values"])


ISOLATING: dict[str, tuple[Any, Any]] = {
    "piggyback": (clrl.masked_policy, clrl.Piggyback),
    "supsup": (clrl.masked_policy, clrl.SupSup),
    "hat": (clrl.hat_policy, clrl.HAT),
    "hypernetwork": (clrl.hypernetwork_policy, clrl.HyperNetwork),
    "cpg": (clrl.masked_policy, clrl.CPG),
}


@pytest.mark.parametrize("method", ISOLATING)
def test_a_checkpoint_loads_with_its_module_and_acts_per_task_as_the_run_ended(
    method: str, tmp_path: Path
) -> None:
    policy, cls = ISOLATING[method]
    algo_cls, stream_fn, kwargs = ALGO_SETUPS["dqn"]
    stream = stream_fn()
    policy_kwargs = {**kwargs["policy_kwargs"], "n_tasks": len(stream)}
    model = algo_cls(
        policy(algo_cls),
        stream.make_vec_env(0, seed=0),
        seed=0,
        device=DEVICE,
        **{**kwargs, "policy_kwargs": policy_kwargs},
    )
    module = cls()
    clrl.train(model, stream, [module], seed=0, eval_episodes=1, logdir=tmp_path / "run")
    checkpoint = sorted((tmp_path / "run" / "checkpoints").glob("*.zip"))[-1]
    loaded, (again,) = clrl.load(checkpoint)
    assert type(again) is cls and again.state_dict().keys() == module.state_dict().keys()
    assert again.task_index == module.task_index == len(stream) - 1
    for i in range(len(stream)):
        module.set_task(i)
        again.set_task(i)
        obs = task_observations(model, i, len(stream))
        for a, b in zip(online_outputs(model, obs), online_outputs(loaded, obs), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("policy", ["masked", "hat", "hypernetwork"])
@pytest.mark.parametrize("algo", ["dqn", "sac"])
def test_a_target_network_follows_sb3s_polyak_update(algo: str, policy: str) -> None:
    # SB3 updates target networks through .data, which no version counter sees: a cache keyed on one kept the
    # first target weights for good (the sweep's Piggyback learned nothing on pendulum-flip with SAC).
    from stable_baselines3.common.utils import polyak_update

    make = {"masked": clrl.masked_policy, "hat": clrl.hat_policy, "hypernetwork": clrl.hypernetwork_policy}
    cls, stream_fn, kwargs = ALGO_SETUPS[algo]
    stream = stream_fn()
    policy_kwargs = {**kwargs.get("policy_kwargs", {}), "n_tasks": len(stream)}
    model = cls(make[policy](cls), stream.make_vec_env(0, seed=0), seed=0, device=DEVICE,
                **{**kwargs, "policy_kwargs": policy_kwargs})  # fmt: skip
    sb3: Any = model.policy
    online, target = (sb3.q_net, sb3.q_net_target) if algo == "dqn" else (sb3.critic, sb3.critic_target)
    obs = task_observations(model, 0, len(stream))
    action = torch.zeros(len(obs), *model.action_space.shape).to(DEVICE)  # type: ignore[misc]

    def run(net: Any) -> torch.Tensor:
        with torch.no_grad():
            return net(obs) if algo == "dqn" else torch.cat(net(obs, action), dim=1)

    run(target)  # fills any cache
    with torch.no_grad():
        for param in online.parameters():
            param.add_(0.1 * torch.randn_like(param))
    polyak_update(online.parameters(), target.parameters(), 1.0)  # as DQN's and SAC's own updates
    torch.testing.assert_close(run(target), run(online), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("algo", "method"), [("dqn", "piggyback"), ("dqn", "supsup"), ("dqn", "hat"), ("dqn", "hypernetwork"),
                         ("sac", "piggyback")],
)  # fmt: skip
def test_target_layers_cache_only_while_dqn_trains_and_change_no_result(
    algo: str, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DQN updates its target network in _on_step, between environment steps: from a rollout's end to the next
    # rollout's start the target's layers keep what they compute (each replayed task's masked weights, gates,
    # generated weights). SAC updates its targets inside train: their caches stay off.
    import clrl.modules.multihead as multihead

    make = {
        "piggyback": (clrl.masked_policy, clrl.Piggyback),
        "supsup": (clrl.masked_policy, clrl.SupSup),
        "hat": (clrl.hat_policy, clrl.HAT),
        "hypernetwork": (clrl.hypernetwork_policy, clrl.HyperNetwork),
    }
    policy, module_cls = make[method]
    cls, stream_fn, kwargs = ALGO_SETUPS[algo]
    stream = stream_fn()
    target_name = "q_net_target" if algo == "dqn" else "critic_target"

    def run() -> tuple[dict[str, torch.Tensor], list[list[bool]]]:
        # the target moves at every rollout: a cache kept across one would show in the weights
        settings = {**kwargs, "policy_kwargs": {**kwargs["policy_kwargs"], "n_tasks": len(stream)}}
        if algo == "dqn":
            settings["target_update_interval"] = 4
        model = cls(policy(cls), stream.make_vec_env(0, seed=0), seed=0, device=DEVICE, **settings)
        target = getattr(model.policy, target_name)
        caching: list[list[bool]] = []
        train = model.train

        def spied(*args: Any, **kw: Any) -> None:
            caching.append([m.cache for m in target.modules() if hasattr(m, "clear_cache")])
            train(*args, **kw)

        model.train = spied  # type: ignore[method-assign]
        module = module_cls()
        for i, task in enumerate(stream.tasks[:2]):
            model.set_env(stream.make_vec_env(i, seed=0))
            with clrl.training_task(model, [module], i, task.name, stream.steps(i)):
                model.learn(stream.steps(i), callback=module, reset_num_timesteps=False)
        assert not any(m.cache for m in target.modules() if hasattr(m, "clear_cache"))  # off after learn
        return {k: v.clone() for k, v in model.policy.state_dict().items()}, caching

    cached, caching = run()
    monkeypatch.setattr(multihead, "targets_fixed_in_train", lambda model: False)
    recomputed, never = run()
    assert caching and all(caching) and not any(any(c) for c in never)  # every train ran with layers to cache
    assert all(all(c) if algo == "dqn" else not any(c) for c in caching)
    assert cached.keys() == recomputed.keys()
    assert all(torch.equal(cached[k], recomputed[k]) for k in cached)


def test_a_learn_that_raises_inside_train_leaves_the_target_caches_off() -> None:
    model, stream = masked_model("dqn")
    module = clrl.Piggyback()
    target_layers = [m for m in model.policy.q_net_target.modules() if isinstance(m, MaskedLinear)]
    seen: list[bool] = []

    def failing(*args: Any, **kwargs: Any) -> None:
        seen.append(all(layer.cache for layer in target_layers))
        raise RuntimeError("stop")

    model.train = failing  # type: ignore[method-assign]
    with (
        pytest.raises(RuntimeError, match="stop"),
        clrl.training_task(model, [module], 0, "a", stream.steps(0)),
    ):
        model.learn(stream.steps(0), callback=module)
    assert seen == [True]  # on while train ran
    assert target_layers and not any(layer.cache for layer in target_layers)  # off once the task is aborted


def test_only_dqns_own_train_leaves_the_target_alone() -> None:
    from stable_baselines3 import DQN, SAC

    from clrl.modules.multihead import targets_fixed_in_train

    class Kept(DQN):
        pass

    class Overridden(DQN):
        def train(self, gradient_steps: int, batch_size: int = 100) -> None:
            super().train(gradient_steps, batch_size)

    env = cartpole_stream().make_vec_env(0, seed=0)
    fixed = [targets_fixed_in_train(cls("MlpPolicy", env, device=DEVICE)) for cls in (DQN, Kept, Overridden)]
    assert fixed == [True, True, False]
    sac = SAC("MlpPolicy", pendulum_stream().make_vec_env(0, seed=0), device=DEVICE)
    assert not targets_fixed_in_train(sac)
