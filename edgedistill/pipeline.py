"""``edgedistill run``: every stage in the registry's order, each skipped when it is up to date.

Each stage is ``fn(run: Run, *, force: bool = False, **options) -> None`` in its own module,
imported only when the stage runs (:func:`edgedistill.registry.stage_fn`), so
``edgedistill --help`` stays light. Each stage runs under :func:`edgedistill.crashlog.stage`, so
an internal error names the stage it came from.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

from edgedistill import crashlog
from edgedistill.config import Recipe
from edgedistill.errors import ArtifactError, ConfigError, EdgeDistillError, GateFailed, InternalError, NotAvailable
from edgedistill.registry import STAGE_NAMES, stage_fn
from edgedistill.rundir import Run

log = logging.getLogger(__name__)


def stages_until(until: str | None) -> tuple[str, ...]:
    return STAGE_NAMES[:STAGE_NAMES.index(until) + 1] if until else STAGE_NAMES


def check_gguf_quant_types(names: list[str]) -> None:
    """export.quantize.gguf against the types the installed llama.cpp names (imports llama_cpp)."""
    try:
        from edgedistill.formats.gguf import quant_types

        known = quant_types()
    except ImportError:
        raise NotAvailable(f"export.quantize.gguf asks for {', '.join(names)}, but llama-cpp-python "
                           "is not installed to make them.",
                           hint="Install it with scripts/install.sh, or drop gguf from export.formats "
                                "(--set export.quantize.gguf=[]).") from None
    unknown = [n for n in names if n.lower() not in known]
    if unknown:
        raise ConfigError(f"Unknown GGUF quantization type(s) in export.quantize.gguf: "
                          f"{', '.join(repr(n) for n in unknown)}.",
                          hint=f"llama.cpp names: {', '.join(sorted(known))}.")


def check_names(recipe: Recipe, stages: Iterable[str]) -> None:
    """The names a recipe gives that only something else defines -- target files, llama.cpp's
    quantization types -- for the stages about to run, checked before any path is made."""
    stages = set(stages)
    if stages & {"train", "export"}:  # a student a format cannot take: refused before any work
        from edgedistill.formats.support import check_student

        check_student(recipe, stages)
    if "bench" in stages:
        from edgedistill.hardware import load_target

        for target in recipe.targets:
            load_target(target)
    exp = recipe.export
    if "quantize" in stages and "gguf" in exp.formats and exp.quantize.gguf:
        check_gguf_quant_types(exp.quantize.gguf)
    q = exp.quantize
    student = Path(recipe.student.model)
    if "quantize" in stages and (student / "config.json").is_file() and \
            any(f in exp.formats and "int4" in getattr(q, f) for f in ("onnx", "ortgenai")):
        from edgedistill.formats.onnx import check_block_size

        check_block_size(student, q.int4_block_size)  # a GGUF or hub student: at quantize


PER_FORMAT = ("export", "quantize")  # stages whose artifacts fail one by one


def run_pipeline(run: Run, *, force: set[str] = frozenset(), until: str | None = None,
                 options: dict[str, dict[str, Any]] | None = None) -> None:
    """Every stage in order, each skipped when up to date; stops after ``until``.

    A format that fails its export or quantization does not stop the others: while at least one
    artifact passed, the run goes on with those through eval, bench and report, and ends with the
    failures (exit 2; exit 3 when a job crashed) naming each failed artifact and why."""
    from edgedistill.artifacts import list_artifacts

    options = options or {}
    failed: list[str] = []
    first: EdgeDistillError | None = None  # the first crash (exit 3, its log), else the first error
    gate: GateFailed | None = None
    for stage in STAGE_NAMES:
        opts = options.get(stage, {})
        try:
            if stage == "bench" and "target" not in opts:  # every target the recipe names
                for target in run.recipe.targets:
                    with crashlog.stage(f"bench:{target}"):
                        stage_fn(stage)(run, force=stage in force, target=target, **opts)
            elif stage == "report":  # always rewritten; a failed gate ends `run` with exit 1
                with crashlog.stage(stage):
                    stage_fn(stage)(run, force=True, **{"check": True, **opts})
            else:
                with crashlog.stage(stage):
                    stage_fn(stage)(run, force=stage in force, **opts)
        except GateFailed as e:
            if not failed or stage != "report":
                raise
            gate = e
        except EdgeDistillError as e:
            lines = getattr(e, "failed", None)
            if stage not in PER_FORMAT or lines is None or not list_artifacts(run):
                raise
            failed += [line for line in lines if not _repeats(line, failed)]
            if first is None or (isinstance(e, InternalError) and not isinstance(first, InternalError)):
                first = e
            log.error("%s: %d artifact(s) failed; the run goes on with %s", stage, len(lines),
                      ", ".join(a["id"] for a in list_artifacts(run)))
        if stage == until:
            log.info("stopped after %s (--until)", stage)
            break
    if failed:
        raise _failures(run, failed, first, gate)


def _repeats(line: str, failed: list[str]) -> bool:
    """A quantize failure that only says its format's export failed (already named)."""
    fmt = line.partition(":")[0].removeprefix("quantize ").strip()
    return line.startswith("quantize ") and any(f.startswith(f"export:{fmt}:") for f in failed)


def _failures(run: Run, failed: list[str], first: EdgeDistillError | None,
              gate: GateFailed | None) -> EdgeDistillError:
    """The error `run` ends with when some artifacts failed: each failure and why, what passed."""
    from edgedistill.artifacts import list_artifacts

    passed = ", ".join(a["id"] for a in list_artifacts(run)) or "none"
    names = sorted({line.partition(":")[0] if line.startswith("quantize ") else
                    ":".join(line.split(":")[:2]) for line in failed})
    msg = (f"{len(failed)} artifact(s) failed in {run.root} ({', '.join(names)}); the run went on "
           f"with the ones that passed ({passed}):\n" + "\n".join(failed))
    if gate is not None:
        msg += f"\nThe report also failed its gates: {gate.message}"
    hint = (f"The tools' logs are in {run.logs_dir}. Leave the failed format(s) out "
            "(--set export.formats=[...]) or fix the cause and run `edgedistill run` again: "
            "what passed is not redone.")
    if isinstance(first, InternalError):
        return InternalError(msg, log=first.log, stage=first.stage, hint=hint)
    return ArtifactError(msg, hint=hint)
