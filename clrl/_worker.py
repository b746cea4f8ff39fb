"""One run of a sweep, in a process of its own: ``python -m clrl._worker '<json>'``.

The JSON holds the :class:`~clrl.experiment.RunSpec` (``spec``) and the sweep's ``logdir``. The run always
resumes (a finished run returns at once). Exit status: 0 finished, 1 a task failed or an unexpected error,
2 bad settings, 130 interrupted; the reason is the last ``clrl: error:`` line of the output.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence

from clrl.errors import ClrlError, TrainingError

PARENT_VARIABLE = "CLRL_SWEEP_PARENT"
"""The sweep driver's PID, which the driver passes to its runs so that they end with it."""


def die_with_parent() -> None:
    """End this run when the sweep driver that started it dies, however it dies (SIGKILL included): Linux's
    parent-death signal delivers SIGTERM then. Elsewhere, or outside a sweep, this does nothing."""
    parent = os.environ.get(PARENT_VARIABLE)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if str(os.getppid()) != parent:  # the driver died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep run described by ``argv[0]``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    from clrl.experiment import RunSpec, run_experiment

    try:
        payload = json.loads(args[0])
        spec = RunSpec.from_dict(payload["spec"])
        print(f"clrl: sweep run started {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
        result = run_experiment(spec, payload["logdir"], resume=True, log=lambda s: print(s, flush=True))
    except TrainingError as exc:
        traceback.print_exc()
        print(f"clrl: error: {exc}", flush=True)
        return 1
    except ClrlError as exc:
        print(f"clrl: error: {exc}", flush=True)
        return 2
    except KeyboardInterrupt:
        print("clrl: error: interrupted", flush=True)
        return 130
    except Exception as exc:
        traceback.print_exc()
        print(f"clrl: error: {type(exc).__name__}: {exc}", flush=True)
        return 1
    print("clrl: finished: " + "  ".join(f"{k} {v:.4g}" for k, v in result.metrics.items()), flush=True)
    return 0


if __name__ == "__main__":
    die_with_parent()
    sys.exit(main())
