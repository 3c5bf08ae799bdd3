"""``edgedistill quantize RUN``: the exports quantized as the recipe's export.quantize says (ONNX
int8/int4 weight-only, ORT GenAI int4, any GGUF type llama.cpp names), each a manifest stage of its
own with its parity numbers."""

from __future__ import annotations

import logging
import shutil
from typing import Any

from edgedistill.artifacts import list_artifacts
from edgedistill.errors import EdgeDistillError
from edgedistill.formats.export import build_ortgenai
from edgedistill.formats.jobs import Job, place, raise_failures, record_artifact, run_all, scratch_dir, settings
from edgedistill.formats.parity import Checker
from edgedistill.registry import FORMATS
from edgedistill.rundir import Run

log = logging.getLogger(__name__)


def _quantize_onnx(run: Run, stage: Any, par: Checker, precision: str) -> None:
    from edgedistill.formats import onnx

    src = run.onnx_dir / "model.onnx"
    scratch = scratch_dir(run, f"onnx-{precision}")
    try:
        name = f"model_{precision}.onnx"
        onnx.quantize(src, scratch / name, precision, run.recipe.export.quantize.int4_block_size)
        onnx.check(scratch / name)
        for p in run.onnx_dir.iterdir():  # the tokenizer beside the model, for the parity run
            if p.is_file() and not p.name.startswith((".", "model")):
                (scratch / p.name).symlink_to(p)
        result = par.check(f"onnx-{precision}", "onnx", scratch / name, exact=False)
        names = sorted(p.name for p in scratch.iterdir() if p.name.startswith(name))
        files = place(stage, scratch, run.onnx_dir, names)
        record_artifact(stage, "onnx", precision, run.onnx_dir / name, files, result,
                  block_size=run.recipe.export.quantize.int4_block_size if precision == "int4"
                  else None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _quantize_gguf(run: Run, stage: Any, par: Checker, qtype: str) -> None:
    from edgedistill.formats import gguf

    exp = run.recipe.export
    src = run.gguf_dir / f"model-{exp.gguf_outtype}.gguf"
    final = run.gguf_dir / f"model-{qtype.lower()}.gguf"
    tmp = stage.output(final)
    log_file = run.logs_dir / f"gguf-quantize-{qtype.lower()}.log"
    log_file.unlink(missing_ok=True)
    gguf.quantize(src, tmp, qtype, log_file=log_file)
    result = par.check(f"gguf-{qtype.lower()}", "gguf", tmp, exact=False)
    record_artifact(stage, "gguf", qtype.lower(), final, [final], result,
              llama_cpp_version=f"llama-cpp-python {gguf.llama_cpp_python_version()}",
              quantized_from=run.rel(src))


def quantize_jobs(run: Run, par: Checker, failures: list[str]) -> list[Job]:
    """One job per quantized artifact the recipe asks for; a missing source export is a failure."""
    exp = run.recipe.export
    block = exp.quantize.int4_block_size
    jobs: list[Job] = []

    def needs(fmt: str) -> bool:
        if fmt not in exp.formats:
            return False
        try:
            run.require(f"export:{fmt}", needed_by=f"quantize ({fmt})")
            return True
        except EdgeDistillError as e:
            failures.append(f"quantize {fmt}: {e}")
            return False

    if exp.quantize.onnx and needs("onnx"):
        for p in exp.quantize.onnx:
            jobs.append((f"quantize:onnx-{p}", [run.merged_dir, run.onnx_dir / "model.onnx"],
                         settings(run, block_size=block if p == "int4" else None),
                         lambda stage, p=p: _quantize_onnx(run, stage, par, p)))
    if "ortgenai" in exp.formats:
        for p in exp.quantize.ortgenai:
            if p != FORMATS["ortgenai"].full_precision:  # fp32 is the export itself
                jobs.append((f"quantize:ortgenai-{p}", [run.merged_dir],
                             settings(run, block_size=block if p == "int4" else None),
                             lambda stage, p=p: build_ortgenai(run, stage, par, p)))
    if exp.quantize.gguf and needs("gguf"):
        src = run.gguf_dir / f"model-{exp.gguf_outtype}.gguf"
        for q in exp.quantize.gguf:
            jobs.append((f"quantize:gguf-{q.lower()}", [run.merged_dir, src], settings(run),
                         lambda stage, q=q: _quantize_gguf(run, stage, par, q)))
    return jobs


def quantize(run: Run, *, force: bool = False) -> None:
    """Quantize the exports as the recipe's export.quantize says (ONNX int8/int4, ORT GenAI int4,
    GGUF q8_0/q4_k_m/... — any type llama.cpp names)."""
    run.require("merge", needed_by="quantize")
    failures: list[str] = []
    jobs = quantize_jobs(run, Checker(run), failures)
    failures += run_all(jobs, run, force)
    raise_failures(failures, run)
    log.info("artifacts in %s: %s", run.export_dir,
             ", ".join(a["id"] for a in list_artifacts(run)) or "none")
