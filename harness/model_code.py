"""The editable model code and the fixed harness as two places, and the model code a trained model carries.

A run's workspace holds a copy of the model code only: ``nas/space.py``, ``nas/model.py`` and ``nas/train.py``
(:data:`EDITABLE_MODULES`), plus any new module an editor adds beside them. A process finds that code through
``AUTONAS_MODEL_CODE`` (a folder holding ``nas/``), which ``nas/__init__.py`` puts in front of the installed
package's own folder: ``nas.model`` is then the workspace's, while ``nas.search``, ``nas.hf`` and the rest stay the
installed ones, and ``harness`` is never on a path a workspace controls. A folder whose ``nas/`` would replace a fixed
module (``nas/hf.py``, ``nas/__init__.py``, a sub-package) is refused, by the editor check and again at import.

A model trained from such code carries it: its run folder gets ``code/nas/*.py`` and ``code.json`` (a content hash
over those files, and the workspace commit when known). Whatever loads the model compares that hash with the code it
runs (:func:`active_code_hash`) and refuses a mismatch, or re-starts itself on the carried code
(:func:`reexec_with_model_code`), so an exported or evaluated model is the network that was trained.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from harness.errors import UserError
from sandbox.environment import WORKER, child_env

EDITABLE_MODULES = ("space", "model", "train")
MODEL_CODE_ENV = "AUTONAS_MODEL_CODE"
CODE_DIR = "code"
CODE_RECORD = "code.json"
PACKAGE = "nas"
MAX_CODE_BYTES = 4 * 2**20  # all model code files together
_MODULE_NAME = re.compile(r"^[a-z_][a-z0-9_]*\.py$")


@dataclass(frozen=True)
class CodeRecord:
    """What ``code.json`` says: the hash of the model code that trained a model, its files and the commit."""

    hash: str
    files: tuple[str, ...]
    commit: str | None = None
    source: str = "workspace"  # "workspace" (edited code, copied beside the model) or "installed" (the stock code)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "files": list(self.files)}, indent=2) + "\n"


@lru_cache(maxsize=1)
def installed_package_dir() -> Path:
    """The installed ``nas`` package's own folder (the one with ``__init__.py``), whatever paths were put before it."""
    spec = importlib.util.find_spec(PACKAGE)
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / "__init__.py").is_file():
            return Path(loc)
    raise RuntimeError("the nas package is not installed")


@lru_cache(maxsize=1)
def fixed_module_files() -> frozenset[str]:
    """File names of the installed ``nas`` modules that a workspace may not replace (everything but the model code)."""
    return frozenset(p.name for p in installed_package_dir().glob("*.py")) - {f"{m}.py" for m in EDITABLE_MODULES}


def off_limits_reason(rel_path: str) -> str | None:
    """Why an editor may not change ``rel_path`` (relative to the workspace), or None when it may.

    The model code (``nas/space.py``, ``nas/model.py``, ``nas/train.py``) and new flat modules beside it are the
    model's; everything else of ``nas/`` and all of ``harness/`` is the fixed code that measures it."""
    parts = Path(rel_path).parts
    if not parts:
        return None
    if parts[0] == "harness":
        return (
            f"{rel_path}: harness/ is the fixed measurement"
            " (data, splits, tokenizers, bits per byte, latency, HumanEval)"
        )
    if parts[0] != PACKAGE:
        return None
    if len(parts) != 2 or not _MODULE_NAME.match(parts[1]):
        return f"{rel_path}: only flat modules (nas/<name>.py) may sit beside the model code"
    if parts[1] in fixed_module_files():
        return (
            f"{rel_path} is fixed code (search, export, loading, CLI): only "
            f"{', '.join(f'nas/{m}.py' for m in EDITABLE_MODULES)} and new modules beside them are the model's"
        )
    return None


def code_files(root: Path) -> dict[str, bytes]:
    """``nas/<name>.py`` -> its bytes, for the model code under ``root`` (links and oversize trees refused)."""
    folder = Path(root) / PACKAGE
    out: dict[str, bytes] = {}
    total = 0
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        rel = f"{PACKAGE}/{path.name}"
        if path.name == "__pycache__":
            continue
        if path.is_symlink() or not path.is_file():
            raise UserError(f"model code {path}: not a regular file")
        reason = off_limits_reason(rel)
        if reason:
            raise UserError(f"model code in {root}: {reason}")
        out[rel] = path.read_bytes()
        total += len(out[rel])
        if total > MAX_CODE_BYTES:
            raise UserError(f"model code in {root} is over {MAX_CODE_BYTES // 2**20} MB")
    return out


def seed_files() -> dict[str, bytes]:
    """The installed model code, as a new workspace gets it (``nas/<module>.py`` -> bytes)."""
    pkg = installed_package_dir()
    return {f"{PACKAGE}/{m}.py": (pkg / f"{m}.py").read_bytes() for m in EDITABLE_MODULES}


def hash_files(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + str(len(files[name])).encode() + b"\0" + files[name])
    return h.hexdigest()


@lru_cache(maxsize=1)
def stock_code_hash() -> str:
    """The hash of the installed model code: a model that carries this hash is the stock (Llama-mapped) network."""
    return hash_files(seed_files())


def model_code_root() -> Path | None:
    """The folder named by ``AUTONAS_MODEL_CODE`` (absolute), or None when the installed code runs."""
    value = os.environ.get(MODEL_CODE_ENV)
    return Path(value).absolute() if value else None


