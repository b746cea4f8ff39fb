"""DualNet: a slow representation learned by self-supervision on replayed observations, and a fast network
that adapts it to the current task."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.preprocessing import get_flattened_obs_dim, preprocess_obs
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn
from torch.nn import functional as F

from clrl.algorithms import policy_parameters
from clrl.errors import ConfigError
from clrl.modules.base import (
    ParamGroup,
    TaskInfo,
    check_bool,
    check_fraction,
    check_non_negative,
    check_positive,
    check_positive_int,
)
from clrl.modules.distill import StateRecorder
from clrl.modules.memory import Budget, MemoryDtype, MemoryModule, Rows


class DualNetExtractor(BaseFeaturesExtractor):
    """DualNet's two networks as an SB3 features extractor for vector (``Box``) observations.

    The slow network is an MLP, ``h_l = relu(S_l h_{l-1})`` with ``h_0`` the flattened observation. The fast
    network has layers of the same widths, each gated by the slow layer beside it:
    ``m_l = relu(F_l m_{l-1}) ⊙ h_l / rms(h_l)`` with ``m_0 = h_0`` (the paper's element-wise
    transformation of the slow features by the fast learner; ``rms`` is the root mean square over the layer's
    units, so the gate is of order one whatever scale the slow features take: the self-supervised loss
    standardises them and leaves their scale free, and products of raw activations shrink layer after
    layer). The features are ``m_L``: the policy's own network (``net_arch``) and heads follow as usual. A
    projector (two linear layers) maps ``h_L`` to the space of the self-supervised loss; it is used by
    :class:`DualNet` only.

    Use it with ``policy_kwargs={"features_extractor_class": clrl.DualNetExtractor}`` (any SB3 policy; with
    SAC/TD3 the actor and each critic get one, unless ``share_features_extractor``).

    Args:
        observation_space: A ``Box`` space (flattened).
        net_arch: Widths of the slow network's layers (the fast network's are the same).
        projector_dim: Width of the projector's layers.
        slow_learns_from_rl: Let the algorithm's loss train the slow network too (the authors' code does).
            Default: the slow network learns from :class:`DualNet`'s self-supervised loss only, and runs
            without gradient in the algorithm's passes.
    """

    def __init__(
        self,
        observation_space: gym.Space,
        net_arch: Sequence[int] = (64, 64),
        projector_dim: int = 128,
        slow_learns_from_rl: bool = False,
    ) -> None:
        if not isinstance(observation_space, gym.spaces.Box):
            raise ConfigError(
                f"DualNetExtractor takes vector (Box) observations, got {type(observation_space).__name__}"
            )
        widths = [check_positive_int(w, "DualNetExtractor net_arch width") for w in net_arch]
        if not widths:
            raise ConfigError("DualNetExtractor net_arch needs at least one layer")
        super().__init__(observation_space, widths[-1])
        sizes = [get_flattened_obs_dim(observation_space), *widths]
        self.slow = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
        self.fast = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
        width = check_positive_int(projector_dim, "DualNetExtractor projector_dim")
        self.projector = nn.Sequential(nn.Linear(widths[-1], width), nn.ReLU(), nn.Linear(width, width))
        self.slow_learns_from_rl = check_bool(slow_learns_from_rl, "DualNetExtractor slow_learns_from_rl")

    def slow_features(self, observations: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's output ``h_1 ... h_L`` of the slow network."""
        h = torch.flatten(observations, 1)
        features = []
        for layer in self.slow:
            h = F.relu(layer(h))
            features.append(h)
        return features

    def project(self, observations: torch.Tensor) -> torch.Tensor:
        """The projector's output on the slow network's features (the self-supervised embedding)."""
        return self.projector(self.slow_features(observations)[-1])

    def slow_parameters(self) -> list[nn.Parameter]:
        """The parameters the self-supervised loss trains: the slow network's and the projector's."""
        return [*self.slow.parameters(), *self.projector.parameters()]

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.slow_learns_from_rl):
            slow = self.slow_features(observations)
        m = torch.flatten(observations, 1)
        for layer, h in zip(self.fast, slow, strict=True):
            m = F.relu(layer(m)) * (h * torch.rsqrt(h.pow(2).mean(1, keepdim=True) + 1e-6))
        return m


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, redundancy_weight: float) -> torch.Tensor:
    """Barlow Twins: ``Σ_i (1 - C_ii)² + w Σ_{i≠j} C_ij²`` with ``C`` the cross-correlation matrix of the two
    batches of embeddings, each standardised per dimension over the batch (population standard deviation:
    identical views give 0)."""
    n = z1.shape[0]
    a = (z1 - z1.mean(0)) / (z1.std(0, correction=0) + 1e-5)
    b = (z2 - z2.mean(0)) / (z2.std(0, correction=0) + 1e-5)
    c = a.T @ b / n
    diagonal = torch.diagonal(c)
    return (diagonal - 1).pow(2).sum() + redundancy_weight * (c.pow(2).sum() - diagonal.pow(2).sum())


