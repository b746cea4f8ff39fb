"""TensorBoard output of a continual run, and its ``results.json``.

One run directory holds one event file, shared with SB3: SB3's own scalars (``rollout/``, ``train/``)
continue across tasks on the global step axis, and clrl adds ``eval/<task>/return``, ``cl/*`` scalars, the
return matrix as a heatmap image and as a text table, and the HParams summary.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat, configure
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

_CELL_W, _CELL_H, _MARGIN = 84, 24, 100
# Anchor colours of matplotlib's viridis map, interpolated linearly.
_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=float)


class RunLogger:
    """Writes one continual run to TensorBoard, sharing SB3's event file.

    Args:
        logdir: The run directory.
        model: The SB3 model; its logger is replaced by one writing TensorBoard (and stdout when the model
            is verbose) to ``logdir`` until :meth:`close` gives the model its own logger back. ``None``:
            only clrl's scalars are written (SB3's go elsewhere).
        purge_step: For a resumed run: TensorBoard hides the events of earlier event files in ``logdir``
            at this global step or later (those a killed run wrote after its last checkpoint).
    """

    def __init__(
        self, logdir: str | Path, model: BaseAlgorithm | None, purge_step: int | None = None
    ) -> None:
        self.logdir = Path(logdir)
        self.model = model
        if (
            model is None
        ):  # clrl's own scalars only (the single-task baseline: SB3's go to each task's folder)
            self.sb3_logger: Logger | None = None
            self.writer: SummaryWriter = SummaryWriter(str(self.logdir), purge_step=purge_step)
            return
        self._previous = (model.__dict__.get("_logger"), model._custom_logger)
        formats = ["tensorboard", "stdout"] if model.verbose >= 1 else ["tensorboard"]
        self.sb3_logger = configure(str(self.logdir), formats)
        model.set_logger(self.sb3_logger)
        tb = next(f for f in self.sb3_logger.output_formats if isinstance(f, TensorBoardOutputFormat))
        if purge_step is not None:
            tb.writer.close()
            tb.writer = SummaryWriter(str(self.logdir), purge_step=purge_step)
        self.writer = tb.writer

    def eval_row(
        self, step: int, task_names: Sequence[str], row: Sequence[float] | np.ndarray, metric: str = "return"
    ) -> None:
        """Log ``eval/<task>/<metric>`` for every task at global step ``step``."""
        log_eval_row(self.writer, step, task_names, row, metric)

    def layout(self, task_names: Sequence[str], metric: str = "return") -> None:
        """TensorBoard's Custom Scalars layout: one chart per task of its evaluations, across every run in
        the logdir (a task's forgetting, method against method), and one per continual metric."""
        evaluations = {
            name: ["Multiline", [rf"^eval/{re.escape(name)}/{re.escape(metric)}$"]] for name in task_names
        }
        by_task = {name: ["Multiline", [rf"^by_task/eval/{re.escape(name)}/return$"]] for name in task_names}
        metrics = {key: ["Multiline", [rf"^cl/{key}$"]] for key in ("acc", "bwt", "fwt", "forgetting")}
        self.writer.add_custom_scalars(
            {
                f"evaluation ({metric}) per task": evaluations,
                "evaluation after each task": by_task,
                "continual metrics": metrics,
            }
        )

    def task_end(
        self,
        step: int,
        task_index: int,
        task_names: Sequence[str],
        matrix: np.ndarray,
        metrics: Mapping[str, float],
    ) -> None:
        """Log ``cl/<metric>``, ``cl/task``, and the return matrix so far (heatmap and table).

        The metrics and the boundary evaluations are also logged against the number of tasks learned
        (``by_task/cl/<metric>``, ``by_task/eval/<task>/return``; 0 is the untrained row), so that runs
        with other budgets line up task by task.
        """
        self.writer.add_scalar("cl/task", task_index, step)
        for key, value in metrics.items():
            if math.isfinite(value):
                self.writer.add_scalar(f"cl/{key}", value, step)
                self.writer.add_scalar(f"by_task/cl/{key}", value, task_index + 1)
        for row in (0, task_index + 1) if task_index == 0 else (task_index + 1,):
            for name, value in zip(task_names, matrix[row], strict=True):
                self.writer.add_scalar(f"by_task/eval/{name}/return", float(value), row)
        image = render_matrix(matrix, task_names)
        self.writer.add_image("cl/return_matrix", image, step, dataformats="HWC")
        self.writer.add_text("cl/return_matrix", matrix_markdown(matrix, task_names), step)
        self.writer.flush()

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """Write the run's HParams session: its hyperparameters and its final ``cl/*`` metrics.

        No run writes an experiment configuration (TensorBoard would take one run's, arbitrarily, and show
        only its columns): TensorBoard then builds it from every session in the logdir, the union of their
        hyperparameters, those that differ between runs (``method``, a module's strength) first.
        """
        clean = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in hparams.items()}
        metric_tags = {f"cl/{k}": v for k, v in metrics.items() if math.isfinite(v)}
        _, session_start, session_end = hparams_summary(clean, metric_tags)
        file_writer = self.writer._get_file_writer()
        for summary in (session_start, session_end):
            file_writer.add_summary(summary)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file, and give the model back the logger it had."""
        if self.model is None or self.sb3_logger is None:
            self.writer.close()
            return
        self.sb3_logger.close()
        previous, custom = self._previous
        if previous is not None:
            self.model._logger = previous
        else:
            self.model.__dict__.pop("_logger", None)
        self.model._custom_logger = custom


def log_eval_row(
    writer: SummaryWriter,
    step: int,
    task_names: Sequence[str],
    row: Sequence[float] | np.ndarray,
    metric: str = "return",
) -> None:
    """Write ``eval/<task>/<metric>`` (``eval/<task>/return`` by default) for every task at ``step``."""
    for name, value in zip(task_names, row, strict=True):
        writer.add_scalar(f"eval/{name}/{metric}", float(value), step)
    writer.flush()


def matrix_markdown(matrix: np.ndarray, task_names: Sequence[str]) -> str:
    """The return matrix as a markdown table: one row per training stage, one column per task."""
    header = "| after \\ on | " + " | ".join(task_names) + " |"
    lines = [header, "|" + "---|" * (len(task_names) + 1)]
    for i, row in enumerate(matrix):
        label = "untrained" if i == 0 else task_names[i - 1]
        cells = " | ".join("" if np.isnan(v) else f"{v:.1f}" for v in row)
        lines.append(f"| {label} | {cells} |")
    return "\n".join(lines)


def _colour(t: float) -> tuple[int, int, int]:
    x = min(max(t, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    lo = math.floor(x)
    hi = min(lo + 1, len(_VIRIDIS) - 1)
    c = _VIRIDIS[lo] + (x - lo) * (_VIRIDIS[hi] - _VIRIDIS[lo])
    return int(c[0]), int(c[1]), int(c[2])


def render_matrix(matrix: np.ndarray, task_names: Sequence[str] | None = None) -> np.ndarray:
    """The return matrix as an RGB heatmap (uint8, HWC) with each cell's value written in it.

    Rows are training stages (untrained, then after each task), columns the evaluated tasks, both labelled
    with the task names when given (cut to 12 characters; else ``task j``); cells not yet measured are
    grey.
    """
    rows, cols = matrix.shape
    names = (
        [_label(n) for n in task_names] if task_names is not None else [f"task {j + 1}" for j in range(cols)]
    )
    row_labels = ["untrained", *(f"{i}. {n}" for i, n in enumerate(names, start=1))][:rows]
    finite = matrix[np.isfinite(matrix)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    span = hi - lo or 1.0
    image = Image.new("RGB", (_MARGIN + cols * _CELL_W, _CELL_H + rows * _CELL_H), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for j in range(cols):
        draw.text((_MARGIN + j * _CELL_W + 4, 6), names[j], fill=(0, 0, 0))
    for i in range(rows):
        y = _CELL_H + i * _CELL_H
        draw.text((4, y + 6), row_labels[i], fill=(0, 0, 0))
        for j in range(cols):
            x = _MARGIN + j * _CELL_W
            value = matrix[i, j]
            if not np.isfinite(value):
                draw.rectangle((x, y, x + _CELL_W - 1, y + _CELL_H - 1), fill=(200, 200, 200))
                continue
            t = (value - lo) / span
            draw.rectangle((x, y, x + _CELL_W - 1, y + _CELL_H - 1), fill=_colour(t))
            draw.text((x + 4, y + 6), f"{value:.1f}", fill=(0, 0, 0) if t > 0.6 else (255, 255, 255))
    return np.asarray(image)


def _label(name: str, width: int = 12) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename (never half-written)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; the file gets the mode any other would
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(to_jsonable(data), f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_jsonable(obj: Any) -> Any:
    """Plain JSON data: arrays become lists, non-finite floats ``null``, classes their name."""
    if isinstance(obj, type):
        return obj.__name__
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
