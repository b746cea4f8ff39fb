"""Task masks over a shared network: one binary mask per task on the weights of every hidden layer, with
per-task output heads (the setting of :class:`clrl.Piggyback` and :class:`clrl.SupSup`)."""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BaseModel
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from clrl.algorithms import Networks, acts, check_networks, policy_for
from clrl.errors import ConfigError
from clrl.modules.base import ContinualModule, TaskInfo
from clrl.modules.multihead import (
    TARGET_NETWORKS,
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
    policy_optimizers,
    routed_linear,
    task_router,
)

Rule = tuple[str, float]
"""How the live task's real-valued scores become its binary mask: ``("threshold", τ)`` keeps the entries
whose score exceeds ``τ`` (Piggyback); ``("keep", k)`` keeps the share ``k`` of largest ``|score|`` (SupSup's
edge-popup)."""


class _StraightThrough(torch.autograd.Function):
    """``W ⊙ M`` for a binary mask ``M`` computed from scores ``s``, with the straight-through gradient
    ``∂L/∂s = ∂L/∂(W ⊙ M) ⊙ W`` (and ``∂L/∂W = ∂L/∂(W ⊙ M) ⊙ M``): what ``W ⊙ (M + (s - s.detach()))``
    computes, in one operation forward and one per input backward."""

    @staticmethod
    def forward(weight: torch.Tensor, scores: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
        return masked(weight, hard)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        weight, _, hard = inputs
        ctx.save_for_backward(weight, hard)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight, hard = ctx.saved_tensors
        grad_weight = masked(grad, hard) if ctx.needs_input_grad[0] else None
        grad_scores = grad * weight if ctx.needs_input_grad[1] else None
        return grad_weight, grad_scores, None


class NearbyKth:
    """The ``k``-th smallest (``k`` from 1) of a 1-D tensor that moves little between calls (the magnitudes
    of a mask's scores between optimiser steps): the element ``values.kthvalue(k).values`` finds.

    On the CPU it goes through NumPy's ``partition`` (introselect), which finds the same element several
    times faster than torch's ``kthvalue`` (on a 256×256 weight, 65 µs against 730 µs on one machine, 378
    against 828 µs on another), a fifth of ``topk``'s time again. After a search of the whole tensor it
    keeps the answer and the width of a band around it holding about ``2 * band`` values. The next call
    counts the values below the band, selects those inside it and partitions only them: when the
    ``k``-th smallest lies inside (fewer than ``k`` values below the band, at least ``k`` below or inside
    it), that is the same element; otherwise it searches the whole tensor again. On a 256×256 weight whose
    values moved by one Adam step: 34 µs against 378 µs. Other devices and ``torch.func`` transforms use
    ``kthvalue``.

    Args:
        band: Values on each side of the answer that the band is sized to hold.
    """

    def __init__(self, band: int = 512) -> None:
        self.band = band
        self._last: tuple[int, int, float, float] | None = None  # numel, k, the answer, half the band's width

    def __call__(self, values: torch.Tensor, k: int) -> torch.Tensor:
        if not _numpy_selectable(values):
            return values.kthvalue(k).values
        array = values.detach().numpy()
        last = self._last
        if last is not None and last[:2] == (array.size, k):
            low, high = last[2] - last[3], last[2] + last[3]
            below = int(np.count_nonzero(array < low))
            inside = array[(array >= low) & (array <= high)]
            j = k - 1 - below
            if 0 <= j < inside.size:
                found = np.partition(inside, j)[j : j + 1]
                self._last = (array.size, k, float(found[0]), last[3])
                return torch.from_numpy(found).reshape(())
        # The whole search, with the values `band` ranks on either side to size the next band.
        ranks = sorted({max(k - 1 - self.band, 0), k - 1, min(k - 1 + self.band, array.size - 1)})
        parted = np.partition(array, ranks)
        answer = float(parted[k - 1])
        width = max(answer - float(parted[ranks[0]]), float(parted[ranks[-1]]) - answer)
        self._last = (array.size, k, answer, width)
        return torch.from_numpy(parted[k - 1 : k].copy()).reshape(())


def _numpy_selectable(values: torch.Tensor) -> bool:
    """Whether NumPy can select in ``values`` in place of torch (a float CPU tensor, not a torch.func one)."""
    return (
        values.device.type == "cpu"
        and values.dtype in (torch.float32, torch.float64)
        and not torch._C._functorch.is_functorch_wrapped_tensor(values)
    )


def masked(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``weight ⊙ mask`` for a boolean ``mask``, bit for bit, read as bytes: torch's CPU product with a
    boolean tensor converts it first, at three times the cost."""
    return weight * mask.view(torch.uint8)


class MaskedLinear(nn.Module):
    """A linear layer whose weight is multiplied, per task, by that task's binary mask.

    The weight and bias are the layer it replaces (the same ``Parameter`` objects, so the optimiser that held
    them still does). Task ``t`` computes ``x (W ⊙ M_t)ᵀ + b`` with ``M_t`` the ``t``-th entry of the
    ``masks`` buffer (all ones until a task's mask is stored), except the *live* task, the one being
    trained: its mask is computed from the real-valued :attr:`scores` by :attr:`rule` at every forward pass
    (cached between optimiser steps), and its gradient reaches the scores straight through the
    binarisation (``∂L/∂s = ∂L/∂(W ⊙ M) ⊙ W``, Piggyback's and edge-popup's estimator). Samples are routed
    to their task's mask like :class:`clrl.modules.multihead.TaskLinear`'s heads.

    Args:
        base: The layer it replaces.
        router: Where the task of each sample comes from.
    """

    def __init__(self, base: nn.Linear, router: TaskRouter) -> None:
        super().__init__()
        self.weight = base.weight
        self.bias = base.bias
        self.scores = nn.Parameter(torch.zeros_like(base.weight))
        """The live task's real-valued mask; the module resets it when a task starts."""
        self.register_buffer(
            "masks",
            torch.ones(router.n_tasks, *base.weight.shape, dtype=torch.bool, device=base.weight.device),
        )
        self.masks: torch.Tensor
        self.in_features, self.out_features = base.in_features, base.out_features
        self.live_task: int | None = None
        """The task whose mask comes from :attr:`scores` (``None``: every task uses its stored mask)."""
        self.rule: Rule | None = None
        self.cache = True
        """Keep the live mask and ``W ⊙ M_t`` between calls without gradient, until the weight, scores or
        masks change (in target networks only while DQN trains:
        :func:`~clrl.modules.multihead.cache_targets`)."""
        self._router = router  # a plain attribute: not a submodule, not in the state dict
        self._hard: tuple[tuple[int, int, Rule | None], torch.Tensor] | None = None  # live mask, its key
        self._masked: dict[int, tuple[Any, torch.Tensor]] = {}  # a task's W ⊙ M_t without gradient
        self._all_ones: dict[int, tuple[int, bool]] = {}  # whether a task's stored mask keeps every weight
        self._kth = NearbyKth()  # the live mask's threshold under the top-k rule

    def clear_cache(self) -> None:
        """Forget what :attr:`cache` kept."""
        self._hard, self._masked, self._all_ones = None, {}, {}

    def _apply(self, fn: Any, recurse: bool = True) -> MaskedLinear:
        self.clear_cache()  # moved or cast: the caches are the old ones
        return super()._apply(fn, recurse)

    def live_mask(self) -> torch.Tensor:
        """The live task's binary mask, from :attr:`scores` by :attr:`rule` (no gradient)."""
        if self.rule is None:
            raise RuntimeError("MaskedLinear has no rule: no task is being trained with a mask")
        # No storage under torch.func; no cache in a target network.
        wrapped = torch._C._functorch.is_functorch_wrapped_tensor(self.scores) or not self.cache
        key = (-1, -1, self.rule) if wrapped else (self.scores._version, self.scores.data_ptr(), self.rule)
        if not wrapped and self._hard is not None and self._hard[0] == key:
            return self._hard[1]
        kind, value = self.rule
        scores = self.scores.detach()
        if kind == "threshold":
            hard = scores > value
        else:
            magnitude = scores.abs()
            keep = max(1, round(value * magnitude.numel()))
            # the keep-th largest |s|; ties, of measure zero, keep more
            hard = magnitude >= self._kth(magnitude.flatten(), magnitude.numel() - keep + 1)
        if not wrapped:
            self._hard = (key, hard)
        return hard

    def task_mask(self, task: int) -> torch.Tensor:
        """Task ``task``'s binary mask (the live one from the scores)."""
        if task == self.live_task and self.rule is not None:
            return self.live_mask()
        return self.masks[task]

    def _task(self, task: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight, scores = self.weight, self.scores
        live = task == self.live_task and self.rule is not None
        wrapped = torch._C._functorch.is_functorch_wrapped_tensor(weight) or (
            live and torch._C._functorch.is_functorch_wrapped_tensor(scores)
        )
        if wrapped or (torch.is_grad_enabled() and (weight.requires_grad or (live and scores.requires_grad))):
            if live and wrapped:  # torch.func transforms: plain operations
                hard = self.live_mask().to(weight.dtype)
                # hard + (s - s) is hard exactly: the live mask computes what the stored one will
                return weight * (hard + (scores - scores.detach())), self.bias
            if live:
                return _StraightThrough.apply(weight, scores, self.live_mask()), self.bias
            if self._full(task):  # a backbone's own task trains it unmasked
                return weight, self.bias
            return masked(weight, self.masks[task]), self.bias
        # No gradient (acting, evaluating, a frozen backbone): the masked weight, until something changes.
        if not self.cache:
            return masked(weight, self.live_mask() if live else self.masks[task]).detach(), self.bias
        key = (
            weight._version,
            scores._version if live else -1,
            self.masks._version,
            self.rule if live else None,
        )
        cached = self._masked.get(task)
        if cached is None or cached[0] != key:
            mask = self.live_mask() if live else self.masks[task]
            cached = self._masked[task] = (key, masked(weight, mask).detach())
        return cached[1], self.bias

    def _full(self, task: int) -> bool:
        key = self.masks._version
        cached = self._all_ones.get(task)
        if cached is None or cached[0] != key:
            cached = self._all_ones[task] = (key, bool(self.masks[task].all()))
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return routed_linear(x, self._router, self._task, self.out_features)

    def store(self, task: int, mask: torch.Tensor | None = None) -> None:
        """Store ``mask`` (default: the live mask; all ones if no rule is live) as task ``task``'s and stop
        using the scores."""
        with torch.no_grad():
            if mask is not None:
                self.masks[task] = mask
            elif self.rule is not None and self.live_task == task:
                self.masks[task] = self.live_mask()
            else:
                self.masks[task] = True
        self.live_task, self.rule = None, None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, tasks={len(self.masks)}"


def _extractors(module: nn.Module) -> list[BaseFeaturesExtractor]:
    return [m for m in module.modules() if isinstance(m, BaseFeaturesExtractor)]


def mask_linears(module: nn.Module, router: TaskRouter) -> list[MaskedLinear]:
    """Replace every ``nn.Linear`` inside ``module`` but outside its features extractors by a
    :class:`MaskedLinear` (per-task heads, which are :class:`~clrl.modules.multihead.TaskLinear`, stay as
    they are); return the new layers."""
    done: dict[int, MaskedLinear] = {}
    inside = {id(m) for extractor in _extractors(module) for m in extractor.modules()}
    for parent in [m for m in module.modules() if id(m) not in inside]:
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                if id(child) not in done:
                    done[id(child)] = MaskedLinear(child, router)
                setattr(parent, name, done[id(child)])
    return list(done.values())


class _MaskedLayers:
    """Policy mixin: after SB3 (and the multi-head policy) built the networks and optimisers, every hidden
    ``Linear`` becomes a :class:`MaskedLinear`, and each layer's scores join the optimiser of its weight
    (:func:`~clrl.modules.multihead.join_optimizers`)."""

    router: TaskRouter

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)  # type: ignore[misc]
        layers = mask_linears(self, self.router)  # type: ignore[arg-type]
        cache_targets(self, False)  # type: ignore[arg-type]
        join_optimizers(self, [(layer.weight, [layer.scores]) for layer in layers])  # type: ignore[arg-type]


class MaskedActorCriticPolicy(_MaskedLayers, MultiHeadActorCriticPolicy):
    """:class:`clrl.MultiHeadActorCriticPolicy` (PPO, A2C) whose hidden layers carry one mask per task.

    Build it with ``PPO(clrl.MaskedActorCriticPolicy, env, policy_kwargs={"n_tasks": 4})`` (what
    :func:`masked_policy` names), for :class:`clrl.Piggyback` or :class:`clrl.SupSup`.
    """


class MaskedDQNPolicy(_MaskedLayers, MultiHeadDQNPolicy):
    """:class:`clrl.MultiHeadDQNPolicy` whose hidden layers (Q-network and target) carry one mask per task."""


class MaskedSACPolicy(_MaskedLayers, MultiHeadSACPolicy):
    """:class:`clrl.MultiHeadSACPolicy` whose hidden layers (actor, critics, targets) carry one mask per
    task."""


class MaskedTD3Policy(_MaskedLayers, MultiHeadTD3Policy):
    """:class:`clrl.MultiHeadTD3Policy` whose hidden layers (actor, critics, targets) carry one mask per
    task."""


MASKED_POLICIES: dict[str, type[BaseModel]] = {
    "PPO": MaskedActorCriticPolicy,
    "A2C": MaskedActorCriticPolicy,
    "DQN": MaskedDQNPolicy,
    "SAC": MaskedSACPolicy,
    "TD3": MaskedTD3Policy,
}
"""The masked policy class of each supported algorithm, by class name."""


def masked_policy(algorithm: type[BaseAlgorithm] | str) -> type[BaseModel]:
    """The masked policy class for ``algorithm`` (a class or a name such as ``"ppo"``).

    Raises:
        ConfigError: The algorithm has none (supported: PPO, A2C, DQN, SAC, TD3).
    """
    return policy_for(MASKED_POLICIES, algorithm, "masked")


L = TypeVar("L", bound=nn.Module)


def _layers(network: nn.Module, kind: type[L] | None = None) -> list[L]:
    return [m for m in network.modules() if isinstance(m, kind or MaskedLinear)]  # type: ignore[misc]


def chosen_layers(policy: nn.Module, kind: type[L], networks: Networks) -> list[L]:
    """The ``kind`` layers of the policy (targets included) in ``networks``: every one with ``"all"``, with
    ``"actor"`` those of what chooses actions and its target (:func:`clrl.algorithms.acts`)."""
    return [
        m
        for name, m in policy.named_modules()
        if isinstance(m, kind) and (networks == "all" or acts(policy, name))
    ]


def online_layers(policy: nn.Module, kind: type[L]) -> list[L]:
    """The ``kind`` layers of the policy's networks that train (not DQN's, SAC's or TD3's targets)."""
    targets = {
        id(layer)
        for _, target in TARGET_NETWORKS
        if isinstance(getattr(policy, target, None), nn.Module)
        for layer in _layers(getattr(policy, target), kind)
    }
    return [layer for layer in _layers(policy, kind) if id(layer) not in targets]


def target_pairs(policy: nn.Module, kind: type[L]) -> list[tuple[L, L]]:
    """(online, target) pairs of the policy's ``kind`` layers."""
    pairs: list[tuple[L, L]] = []
    for online, target in TARGET_NETWORKS:
        if isinstance(getattr(policy, target, None), nn.Module):
            pairs += zip(
                _layers(getattr(policy, online), kind), _layers(getattr(policy, target), kind), strict=True
            )
    return pairs


_LATENT_HEADS = {
    "mlp_extractor.policy_net": ("action_net",),
    "mlp_extractor.value_net": ("value_net",),
    "actor.latent_pi": ("actor.mu", "actor.log_std"),
    "actor_target.latent_pi": ("actor_target.mu", "actor_target.log_std"),
}
"""The heads SB3's policies apply to the last hidden layer of an MLP that has no output layer of its own."""


def hidden_masked_layers(policy: nn.Module) -> list[tuple[MaskedLinear, list[MaskedLinear | TaskLinear]]]:
    """Every masked layer whose outputs are hidden units, in the order of its MLP, with the layers that read
    those units: the next masked layer, or the task heads on an MLP's last hidden layer (target networks
    included).

    Raises:
        ConfigError: A masked layer's readers are not known (a policy clrl did not build).
    """
    found: list[tuple[MaskedLinear, list[MaskedLinear | TaskLinear]]] = []
    modules = dict(policy.named_modules())
    for path, mlp in modules.items():
        if not isinstance(mlp, nn.Sequential):
            continue
        layers = [m for m in mlp.children() if isinstance(m, MaskedLinear | TaskLinear)]
        for i, layer in enumerate(layers):
            if not isinstance(layer, MaskedLinear):
                continue
            readers: list[nn.Module | None]
            if i + 1 < len(layers):
                readers = [layers[i + 1]]
            else:
                readers = [modules.get(head) for head in _LATENT_HEADS.get(path, ())]
            known = [r for r in readers if isinstance(r, MaskedLinear | TaskLinear)]
            fits = all(r.in_features == layer.out_features for r in known)
            if not known or len(known) < len(readers) or not fits:
                raise ConfigError(
                    f"cannot tell which layers read the units of {path!r} in {type(policy).__name__}"
                )
            found.append((layer, known))
    return found


def check_parameter_free_extractors(module: ContinualModule, model: BaseAlgorithm) -> None:
    """Refuse a policy whose features extractor has parameters: a method that isolates each task in the
    policy's MLPs would share them between every task, and they would change the earlier ones."""
    trained = [type(m).__name__ for m in _extractors(model.policy) if any(True for _ in m.parameters())]
    if trained:
        raise ConfigError(
            f"{type(module).__name__} isolates tasks in the policy's MLPs, but its features extractor "
            f"{trained[0]} has parameters that every task would share; use a parameter-free extractor "
            "(SB3's default FlattenExtractor)"
        )


class TaskMasks(MultiHead):
    """Base class of the mask methods: a masked policy (:func:`masked_policy`), each task's mask trained from
    real-valued scores while it is live and stored as bits when it ends.

    Only the current task's heads train: the others are held (:class:`~clrl.modules.multihead.HeldHeads`:
    their gradient dropped before SB3's clipping, so the optimiser skips them), since an earlier task's
    samples in a replay buffer reach its own heads. So an earlier task's policy is exactly
    what it ended with. Subclasses say how a task starts (:meth:`start_masks`: which weights train, how the
    scores start, the rule that binarises them). Target networks (DQN's, SAC's, TD3's) follow their online
    networks: a frozen backbone is copied into them, their scores start equal and are averaged like every
    other parameter,
    and a task's stored mask is the online network's.
    """

    def __init__(self, require_task_id: bool = True, verbose: int = 0, networks: Networks = "all") -> None:
        super().__init__(require_task_id, verbose)
        self._heads = HeldHeads()
        self.networks: Networks = check_networks(networks)
        """``"all"``: every hidden layer is masked; ``"actor"``: only those of what chooses actions (and its
        target network), while the critics' and the value function's layers train as plain layers."""

    def _chosen(self, layers: list[MaskedLinear]) -> list[MaskedLinear]:
        """``layers`` that :attr:`networks` masks."""
        if self.networks == "all":
            return layers
        acting = {id(m) for m in chosen_layers(self.sb3_model.policy, MaskedLinear, self.networks)}
        return [layer for layer in layers if id(layer) in acting]

    def _free_unchosen(self) -> None:
        """With ``networks="actor"``, let the other masked layers train as plain layers: no live mask, every
        stored mask all ones, weights and biases trainable."""
        chosen = {id(layer) for layer in self.layers()}
        every: list[MaskedLinear] = _layers(self.sb3_model.policy)
        free = [layer for layer in every if id(layer) not in chosen]
        with torch.no_grad():
            for layer in free:
                layer.live_task, layer.rule = None, None
                layer.masks.fill_(True)
        set_backbone_trainable(free, True)

    def _router(self, model: BaseAlgorithm | None = None) -> TaskRouter:
        model = self.sb3_model if model is None else model
        router = task_router(model)
        if router is None or not _layers(model.policy):
            algo = type(model).__name__
            raise ConfigError(
                f"{type(self).__name__} needs a masked policy; build the model with "
                f"{algo}(clrl.masked_policy({algo}), env, policy_kwargs={{'n_tasks': len(stream)}})"
            )
        return router

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse a policy without masks, or with a features extractor that has parameters (it is not
        masked, so it would be shared by every task and change the earlier ones)."""
        super().check_model(model)
        check_parameter_free_extractors(self, model)

    def layers(self) -> list[MaskedLinear]:
        """Every masked layer of the policy that :attr:`networks` masks, target networks included."""
        return self._chosen(_layers(self.sb3_model.policy))

    def online_layers(self) -> list[MaskedLinear]:
        """The masked layers of the networks that train (not the target networks)."""
        return self._chosen(online_layers(self.sb3_model.policy, MaskedLinear))

    def target_pairs(self) -> list[tuple[MaskedLinear, MaskedLinear]]:
        """(online, target) pairs of masked layers."""
        chosen = {id(layer) for layer in self.layers()}
        return [pair for pair in target_pairs(self.sb3_model.policy, MaskedLinear) if id(pair[0]) in chosen]

    def start_masks(self, task: TaskInfo) -> None:
        """Prepare the masked layers for ``task`` (subclasses)."""
        raise NotImplementedError

    def final_mask(self, layer: MaskedLinear, task: TaskInfo) -> torch.Tensor | None:
        """The mask ``layer`` stores for ``task`` when it ends (default ``None``: its live mask)."""
        return None

    def on_task_start(self, task: TaskInfo) -> None:
        """Route by the task id; prepare the task's mask (fresh scores, no optimiser state for them)."""
        super().on_task_start(task)
        self._free_unchosen()
        self.start_masks(task)
        self._heads.hold(self.sb3_model.policy, task.index)
        with torch.no_grad():
            for online, target in self.target_pairs():
                if not online.weight.requires_grad:  # a frozen backbone: the targets' is the same
                    target.weight.copy_(online.weight)
                    if target.bias is not None and online.bias is not None:
                        target.bias.copy_(online.bias)
                target.scores.copy_(online.scores)
                target.live_task, target.rule = online.live_task, online.rule
        for optimizer in {id(o): o for o in policy_optimizers(self.sb3_model.policy)}.values():
            for layer in self.layers():
                optimizer.state.pop(layer.scores, None)

    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The heads of the other tasks (held: :class:`~clrl.modules.multihead.HeldHeads`)."""
        return self._heads.parameters()

    def after_backward(self, name: str, param: torch.nn.Parameter) -> None:
        """Drop a held head's gradient before SB3's gradient clipping (the optimiser then skips it)."""
        self._heads.drop_grad(name, param)

    def on_task_end(self, task: TaskInfo) -> None:
        """Store the task's mask (the target networks get the online network's)."""
        for layer in self.online_layers():
            layer.store(task.index, self.final_mask(layer, task))
        with torch.no_grad():
            for online, target in self.target_pairs():
                target.masks.copy_(online.masks)
                target.live_task, target.rule = None, None

    def state_dict(self) -> dict[str, Any]:
        """The last task trained and :attr:`networks`."""
        return {**super().state_dict(), "networks": self.networks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a checkpoint from before ``networks`` existed masked every network)."""
        super().load_state_dict(state)
        self.networks = check_networks(state.get("networks", "all"))

    def log_scalars(self) -> dict[str, float]:
        """``kept``: share of the hidden layers' weights the current task's mask keeps."""
        layers = self.online_layers()
        index = max(self.task_index, 0)
        total = sum(layer.weight.numel() for layer in layers) or 1
        kept = sum(int(layer.task_mask(index).sum()) for layer in layers)
        return {**super().log_scalars(), "kept": kept / total}


def set_backbone_trainable(layers: list[MaskedLinear], trainable: bool) -> None:
    """Let the masked layers' weights and biases train, or freeze them (no gradient: the optimiser skips
    them, and Adam's momentum cannot move them)."""
    for layer in layers:
        layer.weight.requires_grad_(trainable)
        if layer.bias is not None:
            layer.bias.requires_grad_(trainable)
