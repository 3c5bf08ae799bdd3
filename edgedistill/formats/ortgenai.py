"""ONNX Runtime GenAI packages (what Android/iOS apps run) through its model builder."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

from edgedistill.errors import ArtifactError

log = logging.getLogger(__name__)

# ORT GenAI's tokenizer (onnxruntime-extensions) picks its BPE flavour from tokenizer_class; for
# a LlamaTokenizer it splits digits as original Llama did, which a SentencePiece model trained
# without split_digits does not. These classes are tried, in order, when the package's encoding
# differs from the student's HF tokenizer; the first that matches is kept and recorded.
_SPM_CLASSES = ("GemmaTokenizer",)


def supported_architectures() -> list[str]:
    import onnxruntime_genai.models.builder as builder

    src = Path(builder.__file__).read_text()
    return sorted(set(re.findall(r'config\.architectures\[0\] == "(\w+)"', src)))


class Building:
    """A model-builder (or quantizer) run in its own process: :meth:`wait` until its package is
    there (raises when it failed), :meth:`cancel` to stop it. Their k-quant works on one core, so
    another candidate can be made meanwhile (quantize stage)."""

    def __init__(self, cmd: list[str], merged: Path, out_dir: Path, log_file: Path,
                 what: str = "the model builder"):
        self.merged, self.out_dir, self.log_file, self.what = merged, out_dir, log_file, what
        self._log = open(log_file, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)

    def wait(self) -> None:
        rc = self.proc.wait()
        self._log.close()
        if rc != 0 or not all((self.out_dir / f).exists() for f in ("genai_config.json", "model.onnx")):
            raise ArtifactError(f"ORT GenAI: {self.what} failed on {self.merged} (exit {rc}).",
                                hint=f"Its last output ({self.log_file}):\n{self.log_file.read_text()[-800:]}")

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def start_build(merged: Path, out_dir: Path, precision: str, cache: Path, log_file: Path,
                block_size: int = 32, algo: str = "k_quant", lm_head: str = "int8") -> Building:
    """HF directory → ORT GenAI package (genai_config.json, model.onnx, tokenizer) in out_dir, by
    the model builder in a process of its own. int4 with ``algo`` rtn or k_quant is the builder's
    own; GPTQ (and any per-MatMul mix) is :func:`quantize_package` over an fp32 package."""
    arch = (json.loads((merged / "config.json").read_text()).get("architectures") or ["?"])[0]
    supported = supported_architectures()
    if arch not in supported:
        raise ArtifactError(
            f"ORT GenAI: the model builder cannot take the {arch} architecture.",
            hint=f"Supported architectures: {', '.join(supported)}.")
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(merged),
           "-o", str(out_dir), "-p", precision, "-e", "cpu", "-c", str(cache)]
    if precision == "int4":
        # k-quant 4-bit body with lm_head and the sensitive layers at 8 bits (llama.cpp's Q4_K_M
        # mix). Exact match of two demo students (fp32 0.60 and 0.57): all-4-bit RTN 0.33; the
        # mix with RTN 0.47 and 0.37 (17 s); with k-quant 0.48 and 0.45 (54-64 s). The package
        # phones run is worth the extra seconds.
        cmd += ["--extra_options", f"block_size={block_size}", "accuracy_level=4", f"algo_config={algo}",
                "matmul_mixed_precision=" + ("last_matmul:int8," if lm_head == "int8" else "")
                + "mixed_layers:int8"]
    log.info("building the ORT GenAI %s package from %s", precision, merged)
    return Building(cmd, merged, out_dir, log_file)


def build(merged: Path, out_dir: Path, precision: str, cache: Path, log_file: Path,
          block_size: int = 32, algo: str = "k_quant", lm_head: str = "int8") -> None:
    """:func:`start_build`, waited for."""
    building = start_build(merged, out_dir, precision, cache, log_file, block_size, algo, lm_head)
    try:
        building.wait()
    except BaseException:
        building.cancel()
        raise


def quantize_package(pkg: Path, merged: Path, block_size: int, calibration: list[list[int]] | None,
                     lm_head: str = "int8", algo: str = "gptq",
                     types: dict[str, str] | None = None) -> None:
    """An fp32 package → int4 in place: its model.onnx through the ONNX int4 path (``algo`` gptq,
    calibrated on ``calibration``, or rtn/k_quant without data) with the builder's own mix (the
    sensitive layers' qkv/down projections at 8 bits, and the LM head at ``lm_head`` bits) and
    ``types`` over it (``export.quantize.int4_matmul_types``); genai_config.json still names
    model.onnx, with the graph's own input names."""
    from edgedistill.formats import onnx as onnx_format

    src, tmp = pkg / "model.onnx", pkg / "model.int4.onnx"
    onnx_format.quantize(src, tmp, "int4", block_size, algo, calibration, model_dir=merged,
                         last_matmul=lm_head == "int8", types=types)
    for p in list(pkg.iterdir()):
        if p.name.startswith("model.onnx"):
            p.unlink()
    share_tied_embedding(tmp)
    tmp.replace(src)  # a model over 2 GB keeps model.int4.onnx.data, the name its graph gives
    log.info("ORT GenAI int4 (%s) package in %s", algo, pkg)


