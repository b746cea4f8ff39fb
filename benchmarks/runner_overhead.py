"""CPU time of clrl.train against the same plain SB3 learn calls, measured in one run, as ratios.

    python benchmarks/runner_overhead.py --stream cartpole-flip --algo ppo --steps 10000 --repeats 8

Three variants per repeat, in rotating order: plain SB3 (set_env + learn per task), clrl.train with no
module (TensorBoard, checkpoints, results.json and all), and clrl.train with an L2 module at strength 0
("+ L2 hooks": its hooks run on every optimiser step but training is identical, so the difference is the
cost of the module mechanism). Repeat r uses seed r for every variant, so each repeat compares the same
training work. Times are CPU seconds of this process (all its threads, 1 torch thread): wall-clock time on
shared machines swings by tens of percent between identical runs. clrl's evaluations (every task after
every task, and the random-policy returns) are timed apart and reported as a share; the ratio leaves them
out. Target: ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

import clrl
from clrl.presets import make_model


class EvaluationClock:
    """CPU time spent in clrl's Evaluator (wraps its two entry points)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        for name in ("__call__", "random_returns"):
            original = getattr(clrl.Evaluator, name)
            setattr(clrl.Evaluator, name, self._timed(original))

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.process_time() - start

        return timed


def plain_sb3(algo: str, stream: clrl.TaskStream, seed: int) -> float:
    model = make_model(algo, stream, seed, device="cpu")
    start = time.process_time()
    model.set_random_seed(seed)
    for i in range(len(stream)):
        model.set_env(stream.make_vec_env(i, n_envs=model.n_envs, seed=seed + 1000 * i))
        model.learn(stream.steps(i), reset_num_timesteps=False)
    return time.process_time() - start


def with_clrl(
    algo: str,
    stream: clrl.TaskStream,
    seed: int,
    episodes: int,
    modules: Callable[[], list],
    clock: EvaluationClock,
) -> tuple[float, float]:
    model = make_model(algo, stream, seed, device="cpu")
    with tempfile.TemporaryDirectory() as logdir:
        clock.seconds = 0.0
        start = time.process_time()
        clrl.train(model, stream, modules(), logdir=logdir, seed=seed, eval_episodes=episodes)
        total = time.process_time() - start
    return total, clock.seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stream", default="cartpole-flip")
    parser.add_argument("--algo", default="ppo")
    parser.add_argument("--steps", type=int, default=10_000, help="steps per task")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--eval-episodes", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    stream = clrl.make_stream(args.stream, steps_per_task=args.steps)
    clock = EvaluationClock()

    variants: dict[str, Callable[[int], tuple[float, float]]] = {
        "plain SB3": lambda seed: (plain_sb3(args.algo, stream, seed), 0.0),
        "clrl.train": lambda seed: with_clrl(args.algo, stream, seed, args.eval_episodes, list, clock),
        "+ L2 hooks": lambda seed: with_clrl(
            args.algo,
            stream,
            seed,
            args.eval_episodes,
            lambda: [clrl.L2(strength=0.0, networks="all")],
            clock,
        ),
    }
    # One-time costs (lazy imports, first allocations) would land on whichever variant runs first.
    plain_sb3(args.algo, clrl.streams.with_steps(stream, 1_000), seed=0)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(variants[name](r))
    plain = [t for t, _ in times["plain SB3"]]
    print(
        f"{args.algo} on {args.stream}: {len(stream)} tasks x {args.steps} steps, {args.repeats} repeats, "
        "CPU seconds (medians); ratios paired by seed against plain SB3, evaluation left out"
    )
    header = ("variant", "total s", "eval s", "w/o eval", "ratio", "range", "eval share")
    print(
        f"{header[0]:<14}"
        + "".join(f"{h:>{w}}" for h, w in zip(header[1:], (9, 8, 10, 8, 16, 12), strict=True))
    )
    for name, runs in times.items():
        ratios = [(t - e) / p for (t, e), p in zip(runs, plain, strict=True)]
        total = statistics.median(t for t, _ in runs)
        evaluation = statistics.median(e for _, e in runs)
        spread = f"[{min(ratios):.3f}, {max(ratios):.3f}]"
        print(
            f"{name:<14}{total:9.2f}{evaluation:8.2f}{total - evaluation:10.2f}"
            f"{statistics.median(ratios):8.3f}{spread:>16}{evaluation / total:12.1%}"
        )


if __name__ == "__main__":
    main()
