"""Save and load an SB3 model together with its continual modules, in SB3's own zip file.

The modules' configuration and state go into the zip as one extra entry, ``clrl.pt``. SB3 loads only the
``data`` entry and ``*.pth`` files, so the zip stays a valid SB3 model (``PPO.load`` still reads it), and
:func:`load` gives back the model and rebuilt modules.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import math
import os
import random
import zipfile
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.type_aliases import GymEnv
from stable_baselines3.common.utils import get_device

from clrl.boundaries import check_modules, check_task_index, open_task_index
from clrl.errors import CheckpointError, ConfigError
from clrl.evaluation import evaluated
from clrl.modules.base import ContinualModule
from clrl.modules.multihead import task_router
from clrl.modules.net2net import mlp_widths
from clrl.plain import Unencodable, decode, encode, import_class

ENTRY = "clrl.pt"
FORMAT_VERSION = 2

# Entries SB3 pickles that a loaded model rebuilds itself (``_setup_model`` makes the schedules; the next
# ``learn`` resets the environment and with it the last observation) or that clrl keeps as plain data
# (the episode statistics): they never need unpickling.
_REBUILT = frozenset(
    {"_last_obs", "_last_original_obs", "_last_episode_starts", "lr_schedule", "exploration_schedule"}
)
_EPISODES = ("ep_info_buffer", "ep_success_buffer")
# SB3's counters of where training stands: a checkpoint must hold them, as non-negative integers.
_COUNTERS = ("num_timesteps", "_n_updates", "_episode_num")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _import(qualname: Any, base: type) -> type:
    """The class ``qualname`` names, if it is a ``base`` (an algorithm or a continual module) of an allowed
    module: a checkpoint cannot make clrl build any other class."""
    return import_class(qualname, (base,))


def _zip_path(path: str | Path) -> Path:
    path = Path(path)
    return path if path.suffix == ".zip" else path.with_name(path.name + ".zip")


def save(
    model: BaseAlgorithm,
    path: str | Path,
    modules: Sequence[ContinualModule] = (),
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` with SB3's ``model.save`` and add the modules' configuration and state.

    Args:
        model: The SB3 model.
        path: Target file; ``.zip`` is appended when missing, as SB3 does.
        modules: Modules whose state is stored (anchors, importances, ...).
        metadata: Plain data stored beside them (e.g. the stream and task index).

    Returns:
        The path written. The file appears complete or not at all: it is written under a temporary name in
        the same folder and renamed.

    The file is a valid SB3 zip: ``PPO.load`` (the algorithm's own ``load``) reads it and gives the
    *trained* model without any module state. That is not always the policy the return matrix evaluated
    (CLSER's stable copy, Progress & Compress's knowledge base, PackNet's per-task masks, a multi-head or
    progressive policy's head chosen by task rather than by the observation): :func:`export_policy`
    writes that one.
    """
    path = _zip_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.zip")
    try:
        _save(model, tmp, modules, metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _save(
    model: BaseAlgorithm, path: Path, modules: Sequence[ContinualModule], metadata: dict[str, Any] | None
) -> None:
    model.save(path)
    payload = {
        "format": FORMAT_VERSION,
        "algorithm": _qualname(type(model)),
        "modules": [
            {
                "class": _qualname(type(m)),
                "config": m.get_config(),
                "tasks_seen": m.tasks_seen,
                "state": m.state_dict(),
            }
            for m in modules
        ],
        "metadata": metadata or {},
        "sb3": _plain_entries(model, path),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(ENTRY, buffer.getvalue())


def _serialized(path: Path) -> set[str]:
    """The entries of SB3's ``data`` that it pickled (the rest is plain JSON)."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except KeyError:
        return set()  # SB3 allows a zip without data; then nothing is unpickled either
    except (ValueError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{str(path)!r}: SB3's data entry is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{str(path)!r}: SB3's data entry is not a JSON object")
    return {k for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v}


def _plain_entries(model: BaseAlgorithm, path: Path) -> dict[str, Any]:
    """Plain forms of what SB3 pickled into ``path``'s data entry, and the names of those without one."""
    entries, unencodable = {}, {}
    for key in sorted(_serialized(path) - _REBUILT - set(_EPISODES)):
        try:
            entries[key] = encode(model.__dict__[key])
        except (Unencodable, KeyError) as exc:
            unencodable[key] = str(exc)
    episodes = {}
    for name in _EPISODES:
        buffer = getattr(model, name, None)
        if buffer is not None:
            try:
                episodes[name] = {"maxlen": buffer.maxlen, "items": encode(list(buffer))}
            except Unencodable as exc:
                unencodable[name] = str(exc)
    return {"entries": entries, "unencodable": unencodable, "episodes": episodes}


def export_policy(
    model: BaseAlgorithm,
    modules: Sequence[ContinualModule] = (),
    path: str | Path = "policy.zip",
    task: int | None = None,
) -> Path:
    """Write ``model`` as a plain SB3 zip that acts exactly as the policy the return matrix evaluated on
    ``task``.

    :func:`save` keeps the trained model and its modules, to go on training. What a module evaluates can
    differ from the trained weights: CLSER evaluates its stable copy, Progress & Compress its knowledge
    base, PackNet task ``j`` with the weights of tasks ``0..j`` only, multi-head and progressive policies
    the task's head or column. ``PPO.load`` of a :func:`save` file gives the trained weights, routed by the
    observation's task id. This function enters each module's evaluation state for ``task``, as the
    evaluator does, and saves the model in it: masked or swapped weights as they are, and, for multi-head
    and progressive policies, the head or column fixed in the saved policy's arguments (``task``; loading
    those needs ``clrl`` importable, their policy classes being clrl's). Then ``Algorithm.load(path)``
    acts as evaluated, with no module. The model itself is left as it was.

    Args:
        model: The trained model.
        modules: Its continual modules.
        path: Target file (``.zip`` appended when missing); written under a temporary name and renamed.
        task: The task whose evaluated policy is written (default: the task being trained, else the last
            one trained).

    Returns:
        The path written.
    """
    modules = check_modules(modules)
    for module in modules:
        module._claim(model)  # refuses modules that learned with another model
    current = open_task_index(modules)
    if current is None:
        current = max([m.tasks_seen - 1 for m in modules] + [0])
    index = current if task is None else check_task_index(task)
    router = task_router(model)
    if router is not None and index >= router.n_tasks:
        raise ConfigError(f"the policy has {router.n_tasks} heads or columns, no task {index}")
    kwargs = model.policy_kwargs
    with evaluated(modules, current) as select:
        select(index)
        if router is not None:
            fixed = router.forced if router.forced is not None else index
            model.policy_kwargs = {**kwargs, "task": fixed}
        try:
            return save(model, path, metadata={"exported_task": index})
        finally:
            model.policy_kwargs = kwargs


def read_payload(path: str | Path) -> dict[str, Any]:
    """Read clrl's entry of a checkpoint without loading the model.

    Raises:
        CheckpointError: The file is missing, not a zip, or has no readable clrl entry.
    """
    path = _zip_path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            raw = archive.read(ENTRY)
    except FileNotFoundError as exc:
        raise CheckpointError(f"no checkpoint at {str(path)!r}") from exc
    except KeyError as exc:
        raise CheckpointError(f"{str(path)!r} is an SB3 model without clrl state (no {ENTRY} entry)") from exc
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable checkpoint: {exc}") from exc
    try:
        payload = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise CheckpointError(f"{str(path)!r}: clrl state is corrupt: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{str(path)!r}: unsupported clrl checkpoint format {payload.get('format')!r}")
    return payload


def load(
    path: str | Path,
    env: GymEnv | None = None,
    device: str | torch.device = "auto",
    trusted: bool = False,
    **kwargs: Any,
) -> tuple[BaseAlgorithm, list[ContinualModule]]:
    """Load a model saved by :func:`save` and rebuild its modules with their state.

    By default nothing in the file is unpickled, so opening a checkpoint from anywhere runs no code: the
    parameters are read as tensors only (``torch.load(weights_only=True)``), SB3's counters and settings
    from JSON, and what SB3 pickles (the policy class, spaces, schedules, buffer classes,
    ``policy_kwargs`` with classes) from the plain copy :func:`save` keeps beside it. Classes are imported
    only from allowed modules (:func:`clrl.allow_imports`) and only if of the kind the field holds. The
    loaded model differs from ``Algorithm.load``'s in one way: it holds no last observation, so the next
    ``learn`` starts with an environment reset (pass ``reset_num_timesteps=False`` to keep the counters).

    Args:
        path: The checkpoint.
        env: Environment for the loaded model (as in SB3's ``load``).
        device: Device of the model.
        trusted: Load with SB3's own unpickling instead. Needed for a checkpoint holding values without a
            plain form (a schedule that is a ``lambda``, an action-noise object, a custom space), and for
            an SB3 zip that :func:`save` did not write. Unpickling runs whatever the file holds: only for
            files you trust.
        **kwargs: Passed to the algorithm's ``load`` (``custom_objects`` replaces entries either way).

    Returns:
        The model and its modules, in the order they were saved. Pass the modules to the next ``learn``.

    Raises:
        CheckpointError: The file is missing or corrupt, names classes that are not allowed or cannot be
            imported, or (unless ``trusted``) holds values that only unpickling restores.
    """
    payload = read_payload(path)
    zip_path = _zip_path(path)
    algorithm = _import(payload["algorithm"], BaseAlgorithm)
    if not trusted:
        kwargs["custom_objects"] = {**_safe_objects(zip_path, payload), **kwargs.get("custom_objects", {})}
    try:
        model = algorithm.load(zip_path, env=env, device=device, **kwargs)  # type: ignore[attr-defined]
    except CheckpointError:
        raise
    except Exception as exc:
        raise _unreadable(path, "load", exc) from exc
    modules = []
    for entry in payload["modules"]:
        cls = _import(entry["class"], ContinualModule)
        module = cls.from_config(entry["config"])  # type: ignore[attr-defined]
        module.load_state_dict(entry["state"])
        module.tasks_seen = entry["tasks_seen"]
        module.bind(model)
        modules.append(module)
    return model, modules


def _unreadable(path: str | Path, what: str, exc: Exception) -> CheckpointError:
    return CheckpointError(f"{str(path)!r}: cannot {what} the SB3 model: {type(exc).__name__}: {exc}")


def _safe_objects(path: Path, payload: dict[str, Any]) -> dict[str, Any]:
    """A value for every entry SB3 pickled into ``path``, from clrl's plain copy (SB3's ``custom_objects``:
    SB3 then unpickles none of them)."""
    sb3 = payload.get("sb3")
    if not isinstance(sb3, dict):
        raise CheckpointError(f"{str(path)!r}: clrl state has no plain copy of SB3's entries")
    entries, unencodable = sb3.get("entries", {}), sb3.get("unencodable", {})
    objects: dict[str, Any] = {}
    for key in sorted(_serialized(path)):
        if key in _REBUILT:
            objects[key] = None
        elif key in _EPISODES:
            objects[key] = _episodes(path, sb3, key)
        elif key in entries:
            objects[key] = decode(entries[key], key)
        elif key in unencodable:
            raise CheckpointError(
                f"{str(path)!r} holds {key!r} ({unencodable[key]}), which only unpickling restores; "
                "clrl.load(..., trusted=True) unpickles it: only for a file you trust"
            )
        else:
            raise CheckpointError(
                f"{str(path)!r}: SB3's data entry holds a pickled {key!r} that clrl did not write; "
                "not unpickled (clrl.load(..., trusted=True) would, for a file you trust)"
            )
    return objects


def _episodes(path: Path, sb3: dict[str, Any], name: str) -> deque[Any] | None:
    """The episode statistics ``name`` from clrl's plain copy, checked."""
    saved = sb3.get("episodes", {}).get(name)
    if saved is None:
        return None
    maxlen, items = saved.get("maxlen"), saved.get("items")
    number = (int, float)

    def valid(item: Any) -> bool:
        if name == "ep_success_buffer":
            return isinstance(item, number)
        return isinstance(item, dict) and all(isinstance(k, str) for k in item)

    if not (maxlen is None or (isinstance(maxlen, int) and maxlen > 0)) or not isinstance(items, list):
        raise CheckpointError(f"{str(path)!r}: field {name!r} is damaged")
    if not all(valid(item) for item in items):
        raise CheckpointError(f"{str(path)!r}: field {name!r} holds entries of the wrong type")
    return deque(items, maxlen=maxlen)


# Attributes of a saved model that describe how it was built rather than where training stands: a model
# restored in place keeps its own (they match, or the stream and configuration checks have failed first).
_KEEP_OWN = frozenset(
    {
        "policy_class",
        "policy_kwargs",
        "observation_space",
        "action_space",
        "n_envs",
        "device",
        "verbose",
        "tensorboard_log",
        "_custom_logger",
        "seed",
        "lr_schedule",
        "_last_obs",
        "_last_original_obs",
        "_last_episode_starts",
    }
)


def restore(
    path: str | Path,
    model: BaseAlgorithm,
    modules: Sequence[ContinualModule] = (),
    validate: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save` into an existing model and modules, in place.

    What :func:`load` rebuilds, this puts into objects the caller already holds (``clrl.train(...,
    resume=True)`` uses it): the network and optimiser parameters, SB3's counters (``num_timesteps``,
    ``_n_updates``, exploration rate, ...), the modules' state, and the random number generators when the
    checkpoint holds them (``metadata["rng"]``, see :func:`rng_state`).

    Args:
        path: The checkpoint.
        model: A model of the algorithm and spaces the checkpoint was saved from, built as that one was. A
            network a module widened after the build (:class:`clrl.Net2NetGrowth`, a growing
            :class:`clrl.CPG`) is rebuilt at the checkpoint's widths, as SB3's ``load`` builds it (the
            replay buffer is kept; the random generators are reseeded, then restored when the checkpoint
            holds their state).
        modules: Modules of the same classes and configuration, in the same order.
        validate: Called with the checkpoint's metadata before anything is changed; raise to refuse it.

    Returns:
        The checkpoint's metadata.

    Raises:
        CheckpointError: The file is missing or corrupt, or was saved from another algorithm or other modules.
    """
    payload = read_payload(path)
    if validate is not None:
        validate(payload["metadata"])
    if payload["algorithm"] != _qualname(type(model)):
        raise CheckpointError(
            f"{str(path)!r} holds a {payload['algorithm']} model, not a {_qualname(type(model))} one"
        )
    saved = [(entry["class"], entry["config"]) for entry in payload["modules"]]
    ours = [(_qualname(type(m)), m.get_config()) for m in modules]
    if saved != ours:
        raise CheckpointError(f"{str(path)!r} holds modules {saved}, but the run has {ours}")
    zip_path = _zip_path(path)
    # SB3's reader, told to keep every pickled entry as None: it unpickles nothing (the model keeps its own
    # classes, spaces and schedules, and the episode statistics come from clrl's plain copy).
    skipped = dict.fromkeys(_serialized(zip_path))
    try:
        data, params, variables = load_from_zip_file(
            zip_path, custom_objects=skipped, device=get_device(model.device)
        )
    except Exception as exc:
        raise _unreadable(path, "read", exc) from exc
    if data is None or not params:
        raise CheckpointError(f"{str(path)!r}: the SB3 model has no data or no parameters")
    _grow_to(path, data, skipped, payload, params, model)
    _check_network(path, params, model)
    fields = _checked_fields(path, data, skipped, model)
    targets = _checked_variables(path, variables or {}, model)
    episodes = {name: _episodes(zip_path, payload.get("sb3", {}), name) for name in _EPISODES}
    try:
        model.set_parameters(params, exact_match=True, device=model.device)
    except Exception as exc:
        raise _unreadable(path, "restore", exc) from exc
    for key, value in fields.items():
        setattr(model, key, value)
    for target, value in targets:
        target.data = value.data
    for name, episode_buffer in episodes.items():
        if episode_buffer is not None:
            setattr(model, name, episode_buffer)
    for module, entry in zip(modules, payload["modules"], strict=True):
        module.load_state_dict(entry["state"])
        module.tasks_seen = entry["tasks_seen"]
        module.bind(model)
    metadata: dict[str, Any] = payload["metadata"]
    if "rng" in metadata:
        set_rng_state(model, metadata["rng"])
    return metadata


def _grow_to(
    path: str | Path,
    data: dict[str, Any],
    skipped: dict[str, None],
    payload: dict[str, Any],
    params: dict[str, Any],
    model: BaseAlgorithm,
) -> None:
    """Rebuild ``model``'s networks at the widths the checkpoint's ``net_arch`` records when a module
    widened them after the model was built (:class:`clrl.Net2NetGrowth`, a growing :class:`clrl.CPG`), as
    SB3's ``load`` builds them from it (``_setup_model``, which keeps the replay buffer and reseeds; the
    caller restores the random state afterwards). Nothing happens when the parameters' shapes already match,
    or when the checkpoint's network is not a widening of the model's (other settings, other depths, a
    narrower layer, more than the file holds): then :func:`_check_network` refuses it."""
    saved_policy = params.get("policy")
    if not isinstance(saved_policy, dict) or _mismatch(saved_policy, model) is None:
        return
    saved: Any = data.get("policy_kwargs")
    if "policy_kwargs" in skipped:  # SB3 pickled it: clrl's plain copy
        sb3 = payload.get("sb3")
        entries = sb3.get("entries") if isinstance(sb3, dict) else None
        entry = entries.get("policy_kwargs") if isinstance(entries, dict) else None
        saved = None if entry is None else decode(entry, "policy_kwargs")
    current = dict(model.policy_kwargs)
    before = current.get("net_arch")
    if before is None:  # SB3's default widths: the ones the model has
        try:
            before = mlp_widths(model)
        except KeyError:
            return
    if not isinstance(saved, dict) or not _widened(before, saved.get("net_arch")):
        return
    # The hidden layers the widths ask for must fit in the parameters the file holds: a file cannot make
    # clrl build a network larger than what it stores.
    widths = _widths(saved["net_arch"]) or {}
    hidden = sum(sum(a * b for a, b in itertools.pairwise(w)) + sum(w) for w in widths.values())
    if hidden > sum(v.numel() for v in saved_policy.values() if isinstance(v, torch.Tensor)):
        return
    others = [{k: _listed(v) for k, v in kwargs.items() if k != "net_arch"} for kwargs in (saved, current)]
    if others[0] != others[1]:
        return
    model.policy_kwargs = {**current, "net_arch": copy.deepcopy(saved["net_arch"])}
    model._setup_model()


def _check_network(path: str | Path, params: dict[str, Any], model: BaseAlgorithm) -> None:
    """Refuse, in one line and before anything is loaded, a checkpoint whose policy has other parameters or
    shapes than ``model``'s."""
    saved = params.get("policy")
    if not isinstance(saved, dict):
        return  # SB3's loader names what is missing
    mismatch = _mismatch(saved, model)
    if mismatch is not None:
        raise CheckpointError(
            f"{str(path)!r} holds another network than the model's: {mismatch}; build the model as the run "
            "that saved it was built"
        )


def _mismatch(saved: dict[str, Any], model: BaseAlgorithm) -> str | None:
    """The first parameter (by name) in which the checkpoint's policy state ``saved`` and ``model``'s policy
    differ, said in words; ``None`` when every one has the model's shape."""
    ours = model.policy.state_dict()
    for name in sorted(set(ours) | set(saved)):
        value, mine = saved.get(name), ours.get(name)
        if mine is None:
            what = "the model has no such parameter"
        elif not isinstance(mine, torch.Tensor):
            continue  # a module's extra state: torch's loader checks it
        elif not isinstance(value, torch.Tensor):
            what = "the checkpoint lacks it" if value is None else "the checkpoint's is not a tensor"
        elif value.shape != mine.shape:
            what = f"the checkpoint has shape {tuple(value.shape)} where the model has {tuple(mine.shape)}"
        else:
            continue
        return f"for {name!r} {what}"
    return None


def _listed(value: Any) -> Any:
    """``value`` with its tuples as lists, at any depth (what SB3's JSON copy of it holds)."""
    if isinstance(value, tuple | list):
        return [_listed(v) for v in value]
    if isinstance(value, dict):
        return {k: _listed(v) for k, v in value.items()}
    return value


def _widths(net_arch: Any) -> dict[str, list[int]] | None:
    """``net_arch`` as widths per network (a list is every network's), or ``None`` if it is neither form."""
    if isinstance(net_arch, list):
        return {"*": net_arch} if all(type(w) is int for w in net_arch) else None
    if isinstance(net_arch, dict) and all(
        isinstance(v, list) and all(type(w) is int for w in v) for v in net_arch.values()
    ):
        return {str(k): v for k, v in net_arch.items()}
    return None


def _widened(before: Any, after: Any) -> bool:
    """Whether ``after`` is ``before`` with some layers wider: the same networks and depths, no layer
    narrower, at least one wider."""
    old, new = _widths(before), _widths(after)
    if old is None or new is None or old == new:
        return False
    if "*" in old and "*" not in new:
        old = dict.fromkeys(new, old["*"])
    if old.keys() != new.keys():
        return False
    pairs = [(o, n) for key in new for o, n in zip(old[key], new[key], strict=False)]
    same_depth = all(len(old[key]) == len(new[key]) for key in new)
    return same_depth and all(n >= o for o, n in pairs) and any(n > o for o, n in pairs)


def _checked_fields(
    path: str | Path, data: dict[str, Any], skipped: dict[str, None], model: BaseAlgorithm
) -> dict[str, Any]:
    """The plain entries of SB3's data that say where training stands, each of the type the model's own
    attribute has (a number for a number, a string for a string, ...); the counters must be there."""
    missing = [c for c in _COUNTERS if c not in data]
    if missing:
        raise CheckpointError(f"{str(path)!r}: SB3's data entry lacks {missing}")
    fields = {}
    for key, value in data.items():
        if key in _KEEP_OWN or key in skipped or key not in model.__dict__:
            continue
        current = model.__dict__[key]
        if current is not None and not isinstance(current, (bool, int, float, str)):
            continue  # containers and objects: the model builds its own from its configuration
        if not _same_kind(value, current) or (key in _COUNTERS and value < 0):
            raise CheckpointError(
                f"{str(path)!r}: field {key!r} is {value!r}, "
                f"not {_kind(current)} like the model's {current!r}"
            )
        fields[key] = value
    return fields


def _kind(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return "None" if value is None else "a bool"
    if isinstance(value, int):
        return "an integer"
    return "a finite number" if isinstance(value, float) else f"a {type(value).__name__}"


def _same_kind(value: Any, current: Any) -> bool:
    if current is None or isinstance(current, (bool, str)):
        return type(value) is type(current)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) if isinstance(current, int) else math.isfinite(value)


def _checked_variables(
    path: str | Path, variables: dict[str, Any], model: BaseAlgorithm
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """SB3's extra torch variables (SAC's ``log_ent_coef``) paired with the model's, shapes checked."""
    pairs = []
    for name, value in variables.items():
        if value is None:
            continue
        target: Any = model
        try:
            for part in name.split("."):
                target = getattr(target, part)
        except AttributeError:
            raise CheckpointError(f"{str(path)!r}: torch variable {name!r} is not the model's") from None
        if not isinstance(value, torch.Tensor) or not isinstance(target, torch.Tensor):
            raise CheckpointError(f"{str(path)!r}: torch variable {name!r} is not a tensor")
        if value.shape != target.shape:
            raise CheckpointError(
                f"{str(path)!r}: torch variable {name!r} has shape {tuple(value.shape)}, "
                f"the model's {tuple(target.shape)}"
            )
        pairs.append((target, value))
    return pairs


def rng_state(model: BaseAlgorithm) -> dict[str, Any]:
    """The random number generators a training run draws from: Python's, NumPy's global one (SB3's replay
    buffers sample from it), torch's (CPU and CUDA) and the model's action space (SB3's random actions)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "torch": torch.get_rng_state(),
        "action_space": model.action_space.np_random.bit_generator.state,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(model: BaseAlgorithm, state: dict[str, Any]) -> None:
    """Put the generators back as :func:`rng_state` found them."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    model.action_space.np_random.bit_generator.state = state["action_space"]


def save_replay_buffer(model: BaseAlgorithm, path: str | Path) -> Path:
    """Save an off-policy model's replay buffer as NumPy arrays (``.npz``), which load without unpickling.

    SB3's ``model.save_replay_buffer`` pickles the buffer object; this keeps its arrays (observations,
    actions, rewards, dones, timeouts, ...), its position and whether it is full. The configuration
    (size, spaces, device) is the model's own, so :func:`load_replay_buffer` fills the buffer of a model
    built the same way.

    Args:
        model: An off-policy model.
        path: Target file (``.npz`` appended when missing); written under a temporary name and renamed.

    Returns:
        The path written.
    """
    buffer = getattr(model, "replay_buffer", None)
    if buffer is None:
        raise ConfigError(f"a {type(model).__name__} model has no replay buffer to save")
    path = Path(path)
    path = path if path.suffix == ".npz" else path.with_name(path.name + ".npz")
    arrays = _buffer_arrays(buffer)
    arrays["pos"], arrays["full"] = np.asarray(buffer.pos), np.asarray(buffer.full)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_replay_buffer(model: BaseAlgorithm, path: str | Path) -> None:
    """Fill ``model``'s replay buffer from a file of :func:`save_replay_buffer` (no unpickling).

    Every array's shape and type is checked against the buffer's before any is copied, and arrays are
    read one at a time (memory: the buffer and its largest array).

    Raises:
        CheckpointError: The file is missing or damaged, or its arrays do not fit the buffer (another size,
            space or buffer class).
    """
    buffer = getattr(model, "replay_buffer", None)
    if buffer is None:
        raise ConfigError(f"a {type(model).__name__} model has no replay buffer to load into")
    ours = _buffer_arrays(buffer)
    try:
        with np.load(path, allow_pickle=False) as saved:
            headers = {name: _npy_header(saved, name) for name in saved.files}
            pos, full = headers.pop("pos", None), headers.pop("full", None)
            if set(headers) != set(ours):
                raise CheckpointError(
                    f"{str(path)!r} holds arrays {sorted(headers)}, the buffer has {sorted(ours)}"
                )
            for name, (shape, dtype) in headers.items():
                if shape != ours[name].shape or dtype != ours[name].dtype:
                    raise CheckpointError(
                        f"{str(path)!r}: array {name!r} is {dtype}{list(shape)}, the buffer's "
                        f"{ours[name].dtype}{list(ours[name].shape)}"
                    )
            if (
                pos is None
                or full is None
                or pos[0] != ()
                or full != ((), np.bool_)
                or pos[1].kind not in "iu"
            ):
                raise CheckpointError(f"{str(path)!r}: the position or fullness of the buffer is damaged")
            position = int(saved["pos"])
            if not 0 <= position < buffer.buffer_size:
                raise CheckpointError(f"{str(path)!r}: position {position} is outside the buffer")
            for name in headers:  # checked first, then copied one array at a time
                ours[name][...] = saved[name]
            buffer.pos, buffer.full = position, bool(saved["full"])
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"no replay buffer at {str(path)!r}") from None
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable replay buffer: {exc}") from None


def _npy_header(saved: Any, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an array of an ``.npz`` file, read from its header (the data stays on disk)."""
    with saved.zip.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(f)
    return tuple(shape), np.dtype(dtype)


def _buffer_arrays(buffer: Any) -> dict[str, np.ndarray]:
    """A replay buffer's arrays by name (``observations/key`` for a dict buffer's parts), not copies."""
    arrays = {}
    for name, value in vars(buffer).items():
        if isinstance(value, np.ndarray):
            arrays[name] = value
        elif isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
            arrays.update({f"{name}/{key}": v for key, v in value.items()})
    return arrays
