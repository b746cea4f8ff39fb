"""Continual World's protocol switch: a fresh optimiser state at every task change."""

from __future__ import annotations

from clrl.algorithms import optimizers
from clrl.modules.base import ContinualModule, TaskInfo


class ResetOptimizer(ContinualModule):
    """Reset the state of every optimiser of the model (Adam's moment estimates and step counts; SAC's
    entropy-coefficient optimiser included) when each task after the first starts.

    Not a method against forgetting but a protocol choice that changes results: Adam's moments, estimated
    on the previous task's gradients, otherwise scale the first steps of the next one. Continual World
    resets them at every task change by default (its ``reset_optimizer_on_task_change=True``); SB3 keeps
    them. Combine it with any method: ``clrl.train(..., modules=[clrl.EWC(), clrl.ResetOptimizer()])``,
    ``--method ewc+reset-optimizer``. The learning rate, which SB3 sets before every update from its
    schedule, is not touched.

    Paper: Wołczyk et al. 2021, "Continual World: A Robotic Benchmark For Continual Reinforcement
    Learning" (NeurIPS), the protocol of its experiments.

    Args:
        verbose: SB3 callback verbosity.
    """

    name = "reset-optimizer"

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.resets = 0
        """Task changes at which the optimisers were reset."""

    def on_task_start(self, task: TaskInfo) -> None:
        """Clear every optimiser's state, unless this is the first task the module sees."""
        if self.tasks_seen == 0:
            return
        for optimizer in optimizers(self.sb3_model).values():
            optimizer.state.clear()
        self.resets += 1

    def state_dict(self) -> dict[str, int]:
        """The count of resets."""
        return {"resets": self.resets}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`."""
        self.resets = int(state["resets"])

    def log_scalars(self) -> dict[str, float]:
        """``resets`` so far."""
        return {"resets": float(self.resets)}
