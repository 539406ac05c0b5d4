"""The console in a real headless browser (the system's chromium through chromedriver), against a real
``autonas serve`` following a real offline ``autonas run`` as it writes its folder: the runs list, a new experiment
appearing on the run page without a reload, an experiment's diff and its code and configuration side by side, STOP
ending the run, and a streamed completion in the playground. A screenshot of each page is kept (in the test's tmp
folder, and in $AUTONAS_TEST_ARTEFACTS when set)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[dev])")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip(
        f"the browser test needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / "screens" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 1000
    keep = os.environ.get("AUTONAS_TEST_ARTEFACTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / f"console-{name}.png")


@pytest.mark.slow
def test_console_follows_a_live_run_stops_it_and_streams_a_completion(
    tmp_path: Path, small_corpus_dir: Path, tiny_run: Path, browser: Any
) -> None:
    driver = browser
    runs = tmp_path / "runs"
    runs.mkdir()
    run = _start(
        [sys.executable, "-m", "agent.cli", "run", "find the best Python code model under 2 MB"]
        + ["--run-id", "live", "--runs-dir", str(runs), "--budget", "20m", "--experiment-budget", "8ktok"]
        + ["--search-trials", "1", "--corpus", str(small_corpus_dir), "--eval-bytes", "4000"],
        tmp_path / "run.log",
    )
    port = _free_port()
    server = _start(
        [sys.executable, "-m", "agent.cli", "serve", "--runs-dir", str(runs), "--port", str(port)]
        + ["--model", f"tiny={tiny_run}"],
        tmp_path / "serve.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        deadline = time.time() + 120
        while not (runs / "live" / "run.json").is_file() and time.time() < deadline:
            time.sleep(0.5)

        # the runs list
        driver.get(f"{base}/console/")
        link = WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.LINK_TEXT, "live")))
        assert "find the best Python code model" in driver.find_element(By.ID, "runs").text
        _shot(driver, tmp_path, "runs")

        # the run page: a new experiment appears without a reload
        link.click()
        WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.ID, "live")))
        assert driver.find_elements(By.ID, "row-e001") == []
        driver.execute_script("window.__sameDocument = 'yes';")
        WebDriverWait(driver, 900, poll_frequency=1).until(ec.presence_of_element_located((By.ID, "row-e001")))
        assert driver.execute_script("return window.__sameDocument;") == "yes"
        assert int(driver.find_element(By.ID, "exp-count").text) >= 1
        _shot(driver, tmp_path, "run-live")

        # STOP: the run ends and the page says so, still without a reload
        driver.find_element(By.ID, "stop").click()
        WebDriverWait(driver, 10).until(ec.alert_is_present()).accept()
        WebDriverWait(driver, 30).until(ec.text_to_be_present_in_element((By.ID, "stop-note"), "stop requested"))
        assert (runs / "live" / "STOP").is_file()
        WebDriverWait(driver, 900, poll_frequency=2).until(
            ec.text_to_be_present_in_element((By.ID, "run-state"), "finished")
        )
        assert driver.execute_script("return window.__sameDocument;") == "yes"
        assert run.wait(300) == 0
        _shot(driver, tmp_path, "run-stopped")

        # an experiment: its diff, then its code and its configuration side by side, the changed files open
        driver.find_element(By.LINK_TEXT, "e001").click()
        diff = WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.ID, "diff")))
        assert "configs/arch.json" in diff.text and "+" in diff.text
        assert driver.find_element(By.ID, "reproduce").text.strip()
        _shot(driver, tmp_path, "experiment")
        section = driver.find_element(By.ID, "code-and-config")
        driver.execute_script("arguments[0].scrollIntoView();", section)
        code, config = driver.find_element(By.ID, "code-pane"), driver.find_element(By.ID, "config-pane")
        left, right = code.rect, config.rect
        assert left["width"] > 300 and right["width"] > 300, (left, right)
        assert left["x"] + left["width"] <= right["x"], (left, right)  # the code on the left, the config beside it
        assert abs(left["y"] - right["y"]) < 5, (left, right)  # on the same row, not stacked
        arch = config.find_element(By.CSS_SELECTOR, 'details[data-path="configs/arch.json"]')
        assert arch.get_attribute("open") is not None and "changed" in arch.text  # changed: open and marked
        assert '"n_layers"' in arch.find_element(By.TAG_NAME, "pre").text
        shown = [d.get_attribute("data-path") for d in code.find_elements(By.CSS_SELECTOR, "details.file")]
        assert "nas/model.py" in shown, shown  # an offline run edits no code: the code its model carries
        _shot(driver, tmp_path, "experiment-code-and-config")

        # the playground: a completion streams in, with its speed
        driver.get(f"{base}/console/playground?model=tiny")
        prompt = WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.ID, "prompt")))
        prompt.clear()
        prompt.send_keys("import os\ndef main(")
        driver.find_element(By.ID, "max-tokens").clear()
        driver.find_element(By.ID, "max-tokens").send_keys("24")
        driver.find_element(By.ID, "generate").click()
        WebDriverWait(driver, 300).until(lambda d: d.find_element(By.ID, "speed").get_attribute("data-done") == "yes")
        speed = driver.find_element(By.ID, "speed").text
        assert "tokens/s" in speed and "ms/token" in speed and "error" not in speed, speed
        assert driver.find_element(By.ID, "generated").text
        _shot(driver, tmp_path, "playground")
    finally:
        _end(run)
        _end(server)
        for log in ("run.log", "serve.log"):
            print(f"--- {log}\n" + (tmp_path / log).read_text()[-3000:])
