"""HAT: hard attention to the task, a learned gate per task on every hidden unit, with the gradients of the
units earlier tasks use conditioned away."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BaseModel
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from clrl.algorithms import Networks, check_networks, policy_for
from clrl.errors import ConfigError
from clrl.modules.base import ParamGroup, TaskInfo, add_to_grad, check_non_negative, check_positive
from clrl.modules.masks import (
    _extractors,
    check_parameter_free_extractors,
    chosen_layers,
    online_layers,
    target_pairs,
)
from clrl.modules.multihead import (
    HeldEntries,
    HeldHeads,
    MultiHead,
    MultiHeadActorCriticPolicy,
    MultiHeadDQNPolicy,
    MultiHeadSACPolicy,
    MultiHeadTD3Policy,
    TaskLinear,
    TaskRouter,
    cache_targets,
    join_optimizers,
    task_router,
)


class TaskGate(nn.Module):
    """Multiplies a hidden layer's units by the gate of each sample's task: ``h ⊙ a_t``.

    The live task (the one being trained) gates with ``a_t = σ(s · e_t)``, its embedding ``e_t`` (one
    parameter per task, drawn from N(0, 1) like the paper's ``nn.Embedding``) scaled by :attr:`scale`. A
    task whose gate is stored (it ended) uses the stored binary gate; a task never trained, ``σ(s_max e_t)``
    (neither with gradient: only the live task's embedding trains).

    Args:
        units: Units of the layer it follows.
        router: Where the task of each sample comes from.
        s_max: The scale of a finished or untrained task's gate.
    """

    def __init__(self, units: int, router: TaskRouter, s_max: float = 400.0) -> None:
        super().__init__()
        self.embedding = nn.ParameterList(torch.randn(units) for _ in range(router.n_tasks))
        self.register_buffer("masks", torch.zeros(router.n_tasks, units, dtype=torch.bool))
        self.register_buffer("stored", torch.zeros(router.n_tasks, dtype=torch.bool))
        self.masks: torch.Tensor
        self.stored: torch.Tensor
        self.units = units
        self.s_max = s_max
        self.scale = s_max
        """The live task's ``s`` (HAT anneals it from ``1/s_max`` to ``s_max`` over the task)."""
        self.live_task: int | None = None
        self.open = False
        """Every task's gate is all ones (a layer HAT does not gate): pass the units through unchanged."""
        self.cache = True
        """Keep gates between calls without gradient until the embedding or the buffers change (in target
        networks only while DQN trains: :func:`~clrl.modules.multihead.cache_targets`)."""
        self._router = router  # a plain attribute: not a submodule, not in the state dict
        self._cache: dict[int, tuple[tuple[int, int, int], torch.Tensor]] = {}  # other tasks' gates
        self._live_gate: tuple[tuple[int, int, float], torch.Tensor] | None = None

    def clear_cache(self) -> None:
        """Forget what :attr:`cache` kept."""
        self._cache, self._live_gate = {}, None

    def _apply(self, fn: Any, recurse: bool = True) -> TaskGate:
        self.clear_cache()
        return super()._apply(fn, recurse)

    def gate(self, task: int) -> torch.Tensor:
        """Task ``task``'s gate (the live task's with gradient to its embedding)."""
        embedding = self.embedding._parameters[str(task)]  # ParameterList's own lookup is 7x slower
        assert embedding is not None
        if task == self.live_task:
            if (torch.is_grad_enabled() and embedding.requires_grad) or not self.cache:
                return torch.sigmoid(self.scale * embedding)
            key = (task, embedding._version, self.scale)  # acting: the same gate until a step or a new s
            if self._live_gate is None or self._live_gate[0] != key:
                self._live_gate = (key, torch.sigmoid(self.scale * embedding.detach()))
            return self._live_gate[1]
        # A stored gate, or an untrained task's σ(s_max e) (no gradient: only the live task trains), until
        # the buffers or the embedding change.
        version = (self.masks._version, self.stored._version, embedding._version)
        cached = self._cache.get(task)
        if cached is None or cached[0] != version or not self.cache:
            stored = bool(self.stored[task])
            gate = (
                self.masks[task].to(embedding.dtype)
                if stored
                else torch.sigmoid(self.s_max * embedding.detach())
            )
            cached = self._cache[task] = (version, gate)
        return cached[1]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.open:
            return h  # what h ⊙ 1 computes, without the routing and the multiply
        wrapped = torch._C._functorch.is_functorch_wrapped_tensor(h)
        only = self._router.only(h)
        if only is not None and not wrapped:
            return h * self.gate(only)
        gates = torch.stack([self.gate(t) for t in range(len(self.embedding))])
        ids = self._router.ids(h)
        if wrapped:
            return h * gates[ids]
        return h * gates.index_select(0, ids.flatten()).view(h.shape)  # gates[ids], at half the cost

    def store(self, task: int) -> None:
        """Store the live gate of ``task`` as bits (``σ(s_max e) > 0.5``) and stop training it."""
        with torch.no_grad():
            self.masks[task] = self.embedding[task] > 0  # σ(s_max e) > 0.5 exactly when e > 0
            self.stored[task] = True
        self.live_task = None

    def extra_repr(self) -> str:
        return f"units={self.units}, tasks={len(self.embedding)}"


def insert_gates(policy: nn.Module, router: TaskRouter) -> list[tuple[nn.Linear, TaskGate, TaskGate | None]]:
    """Insert a :class:`TaskGate` after the activation of every hidden ``Linear`` of the policy's MLPs (an
    ``nn.Linear`` followed by something else in an ``nn.Sequential``; output layers are per-task heads);
    return each gated layer with its gate and the gate of its input (``None``: the MLP's input)."""
    found: list[tuple[nn.Linear, TaskGate, TaskGate | None]] = []
    inside = {id(m) for extractor in _extractors(policy) for m in extractor.modules()}
    for net in [m for m in policy.modules() if isinstance(m, nn.Sequential) and id(m) not in inside]:
        previous: TaskGate | None = None
        i = 0
        while i < len(net):
            layer = net[i]
            if (
                type(layer) is nn.Linear
                and i + 1 < len(net)
                and not isinstance(net[i + 1], nn.Linear | TaskLinear)
            ):
                gate = TaskGate(layer.out_features, router).to(layer.weight.device)
                net.insert(i + 2, gate)
                found.append((layer, gate, previous))
                previous = gate
                i += 3
            else:
                i += 1
    return found


def flushing_denormals() -> bool:
    """Whether torch now flushes denormal floats to zero on the CPU (``torch.set_flush_denormal``, which
    has no getter): a denormal float32, a quarter of the smallest normal one, doubled is zero only then."""
    tiny = torch.tensor([torch.finfo(torch.float32).smallest_normal / 4])
    return bool((tiny * 2 == 0).item())


def earlier_gate(gate: TaskGate, task: int) -> torch.Tensor:
    """The cumulative gate ``a^{<t}`` of the tasks stored in ``gate`` other than ``task``, as 0/1 floats."""
    others = gate.stored.clone()
    others[task] = False
    return gate.masks[others].any(0).to(gate.embedding[0].dtype)


class _Gated:
    """Policy mixin: after SB3 (and the multi-head policy) built the networks and optimisers, every hidden
    layer gets a :class:`TaskGate`, and each gate's embeddings join the optimiser of its layer's weight
    (:func:`~clrl.modules.multihead.join_optimizers`)."""

    router: TaskRouter

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)  # type: ignore[misc]
        gated = insert_gates(self, self.router)  # type: ignore[arg-type]
        cache_targets(self, False)  # type: ignore[arg-type]
        self.gated_layers = gated
        """Every hidden layer (targets' included), its gate and the gate of its input."""
        join_optimizers(self, [(layer.weight, list(gate.embedding)) for layer, gate, _ in gated])  # type: ignore[arg-type]


class HATActorCriticPolicy(_Gated, MultiHeadActorCriticPolicy):
    """:class:`clrl.MultiHeadActorCriticPolicy` (PPO, A2C) with a :class:`TaskGate` on every hidden layer.

    Build it with ``PPO(clrl.HATActorCriticPolicy, env, policy_kwargs={"n_tasks": 4})`` (what
    :func:`hat_policy` names), for :class:`clrl.HAT`.
    """


class HATDQNPolicy(_Gated, MultiHeadDQNPolicy):
    """:class:`clrl.MultiHeadDQNPolicy` with a :class:`TaskGate` on every hidden layer (and the target's)."""


class HATSACPolicy(_Gated, MultiHeadSACPolicy):
    """:class:`clrl.MultiHeadSACPolicy` with a :class:`TaskGate` on every hidden layer (actor, critics,
    targets)."""


class HATTD3Policy(_Gated, MultiHeadTD3Policy):
    """:class:`clrl.MultiHeadTD3Policy` with a :class:`TaskGate` on every hidden layer (actor, critics,
    targets)."""


HAT_POLICIES: dict[str, type[BaseModel]] = {
    "PPO": HATActorCriticPolicy,
    "A2C": HATActorCriticPolicy,
    "DQN": HATDQNPolicy,
    "SAC": HATSACPolicy,
    "TD3": HATTD3Policy,
}
"""The HAT policy class of each supported algorithm, by class name."""


def hat_policy(algorithm: type[BaseAlgorithm] | str) -> type[BaseModel]:
    """The HAT policy class for ``algorithm`` (a class or a name such as ``"ppo"``).

    Raises:
        ConfigError: The algorithm has none (supported: PPO, A2C, DQN, SAC, TD3).
    """
    return policy_for(HAT_POLICIES, algorithm, "HAT")


class HAT(MultiHead):
    """HAT: each task learns a gate on every hidden unit; the weights between units an earlier task uses
    do not change, and a regulariser keeps each task's share of the units small.

    The gates live in the algorithm's HAT policy (:func:`clrl.hat_policy`:
    ``PPO(clrl.HATActorCriticPolicy, env, policy_kwargs={"n_tasks": n})``, likewise ``HATDQNPolicy``,
    ``HATSACPolicy``, ``HATTD3Policy``): every hidden layer of every network (actor, critic, Q-networks and
    their targets) is followed by a :class:`TaskGate`, and every output layer is a per-task head, as in
    :class:`clrl.MultiHead` (the paper's multi-head setting). While task ``t`` trains:

    * its gates are ``a_t = σ(s · e_t)``, with ``s`` annealed from ``1/s_max`` to ``s_max`` (paper eq. 3);
    * the gradient of a weight is multiplied by ``1 - min(a_out^{<t}, a_in^{<t})``, the cumulative gates
      of earlier tasks on its output and input units (eq. 2; the input of an MLP is not gated), so a weight
      between two units an earlier task uses gets none; such weights, and the biases of units an earlier
      task uses, are also written back after every optimiser step (Adam's momentum would move them);
    * the embeddings' gradient is compensated for the annealing,
      ``s_max / s · (cosh(s e) + 1) / (cosh(e) + 1)`` (eq. 6, with the official code's clamp of ``s e`` at
      ±50), and the embeddings are clamped to ±``clamp`` after every step;
    * the loss gains ``c · Σ a_t (1 - a^{<t}) / Σ (1 - a^{<t})`` over the gated units of each optimiser's
      networks (eq. 5; its gradient is added in closed form, without a second backward pass).

    When the task ends its gates are stored as bits, ``σ(s_max e_t) > 0.5``, and they and its heads never
    change again: a finished task's units get no gradient, its outputs are what they were when it ended,
    bit for bit (``set_task(j)``, or the task id in the observation, selects task ``j``). The other tasks'
    heads are held while a task trains (:class:`~clrl.modules.multihead.HeldHeads`).

    Paper: Serra, Surís, Miron & Karatzoglou 2018, "Overcoming Catastrophic Forgetting with Hard Attention
    to the Task" (ICML).

    Deviations: the paper anneals ``s`` over the batches of every epoch and acts at test time with
    ``s_max``; RL has no epochs, and an on-policy algorithm's update must see the policy that acted, so
    ``s`` is annealed over each task's environment steps (linearly, eq. 3 with ``b/B`` the task's progress)
    and the policy acts with it; evaluation uses ``s_max``. A finished task's gates are stored as bits
    (``σ(s_max e) > 0.5``) rather than ``σ(s_max e)``, which differ by less than ``σ(-s_max · |e|)``: this
    makes "a finished task never changes" exact. The paper's SGD is the algorithm's optimiser here (Adam
    by default, which mostly cancels the compensation's scale), and its compensation comes after SB3's
    gradient clipping instead of before. The paper has no critic: by default (``networks="actor"``) only what
    chooses actions is gated, and the critics and value function (and their targets) train as plain layers
    on every task, with a head per task; ``networks="all"`` gates them too, so each task keeps its own
    value function.

    Speed: a closed gate ``σ(s e)`` at a large ``s`` makes its units' activations and gradients so small
    that they become denormal floats (below 1.2e-38), on which CPU arithmetic is many times slower (DQN's
    backward pass and Adam's step took 2-3x as long). While a task trains inside ``learn``, HAT therefore
    has torch flush denormals to zero (``torch.set_flush_denormal(True)``, on the CPUs that support it; a
    numerical difference below 1e-38), and puts the previous setting back when ``learn`` returns or the task
    ends or is aborted. The setting is the process's (it also rounds Python's own floats below 1e-308 to
    zero): a ``learn`` that raises leaves it on until the task is aborted or the next ``learn`` ends.

    Args:
        s_max: The gates' largest scale (the paper's 400).
        c: The regulariser's strength (the paper's 0.75).
        clamp: The embeddings' bound after every step (the official code's 6).
        require_task_id: Refuse streams whose task id is hidden in ``clrl.train`` (the gates are routed by
            it).
        verbose: SB3 callback verbosity.
        networks: ``"actor"`` (default) gates the networks that choose actions (DQN's Q-network, the actor
            of SAC and TD3, PPO's and A2C's policy network) and lets critics and value functions train
            freely; ``"all"`` gates every network.
    """

    name = "hat"

    def __init__(
        self,
        s_max: float = 400.0,
        c: float = 0.75,
        clamp: float = 6.0,
        require_task_id: bool = True,
        verbose: int = 0,
        networks: Networks = "actor",
    ) -> None:
        super().__init__(require_task_id, verbose)
        self.networks: Networks = check_networks(networks)
        """``"all"``: every hidden layer is gated; ``"actor"``: only those of what chooses actions (and its
        target network), while the critics' and the value function's gates stay open."""
        self.s_max = check_positive(s_max, "HAT s_max")
        if self.s_max <= 1:
            raise ConfigError(f"HAT s_max must be > 1 (its schedule starts at 1/s_max), got {s_max!r}")
        self.c = check_non_negative(c, "HAT c")
        self.clamp = check_positive(clamp, "HAT clamp")
        self._heads = HeldHeads()
        self._held = HeldEntries()  # the weights and biases between units earlier tasks use
        self._earlier: dict[int, torch.Tensor] = {}  # per gate (by id), the cumulative gate a^{<t} as floats
        self._unused: dict[int, torch.Tensor] = {}  # per gate (by id), 1 - a^{<t}
        self._start = 0
        self._steps: int | None = None
        self._gate_cache: tuple[nn.Module, list[TaskGate]] | None = None
        self._live_by_group: dict[str, list[tuple[TaskGate, nn.Parameter]]] = {}
        self._free: dict[str, float] = {}  # per optimiser, Σ (1 - a^{<t}) over its gates
        self._flushing_before: bool | None = None  # torch's denormal setting before this learn

    # ---------------------------------------------------------------- setting
    def _router(self, model: BaseAlgorithm | None = None) -> TaskRouter:
        model = self.sb3_model if model is None else model
        router = task_router(model)
        if router is None or not getattr(model.policy, "gated_layers", None):
            algo = type(model).__name__
            raise ConfigError(
                f"HAT needs a HAT policy with hidden layers; build the model with "
                f"{algo}(clrl.hat_policy({algo}), env, policy_kwargs={{'n_tasks': len(stream)}})"
            )
        return router

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse a policy without gates, or with a features extractor that has parameters."""
        super().check_model(model)
        check_parameter_free_extractors(self, model)

    def gates(self) -> list[TaskGate]:
        """The gates of the networks that train (not the target networks) that :attr:`networks` gates."""
        chosen = {id(g) for g in self._all_gates()}
        return [g for g in online_layers(self.sb3_model.policy, TaskGate) if id(g) in chosen]

    def _all_gates(self) -> list[TaskGate]:
        """Every gate :attr:`networks` chooses, target networks' included."""
        policy = self.sb3_model.policy
        if self._gate_cache is None or self._gate_cache[0] is not policy:
            self._gate_cache = (policy, chosen_layers(policy, TaskGate, self.networks))
        return self._gate_cache[1]

    def _open_unchosen(self) -> None:
        """With ``networks="actor"``, open the other gates for good: every task's gate stored as all ones,
        none live (their embeddings get no gradient), so their layers train as plain layers."""
        chosen = {id(g) for g in self._all_gates()}
        with torch.no_grad():
            for gate in self.sb3_model.policy.modules():
                if isinstance(gate, TaskGate):
                    gate.open = id(gate) not in chosen
                    if gate.open:
                        gate.live_task = None
                        gate.masks.fill_(True)
                        gate.stored.fill_(True)

    def _live(self, group: ParamGroup) -> list[tuple[TaskGate, nn.Parameter]]:
        """The gates whose live embedding ``group`` steps, with that embedding."""
        found = self._live_by_group.get(group.optimizer_name)
        if found is None:
            stepped = {id(p) for p in group.params}
            index = self.current_task.index if self.current_task is not None else -1
            found = [
                (gate, gate.embedding[index])
                for gate in self._all_gates()
                if index >= 0 and id(gate.embedding[index]) in stepped
            ]
            self._live_by_group[group.optimizer_name] = found
        return found

    def _set_scale(self, scale: float) -> None:
        for gate in self._all_gates():
            gate.scale = scale

    def scale(self) -> float:
        """The live task's ``s`` now: ``1/s_max + (s_max - 1/s_max) · progress`` (eq. 3)."""
        steps = self._steps or 1
        progress = min(max((self.sb3_model.num_timesteps - self._start) / steps, 0.0), 1.0)
        return 1.0 / self.s_max + (self.s_max - 1.0 / self.s_max) * progress

    # ---------------------------------------------------------------- task boundaries
    def on_task_start(self, task: TaskInfo) -> None:
        """Make the task's gates live, condition the weights earlier tasks use, hold the other heads."""
        if task.steps is None:
            raise ConfigError(
                f"HAT anneals its gates over each task's steps, but task {task.name!r} has no budget: pass "
                "steps=N to clrl.training_task"
            )
        super().on_task_start(task)
        if self._learning:  # a boundary inside a running learn: the learn's flushing goes on
            self._flush_denormals(True)
        model = self.sb3_model
        self._start, self._steps = model.num_timesteps, task.steps
        self._live_by_group, self._free = {}, {}
        self._open_unchosen()
        for gate in self._all_gates():
            gate.live_task = task.index
        self._set_scale(self.scale())
        policy: Any = model.policy
        self._earlier = {id(gate): earlier_gate(gate, task.index) for gate in self._all_gates()}
        self._unused = {key: 1 - earlier for key, earlier in self._earlier.items()}
        names = {id(p): n for n, p in policy.named_parameters()}
        self._held.clear()
        for layer, gate, source in policy.gated_layers:
            if id(gate) not in self._earlier:  # not gated by this module (networks="actor")
                continue
            out = self._earlier[id(gate)].bool()
            inputs = (
                self._earlier[id(source)].bool()
                if source is not None
                else torch.ones(layer.in_features, dtype=torch.bool, device=out.device)
            )
            held_weight = out[:, None] & inputs[None, :]
            for param, held in ((layer.weight, held_weight), (layer.bias, out)):
                if param is not None and param.requires_grad and id(param) in names:
                    self._held.hold(names[id(param)], param, held)
        self._heads.hold(policy, task.index)

    def on_task_end(self, task: TaskInfo) -> None:
        """Store the task's gates as bits (the target networks get the online network's)."""
        for gate in self.gates():
            gate.store(task.index)
        chosen = {id(g) for g in self._all_gates()}
        with torch.no_grad():
            for online, target in target_pairs(self.sb3_model.policy, TaskGate):
                if id(online) not in chosen:
                    continue
                target.masks.copy_(online.masks)
                target.stored.copy_(online.stored)
                target.live_task = None
        self._set_scale(self.s_max)
        self._held.clear()
        self._flush_denormals(False)

    def abort_task(self) -> None:
        """Close the task without ending it (see the base class), and stop flushing denormals."""
        self._flush_denormals(False)
        super().abort_task()

    def _on_training_start(self) -> None:
        super()._on_training_start()
        if self.current_task is not None:
            self._flush_denormals(True)

    def _on_training_end(self) -> None:
        self._flush_denormals(False)
        super()._on_training_end()

    def _flush_denormals(self, on: bool) -> None:
        """Have torch flush denormals to zero (while a task trains inside ``learn``), or put back the setting
        it had before."""
        if on and self._flushing_before is None:
            self._flushing_before = flushing_denormals()
            torch.set_flush_denormal(True)
        elif not on and self._flushing_before is not None:
            torch.set_flush_denormal(self._flushing_before)
            self._flushing_before = None

    # ---------------------------------------------------------------- training
    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The live task's embeddings, the conditioned weights and biases, and the other tasks' heads."""
        if self.current_task is None:
            return {}
        index = self.current_task.index
        live = {
            name: param
            for name, param in self.sb3_model.policy.named_parameters()
            if any(param is gate.embedding[index] for gate in self.gates())
        }
        return {**live, **self._held.parameters(), **self._heads.parameters()}

    def after_backward(self, name: str, param: torch.nn.Parameter) -> None:
        """Condition the gradient (eq. 2): zero where an earlier task uses both units, before clipping."""
        if not self._heads.drop_grad(name, param):
            self._held.zero_grad(name, param)

    def regulariser(self, group: ParamGroup) -> torch.Tensor | None:
        """The attention regulariser (eq. 5), ``c · Σ a_t (1 - a^{<t}) / Σ (1 - a^{<t})`` over the gates
        whose embeddings ``group`` steps (with gradient to the embeddings)."""
        live = self._live(group)
        if not live:
            return None
        used = torch.stack([(torch.sigmoid(g.scale * e) * self._unused[id(g)]).sum() for g, e in live])
        free = sum(float(self._unused[id(g)].sum()) for g, _ in live)
        return self.c * used.sum() / max(free, 1.0)

    def add_penalty_gradients(self, group: ParamGroup) -> None:
        """Add the regulariser's gradient (eq. 5) to the live embeddings, in closed form:
        ``c · s · a (1 - a) (1 - a^{<t}) / Σ (1 - a^{<t})`` with ``a = σ(s e)``."""
        if self.c == 0 or self.current_task is None:
            return
        live = self._live(group)
        if not live:
            return
        free = self._free.get(group.optimizer_name)
        if free is None:
            free = self._free[group.optimizer_name] = max(
                sum(float(self._unused[id(g)].sum()) for g, _ in live), 1.0
            )
        with torch.no_grad():
            for gate, embedding in live:
                a = torch.sigmoid(gate.scale * embedding)
                add_to_grad(embedding, (self.c * gate.scale / free) * a * (1 - a) * self._unused[id(gate)])

    def adjust_gradients(self, group: ParamGroup) -> None:
        """Compensate the live embeddings' gradient for the annealing (eq. 6)."""
        if self.current_task is None:
            return
        scale = self.scale()
        with torch.no_grad():
            for _, embedding in self._live(group):
                if embedding.grad is not None:
                    num = torch.cosh((scale * embedding).clamp(-50.0, 50.0)) + 1
                    embedding.grad.mul_(self.s_max / scale * num / (torch.cosh(embedding) + 1))

    def after_update(self, group: ParamGroup) -> None:
        """Write the conditioned entries back (Adam's momentum would move them); clamp the embeddings."""
        self._held.restore(group.names)
        with torch.no_grad():
            for _, embedding in self._live(group):
                embedding.clamp_(-self.clamp, self.clamp)

    def _on_rollout_end(self) -> None:
        self._set_scale(self.scale())  # s follows the environment steps: the next rollout and update use it
        super()._on_rollout_end()

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Evaluate with ``s = s_max`` (the paper's test time)."""
        if getattr(self, "model", None) is None:
            yield
            return
        scale = self._all_gates()[0].scale if self._all_gates() else self.s_max
        self._set_scale(self.s_max)
        try:
            yield
        finally:
            self._set_scale(scale)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The last task trained and :attr:`networks`."""
        return {**super().state_dict(), "networks": self.networks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a checkpoint from before ``networks`` existed gated every network)."""
        super().load_state_dict(state)
        self.networks = check_networks(state.get("networks", "all"))
        self._gate_cache = None

    def log_scalars(self) -> dict[str, float]:
        """``used``: share of the hidden units the current task's gate opens (``σ(s_max e) > 0.5``);
        ``used_earlier``: share some earlier task's does; ``s``: the live scale."""
        gates = self.gates()
        if not gates:
            return {}
        index = max(self.task_index, 0)
        total = sum(g.units for g in gates)
        used = sum(
            int(g.masks[index].sum()) if bool(g.stored[index]) else int((g.embedding[index] > 0).sum())
            for g in gates
        )
        earlier = sum(float(self._earlier.get(id(g), torch.zeros(1)).sum()) for g in gates)
        return {"used": used / total, "used_earlier": earlier / total, "s": gates[0].scale}
