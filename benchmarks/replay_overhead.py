"""Training time and memory of the replay modules against plain SB3, as ratios measured in one run.

    python benchmarks/replay_overhead.py --algo ppo --steps 4096 --repeats 6     # CLEAR, cloning, A-GEM, GEM
    python benchmarks/replay_overhead.py --algo dqn --steps 4096 --repeats 6     # Replay, MIR, A-GEM, GEM
    python benchmarks/replay_overhead.py --algo sac --stream pendulum-flip --steps 2000 --only clonex
    python benchmarks/replay_overhead.py --algo dqn --skip-time --memory-tasks 12
    python benchmarks/replay_overhead.py --algo ppo --only clear --before e312e75  # and CLEAR at that commit
    python benchmarks/replay_overhead.py --algo dqn --stream cartpole-permuted --tasks 11 --steps 1024 \
        --only agem gem gem-refresh1 --repeats 1    # GEM at 10 earlier tasks

Time: the same protocol as ``regularisation_overhead.py`` (the user's own ``set_env`` + ``learn`` loop over
the stream, one model per configuration with the same seed, every configuration training task i back to
back, CPU time with one torch thread, ratios paired by repeat and task). Memory: a generated stream of
``--memory-tasks`` CartPole pole lengths (task id observed), DQN with ``Replay(budget=...)``: rows and
bytes held after each task and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from regularisation_overhead import Factory, peak_rss_mb, time_modules

import clrl
from clrl.presets import make_model

CONFIGURATIONS: dict[str, dict[str, Factory]] = {
    "ppo": {
        "plain": None,
        "clear": lambda: clrl.CLEAR(),
        "behaviour-cloning": lambda: clrl.BehaviourCloning(),
        "agem": lambda: clrl.AGEM(),
        "gem": lambda: clrl.GEM(),
        "generative-replay": lambda: clrl.GenerativeReplay(),
    },
    "a2c": {"plain": None, "clear": lambda: clrl.CLEAR(), "agem": lambda: clrl.AGEM()},
    "dqn": {
        "plain": None,
        "replay": lambda: clrl.Replay(),
        "mir": lambda: clrl.MIR(),
        "mir-3": lambda: clrl.MIR(candidates=96),  # 3 per replayed row of the preset's batch of 64
        "agem": lambda: clrl.AGEM(),
        "gem": lambda: clrl.GEM(),
        "gem-refresh1": lambda: clrl.GEM(refresh=1),
        "generative-replay": lambda: clrl.GenerativeReplay(),
    },
    "sac": {
        "plain": None,
        "replay": lambda: clrl.Replay(),
        "mir": lambda: clrl.MIR(),
        "clonex": lambda: clrl.ClonEx(exploration_steps=200),
        "agem": lambda: clrl.AGEM(),
    },
}


def module_at(revision: str, name: str) -> object:
    """``clrl/modules/<name>.py`` as it was at git ``revision``, imported as a module of its own (it imports
    the rest of clrl as it is now), to time an earlier version of a module in the same run."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(
        ["git", "show", f"{revision}:clrl/modules/{name}.py"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"{name}_at_{revision}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def memory(args: argparse.Namespace) -> None:
    lengths = np.linspace(0.4, 1.5, args.memory_tasks)
    tasks = [clrl.Task(f"length{x:.2f}", "CartPole-v1", attributes={"length": float(x)}) for x in lengths]
    stream = clrl.TaskStream("cartpole-lengths", tasks, steps_per_task=2048, task_id="observed")
    replay = clrl.Replay(budget=args.budget)
    model = make_model("dqn", stream, seed=0, device="cpu")
    rows = []
    for i in range(len(stream)):
        model.set_env(stream.make_vec_env(i, n_envs=model.n_envs, seed=i))
        model.learn(stream.steps(i), callback=replay, reset_num_timesteps=False)
        rows.append((len(replay.memory), replay.memory.nbytes, peak_rss_mb()))
    print(f"\nReplay(budget={args.budget}) on {len(stream)} tasks (DQN, 2048 steps each), after each task:")
    print("rows  " + " ".join(f"{r}" for r, _, _ in rows))
    print("bytes " + " ".join(f"{b}" for _, b, _ in rows))
    print("rss   " + " ".join(f"{m:.0f}" for _, _, m in rows) + " MB")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stream", default="cartpole-flip")
    parser.add_argument("--algo", default="ppo", choices=sorted(CONFIGURATIONS))
    parser.add_argument("--steps", type=int, default=4096, help="steps per task")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--tasks", type=int, help="train the stream's first TASKS tasks only")
    parser.add_argument("--memory-tasks", type=int, default=0, help="tasks of the memory part (0: skip)")
    parser.add_argument("--budget", type=int, default=10_000, help="Replay budget of the memory part")
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="configurations to time besides plain")
    parser.add_argument(
        "--before",
        metavar="REV",
        help="also time CLEAR and GEM (those chosen) as they were at this git revision (<name>-before)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    configurations = dict(CONFIGURATIONS[args.algo])
    if args.only:
        unknown = sorted(set(args.only) - set(configurations))
        if unknown:
            parser.error(
                f"no configuration {', '.join(unknown)} for {args.algo}: {', '.join(configurations)}"
            )
        configurations = {k: v for k, v in configurations.items() if k == "plain" or k in args.only}
    if args.before:  # the chosen CLEAR and GEM configurations, also as they were at that revision
        for name, cls in (("clear", "CLEAR"), ("gem", "GEM")):
            if name in configurations:
                earlier: Any = module_at(args.before, name)
                configurations[f"{name}-before"] = lambda earlier=earlier, cls=cls: getattr(earlier, cls)()
    if not args.skip_time:
        time_modules(args, configurations)
    if args.memory_tasks:
        memory(args)


if __name__ == "__main__":
    main()
