"""Where the files shipped from ``envs/`` and ``agents/presets/`` are found.

A wheel carries them inside the package (``clrl/_streams``, ``clrl/_presets``; see pyproject.toml). An
editable install or a source checkout has no such folders, so the repository's own folders are used.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_REPO_FOLDERS = {"_streams": ("envs",), "_presets": ("agents", "presets")}


def data_dir(name: str) -> Path:
    """The folder of the data package ``clrl.<name>`` (``"_streams"`` or ``"_presets"``)."""
    installed = _PACKAGE / name
    if installed.is_dir():
        return installed
    return _PACKAGE.parent.joinpath(*_REPO_FOLDERS[name])
