"""MIR (Aljundi et al. 2019): the interference score of a virtual step, and the top-k choice it drives, for
replayed transitions (MIR) and cloned states (BehaviourCloning's ``retrieval="mir"``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import cartpole_stream, make_model, tiny_ppo
from test_modules import learn_two_tasks, params_of
from test_replay import two_tasks_with

import clrl
from clrl.modules import behaviour_cloning as bc_module
from clrl.modules import mir as mir_module
from clrl.modules.distill import distillation_losses, network_outputs
from clrl.modules.mir import interference, td_losses, td_targets


def _buffer_model(algo: str) -> Any:
    """A model that has learnt 96 steps of its first task (its buffer holds them)."""
    model, _ = make_model(algo)
    model.learn(96)
    return model


def _dqn_by_hand(model: Any, live: Any, candidates: Any, lr: float) -> torch.Tensor:
    """MIR's score written out for DQN: SB3's Huber loss per row before and after one SGD step (on a copy)
    of the Q-network on the live rows' mean loss, the targets from the target network."""
    q_net = copy.deepcopy(model.q_net)

    def losses(batch: Any) -> torch.Tensor:
        with torch.no_grad():
            next_q = model.q_net_target(batch.next_observations).max(dim=1).values.reshape(-1, 1)
            target = batch.rewards + (1 - batch.dones) * model.gamma * next_q
        q = q_net(batch.observations).gather(1, batch.actions.long())
        return F.smooth_l1_loss(q, target, reduction="none").squeeze(1)

    before = losses(candidates).detach()
    sgd = torch.optim.SGD(q_net.parameters(), lr=lr)
    losses(live).mean().backward()
    sgd.step()
    return losses(candidates).detach() - before


def test_the_score_is_the_loss_increase_of_a_virtual_sgd_step_and_leaves_the_model_as_it_was() -> None:
    model = _buffer_model("dqn")
    live, candidates = model.replay_buffer.sample(8), model.replay_buffer.sample(40)
    before = params_of(model)
    grads = [p.grad.clone() for p in model.q_net.parameters()]  # the last training step's
    scores = interference(model, live, candidates, lr=0.5)
    expected = _dqn_by_hand(model, live, candidates, lr=0.5)
    assert torch.allclose(scores, expected, atol=1e-6)
    assert scores.abs().max() > 1e-3  # a step this large moves the losses: the check can fail
    for name, value in params_of(model).items():
        assert torch.equal(value, before[name]), name  # restored bit for bit
    for p, grad in zip(model.q_net.parameters(), grads, strict=True):
        assert torch.equal(p.grad, grad)  # the score's gradient went elsewhere


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_the_critics_score_is_their_squared_td_errors_increase(algo: str) -> None:
    model = _buffer_model(algo)
    live, candidates = model.replay_buffer.sample(8), model.replay_buffer.sample(24)
    torch.manual_seed(3)
    live_targets, targets = td_targets(model, live), td_targets(model, candidates)
    critic = copy.deepcopy(model.critic)
    scale = 0.5 if algo == "sac" else 1.0

    def losses(batch: Any, y: torch.Tensor) -> torch.Tensor:
        return scale * sum(((q - y) ** 2).squeeze(1) for q in critic(batch.observations, batch.actions))

    before = losses(candidates, targets).detach()
    params = [p for group in model.critic.optimizer.param_groups for p in group["params"]]
    names = {id(p): n for n, p in model.critic.named_parameters()}
    sgd = torch.optim.SGD(
        [p for n, p in critic.named_parameters() if n in {names[id(q)] for q in params}], lr=0.2
    )
    losses(live, live_targets).mean().backward()
    sgd.step()
    expected = losses(candidates, targets).detach() - before
    torch.manual_seed(3)  # the targets draw the same next actions (SAC) or smoothing noise (TD3)
    scores = interference(model, live, candidates, lr=0.2)
    assert torch.allclose(scores, expected, atol=1e-5)
    assert scores.abs().max() > 1e-3
    assert torch.allclose(td_losses(model, candidates, targets), before, atol=1e-6)