def model_files(root: Path | None) -> dict[str, bytes]:
    """The model code a folder stands for: the installed model modules overlaid with the folder's.

    None stands for the installed modules only."""
    files = seed_files()
    if root is not None:
        files.update(code_files(root))
    return files


def active_code_hash() -> str:
    """The hash of the model code this process runs: the installed code overlaid with the named folder's files."""
    return hash_files(model_files(model_code_root()))


def package_path_for(root: Path) -> str:
    """The folder to put in front of ``nas.__path__`` (checked: no fixed module replaced, no link)."""
    folder = Path(root) / PACKAGE
    if not folder.is_dir():
        raise UserError(f"{MODEL_CODE_ENV}={root}: no {PACKAGE}/ folder there")
    code_files(root)
    return str(folder)


def write_code_record(run_dir: Path, code_root: Path | None, commit: str | None = None) -> CodeRecord:
    """Copy the model code that trained the model in ``run_dir`` into ``run_dir/code`` and write ``code.json``: the
    installed model modules overlaid with those under ``code_root`` (None: the installed code alone)."""
    files = model_files(code_root)
    record = CodeRecord(
        hash=hash_files(files),
        files=tuple(sorted(files)),
        commit=commit,
        source="workspace" if code_root is not None else "installed",
    )
    target = Path(run_dir) / CODE_DIR
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)
    (target / PACKAGE).mkdir(parents=True)
    for (
        name,
        data,
    ) in files.items():  # the stock code too: an upgrade of the installed package must not orphan the model
        (target / name).write_bytes(data)
    record_path = Path(run_dir) / CODE_RECORD
    if record_path.is_symlink():
        record_path.unlink()
    record_path.write_text(record.to_json())
    return record


def read_code_record(run_dir: Path) -> CodeRecord | None:
    """``code.json`` of a run folder; None for a folder that has none (trained by the installed code)."""
    path = Path(run_dir) / CODE_RECORD
    if not path.is_file():
        return None
    return parse_code_record(path.read_text(), path)


def parse_code_record(text: str, where: str | Path) -> CodeRecord:
    """The record in ``text`` (a ``code.json``'s); :class:`UserError` naming ``where`` for anything else, a record cut
    by a write in progress or one of the wrong shape (a run folder's files are written by untrusted code)."""
    try:
        raw = json.loads(text)
        files, commit = raw.get("files", []), raw.get("commit")
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise TypeError("files is not a list of names")
        return CodeRecord(
            hash=str(raw["hash"]),
            files=tuple(files),
            commit=commit if isinstance(commit, str) else None,
            source=str(raw.get("source", "workspace")),
        )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):  # AttributeError: not a JSON object
        raise UserError(f"{where} is not a code record (corrupt?)") from None


def stamp_commit(run_dir: Path, commit: str) -> None:
    """Name the commit that holds a model's code once it exists (a kept experiment is committed after it ran)."""
    record = read_code_record(run_dir)
    if record is not None and record.commit != commit:
        (Path(run_dir) / CODE_RECORD).write_text(CodeRecord(record.hash, record.files, commit, record.source).to_json())


def carried_code_mismatch(run_dir: Path) -> str | None:
    """Why the model in ``run_dir`` cannot be loaded by this process's model code, or None when it can."""
    record = read_code_record(run_dir)
    expected = record.hash if record else stock_code_hash()
    active = active_code_hash()
    if expected == active:
        return None
    where = f"its code is in {Path(run_dir) / CODE_DIR}" if record else "it was trained by the installed code"
    return (
        f"{run_dir} was trained by other model code (hash {expected[:12]}, this process runs {active[:12]}); "
        f"{where}: run with {MODEL_CODE_ENV} set to that folder"
    )


def reexec_with_model_code(run_dir: Path) -> None:
    """Start this command again on the model code ``run_dir`` carries when it is not the code running now.

    For command-line entry points that take one trained model (``--model RUN``): a model trained from edited code is
    then evaluated, compressed or exported by its own code, without the user naming it. Returns when no restart is
    needed; raises UserError when the folder's code is missing or differs but cannot be used.

    The restarted command runs the carried code as this user, unconfined (as ``trust_remote_code`` does for a
    Hugging Face model), but with only the allow-listed worker environment: the user's keys stay behind."""
    if carried_code_mismatch(run_dir) is None:
        return
    record = read_code_record(run_dir)
    code = (Path(run_dir) / CODE_DIR).absolute()
    if record is None:  # a folder from before models carried code: the installed code trained it
        if model_code_root() is None:
            raise UserError(carried_code_mismatch(run_dir) or "")
        env = {k: v for k, v in os.environ.items() if k != MODEL_CODE_ENV}  # back to the installed (stock) code
    else:
        if not (code / PACKAGE).is_dir():
            raise UserError(f"{run_dir} carries no model code ({code} is missing) although code.json names some")
        if hash_files(model_files(code)) != record.hash:
            raise UserError(f"the model code in {code} does not match its code.json hash (edited after training?)")
        if model_code_root() == code:
            raise UserError(carried_code_mismatch(run_dir) or "")
        # The carried code may be an agent's edit: it gets the workers' allow-listed environment (no API keys, no
        # credentials by shape), as the agent's own workers do; no command that restarts on it needs a key.
        env = child_env(WORKER, extra={MODEL_CODE_ENV: str(code)})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
