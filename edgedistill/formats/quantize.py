"""``edgedistill quantize RUN``: the exports quantized as the recipe's export.quantize says (ONNX
int8/int4 weight-only, ORT GenAI int4, any GGUF type llama.cpp names), each a manifest stage of its
own with its parity numbers and its quantization loss (:mod:`.quant_loss`).

With ``calibration`` task or text:FILE, two stages come first: ``quantize:calibration`` (the
samples, checked against the eval split before anything is written: :mod:`.calibration`) and,
when a GGUF type uses one, ``quantize:imatrix`` (RUN/export/calibration/imatrix.gguf). Every
artifact that calibration can change (GGUF types that read an importance matrix; int4 with
``algo: gptq``) is then built without and with the data, and a calibrated one is kept only when
its KL divergence from the merged student at the eval answers is lower beyond noise: the 95%
paired bootstrap interval of the difference over the eval chats lies below zero (a tie keeps
the uncalibrated build; ``quant_loss_comparisons`` records each). A GGUF whose tensors are
partly k-quants, partly the 32-wide types llama.cpp falls back to (rows no multiple of 256), gets
a third candidate: the importance matrix on its k-/i-quant tensors only. Every measurement is
recorded (``quant_loss_candidates``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable

from edgedistill.artifacts import list_artifacts
from edgedistill.errors import EdgeDistillError
from edgedistill.formats import calibration as calib
from edgedistill.formats.jobs import Job, place, raise_failures, record_artifact, run_all, scratch_dir, settings
from edgedistill.formats.parity import Checker
from edgedistill.formats.quant_loss import Reference, measure, paired_difference, public
from edgedistill.formats.variants import Started
from edgedistill.registry import FORMATS
from edgedistill.rundir import Run

log = logging.getLogger(__name__)


class Context:
    """What one command's quantize jobs share, each made on first use: the parity reference, the
    quantization-loss reference, the calibration samples."""

    def __init__(self, run: Run, par: Checker | None = None):
        self.run, self.par, self.loss = run, par or Checker(run), Reference(run)
        q = run.recipe.export.quantize
        self.spec = q.calibration if calib.available(run, q.calibration) else "none"
        self.cal_dir = run.export_dir / "calibration"
        self._cal: calib.Calibration | None = None

    @property
    def calibrated(self) -> bool:
        return self.spec != "none"

    @property
    def cal_file(self) -> Path:
        return self.cal_dir / "calibration.json"

    @property
    def imatrix_file(self) -> Path:
        return self.cal_dir / "imatrix.gguf"

    def samples(self) -> calib.Calibration:
        if self._cal is None:
            self._cal = calib.load(self.cal_file)
        return self._cal

    def loss_inputs(self) -> list[Path]:
        return [self.run.eval_data] if self.run.eval_data.exists() else []


# --- calibration stages ---------------------------------------------------------------------------

CALIBRATION_STAGES = ("quantize:calibration", "quantize:imatrix")


def _calibration(ctx: Context, stage: Any) -> None:
    run, q = ctx.run, ctx.run.recipe.export.quantize
    cal = calib.build(run, ctx.spec, q.calibration_samples, run.recipe.train.max_length)
    ctx.cal_dir.mkdir(parents=True, exist_ok=True)
    calib.save(cal, stage.output(ctx.cal_file))  # read back by the jobs after this stage
    stage.metrics["calibration"] = cal.record()
    log.info("calibration: %d samples, %d tokens from %s (sha256 %s…)", len(cal.ids), cal.tokens,
             cal.source, cal.sha256[:12])


def _imatrix(ctx: Context, stage: Any) -> None:
    from edgedistill.formats.variants import make_imatrix

    cal = ctx.samples()
    cover = make_imatrix(ctx.run, cal.ids, cal.source, stage.output(ctx.imatrix_file))
    stage.metrics["imatrix"] = {**cover, "calibration_sha256": cal.sha256}
    log.info("importance matrix: %d of %d matrix weights from %d tokens", cover["entries"],
             cover["matrix_weights"], cover["tokens"])


KQUANTS = " (k-quant tensors)"  # the GGUF candidate label's suffix: see _quantize_gguf

# --- one artifact: its candidates, the one kept --------------------------------------------------

# scratch dir → (artifact path, extras), or None when the candidate would repeat another, or a
# Started whose result() is one of those: a build still running in the background (the next
# candidates are made meanwhile)
Build = Callable[[Path], "tuple[Path, dict[str, Any]] | None | Started"]


def _keep(ctx: Context, stage: Any, fmt: str, precision: str,
          candidates: list[tuple[str, Build]]) -> tuple[Path, Path, dict[str, Any]]:
    """Build each (calibration label, build) candidate in scratch space and measure its loss;
    keep the first (uncalibrated) unless a later one is measurably closer to the merged student
    (:func:`better`). Returns (scratch dir, artifact path, extras) of the kept one; records every
    measurement and comparison."""
    kind = FORMATS[fmt].kind
    built, scratches, made = [], [], []
    try:
        for i, (label, build) in enumerate(candidates):  # all built first: some in the background
            scratches.append(scratch_dir(ctx.run, f"{fmt}-{precision}-{i}"))
            made.append((label, scratches[-1], build(scratches[-1])))
        for i, (label, scratch, m) in enumerate(made):
            if isinstance(m, Started):
                made[i] = (label, scratch, None)  # waited for (or cancelled) once only
                m = m.result()
            if m is None:  # the same artifact as another candidate: not built twice
                shutil.rmtree(scratch, ignore_errors=True)
                continue
            path, extra = m
            built.append((label, scratch, path, extra, measure(ctx.loss, kind, path, label)))
        kept, comparisons = built[0], {}
        for cand in built[1:]:
            take, comparison = better(cand[4], kept[4])
            if comparison is not None:
                comparisons[f"{cand[0]} - {kept[0]}"] = comparison
            if take:
                kept = cand
    except BaseException:
        for _, _, m in made:
            if isinstance(m, Started):
                m.cancel()
        for d in scratches:
            shutil.rmtree(d, ignore_errors=True)
        raise
    for d in scratches:
        if d is not kept[1]:
            shutil.rmtree(d, ignore_errors=True)
    label, scratch, path, extra, loss = kept
    loss = public(loss)
    stage.metrics["quant_loss"] = loss
    if len(built) > 1:
        stage.metrics["quant_loss_candidates"] = {b[0]: public(b[4]) for b in built}
        stage.metrics["quant_loss_comparisons"] = comparisons
        log.info("%s-%s: kept %s (answer KLD %s; candidates %s; differences %s)", fmt, precision, label,
                 loss and loss["kld"], {b[0]: b[4] and b[4]["kld"] for b in built},
                 {k: f"{v['difference']:+.6f} [{v['ci95'][0]:+.6f}, {v['ci95'][1]:+.6f}]"
                  for k, v in comparisons.items()})
    if label != "none":
        extra = {**extra, "calibration": ctx.samples().record()}
    return scratch, path, {**extra, "calibration_source": label}


def better(cand: dict[str, Any] | None, kept: dict[str, Any] | None) -> tuple[bool, dict[str, Any] | None]:
    """Whether candidate ``cand`` replaces the one kept so far, and their paired comparison
    (:func:`edgedistill.formats.quant_loss.paired_difference`, cand - kept). Unmeasurable (no
    eval split): the later, calibrated one, as asked. A broken artifact (non-finite logits)
    loses to any other. Else only a lower answer-position KLD whose 95% paired interval of the
    difference lies below zero: a difference inside the noise keeps what is kept."""
    if cand is None or kept is None:
        return True, None
    if _kld(kept) == float("inf") or _kld(cand) == float("inf"):
        return _kld(cand) < _kld(kept), None
    comparison = paired_difference(cand, kept)
    if comparison is None:  # measured on different chats: the point estimates alone
        return _kld(cand) < _kld(kept), None
    return _kld(cand) < _kld(kept) and comparison["ci95"][1] < 0, comparison


def _kld(loss: dict[str, Any]) -> float:
    """The answer-position KLD, a broken artifact's (non-finite logits, ``kld: null``) the worst."""
    return float("inf") if loss["kld"] is None else loss["kld"]


