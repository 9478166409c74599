"""Inputs the AI service tests make themselves (tests/integration/test_ai_services.py and
the end-to-end tests): a PNG of text in a CJK font from Debian's packages."""

from __future__ import annotations

import glob
import io
import shutil
import subprocess

import pytest


def cjk_font() -> str:
    """A font with Chinese glyphs from Debian's packages (scripts/install.sh installs
    fonts-wqy-zenhei): fontconfig's answer, else the usual places."""
    found: list[str] = []
    if shutil.which("fc-list"):
        out = subprocess.run(
            ["fc-list", ":lang=zh", "file"], capture_output=True, text=True, check=False
        ).stdout
        found = sorted(line.split(":")[0].strip() for line in out.splitlines() if line.strip())
    found += sorted(
        glob.glob("/usr/share/fonts/**/*wqy*.tt[cf]", recursive=True)
        + glob.glob("/usr/share/fonts/**/Noto*CJK*.tt[cf]", recursive=True)
    )
    if not found:
        pytest.fail("no CJK font: run scripts/install.sh (it installs fonts-wqy-zenhei)")
    return found[0]


def png(lines: list[str]) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(cjk_font(), 40)
    img = Image.new("RGB", (640, 80 * len(lines) + 40), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((30, 30 + 80 * i), line, font=font, fill="black")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
