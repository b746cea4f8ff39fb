"""One experiment by name: stream × algorithm × method × seed, built from presets, as ``clrl run`` runs it.

:class:`RunSpec` describes a run in plain data (so it can be written to JSON and sent to another process
or a Ray worker); :func:`run_experiment` builds the stream, the model (with the preset of
``agents/presets/``), the modules, and trains into ``RunSpec.run_dir(logdir)``. ``clrl run`` and
``clrl sweep`` both go through it, so a run of a sweep is the same as the same run by hand.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.utils import get_device

from clrl.algorithms import ALGORITHMS, get_algorithm
from clrl.boundaries import check_stream_fit
from clrl.checks import check_eval_episodes, check_eval_freq, check_seed, inside
from clrl.errors import ConfigError
from clrl.modules import (
    AGEM,
    AR1,
    CLEAR,
    CLSER,
    CPG,
    EWC,
    GEM,
    HAT,
    L2,
    MAS,
    MIR,
    SCP,
    SI,
    BehaviourCloning,
    BoundaryDetector,
    ClonEx,
    ContinualBackprop,
    ContinualModule,
    CWRStar,
    DualNet,
    DualNetExtractor,
    GDumb,
    GenerativeReplay,
    HyperNetwork,
    L2Init,
    LatentReplay,
    LwF,
    MultiHead,
    Net2NetGrowth,
    OnlineEWC,
    PackNet,
    ParsevalRegularisation,
    Piggyback,
    PlasticityInjection,
    ProgressAndCompress,
    ProgressiveColumns,
    ReDo,
    Replay,
    Reset,
    ResetOptimizer,
    RWalk,
    ShrinkAndPerturb,
    SupSup,
    hat_policy,
    hypernetwork_policy,
    injection_policy,
    masked_policy,
    multihead_policy,
    progressive_policy,
)
from clrl.modules.plasticity_injection import injections_needed
from clrl.modules.surgery import rollout_steps
from clrl.presets import hyperparameters, make_model, module_defaults, preset
from clrl.results import TrainResult, reference_mismatch, run_config
from clrl.runner import (
    VEC_ENVS,
    train,
    train_cumulative,
    train_ensemble,
    train_multitask,
    train_single_task,
)
from clrl.streams import TaskStream, make_stream

METHODS: dict[str, type[ContinualModule] | None] = {
    "finetune": None,
    "l2": L2,
    "ewc": EWC,
    "online-ewc": OnlineEWC,
    "mas": MAS,
    "si": SI,
    "scp": SCP,
    "rwalk": RWalk,
    "replay": Replay,
    "mir": MIR,
    "clear": CLEAR,
    "behaviour-cloning": BehaviourCloning,
    "clonex": ClonEx,
    "agem": AGEM,
    "gem": GEM,
    "gdumb": GDumb,
    "generative-replay": GenerativeReplay,
    "latent-replay": LatentReplay,
    "packnet": PackNet,
    "multihead": MultiHead,
    "progressive": ProgressiveColumns,
    "cwr-star": CWRStar,
    "ar1": AR1,
    "hat": HAT,
    "hypernetwork": HyperNetwork,
    "piggyback": Piggyback,
    "supsup": SupSup,
    "cpg": CPG,
    "lwf": LwF,
    "clser": CLSER,
    "pnc": ProgressAndCompress,
    "dualnet": DualNet,
    "reset-optimizer": ResetOptimizer,
    "redo": ReDo,
    "shrink-and-perturb": ShrinkAndPerturb,
    "l2-init": L2Init,
    "reset": Reset,
    "continual-backprop": ContinualBackprop,
    "parseval": ParsevalRegularisation,
    "plasticity-injection": PlasticityInjection,
    "net2net": Net2NetGrowth,
    "detector": BoundaryDetector,
}
"""Continual methods by command-line name (``None``: no module). ``detector`` holds the other modules of
its combination (``detector+ewc``) and gives them the boundaries it detects on a stream that hides them."""
BASELINES = ("multitask", "single-task", "cumulative", "ensemble")
"""Reference runs that are not a module: all tasks at once, a fresh model per task, each task's budget on
the tasks so far mixed, and a fresh model per task each evaluating its own task."""

POLICY_METHODS: dict[str, Callable[[Any], Any]] = {
    "multihead": multihead_policy,
    "progressive": progressive_policy,
    "cwr-star": multihead_policy,
    "ar1": multihead_policy,
    "hat": hat_policy,
    "hypernetwork": hypernetwork_policy,
    "piggyback": masked_policy,
    "supsup": masked_policy,
    "cpg": masked_policy,
    "pnc": progressive_policy,  # two columns: the knowledge base and the active column
    "plasticity-injection": injection_policy,
}
"""Methods that need their own policy class, and the function that names it for an algorithm."""
EXTRACTOR_METHODS: dict[str, type[BaseFeaturesExtractor]] = {"dualnet": DualNetExtractor}
"""Methods that need their own features extractor (with any policy class)."""


def method_parts(method: str) -> list[str]:
    """The module names of a method: one name, or several joined by ``+`` (``multihead+ewc``).

    Raises:
        ConfigError: An unknown name, ``finetune`` in a combination, or a name given twice.
    """
    if not isinstance(method, str):
        raise ConfigError(f"a method is a name, got {method!r}")
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


def make_modules(method: str, args: dict[str, Any], algo: str | None = None) -> list[ContinualModule]:
    """The modules of ``method``; each entry of ``args`` goes to every module whose constructor takes it.

    With ``algo``, each module first gets the defaults ``agents/presets/modules.toml`` gives it for that
    algorithm's family (:func:`clrl.presets.module_defaults`), which ``args`` override.

    Raises:
        ConfigError: Unknown method, an argument no module takes, or a bad value.
    """
    if method in BASELINES:
        if args:
            raise ConfigError(f"baseline {method!r} takes no module arguments")
        return []
    parts = [(part, cls) for part in method_parts(method) if (cls := METHODS[part]) is not None]
    if not parts:
        if args:
            raise ConfigError(f"method {method!r} takes no module arguments")
        return []
    accepted = {cls: set(inspect.signature(cls.__init__).parameters) - {"self"} for _, cls in parts}
    accepted.get(BoundaryDetector, set()).discard("modules")  # the combination's other modules
    unknown = sorted(k for k in args if not any(k in names for names in accepted.values()))
    if unknown:
        raise ConfigError(
            f"bad module argument for {method}: {', '.join(unknown)} is not an argument of "
            + ", ".join(cls.__name__ for _, cls in parts)
        )
    try:
        modules = [
            cls(
                **{
                    k: v
                    for k, v in {**(module_defaults(part, algo) if algo else {}), **args}.items()
                    if k in accepted[cls]
                }
            )
            for part, cls in parts
            if cls is not BoundaryDetector
        ]
        if any(cls is BoundaryDetector for _, cls in parts):
            settings = {k: v for k, v in args.items() if k in accepted[BoundaryDetector]}
            modules = [BoundaryDetector(modules, **settings)]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad module argument for {method}: {exc}") from exc
    return modules


def policy_hyperparameters(
    method: str, algo: str, stream: TaskStream, hp: dict[str, Any], method_args: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``hp`` with the policy ``method`` needs (one head or column per task, or the injections
    ``method_args``' schedule makes), the preset's network kept.

    Methods without a policy of their own return ``hp`` unchanged.

    Raises:
        ConfigError: Two parts of the method each need their own policy.
    """
    parts = method_parts(method)
    needs = [part for part in parts if part in POLICY_METHODS]
    extractors = [EXTRACTOR_METHODS[part] for part in parts if part in EXTRACTOR_METHODS]
    if len(needs) > 1:
        raise ConfigError(f"{' and '.join(needs)} each need their own policy; choose one")
    if not needs and not extractors:
        return dict(hp)
    policy_kwargs = {**preset(stream.name, algo).get("policy_kwargs", {}), **hp.get("policy_kwargs", {})}
    out = {**hp}
    if needs:
        out["policy"] = POLICY_METHODS[needs[0]](get_algorithm(algo))
        if needs[0] == "plasticity-injection":
            settings = {**preset(stream.name, algo), **hp}
            rollout = rollout_steps(get_algorithm(algo), settings, settings.get("n_envs", 1))
            policy_kwargs["injections"] = injections_needed(stream, (method_args or {}).get("every"), rollout)
        else:
            policy_kwargs["n_tasks"] = 2 if needs[0] == "pnc" else len(stream)
    if extractors:
        policy_kwargs.setdefault("features_extractor_class", extractors[0])
    out["policy_kwargs"] = policy_kwargs
    return out


