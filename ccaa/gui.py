"""The GUI fallback: when Claude Code cannot be run headless (a CLI build without ``-p``, a login that only the
interactive session accepts, or another terminal coding tool), drive it like a person would.

A terminal (xterm) opens on a display (``$DISPLAY``, else an Xvfb we start once per process), running the
editor's interactive command in the workspace. The driver watches the screen with ``mss`` screenshots, reads it
(tesseract OCR, or a vision model behind an OpenAI-compatible endpoint such as OpenCUA served by vLLM), answers
prompts by rule (trust this folder: yes; use the configured API key: yes; run a shell command: no), types the
instruction with ``pyautogui`` once the tool is ready, and finishes when the workspace has changed and the screen
has stopped moving, or when the time limit passes. Every screen that differs from the last one is kept as a PNG
with its text in ``gui_transcript.jsonl`` for review.

pyautogui binds to the display when it is imported, so the display is chosen once per process. The terminal (and
the tool in it) gets the editor's allow-listed environment plus the display (``sandbox.environment.GUI_EDITOR``);
Xvfb and tesseract get only the system basics.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ccaa.claude_code import confinement_flags, editor_env, find_claude_binary
from ccaa.editor import EditInstruction, Editor, EditorReport, EditorUnavailable, snapshot_tree
from sandbox.environment import GUI_EDITOR, TOOL, child_env
from sandbox.redact import contains_secret, redact, secret_values


@dataclass(frozen=True)
class ScreenRule:
    """When the screen text matches ``pattern`` (a case-insensitive regex), press ``keys`` in order."""

    name: str
    pattern: str
    keys: tuple[str, ...]


# Claude Code 2.1's interactive prompts. Shell commands are refused: the edit is judged by its diff, and a
# command could reach outside the workspace. Edits inside it are accepted by --permission-mode acceptEdits.
CLAUDE_RULES = (
    ScreenRule("trust the workspace folder", r"trust this folder|do you trust the files", ("enter",)),
    ScreenRule("use the configured API key", r"want to use this API key", ("up", "enter")),
    ScreenRule("refuse a shell command", r"do you want to proceed\?", ("escape",)),
)
CLAUDE_READY = r"for shortcuts|accept edits on|bypass permissions on|plan mode on"
CLAUDE_BUSY = r"esc to interrupt"


class ScreenReader(Protocol):
    def read(self, png: Path) -> str: ...


class TesseractReader:
    """OCR with tesseract; the terminal is drawn black on white in a large monospace font, which it reads well."""

    def __init__(self) -> None:
        if shutil.which("tesseract") is None:
            raise EditorUnavailable(
                "no `tesseract` for reading the screen: apt-get install tesseract-ocr, or use a vision model"
            )

    def read(self, png: Path) -> str:
        """``tesseract PNG stdout`` (what pytesseract runs), started with the system basics only."""
        proc = subprocess.run(
            ["tesseract", str(png), "stdout"], capture_output=True, text=True, env=child_env(TOOL), timeout=120
        )
        if proc.returncode != 0:
            raise RuntimeError(f"tesseract failed on {png.name}: {proc.stderr.strip()[-200:]}")
        return proc.stdout


class VisionModelReader:
    """A vision-language model behind an OpenAI-compatible endpoint transcribes the screen (e.g. OpenCUA on vLLM)."""

    PROMPT = "Transcribe every line of text visible in this terminal screenshot, top to bottom. Output only the text."

    def __init__(self, model: str, base_url: str, api_key: str | None = None, timeout_s: float = 60.0):
        from openai import OpenAI  # the GUI editor's optional peers are imported only when it is used

        self.model = model
        self.client = OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout_s, max_retries=2)
        self.cost_tokens = 0

    def read(self, png: Path) -> str:
        data = base64.b64encode(png.read_bytes()).decode()
        reply = self.client.chat.completions.create(
            model=self.model,
            temperature=0,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": self.PROMPT},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
                    ],
                }
            ],
        )
        if reply.usage:
            self.cost_tokens += reply.usage.total_tokens
        return reply.choices[0].message.content or ""


# ------------------------------------------------------------------------------------------ the display

_DISPLAY: dict[str, Any] = {}


def ensure_display(start_xvfb: bool = True, size: tuple[int, int] = (1280, 800)) -> str:
    """The display this process drives: ``$DISPLAY`` if set, else a private Xvfb started once (and stopped at exit)."""
    if "name" in _DISPLAY:
        return _DISPLAY["name"]
    name = _live_display()
    if not name:
        if not start_xvfb or shutil.which("Xvfb") is None:
            raise EditorUnavailable(NO_DISPLAY)
        read_fd, write_fd = os.pipe()
        log = open(Path(tempfile.gettempdir()) / f"autonas-xvfb-{os.getpid()}.log", "wb")
        # -noreset: the server would otherwise reset whenever its last client leaves (between two screenshots)
        proc = subprocess.Popen(
            [
                "Xvfb",
                "-displayfd",
                str(write_fd),
                "-screen",
                "0",
                f"{size[0]}x{size[1]}x24",
                "-nolisten",
                "tcp",
                "-noreset",
            ],
            pass_fds=(write_fd,),
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            env=child_env(TOOL),
        )
        os.close(write_fd)
        raw = b""
        while not raw.endswith(
            b"\n"
        ):  # read to the newline: closing the pipe early kills Xvfb ("Cannot write display number")
            chunk = os.read(read_fd, 32)
            if not chunk:
                break
            raw += chunk
        os.close(read_fd)
        number = raw.decode().strip()
        if not number:
            proc.kill()
            raise EditorUnavailable("Xvfb did not start")
        name = f":{number}"
        for _ in range(50):  # -displayfd reports before every listener is up on some builds
            if _display_alive(name):
                break
            time.sleep(0.1)
        else:
            proc.kill()
            raise EditorUnavailable(f"Xvfb reported display {name} but no X socket appeared")
        atexit.register(proc.terminate)
        atexit.register(lambda: Path(log.name).unlink(missing_ok=True))
        _DISPLAY["xvfb"] = proc
    # python-xlib (under pyautogui) insists on an Xauthority file even for a display that needs none
    auth = os.environ.get("XAUTHORITY") or str(Path.home() / ".Xauthority")
    if not Path(auth).exists():
        auth = str(Path(tempfile.gettempdir()) / "autonas-empty.Xauthority")
        Path(auth).touch()
    os.environ.update({"DISPLAY": name, "XAUTHORITY": auth, "XDG_SESSION_TYPE": "x11"})
    _DISPLAY["name"] = name
    return name


NO_DISPLAY = "no display: set DISPLAY or install Xvfb (apt-get install xvfb)"


def _live_display() -> str | None:
    """``$DISPLAY`` when a server is behind it; a stale one counts as none."""
    name = os.environ.get("DISPLAY")
    return name if name and _display_alive(name) else None


def _display_alive(name: str) -> bool:
    """A local display ``:N`` is alive when its X socket exists; a remote one is taken on trust."""
    match = re.fullmatch(r"(unix)?:(\d+)(\.\d+)?", name)
    return not match or Path(f"/tmp/.X11-unix/X{match.group(2)}").exists()


def _pyautogui() -> Any:
    import pyautogui  # optional (the gui extra), and it needs a display at import

    pyautogui.FAILSAFE = False  # the pointer in a corner of a virtual screen is not a person trying to stop us
    return pyautogui


def grab_screen(path: Path) -> bytes:
    """Screenshot of the whole display as PNG at ``path``; returns the raw pixels (for change detection)."""
    import mss  # optional (the gui extra)
    import mss.tools

    with mss.MSS() as sct:
        shot = sct.grab(sct.monitors[1])
        mss.tools.to_png(shot.rgb, shot.size, output=str(path))
        return bytes(shot.rgb)


def mask_screenshot(png: Path, secrets: Sequence[str]) -> None:
    """Black out every word of the screenshot that shows a key or a part of one (word boxes from tesseract's TSV
    output). When no box can be found (no tesseract, or OCR split the key differently) the whole screen is blacked
    out: a kept screenshot never shows a key."""
    from PIL import Image, ImageDraw  # optional (the gui extra)

    boxes = []
    if shutil.which("tesseract") is not None:
        proc = subprocess.run(
            ["tesseract", str(png), "stdout", "tsv"], capture_output=True, text=True, env=child_env(TOOL), timeout=120
        )
        for line in proc.stdout.splitlines()[1:]:
            cols = line.split("\t")
            if len(cols) == 12 and cols[11].strip() and contains_secret(cols[11], secrets):
                left, top, width, height = (int(c) for c in cols[6:10])
                boxes.append((left - 2, top - 2, left + width + 2, top + height + 2))
    with Image.open(png) as img:
        masked = img.convert("RGB")
    draw = ImageDraw.Draw(masked)
    for box in boxes or [(0, 0, masked.width, masked.height)]:
        draw.rectangle(box, fill="black")
    masked.save(png)


def is_blank(png: Path) -> bool:
    from PIL import Image  # optional (the gui extra)

    with Image.open(png) as img:
        lo, hi = img.convert("L").getextrema()
        return lo == hi


def typed_text(text: str) -> str:
    """One line of printable ASCII: Enter would submit early, and pyautogui types only keys it knows."""
    flat = " ".join(text.split())
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in flat)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """The terminal and everything under it (the tool runs in the pty's own session, outside the terminal's group)."""
    for pid in [*_descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def env_lang(env: Mapping[str, str] | None) -> str:
    """A UTF-8 locale for the terminal: without one xterm draws a TUI's box characters as noise the OCR cannot read."""
    lang = (env if env is not None else os.environ).get("LANG", "")
    return lang if "utf" in lang.lower().replace("-", "") else "C.UTF-8"


