"""Training time with clrl.PlasticityMonitor against plain SB3, as ratios measured in one run.

    python benchmarks/plasticity_overhead.py --algo ppo --steps 20000 --repeats 3
    python benchmarks/plasticity_overhead.py --algo sac --steps 4000 --repeats 3

The protocol of ``regularisation_overhead.py``: the user's own ``set_env`` + ``learn`` loop over the stream,
one model per configuration with the same seed, every configuration training task i back to back (order
rotated), CPU time with one torch thread, ratios paired by repeat and task. ``monitor`` measures at the
default interval (every 10,000 steps), ``monitor-<n>`` every ``n`` steps: the cost of one measurement is
fixed, so the ratio falls as the interval grows and as an algorithm's steps get dearer (PPO's are cheap).
"""

from __future__ import annotations

import argparse

import torch
from regularisation_overhead import Factory, time_modules

import clrl


def configurations(interval: int) -> dict[str, Factory]:
    return {
        "plain": None,
        "monitor": lambda: clrl.PlasticityMonitor(),
        f"monitor-{interval}": lambda: clrl.PlasticityMonitor(interval=interval),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stream", default="cartpole-flip")
    parser.add_argument("--algo", default="ppo", choices=["ppo", "a2c", "dqn", "sac", "td3"])
    parser.add_argument("--steps", type=int, default=20_000, help="steps per task")
    parser.add_argument("--interval", type=int, default=1000, help="the denser interval timed beside")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.algo in ("sac", "td3") and args.stream == "cartpole-flip":
        args.stream = "pendulum-flip"
    torch.set_num_threads(1)
    monitors: dict[str, list[clrl.PlasticityMonitor]] = {}

    def kept(name: str, factory: Factory) -> Factory:
        def build() -> clrl.PlasticityMonitor:
            monitor = factory()  # type: ignore[misc]
            monitors.setdefault(name, []).append(monitor)
            return monitor  # type: ignore[no-any-return]

        return build

    configs = {n: f if f is None else kept(n, f) for n, f in configurations(args.interval).items()}
    cpu = time_modules(args, configs)
    # The measurements' own CPU time against plain SB3's training time: the same ratio without the noise
    # of timing two trainings (each monitor times itself; a repeat's monitor saw every task).
    plain = sum(cpu["plain"])
    for name, built in monitors.items():
        seconds = sum(m.seconds for m in built)
        measurements = sum(len(m.records) for m in built)
        print(
            f"{name:<13} {measurements} measurements, {seconds:.2f} CPU s = {100 * seconds / plain:.2f}% of "
            f"plain SB3's training time ({1000 * seconds / max(measurements, 1):.1f} ms each)"
        )


if __name__ == "__main__":
    main()
