"""An int4 ORT GenAI package of a model with tied embeddings keeps no float copy of the LM head:
its embedding reads the quantized head rows (GatherBlockQuantized), as the builder's own int4 does."""

from __future__ import annotations

import shutil

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tied_packages(tmp_path_factory):
    """A tied tiny Llama → fp32 package → GPTQ int4 without the rewrite (``plain``) and with it."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from edgedistill.formats import ortgenai
    from tiny import TINY_TOKENIZER

    root = tmp_path_factory.mktemp("tied")
    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    merged = root / "merged"
    model.save_pretrained(merged)
    tok.save_pretrained(merged)
    fp32 = root / "fp32"
    ortgenai.build(merged, fp32, "fp32", root / "cache", root / "build.log")
    calibration = [list(range(5, 60)), list(range(60, 120))]
    plain, shared = root / "plain", root / "shared"
    shutil.copytree(fp32, plain)
    real = ortgenai.share_tied_embedding
    ortgenai.share_tied_embedding = lambda path: False
    try:
        ortgenai.quantize_package(plain, merged, 32, calibration)
    finally:
        ortgenai.share_tied_embedding = real
    shutil.copytree(plain, shared)
    assert ortgenai.share_tied_embedding(shared / "model.onnx")
    return plain, shared


def test_the_embedding_reads_the_quantized_head_and_the_float_copy_is_gone(tied_packages):
    import onnx

    from edgedistill.formats.ortgenai import share_tied_embedding

    plain, shared = tied_packages
    before = onnx.load(str(plain / "model.onnx"))
    after = onnx.load(str(shared / "model.onnx"))
    assert "Transpose" in {n.op_type for n in before.graph.node}
    ops = {n.op_type for n in after.graph.node}
    assert "GatherBlockQuantized" in ops and "Transpose" not in ops
    floats = [t for t in after.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2
              and 64 in t.dims and max(t.dims) > 64]  # no [hidden, vocab] float matrix left
    assert floats == []
    assert (shared / "model.onnx").stat().st_size < (plain / "model.onnx").stat().st_size
    assert not share_tied_embedding(shared / "model.onnx")  # nothing left to rewrite: a no-op


def test_the_shared_package_computes_what_the_plain_one_does(tied_packages):
    """Only the embedding's rounding (8 bits, the head's own) separates the two."""
    from edgedistill import runtimes

    plain, shared = tied_packages
    ids = list(range(3, 40))
    with runtimes.load("ortgenai", plain) as a, runtimes.load("ortgenai", shared) as b:
        la, lb = a.logits(ids), b.logits(ids)
        assert la.shape == lb.shape
        assert np.abs(la - lb).max() <= 0.05 * np.abs(la).max()
        assert (la.argmax(-1) == lb.argmax(-1)).mean() >= 0.9
        assert b.generate([{"role": "user", "content": "What is 2 plus 3?"}], 4).token_ids


def _head_bits(model) -> int:
    """Bits of the MatMulNBits that writes the graph's logits output."""
    from onnx import helper

    logits = next(o.name for o in model.graph.output if o.name == "logits")
    head = next(n for n in model.graph.node if logits in n.output)
    assert head.op_type == "MatMulNBits", head.op_type
    return next(helper.get_attribute_value(a) for a in head.attribute if a.name == "bits")


@pytest.mark.parametrize("algo", ["gptq", "k_quant"])
def test_int4_lm_head_makes_the_head_and_the_tied_embedding_4_bit(tied_packages, tmp_path, algo):
    """export.quantize.int4_lm_head: int4 on both int4 paths (our GPTQ over the fp32 package, the
    builder's k-quant): the head is 4-bit, a tied embedding reads those rows, the package is smaller
    than the int8-head one and still generates in ORT GenAI."""
    import onnx

    from edgedistill import runtimes
    from edgedistill.formats import ortgenai

    plain, shared = tied_packages
    merged, fp32 = plain.parent / "merged", plain.parent / "fp32"
    out = tmp_path / "int4-head"
    if algo == "gptq":
        shutil.copytree(fp32, out)
        ortgenai.quantize_package(out, merged, 32, [list(range(5, 60)), list(range(60, 120))], "int4")
        int8_head = shared
    else:
        ortgenai.build(merged, out, "int4", tmp_path / "cache", tmp_path / "build.log", 32, algo, "int4")
        int8_head = tmp_path / "int8-head"
        ortgenai.build(merged, int8_head, "int4", tmp_path / "cache", tmp_path / "build8.log", 32, algo)
    model = onnx.load(str(out / "model.onnx"))
    assert _head_bits(model) == 4 and _head_bits(onnx.load(str(int8_head / "model.onnx"))) == 8
    gathers = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    assert gathers and all(a.i == 4 for n in gathers for a in n.attribute if a.name == "bits")
    assert (out / "model.onnx").stat().st_size < (int8_head / "model.onnx").stat().st_size
    with runtimes.load("ortgenai", out) as rt:
        assert rt.generate([{"role": "user", "content": "What is 2 plus 5?"}], 4).token_ids
