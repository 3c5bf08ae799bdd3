"""``edgedistill export RUN``: the merged student as ONNX (optimum), an ONNX Runtime GenAI package
(its model builder) and GGUF (llama.cpp's converter), each checked for parity with the merged
model before it is recorded as an artifact."""

from __future__ import annotations

import logging
import shutil
from typing import Any, Callable

from edgedistill.artifacts import list_artifacts
from edgedistill.errors import ArtifactError
from edgedistill.formats.jobs import Job, place, raise_failures, record_artifact, run_all, scratch_dir, settings
from edgedistill.formats.parity import Checker
from edgedistill.rundir import Run

log = logging.getLogger(__name__)


def _export_onnx(run: Run, stage: Any, par: Checker) -> None:
    from edgedistill.formats import onnx

    scratch = scratch_dir(run, "onnx")
    try:
        onnx.export(run.merged_dir, scratch)
        model = scratch / "model.onnx"
        onnx.check(model)
        result = par.check("onnx-fp32", "onnx", model, exact=True)
        names = sorted(p.name for p in scratch.iterdir() if p.is_file())
        files = place(stage, scratch, run.onnx_dir, names)
        weights = [f for f in files if f.name.startswith("model.onnx")]
        record_artifact(stage, "onnx", "fp32", run.onnx_dir / "model.onnx", weights, result)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def build_ortgenai(run: Run, stage: Any, par: Checker, precision: str) -> None:
    from edgedistill.formats import ortgenai

    out = stage.output(run.ortgenai_dir / precision)
    logs = run.logs_dir
    logs.mkdir(parents=True, exist_ok=True)
    ortgenai.build(run.merged_dir, out, precision, run.export_dir / ".ortgenai-cache",
                   logs / f"ortgenai-{precision}.log", run.recipe.export.quantize.int4_block_size)
    shutil.rmtree(run.export_dir / ".ortgenai-cache", ignore_errors=True)
    from edgedistill.formats import parity

    texts = [m["content"] for msgs in parity.prompts_for(run, run.recipe.export.parity_prompts)
             for m in msgs]
    override = ortgenai.fit_tokenizer(out, run.merged_dir, texts)
    result = par.check(f"ortgenai-{precision}", "ortgenai", out, exact=precision == "fp32")
    extra = {"tokenizer_class_override": override} if override else {}
    record_artifact(stage, "ortgenai", precision, run.ortgenai_dir / precision,
              [run.ortgenai_dir / precision], result, **extra)


def _export_gguf(run: Run, stage: Any, par: Checker) -> None:
    from edgedistill.formats import gguf

    exp = run.recipe.export
    conv = gguf.converter(exp.llama_cpp_dir)
    final = run.gguf_dir / f"model-{exp.gguf_outtype}.gguf"
    tmp = stage.output(final)
    run.logs_dir.mkdir(parents=True, exist_ok=True)
    gguf.convert(run.merged_dir, tmp, exp.gguf_outtype, conv, run.logs_dir / "gguf-convert.log")
    result = par.check(f"gguf-{exp.gguf_outtype}", "gguf", tmp, exact=True)
    record_artifact(stage, "gguf", exp.gguf_outtype, final, [final], result,
              llama_cpp_version=conv.version, converter=conv.source)


EXPORTERS: dict[str, Callable[[Run, Any, Checker], None]] = {
    "onnx": _export_onnx,
    "ortgenai": lambda run, stage, par: build_ortgenai(run, stage, par, "fp32"),
    "gguf": _export_gguf,
}


def export_jobs(run: Run, formats: list[str], par: Checker) -> list[Job]:
    exp = run.recipe.export
    extra = {"gguf": {"gguf_outtype": exp.gguf_outtype, "llama_cpp_dir": exp.llama_cpp_dir}}
    return [(f"export:{fmt}", [run.merged_dir], settings(run, **extra.get(fmt, {})),
             (lambda stage, fmt=fmt: EXPORTERS[fmt](run, stage, par))) for fmt in formats]


def export(run: Run, *, force: bool = False, formats: list[str] | None = None) -> None:
    """Export the merged student to each format (default: the recipe's export.formats)."""
    run.require("merge", needed_by="export")
    formats = formats or list(run.recipe.export.formats)
    unknown = [f for f in formats if f not in EXPORTERS]
    if unknown:
        raise ArtifactError(f"Unknown export format(s): {', '.join(unknown)}.",
                            hint=f"Known formats: {', '.join(EXPORTERS)}.")
    raise_failures(run_all(export_jobs(run, formats, Checker(run)), run, force), run)
    log.info("artifacts in %s: %s", run.export_dir,
             ", ".join(a["id"] for a in list_artifacts(run)) or "none")
