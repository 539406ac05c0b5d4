"""Serve a trained model's logits to the harness's scorer (:mod:`harness.scoring`): ``python -m nas.logits_server RUN``.

The process first restarts itself on the model code the run folder carries, then moves its standard output aside
before any model code is imported: the replies go to a private copy of the original stdout, and anything the
model's code prints (at import or later) lands in stderr, never in the replies. It reads token windows from
stdin and answers raw logits; the scorer, in another process, does everything else. See harness.scoring for the
wire format.
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path
from typing import BinaryIO

from harness.errors import UserError
from harness.model_code import reexec_with_model_code


def serve(run_dir: Path) -> None:
    reexec_with_model_code(run_dir)  # the logits of the network that was trained
    requests, replies = os.fdopen(0, "rb", buffering=0), os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # from here on, fd 1 is stderr: the model's prints never reach the replies

    # imported only now, after the re-exec: the model modules must come from the run's own code
    import torch

    from nas.run_folder import load_trained_model

    net, _ = load_trained_model(run_dir)
    torch.set_grad_enabled(False)
    while True:
        head = _read(requests, 8)
        if head is None:
            return
        rows, width = struct.unpack("<II", head)
        if rows == 0:
            return
        body = _read(requests, rows * width * 8)
        if body is None:
            return
        x = torch.frombuffer(bytearray(body), dtype=torch.int64).view(rows, width)
        logits = net(x).float().contiguous()
        replies.write(struct.pack("<I", logits.shape[-1]) + logits.numpy().astype("<f4").tobytes())
        replies.flush()


def _read(stream: BinaryIO, size: int) -> bytes | None:
    chunks, need = [], size
    while need:
        chunk = stream.read(need)
        if not chunk:
            return None
        chunks.append(chunk)
        need -= len(chunk)
    return b"".join(chunks)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m nas.logits_server RUN_FOLDER")
    try:
        serve(Path(sys.argv[1]))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
