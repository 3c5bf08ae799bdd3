"""ONNX through optimum's exporter (text-generation-with-past: one decoder with KV-cache inputs and
outputs), and its quantized variants through onnxruntime's own tools: dynamic int8, and int4
weight-only (MatMulNBits)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edgedistill.errors import ArtifactError

log = logging.getLogger(__name__)

TASK = "text-generation-with-past"


def supported_model_types() -> list[str]:
    import optimum.exporters.onnx.model_configs  # noqa: F401  (fills the TasksManager registry)
    from optimum.exporters.tasks import TasksManager

    return list(TasksManager.get_supported_model_type_for_task(TASK, "onnx"))


def export(merged: Path, out_dir: Path) -> None:
    """HF directory → out_dir/model.onnx (+ model.onnx_data for large models) + tokenizer files."""
    from optimum.exporters.onnx import main_export

    model_type = json.loads((merged / "config.json").read_text()).get("model_type", "?")
    supported = supported_model_types()
    if model_type not in supported:
        raise ArtifactError(
            f"ONNX: optimum's exporter cannot take the {model_type!r} architecture for {TASK}.",
            hint=f"Supported architectures (model_type): {', '.join(sorted(supported))}.")
    log.info("exporting %s to ONNX (%s)", merged, TASK)
    main_export(str(merged), output=str(out_dir), task=TASK, do_validation=False,
                device="cpu", library_name="transformers")
    if not (out_dir / "model.onnx").exists():
        raise ArtifactError(f"ONNX: optimum wrote no model.onnx into {out_dir}.")


def _external(model_path: Path) -> bool:
    return any(p.name.startswith(model_path.name) and p != model_path
               for p in model_path.parent.iterdir())


def quantize(src: Path, dst: Path, precision: str, block_size: int = 32) -> None:
    """model.onnx → dst (int8: dynamic quantization; int4: MatMulNBits, ``block_size`` weights per
    scale). Large models keep their weights as external data beside dst."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    large = _external(src)
    if precision == "int8":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"],
                         use_external_data_format=large)
    elif precision == "int4":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        model = onnx.load(str(src))
        quant = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=True,
                                     accuracy_level=4)
        quant.process()
        quant.model.save_model_to_file(str(dst), use_external_data_format=large)
    else:
        raise ArtifactError(f"ONNX: unknown precision {precision!r}; known: int8, int4.")


def check(path: Path) -> None:
    """The ONNX checker over the file (a truncated or corrupt file fails here)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError,
            OSError, ValueError) as e:
        raise ArtifactError(f"ONNX: {path} fails the ONNX checker: {str(e)[:300]}",
                            hint="The file is corrupt or truncated; re-export it with --force.")
