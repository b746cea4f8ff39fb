"""Memory of a long continual run: a generated stream of many tasks through ``clrl.train``.

    python benchmarks/long_stream.py --method online-ewc      # PPO + OnlineEWC: state constant in tasks
    python benchmarks/long_stream.py --method replay          # DQN + Replay: memory capped by the budget
    python benchmarks/long_stream.py --method ewc             # PPO + EWC: state grows by design (contrast)
    python benchmarks/long_stream.py --method finetune        # PPO alone: what the runner itself holds

The stream has ``--tasks`` CartPole tasks (pole lengths spread over [0.3, 1.5], task id observed, episodes
cut at 100 steps so that the evaluation of every task after every task stays cheap), ``--steps`` steps per
task, one evaluation episode per task, checkpoints and TensorBoard written to a temporary run directory.
After each task it records the modules' state bytes and the process's current and peak resident memory;
it prints them every ``--every`` tasks. Run each method in its own process (as above) so that the peaks
are its own.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile

import numpy as np
import torch

import clrl
from clrl.presets import make_model

METHODS = {
    "online-ewc": ("ppo", lambda: [clrl.OnlineEWC(strength=100.0, samples=256)]),
    "ewc": ("ppo", lambda: [clrl.EWC(strength=100.0, samples=256)]),
    "replay": ("dqn", lambda: [clrl.Replay(budget=5_000)]),
    "finetune": ("ppo", lambda: []),
}


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MemoryProbe(clrl.ContinualModule):
    """Records the process's memory at the end of every task (changes nothing in training)."""

    name = "probe"

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.rows: list[tuple[float, float]] = []

    def on_task_end(self, task: clrl.TaskInfo) -> None:
        self.rows.append((current_rss_mb(), peak_rss_mb()))


def long_stream(n_tasks: int, steps: int) -> clrl.TaskStream:
    lengths = np.linspace(0.3, 1.5, n_tasks)
    tasks = [
        clrl.Task(
            f"length{k:02d}",
            "CartPole-v1",
            attributes={"length": float(x)},
            wrappers=(clrl.WrapperSpec("TimeLimit", {"max_episode_steps": 100}),),
        )
        for k, x in enumerate(lengths)
    ]
    return clrl.TaskStream(f"cartpole-{n_tasks}-lengths", tasks, steps_per_task=steps, task_id="observed")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", default="online-ewc", choices=sorted(METHODS))
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--steps", type=int, default=512, help="steps per task")
    parser.add_argument("--every", type=int, default=5, help="print every N tasks")
    args = parser.parse_args()
    torch.set_num_threads(1)

    algo, modules = METHODS[args.method]
    stream = long_stream(args.tasks, args.steps)
    model = make_model(algo, stream, seed=0, device="cpu")
    probe = MemoryProbe()
    with tempfile.TemporaryDirectory() as logdir:
        result = clrl.train(model, stream, [*modules(), probe], logdir=logdir, eval_episodes=1)
        disk = sum(f.stat().st_size for f in os.scandir(os.path.join(logdir, "checkpoints"))) / 2**20
    print(f"{args.method} ({algo.upper()}), {args.tasks} tasks of {args.steps} steps: after task k")
    print(f"{'task':>5} {'state bytes':>12} {'RSS MB':>8} {'peak RSS MB':>12}")
    for k, (stats, (rss, peak)) in enumerate(zip(result.module_stats, probe.rows, strict=True), start=1):
        if k == 1 or k % args.every == 0:
            state = sum(v["state_bytes"] for name, v in stats.items() if name != "probe")
            print(f"{k:>5} {state:>12.0f} {rss:>8.0f} {peak:>12.0f}")
    print(f"checkpoints on disk: {disk:.1f} MB in all; run time {result.timings['total']:.0f} s")


if __name__ == "__main__":
    main()
