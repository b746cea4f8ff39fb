"""Replay, behaviour cloning, CLEAR and A-GEM: reservoirs, budgets, mixing, cloning, V-trace, projection,
state, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import ALGO_SETUPS, DEVICE, cartpole_stream, make_model, pendulum_stream, tiny_ppo
from stable_baselines3 import DQN
from test_modules import learn_two_tasks, params_of

import clrl
from clrl import Task, TaskStream
from clrl.modules.agem import project_gradient
from clrl.modules.clear import vtrace
from clrl.modules.distill import action_log_likelihood, distillation_losses, network_outputs
from clrl.modules.memory import Reservoir, TaskMemory, herding_features, herding_order

OFF_POLICY = ["dqn", "sac", "td3", "qrdqn", "tqc", "crossq"]
ON_POLICY = ["ppo", "a2c", "recurrentppo"]


# ------------------------------------------------------------------------------------------ reservoirs
@pytest.mark.parametrize("chunk", [1, 7, 50])
def test_reservoir_sample_is_uniform_over_the_whole_task(chunk: int) -> None:
    n, capacity, trials = 200, 20, 2000
    rng = np.random.default_rng(0)
    counts = np.zeros(n)
    for _ in range(trials):
        reservoir = Reservoir(capacity)
        for start in range(0, n, chunk):
            reservoir.add({"x": np.arange(start, min(n, start + chunk))}, rng)
        assert len(reservoir) == capacity and reservoir.seen == n
        counts[reservoir.rows()["x"]] += 1
    expected = trials * capacity / n  # 200 per item, binomial sd ~13.4
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 199 + 5 * np.sqrt(2 * 199)  # 199 degrees of freedom: mean 199, sd ~20
    # Not biased toward the last rows (what a FIFO buffer keeps) nor the first.
    assert abs(counts[: n // 2].mean() - counts[n // 2 :].mean()) < 0.05 * expected


def test_reservoir_keeps_all_below_capacity_and_unbounded_grows() -> None:
    rng = np.random.default_rng(0)
    small = Reservoir(10)
    small.add({"x": np.arange(6)}, rng)
    assert sorted(small.rows()["x"]) == list(range(6))
    unbounded = Reservoir(None)
    for start in range(0, 5000, 700):
        unbounded.add({"x": np.arange(start, min(5000, start + 700))}, rng)
    assert list(unbounded.rows()["x"]) == list(range(5000))


def test_task_memory_never_exceeds_its_budget_and_shares_it_evenly() -> None:
    rng = np.random.default_rng(0)
    memory = TaskMemory(120)
    for task in range(12):
        reservoir = memory.start_task(task, rng)
        for _ in range(10):
            reservoir.add({"x": np.full(37, task, dtype=np.int16)}, rng)
            assert len(memory) <= 120
        assert sum(len(next(iter(r.data.values()))) for r in memory) <= 120  # allocated rows too
    assert [len(r) for r in memory] == [120 // 12] * 12
    assert all((r.rows()["x"] == t).all() for t, r in zip(memory.task_ids, memory, strict=True))
    restored = TaskMemory(120)
    restored.load_state_dict(memory.state_dict())
    assert restored.task_ids == memory.task_ids
    for a, b in zip(restored, memory, strict=True):
        assert a.seen == b.seen and np.array_equal(a.rows()["x"], b.rows()["x"])
        assert a.rows()["x"].dtype == np.int16


# ------------------------------------------------------------------------------------------ Replay
def two_tasks_with(algo: str, module: clrl.ContinualModule | None, **overrides: Any) -> Any:
    model, stream = make_model(algo, **overrides)
    clrl.train(model, stream, [module] if module else [], seed=0, eval_episodes=1)
    return model


@pytest.mark.parametrize("algo", OFF_POLICY)
def test_replay_fraction_zero_equals_plain_sb3(algo: str) -> None:
    plain = params_of(two_tasks_with(algo, None))
    replay = params_of(two_tasks_with(algo, clrl.Replay(budget=100, fraction=0.0)))
    for name in plain:
        assert torch.equal(plain[name], replay[name]), name


@pytest.mark.parametrize("algo", OFF_POLICY)
def test_replay_mixes_the_fraction_of_earlier_tasks_into_batches(algo: str) -> None:
    replay = clrl.Replay(budget=64, fraction=0.25)
    model = two_tasks_with(algo, replay)
    assert [len(r) for r in replay.memory] == [32, 32]
    assert replay.replayed > 0  # the second task trained on replayed rows
    replay.memory.start_task(2, np.random.default_rng(0))  # a third task: both earlier tasks replay
    replay.attach()
    try:
        batch = model.replay_buffer.sample(40)
    finally:
        replay.detach()
    # The task id is the one-hot at the end of the observation; the live buffer holds task 1 only.
    task_ids = batch.observations[:, -2:].argmax(1)
    assert 0 < int((task_ids == 0).sum()) <= 10  # 10 replayed rows from tasks 0 and 1, 30 live of task 1
    assert len(batch.observations) == len(batch.actions) == len(batch.rewards) == len(batch.dones) == 40
    assert model.replay_buffer.sample.__func__ is type(model.replay_buffer).sample  # unwrapped again


def test_replay_batches_hold_exactly_the_fraction() -> None:
    stream = cartpole_stream(steps=200)
    model = DQN("MlpPolicy", stream.make_vec_env(0, seed=0), learning_starts=10_000, seed=0, device=DEVICE)
    replay = clrl.Replay(budget=1000, fraction=0.3)
    for i in range(2):
        model.set_env(stream.make_vec_env(i, seed=i))
        model.replay_buffer.reset()
        model.learn(200, callback=replay, reset_num_timesteps=False)
    replay.memory.start_task(2, np.random.default_rng(0))
    replay.attach()
    try:
        for batch_size in (10, 33, 64):
            batch = model.replay_buffer.sample(batch_size)
            from_task0 = int((batch.observations[:, -2] == 1).sum())
            from_task1 = int((batch.observations[:, -1] == 1).sum())
            assert from_task0 + from_task1 == batch_size
            assert from_task0 <= round(0.3 * batch_size)  # replayed rows come from both tasks ...
    finally:
        replay.detach()
    replay.memory.current = None
    replay.attach()  # ... and with task 1 in the live buffer, exactly round(0.3 * n) rows are replayed
    try:
        counted = replay.replayed
        model.replay_buffer.sample(33)
        assert replay.replayed - counted == round(0.3 * 33)
    finally:
        replay.detach()


class CounterEnv(gym.Env):
    """Dict observations: a uint8 counter and a float vector; episodes of 5 steps that terminate."""

    observation_space = gym.spaces.Dict(
        {
            "count": gym.spaces.Box(0, 255, (1,), np.uint8),
            "vec": gym.spaces.Box(-10.0, 10.0, (2,), np.float32),
        }
    )
    action_space = gym.spaces.Discrete(2)

    def __init__(self) -> None:
        self.t = 0

    def _obs(self) -> dict[str, np.ndarray]:
        return {"count": np.array([self.t], np.uint8), "vec": np.array([self.t / 10, -1.0], np.float32)}

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict]:
        self.t += 1
        return self._obs(), float(action), self.t >= 5, False, {}


def test_replay_keeps_dict_observations_dtypes_and_next_observations(tmp_path: Path) -> None:
    model = DQN("MultiInputPolicy", CounterEnv(), learning_starts=20, batch_size=8, seed=0, device=DEVICE)
    replay = clrl.Replay(budget=50, fraction=0.5)
    for _ in range(2):
        model.learn(60, callback=replay, reset_num_timesteps=False)
    rows = replay.memory.tasks[0].rows()
    assert rows["obs.count"].dtype == np.uint8 and rows["next_obs.count"].dtype == np.uint8
    assert rows["obs.vec"].dtype == np.float32
    count, following = rows["obs.count"][:, 0].astype(int), rows["next_obs.count"][:, 0].astype(int)
    assert (following == count + 1).all()  # the terminal observation (5) is stored, not the reset one (0)
    assert ((following == 5) == (rows["done"] == 1)).all()
    replay.memory.current = None
    replay.attach()
    try:
        batch = model.replay_buffer.sample(10)
    finally:
        replay.detach()
    assert set(batch.observations) == {"count", "vec"} and len(batch.observations["count"]) == 10
    # The model is saved with its archive, dtypes kept.
    path = clrl.save(model, tmp_path / "m.zip", [replay])
    _, (loaded,) = clrl.load(path)
    assert isinstance(loaded, clrl.Replay)
    assert loaded.memory.tasks[0].rows()["obs.count"].dtype == np.uint8
    assert np.array_equal(loaded.memory.tasks[0].rows()["next_obs.vec"], rows["next_obs.vec"])


def test_replay_budget_holds_on_a_stream_of_twelve_tasks(tmp_path: Path) -> None:
    stream = TaskStream(
        "long",
        [Task(f"len{i}", "CartPole-v1", attributes={"length": 0.3 + 0.05 * i}) for i in range(12)],
        steps_per_task=60,
        task_id="observed",
    )
    model = DQN(
        "MlpPolicy",
        stream.make_vec_env(0, seed=0),
        learning_starts=20,
        batch_size=8,
        buffer_size=100,
        policy_kwargs={"net_arch": [8]},
        seed=0,
        device=DEVICE,
    )
    replay = clrl.Replay(budget=100)
    result = clrl.train(model, stream, [replay], seed=0, eval_episodes=1, logdir=tmp_path / "run")
    row_bytes = replay.memory.tasks[0].nbytes // len(replay.memory.tasks[0])
    held = [stats["replay"]["rows"] for stats in result.module_stats]
    assert all(rows <= 100 for rows in held) and held[-1] == 12 * (100 // 12)
    assert all(stats["replay"]["bytes"] <= 100 * row_bytes for stats in result.module_stats)
    saved = clrl.TrainResult.from_json(tmp_path / "run" / "results.json")
    assert saved.module_stats[-1]["replay"]["bytes/task11"] == (100 // 12) * row_bytes
    _, (loaded,) = clrl.load(next((tmp_path / "run" / "checkpoints").glob("task12-*.zip")))
    assert [len(r) for r in loaded.memory] == [len(r) for r in replay.memory]


def test_replay_is_reproducible() -> None:
    first = params_of(two_tasks_with("sac", clrl.Replay(budget=100)))
    second = params_of(two_tasks_with("sac", clrl.Replay(budget=100)))
    for name in first:
        assert torch.equal(first[name], second[name]), name


# ------------------------------------------------------------------------------------------ behaviour cloning
@pytest.mark.parametrize("algo", [*ON_POLICY, "sac", "td3", "dqn"])
def test_behaviour_cloning_weights_zero_equal_plain_sb3(algo: str) -> None:
    plain = params_of(learn_two_tasks(algo, None))
    module = clrl.BehaviourCloning(budget=100, policy_coef=0.0, value_coef=0.0)
    cloned = params_of(learn_two_tasks(algo, module))
    for name in plain:
        assert torch.equal(plain[name], cloned[name]), name


@pytest.mark.parametrize("algo", ON_POLICY)
def test_behaviour_cloning_loss_is_zero_while_the_policy_is_unchanged(algo: str) -> None:
    model, stream = make_model(algo)
    module = clrl.BehaviourCloning(budget=100)
    model.learn(stream.steps(0), callback=module)
    rows, old = module.memory.sample_outputs(model, 64, np.random.default_rng(1))
    with torch.no_grad():
        losses = distillation_losses(model, old, network_outputs(model, rows, ("actor", "critic")))
    assert set(losses) == {"actor", "critic"}
    assert float(losses["actor"]) == pytest.approx(0.0, abs=1e-6)
    assert float(losses["critic"]) == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():  # and positive once the policy moves
        for p in model.policy.parameters():
            p.add_(0.1 * torch.randn_like(p))
        moved = distillation_losses(model, old, network_outputs(model, rows, ("actor", "critic")))
    assert float(moved["actor"]) > 1e-4 and float(moved["critic"]) > 1e-4


@pytest.mark.parametrize("algo", [*ON_POLICY, "sac"])
def test_behaviour_cloning_keeps_the_old_policy_on_replayed_states(algo: str) -> None:
    def kl_after_second_task(module: clrl.BehaviourCloning) -> float:
        model, stream = make_model(algo, learning_rate=0.01)  # a policy that moves within 128 steps
        for i in range(2):
            model.set_env(stream.make_vec_env(i, seed=10 + i))
            model.learn(stream.steps(i), callback=module, reset_num_timesteps=False)
        rows = module.memory.tasks[0].rows()
        old = {k[4:]: torch.as_tensor(v) for k, v in rows.items() if k.startswith("out.")}
        with torch.no_grad():
            return float(distillation_losses(model, old, network_outputs(model, rows, ("actor",)))["actor"])

    free = kl_after_second_task(clrl.BehaviourCloning(budget=200, policy_coef=0.0, value_coef=0.0))
    cloned = kl_after_second_task(clrl.BehaviourCloning(budget=200, policy_coef=100.0, batch_size=64))
    assert free > 0
    assert cloned < 0.5 * free


@pytest.mark.parametrize(
    ("networks", "stepped"),
    [("all", {"actor.optimizer", "critic.optimizer"}), ("actor", {"actor.optimizer"})],
)
def test_behaviour_cloning_reaches_the_optimisers_of_its_networks(networks: str, stepped: set[str]) -> None:
    seen: set[str] = set()

    class Counted(clrl.BehaviourCloning):
        def extra_loss(self, group: Any) -> torch.Tensor | None:
            seen.add(group.optimizer_name)
            return super().extra_loss(group)

    learn_two_tasks("sac", Counted(budget=100, networks=networks))  # type: ignore[arg-type]
    assert seen == stepped


# ------------------------------------------------------------------------------------------ CLEAR
def test_vtrace_matches_a_hand_computed_segment() -> None:
    # L = 2: r = (1, 2), γ = 0.9, V = (0.5, 1.0), V(x_2) = 2, π/μ = (0.5, 2) so ρ = c = (0.5, 1).
    # δ_1 = 1·(2 + 0.9·2 - 1) = 2.8, v_1 = 1 + 2.8 = 3.8; δ_0 = 0.5·(1 + 0.9·1 - 0.5) = 0.7,
    # v_0 = 0.5 + 0.7 + 0.9·0.5·(3.8 - 1) = 2.46; A_0 = 0.5·(1 + 0.9·3.8 - 0.5) = 1.96, A_1 = 2.8.
    targets, advantages = vtrace(
        torch.log(torch.tensor([[0.5, 2.0]])),
        torch.tensor([[0.9, 0.9]]),
        torch.tensor([[1.0, 2.0]]),
        torch.tensor([[0.5, 1.0]]),
        torch.tensor([2.0]),
    )
    assert targets.tolist()[0] == pytest.approx([2.46, 3.8])
    assert advantages.tolist()[0] == pytest.approx([1.96, 2.8])
    # The episode ends after step 0 (discount 0 there): nothing of step 1 flows back into v_0.
    targets, _ = vtrace(
        torch.zeros(1, 2),
        torch.tensor([[0.0, 0.9]]),
        torch.tensor([[1.0, 2.0]]),
        torch.tensor([[0.5, 1.0]]),
        torch.tensor([2.0]),
    )
    assert targets.tolist()[0] == pytest.approx([1.0, 3.8])


def test_vtrace_on_policy_is_the_bootstrapped_n_step_return() -> None:
    torch.manual_seed(0)
    rewards, values, bootstrap = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3)
    discounts = torch.full((3, 5), 0.95)
    targets, _ = vtrace(torch.zeros(3, 5), discounts, rewards, values, bootstrap)
    expected = bootstrap.clone()
    for t in range(4, -1, -1):
        expected = rewards[:, t] + 0.95 * expected
        assert torch.allclose(targets[:, t], expected, atol=1e-5)


def test_vtrace_equals_the_papers_recursion_on_random_segments() -> None:
    torch.manual_seed(1)
    n, length = 4, 7
    log_rhos, rewards, values = torch.randn(n, length), torch.randn(n, length), torch.randn(n, length)
    discounts = 0.9 * (torch.rand(n, length) > 0.2).float()  # some episodes end inside the segments
    bootstrap = torch.randn(n)
    targets, advantages = vtrace(log_rhos, discounts, rewards, values, bootstrap, rho_bar=1.0, c_bar=0.8)
    rho, c = log_rhos.exp().clamp(max=1.0), log_rhos.exp().clamp(max=0.8)
    after, v_next = bootstrap.clone(), bootstrap.clone()  # v_{t+1} and V(x_{t+1})
    for t in range(length - 1, -1, -1):  # v_t = V_t + ρ_t δ_t + γ_t c_t (v_{t+1} - V_{t+1})
        delta = rewards[:, t] + discounts[:, t] * v_next - values[:, t]
        expected = values[:, t] + rho[:, t] * delta + discounts[:, t] * c[:, t] * (after - v_next)
        advantage = rho[:, t] * (rewards[:, t] + discounts[:, t] * after - values[:, t])
        assert torch.allclose(targets[:, t], expected, atol=1e-5)
        assert torch.allclose(advantages[:, t], advantage, atol=1e-5)
        after, v_next = expected, values[:, t]


@pytest.mark.parametrize("algo", ON_POLICY)
def test_clear_with_ratio_zero_equals_plain_sb3(algo: str) -> None:
    plain = params_of(learn_two_tasks(algo, None))
    clear = params_of(learn_two_tasks(algo, clrl.CLEAR(budget=100, replay_ratio=0.0)))
    for name in plain:
        assert torch.equal(plain[name], clear[name]), name


@pytest.mark.parametrize("algo", ON_POLICY)
def test_clear_stores_what_the_behaviour_policy_did_when_it_acted(algo: str) -> None:
    model, stream = make_model(algo)
    clear = clrl.CLEAR(budget="all", unroll_length=8)
    rollouts: list[dict[str, np.ndarray]] = []

    class Keep(clrl.ContinualModule):  # SB3's own record of each rollout, taken when it ends
        def _on_rollout_end(self) -> None:
            buffer: Any = self.model.rollout_buffer
            rollouts.append(
                {
                    "log_prob": buffer.log_probs.copy(),
                    "reward": buffer.rewards.copy(),
                    "first": buffer.episode_starts.copy(),
                    "value": buffer.values.copy(),
                }
            )

    model.learn(stream.steps(0), callback=[clear, Keep()])
    steps = {k: np.concatenate([r[k] for r in rollouts]) for k in rollouts[0]}  # (time, envs)
    segments = clear.memory.tasks[0].rows()
    n_envs = model.n_envs
    behaviour = {
        k[3:]: torch.as_tensor(v.reshape(-1, *v.shape[2:]))
        for k, v in segments.items()
        if k.startswith("mu.")
    }
    actions = torch.as_tensor(segments["action"].reshape(-1, segments["action"].shape[-1]))
    log_mu = action_log_likelihood(model, behaviour, actions).view(len(segments["reward"]), 9).numpy()
    # Segment k of env e holds steps 8k .. 8k + 8 of that env (the last one for the bootstrap).
    for row in range(len(segments["reward"])):
        k, e = divmod(row, n_envs)
        span = slice(8 * k, 8 * k + 9)
        assert np.array_equal(segments["reward"][row], steps["reward"][span, e])
        assert np.array_equal(segments["first"][row], steps["first"][span, e])
        assert np.allclose(segments["value"][row], steps["value"][span, e])
        if "logits" in behaviour:  # categorical: exactly SB3's log-probability at acting time
            assert np.allclose(log_mu[row], steps["log_prob"][span, e], atol=1e-5)
    assert len(segments["reward"]) == n_envs * ((len(steps["reward"]) - 1) // 8)


def test_clear_keeps_the_old_policy_on_replayed_trajectories() -> None:
    def kl_after_second_task(clear: clrl.CLEAR) -> float:
        model, stream = make_model("ppo", learning_rate=0.01)
        for i in range(2):
            model.set_env(stream.make_vec_env(i, seed=10 + i))
            model.learn(stream.steps(i), callback=clear, reset_num_timesteps=False)
        rows = {k: v.reshape(-1, *v.shape[2:]) for k, v in clear.memory.tasks[0].rows().items()}
        old = {k[3:]: torch.as_tensor(v) for k, v in rows.items() if k.startswith("mu.")}
        with torch.no_grad():
            return float(distillation_losses(model, old, network_outputs(model, rows, ("actor",)))["actor"])

    # Without cloning, V-trace alone; with a strong cloning weight the policy stays near the behaviour.
    free = kl_after_second_task(
        clrl.CLEAR(budget=400, unroll_length=8, policy_cloning=0.0, value_cloning=0.0)
    )
    cloned = kl_after_second_task(clrl.CLEAR(budget=400, unroll_length=8, policy_cloning=100.0))
    assert free > 0
    assert cloned < 0.5 * free


def test_clear_replays_the_current_task_from_its_second_rollout() -> None:
    model, stream = make_model("ppo")
    clear = clrl.CLEAR(budget=200, unroll_length=8)
    model.learn(stream.steps(0), callback=clear)
    assert clear.log_scalars()["rho"] > 0  # updates of the first task replayed its earlier rollouts
    assert clear.replayed_segments() == max(1, round(model.batch_size / 8))


@pytest.mark.parametrize("behaviour", ["as-now", "far-off"])
def test_clear_does_not_push_actions_the_policy_no_longer_takes(behaviour: str) -> None:
    """Replayed steps whose actions the current policy all but never takes (ρ ≈ 0) give the policy no
    gradient, whatever PPO's advantage normalisation: centring the advantages, or scaling them by their own
    (weighted) spread, pushed those actions' log-probabilities down without bound and collapsed PPO."""
    model, stream = make_model("ppo")
    clear = clrl.CLEAR(budget=200, unroll_length=8, policy_cloning=0.0, value_cloning=0.0)
    model.learn(stream.steps(0), callback=clear)
    segments = {k: torch.as_tensor(v) for k, v in clear.memory.tasks[0].rows().items()}
    with torch.no_grad():
        rows = {k: v.reshape(-1, *v.shape[2:]) for k, v in segments.items()}
        log_pi = action_log_likelihood(model, network_outputs(model, rows, ("actor",)), rows["action"])
    # The behaviour policy as the current one (ρ = 1), or one that was certain of each action (ρ ≈ e^-30).
    offset = 0.0 if behaviour == "as-now" else 30.0
    segments["log_mu"] = log_pi.view(segments["log_mu"].shape) + offset
    clear._prefetched, clear._cursor = None, 0
    clear._draw = (
        lambda count: {  # type: ignore[method-assign]
            k: v[0] for k, v in clear._batches({k: v[:count] for k, v in segments.items()}, count).items()
        }
    )
    model.vf_coef = 0.0  # the policy term alone
    model.policy.optimizer.zero_grad()
    loss = clear.extra_loss(next(iter([None])))  # type: ignore[arg-type]
    assert loss is not None
    loss.backward()
    actor = [p.grad for n, p in model.policy.named_parameters() if "value" not in n and p.grad is not None]
    norm = float(torch.sqrt(sum(g.square().sum() for g in actor)))
    if behaviour == "as-now":
        assert norm > 1e-3
    else:
        assert norm < 1e-6


