"""Task boundaries as explicit events: :func:`training_task` makes any number of ``learn`` calls one task."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm

from clrl.errors import ConfigError
from clrl.modules.base import ContinualModule, TaskInfo, check_positive_int


def check_modules(modules: Sequence[ContinualModule]) -> list[ContinualModule]:
    """Return ``modules`` as a list, or raise :class:`ConfigError` for a non-module or a repeated one."""
    modules = list(modules)
    for m in modules:
        if not isinstance(m, ContinualModule):
            raise ConfigError(f"modules must be clrl ContinualModule instances, got {type(m).__name__}")
    if len({id(m) for m in modules}) != len(modules):
        raise ConfigError("the same module instance is listed twice")
    return modules


def check_fit(modules: Sequence[ContinualModule], stream: Any, model: BaseAlgorithm) -> None:
    """Let every module refuse the stream and the model it would train on, before anything runs; a stream
    that hides its boundaries refuses the modules that need them."""
    check_stream_fit(modules, stream)
    for module in modules:
        module.check_model(model)


def check_stream_fit(modules: Sequence[ContinualModule], stream: Any) -> None:
    """The part of :func:`check_fit` that needs no model: a command checks it for every run before any
    trains."""
    for module in modules:
        if getattr(stream, "boundaries", "announced") == "hidden" and module.needs_boundaries():
            raise ConfigError(
                f"{type(module).__name__} needs task boundaries, which stream {stream.name!r} hides "
                "(boundaries = 'hidden'); task-free modules: "
                + ", ".join(task_free_modules())
                + "; task-free when configured: "
                + ", ".join(task_free_modules(configured=True))
                + "; or boundaries from a change-point test: BoundaryDetector([module]) (detector+<name>)"
            )
        module.check_stream(stream)
        module.check_companions([m for m in modules if m is not module])


def task_free_modules(configured: bool = False) -> list[str]:
    """The command-line names of the modules that work without task boundaries as built by default, or,
    with ``configured``, those that do so when given their ``task_free_with`` argument, as
    ``"name (argument)"``."""
    from clrl.experiment import METHODS  # the registry imports the modules, which import this module

    built: dict[str, ContinualModule] = {}
    for name, cls in METHODS.items():
        if cls is not None:
            with contextlib.suppress(ConfigError):  # the detector without its extra (river)
                built[name] = cls()
    if not configured:
        return [name for name, module in built.items() if not module.needs_boundaries()]
    return [
        f"{name} ({module.task_free_with})"
        for name, module in built.items()
        if module.needs_boundaries() and module.task_free_with is not None
    ]


def check_task_index(index: Any) -> int:
    """Return ``index``, or raise :class:`ConfigError` unless it is an integer >= 0."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ConfigError(f"task index must be an integer >= 0, got {index!r}")
    return index


def open_task_index(modules: Sequence[ContinualModule]) -> int | None:
    """The index of the task the modules have open, if any."""
    return next((m.current_task.index for m in modules if m.current_task is not None), None)


@contextlib.contextmanager
def training_task(
    model: BaseAlgorithm,
    modules: Sequence[ContinualModule],
    index: int,
    name: str | None = None,
    steps: int | None = None,
) -> Iterator[TaskInfo]:
    """A scope inside which every ``learn`` call of ``model`` trains one and the same task.

    On entry each module selects the task (:meth:`~clrl.ContinualModule.set_task`) and begins it
    (:meth:`~clrl.ContinualModule.begin_task`: checks, then ``on_task_start``); on a normal exit each ends
    it once (``on_task_end``: EWC's Fisher, PackNet's pruning, ...). If the body raises, the task is
    aborted (no ``on_task_end``, not counted) and the exception propagates. Either way every hook is gone
    when the scope is left. Pass the modules to each ``learn`` as usual::

        with clrl.training_task(model, [ewc], index=0, name="flip0", steps=20_000):
            for _ in range(4):
                model.learn(5_000, callback=ewc, reset_num_timesteps=False)
                evaluate_policy(model, eval_env)  # between chunks: still the same task

    Args:
        model: The SB3 model that trains the task.
        modules: The continual modules that take part (those passed to ``learn`` inside the scope).
        index: The task's position in the stream (heads, columns and masks are chosen by it).
        name: The task's name (default ``task<index>``).
        steps: The task's budget of environment steps, summed over its ``learn`` calls. Modules that
            schedule something inside a task need it (PackNet's retraining phase).

    Yields:
        The :class:`~clrl.TaskInfo` the modules were given.

    Raises:
        ConfigError: Bad arguments, or a module cannot work with ``model`` (before anything trains).
    """
    modules = check_modules(modules)
    check_task_index(index)
    if steps is not None:
        steps = check_positive_int(steps, "task steps")
    task = TaskInfo(index, name if name is not None else f"task{index}", steps)
    opened: list[ContinualModule] = []
    try:
        for module in modules:
            module.set_task(index)
            module.begin_task(model, task)
            opened.append(module)
        yield task
    except BaseException:
        for module in opened:
            module.abort_task()
        raise
    try:
        for module in modules:
            module.end_task()
    finally:
        for module in modules:  # no hook stays, and a module left open by another's failure is closed
            module.abort_task()
