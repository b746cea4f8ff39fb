"""What loading without unpickling costs: clrl's safe load against SB3's unpickling load, and replay
buffers as NumPy arrays against SB3's pickled buffer, measured alternately in one process.

    python benchmarks/safe_load.py --algo dqn --buffer-size 100000 --repeats 7

A trained model with an L2 module is saved once with :func:`clrl.save`; then, pair by pair, the wall
time of ``clrl.load(path)`` (safe: tensors, JSON and clrl's plain copy of SB3's pickled entries) and
``clrl.load(path, trusted=True)`` (SB3's own ``load``) is measured, and for off-policy algorithms a full
replay buffer is saved and loaded with :func:`clrl.save_replay_buffer` / :func:`clrl.load_replay_buffer`
and with SB3's ``save_replay_buffer`` / ``load_replay_buffer``. Prints medians, ranges, ratios (safe /
SB3) and file sizes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import clrl
from clrl.presets import make_model


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def report(name: str, safe: list[float], sb3: list[float]) -> None:
    ratios = [s / b for s, b in zip(safe, sb3, strict=True)]
    print(
        f"{name:<12} safe {statistics.median(safe) * 1e3:8.1f} ms  "
        f"SB3 {statistics.median(sb3) * 1e3:8.1f} ms  "
        f"ratio {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--algo", default="dqn")
    parser.add_argument("--buffer-size", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    off_policy = args.algo in ("dqn", "sac", "td3")
    stream = clrl.make_stream("pendulum-flip" if args.algo in ("sac", "td3") else "cartpole-flip")
    overrides = {"buffer_size": args.buffer_size, "learning_starts": 100} if off_policy else {}
    model = make_model(args.algo, stream, seed=0, overrides=overrides, device="cpu")
    model.learn(1000)
    with tempfile.TemporaryDirectory() as folder:
        path = clrl.save(model, Path(folder) / "model", [clrl.L2()])
        safe, sb3 = [], []
        for _ in range(args.repeats):
            safe.append(timed(lambda: clrl.load(path)))
            sb3.append(timed(lambda: clrl.load(path, trusted=True)))
        print(f"{args.algo}: checkpoint {path.stat().st_size / 1e3:.1f} kB")
        report("load", safe, sb3)
        if not off_policy:
            return
        buffer = model.replay_buffer
        assert buffer is not None
        for array in vars(buffer).values():  # a full buffer of noise: the size a long run keeps
            if isinstance(array, np.ndarray):
                array[...] = np.random.default_rng(0).random(array.shape).astype(array.dtype)
        buffer.full = True
        npz, pkl = Path(folder) / "buffer.npz", Path(folder) / "buffer.pkl"
        saves: tuple[list[float], list[float]] = ([], [])
        loads: tuple[list[float], list[float]] = ([], [])
        for _ in range(args.repeats):
            saves[0].append(timed(lambda: clrl.save_replay_buffer(model, npz)))
            saves[1].append(timed(lambda: model.save_replay_buffer(pkl)))
            loads[0].append(timed(lambda: clrl.load_replay_buffer(model, npz)))
            loads[1].append(timed(lambda: model.load_replay_buffer(pkl)))
        print(
            f"buffer of {buffer.buffer_size}: npz {npz.stat().st_size / 1e6:.1f} MB, "
            f"pkl {pkl.stat().st_size / 1e6:.1f} MB"
        )
        report("buffer save", *saves)
        report("buffer load", *loads)


if __name__ == "__main__":
    main()
