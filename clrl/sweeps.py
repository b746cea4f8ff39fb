"""Sweeps: a grid of runs (streams × algorithms × methods × seeds) on a local process pool or on Ray.

Every run is :func:`clrl.experiment.run_experiment` in a process of its own (``python -m clrl._worker``),
writing into ``logdir/<stream>/<algo>-<method>/seed<seed>/`` as ``clrl run`` does, with its output in
``sweep.log`` there. A run is always started with ``resume``: a sweep launched again skips the finished runs
and continues the half-finished ones from their last completed task. A run that fails is reported and the
others go on.

Backends:

- ``"process"`` (default): up to ``workers`` runs at once on this machine (default: one per CPU core),
  each with ``cores // workers`` torch threads.
- ``"ray"``: each run is a Ray task needing ``ray_cpus_per_run`` CPUs, on the cluster at ``ray_address`` or
  on a local Ray instance with ``workers`` CPUs when no address is given (``pip install "clrl[ray]"``).
  On a cluster, ``logdir`` must be a path every node sees (a shared file system), as in Ray Tune.

A sweep file (TOML) holds the grid; the top-level keys are the defaults of every ``[[grid]]`` table (with
none, the top level is the one grid)::

    logdir = "runs/reference"
    seeds = [0, 1, 2]
    steps = 20000                 # per task (default: each stream's)
    eval_episodes = 10
    eval_freq = 5000              # optional: forgetting curves during training

    [[grid]]
    streams = ["cartpole-flip", "cartpole-physics"]
    algos = ["ppo"]
    methods = ["finetune", "multitask", "single-task", "ewc", "clser"]

    [[grid]]
    streams = ["pendulum-flip"]
    algos = ["sac"]
    methods = ["finetune", "replay"]

    [hyperparameters.ppo]         # SB3 arguments per algorithm, over the presets
    n_steps = 256

    [method_args.ewc]             # module arguments per method
    strength = 1000.0
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from clrl.errors import ConfigError
from clrl.experiment import BASELINES, LOG_FILE, SPEC_FILE, RunSpec, completed_tasks, make_modules
from clrl.progress import progress as make_progress
from clrl.streams import TaskStream

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Status = Literal["done", "skipped", "failed"]


@dataclass
class RunOutcome:
    """What became of one run of a sweep.

    Attributes:
        spec: The run.
        run_dir: Its directory.
        status: ``done`` (trained to the end now), ``skipped`` (already finished), ``failed``.
        seconds: Wall-clock seconds of the run's process (0 when skipped).
        error: Why it failed (the last error line of its log).
    """

    spec: RunSpec
    run_dir: Path
    status: Status
    seconds: float = 0.0
    error: str | None = None


@dataclass
class SweepResult:
    """The outcomes of a sweep, in the order of its runs, and its wall-clock seconds."""

    outcomes: list[RunOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: Status) -> int:
        """Number of runs with ``status``."""
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> list[RunOutcome]:
        """The failed runs."""
        return [o for o in self.outcomes if o.status == "failed"]


def grid(
    streams: Sequence[str],
    algos: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int | None = None,
    eval_episodes: int = 10,
    eval_freq: int | None = None,
    hyperparameters: Mapping[str, Mapping[str, Any]] | None = None,
    method_args: Mapping[str, Mapping[str, Any]] | None = None,
    device: str = "auto",
) -> list[RunSpec]:
    """Every combination of ``streams × algos × methods × seeds`` as runs.

    Single-task runs come first, so that the continual runs after them are normalised by them.

    Args:
        streams, algos, methods, seeds: The grid's axes (non-empty).
        steps, eval_episodes, eval_freq, device: As in :class:`RunSpec`, for every run.
        hyperparameters: SB3 arguments per algorithm name, e.g. ``{"ppo": {"n_steps": 256}}``.
        method_args: Module arguments per method name, e.g. ``{"ewc": {"strength": 1000.0}}``.

    Raises:
        ConfigError: An empty axis, or arguments for an algorithm or method that is not in the grid.
    """
    for axis, values in (("streams", streams), ("algos", algos), ("methods", methods), ("seeds", seeds)):
        if isinstance(values, str) or not isinstance(values, Sequence) or not values:
            raise ConfigError(f"{axis} must be a non-empty list, got {values!r}")
    hyperparameters = {str(k).lower(): dict(v) for k, v in (hyperparameters or {}).items()}
    method_args = {k: dict(v) for k, v in (method_args or {}).items()}
    for what, given, names in (
        ("hyperparameters", hyperparameters, {str(a).lower() for a in algos}),
        ("method_args", method_args, set(methods)),
    ):
        stray = sorted(set(given) - names)
        if stray:
            raise ConfigError(f"{what} for {', '.join(stray)}, which the grid does not run")
    runs = [
        RunSpec(
            stream=stream,
            algo=algo,
            method=method,
            seed=seed,
            steps=steps,
            eval_episodes=eval_episodes,
            eval_freq=eval_freq,
            hyperparameters=dict(hyperparameters.get(str(algo).lower(), {})),
            method_args=dict(method_args.get(method, {})),
            device=device,
        )
        for stream in streams
        for algo in algos
        for method in methods
        for seed in seeds
    ]
    return sorted(runs, key=lambda r: r.method != "single-task")


def _names(value: Any) -> set[str]:
    """The names of a grid axis as the file wrote it (nothing when it is not a list of names)."""
    return {v for v in value if isinstance(v, str)} if isinstance(value, list) else set()


_GRID_KEYS = {"streams", "algos", "methods", "seeds", "steps", "eval_episodes", "eval_freq", "device"}
_FILE_KEYS = {*_GRID_KEYS, "logdir", "grid", "hyperparameters", "method_args"}
_NAME_AXES = ("streams", "algos", "methods")


def _key(axis: str, name: str) -> str:
    """How a name of a grid axis compares (algorithm names in any case, as everywhere)."""
    return name.lower() if axis == "algos" else name


def load_sweep(
    path: str | Path, overrides: Mapping[str, Any] | None = None
) -> tuple[list[RunSpec], dict[str, Any]]:
    """Read a sweep file (see the module docstring).

    Args:
        path: The file.
        overrides: Grid settings (``streams``, ``seeds``, ``steps``, ...) that replace the file's, in every
            ``[[grid]]`` table (the command line's options). With several tables, ``streams``, ``algos``
            and ``methods`` instead pick among the names each table lists (a table left with none runs
            nothing), so that ``--methods cpg`` reruns the file's CPG runs and no others.

    Returns:
        The runs, and the file's other settings (``logdir`` when given).

    Raises:
        ConfigError: Unreadable file, bad TOML, unknown keys, or a bad grid.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read sweep file {str(path)!r}: {exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"sweep file {str(path)!r} is not valid TOML: {exc}") from exc
    if not set(overrides or {}) <= _GRID_KEYS:
        raise ConfigError(f"overrides must be grid settings ({', '.join(sorted(_GRID_KEYS))})")
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        raise ConfigError(f"sweep file {str(path)!r}: unknown key(s) {', '.join(unknown)}")
    defaults = {k: v for k, v in data.items() if k in _GRID_KEYS}
    tables = data.get("grid", [defaults])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"sweep file {str(path)!r}: grid must be an array of tables ([[grid]])")
    logdir = data.get("logdir")
    if logdir is not None and not isinstance(logdir, str):
        raise ConfigError(f"sweep file {str(path)!r}: logdir must be a string, got {logdir!r}")
    for what in ("hyperparameters", "method_args"):
        if not isinstance(data.get(what, {}), dict) or not all(
            isinstance(v, dict) for v in data.get(what, {}).values()
        ):
            raise ConfigError(f"sweep file {str(path)!r}: {what} must be tables ([{what}.<name>])")
    used_algos: set[str] = set()
    used_methods: set[str] = set()
    runs: list[RunSpec] = []
    overrides = dict(overrides or {})
    # With several tables, the command line's names pick among each table's instead of replacing them.
    picks = {axis: overrides.pop(axis) for axis in _NAME_AXES if axis in overrides} if len(tables) > 1 else {}
    for axis, wanted in picks.items():
        if not isinstance(wanted, list) or not all(isinstance(w, str) for w in wanted):
            raise ConfigError(
                f"{axis} given with sweep file {str(path)!r} must be a list of names, got {wanted!r}"
            )
    picked: dict[str, set[str]] = {axis: set() for axis in picks}
    for index, table in enumerate(tables):
        stray = sorted(set(table) - _GRID_KEYS)
        if stray:
            raise ConfigError(f"sweep file {str(path)!r}: grid {index}: unknown key(s) {', '.join(stray)}")
        settings = {**defaults, **table, **overrides}
        missing = sorted({"streams", "algos", "methods", "seeds"} - set(settings))
        if missing:
            raise ConfigError(f"sweep file {str(path)!r}: grid {index} has no {', '.join(missing)}")
        for axis in _NAME_AXES:
            values = settings[axis]
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ConfigError(
                    f"sweep file {str(path)!r}: grid {index}: {axis} must be a list of names, got {values!r}"
                )
        # What the file's own grid names counts as used, so that narrowing it from the command line
        # (``--methods reset``) does not make the file's other tables errors.
        written = {**defaults, **table}
        used_algos |= {a.lower() for a in settings["algos"]} | {
            a.lower() for a in _names(written.get("algos"))
        }
        used_methods |= set(settings["methods"]) | _names(written.get("methods"))
        for axis, wanted in picks.items():
            settings[axis] = [v for v in settings[axis] if _key(axis, v) in {_key(axis, w) for w in wanted}]
        if not all(settings[axis] for axis in picks):
            continue
        for axis in picks:
            picked[axis] |= {_key(axis, v) for v in settings[axis]}
        algos = {a.lower() for a in settings["algos"]}
        try:
            runs += grid(
                hyperparameters={
                    k: v for k, v in data.get("hyperparameters", {}).items() if k.lower() in algos
                },
                method_args={
                    k: v for k, v in data.get("method_args", {}).items() if k in settings["methods"]
                },
                **settings,
            )
        except (TypeError, AttributeError) as exc:
            raise ConfigError(f"sweep file {str(path)!r}: grid {index}: {exc}") from exc
    for axis, wanted in picks.items():
        absent = [w for w in wanted if _key(axis, w) not in picked[axis]]
        if absent:
            raise ConfigError(
                f"sweep file {str(path)!r} has several grids, and none lists {axis} {', '.join(absent)}: "
                f"given with such a file, --{axis} picks among each grid's"
            )
    for what, used, lower in (("hyperparameters", used_algos, True), ("method_args", used_methods, False)):
        unused = sorted(k for k in data.get(what, {}) if (k.lower() if lower else k) not in used)
        if unused:
            raise ConfigError(
                f"sweep file {str(path)!r}: [{what}] for {', '.join(unused)}, which no grid runs"
            )
    return sorted(runs, key=lambda r: r.method != "single-task"), {"logdir": logdir}


