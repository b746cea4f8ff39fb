"""Task streams: ordered sequences of Gymnasium task variants, as data.

A stream file is TOML::

    name = "cartpole-flip"
    description = "CartPole with flipped actions and other pole lengths"
    steps_per_task = 50000
    task_id = "observed"            # or "hidden"

    [[tasks]]
    name = "normal"
    env_id = "CartPole-v1"

    [[tasks]]
    name = "flipped"
    env_id = "CartPole-v1"
    attributes = { length = 1.0 }   # set on env.unwrapped after gym.make
    make_kwargs = {}                # passed to gym.make
    wrappers = [{ name = "PermuteActions", kwargs = { permutation = [1, 0] } }]
    steps = 80000                   # overrides steps_per_task for this task

``cycles = 3`` (a top-level key) repeats the tasks three times over: ``normal``, ``flipped``, ``normal.2``,
``flipped.2``, ``normal.3``, ``flipped.3`` (each visit observes its task's id), the repeated streams on
which plasticity is measured.

Built-in streams live in the repository's ``envs/`` folder and ship inside the package.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, SupportsFloat

import gymnasium as gym
import numpy as np
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from clrl import wrappers as clrl_wrappers
from clrl._data import data_dir
from clrl.errors import ConfigError, StreamError
from clrl.hyperparameters import check_finite_numbers, is_number
from clrl.imports import import_allowed
from clrl.schedules import Schedule, is_schedule, schedule_from_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TaskIdMode = Literal["observed", "hidden"]
BoundaryMode = Literal["announced", "hidden"]
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
MAX_NAME_LENGTH = 100

MAX_STEPS = 10**10
"""Most training steps a task may have (10 billion: 50 times an Atari 200M-frame run); more is a typo that
would train until killed."""
"""Longest stream or task name: names become directory and file names (and TensorBoard tags)."""


def check_name(value: Any, what: str) -> str:
    """Return ``value`` if it is a name that is safe as one path component, else raise :class:`StreamError`.

    A name is data, never a path: letters, digits, ``.``, ``_`` and ``-`` only (no separator, no NUL), not
    ``.`` or ``..`` (nor any name of dots alone), at most :data:`MAX_NAME_LENGTH` characters.
    """
    if (
        not isinstance(value, str)
        or not _NAME.fullmatch(value)
        or set(value) == {"."}
        or len(value) > MAX_NAME_LENGTH
    ):
        raise StreamError(
            f"{what} {value!r} must be 1 to {MAX_NAME_LENGTH} letters, digits, '.', '_' or '-', and not "
            "only dots (it names directories, files and TensorBoard tags)"
        )
    return value


_STREAM_KEYS = {
    "name", "description", "steps_per_task", "task_id", "tasks", "metric", "extra", "cycles", "boundaries"
}  # fmt: skip

EXTRAS = {"box2d": "Box2D", "mujoco": "mujoco", "minigrid": "minigrid", "metaworld": "metaworld"}
"""clrl's extras a stream may need, and the module each installs (how clrl tells whether it is there)."""


def missing_extra(extra: str | None) -> str | None:
    """The ``pip install`` that brings ``extra`` if it is not installed (``None``: nothing is missing)."""
    if extra is None:
        return None
    try:
        if importlib.util.find_spec(EXTRAS[extra]) is not None:
            return None
    except (ImportError, ValueError):  # a broken or blocked install counts as missing
        pass
    return f'pip install "clrl[{extra}]"'


_TASK_KEYS = {"name", "env_id", "make_kwargs", "attributes", "wrappers", "steps"}
_WRAPPER_KEYS = {"name", "kwargs"}


def _refresh_cartpole(env: Any) -> None:
    env.total_mass = env.masspole + env.masscart
    env.polemass_length = env.masspole * env.length


# Quantities that an environment derives from others in its constructor: after attributes are set they are
# recomputed, so that e.g. a CartPole `length` override also changes `polemass_length`.
_DERIVED: dict[str, tuple[set[str], Callable[[Any], None]]] = {
    "CartPoleEnv": ({"masspole", "masscart", "length"}, _refresh_cartpole),
}


