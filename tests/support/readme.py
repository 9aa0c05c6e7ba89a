"""What README.md documents, read from its tables, so tests compare the code with the README
rather than with a copy of the code's own values."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[2] / "README.md"

__all__ = ["README", "documented_defaults", "parse_default", "tables"]

_UNITS = {"B": 1, "B/s": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "s": 1}
_WORDS: dict[str, Any] = {"(none)": None, "none": None, "off": False, "on": True}
_WORDS |= {"true": True, "false": False}


def tables(text: str | None = None) -> list[list[list[str]]]:
    """Every Markdown table in the README: rows of cells (the header row first)."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in (README.read_text() if text is None else text).splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):  # skip the | --- | row
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    if current:
        found.append(current)
    return found


def parse_default(text: str) -> Any:
    """A README default as a value: ``256 MiB`` -> 268435456, ``60 s (...)`` -> 60,
    ``0 = ...`` -> 0, ``off`` -> False, ``(none)`` -> None, ``auto`` -> "auto"."""
    text = text.replace("`", "").strip()
    if text.split(" (")[0] in _WORDS:
        return _WORDS[text.split(" (")[0]]
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(?:\s*(MiB|KiB|GiB|B/s|B|s))?(?:\s+.*)?", text)
    if match:
        number = float(match.group(1)) * _UNITS.get(match.group(2) or "B", 1)
        return int(number) if number.is_integer() else number
    return text


def documented_defaults() -> dict[str, list[Any]]:
    """``LOSSREG_*`` name -> its defaults as written in every table with a setting and a
    default column (a row naming several settings lists their defaults in the same order, or
    gives one default for all of them)."""
    found: dict[str, list[Any]] = {}
    for table in tables():
        header = [h.lower() for h in table[0]]
        if "setting" not in header or "default" not in header:
            continue
        setting, default = header.index("setting"), header.index("default")
        for row in table[1:]:
            names = re.findall(r"LOSSREG_\w+", row[setting].split("(per request")[0])
            values = [v.strip() for v in row[default].split(",")] if len(names) > 1 else []
            if len(values) != len(names):  # one default shared by every setting of the row
                values = [row[default]] * len(names)
            for name, value in zip(names, values, strict=True):
                found.setdefault(name, []).append(parse_default(value))
    return found
