"""Continual-learning metrics as pure functions of the return matrix (and, for task-free streams, of
evaluation curves over time: :func:`online_performance`, :func:`forgetting_over_time`, :func:`curve_area`;
their final performance over the evaluation grid is :func:`average_return` of the last row).

Every function takes ``R``, a float array of shape ``(n_tasks + 1, n_tasks)``: ``R[0, j]`` is the return of
the untrained agent on task ``j``, ``R[i, j]`` (``i >= 1``) the return on task ``j`` after training on tasks
``0 .. i-1``. So task ``j`` was last trained just before row ``j + 1``, and the final row is ``R[-1]``.
A metric that needs at least two tasks returns ``nan`` for a single one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray


def _check(matrix: ArrayLike) -> NDArray[np.float64]:
    r = np.asarray(matrix, dtype=np.float64)
    if r.ndim != 2 or r.shape[1] < 1 or r.shape[0] != r.shape[1] + 1:
        raise ValueError(f"a return matrix has shape (n_tasks + 1, n_tasks), got {r.shape}")
    return r


def average_return(matrix: ArrayLike) -> float:
    """ACC: mean final return over all tasks, ``1/T Σ_j R[T, j]``.

    Paper: Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning" (ACC), NeurIPS.
    """
    return float(_check(matrix)[-1].mean())


def backward_transfer(matrix: ArrayLike) -> float:
    """BWT: how training on later tasks changed earlier ones, ``1/(T-1) Σ_{j<T-1} (R[T, j] - R[j+1, j])``.

    Negative values are forgetting.

    Paper: Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning" (BWT), NeurIPS.
    """
    r = _check(matrix)
    n = r.shape[1]
    if n < 2:
        return float("nan")
    return float(np.mean([r[n, j] - r[j + 1, j] for j in range(n - 1)]))


def forward_transfer(matrix: ArrayLike) -> float:
    """FWT: how earlier tasks help a task before it is trained, ``1/(T-1) Σ_{j>=1} (R[j, j] - R[0, j])``.

    ``R[j, j]`` is the return on task ``j`` after training on the tasks before it, ``R[0, j]`` that of the
    untrained agent (GEM's ``b_j``).

    Paper: Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning" (FWT), NeurIPS.
    """
    r = _check(matrix)
    n = r.shape[1]
    if n < 2:
        return float("nan")
    return float(np.mean([r[j, j] - r[0, j] for j in range(1, n)]))


def forgetting(matrix: ArrayLike) -> float:
    """Average forgetting: ``1/(T-1) Σ_{j<T-1} max_{1<=l<=T-1} R[l, j] - R[T, j]``.

    The best return a task ever had after training started (before the final task) minus its final return.

    Paper: Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning: Understanding Forgetting and
    Intransigence", ECCV (Eq. 3).
    """
    r = _check(matrix)
    n = r.shape[1]
    if n < 2:
        return float("nan")
    return float(np.mean([r[1:n, j].max() - r[n, j] for j in range(n - 1)]))


def forgetting_cw(matrix: ArrayLike) -> float:
    """Continual World's forgetting: ``1/T Σ_j (R[j+1, j] - R[T, j])``, the return a task had at the end of
    its own training minus its final return, averaged over every task (the last one's is 0).

    Unlike :func:`forgetting` (Chaudhry's, from the best return a task ever had), a task that improved
    after its own training and then lost the gain does not count as forgotten; on ``T - 1`` tasks with a
    successor it is ``-(T - 1)/T · BWT``.

    Paper: Wołczyk et al. 2021, "Continual World: A Robotic Benchmark For Continual Reinforcement
    Learning", NeurIPS (Sec. 3, forgetting).
    """
    r = _check(matrix)
    n = r.shape[1]
    if n < 2:
        return float("nan")
    return float(np.mean([r[j + 1, j] - r[n, j] for j in range(n)]))


def normalize(matrix: ArrayLike, low: ArrayLike, high: ArrayLike) -> NDArray[np.float64]:
    """Per-task normalised scores ``(R[:, j] - low[j]) / (high[j] - low[j])``.

    ``low`` is usually a random policy's return and ``high`` the single-task reference (training from
    scratch), so that 0 is random and 1 the reference. Any matrix-shaped input works.
    """
    r = np.asarray(matrix, dtype=np.float64)
    lo = np.asarray(low, dtype=np.float64)
    hi = np.asarray(high, dtype=np.float64)
    if lo.shape != (r.shape[-1],) or hi.shape != lo.shape:
        raise ValueError(f"low and high need shape ({r.shape[-1]},), got {lo.shape} and {hi.shape}")
    span = hi - lo
    if np.any(span == 0):
        raise ValueError("high and low are equal for some task: cannot normalise")
    return (r - lo) / span


def auc_forward_transfer(curve: ArrayLike, reference_curve: ArrayLike) -> float:
    """Continual World's forward transfer of one task from normalised training curves.

    ``FT = (AUC - AUC_ref) / (1 - AUC_ref)``, where ``AUC`` is the mean of the task's normalised score
    (in [0, 1]) measured at evenly spaced points while it was trained in the stream, and ``AUC_ref`` the same
    for the single-task reference run. Both curves must have the same length.

    Paper: Wołczyk et al. 2021, "Continual World: A Robotic Benchmark For Continual Reinforcement
    Learning", NeurIPS (Sec. 3, forward transfer).
    """
    c = np.asarray(curve, dtype=np.float64)
    ref = np.asarray(reference_curve, dtype=np.float64)
    if c.ndim != 1 or c.shape != ref.shape or c.size == 0:
        raise ValueError(f"curves must be 1-D and of equal length, got {c.shape} and {ref.shape}")
    auc, auc_ref = float(c.mean()), float(ref.mean())
    if auc_ref >= 1.0:
        raise ValueError("the reference curve is at 1 throughout: forward transfer is undefined")
    return (auc - auc_ref) / (1.0 - auc_ref)


# ------------------------------------------------------------------ task-free streams: curves over time
def _check_curve(steps: ArrayLike, returns: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    s = np.asarray(steps, dtype=np.float64)
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim == 1:
        r = r[:, None]
    if s.ndim != 1 or r.ndim != 2 or s.size == 0 or r.shape[0] != s.size:
        raise ValueError(
            f"an evaluation curve is steps of shape (n,) and returns of shape (n, settings), got "
            f"{s.shape} and {r.shape}"
        )
    if np.any(np.diff(s) <= 0):
        raise ValueError("the evaluation steps must be increasing")
    return s, r


def online_performance(episode_returns: ArrayLike) -> float:
    """The mean return of the episodes played while training, ``1/E Σ_e G_e``: how well the agent did on
    the stream as it came, with no separate evaluation (``nan`` with no episode).

    Paper: Normandin et al. 2021, "Sequoia: A Software Framework to Unify Continual Learning Research"
    (online performance, its metric for RL settings), https://arxiv.org/abs/2108.01005
    """
    g = np.asarray(episode_returns, dtype=np.float64).reshape(-1)
    return float(g.mean()) if g.size else float("nan")


def forgetting_over_time(returns: ArrayLike) -> NDArray[np.float64]:
    """For each evaluation point ``t`` and setting ``j``, the drop from the best return the setting ever
    had, ``F[t, j] = max_{t' <= t} R[t', j] - R[t, j]`` (>= 0; 0 while a setting is at its best).

    ``returns`` has a row per evaluation point along the stream and a column per evaluated setting (the
    evaluation grid of a task-free stream; a return matrix's rows are such points too). This is
    Chaudhry et al.'s forgetting, the best earlier score minus the current one, taken at every point
    instead of only at the end.

    Paper: Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning" (forgetting measure), ECCV.
    """
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] == 0:
        raise ValueError(f"returns have shape (points, settings), got {r.shape}")
    return np.maximum.accumulate(r, axis=0) - r


def curve_area(steps: ArrayLike, returns: ArrayLike) -> NDArray[np.float64]:
    """The area under each setting's evaluation curve, per step: the trapezoidal
    ``1/(s_n - s_1) ∫ R_j(s) ds`` over the evaluation steps ``s`` (the mean return over the stream,
    weighted by time; a single point gives its return).

    Args:
        steps: Environment steps of the evaluations, increasing, shape ``(n,)``.
        returns: Returns, shape ``(n,)`` or ``(n, settings)``.

    Paper: the area under the performance curve, as Continual World's forward transfer uses it
    (Wołczyk et al. 2021, NeurIPS), over the whole stream instead of one task.
    """
    s, r = _check_curve(steps, returns)
    if s.size == 1:
        return r[0].copy()
    widths = np.diff(s)[:, None]
    area = ((r[1:] + r[:-1]) / 2 * widths).sum(axis=0)
    return area / (s[-1] - s[0])


def detection_delays(detections: Sequence[int], changes: Sequence[int], horizon: int) -> dict[str, float]:
    """How a boundary detector did against the true change points: each change is found by the first
    detection in ``[change, change + horizon)`` (its delay, the steps between them); every other
    detection is a false alarm.

    Returns:
        ``mean_delay`` (over the changes found; ``nan`` if none), ``found`` (changes found), ``missed``
        and ``false_alarms`` (counts).

    Paper: the delay and false-alarm rate by which change-point tests are judged (Basseville & Nikiforov
    1993, "Detection of Abrupt Changes", Sec. 1.4).
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    left = sorted(int(d) for d in detections)
    delays = []
    for change in sorted(int(c) for c in changes):
        hit = next((d for d in left if change <= d < change + horizon), None)
        if hit is not None:
            delays.append(hit - change)
            left.remove(hit)
    return {
        "mean_delay": float(np.mean(delays)) if delays else float("nan"),
        "found": float(len(delays)),
        "missed": float(len(changes) - len(delays)),
        "false_alarms": float(len(left)),
    }


def visit_returns(matrix: ArrayLike, cycles: int) -> NDArray[np.float64]:
    """Each visit's return right after it was trained, on a stream of ``cycles`` repetitions of its tasks.

    Row ``k``, column ``j`` is ``R[i + 1, i]`` for ``i = k·L + j`` (``L = n_tasks / cycles`` tasks per
    cycle): task ``j`` right after its ``(k+1)``-th visit. A network that keeps its plasticity learns a task
    as well on a later visit as on the first; one that loses it, worse (Dohare et al. 2024, Nature, compare
    the performance on each task of a long sequence with that on the first ones).
    """
    r = _check(matrix)
    n = r.shape[1]
    _check_cycles(n, cycles)
    return np.array([r[i + 1, i] for i in range(n)]).reshape(cycles, n // cycles)


def _check_cycles(n_tasks: int, cycles: int) -> None:
    if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1 or n_tasks % cycles:
        raise ValueError(f"{n_tasks} tasks are not a whole number of {cycles!r} cycles")


def visit_gap(matrix: ArrayLike, cycles: int) -> float:
    """How much worse a task is learned on its last visit than on its first, ``1/L Σ_j (V[C-1, j] -
    V[0, j])`` with ``V`` = :func:`visit_returns`: negative values are lost plasticity (``nan`` for one
    cycle)."""
    visits = visit_returns(matrix, cycles)
    return float((visits[-1] - visits[0]).mean()) if cycles > 1 else float("nan")


def visit_curve_means(
    curves: Sequence[tuple[int, int, Sequence[float]]], n_tasks: int, cycles: int
) -> NDArray[np.float64]:
    """The mean return on each visit's own task while that visit trained (the area under its training
    curve over its length), shaped like :func:`visit_returns` (``nan`` where a visit has no point).

    Args:
        curves: ``(step, position being trained, returns on every task)``, as ``TrainResult.curves``
            (``eval_freq`` evaluations).
        n_tasks: Tasks of the stream (all visits).
        cycles: Its cycles.
    """
    _check_cycles(n_tasks, cycles)
    points: list[list[float]] = [[] for _ in range(n_tasks)]
    for _, position, returns in curves:
        points[position].append(float(returns[position]))
    means = [float(np.mean(p)) if p else float("nan") for p in points]
    return np.array(means).reshape(cycles, n_tasks // cycles)


def cycle_summary(
    matrix: ArrayLike, curves: Sequence[tuple[int, int, Sequence[float]]], per_cycle: int
) -> dict[str, float]:
    """The visit metrics of a cyclic stream's run so far, over its completed cycles (none before the
    second): ``visit_gap`` (:func:`visit_gap`) and, with training curves, ``visit_curve_gap`` (the same
    difference of :func:`visit_curve_means`, averaged over the tasks that have curves in both cycles).

    Args:
        matrix: The return matrix so far, ``(n + 1, n)`` for the ``n`` positions trained.
        curves: ``TrainResult.curves``.
        per_cycle: Tasks per cycle.
    """
    r = np.asarray(matrix, dtype=np.float64)
    cycles = r.shape[1] // per_cycle
    if cycles < 2:
        return {}
    n = cycles * per_cycle
    out = {"visit_gap": visit_gap(r[: n + 1, :n], cycles)}
    means = visit_curve_means([c for c in curves if c[1] < n], n, cycles)
    gaps = means[-1] - means[0]
    if np.isfinite(gaps).any():
        out["visit_curve_gap"] = float(np.nanmean(gaps))
    return out


def summary(matrix: ArrayLike) -> dict[str, float]:
    """ACC, BWT, FWT, forgetting (Chaudhry's) and Continual World's forgetting of one return matrix."""
    return {
        "acc": average_return(matrix),
        "bwt": backward_transfer(matrix),
        "fwt": forward_transfer(matrix),
        "forgetting": forgetting(matrix),
        "forgetting_cw": forgetting_cw(matrix),
    }


def bootstrap_ci(
    values: Sequence[float] | ArrayLike, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean over seeds and its percentile-bootstrap confidence interval.

    Args:
        values: One value per seed (``nan`` values are dropped).
        confidence: Coverage of the interval.
        n_resamples: Number of bootstrap resamples.
        seed: Seed of the resampling, so that the interval is reproducible.

    Returns:
        ``(mean, low, high)``; with a single value the interval is that value.

    Paper: Efron & Tibshirani 1993, "An Introduction to the Bootstrap" (percentile interval).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return (float("nan"),) * 3
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_resamples, v.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(v.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))