def _finish(ctx: Context, stage: Any, fmt: str, precision: str, scratch: Path, path: Path,
            extra: dict[str, Any], dest: Path) -> None:
    """Parity of the kept candidate, then its files into place and the artifact recorded."""
    try:
        result = ctx.par.check(f"{fmt}-{precision}", FORMATS[fmt].kind, path, exact=False)
        if fmt == "ortgenai":
            shutil.move(str(path), str(stage.output(dest)))
            files = [dest]
        else:
            names = sorted(p.name for p in scratch.iterdir() if p.name.startswith(path.name))
            files = place(stage, scratch, dest.parent, names)
        record_artifact(stage, fmt, precision, dest, files, result, **extra)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _quantize_gguf(ctx: Context, stage: Any, qtype: str, calibrated: bool) -> None:
    from edgedistill.formats.gguf import NEEDS_IMATRIX, kquant_tensors
    from edgedistill.formats.variants import gguf_variant

    run, q = ctx.run, qtype.lower()
    log_file = run.logs_dir / f"gguf-quantize-{q}.log"
    log_file.unlink(missing_ok=True)
    types: dict[str, str] = {}  # tensor → GGML type, from the uncalibrated build

    def build(imatrix: Path | None, kquants_only: bool = False) -> Build:
        def go(scratch: Path) -> tuple[Path, dict[str, Any]] | None:
            out = scratch / f"model-{q}.gguf"
            only = None
            if kquants_only:
                only = kquant_tensors(types)
                if only is None:  # the same file as the all-tensor candidate, or as none
                    return None
            extra = gguf_variant(run, q, out, imatrix, log_file, only=only,
                                 types=types if imatrix is None else None)
            return out, extra
        return go

    cands = [] if q in NEEDS_IMATRIX and calibrated else [("none", build(None))]
    if calibrated:
        cands.append((ctx.spec, build(ctx.imatrix_file)))
        # llama.cpp's weighted quantizer for the 32-wide types it falls back to can cost more
        # than the importance matrix brings: also measured with it on the k-/i-quant tensors only
        cands.append((ctx.spec + KQUANTS, build(ctx.imatrix_file, kquants_only=True)))
    scratch, path, extra = _keep(ctx, stage, "gguf", q, cands)
    # llama.cpp falls back from k- and i-quants on rows that are no multiple of 256 (SmolLM2's
    # 576): what the file holds is recorded, and said
    log.info("gguf-%s tensor types: %s", q, ", ".join(f"{k} x{v}" for k, v in extra["tensor_types"].items()))
    _finish(ctx, stage, "gguf", q, scratch, path, extra, run.gguf_dir / f"model-{q}.gguf")


