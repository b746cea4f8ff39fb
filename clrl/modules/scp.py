"""SCP: importance from the sliced Cramér distance of the networks' mean outputs."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from clrl.algorithms import Networks
from clrl.modules.base import check_positive_int
from clrl.modules.importance import StateBatch, scp_importance
from clrl.modules.mas import MAS
from clrl.modules.penalty import Tensors


class SCP(MAS):
    """Sliced Cramér Preservation: importance from how much each parameter moves the networks' mean output
    along random directions.

    After each task, over ``samples`` states of the task, with ``ȳ`` the mean of the network's raw outputs
    (MAS's: logits, Gaussian mean and log-std, deterministic actions, Q-values; values and critics' Q-values
    too with ``networks="all"``) and ``ξ_1..ξ_L`` random unit vectors (``slices``),

        ``Γ_i = 1/L Σ_l (∂ ⟨ξ_l, ȳ⟩ / ∂θ_i)²``,

    the second-order term of the sliced Cramér distance between the output distributions before and after
    a change of the parameters (the paper's derivation). Importances add up over tasks and the anchor is the
    parameters at the end of the latest task; the penalty is ``strength/2 · Σ_i Γ_i (θ_i - θ*_i)²``: MAS's
    rules (the class extends :class:`clrl.MAS` for them), with SCP's importance. The slices are drawn from a
    generator seeded by the model's seed and the task (or step), so runs repeat.

    **Task-free mode** (``every``, clrl's): as :class:`clrl.MAS`'s, a consolidation every ``every`` steps.

    Paper: Kolouri et al. 2020, "Sliced Cramér Synaptic Consolidation for Preserving Deeply Learned
    Representations" (ICLR), https://openreview.net/forum?id=BJge3TNKwH

    Deviations: the paper's networks are classifiers and its outputs the last layer's activations; here the
    outputs are the policy's (MAS's choice). Importances accumulate over tasks as MAS's do.

    Args:
        strength: Penalty coefficient ``λ`` (>= 0). At 0 training equals plain SB3 exactly.
        samples: States the mean output is taken over (from the model's buffer at the end of the task).
        slices: Random directions ``L`` (>= 1; clrl's default 100, not a value from the paper).
        networks: ``"actor"`` (default) or ``"all"``.
        every: Also consolidate every ``every`` environment steps (task-free mode); ``None`` (default):
            at task ends only.
        verbose: SB3 callback verbosity.
    """

    name = "scp"
    task_free_with: ClassVar[str | None] = "every=K"

    def __init__(
        self,
        strength: float = 1.0,
        samples: int = 1024,
        slices: int = 100,
        networks: Networks = "actor",
        every: int | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(strength, samples, networks, every, verbose)
        self.slices = check_positive_int(slices, "SCP slices")
        self._key: tuple[int, ...] = ()

    def estimate(self, *key: int) -> Tensors:
        """As :meth:`ImportancePenalty.estimate`; ``key`` also seeds the slices."""
        self._key = key
        return super().estimate(*key)

    def importance_of(self, params: dict[str, torch.nn.Parameter], states: StateBatch) -> Tensors:
        """The SCP importance on ``states``."""
        seed = self.sb3_model.seed if self.sb3_model.seed is not None else 0
        state = np.random.SeedSequence([seed, *self._key]).generate_state(2, dtype=np.uint32)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return scp_importance(self.sb3_model, params, states, self.slices, self.networks, generator=generator)
