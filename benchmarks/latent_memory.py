"""Bytes per stored state of latent replay against behaviour cloning's stored observations.

    python benchmarks/latent_memory.py                       # cartpole-flip and minigrid, PPO
    python benchmarks/latent_memory.py --streams pendulum-flip --algo sac

Each configuration trains one short task of the stream's preset (``--steps``) with the module, and the
bytes of the finished task's memory are divided by the states it holds: behaviour cloning keeps the
observation (in its own dtype: MiniGrid's uint8 view stays uint8), the action and the outputs; latent
replay the activations at its cut (one per replayed network: PPO's policy and value) and the outputs.
"""

from __future__ import annotations

import argparse

import torch

import clrl
from clrl.presets import make_model


def bytes_per_state(stream: clrl.TaskStream, algo: str, module: clrl.BehaviourCloning, steps: int) -> float:
    model = make_model(algo, stream, 0, device="cpu")
    model.set_env(stream.make_vec_env(0, n_envs=model.n_envs, seed=0))
    model.learn(steps, callback=module)  # one learn: one task, whose memory is finished at its end
    reservoir = module.memory.tasks[0]
    return reservoir.nbytes / len(reservoir)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", nargs="+", default=["cartpole-flip", "minigrid"])
    parser.add_argument("--algo", default="ppo")
    parser.add_argument("--steps", type=int, default=2048)
    args = parser.parse_args()
    torch.set_num_threads(1)
    configurations = {
        "behaviour-cloning": lambda: clrl.BehaviourCloning(),
        "latent-replay layer=0": lambda: clrl.LatentReplay(layer=0),
        "latent-replay layer=1": lambda: clrl.LatentReplay(layer=1),
        "latent-replay layer=1 uint8": lambda: clrl.LatentReplay(layer=1, memory_dtype="uint8"),
    }
    for name in args.streams:
        stream = clrl.make_stream(name)
        print(f"{name} / {args.algo}: bytes per stored state")
        for label, factory in configurations.items():
            print(f"  {label:<28} {bytes_per_state(stream, args.algo, factory(), args.steps):8.1f}")


if __name__ == "__main__":
    main()
