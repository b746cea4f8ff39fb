"""Parameters and state bytes of the architectural methods' policies for 4 and for 20 tasks.

    python benchmarks/architecture_sizes.py             # PPO and DQN, the cartpole presets' networks

The per-task parts of these methods live in the policy (heads, masks, gates, embeddings, hypernetworks,
columns), and their size is fixed by the number of tasks the policy is built for: this builds each policy for
``cartpole-flip`` (4 tasks) and for its tasks five times over (20 tasks, the task id observed as in
``cartpole-flip``) with the same network and prints its parameters,
its buffers' bytes (the masks and gates stored as bits, one byte each) and the bytes SB3 saves for it with
Adam's state (two floats per trained parameter), beside plain SB3's. Nothing trains.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

import torch

import clrl
from clrl.presets import make_model, preset

POLICIES: dict[str, Callable[[str], Any] | None] = {
    "plain": None,
    "multihead": clrl.multihead_policy,
    "progressive": clrl.progressive_policy,
    "hat": clrl.hat_policy,
    "piggyback / supsup": clrl.masked_policy,
    "hypernetwork": clrl.hypernetwork_policy,
}


def sizes(algo: str, stream: clrl.TaskStream, policy: Callable[[str], Any] | None) -> tuple[int, int, int]:
    """Parameters, buffer bytes, and parameters plus buffers plus Adam's state in bytes."""
    net = preset("cartpole-flip", algo).get("policy_kwargs", {})
    overrides = (
        {} if policy is None else {"policy": policy(algo), "policy_kwargs": {**net, "n_tasks": len(stream)}}
    )
    model = make_model(algo, stream, 0, device="cpu", overrides=overrides)
    params = sum(p.numel() for p in model.policy.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.policy.buffers())
    trained = sum(p.numel() for p in model.policy.parameters() if p.requires_grad)
    return params, buffers, params * 4 + buffers + trained * 2 * 4


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--algos", nargs="+", default=["ppo", "dqn"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    four = clrl.make_stream("cartpole-flip")
    tasks = [dataclasses.replace(t, name=f"{t.name}-{k}") for k in range(5) for t in four.tasks]
    streams = [four, clrl.TaskStream("cartpole-flip-x5", tasks, task_id=four.task_id)]
    print(
        f"{'algo':<5} {'policy':<19} " + "  ".join(f"{len(s)} tasks: params, buffers, saved" for s in streams)
    )
    for algo in args.algos:
        for name, policy in POLICIES.items():
            cells = []
            for stream in streams:
                params, buffers, saved = sizes(algo, stream, policy)
                cells.append(f"{params:>9,} {buffers:>9,} B {saved / 1e6:>6.2f} MB")
            print(f"{algo:<5} {name:<19} " + "   ".join(cells), flush=True)


if __name__ == "__main__":
    main()
