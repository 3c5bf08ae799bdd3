"""One quantized variant of each format, built into a folder of its own: what the quantize stage
builds (and compares, calibrated against not) and what scripts/bench_quant.py times.

- GGUF: llama.cpp's quantizer over the exported GGUF, with or without an importance matrix;
- ONNX: onnxruntime's MatMulNBits quantizer over the exported model.onnx (rtn, k_quant, gptq);
- ORT GenAI: the model builder's own int4 (rtn, k_quant), or, for gptq, an fp32 package (the
  exported one when it exists) whose model.onnx goes through the ONNX GPTQ path.

Each takes its inputs explicitly (calibration token ids, an imatrix file), so a caller can build
any combination. The int4 algorithm of a variant without calibration data is the format's
data-free default when ``algo`` is gptq (:data:`DATA_FREE`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from edgedistill.errors import ArtifactError

log = logging.getLogger(__name__)

# int4 without calibration data when the recipe asks for gptq: what each format shipped before
# (ONNX: RTN scored as k_quant on the demo student in a quarter of the time; ORT GenAI: k_quant,
# measured better than RTN there)
DATA_FREE = {"onnx": "rtn", "ortgenai": "k_quant"}


def int4_algo(fmt: str, algo: str, calibrated: bool) -> str:
    return algo if algo != "gptq" or calibrated else DATA_FREE[fmt]


def make_imatrix(run: Any, ids: list[list[int]], dataset: str, out: Path) -> dict[str, Any]:
    """Collect the importance matrix of the merged student over ``ids`` and write it to ``out``
    (GGUF imatrix format) for the tensors of the exported GGUF; returns its coverage."""
    import time

    from edgedistill.formats import gguf, imatrix

    exp = run.recipe.export
    t0 = time.perf_counter()
    stats = imatrix.collect(run.merged_dir, ids)
    conv = gguf.converter(exp.llama_cpp_dir)
    src = run.gguf_dir / f"model-{exp.gguf_outtype}.gguf"
    written = imatrix.write(stats, src, out, dataset, len(ids), max(map(len, ids)), conv)
    cover = imatrix.coverage(written)
    if cover["missing"]:
        log.warning("the importance matrix has no entry for %d GGUF weights (%s): llama.cpp "
                    "quantizes those without one", len(cover["missing"]), ", ".join(cover["missing"][:4]))
    return {**cover, "tokens": sum(map(len, ids)), "chunks": len(ids), "dataset": dataset,
            "seconds": round(time.perf_counter() - t0, 2)}


def gguf_variant(run: Any, qtype: str, out: Path, imatrix_file: Path | None,
                 log_file: Path | None = None, only: set[str] | None = None,
                 types: dict[str, str] | None = None) -> dict[str, Any]:
    """``out`` ← the exported GGUF quantized to ``qtype``; returns its manifest extras. ``only``:
    the tensors the importance matrix is handed over for (default: every one it has); ``types``,
    when given, gets each tensor's type in ``out`` (the file is read once, ~2 s)."""
    from edgedistill.formats import gguf, imatrix

    exp = run.recipe.export
    src = run.gguf_dir / f"model-{exp.gguf_outtype}.gguf"
    matrix = imatrix.read(imatrix_file) if imatrix_file else None
    if matrix is not None and only is not None:
        matrix = {n: v for n, v in matrix.items() if n in only}
    dataset = None
    if imatrix_file:
        from gguf import GGUFReader

        field = GGUFReader(str(imatrix_file), "r").fields.get("imatrix.datasets")
        dataset = bytes(field.parts[field.data[0]]).decode() if field else None
    overrides = exp.quantize.gguf_tensor_types
    gguf.quantize(src, out, qtype, log_file=log_file, imatrix=matrix, imatrix_dataset=dataset,
                  tensor_types=overrides)
    names = gguf.tensor_type_names(out)
    if types is not None:
        types.update(names)
    return {"llama_cpp_version": f"llama-cpp-python {gguf.llama_cpp_python_version()}",
            "quantized_from": run.rel(src), "tensor_types": gguf.type_counts(names),
            **({"tensor_type_overrides": dict(overrides)} if overrides else {}),
            "imatrix": run.rel(imatrix_file) if imatrix_file else None,
            **({"imatrix_tensors": len(matrix)} if matrix is not None else {})}