def _quantize_onnx(ctx: Context, stage: Any, precision: str, calibrated: bool) -> None:
    from edgedistill.formats.variants import int4_algo, onnx_variant

    run = ctx.run
    algo = run.recipe.export.quantize.algo

    def build(label: str) -> Build:
        def go(scratch: Path) -> tuple[Path, dict[str, Any]]:
            a = int4_algo("onnx", algo, label != "none") if precision == "int4" else None
            ids = ctx.samples().select_tokens(run.recipe.export.quantize.gptq_max_tokens) \
                if a == "gptq" else None
            path = onnx_variant(run, precision, scratch, a or "rtn", ids)
            extra = {"block_size": run.recipe.export.quantize.int4_block_size, "algo": a,
                     **_matmul_types(run)} if precision == "int4" else {}
            return path, extra
        return go

    cands = [("none", build("none"))] + ([(ctx.spec, build(ctx.spec))] if calibrated else [])
    scratch, path, extra = _keep(ctx, stage, "onnx", precision, cands)
    _finish(ctx, stage, "onnx", precision, scratch, path, extra, run.onnx_dir / path.name)


def _quantize_ortgenai(ctx: Context, stage: Any, precision: str, calibrated: bool) -> None:
    from edgedistill.formats.variants import int4_algo, start_ortgenai_variant

    run = ctx.run
    algo = run.recipe.export.quantize.algo
    run.logs_dir.mkdir(parents=True, exist_ok=True)

    def build(label: str) -> Build:
        def go(scratch: Path) -> Started:
            # the model builder's int4 (the uncalibrated candidate) works on one core: it runs in
            # the background while GPTQ makes the calibrated one
            a = int4_algo("ortgenai", algo, label != "none")
            ids = ctx.samples().select_tokens(run.recipe.export.quantize.gptq_max_tokens) \
                if a == "gptq" else None
            pkg = scratch / precision
            started = start_ortgenai_variant(run, pkg, a, ids, run.logs_dir / f"ortgenai-{precision}.log")
            extra = {"block_size": run.recipe.export.quantize.int4_block_size, "algo": a,
                     "lm_head": run.recipe.export.quantize.int4_lm_head, **_matmul_types(run)}
            return Started(lambda: (pkg, {**started.result(), **extra}), started.cancel)
        return go

    cands = [("none", build("none"))] + ([(ctx.spec, build(ctx.spec))] if calibrated else [])
    scratch, path, extra = _keep(ctx, stage, "ortgenai", precision, cands)
    _finish(ctx, stage, "ortgenai", precision, scratch, path, extra, run.ortgenai_dir / precision)


def _matmul_types(run: Run) -> dict[str, Any]:
    types = run.recipe.export.quantize.int4_matmul_types
    return {"matmul_type_overrides": dict(types)} if types else {}


# --- the job list ----------------------------------------------------------------------------------

