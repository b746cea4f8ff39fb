"""The bytes of each module's saved state after 4 and after 20 tasks: what a long stream costs in memory.

    python benchmarks/memory_growth.py                  # DQN modules, and CLEAR on PPO
    python benchmarks/memory_growth.py --steps 1024 --budget 4000

Each module learns ``cartpole-permuted`` (20 tasks) in the user's own loop, ``--steps`` per task, with a
memory ``--budget`` small enough for the stream to fill it (so that the bound shows); after tasks 4 and 20
the module's ``state_dict`` is serialised with ``torch.save`` and its bytes printed, beside the rows its
memory holds. A module the paper bounds stays flat once its budget is full; EWC (one Fisher and one anchor
per task) is the contrast that grows.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable

import torch

import clrl
from clrl.presets import make_model


def state_bytes(module: clrl.ContinualModule) -> int:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=512, help="steps per task")
    parser.add_argument("--budget", type=int, default=2000, help="memory budget of the replay modules")
    parser.add_argument("--tasks", type=int, nargs=2, default=[4, 20], help="the two task counts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    budget = args.budget
    modules: dict[str, tuple[str, Callable[[], clrl.ContinualModule]]] = {
        "ewc": ("dqn", lambda: clrl.EWC()),
        "scp": ("dqn", lambda: clrl.SCP()),
        "rwalk": ("dqn", lambda: clrl.RWalk()),
        "replay": ("dqn", lambda: clrl.Replay(budget=budget)),
        "mir": ("dqn", lambda: clrl.MIR(budget=budget)),
        "behaviour-cloning": ("dqn", lambda: clrl.BehaviourCloning(budget=budget)),
        "agem": ("dqn", lambda: clrl.AGEM(budget=budget)),
        "gem": ("dqn", lambda: clrl.GEM(budget=budget)),
        "gdumb": ("dqn", lambda: clrl.GDumb(budget=budget, steps=50)),
        "latent-replay": ("dqn", lambda: clrl.LatentReplay(budget=budget)),
        "generative-replay": ("dqn", lambda: clrl.GenerativeReplay(generator_steps=50)),
        "clear": ("ppo", lambda: clrl.CLEAR(budget=budget)),
    }
    stream = clrl.make_stream("cartpole-permuted")
    first, last = args.tasks
    print(
        f"bytes of each module's saved state on {stream.name}, {args.steps} steps per task, budget {budget}:"
    )
    print(f"{'module':<18} {'after ' + str(first):>14} {'after ' + str(last):>14}   rows held")
    for name, (algo, factory) in modules.items():
        model = make_model(algo, stream, 0, device="cpu")
        module = factory()
        sizes, rows = [], []
        for i in range(last):
            model.set_env(stream.make_vec_env(i, n_envs=model.n_envs, seed=i))
            model.learn(args.steps, callback=module, reset_num_timesteps=False)
            if i + 1 in (first, last):
                sizes.append(state_bytes(module))
                memory = getattr(module, "memory", None)
                rows.append(len(memory) if memory is not None else 0)
        print(f"{name:<18} {sizes[0]:>14,} {sizes[1]:>14,}   {rows[0]} -> {rows[1]}", flush=True)


if __name__ == "__main__":
    main()
