"""CPG: compact each task's weights PackNet's way, let every later task pick which of them to reuse, and grow
the layers when too few weights are left free."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from clrl.algorithms import Networks
from clrl.errors import ConfigError
from clrl.modules.base import (
    ContinualModule,
    ParamGroup,
    TaskInfo,
    check_fraction,
    check_non_negative,
    check_positive,
    check_positive_int,
)
from clrl.modules.masks import MaskedLinear, TaskMasks, hidden_masked_layers, set_backbone_trainable
from clrl.modules.multihead import HeldEntries, TaskLinear
from clrl.modules.net2net import (
    check_widening_companions,
    check_widening_optimizers,
    extend_state,
    record_widths,
    replace_parameter,
)

FREE = -1
"""Owner of a weight that no task has kept (trainable by the next task)."""
PICKED = 1.0
"""The score of an entry the live mask always keeps (a free weight, or one the task owns)."""


class CPG(TaskMasks):
    """CPG (Compacting, Picking and Growing): each task trains the free weights and learns a binary mask that
    picks which of the earlier tasks' frozen weights to reuse; then its own weights are compacted, PackNet's
    way, releasing the smallest for later tasks.

    The masks live in the algorithm's masked policy (:func:`clrl.masked_policy`, as for
    :class:`clrl.Piggyback`): every hidden weight of the masked networks (``networks``) has an owner, a task
    or nobody (free).
    While task ``t`` trains, its layer computes ``x (W ⊙ M_t)ᵀ + b`` with ``M_t`` keeping every free weight
    and the earlier tasks' weights whose real-valued score (starting at ``init``) exceeds ``threshold`` (the
    picking mask, Piggyback's estimator); free weights train, earlier tasks' weights are held (gradient zeroed
    before SB3's clipping, values written back after each step). At ``1 - retrain`` of the task's steps,
    ``prune`` of the free weights of each matrix, those of smallest magnitude, are released (set to zero,
    free for later tasks), and the rest become task ``t``'s and are retrained alone, picking included
    (compacting, as :class:`clrl.PackNet`). When the task ends its mask, ``(owner = t) or (owner < t and
    picked)``, is stored as bits, so each task's policy is exactly what it ended with. Biases are the first
    task's (frozen after it, as in PackNet), and every task has its own heads (:class:`clrl.MultiHead`'s).

    Paper: Hung, Tu, Wu, Chen, Chan & Chen 2019, "Compacting, Picking and Growing for Unforgetting Continual
    Learning" (NeurIPS).

    Growing: when a task starts with less than ``min_free`` of the hidden weights free, every hidden layer
    of the masked networks (targets alike) gets ``grow_units`` new units, up to ``max_units`` per layer
    (:meth:`grow`). A new unit's incoming weights are drawn as ``nn.Linear`` draws them, its bias is zero
    (biases are the first task's, and stay fixed), and its outgoing weights, in the next layer or in every
    task's heads, start at zero; all of them are free. Every finished task's stored mask excludes them, so
    earlier tasks compute exactly what they did, and the new task's policy too is unchanged until it trains
    (tested). The optimisers' state gets zero moments for the new entries, and the model's
    ``policy_kwargs["net_arch"]`` records the new widths, so checkpoints load with ``clrl.load`` and SB3's
    own ``load``.

    Paper: Hung, Tu, Wu, Chen, Chan & Chen 2019, "Compacting, Picking and Growing for Unforgetting Continual
    Learning" (NeurIPS).

    Deviations: the paper prunes gradually, several rounds with retraining until the task's accuracy would
    drop; here the compaction is one magnitude pruning of ``prune`` per task (PackNet's schedule). The paper
    grows when a task, trained on the picked and free weights, misses its accuracy goal, and then trains it
    again; an RL task has no held-out accuracy and a second training costs its environment steps again, so
    here the test is the capacity left before the task starts (``min_free``). The picking scores share the
    algorithm's optimiser and learning rate. The paper has no critic: by default (``networks="actor"``) only
    what chooses actions is compacted, picked and grown, and the critics and value function (and their
    targets) train as plain layers on every task, with a head per task; ``networks="all"`` gives them
    owners and masks too (each task keeps its own value function, but a later task's critic can only train
    the weights left free, which on SAC kept it from fitting the Q-values: README, "Reference results").
    Growing changes the weights' shapes, so beside a growing CPG
    only Replay, CLEAR and BehaviourCloning (which keep states and outputs, not per-weight state) can run.

    Args:
        prune: Share of a task's free weights released for later tasks, in [0, 1).
        retrain: Share of each task's steps trained after compaction, in [0, 1] (0: compact at the task's
            end, without retraining).
        threshold: Scores above it pick their earlier weight (Piggyback's 5e-3).
        init: The picking scores' initial value (Piggyback's 1e-2: every earlier weight picked at first).
        min_free: Grow when a task starts with less than this share of the hidden weights free, in [0, 1]
            (0: never grow).
        grow_units: Units added to each hidden layer per growth.
        max_units: No hidden layer grows beyond this width.
        require_task_id: Refuse streams whose task id is hidden in ``clrl.train``.
        verbose: SB3 callback verbosity.
        networks: ``"actor"`` (default) masks the networks that choose actions (DQN's Q-network, the actor
            of SAC and TD3, PPO's and A2C's policy network) and lets critics and value functions train
            freely; ``"all"`` masks every network (the behaviour before this option existed, which
            checkpoints saved without it load with).
    """

    name = "cpg"

    def __init__(
        self,
        prune: float = 0.5,
        retrain: float = 0.2,
        threshold: float = 5e-3,
        init: float = 1e-2,
        min_free: float = 0.1,
        grow_units: int = 32,
        max_units: int = 512,
        require_task_id: bool = True,
        verbose: int = 0,
        networks: Networks = "actor",
    ) -> None:
        super().__init__(require_task_id, verbose, networks)
        self.prune = check_fraction(prune, "CPG prune")
        if self.prune == 1.0:
            raise ConfigError("CPG prune must be < 1: a task has to keep some weights")
        self.retrain = check_fraction(retrain, "CPG retrain")
        self.threshold = check_non_negative(threshold, "CPG threshold")
        self.init = check_positive(init, "CPG init")
        if not self.threshold < self.init < PICKED:
            raise ConfigError(f"CPG needs threshold < init < {PICKED}, got {threshold!r} and {init!r}")
        self.min_free = check_fraction(min_free, "CPG min_free")
        self.grow_units = check_positive_int(grow_units, "CPG grow_units")
        self.max_units = check_positive_int(max_units, "CPG max_units")
        self.owner: list[torch.Tensor] = []
        """Per online masked layer, the task that owns each weight (``FREE``: none)."""
        self.first: int | None = None
        """The first task trained (its biases are everyone's)."""
        self.finished: list[int] = []
        """The tasks whose masks are stored, in the order they ended."""
        self.grown = 0
        """Units added so far, over every hidden layer of the masked networks (not the targets)."""
        self._entries = HeldEntries()
        self._prune_at: int | None = None
        self._pruned = False

    def check_companions(self, others: Sequence[ContinualModule]) -> None:
        """Beside a growing CPG, refuse modules that keep per-parameter state (growing changes its shape)."""
        if self.min_free > 0:
            check_widening_companions(self, others)

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse optimisers whose state a growth cannot extend (with growth on)."""
        super().check_model(model)
        if self.min_free > 0:
            check_widening_optimizers(model, f"CPG(min_free={self.min_free})", ", or min_free=0")
            hidden_masked_layers(model.policy)  # the readers of every hidden unit must be known

    # ---------------------------------------------------------------- task boundaries
    def start_masks(self, task: TaskInfo) -> None:
        """Free weights train; earlier tasks' are held and picked by scores from ``init``."""
        if self.retrain > 0 and task.steps is None:
            raise ConfigError(
                f"CPG(retrain={self.retrain}) compacts at 1 - retrain of the task's steps, but task "
                f"{task.name!r} has no budget: pass steps=N to clrl.training_task, or use retrain=0"
            )
        layers = self.online_layers()
        if not self.owner:
            self.owner = [torch.full(la.weight.shape, FREE, dtype=torch.int16) for la in layers]
        shapes = [o.shape for o in self.owner]
        if shapes != [la.weight.shape for la in layers]:
            raise ConfigError("CPG was set up for another network: its owners do not fit the policy's layers")
        self.owner = [o.to(la.weight.device) for o, la in zip(self.owner, layers, strict=True)]
        if self.finished and self.free_share() < self.min_free:
            self.grow()
        if self.first is None:
            self.first = task.index
        set_backbone_trainable(self.layers(), True)
        for layer in self.layers():
            if layer.bias is not None:
                layer.bias.requires_grad_(task.index == self.first)
            layer.live_task, layer.rule = task.index, ("threshold", self.threshold)
            layer.scores.requires_grad_(True)
        with torch.no_grad():
            for layer, owner in zip(layers, self.owner, strict=True):
                layer.scores.fill_(self.init)
                layer.scores[~self._earlier(owner, task.index)] = PICKED
        self._pruned = False
        self._hold(task.index)
        start, steps = self.sb3_model.num_timesteps, task.steps or 0
        self._prune_at = start + int((1.0 - self.retrain) * steps) if self.retrain > 0 else None

    @staticmethod
    def _earlier(owner: torch.Tensor, task: int) -> torch.Tensor:
        return (owner != FREE) & (owner != task)

    def _hold(self, task: int) -> None:
        """Hold the earlier tasks' weights (after compaction: every weight but the task's own) and the
        scores of the entries the mask always keeps."""
        names = {id(p): n for n, p in self.sb3_model.policy.named_parameters()}
        self._entries.clear()
        for layer, owner in zip(self.online_layers(), self.owner, strict=True):
            earlier = self._earlier(owner, task)
            self._entries.hold(
                names[id(layer.weight)], layer.weight, owner != task if self._pruned else earlier
            )
            self._entries.hold(names[id(layer.scores)], layer.scores, ~earlier)

    def _on_rollout_end(self) -> None:
        if self._prune_at is not None and not self._pruned and self.sb3_model.num_timesteps >= self._prune_at:
            self.compact()
        super()._on_rollout_end()

    def compact(self) -> None:
        """Release ``prune`` of each matrix's free weights (smallest magnitude first), give the rest to the
        current task, and from now on train only its own weights (and its picking scores)."""
        task = self.task_index
        with torch.no_grad():
            for layer, owner in zip(self.online_layers(), self.owner, strict=True):
                free = owner == FREE
                keep = free.clone()
                where = free.reshape(-1).nonzero().squeeze(1)
                n_release = int(self.prune * where.numel())
                if n_release > 0:
                    released = where[
                        torch.topk(layer.weight.abs().reshape(-1)[where], n_release, largest=False).indices
                    ]
                    layer.weight.view(-1)[released] = 0.0
                    keep.view(-1)[released] = False
                owner[keep] = task
        self._pruned = True
        self._hold(task)

    def free_share(self) -> float:
        """The share of the masked networks' hidden weights (not the targets') that no task owns."""
        total = sum(o.numel() for o in self.owner) or 1
        return sum(int((o == FREE).sum()) for o in self.owner) / total

    def grow(self) -> int:
        """Add ``grow_units`` free units to every hidden layer below ``max_units`` (see the class docstring).

        Returns:
            The units added to the networks that train.
        """
        model = self.sb3_model
        online = {id(la) for la in self.online_layers()}
        chosen = {id(la) for la in self.layers()}  # with networks="actor", the critics' layers do not grow
        partner = {id(target): online_layer for online_layer, target in self.target_pairs()}
        rows: dict[int, torch.Tensor] = {}  # the new units' incoming weights, by online layer
        added = 0
        # Online layers first, so that each target layer copies its online layer's new units.
        grown = [pair for pair in hidden_masked_layers(model.policy) if id(pair[0]) in chosen]
        layers = sorted(grown, key=lambda pair: id(pair[0]) not in online)
        for layer, readers in layers:
            if id(layer) in online:
                count = min(self.grow_units, self.max_units - layer.out_features)
                if count <= 0:
                    continue
                bound = 1.0 / math.sqrt(layer.in_features)  # nn.Linear's initialisation
                weight = torch.empty(count, layer.in_features, device=layer.weight.device)
                rows[id(layer)] = weight.uniform_(-bound, bound).to(layer.weight.dtype)
                added += count
            elif id(partner[id(layer)]) not in rows:
                continue
            new = rows[id(partner.get(id(layer), layer))]
            self._grow_rows(model, layer, new)
            for reader in readers:
                if isinstance(reader, MaskedLinear):
                    self._grow_columns(model, reader, new.shape[0])
                else:
                    assert isinstance(reader, TaskLinear)
                    _grow_head(model, reader, new.shape[0])
        if added:
            record_widths(model)
            self.grown += added
        return added

    def _new_entries_kept(self, masks: torch.Tensor) -> torch.Tensor:
        """Per task, whether its mask keeps new weights: not a finished task's (the others' masks are all
        ones until stored)."""
        kept = torch.ones(len(masks), dtype=torch.bool, device=masks.device)
        kept[self.finished] = False
        return kept

    def _grow_rows(self, model: BaseAlgorithm, layer: MaskedLinear, rows: torch.Tensor) -> None:
        """``rows.shape[0]`` new units at the end of ``layer``'s outputs (incoming weights ``rows``)."""
        count, width = rows.shape[0], layer.in_features
        self._reshape(model, layer, 0, rows.to(layer.weight.device))
        if layer.bias is not None:
            with torch.no_grad():
                replace_parameter(model, layer, "bias", torch.cat([layer.bias, layer.bias.new_zeros(count)]))
            extend_state(model, layer.bias, 0, count)
        layer.out_features += count
        self._grow_owner(layer, (count, width), 0)

    def _grow_columns(self, model: BaseAlgorithm, layer: MaskedLinear, count: int) -> None:
        """``count`` new inputs of ``layer`` (zero weights: the new units do not change its outputs)."""
        self._reshape(model, layer, 1, layer.weight.new_zeros(layer.out_features, count))
        layer.in_features += count
        self._grow_owner(layer, (layer.out_features, count), 1)

    def _reshape(self, model: BaseAlgorithm, layer: MaskedLinear, dim: int, weight: torch.Tensor) -> None:
        """Append ``weight`` to ``layer``'s weight along ``dim``, with free scores, masks that the finished
        tasks' exclude, and zero optimiser state."""
        count = weight.shape[dim]
        with torch.no_grad():
            replace_parameter(model, layer, "weight", torch.cat([layer.weight, weight], dim=dim))
            scores = torch.full_like(weight, PICKED)
            replace_parameter(model, layer, "scores", torch.cat([layer.scores, scores], dim=dim))
            new = self._new_entries_kept(layer.masks).view(-1, 1, 1).expand(-1, *weight.shape)
            layer.masks = torch.cat([layer.masks, new], dim=dim + 1)
        for name in ("weight", "scores"):
            extend_state(model, getattr(layer, name), dim, count)
        layer._hard, layer._masked, layer._all_ones = None, {}, {}

    def _grow_owner(self, layer: MaskedLinear, shape: tuple[int, int], dim: int) -> None:
        index = [id(la) for la in self.online_layers()]
        if id(layer) in index:
            i = index.index(id(layer))
            self.owner[i] = torch.cat([self.owner[i], self.owner[i].new_full(shape, FREE)], dim=dim)

    def final_mask(self, layer: MaskedLinear, task: TaskInfo) -> torch.Tensor | None:
        """The task's own weights and the earlier ones it picked."""
        owner = self.owner[[id(la) for la in self.online_layers()].index(id(layer))]
        picked = self._earlier(owner, task.index) & (layer.scores.detach() > self.threshold)
        return (owner == task.index) | picked

    def on_task_end(self, task: TaskInfo) -> None:
        """Compact now if the retraining phase did not happen; store the task's mask."""
        if not self._pruned:
            self.compact()
        super().on_task_end(task)
        self._entries.clear()
        if task.index not in self.finished:
            self.finished.append(task.index)

    # ---------------------------------------------------------------- training
    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The masked layers' weights and scores (whether or not any entry is held yet: the compaction holds
        the released ones part-way through a ``learn``, after the hooks are installed), and the other tasks'
        heads."""
        masked = {id(p) for la in self.online_layers() for p in (la.weight, la.scores)}
        layers = {n: p for n, p in self.sb3_model.policy.named_parameters() if id(p) in masked}
        return {**super().target_parameters(), **layers, **self._entries.parameters()}

    def after_backward(self, name: str, param: torch.nn.Parameter) -> None:
        """Zero the held entries' gradient (and drop the other heads'), before SB3's clipping."""
        super().after_backward(name, param)
        self._entries.zero_grad(name, param)

    def after_update(self, group: ParamGroup) -> None:
        """Write the held entries back."""
        self._entries.restore(group.names)

    # ---------------------------------------------------------------- state
    def log_scalars(self) -> dict[str, float]:
        """``free``: share of hidden weights no task owns; ``own``: share the current task owns; ``picked``:
        share of the earlier tasks' weights its mask picks; ``grown``: units added so far."""
        if not self.owner:
            return {}
        task = self.task_index
        total = sum(o.numel() for o in self.owner) or 1
        earlier = [self._earlier(o, task) for o in self.owner]
        picked = sum(
            int((e & (la.scores.detach() > self.threshold)).sum())
            for e, la in zip(earlier, self.online_layers(), strict=True)
        )
        n_earlier = sum(int(e.sum()) for e in earlier)
        scalars = {
            **super().log_scalars(),
            "free": sum(int((o == FREE).sum()) for o in self.owner) / total,
            "own": sum(int((o == task).sum()) for o in self.owner) / total,
        }
        if n_earlier:
            scalars["picked"] = picked / n_earlier
        scalars["grown"] = float(self.grown)
        return scalars

    def state_dict(self) -> dict[str, Any]:
        """The owners of the hidden weights, the first task, the finished tasks, the units grown and the last
        task trained."""
        return {
            **super().state_dict(),
            "owner": [o.cpu() for o in self.owner],
            "first": self.first,
            "finished": list(self.finished),
            "grown": self.grown,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the owners move to the model's device at the next task)."""
        super().load_state_dict(state)
        self.owner = [torch.as_tensor(o) for o in state.get("owner", [])]
        first = state.get("first")
        self.first = None if first is None else int(first)
        # A checkpoint from before growing: every task that owns weights has finished.
        owned = sorted({int(t) for o in self.owner for t in o.unique().tolist()} - {FREE})
        self.finished = [int(t) for t in state.get("finished", owned)]
        self.grown = int(state.get("grown", 0))


def _grow_head(model: BaseAlgorithm, head: TaskLinear, count: int) -> None:
    """``count`` new inputs of every task's head, with zero weights (and zero optimiser state)."""
    for key in list(head.weight._parameters):
        old = head.weight._parameters[key]
        assert old is not None
        with torch.no_grad():
            grown = torch.cat([old, old.new_zeros(old.shape[0], count)], dim=1)
            replace_parameter(model, head.weight, key, grown)
        extend_state(model, head.weight._parameters[key], 1, count)  # type: ignore[arg-type]
    head.in_features += count
