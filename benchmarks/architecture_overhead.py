"""Training time of the architectural modules against plain SB3 of the same network size, as ratios.

    python benchmarks/architecture_overhead.py --algo ppo --steps 4096 --repeats 4
    python benchmarks/architecture_overhead.py --algo dqn --steps 4096 --repeats 4

The protocol of ``regularisation_overhead.py`` (the user's own ``set_env`` + ``learn`` loop, one model per
configuration with the same seed, every configuration training task i back to back, CPU time with one torch
thread, ratios paired by repeat and task). PackNet keeps the network as it is: its cost is masking the
gradient and writing the frozen weights back after every optimiser step, and one pruning per task.
"""

from __future__ import annotations

import argparse

import torch
from regularisation_overhead import Factory, time_modules

import clrl

CONFIGURATIONS: dict[str, Factory] = {"plain": None, "packnet": lambda: clrl.PackNet()}


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
    time_modules(args, CONFIGURATIONS)


if __name__ == "__main__":
    main()
