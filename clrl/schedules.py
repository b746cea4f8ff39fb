"""Schedules: a task attribute or wrapper argument that drifts over environment steps, declared as data.

In a stream file, a value that is a table with a ``schedule`` key follows a schedule instead of staying
constant::

    attributes = { length = { schedule = "linear", from = 0.5, to = 2.0 } }
    wrappers = [{ name = "PermuteActions", kwargs = { permutation = { schedule = "step",
                  values = [[0, 1], [1, 0], [0, 1]], at = [30000, 70000] } } }]

The step ``t`` of a schedule counts the environment steps of its task, over every environment of a
vectorised env together (as ``model.num_timesteps`` does), from 0 at the task's start; ``length`` is the
task's budget. Every schedule is a pure function of ``t``: a resumed run sees the values an
uninterrupted one saw.

=============== ======================================================== ==============================
``schedule``    keys                                                      value at step ``t``
=============== ======================================================== ==============================
``linear``      ``from``, ``to``, ``start`` (0), ``end`` (the budget)     ``from`` to ``to``, linearly
                                                                          between ``start`` and ``end``
``step``        ``values`` (any values), ``at`` (increasing steps, one    ``values[k]``, ``k`` = entries
                fewer than ``values``) or ``every``                       of ``at`` ``<= t``, or
                                                                          ``(t // every) % len(values)``
``sinusoid``    ``mean``, ``amplitude``, ``period`` (steps), ``phase``    ``mean + amplitude ·
                (0, in periods)                                           sin(2π (t / period + phase))``
``random-walk`` ``from``, ``std``, ``every`` (1000), ``low``, ``high``,   ``w[t // every]``, ``w[0] =
                ``seed`` (0)                                              from``, ``w[k+1] = clip(w[k] +
                                                                          std · N(0, 1), low, high)``
``piecewise``   ``points``: ``[[step, value], ...]``, increasing steps    linear between points,
                                                                          constant outside them
=============== ======================================================== ==============================

The random walk is drawn from its own ``seed`` (a property of the stream, the same for every run seed).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clrl.errors import StreamError
from clrl.hyperparameters import check_finite_numbers, is_number

MAX_WALK_POINTS = 10**6
"""Most points a random walk may draw (``length / every``): more is a typo that would fill the memory."""

_KEYS: dict[str, tuple[set[str], set[str]]] = {
    "linear": ({"from", "to"}, {"start", "end"}),
    "step": ({"values"}, {"at", "every"}),
    "sinusoid": ({"mean", "amplitude", "period"}, {"phase"}),
    "random-walk": ({"from", "std"}, {"every", "low", "high", "seed"}),
    "piecewise": ({"points"}, set()),
}
"""Each schedule's required and optional keys (beside ``schedule``)."""
SCHEDULES = tuple(_KEYS)


def is_schedule(value: Any) -> bool:
    """Whether a stream-file value declares a schedule (a table with a ``schedule`` key)."""
    return isinstance(value, Mapping) and "schedule" in value


def _number(data: Mapping[str, Any], key: str, where: str) -> float:
    value = data[key]
    if not is_number(value) or not math.isfinite(float(value)):
        raise StreamError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)


