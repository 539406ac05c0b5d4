"""Teacher top-k log-probabilities cached on disk, keyed by the batch they were computed for.

Distilling many students (a NAS front, several losses) from one teacher repeats the same teacher
forward passes: the trainer's batch sampler is seeded, so students with the same seed, batch size and
context see the same batches. The cache stores each batch's top-k ids (int32) and log-probs (fp16) in a
safetensors file named by a hash of the batch's token ids, under a folder named by the teacher and k,
so a later student reads them instead of running the teacher. Values are rounded to fp16 on the way in
and the rounded values are what the first student trains on too, so a cached run is bit-identical to
the run that filled the cache. Files are written atomically: a killed run leaves no torn entry.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class TopKLogitCache:
    def __init__(self, root: Path, teacher_fingerprint: str, k: int):
        self.dir = Path(root) / f"{teacher_fingerprint}-top{k}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.k = k
        self.hits = 0
        self.misses = 0

    def _path(self, input_ids: torch.Tensor) -> Path:
        ids = input_ids.detach().to("cpu", torch.int64).contiguous()
        digest = hashlib.sha256(str(tuple(ids.shape)).encode() + ids.numpy().tobytes()).hexdigest()[:32]
        return self.dir / f"{digest}.safetensors"

    def get(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        path = self._path(input_ids)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            data = load_file(str(path))
        except Exception:  # a damaged entry is recomputed, never trusted
            self.misses += 1
            return None
        self.hits += 1
        dev = input_ids.device
        return data["ids"].to(dev, torch.int64), data["logp"].to(dev, torch.float32)

    def put(self, input_ids: torch.Tensor, ids: torch.Tensor, logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store and return what a later read will give (ids, fp16-rounded log-probs)."""
        path = self._path(input_ids)
        ids32 = ids.detach().to("cpu", torch.int32).contiguous()
        lp16 = logp.detach().to("cpu", torch.float16).contiguous()
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        save_file({"ids": ids32, "logp": lp16}, str(tmp))
        os.replace(tmp, path)
        dev = input_ids.device
        return ids32.to(dev, torch.int64), lp16.to(dev, torch.float32)
