"""How soon BoundaryDetector finds the unannounced action swaps of cartpole-flip-unannounced, and how often
it raises a false alarm (README "Task streams", hidden boundaries).

    python benchmarks/boundary_detection.py [--seeds 0 1 2] [--steps-per-task 25000]

PPO (the cartpole preset) learns the stream in one ``learn`` with its boundaries hidden; the detector holds
no module, so training is plain fine-tuning and only the detections are recorded. The true change points
are the swaps (each segment's ``at`` step; the segments themselves continue each other's mapping).
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

import clrl
from clrl import metrics
from clrl.presets import make_model
from clrl.schedules import Schedule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps-per-task", type=int, default=25000)
    parser.add_argument("--horizon", type=int, default=10000, help="steps within which a detection counts")
    args = parser.parse_args()
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
        detector = clrl.BoundaryDetector([])
        callback = clrl.StreamCallback(stream, [detector], eval_episodes=5, seed=seed, plasticity=False)
        model = make_model("ppo", stream, seed)
        model.learn(callback.total_steps, callback=callback)
        report = metrics.detection_delays(detector.detections, changes, args.horizon)
        reports.append(report)
        print(f"seed {seed}: detections {detector.detections} -> {report}")
    for key in ("mean_delay", "found", "missed", "false_alarms"):
        values = np.array([r[key] for r in reports])
        low, mid, high = np.nanmin(values), np.nanmedian(values), np.nanmax(values)
        print(f"{key}: median {mid:.1f}, range [{low:.1f}, {high:.1f}]")


if __name__ == "__main__":
    main()