def test_mir_replays_the_top_k_candidates_by_score(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a known score (each candidate's first observation feature), the replayed rows of a batch are
    exactly the k best candidates of the draw, after the live rows."""
    mir = clrl.MIR(budget=64, fraction=0.5, candidates=20)
    model = two_tasks_with("dqn", mir)
    drawn: list[Any] = []
    draw = mir._draw

    def recording_draw(n: int, earlier: list[int]) -> Any:
        drawn.append(rows := draw(n, earlier))
        return rows

    monkeypatch.setattr(mir, "_draw", recording_draw)
    monkeypatch.setattr(mir_module, "interference", lambda m, live, cands, lr: cands.observations[:, 0])
    mir.memory.start_task(2, np.random.default_rng(0))  # a third task: both earlier tasks are candidates
    mir.attach()
    try:
        batch = model.replay_buffer.sample(16)
    finally:
        mir.detach()
    (rows,) = drawn
    assert len(rows["obs"]) == 20
    best = np.sort(rows["obs"][:, 0])[::-1][:8]
    replayed = batch.observations[8:, 0].cpu().numpy()
    assert np.allclose(replayed, best)
    assert mir.chosen_score == pytest.approx(float(best.mean()), abs=1e-6)
    assert mir.chosen_score > mir.candidate_score


def test_mir_fraction_zero_equals_plain_sb3() -> None:
    plain = params_of(two_tasks_with("dqn", None))
    mir = params_of(two_tasks_with("dqn", clrl.MIR(budget=100, fraction=0.0)))
    for name in plain:
        assert torch.equal(plain[name], mir[name]), name


@pytest.mark.parametrize("algo", ["dqn", "sac", "td3"])
def test_mir_trains_on_the_most_interfered_rows(algo: str) -> None:
    mir = clrl.MIR(budget=64, fraction=0.25)
    model = two_tasks_with(algo, mir)
    assert mir.replayed > 0  # the second task replayed chosen rows
    assert mir.chosen_score >= mir.candidate_score
    assert all(torch.isfinite(p).all() for p in params_of(model).values())
    stats = mir.log_scalars()
    assert {"chosen_score", "candidate_score", "bytes", "replayed"} <= stats.keys()


def test_mir_is_reproducible() -> None:
    a = params_of(two_tasks_with("sac", clrl.MIR(budget=64, fraction=0.25)))
    b = params_of(two_tasks_with("sac", clrl.MIR(budget=64, fraction=0.25)))
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fraction": 1.0}, "below 1"),
        ({"candidates": 0}, "candidates"),
        ({"virtual_lr": -1.0}, "virtual_lr"),
        ({"budget": 0}, "budget"),
    ],
)
def test_bad_mir_settings_raise_config_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(clrl.ConfigError, match=match):
        clrl.MIR(**kwargs)


@pytest.mark.parametrize("algo", ["qrdqn", "tqc", "crossq"])
def test_mir_refuses_critics_it_cannot_score(algo: str) -> None:
    model, _ = make_model(algo)
    with pytest.raises(clrl.ConfigError, match="MIR scores the TD loss"):
        model.learn(64, callback=clrl.MIR())


def test_mir_refuses_on_policy_algorithms_and_too_few_candidates() -> None:
    with pytest.raises(
        clrl.ConfigError, match=r"MIR needs an off-policy.*BehaviourCloning\(retrieval='mir'\)"
    ):
        tiny_ppo(cartpole_stream()).learn(64, callback=clrl.MIR())
    model, _ = make_model("dqn")  # batch_size 16: 8 replayed rows
    with pytest.raises(clrl.ConfigError, match="at least the 8 rows"):
        model.learn(64, callback=clrl.MIR(candidates=7))


def test_mir_memory_survives_save_and_load(tmp_path: Path) -> None:
    model, stream = make_model("dqn")
    original = clrl.MIR(budget=80, candidates=40)
    clrl.train(model, stream, [original], seed=0, eval_episodes=1)
    path = clrl.save(model, tmp_path / "m.zip", [original])
    _, (loaded,) = clrl.load(path)
    assert isinstance(loaded, clrl.MIR) and loaded.candidates == 40
    for a, b in zip(loaded.memory, original.memory, strict=True):
        for key in a.rows():
            assert np.array_equal(a.rows()[key], b.rows()[key]), key


# ------------------------------------------------------------------------------------------ behaviour cloning
@pytest.mark.parametrize("algo", ["ppo", "sac", "td3", "dqn", "qrdqn"])
def test_per_row_cloning_losses_average_to_the_batch_loss(algo: str) -> None:
    model, stream = make_model(algo)
    module = clrl.BehaviourCloning(budget=64)
    model.learn(stream.steps(0), callback=module)
    with torch.no_grad():
        for p in model.policy.parameters():
            p.add_(0.1 * torch.randn_like(p))
    rows, old = module.memory.sample_outputs(model, 32, np.random.default_rng(1))
    with torch.no_grad():
        new = network_outputs(model, rows, ("actor", "critic"))
        mean, per_row = (
            distillation_losses(model, old, new),
            distillation_losses(model, old, new, per_row=True),
        )
    assert mean.keys() == per_row.keys() and mean
    for part in mean:
        assert per_row[part].shape == (32,)
        assert torch.allclose(per_row[part].mean(), mean[part], rtol=1e-5)
        assert per_row[part].std() > 0  # rows differ: a per-part mean broadcast would fail


def test_cloning_by_interference_clones_the_top_k_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a known score (a fixed permutation), each update clones exactly the k best of its candidates,
    and the scores are taken along the gradient SB3 put into ``.grad``."""
    module = clrl.BehaviourCloning(budget=64, batch_size=8, retrieval="mir", candidates=20)
    generator = torch.Generator().manual_seed(0)
    steps: list[dict[str, Any]] = []
    real_sample = module.memory.sample_outputs
    real_losses = bc_module.distillation_losses

    def sample_outputs(*args: Any, **kwargs: Any) -> Any:
        rows, old = real_sample(*args, **kwargs)
        steps.append({"old": old})
        return rows, old

    def scores(params: Any, grads: Any, lr: float, row_losses: Any) -> torch.Tensor:
        assert any(g is not None and g.abs().sum() > 0 for g in grads)  # SB3's gradient is there
        assert len(row_losses()) == 20
        steps[-1]["scores"] = torch.randperm(20, generator=generator).float()
        return steps[-1]["scores"]

    def losses(model: Any, old: Any, new: Any, per_row: bool = False) -> Any:
        if not per_row:
            steps[-1]["cloned"] = old
        return real_losses(model, old, new, per_row)

    monkeypatch.setattr(module.memory, "sample_outputs", sample_outputs)
    monkeypatch.setattr(bc_module, "virtual_step_scores", scores)
    monkeypatch.setattr(bc_module, "distillation_losses", losses)
    learn_two_tasks("ppo", module)
    assert steps  # the second task's updates cloned
    for step in steps:
        best = torch.argsort(step["scores"], descending=True)[:8]
        for key, value in step["cloned"].items():
            assert torch.equal(value, step["old"][key][best]), key
    assert module.chosen_score == pytest.approx(float(torch.arange(12, 20).float().mean()))
    assert module.chosen_score > module.candidate_score


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_cloning_by_interference_keeps_the_old_policy_on_replayed_states(algo: str) -> None:
    def kl_after_second_task(module: clrl.BehaviourCloning) -> float:
        model = learn_two_tasks(algo, module, learning_rate=0.01)
        rows = module.memory.tasks[0].rows()
        old = {k[4:]: torch.as_tensor(v) for k, v in rows.items() if k.startswith("out.")}
        with torch.no_grad():
            return float(distillation_losses(model, old, network_outputs(model, rows, ("actor",)))["actor"])

    free = kl_after_second_task(clrl.BehaviourCloning(budget=200, policy_coef=0.0, value_coef=0.0))
    chosen = clrl.BehaviourCloning(budget=200, policy_coef=100.0, batch_size=64, retrieval="mir")
    cloned = kl_after_second_task(chosen)
    assert free > 0
    assert cloned < 0.5 * free
    assert chosen.chosen_score >= chosen.candidate_score
    assert {"chosen_score", "candidate_score", "kl"} <= chosen.log_scalars().keys()


def test_cloning_by_interference_is_reproducible() -> None:
    def trained() -> dict[str, torch.Tensor]:
        return params_of(learn_two_tasks("ppo", clrl.BehaviourCloning(budget=64, retrieval="mir")))

    a, b = trained(), trained()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_bad_cloning_retrieval_settings_raise_config_errors() -> None:
    with pytest.raises(clrl.ConfigError, match="retrieval must be 'uniform' or 'mir'"):
        clrl.BehaviourCloning(retrieval="max")  # type: ignore[arg-type]
    with pytest.raises(clrl.ConfigError, match="virtual_lr"):
        clrl.BehaviourCloning(retrieval="mir", virtual_lr=0.0)
    with pytest.raises(clrl.ConfigError, match="at least the 64 states cloned"):
        tiny_ppo(cartpole_stream()).learn(
            64, callback=clrl.BehaviourCloning(batch_size=64, retrieval="mir", candidates=10)
        )
