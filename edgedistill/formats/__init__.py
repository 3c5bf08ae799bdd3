"""export and quantize: RUN/student/merged/ → deployable artifacts under RUN/export/.

Each artifact is its own manifest stage (``export:<format>``, ``quantize:<artifact id>``) with
bytes, sha256, source, tool versions and its parity numbers; an artifact exists for later stages
only when that stage is done and its files are intact (``list_artifacts``). Artifacts are built in
temporary paths and renamed into place after their check and parity pass, so a killed or failed
export leaves nothing a later stage would trust. One format failing does not stop the others.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from edgedistill.errors import ArtifactError, EdgeDistillError
from edgedistill.rundir import Run

log = logging.getLogger(__name__)

FP_PRECISION = {"onnx": "fp32", "ortgenai": "fp32"}  # gguf: export.gguf_outtype
_ORDER = ("onnx", "ortgenai", "gguf")


class Parity:
    """The HF reference, computed once per command and only when some artifact is (re)built."""

    def __init__(self, run: Run):
        self.run, self.recipe, self._refs = run, run.recipe, None

    def check(self, artifact_id: str, kind: str, path: Path, exact: bool) -> dict[str, Any]:
        """Parity of one artifact; ``exact``: a full-precision one, held to the merged model
        within its precision's logit tolerance (parity.LOGIT_TOLERANCE)."""
        from edgedistill.formats import parity

        exp = self.recipe.export
        if self._refs is None:
            prompts = parity.prompts_for(self.run, exp.parity_prompts)
            self._refs = parity.cached_reference(self.run.merged_dir, prompts,
                                                 exp.parity_max_new_tokens,
                                                 self.run.export_dir / ".parity-reference")
        t0 = time.perf_counter()
        result = parity.compare(kind, path, self._refs, exp.parity_max_new_tokens)
        precision = artifact_id.rsplit("-", 1)[-1]
        parity.judge(artifact_id, result, parity.LOGIT_TOLERANCE[precision] if exact else None)
        result["seconds"] = round(time.perf_counter() - t0, 2)  # comparing, not the reference
        return result


def _artifact(stage: Any, fmt: str, precision: str, path: Path, files: list[Path],
              parity: dict[str, Any], **extra: Any) -> None:
    run = stage.run
    stage.metrics["artifact"] = {"id": f"{fmt}-{precision}", "format": fmt, "precision": precision,
                                 "path": run.rel(path), "files": [run.rel(f) for f in files],
                                 "source": run.rel(run.merged_dir), **extra}
    stage.metrics["parity"] = parity


def _place(stage: Any, scratch: Path, dest: Path, names: list[str]) -> list[Path]:
    """Move ``names`` from scratch into the stage's temporary outputs under dest (renamed into
    place when the stage succeeds)."""
    finals = []
    for name in names:
        tmp = stage.output(dest / name)
        shutil.move(str(scratch / name), str(tmp))
        finals.append(dest / name)
    return finals


def _scratch(run: Run, label: str) -> Path:
    run.export_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{label}-", dir=run.export_dir))


# ---------------------------------------------------------------------------------------------
# export


def _export_onnx(run: Run, stage: Any, par: Parity) -> None:
    from edgedistill.formats import onnx

    scratch = _scratch(run, "onnx")
    try:
        onnx.export(run.merged_dir, scratch)
        model = scratch / "model.onnx"
        onnx.check(model)
        result = par.check("onnx-fp32", "onnx", model, exact=True)
        names = sorted(p.name for p in scratch.iterdir() if p.is_file())
        files = _place(stage, scratch, run.onnx_dir, names)
        weights = [f for f in files if f.name.startswith("model.onnx")]
        _artifact(stage, "onnx", "fp32", run.onnx_dir / "model.onnx", weights, result)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _build_ortgenai(run: Run, stage: Any, par: Parity, precision: str) -> None:
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
    _artifact(stage, "ortgenai", precision, run.ortgenai_dir / precision,
              [run.ortgenai_dir / precision], result, **extra)