@pytest.mark.parametrize(("algo", "stream_fn"), [("ppo", None), ("a2c", None), ("ppo", pendulum_stream)])
def test_clear_joined_forward_pass_equals_its_loss_added_to_sb3s(algo: str, stream_fn: Any) -> None:
    """On a plain actor-critic policy CLEAR runs its replayed states through SB3's ``evaluate_actions``
    beside SB3's batch: SB3 gets the same outputs, and its one backward gives the gradient of SB3's loss plus
    CLEAR's loss computed on its own (the path every other policy takes)."""
    if stream_fn is None:
        model, _ = make_model(algo)
    else:  # a Gaussian policy
        cls, _, kwargs = ALGO_SETUPS[algo]
        model = cls("MlpPolicy", stream_fn().make_vec_env(0, seed=0), seed=0, device=DEVICE, **kwargs)
    clear = clrl.CLEAR(budget=400, unroll_length=8, policy_cloning=1.0, value_cloning=1.0)
    model.learn(64 if algo == "ppo" else 32, callback=clear)  # the memory holds segments
    segments = {k: torch.as_tensor(v) for k, v in clear.memory.tasks[0].rows().items()}
    count = clear.replayed_segments()
    fixed = {k: v[0] for k, v in clear._batches({k: v[:count] for k, v in segments.items()}, count).items()}
    clear._draw = lambda count: fixed  # type: ignore[method-assign]
    policy: Any = model.policy
    buffer: Any = model.rollout_buffer
    obs = torch.as_tensor(buffer.observations.reshape(-1, buffer.observations.shape[-1])[:10], device=DEVICE)
    actions = torch.as_tensor(buffer.actions.reshape(-1, buffer.actions.shape[-1])[:10], device=DEVICE)
    if stream_fn is None:  # SB3 passes discrete actions as a flat long tensor
        actions = actions.long().flatten()

    def step(extra_loss: bool = True) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        policy.zero_grad()
        values, log_prob, entropy = policy.evaluate_actions(obs, actions)
        (values.square().mean() - log_prob.mean() - entropy.mean()).backward()  # any loss of all three
        extra = clear.extra_loss(next(iter([None]))) if extra_loss else None  # type: ignore[arg-type]
        if extra is not None:
            extra.backward()
        grads = [p.grad.clone() for p in policy.parameters() if p.grad is not None]
        return grads, {"values": values.detach(), "log_prob": log_prob.detach(), "entropy": entropy.detach()}

    model.start_time = clear._stamp = 1  # hooks live, as inside a learn
    alone, _ = step(extra_loss=False)
    separate, separate_out = step()
    assert any(not torch.allclose(a, b) for a, b in zip(alone, separate, strict=True))  # CLEAR's loss acts
    assert "evaluate_actions" not in vars(policy)
    clear.attach()
    assert "evaluate_actions" in vars(policy)
    assert "evaluate_actions" not in policy.__getstate__()  # copies and pickles are plain SB3
    joined, joined_out = step()
    for key in separate_out:
        assert torch.allclose(joined_out[key], separate_out[key], atol=1e-6), key
    assert len(joined) == len(separate) and len(joined) > 0
    for a, b in zip(joined, separate, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    clear.detach()
    assert "evaluate_actions" not in vars(policy)


def test_clear_on_trpo_adds_its_loss_on_its_own() -> None:
    """TRPO never calls evaluate_actions: CLEAR's loss reaches its critic's optimiser through extra_loss."""
    from sb3_contrib import TRPO

    losses: list[torch.Tensor | None] = []

    class Seen(clrl.CLEAR):
        def extra_loss(self, group: Any) -> torch.Tensor | None:
            losses.append(super().extra_loss(group))
            return losses[-1]

    stream = cartpole_stream()
    model = TRPO(
        "MlpPolicy", stream.make_vec_env(0, seed=0), n_steps=64, batch_size=32, seed=0, device=DEVICE
    )
    with pytest.warns(UserWarning, match="without an optimiser step"):
        model.learn(192, callback=Seen(budget=200, unroll_length=8))
    assert "evaluate_actions" not in vars(model.policy)
    assert any(loss is not None for loss in losses)


def test_clear_needs_an_on_policy_algorithm() -> None:
    model, stream = make_model("dqn")
    with pytest.raises(clrl.ConfigError, match="on-policy"):
        model.learn(stream.steps(0), callback=clrl.CLEAR())


# ------------------------------------------------------------------------------------------ A-GEM
def test_projection_never_increases_the_reference_loss_to_first_order() -> None:
    torch.manual_seed(0)
    for _ in range(100):
        grads = [torch.randn(5, 3), torch.randn(4)]
        reference = [torch.randn(5, 3), torch.randn(4)]
        before = sum(float((g * r).sum()) for g, r in zip(grads, reference, strict=True))
        original = [g.clone() for g in grads]
        projected = project_gradient(grads, reference)
        after = sum(float((g * r).sum()) for g, r in zip(grads, reference, strict=True))
        assert projected == (before < 0)
        if projected:
            assert after == pytest.approx(0.0, abs=1e-5)
            norm = sum(float(g.square().sum()) for g in grads)
            assert norm <= sum(float(g.square().sum()) for g in original) + 1e-6
        else:
            assert all(torch.equal(g, o) for g, o in zip(grads, original, strict=True))


class CheckedAGEM(clrl.AGEM):
    """Records ``g · g_ref`` after each projection with the reference gradient the step used."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dots: list[tuple[float, float]] = []

    def reference_gradient(self, group: clrl.ParamGroup) -> list[torch.Tensor]:
        self._reference = super().reference_gradient(group)
        return self._reference

    def adjust_gradients(self, group: clrl.ParamGroup) -> None:
        super().adjust_gradients(group)
        pairs = [
            (p.grad, r) for p, r in zip(group.params, self._reference, strict=True) if p.grad is not None
        ]
        dot = sum(float((g * r).sum()) for g, r in pairs)
        scale = np.sqrt(
            sum(float(g.square().sum()) for g, _ in pairs) * sum(float(r.square().sum()) for _, r in pairs)
        )
        self.dots.append((dot, scale))


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "sac", "td3", "qrdqn"])
def test_agem_steps_never_conflict_with_the_memory(algo: str) -> None:
    agem = CheckedAGEM(budget=100)
    learn_two_tasks(algo, agem)
    assert agem.dots, "A-GEM never ran in the second task"
    assert agem.projections > 0
    assert all(dot >= -1e-5 * max(scale, 1e-12) for dot, scale in agem.dots)


@pytest.mark.parametrize("algo", ["ppo", "dqn", "sac"])
def test_agem_with_memory_of_the_current_task_only_equals_plain_sb3(algo: str) -> None:
    # During the first task there is nothing to project against: identical to SB3.
    model, stream = make_model(algo)
    model.learn(stream.steps(0), callback=clrl.AGEM(budget=50))
    plain, _ = make_model(algo)  # built after the first has learned: SB3 seeds the global generators
    plain.learn(stream.steps(0))
    for (name, a), b in zip(params_of(model).items(), params_of(plain).values(), strict=True):
        assert torch.equal(a, b), name


# ------------------------------------------------------------------------------------------ shared
@pytest.mark.parametrize("module", [clrl.Replay, clrl.CLEAR, clrl.BehaviourCloning, clrl.AGEM])
def test_a_hidden_task_id_is_refused_unless_allowed(module: type[clrl.ContinualModule]) -> None:
    stream = cartpole_stream(task_id="hidden")
    cls, _, kwargs = ALGO_SETUPS["dqn" if module is clrl.Replay else "ppo"]
    model = cls("MlpPolicy", stream.make_vec_env(0), seed=0, device=DEVICE, **kwargs)
    with pytest.raises(clrl.ConfigError, match="task id"):
        clrl.train(model, stream, [module()], eval_episodes=1)
    result = clrl.train(model, stream, [module(budget=50, require_task_id=False)], eval_episodes=1)
    assert result.module_stats[-1][module.name]["bytes"] > 0


@pytest.mark.parametrize(
    ("module", "kwargs"),
    [
        (clrl.Replay, {"budget": 0}),
        (clrl.Replay, {"budget": -5}),
        (clrl.Replay, {"budget": "some"}),
        (clrl.Replay, {"fraction": 1.5}),
        (clrl.Replay, {"fraction": -0.1}),
        (clrl.BehaviourCloning, {"budget": 0}),
        (clrl.BehaviourCloning, {"batch_size": 0}),
        (clrl.BehaviourCloning, {"policy_coef": -1.0}),
        (clrl.BehaviourCloning, {"networks": "critic"}),
        (clrl.CLEAR, {"budget": 0}),
        (clrl.CLEAR, {"replay_ratio": 1.0}),
        (clrl.CLEAR, {"replay_ratio": -0.1}),
        (clrl.CLEAR, {"replay_ratio": "half"}),
        (clrl.CLEAR, {"unroll_length": 0}),
        (clrl.CLEAR, {"policy_cloning": -1.0}),
        (clrl.AGEM, {"budget": 2.5}),
        (clrl.AGEM, {"networks": "critic"}),
    ],
)
def test_bad_hyperparameters_raise_config_errors(module: type, kwargs: dict[str, Any]) -> None:
    with pytest.raises(clrl.ConfigError):
        module(**kwargs)


def test_replay_needs_an_off_policy_algorithm() -> None:
    stream = cartpole_stream()
    with pytest.raises(clrl.ConfigError, match="off-policy"):
        tiny_ppo(stream).learn(64, callback=clrl.Replay())


@pytest.mark.parametrize("module", [clrl.CLEAR, clrl.BehaviourCloning, clrl.AGEM])
def test_memories_survive_save_and_load(module: type[clrl.ContinualModule], tmp_path: Path) -> None:
    model = learn_two_tasks("ppo", original := module(budget=80))
    path = clrl.save(model, tmp_path / "m.zip", [original])
    _, (loaded,) = clrl.load(path)
    assert type(loaded) is module
    for a, b in zip(loaded.memory, original.memory, strict=True):  # type: ignore[attr-defined]
        assert a.rows().keys() == b.rows().keys()
        for key in a.rows():
            assert np.array_equal(a.rows()[key], b.rows()[key]), key


def test_cli_methods_include_the_replay_family() -> None:
    from clrl.cli import METHODS

    family = {"replay": clrl.Replay, "clear": clrl.CLEAR, "behaviour-cloning": clrl.BehaviourCloning}
    assert {**family, "clonex": clrl.ClonEx, "agem": clrl.AGEM}.items() <= METHODS.items()
    assert set(ALGO_SETUPS) >= set(OFF_POLICY) | set(ON_POLICY)


class StepCheckedAGEM(CheckedAGEM):
    """Records ``Δ · g_ref`` of the parameter change each optimiser step made, and its scale."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step_dots: list[tuple[float, float]] = []

    def adjust_gradients(self, group: clrl.ParamGroup) -> None:
        self._params_before = [p.detach().clone() for p in group.params]
        super().adjust_gradients(group)

    def after_update(self, group: clrl.ParamGroup) -> None:
        super().after_update(group)
        if not hasattr(self, "_params_before"):
            return
        deltas = [p.detach() - b for p, b in zip(group.params, self._params_before, strict=True)]
        dot = sum(float((d * r).sum()) for d, r in zip(deltas, self._reference, strict=True))
        scale = np.sqrt(
            sum(float(d.square().sum()) for d in deltas)
            * sum(float(r.square().sum()) for r in self._reference)
        )
        self.step_dots.append((dot, scale))
        del self._params_before


@pytest.mark.parametrize(
    ("algo", "project", "optimizer"),
    [
        ("dqn", "step", None),
        ("sac", "step", None),
        ("ppo", "step", None),
        ("dqn", "gradient", torch.optim.SGD),
    ],
)
def test_agem_steps_taken_never_move_along_the_memorys_gradient(
    algo: str, project: str, optimizer: Any
) -> None:
    """With SGD the projected gradient is the step; with Adam only project="step" makes it so."""
    agem = StepCheckedAGEM(budget=100, project=project)
    overrides = (
        {} if optimizer is None else {"policy_kwargs": {"net_arch": [16], "optimizer_class": optimizer}}
    )
    learn_two_tasks(algo, agem, **overrides)
    assert len(agem.step_dots) >= 8  # every optimiser step of the second task
    # Orthogonal up to float32 rounding (cosines of 2e-4 at most here; Adam's reach 0.49, below).
    assert all(dot <= 1e-3 * max(scale, 1e-12) for dot, scale in agem.step_dots)


def test_agem_with_adam_can_step_along_the_memorys_gradient() -> None:
    """The reproduction of issue 22's finding: projecting the gradient does not project Adam's step."""
    agem = StepCheckedAGEM(budget=100)
    learn_two_tasks("dqn", agem)
    along = [dot > 0.1 * scale for dot, scale in agem.step_dots]  # cosine above 0.1: clearly along g_ref
    assert any(along), "every Adam step kept off the memory's gradient"
    assert all(dot >= -1e-5 * max(scale, 1e-12) for dot, scale in agem.dots)  # while every gradient did


@pytest.mark.parametrize("space", ["discrete", "multidiscrete", "multibinary", "box"])
def test_action_entropy_equals_sb3s_distributions(space: str) -> None:
    from stable_baselines3 import PPO

    from clrl.modules.distill import action_entropy

    spaces = {
        "discrete": gym.spaces.Discrete(3),
        "multidiscrete": gym.spaces.MultiDiscrete([2, 4]),
        "multibinary": gym.spaces.MultiBinary(3),
        "box": gym.spaces.Box(-1.0, 1.0, (2,)),
    }

    class Env(gym.Env):  # type: ignore[type-arg]
        observation_space = gym.spaces.Box(-1.0, 1.0, (4,))
        action_space = spaces[space]

    model = PPO("MlpPolicy", Env(), n_steps=8, batch_size=8, seed=0, device=DEVICE)
    with torch.no_grad():
        for p in model.policy.parameters():
            p.add_(0.3 * torch.randn_like(p))  # distributions far from uniform
        obs = torch.randn(16, 4, device=model.device)
        rows = {"obs": obs.cpu().numpy(), "action": np.zeros((16, 1), dtype=np.float32)}
        ours = action_entropy(model, network_outputs(model, rows, ("actor",)))
        theirs = model.policy.get_distribution(obs).entropy()
    assert torch.allclose(ours, theirs, atol=1e-5)


# ------------------------------------------------------------------------------------- compression
def test_a_float16_reservoir_halves_float_fields_and_reads_them_back_within_its_precision() -> None:
    rng = np.random.default_rng(0)
    rows = {
        "obs": rng.normal(scale=3.0, size=(50, 4)).astype(np.float32),
        "image": rng.integers(0, 255, size=(50, 2, 2), dtype=np.uint8),
        "action": rng.integers(0, 3, size=(50,)),
    }
    plain, half = Reservoir(None), Reservoir(None, "float16")
    plain.add(rows, np.random.default_rng(1))
    half.add(rows, np.random.default_rng(1))
    back = half.rows()
    assert {k: v.dtype for k, v in back.items()} == {k: v.dtype for k, v in rows.items()}
    np.testing.assert_allclose(back["obs"], rows["obs"], rtol=2**-11, atol=0)
    assert np.array_equal(back["image"], rows["image"]) and np.array_equal(back["action"], rows["action"])
    assert half.data["obs"].dtype == np.float16
    assert half.nbytes == plain.nbytes - rows["obs"].nbytes // 2
    again = Reservoir.from_state_dict(half.state_dict())
    assert again.data["obs"].dtype == np.float16 and again.dtype == "float16"
    assert all(np.array_equal(again.rows()[k], back[k]) for k in back)
    memory = TaskMemory(100, "float16")
    memory.start_task(0, np.random.default_rng(0))
    memory.record(rows, np.random.default_rng(0))
    memory.start_task(1, np.random.default_rng(0))
    sample = memory.sample(8, np.random.default_rng(0), [0])
    assert sample["obs"].dtype == np.float32 and memory.tasks[0].data["obs"].dtype == np.float16
    with pytest.raises(clrl.ConfigError, match="memory_dtype must be one of float32, float16, uint8"):
        clrl.Replay(memory_dtype="int8")  # type: ignore[arg-type]


def test_uint8_codes_read_back_within_one_step_of_a_range_that_widens_as_rows_arrive() -> None:
    rng = np.random.default_rng(0)
    # Later chunks spread further (feature 0 grows, feature 1 shifts down), feature 2 is constant.
    chunks = [
        np.stack([rng.normal(scale=0.1 * 3**i, size=20), rng.uniform(-i, 1 - i, 20), np.full(20, 2.5)], 1)
        for i in range(5)
    ]
    reservoir = Reservoir(None, "uint8")
    for chunk in chunks:
        reservoir.add({"obs": chunk.astype(np.float32), "action": np.arange(20)}, rng)
    given = np.concatenate(chunks).astype(np.float32)
    back = reservoir.rows()
    step = reservoir.quantiser.step("obs")
    assert reservoir.data["obs"].dtype == np.uint8 and back["obs"].dtype == np.float32
    assert np.array_equal(back["action"], np.tile(np.arange(20), 5))
    error = np.abs(back["obs"] - given)
    assert (error <= step + 1e-6).all(), (error.max(0), step)
    assert (
        error[:, 0].max() > step[0] / 2
    )  # rows coded again when the range widened lost more than half a step
    assert (error[-20:] <= step / 2 + 1e-6).all()  # the last chunk widened the range and was coded once
    assert np.array_equal(back["obs"][:, 2], given[:, 2])  # a constant feature is exact
    assert (reservoir.quantiser.lo["obs"] <= given.min(0)).all()
    assert (reservoir.quantiser.hi["obs"] >= given.max(0)).all()
    again = Reservoir.from_state_dict(reservoir.state_dict())
    assert np.array_equal(again.rows()["obs"], back["obs"])
    with pytest.raises(ValueError, match="finite values only; field 'obs'"):
        reservoir.add({"obs": np.full((1, 3), np.inf, np.float32), "action": np.zeros(1, int)}, rng)


def test_a_uint8_memory_shares_its_ranges_across_tasks_so_gathered_rows_read_back_right() -> None:
    rng = np.random.default_rng(1)
    memory = TaskMemory(1_000, "uint8")
    given = []
    for task in range(3):  # each task widens the shared range: the earlier tasks' codes are redone
        obs = rng.normal(loc=4.0 * task, size=(100, 2)).astype(np.float32)
        given.append(obs)
        memory.start_task(task, rng)
        memory.record({"obs": obs, "index": np.arange(100) + 100 * task}, rng)
    step = memory.quantiser.step("obs")
    rows = memory.sample(500, rng)
    expected = np.concatenate(given)[rows["index"]]
    assert (np.abs(rows["obs"] - expected) <= step + 1e-6).all()
    assert memory.nbytes == len(memory) * (2 + 8) + memory.quantiser.nbytes
    loaded = TaskMemory(1_000, "uint8")
    loaded.load_state_dict(memory.state_dict())
    assert loaded.quantiser is loaded.tasks[0].quantiser is loaded.tasks[2].quantiser
    assert np.array_equal(
        loaded.sample(500, np.random.default_rng(2))["obs"],
        memory.sample(500, np.random.default_rng(2))["obs"],
    )
    state = memory.state_dict()
    state["tasks"][0]["quantiser"]["lo"]["obs"] = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(clrl.ConfigError, match="range of field 'obs' is not \\(2,\\) finite values"):
        TaskMemory(1_000, "uint8").load_state_dict(state)


@pytest.mark.parametrize(
    ("module", "algo"), [(clrl.Replay, "dqn"), (clrl.BehaviourCloning, "ppo"), (clrl.CLEAR, "ppo")]
)
def test_compressed_memories_hold_a_half_and_a_quarter_of_the_float_bytes(module: type, algo: str) -> None:
    sizes = {}
    for dtype in ("float32", "float16", "uint8"):
        kept = module(budget=200, memory_dtype=dtype)
        learn_two_tasks(algo, kept)
        sizes[dtype] = kept.memory.nbytes
        assert kept.get_config()["memory_dtype"] == dtype
        assert kept.memory.tasks[0].dtype == dtype
    assert sizes["float16"] < 0.6 * sizes["float32"], sizes
    assert sizes["uint8"] < 0.4 * sizes["float32"], sizes


def test_a_uint8_memory_survives_a_checkpoint_with_its_ranges(tmp_path: Path) -> None:
    kept = clrl.CLEAR(budget=200, memory_dtype="uint8")
    model = learn_two_tasks("ppo", kept)
    (restored,) = clrl.load(clrl.save(model, tmp_path / "ckpt", [kept]), device=DEVICE)[1]
    assert isinstance(restored, clrl.CLEAR) and restored.memory.quantiser.row_axes == 2
    rng = [np.random.default_rng(3), np.random.default_rng(3)]
    ours, theirs = (m.memory.sample(40, r) for m, r in zip((kept, restored), rng, strict=True))
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    assert restored.memory.tasks[1].data["obs"].dtype == np.uint8


def test_herding_picks_the_rows_that_keep_the_running_mean_closest_to_the_mean() -> None:
    # Mean 3.25: 2 is nearest; then (2 + x) / 2 nearest 3.25 wants x = 4.5: 1 (|4.5 - 1| = 3.5 < 5.5); then
    # (3 + x) / 3 wants 6.75: 10 (3.25 away, 0 is 6.75); then 0.
    assert herding_order(np.array([[0.0], [1.0], [2.0], [10.0]]), 4).tolist() == [2, 1, 3, 0]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)) * [1.0, 5.0, 0.1]
    order = herding_order(x, 12)
    assert len(set(order.tolist())) == 12
    # Brute force: each step the row, not yet taken, whose addition leaves the mean closest.
    taken: list[int] = []
    for k in range(1, 13):
        gaps = [
            np.inf if i in taken else np.linalg.norm(x.mean(0) - (x[taken].sum(0) + x[i]) / k)
            for i in range(60)
        ]
        taken.append(int(np.argmin(gaps)))
    assert order.tolist() == taken
    assert herding_order(x, 5).tolist() == taken[:5]  # a prefix is herding's choice of fewer rows
    # Its mean is far closer to the mean than a uniform subset's.
    uniform = [np.linalg.norm(x[rng.choice(60, 12, replace=False)].mean(0) - x.mean(0)) for _ in range(200)]
    assert np.linalg.norm(x[order].mean(0) - x.mean(0)) < 0.1 * np.median(uniform)