def _step(value: Any, where: str, what: str, positive: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (1 if positive else 0):
        raise StreamError(f"{where}: {what} must be an integer >= {1 if positive else 0}, got {value!r}")
    return value


@dataclass(frozen=True)
class Schedule:
    """A value that changes with the step of its task (see the module docstring for the kinds).

    Build one with :func:`schedule_from_dict`; :meth:`to_dict` gives the stream-file table back.

    Args:
        kind: One of :data:`SCHEDULES`.
        spec: The table's other keys, validated.
    """

    kind: str
    spec: dict[str, Any] = field(default_factory=dict)
    _walk: list[float] = field(default_factory=list, repr=False, compare=False)

    def value(self, step: int, length: int | None = None) -> Any:
        """The value at step ``step`` of a task of ``length`` steps.

        Raises:
            StreamError: A ``linear`` schedule without ``end`` and no ``length`` to end at.
        """
        spec = self.spec
        if self.kind == "linear":
            start, end = spec.get("start", 0), spec.get("end", length)
            if end is None:
                raise StreamError("a linear schedule without 'end' needs the task's budget")
            if end <= start:
                return spec["to"] if step >= start else spec["from"]
            share = min(max((step - start) / (end - start), 0.0), 1.0)
            return spec["from"] + (spec["to"] - spec["from"]) * share
        if self.kind == "step":
            values = spec["values"]
            if "every" in spec:
                return values[(step // spec["every"]) % len(values)]
            return values[sum(1 for s in spec.get("at", []) if s <= step)]
        if self.kind == "sinusoid":
            turns = step / spec["period"] + spec.get("phase", 0.0)
            return spec["mean"] + spec["amplitude"] * math.sin(2 * math.pi * turns)
        if self.kind == "random-walk":
            return self._walk_value(step // spec.get("every", 1000))
        points = spec["points"]
        if step <= points[0][0]:
            return points[0][1]
        for (s0, v0), (s1, v1) in itertools.pairwise(points):
            if step <= s1:
                return v0 + (v1 - v0) * (step - s0) / (s1 - s0)
        return points[-1][1]

    def scaled(self, factor: float) -> Schedule:
        """The same schedule on a task ``factor`` times as long: every step it names scaled (rounded; steps
        between changes and periods at least 1, the ``at`` steps and points kept increasing)."""
        spec = dict(self.spec)

        def scale(step: int, least: int = 0) -> int:
            return max(least, round(step * factor))

        for key in ("start", "end"):
            if key in spec:
                spec[key] = scale(spec[key])
        if "start" in spec and "end" in spec and spec["end"] <= spec["start"]:
            spec["end"] = spec["start"] + 1
        if "every" in spec:
            spec["every"] = scale(spec["every"], 1)
        if "period" in spec:
            spec["period"] = max(spec["period"] * factor, 1e-9)
        if "at" in spec:
            at: list[int] = []
            for step in spec["at"]:
                at.append(max(scale(step), at[-1] + 1 if at else 0))
            spec["at"] = at
        if "points" in spec:
            points: list[list[Any]] = []
            for step, value in spec["points"]:
                points.append([max(scale(step), points[-1][0] + 1 if points else 0), value])
            spec["points"] = points
        return Schedule(self.kind, spec)

    def checkpoints(self, length: int | None) -> list[int]:
        """Steps at which the schedule takes each of its distinct kinds of value (a ``step`` schedule's
        every value; the others' start and end), for validating a stream up front."""
        spec = self.spec
        if self.kind == "step":
            if "every" in spec:
                return [k * spec["every"] for k in range(len(spec["values"]))]
            return [0, *spec.get("at", [])]
        if self.kind == "piecewise":
            return [p[0] for p in spec["points"]]
        return [0] if length is None else [0, length]

    def _walk_value(self, index: int) -> float:
        if index >= MAX_WALK_POINTS:
            raise StreamError(f"random walk: step {index} is beyond its {MAX_WALK_POINTS} points")
        walk = self._walk
        if len(walk) <= index:  # draw the whole walk again up to index: the same generator, same numbers
            spec = self.spec
            count = max(index + 1, 2 * len(walk))
            rng = np.random.default_rng(spec.get("seed", 0))
            steps = rng.standard_normal(count - 1) * spec["std"]
            low, high = spec.get("low", -math.inf), spec.get("high", math.inf)
            values = [min(max(float(spec["from"]), low), high)]
            for increment in steps:
                values.append(min(max(values[-1] + float(increment), low), high))
            walk[:] = values
        return walk[index]

    def to_dict(self) -> dict[str, Any]:
        """The stream-file table (the inverse of :func:`schedule_from_dict`)."""
        return {"schedule": self.kind, **self.spec}


def schedule_from_dict(data: Mapping[str, Any], where: str) -> Schedule:
    """Validate a stream file's schedule table.

    Raises:
        StreamError: An unknown schedule or key, a missing key, or a value of the wrong kind, in one line
            naming ``where``.
    """
    kind = data.get("schedule")
    if not isinstance(kind, str) or kind not in _KEYS:
        raise StreamError(f"{where}: schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    where = f"{where} ({kind} schedule)"
    required, optional = _KEYS[kind]
    keys = set(data) - {"schedule"}
    for key in sorted(keys - required - optional):
        raise StreamError(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(required | optional))})")
    for key in sorted(required - keys):
        raise StreamError(f"{where}: missing key {key!r}")
    spec: dict[str, Any] = {}
    if kind == "linear":
        spec = {"from": _number(data, "from", where), "to": _number(data, "to", where)}
        for key in ("start", "end"):
            if key in data:
                spec[key] = _step(data[key], where, key)
        if "start" in spec and "end" in spec and spec["end"] <= spec["start"]:
            raise StreamError(f"{where}: end ({spec['end']}) must be after start ({spec['start']})")
    elif kind == "step":
        values = data["values"]
        if not isinstance(values, list) or not values:
            raise StreamError(f"{where}: values must be a non-empty list, got {values!r}")
        check_finite_numbers({"values": values}, where, StreamError)
        spec = {"values": list(values)}
        if "at" in data and "every" in data:
            raise StreamError(f"{where}: give either at or every, not both")
        if "every" in data:
            spec["every"] = _step(data["every"], where, "every", positive=True)
        else:
            at = data.get("at", [])
            if not isinstance(at, list) or len(at) != len(values) - 1:
                raise StreamError(
                    f"{where}: at must list {len(values) - 1} step(s), one per change of value, got {at!r}"
                )
            at = [_step(s, where, "each entry of at") for s in at]
            if any(b <= a for a, b in itertools.pairwise(at)):
                raise StreamError(f"{where}: at must be increasing, got {at}")
            spec["at"] = at
    elif kind == "sinusoid":
        spec = {key: _number(data, key, where) for key in ("mean", "amplitude", "period")}
        if spec["period"] <= 0:
            raise StreamError(f"{where}: period must be > 0, got {spec['period']}")
        if "phase" in data:
            spec["phase"] = _number(data, "phase", where)
    elif kind == "random-walk":
        spec = {"from": _number(data, "from", where), "std": _number(data, "std", where)}
        if spec["std"] < 0:
            raise StreamError(f"{where}: std must be >= 0, got {spec['std']}")
        if "every" in data:
            spec["every"] = _step(data["every"], where, "every", positive=True)
        for key in ("low", "high"):
            if key in data:
                spec[key] = _number(data, key, where)
        if spec.get("low", -math.inf) > spec.get("high", math.inf):
            raise StreamError(f"{where}: low ({spec['low']}) must not exceed high ({spec['high']})")
        if "seed" in data:
            spec["seed"] = _step(data["seed"], where, "seed")
    else:
        points = data["points"]
        if not isinstance(points, list) or not points:
            raise StreamError(f"{where}: points must be a non-empty list of [step, value], got {points!r}")
        parsed = []
        for point in points:
            if not isinstance(point, list) or len(point) != 2:
                raise StreamError(f"{where}: each point must be [step, value], got {point!r}")
            parsed.append([_step(point[0], where, "a point's step"), _number({"v": point[1]}, "v", where)])
        if any(b[0] <= a[0] for a, b in itertools.pairwise(parsed)):
            raise StreamError(f"{where}: the points' steps must be increasing, got {[p[0] for p in parsed]}")
        spec = {"points": parsed}
    return Schedule(kind, spec)