def onnx_variant(run: Any, precision: str, out_dir: Path, algo: str,
                 calibration: list[list[int]] | None) -> Path:
    """``out_dir``/model_<precision>.onnx from the exported model.onnx, with the tokenizer files
    linked beside it (the runtime loads them from there); returns the model path."""
    from edgedistill.formats import onnx

    q = run.recipe.export.quantize
    name = f"model_{precision}.onnx"
    if precision == "int4":
        onnx.check_block_size(run.merged_dir, q.int4_block_size)
    onnx.quantize(run.onnx_dir / "model.onnx", out_dir / name, precision, q.int4_block_size,
                  algo, calibration, model_dir=run.merged_dir, types=q.int4_matmul_types)
    onnx.check(out_dir / name)
    for p in run.onnx_dir.iterdir():
        if p.is_file() and not p.name.startswith((".", "model")):
            (out_dir / p.name).symlink_to(p)
    return out_dir / name


class Started:
    """Something being built, perhaps in the background: :meth:`result` waits for it and returns
    what ``finish`` returns (stopping the rest if that fails), :meth:`cancel` stops what still
    runs. The quantize stage builds one candidate while another runs."""

    def __init__(self, finish: Callable[[], Any], cancel: Callable[[], None] = lambda: None):
        self._finish, self._cancel = finish, cancel

    def result(self) -> Any:
        try:
            return self._finish()
        except BaseException:
            self._cancel()
            raise

    def cancel(self) -> None:
        self._cancel()


def start_ortgenai_variant(run: Any, out_dir: Path, algo: str, calibration: list[list[int]] | None,
                           log_file: Path) -> Started:
    """An int4 ORT GenAI package in ``out_dir`` (which must not exist). Data-free int4 (rtn,
    k_quant: one core) runs in a process of its own until :meth:`Started.result`: the model
    builder's own, or, with per-MatMul types (``export.quantize.int4_matmul_types``, which the
    builder cannot take), the ONNX quantizer over the fp32 package; GPTQ is made over the fp32
    package before this returns."""
    from edgedistill.formats import onnx, ortgenai

    q = run.recipe.export.quantize
    onnx.check_block_size(run.merged_dir, q.int4_block_size)
    run.export_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix=".ortgenai-cache-", dir=run.export_dir))  # one per build
    if algo != "gptq" and not q.int4_matmul_types:
        try:
            building = ortgenai.start_build(run.merged_dir, out_dir, "int4", cache, log_file,
                                            q.int4_block_size, algo, q.int4_lm_head)
        except BaseException:
            shutil.rmtree(cache, ignore_errors=True)
            raise

        def finish() -> dict[str, Any]:
            try:
                building.wait()
            finally:
                shutil.rmtree(cache, ignore_errors=True)
            return _fit_tokenizer(run, out_dir)

        def cancel() -> None:
            building.cancel()
            shutil.rmtree(cache, ignore_errors=True)

        return Started(finish, cancel)
    try:
        fp32 = run.ortgenai_dir / "fp32"
        entry = run.stage_entry("export:ortgenai")
        if entry and entry.get("status") == "done" and run.outputs_intact(entry) and fp32.is_dir():
            shutil.copytree(fp32, out_dir)
        else:
            ortgenai.build(run.merged_dir, out_dir, "fp32", cache, log_file.with_suffix(".fp32.log"))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if algo != "gptq":
        building = ortgenai.start_quantize_package(out_dir, run.merged_dir, q.int4_block_size,
                                                   q.int4_lm_head, algo, q.int4_matmul_types, log_file)

        def finish_quantized() -> dict[str, Any]:
            building.wait()
            return _fit_tokenizer(run, out_dir)

        return Started(finish_quantized, building.cancel)
    if not calibration:
        raise ArtifactError("ORT GenAI: GPTQ needs calibration sequences and got none.")
    ortgenai.quantize_package(out_dir, run.merged_dir, q.int4_block_size, calibration, q.int4_lm_head,
                              algo, q.int4_matmul_types)
    extra = _fit_tokenizer(run, out_dir)
    return Started(lambda: extra)


def ortgenai_variant(run: Any, out_dir: Path, algo: str, calibration: list[list[int]] | None,
                     log_file: Path) -> dict[str, Any]:
    """An int4 ORT GenAI package in ``out_dir`` (which must not exist); returns its extras."""
    return start_ortgenai_variant(run, out_dir, algo, calibration, log_file).result()


def _fit_tokenizer(run: Any, out_dir: Path) -> dict[str, Any]:
    from edgedistill.formats import ortgenai, parity

    texts = [m["content"] for msgs in parity.prompts_for(run, run.recipe.export.parity_prompts)
             for m in msgs]
    override = ortgenai.fit_tokenizer(out_dir, run.merged_dir, texts)
    return {"tokenizer_class_override": override} if override else {}
