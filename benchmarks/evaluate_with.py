"""Return matrices of every policy a module can evaluate with, from finished runs' checkpoints.

    python benchmarks/evaluate_with.py runs/reference/cartpole-flip/ppo-clser/seed* # stable, plastic, working
    python benchmarks/evaluate_with.py runs/reference/cartpole-flip/ppo-pnc/seed*   # knowledge_base, active

A CLSER run evaluates one copy after every task (``evaluate_with``: the stable one by default), a Progress &
Compress run one column (the knowledge base). Their checkpoints hold the others too, so this script
evaluates each after every task on the run's own evaluation episodes (same stream, seeds and episode count
as the run; row 0, the untrained policy, is the run's). It prints each run's ACC and forgetting per choice,
then the mean over runs, and checks that the choice the run evaluated reproduces the run's own matrix.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

import clrl
from clrl import metrics
from clrl.runner import EVAL_SEED_OFFSET
from clrl.streams import stream_from_dict

CHOICES: dict[type, tuple[str, ...]] = {
    clrl.CLSER: ("stable", "plastic", "working"),
    clrl.ProgressAndCompress: ("knowledge_base", "active"),
}


def matrices(run_dir: Path) -> tuple[dict[str, np.ndarray], np.ndarray, str]:
    """The matrix of every choice of one run, the run's own matrix and the choice it evaluated."""
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    config = results["config"]
    stream = stream_from_dict(config["stream_spec"])
    evaluator = clrl.Evaluator(stream, config["eval_episodes"], config["seed"] + EVAL_SEED_OFFSET)
    checkpoints = sorted((run_dir / "checkpoints").glob("task*.zip"))
    if len(checkpoints) != len(stream):
        raise SystemExit(f"{run_dir}: {len(checkpoints)} checkpoints for {len(stream)} tasks (unfinished?)")
    own = np.asarray(results["matrix"])
    rows: dict[str, list[np.ndarray]] = {}
    evaluated = ""
    for i, path in enumerate(checkpoints):
        model, modules = clrl.load(path, device="cpu")
        module: Any = next((m for m in modules if type(m) in CHOICES), None)
        if module is None:
            raise SystemExit(f"{run_dir}: no module with a choice of policy ({', '.join(map(str, CHOICES))})")
        evaluated = module.evaluate_with
        for which in CHOICES[type(module)]:
            module.evaluate_with = which
            rows.setdefault(which, [own[0]]).append(evaluator(model, modules, current_task=i))
    evaluator.close()
    return {c: np.stack(r) for c, r in rows.items()}, own, evaluated


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="finished CLSER or ProgressAndCompress runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    summary: dict[str, list[tuple[float, float]]] = {}
    for run_dir in args.runs:
        found, own, evaluated = matrices(run_dir)
        same = np.allclose(found[evaluated], own)
        print(f"{run_dir}  (the run evaluated {evaluated}; reproduced: {same})")
        for which, matrix in found.items():
            acc, forgetting = metrics.average_return(matrix), metrics.forgetting(matrix)
            summary.setdefault(which, []).append((acc, forgetting))
            final = " ".join(f"{x:6.1f}" for x in matrix[-1])
            print(f"  {which:14s} ACC {acc:7.1f}  forgetting {forgetting:7.1f}  final row [{final}]")
    print(f"mean over {len(args.runs)} runs:")
    for which, values in summary.items():
        acc, forgetting = np.mean(values, axis=0)
        print(f"  {which:14s} ACC {acc:7.1f}  forgetting {forgetting:7.1f}")


if __name__ == "__main__":
    main()
