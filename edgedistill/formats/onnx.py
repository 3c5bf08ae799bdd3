"""ONNX through optimum's exporter (text-generation-with-past: one decoder with KV-cache inputs and
outputs), and its quantized variants through onnxruntime's own quantizer: int8 and int4
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


def sensitive_matmuls(model_dir: Path) -> list[str]:
    """The MatMuls llama.cpp's Q4_K_M keeps at higher precision (attention V and MLP down
    projections in the first and last eighth of the layers and every third layer between), named
    as optimum's exporter names them."""
    n = int(json.loads((model_dir / "config.json").read_text()).get("num_hidden_layers") or 0)
    layers = [i for i in range(n) if i < n / 8 or i >= 7 * n / 8 or (i - round(n / 8)) % 3 == 2]
    return [f"/model/layers.{i}/{proj}/MatMul" for i in layers
            for proj in ("self_attn/v_proj", "mlp/down_proj")]


def quantize(src: Path, dst: Path, precision: str, block_size: int = 32) -> None:
    """model.onnx → dst, weight-only with onnxruntime's MatMulNBits quantizer (activations stay
    float, so accuracy holds where dynamic int8 lost most of it on a 135M student):

    - int8: every MatMul weight at 8 bits, ``block_size`` weights per scale;
    - int4: 4 bits, with the sensitive MatMuls at 8 bits (llama.cpp's Q4_K_M mix; all-4-bit
      lost half the demo student's exact-match score). Round-to-nearest: on the demo student ORT's
      k-quant gave the same score (0.48) in 43 s against 10 s.

    Large models keep their weights as external data beside dst."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (MatMulNBitsQuantizer,
                                                                 RTNWeightOnlyQuantConfig)

    if precision not in ("int8", "int4"):
        raise ArtifactError(f"ONNX: unknown precision {precision!r}; known: int8, int4.")
    large = _external(src)
    model = onnx.load(str(src))
    if precision == "int8":
        quant = MatMulNBitsQuantizer(model, bits=8, block_size=block_size, is_symmetric=True,
                                     accuracy_level=4)
    else:
        mixed = {name: {"bits": 8} for name in sensitive_matmuls(src.parent)}
        quant = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=False,
                                     accuracy_level=4,
                                     algo_config=RTNWeightOnlyQuantConfig(customized_weight_config=mixed))
    quant.process()
    proto = quant.model.model
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        # ORT's weight-only quantizer emits MatMulNBits without declaring its domain (the checker refuses
        # such a file; onnxruntime itself does not mind)
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    quant.model.save_model_to_file(str(dst), use_external_data_format=large)


def check(path: Path) -> None:
    """The ONNX checker over the file (a truncated or corrupt file fails here)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError,
            OSError, ValueError) as e:
        raise ArtifactError(f"ONNX: {path} fails the ONNX checker: {str(e)[:300]}",
                            hint="The file is corrupt or truncated; re-export it with --force.")
