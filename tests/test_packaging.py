"""The wheel ships the built-in streams and presets inside the clrl package, and nothing else."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_carries_streams_and_presets(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("clrl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"clrl", wheel.name.split("-py")[0] + ".dist-info"}
    for stream in (ROOT / "envs").glob("*.toml"):
        assert f"clrl/_streams/{stream.name}" in names
    for preset in (ROOT / "agents" / "presets").glob("*.toml"):
        assert f"clrl/_presets/{preset.name}" in names

    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    code = "import clrl; print(sorted(clrl.builtin_streams()), clrl.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(unpacked)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "'cartpole-flip'" in out and str(unpacked) in out
