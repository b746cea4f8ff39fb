"""clrl: continual reinforcement learning for stable-baselines3 and Gymnasium.

A :class:`TaskStream` of Gymnasium task variants is learned one task after another by an SB3 model;
continual modules (:class:`EWC`, :class:`OnlineEWC`, :class:`MAS`, :class:`SI`, :class:`L2`, ...) plug into
the model as callbacks; :func:`train` fills the return matrix ``R[i, j]`` and logs everything to
TensorBoard; :func:`sweep` runs grids of runs on a process pool or Ray, :func:`write_report` compares them.

In your own SB3 code: :func:`training_task` makes any number of ``learn`` calls one task,
:class:`ContinualEvalCallback` evaluates every task as the return matrix does,
:class:`ContinualCheckpointCallback` checkpoints with the modules' state, :class:`StreamCallback` learns a
whole stream inside one ``learn``, and :func:`export_policy` writes the evaluated policy as a plain SB3
zip. Importing clrl registers every built-in task as a Gymnasium id ``clrl/<stream>.<task>-v0``.
"""

from clrl import metrics, plasticity
from clrl.algorithms import ALGORITHMS, get_algorithm
from clrl.boundaries import training_task
from clrl.callbacks import ContinualCheckpointCallback, ContinualEvalCallback
from clrl.checkpoint import export_policy, load, load_replay_buffer, save, save_replay_buffer
from clrl.errors import (
    CheckpointError,
    ClrlError,
    ConfigError,
    NumericalError,
    RunExistsError,
    StreamError,
    TrainingError,
)
from clrl.evaluation import Evaluator
from clrl.experiment import RunSpec, run_experiment
from clrl.imports import allow_imports
from clrl.modules import (
    AGEM,
    CLEAR,
    CLSER,
    EWC,
    GEM,
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
    DualNet,
    DualNetExtractor,
    GDumb,
    GenerativeReplay,
    InjectionActorCriticPolicy,
    InjectionDQNPolicy,
    InjectionSACPolicy,
    InjectionTD3Policy,
    L2Init,
    LatentReplay,
    LwF,
    MultiHead,
    MultiHeadActorCriticPolicy,
    MultiHeadDQNPolicy,
    MultiHeadSACPolicy,
    MultiHeadTD3Policy,
    Net2NetGrowth,
    OnlineEWC,
    PackNet,
    ParamGroup,
    ParsevalRegularisation,
    PlasticityInjection,
    ProgressAndCompress,
    ProgressiveActorCriticPolicy,
    ProgressiveColumns,
    ProgressiveDQNPolicy,
    ProgressiveSACPolicy,
    ProgressiveTD3Policy,
    ReDo,
    Replay,
    Reset,
    ResetOptimizer,
    RWalk,
    ShrinkAndPerturb,
    TaskInfo,
    injection_policy,
    multihead_policy,
    progressive_policy,
)
from clrl.plasticity import PlasticityMonitor
from clrl.registration import register_streams
from clrl.reports import write_report
from clrl.results import TrainResult
from clrl.runner import train, train_cumulative, train_ensemble, train_multitask, train_single_task
from clrl.stream_callback import StreamCallback
from clrl.streams import Task, TaskStream, WrapperSpec, builtin_streams, load_stream, make_stream
from clrl.sweeps import SweepResult, grid, load_sweep, sweep

__version__ = "0.1.0"

register_streams()

__all__ = [
    "AGEM",
    "ALGORITHMS",
    "CLEAR",
    "CLSER",
    "EWC",
    "GEM",
    "L2",
    "MAS",
    "MIR",
    "SCP",
    "SI",
    "BehaviourCloning",
    "BoundaryDetector",
    "CheckpointError",
    "ClonEx",
    "ClrlError",
    "ConfigError",
    "ContinualBackprop",
    "ContinualCheckpointCallback",
    "ContinualEvalCallback",
    "ContinualModule",
    "DualNet",
    "DualNetExtractor",
    "Evaluator",
    "GDumb",
    "GenerativeReplay",
    "InjectionActorCriticPolicy",
    "InjectionDQNPolicy",
    "InjectionSACPolicy",
    "InjectionTD3Policy",
    "L2Init",
    "LatentReplay",
    "LwF",
    "MultiHead",
    "MultiHeadActorCriticPolicy",
    "MultiHeadDQNPolicy",
    "MultiHeadSACPolicy",
    "MultiHeadTD3Policy",
    "Net2NetGrowth",
    "NumericalError",
    "OnlineEWC",
    "PackNet",
    "ParamGroup",
    "ParsevalRegularisation",
    "PlasticityInjection",
    "PlasticityMonitor",
    "ProgressAndCompress",
    "ProgressiveActorCriticPolicy",
    "ProgressiveColumns",
    "ProgressiveDQNPolicy",
    "ProgressiveSACPolicy",
    "ProgressiveTD3Policy",
    "RWalk",
    "ReDo",
    "Replay",
    "Reset",
    "ResetOptimizer",
    "RunExistsError",
    "RunSpec",
    "ShrinkAndPerturb",
    "StreamCallback",
    "StreamError",
    "SweepResult",
    "Task",
    "TaskInfo",
    "TaskStream",
    "TrainResult",
    "TrainingError",
    "WrapperSpec",
    "__version__",
    "allow_imports",
    "builtin_streams",
    "export_policy",
    "get_algorithm",
    "grid",
    "injection_policy",
    "load",
    "load_replay_buffer",
    "load_stream",
    "load_sweep",
    "make_stream",
    "metrics",
    "multihead_policy",
    "plasticity",
    "progressive_policy",
    "run_experiment",
    "save",
    "save_replay_buffer",
    "sweep",
    "train",
    "train_cumulative",
    "train_ensemble",
    "train_multitask",
    "train_single_task",
    "training_task",
    "write_report",
]
