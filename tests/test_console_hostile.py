"""The experiment page against a run folder planted by a hostile editor: the workspace, its results.tsv and the
experiment folders are written by edited code, so FIFOs, links out, torn or wrong-shaped records, huge and oddly named
files and HTML in names, contents and commit messages must neither hang, break nor leak through a page."""

from __future__ import annotations

import csv
import json
import os
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from harness import run_folder_layout as layout
from serve.app import ServeSettings, create_app
from serve.console_experiment import MAX_DIFF_BYTES, MAX_FILE_BYTES, MAX_SHOWN_BYTES
from tests.console_fixtures import make_run
from tests.test_console_http import _Panes

OUTSIDE_SECRET = "outside-credential-7f3a9c1e5b"  # in files outside the run: never on a page


def _client(runs_dir: Path) -> TestClient:
    return TestClient(create_app(ServeSettings(runs_dir=runs_dir)))


def _get_within(client: TestClient, url: str, fifos: list[Path], wait_s: float = 60.0) -> str:
    """The page's text; a request still blocked after ``wait_s`` fails the test (and the FIFOs are then written to,
    so the blocked reader gets its end of file and the thread ends)."""
    got: dict[str, object] = {}

    def fetch() -> None:
        response = client.get(url)
        got["status"], got["text"] = response.status_code, response.text

    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    worker.join(wait_s)
    if worker.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        worker.join(30)
        pytest.fail(f"{url} still blocked after {wait_s:.0f} s: a FIFO in the run folder was waited on")
    assert got["status"] == 200, got.get("text")
    return str(got["text"])


def _set_commit(ws: Path, exp_id: str, commit: str) -> None:
    """Rewrite results.tsv's commit of ``exp_id`` (the file lies in the workspace, where an editor can write)."""
    path = ws / layout.RESULTS_TSV
    rows = list(csv.DictReader(path.open(newline=""), delimiter="\t"))
    for row in rows:
        if row["experiment"] == exp_id:
            row["commit"] = commit
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=layout.RESULT_COLUMNS, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)


def test_fifos_planted_in_experiment_folders_do_not_hang_the_pages(tmp_path: Path) -> None:
    """A FIFO as metrics.json (read by the run page and the experiment page), as a carried model-code file and as
    the discarded experiment's command.json: the pages answer, saying what was not read."""
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    make_run(runs_dir, "plain", 2, code_editing=False)
    exps = runs_dir / "plain" / layout.WORKSPACE / layout.EXPERIMENT_RUNS
    fifos = [
        exps / "e001" / layout.METRICS_JSON,
        exps / "e001" / "code" / "nas" / "model.py",
        exps / "e002" / "command.json",
    ]
    for fifo in fifos:
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)
    client = _client(runs_dir)
    run_page = _get_within(client, "/console/runs/plain", fifos)
    assert "e001" in run_page
    page = _get_within(client, "/console/runs/plain/experiments/e001", fifos)
    assert "metrics.json is a link or not a regular file" in page
    assert "nas/model.py is a link or not a regular file" in page
    shown = {path for pane, path, *_ in _fed(page).files if pane == "code-pane"}
    assert "nas/model.py" not in shown and "nas/space.py" in shown  # the other carried files still show
    discarded = _get_within(client, "/console/runs/plain/experiments/e002", fifos)
    assert "command.json is a link or not a regular file" in discarded


def _fed(page: str) -> _Panes:
    panes = _Panes()
    panes.feed(page)
    return panes


