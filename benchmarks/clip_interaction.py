"""How SB3's gradient clipping meets the modules that act on gradients: is a hook between backward and
clipping worth having?

    python benchmarks/clip_interaction.py --steps 10000

PPO clips the whole gradient to ``max_grad_norm`` (0.5) after backward. clrl's hooks sit before backward
(penalties, clipped with the loss) and after clipping (``adjust_gradients``, ``after_update``); SI reads
the unclipped gradient with a post-accumulate-grad hook per parameter. This script learns ``cartpole-flip``
with PackNet, recording at every clipping call (``torch.nn.utils.clip_grad_norm_`` wrapped here, in the
benchmark only) the total gradient norm and the norm of the entries PackNet lets train. It prints per task:

* the share of updates that clipping scales at all, and the median scale ``min(1, max / total)``: what SI
  would be off by if it read the gradient after clipping (its path integral is ``-g · Δθ``);
* for PackNet (tasks after the first), ``min(1, max/total) / min(1, max/free)``: how much the frozen
  entries' gradients, counted in the norm and zeroed only after clipping, shrink the step of the entries
  that train, against masking before clipping.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch

import clrl
from clrl.presets import make_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10_000, help="steps per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--networks", default="actor", choices=("actor", "all"), help="PackNet's networks")
    args = parser.parse_args()
    torch.set_num_threads(1)
    stream = clrl.make_stream("cartpole-flip", steps_per_task=args.steps)
    model = make_model("ppo", stream, seed=args.seed, device="cpu")
    packnet = clrl.PackNet(networks=args.networks)
    records: list[tuple[int, float, float]] = []  # (task, total norm, norm of the entries that train)
    original = torch.nn.utils.clip_grad_norm_

    def recording(parameters: Any, max_norm: float, *a: Any, **k: Any) -> torch.Tensor:
        params = list(parameters)
        held = packnet._held if packnet.current_task is not None else {}
        names = {id(p): n for n, p in packnet.target_parameters().items()} if held else {}
        free_sq = 0.0
        for p in params:
            if p.grad is None:
                continue
            mask = held.get(names.get(id(p), ""))
            g = p.grad if mask is None else p.grad.masked_fill(mask, 0.0)
            free_sq += float(g.square().sum())
        total = original(params, max_norm, *a, **k)
        task = packnet.current_task.index if packnet.current_task is not None else -1
        records.append((task, float(total), free_sq**0.5))
        return total

    torch.nn.utils.clip_grad_norm_ = recording  # type: ignore[assignment]
    try:
        clrl.train(model, stream, [packnet], seed=args.seed, eval_episodes=5)
    finally:
        torch.nn.utils.clip_grad_norm_ = original
    limit = float(model.max_grad_norm)  # type: ignore[attr-defined]
    print(
        f"PPO + PackNet({args.networks}) on cartpole-flip, {args.steps} steps per task, max_grad_norm {limit}"
    )
    for task in range(len(stream)):
        rows = [(t, f) for i, t, f in records if i == task]
        scale = [min(1.0, limit / t) for t, _ in rows]
        clipped = sum(s < 1.0 for s in scale) / len(scale)
        median = statistics.median(scale)
        line = f"  task {task}: {len(rows)} updates, clipped {clipped:.0%}, median clip scale {median:.3f}"
        if task > 0:
            shrink = [min(1.0, limit / t) / min(1.0, limit / f) if f > 0 else 1.0 for t, f in rows]
            q = statistics.quantiles(shrink, n=4)
            median = statistics.median(shrink)
            line += f"; PackNet free-step scale against masking first: {median:.3f} [{q[0]:.3f}, {q[2]:.3f}]"
        print(line)


if __name__ == "__main__":
    main()
