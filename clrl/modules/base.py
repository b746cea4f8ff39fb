"""The continual-module mechanism: a typed base class connected to unmodified SB3 algorithms.

A :class:`ContinualModule` is an SB3 callback. When ``learn`` starts, it attaches to every optimiser of the
model (found through ``model._get_torch_save_params()``) and detaches when ``learn`` ends. Per optimiser
step SB3 runs ``zero_grad -> backward -> [clip_grad_norm_] -> step``; the hooks sit at:

* ``zero_grad`` (wrapped on the optimiser *instance*): after the real zero, :meth:`add_penalty_gradients`
  seeds ``.grad`` with a penalty's gradient and :meth:`extra_loss` is back-propagated. The algorithm's own
  loss then accumulates on top, so the penalty is clipped with it, exactly like a term of SB3's loss.
* ``register_step_pre_hook``: :meth:`adjust_gradients` sees the clipped gradients just before the update
  (gradient projection, masking).
* ``register_step_post_hook``: :meth:`after_update` (EMA copies, online importance).

Nothing of SB3's ``train()`` is copied, and any number of modules share one set of hooks per optimiser.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from clrl.algorithms import POLICY_WITHOUT_OPTIMIZER_STEP, optimizers
from clrl.errors import ConfigError, NumericalError


@dataclass(frozen=True)
class TaskInfo:
    """The task a module is told about at its start and end.

    Args:
        index: Position of the task in the stream (or the count of ``learn`` calls before it).
        name: The task's name.
    """

    index: int
    name: str


@dataclass(frozen=True)
class ParamGroup:
    """The parameters of one optimiser that one module acts on.

    Args:
        optimizer_name: The optimiser's attribute path on the model, e.g. ``"policy.optimizer"``.
        optimizer: The optimiser itself.
        names: Parameter names (relative to ``model.policy``), aligned with ``params``.
        params: The parameters, in the optimiser's order.
    """

    optimizer_name: str
    optimizer: torch.optim.Optimizer
    names: tuple[str, ...]
    params: tuple[torch.nn.Parameter, ...]

    def __iter__(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        return iter(zip(self.names, self.params, strict=True))


def add_to_grad(param: torch.Tensor, grad: torch.Tensor) -> None:
    """Accumulate ``grad`` into ``param.grad`` (which ``zero_grad`` may have set to ``None``)."""
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.add_(grad)


def _overrides(module: ContinualModule, hook: str) -> bool:
    return getattr(type(module), hook) is not getattr(ContinualModule, hook)


class _OptimizerHooks:
    """The hooks installed on one optimiser instance, shared by every module attached to it.

    Only the hooks some attached module overrides are installed and called, so a penalty-only module costs
    one wrapped ``zero_grad`` per step and nothing around the step itself.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.entries: list[tuple[ContinualModule, ParamGroup]] = []
        self._handles: list[Any] = []
        self._penalties: list[tuple[ContinualModule, ParamGroup]] = []
        self._losses: list[tuple[ContinualModule, ParamGroup]] = []
        self._pre: list[tuple[ContinualModule, ParamGroup]] = []
        self._post: list[tuple[ContinualModule, ParamGroup]] = []
        # An instance attribute shadows the class's zero_grad; deleting it restores the original.
        optimizer.zero_grad = self._zero_grad  # type: ignore[method-assign]

    def refresh(self) -> None:
        """Recompute which hooks are needed after modules came or went."""
        self._penalties = [e for e in self.entries if _overrides(e[0], "add_penalty_gradients")]
        self._losses = [e for e in self.entries if _overrides(e[0], "extra_loss")]
        self._pre = [e for e in self.entries if _overrides(e[0], "adjust_gradients")]
        self._post = [e for e in self.entries if _overrides(e[0], "after_update")]
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._pre:
            self._handles.append(self.optimizer.register_step_pre_hook(self._pre_step))
        if self._post:
            self._handles.append(self.optimizer.register_step_post_hook(self._post_step))

    def _zero_grad(self, set_to_none: bool = True) -> None:
        type(self.optimizer).zero_grad(self.optimizer, set_to_none)
        for module, group in self._penalties:
            module.add_penalty_gradients(group)
        for module, group in self._losses:
            loss = module.extra_loss(group)
            if loss is not None:
                loss.backward()

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for module, group in self._pre:
            module.adjust_gradients(group)

    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for module, group in self._post:
            module.after_update(group)

    def remove(self) -> None:
        self.optimizer.__dict__.pop("zero_grad", None)
        for handle in self._handles:
            handle.remove()
        self._handles = []