def test_links_out_of_the_workspace_are_never_followed(tmp_path: Path) -> None:
    """metrics.json linked to a credentials file (flat JSON, as a cloud SDK writes one), an experiment folder and an
    editor-log folder that are links to folders outside: nothing of the outside files reaches a page."""
    outside = tmp_path / "home"
    (outside / "edit").mkdir(parents=True)
    creds = {"client_id": "x.apps", "client_secret": OUTSIDE_SECRET, "type": "authorized_user"}
    (outside / "creds.json").write_text(json.dumps(creds))
    (outside / layout.METRICS_JSON).write_text(json.dumps({"val_bpb": 1.0, "token": OUTSIDE_SECRET}))
    (outside / "command.json").write_text(json.dumps({"python_args": ["-m", "nas", OUTSIDE_SECRET]}))
    (outside / "code.json").write_text(json.dumps({"hash": OUTSIDE_SECRET, "files": []}))
    line = json.dumps({"step": 0, "action": "typed", "text": OUTSIDE_SECRET})
    (outside / "edit" / "gui_transcript.jsonl").write_text(line + "\n")
    (outside / "journal.md").write_text(f"## e001: train\n\n{OUTSIDE_SECRET}\n")
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    make_run(runs_dir, "r", 3)
    ws = runs_dir / "r" / layout.WORKSPACE
    exps = ws / layout.EXPERIMENT_RUNS
    (exps / "e001" / layout.METRICS_JSON).unlink()
    (exps / "e001" / layout.METRICS_JSON).symlink_to(outside / "creds.json")
    edit = exps / "e003" / layout.EDIT_LOGS
    edit.symlink_to(outside / "edit", target_is_directory=True)
    moved = exps / "e002"
    moved.rename(tmp_path / "e002-was")
    moved.symlink_to(outside, target_is_directory=True)  # the whole experiment folder (a discarded one) points out
    (ws / layout.JOURNAL).rename(tmp_path / "journal-was")
    (ws / layout.JOURNAL).symlink_to(outside / "journal.md")
    client = _client(runs_dir)
    for exp in ("e001", "e002", "e003"):
        page = client.get(f"/console/runs/r/experiments/{exp}")
        assert page.status_code == 200, page.text
        assert OUTSIDE_SECRET not in page.text, exp
        assert "is reached through a link" in page.text or "is a link or not a regular file" in page.text, exp
    assert OUTSIDE_SECRET not in client.get("/console/runs/r").text


@pytest.mark.parametrize(
    "record",
    ['{"hash": "ab', '{"hash": "ab", "files": [1, null]}', '{"hash": "ab", "files": "nas/model.py"}'],
    ids=["torn", "names-not-text", "names-a-string"],
)
def test_a_torn_or_wrong_shaped_code_record_is_said_not_a_500(tmp_path: Path, record: str) -> None:
    """A code.json cut by a write in progress (held before: pinned, the page is read while runs write) or whose file
    names are not text (a 500 before) is a line on the page."""
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    make_run(runs_dir, "plain", 1, code_editing=False)
    (runs_dir / "plain" / layout.WORKSPACE / layout.EXPERIMENT_RUNS / "e001" / "code.json").write_text(record)
    page = _client(runs_dir).get("/console/runs/plain/experiments/e001")
    assert page.status_code == 200, page.text
    assert "code.json is not a code record" in page.text