def _with_schedules(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``values`` with every schedule table parsed into a :class:`Schedule`; the other values checked to be
    finite numbers where they are numbers."""
    out = {}
    for key, value in values.items():
        if is_schedule(value):
            out[key] = schedule_from_dict(value, f"{where}.{key}")
        elif isinstance(value, Schedule):
            out[key] = value
        else:
            check_finite_numbers({key: value}, where, StreamError)
            out[key] = value
    return out


def _value(value: Any, step: int, length: int | None) -> Any:
    return value.value(step, length) if isinstance(value, Schedule) else value


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.to_dict() if isinstance(v, Schedule) else v for k, v in values.items()}


@dataclass(frozen=True)
class WrapperSpec:
    """A wrapper applied to a task's environment: a class of :mod:`clrl.wrappers`, ``gymnasium.wrappers``,
    or any module.

    Args:
        name: The wrapper's class name, e.g. ``"PermuteActions"`` or ``"TimeLimit"``, or ``"module:Class"``
            for a wrapper of another package (``"minigrid.wrappers:ImgObsWrapper"``).
        kwargs: Keyword arguments of the wrapper's constructor.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _expect(self.name, str, "wrapper", "name")
        where = f"wrapper {self.name!r}"
        _expect(self.kwargs, Mapping, where, "kwargs")
        kwargs = _with_schedules(self.kwargs, f"{where}: kwargs")
        object.__setattr__(self, "kwargs", kwargs)
        scheduled = [k for k, v in kwargs.items() if isinstance(v, Schedule)]
        if scheduled:
            allowed = getattr(self.wrapper_class(), "SCHEDULABLE", ())
            for key in scheduled:
                if key not in allowed:
                    raise StreamError(
                        f"{where}: kwargs.{key} cannot follow a schedule (this wrapper can change "
                        f"{', '.join(allowed) or 'none of its arguments'} while it runs)"
                    )

    def kwargs_at(self, step: int, length: int | None) -> dict[str, Any]:
        """The keyword arguments at step ``step`` of a task of ``length`` steps (schedules evaluated)."""
        return {k: _value(v, step, length) for k, v in self.kwargs.items()}

    def wrapper_class(self) -> type[gym.Wrapper[Any, Any, Any, Any]]:
        """Return the wrapper class: ``module:Class`` from that module; a plain name from clrl's wrappers,
        else ``gymnasium.wrappers``."""
        if ":" in self.name:
            module_name, _, class_name = self.name.partition(":")
            try:
                module = import_allowed(module_name)
            except PermissionError as exc:
                raise StreamError(f"wrapper {self.name!r}: {exc}") from None
            except ImportError as exc:
                raise StreamError(f"wrapper {self.name!r}: cannot import {module_name!r}: {exc}") from exc
            cls = getattr(module, class_name, None)
            if isinstance(cls, type) and issubclass(cls, gym.Wrapper):
                return cls
            raise StreamError(f"wrapper {self.name!r}: {module_name} has no wrapper class {class_name!r}")
        for namespace in (clrl_wrappers, gym.wrappers):
            cls = getattr(namespace, self.name, None)
            if isinstance(cls, type) and issubclass(cls, gym.Wrapper):
                return cls
        raise StreamError(f"unknown wrapper {self.name!r}: not in clrl.wrappers nor gymnasium.wrappers")


@dataclass(frozen=True)
class Task:
    """One task of a stream: a Gymnasium environment with overrides.

    Args:
        name: Unique name in the stream; TensorBoard tags use it (``eval/<name>/return``).
        env_id: A registered Gymnasium id, e.g. ``"CartPole-v1"``.
        make_kwargs: Keyword arguments of ``gym.make``.
        attributes: Attributes set on ``env.unwrapped`` after ``gym.make`` (e.g. CartPole ``length``). Each
            must already exist on the environment; quantities derived from them (CartPole's
            ``polemass_length``, ``total_mass``) are recomputed.
        wrappers: Wrappers applied in order after the attributes are set.
        steps: Training budget in environment steps; ``None`` takes the stream's ``steps_per_task``.

    An attribute or a wrapper argument may be a :class:`clrl.schedules.Schedule` (in a stream file, a table
    with a ``schedule`` key): the value then drifts with the task's environment steps while it trains
    (:mod:`clrl.schedules`), and an evaluation uses its value at the task's last step.
    """

    name: str
    env_id: str
    make_kwargs: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    wrappers: tuple[WrapperSpec, ...] = ()
    steps: int | None = None

    def __post_init__(self) -> None:
        where = f"task {self.name!r}"
        _expect(self.name, str, where, "name")
        _expect(self.env_id, str, where, "env_id")
        _expect(self.make_kwargs, Mapping, where, "make_kwargs")
        _expect(self.attributes, Mapping, where, "attributes")
        for key in [*self.make_kwargs, *self.attributes]:
            _expect(key, str, where, "a make_kwargs or attributes key")
        check_finite_numbers(dict(self.make_kwargs), f"{where}: make_kwargs", StreamError)
        object.__setattr__(self, "attributes", _with_schedules(self.attributes, f"{where}: attributes"))
        limit = self.make_kwargs.get("max_episode_steps")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise StreamError(
                f"{where}: make_kwargs.max_episode_steps must be a positive integer, got {limit!r}"
            )
        object.__setattr__(self, "wrappers", tuple(_expect(self.wrappers, Sequence, where, "wrappers")))
        for spec in self.wrappers:
            _expect(spec, WrapperSpec, where, "each wrapper")
        if self.steps is not None:
            _check_steps(self.steps, f"{where}: steps")

    @property
    def schedules(self) -> list[Schedule]:
        """The schedules its attributes and wrapper arguments follow (none: the task does not drift)."""
        values = [*self.attributes.values(), *(v for w in self.wrappers for v in w.kwargs.values())]
        return [v for v in values if isinstance(v, Schedule)]

    def attributes_at(self, step: int, length: int | None) -> dict[str, Any]:
        """The attributes at step ``step`` of the task (of ``length`` steps), schedules evaluated."""
        return {k: _value(v, step, length) for k, v in self.attributes.items()}

    def make_env(
        self,
        render_mode: str | None = None,
        *,
        at_step: int | None = None,
        n_envs: int = 1,
        length: int | None = None,
    ) -> gym.Env[Any, Any]:
        """Build this task's environment (without the task id).

        Args:
            render_mode: Gymnasium's render mode.
            at_step: Fix every schedule at this step of the task (``None``: the values drift with the
                environment's steps, from step 0).
            n_envs: Copies of the environment in its vectorised env: a copy's ``k``-th step is the task's
                step ``k · n_envs`` (the copies step together).
            length: The task's budget (the default end of a ``linear`` schedule); ``None`` takes ``steps``.

        Raises:
            StreamError: The env id is unknown, an attribute does not exist, or a wrapper fails to build.
        """
        length = self.steps if length is None else length
        kwargs = dict(self.make_kwargs)
        if render_mode is not None:
            kwargs["render_mode"] = render_mode
        if ":" in self.env_id:  # "module:EnvId": gym.make would import the module; only an allowed one
            module_name = self.env_id.partition(":")[0]
            try:
                import_allowed(module_name)
            except PermissionError as exc:
                raise StreamError(f"task {self.name!r}: env_id {self.env_id!r}: {exc}") from None
            except ImportError as exc:
                raise StreamError(f"task {self.name!r}: cannot import {module_name!r}: {exc}") from exc
        try:
            env = gym.make(self.env_id, **kwargs)
        except gym.error.Error as exc:
            raise StreamError(f"task {self.name!r}: cannot make env_id {self.env_id!r}: {exc}") from exc
        except Exception as exc:  # the env's constructor rejected make_kwargs, in whatever way it does
            raise StreamError(
                f"task {self.name!r}: bad make_kwargs for {self.env_id!r}: {_describe(exc)}"
            ) from exc
        start = 0 if at_step is None else at_step
        built: list[tuple[gym.Wrapper[Any, Any, Any, Any], WrapperSpec]] = []
        try:
            self.set_attributes(env.unwrapped, self.attributes_at(start, length))
            for spec in self.wrappers:
                cls = spec.wrapper_class()
                try:
                    env = cls(env, **spec.kwargs_at(start, length))
                except Exception as exc:
                    raise StreamError(f"task {self.name!r}: wrapper {spec.name!r}: {_describe(exc)}") from exc
                built.append((env, spec))
        except StreamError:
            env.close()
            raise
        if at_step is None and self.schedules:
            env = Drift(env, self, built, n_envs, length)
        return env

    def set_attributes(self, base: Any, values: Mapping[str, Any]) -> None:
        """Set attribute ``values`` on the environment ``base`` (``env.unwrapped``), checking each, and
        recompute the quantities derived from them.

        Raises:
            StreamError: An attribute that does not exist, is private or a method, or a value of the wrong
                kind.
        """
        env_name = type(base).__name__
        for key, value in values.items():
            if key.startswith("_") or not hasattr(base, key):
                raise StreamError(
                    f"task {self.name!r}: {env_name} has no attribute {key!r} "
                    "(attributes must be public and exist on env.unwrapped)"
                )
            current = getattr(base, key)
            if callable(current):
                raise StreamError(
                    f"task {self.name!r}: {env_name}.{key} is a method, not a settable attribute"
                )
            if is_number(current) and not is_number(value):
                raise StreamError(
                    f"task {self.name!r}: {env_name}.{key} is a number, got {type(value).__name__} {value!r}"
                )
            setattr(base, key, value)
        derived = _DERIVED.get(env_name)
        if derived is not None and derived[0] & values.keys():
            derived[1](base)

    def budget(self, steps_per_task: int) -> int:
        """This task's training steps, given the stream's default."""
        return self.steps if self.steps is not None else steps_per_task


class Drift(gym.Wrapper[Any, Any, Any, Any]):
    """Apply a task's schedules as its environment steps: before every ``reset`` and ``step``, the
    scheduled attributes are set on ``env.unwrapped`` and the scheduled wrapper arguments passed to their
    wrappers' ``set_kwargs``, at the task's current step.

    The task's step is ``offset + k · n_envs`` after this copy's ``k``-th step: the copies of a vectorised
    env step together, so their steps add up to the model's. :meth:`set_drift_step` moves it (a loop that
    builds the environment part-way through a task). ``Task.make_env`` adds this wrapper to a task with
    schedules; the vectorised env reaches it with ``env_method("set_drift_step", step)``.

    Args:
        env: The task's environment, built at step 0.
        task: The task whose schedules apply.
        built: The wrappers of ``env`` with the specs they were built from, in order.
        n_envs: Copies of the environment in its vectorised env.
        length: The task's budget (the default end of a ``linear`` schedule).
    """

    def __init__(
        self,
        env: gym.Env[Any, Any],
        task: Task,
        built: Sequence[tuple[gym.Wrapper[Any, Any, Any, Any], WrapperSpec]],
        n_envs: int,
        length: int | None,
    ) -> None:
        super().__init__(env)
        self.task = task
        self.n_envs = n_envs
        self.budget = length
        self.count = 0
        """Steps this copy has taken."""
        self.offset = 0
        self._attributes = {k: v for k, v in task.attributes.items() if isinstance(v, Schedule)}
        self._wrappers: list[tuple[gym.Wrapper[Any, Any, Any, Any], dict[str, Schedule]]] = []
        self._last: list[dict[str, Any]] = []  # each wrapper's scheduled arguments as last set
        for wrapper, spec in built:
            scheduled = {k: v for k, v in spec.kwargs.items() if isinstance(v, Schedule)}
            if scheduled:
                self._wrappers.append((wrapper, scheduled))
                self._last.append({k: s.value(0, length) for k, s in scheduled.items()})

    def drift_step(self) -> int:
        """The task's step the next ``step`` is taken at."""
        return self.offset + self.count * self.n_envs

    def set_drift_step(self, step: int) -> None:
        """Make the next ``step`` the task's step ``step``."""
        self.offset = int(step) - self.count * self.n_envs

    def _apply(self) -> None:
        step, budget = self.drift_step(), self.budget
        values = {k: s.value(step, budget) for k, s in self._attributes.items()}
        self.task.set_attributes(self.env.unwrapped, values)
        for (wrapper, scheduled), last in zip(self._wrappers, self._last, strict=True):
            changed = {k: v for k, s in scheduled.items() if (v := s.value(step, budget)) != last[k]}
            if changed:
                wrapper.set_kwargs(**changed)  # type: ignore[attr-defined]
                last.update(changed)

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Apply the schedules, then reset."""
        self._apply()
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Apply the schedules, then step."""
        self._apply()
        self.count += 1
        return self.env.step(action)


@dataclass(frozen=True)
class TaskStream:
    """An ordered, immutable sequence of tasks learned one after another.

    Args:
        name: The stream's name (used in run directories: ``runs/<stream>/<method>/seed<k>``).
        tasks: The tasks, in training order; names must be unique.
        steps_per_task: Default training budget of a task in environment steps.
        task_id: ``"observed"`` appends a one-hot task vector to every observation; ``"hidden"`` does not
            (task-agnostic setting).
        description: One line for ``clrl list``.
        extra: The clrl extra its environments need (one of :data:`EXTRAS`), if any: a stream file naming
            one is refused with the ``pip install`` that brings it when it is missing, before anything of
            it is imported.
        metric: What fills the return matrix: ``"return"`` (the episode return) or the name of a number the
            environments report in ``info``; an episode then scores the largest value it reported, so a
            success flag counts an episode that succeeded at any step (Meta-World's success rate).
        boundaries: ``"announced"`` (default): modules are told where each task starts and ends.
            ``"hidden"``: the stream is learned in one ``learn`` through :class:`clrl.StreamCallback`, the
            modules see one task from its first step to its last, the replay buffer is kept across tasks,
            and the tasks are only the points where the model is evaluated (a row of the return matrix
            each). Only modules that work without boundaries are accepted
            (:meth:`clrl.ContinualModule.needs_boundaries`); :func:`clrl.train` refuses such a stream.
        cycles: How many times the stream's first ``len(tasks) // cycles`` tasks repeat in ``tasks``
            (build cyclic streams with :func:`cycled`, or ``cycles = N`` in a stream file). A visit after
            the first is named ``<task>.<k>`` and observes its task's id (an id per distinct task).

    Example:
        >>> from clrl import Task, TaskStream
        >>> stream = TaskStream("two-poles", [Task("short", "CartPole-v1", attributes={"length": 0.25}),
        ...                                   Task("long", "CartPole-v1", attributes={"length": 1.0})],
        ...                     steps_per_task=1000)
        >>> stream.task_names
        ['short', 'long']
    """

    name: str
    tasks: Sequence[Task]
    steps_per_task: int = 100_000
    task_id: TaskIdMode = "hidden"
    description: str = ""
    metric: str = "return"
    extra: str | None = None
    cycles: int = 1
    boundaries: BoundaryMode = "announced"

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if self.extra is not None and self.extra not in EXTRAS:
            raise StreamError(
                f"stream {self.name!r}: extra must be one of {', '.join(EXTRAS)}, got {self.extra!r}"
            )
        check_name(self.name, "stream name")
        where = f"stream {self.name!r}"
        if not self.tasks:
            raise StreamError(f"{where}: has no tasks")
        if self.task_id not in ("observed", "hidden"):
            raise StreamError(f"{where}: task_id must be 'observed' or 'hidden', got {self.task_id!r}")
        if self.boundaries not in ("announced", "hidden"):
            raise StreamError(f"{where}: boundaries must be 'announced' or 'hidden', got {self.boundaries!r}")
        _check_steps(self.steps_per_task, f"{where}: steps_per_task")
        if not isinstance(self.metric, str) or not _NAME.fullmatch(self.metric):
            raise StreamError(
                f"{where}: metric must be 'return' or the name of an info entry, got {self.metric!r}"
            )
        seen: set[str] = set()
        for task in self.tasks:
            check_name(task.name, f"{where}: task name")
            if task.name in seen:
                raise StreamError(f"{where}: duplicate task name {task.name!r}")
            seen.add(task.name)
            if task.steps is not None:
                _check_steps(task.steps, f"{where}, task {task.name!r}: steps")
        _check_cycles(self.cycles, where)
        if len(self.tasks) % self.cycles:
            raise StreamError(
                f"{where}: {len(self.tasks)} tasks are not {self.cycles} cycles of one sequence"
            )
        for index, task in enumerate(self.tasks[self.cycle_length :], start=self.cycle_length):
            first = self.tasks[index % self.cycle_length]
            expected = visit_name(first.name, index // self.cycle_length)
            if replace(task, name=first.name) != first or task.name != expected:
                raise StreamError(
                    f"{where}: task {index} ({task.name!r}) must repeat task {first.name!r} as "
                    f"{expected!r}: the tasks are {self.cycles} cycles"
                )

    def __len__(self) -> int:
        return len(self.tasks)

    @property
    def cycle_length(self) -> int:
        """Distinct tasks of one cycle (all of them when ``cycles`` is 1)."""
        return len(self.tasks) // self.cycles

    def visit(self, index: int) -> tuple[int, int]:
        """``(task, cycle)`` of training position ``index``: its distinct task, and its visit (0: first)."""
        return index % self.cycle_length, index // self.cycle_length

    @property
    def task_names(self) -> list[str]:
        """Names of the tasks, in order."""
        return [task.name for task in self.tasks]

    def steps(self, index: int) -> int:
        """Training budget of task ``index`` in environment steps."""
        return self.tasks[index].budget(self.steps_per_task)

    def make_env(
        self, index: int, render_mode: str | None = None, *, at_step: int | None = None, n_envs: int = 1
    ) -> gym.Env[Any, Any]:
        """Build task ``index``'s environment, with the task id appended when it is observed.

        Args:
            index: The task's position in the stream.
            render_mode: Gymnasium's render mode.
            at_step: Fix the task's schedules at this step (``None``: they drift as it steps).
            n_envs: Copies of the environment in its vectorised env (see :meth:`Task.make_env`).
        """
        env = self.tasks[index].make_env(
            render_mode, at_step=at_step, n_envs=n_envs, length=self.steps(index)
        )
        if self.task_id == "observed":
            env = clrl_wrappers.AppendTaskId(env, index % self.cycle_length, self.cycle_length)
        return env

    def make_vec_env(
        self,
        index: int,
        n_envs: int = 1,
        seed: int | None = None,
        vec_env_cls: type[DummyVecEnv | SubprocVecEnv] = DummyVecEnv,
        at_step: int | None = None,
    ) -> VecEnv:
        """Build a vectorised, ``Monitor``-wrapped environment of task ``index`` for SB3.

        Args:
            index: The task's index in the stream.
            n_envs: Number of parallel copies.
            seed: Seed of the first copy's next reset (copy ``k`` gets ``seed + k``).
            vec_env_cls: ``DummyVecEnv`` or ``SubprocVecEnv``.
            at_step: Fix the task's schedules at this step (``None``: they drift with the task's steps,
                summed over the copies; the evaluator fixes them at the task's last step).
        """
        if not 0 <= index < len(self.tasks):
            raise IndexError(f"stream {self.name!r} has {len(self.tasks)} tasks, no task {index}")
        factory = _TaskFactory(self, index, n_envs, at_step)
        return make_vec_env(factory, n_envs=n_envs, seed=seed, vec_env_cls=vec_env_cls)

    def make_multitask_vec_env(
        self,
        n_envs: int = 1,
        seed: int | None = None,
        vec_env_cls: type[DummyVecEnv | SubprocVecEnv] = DummyVecEnv,
        tasks: int | None = None,
    ) -> VecEnv:
        """Build a vectorised environment that draws one of the stream's tasks (or of its first ``tasks``)
        at every episode."""
        factory = _MultiTaskFactory(self, len(self) if tasks is None else tasks)
        return make_vec_env(factory, n_envs=n_envs, seed=seed, vec_env_cls=vec_env_cls)

    def validate(self) -> None:
        """Build every task once, reset it and take one random step, and check that all tasks share one
        observation and action space.

        Raises:
            StreamError: Naming the stream and the task that fails or differs.
        """
        reference: tuple[gym.Space[Any], gym.Space[Any]] | None = None
        for index, task in enumerate(self.tasks[: self.cycle_length]):  # later cycles repeat these
            spaces, info = self._probe(index)
            if self.metric != "return" and not _is_info_number(info.get(self.metric)):
                raise StreamError(
                    f"stream {self.name!r}, task {task.name!r}: the metric {self.metric!r} is not a number "
                    f"in the environment's step info (got {info.get(self.metric)!r})"
                )
            if task.schedules:  # the values later in the task must be accepted too
                length = self.steps(index)
                points = {length, *(step for sch in task.schedules for step in sch.checkpoints(length))}
                for step in sorted(points - {0}):
                    self._probe(index, at_step=step)
            if reference is None:
                reference = spaces
                continue
            for kind, ours, first in zip(("observation", "action"), spaces, reference, strict=True):
                if ours != first:
                    raise StreamError(
                        f"stream {self.name!r}: task {task.name!r} has {kind} space {ours}, but task "
                        f"{self.tasks[0].name!r} has {first}; every task must share one {kind} space"
                    )

    def _probe(
        self, index: int, at_step: int | None = None
    ) -> tuple[tuple[gym.Space[Any], gym.Space[Any]], dict[str, Any]]:
        """Build task ``index`` (its schedules at ``at_step``), reset it and take one random step; its
        spaces and the step's info.

        Raises:
            StreamError: The task fails to build, reset or step, naming the stream, task and step.
        """
        task = self.tasks[index]
        when = "" if at_step is None else f" at step {at_step} of its schedules"
        try:
            env = self.make_env(index, at_step=at_step)
        except StreamError as exc:
            raise StreamError(f"stream {self.name!r}{when}: {exc}") from exc
        except ValueError as exc:  # AppendTaskId on an unsupported observation space
            raise StreamError(f"stream {self.name!r}, task {task.name!r}{when}: {exc}") from exc
        try:
            env.action_space.seed(0)
            env.reset(seed=0)
            info = env.step(env.action_space.sample())[4]
        except Exception as exc:
            raise StreamError(
                f"stream {self.name!r}, task {task.name!r}: the environment fails to reset or step{when}: "
                f"{_describe(exc)}"
            ) from exc
        finally:
            env.close()
        return (env.observation_space, env.action_space), info

    def to_dict(self) -> dict[str, Any]:
        """The stream as plain data (the inverse of :func:`stream_from_dict`)."""
        return {
            "name": self.name,
            "description": self.description,
            **({} if self.extra is None else {"extra": self.extra}),
            "steps_per_task": self.steps_per_task,
            "task_id": self.task_id,
            **({} if self.metric == "return" else {"metric": self.metric}),
            **({} if self.cycles == 1 else {"cycles": self.cycles}),
            **({} if self.boundaries == "announced" else {"boundaries": self.boundaries}),
            "tasks": [
                {
                    "name": t.name,
                    "env_id": t.env_id,
                    "make_kwargs": dict(t.make_kwargs),
                    "attributes": _plain(t.attributes),
                    "wrappers": [{"name": w.name, "kwargs": _plain(w.kwargs)} for w in t.wrappers],
                    **({} if t.steps is None else {"steps": t.steps}),
                }
                for t in self.tasks[: self.cycle_length]
            ],
        }


class _TaskFactory:
    """A picklable environment factory (SubprocVecEnv sends it to worker processes)."""

    def __init__(self, stream: TaskStream, index: int, n_envs: int = 1, at_step: int | None = None) -> None:
        self.stream = stream
        self.index = index
        self.n_envs = n_envs
        self.at_step = at_step

    def __call__(self, **kwargs: Any) -> gym.Env[Any, Any]:
        return self.stream.make_env(self.index, at_step=self.at_step, n_envs=self.n_envs, **kwargs)


class _MultiTaskFactory:
    def __init__(self, stream: TaskStream, tasks: int) -> None:
        if not 1 <= tasks <= len(stream):
            raise ConfigError(f"a multi-task environment of {tasks} tasks; the stream has {len(stream)}")
        self.stream = stream
        self.tasks = tasks

    def __call__(self, **kwargs: Any) -> gym.Env[Any, Any]:
        # Every task at its schedules' last step: the multi-task baseline learns the settings evaluated.
        stream = self.stream
        return clrl_wrappers.MultiTaskEnv(
            [stream.make_env(i, at_step=stream.steps(i), **kwargs) for i in range(self.tasks)]
        )


def _describe(exc: Exception) -> str:
    """An exception's message, with its type unless it is the usual ValueError or TypeError."""
    return str(exc) if isinstance(exc, ValueError | TypeError) else f"{type(exc).__name__}: {exc}"


def visit_name(name: str, cycle: int) -> str:
    """The name of a task's visit in cycle ``cycle`` (0: the task's own name; then ``<name>.<cycle + 1>``)."""
    return name if cycle == 0 else f"{name}.{cycle + 1}"


MAX_CYCLES = 1000
"""Most cycles a stream may declare."""


def _check_cycles(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CYCLES:
        raise StreamError(f"{where}: cycles must be an integer in [1, {MAX_CYCLES}], got {value!r}")


def cycled(stream: TaskStream, cycles: int) -> TaskStream:
    """``stream``'s tasks repeated ``cycles`` times (visits after the first named ``<task>.<k>``): the
    repeated streams of plasticity experiments (CORA, COOM and MEAL repeat theirs)."""
    where = f"stream {stream.name!r}"
    _check_cycles(cycles, where)
    first = stream.tasks[: stream.cycle_length]
    tasks = [replace(t, name=visit_name(t.name, k)) for k in range(cycles) for t in first]
    return replace(stream, tasks=tasks, cycles=cycles)


def _check_steps(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_STEPS:
        raise StreamError(f"{where} must be an integer in [1, {MAX_STEPS:_}], got {value!r}")


def _expect(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        names = " or ".join(k.__name__ for k in _as_tuple(kind))
        raise StreamError(f"{where}: {what} must be a {names}, got {type(value).__name__} {value!r}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _unknown_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise StreamError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _wrapper_from_dict(data: Any, where: str) -> WrapperSpec:
    if isinstance(data, str):
        return WrapperSpec(data)
    _expect(data, dict, where, "a wrapper")
    _unknown_keys(data, _WRAPPER_KEYS, where)
    if "name" not in data:
        raise StreamError(f"{where}: a wrapper needs a 'name'")
    name = _expect(data["name"], str, where, "wrapper name")
    spec = WrapperSpec(name, dict(_expect(data.get("kwargs", {}), dict, where, "wrapper kwargs")))
    spec.wrapper_class()
    return spec


def _task_from_dict(data: Any, where: str) -> Task:
    _expect(data, dict, where, "a task")
    name = data.get("name")
    where = f"{where} ({name!r})" if isinstance(name, str) else where
    _unknown_keys(data, _TASK_KEYS, where)
    for key in ("name", "env_id"):
        if key not in data:
            raise StreamError(f"{where}: missing required key {key!r}")
        _expect(data[key], str, where, key)
    steps = data.get("steps")
    if steps is not None:
        _check_steps(steps, f"{where}: steps")
    wrappers = _expect(data.get("wrappers", []), list, where, "wrappers")
    return Task(
        name=data["name"],
        env_id=data["env_id"],
        make_kwargs=dict(_expect(data.get("make_kwargs", {}), dict, where, "make_kwargs")),
        attributes=dict(_expect(data.get("attributes", {}), dict, where, "attributes")),
        wrappers=tuple(_wrapper_from_dict(w, f"{where}, wrapper {k}") for k, w in enumerate(wrappers)),
        steps=steps,
    )


def _is_info_number(value: Any) -> bool:
    """A number, bool or 0-d array: what an info entry may be to serve as the metric."""
    return isinstance(value, int | float | np.integer | np.floating | np.bool_) or (
        isinstance(value, np.ndarray) and value.shape == ()
    )


def stream_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> TaskStream:
    """Build a stream from plain data (a parsed stream file), checking every key and type.

    Raises:
        StreamError: Naming the source, the task and the key at fault.
    """
    _expect(data, dict, source, "a stream")
    name = data.get("name")
    where = f"stream {name!r}" if isinstance(name, str) else f"stream {source}"
    _unknown_keys(data, _STREAM_KEYS, where)
    if "name" not in data:
        raise StreamError(f"{where}: missing required key 'name'")
    name = _expect(name, str, where, "name")
    extra = data.get("extra")
    if extra is not None and extra not in EXTRAS:
        raise StreamError(f"{where}: extra must be one of {', '.join(EXTRAS)}, got {extra!r}")
    install = missing_extra(extra)
    if install is not None:
        raise StreamError(f"{where} needs the {extra} extra: {install}")
    tasks = _expect(data.get("tasks", []), list, where, "tasks")
    cycles = data.get("cycles", 1)
    _check_cycles(cycles, where)
    stream = TaskStream(
        name=name,
        tasks=[_task_from_dict(t, f"{where}, task {k}") for k, t in enumerate(tasks)],
        steps_per_task=data.get("steps_per_task", 100_000),
        task_id=data.get("task_id", "hidden"),
        description=_expect(data.get("description", ""), str, where, "description"),
        metric=_expect(data.get("metric", "return"), str, where, "metric"),
        extra=extra,
        boundaries=data.get("boundaries", "announced"),
    )
    return stream if cycles == 1 else cycled(stream, cycles)


def load_stream(path: str | Path) -> TaskStream:
    """Read a stream file (TOML) without building its environments."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StreamError(f"cannot read stream file {str(path)!r}: {exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise StreamError(f"stream file {str(path)!r} is not valid TOML: {exc}") from exc
    return stream_from_dict(data, source=str(path))


def builtin_streams() -> dict[str, Path]:
    """Names and files of the streams that ship with clrl."""
    return {path.stem: path for path in sorted(data_dir("_streams").glob("*.toml"))}


def make_stream(
    name_or_path: str | Path, *, steps_per_task: int | None = None, validate: bool = True
) -> TaskStream:
    """Load a built-in stream by name, or a stream file by path, and validate it.

    Args:
        name_or_path: A name from :func:`builtin_streams` (``"cartpole-flip"``) or a path to a TOML file.
        steps_per_task: Override the stream's default budget per task (tasks with their own ``steps`` keep
            them in proportion: each is scaled by the same factor).
        validate: Build every task once and check spaces (see :meth:`TaskStream.validate`).

    Raises:
        StreamError: Unknown name, unreadable or malformed file, or a task that fails validation.
    """
    builtin = builtin_streams()
    if isinstance(name_or_path, str) and name_or_path in builtin:
        stream = load_stream(builtin[name_or_path])
    elif Path(name_or_path).is_file():
        stream = load_stream(name_or_path)
    else:
        raise StreamError(
            f"no stream named {str(name_or_path)!r}: not a built-in stream ({', '.join(builtin)}) nor a file"
        )
    if steps_per_task is not None:
        stream = with_steps(stream, steps_per_task)
    if validate:
        stream.validate()
    return stream


def with_steps(stream: TaskStream, steps_per_task: int) -> TaskStream:
    """A copy of ``stream`` whose default budget is ``steps_per_task``; per-task budgets and the steps their
    schedules name (:meth:`clrl.schedules.Schedule.scaled`) scale alike, so a shorter run drifts the same
    way."""
    _check_steps(steps_per_task, f"stream {stream.name!r}: steps_per_task")
    factor = steps_per_task / stream.steps_per_task
    tasks = [_scaled(t, factor) for t in stream.tasks]
    return replace(stream, tasks=tasks, steps_per_task=steps_per_task)


def _scaled(task: Task, factor: float) -> Task:
    def scale(values: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v.scaled(factor) if isinstance(v, Schedule) else v for k, v in values.items()}

    return replace(
        task,
        steps=None if task.steps is None else max(1, round(task.steps * factor)),
        attributes=scale(task.attributes),
        wrappers=tuple(replace(w, kwargs=scale(w.kwargs)) for w in task.wrappers),
    )
