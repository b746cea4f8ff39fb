"""PackNet: one network holds every task, each task in its own subset of the weights."""

from __future__ import annotations

from typing import Any

import torch

from clrl.algorithms import Networks, check_networks, policy_parameters
from clrl.errors import ConfigError
from clrl.modules.base import ContinualModule, ParamGroup, TaskInfo, check_bool, check_fraction

FREE = -1
"""Owner of a weight that no task has kept (trainable by the next task)."""


class PackNet(ContinualModule):
    """PackNet: after each task, keep its most important weights and freeze them; later tasks use the rest.

    Every weight of the chosen networks has an owner: a task, or nobody (free). While task ``t`` trains,
    only free weights change. At ``1 - retrain`` of the task's steps, a fraction ``prune`` of the free
    weights of each weight matrix, those of smallest magnitude, is released (set to zero); the rest become
    task ``t``'s, and the remaining ``retrain`` share of the task's steps fine-tunes them alone. When the
    task ends its weights are frozen for good. Biases and other one-dimensional parameters are not pruned:
    the first task keeps them, as in the paper (they are free only while it trains). ``set_task(j)``
    evaluates task ``j`` with the weights of tasks ``0..j`` only (the others zeroed), which is exactly the
    network task ``j`` ended with, so a task's return never changes once it is learned; ``clrl.train``'s
    evaluator selects it per task.

    Frozen weights are held exactly: their gradients are zeroed as soon as SB3's backward has accumulated
    them, before its gradient clipping, so they do not count in the clipped norm (measured with
    ``benchmarks/clip_interaction.py``: PPO clips every update on ``cartpole-flip``, and with
    ``networks="all"`` counting the frozen entries shrank the free weights' steps to 0.33-0.57 of this;
    with ``"actor"`` the value gradient dominates the norm and it made no difference), and after every
    optimiser step they are written back (Adam's momentum and weight decay would otherwise move them).
    Capacity shrinks geometrically: with ``prune=0.5``, task ``t`` keeps ``0.5^(t+1)`` of each matrix and
    ``0.5^T`` stays free after ``T`` tasks; a long stream needs a smaller ``prune`` or a wider network.

    Paper: Mallya & Lazebnik 2018, "PackNet: Adding Multiple Tasks to a Single Network by Iterative
    Pruning" (CVPR); in continual RL, Wołczyk et al. 2021, "Continual World" (NeurIPS), its best method.

    Args:
        prune: Share of a task's free weights released for later tasks, in [0, 1). The last task of a stream
            could keep all (``prune=0``), but the module does not know which task is last.
        retrain: Share of each task's steps trained after pruning, in [0, 1] (0: prune at the task's end,
            without retraining).
        networks: ``"actor"`` (default: what chooses actions, which is all that evaluation uses; critics and
            value heads stay fully plastic) or ``"all"``.
        require_task_id: Refuse streams whose task id is hidden in ``clrl.train``: the evaluator tells
            PackNet the task, which a task-agnostic setting does not allow.
        verbose: SB3 callback verbosity.
    """

    name = "packnet"

    def __init__(
        self,
        prune: float = 0.5,
        retrain: float = 0.2,
        networks: Networks = "actor",
        require_task_id: bool = True,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.prune = check_fraction(prune, "PackNet prune")
        if self.prune == 1.0:
            raise ConfigError("PackNet prune must be < 1: a task has to keep some weights")
        self.retrain = check_fraction(retrain, "PackNet retrain")
        self.networks: Networks = check_networks(networks)
        self.require_task_id = check_bool(require_task_id, "PackNet require_task_id")
        self.owner: dict[str, torch.Tensor] = {}
        """Per parameter, the task index that owns each entry (``FREE``: none)."""
        self.task_index = -1
        """Index of the task being (or last) trained."""
        self._held: dict[str, torch.Tensor] = {}  # entries that must not change now (True), per parameter
        # that has any
        self._values: dict[str, torch.Tensor] = {}  # what held entries are kept at
        self._live: dict[str, torch.Tensor] | None = None  # the unmasked weights while set_task masks them
        self._prune_at: int | None = None
        self._pruned = False

    # ---------------------------------------------------------------- task selection
    def check_stream(self, stream: Any) -> None:
        """Refuse a stream with a hidden task id unless ``require_task_id=False``."""
        if self.require_task_id and stream.task_id == "hidden":
            raise ConfigError(
                f"PackNet selects each task's weights by its task id, but stream {stream.name!r} hides it; "
                "pass require_task_id=False to use the id at evaluation anyway"
            )

    def set_task(self, index: int) -> None:
        """Use the weights of tasks ``0..index`` only (an earlier task), or all of them (the task being
        trained or a later one). Call it with the current task again to undo a mask."""
        if not self.owner or getattr(self, "model", None) is None:
            return
        params = self._parameters()
        if self._live is not None:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(self._live[name])
            self._live = None
        if index >= self.task_index:
            return
        self._live = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                owner = self.owner[name].to(p.device)
                p.mul_(((owner >= 0) & (owner <= index)).to(p.dtype))

    # ---------------------------------------------------------------- training
    def _parameters(self) -> dict[str, torch.nn.Parameter]:
        return policy_parameters(self.sb3_model, self.networks)

    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The parameters of ``networks``."""
        return self._parameters()

    def on_task_start(self, task: TaskInfo) -> None:
        """Hold the weights of earlier tasks; schedule the pruning step."""
        if self.retrain > 0 and task.steps is None:
            raise ConfigError(
                f"PackNet(retrain={self.retrain}) prunes at 1 - retrain of the task's steps, but task "
                f"{task.name!r} has no budget: pass steps=N to clrl.training_task, or use retrain=0"
            )
        self.set_task(max(task.index, self.task_index))  # never train under an evaluation mask
        params = self._parameters()
        if not self.owner:
            self.owner = {
                n: torch.full(p.shape, FREE, dtype=torch.int16, device=p.device) for n, p in params.items()
            }
        missing = params.keys() ^ self.owner.keys()
        if missing:
            raise ConfigError(f"PackNet was set up for other parameters; these differ: {sorted(missing)[:5]}")
        self.owner = {n: o.to(params[n].device) for n, o in self.owner.items()}
        self.task_index = task.index
        self._hold(lambda owner: owner != FREE)
        start, steps = self.sb3_model.num_timesteps, task.steps or 0
        self._prune_at = start + int((1.0 - self.retrain) * steps) if self.retrain > 0 else None
        self._pruned = False

    def _hold(self, rule: Any) -> None:
        """Hold the entries where ``rule(owner)`` is true at their current values."""
        params = self._parameters()
        held = {n: rule(self.owner[n]) for n in params}
        self._held = {n: h for n, h in held.items() if bool(h.any())}
        self._values = {n: params[n].detach().clone() for n in self._held}

    def _on_rollout_end(self) -> None:
        if self._prune_at is not None and not self._pruned and self.sb3_model.num_timesteps >= self._prune_at:
            self.prune_task()
        super()._on_rollout_end()

    def on_task_end(self, task: TaskInfo) -> None:
        """Prune now if the retraining phase did not happen."""
        if not self._pruned:
            self.prune_task()

    def prune_task(self) -> None:
        """Release ``prune`` of each matrix's free weights (smallest magnitude first) and give the rest to
        the current task; from now on only the current task's weights train."""
        params = self._parameters()
        with torch.no_grad():
            for name, p in params.items():
                owner, free = self.owner[name], self.owner[name] == FREE
                keep = free.clone()
                if p.dim() >= 2:
                    where = free.reshape(-1).nonzero().squeeze(1)
                    n_release = int(self.prune * where.numel())
                    if n_release > 0:
                        smallest = torch.topk(
                            p.detach().abs().reshape(-1)[where], n_release, largest=False
                        ).indices
                        released = where[smallest]
                        p.view(-1)[released] = 0.0
                        keep.view(-1)[released] = False
                owner[keep] = self.task_index
        self._hold(lambda owner: owner != self.task_index)
        self._pruned = True

    def after_backward(self, name: str, param: torch.nn.Parameter) -> None:
        """Zero the gradient of held entries right after SB3's backward, before its gradient clipping."""
        held = self._held.get(name)
        if held is not None and param.grad is not None:
            param.grad.masked_fill_(held, 0.0)

    def after_update(self, group: ParamGroup) -> None:
        """Write held entries back (undoing what Adam's momentum or weight decay did to them)."""
        with torch.no_grad():
            for name, p in zip(group.names, group.params, strict=True):
                if name in self._held:
                    p.copy_(torch.where(self._held[name], self._values[name], p))

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The owner of every weight and the index of the last task."""
        return {"owner": {n: o.cpu() for n, o in self.owner.items()}, "task_index": self.task_index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s owners (moved to the model's device at the next task)."""
        self.owner = dict(state["owner"])
        self.task_index = int(state["task_index"])

    def log_scalars(self) -> dict[str, float]:
        """``free``: share of weight-matrix entries no task owns; ``kept``: share the current task owns."""
        if not self.owner:
            return {}
        matrices = [o for o in self.owner.values() if o.dim() >= 2]
        total = sum(o.numel() for o in matrices) or 1
        free = sum(int((o == FREE).sum()) for o in matrices)
        kept = sum(int((o == self.task_index).sum()) for o in matrices)
        return {"free": free / total, "kept": kept / total}
