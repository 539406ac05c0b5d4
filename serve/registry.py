"""Which models the server offers, and the loaded ones kept within a memory limit.

A model id is either a run id (its ``RUNS/<id>/best`` folder, written when a run keeps a model) or the name given
to an extra folder on the command line (``--model NAME=PATH`` or ``--model PATH``, named after the folder). Ids are
checked against a strict pattern before any path is built from them, so ``../`` or an absolute path never reaches
the file system. Models load on first use through :func:`nas.run_folder.load_trained_model`, which refuses a
folder whose carried model code differs from the code this server runs (edited code is never run in the server's
process), and stay loaded, least recently used first out, while their weights fit ``max_loaded_mb``.

Each model decodes with the runtime :func:`plan_runtime` names: with ``--runtime auto`` the one its folder measured
fastest (``deploy_cpu_runtime`` in ``metrics.json``, written by ``autonas compress``) when the engine can batch it
(ONNX Runtime fp32 or int8, PyTorch fp32), else PyTorch fp32; or the one the option names. The ONNX graphs are
exported from the loaded model into a scratch folder the registry owns and removes on close.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError
from nas.model import CodeLM
from nas.run_folder import load_trained_model
from sandbox.safe_files import UnsafeFile, read_json_object
from serve.batched_step import SlotDecoder, TorchSlotDecoder
from serve.engine import Engine, EngineOptions
from serve.ids import ID_PATTERN, valid_id
from serve.runtime_choice import RUNTIME_CHOICES

BEST = "best"
# the folder's measured runtime (kernels.runtimes names) -> what the engine batches it with
BATCHABLE = {"torch_fp32": "torch", "onnx_fp32": "onnx", "onnx_int8": "onnx-int8"}
RUNTIME_NAMES = {"torch": "torch_fp32", "onnx": "onnx_fp32", "onnx-int8": "onnx_int8"}


class UnknownModel(LookupError):
    """No model with that id (or an id that is not a valid name)."""


@dataclass(frozen=True)
class ModelEntry:
    id: str
    path: Path
    created: int  # unix seconds of the weights file, for /v1/models


def is_model_folder(path: Path) -> bool:
    return (path / "arch.json").is_file() and (path / "model.safetensors").is_file()


def parse_model_option(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (named after its folder); the name must be a valid model id."""
    name, sep, path = text.partition("=")
    folder = Path(path if sep else text).expanduser()
    name = name if sep else folder.resolve().name
    if not valid_id(name):
        raise UserError(f"--model {text!r}: the name {name!r} must match {ID_PATTERN.pattern} (ASCII, no '..')")
    if not is_model_folder(folder):
        raise UserError(f"--model {text!r}: {folder} is not a model folder (needs arch.json and model.safetensors)")
    return name, folder


def measured_runtime(folder: Path) -> str | None:
    """The runtime ``autonas compress`` measured fastest for this folder (``deploy_cpu_runtime``), if any.

    The run wrote that file: it is read only as a regular file, not through a link, so a FIFO cannot hang the
    server's model list (or a scoring) and a link cannot pick the runtime from a file elsewhere."""
    try:
        value = (read_json_object(folder / "metrics.json") or {}).get("deploy_cpu_runtime")
    except (OSError, UnsafeFile):
        return None
    return value if isinstance(value, str) else None


def plan_runtime(folder: Path, option: str = "auto") -> str:
    """What serves the model in ``folder``: ``torch_fp32``, ``onnx_fp32`` or ``onnx_int8``.

    ``auto`` takes the folder's measured choice when the engine can batch it and onnxruntime is installed (a
    measured ``torch_int8`` or CTranslate2 choice is served by PyTorch fp32); any other option is taken as it is."""
    if option not in RUNTIME_CHOICES:
        raise UserError(f"--runtime {option!r}: use one of {', '.join(RUNTIME_CHOICES)}")
    if option != "auto":
        return RUNTIME_NAMES[option]
    choice = BATCHABLE.get(measured_runtime(folder) or "", "torch")
    if choice != "torch" and importlib.util.find_spec("onnxruntime") is None:
        return RUNTIME_NAMES["torch"]
    return RUNTIME_NAMES[choice]


def decoder_factory(model: CodeLM, runtime: str, work_dir: Path) -> Callable[[int], SlotDecoder]:
    """Builds the engine's decoder for ``runtime`` (a :func:`plan_runtime` name) once the slot count is known."""
    if runtime == "torch_fp32":
        return lambda slots: TorchSlotDecoder(model, slots)

    def onnx(slots: int) -> SlotDecoder:
        from serve.onnx_step import OnnxSlotDecoder  # onnxruntime is loaded only for a model that uses it

        return OnnxSlotDecoder(model, slots, work_dir, int8=runtime == "onnx_int8")

    return onnx


