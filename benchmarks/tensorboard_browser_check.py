"""TensorBoard in a real browser: three methods' runs, checked through TensorBoard's HTTP data API and
photographed with headless Chromium.

    python benchmarks/tensorboard_browser_check.py --out docs/tensorboard     # needs chromium on PATH

Trains three tiny runs (fine-tuning, L2, EWC on a two-task CartPole stream; seconds each) into a temporary
logdir, or reads ``--logdir``, serves it with TensorBoard and checks what a user sees without scripting:
one HParams row per run, the ``method`` and ``modules`` columns among the five TensorBoard shows by default
(so each row's own settings are on screen), the custom-scalars layout grouping ``eval/<task>/return`` per
task, and the return-matrix images. Then it takes headless Chromium screenshots of the HParams table, the
custom scalars and the images (``--out``) and checks that each one rendered (not a blank page). Exit status
1 names the first check that failed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from stable_baselines3 import PPO

import clrl

VIEWS = {"hparams": "#hparams", "custom_scalars": "#custom_scalars", "images": "#images"}


def tiny_runs(root: Path) -> None:
    stream = clrl.TaskStream(
        "tiny-cartpole",
        [
            clrl.Task("normal", "CartPole-v1"),
            clrl.Task(
                "flipped",
                "CartPole-v1",
                wrappers=(clrl.WrapperSpec("PermuteActions", {"permutation": [1, 0]}),),
            ),
        ],
        steps_per_task=128,
        task_id="observed",
    )
    methods = {"finetune": [], "l2": [clrl.L2(strength=0.5)], "ewc": [clrl.EWC(strength=3.0, samples=64)]}
    for name, modules in methods.items():
        model = PPO("MlpPolicy", stream.make_vec_env(0, n_envs=2), n_steps=32, batch_size=32, seed=0)
        clrl.train(model, stream, modules, logdir=root / name, eval_episodes=1)


def post(base: str, path: str, body: dict[str, Any]) -> Any:
    headers = {"Content-Type": "application/json", "X-XSRF-Protected": "1"}
    request = urllib.request.Request(f"{base}/data/plugin/hparams/{path}", json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def get(base: str, path: str) -> Any:
    with urllib.request.urlopen(f"{base}{path}", timeout=30) as response:
        return json.loads(response.read())


def serve(logdir: Path) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--port", "0", "--load_fast", "false"], stderr=subprocess.PIPE, text=True
    )
    assert server.stderr is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"(http://127\.0\.0\.1:\d+)/", server.stderr.readline())
        if found:
            return server, found.group(1)
    server.terminate()
    raise SystemExit("tensorboard did not report its address")


def check_data(base: str, runs: int) -> list[str]:
    """What the views will show, read through the data API; the problems found."""
    body = {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"], "colParams": [],
            "startIndex": 0, "sliceSize": 100}  # fmt: skip
    deadline = time.monotonic() + 120
    while len(post(base, "session_groups", body).get("sessionGroups", [])) < runs:
        if time.monotonic() > deadline:
            return [f"HParams shows fewer than {runs} rows"]
        time.sleep(1)
    infos = post(base, "experiment", {"experimentName": ""})["hparamInfos"]
    shown = [info["name"] for info in sorted(infos, key=lambda i: not i.get("differs", False))][:5]
    problems = [f"column {name!r} is not among the five shown by default" for name in ("method", "modules")
                if name not in shown]  # fmt: skip
    rows = [group["hparams"] for group in post(base, "session_groups", body)["sessionGroups"]]
    if len({row["modules"] for row in rows}) != runs:
        problems.append("the runs' `modules` columns are not each run's own")
    layout = get(base, "/data/plugin/custom_scalars/layout")
    charts = [chart["title"] for category in layout.get("category", []) for chart in category["chart"]]
    if not any("normal" in title for title in charts):
        problems.append(f"no custom-scalars chart for task 'normal' (charts: {charts})")
    if not any(tags for tags in get(base, "/data/plugin/images/tags").values()):
        problems.append("no return-matrix images")
    return problems


def screenshot(chromium: str, url: str, path: Path) -> str | None:
    """Take the screenshot; a problem, or ``None`` when the page rendered."""
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000",
         "--virtual-time-budget=15000", f"--screenshot={path}", url],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    colours = len(np.unique(pixels[:: max(1, len(pixels) // 100_000)], axis=0))
    return None if colours > 50 else f"{path.name}: {colours} colours, a blank page"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--logdir", type=Path, help="runs to serve (default: three tiny runs, trained here)")
    parser.add_argument("--out", type=Path, default=Path("tensorboard-screenshots"))
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        raise SystemExit("no chromium on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        logdir = args.logdir or Path(tmp) / "runs"
        if args.logdir is None:
            tiny_runs(logdir)
        runs = len({p.parent for p in logdir.rglob("events.out.tfevents.*")})
        server, base = serve(logdir)
        try:
            problems = check_data(base, runs)
            args.out.mkdir(parents=True, exist_ok=True)
            for name, fragment in VIEWS.items():
                problem = screenshot(chromium, f"{base}/{fragment}", args.out / f"{name}.png")
                problems += [problem] if problem else []
        finally:
            server.terminate()
            server.wait(timeout=30)
    for problem in problems:
        print(f"FAILED: {problem}")
    print(f"{len(VIEWS)} screenshots in {args.out}; {len(problems)} problem(s)")
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
