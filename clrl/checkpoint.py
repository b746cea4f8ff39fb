"""Save and load an SB3 model together with its continual modules, in SB3's own zip file.

The modules' configuration and state go into the zip as one extra entry, ``clrl.pt``. SB3 loads only the
``data`` entry and ``*.pth`` files, so the zip stays a valid SB3 model (``PPO.load`` still reads it), and
:func:`load` gives back the model and rebuilt modules.
"""

from __future__ import annotations

import importlib
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.type_aliases import GymEnv

from clrl.errors import CheckpointError
from clrl.modules.base import ContinualModule

ENTRY = "clrl.pt"
FORMAT_VERSION = 1


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _import(qualname: str) -> type:
    module_name, _, attr = qualname.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint names {qualname!r}, which cannot be imported: {exc}") from exc
    if not isinstance(obj, type):
        raise CheckpointError(f"checkpoint names {qualname!r}, which is not a class")
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
        The path written.
    """
    path = _zip_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    return path


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
    algorithm = _import(payload["algorithm"])
    try:
        model = algorithm.load(_zip_path(path), env=env, device=device, **kwargs)  # type: ignore[attr-defined]
    except (ValueError, KeyError, RuntimeError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{str(path)!r}: cannot load the SB3 model: {exc}") from exc
    modules = []
    for entry in payload["modules"]:
        cls = _import(entry["class"])
        module = cls(**entry["config"])
        module.load_state_dict(entry["state"])
        module.tasks_seen = entry["tasks_seen"]
        modules.append(module)
    return model, modules
