"""SupSup: a fixed random network and one learned supermask per task, with the task inferred from the masks'
superposition when it is hidden."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.dqn.policies import DQNPolicy
from stable_baselines3.sac.policies import SACPolicy

from clrl.algorithms import Networks
from clrl.errors import ConfigError
from clrl.modules.base import TaskInfo, check_bool, check_fraction, patch_attributes
from clrl.modules.masks import TaskMasks, set_backbone_trainable


def check_entropy(policy: Any) -> None:
    """Raise :class:`clrl.ConfigError` unless :func:`output_entropy` supports ``policy``: PPO and A2C on
    discrete actions, DQN, SAC (TD3's actor is deterministic; an actor-critic policy's entropy on continuous
    actions does not depend on the observation)."""
    if isinstance(policy, DQNPolicy | SACPolicy) or (
        isinstance(policy, ActorCriticPolicy) and isinstance(policy.action_space, spaces.Discrete)
    ):
        return
    raise ConfigError(
        f"SupSup infers the task from the entropy of the policy's output, which {type(policy).__name__} on "
        f"{policy.action_space} does not give (supported: PPO and A2C on discrete actions, DQN, SAC)"
    )


def output_entropy(policy: Any, obs: torch.Tensor) -> torch.Tensor:
    """The entropy of the policy's output on each observation: the action distribution's (PPO, A2C with
    discrete actions), the softmax of the Q-values' (DQN), or the Gaussian's before squashing, up to a
    constant (SAC). Other policies: see :func:`check_entropy`."""
    check_entropy(policy)
    if isinstance(policy, DQNPolicy):
        return torch.distributions.Categorical(logits=policy.q_net(obs)).entropy()
    if isinstance(policy, SACPolicy):
        _, log_std, _ = policy.actor.get_action_dist_params(obs)
        return log_std.sum(dim=-1)
    return policy.get_distribution(obs).entropy()


class SupSup(TaskMasks):
    """SupSup: the hidden layers' weights are fixed at random and never train; each task learns a supermask
    over them (and its own output heads), and the task can be inferred from the masks when it is hidden.

    The masks live in the algorithm's masked policy (:func:`clrl.masked_policy`, as for
    :class:`clrl.Piggyback`). When the first task starts, every masked layer's weights are drawn again from
    the signed Kaiming constant (``±sqrt(2 / fan_in)``, signs at random from torch's generator, which SB3
    seeds) and its biases set to zero; they never change after. Task ``t`` trains real-valued scores (Kaiming
    uniform at its start, as edge-popup's), and its mask keeps the ``keep`` share of each layer's weights with
    the largest ``|score|`` (edge-popup); the gradient reaches the scores straight through the top-k. When
    the task ends its mask is stored as bits, so each task's policy is exactly what it ended with.

    With ``infer_task=True`` (the default on a stream that hides the id) the task id is not needed: SupSup is
    the only method of clrl's architectural family that runs on such a stream. Training uses the current
    task's mask (the stream's boundaries say which), and at evaluation every call of the policy infers the
    task from the observations it is given by the paper's one-shot rule: with the masks of the ``k`` tasks
    so far superposed with weights ``α = 1/k`` (the heads too: ``Σ_i α_i head_i``), the task is
    ``argmin_i ∂H/∂α_i``, with ``H`` the mean entropy of the policy's output (:func:`output_entropy`). The
    evaluator's task index is then used only to log how often the inference was right
    (``cl/supsup/inferred``).

    Paper: Wortsman et al. 2020, "Supermasks in Superposition" (NeurIPS); edge-popup: Ramanujan et al. 2020,
    "What's Hidden in a Randomly Weighted Neural Network?" (CVPR).

    Deviations: the paper masks every layer, the output layer included, of bias-free networks; here each
    task's output layers are its own trained heads (a masked fixed output layer cannot reach values on the
    scale of returns), and the biases are fixed at zero. The paper has no critic: by default
    (``networks="actor"``) only what chooses actions is masked, and the critics and value function (and
    their targets) train as plain layers, from SB3's initialisation, on every task, with a head per task;
    ``networks="all"`` masks them too, and then a fixed random critic under a mask cannot follow the scale
    of returns (with SAC on Pendulum its TD loss grew to 80 times plain SAC's and no task was learned).
    The paper infers one task per batch of test images; here a batch is what the policy is called on,
    one observation per environment at each evaluation step, so the inference sees one state at a time.

    Args:
        keep: Share of each hidden layer's weights a task's mask keeps (edge-popup's ``k``), in (0, 1].
        infer_task: Infer the task at evaluation instead of reading its id (``None``, the default: when
            ``clrl.train``'s stream hides the id; ``False`` refuses such a stream).
        verbose: SB3 callback verbosity.
        networks: ``"actor"`` (default) masks the networks that choose actions (DQN's Q-network, the actor
            of SAC and TD3, PPO's and A2C's policy network) and lets critics and value functions train
            freely; ``"all"`` masks every network over fixed random weights.
    """

    name = "supsup"

    def __init__(
        self,
        keep: float = 0.5,
        infer_task: bool | None = None,
        verbose: int = 0,
        networks: Networks = "actor",
    ) -> None:
        super().__init__(require_task_id=False, verbose=verbose, networks=networks)
        self.infer_task = None if infer_task is None else check_bool(infer_task, "SupSup infer_task")
        self.keep = check_fraction(keep, "SupSup keep")
        if self.keep == 0:
            raise ConfigError("SupSup keep must be > 0: a mask has to keep some weights")
        self.initialised = False
        """Whether the fixed random weights have been drawn."""
        self._infer = bool(infer_task)  # resolved by check_stream when infer_task is None
        self._evaluated: int | None = None  # the evaluator's task, for the inference's accuracy only
        self._inferred = [0, 0]  # right, total, since the task started

    def check_stream(self, stream: Any) -> None:
        """Infer the task when the stream hides its id (unless ``infer_task=False``, which refuses it)."""
        hidden = stream.task_id == "hidden"
        if hidden and self.infer_task is False:
            raise ConfigError(
                f"SupSup(infer_task=False) routes samples by their task id, but stream {stream.name!r} hides "
                "it; leave infer_task unset (or True) to infer the task from the masks"
            )
        self._infer = hidden if self.infer_task is None else self.infer_task
        super().check_stream(stream)

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse a policy without masks, and one whose output has no entropy when inferring the task."""
        super().check_model(model)
        if self._infer:
            check_entropy(model.policy)

    def start_masks(self, task: TaskInfo) -> None:
        """Draw the fixed weights (first task only), freeze them, and start the task's scores."""
        online = self.online_layers()
        with torch.no_grad():
            if not self.initialised:
                for layer in online:
                    sign = torch.randint(0, 2, layer.weight.shape, device=layer.weight.device) * 2 - 1
                    layer.weight.copy_(sign * math.sqrt(2.0 / layer.in_features))
                    if layer.bias is not None:
                        layer.bias.zero_()
                for source, target in self.target_pairs():
                    target.weight.copy_(source.weight)
                    if target.bias is not None and source.bias is not None:
                        target.bias.copy_(source.bias)
                self.initialised = True
            for layer in online:
                torch.nn.init.kaiming_uniform_(layer.scores, a=math.sqrt(5))
        for layer in self.layers():
            layer.live_task, layer.rule = task.index, ("keep", self.keep)
            layer.scores.requires_grad_(True)
        set_backbone_trainable(self.layers(), False)
        self._inferred = [0, 0]

    def on_task_start(self, task: TaskInfo) -> None:
        """As :class:`TaskMasks`; with ``infer_task``, training uses the task's mask whatever the
        observation says."""
        super().on_task_start(task)
        if self._infer:
            self._router().forced = task.index

    def set_task(self, index: int) -> None:
        """Select task ``index``'s mask and heads; with ``infer_task``, only note it (to count whether the
        inference finds it): the policy infers the task itself."""
        if not self._infer:
            super().set_task(index)
            return
        self._evaluated = index

    def infer(self, obs: torch.Tensor) -> int:
        """The task whose mask the one-shot rule picks for the observations ``obs`` (a preprocessed batch)."""
        router = self._router()
        k = self.task_index + 1
        if k <= 1:
            return 0
        alpha = torch.full((k,), 1.0 / k, device=obs.device, requires_grad=True)
        router.alpha = alpha
        try:
            with torch.enable_grad():
                entropy = output_entropy(self.sb3_model.policy, obs).mean()
                (grad,) = torch.autograd.grad(entropy, alpha)
        finally:
            router.alpha = None
        return int(grad.argmin())

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """With ``infer_task``: every call of the policy infers its task first."""
        if not self._infer or getattr(self, "model", None) is None:
            yield
            return
        policy: Any = self.sb3_model.policy
        router = self._router()
        original = policy._predict

        def predict(observation: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
            task = self.infer(observation)
            if self._evaluated is not None:
                self._inferred[0] += int(task == self._evaluated)
                self._inferred[1] += 1
            router.forced = task
            return original(observation, deterministic)

        undo = patch_attributes(policy, _predict=predict)
        try:
            yield
        finally:
            undo()
            router.forced = self.task_index
            self._evaluated = None

    def log_scalars(self) -> dict[str, float]:
        """``kept`` (as :class:`TaskMasks`); with ``infer_task``, ``inferred``: the share of the policy's
        calls at evaluation, since the task started, whose inferred task was the one evaluated."""
        scalars = super().log_scalars()
        right, total = self._inferred
        if total:
            scalars["inferred"] = right / total
        return scalars

    def state_dict(self) -> dict[str, Any]:
        """The last task trained, whether the fixed weights were drawn and whether the task is inferred."""
        return {**super().state_dict(), "initialised": self.initialised, "infer": self._infer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.initialised = bool(state.get("initialised", False))
        self._infer = bool(state.get("infer", self._infer))
