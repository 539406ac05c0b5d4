"""The environment every child process gets: built from an allow-list, never the parent's environment minus
a few names. A deny-list cannot know every secret's name (``AZURE_OPENAI_KEY``, ``GITHUB_PAT``,
``DATABASE_URL=postgresql://u:pw@h/db``, ``MY_SERVICE_CREDENTIALS`` all passed one); here a variable reaches a
child only when a family below admits it, and each family says why it is there.

Invariants:

- A child gets the families of its *profile* (``WORKER``, ``CLAUDE_CODE_EDITOR``, ``GUI_EDITOR``, ``TOOL``) plus
  the values its caller sets explicitly (``extra``); nothing else crosses over.
- A secret reaches a child only through a *grant*: a family that names credentials on purpose (Claude Code's
  ``ANTHROPIC_*`` for the editors that run it, one provider key through :func:`grant`).
- Outside the grants, a value that carries a password in a URL (``https://user:pw@proxy:3128``) is dropped, and so
  is a name admitted by a prefix but shaped like a credential (``RAY_AUTH_TOKEN``, ``HF_HUB_TOKEN``): prefixes such
  as ``RAY_`` or ``TRANSFORMERS_`` admit families of settings whose every member nobody has read.

Standard library only: the workers (``python -m nas ...``) import it on a bare GPU box.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

CREDENTIAL_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|COOKIE|PRIVATE", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/@\s:]*:[^/@\s]*@", re.IGNORECASE)


@dataclass(frozen=True)
class Family:
    """Variables admitted together, for one reason: exact ``names`` and name ``prefixes``."""

    why: str
    names: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    grant: bool = False  # its members are credentials on purpose: not filtered by their shape

    def admits(self, name: str, value: str) -> bool:
        if name in self.names:  # read one by one when listed: only its value can still carry a password
            return self.grant or not URL_WITH_PASSWORD.search(value)
        if name.startswith(self.prefixes):
            return self.grant or not (CREDENTIAL_NAME.search(name) or URL_WITH_PASSWORD.search(value))
        return False


def _family(why: str, names: str = "", prefixes: str = "", grant: bool = False) -> Family:
    return Family(why, frozenset(names.split()), tuple(prefixes.split()), grant)


SYSTEM = _family(
    "finding programs, the user's home and caches, text encoding, time zone, scratch space, how to print",
    "PATH HOME USER LOGNAME LANG LANGUAGE TZ TMPDIR TEMP TMP TERM NO_COLOR",
    "LC_",
)
PYTHON = _family(
    "how the interpreter runs: import path, buffering, hash seed, warnings, byte-code cache, the virtual environment",
    "PYTHONPATH PYTHONHOME PYTHONUNBUFFERED PYTHONHASHSEED PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX "
    "PYTHONIOENCODING PYTHONUTF8 PYTHONWARNINGS PYTHONFAULTHANDLER PYTHONNOUSERSITE PYTHONSAFEPATH PYTHONDEVMODE "
    "PYTHONMALLOC VIRTUAL_ENV",
)
AUTONAS = _family("this project's own settings (AUTONAS_CACHE, AUTONAS_WORKER_THREADS)", prefixes="AUTONAS_")
COMPUTE = _family(
    "which accelerators, how many threads, where kernels are compiled and cached: CUDA, ROCm, NCCL, PyTorch, Triton, "
    "OpenMP, MKL, OpenBLAS, and Ray's settings (its auth token, a credential by shape, is dropped)",
    "LD_LIBRARY_PATH HIP_VISIBLE_DEVICES ROCR_VISIBLE_DEVICES",
    "CUDA_ NVIDIA_ NCCL_ TORCH_ TORCHINDUCTOR_ TORCHDYNAMO_ PYTORCH_ TRITON_ OMP_ KMP_ MKL_ OPENBLAS_ RAY_",
)
HF_CACHE = _family(
    "where Hugging Face models and data sets are cached and whether to stay offline (never HF_TOKEN)",
    "HF_HOME HF_ENDPOINT TOKENIZERS_PARALLELISM XDG_CACHE_HOME",
    "HF_HUB_ HF_DATASETS_ TRANSFORMERS_",
)
NETWORK = _family(
    "reaching a server through the machine's proxy with its CA bundle (a proxy URL with a password is dropped)",
    "HTTP_PROXY HTTPS_PROXY ALL_PROXY NO_PROXY http_proxy https_proxy all_proxy no_proxy "
    "SSL_CERT_FILE SSL_CERT_DIR REQUESTS_CA_BUNDLE CURL_CA_BUNDLE NODE_EXTRA_CA_CERTS",
)
CLAUDE_CODE = _family(
    "Claude Code's own settings and its Anthropic key: only the editors that run Claude Code get them",
    "CLAUDE_CONFIG_DIR MAX_THINKING_TOKENS",
    "ANTHROPIC_ CLAUDE_CODE_ DISABLE_",
    grant=True,
)
DISPLAY = _family(
    "the X display the GUI editor draws on and the path of its cookie file: the GUI editor only",
    "DISPLAY XAUTHORITY",
    grant=True,
)

WORKER = (SYSTEM, PYTHON, AUTONAS, COMPUTE, HF_CACHE, NETWORK)  # nas train / search / worker, distill, compress, eval
CLAUDE_CODE_EDITOR = (SYSTEM, NETWORK, CLAUDE_CODE)
GUI_EDITOR = (*CLAUDE_CODE_EDITOR, DISPLAY)
TOOL = (SYSTEM,)  # git, Xvfb, tesseract: programs that need no settings of ours and no key


def grant(*names: str, why: str = "a key the component provably needs") -> Family:
    """A family of exactly ``names``, credentials included (e.g. the one provider key an API teacher uses)."""
    return Family(why, frozenset(names), (), grant=True)


def child_env(
    profile: tuple[Family, ...] = WORKER, extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The variables of ``base`` (default: this process's environment) that ``profile`` admits, plus ``extra``."""
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if any(f.admits(k, v) for f in profile)}
    env.update(extra or {})
    return env


@contextmanager
def environ_limited_to(profile: tuple[Family, ...] = WORKER) -> Iterator[None]:
    """For libraries that start their children from ``os.environ`` and take no environment (a local Ray cluster):
    this process's environment holds only what ``profile`` admits inside the block, and all of it again after."""
    saved = dict(os.environ)
    kept = child_env(profile, base=saved)
    for name in saved.keys() - kept.keys():
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