@functools.lru_cache(maxsize=32)
def _validated_stream(name_or_path: str, steps: int | None) -> TaskStream:
    """The stream, validated once per process (validation builds every task: seconds for Meta-World)."""
    return make_stream(name_or_path, steps_per_task=steps)


@dataclass(frozen=True)
class RunSpec:
    """One run: which stream, algorithm, method and seed, with its settings, as plain data.

    Attributes:
        stream: A built-in stream name or a stream file.
        algo: Algorithm name (``clrl list``).
        method: Continual method, ``+`` combination, or baseline (``multitask``, ``single-task``,
            ``cumulative``, ``ensemble``).
        seed: Seed of the model, the task environments and the evaluation episodes.
        steps: Training steps per task (``None``: the stream's).
        eval_episodes: Episodes per task at each evaluation.
        eval_freq: Also evaluate every ``eval_freq`` steps during training (``None``: at task ends only).
        hyperparameters: SB3 constructor arguments over the preset's (``policy`` and ``n_envs`` included).
        method_args: Module constructor arguments; each goes to every module of the method that takes it.
        device: Torch device.
        vec_env: ``"dummy"`` (every environment copy in this process) or ``"subproc"`` (one process each,
            SB3's ``SubprocVecEnv``).
        plasticity: Measure the networks' plasticity (:class:`clrl.PlasticityMonitor`); it does not change
            training.
    """

    stream: str
    algo: str = "ppo"
    method: str = "finetune"
    seed: int = 0
    steps: int | None = None
    eval_episodes: int = 10
    eval_freq: int | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    method_args: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    vec_env: str = "dummy"
    plasticity: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "algo", str(self.algo).lower())

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON), the inverse of :meth:`from_dict`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """A spec from :meth:`to_dict`'s data.

        Raises:
            ConfigError: Unknown or missing keys.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown run setting(s): {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"bad run settings: {exc}") from exc

    def check(self) -> TaskStream:
        """Check every setting that can be checked without training; return the stream.

        Raises:
            StreamError: Unknown or invalid stream.
            ConfigError: Unknown algorithm or method, bad module argument, bad seed, a hyperparameter outside
                its documented range.
        """
        self._check_types()
        if self.algo not in ALGORITHMS:
            raise ConfigError(f"unknown algorithm {self.algo!r}; choose one of: {', '.join(ALGORITHMS)}")
        if self.vec_env not in VEC_ENVS:
            raise ConfigError(f"vec_env must be one of {', '.join(VEC_ENVS)}, got {self.vec_env!r}")
        method_parts(self.method)
        stream = _validated_stream(self.stream, self.steps)
        check_seed(self.seed, len(stream))
        modules = make_modules(self.method, self.method_args, self.algo)
        check_stream_fit(modules, stream)
        if stream.boundaries != "hidden" and any(isinstance(m, BoundaryDetector) for m in modules):
            raise ConfigError(  # its modules are told the boundaries already
                f"the detector finds boundaries a stream hides; stream {stream.name!r} announces them "
                "(add boundaries = 'hidden' to the stream file, or drop detector+)"
            )
        hp = policy_hyperparameters(self.method, self.algo, stream, self.hyperparameters, self.method_args)
        hyperparameters(stream.name, self.algo, hp)
        return stream

    def _check_types(self) -> None:
        """Refuse a setting of the wrong type (from a sweep file) before it reaches anything else."""
        for name in ("stream", "method", "device", "vec_env"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, got {getattr(self, name)!r}")
        for name in ("hyperparameters", "method_args"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"{name} must be a table, got {getattr(self, name)!r}")
        if not isinstance(self.plasticity, bool):
            raise ConfigError(f"plasticity must be true or false, got {self.plasticity!r}")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)):
            raise ConfigError(f"steps must be an integer or None, got {self.steps!r}")
        check_eval_episodes(self.eval_episodes)
        check_eval_freq(self.eval_freq)
        try:
            get_device(self.device)
        except RuntimeError as exc:
            raise ConfigError(f"device {self.device!r} is not a torch device: {exc}") from None

    def run_dir(self, logdir: str | Path, stream_name: str | None = None) -> Path:
        """``logdir/<stream>/<algo>-<method>/seed<seed>``, the layout ``clrl report`` reads.

        ``stream_name`` saves loading the stream when the caller knows it (a stream file's name is
        the one inside the file, not the file's).
        """
        name = stream_name or make_stream(self.stream, validate=False).name
        return inside(Path(logdir), name, f"{self.algo}-{self.method}", f"seed{self.seed}")


def completed_tasks(run_dir: str | Path) -> int | None:
    """How many tasks the run in ``run_dir`` completed, from its ``results.json`` (``None``: no readable
    results)."""
    try:
        done = json.loads((Path(run_dir) / "results.json").read_text(encoding="utf-8"))["completed_tasks"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return done if isinstance(done, int) else None


SPEC_FILE = "spec.json"
"""The run's :class:`RunSpec`, written by the sweep beside ``results.json``."""
LOG_FILE = "sweep.log"
"""The run's output (stdout and stderr) when a sweep runs it."""


def _learn_without_boundaries(
    spec: RunSpec,
    stream: TaskStream,
    model: Any,
    modules: list[ContinualModule],
    run_dir: Path,
    overwrite: bool,
    resume: bool,
    progress_bar: bool,
) -> TrainResult:
    """A stream that hides its boundaries, in one ``learn`` with :class:`clrl.StreamCallback`: no
    checkpoints, so ``resume`` returns a finished run and starts a half-finished one over."""
    from clrl.stream_callback import StreamCallback  # it builds modules by name from this module

    if spec.eval_freq is not None:
        raise ConfigError(f"stream {stream.name!r} hides its boundaries: eval_freq is not supported on it")
    if resume and completed_tasks(run_dir) == len(stream):
        return TrainResult.from_json(run_dir / "results.json")
    callback = StreamCallback(
        stream,
        modules,
        eval_episodes=spec.eval_episodes,
        seed=spec.seed,
        logdir=run_dir,
        plasticity=spec.plasticity,
        overwrite=overwrite or resume,
    )
    callback._keep = (SPEC_FILE, LOG_FILE)  # a sweep's record of the run and its log, written before it
    model.learn(callback.total_steps, callback=callback, progress_bar=progress_bar)
    assert callback.result is not None
    return callback.result


def run_experiment(
    spec: RunSpec,
    logdir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress_bar: bool = False,
    verbose: bool = False,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Build and train ``spec`` into ``spec.run_dir(logdir)``.

    A continual run is normalised by the single-task run of the same stream, algorithm and seed when
    ``logdir`` holds one (``acc_norm``, ...).

    Args:
        spec: The run.
        logdir: Root of the run directories.
        overwrite: Replace an existing run.
        resume: Continue an existing run from its last completed task (a finished one returns at once).
        progress_bar: Show the progress bar over tasks and steps.
        verbose: Print SB3's training logs.
        log: Where the lines about what is done go.

    Raises:
        ClrlError: Any bad setting (before training), or :class:`~clrl.TrainingError` for a failed task.
    """
    stream = spec.check()
    hp = policy_hyperparameters(spec.method, spec.algo, stream, spec.hyperparameters, spec.method_args)
    if verbose:
        hp.setdefault("verbose", 1)
    run_dir = spec.run_dir(logdir, stream.name)
    common: dict[str, Any] = dict(
        logdir=run_dir,
        seed=spec.seed,
        eval_episodes=spec.eval_episodes,
        eval_freq=spec.eval_freq,
        overwrite=overwrite,
        resume=resume,
        progress_bar=progress_bar,
    )
    log(f"clrl: {stream.name} / {spec.algo} / {spec.method} / seed {spec.seed} -> {run_dir}")

    def factory(i: int) -> Any:
        return make_model(spec.algo, stream, spec.seed, hp, task_index=i, device=spec.device)

    if spec.method == "single-task":
        return train_single_task(factory, stream, **common)
    if spec.method == "ensemble":
        return train_ensemble(factory, stream, **common)
    if spec.method == "multitask":
        return train_multitask(factory(0), stream, plasticity=spec.plasticity, **common)
    if spec.method == "cumulative":
        return train_cumulative(factory(0), stream, plasticity=spec.plasticity, **common)
    modules = make_modules(spec.method, spec.method_args, spec.algo)
    model = factory(0)
    if stream.boundaries == "hidden":
        flags = (overwrite, resume, progress_bar)
        return _learn_without_boundaries(spec, stream, model, modules, run_dir, *flags)
    reference = None
    reference_dir = dataclasses.replace(spec, method="single-task").run_dir(logdir, stream.name)
    if (reference_dir / "results.json").is_file():
        try:
            reference = TrainResult.from_json(reference_dir / "results.json")
        except ConfigError as exc:
            problem: str | None = str(exc)
        else:
            ours = run_config(model, stream, spec.method, spec.seed, spec.eval_episodes, modules)
            problem = reference_mismatch(reference, ours)
        if problem is None:
            log(f"clrl: normalising by the single-task run in {reference_dir}")
        else:
            log(f"clrl: not normalising by the single-task run in {reference_dir}: {problem}")
            reference = None
    vec_env_cls = VEC_ENVS[spec.vec_env]
    return train(
        model,
        stream,
        modules,
        method=spec.method,
        reference=reference,
        vec_env_cls=vec_env_cls,
        plasticity=spec.plasticity,
        **common,
    )
