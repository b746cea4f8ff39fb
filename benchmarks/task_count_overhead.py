"""CPU time of training with a module that holds the state of 1 task against the same module holding 50.

    python benchmarks/task_count_overhead.py --algo sac --module ewc --tasks 50 --repeats 6
    python benchmarks/task_count_overhead.py --algo ppo --module ewc --tasks 50 --repeats 6
    python benchmarks/task_count_overhead.py --algo sac --module ewc --tasks 50 --repeats 10 --micro

A step's module cost (its gradient hooks and the scalars it logs) should not grow with the tasks it has
seen. The module gets random Fishers and anchors of 1 or ``--tasks`` finished tasks (EWC keeps one of each
per task; online EWC, SI, MAS and L2 keep one combined), then ``learn(--steps)`` of the model is timed
alternately with each, inside one ``clrl.training_task``, after a first ``learn`` that fills the buffer and
warms up. SAC with ``train_freq=1`` logs at every rollout end, one step: the case that costs most. CPU
time of this process, 1 torch thread. Prints medians, ranges and the ratio of each pair.

Whole ``learn`` calls vary by 10-40 % on a shared machine, more than the module costs. ``--micro`` times
the module's own per-step work instead, inside a ``learn`` with the module attached: the wrapped
``zero_grad`` of every optimiser it hooks (where the penalty gradient is added, once per gradient step),
and its ``log_scalars`` (once per rollout or episode), each the fastest of 5 blocks of ``--calls`` calls,
for 1 and ``--tasks`` tasks' state alternately.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from stable_baselines3.common.callbacks import BaseCallback

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
    parser.add_argument("--micro", action="store_true", help="time the module's per-step work only")
    parser.add_argument("--calls", type=int, default=2000, help="--micro: zero_grad calls per timing")
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
    if args.micro:
        micro(model, module, states, args)
        return
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
    print(
        f"{args.algo} on {name}, {args.module}, CPU seconds of learn({args.steps}) over {args.repeats} pairs"
    )
    report(times, args.tasks)


def report(times: dict[int, list[float]], tasks: int, unit: str = "s", scale: float = 1.0) -> None:
    for n, t in times.items():
        t = [x * scale for x in t]
        print(
            f"  {n:3d} task(s): median {statistics.median(t):.3f} {unit}  range [{min(t):.3f}, {max(t):.3f}]"
        )
    ratios = [b / a for a, b in zip(times[1], times[tasks], strict=True)]
    low, high = min(ratios), max(ratios)
    print(f"  ratio {tasks}/1: median {statistics.median(ratios):.3f}  range [{low:.3f}, {high:.3f}]")


class _Timer(BaseCallback):
    """At the first step of a ``learn`` (the module's hooks installed), time the module's per-step work."""

    def __init__(self, module: clrl.ContinualModule, calls: int) -> None:
        super().__init__()
        self.module, self.calls = module, calls
        self.step_seconds = self.log_seconds = 0.0

    def _on_step(self) -> bool:
        optimizers = [
            o
            for o in (getattr(self.model.policy, "optimizer", None), *_sub_optimizers(self.model))
            if o is not None and hasattr(o, "_clrl_hooks")
        ]
        assert optimizers, "the module hooks no optimiser"

        def zero_grads() -> None:
            for optimizer in optimizers:
                optimizer.zero_grad()  # the module adds its penalty gradient here

        self.step_seconds = _best(zero_grads, self.calls)
        self.log_seconds = _best(self.module.log_scalars, 50)
        return False  # stop this learn: the timing is done


def _best(action: Any, calls: int, blocks: int = 5) -> float:
    """CPU seconds of one call of ``action``: the fastest of ``blocks`` blocks of ``calls`` calls (timeit's
    rule: the slower blocks measure the machine's other load, not the code)."""
    best = float("inf")
    for _ in range(blocks):
        start = time.process_time()
        for _ in range(calls):
            action()
        best = min(best, (time.process_time() - start) / calls)
    return best


def _sub_optimizers(model: Any) -> list[Any]:
    return [getattr(getattr(model, part, None), "optimizer", None) for part in ("actor", "critic")]


def micro(
    model: Any, module: clrl.ContinualModule, states: dict[int, dict], args: argparse.Namespace
) -> None:
    steps: dict[int, list[float]] = {n: [] for n in states}
    logs: dict[int, list[float]] = {n: [] for n in states}
    with clrl.training_task(model, [module], 1, steps=10**9):
        module.load_state_dict(states[1])
        model.learn(args.steps, callback=module, reset_num_timesteps=False)  # fill the buffer, warm up
        for r in range(args.repeats):
            for n in (1, args.tasks) if r % 2 else (args.tasks, 1):
                module.load_state_dict(states[n])
                timer = _Timer(module, args.calls)
                model.learn(10**6, callback=[module, timer], reset_num_timesteps=False)
                steps[n].append(timer.step_seconds)
                logs[n].append(timer.log_seconds)
        model.learn(args.steps, callback=module, reset_num_timesteps=False)  # states for the task's end
    print(f"{args.algo}, {args.module}: per gradient step (zero_grad and penalty), {args.repeats} pairs")
    report(steps, args.tasks, "us", 1e6)
    print(f"{args.algo}, {args.module}: per log_scalars call")
    report(logs, args.tasks, "us", 1e6)


if __name__ == "__main__":
    main()
