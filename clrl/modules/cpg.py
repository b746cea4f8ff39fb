"""CPG: compact each task's weights PackNet's way, and let every later task pick which of them to reuse."""

from __future__ import annotations

from typing import Any

import torch

from clrl.errors import ConfigError
from clrl.modules.base import ParamGroup, TaskInfo, check_fraction, check_non_negative, check_positive
from clrl.modules.masks import MaskedLinear, TaskMasks, set_backbone_trainable
from clrl.modules.multihead import HeldEntries

FREE = -1
"""Owner of a weight that no task has kept (trainable by the next task)."""
PICKED = 1.0
"""The score of an entry the live mask always keeps (a free weight, or one the task owns)."""


class CPG(TaskMasks):
    """CPG (Compacting, Picking and Growing): each task trains the free weights and learns a binary mask that
    picks which of the earlier tasks' frozen weights to reuse; then its own weights are compacted, PackNet's
    way, releasing the smallest for later tasks.

    The masks live in the algorithm's masked policy (:func:`clrl.masked_policy`, as for
    :class:`clrl.Piggyback`): every hidden weight of every network has an owner, a task or nobody (free).
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

    Deviations: the paper prunes gradually, several rounds with retraining until the task's accuracy would
    drop, and grows the layers (new filters) when a task cannot reach its accuracy goal with the picked and
    free weights; here the compaction is one magnitude pruning of ``prune`` per task (PackNet's schedule),
    and growth is not built: a stream longer than the capacity allows needs a smaller ``prune`` or a wider
    network (``kept``/``free`` in ``cl/cpg/`` show it). The picking scores share the algorithm's optimiser
    and learning rate.

    Args:
        prune: Share of a task's free weights released for later tasks, in [0, 1).
        retrain: Share of each task's steps trained after compaction, in [0, 1] (0: compact at the task's
            end, without retraining).
        threshold: Scores above it pick their earlier weight (Piggyback's 5e-3).
        init: The picking scores' initial value (Piggyback's 1e-2: every earlier weight picked at first).
        require_task_id: Refuse streams whose task id is hidden in ``clrl.train``.
        verbose: SB3 callback verbosity.
    """

    name = "cpg"

    def __init__(
        self,
        prune: float = 0.5,
        retrain: float = 0.2,
        threshold: float = 5e-3,
        init: float = 1e-2,
        require_task_id: bool = True,
        verbose: int = 0,
    ) -> None:
        super().__init__(require_task_id, verbose)
        self.prune = check_fraction(prune, "CPG prune")
        if self.prune == 1.0:
            raise ConfigError("CPG prune must be < 1: a task has to keep some weights")
        self.retrain = check_fraction(retrain, "CPG retrain")
        self.threshold = check_non_negative(threshold, "CPG threshold")
        self.init = check_positive(init, "CPG init")
        if not self.threshold < self.init < PICKED:
            raise ConfigError(f"CPG needs threshold < init < {PICKED}, got {threshold!r} and {init!r}")
        self.owner: list[torch.Tensor] = []
        """Per online masked layer, the task that owns each weight (``FREE``: none)."""
        self.first: int | None = None
        """The first task trained (its biases are everyone's)."""
        self._entries = HeldEntries()
        self._prune_at: int | None = None
        self._pruned = False

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

    # ---------------------------------------------------------------- training
    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The held weights and scores, and the other tasks' heads."""
        return {**super().target_parameters(), **self._entries.parameters()}

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
        share of the earlier tasks' weights its mask picks."""
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
        return scalars

    def state_dict(self) -> dict[str, Any]:
        """The owners of the hidden weights, the first task and the last task trained."""
        return {
            **super().state_dict(),
            "owner": [o.cpu() for o in self.owner],
            "first": self.first,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the owners move to the model's device at the next task)."""
        super().load_state_dict(state)
        self.owner = [torch.as_tensor(o) for o in state.get("owner", [])]
        first = state.get("first")
        self.first = None if first is None else int(first)
