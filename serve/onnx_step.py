"""The engine's decode step through ONNX Runtime: the batched graph of :mod:`kernels.onnx_batched` behind the
:class:`~serve.batched_step.SlotDecoder` interface.

The graph decodes rows ``0..n-1`` of its cache together (a contiguous block, bound in place), while the engine hands
out slot numbers in any order. So each slot is mapped to a row, the live rows are kept packed at the front, and when
a slot is freed the last row's filled positions are copied into its row (one copy per finished request, far cheaper
than running dead rows in every step). The graphs are exported from the loaded model into ``work_dir`` (a scratch
folder the server owns: serving never writes into a run folder), fp32 or its 8-bit ``MatMulNBits`` twin.

Measured (``benchmarks/serving.py``, 1 thread, this 2-core machine at load 14-18 from other jobs, so wide spreads):
ONNX int8 served 3-14x the tokens per second of PyTorch fp32 batched (10.7M model, 1 client: 384 against 28 tok/s;
16 clients: 397 against 128), with time to first token cut alike. Its batched/one-at-a-time ratio was 1.0-1.7 on
the default model and under 1 on the 10.7M one with 16 clients: there the engine outruns what one Python process
streams over HTTP (the engine alone, 16 staggered in-process clients: 812-1882 tok/s batched against 507-541 one at
a time). At 2 threads on that loaded machine both runtimes were slower than at 1. Re-measured at load 9-12 (1
thread, 2 rounds): batched/one 1.66 (default) and 6.39 (10.7M) with 16 clients, and in server CPU per token 0.72
against 1.91 ms and 2.50 against 16.31 ms; py-spy put ~80% of the engine thread's samples in onnxruntime (which
releases the GIL) and the HTTP side at about a third of the server's CPU, so the earlier 0.47 reads as the load's
noise rather than a serving bottleneck. Handing a step's tokens over together (serve.engine, serve.openai_api)
cut the engine's own CPU per token (in-process, 16 requests: 0.62-0.67 against 0.69-1.02 ms), but end to end the
server did not measurably change at that load (8 alternated rounds, 16 clients: tok/s medians 256 and 215 before
against 220 and 177 after; CPU ms/token 0.92 and 1.39 before against 1.04 and 1.16 after).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kernels.onnx_batched import BatchedOnnxDecoder, export_batched
from nas.model import CodeLM


class OnnxSlotDecoder:
    """Slots of the engine on rows of a :class:`~kernels.onnx_batched.BatchedOnnxDecoder`."""

    def __init__(self, model: CodeLM, slots: int, work_dir: Path, int8: bool = False, threads: int | None = None):
        self.runtime = "onnx_int8" if int8 else "onnx_fp32"
        path = export_batched(model, work_dir, int8=int8)
        self.decoder = BatchedOnnxDecoder(path, model, slots, threads or torch.get_num_threads())
        self.decoder.warm()  # every shape once now, not in some request's time to first token
        self._row: dict[int, int] = {}  # slot -> row; the rows in use are 0..len-1
        self._length: dict[int, int] = {}  # slot -> positions filled

    def prefill(self, slot: int, prompt: list[int]) -> torch.Tensor:
        row = self._row.setdefault(slot, len(self._row))
        logits = self.decoder.prefill(row, prompt)
        self._length[slot] = len(prompt)
        return torch.from_numpy(logits)

    def step(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        n = len(self._row)
        if len(slots) != n or set(slots) != self._row.keys():
            raise ValueError(f"the ONNX step decodes every live slot together: got {len(slots)} of {n}")
        rows = [self._row[s] for s in slots]
        by_row_tokens, by_row_positions = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int32)
        by_row_tokens[rows], by_row_positions[rows] = tokens, positions
        logits = self.decoder.step(by_row_tokens, by_row_positions)
        for s, p in zip(slots, positions, strict=True):
            self._length[s] = p + 1
        return torch.from_numpy(logits[rows])  # fancy indexing copies: the buffer is reused next step

    def release(self, slot: int) -> None:
        row = self._row.pop(slot, None)
        self._length.pop(slot, None)
        if row is None:
            return
        last = len(self._row)  # the row that is no longer in use after packing
        if row != last:
            moved = next(s for s, r in self._row.items() if r == last)
            self.decoder.move_row(last, row, self._length[moved])
            self._row[moved] = row
