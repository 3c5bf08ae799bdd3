"""What export and quantize share: one job per artifact, run as its own manifest stage
(``export:<format>``, ``quantize:<artifact id>``), its files built in scratch space and renamed into
place only after its check and parity pass; a failing job is reported and the others still run."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from edgedistill.artifacts import list_artifacts
from edgedistill.errors import ArtifactError, EdgeDistillError
from edgedistill.rundir import Run

log = logging.getLogger(__name__)


def record_artifact(stage: Any, fmt: str, precision: str, path: Path, files: list[Path],
              parity: dict[str, Any], **extra: Any) -> None:
    run = stage.run
    stage.metrics["artifact"] = {"id": f"{fmt}-{precision}", "format": fmt, "precision": precision,
                                 "path": run.rel(path), "files": [run.rel(f) for f in files],
                                 "source": run.rel(run.merged_dir), **extra}
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


def run_all(jobs: list[Job], run: Run, force: bool) -> list[str]:
    """Run each (stage name, inputs, body) job; a failing job is reported, the others still run."""
    failures = []
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
        except Exception as e:  # an exporter/tool crashing on this model must not stop the others
            log.exception("%s failed inside its tool", name)
            failures.append(f"{name}: {type(e).__name__}: {str(e)[:300]} (traceback in the log)")
    return failures


def raise_failures(failures: list[str], run: Run) -> None:
    if failures:
        raise ArtifactError(f"{len(failures)} artifact(s) failed in {run.root}:\n" +
                            "\n".join(failures),
                            hint=f"The artifacts that passed: "
                            f"{', '.join(a['id'] for a in list_artifacts(run)) or 'none'}.")


def settings(run: Run, **extra: Any) -> dict[str, Any]:
    """What one artifact depends on: the parity settings and ``extra`` (so adding a quantization
    to the recipe does not redo the others)."""
    exp = run.recipe.export
    return {"parity_prompts": exp.parity_prompts,
            "parity_max_new_tokens": exp.parity_max_new_tokens, **extra}
