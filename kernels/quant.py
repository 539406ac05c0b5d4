"""INT8 quantization of every linear layer: per-channel symmetric weights, stored and run.

Storage (device independent): ``model_int8.safetensors`` holds each quantized linear weight as int8
``<name>.qweight`` plus fp32 ``<name>.scale`` (one per output channel: ``w ≈ q * scale``), every other
tensor as it was; a tied LM head is stored once, as the embedding. ``load_int8`` rebuilds an fp32
``CodeLM`` from it (dequantized weights), and a runtime backend then makes it fast where it runs:

- ``cpu``: PyTorch's dynamic int8 linear (fbgemm / x86 kernels, per-channel weights, activations
  quantized per call). Measured on this 2-core CPU for a 14 M-parameter model it decodes 2.4x faster
  than fp32, while torchao's int8 configs were slower than fp32 here (see benchmarks/int8.py), so
  torchao is the CUDA path only. PyTorch marks ``quantize_dynamic`` deprecated in favour of
  torchao, whose CPU kernels are not faster yet; the call is isolated here so it can be swapped.
- ``cuda``: torchao ``quantize_(model, Int8WeightOnlyConfig())`` (or
  ``Int8DynamicActivationInt8WeightConfig()`` with ``dynamic_activations``).
- ``reference``: the dequantized fp32 model itself (what every backend approximates).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from harness.errors import UserError
from nas.model import CodeLM
from nas.space import ArchConfig

INT8_FILE = "model_int8.safetensors"
Backend = Literal["cpu", "cuda", "reference"]


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``q = round(w / scale)`` in [-127, 127], ``scale = max|w| / 127``."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    q = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale[:, None]


def _linear_names(model: CodeLM) -> list[str]:
    """Linear layers whose weights are stored as int8 (the tied LM head shares the embedding's tensor)."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if name == "lm_head" and model.arch.tie_embeddings:
                continue
            names.append(name)
    return names


@dataclass
class Int8Stats:
    linear_bytes_fp32: int
    linear_bytes_int8: int  # int8 values + fp32 scales
    file_bytes: int

    @property
    def linear_ratio(self) -> float:
        return self.linear_bytes_int8 / max(self.linear_bytes_fp32, 1)


def save_int8(model: CodeLM, out_dir: Path) -> Int8Stats:
    """Write ``model_int8.safetensors`` and ``arch.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    linear = set(_linear_names(model))
    tensors: dict[str, torch.Tensor] = {}
    fp32_bytes = int8_bytes = 0
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        module = name.rsplit(".", 1)[0]
        if module in linear and name.endswith(".weight"):
            q, scale = quantize_per_channel(tensor)
            tensors[f"{module}.qweight"] = q.contiguous()
            tensors[f"{module}.scale"] = scale.contiguous()
            fp32_bytes += tensor.numel() * 4
            int8_bytes += q.numel() + scale.numel() * 4
        elif name == "lm_head.weight" and model.arch.tie_embeddings:
            continue  # the embedding carries it
        else:
            if tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            tensors[name] = tensor.detach().float().contiguous()
    tmp = out_dir / (INT8_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "autonas-int8-per-channel-symmetric"})
    tmp.replace(out_dir / INT8_FILE)
    (out_dir / "arch.json").write_text(model.arch.to_json())
    return Int8Stats(fp32_bytes, int8_bytes, (out_dir / INT8_FILE).stat().st_size)


def load_int8(run_dir: Path) -> CodeLM:
    """The fp32 CodeLM whose linear weights are the dequantized int8 values (the reference model)."""
    run_dir = Path(run_dir)
    path = run_dir / INT8_FILE
    if not path.is_file() or not (run_dir / "arch.json").is_file():
        raise UserError(f"{run_dir} holds no int8 model ({INT8_FILE} and arch.json)")
    try:
        tensors = load_file(str(path))
        arch = ArchConfig.from_json((run_dir / "arch.json").read_text())
    except Exception as err:
        raise UserError(f"cannot read the int8 model in {run_dir}: {str(err).splitlines()[0]}") from None
    model = CodeLM(arch)
    state = {}
    for name, tensor in tensors.items():
        if name.endswith(".qweight"):
            module = name[: -len(".qweight")]
            state[f"{module}.weight"] = dequantize(tensor, tensors[f"{module}.scale"])
        elif not name.endswith(".scale"):
            state[name] = tensor
    if arch.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.startswith(("rope_",))]
    if missing or unexpected:
        raise UserError(f"{path} does not match its arch.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


def for_runtime(model: CodeLM, backend: Backend, dynamic_activations: bool = False) -> torch.nn.Module:
    """A copy of ``model`` that runs its linear layers in int8 on ``backend``."""
    model = copy.deepcopy(model).eval()
    if backend == "reference":
        return model
    if backend == "cpu":
        from torch.ao.quantization import (
            per_channel_dynamic_qconfig,
            quantize_dynamic,
        )  # deprecated API: loaded only for this backend

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation notice; see the module docstring
            return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    if backend == "cuda":
        if not torch.cuda.is_available():
            raise UserError("the cuda int8 backend needs a GPU; use --int8-backend cpu here")
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )  # optional, GPU only

        model = model.cuda()
        quantize_(model, Int8DynamicActivationInt8WeightConfig() if dynamic_activations else Int8WeightOnlyConfig())
        return model
    raise UserError(f"unknown int8 backend {backend!r}: use cpu, cuda or reference")


def int8_summary(stats: Int8Stats) -> dict[str, float | int]:
    return {
        "int8_linear_bytes_fp32": stats.linear_bytes_fp32,
        "int8_linear_bytes": stats.linear_bytes_int8,
        "int8_linear_ratio": round(stats.linear_ratio, 4),
        "size_bytes_on_disk_int8": stats.file_bytes,
    }
