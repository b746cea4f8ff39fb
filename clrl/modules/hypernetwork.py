"""Task-conditioned hypernetworks: each MLP's weights generated from a learned task embedding, earlier tasks'
generated weights kept by an output regulariser."""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BaseModel
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from clrl.algorithms import policy_for
from clrl.errors import ConfigError
from clrl.modules.base import ParamGroup, TaskInfo, check_non_negative
from clrl.modules.masks import (
    _extractors,
    check_parameter_free_extractors,
    online_layers,
    target_pairs,
)
from clrl.modules.multihead import (
    HeldHeads,
    MultiHead,
    MultiHeadActorCriticPolicy,
    MultiHeadDQNPolicy,
    MultiHeadSACPolicy,
    MultiHeadTD3Policy,
    TaskRouter,
    cache_targets,
    task_router,
)

Generated = list[tuple[torch.Tensor, torch.Tensor]]
"""One MLP's generated (weight, bias) per linear layer."""


class HyperMLP(nn.Module):
    """An MLP whose linear layers' weights and biases are generated from its task's embedding.

    ``θ_t = W_o · relu(W_h · e_t + b_h) + b_o``, split into the layers' weights and biases; the other
    modules of the MLP (activations, per-task heads) run as they are. A forward pass generates once per task
    in its batch (not per sample); a batch that mixes tasks runs each sample with its task's weights. The
    output bias ``b_o`` starts as the flattened weights SB3 initialised and ``W_o`` at zero, so every task
    starts from SB3's initial network.

    Args:
        base: The MLP it replaces.
        router: Where the task of each sample comes from.
        embedding_dim: Size of the task embeddings (drawn from N(0, 1)).
        hidden: Width of the hypernetwork's hidden layer.
    """

    def __init__(self, base: nn.Sequential, router: TaskRouter, embedding_dim: int, hidden: int) -> None:
        super().__init__()
        self._router = router  # a plain attribute: not a submodule, not in the state dict
        self.cache = True
        """Keep generated weights between calls without gradient until a parameter changes (in target
        networks only while DQN trains: :func:`~clrl.modules.multihead.cache_targets`)."""
        self.shapes: list[tuple[int, int]] = []
        self.slots: list[int] = []  # per module of base: the index of its generated layer, or -1
        kept: list[nn.Module] = []
        initial: list[torch.Tensor] = []
        for module in base:
            if type(module) is nn.Linear:
                self.slots.append(len(self.shapes))
                self.shapes.append((module.out_features, module.in_features))
                bias = module.bias if module.bias is not None else torch.zeros(module.out_features)
                initial += [module.weight.detach().flatten(), bias.detach().flatten()]
            else:
                self.slots.append(-1)
                kept.append(module)
        self.others = nn.ModuleList(kept)
        self.embeddings = nn.ParameterList(torch.randn(embedding_dim) for _ in range(router.n_tasks))
        self.hidden = nn.Linear(embedding_dim, hidden)
        total = sum(out * (inp + 1) for out, inp in self.shapes)
        self.out = nn.Linear(hidden, total)
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.copy_(torch.cat(initial))
        self._cache: dict[int, tuple[tuple[int, ...], Generated]] = {}  # generated without gradient

    def generate(self, task: int, detach_embedding: bool = False) -> Generated:
        """Task ``task``'s weights and biases (``detach_embedding``: no gradient to its embedding)."""
        param = self.embeddings._parameters[str(task)]  # ParameterList's own lookup is 7x slower
        assert param is not None
        if not torch.is_grad_enabled() and self.cache:  # acting: the same weights until a parameter changes
            key = (task, param._version, *(p._version for p in self._hyper_parameters()))
            cached = self._cache.get(task)
            if cached is None or cached[0] != key:
                cached = self._cache[task] = (key, self._split(self.out(torch.relu(self.hidden(param)))))
            return cached[1]
        embedding = param.detach() if detach_embedding else param
        return self._split(self.out(torch.relu(self.hidden(embedding))))

    def _hyper_parameters(self) -> tuple[torch.Tensor, ...]:
        return (self.hidden.weight, self.hidden.bias, self.out.weight, self.out.bias)

    def clear_cache(self) -> None:
        """Forget what :attr:`cache` kept."""
        self._cache = {}

    def _apply(self, fn: Any, recurse: bool = True) -> HyperMLP:
        self.clear_cache()
        return super()._apply(fn, recurse)

    def _split(self, flat: torch.Tensor) -> Generated:
        found: Generated = []
        start = 0
        for out, inp in self.shapes:
            weight = flat[start : start + out * inp].view(out, inp)
            start += out * inp
            found.append((weight, flat[start : start + out]))
            start += out
        return found

    def generated_size(self) -> int:
        """Parameters of the generated MLP (what the hypernetwork's output holds)."""
        return sum(out * (inp + 1) for out, inp in self.shapes)

    def _run(self, x: torch.Tensor, layers: Any, per_sample: bool) -> torch.Tensor:
        others = iter(self.others)
        for slot in self.slots:
            if slot < 0:
                x = next(others)(x)
            elif per_sample:
                weight, bias = layers[slot]
                x = torch.einsum("...i,...oi->...o", x, weight) + bias
            else:
                x = nn.functional.linear(x, *layers[slot])
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wrapped = torch._C._functorch.is_functorch_wrapped_tensor(x)
        only = self._router.only(x)
        if only is not None and not wrapped:
            return self._run(x, self.generate(only), per_sample=False)
        ids = self._router.ids(x)
        tasks = list(range(self._router.n_tasks)) if wrapped else self._router.tasks(x)
        if len(tasks) == 1:
            return self._run(x, self.generate(tasks[0]), per_sample=False)
        generated = [self.generate(t) for t in tasks]
        position = torch.zeros(self._router.n_tasks, dtype=torch.long, device=ids.device)
        position[torch.tensor(tasks, device=ids.device)] = torch.arange(len(tasks), device=ids.device)
        rows = position[ids]
        layers = [
            (torch.stack([g[i][0] for g in generated])[rows], torch.stack([g[i][1] for g in generated])[rows])
            for i in range(len(self.shapes))
        ]
        return self._run(x, layers, per_sample=True)

    def extra_repr(self) -> str:
        return f"layers={self.shapes}, generated={self.generated_size()}, tasks={len(self.embeddings)}"


