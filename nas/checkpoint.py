"""Training checkpoints in safetensors, written so that a kill at any moment leaves a loadable one.

A checkpoint is a folder: ``model.safetensors`` (weights; a tied embedding stored once),
``optimizer.safetensors`` (AdamW moments, flattened) and ``state.json`` (step, tokens, timers, data
sampler state). It is written to a temporary folder and swapped in with renames, so the previous
checkpoint stays valid until the new one is complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from harness.errors import UserError

CKPT_DIR = "ckpt"


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{idx}.{name}"] = t.detach().contiguous().cpu()
    return tensors, {"param_groups": sd["param_groups"]}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    final = run_dir / CKPT_DIR
    tmp = run_dir / f"{CKPT_DIR}.tmp"
    old = run_dir / f"{CKPT_DIR}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, "optimizer": opt_meta}, indent=1))
    for f in tmp.iterdir():  # make the bytes durable before the swap
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder (also one left as ``ckpt.old`` by a kill mid-swap)."""
    for name in (CKPT_DIR, f"{CKPT_DIR}.old"):
        p = run_dir / name
        if (p / "state.json").is_file() and (p / "model.safetensors").is_file():
            return p
    return None


def load_checkpoint(ckpt: Path, model: torch.nn.Module, opt: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Restore weights (and optimizer) in place; returns the saved trainer state."""
    device = next(model.parameters()).device
    try:
        state = json.loads((ckpt / "state.json").read_text())
        missing, unexpected = load_model(model, str(ckpt / "model.safetensors"), strict=True, device=str(device))
        if opt is not None:
            tensors = load_file(str(ckpt / "optimizer.safetensors"), device="cpu")  # load_state_dict places them
            opt.load_state_dict(_optimizer_state(tensors, state["optimizer"]))
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        raise UserError(
            f"checkpoint {ckpt} is corrupted ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "delete it to start over"
        ) from None
    state.pop("optimizer", None)
    return state
