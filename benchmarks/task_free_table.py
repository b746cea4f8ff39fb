"""The README's task-free table, from the finished runs of ``benchmarks/task_free.toml``.

    python benchmarks/task_free_table.py [docs/task-free/runs]

Per stream and method, over the finished seeds (mean, and the range in brackets): the final performance
over the evaluation grid (the mean of the last row of the return matrix: every segment's setting
evaluated at the stream's end), the online performance (the mean return of the training episodes), the
mean forgetting over time (``metrics.forgetting_over_time`` on the segment-end rows, averaged over the
points and settings) and the mean area under the settings' evaluation curves (``metrics.curve_area`` over
the segment ends). Only runs that finished every segment are counted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from clrl import metrics


def _cell(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    mean, low, high = float(np.mean(values)), float(np.min(values)), float(np.max(values))
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def main(root: Path) -> None:
    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    for path in sorted(root.glob("**/results.json")):
        result = json.loads(path.read_text())
        spec = json.loads((path.parent / "spec.json").read_text())
        matrix = np.asarray(result["matrix"], dtype=float)
        if result.get("completed_tasks") != matrix.shape[1] or np.isnan(matrix).any():
            continue
        after = matrix[1:]  # the rows after each segment (row 0: untrained)
        stream = Path(spec["stream"]).stem
        row = rows.setdefault((stream, f"{spec['algo']}-{spec['method']}"), {})
        row.setdefault("final", []).append(float(after[-1].mean()))
        row.setdefault("online", []).append(float(result["metrics"]["online_performance"]))
        row.setdefault("forgetting", []).append(float(metrics.forgetting_over_time(after).mean()))
        row.setdefault("area", []).append(float(metrics.curve_area(result["steps"][1:], after).mean()))
    columns = ["final performance", "online performance", "forgetting over time", "curve area"]
    print("| stream | method | seeds | " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|")
    for (stream, method), row in sorted(rows.items()):
        cells = [_cell(row[k]) for k in ("final", "online", "forgetting", "area")]
        print(f"| {stream} | {method} | {len(row['final'])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/task-free/runs"))
