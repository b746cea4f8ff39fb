"""Save and load an SB3 model together with its continual modules, in SB3's own zip file.

The modules' configuration and state go into the zip as one extra entry, ``clrl.pt``. SB3 loads only the
``data`` entry and ``*.pth`` files, so the zip stays a valid SB3 model (``PPO.load`` still reads it), and
:func:`load` gives back the model and rebuilt modules.
"""

from __future__ import annotations

import io
import os
import random
import zipfile
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
from clrl.imports import import_allowed
from clrl.modules.base import ContinualModule
from clrl.modules.multihead import task_router

ENTRY = "clrl.pt"
FORMAT_VERSION = 1


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _import(qualname: Any, base: type) -> type:
    """The class ``qualname`` (``module:Class``) names, if it is a subclass of ``base`` (an algorithm or a
    continual module: a checkpoint cannot make clrl build any other class) in an allowed module."""
    if not isinstance(qualname, str) or ":" not in qualname:
        raise CheckpointError(f"checkpoint names {qualname!r}, which is not a 'module:Class' name")
    module_name, _, attr = qualname.partition(":")
    try:
        obj: Any = import_allowed(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except PermissionError as exc:
        raise CheckpointError(f"checkpoint names {qualname!r}: {exc}") from None
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint names {qualname!r}, which cannot be imported: {exc}") from exc
    if not isinstance(obj, type) or not issubclass(obj, base):
        raise CheckpointError(f"checkpoint names {qualname!r}, which is not a {base.__name__} class")
    return obj


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
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(ENTRY, buffer.getvalue())


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
    path: str | Path, env: GymEnv | None = None, device: str | torch.device = "auto", **kwargs: Any
) -> tuple[BaseAlgorithm, list[ContinualModule]]:
    """Load a model saved by :func:`save` and rebuild its modules with their state.

    Args:
        path: The checkpoint.
        env: Environment for the loaded model (as in SB3's ``load``).
        device: Device of the model.
        **kwargs: Passed to the algorithm's ``load``.

    Returns:
        The model and its modules, in the order they were saved. Pass the modules to the next ``learn``.

    Raises:
        CheckpointError: The file is missing or corrupt, or names classes that cannot be imported.
    """
    payload = read_payload(path)
    algorithm = _import(payload["algorithm"], BaseAlgorithm)
    try:
        model = algorithm.load(_zip_path(path), env=env, device=device, **kwargs)  # type: ignore[attr-defined]
    except (ValueError, KeyError, RuntimeError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{str(path)!r}: cannot load the SB3 model: {exc}") from exc
    modules = []
    for entry in payload["modules"]:
        cls = _import(entry["class"], ContinualModule)
        module = cls(**entry["config"])
        module.load_state_dict(entry["state"])
        module.tasks_seen = entry["tasks_seen"]
        module.bind(model)
        modules.append(module)
    return model, modules


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
        model: A model of the algorithm and spaces the checkpoint was saved from.
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
    try:
        data, params, variables = load_from_zip_file(_zip_path(path), device=get_device(model.device))
        assert data is not None and params is not None
        model.set_parameters(params, exact_match=True, device=model.device)
    except (ValueError, KeyError, RuntimeError, AssertionError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{str(path)!r}: cannot restore the SB3 model: {exc}") from exc
    for key, value in data.items():
        if key in model.__dict__ and key not in _KEEP_OWN:
            setattr(model, key, value)
    for name, value in (variables or {}).items():
        if value is not None:
            target: Any = model
            for part in name.split("."):
                target = getattr(target, part)
            target.data = value.data
    for module, entry in zip(modules, payload["modules"], strict=True):
        module.load_state_dict(entry["state"])
        module.tasks_seen = entry["tasks_seen"]
        module.bind(model)
    metadata: dict[str, Any] = payload["metadata"]
    if "rng" in metadata:
        set_rng_state(model, metadata["rng"])
    return metadata


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
