"""CPU time of training with a module that holds the state of 1 task against the same module holding 50.

    python benchmarks/task_count_overhead.py --algo sac --module ewc --tasks 50 --repeats 6
    python benchmarks/task_count_overhead.py --algo ppo --module ewc --tasks 50 --repeats 6

A step's module cost (its gradient hooks and the scalars it logs) should not grow with the tasks it has
seen. The module gets random Fishers and anchors of 1 or ``--tasks`` finished tasks (EWC keeps one of each
per task; online EWC, SI, MAS and L2 keep one combined), then ``learn(--steps)`` of the model is timed
alternately with each, inside one ``clrl.training_task``, after a first ``learn`` that fills the buffer and
warms up. SAC with ``train_freq=1`` logs at every rollout end, one step: the case that costs most. CPU
time of this process, 1 torch thread. Prints medians, ranges and the ratio of each pair.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import clrl
from clrl.presets import make_model

MODULES = {"ewc": clrl.EWC, "online_ewc": clrl.OnlineEWC, "l2": clrl.L2, "mas": clrl.MAS}


def state_of(module: clrl.ContinualModule, tasks: int, generator: torch.Generator) -> dict:
    params = module.regularised()  # type: ignore[attr-defined]

    def draw(scale: float) -> dict[str, torch.Tensor]:
        return {n: scale * torch.rand(p.shape, generator=generator) for n, p in params.items()}

    if isinstance(module, clrl.EWC):
        return {"fishers": [draw(1.0) for _ in range(tasks)], "anchors": [draw(0.1) for _ in range(tasks)]}
    return {"anchor": draw(0.1), "importance": {} if isinstance(module, clrl.L2) else draw(1.0)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--algo", default="sac")
    parser.add_argument(
        "--stream", default=None, help="default: pendulum-flip for SAC/TD3, else cartpole-flip"
    )
    parser.add_argument("--module", default="ewc", choices=sorted(MODULES))
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    name = args.stream or ("pendulum-flip" if args.algo in ("sac", "td3") else "cartpole-flip")
    stream = clrl.make_stream(name)
    hp = {"train_freq": 1} if args.algo in ("sac", "td3", "dqn") else {}
    model = make_model(args.algo, stream, seed=0, overrides=hp, device="cpu")
    module = MODULES[args.module](strength=1.0)
    module.bind(model)
    generator = torch.Generator().manual_seed(0)
    states = {n: state_of(module, n, generator) for n in (1, args.tasks)}
    times: dict[int, list[float]] = {1: [], args.tasks: []}
    with clrl.training_task(model, [module], 1, steps=args.steps * (2 * args.repeats + 1)):
        module.load_state_dict(states[1])
        model.learn(args.steps, callback=module, reset_num_timesteps=False)  # fill the buffer, warm up
        for r in range(args.repeats):
            for n in (1, args.tasks) if r % 2 else (args.tasks, 1):
                module.load_state_dict(states[n])
                start = time.process_time()
                model.learn(args.steps, callback=module, reset_num_timesteps=False)
                times[n].append(time.process_time() - start)
    ratios = [b / a for a, b in zip(times[1], times[args.tasks], strict=True)]
    print(
        f"{args.algo} on {name}, {args.module}, CPU seconds of learn({args.steps}) over {args.repeats} pairs"
    )
    for n, t in times.items():
        print(f"  {n:3d} task(s): median {statistics.median(t):.3f}  range [{min(t):.3f}, {max(t):.3f}]")
    low, high = min(ratios), max(ratios)
    print(f"  ratio {args.tasks}/1: median {statistics.median(ratios):.3f}  range [{low:.3f}, {high:.3f}]")


if __name__ == "__main__":
    main()
