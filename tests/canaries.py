"""Secrets with names no deny-list knows, set in a parent to check that no child process receives them."""

from __future__ import annotations

from pathlib import Path

CANARIES = {
    "AZURE_OPENAI_KEY": "canary-azure-5d1e",
    "GROQ_KEY": "canary-groq-5d1e",
    "GITHUB_PAT": "canary-ghpat-5d1e",
    "DATABASE_URL": "postgresql://u:canary-pw-5d1e@h/db",
    "MY_SERVICE_CREDENTIALS": "canary-creds-5d1e",
    "OPENAI_API_KEY": "canary-openai-5d1e",
    "HF_TOKEN": "canary-hf-5d1e",
    "RAY_AUTH_TOKEN": "canary-ray-5d1e",
}
MARK = "5d1e"  # in every canary value


def environ_of(pid: int) -> str | None:
    """The environment ``pid`` was started with, as ``NAME=value`` lines (None once it is gone)."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").replace("\0", "\n")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def leaks(text: str) -> list[str]:
    """Canary names or values found in ``text`` (an environment dump or a process's output)."""
    names = {line.split("=", 1)[0] for line in text.splitlines()}
    return sorted({n for n in CANARIES if n in names} | ({"a canary value"} if MARK in text else set()))