def _hyper_mlps(policy: nn.Module, router: TaskRouter, embedding_dim: int, hidden: int) -> list[HyperMLP]:
    """Replace every ``nn.Sequential`` with a linear layer inside ``policy`` (outside its features
    extractors) by a :class:`HyperMLP`; SB3's lists of critics follow."""
    inside = {id(m) for extractor in _extractors(policy) for m in extractor.modules()}
    made: list[HyperMLP] = []
    for parent in [m for m in policy.modules() if id(m) not in inside]:
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Sequential) and any(type(m) is nn.Linear for m in child):
                hyper = HyperMLP(child, router, embedding_dim, hidden).to(next(child.parameters()).device)
                setattr(parent, name, hyper)
                made.append(hyper)
        critics: Any = parent
        if isinstance(getattr(critics, "q_networks", None), list):
            critics.q_networks = [getattr(critics, f"qf{i}") for i in range(len(critics.q_networks))]
    return made


class _HyperPolicy:
    """Policy mixin: after SB3 (and the multi-head policy) built the networks, every MLP becomes a
    :class:`HyperMLP`, target networks start as their online networks, and every optimiser is rebuilt over
    the parameters its networks now have (nothing has stepped yet)."""

    router: TaskRouter

    def __init__(self, *args: Any, embedding_dim: int = 8, hyper_hidden: int = 32, **kwargs: Any) -> None:
        for value, what in ((embedding_dim, "embedding_dim"), (hyper_hidden, "hyper_hidden")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"HyperNetwork policy {what} must be a positive integer, got {value!r}")
        self.embedding_dim, self.hyper_hidden = embedding_dim, hyper_hidden
        super().__init__(*args, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {
            **super()._get_constructor_parameters(),  # type: ignore[misc]
            "embedding_dim": self.embedding_dim,
            "hyper_hidden": self.hyper_hidden,
        }

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)  # type: ignore[misc]
        policy: Any = self
        owners = [
            owner
            for owner in policy.modules()
            if isinstance(getattr(owner, "optimizer", None), torch.optim.Optimizer)
        ]
        made = _hyper_mlps(policy, self.router, self.embedding_dim, self.hyper_hidden)
        cache_targets(policy, False)
        with torch.no_grad():
            for online, target in target_pairs(policy, HyperMLP):
                target.load_state_dict(online.state_dict())
        alive = {id(p) for p in policy.parameters()}
        for owner in owners:
            optimizer = owner.optimizer
            kept = [p for g in optimizer.param_groups for p in g["params"] if id(p) in alive]
            held = {id(p) for p in kept}  # a head inside a replaced MLP is already there
            new = [
                p
                for hyper in made
                if _owned_by(owner, hyper)
                for p in hyper.parameters()
                if id(p) not in held
            ]
            owner.optimizer = type(optimizer)(kept + new, **optimizer.defaults)


def _owned_by(owner: nn.Module, hyper: HyperMLP) -> bool:
    """Whether ``hyper`` is inside ``owner`` and not inside a target network."""
    if not any(m is hyper for m in owner.modules()):
        return False
    for name in ("q_net_target", "actor_target", "critic_target"):
        target = getattr(owner, name, None)
        if isinstance(target, nn.Module) and any(m is hyper for m in target.modules()):
            return False
    return True


