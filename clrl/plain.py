"""Plain-data form of the objects SB3 pickles into a model's ``data`` entry, so that loading runs no code.

SB3 stores what JSON cannot hold (the policy class, the spaces, schedules, buffer classes, ``train_freq``,
``policy_kwargs`` holding classes) as cloudpickle, and unpickling a file can run anything it holds.
:func:`encode` turns the usual values into nested dicts, lists, tuples, numbers, strings and tensors,
which ``torch.load(weights_only=True)`` reads without running code; :func:`decode` rebuilds them, importing
a named class only from an allowed module (:mod:`clrl.imports`) and only if it is of a kind the field
holds (a policy, a buffer, a torch module or optimiser). A value of another kind (a schedule written as a
``lambda``, an action-noise object, a custom space) raises :class:`Unencodable`: such a checkpoint loads
only with SB3's unpickling, ``clrl.load(..., trusted=True)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit
from stable_baselines3.common.utils import ConstantSchedule, FloatSchedule, LinearSchedule

from clrl.errors import CheckpointError
from clrl.hyperparameters import is_number
from clrl.imports import import_allowed

TAG = "__clrl__"
"""Key that marks an encoded object (a plain dict may not use it)."""

CLASS_BASES: dict[str, tuple[type, ...]] = {
    "policy_class": (BasePolicy,),
    "rollout_buffer_class": (BaseBuffer,),
    "replay_buffer_class": (BaseBuffer,),
}
"""What a class named in a field must be; a class anywhere else (``policy_kwargs``'s ``activation_fn``,
``optimizer_class``, ``features_extractor_class``) must be a torch module or optimiser."""

_OTHER_BASES: tuple[type, ...] = (torch.nn.Module, torch.optim.Optimizer)


class Unencodable(ValueError):
    """A value that has no plain form (only unpickling restores it)."""


def encode(value: Any) -> Any:
    """``value`` as plain data.

    Raises:
        Unencodable: It holds something without a plain form.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, type):
        return {TAG: "class", "name": f"{value.__module__}:{value.__qualname__}"}
    if isinstance(value, TrainFreq):
        return {TAG: "train_freq", "frequency": int(value.frequency), "unit": value.unit.value}
    if isinstance(value, FloatSchedule):
        return {TAG: "float_schedule", "inner": encode(value.value_schedule)}
    if isinstance(value, ConstantSchedule):
        return {TAG: "constant_schedule", "val": encode(value.val)}
    if isinstance(value, LinearSchedule):
        return {TAG: "linear_schedule", "args": [float(value.start), float(value.end), value.end_fraction]}
    if isinstance(value, spaces.Space):
        return _encode_space(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return {TAG: "array", "data": torch.from_numpy(np.ascontiguousarray(value)), "dtype": value.dtype.str}
    if isinstance(value, tuple):
        return tuple(encode(v) for v in value)
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value) or TAG in value:
            raise Unencodable(f"a dict with keys {list(value)!r}")
        return {k: encode(v) for k, v in value.items()}
    raise Unencodable(f"a {type(value).__module__}.{type(value).__qualname__}")


def _encode_space(space: spaces.Space) -> dict[str, Any]:
    if type(space) is spaces.Box:
        return {
            TAG: "box",
            "low": encode(space.low),
            "high": encode(space.high),
            "dtype": np.dtype(space.dtype).str,
        }
    if type(space) is spaces.Discrete:
        return {TAG: "discrete", "n": int(space.n), "start": int(space.start)}
    if type(space) is spaces.MultiDiscrete:
        return {TAG: "multi_discrete", "nvec": encode(space.nvec), "start": encode(space.start)}
    if type(space) is spaces.MultiBinary:
        return {TAG: "multi_binary", "n": encode(np.asarray(space.n))}
    if type(space) is spaces.Dict:
        return {TAG: "dict_space", "spaces": {k: _encode_space(s) for k, s in space.spaces.items()}}
    if type(space) is spaces.Tuple:
        return {TAG: "tuple_space", "spaces": [_encode_space(s) for s in space.spaces]}
    raise Unencodable(f"a {type(space).__qualname__} space")


