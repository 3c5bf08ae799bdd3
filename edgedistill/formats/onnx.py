"""ONNX through optimum's exporter (text-generation-with-past: one decoder with KV-cache inputs and
outputs), and its quantized variants through onnxruntime's own quantizer: int8 and int4
weight-only (MatMulNBits)."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edgedistill.errors import ArtifactError, ConfigError

if TYPE_CHECKING:
    import onnx

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


_PROTO_LIMIT = 2**31 - 2**26  # protobuf's 2 GB, with room for the graph: beyond it, external data


def sensitive_layers(n: int) -> list[int]:
    """The layers llama.cpp's Q4_K_M keeps at higher precision: the first and last eighth and every
    third layer between (llama-quant.cpp's use_more_bits; ORT GenAI's builder copies it)."""
    return [i for i in range(n) if i < n / 8 or i >= 7 * n / 8 or (i - round(n / 8)) % 3 == 2]


def model_config(model_dir: Path) -> dict:
    return json.loads((model_dir / "config.json").read_text())


_SENSITIVE = re.compile(r"/model/layers\.(\d+)/(self_attn/v_proj|attn/v_proj|attn/qkv_proj|mlp/down_proj)"
                        r"/MatMul$")
_LM_HEAD = "/lm_head/MatMul"


def sensitive_nodes(model: "onnx.ModelProto", n_layers: int, last_matmul: bool,
                    types: dict[str, str] | None = None) -> list[str]:
    """The same choice in any graph that names its nodes as optimum or ORT GenAI's builder do
    (the builder fuses q, k and v into qkv_proj), plus the LM head when ``last_matmul`` (as the
    builder's ``last_matmul:int8``). ``types`` (``export.quantize.int4_matmul_types``): a pattern
    searched in a body MatMul's node name -> int8 or int4; the first that matches decides that
    MatMul over the layer choice (the LM head follows ``last_matmul`` alone)."""
    layers = set(sensitive_layers(n_layers))
    out = []
    for n in model.graph.node:
        if n.op_type != "MatMul" or n.name == _LM_HEAD:
            continue
        bits = next((b for p, b in (types or {}).items() if re.search(p, n.name)), None)
        if bits == "int8" or (bits is None and (m := _SENSITIVE.search(n.name))
                              and int(m.group(1)) in layers):
            out.append(n.name)
    if last_matmul:
        out += [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name == _LM_HEAD]
    return out


BLOCK_SIZES = (16, 32, 64, 128, 256)  # MatMulNBits: a power of two, at least 16


def valid_block_sizes(dims: list[int]) -> list[int]:
    """Block sizes that tile each input dimension an even number of times: onnxruntime's quantizer
    packs a row's 4-bit zero points two to a byte, and an odd count per row fails inside it
    (SmolLM2's hidden size 576 in blocks of 64 is 9 per row)."""
    return [b for b in BLOCK_SIZES if all(d % b == 0 and (d // b) % 2 == 0 for d in dims)]


def check_block_size(model_dir: Path, block_size: int) -> None:
    """An int4 block must tile every MatMul's input dimension (hidden and intermediate size) an
    even number of times (:func:`valid_block_sizes`)."""
    cfg = model_config(model_dir)
    dims = [d for d in (cfg.get("hidden_size"), cfg.get("intermediate_size")) if d]
    valid = valid_block_sizes(dims)
    if dims and block_size not in valid:
        why = "is not a power of two from 16 to 256" if block_size not in BLOCK_SIZES else \
            f"does not tile the model's hidden/intermediate sizes {dims} an even number of times " \
            "(two 4-bit zero points per byte per row)"
        raise ConfigError(f"export.quantize.int4_block_size {block_size} {why}.",
                          hint=f"Valid block sizes here: {', '.join(map(str, valid)) or 'none of 16-256'}"
                               f" (--set export.quantize.int4_block_size={valid[-1] if valid else 16}).")


def quantize(src: Path, dst: Path, precision: str, block_size: int = 32, algo: str = "rtn",
             calibration: list[list[int]] | None = None, model_dir: Path | None = None,
             last_matmul: bool = False, types: dict[str, str] | None = None) -> None:
    """model.onnx → dst, weight-only with onnxruntime's MatMulNBits quantizer (activations stay
    float, so accuracy holds where dynamic int8 lost most of it on a 135M student):

    - int8: every MatMul weight at 8 bits, ``block_size`` weights per scale;
    - int4: 4 bits, with the sensitive MatMuls (:func:`sensitive_nodes`) at 8 bits (llama.cpp's
      Q4_K_M mix; all-4-bit lost half the demo student's exact-match score). ``algo``: rtn
      (round-to-nearest, 10 s on the demo student), k_quant (43 s, same score there), or gptq
      over the ``calibration`` token sequences (one full forward over them per distinct MatMul
      input: ~4 per layer). ``types``: per-MatMul bits over that mix (:func:`sensitive_nodes`).

    ``model_dir``: where config.json is (the layer count and KV shapes; default src's folder).
    A quantized model over 2 GB keeps its weights as external data beside dst."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (KQuantWeightOnlyQuantConfig,
                                                                 MatMulNBitsQuantizer,
                                                                 RTNWeightOnlyQuantConfig)

    if precision not in ("int8", "int4"):
        raise ArtifactError(f"ONNX: unknown precision {precision!r}; known: int8, int4.")
    # its quantizer logs a line per node at INFO through a handler of its own
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    model_dir = model_dir or src.parent
    model = onnx.load(str(src))
    # its RTN and GPTQ print a progress bar with print(): to stderr, stdout is the CLI's
    with contextlib.redirect_stdout(sys.stderr):
        if precision == "int8":
            quant = MatMulNBitsQuantizer(model, bits=8, block_size=block_size, is_symmetric=True,
                                         accuracy_level=4)
            quant.process()
            out = quant.model
        else:
            n_layers = int(model_config(model_dir).get("num_hidden_layers") or 0)
            sensitive = sensitive_nodes(model, n_layers, last_matmul, types)
            if algo == "gptq":
                if not calibration:
                    raise ArtifactError("ONNX: GPTQ needs calibration sequences and got none.")
                from edgedistill.formats.gptq import gptq_int4

                out = gptq_int4(model, block_size, sensitive, calibration, model_config(model_dir))
            else:
                mixed = {name: {"bits": 8} for name in sensitive}
                config = (KQuantWeightOnlyQuantConfig if algo == "k_quant" else RTNWeightOnlyQuantConfig)(
                    customized_weight_config=mixed)
                quant = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=False,
                                             accuracy_level=4, algo_config=config)
                quant.process()
                out = quant.model
        print(file=sys.stderr)  # ends the progress bar's line
    proto = out.model
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        # ORT's weight-only quantizer emits MatMulNBits without declaring its domain (the checker refuses
        # such a file; onnxruntime itself does not mind)
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    out.save_model_to_file(str(dst), use_external_data_format=proto.ByteSize() > _PROTO_LIMIT)


def check(path: Path) -> None:
    """The ONNX checker over the file (a truncated or corrupt file fails here)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError,
            OSError, ValueError) as e:
        raise ArtifactError(f"ONNX: {path} fails the ONNX checker: {str(e)[:300]}",
                            hint="The file is corrupt or truncated; re-export it with --force.")