class HyperActorCriticPolicy(_HyperPolicy, MultiHeadActorCriticPolicy):
    """:class:`clrl.MultiHeadActorCriticPolicy` (PPO, A2C) whose actor and critic MLPs are generated by
    hypernetworks from the task's embedding.

    Build it with ``PPO(clrl.HyperActorCriticPolicy, env, policy_kwargs={"n_tasks": 4})`` (what
    :func:`hypernetwork_policy` names), for :class:`clrl.HyperNetwork`.

    Args:
        *args: As :class:`clrl.MultiHeadActorCriticPolicy`.
        embedding_dim: Size of the task embeddings.
        hyper_hidden: Width of each hypernetwork's hidden layer.
        **kwargs: As :class:`clrl.MultiHeadActorCriticPolicy`.
    """


class HyperDQNPolicy(_HyperPolicy, MultiHeadDQNPolicy):
    """:class:`clrl.MultiHeadDQNPolicy` whose Q-network MLP (and its target's) is generated by a
    hypernetwork; arguments as :class:`HyperActorCriticPolicy`."""


class HyperSACPolicy(_HyperPolicy, MultiHeadSACPolicy):
    """:class:`clrl.MultiHeadSACPolicy` whose actor and critic MLPs are generated by hypernetworks;
    arguments as :class:`HyperActorCriticPolicy`."""


class HyperTD3Policy(_HyperPolicy, MultiHeadTD3Policy):
    """:class:`clrl.MultiHeadTD3Policy` whose actor and critic MLPs are generated by hypernetworks;
    arguments as :class:`HyperActorCriticPolicy`."""


HYPERNETWORK_POLICIES: dict[str, type[BaseModel]] = {
    "PPO": HyperActorCriticPolicy,
    "A2C": HyperActorCriticPolicy,
    "DQN": HyperDQNPolicy,
    "SAC": HyperSACPolicy,
    "TD3": HyperTD3Policy,
}
"""The hypernetwork policy class of each supported algorithm, by class name."""


def hypernetwork_policy(algorithm: type[BaseAlgorithm] | str) -> type[BaseModel]:
    """The hypernetwork policy class for ``algorithm`` (a class or a name such as ``"ppo"``).

    Raises:
        ConfigError: The algorithm has none (supported: PPO, A2C, DQN, SAC, TD3).
    """
    return policy_for(HYPERNETWORK_POLICIES, algorithm, "hypernetwork")