def test_a_hostile_commit_stays_bounded_escaped_and_unfollowed(tmp_path: Path) -> None:
    """A kept commit with sixty 150 kB configs, a 1 MB module, a link to /etc/passwd named like a module, a folder
    named like a module, non-UTF-8 bytes, a non-ASCII name, and HTML in a file name, a file's text and the commit
    message: the page stays within its budget, shows the link's target name only, and escapes every text."""
    from sandbox.workspace import Workspace

    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    make_run(runs_dir, "r", 1)
    ws = runs_dir / "r" / layout.WORKSPACE
    configs = ws / "configs"
    for i in range(60):
        (configs / f"bulk{i:02d}.json").write_text(json.dumps({"pad": f"{i:02d}" + "x" * 150_000}))
    (ws / "nas" / "big.py").write_text("# " + "y" * 1_000_000 + "\n")
    (ws / "nas" / "passwd.py").symlink_to("/etc/passwd")
    (ws / "nas" / "pkg.py").mkdir()
    (ws / "nas" / "pkg.py" / "inner.py").write_text("INNER = 1\n")
    (ws / "nas" / "bytes.py").write_bytes(b"\xff\xfe\x00 not utf-8 \xc3\n")
    (ws / "nas" / "café.py").write_text("ACCENT = 'é'\n")
    script = "</script><script>alert('code')</script><img src=x onerror=alert(1)>"
    (ws / "nas" / "<img src=x onerror=alert(2)>.py").write_text(f"TEXT = {script!r}\n")
    sha = Workspace.open(ws, "r").commit_experiment("title </script><img src=x onerror=alert(3)>", "why", {})
    _set_commit(ws, "e001", sha[:10])
    page = _client(runs_dir).get("/console/runs/r/experiments/e001")
    assert page.status_code == 200, page.text[-2000:]
    assert len(page.text.encode()) < MAX_SHOWN_BYTES + MAX_DIFF_BYTES + 500_000  # the page's budget, and markup
    for raw in ("<img src=x onerror", "<script>alert", "</script><img"):
        assert raw not in page.text
    assert "&lt;img src=x onerror=alert(2)&gt;.py" in page.text  # the name and the texts are shown, escaped
    shown = {path: text for _, path, _, _, text in _fed(page.text).files}
    assert shown["nas/passwd.py"] == "/etc/passwd" and "root:" not in page.text  # a committed link is its target
    assert shown["nas/pkg.py/inner.py"] == "INNER = 1\n"
    assert shown["nas/café.py"] == "ACCENT = 'é'\n"
    assert shown["nas/bytes.py"].endswith(" not utf-8 \ufffd\n")
    assert shown["nas/big.py"] == "" and f"{(ws / 'nas' / 'big.py').stat().st_size} bytes: too large" in page.text
    assert shown["configs/bulk00.json"].startswith('{"pad": "00xx')
    assert 0 < sum(len(t) for t in shown.values()) <= MAX_SHOWN_BYTES
    assert all(len(t) <= MAX_FILE_BYTES for t in shown.values())


@pytest.mark.parametrize("commit", ["HEAD", "--output=/tmp/x", "HEAD:../../x", "main~0"])
def test_a_results_commit_that_is_not_a_commit_id_reaches_no_git(runs_dir_r1: Path, commit: str) -> None:
    """results.tsv lies in the workspace: a kept row whose commit is a ref, an option or a path shows no commit
    (before, ``HEAD`` showed whatever commit HEAD is), and says so."""
    ws = runs_dir_r1 / "r" / layout.WORKSPACE
    _set_commit(ws, "e001", commit)
    page = _client(runs_dir_r1).get("/console/runs/r/experiments/e001")
    assert page.status_code == 200
    assert "which is not a commit id" in page.text and 'id="diff"' not in page.text


@pytest.fixture()
def runs_dir_r1(tmp_path: Path) -> Path:
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    make_run(runs_dir, "r", 1)
    return runs_dir


def test_a_huge_committed_file_is_never_held_whole(runs_dir_r1: Path) -> None:
    """A kept commit that adds a 40 MB module: the page reads at most its caps of git's output (the diff and the
    listing), not the whole patch (before, git's 40 MB of output was read into memory, then cut)."""
    import tracemalloc

    from sandbox.workspace import Workspace
    from serve.console_experiment import read_experiment
    from serve.console_runs import read_run

    ws = runs_dir_r1 / "r" / layout.WORKSPACE
    (ws / "nas" / "huge.py").write_text("# " + "z" * 40_000_000 + "\n")
    sha = Workspace.open(ws, "r").commit_experiment("a huge module", "why", {})
    _set_commit(ws, "e001", sha[:10])
    run = read_run(runs_dir_r1, "r")
    tracemalloc.start()
    try:
        detail = read_experiment(run, "e001", runs_dir_r1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert detail.ref == sha and detail.diff.endswith(f"… cut at {MAX_DIFF_BYTES:,} bytes\n")
    assert next(f for f in detail.code if f.path == "nas/huge.py").note.startswith("40000003 bytes: too large")
    assert peak < 10 * MAX_DIFF_BYTES  # a few copies of the shown 2 MB at most, never the 40 MB


def test_a_journal_of_millions_of_short_lines_still_reads(runs_dir_r1: Path) -> None:
    """journal.md lies in the workspace: 6 million short lines under one heading (12 MB). Each page reads the journal;
    splitting it added line by line to a string (quadratic: 38 s for 1.6 MB, hours for this one). It runs in a child
    process so a page that never answers is stopped, not left computing."""
    import subprocess
    import sys

    journal = runs_dir_r1 / "r" / layout.WORKSPACE / layout.JOURNAL
    journal.write_text("## e001: train\n" + "x\n" * 6_000_000)
    code = (
        "import sys; from pathlib import Path; from serve.console_experiment import read_experiment; "
        "from serve.console_runs import read_run; runs = Path(sys.argv[1]); "
        "d = read_experiment(read_run(runs, 'r'), 'e001', runs); print(len(d.journal), d.journal[:14])"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(runs_dir_r1)], capture_output=True, text=True, timeout=240
        )
    except subprocess.TimeoutExpired:
        pytest.fail("reading a run whose journal has 6 million lines did not end in 240 s")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(MAX_FILE_BYTES), "##", "e001:", "train"]


