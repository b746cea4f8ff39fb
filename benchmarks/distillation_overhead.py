"""Training time of the distillation modules against plain SB3, as ratios measured in one run.

    python benchmarks/distillation_overhead.py --algo ppo --steps 4096 --repeats 4     # LwF, CLSER, DualNet
    python benchmarks/distillation_overhead.py --algo sac --stream pendulum-flip --steps 2000 --repeats 3
    python benchmarks/distillation_overhead.py --only clser clser-prefetch8  # some configurations (and plain)

The protocol of ``regularisation_overhead.py``: the user's own ``set_env`` + ``learn`` loop over the stream,
one model per configuration with the same seed, every configuration training task i back to back (order
rotated), CPU time with one torch thread, ratios paired by repeat and task. The first task has no teacher
yet, so LwF's cost shows on the later tasks; CLSER pays its consistency loss from the first update on
(``clser`` at its default ``prefetch=1``, ``clser-prefetch8`` with one pass of the copies per 8 steps).
``lwf-all`` is LwF with ``networks="all"``: one frozen copy's pass and the policy's pass on the same networks
CLSER makes consistent (actor and values), the part of CLSER's work that any distillation toward a copy
pays.
DualNet is timed twice: ``extractor`` is the model with its ``DualNetExtractor`` and no module (the cost of
the architecture), ``dualnet`` adds the module (the look-ahead updates and the memory).
Target (issue 6): LwF and CLSER at most 1.35x plain SB3; DualNet's cost is stated, not bounded.
"""

from __future__ import annotations

import argparse

import torch
from regularisation_overhead import Factory, time_modules

import clrl
from clrl.experiment import policy_hyperparameters

CONFIGURATIONS: dict[str, dict[str, Factory]] = {
    algo: {
        "plain": None,
        "lwf": lambda: clrl.LwF(),
        "lwf-all": lambda: clrl.LwF(networks="all"),
        "clser": lambda: clrl.CLSER(),
        "clser-prefetch8": lambda: clrl.CLSER(prefetch=8),
        "extractor": None,
        "dualnet": lambda: clrl.DualNet(),
    }
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
    parser.add_argument(
        "--only", nargs="+", choices=[n for n in CONFIGURATIONS["ppo"] if n != "plain"], help="configurations"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    stream = clrl.make_stream(args.stream, steps_per_task=args.steps)
    dualnet = policy_hyperparameters("dualnet", args.algo, stream, {})
    configurations = {
        name: factory
        for name, factory in CONFIGURATIONS[args.algo].items()
        if name == "plain" or args.only is None or name in args.only
    }
    time_modules(args, configurations, {"extractor": dualnet, "dualnet": dualnet})


if __name__ == "__main__":
    main()
