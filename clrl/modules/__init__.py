"""Continual-learning modules: one class per method, one file per class."""

from clrl.modules.agem import AGEM
from clrl.modules.base import ContinualModule, ParamGroup, TaskInfo, add_to_grad
from clrl.modules.behaviour_cloning import BehaviourCloning
from clrl.modules.boundary_detector import BoundaryDetector
from clrl.modules.clear import CLEAR
from clrl.modules.clonex import ClonEx
from clrl.modules.clser import CLSER
from clrl.modules.continual_backprop import ContinualBackprop
from clrl.modules.cpg import CPG
from clrl.modules.cwr import AR1, CWRStar
from clrl.modules.dualnet import DualNet, DualNetExtractor
from clrl.modules.ewc import EWC
from clrl.modules.gdumb import GDumb
from clrl.modules.gem import GEM
from clrl.modules.generative_replay import GenerativeReplay
from clrl.modules.hat import (
    HAT,
    HATActorCriticPolicy,
    HATDQNPolicy,
    HATSACPolicy,
    HATTD3Policy,
    hat_policy,
)
from clrl.modules.hypernetwork import (
    HyperActorCriticPolicy,
    HyperDQNPolicy,
    HyperNetwork,
    HyperSACPolicy,
    HyperTD3Policy,
    hypernetwork_policy,
)
from clrl.modules.l2 import L2
from clrl.modules.l2_init import L2Init
from clrl.modules.latent_replay import LatentReplay
from clrl.modules.lwf import LwF
from clrl.modules.mas import MAS
from clrl.modules.masks import (
    MaskedActorCriticPolicy,
    MaskedDQNPolicy,
    MaskedSACPolicy,
    MaskedTD3Policy,
    masked_policy,
)
from clrl.modules.mir import MIR
from clrl.modules.multihead import (
    MultiHead,
    MultiHeadActorCriticPolicy,
    MultiHeadDQNPolicy,
    MultiHeadSACPolicy,
    MultiHeadTD3Policy,
    multihead_policy,
)
from clrl.modules.net2net import Net2NetGrowth
from clrl.modules.online_ewc import OnlineEWC
from clrl.modules.packnet import PackNet
from clrl.modules.parseval import ParsevalRegularisation
from clrl.modules.penalty import ImportancePenalty, QuadraticPenalty
from clrl.modules.piggyback import Piggyback
from clrl.modules.plasticity_injection import (
    InjectionActorCriticPolicy,
    InjectionDQNPolicy,
    InjectionSACPolicy,
    InjectionTD3Policy,
    PlasticityInjection,
    injection_policy,
)
from clrl.modules.progress_compress import ProgressAndCompress
from clrl.modules.progressive import (
    ProgressiveActorCriticPolicy,
    ProgressiveColumns,
    ProgressiveDQNPolicy,
    ProgressiveSACPolicy,
    ProgressiveTD3Policy,
    progressive_policy,
)
from clrl.modules.redo import ReDo
from clrl.modules.replay import Replay
from clrl.modules.reset import Reset
from clrl.modules.reset_optimizer import ResetOptimizer
from clrl.modules.rwalk import RWalk
from clrl.modules.scp import SCP
from clrl.modules.shrink_and_perturb import ShrinkAndPerturb
from clrl.modules.si import SI
from clrl.modules.supsup import SupSup

__all__ = [
    "AGEM",
    "AR1",
    "CLEAR",
    "CLSER",
    "CPG",
    "EWC",
    "GEM",
    "HAT",
    "L2",
    "MAS",
    "MIR",
    "SCP",
    "SI",
    "BehaviourCloning",
    "BoundaryDetector",
    "CWRStar",
    "ClonEx",
    "ContinualBackprop",
    "ContinualModule",
    "DualNet",
    "DualNetExtractor",
    "GDumb",
    "GenerativeReplay",
    "HATActorCriticPolicy",
    "HATDQNPolicy",
    "HATSACPolicy",
    "HATTD3Policy",
    "HyperActorCriticPolicy",
    "HyperDQNPolicy",
    "HyperNetwork",
    "HyperSACPolicy",
    "HyperTD3Policy",
    "ImportancePenalty",
    "InjectionActorCriticPolicy",
    "InjectionDQNPolicy",
    "InjectionSACPolicy",
    "InjectionTD3Policy",
    "L2Init",
    "LatentReplay",
    "LwF",
    "MaskedActorCriticPolicy",
    "MaskedDQNPolicy",
    "MaskedSACPolicy",
    "MaskedTD3Policy",
    "MultiHead",
    "MultiHeadActorCriticPolicy",
    "MultiHeadDQNPolicy",
    "MultiHeadSACPolicy",
    "MultiHeadTD3Policy",
    "Net2NetGrowth",
    "OnlineEWC",
    "PackNet",
    "ParamGroup",
    "ParsevalRegularisation",
    "Piggyback",
    "PlasticityInjection",
    "ProgressAndCompress",
    "ProgressiveActorCriticPolicy",
    "ProgressiveColumns",
    "ProgressiveDQNPolicy",
    "ProgressiveSACPolicy",
    "ProgressiveTD3Policy",
    "QuadraticPenalty",
    "RWalk",
    "ReDo",
    "Replay",
    "Reset",
    "ResetOptimizer",
    "ShrinkAndPerturb",
    "SupSup",
    "TaskInfo",
    "add_to_grad",
    "hat_policy",
    "hypernetwork_policy",
    "injection_policy",
    "masked_policy",
    "multihead_policy",
    "progressive_policy",
]