class HyperNetwork(MultiHead):
    """Task-conditioned hypernetworks: every MLP of the policy is generated from the task's embedding, and an
    output regulariser keeps what the hypernetwork generates for earlier tasks' embeddings.

    The hypernetworks live in the algorithm's hypernetwork policy (:func:`clrl.hypernetwork_policy`:
    ``PPO(clrl.HyperActorCriticPolicy, env, policy_kwargs={"n_tasks": n})``, likewise ``HyperDQNPolicy``,
    ``HyperSACPolicy``, ``HyperTD3Policy``): each MLP (actor, critic and value function, Q-networks and their
    targets) is a :class:`HyperMLP`, whose linear layers are generated once per forward pass from the
    embedding of the task of its samples; output layers are per-task heads, as in :class:`clrl.MultiHead`.
    While task ``t`` trains, its embedding and the hypernetworks train on the algorithm's loss plus

        ``β / |T'| · Σ_{t' ∈ T'} ‖f_h(e_{t'}) - f_h*(e_{t'})‖²``

    over the earlier tasks ``T'``, with ``f_h*(e_{t'})`` what the hypernetwork generated for ``t'`` when
    ``t`` started (paper eq. 2); earlier embeddings and heads are held (their gradient dropped, so the
    optimiser skips them). The generated weights of an earlier task therefore move only as far as the
    regulariser allows (tested: within its tolerance), unlike a mask method's, which are exact.

    Paper: von Oswald, Henning, Grewe & Sacramento 2020, "Continual learning with hypernetworks" (ICLR); in
    RL, Huang, Xie, Zhu & Lomonaco 2021, "Continual Model-Based Reinforcement Learning with Hypernetworks"
    (ICRA).

    Deviations: the hypernetworks are not chunked (each generates its whole MLP: ``hyper_hidden`` times the
    MLP's parameters, fine for the small MLPs of RL policies), they generate the hidden layers while the
    output layers are per-task heads (the paper generates the whole target network), and the regulariser
    has no look-ahead term (the paper's optional ``ΔΘ_h``). The regulariser costs one generation per earlier
    task per optimiser step, and one more backward pass.

    Args:
        beta: The regulariser's strength ``β``.
        require_task_id: Refuse streams whose task id is hidden in ``clrl.train`` (the embeddings are
            chosen by it).
        verbose: SB3 callback verbosity.
    """

    name = "hypernetwork"

    def __init__(self, beta: float = 0.01, require_task_id: bool = True, verbose: int = 0) -> None:
        super().__init__(require_task_id, verbose)
        self.beta = check_non_negative(beta, "HyperNetwork beta")
        self.trained: list[int] = []
        """Indices of the tasks trained so far, in order."""
        self._heads = HeldHeads()
        self._anchors: dict[int, dict[int, Generated]] = {}  # per HyperMLP (by id), per earlier task
        self._held: dict[str, nn.Parameter] = {}  # the other tasks' embeddings

    def _router(self, model: BaseAlgorithm | None = None) -> TaskRouter:
        model = self.sb3_model if model is None else model
        router = task_router(model)
        if router is None or not any(isinstance(m, HyperMLP) for m in model.policy.modules()):
            algo = type(model).__name__
            raise ConfigError(
                f"HyperNetwork needs a hypernetwork policy; build the model with "
                f"{algo}(clrl.hypernetwork_policy({algo}), env, policy_kwargs={{'n_tasks': len(stream)}})"
            )
        return router

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse a policy without hypernetworks, or with a features extractor that has parameters."""
        super().check_model(model)
        check_parameter_free_extractors(self, model)

    def mlps(self) -> list[HyperMLP]:
        """The hypernetwork MLPs of the networks that train (not the target networks)."""
        return online_layers(self.sb3_model.policy, HyperMLP)

    def on_task_start(self, task: TaskInfo) -> None:
        """Keep what each hypernetwork generates for every earlier task; hold their embeddings and heads."""
        super().on_task_start(task)
        earlier = [t for t in dict.fromkeys(self.trained) if t != task.index]
        with torch.no_grad():
            self._anchors = {
                id(mlp): {t: [(w.clone(), b.clone()) for w, b in mlp.generate(t)] for t in earlier}
                for mlp in self.mlps()
            }
        policy = self.sb3_model.policy
        self._heads.hold(policy, task.index)
        self._held = {
            name: param
            for name, param in policy.named_parameters()
            if ".embeddings." in name and not name.endswith(f".embeddings.{task.index}")
        }

    def on_task_end(self, task: TaskInfo) -> None:
        """Count the task as trained."""
        self.trained.append(task.index)
        self._anchors = {}

    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The hypernetworks' parameters (the regulariser's), the held embeddings and heads."""
        hyper = {
            name: param
            for name, param in self.sb3_model.policy.named_parameters()
            if any(param is p for mlp in self.mlps() for p in mlp.parameters())
        }
        return {**hyper, **self._heads.parameters()}

    def after_backward(self, name: str, param: torch.nn.Parameter) -> None:
        """Drop the gradient of a held embedding or head (the optimiser then skips it)."""
        if name in self._held:
            param.grad = None
        else:
            self._heads.drop_grad(name, param)

    def regulariser(self, group: ParamGroup) -> torch.Tensor | None:
        """``β / |T'| · Σ ‖f_h(e_t') - f_h*(e_t')‖²`` over the hypernetworks ``group`` steps."""
        stepped = {id(p) for p in group.params}
        terms = []
        for mlp in self.mlps():
            anchors = self._anchors.get(id(mlp))
            if not anchors or id(mlp.out.weight) not in stepped:
                continue
            for task, generated in anchors.items():
                now = mlp.generate(task, detach_embedding=True)
                for (w, b), (w0, b0) in zip(now, generated, strict=True):
                    terms.append((w - w0).square().sum() + (b - b0).square().sum())
        if not terms:
            return None
        return self.beta / len(next(a for a in self._anchors.values() if a)) * torch.stack(terms).sum()

    def extra_loss(self, group: ParamGroup) -> torch.Tensor | None:
        """The output regulariser (:meth:`regulariser`), back-propagated before SB3's loss."""
        if self.beta == 0:
            return None
        return self.regulariser(group)

    def log_scalars(self) -> dict[str, float]:
        """``drift``: ``Σ ‖f_h(e_t') - f_h*(e_t')‖²`` over the earlier tasks (without ``β``); ``generated``:
        parameters the hypernetworks generate per task."""
        mlps = self.mlps()
        scalars = {"generated": float(sum(m.generated_size() for m in mlps))}
        drift = 0.0
        with torch.no_grad():
            for mlp in mlps:
                for task, generated in self._anchors.get(id(mlp), {}).items():
                    for (w, b), (w0, b0) in zip(mlp.generate(task), generated, strict=True):
                        drift += float((w - w0).square().sum() + (b - b0).square().sum())
        if any(self._anchors.values()):
            scalars["drift"] = drift
        return scalars

    def state_dict(self) -> dict[str, Any]:
        """The last task trained and the tasks trained so far."""
        return {**super().state_dict(), "trained": list(self.trained)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.trained = [int(t) for t in state.get("trained", [])]