def dualnet_extractors(model: BaseAlgorithm) -> dict[str, DualNetExtractor]:
    """The model's :class:`DualNetExtractor`\\ s that an optimiser steps, by name relative to ``model.policy``
    (target networks, which SB3 updates by copying, are left out)."""
    stepped = {id(p) for p in policy_parameters(model, "all").values()}
    return {
        name: module
        for name, module in model.policy.named_modules()
        if isinstance(module, DualNetExtractor) and any(id(p) in stepped for p in module.slow_parameters())
    }


class DualNet(StateRecorder, MemoryModule):
    """DualNet: a slow representation network trained by a self-supervised loss on replayed observations,
    and a fast network, trained by the algorithm, that adapts the slow features to the current task.

    The two networks are the policy's :class:`DualNetExtractor` (build the model with
    ``policy_kwargs={"features_extractor_class": clrl.DualNetExtractor}``): in SB3's terms the features
    extractor holds both learners, and the policy's ``net_arch`` and heads sit on the fast network's output.
    The algorithm's loss trains the fast network, the policy's network and heads (and, only with
    ``slow_learns_from_rl``, the slow network).

    Every observation the agent trains on is offered to a per-task-balanced reservoir (``budget`` states
    over all tasks, as :class:`clrl.Replay` keeps them). Every ``ssl_every`` optimiser steps of an optimiser
    that holds an extractor, the slow network and the projector of that extractor take a **look-ahead**
    update (as the authors' code does): from ``θ₀``, ``ssl_steps`` Adam steps (``ssl_lr``) on the Barlow
    Twins loss of two augmentations of ``ssl_batch_size`` replayed observations of every task so far (the
    current one included), then ``θ ← θ₀ + lookahead · (θ - θ₀)``.

    **Augmentations for vector observations** (images get crops and colour jitter in the paper; vectors
    have neither): each view adds Gaussian noise of ``noise`` times each feature's standard deviation in
    the replayed batch, then replaces each entry, with probability ``mask_prob``, by that feature's batch
    mean. The two views of an observation are drawn independently.

    Relative to the paper: there is no supervised replay (states carry no labels; replaying returns is
    :class:`clrl.Replay`'s and :class:`clrl.CLEAR`'s job, and they combine with this module), the fast
    network gates each slow layer of an MLP instead of a ResNet's blocks, and the slow network by default
    learns from the self-supervised loss alone. The self-supervised loss needs no task id, so a stream
    with a hidden task id is accepted.

    Cost: per ``ssl_every`` optimiser steps, ``ssl_steps`` forward and backward passes of the slow network
    and projector on ``2 · ssl_batch_size`` observations; the memory holds ``budget`` observations.

    Paper: Pham, Liu & Hoi 2021, "DualNet: Continual Learning, Fast and Slow" (NeurIPS),
    https://arxiv.org/abs/2110.00175

    Args:
        budget: Observations kept over all tasks (``"all"``: unbounded).
        ssl_every: Optimiser steps between two look-ahead updates of the slow network (``K``).
        ssl_steps: Adam steps of each look-ahead update (``0``: the slow network never learns).
        ssl_batch_size: Replayed observations per self-supervised step (each gives two views).
        ssl_lr: Learning rate of the self-supervised Adam optimiser (> 0).
        lookahead: Interpolation ``β`` of the look-ahead, in [0, 1] (1: keep the inner steps' result).
        redundancy_weight: Weight ``w`` of the Barlow Twins off-diagonal (redundancy) term (>= 0).
        noise: Scale of the Gaussian noise of the augmentations, relative to each feature's spread (>= 0).
        mask_prob: Probability that an augmentation replaces an entry by its batch mean, in [0, 1].
        memory_dtype: How the memory stores floating-point fields: ``"float32"`` (default, as given),
            ``"float16"`` (half the bytes, float16's precision) or ``"uint8"`` (a quarter, per-feature codes
            within 1/255 of each feature's range; see :class:`clrl.modules.memory.Reservoir`).
        verbose: SB3 callback verbosity.
    """

    name = "dualnet"

    def __init__(
        self,
        budget: Budget = 20_000,
        ssl_every: int = 4,
        ssl_steps: int = 2,
        ssl_batch_size: int = 256,
        ssl_lr: float = 1e-3,
        lookahead: float = 0.1,
        redundancy_weight: float = 5e-3,
        noise: float = 0.1,
        mask_prob: float = 0.1,
        memory_dtype: MemoryDtype = "float32",
        verbose: int = 0,
    ) -> None:
        super().__init__(budget, require_task_id=False, verbose=verbose, memory_dtype=memory_dtype)
        self.ssl_every = check_positive_int(ssl_every, "DualNet ssl_every")
        zero = not isinstance(ssl_steps, bool) and ssl_steps == 0
        self.ssl_steps = 0 if zero else check_positive_int(ssl_steps, "DualNet ssl_steps (or 0)")
        self.ssl_batch_size = check_positive_int(ssl_batch_size, "DualNet ssl_batch_size")
        if self.ssl_batch_size < 2:
            raise ConfigError("DualNet ssl_batch_size must be at least 2 (the loss standardises over it)")
        self.ssl_lr = check_positive(ssl_lr, "DualNet ssl_lr")
        self.lookahead = check_fraction(lookahead, "DualNet lookahead")
        self.redundancy_weight = check_non_negative(redundancy_weight, "DualNet redundancy_weight")
        self.noise = check_non_negative(noise, "DualNet noise")
        self.mask_prob = check_fraction(mask_prob, "DualNet mask_prob")
        self.extractors: dict[str, DualNetExtractor] = {}
        """The model's extractors this module trains, by name relative to ``model.policy``."""
        self.steps: dict[str, int] = {}
        """Optimiser steps seen per optimiser, over all tasks."""
        self.ssl_updates = 0
        """Look-ahead updates made, over all tasks (all extractors)."""
        self._optimizers: dict[str, torch.optim.Adam] = {}
        self._pending: dict[str, Any] = {}
        self._generator = torch.Generator()
        self._last_loss: float | None = None

    # ------------------------------------------------------------------------------------ task boundaries
    def on_task_start(self, task: TaskInfo) -> None:
        """Find the extractors, build (or restore) their optimisers, open the task's reservoir, seed the
        augmentations."""
        model = self.sb3_model
        self.extractors = dualnet_extractors(model)
        if not self.extractors:
            algo = type(model).__name__
            raise ConfigError(
                f"DualNet needs a DualNetExtractor in the policy; build the model with "
                f"{algo}('MlpPolicy', env, "
                f"policy_kwargs={{'features_extractor_class': clrl.DualNetExtractor}})"
            )
        for name, extractor in self.extractors.items():
            if name not in self._optimizers:
                self._optimizers[name] = torch.optim.Adam(extractor.slow_parameters(), lr=self.ssl_lr)
            if name in self._pending:
                self._optimizers[name].load_state_dict(self._pending.pop(name))
        self.open_task(task)
        seed = model.seed if model.seed is not None else 0
        draw = np.random.default_rng([seed, task.index, 3]).integers(2**62)
        self._generator = torch.Generator().manual_seed(int(draw))
        self._last_loss = None

    def record_states(self, rows: Rows) -> None:
        """Keep the observations only (the self-supervised loss needs neither actions nor hidden states)."""
        self.memory.record({k: v for k, v in rows.items() if k == "obs" or k.startswith("obs.")}, self._rng)

    # ------------------------------------------------------------------------------------ training
    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The extractors' parameters (their optimisers' steps are counted)."""
        return {
            f"{name}.{key}": p
            for name, extractor in self.extractors.items()
            for key, p in extractor.named_parameters()
        }

    def after_update(self, group: ParamGroup) -> None:
        """Every ``ssl_every`` steps of ``group``'s optimiser, a look-ahead update of the slow network of each
        extractor it steps."""
        n = self.steps[group.optimizer_name] = self.steps.get(group.optimizer_name, 0) + 1
        if n % self.ssl_every or self.ssl_steps == 0 or len(self.memory) < 2:
            return
        for name in self.extractors:
            if any(p.startswith(name + ".") for p in group.names):
                self.ssl_update(name)

    def augment(self, observations: torch.Tensor) -> torch.Tensor:
        """One random view of a batch of (preprocessed) observations: feature-scaled Gaussian noise, then
        entries masked to their batch mean with probability ``mask_prob``."""
        std, mean = observations.std(0, keepdim=True), observations.mean(0, keepdim=True)
        shape = observations.shape
        noise = torch.randn(shape, generator=self._generator).to(observations.device)
        masked = (torch.rand(shape, generator=self._generator) < self.mask_prob).to(observations.device)
        view = observations + self.noise * std * noise
        return torch.where(masked, mean.expand_as(view), view)

    def replay_observations(self, n: int) -> torch.Tensor:
        """``n`` stored observations of every task so far (uniform over all held), preprocessed as the
        policy does."""
        model = self.sb3_model
        rows = self.memory.sample_with_current(n, self._sample_rng)
        obs = torch.as_tensor(rows["obs"], device=model.device)
        processed = preprocess_obs(obs, model.observation_space, model.policy.normalize_images)
        assert isinstance(processed, torch.Tensor)
        return processed.float()

    def ssl_loss(self, name: str, observations: torch.Tensor) -> torch.Tensor:
        """The Barlow Twins loss of extractor ``name`` on two augmentations of ``observations``."""
        extractor = self.extractors[name]
        z1 = extractor.project(self.augment(observations))
        z2 = extractor.project(self.augment(observations))
        return barlow_twins_loss(z1, z2, self.redundancy_weight)

    def ssl_update(self, name: str) -> None:
        """One look-ahead update of extractor ``name``'s slow network and projector."""
        params = self.extractors[name].slow_parameters()
        optimizer = self._optimizers[name]
        start = [p.detach().clone() for p in params]
        for _ in range(self.ssl_steps):
            loss = self.ssl_loss(name, self.replay_observations(self.ssl_batch_size))
            grads = torch.autograd.grad(loss, params)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            optimizer.step()
            for p in params:
                p.grad = None
            self._last_loss = loss.item()
        with torch.no_grad():
            moved = [p.detach() for p in params]
            torch._foreach_sub_(moved, start)
            torch._foreach_mul_(moved, self.lookahead)
            torch._foreach_add_(moved, start)
        self.ssl_updates += 1

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The memory, the step and update counts, and each extractor's self-supervised optimiser (the
        networks themselves are saved with the model's policy)."""
        optimizers_state = {name: opt.state_dict() for name, opt in self._optimizers.items()}
        return {
            **super().state_dict(),
            "steps": dict(self.steps),
            "ssl_updates": self.ssl_updates,
            "optimizers": {**self._pending, **optimizers_state},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the memory, the counts and the optimisers (rebuilt when the module next starts a task)."""
        super().load_state_dict(state)
        self.steps = {k: int(v) for k, v in state["steps"].items()}
        self.ssl_updates = int(state["ssl_updates"])
        self._optimizers = {}
        self._pending = dict(state["optimizers"])

    def log_scalars(self) -> dict[str, float]:
        """``ssl_loss`` (the last self-supervised step's Barlow Twins loss), ``ssl_updates`` so far,
        ``states`` and ``bytes`` held in memory."""
        scalars = {
            "ssl_updates": float(self.ssl_updates),
            "states": float(len(self.memory)),
            "bytes": float(self.memory.nbytes),
        }
        if self._last_loss is not None:
            scalars["ssl_loss"] = self._last_loss
        return scalars
