"""CPU time of SB3's own update with and without a continual module's hooks, as a ratio.

    python benchmarks/hook_overhead.py --algo ppo --module ewc --repeats 12
    python benchmarks/hook_overhead.py --algo sac --stream <a continuous-action stream file> --module ewc

Fills the model's buffer once, then times ``model.train()`` (PPO/A2C: one epoch set over the rollout;
DQN/SAC/TD3: ``--gradient-steps`` steps) alternately with and without a regularisation module attached at
strength 0 with an anchor and random importances (its penalty gradient, and SI's path integral, are
computed on every optimiser step but add zero, so the updates are the same work). CPU time of this
process, 1 torch thread: the module mechanism's cost, free of the wall-clock noise of shared machines.
Prints medians and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

import clrl
from clrl.modules import QuadraticPenalty
from clrl.presets import make_model

MODULES: dict[str, type[QuadraticPenalty]] = {
    "l2": clrl.L2,
    "ewc": clrl.EWC,
    "online_ewc": clrl.OnlineEWC,
    "mas": clrl.MAS,
    "si": clrl.SI,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stream", default="cartpole-flip")
    parser.add_argument("--algo", default="ppo")
    parser.add_argument("--module", default="l2", choices=sorted(MODULES))
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--gradient-steps", type=int, default=200, help="off-policy: steps per timed update")
    args = parser.parse_args()
    torch.set_num_threads(1)
    stream = clrl.make_stream(args.stream)
    model = make_model(args.algo, stream, seed=0, device="cpu")
    model.learn(4096)  # fills the rollout or replay buffer
    if isinstance(model, OffPolicyAlgorithm):

        def update() -> None:
            model.train(gradient_steps=args.gradient_steps, batch_size=model.batch_size)
    else:
        update = model.train  # type: ignore[attr-defined]

    module = MODULES[args.module](strength=0.0, networks="all")
    module.init_callback(model)
    module.anchor = {n: p.detach().clone() for n, p in module.regularised().items()}
    if args.module != "l2":
        module.importance = {n: torch.rand_like(a) for n, a in module.anchor.items()}
    module.on_task_start(clrl.TaskInfo(1, "timed"))
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.repeats):
        for attach in (True, False) if r % 2 else (False, True):
            if attach:
                module.attach()
            start = time.process_time()
            update()
            times[attach].append(time.process_time() - start)
            module.detach()
    plain, with_hooks = statistics.median(times[False]), statistics.median(times[True])
    print(f"{args.algo} on {args.stream}: median CPU seconds of one update over {args.repeats} repeats")
    ratio = with_hooks / plain
    print(f"plain SB3 {plain:.4f}   with {args.module} hooks {with_hooks:.4f}   ratio {ratio:.3f}")


if __name__ == "__main__":
    main()
