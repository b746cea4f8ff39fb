"""Imports on consent: the modules that a stream or checkpoint file may make clrl import.

A stream file can name wrappers and environments of other packages (``"minigrid.wrappers:ImgObsWrapper"``,
``env_id = "metaworld:Meta-World/MT1"``), and a checkpoint names the classes of its algorithm and modules.
Importing a module runs its code, so clrl imports a module named by a file only when its top-level
package is allowed: clrl's own extras and the libraries it builds on by default (:data:`DEFAULT_ALLOWED`),
more with :func:`allow_imports` (``--allow-import NAME`` on the command line, which also passes the
permission to the processes of a sweep through the ``CLRL_ALLOW_IMPORTS`` environment variable). The
working directory is never searched for such a module, so a file named like an allowed package in the
current folder cannot stand in for it.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from clrl.errors import ConfigError

DEFAULT_ALLOWED = frozenset(
    {"clrl", "gymnasium", "stable_baselines3", "sb3_contrib", "minigrid", "metaworld"}
)
"""Top-level packages a file may name without asking: clrl, what it builds on, and its extras' packages."""

ENVIRONMENT_VARIABLE = "CLRL_ALLOW_IMPORTS"
"""Comma-separated top-level packages allowed on top of the defaults (how sweep workers inherit them)."""

_allowed: set[str] = set()


def allow_imports(*packages: str) -> None:
    """Let files name modules of these top-level packages (for this process), e.g. a package of your own
    wrappers: ``clrl.allow_imports("my_wrappers")``."""
    for package in packages:
        if not isinstance(package, str) or not package.isidentifier():
            raise ConfigError(f"a package to allow is a top-level module name, got {package!r}")
        _allowed.add(package)


def allowed_packages() -> frozenset[str]:
    """The top-level packages files may name now."""
    extra = {p.strip() for p in os.environ.get(ENVIRONMENT_VARIABLE, "").split(",") if p.strip()}
    return DEFAULT_ALLOWED | _allowed | extra


def refusal(module: str) -> str | None:
    """Why ``module`` may not be imported for a file (``None``: it may)."""
    top = module.split(".")[0]
    if top in allowed_packages():
        return None
    allowed = ", ".join(sorted(allowed_packages()))
    return (
        f"module {module!r} is not allowed: for a file, clrl imports modules of {allowed} only; allow it "
        f"with clrl.allow_imports({top!r}) or --allow-import {top}"
    )


def import_allowed(module: str) -> ModuleType:
    """``module`` if the program has imported it already (that runs no new code: a user's own wrapper or
    module class defined in their script), else import it if :func:`refusal` allows it, without searching
    the working directory.

    Raises:
        PermissionError: The module is not imported yet and not allowed (the message says how to allow it).
        ImportError: It cannot be imported.
    """
    if module in sys.modules:
        return sys.modules[module]
    reason = refusal(module)
    if reason is not None:
        raise PermissionError(reason)
    cwd = os.getcwd()
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if p not in ("", ".") and os.path.abspath(p) != cwd]
    try:
        return importlib.import_module(module)
    finally:
        sys.path[:] = saved
