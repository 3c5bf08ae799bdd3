"""Internal errors (exit 3): which stage a command is in, and the log file that keeps a bug's
traceback so that the terminal gets one line.

The CLI resets the state when a command starts and names the run once it knows it; the pipeline
and the single-stage commands name the stage they enter (:func:`stage`). An exception escaping
leaves the stage it escaped from as the current one, so the CLI can say where it happened. Logs go
to RUN/logs/, or to ``$EDGEDISTILL_CACHE/logs`` (``~/.cache/edgedistill/logs``) when no run
directory is known yet. Standard library only: the CLI imports it at start-up.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from edgedistill.errors import InternalError


@dataclass
class Where:
    stage: str | None = None
    run_root: Path | None = None


_where = Where()


def reset(command: str | None = None) -> None:
    """A new command starts: no run known yet; its stage is the command until one is named."""
    _where.stage, _where.run_root = command, None


def set_run(root: Path) -> None:
    _where.run_root = Path(root).resolve()


def current() -> Where:
    return Where(_where.stage, _where.run_root)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Name the stage the code inside runs. Deliberately not restored when an exception leaves
    the block: the CLI, catching it above, names the stage it came from."""
    before = _where.stage
    _where.stage = name
    yield
    _where.stage = before


def logs_dir(run_root: Path | None) -> Path:
    if run_root is not None and run_root.is_dir():
        return run_root / "logs"
    from edgedistill.config import cache_dir

    return cache_dir() / "logs"


def write(stage: str | None, run_root: Path | None, body: str) -> Path | None:
    """RUN/logs/error-<stage>-<time>-<pid>.log with a header and ``body``; None when no folder
    could take it (the caller then shows the traceback on the terminal)."""
    from edgedistill import __version__

    name = f"error-{(stage or 'edgedistill').replace(':', '-')}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    header = (f"edgedistill {__version__} internal error\n"
              f"time: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
              f"command: {' '.join(sys.argv)}\n"
              f"stage: {stage or '-'}\nrun: {run_root or '-'}\n"
              f"python: {sys.version.split()[0]} on {platform.platform()}\n\n")
    for folder in dict.fromkeys([logs_dir(run_root), logs_dir(None)]):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(header + body)
            return path
        except OSError:
            continue
    return None


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(err).__name__}: {first[:200]}" if first else type(err).__name__


def internal_error(err: BaseException, stage: str | None = None,
                   run_root: Path | None = None) -> InternalError:
    """An unexpected exception as an InternalError whose one-line message names the stage and the
    log file holding the traceback (written here)."""
    where = current()
    stage = stage or where.stage
    run_root = run_root or where.run_root
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    log = write(stage, run_root, tb)
    kept = f"the traceback is in {log}" if log else "the traceback could not be written to a log"
    return InternalError(f"internal error in stage {stage or '-'} ({one_line(err)}); {kept}. "
                         "This is a bug in edgedistill: please report it with that file.",
                         log=log, stage=stage)
