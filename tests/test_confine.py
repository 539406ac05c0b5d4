"""Workers that run edited code, confined by bubblewrap: a real ``python -m nas train`` still trains, while the
code cannot read the hidden home, write outside its run folder, or reach a listener on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.confine import Confinement, can_confine, confined

REASON = can_confine()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no confinement here: {REASON}")

PROBE = r'''
import json, os, socket, sys
home, run, project, port = sys.argv[1:5]
seen = {"home_listing": sorted(os.listdir(home)), "canary": os.path.exists(os.path.join(home, "canary.txt"))}
for name, path in (("run", os.path.join(run, "ok.txt")), ("project", os.path.join(project, "escaped.txt")),
                   ("tmp", "/tmp/private.txt")):
    try:
        with open(path, "w") as fh:
            fh.write("x")
        seen[name] = "written"
    except OSError as e:
        seen[name] = type(e).__name__
try:
    socket.create_connection(("127.0.0.1", int(port)), timeout=1).close()
    seen["network"] = "connected"
except OSError as e:
    seen["network"] = type(e).__name__
import torch, nas
seen["imports"] = "ok"
print("SEEN" + json.dumps(seen))
'''


def _listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def _run_probe(c: Confinement, home: Path, run: Path, project: Path, port: int, cwd: Path) -> dict:
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    res = subprocess.run(confined([sys.executable, "-c", PROBE, str(home), str(run), str(project), str(port)], c),
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.split("SEEN", 1)[1])


def test_confined_code_sees_only_what_it_was_given(tmp_path: Path) -> None:
    home, run, project = tmp_path / "home", tmp_path / "ws" / "runs" / "e001", tmp_path / "project"
    for d in (home, run, project):
        d.mkdir(parents=True)
    (home / "canary.txt").write_text("a secret")
    listener = _listener()
    c = Confinement(writable=(run,), readable=(tmp_path / "ws", project), home=home)
    seen = _run_probe(c, home, run, project, listener.getsockname()[1], tmp_path / "ws")
    assert seen["home_listing"] == [] and not seen["canary"]
    assert seen["run"] == "written" and (run / "ok.txt").read_text() == "x"
    assert seen["project"] == "OSError" and not (project / "escaped.txt").exists()
    assert seen["tmp"] == "written" and not Path("/tmp/private.txt").exists()  # its own /tmp, gone with it
    assert seen["network"] in ("ConnectionRefusedError", "OSError", "TimeoutError") and seen["imports"] == "ok"
    with_net = _run_probe(Confinement(writable=(run,), readable=(tmp_path / "ws", project), home=home, network=True),
                          home, run, project, listener.getsockname()[1], tmp_path / "ws")
    assert with_net["network"] == "connected"  # granted only to experiments that need it
    listener.close()


def test_interpreter_hidden_by_the_home_is_bound_back() -> None:
    """When the home holds the interpreter (pyenv, a venv in the home), it is bound back read-only, alone."""
    home = Path(sys.base_prefix).resolve().parent
    res = subprocess.run(confined([sys.executable, "-c", f"import os, torch; print(sorted(os.listdir({str(home)!r})))"],
                                  Confinement(home=home)), capture_output=True, text=True, timeout=120, cwd="/")
    assert res.returncode == 0, res.stderr[-2000:]
    assert eval(res.stdout.strip()) == [Path(sys.base_prefix).resolve().name]


@pytest.mark.slow
def test_a_real_training_run_works_confined(tmp_path: Path, small_corpus_dir: Path) -> None:
    out = tmp_path / "ws" / "runs" / "e001"
    arch = tmp_path / "ws" / "arch.json"
    arch.parent.mkdir(parents=True)
    arch.write_text(json.dumps({"n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 2, "d_ff": 64,
                                "context_length": 64, "vocab_size": 256}))
    cache = Path(os.environ["AUTONAS_CACHE"])
    c = Confinement(writable=(out, cache), readable=(tmp_path / "ws", small_corpus_dir))
    env = {"PATH": os.environ["PATH"], "HOME": str(Path.home()), "AUTONAS_CACHE": str(cache)}
    res = subprocess.run(confined([sys.executable, "-m", "nas", "train", "--arch", str(arch), "--budget", "8ktok",
                                   "--corpus", str(small_corpus_dir), "--out", str(out), "--eval-bytes", "4000"], c),
                         cwd=tmp_path / "ws", env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_bpb"] > 0
