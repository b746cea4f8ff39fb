"""A real TensorBoard server over a tiny run: its scalars and return-matrix image come back over HTTP."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import tiny_ppo
from PIL import Image

import clrl
from clrl.logger import render_matrix


def _get(base: str, path: str, **query: str) -> bytes:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=30) as response:
        data: bytes = response.read()
    return data


def _json(base: str, path: str, **query: str) -> Any:
    return json.loads(_get(base, path, **query))


@pytest.fixture
def served_run(tmp_path: Path, tiny_stream: clrl.TaskStream) -> Any:
    result = clrl.train(tiny_ppo(tiny_stream), tiny_stream, [clrl.L2()], logdir=tmp_path, eval_episodes=2)
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path), "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--port", "0", "--load_fast", "false"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = None
        deadline = time.monotonic() + 120
        assert server.stderr is not None
        while base is None and time.monotonic() < deadline:
            line = server.stderr.readline()
            if not line and server.poll() is not None:
                pytest.fail(f"tensorboard exited with {server.returncode}")
            found = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            base = found.group(1) if found else None
        assert base, "tensorboard did not report its address"
        # The server loads event files in the background: wait until the run's last row is there.
        while time.monotonic() < deadline:
            tags = _json(base, "/data/plugin/scalars/tags").get(".", {})
            if (
                "cl/acc" in tags
                and len(_json(base, "/data/plugin/scalars/scalars", run=".", tag="cl/acc")) == 2
            ):
                break
            time.sleep(0.5)
        yield base, result
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_tensorboard_serves_the_runs_scalars_and_return_matrix(served_run: Any) -> None:
    base, result = served_run
    tags = _json(base, "/data/plugin/scalars/tags")["."]
    for tag in ("eval/normal/return", "eval/flipped/return", "cl/acc", "cl/forgetting", "cl/l2/penalty"):
        assert tag in tags, tag
    assert any(tag.startswith("train/") for tag in tags)  # SB3's own scalars share the run

    for j, name in enumerate(result.task_names):
        points = _json(base, "/data/plugin/scalars/scalars", run=".", tag=f"eval/{name}/return")
        assert [step for _, step, _ in points] == result.steps
        np.testing.assert_allclose([value for _, _, value in points], result.matrix[:, j], rtol=1e-6)
    acc = _json(base, "/data/plugin/scalars/scalars", run=".", tag="cl/acc")
    assert acc[-1][1] == result.steps[-1]
    assert acc[-1][2] == pytest.approx(result.metrics["acc"], rel=1e-6)

    images = _json(base, "/data/plugin/images/images", run=".", tag="cl/return_matrix", sample="0")
    assert [image["step"] for image in images] == result.steps[1:]
    png = _get(base, "/data/plugin/images/individualImage?" + images[-1]["query"])
    served = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    np.testing.assert_array_equal(served, render_matrix(result.matrix))
