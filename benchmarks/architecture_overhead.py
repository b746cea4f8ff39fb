"""Training time of the architectural modules against plain SB3 of the same network size, as ratios.

    python benchmarks/architecture_overhead.py --algo ppo --steps 4096 --repeats 4
    python benchmarks/architecture_overhead.py --algo dqn --steps 4096 --repeats 4

The protocol of ``regularisation_overhead.py`` (the user's own ``set_env`` + ``learn`` loop, one model per
configuration with the same seed, every configuration training task i back to back, CPU time with one torch
thread, ratios paired by repeat and task). Every configuration has the preset's network size. PackNet keeps
the network as it is: its cost is masking the gradient and writing the frozen weights back after every
optimiser step, and one pruning per task. Multi-head and progressive policies change the network: their
ratios are also printed per task, since a progressive pass over task k runs k + 1 columns.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from regularisation_overhead import Factory, time_modules

import clrl
from clrl.presets import preset

CONFIGURATIONS: dict[str, Factory] = {
    "plain": None,
    "packnet": lambda: clrl.PackNet(),
    "packnet-all": lambda: clrl.PackNet(networks="all"),
    "multihead": lambda: clrl.MultiHead(),
    "progressive": lambda: clrl.ProgressiveColumns(),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stream", default="cartpole-flip")
    parser.add_argument("--algo", default="ppo", choices=["ppo", "a2c", "dqn"])
    parser.add_argument("--steps", type=int, default=4096, help="steps per task")
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    stream = clrl.make_stream(args.stream)
    net = preset(stream.name, args.algo).get("policy_kwargs", {})
    policies = {
        "multihead": clrl.multihead_policy(args.algo),
        "progressive": clrl.progressive_policy(args.algo),
    }
    hyperparameters = {
        name: {"policy": policy, "policy_kwargs": {**net, "n_tasks": len(stream)}}
        for name, policy in policies.items()
    }
    cpu = time_modules(args, CONFIGURATIONS, hyperparameters)
    n = len(stream)
    print("\nratio to plain SB3 per task (median over repeats):")
    for name in CONFIGURATIONS:
        per_task = [
            statistics.median(c / p for c, p in zip(cpu[name][i::n], cpu["plain"][i::n], strict=True))
            for i in range(n)
        ]
        print(f"{name:<11} " + "  ".join(f"task {i + 1}: {r:.3f}" for i, r in enumerate(per_task)))


if __name__ == "__main__":
    main()
