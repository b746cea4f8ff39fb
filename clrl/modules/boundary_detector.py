"""BoundaryDetector: task boundaries from a change-point test on a training signal (the episode returns,
the value function's error on each rollout, or an off-policy critic's TD loss), for modules that need
them on streams that hide them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from clrl.algorithms import finished_returns
from clrl.errors import ConfigError
from clrl.modules.base import ContinualModule, TaskInfo, check_positive, check_positive_int

Direction = Literal["down", "up"]
Signal = Literal["return", "value-error", "td-error"]
SIGNALS = ("return", "value-error", "td-error")
_CRITIC_LOSSES = ("train/loss", "train/critic_loss")
"""The keys under which SB3's off-policy algorithms record their critic's loss after each update: DQN's and
QR-DQN's ``train/loss``, SAC's, TD3's, TQC's and CrossQ's ``train/critic_loss``."""


def _page_hinkley(delta: float, threshold: float, min_instances: int, mode: Direction) -> Any:
    try:
        from river.drift import PageHinkley
    except ImportError:
        raise ConfigError('BoundaryDetector needs the river package: pip install "clrl[drift]"') from None
    return PageHinkley(min_instances=min_instances, delta=delta, threshold=threshold, mode=mode)


class ChangeTest:
    """The Page-Hinkley test for a shift of a sequence in one direction (river's ``PageHinkley``), on the
    scale of the sequence: its first ``warmup`` values give the standard deviation ``σ``, and the test's
    allowed change ``δ`` and alarm threshold ``λ`` are ``delta · σ`` and ``threshold · σ``. After an alarm it
    starts again with a new warm-up (a new task has a new scale). Shifts the other way raise no alarm: with
    ``direction="down"`` (a drop of the returns) a learning curve's rise does not, with ``"up"`` (a rise of
    the value error) a critic's falling error does not.

    Paper: Page 1954, "Continuous Inspection Schemes" (Biometrika); the implementation is river's
    (https://riverml.xyz), the scaling by the warm-up's deviation clrl's.

    Args:
        warmup: Values the scale is estimated on before the test runs (>= 2).
        delta: Allowed drift, in standard deviations (> 0).
        threshold: Alarm threshold, in standard deviations (> 0).
        direction: ``"down"`` (default) or ``"up"``: the shift that raises an alarm.
    """

    def __init__(
        self, warmup: int = 20, delta: float = 0.5, threshold: float = 20.0, direction: Direction = "down"
    ) -> None:
        self.warmup = check_positive_int(warmup, "warmup")
        if self.warmup < 2:
            raise ConfigError(f"warmup must be at least 2 values, got {warmup}")
        self.delta = check_positive(delta, "delta")
        self.threshold = check_positive(threshold, "threshold")
        if direction not in ("down", "up"):
            raise ConfigError(f"direction must be 'down' or 'up', got {direction!r}")
        self.direction: Direction = direction
        self._seen: list[float] = []
        self._test: Any = None
        _page_hinkley(1.0, 1.0, 1, direction)  # refuse a missing river now, not at the first alarm

    def update(self, value: float) -> bool:
        """Feed one value; whether the test raises an alarm on it."""
        if self._test is None:
            self._seen.append(float(value))
            if len(self._seen) < self.warmup:
                return False
            scale = float(np.std(self._seen)) or 1.0
            self._test = _page_hinkley(self.delta * scale, self.threshold * scale, 1, self.direction)
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
    """Give modules that need task boundaries the boundaries a change-point test finds in a training
    signal, on a stream that hides them (``boundaries = "hidden"``) or in any ``learn``.

    The detector holds the modules and passes every SB3 callback event on to them. The signal feeds a
    :class:`ChangeTest`:

    * ``signal="return"`` (default): each finished training episode's return (SB3's ``Monitor``), tested
      for a drop. Any algorithm.
    * ``signal="value-error"``: at the end of each rollout, the value function's mean squared error on it,
      ``mean((R_t - V(s_t))²)`` with SB3's returns ``R_t`` (GAE's, computed before the callback runs),
      tested for a rise: a change of rewards or dynamics makes the critic's predictions wrong, even when
      the returns do not fall (a task that became easier). On-policy algorithms (PPO, A2C, RecurrentPPO),
      whose rollout holds both.
    * ``signal="td-error"``: the TD loss of an off-policy critic, as SB3 records it after each update
      (DQN's Huber loss of ``Q(s, a)`` against ``r + γ max Q_target(s', ·)``, SAC's and TD3's critic
      loss; ``train/loss`` or ``train/critic_loss``), averaged over blocks of ``window`` updates, each
      block one value of the test, tested for a rise. Off-policy algorithms (DQN, QR-DQN, SAC, TD3, TQC,
      CrossQ). The loss is on batches sampled from the whole replay buffer, so a change shows as the new
      transitions enter it: more slowly with a larger buffer.

    An alarm ends the modules' task and begins the next, at the end of the rollout it came in (before the
    update, so on-policy modules read a whole rollout). The modules see tasks ``0, 1, ...`` named
    ``detected-<k>``. :attr:`detections` holds the steps of the alarms (compare them to the stream's true
    boundaries with :func:`clrl.metrics.detection_delays`). The detector is itself task-free.

    :func:`clrl.save` keeps the held modules (their classes, configurations and state) with the detector's,
    and :func:`clrl.load` rebuilds them (their classes imported only from allowed modules, as every module's).

    Deviations: no test on observation statistics.

    Args:
        modules: The modules to give boundaries to.
        warmup: Values that set the test's scale after each boundary (>= 2): episodes for ``"return"``
            (default 20), rollouts for ``"value-error"`` (default 5), blocks of updates for ``"td-error"``
            (default 10).
        delta: Allowed drift of the signal, in standard deviations of the warm-up.
        threshold: Alarm threshold, in standard deviations of the warm-up.
        signal: ``"return"``, ``"value-error"`` or ``"td-error"`` (above).
        window: Updates averaged into one value of ``"td-error"`` (>= 1).
        verbose: SB3 callback verbosity.
    """

    name = "boundary-detector"

    def __init__(
        self,
        modules: Sequence[ContinualModule] = (),
        warmup: int | None = None,
        delta: float = 0.5,
        threshold: float = 20.0,
        signal: Signal = "return",
        window: int = 25,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if not isinstance(modules, list | tuple) or not all(isinstance(m, ContinualModule) for m in modules):
            raise ConfigError(f"BoundaryDetector takes a list of ContinualModule instances, got {modules!r}")
        self.modules = list(modules)
        if any(isinstance(m, BoundaryDetector) for m in self.modules):
            raise ConfigError("BoundaryDetector cannot hold another BoundaryDetector")
        if signal not in SIGNALS:
            raise ConfigError(f"BoundaryDetector signal must be one of {', '.join(SIGNALS)}, got {signal!r}")
        self.signal: Signal = signal
        self.window = check_positive_int(window, "BoundaryDetector window")
        if warmup is None:
            warmup = {"return": 20, "value-error": 5, "td-error": 10}[signal]
        self.test = ChangeTest(warmup, delta, threshold, "down" if signal == "return" else "up")
        self.detections: list[int] = []
        """Environment steps at which a boundary was detected."""
        self._pending = False
        self._segment = 0
        self._losses: list[float] = []
        self._updates_read = 0

    def bind(self, model: BaseAlgorithm) -> None:
        """Bind the detector and every held module to ``model``."""
        super().bind(model)
        for module in self.modules:
            module.bind(model)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BoundaryDetector:
        """The detector :meth:`get_config` describes, its held modules rebuilt (each class imported only if
        it is a :class:`clrl.ContinualModule` of an allowed module, see :func:`clrl.allow_imports`).

        Raises:
            CheckpointError: A held module's class is not allowed or cannot be imported.
            ConfigError: A setting is bad.
        """
        from clrl.plain import import_class

        settings = dict(config)
        held = settings.pop("modules", [])
        if not isinstance(held, list) or not all(isinstance(e, dict) and "class" in e for e in held):
            raise ConfigError(f"BoundaryDetector: the held modules' record is damaged: {held!r}")
        modules = [
            import_class(e["class"], (ContinualModule,)).from_config(e.get("config", {}))  # type: ignore[attr-defined]
            for e in held
        ]
        return cls(modules, **settings)

    def needs_boundaries(self) -> bool:
        """Task-free: it makes the boundaries."""
        return False

    def get_config(self) -> dict[str, Any]:
        """The test's settings and each held module's class (``module:Class``) and configuration, from
        which :meth:`from_config` rebuilds the detector."""
        held = [
            {"class": f"{type(m).__module__}:{type(m).__qualname__}", "config": m.get_config()}
            for m in self.modules
        ]
        test = self.test
        return {
            "modules": held,
            "warmup": test.warmup,
            "delta": test.delta,
            "threshold": test.threshold,
            "signal": self.signal,
            "window": self.window,
        }

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse ``signal="value-error"`` off-policy and ``"td-error"`` on-policy; every held module checks
        the model."""
        if self.signal == "value-error" and not isinstance(model, OnPolicyAlgorithm):
            raise ConfigError(
                f"BoundaryDetector signal='value-error' reads an on-policy rollout's returns and values; "
                f"{type(model).__name__} has none: use signal='td-error' or 'return'"
            )
        if self.signal == "td-error" and not isinstance(model, OffPolicyAlgorithm):
            raise ConfigError(
                f"BoundaryDetector signal='td-error' reads an off-policy critic's TD loss; "
                f"{type(model).__name__} has none: use signal='value-error' or 'return'"
            )
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
        if self.signal == "td-error":
            self._read_td_loss()
        for module in self.modules:
            module.on_rollout_start()

    def _on_step(self) -> bool:
        if self.signal == "return":
            for value in finished_returns(self.locals.get("infos", ())):
                if self.test.update(value):
                    self._pending = True
        return all([module.on_step() for module in self.modules])

    def value_error(self) -> float:
        """The value function's mean squared error on the rollout just collected (on-policy)."""
        buffer: Any = self.sb3_model.rollout_buffer  # type: ignore[attr-defined]
        return float(np.mean(np.square(buffer.returns - buffer.values)))

    def _read_td_loss(self) -> None:
        """Collect the critic loss SB3 recorded in the update since the last rollout (an off-policy
        algorithm updates between rollouts, and its logger keeps the value until the next dump, which
        happens inside the rollout); feed each full block's mean to the test."""
        model = self.sb3_model
        updates = int(getattr(model, "_n_updates", 0))
        if updates == self._updates_read:
            return  # no update since the last read (learning has not started)
        self._updates_read = updates
        values = model.logger.name_to_value
        loss = next((values[k] for k in _CRITIC_LOSSES if k in values), None)
        if loss is None:
            return
        self._losses.append(float(loss))
        if len(self._losses) >= self.window:
            if self.test.update(float(np.mean(self._losses))):
                self._pending = True
            self._losses = []

    def _on_rollout_end(self) -> None:
        if self.signal == "value-error" and self.test.update(self.value_error()):
            self._pending = True
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
        """The detections, the TD-loss block being collected and each held module's state (the change test
        itself starts a new warm-up after loading)."""
        return {
            "held": [{"tasks_seen": m.tasks_seen, "state": m.state_dict()} for m in self.modules],
            "detections": list(self.detections),
            "segment": self._segment,
            "losses": list(self._losses),
            "updates_read": self._updates_read,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.detections = [int(s) for s in state["detections"]]
        self._segment = int(state["segment"])
        self._losses = [float(v) for v in state.get("losses", [])]
        self._updates_read = int(state.get("updates_read", 0))
        held = state.get("held", [])
        if held and len(held) != len(self.modules):
            raise ConfigError(f"BoundaryDetector holds {len(self.modules)} modules, the state {len(held)}")
        for module, entry in zip(self.modules, held, strict=False):
            module.load_state_dict(entry["state"])
            module.tasks_seen = int(entry["tasks_seen"])
