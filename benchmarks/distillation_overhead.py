"""Training time of the distillation modules against plain SB3, as ratios measured in one run.

    python benchmarks/distillation_overhead.py --algo ppo --steps 4096 --repeats 4     # LwF and CLSER
    python benchmarks/distillation_overhead.py --algo sac --stream pendulum-flip --steps 2000 --repeats 3

The protocol of ``regularisation_overhead.py``: the user's own ``set_env`` + ``learn`` loop over the stream,
one model per configuration with the same seed, every configuration training task i back to back (order
rotated), CPU time with one torch thread, ratios paired by repeat and task. The first task has no teacher
yet, so LwF's cost shows on the later tasks; CLSER pays its consistency loss from the first update on.
Target (issue 6): LwF and CLSER at most 1.35x plain SB3.
"""

from __future__ import annotations

import argparse

import torch
from regularisation_overhead import Factory, time_modules

import clrl

CONFIGURATIONS: dict[str, dict[str, Factory]] = {
    algo: {"plain": None, "lwf": lambda: clrl.LwF(), "clser": lambda: clrl.CLSER()}
    for algo in ("ppo", "a2c", "dqn", "sac", "td3")
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stream", default="cartpole-flip")
    parser.add_argument("--algo", default="ppo", choices=sorted(CONFIGURATIONS))
    parser.add_argument("--steps", type=int, default=4096, help="steps per task")
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    time_modules(args, CONFIGURATIONS[args.algo])


if __name__ == "__main__":
    main()
