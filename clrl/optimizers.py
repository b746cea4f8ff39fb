"""Optimisers for SB3's ``policy_kwargs.optimizer_class`` that keep a network able to learn.

SB3 builds each optimiser as ``optimizer_class(parameters, lr=learning_rate, **optimizer_kwargs)`` and
saves, loads and re-targets its learning rate through ``param_groups``. :class:`TRACAdam` fits that call,
so ``PPO("MlpPolicy", env, policy_kwargs={"optimizer_class": clrl.optimizers.TRACAdam})`` trains, saves and
loads like any SB3 model (with plain ``PPO.load`` too), and clrl's modules hook it as they hook Adam. In a
preset or ``--hp``, ``optimizer_class = "trac-adam"`` selects it (:func:`clrl.presets.optimizer_class`).

This module needs the ``trac`` extra (``pip install "clrl[trac]"``): the update is pytorch-optimizer's
``TRAC`` (a maintained collection of optimisers), not a copy of it here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from pytorch_optimizer import TRAC


class TRACAdam(TRAC):
    """TRAC around Adam: a parameter-free scale on Adam's progress away from the initial weights.

    TRAC keeps the weights at ``θ_t = θ_ref + s_t · Σ_{k≤t} Δ_k``: ``θ_ref`` are the weights before its
    first step, ``Δ_k`` Adam's update at step ``k`` (computed at the current weights) and ``s_t`` a scale
    that online learners at six discounts (``β`` from 0.9 to 0.999999) tune from
    ``h_t = ⟨g_t, Σ_{k<t} Δ_k⟩``. The scale starts at zero (its first values of the order of ``s_prev =
    1e-8``), grows while the gradients keep favouring the direction travelled, and falls back to zero,
    returning the weights to ``θ_ref``, when they stop doing so (after a task change). Nothing is tuned:
    ``β``, ``s_prev`` and ``eps`` are pytorch-optimizer's defaults, the paper's.

    As in the authors' code, the travelled direction is recovered from the weights, ``(θ_t - θ_ref) /
    s_t``: in float32, while ``s_t`` is tiny, only parameters that start at zero (SB3's biases) carry it
    exactly, and they are what first lets the scale grow.

    Paper: Muppidi, Zhang & Yang 2024, "Fast TRAC: A Parameter-Free Optimizer for Lifelong Reinforcement
    Learning" (NeurIPS), https://arxiv.org/abs/2405.16642

    Deviation: the update is pytorch-optimizer's ``TRAC`` (its ``erfi`` by the same 128-term series as the
    authors' code), not the authors' ``trac-optimizer`` package, whose state is keyed by parameter tensors
    so that the first step after SB3 loads a saved optimiser raises ``KeyError``, and which writes a log
    line at every step.

    Args:
        params: The parameters (SB3 passes the policy's, or one network's).
        lr: Adam's learning rate (SB3 passes ``learning_rate`` and updates it in ``param_groups``).
        **adam_kwargs: Adam's other arguments (``betas``, ``eps``, ``weight_decay``, ...; SB3's
            ``optimizer_kwargs``).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, **adam_kwargs: Any) -> None:
        super().__init__(torch.optim.Adam(params, lr=lr, **adam_kwargs))

    def register_load_state_dict_pre_hook(self, hook: Any, prepend: bool = False) -> Any:
        """Register ``hook`` on the Adam inside, which loads the saved state (``TRAC.load_state_dict``
        hands it on); TRAC itself keeps no load hooks."""
        return self.optimizer.register_load_state_dict_pre_hook(hook, prepend=prepend)

    @property
    def scale(self) -> float:
        """TRAC's current scale ``max(s_t, 0)`` on Adam's progress (0 before the first step)."""
        trac = self.state.get("trac")
        return max(float(trac["s"].sum()), 0.0) if trac is not None else 0.0