def _export_gguf(run: Run, stage: Any, par: Parity) -> None:
    from edgedistill.formats import gguf

    exp = run.recipe.export
    conv = gguf.converter(exp.llama_cpp_dir)
    final = run.gguf_dir / f"model-{exp.gguf_outtype}.gguf"
    tmp = stage.output(final)
    run.logs_dir.mkdir(parents=True, exist_ok=True)
    gguf.convert(run.merged_dir, tmp, exp.gguf_outtype, conv, run.logs_dir / "gguf-convert.log")
    result = par.check(f"gguf-{exp.gguf_outtype}", "gguf", tmp, exact=True)
    _artifact(stage, "gguf", exp.gguf_outtype, final, [final], result,
              llama_cpp_version=conv.version, converter=conv.source)


EXPORTERS: dict[str, Callable[[Run, Any, Parity], None]] = {
    "onnx": _export_onnx,
    "ortgenai": lambda run, stage, par: _build_ortgenai(run, stage, par, "fp32"),
    "gguf": _export_gguf,
}


# (stage name, inputs, the settings it depends on, body)
Job = tuple[str, list[Path], dict[str, Any], Callable[[Any], None]]


def _run_all(jobs: list[Job], run: Run, force: bool) -> list[str]:
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


def _raise(failures: list[str], run: Run) -> None:
    if failures:
        raise ArtifactError(f"{len(failures)} artifact(s) failed in {run.root}:\n" +
                            "\n".join(failures),
                            hint=f"The artifacts that passed: "
                            f"{', '.join(a['id'] for a in list_artifacts(run)) or 'none'}.")


def _settings(run: Run, **extra: Any) -> dict[str, Any]:
    """What one artifact depends on: the parity settings and ``extra`` (so adding a quantization
    to the recipe does not redo the others)."""
    exp = run.recipe.export
    return {"parity_prompts": exp.parity_prompts,
            "parity_max_new_tokens": exp.parity_max_new_tokens, **extra}


def export_jobs(run: Run, formats: list[str], par: Parity) -> list[Job]:
    exp = run.recipe.export
    extra = {"gguf": {"gguf_outtype": exp.gguf_outtype, "llama_cpp_dir": exp.llama_cpp_dir}}
    return [(f"export:{fmt}", [run.merged_dir], _settings(run, **extra.get(fmt, {})),
             (lambda stage, fmt=fmt: EXPORTERS[fmt](run, stage, par))) for fmt in formats]


def export(run: Run, *, force: bool = False, formats: list[str] | None = None) -> None:
    """Export the merged student to each format (default: the recipe's export.formats)."""
    run.require("merge", needed_by="export")
    formats = formats or list(run.recipe.export.formats)
    unknown = [f for f in formats if f not in EXPORTERS]
    if unknown:
        raise ArtifactError(f"Unknown export format(s): {', '.join(unknown)}.",
                            hint=f"Known formats: {', '.join(EXPORTERS)}.")
    _raise(_run_all(export_jobs(run, formats, Parity(run)), run, force), run)
    log.info("artifacts in %s: %s", run.export_dir,
             ", ".join(a["id"] for a in list_artifacts(run)) or "none")


# ---------------------------------------------------------------------------------------------
# quantize


