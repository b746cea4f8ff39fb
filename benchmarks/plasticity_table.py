"""The README's plasticity table, from the finished runs of ``benchmarks/plasticity.toml``.

    python benchmarks/plasticity_table.py [docs/plasticity/runs]

Per method, over seeds (mean, and the range in brackets): the return of each visit's task right after it
trained, averaged over the first cycle's visits and over the last cycle's (``visit_returns``); their
difference (``visit_gap``, negative = learned worse later); the mean return while a visit trained, first
against last cycle (``visit_curve_gap``, the area under the training curves); and the network's dormant
share, the effective rank of its last hidden layer and the root mean square of its weights at the end of
the first and of the last task. On streams of ten cycles or more a second table gives, per seed, the mean
return after a visit over the first five cycles and over the last five (less noisy than one cycle's four
visits), and the lowest cycle's mean. Only runs
that finished every task are counted. A run whose ``policy_kwargs`` name an activation or an optimiser
(``benchmarks/plasticity_crelu.toml``, ``plasticity_trac.toml``) is a row of its own, ``finetune (crelu)``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from clrl import make_stream, metrics


def _cell(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    mean, low, high = float(np.mean(values)), float(np.min(values)), float(np.max(values))
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _boundary(result: dict, key: str, task: int) -> float | None:
    for record in result.get("plasticity", []):
        if record.get("task") == task:
            value = record["values"].get(key)
            return None if value is None else float(value)
    return None


def _label(spec: dict) -> str:
    """The method, with the activation or optimiser its ``policy_kwargs`` name (``finetune (crelu)``)."""
    policy_kwargs = spec.get("hyperparameters", {}).get("policy_kwargs", {})
    options = [str(policy_kwargs[k]) for k in ("activation_fn", "optimizer_class") if k in policy_kwargs]
    return f"{spec['method']} ({', '.join(options)})" if options else spec["method"]


def main(root: Path) -> None:
    rows: dict[str, dict[str, list[float]]] = {}
    seeds: dict[str, dict[int, np.ndarray]] = {}  # per method and seed, the returns after each visit
    for path in sorted(root.glob("**/results.json")):
        result = json.loads(path.read_text())
        spec = json.loads((path.parent / "spec.json").read_text())
        matrix = np.asarray(result["matrix"], dtype=float)
        n = matrix.shape[1]
        cycles = make_stream(spec["stream"]).cycles
        if result.get("completed_tasks") != n or np.isnan(matrix).any():
            continue
        visits = metrics.visit_returns(matrix, cycles)
        curves = [(c["step"], c["task"], c["returns"]) for c in result.get("curves", [])]
        means = metrics.visit_curve_means(curves, n, cycles)
        network = next(iter(result["plasticity"][0]["values"])).split("/")[0]
        row = rows.setdefault(_label(spec), {})
        seeds.setdefault(_label(spec), {})[int(spec["seed"])] = visits
        row.setdefault("first", []).append(float(visits[0].mean()))
        row.setdefault("last", []).append(float(visits[-1].mean()))
        row.setdefault("gap", []).append(metrics.visit_gap(matrix, cycles))
        if curves:  # runs evaluated during training (eval_freq; not the long sweep's)
            row.setdefault("curve_first", []).append(float(np.nanmean(means[0])))
            row.setdefault("curve_last", []).append(float(np.nanmean(means[-1])))
        else:
            row.setdefault("curve_first", [])
            row.setdefault("curve_last", [])
        for stat in ("dormant", "effective_rank", "weight_magnitude"):
            for label, task in (("first", 0), ("last", n - 1)):
                value = _boundary(result, f"{network}/{stat}", task)
                if value is not None:
                    row.setdefault(f"{stat}_{label}", []).append(value)
    print(
        "| method | seeds | return after a visit, 1st cycle | last cycle | visit_gap | "
        "return while training, 1st cycle | last cycle | dormant, 1st task / last | "
        "effective rank, 1st task / last | weight RMS, 1st task / last |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for method, row in rows.items():

        def pair(stat: str, digits: int = 1, row: dict[str, list[float]] = row) -> str:
            first, last = row.get(stat + "_first", []), row.get(stat + "_last", [])
            return f"{_cell(first, digits)} / {_cell(last, digits)}"

        print(
            f"| {method} | {len(row['gap'])} | {_cell(row['first'])} | {_cell(row['last'])} | "
            f"{_cell(row['gap'])} | {_cell(row['curve_first'])} | {_cell(row['curve_last'])} | "
            f"{pair('dormant', 3)} | {pair('effective_rank')} | {pair('weight_magnitude', 2)} |"
        )
    long = {method: runs for method, runs in seeds.items() if min(len(v) for v in runs.values()) >= 10}
    if long:
        print(
            "\nPer seed, the mean return after a visit over the first five cycles → over the last five, "
            "their difference ± its standard error, and the lowest cycle's mean:\n"
        )
        numbers = sorted({seed for runs in long.values() for seed in runs})
        print("| method | " + " | ".join(f"seed {seed}" for seed in numbers) + " |")
        print("|---|" + "---|" * len(numbers))
        for method, runs in long.items():
            cells = [_change(runs[seed]) if seed in runs else "-" for seed in numbers]
            print(f"| {method} | " + " | ".join(cells) + " |")


def _change(visits: np.ndarray) -> str:
    """First five cycles → last five, the difference ± its standard error, and the lowest cycle's mean."""
    first, last = visits[:5].ravel(), visits[-5:].ravel()
    error = float(np.sqrt(first.var(ddof=1) / first.size + last.var(ddof=1) / last.size))
    lowest = float(visits.mean(axis=1).min())
    return (
        f"{first.mean():.0f} → {last.mean():.0f} ({last.mean() - first.mean():+.0f} ± {error:.0f}; "
        f"lowest {lowest:.0f})"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/plasticity/runs"))
