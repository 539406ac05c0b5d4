"""``autonas export MODEL_DIR --gguf | --hf``: a trained model as files other tools load.

``--gguf`` writes one GGUF file for llama.cpp / Ollama (:mod:`kernels.gguf_export`); ``--hf`` (re)writes the
Hugging Face folder with its tokenizer (:func:`nas.hf.export_hf`). MODEL_DIR is any finished run folder (trained,
searched, distilled or compressed), resolved as ``autonas latency`` resolves its model: checked, then re-run on the
model code the folder carries. Everything a user can get wrong is refused in one line before torch is imported and
before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import typer
from rich.table import Table

from harness.cli_support import console, err_console, user_errors
from harness.errors import UserError
from harness.model_code import reexec_with_model_code
from nas import validate

# kernels.gguf_export.GGUF_TYPES, repeated so that a wrong --dtype is refused before torch and gguf are imported
# (tests/test_gguf_export.py checks the two agree)
GGUF_DTYPES = ("f32", "f16", "q8_0")
HF_FILES = ("config.json", "model.safetensors", "tokenizer.json")  # an existing export, kept unless --overwrite


@user_errors
def export_command(
    model: Annotated[Path, typer.Argument(help="a finished run folder (arch.json + model.safetensors)")],
    gguf: Annotated[bool, typer.Option("--gguf", help="write a GGUF file for llama.cpp / Ollama")] = False,
    hf: Annotated[bool, typer.Option("--hf", help="(re)write the Hugging Face folder, tokenizer included")] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="the .gguf file (default MODEL_DIR/model-DTYPE.gguf) or, with --hf, the folder (MODEL_DIR/hf)"
        ),
    ] = None,
    dtype: Annotated[str, typer.Option(help="GGUF weights: f32, f16 or q8_0 (norms stay f32)")] = "f16",
    overwrite: Annotated[bool, typer.Option(help="replace an existing output")] = False,
) -> None:
    """Export a Llama-shaped model (RMSNorm, SwiGLU, RoPE) for llama.cpp / Ollama (--gguf) or transformers (--hf)."""
    validate.input_dir(model, "MODEL_DIR")
    if not gguf and not hf:
        raise UserError("say what to export: --gguf (a llama.cpp / Ollama file) and/or --hf (a Hugging Face folder)")
    if gguf and hf and out is not None:
        raise UserError("--out names one output: export --gguf and --hf in two commands to choose both paths")
    if dtype not in GGUF_DTYPES:
        raise UserError(f"--dtype {dtype!r}: use {', '.join(GGUF_DTYPES)}")
    gguf_out = (out or model / f"model-{dtype}.gguf") if gguf else None
    hf_out = (out or model / "hf") if hf else None
    if gguf_out is not None:
        validate.output_file(gguf_out, "--out", overwrite=overwrite)
    if hf_out is not None:
        validate.output_dir(hf_out, "--out", overwrite=overwrite, results=HF_FILES)
    reexec_with_model_code(model)  # exported by the code that trained it (which export then refuses if edited)

    # torch, transformers and gguf are imported only after the cheap checks above
    try:
        from kernels.gguf_export import GGUFType, export_gguf
    except ModuleNotFoundError as err:
        if err.name != "gguf":
            raise
        raise UserError("the GGUF export needs the gguf package: pip install 'autonas-codelm[kernels]'") from None
    from nas.hf import NotExportable, export_blockers, export_hf
    from nas.run_folder import load_trained_model

    net, tokenizer = load_trained_model(model)
    blockers = export_blockers(net.arch)
    if blockers:  # before either file is written
        raise NotExportable(f"{model} is not Llama-shaped, so it has no exact export: " + "; ".join(blockers))
    table = Table(title=f"export of {model}", show_header=False)
    if gguf_out is not None:
        with err_console.status(f"writing {gguf_out} ..."):
            done = export_gguf(net, tokenizer, gguf_out, cast(GGUFType, dtype), name=model.resolve().name)
        types = sorted(set(done.tensor_types.values()))
        table.add_row("gguf", str(done.path))
        table.add_row("gguf_tensors", f"{done.tensors} ({', '.join(types)})")
        table.add_row("gguf_size_bytes", f"{done.size_bytes:,}")
    if hf_out is not None:
        with err_console.status(f"writing {hf_out} ..."):
            export_hf(net, hf_out, tokenizer)
        table.add_row("hf", str(hf_out))
    table.add_row("tokenizer", f"{tokenizer.name} ({tokenizer.vocab_size} tokens, separator id {tokenizer.eos_id})")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
