"""Continual-learning modules: one class per method, one file per class."""

from clrl.modules.base import ContinualModule, ParamGroup, TaskInfo, add_to_grad
from clrl.modules.l2 import L2

__all__ = ["L2", "ContinualModule", "ParamGroup", "TaskInfo", "add_to_grad"]
