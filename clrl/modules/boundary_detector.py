"""BoundaryDetector: task boundaries from a change-point test on the training returns, for modules that
need them on streams that hide them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm

from clrl.algorithms import finished_returns
from clrl.errors import ConfigError
from clrl.modules.base import ContinualModule, TaskInfo, check_positive, check_positive_int


def _page_hinkley(delta: float, threshold: float, min_instances: int) -> Any:
    try:
        from river.drift import PageHinkley
    except ImportError:
        raise ConfigError('BoundaryDetector needs the river package: pip install "clrl[drift]"') from None
    return PageHinkley(min_instances=min_instances, delta=delta, threshold=threshold, mode="down")


class ReturnDropTest:
    """The Page-Hinkley test for a drop in a sequence (river's ``PageHinkley``, ``mode="down"``), on the
    scale of the sequence: its first ``warmup`` values give the standard deviation ``σ``, and the test's
    allowed change ``δ`` and alarm threshold ``λ`` are ``delta · σ`` and ``threshold · σ``. After an alarm it
    starts again with a new warm-up (a new task has a new scale). Rises, such as a learning curve's, raise no
    alarm.

    Paper: Page 1954, "Continuous Inspection Schemes" (Biometrika); the implementation is river's
    (https://riverml.xyz), the scaling by the warm-up's deviation clrl's.

    Args:
        warmup: Values the scale is estimated on before the test runs (>= 2).
        delta: Allowed drift, in standard deviations (> 0).
        threshold: Alarm threshold, in standard deviations (> 0).
    """

    def __init__(self, warmup: int = 20, delta: float = 0.5, threshold: float = 20.0) -> None:
        self.warmup = check_positive_int(warmup, "warmup")
        if self.warmup < 2:
            raise ConfigError(f"warmup must be at least 2 values, got {warmup}")
        self.delta = check_positive(delta, "delta")
        self.threshold = check_positive(threshold, "threshold")
        self._seen: list[float] = []
        self._test: Any = None
        _page_hinkley(1.0, 1.0, 1)  # refuse a missing river now, not at the first alarm

    def update(self, value: float) -> bool:
        """Feed one value; whether the test raises an alarm on it."""
        if self._test is None:
            self._seen.append(float(value))
            if len(self._seen) < self.warmup:
                return False
            scale = float(np.std(self._seen)) or 1.0
            self._test = _page_hinkley(self.delta * scale, self.threshold * scale, 1)
            for seen in self._seen:
                self._test.update(seen)
            return False
        self._test.update(float(value))
        if self._test.drift_detected:
            self._seen, self._test = [], None
            return True
        return False

    def scan(self, values: Sequence[float]) -> list[int]:
        """The positions in ``values`` at which an alarm is raised (fed in order, from this test's state)."""
        return [i for i, v in enumerate(values) if self.update(v)]


class BoundaryDetector(ContinualModule):
    """Give modules that need task boundaries the boundaries a change-point test finds in the training
    returns, on a stream that hides them (``boundaries = "hidden"``) or in any ``learn``.

    The detector holds the modules and passes every SB3 callback event on to them. Each finished training
    episode's return (SB3's ``Monitor``) feeds :class:`ReturnDropTest`; an alarm ends the modules' task
    and begins the next, at the end of the rollout it came in (before the update, so on-policy modules read
    a whole rollout). The modules see tasks ``0, 1, ...`` named ``detected-<k>``. :attr:`detections` holds
    the steps of the alarms (compare them to the stream's true boundaries with
    :func:`clrl.metrics.detection_delays`). The detector is itself task-free.

    Deviations: the signal is the episode return only (not the value or TD loss, nor the observations).
    The modules inside are not saved by :func:`clrl.save`.

    Args:
        modules: The modules to give boundaries to.
        warmup: Episodes that set the test's scale after each boundary (>= 2).
        delta: Allowed drift of the returns, in standard deviations of the warm-up.
        threshold: Alarm threshold, in standard deviations of the warm-up.
        verbose: SB3 callback verbosity.
    """

    name = "boundary-detector"

    def __init__(
        self,
        modules: Sequence[ContinualModule] = (),
        warmup: int = 20,
        delta: float = 0.5,
        threshold: float = 20.0,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.modules = list(modules)
        if not all(isinstance(m, ContinualModule) for m in self.modules):
            raise ConfigError("BoundaryDetector takes ContinualModule instances")
        if any(isinstance(m, BoundaryDetector) for m in self.modules):
            raise ConfigError("BoundaryDetector cannot hold another BoundaryDetector")
        self.test = ReturnDropTest(warmup, delta, threshold)
        self.detections: list[int] = []
        """Environment steps at which a boundary was detected."""
        self._pending = False
        self._segment = 0

    def needs_boundaries(self) -> bool:
        """Task-free: it makes the boundaries."""
        return False

    def get_config(self) -> dict[str, Any]:
        """The test's settings and each held module's class and configuration (a record, for
        ``results.json``: a checkpoint cannot rebuild the held modules from it)."""
        held = [{"class": type(m).__name__, "config": m.get_config()} for m in self.modules]
        test = self.test
        return {"modules": held, "warmup": test.warmup, "delta": test.delta, "threshold": test.threshold}

    def check_model(self, model: BaseAlgorithm) -> None:
        """Every held module checks the model."""
        for module in self.modules:
            module.check_model(model)

    def check_stream(self, stream: Any) -> None:
        """Every held module checks the stream."""
        for module in self.modules:
            module.check_stream(stream)

    # ---------------------------------------------------------------- tasks
    def on_task_start(self, task: TaskInfo) -> None:
        """Begin the held modules' first task of this one."""
        self._open()

    def on_task_end(self, task: TaskInfo) -> None:
        """End the held modules' task."""
        for module in self.modules:
            module.end_task()

    def _open(self) -> None:
        task = TaskInfo(self._segment, f"detected-{self._segment}")
        for module in self.modules:
            module.begin_task(self.sb3_model, task)

    def set_task(self, index: int) -> None:
        """Passed to the held modules."""
        for module in self.modules:
            module.set_task(index)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Every held module's evaluation state."""
        with contextlib.ExitStack() as stack:
            for module in self.modules:
                stack.enter_context(module.evaluating())
            yield

    # ---------------------------------------------------------------- SB3 events, passed on
    def _init_callback(self) -> None:
        for module in self.modules:
            module.init_callback(self.model)

    def update_child_locals(self, locals_: dict[str, Any]) -> None:
        for module in self.modules:
            module.update_locals(locals_)

    def _on_training_start(self) -> None:
        super()._on_training_start()
        for module in self.modules:
            module.on_training_start(self.locals, self.globals)

    def _on_rollout_start(self) -> None:
        for module in self.modules:
            module.on_rollout_start()

    def _on_step(self) -> bool:
        for value in finished_returns(self.locals.get("infos", ())):
            if self.test.update(value):
                self._pending = True
        return all([module.on_step() for module in self.modules])

    def _on_rollout_end(self) -> None:
        for module in self.modules:
            module.on_rollout_end()
        if self._pending:
            self._pending = False
            self.detections.append(int(self.sb3_model.num_timesteps))
            for module in self.modules:
                module.end_task()
            self._segment += 1
            self._open()
        super()._on_rollout_end()

    def _on_training_end(self) -> None:
        for module in self.modules:
            module.on_training_end()
        super()._on_training_end()

    def log_scalars(self) -> dict[str, float]:
        """Boundaries detected so far."""
        return {"detections": float(len(self.detections))}

    def state_dict(self) -> dict[str, Any]:
        """The detections (the held modules keep their own state)."""
        return {"detections": list(self.detections), "segment": self._segment}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.detections = [int(s) for s in state["detections"]]
        self._segment = int(state["segment"])