def start_engine(folder: Path, options: EngineOptions, work_dir: Path, name: str) -> Engine:
    """Load the model in ``folder`` and start its engine on the runtime :func:`plan_runtime` picks for
    ``options.runtime``; ONNX graphs go under ``work_dir`` (the caller's scratch space, never the run folder).

    The server's models and ``autonas eval humaneval --runtime`` both start engines here, so a folder scored
    directly decodes exactly as it does when served. With ``auto`` a runtime that fails to start (an export or an
    ONNX session) falls back to PyTorch fp32; a runtime named outright raises :class:`~harness.errors.UserError`
    saying why (``name`` is what the message calls the model)."""
    model, tokenizer = load_trained_model(folder)
    runtime = plan_runtime(folder, options.runtime)
    try:
        return Engine(model, tokenizer, options, decoder_factory(model, runtime, work_dir))
    except Exception as err:  # an export or a session that fails: auto falls back, a named runtime says why
        if options.runtime != "auto" or runtime == "torch_fp32":
            raise UserError(f"cannot serve {name} with {runtime}: {str(err).splitlines()[0][:200]}") from None
        return Engine(model, tokenizer, options)


class ModelRegistry:
    """Lists the servable models and hands out an :class:`Engine` per model, loading it on first use."""

    def __init__(
        self,
        runs_dir: Path | None,
        named: dict[str, Path] | None = None,
        max_loaded_mb: float = 2048.0,
        options: EngineOptions = EngineOptions(),
    ):
        self.runs_dir, self.named = runs_dir, dict(named or {})
        self.max_loaded_bytes = max_loaded_mb * 1e6
        self.options = options
        self._loaded: OrderedDict[str, tuple[Engine, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._scratch: Path | None = None  # where ONNX graphs are exported; made on first need

    def runtime_of(self, model_id: str) -> str:
        """The runtime serving ``model_id`` (loaded), or the one that will (not loaded yet)."""
        with self._lock:
            if model_id in self._loaded:
                return self._loaded[model_id][0].runtime
        return plan_runtime(self.path_of(model_id), self.options.runtime)

    def entries(self) -> list[ModelEntry]:
        """Every named folder and every run's kept model, in that order; a run still without ``best/`` is left out."""
        out = [self._entry(name, path) for name, path in self.named.items()]
        if self.runs_dir is not None and self.runs_dir.is_dir():
            for run in sorted(self.runs_dir.iterdir()):
                best = run / BEST
                if valid_id(run.name) and run.name not in self.named and is_model_folder(best):
                    out.append(self._entry(run.name, best))
        return out

    def path_of(self, model_id: str) -> Path:
        if not valid_id(model_id):
            raise UnknownModel(f"model {model_id[:80]!r} is not a valid model id")
        if model_id in self.named:
            return self.named[model_id]
        if self.runs_dir is not None:
            best = self.runs_dir / model_id / BEST
            if is_model_folder(best):
                return best
        raise UnknownModel(f"the model {model_id!r} does not exist")

    def engine(self, model_id: str) -> Engine:
        """The running engine of ``model_id``, loading the model (and unloading others past the limit) if needed.

        A folder that cannot be loaded raises :class:`~harness.errors.UserError` with the reason."""
        with self._lock:
            if model_id in self._loaded:
                self._loaded.move_to_end(model_id)
                return self._loaded[model_id][0]
            folder = self.path_of(model_id)
            if self._scratch is None:
                self._scratch = Path(tempfile.mkdtemp(prefix="autonas-serve-"))
            engine = start_engine(folder, self.options, self._scratch / model_id, model_id)
            size = sum(p.numel() * p.element_size() for p in engine.model.parameters())
            self._loaded[model_id] = (engine, size)
            while len(self._loaded) > 1 and sum(s for _, s in self._loaded.values()) > self.max_loaded_bytes:
                _, (old, _) = self._loaded.popitem(last=False)
                old.close()
            return engine

    def close(self) -> None:
        with self._lock:
            for engine, _ in self._loaded.values():
                engine.close()
            self._loaded.clear()
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
                self._scratch = None

    @staticmethod
    def _entry(name: str, path: Path) -> ModelEntry:
        return ModelEntry(name, path, int((path / "model.safetensors").stat().st_mtime))
