"""``RUN/best``: the kept model's files, copied out of the workspace (whose ``runs/`` is not committed) for whoever
reads the report. Every file is a worker's, so each is copied only when it is a regular file, never through a link."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from agent.progress import PROGRESS
from harness.model_code import CODE_DIR, CODE_RECORD, read_code_record
from sandbox.safe_files import UnsafeFile, copy_regular, remove

BEST_FILE_MAX_BYTES = 8 * 2**30
BEST_FILES = ("model.safetensors", "arch.json", "tokenizer.json", "metrics.json", CODE_RECORD)


def copy_best(model_dir: Path, run_dir: Path) -> Path:
    """Copy the model in ``model_dir`` (the incumbent's run folder) into ``run_dir/best``: its weights, architecture,
    tokenizer, metrics and code record, and, when it was trained by edited code, that code (``best/code/nas``), so
    the folder loads and scores on its own. No Hugging Face folder is made here (``python -m nas train --hf`` makes
    one for a Llama-family architecture trained by stock code). A file that is missing or not a regular file is left
    out, said on stderr."""
    best = run_dir / "best"
    best.mkdir(exist_ok=True)
    names = list(BEST_FILES)
    record = read_code_record(model_dir)
    if record is not None:
        remove(best / CODE_DIR)
        (best / CODE_DIR / "nas").mkdir(parents=True)
        names += [f"{CODE_DIR}/{f}" for f in record.files]
    for name in names:
        try:
            copy_regular(model_dir / name, best / name, BEST_FILE_MAX_BYTES)
        except UnsafeFile as err:
            PROGRESS.print(f"[yellow]best/: {escape(str(err))}; not copied[/yellow]")
    return best
