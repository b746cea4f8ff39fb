"""The ``clrl`` command: ``clrl list`` and ``clrl run``."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clrl import metrics
from clrl.algorithms import ALGORITHMS, get_algorithm
from clrl.errors import ClrlError, ConfigError, TrainingError
from clrl.modules import (
    AGEM,
    CLEAR,
    EWC,
    L2,
    MAS,
    SI,
    ContinualModule,
    MultiHead,
    OnlineEWC,
    PackNet,
    ProgressiveColumns,
    Replay,
    multihead_policy,
    progressive_policy,
)
from clrl.presets import make_model, preset
from clrl.runner import TrainResult, check_seed, train, train_multitask, train_single_task
from clrl.streams import builtin_streams, load_stream, make_stream

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

METHODS: dict[str, type[ContinualModule] | None] = {
    "finetune": None,
    "l2": L2,
    "ewc": EWC,
    "online-ewc": OnlineEWC,
    "mas": MAS,
    "si": SI,
    "replay": Replay,
    "clear": CLEAR,
    "agem": AGEM,
    "packnet": PackNet,
    "multihead": MultiHead,
    "progressive": ProgressiveColumns,
}
"""Continual methods by command-line name (``None``: no module)."""
BASELINES = ("multitask", "single-task")


def _parse_value(text: str) -> Any:
    """A TOML literal (``0.001``, ``true``, ``[64, 64]``, ``{ net_arch = [8] }``), else the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _parse_assignments(items: Sequence[str], what: str) -> dict[str, Any]:
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} must look like key=value, got {item!r}")
        parsed[key.strip()] = _parse_value(value.strip())
    return parsed


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clrl", description="Continual reinforcement learning with SB3.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list built-in streams, algorithms and methods")
    run = sub.add_parser("run", help="train on a stream, task after task, and print the return matrix")
    run.add_argument("stream", help="a built-in stream name or a stream file (TOML)")
    run.add_argument("--algo", default="ppo", help="algorithm (default: ppo)")
    run.add_argument("--method", default="finetune", help="continual method or baseline (default: finetune)")
    run.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds, one run each (default: 0)")
    run.add_argument("--logdir", default="runs", help="root of run directories (default: runs)")
    run.add_argument("--steps", type=int, help="training steps per task (default: the stream's)")
    run.add_argument("--eval-episodes", type=int, default=10, help="episodes per task and evaluation")
    run.add_argument("--eval-freq", type=int, help="also evaluate every N steps during training")
    run.add_argument("--hp", nargs="*", default=[], metavar="KEY=VALUE", help="algorithm hyperparameters")
    run.add_argument(
        "--method-arg", nargs="*", default=[], metavar="KEY=VALUE", help="module hyperparameters"
    )
    run.add_argument("--device", default="auto", help="torch device (default: auto)")
    run.add_argument("--overwrite", action="store_true", help="replace existing run directories")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue existing runs from their last completed task (runs not started yet start afresh)",
    )
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.add_argument("-v", "--verbose", action="store_true", help="print SB3's training logs")
    return parser


def _list() -> None:
    print("streams:")
    for name, path in builtin_streams().items():
        stream = load_stream(path)
        print(f"  {name:<20} {len(stream)} tasks, task id {stream.task_id:<8}  {stream.description}")
    print("algorithms:\n  " + ", ".join(ALGORITHMS))
    print("methods:\n  " + ", ".join([*METHODS, *BASELINES]))
    print("  (modules combine with '+', e.g. multihead+ewc)")


def _method_parts(method: str) -> list[str]:
    """The module names of a method: one name, or several joined by ``+`` (``multihead+ewc``)."""
    parts = method.split("+")
    valid = [*METHODS, *BASELINES]
    if method in BASELINES:
        return [method]
    if any(part not in METHODS for part in parts) or (len(parts) > 1 and "finetune" in parts):
        raise ConfigError(
            f"unknown method {method!r}; choose one of: {', '.join(valid)}, or modules joined by '+' "
            "(e.g. multihead+ewc)"
        )
    if len(set(parts)) != len(parts):
        raise ConfigError(f"method {method!r} names a module twice")
    return parts


def _make_modules(method: str, args: dict[str, Any]) -> list[ContinualModule]:
    """The modules of ``method``; each ``--method-arg`` goes to every module whose constructor takes it."""
    classes = [cls for cls in map(METHODS.__getitem__, _method_parts(method)) if cls is not None]
    if not classes:
        if args:
            raise ConfigError(f"method {method!r} takes no --method-arg")
        return []
    accepted = {cls: set(inspect.signature(cls.__init__).parameters) - {"self"} for cls in classes}
    unknown = sorted(k for k in args if not any(k in names for names in accepted.values()))
    if unknown:
        raise ConfigError(
            f"bad --method-arg for {method}: {', '.join(unknown)} is not an argument of "
            + ", ".join(cls.__name__ for cls in classes)
        )
    try:
        return [cls(**{k: v for k, v in args.items() if k in accepted[cls]}) for cls in classes]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad --method-arg for {method}: {exc}") from exc


POLICY_METHODS: dict[str, Callable[[Any], Any]] = {
    "multihead": multihead_policy,
    "progressive": progressive_policy,
}
"""Methods that need their own policy class, and the function that names it for an algorithm."""


def _policy_hyperparameters(method: str, algo: str, stream: Any, hp: dict[str, Any]) -> dict[str, Any]:
    """``hp`` with the policy ``method`` needs, one head or column per task (the preset's net kept)."""
    policy_kwargs = {**preset(stream.name, algo).get("policy_kwargs", {}), **hp.get("policy_kwargs", {})}
    return {
        **hp,
        "policy": POLICY_METHODS[method](get_algorithm(algo)),
        "policy_kwargs": {**policy_kwargs, "n_tasks": len(stream)},
    }