def _quantize_onnx(run: Run, stage: Any, par: Parity, precision: str) -> None:
    from edgedistill.formats import onnx

    src = run.onnx_dir / "model.onnx"
    scratch = _scratch(run, f"onnx-{precision}")
    try:
        name = f"model_{precision}.onnx"
        onnx.quantize(src, scratch / name, precision, run.recipe.export.quantize.int4_block_size)
        onnx.check(scratch / name)
        for p in run.onnx_dir.iterdir():  # the tokenizer beside the model, for the parity run
            if p.is_file() and not p.name.startswith((".", "model")):
                (scratch / p.name).symlink_to(p)
        result = par.check(f"onnx-{precision}", "onnx", scratch / name, exact=False)
        names = sorted(p.name for p in scratch.iterdir() if p.name.startswith(name))
        files = _place(stage, scratch, run.onnx_dir, names)
        _artifact(stage, "onnx", precision, run.onnx_dir / name, files, result,
                  block_size=run.recipe.export.quantize.int4_block_size if precision == "int4"
                  else None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _quantize_gguf(run: Run, stage: Any, par: Parity, qtype: str) -> None:
    from edgedistill.formats import gguf

    exp = run.recipe.export
    src = run.gguf_dir / f"model-{exp.gguf_outtype}.gguf"
    final = run.gguf_dir / f"model-{qtype.lower()}.gguf"
    tmp = stage.output(final)
    log_file = run.logs_dir / f"gguf-quantize-{qtype.lower()}.log"
    log_file.unlink(missing_ok=True)
    gguf.quantize(src, tmp, qtype, log_file=log_file)
    result = par.check(f"gguf-{qtype.lower()}", "gguf", tmp, exact=False)
    _artifact(stage, "gguf", qtype.lower(), final, [final], result,
              llama_cpp_version=f"llama-cpp-python {gguf.llama_cpp_python_version()}",
              quantized_from=run.rel(src))


def quantize_jobs(run: Run, par: Parity, failures: list[str]) -> list[Job]:
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
                         _settings(run, block_size=block if p == "int4" else None),
                         lambda stage, p=p: _quantize_onnx(run, stage, par, p)))
    if "ortgenai" in exp.formats:
        for p in exp.quantize.ortgenai:
            if p != FP_PRECISION["ortgenai"]:  # fp32 is the export itself
                jobs.append((f"quantize:ortgenai-{p}", [run.merged_dir],
                             _settings(run, block_size=block if p == "int4" else None),
                             lambda stage, p=p: _build_ortgenai(run, stage, par, p)))
    if exp.quantize.gguf and needs("gguf"):
        src = run.gguf_dir / f"model-{exp.gguf_outtype}.gguf"
        for q in exp.quantize.gguf:
            jobs.append((f"quantize:gguf-{q.lower()}", [run.merged_dir, src], _settings(run),
                         lambda stage, q=q: _quantize_gguf(run, stage, par, q)))
    return jobs


def quantize(run: Run, *, force: bool = False) -> None:
    """Quantize the exports as the recipe's export.quantize says (ONNX int8/int4, ORT GenAI int4,
    GGUF q8_0/q4_k_m/... — any type llama.cpp names)."""
    run.require("merge", needed_by="quantize")
    failures: list[str] = []
    jobs = quantize_jobs(run, Parity(run), failures)
    failures += _run_all(jobs, run, force)
    _raise(failures, run)
    log.info("artifacts in %s: %s", run.export_dir,
             ", ".join(a["id"] for a in list_artifacts(run)) or "none")


# ---------------------------------------------------------------------------------------------


def list_artifacts(run: Run) -> list[dict[str, Any]]:
    """Every finished, intact artifact of the run: id, format, precision, path (absolute: the model
    file, or the package directory for ortgenai), bytes, sha256, parity, and its manifest extras."""
    stages = run.read_manifest()["stages"]
    out = []
    for name, entry in stages.items():
        art = (entry.get("metrics") or {}).get("artifact")
        if not name.startswith(("export:", "quantize:")) or entry.get("status") != "done" or not art:
            continue
        if not run._outputs_intact(entry):
            continue
        outputs = entry.get("outputs", {})
        main = outputs.get(art["path"], {})
        out.append({
            **{k: v for k, v in art.items() if k not in ("path", "files")},
            "path": run.root / art["path"],
            "bytes": sum(outputs.get(f, {}).get("bytes", 0) for f in art["files"]),
            "sha256": main.get("sha256"),
            "parity": entry["metrics"].get("parity", {}),
            "stage": name,
        })
    return sorted(out, key=lambda a: (_ORDER.index(a["format"]) if a["format"] in _ORDER else 9,
                                      a["bytes"] * -1))
