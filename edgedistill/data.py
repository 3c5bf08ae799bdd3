"""JSONL in and out: errors name the file and line; writes are atomic or flushed appends."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from edgedistill.errors import DataError


def iter_jsonl(path: Path, *, tolerate_torn_tail: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-blank line. A line that is not a JSON object fails with
    the file and line; with ``tolerate_torn_tail`` a last line cut short by a kill is skipped."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"Data file {path} does not exist.")
    with path.open("rb") as f:
        lines = f.read().split(b"\n")
    last = len(lines)
    while last > 0 and not lines[last - 1].strip():
        last -= 1
    for i, raw in enumerate(lines[:last], start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if tolerate_torn_tail and i == last and not raw.endswith(b"}"):
                return
            raise DataError(f"{path}, line {i}: not valid JSON ({getattr(e, 'msg', e)}).",
                            hint="Each line must be one JSON object.") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}, line {i}: expected a JSON object, got {type(rec).__name__}.")
        yield i, rec


def read_jsonl(path: Path, **kw) -> list[dict[str, Any]]:
    return [rec for _, rec in iter_jsonl(path, **kw)]


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records to ``path`` atomically (temp file, fsync, rename); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")  # this process's own
    n = 0
    with tmp.open("w") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return n


def append_jsonl(f, record: dict[str, Any]) -> None:
    """Append one record to an open file and flush it to the OS, so a kill loses at most the
    line being written (which ``iter_jsonl(tolerate_torn_tail=True)`` skips)."""
    f.write(json.dumps(record, ensure_ascii=False) + "\n")
    f.flush()


def content_id(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def load_prompts(path: Path) -> list[dict[str, Any]]:
    """Task prompts: ``{"id", "prompt" | "messages", "answer"?}``; an id is derived when absent."""
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for line, rec in iter_jsonl(path):
        if "prompt" not in rec and "messages" not in rec:
            raise DataError(f"{path}, line {line}: needs a \"prompt\" or \"messages\" field.",
                            hint=f"Keys found: {', '.join(rec) or 'none'}.")
        if "prompt" in rec and not isinstance(rec["prompt"], str):
            raise DataError(f"{path}, line {line}: \"prompt\" must be a string.")
        if "messages" in rec:
            msgs = rec["messages"]
            if not (isinstance(msgs, list) and msgs and all(
                    isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str) for m in msgs)):
                raise DataError(f"{path}, line {line}: \"messages\" must be a non-empty list of "
                                "{\"role\": str, \"content\": str}.")
        rid = str(rec.get("id")) if rec.get("id") is not None else content_id(
            rec.get("messages") or rec["prompt"])
        if rid in seen:
            raise DataError(f"{path}, line {line}: id {rid!r} already used on line {seen[rid]}.")
        seen[rid] = line
        out.append({**rec, "id": rid})
    if not out:
        raise DataError(f"{path} holds no prompts.")
    return out


def messages_of(rec: dict[str, Any], system_prompt: str | None = None) -> list[dict[str, str]]:
    """The chat messages of a prompt record (a plain prompt becomes one user turn)."""
    msgs = list(rec["messages"]) if "messages" in rec else [{"role": "user", "content": rec["prompt"]}]
    if system_prompt and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system_prompt}] + msgs
    return msgs
