"""clrl: continual reinforcement learning for stable-baselines3 and Gymnasium.

A :class:`TaskStream` of Gymnasium task variants is learned one task after another by an SB3 model;
continual modules (:class:`EWC`, :class:`OnlineEWC`, :class:`MAS`, :class:`SI`, :class:`L2`, ...) plug into
the model as callbacks; :func:`train` fills the return matrix ``R[i, j]`` and logs everything to
TensorBoard.
"""

from clrl import metrics
from clrl.algorithms import ALGORITHMS, get_algorithm
from clrl.checkpoint import load, save
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
from clrl.modules import (
    AGEM,
    CLEAR,
    EWC,
    L2,
    MAS,
    SI,
    ContinualModule,
    MultiHead,
    MultiHeadActorCriticPolicy,
    MultiHeadDQNPolicy,
    MultiHeadSACPolicy,
    MultiHeadTD3Policy,
    OnlineEWC,
    PackNet,
    ParamGroup,
    ProgressiveActorCriticPolicy,
    ProgressiveColumns,
    ProgressiveDQNPolicy,
    ProgressiveSACPolicy,
    ProgressiveTD3Policy,
    Replay,
    TaskInfo,
    multihead_policy,
    progressive_policy,
)
from clrl.runner import TrainResult, train, train_multitask, train_single_task
from clrl.streams import Task, TaskStream, WrapperSpec, builtin_streams, load_stream, make_stream

__version__ = "0.1.0"

__all__ = [
    "AGEM",
    "ALGORITHMS",
    "CLEAR",
    "EWC",
    "L2",
    "MAS",
    "SI",
    "CheckpointError",
    "ClrlError",
    "ConfigError",
    "ContinualModule",
    "Evaluator",
    "MultiHead",
    "MultiHeadActorCriticPolicy",
    "MultiHeadDQNPolicy",
    "MultiHeadSACPolicy",
    "MultiHeadTD3Policy",
    "NumericalError",
    "OnlineEWC",
    "PackNet",
    "ParamGroup",
    "ProgressiveActorCriticPolicy",
    "ProgressiveColumns",
    "ProgressiveDQNPolicy",
    "ProgressiveSACPolicy",
    "ProgressiveTD3Policy",
    "Replay",
    "RunExistsError",
    "StreamError",
    "Task",
    "TaskInfo",
    "TaskStream",
    "TrainResult",
    "TrainingError",
    "WrapperSpec",
    "__version__",
    "builtin_streams",
    "get_algorithm",
    "load",
    "load_stream",
    "make_stream",
    "metrics",
    "multihead_policy",
    "progressive_policy",
    "save",
    "train",
    "train_multitask",
    "train_single_task",
]
