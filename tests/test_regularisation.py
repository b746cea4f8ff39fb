"""EWC, online EWC, MAS and SI on every supported algorithm: exactness, pull, state, logging, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import ALGO_SETUPS, DEVICE, cartpole_stream, make_model
from test_modules import learn_two_tasks, params_of

import clrl
from clrl.algorithms import optimizers, policy_parameters
from clrl.modules import ContinualModule, ParamGroup, QuadraticPenalty, TaskInfo

ALGOS = list(ALGO_SETUPS)
MODULES: dict[str, type[QuadraticPenalty]] = {
    "ewc": clrl.EWC,
    "online_ewc": clrl.OnlineEWC,
    "mas": clrl.MAS,
    "si": clrl.SI,
    "scp": clrl.SCP,
    "rwalk": clrl.RWalk,
}
# Every module on a representative of each family; EWC and SI (the two mechanisms: importance at the end of
# a task, and importance along the path) on every algorithm.
CASES = [(m, a) for m in MODULES for a in ("ppo", "dqn", "sac")] + [
    (m, a) for m in ("ewc", "si") for a in ALGOS if a not in ("ppo", "dqn", "sac")
]


@pytest.mark.parametrize(("module", "algo"), CASES)
def test_strength_zero_equals_plain_sb3(module: str, algo: str) -> None:
    plain = params_of(learn_two_tasks(algo, None))
    regularised = params_of(learn_two_tasks(algo, MODULES[module](strength=0.0, networks="all")))
    for name in plain:
        assert torch.equal(plain[name], regularised[name]), name


def weighted_distance_from_first_anchor(algo: str, module: QuadraticPenalty) -> float:
    """``Σ_i w_i (θ_i - θ*_i)²`` after task two, with the importances and anchor the module had after task one
    (identical whatever the strength: no penalty applies during the first task)."""
    first: dict[str, dict[str, torch.Tensor]] = {}

    class Snapshot(ContinualModule):
        def on_task_end(self, task: TaskInfo) -> None:
            if task.index == 0:  # runs after the module's own on_task_end
                first["w"] = {n: w.clone() for n, w in module.importance.items()}
                first["a"] = {n: a.clone() for n, a in module.anchor.items()}

    model = learn_two_tasks(algo, [module, Snapshot()])
    final = policy_parameters(model)
    return sum(float((first["w"][n] * (final[n].detach() - a).square()).sum()) for n, a in first["a"].items())


# Strengths that dominate the tiny tasks' losses (the importances differ in scale by method).
STRONG = {"ewc": 1e6, "online_ewc": 1e6, "mas": 1e5, "si": 1e6, "scp": 1e6, "rwalk": 1e6}


@pytest.mark.parametrize(("module", "algo"), CASES)
def test_penalty_pulls_parameters_toward_the_anchor(module: str, algo: str) -> None:
    free = weighted_distance_from_first_anchor(algo, MODULES[module](strength=0.0))
    pulled = weighted_distance_from_first_anchor(algo, MODULES[module](strength=STRONG[module]))
    assert free > 0
    assert pulled < 0.25 * free


def group_of(params: dict[str, torch.nn.Parameter]) -> ParamGroup:
    opt = torch.optim.SGD(list(params.values()), lr=0.1)
    return ParamGroup("opt", opt, tuple(params), tuple(params.values()))


def test_ewc_gradient_is_that_of_the_sum_over_tasks() -> None:
    torch.manual_seed(0)
    params = {"w": torch.nn.Parameter(torch.randn(5)), "b": torch.nn.Parameter(torch.randn(2))}
    ewc = clrl.EWC(strength=3.0)
    ewc.fishers = [{n: torch.rand_like(p) for n, p in params.items()} for _ in range(3)]
    ewc.fishers[0]["w"][0] = 0.0  # a parameter only later tasks care about
    ewc.anchors = [{n: torch.randn_like(p) for n, p in params.items()} for _ in range(3)]
    ewc.load_state_dict(ewc.state_dict())
    penalty = sum(
        (f[n] * (p - a[n]).square()).sum()
        for f, a in zip(ewc.fishers, ewc.anchors, strict=True)
        for n, p in params.items()
    )
    want = torch.autograd.grad(0.5 * 3.0 * penalty, list(params.values()))  # type: ignore[arg-type]
    got = ewc.penalty_gradients(group_of(params))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


class FixedImportance:
    """Stands in for ``estimate``: returns the given importances task after task."""

    def __init__(self, values: list[float]) -> None:
        self.values = iter(values)

    def __call__(self, task: TaskInfo) -> dict[str, torch.Tensor]:
        value = next(self.values)
        return {n: torch.full((3,), value) for n in ("a", "b")}


def run_tasks(module: clrl.OnlineEWC | clrl.EWC, n_tasks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"a": torch.nn.Parameter(torch.zeros(3)), "b": torch.nn.Parameter(torch.zeros(3))}
    monkeypatch.setattr(module, "estimate", FixedImportance([float(2**t) for t in range(n_tasks)]))
    monkeypatch.setattr(module, "regularised", lambda: params)
    for t in range(n_tasks):
        with torch.no_grad():
            for p in params.values():
                p.fill_(float(t))
        module.on_task_end(TaskInfo(t, f"t{t}"))


def test_online_ewc_keeps_one_decayed_fisher_and_the_latest_anchor(monkeypatch: pytest.MonkeyPatch) -> None:
    module = clrl.OnlineEWC(gamma=0.5)
    run_tasks(module, 3, monkeypatch)
    # F = 0.5 * (0.5 * 1 + 2) + 4
    assert torch.equal(module.importance["a"], torch.full((3,), 0.25 * 1 + 0.5 * 2 + 4))
    assert torch.equal(module.anchor["a"], torch.full((3,), 2.0))


def test_online_ewc_memory_is_constant_while_ewc_grows(monkeypatch: pytest.MonkeyPatch) -> None:
    online, ewc = clrl.OnlineEWC(), clrl.EWC()
    run_tasks(online, 2, monkeypatch)
    run_tasks(ewc, 2, monkeypatch)
    online_two, ewc_two = online.state_bytes(), ewc.state_bytes()
    run_tasks(online, 12, monkeypatch)
    run_tasks(ewc, 12, monkeypatch)
    assert online.state_bytes() == online_two
    assert ewc.state_bytes() == 7 * ewc_two  # 14 tasks against 2


class StepRecorder(ContinualModule):
    """Computes SI's path integral by hand: ``-(g - SI's penalty) · Δθ`` per step, with no clipping."""

    def __init__(self, si: clrl.SI) -> None:
        super().__init__()
        self.si = si
        self.omega: dict[str, torch.Tensor] = {}
        self.before: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []

    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        return policy_parameters(self.sb3_model)

    def on_task_start(self, task: TaskInfo) -> None:
        self.omega = {n: torch.zeros_like(p) for n, p in self.target_parameters().items()}

    def adjust_gradients(self, group: ParamGroup) -> None:
        self.before = [p.detach().clone() for p in group.params]
        own = [torch.zeros_like(p) for p in group.params]
        if self.si.anchor:
            own = [
                self.si.strength * self.si.importance[n] * (b - self.si.anchor[n])
                for n, b in zip(group.names, self.before, strict=True)
            ]
        self.grads = [p.grad.detach().clone() - o for p, o in zip(group.params, own, strict=True)]  # type: ignore[union-attr]

    def after_update(self, group: ParamGroup) -> None:
        for name, p, b, g in zip(group.names, group.params, self.before, self.grads, strict=True):
            self.omega[name] -= g * (p.detach() - b)


def test_si_path_integral_uses_the_task_gradient_and_the_actual_step() -> None:
    si = clrl.SI(strength=50.0, damping=0.1)
    recorder = StepRecorder(si)
    omegas: list[dict[str, torch.Tensor]] = []

    class Keep(ContinualModule):
        def on_task_end(self, task: TaskInfo) -> None:
            omegas.append({n: o.clone() for n, o in si.omega.items()})

    model, stream = make_model("ppo", max_grad_norm=1e9)  # no clipping: the recorder sees SB3's gradient
    for i in range(2):
        model.set_env(stream.make_vec_env(i, seed=10 + i))
        model.learn(stream.steps(i), callback=[recorder, si, Keep()], reset_num_timesteps=False)
        for name, omega in omegas[-1].items():
            torch.testing.assert_close(omega, recorder.omega[name], rtol=1e-4, atol=1e-7)
    assert all(float(w.min()) >= 0 for w in si.importance.values())
    assert sum(float(w.sum()) for w in si.importance.values()) > 0


@pytest.mark.parametrize("module", list(MODULES))
def test_state_survives_save_and_load(tmp_path: Path, module: str) -> None:
    model, stream = make_model("sac")
    original = MODULES[module](strength=5.0, networks="all")
    for i in range(2):
        model.set_env(stream.make_vec_env(i))
        model.learn(64, callback=original, reset_num_timesteps=False)
    path = clrl.save(model, tmp_path / "ckpt", [original])
    loaded, (restored,) = clrl.load(path, env=stream.make_vec_env(1), device=DEVICE)
    assert isinstance(restored, MODULES[module])
    assert restored.get_config() == original.get_config()
    for key in ("anchor", "importance"):
        want, got = getattr(original, key), getattr(restored, key)
        assert want and want.keys() == got.keys()
        for name in want:
            assert torch.equal(want[name].cpu(), got[name].cpu()), name
    restored.init_callback(loaded)
    assert restored.penalty() == pytest.approx(original.penalty(), rel=1e-6)
    if isinstance(original, clrl.EWC):
        assert isinstance(restored, clrl.EWC) and len(restored.fishers) == len(original.fishers) == 2


def test_checkpoints_of_clrl_train_hold_the_importances(tmp_path: Path) -> None:
    model, stream = make_model("ppo")
    ewc = clrl.EWC(strength=10.0)
    clrl.train(model, stream, [ewc], logdir=tmp_path / "run", eval_episodes=1)
    first = sorted((tmp_path / "run" / "checkpoints").glob("task01-*.zip"))[0]
    _, (restored,) = clrl.load(first, device=DEVICE)
    assert isinstance(restored, clrl.EWC)
    assert len(restored.fishers) == 1
    for name, fisher in restored.fishers[0].items():
        assert torch.equal(fisher, ewc.fishers[0][name].cpu())


def test_scalars_are_logged_under_the_module_name(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, stream = make_model("ppo")
    modules = [clrl.EWC(strength=10.0), clrl.SI(strength=1.0)]
    clrl.train(model, stream, modules, logdir=tmp_path / "run", eval_episodes=1)
    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for name in ("ewc", "si"):
        for key in ("penalty", "distance", "importance_mean", "importance_max"):
            assert f"cl/{name}/{key}" in tags
    assert "cl/ewc/importance_seconds" in tags
    assert max(e.value for e in acc.Scalars("cl/ewc/penalty")) > 0


@pytest.mark.parametrize("module", list(MODULES))
def test_ars_is_refused_or_warned(module: str) -> None:
    stream = cartpole_stream()
    ars = clrl.get_algorithm("ars")("MlpPolicy", stream.make_vec_env(0), n_delta=2, device=DEVICE)
    if module in ("si", "rwalk"):  # path integrals need no importance estimate, only hooks ARS never runs
        with pytest.warns(UserWarning, match="without an optimiser step"):
            ars.learn(64, callback=MODULES[module]())
    else:
        with pytest.raises(clrl.ConfigError, match="importance is not defined"):
            ars.learn(64, callback=MODULES[module]())


def test_trpo_warns_that_its_actor_is_out_of_reach() -> None:
    stream = cartpole_stream()
    trpo = clrl.get_algorithm("trpo")(
        "MlpPolicy", stream.make_vec_env(0), n_steps=32, batch_size=32, device=DEVICE
    )
    with pytest.warns(UserWarning, match="without an optimiser step"):
        trpo.learn(64, callback=clrl.SI())


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (clrl.EWC, {"strength": -1.0}),
        (clrl.EWC, {"samples": 0}),
        (clrl.EWC, {"samples": 2.5}),
        (clrl.EWC, {"temperature": 0.0}),
        (clrl.OnlineEWC, {"gamma": 1.5}),
        (clrl.OnlineEWC, {"gamma": -0.1}),
        (clrl.MAS, {"networks": "critic"}),
        (clrl.SI, {"damping": -1.0}),
        (clrl.SI, {"strength": float("nan")}),
    ],
)
def test_bad_hyperparameters_are_config_errors(cls: type, kwargs: dict) -> None:
    with pytest.raises(clrl.ConfigError):
        cls(**kwargs)


@pytest.mark.parametrize("module", list(MODULES))
def test_config_roundtrip(module: str) -> None:
    first = MODULES[module]()
    assert MODULES[module](**first.get_config()).get_config() == first.get_config()


def test_hooks_are_removed_after_si(tmp_path: Path) -> None:
    model = learn_two_tasks("ppo", clrl.SI())
    for opt in optimizers(model).values():
        assert "zero_grad" not in opt.__dict__
    for p in model.policy.parameters():
        assert not getattr(p, "_post_accumulate_grad_hooks", None)


def test_rwalk_fisher_score_and_importance_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    module = clrl.RWalk(alpha=0.5, score_every=2)
    monkeypatch.setattr(module, "regularised", lambda: {"w": p})
    module.on_task_start(TaskInfo(0, "t0"))
    group = ParamGroup("policy.optimizer", torch.optim.SGD([p], lr=0.1), ("w",), (p,))
    g1, d1 = torch.tensor([1.0, 2.0]), torch.tensor([0.1, -0.2])
    g2, d2 = torch.tensor([3.0, -1.0]), torch.tensor([-0.3, 0.1])
    for g, d in ((g1, d1), (g2, d2)):
        module._grads["w"].copy_(g)
        module._before[group.optimizer_name] = [p.detach().clone()]
        with torch.no_grad():
            p.add_(d)
        module.after_update(group)
    fisher = 0.5 * g2.square() + 0.5 * g1.square()  # the first step sets F = g1²
    torch.testing.assert_close(module.fisher["w"], fisher)
    loss_change = -(g1 * d1) - (g2 * d2)
    score = loss_change / (0.5 * fisher * (d1 + d2).square() + torch.finfo(torch.float32).eps)
    torch.testing.assert_close(module.score["w"], score, rtol=1e-5, atol=1e-6)  # float32 steps
    assert torch.equal(module.omega["w"], torch.zeros(2))  # the interval started again
    module.on_task_end(TaskInfo(0, "t0"))
    want = fisher / fisher.max() + score.clamp_min(0) / score.max()
    torch.testing.assert_close(module.importance["w"], want, rtol=1e-5, atol=1e-6)
    assert torch.equal(module.anchor["w"], p.detach())
    again = clrl.RWalk(alpha=0.5, score_every=2)
    again.load_state_dict(module.state_dict())
    torch.testing.assert_close(again.fisher["w"], fisher)
    assert torch.equal(again.scores["w"], module.scores["w"])