_QUANTIZE_CHILD = """import json, sys
from pathlib import Path
from edgedistill.formats.ortgenai import quantize_package
a = json.loads(sys.argv[1])
quantize_package(Path(a["pkg"]), Path(a["merged"]), a["block_size"], None, a["lm_head"], a["algo"],
                 a["types"])
"""


def start_quantize_package(pkg: Path, merged: Path, block_size: int, lm_head: str, algo: str,
                           types: dict[str, str] | None, log_file: Path) -> Building:
    """:func:`quantize_package` without calibration (rtn, k_quant) in a process of its own, as the
    builder's own int4 runs, so the calibrated candidate can be made meanwhile."""
    args = {"pkg": str(pkg), "merged": str(merged), "block_size": block_size, "lm_head": lm_head,
            "algo": algo, "types": dict(types or {})}
    log.info("quantizing the ORT GenAI package in %s (%s) in the background", pkg, algo)
    return Building([sys.executable, "-c", _QUANTIZE_CHILD, json.dumps(args)], merged, pkg, log_file,
                    what="the ONNX quantizer")


def share_tied_embedding(path: Path) -> bool:
    """A tied embedding reads the quantized LM head, as the builder's own int4 package does.

    The builder's fp32 package gathers token embeddings from a Transpose of the LM head's float
    weight; once that head is a MatMulNBits, the float copy stays in the graph for the Gather alone
    (113 MB of SmolLM2-135M's 225). Here the Gather becomes a GatherBlockQuantized over the head's
    quantized rows (one row per token, blocks along the hidden size: the same layout), and the float
    weight goes. Returns whether the graph changed; a model without that pattern is left alone."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path), load_external_data=True)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    transpose = next((n for n in g.node if n.op_type == "Transpose" and n.input[0] in inits
                      and list(helper.get_attribute_value(a) for a in n.attribute if a.name == "perm") == [[1, 0]]),
                     None)
    if transpose is None:
        return False
    float_weight = transpose.input[0]
    head = next((n for n in g.node if n.op_type == "MatMulNBits"
                 and n.input[1].startswith(float_weight + "_Q")), None)
    users = [n for n in g.node if transpose.output[0] in n.input]
    if head is None or len(users) != 1 or users[0].op_type != "Gather" \
            or any(float_weight in n.input for n in g.node if n is not transpose):
        return False
    gather = users[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    if attrs["K"] % attrs["block_size"]:  # padded blocks: a row is not one embedding
        return False
    shape = f"{float_weight}_rows_shape"  # [N, blocks, block bytes] viewed as one row per token
    g.initializer.append(numpy_helper.from_array(
        np.array([attrs["N"], attrs["K"] * attrs["bits"] // 8], dtype=np.int64), shape))
    rows = f"{float_weight}_rows"
    reshape = helper.make_node("Reshape", [head.input[1], shape], [rows], name=gather.name + "/Reshape")
    inputs = [rows, gather.input[1], head.input[2]] + ([head.input[3]] if len(head.input) > 3 and head.input[3] else [])
    node = helper.make_node("GatherBlockQuantized", inputs, list(gather.output), name=gather.name + "BlockQuantized",
                            domain="com.microsoft", bits=attrs["bits"], block_size=attrs["block_size"],
                            gather_axis=0, quantize_axis=1)
    freed = int(np.prod(inits[float_weight].dims)) * 4
    index = list(g.node).index(transpose)
    for n in (gather, transpose):
        g.node.remove(n)
    g.node.insert(index, node)
    g.node.insert(index, reshape)
    g.initializer.remove(inits[float_weight])
    onnx.save(model, str(path))
    log.info("the tied embedding reads the %d-bit LM head: its float copy (%d MB) is gone",
             attrs["bits"], freed // 10**6)
    return True


def _og_ids(pkg: Path, texts: list[str]) -> list[list[int]]:
    import onnxruntime_genai as og

    config = og.Config(str(pkg))
    model = og.Model(config)
    tok = og.Tokenizer(model)
    return [[int(i) for i in tok.encode(t)] for t in texts]


def fit_tokenizer(pkg: Path, merged: Path, texts: list[str]) -> str | None:
    """Make the package's tokenizer encode ``texts`` exactly as the student's HF tokenizer does.
    Returns the tokenizer_class override it applied, or None when none was needed (or none helped:
    parity then reports the difference)."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(merged)
    want = [hf.encode(t, add_special_tokens=True) for t in texts]
    if _og_ids(pkg, texts) == want:
        return None
    cfg_path = pkg / "tokenizer_config.json"
    original = cfg_path.read_text()
    cfg = json.loads(original)
    if "llama" not in str(cfg.get("tokenizer_class", "")).lower():
        return None
    for cls in _SPM_CLASSES:
        cfg_path.write_text(json.dumps({**cfg, "tokenizer_class": cls}, indent=2))
        if _og_ids(pkg, texts) == want:
            log.info("ORT GenAI tokenizer: tokenizer_class %s matches the student's encodings", cls)
            return cls
    cfg_path.write_text(original)
    return None
