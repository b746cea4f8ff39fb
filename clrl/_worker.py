"""One run of a sweep, in a process of its own: ``python -m clrl._worker '<json>'``.

The JSON holds the :class:`~clrl.experiment.RunSpec` (``spec``) and the sweep's ``logdir``. The run always
resumes (a finished run returns at once). Exit status: 0 finished, 1 a task failed or an unexpected error,
2 bad settings, 130 interrupted; the reason is the last ``clrl: error:`` line of the output.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Sequence

from clrl.errors import ClrlError, TrainingError


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
    sys.exit(main())
