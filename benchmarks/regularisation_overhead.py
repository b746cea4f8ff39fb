"""Training time of the regularisation modules against plain SB3, as ratios measured in one run.

    python benchmarks/regularisation_overhead.py --repeats 3
    python benchmarks/regularisation_overhead.py --algo sac --stream pendulum-physics ...

Part 1 (time): the user's own loop over a stream (``set_env`` + ``learn`` per task, no evaluation), plain
and with each module as ``callback=``, same seed per repeat, configurations interleaved so that drifts of a
shared machine hit all of them alike. Training time is CPU time of this process with one torch thread
(wall time printed too). Importance estimation (state draw included) is timed inside the modules and
reported as a share of the module's training time per task.

Part 2 (memory): a generated stream of ``--memory-tasks`` CartPole pole lengths with tiny budgets, EWC and
online EWC as callbacks: bytes of module state and the process's peak resident memory after each task.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

import clrl
from clrl.modules import ImportancePenalty, QuadraticPenalty
from clrl.presets import make_model

# The strengths of the README's cartpole-flip table.
MODULES: dict[str, Callable[[], QuadraticPenalty] | None] = {
    "plain": None,
    "l2": lambda: clrl.L2(strength=0.01),
    "ewc": lambda: clrl.EWC(),
    "online_ewc": lambda: clrl.OnlineEWC(),
    "mas": lambda: clrl.MAS(),
    "si": lambda: clrl.SI(),
}


def train_once(stream: clrl.TaskStream, algo: str, seed: int, module: QuadraticPenalty | None) -> tuple:
    model = make_model(algo, stream, seed=seed, device="cpu")
    cpu = wall = 0.0
    for i in range(len(stream)):
        model.set_env(stream.make_vec_env(i, n_envs=model.n_envs, seed=seed + 1000 * i))
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        model.learn(stream.steps(i), callback=module, reset_num_timesteps=False)
        cpu += time.process_time() - start_cpu
        wall += time.perf_counter() - start_wall
    return cpu, wall


def time_modules(args: argparse.Namespace) -> None:
    stream = clrl.make_stream(args.stream, steps_per_task=args.steps)
    cpu: dict[str, list[float]] = {name: [] for name in MODULES}
    wall: dict[str, list[float]] = {name: [] for name in MODULES}
    importance_share: dict[str, list[float]] = {}
    names = list(MODULES)
    for repeat in range(args.repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in order:
            factory = MODULES[name]
            module = factory() if factory is not None else None
            c, w = train_once(stream, args.algo, seed=repeat, module=module)
            cpu[name].append(c)
            wall[name].append(w)
            if isinstance(module, ImportancePenalty):
                per_task = c / len(stream)
                importance_share.setdefault(name, []).append(module.importance_seconds / per_task)
            print(f"  repeat {repeat} {name:<11} cpu {c:7.2f} s  wall {w:7.2f} s", flush=True)
    print(
        f"\n{args.algo} on {args.stream}, {len(stream)} tasks x {args.steps} steps, {args.repeats} repeats: "
        "median training time and ratio to plain SB3 (per-repeat range)"
    )
    base_cpu, base_wall = statistics.median(cpu["plain"]), statistics.median(wall["plain"])
    for name in names:
        ratios = [c / p for c, p in zip(cpu[name], cpu["plain"], strict=True)]
        share = ""
        if name in importance_share:
            share = f"  importance {100 * statistics.median(importance_share[name]):.2f}% of a task"
        median_cpu, median_wall = statistics.median(cpu[name]), statistics.median(wall[name])
        print(
            f"{name:<11} cpu {median_cpu:7.2f} s  ratio {median_cpu / base_cpu:.3f}"
            f" [{min(ratios):.3f}, {max(ratios):.3f}]   wall ratio {median_wall / base_wall:.3f}" + share
        )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def state_bytes(module: QuadraticPenalty) -> int:
    def size(tree: object) -> int:
        if isinstance(tree, torch.Tensor):
            return tree.numel() * tree.element_size()
        if isinstance(tree, dict):
            return sum(size(v) for v in tree.values())
        if isinstance(tree, list):
            return sum(size(v) for v in tree)
        return 0

    return size(module.state_dict())


def memory(args: argparse.Namespace) -> None:
    lengths = np.linspace(0.4, 1.5, args.memory_tasks)
    tasks = [clrl.Task(f"length{x:.2f}", "CartPole-v1", attributes={"length": float(x)}) for x in lengths]
    stream = clrl.TaskStream("cartpole-lengths", tasks, steps_per_task=2048, task_id="hidden")
    print(f"\nmemory on {len(stream)} tasks (PPO, 2048 steps each): module state bytes, peak RSS MB")
    for name, cls in (("online_ewc", clrl.OnlineEWC), ("ewc", clrl.EWC)):
        module = cls()
        model = make_model("ppo", stream, seed=0, device="cpu")
        rows = []
        for i in range(len(stream)):
            model.set_env(stream.make_vec_env(i, n_envs=model.n_envs, seed=i))
            model.learn(stream.steps(i), callback=module, reset_num_timesteps=False)
            rows.append((state_bytes(module), peak_rss_mb()))
        print(f"{name:<11} state " + " ".join(f"{b}" for b, _ in rows))
        print(f"{'':<11} rss   " + " ".join(f"{m:.0f}" for _, m in rows))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stream", default="cartpole-flip")
    parser.add_argument("--algo", default="ppo")
    parser.add_argument("--steps", type=int, default=10_000, help="steps per task")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-tasks", type=int, default=12)
    parser.add_argument("--skip-time", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.skip_time:
        time_modules(args)
    if args.memory_tasks:
        memory(args)


if __name__ == "__main__":
    main()
