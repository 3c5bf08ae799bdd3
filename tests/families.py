"""Tiny random students of each family the support table covers, built in-process from their
transformers config classes (hidden 64, 2 layers), each with a tokenizer of its own kind: the
committed tiny SentencePiece-BPE tokenizer (tests/assets/tiny-tokenizer, ChatML) for most, and a
Gemma-style SentencePiece model trained here with the ``sentencepiece`` trainer (byte fallback,
split digits, <start_of_turn>/<end_of_turn>) for the Gemma families."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tiny import TINY_TOKENIZER, save_tiny

HIDDEN, LAYERS, HEADS, KV_HEADS = 64, 2, 4, 2

# name in the support table → (transformers config class, extra config, tokenizer kind)
FAMILIES: dict[str, tuple[str, dict[str, Any], str]] = {
    "Llama": ("LlamaConfig", {}, "chatml"),
    "Qwen2": ("Qwen2Config", {}, "chatml"),
    "Qwen3": ("Qwen3Config", {"head_dim": 16}, "chatml"),
    "Phi-3": ("Phi3Config", {"max_position_embeddings": 4096, "original_max_position_embeddings": 4096},
              "chatml"),
    "Phi-3 (LongRoPE)": ("Phi3Config", {"max_position_embeddings": 8192,
                                        "original_max_position_embeddings": 4096,
                                        "rope_scaling": {"type": "longrope",
                                                         "long_factor": [1.0 + i / 8 for i in range(8)],
                                                         "short_factor": [1.0] * 8}}, "chatml"),
    "Mistral": ("MistralConfig", {"head_dim": 16}, "chatml"),
    "Granite": ("GraniteConfig", {}, "chatml"),
    "Gemma 2": ("Gemma2Config", {"head_dim": 16, "query_pre_attn_scalar": 16}, "gemma"),
    "Gemma 3": ("Gemma3TextConfig", {"head_dim": 16, "query_pre_attn_scalar": 16,
                                     "sliding_window": 64}, "gemma"),
}

CORPUS_WORDS = ("the capital of france is paris and the answer is yes because the sum equals "
                "what is plus minus times river mountain city country number letter word short "
                "sentence café naïve résumé über straße façade déjà vu").split()


def sentencepiece_tokenizer(out: Path) -> Path:
    """A Gemma-style SentencePiece tokenizer trained here (BPE, byte fallback, digits split,
    no dummy prefix, whitespace kept), as GemmaTokenizerFast with the gemma chat template."""
    import random

    import sentencepiece as spm
    from transformers import GemmaTokenizerFast

    from edgedistill.train.templates import TEMPLATES

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    lines = []
    for i in range(2000):
        words = [rng.choice(CORPUS_WORDS) for _ in range(rng.randint(3, 14))]
        lines.append(" ".join(words) + f" {rng.randint(0, 999)} + {rng.randint(0, 99)} = ?")
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    prefix = out / "spm"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=400, model_type="bpe",
        byte_fallback=True, split_digits=True, add_dummy_prefix=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], hard_vocab_limit=False,
        minloglevel=2)
    corpus.unlink()
    tok = GemmaTokenizerFast(vocab_file=str(prefix) + ".model", add_bos_token=True, add_eos_token=False,
                             eos_token="<eos>", pad_token="<pad>", bos_token="<bos>", unk_token="<unk>")
    tok.chat_template = TEMPLATES["gemma"]
    folder = out / "tokenizer"
    tok.save_pretrained(folder)
    for f in out.glob("spm.*"):
        f.unlink()
    return folder


def build_family_model(name: str, out: Path, *, seed: int = 0, spm_dir: Path | None = None) -> Path:
    """The tiny ``name`` student saved as an HF directory at ``out``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cls_name, extra, tok_kind = FAMILIES[name]
    tok_dir = TINY_TOKENIZER if tok_kind == "chatml" else spm_dir or sentencepiece_tokenizer(out.parent / "spm")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg_cls = getattr(transformers, cls_name)
    kwargs = dict(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=HIDDEN * 2,
                  num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                  max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    kwargs.update(extra)
    if tok_kind == "gemma":
        kwargs["tie_word_embeddings"] = True  # as Gemma ships
    config = cfg_cls(**kwargs)
    torch.manual_seed(seed)
    return save_tiny(AutoModelForCausalLM.from_config(config).eval(), tok, out)


def model_type(folder: Path) -> str:
    return json.loads((Path(folder) / "config.json").read_text())["model_type"]
