"""Training time of the regularisation modules against plain SB3, as ratios measured in one run.

    python benchmarks/regularisation_overhead.py --steps 4096 --repeats 8
    python benchmarks/regularisation_overhead.py --algo dqn --memory-tasks 0

Part 1 (time): the user's own loop over a stream (``set_env`` + ``learn`` per task, no evaluation), plain
and with each module as ``callback=``, one model per configuration with the same seed, every configuration
training task i back to back (order rotated) so that drifts of a shared machine hit all of them alike.
Training time is CPU time of this process with one torch thread (wall time printed too), without the
importance estimate, which the modules time themselves (state draw included) and which is reported on its
own: in seconds and as a share of the time plain SB3 needs for a task of the stream's full budget. Short
tasks and many repeats keep each timed piece within a few seconds of its partners.

Part 2 (memory): a generated stream of ``--memory-tasks`` CartPole pole lengths with tiny budgets, EWC and
online EWC as callbacks: bytes of module state and the process's peak resident memory after each task.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

import clrl
from clrl.algorithms import restart_replay
from clrl.modules import ImportancePenalty
from clrl.presets import make_model

Factory = Callable[[], BaseCallback] | None
"""Builds the module (or another callback: clrl.PlasticityMonitor) a configuration trains with."""

# The strengths of the README's cartpole-flip table.
MODULES: dict[str, Factory] = {
    "plain": None,
    "l2": lambda: clrl.L2(strength=0.01),
    "ewc": lambda: clrl.EWC(),
    "online_ewc": lambda: clrl.OnlineEWC(),
    "mas": lambda: clrl.MAS(),
    "si": lambda: clrl.SI(),
    "scp": lambda: clrl.SCP(),
    "rwalk": lambda: clrl.RWalk(),
}


def machine() -> str:
    """The CPU and library versions the ratios were measured with (they differ between machines)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            fields = {
                key.strip(): value.strip()
                for key, value in (line.split(":", 1) for line in info if ":" in line)
            }
        named = [f"{key} {fields[key]}" for key in ("cpu family", "model") if key in fields]
        cpu = ", ".join([fields.get("model name", cpu), *named])
    except OSError:
        pass
    return (
        f"{cpu}; torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} thread(s)), numpy {np.__version__}"
    )


def time_modules(
    args: argparse.Namespace,
    configurations: dict[str, Factory] = MODULES,
    hyperparameters: dict[str, dict[str, Any]] | None = None,
) -> dict[str, list[float]]:
    """Part 1 of the module doc for ``configurations`` (name -> module factory; ``"plain"`` first), each
    model built with ``hyperparameters[name]`` over the preset. Returns the CPU seconds per (repeat, task)."""
    stream = clrl.make_stream(args.stream, steps_per_task=args.steps)
    names = list(configurations)
    tasks = min(len(stream), getattr(args, "tasks", None) or len(stream))  # --tasks: the first ones
    cpu: dict[str, list[float]] = {name: [] for name in names}  # per (repeat, task)
    wall: dict[str, list[float]] = {name: [] for name in names}
    importance: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        models = {
            name: make_model(args.algo, stream, repeat, (hyperparameters or {}).get(name), device="cpu")
            for name in names
        }
        modules = {name: factory() if factory else None for name, factory in configurations.items()}
        warmup = {name: getattr(model, "learning_starts", 0) for name, model in models.items()}
        for i in range(tasks):
            # All configurations train task i back to back (order rotated), so drifts of a shared machine
            # hit them alike; ratios are taken per (repeat, task).
            shift = (repeat * len(stream) + i) % len(names)
            for name in names[shift:] + names[:shift]:
                model, module = models[name], modules[name]
                model.set_env(stream.make_vec_env(i, n_envs=model.n_envs, seed=repeat + 1000 * i))
                if getattr(args, "reset_buffer", False) and i > 0 and isinstance(model, OffPolicyAlgorithm):
                    restart_replay(model, warmup[name])  # as clrl.train's default does
                start_cpu, start_wall = time.process_time(), time.perf_counter()
                model.learn(stream.steps(i), callback=module, reset_num_timesteps=False)
                # Training time without the importance estimate (reported on its own below).
                estimate = module.importance_seconds if isinstance(module, ImportancePenalty) else 0.0
                cpu[name].append(time.process_time() - start_cpu - estimate)
                wall[name].append(time.perf_counter() - start_wall - estimate)
                if isinstance(module, ImportancePenalty):
                    importance.setdefault(name, []).append(estimate)
            times = "  ".join(f"{n} {cpu[n][-1]:.2f}" for n in names)
            print(f"  repeat {repeat} task {i}: {times}", flush=True)
    full_task = clrl.make_stream(args.stream).steps(0)
    plain_per_step = statistics.median(cpu["plain"]) / args.steps
    print(
        f"\n{args.algo} on {args.stream}, {tasks} tasks x {args.steps} steps, {args.repeats} repeats: "
        "training time without importance estimation (CPU s per task, median), and its ratio to plain SB3 "
        "paired by repeat and task (median [range]); importance estimation in seconds per task and as a "
        f"share of a {full_task}-step task of plain SB3 (the stream's budget); measured on {machine()}"
    )
    for name in names:
        ratios = [c / p for c, p in zip(cpu[name], cpu["plain"], strict=True)]
        wall_ratios = [c / p for c, p in zip(wall[name], wall["plain"], strict=True)]
        share = ""
        if name in importance:
            seconds = statistics.median(importance[name])
            share = f"  importance {seconds:.3f} s = {100 * seconds / (plain_per_step * full_task):.2f}%"
        print(
            f"{name:<11} cpu {statistics.median(cpu[name]):6.2f} s  ratio {statistics.median(ratios):.3f}"
            f" [{min(ratios):.3f}, {max(ratios):.3f}]   wall {statistics.median(wall_ratios):.3f}" + share
        )

    return cpu


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
            rows.append((module.state_bytes(), peak_rss_mb()))
        print(f"{name:<11} state " + " ".join(f"{b}" for b, _ in rows))
        print(f"{'':<11} rss   " + " ".join(f"{m:.0f}" for _, m in rows))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stream", default="cartpole-flip")
    parser.add_argument("--algo", default="ppo")
    parser.add_argument("--steps", type=int, default=4096, help="steps per task")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--memory-tasks", type=int, default=12)
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="modules to time besides plain")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.only:
        unknown = sorted(set(args.only) - set(MODULES))
        if unknown:
            parser.error(f"no module {', '.join(unknown)}: {', '.join(MODULES)}")
    if not args.skip_time:
        chosen = {k: v for k, v in MODULES.items() if k == "plain" or not args.only or k in args.only}
        time_modules(args, chosen)
    if args.memory_tasks:
        memory(args)


if __name__ == "__main__":
    main()
