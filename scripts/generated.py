"""What the scripts that write generated sections share: a section between two markers replaced,
and the write-or ``--check`` ending each of them has (exit 1 naming the command that updates it)."""

from __future__ import annotations

import sys
from pathlib import Path


def between(text: str, start: str, end: str, body: str) -> str:
    """``text`` with what lies between the ``start`` and ``end`` markers replaced by ``body``."""
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}{end}{tail}"


def write_or_check(path: Path, new: str, what: str, command: str) -> int:
    """With ``--check`` on the command line: 1 (and a line saying how to update it) when ``path``
    does not hold ``new``; otherwise write it. The exit code to end with."""
    old = path.read_text() if path.exists() else ""
    if "--check" in sys.argv:
        if new != old:
            print(f"{what} is out of date: run {command}")
            return 1
        return 0
    path.write_text(new)
    print(f"updated {path}")
    return 0