_HOOKS: weakref.WeakKeyDictionary[torch.optim.Optimizer, _OptimizerHooks] = weakref.WeakKeyDictionary()


class ContinualModule(BaseCallback):
    """Base class of continual-learning modules.

    A module is an SB3 callback: pass it to ``clrl.train(..., modules=[...])`` or to your own
    ``model.learn(steps, callback=module)``. Each ``learn`` call is one task: the module calls
    :meth:`on_task_start` when it starts and :meth:`on_task_end` when it ends.

    Subclasses override any of the hooks below; all default to doing nothing. Constructor arguments are
    hyperparameters: store each under its own name (``self.strength = strength``) so that
    :meth:`get_config` can rebuild the module from a checkpoint.
    """

    name: ClassVar[str] = "module"
    """Short name used in TensorBoard tags (``cl/<name>/...``) and on the command line."""

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.tasks_seen = 0
        self.current_task: TaskInfo | None = None
        self._next_task: TaskInfo | None = None
        self._attached: list[_OptimizerHooks] = []

    # ---------------------------------------------------------------- hooks for subclasses
    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Named parameters this module's gradient hooks act on (default: none, so no hooks run)."""
        return {}

    def check_stream(self, stream: Any) -> None:
        """Called by ``clrl.train`` before training with the :class:`clrl.TaskStream`; raise
        :class:`clrl.ConfigError` if the module cannot work on it (default: accept every stream)."""

    def on_task_start(self, task: TaskInfo) -> None:
        """Called when training on ``task`` starts, before the first step."""

    def on_task_end(self, task: TaskInfo) -> None:
        """Called when training on ``task`` ends; the model's env is still the task's."""

    def add_penalty_gradients(self, group: ParamGroup) -> None:
        """Add a penalty's gradient into ``p.grad`` (see :func:`add_to_grad`); runs before SB3's backward."""

    def extra_loss(self, group: ParamGroup) -> torch.Tensor | None:
        """A loss back-propagated right after ``zero_grad`` of ``group``'s optimiser, before SB3's own."""
        return None

    def adjust_gradients(self, group: ParamGroup) -> None:
        """Change ``p.grad`` in place after gradient clipping, just before the optimiser step."""

    def after_update(self, group: ParamGroup) -> None:
        """Called after each step of ``group``'s optimiser."""

    def set_task(self, index: int) -> None:
        """Select the task whose head, column or mask the policy uses (evaluation calls it per task)."""

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """A context in which the policy acts as this module wants it evaluated; the evaluator enters it
        around every evaluation (default: the trained policy as it is). :class:`clrl.CLSER` swaps in its
        stable copy; in your own loop, ``with module.evaluating(): evaluate_policy(model, env)``."""
        yield

    def state_dict(self) -> dict[str, Any]:
        """The module's learned state (anchors, importances, ...): tensors and plain data only."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def log_scalars(self) -> dict[str, float]:
        """Scalars logged under ``cl/<name>/<key>`` at the end of every rollout."""
        return {}

    def state_bytes(self) -> int:
        """Bytes held by the tensors of :meth:`state_dict` (what the module keeps between tasks)."""

        def size(tree: object) -> int:
            if isinstance(tree, torch.Tensor):
                return tree.numel() * tree.element_size()
            if isinstance(tree, dict):
                return sum(size(v) for v in tree.values())
            if isinstance(tree, list | tuple):
                return sum(size(v) for v in tree)
            return 0

        return size(self.state_dict())

    # ---------------------------------------------------------------- configuration
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this module (read from attributes of the same names)."""
        params = inspect.signature(type(self).__init__).parameters
        return {k: getattr(self, k) for k in params if k != "self" and hasattr(self, k)}

    def bind(self, model: BaseAlgorithm) -> None:
        """Attach to ``model`` outside ``learn``, e.g. to select tasks with :meth:`set_task` on a loaded
        model (:func:`clrl.load` does this); ``learn`` attaches the module by itself."""
        self.model = model

    def set_next_task(self, task: TaskInfo) -> None:
        """Name the task the next ``learn`` call trains (``clrl.train`` does this; own loops need not)."""
        self._next_task = task

    # ---------------------------------------------------------------- SB3 callback plumbing
    @property
    def sb3_model(self) -> BaseAlgorithm:
        """The model this module was attached to by ``learn``."""
        if getattr(self, "model", None) is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a model: call model.learn first")
        return self.model

    def uses_gradient_hooks(self) -> bool:
        """Whether this module overrides any of the optimiser hooks."""
        hooks = ("add_penalty_gradients", "extra_loss", "adjust_gradients", "after_update")
        return any(_overrides(self, h) for h in hooks)

    def _on_training_start(self) -> None:
        algorithm = type(self.sb3_model).__name__
        if algorithm in POLICY_WITHOUT_OPTIMIZER_STEP and self.uses_gradient_hooks():
            warnings.warn(
                f"{algorithm} updates its policy without an optimiser step: the gradient hooks of "
                f"{type(self).__name__} only reach what an optimiser steps (TRPO's critic; nothing for ARS)",
                stacklevel=2,
            )
        task = self._next_task or TaskInfo(self.tasks_seen, f"task{self.tasks_seen}")
        self._next_task = None
        self.current_task = task
        self.on_task_start(task)
        self.attach()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        for key, value in self._checked_scalars("while training").items():
            self.logger.record(f"cl/{self.name}/{key}", value)

    def _on_training_end(self) -> None:
        self.detach()
        assert self.current_task is not None
        self.on_task_end(self.current_task)
        self._checked_scalars("at the end of")
        self.tasks_seen += 1

    def _checked_scalars(self, when: str) -> dict[str, float]:
        """:meth:`log_scalars`, after making sure none is NaN or infinite (penalties, importances, losses)."""
        scalars = self.log_scalars()
        bad = {k: v for k, v in scalars.items() if not math.isfinite(v)}
        if bad:
            task = self.current_task
            where = f"task {task.name!r} (index {task.index})" if task else "the current task"
            raise NumericalError(f"{type(self).__name__}: {bad} {when} {where}")
        return scalars

    def attach(self) -> None:
        """Install this module's hooks on the model's optimisers (idempotent)."""
        self.detach()
        targets = self.target_parameters()
        if not targets:
            return
        by_id = {id(p): (n, p) for n, p in targets.items()}
        for opt_name, opt in optimizers(self.sb3_model).items():
            chosen = [by_id[id(p)] for g in opt.param_groups for p in g["params"] if id(p) in by_id]
            if not chosen:
                continue
            names, params = zip(*chosen, strict=True)
            hooks = _HOOKS.get(opt)
            if hooks is None:
                hooks = _HOOKS[opt] = _OptimizerHooks(opt)
            hooks.entries.append((self, ParamGroup(opt_name, opt, names, params)))
            hooks.refresh()
            self._attached.append(hooks)

    def detach(self) -> None:
        """Remove this module's hooks; an optimiser's hooks go when its last module leaves."""
        for hooks in self._attached:
            hooks.entries = [(m, g) for m, g in hooks.entries if m is not self]
            hooks.refresh()
            if not hooks.entries:
                hooks.remove()
                _HOOKS.pop(hooks.optimizer, None)
        self._attached = []


def check_non_negative(value: float, what: str) -> float:
    """Return ``value`` as a float, or raise :class:`ConfigError` if it is negative or not finite."""
    value = _as_float(value, what)
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{what} must be a finite number >= 0, got {value}")
    return value


def check_positive(value: float, what: str) -> float:
    """Return ``value`` as a float, or raise :class:`ConfigError` unless it is finite and > 0."""
    value = _as_float(value, what)
    if not 0 < value < float("inf"):
        raise ConfigError(f"{what} must be a finite number > 0, got {value}")
    return value


def check_fraction(value: float, what: str) -> float:
    """Return ``value`` as a float in [0, 1], or raise :class:`ConfigError`."""
    value = _as_float(value, what)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{what} must be in [0, 1], got {value}")
    return value


def check_positive_int(value: Any, what: str) -> int:
    """Return ``value`` as an int, or raise :class:`ConfigError` unless it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def check_bool(value: Any, what: str) -> bool:
    """Return ``value``, or raise :class:`ConfigError` unless it is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false, got {value!r}")
    return value


def _as_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{what} must be a number, got {type(value).__name__} {value!r}")
    return float(value)
