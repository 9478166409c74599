"""`-o yaml`: a YAML emitter for the CLI's plain rows (dicts, lists, str, int, float, bool,
None), in block style.

Why not PyYAML: it is not otherwise a dependency, and the rows need none of its generality.
A string is written plain only when a YAML 1.1 or 1.2 reader cannot take it for anything
else (a number, a boolean, null, a date, an indicator); otherwise it is double-quoted, in
ASCII with YAML's escapes. tests/unit/test_cli_output.py reads
the output back with PyYAML (a dev dependency) and compares.
"""

from __future__ import annotations

import re
from typing import Any

_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./@+-]*(?: [A-Za-z0-9_./@+-]+)*")
# Words YAML 1.1 (PyYAML) reads as booleans or null, in any of their spellings.
_RESERVED = {
    w
    for base in ("y", "yes", "n", "no", "true", "false", "on", "off", "null")
    for w in (base, base.capitalize(), base.upper())
}


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return ".nan"
        if value in (float("inf"), float("-inf")):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        # YAML 1.1 readers take "1e+16" for a string: a float needs its dot.
        return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text
    text = str(value)
    if _PLAIN.fullmatch(text) and text not in _RESERVED and not text.startswith("_"):
        return text
    return _quoted(text)


def _quoted(text: str) -> str:
    # ASCII only: YAML's \x, \u and \U escapes (JSON would split astral characters into
    # surrogate pairs, which YAML reads as two characters).
    out = []
    for ch in text:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= o < 0x7F:
            out.append(ch)
        elif o <= 0xFF:
            out.append(f"\\x{o:02x}")
        elif o <= 0xFFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return '"' + "".join(out) + '"'


def _lines(value: Any, indent: str) -> list[str]:
    if isinstance(value, dict):
        if not value:
            return [indent + "{}"]
        out: list[str] = []
        for k, v in value.items():
            key = _scalar(str(k))
            if isinstance(v, dict | list) and v:
                out.append(f"{indent}{key}:")
                out.extend(_lines(v, indent + ("" if isinstance(v, list) else "  ")))
            else:
                out.append(f"{indent}{key}: {_inline(v)}")
        return out
    if isinstance(value, list):
        if not value:
            return [indent + "[]"]
        out = []
        for item in value:
            if isinstance(item, dict | list) and item:
                sub = _lines(item, indent + "  ")
                out.append(f"{indent}- {sub[0][len(indent) + 2 :]}")
                out.extend(sub[1:])
            else:
                out.append(f"{indent}- {_inline(item)}")
        return out
    return [indent + _scalar(value)]


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def dumps(value: Any) -> str:
    """`value` as a YAML document (ends with a newline)."""
    return "\n".join(_lines(value, "")) + "\n"
