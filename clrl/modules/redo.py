"""ReDo: recycle the dormant units of the policy's networks while it trains."""

from __future__ import annotations

from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm

from clrl.algorithms import Networks, check_networks
from clrl.modules.base import ContinualModule, check_non_negative, check_positive_int
from clrl.modules.surgery import check_one_feature_per_unit, reinitialise_units, selected_networks
from clrl.plasticity import Periodic, capture_features, dormant_units, recent_batch


class ReDo(ContinualModule):
    """Recycle dormant units: every ``every`` environment steps, find the τ-dormant units of each hidden
    layer on recent states and reinitialise them.

    A unit is τ-dormant when its mean absolute activation on the batch, divided by the layer's mean, is at
    most ``tau`` (:func:`clrl.plasticity.dormant_units`). Each dormant unit's incoming weights and bias get
    a fresh draw of the layer's initialisation (:func:`clrl.modules.surgery.fresh_linear`), its outgoing
    weights are set to zero, so the network's outputs do not change at the moment of recycling, and the
    optimiser's state (Adam's moments) of every changed entry is zeroed. The states are the
    ``batch_size`` most recent ones of the rollout or replay buffer (their actions for a critic). Recycling
    happens at the end of the rollout that crosses a multiple of ``every``, before the update; with
    ``every`` beyond the run's steps training equals plain SB3 exactly. Layers whose readers are unknown
    (a features extractor's convolutions, CrossQ's normalised layers) are left alone.

    Paper: Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement Learning" (ICML),
    https://arxiv.org/abs/2302.12902

    Deviations: the paper counts its recycling period in gradient steps and samples its batch from the
    replay buffer; clrl counts environment steps (the callback's clock; DQN's ``train_freq=4`` makes 1,000
    environment steps 250 updates) and takes the most recent states (sampling would draw from the
    generators SB3 trains with). It recycles convolutional channels too; clrl recycles ``Linear`` units only.
    PPO's and A2C's layers are redrawn orthogonally with SB3's gains, rows of a fresh matrix.

    Args:
        tau: Dormancy threshold ``τ`` (>= 0). The paper's experiments use 0.025 and 0.1 depending on the
            agent; 0 recycles only units that are zero on every state.
        every: Environment steps between recycling rounds (>= 1; the paper's period is 1,000 updates).
        batch_size: States the dormancy is measured on (>= 1).
        networks: ``"all"`` (default: the actor, critic or value network, and Q-networks) or ``"actor"``.
        verbose: SB3 callback verbosity.
    """

    name = "redo"

    def __init__(
        self,
        tau: float = 0.1,
        every: int = 1000,
        batch_size: int = 256,
        networks: Networks = "all",
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.tau = check_non_negative(tau, "ReDo tau")
        self.every = check_positive_int(every, "ReDo every")
        self.batch_size = check_positive_int(batch_size, "ReDo batch_size")
        self.networks: Networks = check_networks(networks)
        self.recycled = 0
        """Units recycled so far."""
        self.last_recycled = 0
        """Units recycled in the last round."""
        self._due = Periodic(self.every)

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse CReLU layers (:func:`clrl.modules.surgery.check_one_feature_per_unit`)."""
        check_one_feature_per_unit(model, "ReDo")

    def needs_boundaries(self) -> bool:
        """Task-free: recycling runs on a schedule of steps."""
        return False

    def _on_training_start(self) -> None:
        super()._on_training_start()
        self._due = Periodic(self.every)
        self._due.start(self.sb3_model.num_timesteps)

    def _on_rollout_end(self) -> None:
        if self._due.due(self.sb3_model.num_timesteps):
            self.recycle()
        super()._on_rollout_end()

    def recycle(self) -> int:
        """Recycle the dormant units now; return how many there were (0 when the buffer is empty)."""
        model = self.sb3_model
        batch = recent_batch(model, self.batch_size)
        if batch is None:
            return 0
        chosen = set(selected_networks(model, self.networks))
        count = 0
        for layer, features in capture_features(model, *batch).items():
            if layer.network not in chosen or layer.linear is None or not layer.outgoing:
                continue
            units = dormant_units(features, self.tau)
            if units.any():
                reinitialise_units(model, layer.linear, layer.outgoing, units)
                count += int(units.sum())
        self.recycled += count
        self.last_recycled = count
        return count

    def state_dict(self) -> dict[str, Any]:
        """The counts of recycled units."""
        return {"recycled": self.recycled, "last_recycled": self.last_recycled}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.recycled = int(state["recycled"])
        self.last_recycled = int(state["last_recycled"])

    def log_scalars(self) -> dict[str, float]:
        """``recycled`` so far and ``last_recycled`` (the last round's)."""
        return {"recycled": float(self.recycled), "last_recycled": float(self.last_recycled)}
