"""EWC: one Fisher-weighted quadratic penalty per finished task."""

from __future__ import annotations

from typing import Any

import torch

from clrl.algorithms import Networks
from clrl.errors import ConfigError
from clrl.modules.base import TaskInfo, check_non_negative
from clrl.modules.importance import StateBatch, fisher_diagonal
from clrl.modules.penalty import ImportancePenalty, Tensors, _cpu


def check_temperature(value: float) -> float:
    """Return ``value`` as a float if it is a finite positive number, else raise :class:`ConfigError`."""
    value = check_non_negative(value, "temperature")
    if value == 0:
        raise ConfigError("temperature must be > 0")
    return value


class FisherPenalty(ImportancePenalty):
    """An importance penalty whose importance is the policy's diagonal Fisher (EWC, online EWC).

    Args:
        strength: Penalty coefficient ``λ`` (>= 0).
        samples: States each Fisher is averaged over.
        networks: ``"actor"`` or ``"all"``.
        temperature: DQN and QR-DQN: temperature of the Boltzmann policy (see :class:`EWC`).
        verbose: SB3 callback verbosity.
    """

    def __init__(
        self, strength: float, samples: int, networks: Networks, temperature: float, verbose: int
    ) -> None:
        super().__init__(strength, samples, networks, verbose)
        self.temperature = check_temperature(temperature)

    def importance_of(self, params: dict[str, torch.nn.Parameter], states: StateBatch) -> Tensors:
        """The diagonal Fisher on ``states``."""
        return fisher_diagonal(self.sb3_model, params, states, self.networks, self.temperature)


class EWC(FisherPenalty):
    """Elastic weight consolidation: a Fisher-weighted pull toward the parameters of every finished task.

    After task ``t`` the diagonal Fisher information ``F_t`` of the policy is estimated on ``samples``
    states of that task (per-sample score, expectation over actions in closed form; see
    :mod:`clrl.modules.importance` for each policy type) and stored with the anchor ``θ*_t``. Later tasks
    are trained with the penalty ``strength/2 · Σ_t Σ_i F_t,i (θ_i - θ*_t,i)²``. Memory grows by one
    Fisher and one anchor per task; the gradient ``strength · Σ_t F_t (θ - θ*_t)`` is applied in the
    equivalent form ``strength · F (θ - ā)`` with ``F = Σ_t F_t`` and ``ā = Σ_t F_t θ*_t / F``, so the cost
    of a training step does not grow with the number of tasks.

    Paper: Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks", PNAS,
    https://arxiv.org/abs/1612.00796

    Args:
        strength: Penalty coefficient ``λ`` (>= 0). At 0 training equals plain SB3 exactly.
        samples: States the Fisher is averaged over (from the model's buffer at the end of the task).
        networks: ``"actor"`` (default, as Continual World) or ``"all"`` (critic outputs added to the
            Fisher as unit-variance Gaussian regressions, and the penalty on every optimiser).
        temperature: DQN and QR-DQN: the policy whose Fisher is taken is ``softmax(Q / temperature)``.
            Higher temperatures spread the probability over more actions; the scale of ``F`` changes as
            ``1 / temperature²``, which the strength absorbs.
        verbose: SB3 callback verbosity.
    """

    name = "ewc"

    def __init__(
        self,
        strength: float = 1000.0,
        samples: int = 1024,
        networks: Networks = "actor",
        temperature: float = 1.0,
        verbose: int = 0,
    ) -> None:
        super().__init__(strength, samples, networks, temperature, verbose)
        self.anchors: list[Tensors] = []
        """The anchor ``θ*_t`` of every finished task."""
        self.fishers: list[Tensors] = []
        """The Fisher ``F_t`` of every finished task."""
        self._offset: dict[str, float] = {}

    def on_task_end(self, task: TaskInfo) -> None:
        """Store the task's Fisher and anchor, and combine all of them into one penalty."""
        self.fishers.append(self.estimate(task.index))
        self.anchors.append({n: p.detach().clone() for n, p in self.regularised().items()})
        self._combine()

    def _combine(self) -> None:
        if not self.fishers:
            self.importance, self.anchor, self._offset = {}, {}, {}
            return
        total = {n: torch.stack([f[n] for f in self.fishers]).sum(0) for n in self.fishers[0]}
        self.importance = total
        self.anchor, self._offset = {}, {}
        for name, fisher in total.items():
            weighted = sum(f[name] * a[name] for f, a in zip(self.fishers, self.anchors, strict=True))
            mean = torch.as_tensor(weighted) / fisher.clamp_min(torch.finfo(fisher.dtype).tiny)
            self.anchor[name] = torch.where(fisher > 0, mean, self.anchors[-1][name])
            # Σ_t F_t (θ - θ*_t)² = F (θ - ā)² + Σ_t F_t (θ*_t - ā)², since Σ_t F_t (θ*_t - ā) = 0.
            self._offset[name] = sum(
                float((f[name] * (a[name] - self.anchor[name]).square()).sum())
                for f, a in zip(self.fishers, self.anchors, strict=True)
            )

    def penalty(self) -> float:
        """``strength/2 · Σ_t Σ_i F_t,i (θ_i - θ*_t,i)²``, as ``strength/2 · (Σ_i F_i (θ_i - ā_i)² + c)``
        with the constant ``c = Σ_t Σ_i F_t,i (θ*_t,i - ā_i)²`` fixed when a task ends: one pass over the
        parameters whatever the number of tasks."""
        params = self.regularised()
        offset = sum(c for n, c in self._offset.items() if n in params)
        return super().penalty() + 0.5 * self.strength * offset

    def latest_anchor(self) -> Tensors:
        """The anchor of the most recent task."""
        return self.anchors[-1] if self.anchors else {}

    def state_dict(self) -> dict[str, Any]:
        """Every task's Fisher and anchor."""
        return {"fishers": [_cpu(f) for f in self.fishers], "anchors": [_cpu(a) for a in self.anchors]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore every task's Fisher and anchor."""
        self.fishers = [dict(f) for f in state["fishers"]]
        self.anchors = [dict(a) for a in state["anchors"]]
        self._combine()