def _run(ns: argparse.Namespace) -> list[TrainResult]:
    parts = _method_parts(ns.method)
    if ns.algo.lower() not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {ns.algo!r}; choose one of: {', '.join(ALGORITHMS)}")
    hp = _parse_assignments(ns.hp, "--hp")
    method_args = _parse_assignments(ns.method_arg, "--method-arg")
    stream = make_stream(ns.stream, steps_per_task=ns.steps)
    for seed in ns.seeds:
        check_seed(seed, len(stream))
    if ns.method not in BASELINES:
        _make_modules(ns.method, method_args)  # bad --method-arg fails before any training
    elif method_args:
        raise ConfigError(f"baseline {ns.method!r} takes no --method-arg")
    policy_methods = [part for part in parts if part in POLICY_METHODS]
    if len(policy_methods) > 1:
        raise ConfigError(f"{' and '.join(policy_methods)} each need their own policy; choose one")
    if policy_methods:
        hp = _policy_hyperparameters(policy_methods[0], ns.algo, stream, hp)
    if ns.verbose:
        hp.setdefault("verbose", 1)
    results = []
    for seed in ns.seeds:
        logdir = Path(ns.logdir) / stream.name / f"{ns.algo.lower()}-{ns.method}" / f"seed{seed}"
        common: dict[str, Any] = dict(
            logdir=logdir,
            seed=seed,
            eval_episodes=ns.eval_episodes,
            overwrite=ns.overwrite,
            resume=ns.resume,
            progress_bar=not ns.no_progress,
        )
        print(f"clrl: {stream.name} / {ns.algo.lower()} / {ns.method} / seed {seed} -> {logdir}", flush=True)
        if ns.resume:
            print(f"clrl: {_resume_point(logdir, len(stream))}", flush=True)

        def factory(i: int, seed: int = seed) -> Any:
            return make_model(ns.algo, stream, seed, hp, task_index=i, device=ns.device)

        result = _dispatch(ns, stream, factory, method_args, common)
        print(format_result(result), flush=True)
        results.append(result)
    if len(results) > 1:
        print(format_seeds(results))
    return results


def _resume_point(logdir: Path, n_tasks: int) -> str:
    """What ``--resume`` will do with ``logdir``, in words."""
    try:
        done = json.loads((logdir / "results.json").read_text(encoding="utf-8"))["completed_tasks"]
    except (OSError, ValueError, KeyError, TypeError):
        return "no completed task recorded: starting afresh"
    if done == n_tasks:
        return f"all {n_tasks} tasks were completed: nothing to train"
    return f"resuming after task {done} of {n_tasks}"


def _dispatch(
    ns: argparse.Namespace,
    stream: Any,
    factory: Callable[[int], Any],
    method_args: dict[str, Any],
    common: dict[str, Any],
) -> TrainResult:
    if ns.method == "single-task":
        return train_single_task(factory, stream, eval_freq=ns.eval_freq, **common)
    if ns.method == "multitask":
        return train_multitask(factory(0), stream, eval_freq=ns.eval_freq, **common)
    modules = _make_modules(ns.method, method_args)
    reference = None
    reference_dir = Path(ns.logdir) / stream.name / f"{ns.algo.lower()}-single-task" / f"seed{common['seed']}"
    if (reference_dir / "results.json").is_file():
        print(f"clrl: normalising by the single-task run in {reference_dir}", flush=True)
        reference = TrainResult.from_json(reference_dir / "results.json")
    return train(
        factory(0), stream, modules, eval_freq=ns.eval_freq, method=ns.method, reference=reference, **common
    )


def format_matrix(result: TrainResult) -> str:
    """The return matrix as an aligned text table."""
    names = result.task_names
    width = max(10, *(len(n) + 2 for n in names))
    labels = ["untrained", *(f"{i}. {name}" for i, name in enumerate(names, start=1))]
    label_width = max(len(label) for label in labels) + 2
    lines = ["after \\ on".ljust(label_width) + "".join(n.rjust(width) for n in names)]
    for label, row in zip(labels, result.matrix, strict=True):
        lines.append(label.ljust(label_width) + "".join(f"{v:{width}.1f}" for v in row))
    return "\n".join(lines)


def format_result(result: TrainResult) -> str:
    """The matrix and metrics of one run."""
    line = "  ".join(f"{key} {value:.3g}" for key, value in result.metrics.items())
    return f"{format_matrix(result)}\n{line}\n"


def format_seeds(results: Sequence[TrainResult]) -> str:
    """Mean and 95% bootstrap confidence interval of each metric over seeds."""
    lines = [f"over {len(results)} seeds (mean [95% CI]):"]
    for key in results[0].metrics:
        mean, lo, hi = metrics.bootstrap_ci([r.metrics[key] for r in results])
        lines.append(f"  {key:<11} {mean:8.1f}  [{lo:.1f}, {hi:.1f}]")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clrl`` command; returns the exit status (2 for bad input, 1 for a failed task)."""
    ns = _build_parser().parse_args(argv)
    np.set_printoptions(precision=1, suppress=True)
    try:
        if ns.command == "list":
            _list()
        else:
            _run(ns)
    except TrainingError as exc:
        print(f"clrl: error: {exc}", file=sys.stderr)
        if ns.command == "run":
            print("clrl: rerun the same command with --resume to continue", file=sys.stderr)
        return 1
    except ClrlError as exc:
        print(f"clrl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clrl: interrupted; the tasks completed so far are in results.json", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
