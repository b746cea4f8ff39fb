"""Activations with layer normalisation, for SB3's MLPs (``policy_kwargs.activation_fn``).

SB3 builds each hidden layer as ``Linear`` followed by an ``activation_fn()`` instance, so a normalisation
placed inside the activation normalises every hidden layer without a custom policy. Layer normalisation
keeps pre-activations centred and scaled, which Lyle et al. 2023 ("Understanding Plasticity in Neural
Networks", ICML, https://arxiv.org/abs/2303.01486) found to preserve plasticity across task changes.

``activation_fn = "layernorm-relu"`` (or ``"layernorm-tanh"``) in a preset or ``--hp`` selects them;
in Python, ``policy_kwargs={"activation_fn": clrl.networks.LayerNormReLU}``.

Deviation: the normalisation has no learned gain and bias (``elementwise_affine=False``, the variant the
Parseval paper's code calls ``layer_norm_no_params``): SB3 creates the activation without the layer's
width, so it cannot create per-unit parameters before the optimiser is built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _LayerNormActivation(nn.Module):
    """``activation((x - mean(x)) / sqrt(var(x) + eps))`` over the last dimension (the layer's units)."""

    eps = 1e-5

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(F.layer_norm(x, x.shape[-1:], eps=self.eps))


class LayerNormReLU(_LayerNormActivation):
    """Layer normalisation (no learned parameters) followed by ReLU."""

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


class LayerNormTanh(_LayerNormActivation):
    """Layer normalisation (no learned parameters) followed by tanh."""

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


NORMALISED_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "layernorm-relu": LayerNormReLU,
    "layernorm-tanh": LayerNormTanh,
}
"""The activations above by the name a preset or ``--hp`` gives them."""
