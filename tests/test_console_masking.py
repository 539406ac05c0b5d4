"""Keys never kept in a GUI editor's screenshots: the words that show a key (or the tail Claude Code prints) are
blacked out in the PNG itself, so the console (or anyone opening the run folder) never shows them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf")
KEY = "sk-ant-api03-QWERTYUIOPASDFGHJKLZXCVBNM1234567890"


def _ocr(png: Path) -> str:
    return subprocess.run(["tesseract", str(png), "stdout"], capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("tesseract") is None or not FONT.is_file(), reason="needs tesseract and DejaVu")
def test_a_key_tail_on_screen_is_blacked_out_and_the_rest_stays(tmp_path: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    from ccaa.gui import mask_screenshot
    from sandbox.redact import contains_secret

    png = tmp_path / "0001.png"
    img = Image.new("RGB", (1400, 200), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(str(FONT), 22)
    draw.text((20, 40), "Detected a custom API key: sk-ant-..." + KEY[-20:], fill="black", font=font)
    draw.text((20, 100), "Do you want to use this API key?  Yes  No", fill="black", font=font)
    img.save(png)
    assert KEY[-20:] in _ocr(png) and contains_secret(_ocr(png), [KEY])
    mask_screenshot(png, [KEY])
    after = _ocr(png)
    assert KEY[-12:] not in after and not contains_secret(after, [KEY])
    assert "Do you want to use this API key" in after  # only the key's word is covered
