"""Gymnasium wrappers that turn one environment into task variants.

Stream files name these wrappers (``{ name = "PermuteActions", kwargs = { permutation = [1, 0] } }``);
any class of ``gymnasium.wrappers`` can be named the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class PermuteActions(gym.ActionWrapper[Any, int, int], gym.utils.RecordConstructorArgs):
    """Apply a fixed permutation to a discrete action: the agent's action ``a`` runs ``permutation[a]``.

    Args:
        env: An environment with a ``Discrete`` action space.
        permutation: A permutation of ``range(n)``, where ``n`` is the number of actions.

    Example:
        >>> import gymnasium as gym
        >>> env = PermuteActions(gym.make("CartPole-v1"), permutation=[1, 0])
        >>> env.action(0)
        1
    """

    SCHEDULABLE: ClassVar[tuple[str, ...]] = ("permutation",)
    """Arguments a stream's schedule may change while the environment runs (:meth:`set_kwargs`)."""

    def __init__(self, env: gym.Env[Any, int], permutation: Sequence[int]) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, permutation=list(permutation))
        gym.ActionWrapper.__init__(self, env)
        if not isinstance(env.action_space, spaces.Discrete):
            raise ValueError(f"PermuteActions needs a Discrete action space, got {env.action_space}")
        self.permutation: list[int] = []
        self.set_kwargs(permutation=permutation)

    def set_kwargs(self, permutation: Sequence[int]) -> None:
        """Use another permutation from now on."""
        n = int(self.env.action_space.n)  # type: ignore[attr-defined]
        perm = [int(a) for a in permutation]
        if sorted(perm) != list(range(n)):
            raise ValueError(f"permutation must be a permutation of range({n}), got {list(permutation)}")
        self.permutation = perm

    def action(self, action: int) -> int:
        """Map the agent's action to the environment's."""
        return self.permutation[int(action)]


class MirrorActions(gym.ActionWrapper[Any, np.ndarray, np.ndarray], gym.utils.RecordConstructorArgs):
    """Mirror a continuous action inside its box: the agent's ``a`` runs ``low + high - a``.

    On a symmetric box (Pendulum's torque in [-2, 2]) this reverses the action, the continuous counterpart
    of swapping CartPole's two actions: a task that conflicts head-on with the original one.

    Args:
        env: An environment with a bounded ``Box`` action space.

    Example:
        >>> import gymnasium as gym
        >>> env = MirrorActions(gym.make("Pendulum-v1"))
        >>> env.action(np.array([0.5], dtype=np.float32))
        array([-0.5], dtype=float32)
    """

    def __init__(self, env: gym.Env[Any, np.ndarray]) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ActionWrapper.__init__(self, env)
        space = env.action_space
        if not isinstance(space, spaces.Box) or not space.is_bounded():
            raise ValueError(f"MirrorActions needs a bounded Box action space, got {space}")
        self._sum = (space.low + space.high).astype(space.dtype)

    def action(self, action: np.ndarray) -> np.ndarray:
        """Map the agent's action to the environment's."""
        return self._sum - np.asarray(action, dtype=self._sum.dtype)


class ScaleReward(gym.RewardWrapper[Any, Any], gym.utils.RecordConstructorArgs):
    """Multiply every reward by a constant.

    Args:
        env: Any environment.
        scale: The factor (may be negative, to make a conflicting task).
    """

    SCHEDULABLE: ClassVar[tuple[str, ...]] = ("scale",)
    """Arguments a stream's schedule may change while the environment runs (:meth:`set_kwargs`)."""

    def __init__(self, env: gym.Env[Any, Any], scale: float) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, scale=scale)
        gym.RewardWrapper.__init__(self, env)
        self.scale = float(scale)

    def set_kwargs(self, scale: float) -> None:
        """Use another factor from now on."""
        self.scale = float(scale)

    def reward(self, reward: SupportsFloat) -> float:
        """Scale the reward."""
        return self.scale * float(reward)


