"""CWR* and AR1: per-task output heads consolidated by their experience, over a shared trunk (AR1: the trunk
under SI's penalty)."""

from __future__ import annotations

import math
from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from clrl.algorithms import Networks
from clrl.errors import ConfigError
from clrl.modules.base import TaskInfo, check_bool
from clrl.modules.multihead import MultiHead, TaskLinear
from clrl.modules.si import SI


def _heads(model: BaseAlgorithm) -> list[tuple[str, TaskLinear]]:
    return [(name, m) for name, m in model.policy.named_modules() if isinstance(m, TaskLinear)]


class CWRStar(MultiHead):
    """CWR*: a multi-head policy whose heads are consolidated weights, each task's updated by the weights it
    trained to, in proportion to the experience behind each.

    The heads live in the algorithm's multi-head policy (:class:`clrl.MultiHead`'s setting: build the model
    with :func:`clrl.multihead_policy`). When a task starts, its heads (every per-task output layer: action
    and value heads, Q-heads, SAC/TD3 actor and critic heads) become the temporary weights ``tw``: zero the
    first time the task is seen (CWR+'s zero initialisation; ``zero_init=False`` keeps SB3's initialisation),
    its consolidated weights ``cw`` when it comes back. The shared trunk trains as usual. When the task ends,

        ``cw ← (cw · w_past + tw) / (w_past + 1)``,  ``w_past = sqrt(past / cur)``

    with ``past`` the environment steps the head trained in earlier visits and ``cur`` this visit's; ``past``
    grows by ``cur``, and the heads hold ``cw`` for evaluation and later training.

    Paper: Maltoni & Lomonaco 2019, "Continuous learning in single-incremental-task scenarios" (Neural
    Networks), CWR* (algorithm 3); CWR: Lomonaco & Maltoni 2017, "CORe50" (CoRL).

    Deviations: the paper's output layer has one unit per class and a batch trains the units of its classes;
    here a task's heads are its "classes" (task-incremental: the task id picks the head), so on a stream
    that visits each task once, consolidation keeps what the head trained to and CWR* is a multi-head
    policy whose new heads start at zero; the consolidation matters when tasks come back. The paper
    subtracts the mean of the batch's temporary weights before consolidating (it removes a bias between
    classes trained in different batches that share one softmax); a task's heads share no softmax with
    other tasks', so nothing is subtracted. Experience is counted in environment steps, not patterns.

    Args:
        zero_init: Start a task's heads at zero when it is first seen (CWR+), instead of SB3's initialisation.
        require_task_id: Refuse streams whose task id is hidden.
        verbose: SB3 callback verbosity.
    """

    name = "cwr-star"

    def __init__(self, zero_init: bool = True, require_task_id: bool = True, verbose: int = 0) -> None:
        super().__init__(require_task_id, verbose)
        self.zero_init = check_bool(zero_init, "CWRStar zero_init")
        self.past: dict[int, int] = {}
        """Environment steps each head has trained in finished visits, by task index."""
        self._consolidated: dict[str, torch.Tensor] = {}  # cw of the task being trained, at its start
        self._start_step = 0

    def on_task_start(self, task: TaskInfo) -> None:
        """Route by the task id; the task's heads become ``tw`` (zero when new, ``cw`` when it comes back)."""
        super().on_task_start(task)
        model = self.sb3_model
        index = task.index
        self._consolidated = {}
        with torch.no_grad():
            for name, head in _heads(model):
                weight, bias = head.weight[index], head.bias[index]
                if self.past.get(index, 0) == 0 and self.zero_init:
                    weight.zero_()
                    bias.zero_()
                self._consolidated[f"{name}.weight"] = weight.detach().clone()
                self._consolidated[f"{name}.bias"] = bias.detach().clone()
        self._start_step = model.num_timesteps

    def on_task_end(self, task: TaskInfo) -> None:
        """Consolidate the task's heads: ``cw ← (cw · w_past + tw) / (w_past + 1)``."""
        model = self.sb3_model
        index = task.index
        current = max(model.num_timesteps - self._start_step, 1)
        past = self.past.get(index, 0)
        w_past = math.sqrt(past / current)
        with torch.no_grad():
            for name, head in _heads(model):
                pairs = ((f"{name}.weight", head.weight[index]), (f"{name}.bias", head.bias[index]))
                for key, trained in pairs:
                    trained.copy_((self._consolidated[key] * w_past + trained) / (w_past + 1))
        self.past[index] = past + current
        self._consolidated = {}

    def state_dict(self) -> dict[str, Any]:
        """The last task trained and each head's past experience."""
        return {**super().state_dict(), "past": {str(k): v for k, v in self.past.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.past = {int(k): int(v) for k, v in state.get("past", {}).items()}


class AR1(SI):
    """AR1: CWR*'s consolidated heads (:class:`CWRStar`) over a trunk that trains under SI's penalty.

    The heads (the multi-head policy's per-task output layers) follow :class:`CWRStar`; every other
    parameter of the policy's ``networks`` (the shared trunk) is regularised by SI
    (:class:`clrl.SI`: importance from the path integral of each task, ``strength/2 · Σ Ω (θ - θ*)²``), while
    the heads are not: each task's head is only trained in its own task and consolidated by CWR*.

    Paper: Maltoni & Lomonaco 2019, "Continuous learning in single-incremental-task scenarios" (Neural
    Networks), AR1 (section 5); SI: Zenke, Poole & Ganguli 2017.

    Deviations: those of :class:`CWRStar` and :class:`clrl.SI`; the paper's AR1 also clips the importance
    at ``w_max`` and updates it after every batch, here it is SI's (consolidated at each task end, as SI
    does with ``every=None``).

    Args:
        strength: SI's penalty coefficient on the trunk (>= 0). At 0 with ``zero_init=False`` training
            equals :class:`clrl.MultiHead`'s.
        damping: SI's ``ξ``.
        networks: SI's ``networks`` (``"actor"`` or ``"all"``), heads excluded.
        zero_init: CWR+'s zero initialisation of new heads.
        require_task_id: Refuse streams whose task id is hidden.
        verbose: SB3 callback verbosity.
    """

    name = "ar1"
    task_free_with = None  # CWR*'s heads are consolidated at task ends: AR1 takes no every=K

    def __init__(
        self,
        strength: float = 1.0,
        damping: float = 0.1,
        networks: Networks = "actor",
        zero_init: bool = True,
        require_task_id: bool = True,
        verbose: int = 0,
    ) -> None:
        super().__init__(strength=strength, damping=damping, networks=networks, verbose=verbose)
        self.zero_init = check_bool(zero_init, "AR1 zero_init")
        self.require_task_id = check_bool(require_task_id, "AR1 require_task_id")
        self.heads = CWRStar(zero_init=zero_init, require_task_id=require_task_id)

    def regularised(self) -> dict[str, torch.nn.Parameter]:
        """SI's parameters without the task heads (the trunk)."""
        heads = {id(p) for _, head in _heads(self.sb3_model) for p in head.parameters()}
        return {n: p for n, p in super().regularised().items() if id(p) not in heads}

    def check_stream(self, stream: Any) -> None:
        """CWR*'s check: an observed task id."""
        super().check_stream(stream)
        self.heads.check_stream(stream)

    def check_model(self, model: BaseAlgorithm) -> None:
        """A multi-head policy (CWR*'s check)."""
        super().check_model(model)
        self.heads.check_model(model)

    def bind(self, model: BaseAlgorithm) -> None:
        """Bind SI and the heads to ``model``."""
        super().bind(model)
        self.heads.bind(model)

    def on_task_start(self, task: TaskInfo) -> None:
        """CWR*'s heads for the task, then SI's new path integral over the trunk."""
        self.heads.begin_task(self.sb3_model, task)
        super().on_task_start(task)

    def on_task_end(self, task: TaskInfo) -> None:
        """SI's consolidation of the trunk, then CWR*'s of the heads."""
        super().on_task_end(task)
        self.heads.end_task()

    def set_task(self, index: int) -> None:
        """Evaluate with task ``index``'s heads (:meth:`clrl.MultiHead.set_task`)."""
        self.heads.set_task(index)

    def abort_task(self) -> None:
        """Close the open task of SI and of the heads without ending it."""
        super().abort_task()
        self.heads.abort_task()

    def state_dict(self) -> dict[str, Any]:
        """SI's state and the heads'."""
        return {**super().state_dict(), "heads": self.heads.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        heads = state.get("heads")
        if heads is None:
            raise ConfigError("AR1 state without its heads' state")
        super().load_state_dict({k: v for k, v in state.items() if k != "heads"})
        self.heads.load_state_dict(heads)
