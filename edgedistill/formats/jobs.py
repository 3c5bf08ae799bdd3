"""What export and quantize share: one job per artifact, run as its own manifest stage
(``export:<format>``, ``quantize:<artifact id>``), its files built in scratch space and renamed into
place only after its check and parity pass; a failing job is reported and the others still run.

A job that fails with an :class:`EdgeDistillError` (a parity failure, a model the converter cannot
take) ends the command with exit 2 once every job ran; one that raises anything else is a bug in
an exporter or in edgedistill: its traceback goes to RUN/logs/ and the command ends with exit 3."""

from __future__ import annotations

import logging
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

from edgedistill import crashlog
from edgedistill.artifacts import list_artifacts
from edgedistill.errors import USER_ERRNOS, ArtifactError, EdgeDistillError, InternalError
from edgedistill.rundir import Run

log = logging.getLogger(__name__)


def record_artifact(stage: Any, fmt: str, precision: str, path: Path, files: list[Path],
              parity: dict[str, Any], **extra: Any) -> None:
    import hashlib

    from edgedistill.train.templates import own_template

    run = stage.run
    template = own_template(run.merged_dir) or ""  # the chat template the artifact carries
    stage.metrics["artifact"] = {"id": f"{fmt}-{precision}", "format": fmt, "precision": precision,
                                 "path": run.rel(path), "files": [run.rel(f) for f in files],
                                 "source": run.rel(run.merged_dir),
                                 "chat_template": {"choice": run.recipe.student.chat_template,
                                                   "sha256": hashlib.sha256(template.encode()).hexdigest()},
                                 **extra}
    stage.metrics["parity"] = parity


def place(stage: Any, scratch: Path, dest: Path, names: list[str]) -> list[Path]:
    """Move ``names`` from scratch into the stage's temporary outputs under dest (renamed into
    place when the stage succeeds)."""
    finals = []
    for name in names:
        tmp = stage.output(dest / name)
        shutil.move(str(scratch / name), str(tmp))
        finals.append(dest / name)
    return finals


def scratch_dir(run: Run, label: str) -> Path:
    run.export_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{label}-", dir=run.export_dir))


# (stage name, inputs, the settings it depends on, body)
Job = tuple[str, list[Path], dict[str, Any], Callable[[Any], None]]


class Crash(str):
    """A failure line for a job that crashed (a bug: exit 3): its stage, the exception in one line,
    and the full traceback."""

    stage: str = ""
    summary: str = ""
    traceback: str = ""


def run_all(jobs: list[Job], run: Run, force: bool) -> list[str]:
    """Run each (stage name, inputs, body) job; a failing job is reported, the others still run.
    Returns one line per failure; a job that crashed gives a :class:`Crash` line."""
    failures: list[str] = []
    for name, inputs, config, body in jobs:
        try:
            stage = run.begin(name, inputs=inputs, force=force, config=config)
            if stage is None:
                continue
            with stage:
                body(stage)
            log.info("%s done", name)
        except EdgeDistillError as e:
            log.error("%s failed: %s", name, e)
            failures.append(f"{name}: {e}")
        except Exception as e:  # an exporter crashing on this model must not stop the others
            if isinstance(e, OSError) and e.errno in USER_ERRNOS:  # a full disk: bad input, exit 2
                where = f" writing {e.filename}" if e.filename else ""
                log.error("%s failed: %s%s", name, e.strerror, where)
                failures.append(f"{name}: {e.strerror}{where}")
                continue
            crash = Crash(f"{name}: crashed ({crashlog.one_line(e)})")
            crash.stage, crash.summary = name, crashlog.one_line(e)
            crash.traceback = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            log.error("%s", crash)
            failures.append(crash)
    return failures


class FormatsFailed(ArtifactError):
    """Some artifacts failed their export or quantization (bad input, exit 2); ``failed`` holds
    one line per failure, and the artifacts that passed are still in the run (``edgedistill run``
    goes on with them: :func:`edgedistill.pipeline.run_pipeline`)."""

    def __init__(self, message: str, *, failed: list[str], hint: str | None = None):
        super().__init__(message, hint=hint)
        self.failed = list(failed)


class FormatsCrashed(InternalError):
    """As :class:`FormatsFailed`, where at least one job crashed (a bug, exit 3)."""

    def __init__(self, message: str, *, failed: list[str], log: object = None,
                 stage: str | None = None):
        super().__init__(message, log=log, stage=stage)
        self.failed = list(failed)


def raise_failures(failures: list[str], run: Run) -> None:
    """Nothing when every job passed; else a :class:`FormatsCrashed` (exit 3, tracebacks in
    RUN/logs/) when one crashed, or a :class:`FormatsFailed` (exit 2) naming each failure and the
    artifacts that passed."""
    if not failures:
        return
    passed = ", ".join(a["id"] for a in list_artifacts(run)) or "none"
    crashes = [f for f in failures if isinstance(f, Crash)]
    others = [f for f in failures if not isinstance(f, Crash)]
    if crashes:
        body = "\n".join(f"== {c.stage}\n{c.traceback}" for c in crashes)
        if others:
            body += "\n== the other failures (bad input, exit 2 on their own)\n" + "\n".join(others)
        path = crashlog.write(crashes[0].stage.partition(":")[0], run.root, body)
        kept = f"the traceback is in {path}" if path else "the traceback could not be written to a log"
        also = f"; {len(others)} other job(s) failed" if others else ""
        raise FormatsCrashed(
            f"internal error in stage {', '.join(c.stage for c in crashes)} ({crashes[0].summary}); "
            f"{kept}{also}; the artifacts that passed: {passed}. This is a bug in an exporter or in "
            "edgedistill: please report it with that file.", log=path, stage=crashes[0].stage,
            failed=[f"{c.stage}: crashed ({c.summary}); traceback in {path}" for c in crashes] + others)
    raise FormatsFailed(f"{len(failures)} artifact(s) failed in {run.root}:\n" + "\n".join(failures),
                        hint=f"The artifacts that passed: {passed}.", failed=failures)


def settings(run: Run, **extra: Any) -> dict[str, Any]:
    """What one artifact depends on: the parity settings and ``extra`` (so adding a quantization
    to the recipe does not redo the others)."""
    exp = run.recipe.export
    return {"parity_prompts": exp.parity_prompts,
            "parity_max_new_tokens": exp.parity_max_new_tokens, **extra}
