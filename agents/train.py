"""Train an SB3 agent on a task stream with clrl's Python API, and print the return matrix.

    python agents/train.py --stream cartpole-flip --algo ppo --method l2 --seed 0

Reads top to bottom: arguments -> stream -> agent -> continual modules -> train -> results.
The hyperparameters are the presets of agents/presets/, the same ones `clrl run` uses.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

import clrl
from clrl.presets import make_model, preset


@dataclass
class Args:
    stream: str = "cartpole-flip"  # built-in stream name or a stream file
    algo: str = "ppo"  # ppo, a2c, dqn, sac, td3 (and sb3-contrib's when installed)
    method: str = "finetune"  # finetune, l2, ewc, online-ewc, mas, si, replay, clear, behaviour-cloning,
    #                           clonex, agem, packnet, multihead, progressive, lwf, clser, pnc, dualnet
    strength: float = 1000.0  # penalty coefficient of the penalty modules (l2 ... si)
    steps: int | None = None  # steps per task (default: the stream's)
    seed: int = 0
    logdir: str = "runs"


def parse_args() -> Args:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name, default in vars(Args()).items():
        kind = float if name == "strength" else int if name in ("steps", "seed") else str
        parser.add_argument(f"--{name}", type=kind, default=default)
    return Args(**vars(parser.parse_args()))


def main() -> None:
    args = parse_args()

    # 1. The stream: an ordered sequence of Gymnasium task variants.
    stream = clrl.make_stream(args.stream, steps_per_task=args.steps)

    # 2. The agent: an SB3 model built on the first task's environment. Multi-head and progressive
    #    methods need their own policy class, with one head or column per task (Progress & Compress:
    #    two columns, the knowledge base and the active column, whatever the number of tasks).
    policies = {
        "multihead": clrl.multihead_policy,
        "progressive": clrl.progressive_policy,
        "pnc": clrl.progressive_policy,
    }
    #    DualNet's slow and fast networks are the policy's features extractor.
    overrides = {}
    net = preset(stream.name, args.algo).get("policy_kwargs", {})
    if args.method in policies:
        overrides = {
            "policy": policies[args.method](args.algo),
            "policy_kwargs": {**net, "n_tasks": 2 if args.method == "pnc" else len(stream)},
        }
    elif args.method == "dualnet":
        overrides = {"policy_kwargs": {**net, "features_extractor_class": clrl.DualNetExtractor}}
    model = make_model(args.algo, stream, args.seed, overrides)

    # 3. Continual modules plug into the model as callbacks.
    penalties = {"l2": clrl.L2, "ewc": clrl.EWC, "online-ewc": clrl.OnlineEWC, "mas": clrl.MAS, "si": clrl.SI}
    others = {  # default hyperparameters
        "replay": clrl.Replay,
        "clear": clrl.CLEAR,
        "behaviour-cloning": clrl.BehaviourCloning,
        "clonex": clrl.ClonEx,
        "agem": clrl.AGEM,
        "packnet": clrl.PackNet,
        "multihead": clrl.MultiHead,
        "progressive": clrl.ProgressiveColumns,
        "lwf": clrl.LwF,
        "clser": clrl.CLSER,
        "pnc": clrl.ProgressAndCompress,
        "dualnet": clrl.DualNet,
    }
    if args.method not in (*penalties, *others, "finetune"):
        choices = ", ".join(["finetune", *penalties, *others])
        raise SystemExit(f"unknown --method {args.method!r}; choose {choices}")
    modules: list[clrl.ContinualModule] = []
    if args.method in penalties:
        modules.append(penalties[args.method](strength=args.strength))
    elif args.method in others:
        modules.append(others[args.method]())

    # 4. Learn the tasks one after another; evaluate on every task after each.
    result = clrl.train(
        model,
        stream,
        modules,
        logdir=f"{args.logdir}/{stream.name}/{args.algo}-{args.method}/seed{args.seed}",
        seed=args.seed,
        progress_bar=True,
    )

    # 5. The return matrix R[i, j]: row 0 untrained, row i after task i; and the metrics derived from it.
    np.set_printoptions(precision=1, suppress=True)
    print("tasks:", ", ".join(stream.task_names))
    print(result.matrix)
    print({name: round(value, 2) for name, value in result.metrics.items()})


if __name__ == "__main__":
    main()