@pytest.mark.parametrize("how", ["gitdir-file", "link"])
def test_a_dot_git_that_points_at_another_repository_is_not_read(runs_dir_r1: Path, tmp_path: Path, how: str) -> None:
    """An editor that swaps the workspace's .git for a gitdir file or a link (restored only after its edit) would
    point the page's git at another repository of the user's: its commits are never shown."""
    import subprocess

    other = tmp_path / "private"
    other.mkdir()
    (other / "secret.py").write_text(f"TOKEN = {OUTSIDE_SECRET!r}\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@x", "GIT_COMMITTER_NAME": "u"}
    env["GIT_COMMITTER_EMAIL"] = "u@x"
    for args in (["init", "-q"], ["add", "secret.py"], ["commit", "-q", "-m", "private"]):
        subprocess.run(["git", "-C", str(other), *args], check=True, env=env)
    sha = subprocess.run(["git", "-C", str(other), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    ws = runs_dir_r1 / "r" / layout.WORKSPACE
    (ws / ".git").rename(tmp_path / "git-was")
    if how == "link":
        (ws / ".git").symlink_to(other / ".git", target_is_directory=True)
    else:
        (ws / ".git").write_text(f"gitdir: {other / '.git'}\n")
    _set_commit(ws, "e001", sha[:10])
    page = _client(runs_dir_r1).get("/console/runs/r/experiments/e001")
    assert page.status_code == 200
    assert OUTSIDE_SECRET not in page.text and "secret.py" not in page.text
    assert "its history is not read" in page.text


def test_a_diff_driver_planted_in_the_repository_never_runs(runs_dir_r1: Path, tmp_path: Path) -> None:
    """While an editor runs, .git is its to change (the agent puts it back only afterwards): a textconv driver in
    .git/config, named for every file by .git/info/attributes, ran as the console's user when the page showed the
    diff or a file. Git shows the bytes now, running nothing the repository names."""
    ran = tmp_path / "driver-ran"
    ws = runs_dir_r1 / "r" / layout.WORKSPACE
    with open(ws / ".git" / "config", "a") as fh:
        fh.write(f'[diff "x"]\n\ttextconv = "sh -c \'touch {ran}; cat \\"$0\\"\'"\n')
        fh.write(f"[diff]\n\texternal = \"sh -c 'touch {ran}'\"\n")
    (ws / ".git" / "info").mkdir(exist_ok=True)
    (ws / ".git" / "info" / "attributes").write_text("* diff=x\n")
    page = _client(runs_dir_r1).get("/console/runs/r/experiments/e001")
    assert page.status_code == 200
    assert not ran.exists()
    shown = {path: text for _, path, _, _, text in _fed(page.text).files}
    assert shown["configs/train.json"] == (ws / "configs" / "train.json").read_text()  # the bytes, no driver
