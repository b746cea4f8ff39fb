"""Generative replay: a generator of earlier tasks' states, labelled by the policy of the end of each task;
nothing of the earlier tasks' data is kept for training."""

from __future__ import annotations

import time
from typing import Any, cast

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from torch import nn

from clrl.algorithms import policy_parameters, samples_per_update
from clrl.errors import ConfigError
from clrl.modules.base import (
    ContinualModule,
    ParamGroup,
    TaskInfo,
    check_non_negative,
    check_positive,
    check_positive_int,
)
from clrl.modules.distill import (
    Frozen,
    check_distillable,
    distillation_losses,
    forked_rng,
    frozen_copy,
    group_parts,
    network_outputs,
    rollout_rows,
    step_rows,
)
from clrl.modules.memory import Reservoir

_PREFETCH = 32
"""Updates whose generated states are drawn and labelled at once."""


def _spread(states: torch.Tensor) -> torch.Tensor:
    """Each feature's standard deviation over ``states`` (at least 1e-6; 1 for a single state)."""
    if len(states) < 2:
        return torch.ones_like(states[0])
    return states.std(0).clamp(min=1e-6)


class StateVAE(nn.Module):
    """A variational autoencoder of flat observations (Kingma & Welling 2014): MLP encoder to a diagonal
    Gaussian ``q(z|x)``, MLP decoder to the mean of a unit-variance Gaussian ``p(x|z)``, on observations
    standardised by a per-feature mean and scale it keeps as buffers.

    Args:
        features: Observation size.
        latent: Size of ``z``.
        hidden: Width of the encoder's and the decoder's hidden layer.
    """

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, features: int, latent: int, hidden: int) -> None:
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, features))
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))

    def loss(self, x: torch.Tensor, beta: float) -> torch.Tensor:
        """The negative evidence lower bound per state (up to a constant), with the KL weighted ``beta``."""
        x = (x - self.mean) / self.scale
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp()
        reconstruction = 0.5 * (self.decoder(z) - x).square().sum(1)
        kl = 0.5 * (mu.square() + log_var.exp() - 1 - log_var).sum(1)
        return (reconstruction + beta * kl).mean()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` observations: ``z ~ N(0, I)`` decoded (the decoder's mean), in the observations' units."""
        device = self.mean.device
        z = torch.randn(n, self.latent, generator=generator, device=device)
        return self.decoder(z) * self.scale + self.mean


class GenerativeReplay(ContinualModule):
    """Generative replay: behaviour cloning of earlier tasks on generated states, with no earlier data kept.

    A generator (a small :class:`StateVAE` of the observations) learns the states of every task so far:
    while a task trains, its states go to a reservoir of ``states`` (a uniform sample of the task); when the
    task ends, the generator trains ``generator_steps`` Adam steps on batches of which ``1/(k+1)`` are the
    task's states and ``k/(k+1)`` its own samples from before (``k`` earlier tasks), so it keeps generating
    them (the generator's own generative replay), starting from its previous weights. The reservoir is then
    emptied; a frozen copy of the policy (the "solver" of the paper) is kept as the labeller. On every later
    update ``batch_size`` generated states ``x̃`` are labelled by the labeller, and

        ``policy_coef · D(labeller_actor(x̃), actor(x̃)) + value_coef · (V(x̃) - V_labeller(x̃))²``

    is back-propagated right after SB3's ``zero_grad`` (:class:`clrl.BehaviourCloning`'s loss, on generated
    instead of stored states). The labeller is the policy at the end of the last task, which itself cloned
    the tasks before on generated states: as in the paper, each task's knowledge reaches the next through
    the previous solver's labels. Generated states are clipped to the observation space's bounds.

    **Fidelity and cost.** ``holdout`` states of each task (never trained on, never replayed) measure the
    generator after each task: ``fidelity`` is the mean over features of the gap between generated and
    held-out states (all tasks so far pooled) in mean and in standard deviation, each relative to the
    held-out standard deviation (0: the first two moments match); ``reconstruction`` is the held-out
    states' reconstruction error, in standardised units; ``generator_seconds`` the generator's training
    time at the last task end.

    Paper: Shin et al. 2017, "Continual Learning with Deep Generative Replay" (NeurIPS); for RL, Atkinson
    et al. 2021, "Pseudo-rehearsal: Achieving deep reinforcement learning without catastrophic forgetting"
    (Neurocomputing).

    Deviations: Shin et al. train a GAN; this generator is a VAE (as Atkinson et al. and van de Ven et al.
    2020 use for its stability at small sizes), with the observations standardised by the mean and scale of
    each task end's training mixture. The solver's loss on generated states is
    the cloning loss of its outputs (the paper mixes generated inputs with their labels into the solver's
    classification loss); off-policy critics are not replayed (their ``Q(s, a)`` needs actions the
    generator does not produce): SAC, TD3 and DQN clone the actor (DQN: its Q-values), PPO and A2C the
    policy and the value. Box observations only (flattened; images included); a Dict observation is
    refused.

    Args:
        batch_size: Generated states per update (default: the algorithm's ``batch_size``, or the rollout
            size for A2C).
        policy_coef: Weight of the actor term (>= 0).
        value_coef: Weight of the value term (>= 0; PPO and A2C). With both weights 0 training equals plain
            SB3.
        states: The current task's reservoir for the generator's training (emptied at the task's end).
        holdout: States of each task kept to measure the generator only.
        latent: The VAE's latent size.
        hidden: The VAE's hidden width.
        generator_steps: The generator's Adam steps at each task end.
        generator_batch: States per generator step.
        generator_lr: The generator's learning rate.
        beta: Weight of the VAE's KL term (1: the evidence lower bound).
        verbose: SB3 callback verbosity.
    """

    name = "generative-replay"

    def __init__(
        self,
        batch_size: int | None = None,
        policy_coef: float = 1.0,
        value_coef: float = 0.5,
        states: int = 10_000,
        holdout: int = 256,
        latent: int = 16,
        hidden: int = 128,
        generator_steps: int = 2_000,
        generator_batch: int = 256,
        generator_lr: float = 1e-3,
        beta: float = 1.0,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        who = type(self).__name__
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, f"{who} batch_size")
        self.policy_coef = check_non_negative(policy_coef, f"{who} policy_coef")
        self.value_coef = check_non_negative(value_coef, f"{who} value_coef")
        self.states = check_positive_int(states, f"{who} states")
        self.holdout = 0 if holdout == 0 else check_positive_int(holdout, f"{who} holdout")
        self.latent = check_positive_int(latent, f"{who} latent")
        self.hidden = check_positive_int(hidden, f"{who} hidden")
        self.generator_steps = check_positive_int(generator_steps, f"{who} generator_steps")
        self.generator_batch = check_positive_int(generator_batch, f"{who} generator_batch")
        self.generator_lr = check_positive(generator_lr, f"{who} generator_lr")
        self.beta = check_non_negative(beta, f"{who} beta")
        self.generator: StateVAE | None = None
        self.labeller: nn.Module | None = None
        self.tasks_learned = 0
        """Tasks the generator has learned."""
        self._reservoir: Reservoir | None = None
        self._held: list[np.ndarray] = []  # each task's held-out states (measurement only)
        self._pending: dict[str, Any] | None = None  # loaded state, materialised when a model is attached
        self._prefetched: dict[str, torch.Tensor] | None = None
        self._cursor = 0
        self._rng = np.random.default_rng(0)
        self._torch_rng: torch.Generator | None = None
        self._last: dict[str, float] = {}
        self.fidelity = float("nan")
        self.reconstruction = float("nan")
        self.generator_seconds = 0.0

    # ------------------------------------------------------------------------------------ checks
    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse non-Box observations and policies whose outputs are not defined (before training)."""
        check_distillable(model, type(self).__name__)
        if not isinstance(model.observation_space, spaces.Box):
            raise ConfigError(
                f"{type(self).__name__} generates Box observations, got "
                f"{type(model.observation_space).__name__}"
            )
        super().check_model(model)

    def _features(self) -> int:
        return int(np.prod(self.sb3_model.observation_space.shape))  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------------ tasks
    def on_task_start(self, task: TaskInfo) -> None:
        """Open the task's reservoir and seed the generators (NumPy's and the generator's torch one)."""
        model = self.sb3_model
        self._materialise()
        seed = model.seed if model.seed is not None else 0
        self._rng = np.random.default_rng([seed, task.index, 2])
        self._torch_rng = torch.Generator(device=model.device)
        self._torch_rng.manual_seed(int(np.random.default_rng([seed, task.index, 3]).integers(2**62)))
        self._reservoir = Reservoir(self.states + self.holdout)
        self._prefetched = None
        self._last = {}

    def _on_step(self) -> bool:
        if isinstance(self.model, OffPolicyAlgorithm) and self._reservoir is not None:
            self._record(step_rows(self.model, self.locals["buffer_actions"])["obs"])
        return True

    def _on_rollout_end(self) -> None:
        if isinstance(self.model, OnPolicyAlgorithm) and self._reservoir is not None:
            self._record(rollout_rows(self.model)["obs"])
        super()._on_rollout_end()

    def _record(self, obs: np.ndarray) -> None:
        assert self._reservoir is not None
        self._reservoir.add({"obs": obs.reshape(len(obs), -1).astype(np.float32)}, self._rng)

    def on_task_end(self, task: TaskInfo) -> None:
        """Train the generator on the task's states and its own samples of the earlier tasks', measure it,
        keep the policy as the labeller, and empty the reservoir."""
        reservoir, self._reservoir = self._reservoir, None
        if reservoir is None or len(reservoir) == 0:
            return
        states = reservoir.rows()["obs"]
        order = self._rng.permutation(len(states))
        held = min(self.holdout, len(states) // 10)
        self._held.append(states[order[:held]])
        start = time.process_time()
        self._train_generator(states[order[held:]])
        self.generator_seconds = time.process_time() - start
        self._measure()
        self.labeller = frozen_copy(self.sb3_model)
        self.tasks_learned += 1
        self._prefetched = None

    def _train_generator(self, states: np.ndarray) -> None:
        model = self.sb3_model
        device = model.device
        previous = self.generator
        real = torch.as_tensor(states, device=device)
        earlier = self.tasks_learned
        old_count = round(self.generator_batch * earlier / (earlier + 1))
        # The VAE's initialisation and noise come from its own seed, not from training's generators.
        with forked_rng(device):
            torch.manual_seed(int(self._rng.integers(2**62)))
            generator = StateVAE(self._features(), self.latent, self.hidden).to(device)
            if previous is not None:
                generator.load_state_dict(previous.state_dict())
            with torch.no_grad():  # standardised by the training mixture's moments
                mixture = real
                if previous is not None:
                    mixture = torch.cat([real, previous.sample(len(real), self._torch_rng)])
                generator.mean.copy_(mixture.mean(0))
                generator.scale.copy_(_spread(mixture))
            optimizer = torch.optim.Adam(generator.parameters(), lr=self.generator_lr)
            for _ in range(self.generator_steps):
                index = torch.as_tensor(self._rng.integers(0, len(real), self.generator_batch - old_count))
                batch = real[index.to(device)]
                if previous is not None and old_count:
                    with torch.no_grad():
                        batch = torch.cat([batch, previous.sample(old_count, self._torch_rng)])
                loss = generator.loss(batch, self.beta)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        generator.requires_grad_(False)
        generator.eval()
        self.generator = generator

    def _measure(self) -> None:
        """``fidelity`` and ``reconstruction`` of the generator on every task's held-out states."""
        assert self.generator is not None
        held = [h for h in self._held if len(h)]
        if not held:
            return
        device = self.sb3_model.device
        real = torch.as_tensor(np.concatenate(held), device=device)
        with torch.no_grad():
            fake = self._clip(self.generator.sample(max(len(real), 256), self._torch_rng))
            spread = _spread(real)
            gap_mean = ((fake.mean(0) - real.mean(0)).abs() / spread).mean()
            gap_std = ((fake.std(0) - real.std(0)).abs() / spread).mean()
            self.fidelity = float(gap_mean + gap_std) / 2
            x = (real - self.generator.mean) / self.generator.scale
            mu, _ = self.generator.encoder(x).chunk(2, dim=1)
            self.reconstruction = float((self.generator.decoder(mu) - x).square().mean())

    def _clip(self, states: torch.Tensor) -> torch.Tensor:
        """Generated flat states clipped to the observation space's finite bounds."""
        space = cast(spaces.Box, self.sb3_model.observation_space)
        low = torch.as_tensor(space.low.reshape(-1), dtype=states.dtype, device=states.device)
        high = torch.as_tensor(space.high.reshape(-1), dtype=states.dtype, device=states.device)
        return torch.maximum(torch.minimum(states, high), low)

    # ------------------------------------------------------------------------------------ training
    def _parts_weights(self) -> bool:
        return self.policy_coef > 0 or self.value_coef > 0

    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The actor's parameters (PPO and A2C: the value's too) once a task has been learned."""
        if self.generator is None or self.labeller is None or not self._parts_weights():
            return {}
        model = self.sb3_model
        return policy_parameters(model, "all" if isinstance(model, OnPolicyAlgorithm) else "actor")

    def _batch_size(self) -> int:
        return self.batch_size if self.batch_size is not None else samples_per_update(self.sb3_model)

    def _draw(self) -> dict[str, torch.Tensor]:
        """One update's generated states and their labels (those of ``_PREFETCH`` updates made at once)."""
        if self._prefetched is None or self._cursor == _PREFETCH:
            assert self.generator is not None and self.labeller is not None
            model = self.sb3_model
            n = self._batch_size()
            with torch.no_grad():
                flat = self._clip(self.generator.sample(n * _PREFETCH, self._torch_rng))
                rows: Any = {
                    "obs": flat.view(-1, *model.observation_space.shape),  # type: ignore[misc]
                    "action": torch.zeros(len(flat), 1, device=model.device),
                }
                labeller = cast(BaseAlgorithm, Frozen(self.labeller, model.device))
                labels = network_outputs(labeller, rows, self._parts())
            self._prefetched = {"obs": rows["obs"], **{f"out.{k}": v for k, v in labels.items()}}
            self._cursor = 0
        n = self._batch_size()
        at = slice(self._cursor * n, (self._cursor + 1) * n)
        self._cursor += 1
        return {k: v[at] for k, v in self._prefetched.items()}

    def _parts(self) -> tuple[Any, ...]:
        return ("actor", "critic") if isinstance(self.sb3_model, OnPolicyAlgorithm) else ("actor",)

    def extra_loss(self, group: ParamGroup) -> torch.Tensor | None:
        """The cloning loss of the parts ``group``'s optimiser steps, on generated states."""
        model = self.sb3_model
        parts = [p for p in group_parts(model, group.optimizer_name, "all") if p in self._parts()]
        if not parts:
            return None
        batch = self._draw()
        rows: Any = {"obs": batch["obs"], "action": torch.zeros(len(batch["obs"]), 1, device=model.device)}
        old = {k[4:]: v for k, v in batch.items() if k.startswith("out.")}
        losses = distillation_losses(model, old, network_outputs(model, rows, parts))
        loss: torch.Tensor | None = None
        if "actor" in losses:
            self._last["actor_loss"] = losses["actor"].item()
            loss = self.policy_coef * losses["actor"]
        if "critic" in losses:
            self._last["value_loss"] = losses["critic"].item()
            term = self.value_coef * losses["critic"]
            loss = term if loss is None else loss + term
        return loss

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The generator, the labeller, the held-out states, the count of tasks learned and the generator's
        last measurements (``fidelity``, ``reconstruction``)."""
        if self._pending is not None:
            return dict(self._pending)
        state: dict[str, Any] = {
            "tasks_learned": self.tasks_learned,
            "held": [torch.from_numpy(h) for h in self._held],
            "fidelity": self.fidelity,
            "reconstruction": self.reconstruction,
        }
        if self.generator is not None:
            state["generator"] = {k: v.detach().clone() for k, v in self.generator.state_dict().items()}
        if self.labeller is not None:
            state["labeller"] = {k: v.detach().clone() for k, v in self.labeller.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the networks are built when the module is next attached)."""
        self.generator, self.labeller = None, None
        self._pending = dict(state)
        if getattr(self, "model", None) is not None:
            self._materialise()

    def _materialise(self) -> None:
        state, self._pending = self._pending, None
        if state is None:
            return
        model = self.sb3_model
        self.tasks_learned = int(state["tasks_learned"])
        self.fidelity = float(state.get("fidelity", float("nan")))
        self.reconstruction = float(state.get("reconstruction", float("nan")))
        self._held = [torch.as_tensor(h).cpu().numpy() for h in state["held"]]
        if "generator" in state:
            device = model.device
            # Built after a resume restored the random generators: its initialisation, which the saved
            # weights replace, must not draw from them.
            with forked_rng(device):
                generator = StateVAE(self._features(), self.latent, self.hidden).to(device)
            generator.load_state_dict(state["generator"])
            generator.requires_grad_(False)
            self.generator = generator.eval()
        if "labeller" in state:
            self.labeller = frozen_copy(model)
            self.labeller.load_state_dict(state["labeller"])

    def log_scalars(self) -> dict[str, float]:
        """The last update's ``actor_loss`` and ``value_loss``; the generator's ``fidelity``,
        ``reconstruction`` and ``generator_seconds`` at the last task end; its ``parameters``."""
        parameters = 0 if self.generator is None else sum(p.numel() for p in self.generator.parameters())
        measured = {"fidelity": self.fidelity, "reconstruction": self.reconstruction}
        if self.generator is None:
            measured = {}
        return {
            **self._last,
            **measured,
            "generator_seconds": self.generator_seconds,
            "parameters": float(parameters),
        }
