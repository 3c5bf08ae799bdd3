"""The teacher's resume log, RUN/data/teacher.jsonl: every answer appended and flushed as it
arrives, keyed by a hash of (model, params, messages). A run killed at any moment (kill -9
included) resumes where it stopped; a torn last line is cut off and its answer asked again."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from edgedistill.data import iter_jsonl
from edgedistill.errors import DataError

log = logging.getLogger(__name__)


def read_log(path: Path) -> dict[str, dict[str, Any]]:
    """key → record from the resume log (first answer per key; a torn last line is skipped)."""
    out: dict[str, dict[str, Any]] = {}
    if path.exists():
        for _, rec in iter_jsonl(path, tolerate_torn_tail=True):
            out.setdefault(rec["key"], rec)
    return out


def repair_tail(raw: Any) -> None:
    """Make a log killed mid-write end on a line boundary: a last line that is a whole JSON
    object gets its newline; a torn one is cut off (its answer is asked again)."""
    size = raw.seek(0, os.SEEK_END)
    pos = size
    while pos > 0:
        step = min(1 << 16, pos)
        raw.seek(pos - step)
        chunk = raw.read(step)
        if pos == size and chunk.endswith(b"\n"):
            return
        cut = chunk.rfind(b"\n")
        if cut >= 0 or pos == step:
            start = pos - step + cut + 1
            raw.seek(start)
            last = raw.read()
            try:
                whole = isinstance(json.loads(last), dict)
            except ValueError:
                whole = False
            if whole:
                raw.seek(0, os.SEEK_END)
                raw.write(b"\n")
            else:
                log.warning("cut a torn last line (%d bytes) from the resume log", len(last))
                raw.truncate(start)
            raw.flush()
            return
        pos -= step


@contextlib.contextmanager
def open_log(path: Path) -> Iterator[Any]:
    """The resume log opened for appending, locked against a second ``generate`` on the same run,
    its tail repaired after a kill."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as raw:
        try:
            fcntl.flock(raw, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"Another `edgedistill generate` is writing {path}.",
                            hint="Wait for it to finish (or stop it); then run the command again.") from None
        repair_tail(raw)
        with open(raw.fileno(), "a", encoding="utf-8", closefd=False) as f:
            yield f