def common_method_args(methods: Iterable[str], args: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Share command-line module arguments out: each method gets those its modules take.

    Raises:
        ConfigError: An argument that no method of the sweep takes.
    """
    shared: dict[str, dict[str, Any]] = {}
    used: set[str] = set()
    for method in methods:
        if method in BASELINES:
            continue
        mine = {}
        for key, value in args.items():
            try:
                make_modules(method, {key: value})
            except ConfigError as exc:
                if "is not an argument" in str(exc) or "takes no module arguments" in str(exc):
                    continue
                raise
            mine[key] = value
            used.add(key)
        if mine:
            shared[method] = mine
    unused = sorted(set(args) - used)
    if unused:
        raise ConfigError(f"no method of the sweep takes the module argument(s) {', '.join(unused)}")
    return shared


# -- running -------------------------------------------------------------------------------------------


@dataclass
class _Job:
    spec: RunSpec
    run_dir: Path
    logdir: Path
    threads: int = 1
    started: float = 0.0


def _command(job: _Job) -> list[str]:
    payload = json.dumps({"spec": job.spec.to_dict(), "logdir": str(job.logdir)})
    return [sys.executable, "-m", "clrl._worker", payload]


def _environment(threads: int) -> dict[str, str]:
    from clrl import _worker  # here, not at import: ``python -m clrl._worker`` must not find it imported

    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    env[_worker.PARENT_VARIABLE] = str(os.getpid())  # the run ends when this process dies
    return env


def execute(payload: dict[str, Any], threads: int) -> int:
    """Run one job in this process (a Ray worker); its output goes to the run's log.

    Ray's worker has imported clrl already to unpickle this function, so the run does not start a process
    of its own (which would import torch and SB3 a second time). Ray reuses its workers, and a run sets
    everything it depends on: torch's threads here, every random generator in :func:`clrl.train`.

    Returns:
        The run's exit status, as ``python -m clrl._worker`` gives it (0: finished).
    """
    import contextlib

    import torch

    from clrl import _worker

    torch.set_num_threads(threads)
    run_dir = Path(payload["run_dir"])
    argument = json.dumps({"spec": payload["spec"], "logdir": payload["logdir"]})
    with (
        open(run_dir / LOG_FILE, "a", encoding="utf-8") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        return _worker.main([argument])


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them to the handlers they were meant for.

    ``subprocess.Popen`` waits for its child's ``exec``; an interrupt raised in that wait unwinds out of
    ``Popen`` and leaves a running child that nothing can stop. Outside the main thread (where Python runs
    no signal handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


class _ProcessBackend:
    """Runs jobs as child processes of this one, up to ``capacity`` at a time."""

    def __init__(self, workers: int) -> None:
        self.capacity = workers
        self._threads = max(1, _cores() // workers)
        self._running: dict[int, tuple[subprocess.Popen[bytes], Any]] = {}

    def start(self, key: int, job: _Job) -> None:
        job.threads = self._threads
        with _interrupts_held():  # an interrupt comes once :meth:`stop` knows the child
            log = open(job.run_dir / LOG_FILE, "ab")  # noqa: SIM115 (closed when the process ends)
            process = subprocess.Popen(
                _command(job), stdout=log, stderr=subprocess.STDOUT, env=_environment(job.threads)
            )
            self._running[key] = (process, log)

    def wait(self) -> list[tuple[int, int]]:
        """Block until at least one job ends; its key and exit status."""
        while True:
            ended = [(k, p.poll()) for k, (p, _) in self._running.items() if p.poll() is not None]
            if ended:
                for key, _ in ended:
                    self._running.pop(key)[1].close()
                return [(k, int(code if code is not None else -1)) for k, code in ended]
            time.sleep(0.1)

    def stop(self) -> None:
        for process, _ in self._running.values():
            process.terminate()
        for process, log in self._running.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()
        self._running.clear()


class _RayBackend:
    """Runs jobs as Ray tasks, as many at a time as the cluster has room for."""

    def __init__(self, workers: int, address: str | None, cpus_per_run: float) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ConfigError('the ray backend needs Ray: pip install "clrl[ray]"') from exc
        self._ray = ray
        self._started_here = not ray.is_initialized()
        if self._started_here:
            options: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False)
            if address is None:
                options["num_cpus"] = workers
            try:
                ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"cannot connect to Ray at {address!r}: {exc}") from exc
        cpus = float(ray.cluster_resources().get("CPU", workers))
        self.capacity = max(1, int(cpus // cpus_per_run))
        self._threads = max(1, int(cpus_per_run))
        self._remote = ray.remote(num_cpus=cpus_per_run, max_retries=0)(execute)
        self._running: dict[Any, int] = {}

    def start(self, key: int, job: _Job) -> None:
        job.threads = self._threads
        payload = {"spec": job.spec.to_dict(), "run_dir": str(job.run_dir), "logdir": str(job.logdir)}
        self._running[self._remote.remote(payload, job.threads)] = key

    def wait(self) -> list[tuple[int, int]]:
        ready, _ = self._ray.wait(list(self._running), num_returns=1)
        ended = []
        for ref in ready:
            key = self._running.pop(ref)
            try:
                code = int(self._ray.get(ref))
            except Exception:  # a task that died (node lost, worker killed) is a failed run
                code = -1
            ended.append((key, code))
        return ended

    def stop(self) -> None:
        for ref in self._running:
            self._ray.cancel(ref, force=True)
        self._running.clear()
        if self._started_here:
            self._ray.shutdown()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (macOS, Windows)
        return os.cpu_count() or 1


def _error_line(run_dir: Path, code: int) -> str:
    """The reason a run failed, from the end of its log."""
    try:
        lines = (run_dir / LOG_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith("clrl: error:"):
            return line.removeprefix("clrl: error:").strip()
    tail = [line for line in lines if line.strip()]
    return f"exit status {code}" + (f": {tail[-1].strip()}" if tail else "")


def _summary_line(outcome: RunOutcome, name: str) -> str:
    if outcome.status == "failed":
        return f"failed  {name}: {outcome.error}"
    try:
        acc = json.loads((outcome.run_dir / "results.json").read_text(encoding="utf-8"))["metrics"]["acc"]
        score = f"  acc {acc:.1f}"
    except (OSError, ValueError, KeyError, TypeError):
        score = ""
    timing = "" if outcome.status == "skipped" else f"  {outcome.seconds:.0f} s"
    return f"{outcome.status:<7} {name}{timing}{score}"


def sweep(
    runs: Iterable[RunSpec],
    logdir: str | Path = "runs",
    *,
    backend: Literal["process", "ray"] = "process",
    workers: int | None = None,
    ray_address: str | None = None,
    ray_cpus_per_run: float = 1.0,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """Run every run of ``runs`` (e.g. from :func:`grid`) into ``logdir``, several at a time.

    Finished runs are skipped; half-finished ones continue from their last completed task; a failed run is
    reported and the others go on. Every run's settings are checked before the first one starts.

    Args:
        runs: The runs; two may not share a run directory.
        logdir: Root of the run directories.
        backend: ``"process"`` (local process pool) or ``"ray"``.
        workers: Runs at once on this machine (default: its CPU cores); with Ray and no address, the CPUs
            of the local Ray instance.
        ray_address: Address of an existing Ray cluster (``"auto"``, ``"ray://host:10001"``); ``None``
            starts a local instance.
        ray_cpus_per_run: CPUs a run asks Ray for (also its torch threads).
        overwrite: Delete the runs' directories first and train everything afresh.
        progress: Show a progress bar of runs done, running and failed.
        log: Where the line of each finished run goes (default: printed).

    Returns:
        The outcome of every run.

    Raises:
        ConfigError, StreamError: A bad run setting, or two runs sharing a directory (nothing started).
    """
    runs = list(runs)
    if backend not in ("process", "ray"):
        raise ConfigError(f"backend must be 'process' or 'ray', got {backend!r}")
    if workers is None:
        workers = _cores()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    if not ray_cpus_per_run > 0:
        raise ConfigError(f"ray_cpus_per_run must be positive, got {ray_cpus_per_run!r}")
    root = Path(logdir).resolve()
    streams: dict[tuple[str, int | None], TaskStream] = {}
    jobs: list[_Job] = []
    for spec in runs:
        if not isinstance(spec, RunSpec):
            raise ConfigError(f"runs must be RunSpec instances, got {type(spec).__name__}")
        key = (spec.stream, spec.steps)
        streams[key] = spec.check()  # every run's settings (the stream's validation is cached)
        jobs.append(_Job(spec, spec.run_dir(root, streams[key].name), root))
    seen: dict[Path, RunSpec] = {}
    for job in jobs:
        if job.run_dir in seen:
            raise ConfigError(
                f"two runs of the sweep write to {job.run_dir}: {seen[job.run_dir]} and {job.spec}"
            )
        seen[job.run_dir] = job.spec

    emit = log or (lambda line: print(line, flush=True))
    started = time.perf_counter()
    outcomes: dict[int, RunOutcome] = {}
    queue: list[int] = []
    for index, job in enumerate(jobs):
        n_tasks = len(streams[(job.spec.stream, job.spec.steps)])
        if overwrite and job.run_dir.exists():
            shutil.rmtree(job.run_dir)
        previous = _read_spec(job.run_dir)
        if completed_tasks(job.run_dir) == n_tasks and previous == job.spec:
            outcomes[index] = RunOutcome(job.spec, job.run_dir, "skipped")
        elif previous is not None and previous != job.spec:
            outcomes[index] = RunOutcome(
                job.spec,
                job.run_dir,
                "failed",
                error=f"{job.run_dir} holds a run with other settings ({SPEC_FILE}); pass overwrite "
                "(--overwrite) to replace it, or choose another logdir",
            )
        else:
            queue.append(index)
    bar = make_progress(progress, len(jobs), "run", "sweep")

    def report(index: int) -> None:
        outcome = outcomes[index]
        line = _summary_line(outcome, str(outcome.run_dir.relative_to(root)))
        if bar is not None:
            bar.write(line)
            bar.update(1)
        else:
            emit(line)

    for index in sorted(outcomes):
        report(index)
    if queue:
        pool: _ProcessBackend | _RayBackend = (
            _ProcessBackend(workers)
            if backend == "process"
            else _RayBackend(workers, ray_address, ray_cpus_per_run)
        )
        running: set[int] = set()
        try:
            while queue or running:
                while queue and len(running) < pool.capacity:
                    index = queue.pop(0)
                    job = jobs[index]
                    job.run_dir.mkdir(parents=True, exist_ok=True)
                    (job.run_dir / SPEC_FILE).write_text(
                        json.dumps(job.spec.to_dict(), indent=1), encoding="utf-8"
                    )
                    job.started = time.perf_counter()
                    pool.start(index, job)
                    running.add(index)
                    _postfix(bar, running, outcomes)
                for index, code in pool.wait():
                    running.discard(index)
                    job = jobs[index]
                    seconds = time.perf_counter() - job.started
                    if code == 0:
                        outcomes[index] = RunOutcome(job.spec, job.run_dir, "done", seconds)
                    else:
                        error = _error_line(job.run_dir, code)
                        outcomes[index] = RunOutcome(job.spec, job.run_dir, "failed", seconds, error)
                    report(index)
                    _postfix(bar, running, outcomes)
        finally:
            pool.stop()
    if bar is not None:
        bar.close()
    return SweepResult([outcomes[i] for i in range(len(jobs))], time.perf_counter() - started)


def _read_spec(run_dir: Path) -> RunSpec | None:
    try:
        return RunSpec.from_dict(json.loads((run_dir / SPEC_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, ConfigError):
        return None


def _postfix(bar: Any, running: set[int], outcomes: dict[int, RunOutcome]) -> None:
    if bar is not None:
        failed = sum(o.status == "failed" for o in outcomes.values())
        bar.set_postfix_str(f"running {len(running)}, failed {failed}")