def decode(value: Any, field: str) -> Any:
    """Rebuild what :func:`encode` made of the entry ``field``.

    Raises:
        CheckpointError: The data is malformed or names a class that is not allowed or not of the field's
            kind.
    """
    try:
        return _decode(value, CLASS_BASES.get(field, _OTHER_BASES))
    except CheckpointError as exc:
        raise CheckpointError(f"entry {field!r}: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError, AssertionError) as exc:
        raise CheckpointError(f"entry {field!r} is malformed: {type(exc).__name__}: {exc}") from None


def _decode(value: Any, bases: tuple[type, ...]) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        items = [_decode(v, bases) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if not isinstance(value, dict):
        raise CheckpointError(f"holds a {type(value).__name__}, which is not plain data")
    kind = value.get(TAG)
    if kind is None:
        return {str(k): _decode(v, bases) for k, v in value.items()}
    if kind == "class":
        return import_class(value["name"], bases, "it")
    if kind == "train_freq":
        return TrainFreq(int(value["frequency"]), TrainFrequencyUnit(value["unit"]))
    if kind == "float_schedule":
        return FloatSchedule(_decode(value["inner"], bases))
    if kind == "constant_schedule":
        return ConstantSchedule(_number(value["val"]))
    if kind == "linear_schedule":
        start, end, fraction = (_number(v) for v in value["args"])
        return LinearSchedule(start, end, fraction)
    if kind == "array":
        if not isinstance(value["data"], torch.Tensor):
            raise CheckpointError("an array entry holds no tensor")
        return value["data"].numpy().astype(np.dtype(value["dtype"]), copy=False)
    return _decode_space(value, kind, bases)


def _decode_space(value: dict[str, Any], kind: str, bases: tuple[type, ...]) -> spaces.Space:
    if kind == "box":
        return spaces.Box(_decode(value["low"], bases), _decode(value["high"], bases), dtype=value["dtype"])
    if kind == "discrete":
        return spaces.Discrete(int(value["n"]), start=int(value["start"]))
    if kind == "multi_discrete":
        return spaces.MultiDiscrete(_decode(value["nvec"], bases), start=_decode(value["start"], bases))
    if kind == "multi_binary":
        return spaces.MultiBinary(_decode(value["n"], bases).tolist())
    if kind == "dict_space":
        return spaces.Dict({str(k): _decode(v, bases) for k, v in value["spaces"].items()})
    if kind == "tuple_space":
        return spaces.Tuple([_decode(v, bases) for v in value["spaces"]])
    raise CheckpointError(f"unknown kind {kind!r}")


def _number(value: Any) -> float:
    if not is_number(value) or not np.isfinite(value):
        raise CheckpointError(f"{value!r} is not a finite number")
    return value


def import_class(name: Any, bases: tuple[type, ...], where: str = "checkpoint") -> type:
    """The class ``name`` (``module:Class``) names, if it is a subclass of one of ``bases`` in an allowed
    module (so a file cannot make clrl build any other class).

    Raises:
        CheckpointError: It is not, or it cannot be imported (the message starts with ``where``).
    """
    if not isinstance(name, str) or ":" not in name:
        raise CheckpointError(f"{where} names {name!r}, which is not a 'module:Class' name")
    module_name, _, attr = name.partition(":")
    try:
        obj: Any = import_allowed(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except PermissionError as exc:
        raise CheckpointError(f"{where} names {name!r}: {exc}") from None
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"{where} names {name!r}, which cannot be imported: {exc}") from None
    if not isinstance(obj, type) or not issubclass(obj, bases):
        kinds = " or ".join(b.__name__ for b in bases)
        raise CheckpointError(f"{where} names {name!r}, which is not a {kinds} class")
    return obj