def quantize_jobs(run: Run, par: Checker, failures: list[str], ctx: Context | None = None) -> list[Job]:
    """One job per quantized artifact the recipe asks for, after the calibration stages they
    need; a missing source export is a failure."""
    from edgedistill.formats.gguf import IGNORES_IMATRIX

    exp, ctx = run.recipe.export, ctx or Context(run, par)
    q = exp.quantize
    block, cal = q.int4_block_size, ctx.calibrated
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

    gguf_types = [t.lower() for t in q.gguf] if q.gguf and needs("gguf") else []
    gguf_cal = [t for t in gguf_types if cal and t not in IGNORES_IMATRIX]
    int4_cal = cal and q.algo == "gptq" and (
        ("int4" in q.onnx and "onnx" in exp.formats) or ("int4" in q.ortgenai and "ortgenai" in exp.formats))
    cal_settings = {"calibration": ctx.spec, "samples": q.calibration_samples,
                    "max_length": run.recipe.train.max_length}
    if gguf_cal or int4_cal:
        jobs.append(("quantize:calibration",
                     [run.merged_dir, *calib.source_files(run, ctx.spec), *ctx.loss_inputs()],
                     cal_settings, lambda stage: _calibration(ctx, stage)))
    if gguf_cal:
        src = run.gguf_dir / f"model-{exp.gguf_outtype}.gguf"
        jobs.append(("quantize:imatrix", [run.merged_dir, ctx.cal_file, src], cal_settings,
                     lambda stage: _imatrix(ctx, stage)))
    loss_in = ctx.loss_inputs()

    def calibrated(c: bool, data: Path) -> tuple[list[Path], dict[str, Any]]:
        """The extra inputs and settings of a job that calibration can change."""
        return ([data], {"calibration": cal_settings, "gptq_max_tokens": q.gptq_max_tokens}) if c \
            else ([], {})

    if q.onnx and needs("onnx"):
        for p in q.onnx:
            extra_in, extra = calibrated(int4_cal and p == "int4", ctx.cal_file)
            inputs = [run.merged_dir, run.onnx_dir / "model.onnx", *loss_in, *extra_in]
            jobs.append((f"quantize:onnx-{p}", inputs,
                         settings(run, block_size=block if p == "int4" else None,
                                  algo=q.algo if p == "int4" else None, **extra,
                                  **(_matmul_types(run) if p == "int4" else {})),
                         lambda stage, p=p, c=bool(extra_in): _quantize_onnx(ctx, stage, p, c)))
    export_failed = (run.stage_entry("export:ortgenai") or {}).get("status") == "failed"
    if "ortgenai" in exp.formats and export_failed and any(
            p != FORMATS["ortgenai"].full_precision for p in q.ortgenai):
        failures.append("quantize ortgenai: not built, export:ortgenai failed (its log: "
                        f"{run.logs_dir / 'ortgenai-fp32.log'})")
    elif "ortgenai" in exp.formats:
        for p in q.ortgenai:
            if p != FORMATS["ortgenai"].full_precision:  # fp32 is the export itself
                extra_in, extra = calibrated(int4_cal, ctx.cal_file)
                jobs.append((f"quantize:ortgenai-{p}", [run.merged_dir, *loss_in, *extra_in],
                             settings(run, block_size=block, algo=q.algo, **extra,
                                      **({"lm_head": q.int4_lm_head} if q.int4_lm_head != "int8" else {}),
                                      **_matmul_types(run)),
                             lambda stage, p=p, c=bool(extra_in): _quantize_ortgenai(ctx, stage, p, c)))
    for t in gguf_types:
        extra_in, extra = calibrated(t in gguf_cal, ctx.imatrix_file)
        src = run.gguf_dir / f"model-{exp.gguf_outtype}.gguf"
        jobs.append((f"quantize:gguf-{t}", [run.merged_dir, src, *loss_in, *extra_in],
                     settings(run, **{k: v for k, v in extra.items() if k == "calibration"},
                              **({"tensor_types": q.gguf_tensor_types} if q.gguf_tensor_types else {})),
                     lambda stage, t=t, c=bool(extra_in): _quantize_gguf(ctx, stage, t, c)))
    return jobs


def quantize(run: Run, *, force: bool = False) -> None:
    """Quantize the exports as the recipe's export.quantize says (ONNX int8/int4, ORT GenAI int4,
    GGUF q8_0/q4_k_m/... — any type llama.cpp names), calibrated on the train split when asked."""
    run.require("merge", needed_by="quantize")
    ctx = Context(run)
    if ctx.calibrated:  # before anything is written: the calibration data must not hold eval prompts
        calib.check_no_leak(run, ctx.spec)
    failures: list[str] = []
    jobs = quantize_jobs(run, ctx.par, failures, ctx)
    first = [j for j in jobs if j[0] in CALIBRATION_STAGES]  # what the artifacts read: stop if it fails
    raise_failures(run_all(first, run, force), run)
    failures += run_all([j for j in jobs if j[0] not in CALIBRATION_STAGES], run, force)
    raise_failures(failures, run)
    log.info("artifacts in %s: %s", run.export_dir,
             ", ".join(a["id"] for a in list_artifacts(run)) or "none")
