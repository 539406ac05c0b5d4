"""scripts/gpu_check.sh without a GPU: the CPU-side checks run, every CUDA check is skipped with its reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_on_cpu_exits_cleanly_naming_what_it_skipped(tmp_path: Path) -> None:
    from kernels.gpu_check import CHECKS

    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", "AUTONAS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    by_name = {c["name"]: c for c in data["checks"]}
    assert list(by_name) == [c.name for c in CHECKS]  # every check is recorded, in order
    for check in CHECKS:
        row = by_name[check.name]
        if check.needs_cuda:
            assert row["status"] == "skipped", row
            assert row["reason"], row
            assert f"{check.name}: skipped" in proc.stdout  # said on the console too
        else:
            assert row["status"] == "ok", row
    assert by_name["train_bf16"]["reason"].startswith("no CUDA device")
    assert data["summary"]["failed"] == 0 and data["summary"]["ok"] == sum(not c.needs_cuda for c in CHECKS)


def test_peak_table_and_override(monkeypatch) -> None:
    from kernels.gpu_check import peak_tflops

    monkeypatch.delenv("AUTONAS_PEAK_TFLOPS", raising=False)
    assert peak_tflops("NVIDIA H200")[0] == 989.4
    assert peak_tflops("NVIDIA H100 PCIe")[0] == 756.0
    assert peak_tflops("Some Future GPU")[0] is None
    monkeypatch.setenv("AUTONAS_PEAK_TFLOPS", "123")
    assert peak_tflops("NVIDIA H200") == (123.0, "AUTONAS_PEAK_TFLOPS")