def prepare_claude_home(home: Path) -> None:
    """A private HOME for an interactive Claude Code: first-run onboarding marked done (it otherwise checks
    api.anthropic.com before honouring ANTHROPIC_BASE_URL); the trust and API-key prompts stay for the rules."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / ".claude.json"
    data = json.loads(config.read_text()) if config.exists() else {}
    data.update({"hasCompletedOnboarding": True, "theme": "light"})
    config.write_text(json.dumps(data))


class GuiEditor(Editor):
    """Drives an interactive terminal tool on a display; Claude Code by default."""

    name = "gui"

    def __init__(
        self,
        command: Sequence[str] | None = None,
        rules: Sequence[ScreenRule] = CLAUDE_RULES,
        ready_pattern: str = CLAUDE_READY,
        busy_pattern: str = CLAUDE_BUSY,
        reader: ScreenReader | None = None,
        home: Path | None = None,
        env: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        poll_s: float = 1.0,
        stable_s: float = 3.0,
        retry_s: float = 5.0,
        idle_give_up_s: float = 45.0,
        type_interval_s: float = 0.01,
        timeout_s: float | None = None,
        terminal_geometry: str = "120x35+0+0",
        font_size: int = 12,
        watch: Sequence[Path] | None = None,
    ):
        super().__init__(watch)
        self.command, self.rules, self.reader = (list(command) if command else None), tuple(rules), reader
        self.ready, self.busy = (
            re.compile(ready_pattern, re.I),
            re.compile(busy_pattern, re.I) if busy_pattern else None,
        )
        self.home, self.base_env, self.extra_env = home, env, dict(extra_env or {})
        self.poll_s, self.stable_s, self.type_interval_s, self.timeout_s = poll_s, stable_s, type_interval_s, timeout_s
        self.retry_s, self.idle_give_up_s = retry_s, idle_give_up_s
        self.geometry, self.font_size = terminal_geometry, font_size

    def terminal_command(self, instruction: EditInstruction) -> list[str]:
        if self.command is not None:
            return list(self.command)
        return [find_claude_binary(), *confinement_flags(system_prompt=instruction.system_prompt)]

    def check(self) -> None:
        if shutil.which("xterm") is None:
            raise EditorUnavailable("no terminal to drive: apt-get install xterm")
        if self.reader is None:
            TesseractReader()  # raises when tesseract is missing
        if "name" not in _DISPLAY and not _live_display() and shutil.which("Xvfb") is None:
            raise EditorUnavailable(NO_DISPLAY)

    def apply(self, workspace: Path, instruction: EditInstruction) -> EditorReport:
        if not instruction.text.strip():
            return EditorReport(
                ok=False, error="the GUI editor needs a change described in words; this instruction has none"
            )
        self.check()
        reader = self.reader or TesseractReader()
        command = self.terminal_command(instruction)
        ensure_display()
        gui = _pyautogui()
        log_dir = Path(instruction.log_dir or workspace / "runs" / "edits")
        shots = log_dir / "screens"
        shots.mkdir(parents=True, exist_ok=True)
        transcript = log_dir / "gui_transcript.jsonl"
        private_home = None
        if self.home is None and self.command is None:
            private_home = Path(tempfile.mkdtemp(prefix="autonas-gui-home-"))
            prepare_claude_home(private_home)
        home = self.home or private_home or Path.home()
        env = self.terminal_env(home)
        term = subprocess.Popen(
            [
                "xterm",
                "-geometry",
                self.geometry,
                "-fa",
                "DejaVu Sans Mono",
                "-fs",
                str(self.font_size),
                "-bg",
                "white",
                "-fg",
                "black",
                "-u8",
                "-T",
                "autonas-editor",
                "-e",
                *command,
            ],
            cwd=workspace,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        # keys the terminal's tool may print (Claude Code shows an API key's last 20 characters when it asks to use
        # it): masked in the transcript's text and blacked out in the kept screenshots
        secrets = secret_values(env) + secret_values()
        try:
            return self._drive(gui, reader, term, workspace, instruction, shots, transcript, secrets)
        finally:
            kill_tree(term)
            if private_home is not None:
                shutil.rmtree(private_home, ignore_errors=True)

    def terminal_env(self, home: Path) -> dict[str, str]:
        """The terminal's whole environment: the GUI editor's allow-list of ``env`` (default: this process's), the
        display :func:`ensure_display` chose, a UTF-8 locale, and the private HOME."""
        return editor_env(
            self.base_env,
            {
                "HOME": str(home),
                "DISPLAY": os.environ["DISPLAY"],
                "XAUTHORITY": os.environ["XAUTHORITY"],
                "TERM": "xterm-256color",
                "LANG": env_lang(self.base_env),
                **self.extra_env,
            },
            profile=GUI_EDITOR,
        )

    def _drive(
        self,
        gui: Any,
        reader: ScreenReader,
        term: subprocess.Popen,
        workspace: Path,
        instruction: EditInstruction,
        shots: Path,
        transcript: Path,
        secrets: Sequence[str] = (),
    ) -> EditorReport:
        deadline = time.monotonic() + (self.timeout_s or instruction.timeout_s)
        tree_before = snapshot_tree(workspace)
        sent, last_pixels, last_change, step, text = False, b"", time.monotonic(), 0, ""
        acted_on, acted_at = (
            b"",
            0.0,
        )  # a rule fires once per screen (again only after retry_s): keys must not land on the next prompt
        with open(transcript, "w") as log:

            def record(action: str | None, png: Path | None) -> None:
                log.write(
                    json.dumps(
                        {
                            "t": round(time.time(), 3),
                            "step": step,
                            "screenshot": png.name if png else None,
                            "action": action,
                            "text": redact(text, secrets),
                        }
                    )
                    + "\n"
                )
                log.flush()

            while time.monotonic() < deadline:
                time.sleep(self.poll_s)
                png = shots / f"{step:04d}.png"
                pixels = grab_screen(png)
                changed = pixels != last_pixels
                if changed:
                    last_pixels, last_change = pixels, time.monotonic()
                    text = reader.read(png)
                    if contains_secret(text, secrets):
                        mask_screenshot(png, secrets)
                else:
                    png.unlink()
                action = None
                if pixels != acted_on or time.monotonic() - acted_at >= self.retry_s:
                    action = self._act(gui, text, sent, instruction)
                    if action:  # the screen is expected to move now: stillness is measured from here
                        acted_on, acted_at = pixels, time.monotonic()
                        last_change = acted_at
                if action == "typed instruction":
                    sent = True
                if changed or action:
                    record(action, png if changed else None)
                    step += 1
                if term.poll() is not None:
                    record("terminal closed", None)
                    break
                idle = time.monotonic() - last_change >= self.stable_s and not (self.busy and self.busy.search(text))
                if sent and idle and snapshot_tree(workspace) != tree_before:
                    record("done: the workspace changed and the screen is still", None)
                    return EditorReport(ok=True, transcript=transcript)
                if sent and idle and time.monotonic() - max(last_change, acted_at) >= self.idle_give_up_s:
                    record("gave up: the tool is idle and the workspace has not changed", None)
                    return EditorReport(
                        ok=False,
                        transcript=transcript,
                        error=f"the tool went idle for {self.idle_give_up_s:g}s without changing the workspace",
                    )
            else:
                return EditorReport(
                    ok=False,
                    transcript=transcript,
                    error=f"the GUI session did not finish within {self.timeout_s or instruction.timeout_s:g}s"
                    + ("" if sent else " (the tool never showed its input prompt)"),
                )
        if not sent:
            return EditorReport(
                ok=False, transcript=transcript, error="the terminal closed before the instruction could be typed"
            )
        return EditorReport(ok=True, transcript=transcript)  # the tool exited; the diff decides

    def _act(self, gui: Any, text: str, sent: bool, instruction: EditInstruction) -> str | None:
        for rule in self.rules:
            if re.search(rule.pattern, text, re.I):
                for key in rule.keys:
                    gui.press(key)
                    time.sleep(0.2)
                return f"rule: {rule.name} ({'+'.join(rule.keys)})"
        if not sent and self.ready.search(text):
            gui.click(300, 300)  # focus the terminal: without a window manager focus follows the pointer
            gui.write(typed_text(instruction.text), interval=self.type_interval_s)
            time.sleep(0.5)  # a terminal UI takes a pasted burst as one input; Enter goes separately
            gui.press("enter")
            return "typed instruction"
        return None
