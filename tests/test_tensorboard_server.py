"""A real TensorBoard server over a tiny run: its scalars and return-matrix image come back over HTTP."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def _served(logdir: Path, ready: Callable[[str], bool]) -> Iterator[str]:
    """A TensorBoard server on ``logdir``, once ``ready(base_url)`` (it loads its files in the background)."""
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
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
        while not ready(base) and time.monotonic() < deadline:
            time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def served_run(tmp_path: Path, tiny_stream: clrl.TaskStream) -> Any:
    result = clrl.train(tiny_ppo(tiny_stream), tiny_stream, [clrl.L2()], logdir=tmp_path, eval_episodes=2)

    def ready(base: str) -> bool:  # the run's last row is there
        tags = _json(base, "/data/plugin/scalars/tags").get(".", {})
        return (
            "cl/acc" in tags and len(_json(base, "/data/plugin/scalars/scalars", run=".", tag="cl/acc")) == 2
        )

    with _served(tmp_path, ready) as base:
        yield base, result


def test_hparams_compare_runs_of_different_methods_with_the_union_of_their_columns(
    tmp_path: Path, tiny_stream: clrl.TaskStream
) -> None:
    """Three methods in one logdir: one HParams row each, every method's own hyperparameters as columns."""
    methods = {"finetune": [], "l2": [clrl.L2(strength=0.5)], "ewc": [clrl.EWC(strength=3.0, samples=64)]}
    for name, modules in methods.items():
        clrl.train(tiny_ppo(tiny_stream), tiny_stream, modules, logdir=tmp_path / name, eval_episodes=1)

    def post(base: str, path: str, body: dict[str, Any]) -> Any:
        headers = {"Content-Type": "application/json", "X-XSRF-Protected": "1"}
        url = f"{base}/data/plugin/hparams/{path}"
        request = urllib.request.Request(url, json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{path}: {exc.read()!r}") from exc

    def experiment(base: str) -> Any:
        return post(base, "experiment", {"experimentName": ""})

    def sessions(base: str) -> Any:
        body = {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"],
                "colParams": [], "startIndex": 0, "sliceSize": 100}  # fmt: skip
        return post(base, "session_groups", body)

    with _served(tmp_path, lambda base: len(sessions(base).get("sessionGroups", [])) == 3) as base:
        infos = {info["name"]: info for info in experiment(base)["hparamInfos"]}
        groups = sessions(base)["sessionGroups"]
    assert {"method", "stream", "L2/strength", "EWC/strength", "EWC/samples"} <= set(infos)
    assert infos["method"]["differs"] and sorted(infos["method"]["domainDiscrete"]) == [
        "ewc",
        "finetune",
        "l2",
    ]
    rows = {group["hparams"]["method"]: group["hparams"] for group in groups}
    assert set(rows) == {"finetune", "l2", "ewc"}
    assert rows["l2"]["L2/strength"] == 0.5 and rows["ewc"]["EWC/strength"] == 3.0
    assert "L2/strength" not in rows["ewc"]
    # TensorBoard shows the first five columns whose values differ: method and modules are among them, so
    # every row shows its own module settings without ticking columns.
    shown = [info["name"] for info in sorted(infos.values(), key=lambda i: not i.get("differs", False))][:5]
    assert {"method", "modules"} <= set(shown)
    assert rows["finetune"]["modules"] == "none"
    assert rows["l2"]["modules"] == "L2(strength=0.5, networks=actor)"
    assert rows["ewc"]["modules"].startswith("EWC(strength=3.0, samples=64")


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
    np.testing.assert_array_equal(served, render_matrix(result.matrix, result.task_names))
