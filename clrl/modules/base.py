"""The continual-module mechanism: a typed base class connected to unmodified SB3 algorithms.

A :class:`ContinualModule` is an SB3 callback. Its life has two levels:

* **Tasks** are explicit events: :meth:`ContinualModule.begin_task` and :meth:`ContinualModule.end_task`,
  fired by :func:`clrl.training_task` (any number of ``learn`` calls are one task), by
  :class:`clrl.StreamCallback` (a whole stream inside one ``learn``) or, for code that uses neither, by
  each ``learn`` call (one ``learn``, one task). A task ends exactly once, however often SB3 or a wrapper
  calls ``on_training_end``.
* **Hooks** live only while a ``learn`` that carries the module runs. When it starts, the module attaches
  to every optimiser of the model (found through ``model._get_torch_save_params()``); when it ends, it
  detaches. A ``learn`` that raises (an exception, Ctrl-C) cannot run that end: its hooks then check, at
  every step, that the ``learn`` which installed them is still the one running, and the first step of any
  later ``learn`` removes them, so a model trained afterwards without the module trains exactly as plain
  SB3. :func:`clrl.training_task` and :func:`clrl.train` remove them at once, in a ``finally``.

Per optimiser step SB3 runs ``zero_grad -> backward -> [clip_grad_norm_] -> step``; the hooks sit at:

* ``zero_grad`` (wrapped on the optimiser *instance*): after the real zero, :meth:`add_penalty_gradients`
  seeds ``.grad`` with a penalty's gradient and :meth:`extra_loss` is back-propagated. The algorithm's own
  loss then accumulates on top, so the penalty is clipped with it, exactly like a term of SB3's loss.
* a post-accumulate-grad hook per parameter: :meth:`after_backward` sees each gradient right after SB3's
  backward, before its gradient clipping (SI reads the unclipped gradient, PackNet masks frozen entries).
* ``register_step_pre_hook``: :meth:`adjust_gradients` sees the clipped gradients just before the update
  (gradient projection, masking).
* ``register_step_post_hook``: :meth:`after_update` (EMA copies, online importance).

Nothing of SB3's ``train()`` is copied, any number of modules share one set of hooks per optimiser, and
nothing global refers to a model, optimiser or module: the hooks live on the optimiser instance, which
drops them when it is pickled or deep-copied (``torch.optim.Optimizer.__getstate__`` keeps only its
state), and :func:`patch_attributes` gives other patched objects (replay buffers) the same property.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from clrl.algorithms import POLICY_WITHOUT_OPTIMIZER_STEP, optimizers
from clrl.errors import ConfigError, NumericalError


@dataclass(frozen=True)
class TaskInfo:
    """The task a module is told about at its start and end.

    Args:
        index: Position of the task in the stream (or the count of tasks the module has seen before it).
        name: The task's name.
        steps: The task's budget of environment steps, when known (:func:`clrl.training_task`'s ``steps``;
            one ``learn`` call's ``total_timesteps`` when that call is the task). Modules that schedule
            something within a task (PackNet's pruning) need it.
    """

    index: int
    name: str
    steps: int | None = None


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


_HOOKS_ATTRIBUTE = "_clrl_hooks"
"""Where an optimiser keeps its :class:`_OptimizerHooks` (an instance attribute; pickling drops it)."""


class _OptimizerHooks:
    """The hooks installed on one optimiser instance, shared by every module attached to it.

    Only the hooks some attached module overrides are installed and called, so a penalty-only module costs
    one wrapped ``zero_grad`` per step and nothing around the step itself. Every ``zero_grad`` first drops
    the modules whose ``learn`` is over (see :meth:`ContinualModule.hooks_live`): SB3 zeroes the gradients
    before every backward, so no stale hook reaches a step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.entries: list[tuple[ContinualModule, ParamGroup]] = []
        self._modules: list[ContinualModule] = []
        self._handles: list[Any] = []
        self._penalties: list[tuple[ContinualModule, ParamGroup]] = []
        self._losses: list[tuple[ContinualModule, ParamGroup]] = []
        self._pre: list[tuple[ContinualModule, ParamGroup]] = []
        self._post: list[tuple[ContinualModule, ParamGroup]] = []
        # Instance attributes: zero_grad shadows the class's (deleting it restores the original), and the
        # hooks live exactly as long as the optimiser. Optimizer.__getstate__ pickles neither.
        optimizer.zero_grad = self._zero_grad  # type: ignore[method-assign]
        setattr(optimizer, _HOOKS_ATTRIBUTE, self)

    @staticmethod
    def of(optimizer: torch.optim.Optimizer) -> _OptimizerHooks:
        """The optimiser's hooks, installed on first use."""
        hooks = optimizer.__dict__.get(_HOOKS_ATTRIBUTE)
        return hooks if isinstance(hooks, _OptimizerHooks) else _OptimizerHooks(optimizer)

    def refresh(self) -> None:
        """Recompute which hooks are needed after modules came or went."""
        self._modules = list(dict.fromkeys(m for m, _ in self.entries))
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
        for module in self._modules:
            if not module.hooks_live():
                module.detach()  # changes self._modules: the loop goes on over the list it started with
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
        self.optimizer.__dict__.pop(_HOOKS_ATTRIBUTE, None)
        for handle in self._handles:
            handle.remove()
        self._handles = []


def patch_attributes(obj: Any, **attributes: Any) -> Callable[[], None]:
    """Set instance attributes on ``obj`` (e.g. wrapped methods of a replay buffer) so that ``obj`` still
    pickles, deep-copies and saves as if unpatched, and return the function that undoes the patch.

    The patched attributes, and any an earlier patch left, are left out of ``obj``'s pickled state: a
    buffer saved by SB3's ``save_replay_buffer`` (or a ``CheckpointCallback``) while a module is attached
    loads as the plain SB3 buffer. Attributes ``obj`` already had in its ``__dict__`` are put back on undo.
    """
    state = obj.__dict__
    saved = {k: state[k] for k in attributes if k in state}
    had_getstate = "__getstate__" in state
    own_getstate = state.get("__getstate__")
    patched = frozenset(attributes) | {"__getstate__"}

    def getstate() -> Any:
        cls_getstate = getattr(type(obj), "__getstate__", None)
        full = cls_getstate(obj) if cls_getstate is not None else state
        if not isinstance(full, dict):  # pragma: no cover (SB3's buffers pickle their __dict__)
            return full
        return {k: v for k, v in full.items() if k not in patched}

    state.update(attributes)
    state["__getstate__"] = getstate

    def undo() -> None:
        for key in patched:
            state.pop(key, None)
        state.update(saved)
        if had_getstate:
            state["__getstate__"] = own_getstate

    return undo


class ContinualModule(BaseCallback):
    """Base class of continual-learning modules.

    A module is an SB3 callback: pass it to ``clrl.train(..., modules=[...])`` or to your own
    ``model.learn(steps, callback=module)``. Tasks begin and end as explicit events
    (:meth:`begin_task`, :meth:`end_task`): inside ``with clrl.training_task(model, [module], index):``
    any number of ``learn`` calls are one task; without such a scope each ``learn`` call is one task. A
    ``learn`` that raised leaves its task open: the next ``learn`` with the module continues it.

    A module belongs to the model it first trained with: once it has learned a task, it refuses to train
    with another model (its anchors, masks or memories describe that model); :meth:`bind` carries it over
    on purpose, and :func:`clrl.load` rebuilds model and modules together.

    Subclasses override any of the hooks below; all default to doing nothing. Constructor arguments are
    hyperparameters: store each under its own name (``self.strength = strength``) so that
    :meth:`get_config` can rebuild the module from a checkpoint.
    """

    name: ClassVar[str] = "module"
    """Short name used in TensorBoard tags (``cl/<name>/...``) and on the command line."""

    task_free_with: ClassVar[str | None] = None
    """The constructor argument that makes a module task-free when its defaults need boundaries
    (``"every=K"``: online EWC, MAS, SI, shrink-and-perturb, reset; ``"include_current=true"``: Replay), as
    the refusal of a stream with hidden boundaries names it."""

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.tasks_seen = 0
        self.current_task: TaskInfo | None = None
        """The open task (between :meth:`begin_task` and :meth:`end_task`), or ``None``."""
        self._next_task: TaskInfo | None = None
        self._implicit = False  # the open task was opened by a learn call and ends with it
        self._learning = False  # inside a learn call that carries this module
        self._stamp: float | None = None  # model.start_time when the hooks were installed
        self._bound: weakref.ReferenceType[BaseAlgorithm] | None = None
        self._attached: list[_OptimizerHooks] = []
        self._grad_hooks: list[Any] = []  # handles of the after_backward hooks
        self._logged_episode = -1

    # ---------------------------------------------------------------- hooks for subclasses
    def target_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Named parameters this module's gradient hooks act on (default: none, so no hooks run)."""
        return {}

    def check_stream(self, stream: Any) -> None:
        """Called by ``clrl.train`` before training with the :class:`clrl.TaskStream`; raise
        :class:`clrl.ConfigError` if the module cannot work on it (default: accept every stream)."""

    def check_companions(self, others: Sequence[ContinualModule]) -> None:
        """Raise :class:`clrl.ConfigError` if the module cannot train beside ``others`` (the other modules
        of the run); called with :meth:`check_stream` (default: accept every companion)."""

    def needs_boundaries(self) -> bool:
        """Whether the module needs to be told where tasks start and end to do anything (default: yes).

        A stream that hides its boundaries (``boundaries = "hidden"``) shows a module one task from its
        first step to its last; a module that acts only at task ends (EWC's Fisher, PackNet's pruning,
        Replay's archive of earlier tasks) would then do nothing, so it is refused before training.
        Task-free modules return ``False``."""
        return True

    def check_model(self, model: BaseAlgorithm) -> None:
        """Raise :class:`clrl.ConfigError` if the module cannot work with ``model`` (its algorithm,
        policy or settings). Called before a task begins and by ``clrl.train`` before anything trains, so
        that nothing is refused after a task has trained (default: accept every model)."""

    def on_task_start(self, task: TaskInfo) -> None:
        """Called when training on ``task`` starts, before the first step."""

    def on_task_end(self, task: TaskInfo) -> None:
        """Called when training on ``task`` ends; the model's env is still the task's."""

    def add_penalty_gradients(self, group: ParamGroup) -> None:
        """Add a penalty's gradient into ``p.grad`` (see :func:`add_to_grad`); runs before SB3's backward."""

    def extra_loss(self, group: ParamGroup) -> torch.Tensor | None:
        """A loss back-propagated right after ``zero_grad`` of ``group``'s optimiser, before SB3's own."""
        return None

    def after_backward(self, name: str, param: torch.nn.Parameter) -> None:
        """Called for each of :meth:`target_parameters` as soon as a backward has accumulated its gradient
        into ``param.grad``: before SB3's gradient clipping (read or change the unclipped gradient)."""

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
        """Scalars logged under ``cl/<name>/<key>``: at every rollout end of on-policy algorithms, once per
        finished episode of off-policy ones (whose rollouts are a step or a few long), and at task ends."""
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

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ContinualModule:
        """The module :meth:`get_config` describes (what :func:`clrl.load` builds from a checkpoint)."""
        return cls(**config)

    def bind(self, model: BaseAlgorithm) -> None:
        """Make ``model`` this module's model, outside ``learn``: to select tasks with :meth:`set_task` on a
        loaded model (:func:`clrl.load` does this), or to carry learned state over to another model on
        purpose. ``learn`` and :meth:`begin_task` bind the module by themselves."""
        self.model = model
        self._bound = weakref.ref(model)

    def set_next_task(self, task: TaskInfo) -> None:
        """Name the task the next ``learn`` call trains when that call is the task (no
        :func:`clrl.training_task` scope around it)."""
        self._next_task = task

    # ---------------------------------------------------------------- task boundaries
    def begin_task(self, model: BaseAlgorithm, task: TaskInfo) -> None:
        """Start ``task`` on ``model``: check the model, bind to it and call :meth:`on_task_start`.

        :func:`clrl.training_task` and :class:`clrl.StreamCallback` call it; inside a running ``learn``
        the hooks are (re)installed for the new task.

        Raises:
            ConfigError: A task is already open, the module cannot work with ``model``
                (:meth:`check_model`), or it learned earlier tasks with another model.
        """
        if self.current_task is not None:
            raise ConfigError(
                f"{type(self).__name__}: task {self.current_task.name!r} is still open; end it "
                "(module.end_task()) or drop it (module.abort_task()) first"
            )
        self._refuse_another(model)
        self.check_model(model)
        self.bind(model)
        self.current_task = task
        self.on_task_start(task)
        if self._learning:
            self.attach()

    def end_task(self) -> None:
        """End the open task: remove the hooks, call :meth:`on_task_end`, count the task. Does nothing when
        no task is open, so a task ends once however often this is called."""
        task = self.current_task
        if task is None:
            return
        self.detach()  # inside a running learn (a boundary in a schedule), the next begin_task reattaches
        try:
            self.on_task_end(task)
            self._checked_scalars("at the end of")
        finally:
            self.current_task = None
            self._implicit = False
        self.tasks_seen += 1

    def abort_task(self) -> None:
        """Close the open task without ending it (no :meth:`on_task_end`, not counted); remove the hooks.
        :func:`clrl.training_task` calls it when its body raises."""
        self.detach()
        self.current_task = None
        self._implicit = False
        self._learning = False

    def _claim(self, model: BaseAlgorithm) -> None:
        """Bind to ``model``, refusing another model once a task has been learned with the bound one."""
        self._refuse_another(model)
        self.bind(model)

    def _refuse_another(self, model: BaseAlgorithm) -> None:
        bound = self._bound() if self._bound is not None else None
        if bound is not model and self.tasks_seen > 0:
            raise ConfigError(
                f"{type(self).__name__} has learned {self.tasks_seen} task(s) with another model, and its "
                f"state belongs to that model; build a new {type(self).__name__}(...) for a new model, load "
                "both with clrl.load, or call module.bind(model) to carry the state over on purpose"
            )

    # ---------------------------------------------------------------- SB3 callback plumbing
    @property
    def sb3_model(self) -> BaseAlgorithm:
        """The model this module is bound to (by ``learn``, :meth:`begin_task` or :meth:`bind`)."""
        if getattr(self, "model", None) is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a model: call model.learn first")
        return self.model

    def uses_gradient_hooks(self) -> bool:
        """Whether this module overrides any of the optimiser hooks."""
        hooks = ("add_penalty_gradients", "extra_loss", "after_backward", "adjust_gradients", "after_update")
        return any(_overrides(self, h) for h in hooks)

    def hooks_live(self) -> bool:
        """Whether no other ``learn`` has begun since this module's hooks were installed (SB3 stamps every
        ``learn`` with ``start_time``): false once a ``learn`` raised and another without the module began."""
        model = getattr(self, "model", None)
        return self._stamp is not None and getattr(model, "start_time", None) == self._stamp

    def _on_training_start(self) -> None:
        model = self.sb3_model
        algorithm = type(model).__name__
        if algorithm in POLICY_WITHOUT_OPTIMIZER_STEP and self.uses_gradient_hooks():
            warnings.warn(
                f"{algorithm} updates its policy without an optimiser step: the gradient hooks of "
                f"{type(self).__name__} only reach what an optimiser steps (TRPO's critic; nothing for ARS)",
                stacklevel=2,
            )
        if self.current_task is not None and not self._implicit:
            self._claim(model)  # an explicit task scope is open: this learn is part of its task
        elif self.current_task is None or (
            self._next_task is not None and self._next_task != self.current_task
        ):
            if self.current_task is not None:  # an earlier learn raised; clrl.train names a new task
                self.abort_task()
            total = int(self.locals.get("total_timesteps", model.num_timesteps))
            task = self._next_task or TaskInfo(self.tasks_seen, f"task{self.tasks_seen}")
            if task.steps is None:
                task = TaskInfo(task.index, task.name, max(total - model.num_timesteps, 0))
            self.begin_task(model, task)
            self._implicit = True
        # else: an earlier learn of this implicit task raised; this one continues the task.
        self._next_task = None
        self._learning = True
        self._logged_episode = getattr(model, "_episode_num", -1)
        self.attach()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        model = self.sb3_model
        if isinstance(model, OffPolicyAlgorithm):
            # A rollout is train_freq steps (often one): log once per finished episode, as SB3 dumps.
            if model._episode_num == self._logged_episode:
                return
            self._logged_episode = model._episode_num
        for key, value in self._checked_scalars("while training").items():
            self.logger.record(f"cl/{self.name}/{key}", value)

    def _on_training_end(self) -> None:
        self.detach()
        self._learning = False
        if self._implicit:
            self.end_task()

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
        """Install this module's hooks on the model's optimisers (idempotent; ``learn`` calls it). They act
        until :meth:`detach`, or until a ``learn`` without this module begins (:meth:`hooks_live`)."""
        self.detach()
        self._stamp = self.sb3_model.start_time
        targets = self.target_parameters()
        if not targets:
            return
        by_id = {id(p): (n, p) for n, p in targets.items()}
        for opt_name, opt in optimizers(self.sb3_model).items():
            chosen = [by_id[id(p)] for g in opt.param_groups for p in g["params"] if id(p) in by_id]
            if not chosen:
                continue
            names, params = zip(*chosen, strict=True)
            hooks = _OptimizerHooks.of(opt)
            hooks.entries.append((self, ParamGroup(opt_name, opt, names, params)))
            hooks.refresh()
            self._attached.append(hooks)
        if _overrides(self, "after_backward"):
            for name, param in targets.items():
                if not param.requires_grad:  # frozen now: no gradient to see
                    continue

                def after_backward(p: torch.Tensor, name: str = name) -> None:
                    self.after_backward(name, p)  # type: ignore[arg-type]

                self._grad_hooks.append(param.register_post_accumulate_grad_hook(after_backward))

    def detach(self) -> None:
        """Remove this module's hooks; an optimiser's hooks go when its last module leaves."""
        for handle in self._grad_hooks:
            handle.remove()
        self._grad_hooks = []
        for hooks in self._attached:
            hooks.entries = [(m, g) for m, g in hooks.entries if m is not self]
            hooks.refresh()
            if not hooks.entries:
                hooks.remove()
        self._attached = []
        self._stamp = None


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