def test_a_herding_memory_keeps_herdings_rows_of_each_earlier_task_and_prefixes_later() -> None:
    rng = np.random.default_rng(1)
    memory = TaskMemory(400)
    memory.selection = "herding"
    rows = {"obs": rng.normal(size=(400, 4)).astype(np.float32) * [1, 10, 100, 0], "action": np.arange(400)}
    memory.start_task(0, rng)
    memory.record(rows, rng)
    memory.start_task(1, rng)  # task 0 shrinks to 200 rows: herding's first 200, in that order
    features = herding_features(rows)
    assert np.array_equal(memory.tasks[0].rows()["action"], herding_order(features, 200))
    assert memory.tasks[0].ordered
    memory.record({"obs": rows["obs"][:50], "action": rows["action"][:50]}, rng)
    memory.start_task(2, rng)  # 133 rows each: task 0 keeps a prefix of its order
    assert np.array_equal(memory.tasks[0].rows()["action"], herding_order(features, 133))
    assert len(memory.tasks[1]) == 50 and not memory.tasks[1].ordered  # below its share: kept as it is
    # Saved and loaded, the order is kept.
    again = TaskMemory(400)
    again.load_state_dict(memory.state_dict())
    assert again.tasks[0].ordered


class _ImageEnv(gym.Env[np.ndarray, int]):
    observation_space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    action_space = gym.spaces.Discrete(2)


def test_replay_and_behaviour_cloning_take_herding_as_their_memory_selection(tmp_path: Path) -> None:
    with pytest.raises(clrl.ConfigError, match="memory_selection must be one of uniform, herding"):
        clrl.Replay(memory_selection="greedy")  # type: ignore[arg-type]
    images = DQN("CnnPolicy", _ImageEnv(), buffer_size=100, device=DEVICE)
    with pytest.raises(
        clrl.ConfigError, match=r"these have 12288 \(at most 1024\); use memory_selection='uniform'"
    ):
        clrl.Replay(memory_selection="herding").check_model(images)
    clrl.Replay().check_model(images)  # uniform selection takes any observation
    for module, algo in ((clrl.Replay, "dqn"), (clrl.BehaviourCloning, "ppo"), (clrl.MIR, "dqn")):
        kept = module(budget=100, memory_selection="herding")
        learn_two_tasks(algo, kept)
        assert kept.get_config()["memory_selection"] == "herding"
        first = kept.memory.tasks[0]
        assert len(first) == 50 and first.ordered  # the second task's start shrank the first by herding
