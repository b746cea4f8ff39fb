"""The ``clrl`` command: ``clrl list``, ``clrl run``, ``clrl sweep`` and ``clrl report``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clrl import metrics
from clrl.algorithms import ALGORITHMS
from clrl.errors import ClrlError, ConfigError, NumericalError, TrainingError
from clrl.experiment import BASELINES, METHODS, RunSpec, completed_tasks, run_experiment
from clrl.imports import ENVIRONMENT_VARIABLE, allow_imports
from clrl.modules.base import check_positive_int
from clrl.results import TrainResult
from clrl.runner import VEC_ENVS
from clrl.streams import builtin_streams, make_stream, missing_extra
from clrl.sweeps import LOG_FILE, common_method_args, grid, load_sweep, sweep
from clrl.zoo import zoo_file, zoo_hyperparameters

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


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
        "--hyperparams",
        metavar="FILE.yml",
        help="an RL Zoo hyperparameter file (its entry for the stream's env id; 'zoo': the Zoo's own file "
        "for the algorithm), under --hp",
    )
    run.add_argument(
        "--method-arg", nargs="*", default=[], metavar="KEY=VALUE", help="module hyperparameters"
    )
    run.add_argument("--device", default="auto", help="torch device (default: auto)")
    run.add_argument(
        "--vec-env",
        choices=VEC_ENVS,
        default="dummy",
        help="training envs in this process (dummy, default) or one process per env copy (subproc)",
    )
    run.add_argument(
        "--no-plasticity",
        action="store_true",
        help="do not measure the networks' plasticity (dormant units, feature ranks, weight and gradient "
        "norms: TensorBoard's plasticity/*)",
    )
    run.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's, one per core); results depend on it, see README",
    )
    run.add_argument("--overwrite", action="store_true", help="replace existing run directories")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue existing runs from their last completed task (runs not started yet start afresh)",
    )
    _add_allow_import(run)
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.add_argument("-v", "--verbose", action="store_true", help="print SB3's training logs")

    demo = sub.add_parser(
        "demo",
        help="the main job: fine-tuning forgets, a continual method does not, side by side (about 3 min)",
        description="Learn cartpole-flip (normal, swapped, long-pole, long-pole swapped CartPole) twice with "
        "PPO: fine-tuning, then a continual method (default: multihead), and print both return matrices and "
        "what each kept of the first tasks. A finished demo prints its results again at once.",
    )
    demo.add_argument("--method", default="multihead", help="the continual method (default: multihead)")
    demo.add_argument("--seed", type=int, default=0, help="seed of both runs (default: 0)")
    demo.add_argument("--steps", type=int, default=DEMO_STEPS, help=f"steps per task (default: {DEMO_STEPS})")
    demo.add_argument("--full", action="store_true", help="the stream's own budget (50,000 steps per task)")
    demo.add_argument("--logdir", default="runs/demo", help="root of the two runs (default: runs/demo)")
    demo.add_argument("--overwrite", action="store_true", help="train both afresh")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    sw = sub.add_parser(
        "sweep",
        help="run a grid of streams x algorithms x methods x seeds, several runs at a time",
        description="Run a grid of runs on a local process pool or on Ray. Finished runs are skipped and "
        "half-finished ones resumed, so the same command continues a sweep after a crash. Options "
        "given here replace those of the sweep file; with a file of several [[grid]] tables, --streams, "
        "--algos and --methods pick among the names each table lists.",
    )
    sw.add_argument("file", nargs="?", help="a sweep file (TOML; see clrl.sweeps)")
    sw.add_argument("--streams", nargs="+", help="streams (built-in names or stream files)")
    sw.add_argument("--algos", nargs="+", help="algorithms (default: ppo)")
    sw.add_argument("--methods", nargs="+", help="methods and baselines (default: finetune)")
    sw.add_argument("--seeds", type=int, nargs="+", help="seeds (default: 0)")
    sw.add_argument("--steps", type=int, help="training steps per task (default: each stream's)")
    sw.add_argument("--eval-episodes", type=int, help="episodes per task and evaluation (default: 10)")
    sw.add_argument("--eval-freq", type=int, help="also evaluate every N steps during training")
    sw.add_argument(
        "--hp", nargs="*", default=[], metavar="KEY=VALUE", help="hyperparameters of every algorithm"
    )
    sw.add_argument(
        "--method-arg",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="module hyperparameters, given to every method whose modules take them",
    )
    sw.add_argument("--device", help="torch device (default: auto)")
    sw.add_argument("--logdir", help="root of run directories (default: the file's logdir, else runs)")
    sw.add_argument("--workers", type=int, help="runs at once (default: one per CPU core)")
    sw.add_argument("--backend", choices=("process", "ray"), default="process", help="default: process")
    sw.add_argument("--ray-address", help="Ray cluster address (default: start a local Ray instance)")
    sw.add_argument("--ray-cpus-per-run", type=float, default=1.0, help="CPUs per run on Ray (default: 1)")
    sw.add_argument("--overwrite", action="store_true", help="delete the runs' directories and start afresh")
    sw.add_argument("--report", action="store_true", help="write the report of the logdir at the end")
    sw.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    _add_allow_import(sw)
    sw.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    rp = sub.add_parser(
        "report",
        help="tables and plots comparing the runs of a directory",
        description="Read every results.json under RUNS_DIR and write markdown and CSV tables (mean and 95% "
        "bootstrap CI over seeds), return-matrix heatmaps, forgetting curves and bar charts.",
    )
    rp.add_argument("runs_dir", help="a directory of runs (clrl run/sweep's logdir)")
    rp.add_argument("--out", help="output directory (default: RUNS_DIR/report)")
    return parser


def _list() -> None:
    print("streams:")
    builtins = builtin_streams()
    width = max(len(name) for name in builtins)
    rows = []
    for name, path in builtins.items():
        data = tomllib.loads(path.read_text(encoding="utf-8"))  # clrl's own files: read, not built
        install = missing_extra(data.get("extra"))
        tasks, task_id, cycles = len(data["tasks"]), data.get("task_id", "hidden"), data.get("cycles", 1)
        count = f"{tasks} tasks" if cycles == 1 else f"{tasks * cycles} tasks ({tasks} x {cycles} cycles)"
        note = f"  [not installed: {install}]" if install else ""
        rows.append((name, f"{count}, task id {task_id}", f"{data.get('description', '')}{note}"))
    middle = max(len(row[1]) for row in rows)
    for name, shape, description in rows:
        print(f"  {name:<{width}}  {shape:<{middle}}  {description}")
    print("algorithms:\n  " + ", ".join(ALGORITHMS))
    print("methods:\n  " + ", ".join([*METHODS, *BASELINES]))
    print("  (modules combine with '+', e.g. multihead+ewc)")


def _hyperparameters(ns: argparse.Namespace) -> dict[str, Any]:
    """``--hp`` over the Zoo file's entry for the stream's environment (``--hyperparams``)."""
    hp = _parse_assignments(ns.hp, "--hp")
    if ns.hyperparams is None:
        return hp
    path = zoo_file(ns.algo) if ns.hyperparams == "zoo" else ns.hyperparams
    env_id = make_stream(ns.stream, validate=False).tasks[0].env_id
    zoo, notes = zoo_hyperparameters(path, env_id)
    for note in notes:
        print(f"clrl: {path} ({env_id}): {note}")
    return {**zoo, **hp}


def _run(ns: argparse.Namespace) -> list[TrainResult]:
    hyperparameters = _hyperparameters(ns)
    specs = [
        RunSpec(
            stream=ns.stream,
            algo=ns.algo,
            method=ns.method,
            seed=seed,
            steps=ns.steps,
            eval_episodes=ns.eval_episodes,
            eval_freq=ns.eval_freq,
            hyperparameters=hyperparameters,
            method_args=_parse_assignments(ns.method_arg, "--method-arg"),
            device=ns.device,
            vec_env=ns.vec_env,
            plasticity=not ns.no_plasticity,
        )
        for seed in ns.seeds
    ]
    specs = _smoke_specs(specs)
    for spec in specs:
        spec.check()  # every bad setting fails before any training
    if ns.threads is not None:
        check_positive_int(ns.threads, "--threads")
    threads = torch.get_num_threads()
    try:
        if ns.threads is not None:
            torch.set_num_threads(ns.threads)
        return _run_specs(ns, specs)
    finally:
        torch.set_num_threads(threads)


SMOKE_TEST_VARIABLE = "CLRL_SMOKE_TEST"
SMOKE_TEST_STEPS = 256
"""With ``CLRL_SMOKE_TEST=1`` in the environment, ``clrl run``, ``clrl demo`` and ``clrl sweep`` check that
a command runs instead of measuring: ``SMOKE_TEST_STEPS`` steps per task, one evaluation episode, no
evaluations during training, the smallest seed only and, of a sweep, the first run of each stream and
algorithm only (the other runs are checked, not trained); how the README's commands are tested (README,
Set-up)."""


def smoke_test() -> bool:
    """Whether ``CLRL_SMOKE_TEST`` asks for a smoke test (set, and neither empty nor ``0``)."""
    return os.environ.get(SMOKE_TEST_VARIABLE, "0") not in ("", "0")


def _smoke_specs(specs: list[RunSpec], sweep: bool = False) -> list[RunSpec]:
    """``specs`` shrunk to a smoke test (:data:`SMOKE_TEST_STEPS`) when ``CLRL_SMOKE_TEST`` asks for one: the
    smallest seed's run of each method (``clrl run``, ``clrl demo``) or, of a ``sweep``, of each stream and
    algorithm.

    Raises:
        ConfigError, StreamError: A run left out has a setting that cannot work (:meth:`RunSpec.check`).
    """
    if not smoke_test():
        return specs
    which = "each stream and algorithm's first run" if sweep else "each method's run"
    print(
        f"clrl: {SMOKE_TEST_VARIABLE} is set: {SMOKE_TEST_STEPS} steps per task, one evaluation episode, the "
        f"smallest seed and {which} only (a check that the command runs, not a result)",
        file=sys.stderr,
        flush=True,
    )
    first = min(spec.seed for spec in specs)
    kept: dict[object, RunSpec] = {}
    for spec in specs:
        key = (spec.stream, spec.algo) if sweep else spec.method
        if spec.seed == first and key not in kept:
            kept[key] = spec
        else:
            spec.check()  # left out, but its settings must work
    return [
        dataclasses.replace(spec, steps=SMOKE_TEST_STEPS, eval_episodes=1, eval_freq=None)
        for spec in kept.values()
    ]


DEMO_STREAM = "cartpole-flip"
DEMO_STEPS = 25_000
"""Steps per task of ``clrl demo``: every task is learned, and fine-tuning's forgetting is plain, on seeds
0, 1 and 2 (README, Set-up)."""


def _demo(ns: argparse.Namespace) -> None:
    steps = None if ns.full else ns.steps
    specs = [RunSpec(DEMO_STREAM, method=m, seed=ns.seed, steps=steps) for m in ("finetune", ns.method)]
    specs = _smoke_specs(specs)
    for spec in specs:
        spec.check()
    run = argparse.Namespace(
        logdir=ns.logdir, overwrite=ns.overwrite, resume=not ns.overwrite, no_progress=ns.no_progress,
        verbose=False,
    )  # fmt: skip
    finetune, method = (_run_specs(run, [spec])[0] for spec in specs)
    print(demo_summary(finetune, method, ns.method, ns.logdir))


def demo_summary(finetune: TrainResult, method: TrainResult, name: str, logdir: str) -> str:
    """What fine-tuning and ``name`` kept of the tasks before the last, in one line each."""

    def kept(result: TrainResult) -> str:
        final, best = result.matrix[-1, :-1], result.reference[:-1]
        return (
            f"{final.mean():.0f} of the {best.mean():.0f} they reached "
            f"(forgetting {result.metrics['forgetting']:.1f}, ACC {result.metrics['acc']:.1f})"
        )

    return (
        f"clrl: on the first {len(finetune.task_names) - 1} tasks after the last one, mean return:\n"
        f"  finetune  {kept(finetune)}\n  {name:<9} {kept(method)}\n"
        f"clrl: both side by side in TensorBoard: tensorboard --logdir {logdir}"
    )


def _run_specs(ns: argparse.Namespace, specs: list[RunSpec]) -> list[TrainResult]:
    results = []
    for spec in specs:
        if ns.resume:
            print(f"clrl: {_resume_point(spec.run_dir(ns.logdir), len(make_stream(spec.stream)))}")
        result = run_experiment(
            spec,
            ns.logdir,
            overwrite=ns.overwrite,
            resume=ns.resume,
            progress_bar=not ns.no_progress,
            verbose=ns.verbose,
            log=lambda line: print(line, flush=True),
        )
        print(f"{result}\n", flush=True)
        results.append(result)
    if len(results) > 1:
        print(format_seeds(results))
    return results


def _sweep(ns: argparse.Namespace) -> int:
    given = {
        "streams": ns.streams,
        "algos": ns.algos,
        "methods": ns.methods,
        "seeds": ns.seeds,
        "steps": ns.steps,
        "eval_episodes": ns.eval_episodes,
        "eval_freq": ns.eval_freq,
        "device": ns.device,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if ns.file:
        runs, settings = load_sweep(ns.file, overrides=given)
    elif ns.streams:
        runs, settings = grid(**{"algos": ["ppo"], "methods": ["finetune"], "seeds": [0], **given}), {}
    else:
        raise ConfigError("clrl sweep needs a sweep file or --streams")
    hp = _parse_assignments(ns.hp, "--hp")
    shared = common_method_args({r.method for r in runs}, _parse_assignments(ns.method_arg, "--method-arg"))
    runs = [
        dataclasses.replace(
            r,
            hyperparameters={**r.hyperparameters, **hp},
            method_args={**r.method_args, **shared.get(r.method, {})},
        )
        for r in runs
    ]
    runs = _smoke_specs(runs, sweep=True)
    logdir = ns.logdir or settings.get("logdir") or "runs"
    if ns.dry_run:
        for spec in runs:
            spec.check()  # what the sweep itself checks before it starts
            print(f"{spec.stream} / {spec.algo} / {spec.method} / seed {spec.seed}")
        print(f"{len(runs)} runs -> {logdir}")
        return 0
    print(f"clrl: sweep of {len(runs)} runs -> {logdir} ({ns.backend} backend)", flush=True)
    # A terminated sweep stops its runs too (as Ctrl-C does); they resume at the next launch.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = sweep(
            runs,
            logdir,
            backend=ns.backend,
            workers=ns.workers,
            ray_address=ns.ray_address,
            ray_cpus_per_run=ns.ray_cpus_per_run,
            overwrite=ns.overwrite,
            progress=not ns.no_progress,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(
        f"clrl: {result.count('done')} done, {result.count('skipped')} skipped (finished before), "
        f"{result.count('failed')} failed in {result.seconds:.0f} s",
        flush=True,
    )
    for outcome in result.failed:
        print(f"clrl: failed: {outcome.run_dir}: {outcome.error} (log: {outcome.run_dir / LOG_FILE})")
    if ns.report:
        _report(logdir, None)
    if result.failed:
        print("clrl: rerun the same command to retry the failed runs (finished runs are skipped)")
        return 1
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _report(runs_dir: str, out: str | None) -> None:
    from clrl.reports import write_report

    written = write_report(runs_dir, out)
    print(f"clrl: report of {written.n_runs} runs in {written.out_dir}: {written.markdown}")
    for line in written.warnings:
        print(f"clrl: warning: {line}")


def _resume_point(run_dir: Path, n_tasks: int) -> str:
    """What ``--resume`` will do with ``run_dir``, in words."""
    done = completed_tasks(run_dir)
    if done is None:
        return "no completed task recorded: starting afresh"
    if done == n_tasks:
        return f"all {n_tasks} tasks were completed: nothing to train"
    return f"resuming after task {done} of {n_tasks}"


def format_seeds(results: Sequence[TrainResult]) -> str:
    """Mean and 95% bootstrap confidence interval of each metric over seeds."""
    lines = [f"over {len(results)} seeds (mean [95% CI]):"]
    width = max(map(len, results[0].metrics), default=0)
    for key in results[0].metrics:
        mean, lo, hi = metrics.bootstrap_ci([r.metrics[key] for r in results])
        lines.append(f"  {key:<{width}} {mean:8.1f}  [{lo:.1f}, {hi:.1f}]")
    return "\n".join(lines)


def _add_allow_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-import",
        action="append",
        default=[],
        metavar="PACKAGE",
        help="let stream files name wrappers or envs of this package (repeatable; see README, Safety)",
    )


def _allow(packages: list[str]) -> None:
    """``--allow-import``: for this process and, through the environment, the runs a sweep starts."""
    if not packages:
        return
    allow_imports(*packages)
    known = [p for p in os.environ.get(ENVIRONMENT_VARIABLE, "").split(",") if p]
    os.environ[ENVIRONMENT_VARIABLE] = ",".join(dict.fromkeys([*known, *packages]))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clrl`` command; returns the exit status (2 for bad input, 1 for a failed task)."""
    ns = _build_parser().parse_args(argv)
    np.set_printoptions(precision=1, suppress=True)
    try:
        _allow(getattr(ns, "allow_import", []))
        if ns.command == "list":
            _list()
        elif ns.command == "run":
            _run(ns)
        elif ns.command == "demo":
            _demo(ns)
        elif ns.command == "sweep":
            return _sweep(ns)
        else:
            _report(ns.runs_dir, ns.out)
    except TrainingError as exc:
        print(f"clrl: error: {exc}", file=sys.stderr)
        if ns.command == "run" and isinstance(exc, NumericalError):
            # Same seed, same settings, same divergence: resuming cannot help.
            print(
                "clrl: --resume would repeat it; change the settings and rerun with --overwrite",
                file=sys.stderr,
            )
        elif ns.command == "run":
            print(
                "clrl: if the cause is gone, rerun the same command with --resume to continue",
                file=sys.stderr,
            )
        return 1
    except ClrlError as exc:
        print(f"clrl: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (clrl list | head): stop quietly, as Unix tools do
        with contextlib.suppress(AttributeError, OSError, ValueError):  # Python's exit flush must not fail
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # disk full, read-only file system, ...: one line, not a traceback
        where = f": {exc.filename!r}" if exc.filename else ""
        kept = (
            "; the tasks completed so far are kept in results.json" if ns.command in ("run", "sweep") else ""
        )
        print(f"clrl: error: {exc.strerror or exc}{where}{kept}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "clrl: interrupted; the tasks completed so far are in results.json (--resume, or the same "
            "clrl sweep command, continues)",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
