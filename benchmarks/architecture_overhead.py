"""Training time of the architectural modules against plain SB3 of the same network size, as ratios.

    python benchmarks/architecture_overhead.py --algo ppo --steps 4096 --repeats 4
    python benchmarks/architecture_overhead.py --algo dqn --steps 4096 --repeats 4
    python benchmarks/architecture_overhead.py --algo ppo --only net2net --sizes 4 20
    python benchmarks/architecture_overhead.py --algo dqn --reset-buffer --only multihead piggyback

The protocol of ``regularisation_overhead.py`` (the user's own ``set_env`` + ``learn`` loop, one model per
configuration with the same seed, every configuration training task i back to back, CPU time with one torch
thread, ratios paired by repeat and task; the replay buffer carries over unless ``--reset-buffer``, so
off-policy batches mix the tasks so far). Every configuration has the preset's network size. PackNet keeps
the network as it is: its cost is masking the gradient and writing the frozen weights back after every
optimiser step, and one pruning per task. Multi-head, progressive, masked (Piggyback, SupSup, CPG), HAT and
hypernetwork policies change the network: their ratios are also printed per task, since a progressive pass
over task k runs k + 1 columns and Piggyback's first task trains unmasked. Net2Net growth widens every hidden
layer at each task start after the first, so its later tasks train a wider network;
``--sizes`` prints its parameter count after that many tasks (each task start after the first widens).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from regularisation_overhead import Factory, time_modules

import clrl
from clrl.presets import make_model, preset

CONFIGURATIONS: dict[str, Factory] = {
    "plain": None,
    "packnet": lambda: clrl.PackNet(),
    "packnet-all": lambda: clrl.PackNet(networks="all"),
    "multihead": lambda: clrl.MultiHead(),
    "progressive": lambda: clrl.ProgressiveColumns(),
    "net2net": lambda: clrl.Net2NetGrowth(),
    "piggyback": lambda: clrl.Piggyback(),
    "piggyback-all": lambda: clrl.Piggyback(networks="all"),
    "supsup": lambda: clrl.SupSup(),
    "supsup-all": lambda: clrl.SupSup(networks="all"),
    "hat": lambda: clrl.HAT(),
    "hat-all": lambda: clrl.HAT(networks="all"),
    "hat-denormals": lambda: _HATWithDenormals(),
    "hypernetwork": lambda: clrl.HyperNetwork(),
    "cpg": lambda: clrl.CPG(),
}


class _HATWithDenormals(clrl.HAT):
    """HAT as before it flushed denormals to zero while a task trains (to measure what that saves)."""

    def on_task_start(self, task: clrl.TaskInfo) -> None:
        super().on_task_start(task)
        torch.set_flush_denormal(False)


def growth_sizes(stream: clrl.TaskStream, algo: str, tasks: list[int]) -> None:
    """Net2Net's parameters (and Adam's state, two floats per parameter) after each count of ``tasks``."""
    model = make_model(algo, stream, 0, device="cpu")
    growth = clrl.Net2NetGrowth()
    growth.init_callback(model)
    print(f"\nNet2NetGrowth() on {algo}'s preset network, parameters after each count of tasks:")
    for done in range(1, max(tasks) + 1):
        if done > 1:
            growth.grow()
        if done in tasks:
            count = sum(p.numel() for p in model.policy.parameters())
            arch = model.policy_kwargs["net_arch"] if done > 1 else "preset"  # type: ignore[attr-defined]
            print(
                f"  {done:>3} tasks: {count:>9,} parameters, "
                f"{count * 3 * 4 / 1e6:.2f} MB with Adam's state ({arch})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stream", default="cartpole-flip")
    parser.add_argument("--algo", default="ppo", choices=["ppo", "a2c", "dqn"])
    parser.add_argument("--steps", type=int, default=4096, help="steps per task")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="configurations to time besides plain")
    parser.add_argument(
        "--reset-buffer",
        action="store_true",
        help="off-policy: empty the replay buffer at each task after the first, as clrl.train does by "
        "default (without it the buffer carries over, as in a user's own learn loop, and batches mix tasks)",
    )
    parser.add_argument(
        "--sizes", nargs="+", type=int, metavar="TASKS", help="Net2Net's size after these tasks"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    stream = clrl.make_stream(args.stream)
    configurations = {
        k: v for k, v in CONFIGURATIONS.items() if not args.only or k == "plain" or k in args.only
    }
    net = preset(stream.name, args.algo).get("policy_kwargs", {})
    policies = {
        "multihead": clrl.multihead_policy(args.algo),
        "progressive": clrl.progressive_policy(args.algo),
        "piggyback": clrl.masked_policy(args.algo),
        "supsup": clrl.masked_policy(args.algo),
        "hat": clrl.hat_policy(args.algo),
        "hypernetwork": clrl.hypernetwork_policy(args.algo),
        "cpg": clrl.masked_policy(args.algo),
    }
    policies.update({f"{name}-all": policies[name] for name in ("piggyback", "supsup", "hat")})
    policies["hat-denormals"] = policies["hat"]
    hyperparameters = {
        name: {"policy": policy, "policy_kwargs": {**net, "n_tasks": len(stream)}}
        for name, policy in policies.items()
    }
    cpu = time_modules(args, configurations, hyperparameters)
    n = len(stream)
    print("\nratio to plain SB3 per task (median over repeats):")
    for name in configurations:
        per_task = [
            statistics.median(c / p for c, p in zip(cpu[name][i::n], cpu["plain"][i::n], strict=True))
            for i in range(n)
        ]
        print(f"{name:<11} " + "  ".join(f"task {i + 1}: {r:.3f}" for i, r in enumerate(per_task)))
    if args.sizes:
        growth_sizes(stream, args.algo, args.sizes)


if __name__ == "__main__":
    main()
