"""Wall time of one small sweep run serially, on the process pool, and on a local Ray instance.

    python benchmarks/sweep_speed.py --runs 4 --steps 4000 --repeats 2

The same runs (PPO fine-tuning on cartpole-flip, seeds 0 .. runs-1, ``--steps`` per task) are swept into
fresh directories three ways, in rotating order per repeat: ``serial`` (one run at a time, each with all of
the machine's torch threads, as ``clrl run`` one seed after another), ``pool`` (``workers`` runs at once,
one torch thread each: the default backend), and ``ray`` (a local Ray instance with ``workers`` CPUs; its
start-up is part of its time). Wall time is what a sweep is for, so wall time is measured; the machine must
be otherwise idle. Targets: serial / pool >= 1.7 on 2 cores; ray / pool <= 1.15.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import clrl


def timed_sweep(runs: list[clrl.RunSpec], backend: str, workers: int) -> float:
    with tempfile.TemporaryDirectory() as logdir:
        start = time.perf_counter()
        result = clrl.sweep(
            runs, logdir, backend=backend, workers=workers, progress=False, log=lambda _: None
        )  # type: ignore[arg-type]
        seconds = time.perf_counter() - start
    if result.failed:
        raise SystemExit(f"{backend}: {[o.error for o in result.failed]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4000, help="steps per task of every run")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    runs = clrl.grid(
        ["cartpole-flip"], ["ppo"], ["finetune"], list(range(args.runs)), steps=args.steps, eval_episodes=5
    )
    ways = {"serial": ("process", 1), "pool": ("process", args.workers), "ray": ("ray", args.workers)}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for repeat in range(args.repeats):
        order = list(ways)[repeat % 3 :] + list(ways)[: repeat % 3]
        for name in order:
            times[name].append(timed_sweep(runs, *ways[name]))
            print(f"repeat {repeat}: {name:<6} {times[name][-1]:6.1f} s", flush=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"\n{args.runs} runs x 4 tasks x {args.steps} steps, {args.workers} workers, "
        f"median of {args.repeats}:"
    )
    for name, seconds in median.items():
        print(f"  {name:<6} {seconds:6.1f} s")
    print(f"serial / pool = {median['serial'] / median['pool']:.2f}  (target >= 1.7 on 2 cores)")
    print(f"ray / pool    = {median['ray'] / median['pool']:.2f}  (target <= 1.15)")


if __name__ == "__main__":
    main()
