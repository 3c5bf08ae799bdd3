"""runtimes: the one loader per artifact kind (real transformers and llama.cpp here; ONNX and
ORT GenAI are exercised through their exports in test_formats_tiny.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgedistill import runtimes
from edgedistill.errors import ArtifactError, ConfigError

MSGS = [{"role": "user", "content": "What is 2 + 2?"}]


def test_imports_without_torch_or_any_runtime():
    code = ("import sys, edgedistill.runtimes; "
            "heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'onnxruntime_genai', "
            "'llama_cpp', 'numpy') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_kind_of_and_bad_paths(tmp_path):
    assert [runtimes.kind_of(f) for f in ("onnx", "ortgenai", "gguf", "hf")] == \
        ["onnx", "ortgenai", "gguf", "hf"]
    assert runtimes.kind_of("llama.cpp") == "gguf"
    with pytest.raises(ConfigError, match="Unknown artifact format"):
        runtimes.kind_of("tflite")
    with pytest.raises(ArtifactError, match="does not exist"):
        runtimes.load("gguf", tmp_path / "missing.gguf")
    with pytest.raises(ArtifactError, match="genai_config.json"):
        runtimes.load("ortgenai", tmp_path)


def test_hf_generate_streams_greedy_tokens(tiny_model_dir):
    with runtimes.load("hf", tiny_model_dir) as rt:
        g = rt.generate(MSGS, 10)
        assert g.prompt_ids == rt.chat_prompt_ids(MSGS)
        assert g.prompt_ids[-1] == rt.tokenizer.encode("\n", add_special_tokens=False)[-1]
        assert g.finish_reason in ("stop", "length") and len(g.token_ids) <= 10
        streamed = list(rt.stream_ids(g.prompt_ids, 10, ignore_eos=True))
        assert len(streamed) == 10 and not any(rt.is_stop(t) for t in streamed)
        if g.finish_reason == "length":
            assert streamed == g.token_ids
        logits = rt.logits(g.prompt_ids)
        assert logits.shape == (len(g.prompt_ids), len(rt.tokenizer))
        assert int(logits[-1].argmax()) == streamed[0]


def _eos_model(src, out):
    """The tiny model made to answer <|im_end|> at once: a large o_proj bias fixes the final
    hidden direction, and the lm_head row of the end-of-turn token points along it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    config = LlamaConfig.from_pretrained(src)
    config.attention_bias = True
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(AutoModelForCausalLM.from_pretrained(src).state_dict(), strict=False)
    tok = AutoTokenizer.from_pretrained(src)
    torch.manual_seed(1)
    u = torch.randn(config.hidden_size)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.bias.copy_(50 * u)
        model.lm_head.weight[tok.eos_token_id] = u * 10
    model.save_pretrained(out)
    for f in src.iterdir():
        if not f.name.startswith(("model", "config")):
            (out / f.name).write_bytes(f.read_bytes())
    return tok.eos_token_id


def test_end_of_turn_stops_generation_in_hf_and_llama_cpp(tiny_model_dir, tmp_path):
    from edgedistill.formats import gguf

    model = tmp_path / "eos"
    eos = _eos_model(tiny_model_dir, model)
    out = tmp_path / "eos.gguf"
    gguf.convert(model, out, "f32", gguf.converter(), tmp_path / "convert.log")
    for kind, path in (("hf", model), ("gguf", out)):
        with runtimes.load(kind, path) as rt:
            g = rt.generate(MSGS, 16)
            assert (g.finish_reason, g.token_ids, g.text) == ("stop", [], ""), kind
            assert rt.is_stop(eos)
            # bench decodes a fixed length past the end-of-turn
            forced = list(rt.stream_ids(g.prompt_ids, 4, ignore_eos=True))
            assert len(forced) == 4 and eos not in forced, kind