class ScalePhysics(gym.Wrapper[Any, Any, Any, Any], gym.utils.RecordConstructorArgs):
    """Scale the body masses and the friction of a MuJoCo environment's model.

    Every body's mass and inertia are multiplied by ``mass`` (the same density everywhere), every geom's
    friction coefficients (sliding, torsional, rolling) by ``friction``. The model is the environment's own
    copy (``env.unwrapped.model``, built by each ``gym.make``), changed once at construction.

    Args:
        env: A Gymnasium MuJoCo environment (``HalfCheetah-v5``, ``Hopper-v5``, ...).
        mass: Factor of the masses (> 0).
        friction: Factor of the friction (> 0).
    """

    def __init__(self, env: gym.Env[Any, Any], mass: float = 1.0, friction: float = 1.0) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, mass=mass, friction=friction)
        gym.Wrapper.__init__(self, env)
        model = getattr(env.unwrapped, "model", None)
        if model is None or not hasattr(model, "body_mass") or not hasattr(model, "geom_friction"):
            raise ValueError(f"ScalePhysics needs a MuJoCo environment, got {type(env.unwrapped).__name__}")
        for name, value in (("mass", mass), ("friction", friction)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        model.body_mass[:] *= mass
        model.body_inertia[:] *= mass
        model.geom_friction[:] *= friction
        self.mass = float(mass)
        self.friction = float(friction)


class UnboundedObservation(
    gym.ObservationWrapper[np.ndarray, Any, np.ndarray], gym.utils.RecordConstructorArgs
):
    """Declare a float ``Box`` observation space unbounded (``-inf .. inf``), observations unchanged.

    For environments whose declared bounds do not contain their observations (Meta-World v3's MT1 declares
    its goal coordinates as ``[0, 0]`` and then reports the goal), so that checkers and wrappers that trust
    the bounds work. SB3's MLP policies do not read the bounds of float observations.

    Args:
        env: An environment with a floating-point ``Box`` observation space.
    """

    def __init__(self, env: gym.Env[np.ndarray, Any]) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        if not isinstance(space, spaces.Box) or not np.issubdtype(space.dtype, np.floating):
            raise ValueError(f"UnboundedObservation needs a floating-point Box, got {space}")
        self.observation_space = spaces.Box(-np.inf, np.inf, space.shape, dtype=space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """Return the observation unchanged."""
        return observation


class SeedBeforeReset(gym.Wrapper[Any, Any, Any, Any], gym.utils.RecordConstructorArgs):
    """Seed the base environment's generator before the wrappers under this one reset.

    A wrapper that draws from the environment's generator in ``reset`` before passing the seed on (Meta-World
    v3's task selection picks the goal position first, then seeds) makes ``reset(seed=s)`` differ from call
    to call. With this wrapper on top, ``reset(seed=s)`` first reseeds ``env.unwrapped`` from ``s``, so the
    whole reset is a function of ``s``; resets without a seed are unchanged.

    Args:
        env: Any environment.
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reseed the base environment from ``seed`` (when given), then reset."""
        if seed is not None:
            self.env.unwrapped.np_random = gym.utils.seeding.np_random(seed)[0]
        return self.env.reset(seed=seed, options=options)


class AddObservationNoise(
    gym.ObservationWrapper[np.ndarray, Any, np.ndarray], gym.utils.RecordConstructorArgs
):
    """Add Gaussian noise to a ``Box`` observation, drawn from the environment's seeded generator.

    Args:
        env: An environment with a ``Box`` observation space.
        std: Standard deviation of the noise (>= 0).
    """

    SCHEDULABLE: ClassVar[tuple[str, ...]] = ("std",)
    """Arguments a stream's schedule may change while the environment runs (:meth:`set_kwargs`)."""

    def __init__(self, env: gym.Env[np.ndarray, Any], std: float) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, std=std)
        gym.ObservationWrapper.__init__(self, env)
        if not isinstance(env.observation_space, spaces.Box):
            raise ValueError(
                f"AddObservationNoise needs a Box observation space, got {env.observation_space}"
            )
        self.std = 0.0
        self.set_kwargs(std=std)

    def set_kwargs(self, std: float) -> None:
        """Use another noise level from now on."""
        if std < 0:
            raise ValueError(f"std must be >= 0, got {std}")
        self.std = float(std)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """Return the observation plus noise, in the space's dtype, clipped to its bounds."""
        space = self.observation_space
        assert isinstance(space, spaces.Box)
        noisy = observation + self.np_random.normal(0.0, self.std, size=observation.shape)
        return np.clip(noisy, space.low, space.high).astype(space.dtype)


class PermuteObservations(
    gym.ObservationWrapper[np.ndarray, Any, np.ndarray], gym.utils.RecordConstructorArgs
):
    """Reorder (and optionally negate) the entries of a flat ``Box`` observation: the agent sees
    ``sign[i] * obs[permutation[i]]``. A stream of tasks that differ only in this is the permuted-input
    setting of plasticity studies (Dohare et al. 2024's permuted MNIST, in RL): every task must be learned
    again from the same dynamics. The observation space bounds every entry by the largest bound of any
    entry, whatever the permutation, so that every task of a stream has the same space.

    Args:
        env: An environment with a one-dimensional ``Box`` observation space.
        permutation: A permutation of ``range(n)`` for ``n`` observation entries.
        signs: ``+1`` or ``-1`` per entry (default: all ``+1``).
    """

    def __init__(
        self, env: gym.Env[np.ndarray, Any], permutation: Sequence[int], signs: Sequence[int] | None = None
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self, permutation=list(permutation), signs=None if signs is None else list(signs)
        )
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise ValueError(
                f"PermuteObservations needs a one-dimensional Box observation space, got {space}"
            )
        n = space.shape[0]
        perm = [int(i) for i in permutation]
        if sorted(perm) != list(range(n)):
            raise ValueError(f"permutation must be a permutation of range({n}), got {list(permutation)}")
        sign = [1] * n if signs is None else [int(s) for s in signs]
        if len(sign) != n or any(s not in (1, -1) for s in sign):
            raise ValueError(f"signs must be {n} entries of 1 or -1, got {signs!r}")
        self.permutation = np.array(perm)
        self.signs = np.array(sign, dtype=space.dtype)
        # One space for every permutation, so that the tasks of a stream share it: each entry within the
        # largest bound of any entry.
        bound = float(np.max(np.maximum(np.abs(space.low), np.abs(space.high))))
        self.observation_space = spaces.Box(-bound, bound, shape=(n,), dtype=space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """Return the reordered, sign-flipped observation."""
        return (observation[self.permutation] * self.signs).astype(self.observation_space.dtype)


class AppendTaskId(gym.ObservationWrapper[Any, Any, Any], gym.utils.RecordConstructorArgs):
    """Expose the task identity: append a one-hot task vector to the observation.

    A flat ``Box`` observation gets the one-hot concatenated at its end; a ``Dict`` observation gets a
    ``"task_id"`` entry.

    Args:
        env: An environment with a 1-D ``Box`` or a ``Dict`` observation space.
        task_index: Index of this task in the stream.
        n_tasks: Number of tasks in the stream.
    """

    def __init__(self, env: gym.Env[Any, Any], task_index: int, n_tasks: int) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, task_index=task_index, n_tasks=n_tasks)
        gym.ObservationWrapper.__init__(self, env)
        if not 0 <= task_index < n_tasks:
            raise ValueError(f"task_index must be in [0, {n_tasks}), got {task_index}")
        space = env.observation_space
        self.task_index = task_index
        self.n_tasks = n_tasks
        if isinstance(space, spaces.Box) and len(space.shape) == 1:
            self._one_hot = np.zeros(n_tasks, dtype=space.dtype)
            self._one_hot[task_index] = 1
            low = np.concatenate([space.low, np.zeros(n_tasks, dtype=space.dtype)])
            high = np.concatenate([space.high, np.ones(n_tasks, dtype=space.dtype)])
            self.observation_space = spaces.Box(low, high, dtype=space.dtype)
        elif isinstance(space, spaces.Dict):
            self._one_hot = np.zeros(n_tasks, dtype=np.float32)
            self._one_hot[task_index] = 1
            self.observation_space = spaces.Dict(
                {**space.spaces, "task_id": spaces.Box(0.0, 1.0, (n_tasks,), dtype=np.float32)}
            )
        else:
            raise ValueError(f"an observed task id needs a 1-D Box or a Dict observation space, got {space}")

    def observation(self, observation: Any) -> Any:
        """Return the observation with the task's one-hot vector attached."""
        if isinstance(observation, dict):
            return {**observation, "task_id": self._one_hot.copy()}
        return np.concatenate([observation, self._one_hot])


class MultiTaskEnv(gym.Env[Any, Any]):
    """One environment that draws a task uniformly at random at every reset (joint multi-task training).

    Args:
        envs: One environment per task, all with the same observation and action space.
    """

    def __init__(self, envs: Sequence[gym.Env[Any, Any]]) -> None:
        if not envs:
            raise ValueError("MultiTaskEnv needs at least one environment")
        self.envs = list(envs)
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space
        self.metadata = self.envs[0].metadata
        self.task_index = 0
        self._pending_seeds: list[int | None] = [None] * len(self.envs)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        """Draw a task, then reset it; ``info["task_index"]`` names it."""
        super().reset(seed=seed)
        if seed is not None:  # seed every task's environment once, from this environment's generator
            self._pending_seeds = [int(s) for s in self.np_random.integers(2**31 - 1, size=len(self.envs))]
        self.task_index = int(self.np_random.integers(len(self.envs)))
        sub_seed, self._pending_seeds[self.task_index] = self._pending_seeds[self.task_index], None
        obs, info = self.envs[self.task_index].reset(seed=sub_seed, options=options)
        return obs, {**info, "task_index": self.task_index}

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the current task; ``info["task_index"]`` names it."""
        obs, reward, terminated, truncated, info = self.envs[self.task_index].step(action)
        return obs, reward, terminated, truncated, {**info, "task_index": self.task_index}

    def close(self) -> None:
        """Close every task's environment."""
        for env in self.envs:
            env.close()
