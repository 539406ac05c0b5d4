"""Which models the server offers, and the loaded ones kept within a memory limit.

A model id is either a run id (its ``RUNS/<id>/best`` folder, written when a run keeps a model) or the name given
to an extra folder on the command line (``--model NAME=PATH`` or ``--model PATH``, named after the folder). Ids are
checked against a strict pattern before any path is built from them, so ``../`` or an absolute path never reaches
the file system. Models load on first use through :func:`nas.run_folder.load_trained_model`, which refuses a
folder whose carried model code differs from the code this server runs (edited code is never run in the server's
process), and stay loaded, least recently used first out, while their weights fit ``max_loaded_mb``.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError
from nas.run_folder import load_trained_model
from serve.engine import Engine, EngineOptions

MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
BEST = "best"


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
    if not MODEL_ID.match(name):
        raise UserError(f"--model {text!r}: the name {name!r} must match {MODEL_ID.pattern}")
    if not is_model_folder(folder):
        raise UserError(f"--model {text!r}: {folder} is not a model folder (needs arch.json and model.safetensors)")
    return name, folder


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

    def entries(self) -> list[ModelEntry]:
        """Every named folder and every run's kept model, in that order; a run still without ``best/`` is left out."""
        out = [self._entry(name, path) for name, path in self.named.items()]
        if self.runs_dir is not None and self.runs_dir.is_dir():
            for run in sorted(self.runs_dir.iterdir()):
                best = run / BEST
                if MODEL_ID.match(run.name) and run.name not in self.named and is_model_folder(best):
                    out.append(self._entry(run.name, best))
        return out

    def path_of(self, model_id: str) -> Path:
        if not MODEL_ID.match(model_id):
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
            model, tokenizer = load_trained_model(self.path_of(model_id))
            size = sum(p.numel() * p.element_size() for p in model.parameters())
            engine = Engine(model, tokenizer, self.options)
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

    @staticmethod
    def _entry(name: str, path: Path) -> ModelEntry:
        return ModelEntry(name, path, int((path / "model.safetensors").stat().st_mtime))
