"""A long-lived trial worker: ``python -m nas.worker`` reads one TrialSpec JSON per line on stdin and
writes one TrialResult JSON per line on stdout. Started by :class:`nas.executors.LocalExecutor`."""

from __future__ import annotations

import os
import signal
import sys

from sandbox.processes import die_with_parent  # standard library only: the worker still starts before torch


def main() -> None:
    die_with_parent()  # no orphan keeps writing into a trial folder when the driver dies
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the result stream
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    import torch  # only now: whatever torch prints at import goes to stderr, never into the protocol

    torch.set_num_threads(max(1, int(os.environ.get("AUTONAS_WORKER_THREADS", "1"))))
    from nas.trial import TrialSpec, run_trial

    protocol.write("ready\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        result = run_trial(TrialSpec.model_validate_json(line))
        protocol.write(result.model_dump_json() + "\n")


if __name__ == "__main__":
    main()
