"""How soon BoundaryDetector finds the unannounced action swaps of cartpole-flip-unannounced, and how often
it raises a false alarm (README "Task streams", hidden boundaries).

    python benchmarks/boundary_detection.py [--seeds 0 1 2] [--steps-per-task 25000] [--signal value-error]
    python benchmarks/boundary_detection.py --signal td-error --algo dqn
    python benchmarks/boundary_detection.py --reward-change [--seeds 0 1 2]

``--reward-change``: instead, CartPole whose reward is multiplied by 0.1 or by 10 at step 1,000 of 2,000,
each signal on each (the returns and the value error with PPO, 64-step rollouts; the TD loss with DQN, a
1,000-transition buffer): which changes each signal finds.

PPO (or ``--algo``; the cartpole preset) learns the stream in one ``learn`` with its boundaries hidden; the
detector holds no module, so training is plain fine-tuning and only the detections are recorded. The true
change points are the swaps (each segment's ``at`` step; the segments themselves continue each other's
mapping).
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

import clrl
from clrl import metrics
from clrl.modules.boundary_detector import SIGNALS
from clrl.presets import make_model
from clrl.schedules import Schedule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps-per-task", type=int, default=25000)
    parser.add_argument("--horizon", type=int, default=10000, help="steps within which a detection counts")
    parser.add_argument("--signal", choices=SIGNALS, default="return")
    parser.add_argument("--algo", default="ppo", help="the algorithm on cartpole-flip-unannounced")
    parser.add_argument("--reward-change", action="store_true", help="the reward-scale streams instead")
    args = parser.parse_args()
    if args.reward_change:
        reward_change(args.seeds)
        return
    stream = dataclasses.replace(
        clrl.make_stream("cartpole-flip-unannounced", steps_per_task=args.steps_per_task), boundaries="hidden"
    )
    changes = []
    for i, task in enumerate(stream.tasks):
        start = sum(stream.steps(k) for k in range(i))
        for spec in task.wrappers:
            schedule = spec.kwargs.get("permutation")
            if isinstance(schedule, Schedule):
                changes += [start + s for s in schedule.spec["at"]]
    print(f"true change points: {changes}")
    reports = []
    for seed in args.seeds:
        detector = clrl.BoundaryDetector([], signal=args.signal)
        callback = clrl.StreamCallback(stream, [detector], eval_episodes=5, seed=seed, plasticity=False)
        model = make_model(args.algo, stream, seed)
        model.learn(callback.total_steps, callback=callback)
        report = metrics.detection_delays(detector.detections, changes, args.horizon)
        reports.append(report)
        print(f"seed {seed}: detections {detector.detections} -> {report}")
    for key in ("mean_delay", "found", "missed", "false_alarms"):
        values = np.array([r[key] for r in reports])
        low, mid, high = np.nanmin(values), np.nanmedian(values), np.nanmax(values)
        print(f"{key}: median {mid:.1f}, range [{low:.1f}, {high:.1f}]")


def reward_change(seeds: list[int]) -> None:
    """Each signal on CartPole whose reward is scaled by 0.1 or 10 at step 1,000 of 2,000."""
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.base_class import BaseAlgorithm

    for scale in (0.1, 10.0):
        scaled = {"name": "scaled", "env_id": "CartPole-v1"}
        scaled["wrappers"] = [{"name": "ScaleReward", "kwargs": {"scale": scale}}]  # type: ignore[assignment]
        stream = clrl.streams.stream_from_dict(
            {
                "name": "changing-reward",
                "steps_per_task": 1000,
                "boundaries": "hidden",
                "tasks": [{"name": "full", "env_id": "CartPole-v1"}, scaled],
            }
        )
        for signal in SIGNALS:
            for seed in seeds:
                detector = clrl.BoundaryDetector([], signal=signal)
                callback = clrl.StreamCallback(
                    stream, [detector], eval_episodes=1, seed=seed, plasticity=False
                )
                env = stream.make_vec_env(0)
                model: BaseAlgorithm = (
                    DQN(
                        "MlpPolicy",
                        env,
                        learning_starts=100,
                        buffer_size=1000,
                        batch_size=32,
                        target_update_interval=100,
                        seed=seed,
                    )
                    if signal == "td-error"
                    else PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, seed=seed)
                )
                model.learn(callback.total_steps, callback=callback)
                report = metrics.detection_delays(detector.detections, [1000], horizon=600)
                print(
                    f"reward x{scale:g}, {signal}, seed {seed}: detections {detector.detections} -> {report}"
                )


if __name__ == "__main__":
    main()
