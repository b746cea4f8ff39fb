"""Bounded memories of earlier tasks: a reservoir sample per task, shared by the replay-family modules.

A :class:`Reservoir` keeps a uniform random sample of everything added to it (Vitter's algorithm R: the
``t``-th item replaces a random slot with probability ``capacity / t``), so a task's memory represents the
whole task, not its last steps. Items are rows of named numpy arrays (observations keep their dtype:
uint8 images stay uint8). :class:`TaskMemory` holds one reservoir per task under one budget: when a task
starts, every earlier reservoir is shrunk to ``budget // (tasks + 1)`` rows by a uniform subsample (a
uniform sample of a uniform sample is uniform), and the new task gets the same share, so the rows held
never exceed the budget however long the stream.

Floating-point fields can be stored compressed (``dtype``): at half precision, or as per-feature uint8 codes
of a range shared by the memory's reservoirs (:class:`Quantiser`).

With ``selection="herding"`` the shrinking keeps the rows iCaRL's herding picks instead of a uniform
subsample (:func:`herding_order`): the rows whose running mean stays closest to the mean of every row held,
so a task's few remaining rows still average like its many.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.preprocessing import get_flattened_obs_dim

from clrl.errors import ConfigError
from clrl.modules.base import ContinualModule, TaskInfo, check_bool

Budget = int | Literal["all"]
Rows = dict[str, np.ndarray]
MemoryDtype = Literal["float32", "float16", "uint8"]
MEMORY_DTYPES = ("float32", "float16", "uint8")
Selection = Literal["uniform", "herding"]
SELECTIONS = ("uniform", "herding")
HERDING_MAX_FEATURES = 1024
"""Herding compares observations feature by feature (rows × features floats at once): larger observations
(images) are refused."""


def _check_choice(value: Any, choices: tuple[str, ...], what: str) -> Any:
    if value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_memory_dtype(dtype: Any, what: str) -> MemoryDtype:
    """Return ``dtype`` (``"float32"``, ``"float16"`` or ``"uint8"``), or raise :class:`ConfigError`."""
    return _check_choice(dtype, MEMORY_DTYPES, what)


def check_selection(selection: Any, what: str) -> Selection:
    """Return ``selection`` (``"uniform"`` or ``"herding"``), or raise :class:`ConfigError`."""
    return _check_choice(selection, SELECTIONS, what)


def herding_order(features: np.ndarray, count: int) -> np.ndarray:
    """iCaRL's herding (Rebuffi et al. 2017, Algorithm 4; Welling 2009): ``count`` row indices, chosen one
    at a time, each the row not yet chosen that brings the mean of the chosen rows closest (in Euclidean
    distance) to the mean ``μ`` of all rows: ``p_k = argmin_x ‖μ - (x + Σ_{j<k} p_j) / k‖``. Ties go to the
    lower index. Any prefix of the order is herding's choice of that many rows.

    Each step is one matrix-vector product over the rows, so the cost is ``O(count · rows · features)``.

    Args:
        features: One row of features per candidate, shape ``(rows, features)``.
        count: How many to choose (at most the rows).
    """
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    count = min(int(count), len(x))
    mean = x.mean(axis=0)
    half_norms = 0.5 * np.einsum("ij,ij->i", x, x)  # +inf once a row is taken
    total = np.zeros(x.shape[1])
    score = np.empty(len(x))
    order = np.empty(count, dtype=np.int64)
    for k in range(1, count + 1):
        # ‖μ - (S + x)/k‖² = ‖(kμ - S) - x‖² / k²: the row nearest r = kμ - S, i.e. least ‖x‖²/2 - r·x
        np.dot(x, k * mean - total, out=score)
        np.subtract(half_norms, score, out=score)
        i = int(np.argmin(score))
        order[k - 1], half_norms[i] = i, np.inf
        total += x[i]
    return order


def herding_features(rows: Rows) -> np.ndarray:
    """The features herding compares: the rows' observations (the ``"obs"`` field, or the ``"obs.<key>"``
    fields of Dict observations, flattened), each feature standardised over the rows (a constant one is
    left at 0), so that none counts more for its scale."""
    keys = sorted(k for k in rows if k == "obs" or k.startswith("obs."))
    if not keys:
        raise ValueError(f"herding compares observations, but the rows have fields {sorted(rows)}")
    x = np.concatenate([rows[k].reshape(len(rows[k]), -1).astype(np.float64) for k in keys], axis=1)
    spread = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(spread > 0, spread, 1.0)


def check_budget(budget: Budget, what: str) -> Budget:
    """Return ``budget`` (a positive int or ``"all"``), or raise :class:`ConfigError`."""
    if budget == "all":
        return "all"
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget < 1:
        raise ConfigError(f"{what} must be a positive number of rows or 'all', got {budget!r}")
    return int(budget)


def concat_rows(parts: list[Rows]) -> Rows:
    """The rows of ``parts`` (same fields) one after another; a single part is returned as it is."""
    return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class Quantiser:
    """Per-feature uint8 codes of floating-point fields, over a range shared by the reservoirs of a memory.

    Each field's every entry of a row (a feature) has its own range ``[lo, hi]``, and a value ``x`` is kept
    as ``q = round(255 · (x - lo) / (hi - lo))`` and read back as ``lo + q · (hi - lo) / 255``: within half
    a step ``(hi - lo) / 255`` of ``x``. The range starts as that of the first rows offered and widens when
    later rows fall outside it; the rows already held are then coded again in the new range, each time
    adding up to half of its step. A range that widens at least doubles its span (it is extended past the
    new values where needed), so those steps shrink geometrically into the past and every value read back
    is within one step of the value given (half a step for rows offered since the range last widened).
    Constant features (``lo == hi``) are exact. Non-finite values cannot be coded and raise ``ValueError``.

    One quantiser serves all the reservoirs of a :class:`TaskMemory`, so that their codes mean the same and
    can be gathered into one array; ``members`` names them (a lone reservoir is its own only member) and
    ``on_change`` is called after they were coded again.

    Args:
        members: The reservoirs whose rows use this quantiser's ranges.
        on_change: Called after the held rows were coded in a widened range.
        row_axes: Leading axes of a field that share one range: 1 (rows; a feature is every entry of a
            row), 2 for rows of sequences (CLEAR's segments: a feature is an entry of every step).
    """

    def __init__(
        self,
        members: Callable[[], Iterable[Reservoir]] = lambda: (),
        on_change: Callable[[], None] = lambda: None,
        row_axes: int = 1,
    ) -> None:
        self.members = members
        self.on_change = on_change
        self.row_axes = row_axes
        self.lo: dict[str, np.ndarray] = {}
        """Each field's lowest value per feature (float64, the shape after the ``row_axes``)."""
        self.hi: dict[str, np.ndarray] = {}
        """Each field's highest value per feature."""

    @property
    def nbytes(self) -> int:
        """Bytes of the ranges."""
        return sum(v.nbytes for v in (*self.lo.values(), *self.hi.values()))

    def step(self, key: str) -> np.ndarray:
        """The width of one code of ``key``'s features (``(hi - lo) / 255``)."""
        return (self.hi[key] - self.lo[key]) / 255.0

    def encode(self, key: str, values: np.ndarray) -> np.ndarray:
        """The codes of ``values`` (rows of field ``key``), widening its range first if they leave it."""
        x = values.astype(np.float64)
        if not np.isfinite(x).all():
            raise ValueError(
                f"memory_dtype='uint8' codes finite values only; field {key!r} has non-finite ones"
            )
        if len(x) == 0:
            return np.zeros(x.shape, dtype=np.uint8)
        axes = tuple(range(self.row_axes))
        low, high = x.min(axis=axes), x.max(axis=axes)
        if key not in self.lo:
            self.lo[key], self.hi[key] = low, high
        elif (low < self.lo[key]).any() or (high > self.hi[key]).any():
            self._widen(key, low, high)
        return self._codes(x, self.lo[key], self.hi[key])

    def decode(self, key: str, codes: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
        """The values of ``codes`` of field ``key``, in ``dtype``."""
        return self._values(codes, self.lo[key], self.hi[key]).astype(dtype)

    @staticmethod
    def _values(codes: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return lo + (hi - lo) * (codes / 255.0)

    @staticmethod
    def _codes(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        span = hi - lo
        scaled = np.divide((x - lo) * 255.0, span, out=np.zeros_like(x), where=span > 0)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)

    def _widen(self, key: str, low: np.ndarray, high: np.ndarray) -> None:
        lo, hi = self.lo[key], self.hi[key]
        span = hi - lo
        new_lo, new_hi = np.minimum(lo, low), np.maximum(hi, high)
        short = (span > 0) & (new_hi - new_lo < 2 * span) & ((new_lo < lo) | (new_hi > hi))
        upward = short & (new_hi > hi)  # the top was passed: double the span upward, else downward
        new_hi = np.where(upward, new_lo + 2 * span, new_hi)
        new_lo = np.where(short & ~upward, new_hi - 2 * span, new_lo)
        for member in self.members():
            if member.size and key in member.data:
                held = member.data[key][: member.size]
                held[...] = self._codes(self._values(held, lo, hi), new_lo, new_hi)
        self.lo[key], self.hi[key] = new_lo, new_hi
        self.on_change()

    def state_dict(self) -> dict[str, Any]:
        """The ranges, as float64 tensors."""
        return {
            "lo": {k: torch.from_numpy(np.array(v, dtype=np.float64)) for k, v in self.lo.items()},
            "hi": {k: torch.from_numpy(np.array(v, dtype=np.float64)) for k, v in self.hi.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Restore the ranges of the fields in ``shapes`` (each the shape after the ``row_axes``), checking
        them."""
        for key, shape in shapes.items():
            try:
                lo = np.asarray(state["lo"][key].numpy(), dtype=np.float64)
                hi = np.asarray(state["hi"][key].numpy(), dtype=np.float64)
            except (KeyError, TypeError, AttributeError):
                raise ConfigError(f"a saved uint8 memory has no range for its field {key!r}") from None
            if (
                lo.shape != shape
                or hi.shape != shape
                or not (np.isfinite(lo).all() and np.isfinite(hi).all())
            ):
                raise ConfigError(
                    f"a saved uint8 memory's range of field {key!r} is not {shape} finite values"
                )
            if (hi < lo).any():
                raise ConfigError(f"a saved uint8 memory's range of field {key!r} has hi below lo")
            self.lo[key], self.hi[key] = lo, hi


class Reservoir:
    """A uniform random sample of at most ``capacity`` rows of everything added (``None``: keep all).

    With ``dtype="float16"``, floating-point fields are stored at half precision (half the bytes; the
    compressed memory of Hayes et al. 2019, "Memory Efficient Experience Replay for Streaming Learning",
    ICRA, in its simplest form) and read back in their own dtype: each value then carries float16's
    relative error (at most ``2⁻¹¹``) and values beyond ``±65504`` become infinite. Other fields (uint8
    images, integer actions) are kept as they are. With ``dtype="uint8"``, they are stored as one byte per
    value, coded per feature over a range that follows the data (:class:`Quantiser`; a quarter of float32's
    bytes): each value read back is within one step ``(hi - lo) / 255`` of its feature's range.

    Args:
        capacity: Rows kept; ``None`` keeps every row (storage grows by doubling).
        dtype: ``"float32"`` (default: every field as given), ``"float16"`` or ``"uint8"``.
        quantiser: The ranges of ``"uint8"`` codes, shared with other reservoirs (default: its own).
    """

    def __init__(
        self, capacity: int | None, dtype: MemoryDtype = "float32", quantiser: Quantiser | None = None
    ) -> None:
        self.capacity = capacity
        self.dtype: MemoryDtype = dtype
        self.quantiser = Quantiser(lambda: (self,)) if quantiser is None else quantiser
        """The ranges of the ``"uint8"`` codes (unused by the other dtypes)."""
        self.seen = 0
        """Rows offered so far."""
        self.size = 0
        """Rows held."""
        self.data: Rows = {}
        """The stored rows (compressed fields at half precision); :meth:`rows` reads them back."""
        self.dtypes: dict[str, np.dtype[Any]] = {}
        """Each field's dtype as given."""
        self.ordered = False
        """The rows held are in herding's order (:meth:`shrink` with ``"herding"``; adding rows undoes it)."""

    def _stored(self, dtype: np.dtype[Any]) -> np.dtype[Any]:
        if self.dtype == "float32" or not np.issubdtype(dtype, np.floating):
            return dtype
        return np.dtype(np.float16 if self.dtype == "float16" else np.uint8)

    def _coded(self, key: str) -> bool:
        return self.dtype == "uint8" and np.issubdtype(self.dtypes[key], np.floating)

    def _encode(self, rows: Rows) -> Rows:
        if self.dtype != "uint8":
            return rows  # float16: numpy casts on assignment
        return {k: self.quantiser.encode(k, v) if self._coded(k) else v for k, v in rows.items()}

    def restore(self, rows: Rows) -> Rows:
        """``rows`` of this reservoir's stored fields in their own dtypes."""
        restored = {}
        for k, v in rows.items():
            own = self.dtypes.get(k, v.dtype)
            if v.dtype == own:
                restored[k] = v
            elif self._coded(k):
                restored[k] = self.quantiser.decode(k, v, own)
            else:
                restored[k] = v.astype(own)
        return restored

    def set_field(self, key: str, values: np.ndarray) -> None:
        """Store a whole field (one row per slot, the held rows first), compressed like the others."""
        self.dtypes[key] = values.dtype
        if self._coded(key):
            codes = np.zeros(values.shape, dtype=np.uint8)
            codes[: self.size] = self.quantiser.encode(key, values[: self.size])
            self.data[key] = codes
        else:
            self.data[key] = values.astype(self._stored(values.dtype), copy=False)

    def __len__(self) -> int:
        return self.size

    def _reserve(self, rows: Rows, needed: int) -> None:
        if not self.data:
            room = self.capacity if self.capacity is not None else max(needed, 1024)
            self.dtypes = {k: v.dtype for k, v in rows.items()}
            self.data = {
                k: np.zeros((room, *v.shape[1:]), dtype=self._stored(v.dtype)) for k, v in rows.items()
            }
        if not set(rows) <= set(self.data):
            raise ValueError(f"rows have fields {sorted(rows)}, the reservoir {sorted(self.data)}")
        room = len(next(iter(self.data.values())))
        if needed > room:  # unbounded, or a gathered reservoir (see TaskMemory.sample) filled again
            grown = max(needed, 2 * room)
            grown = grown if self.capacity is None else min(grown, self.capacity)
            for k, v in self.data.items():
                bigger = np.zeros((grown, *v.shape[1:]), dtype=v.dtype)
                bigger[: self.size] = v[: self.size]
                self.data[k] = bigger

    def add(self, rows: Rows, rng: np.random.Generator) -> None:
        """Offer ``rows`` (arrays with the same first dimension), in order, to the sample."""
        n = len(next(iter(rows.values())))
        if n == 0:
            return
        self.ordered = False
        cap = self.capacity
        free = n if cap is None else max(0, min(n, cap - self.size))
        self._reserve(rows, self.size + free)
        rows = self._encode(rows)
        if free:
            for k, v in rows.items():
                self.data[k][self.size : self.size + free] = v[:free]
            self.size += free
        if free < n:
            assert cap is not None
            # Row t (1-based count of rows offered) replaces slot j ~ U{0, ..., t-1} when j < capacity.
            counts = self.seen + free + 1 + np.arange(n - free)
            slots = rng.integers(0, counts)
            for row, slot in zip(np.flatnonzero(slots < cap) + free, slots[slots < cap], strict=True):
                for k, v in rows.items():
                    self.data[k][slot] = v[row]
        self.seen += n

    def shrink(self, capacity: int, rng: np.random.Generator, selection: Selection = "uniform") -> None:
        """Keep ``capacity`` rows (and at most that many from now on): a uniform random subset, or with
        ``"herding"`` the first ``capacity`` of :func:`herding_order` over the rows held (kept in that order,
        so that a later shrink keeps a prefix: herding's choice of fewer rows)."""
        if self.size > capacity:
            if selection == "herding":
                keep = (
                    np.arange(capacity)
                    if self.ordered
                    else herding_order(herding_features(self.rows()), capacity)
                )
                self.ordered = True
            else:
                keep = np.sort(rng.choice(self.size, size=capacity, replace=False))
            self.data = {k: v[keep].copy() for k, v in self.data.items()}
            self.size = capacity
        elif self.data and len(next(iter(self.data.values()))) > capacity:
            self.data = {k: v[:capacity].copy() for k, v in self.data.items()}
        self.capacity = capacity

    def rows(self, index: np.ndarray | slice | None = None) -> Rows:
        """The rows held (or those at ``index``), in their own dtypes."""
        return self.restore(self.stored_rows(index))

    def stored_rows(self, index: np.ndarray | slice | None = None) -> Rows:
        """The rows held (or those at ``index``) as stored."""
        index = slice(0, self.size) if index is None else index
        return {k: v[: self.size][index] for k, v in self.data.items()}

    @property
    def nbytes(self) -> int:
        """Bytes of the rows held."""
        return sum(v[: self.size].nbytes for v in self.data.values())

    def state_dict(self) -> dict[str, Any]:
        """The rows held as tensors (as stored: compressed fields stay compressed), with the counters, the
        fields' own dtypes and (``"uint8"``) the codes' ranges."""
        extra = {"quantiser": self.quantiser.state_dict()} if self.dtype == "uint8" else {}
        return {
            **extra,
            "capacity": -1 if self.capacity is None else self.capacity,
            "seen": self.seen,
            "ordered": self.ordered,
            "dtype": self.dtype,
            "dtypes": {k: str(v) for k, v in self.dtypes.items()},
            "data": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.stored_rows().items()},
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], quantiser: Quantiser | None = None) -> Reservoir:
        """Rebuild a reservoir saved by :meth:`state_dict` (its ``"uint8"`` ranges into ``quantiser``, if
        given: the one its memory shares)."""
        dtype = check_memory_dtype(state.get("dtype", "float32"), "a saved memory's dtype")
        reservoir = cls(None if state["capacity"] < 0 else int(state["capacity"]), dtype, quantiser)
        reservoir.seen = int(state["seen"])
        reservoir.ordered = bool(state.get("ordered", False))
        reservoir.data = {k: v.numpy().copy() for k, v in state["data"].items()}
        saved = state.get("dtypes", {})
        reservoir.dtypes = {k: np.dtype(saved.get(k, str(v.dtype))) for k, v in reservoir.data.items()}
        if not all(np.issubdtype(d, np.number) or d == np.bool_ for d in reservoir.dtypes.values()):
            raise ConfigError(f"a saved memory names field dtypes that are not numbers: {saved!r}")
        reservoir.size = len(next(iter(reservoir.data.values()))) if reservoir.data else 0
        if dtype == "uint8":
            coded = [k for k in reservoir.data if reservoir._coded(k)]
            if any(reservoir.data[k].dtype != np.uint8 for k in coded):
                raise ConfigError("a saved uint8 memory holds floating-point fields that are not uint8 codes")
            axes = reservoir.quantiser.row_axes
            shapes = {k: tuple(reservoir.data[k].shape[axes:]) for k in coded}
            reservoir.quantiser.load_state_dict(state.get("quantiser", {"lo": {}, "hi": {}}), shapes)
        return reservoir


class TaskMemory:
    """One :class:`Reservoir` per task, all within one budget of rows.

    Args:
        budget: Rows held in all (``"all"``: every row of every task, no bound).
        dtype: How the reservoirs store floating-point fields (:class:`Reservoir`).
        row_axes: Leading axes of a field that share one ``"uint8"`` range (:class:`Quantiser`).
    """

    def __init__(self, budget: Budget, dtype: MemoryDtype = "float32", row_axes: int = 1) -> None:
        self.budget = budget
        self.dtype: MemoryDtype = dtype
        self.selection: Selection = "uniform"
        """Which rows an earlier task's reservoir keeps when it shrinks (:meth:`Reservoir.shrink`)."""
        self.quantiser = Quantiser(lambda: self.tasks, self.invalidate, row_axes)
        """The ranges of the ``"uint8"`` codes, shared by every reservoir (unused by the other dtypes)."""
        self.tasks: list[Reservoir] = []
        """Reservoirs of the tasks, in the order they were started (the last may still be filling)."""
        self.task_ids: list[int] = []
        """Task index of each reservoir."""
        self.current: Reservoir | None = None
        """The reservoir :meth:`record` fills (the task being trained), if any."""
        self._pool: tuple[tuple[int, ...], Rows] | None = None

    def start_task(self, task_id: int, rng: np.random.Generator) -> Reservoir:
        """Open the reservoir of a new task (the :attr:`current` one), shrinking the earlier ones to make room
        for it."""
        self.invalidate()
        if task_id in self.task_ids:  # the same task again (e.g. a stream that repeats it): keep filling it
            self.current = self.tasks[self.task_ids.index(task_id)]
            return self.current
        share = None if self.budget == "all" else max(1, self.budget // (len(self.tasks) + 1))
        if share is not None:
            for reservoir in self.tasks:
                reservoir.shrink(share, rng, self.selection)
        self.tasks.append(Reservoir(share, self.dtype, self.quantiser))
        self.task_ids.append(task_id)
        self.current = self.tasks[-1]
        return self.current

    def record(self, rows: Rows, rng: np.random.Generator) -> None:
        """Offer rows of the current task to its reservoir (nothing happens outside a task)."""
        if self.current is not None:
            self.current.add(rows, rng)

    def __iter__(self) -> Iterator[Reservoir]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return sum(len(r) for r in self.tasks)

    @property
    def nbytes(self) -> int:
        """Bytes held by every task's rows (and the ranges of ``"uint8"`` codes)."""
        ranges = self.quantiser.nbytes if self.dtype == "uint8" else 0
        return sum(r.nbytes for r in self.tasks) + ranges

    def sample(
        self, n: int, rng: np.random.Generator, tasks: list[int] | None = None, each: bool = False
    ) -> Rows:
        """``n`` rows drawn uniformly, with replacement, from the reservoirs at positions ``tasks`` (all).

        With ``each``, ``n`` rows from each of those reservoirs instead, task after task (rows ``i·n`` to
        ``(i+1)·n`` are the ``i``-th's), the same rows as one call per task with ``tasks=[t]`` draws.

        The chosen reservoirs' rows are gathered once into one array per field (the reservoirs then hold
        views of it, so nothing is stored twice); later draws from the same reservoirs index it directly.
        """
        positions = tuple(range(len(self.tasks)) if tasks is None else tasks)
        if self._pool is None or self._pool[0] != positions:
            self._pool = (positions, self._gather(positions))
        pool = self._pool[1]
        size = len(next(iter(pool.values()))) if pool else 0
        sizes = [len(self.tasks[i]) for i in positions]
        if size == 0 or (each and 0 in sizes):
            raise ValueError("the memory is empty")
        if each:
            starts = np.cumsum([0, *sizes[:-1]])
            draws = [start + rng.integers(0, k, size=n) for start, k in zip(starts, sizes, strict=True)]
            index = np.concatenate(draws)
        else:
            index = rng.integers(0, size, size=n)
        first = next(self.tasks[i] for i in positions if len(self.tasks[i]))
        return first.restore({k: v[index] for k, v in pool.items()})

    def sample_with_current(self, n: int, rng: np.random.Generator) -> Rows:
        """``n`` rows drawn uniformly, with replacement, from every row held, those of the :attr:`current`
        (still filling) reservoir included; the finished reservoirs are gathered as :meth:`sample` does."""
        current = self.current
        earlier = [i for i, r in enumerate(self.tasks) if r is not current and len(r)]
        held_earlier = sum(len(self.tasks[i]) for i in earlier)
        held_current = len(current) if current is not None else 0
        if held_earlier + held_current == 0:
            raise ValueError("the memory is empty")
        picks = rng.integers(0, held_earlier + held_current, n)
        from_earlier = int((picks < held_earlier).sum())
        parts: list[Rows] = []
        if from_earlier:
            parts.append(self.sample(from_earlier, rng, earlier))
        if from_earlier < n:
            assert current is not None
            parts.append(current.rows(rng.integers(0, held_current, n - from_earlier)))
        return concat_rows(parts)

    def _gather(self, positions: tuple[int, ...]) -> Rows:
        chosen = [self.tasks[i] for i in positions if len(self.tasks[i])]
        if not chosen:
            return {}
        pool = {k: np.concatenate([r.stored_rows()[k] for r in chosen]) for k in chosen[0].data}
        start = 0
        for r in chosen:  # the reservoirs now hold views of the pool (their capacity is unchanged)
            stop = start + len(r)
            r.data = {k: v[start:stop] for k, v in pool.items()}
            start = stop
        return pool

    def invalidate(self) -> None:
        """Forget the gathered rows (after a reservoir changed)."""
        self._pool = None

    def state_dict(self) -> dict[str, Any]:
        """Every task's reservoir and the task indices."""
        return {"task_ids": list(self.task_ids), "tasks": [r.state_dict() for r in self.tasks]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.invalidate()
        self.current = None
        self.task_ids = [int(t) for t in state["task_ids"]]
        self.quantiser = Quantiser(lambda: self.tasks, self.invalidate, self.quantiser.row_axes)
        self.tasks = [Reservoir.from_state_dict(s, self.quantiser) for s in state["tasks"]]


class MemoryModule(ContinualModule):
    """Base of the modules that keep data of earlier tasks (Replay, CLEAR, BehaviourCloning, ClonEx, A-GEM).

    Holds the :attr:`memory` under ``budget``, refuses streams that hide the task id (replayed data carries
    the rewards and dynamics of its own task: with the task id hidden, the networks would get two answers
    for one observation), seeds a recording and a sampling generator per task, and saves the memory.

    Args:
        budget: Rows kept over all tasks (``"all"``: unbounded).
        require_task_id: Refuse streams with a hidden task id in ``clrl.train``.
        memory_dtype: How the memory stores floating-point fields: ``"float32"`` (default, as given),
            ``"float16"`` (half the bytes, float16's precision) or ``"uint8"`` (a quarter, per-feature codes
            within 1/255 of each feature's range; see :class:`clrl.modules.memory.Reservoir`).
        verbose: SB3 callback verbosity.
        memory_selection: Which rows of an earlier task the memory keeps as later tasks take their share:
            ``"uniform"`` (default, a uniform subsample) or ``"herding"`` (iCaRL's; :func:`herding_order`).
    """

    memory_class: type[TaskMemory] = TaskMemory
    """What :attr:`memory` is (behaviour cloning and A-GEM keep outputs with their states)."""

    def __init__(
        self,
        budget: Budget,
        require_task_id: bool = True,
        verbose: int = 0,
        memory_dtype: MemoryDtype = "float32",
        memory_selection: Selection = "uniform",
    ) -> None:
        super().__init__(verbose)
        self.budget = check_budget(budget, f"{type(self).__name__} budget")
        self.require_task_id = check_bool(require_task_id, f"{type(self).__name__} require_task_id")
        self.memory_dtype = check_memory_dtype(memory_dtype, f"{type(self).__name__} memory_dtype")
        self.memory_selection = check_selection(memory_selection, f"{type(self).__name__} memory_selection")
        self.memory = self.memory_class(self.budget, self.memory_dtype)
        self.memory.selection = self.memory_selection
        self._rng = np.random.default_rng(0)
        self._sample_rng = np.random.default_rng(0)

    def check_model(self, model: BaseAlgorithm) -> None:
        """Refuse herding on observations of more than :data:`HERDING_MAX_FEATURES` features (images)."""
        super().check_model(model)
        if self.memory_selection != "herding":
            return  # uniform selection takes any observation space
        features = get_flattened_obs_dim(model.observation_space)
        if features > HERDING_MAX_FEATURES:
            raise ConfigError(
                f"{type(self).__name__}(memory_selection='herding') compares observations feature by "
                f"feature, and these have {features} (at most {HERDING_MAX_FEATURES}); use "
                "memory_selection='uniform'"
            )

    def check_stream(self, stream: Any) -> None:
        """Refuse a stream that hides the task id, unless ``require_task_id`` is false."""
        if self.require_task_id and getattr(stream, "task_id", "observed") == "hidden" and len(stream) > 1:
            cls = type(self).__name__
            raise ConfigError(
                f"{cls} replays earlier tasks, but stream {stream.name!r} hides the task id: tasks whose "
                f"rewards or dynamics differ would get conflicting targets for the same observation. Set "
                f'task_id = "observed" in the stream, or pass {cls}(require_task_id=False) if its tasks '
                f"can be told apart from observations (or agree where they overlap)"
            )

    def open_task(self, task: TaskInfo) -> Reservoir:
        """Seed the task's generators from the model's seed and the task index, and open its reservoir."""
        model = self.sb3_model
        seed = model.seed if model.seed is not None else 0
        self._rng = np.random.default_rng([seed, task.index, 0])
        self._sample_rng = np.random.default_rng([seed, task.index, 1])
        return self.memory.start_task(task.index, self._rng)

    def state_dict(self) -> dict[str, Any]:
        """Every task's reservoir (rows as tensors, dtypes kept)."""
        return {"memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the reservoirs."""
        self.memory.load_state_dict(state["memory"])
