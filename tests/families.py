"""Tiny random students of each family the support table covers, built in-process from their
transformers config classes (hidden 64, 2 layers), each with a tokenizer of the kind its real
models ship:

- ``bpe``: byte-level BPE (Llama 3, SmolLM2, Qwen2/3, Granite), built here with the
  ``tokenizers`` library from the pieces in tests/assets/tiny-bpe.json (a subset of SmolLM2's,
  so that llama.cpp's converter recognizes its pre-tokenizer: scripts/make_tiny_bpe_tokenizer.py
  says why), ChatML;
- ``chatml``: the committed tiny SentencePiece BPE (tests/assets/tiny-tokenizer, byte fallback),
  as Mistral's and Phi-3's Llama-style SentencePiece tokenizers, ChatML;
- ``gemma``: a Gemma-style SentencePiece model trained here with the ``sentencepiece`` trainer
  (byte fallback, split digits, <start_of_turn>/<end_of_turn>)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tiny import ASSETS, TINY_TOKENIZER, save_tiny

HIDDEN, LAYERS, HEADS, KV_HEADS = 64, 2, 4, 2

# name in the support table → (transformers config class, extra config, tokenizer kind)
FAMILIES: dict[str, tuple[str, dict[str, Any], str]] = {
    "Llama": ("LlamaConfig", {}, "bpe"),
    "Qwen2": ("Qwen2Config", {}, "bpe"),
    "Qwen3": ("Qwen3Config", {"head_dim": 16}, "bpe"),
    "Phi-3": ("Phi3Config", {"max_position_embeddings": 4096, "original_max_position_embeddings": 4096},
              "chatml"),
    "Phi-3 (LongRoPE)": ("Phi3Config", {"max_position_embeddings": 8192,
                                        "original_max_position_embeddings": 4096,
                                        "rope_scaling": {"type": "longrope",
                                                         "long_factor": [1.0 + i / 8 for i in range(8)],
                                                         "short_factor": [1.0] * 8}}, "chatml"),
    "Mistral": ("MistralConfig", {"head_dim": 16}, "chatml"),
    "Granite": ("GraniteConfig", {}, "bpe"),
    "Gemma 2": ("Gemma2Config", {"head_dim": 16, "query_pre_attn_scalar": 16}, "gemma"),
    "Gemma 3": ("Gemma3TextConfig", {"head_dim": 16, "query_pre_attn_scalar": 16,
                                     "sliding_window": 64}, "gemma"),
}

CORPUS_WORDS = ("the capital of france is paris and the answer is yes because the sum equals "
                "what is plus minus times river mountain city country number letter word short "
                "sentence café naïve résumé über straße façade déjà vu").split()


BYTE_LEVEL = ASSETS / "tiny-bpe.json"
BYTE_LEVEL_SIZE = 49152  # SmolLM2's vocabulary: the pieces keep their ids
TOKENIZER_KINDS = {"bpe": "byte-level BPE (SmolLM2's pre-tokenizer), ChatML",
                   "chatml": "SentencePiece BPE, byte fallback (tests/assets/tiny-tokenizer), ChatML",
                   "gemma": "SentencePiece BPE, byte fallback, gemma template"}


def byte_level_tokenizer(out: Path) -> Path:
    """The tiny byte-level BPE tokenizer (GPT2TokenizerFast, ChatML) saved at ``out``: the pieces
    and merges of tests/assets/tiny-bpe.json under their own ids, SmolLM2's pre-tokenizer (single
    digits, then GPT-2's regex split and byte mapping) and ByteLevel decoder. The ids the subset
    leaves free hold placeholder pieces "[ID]" that no merge makes (never produced by encoding), so
    that every id a random model generates decodes the same in every runtime."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GPT2TokenizerFast

    from edgedistill.train.templates import TEMPLATES

    pieces = json.loads(BYTE_LEVEL.read_text())
    vocab = {**pieces["vocab"], **pieces["specials"]}
    taken = set(vocab.values())
    free = {f"[{i}]": i for i in range(pieces["vocab_size"]) if i not in taken}
    assert not free.keys() & vocab.keys()
    bpe = models.BPE(vocab={**vocab, **free}, merges=[tuple(m) for m in pieces["merges"]],
                     fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in pieces["specials"]])
    fast = GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                             unk_token="<|endoftext|>", pad_token="<|endoftext|>",
                             add_prefix_space=False, add_bos_token=False)
    fast.chat_template = TEMPLATES["chatml"]
    fast.save_pretrained(out)
    return out


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


def build_family_model(name: str, out: Path, *, seed: int = 0, spm_dir: Path | None = None,
                       bpe_dir: Path | None = None) -> Path:
    """The tiny ``name`` student saved as an HF directory at ``out`` (``spm_dir``, ``bpe_dir``:
    the Gemma and byte-level tokenizers when already built)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cls_name, extra, tok_kind = FAMILIES[name]
    if tok_kind == "bpe":
        tok_dir = bpe_dir or byte_level_tokenizer(out.parent / "bpe")
    else:
        tok_dir = TINY_TOKENIZER if tok_kind == "chatml" else spm_dir or sentencepiece_tokenizer(out.parent / "spm")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg_cls = getattr(transformers, cls_name)
    kwargs = dict(vocab_size=max(len(tok), max(tok.get_vocab().values()) + 1), hidden_size=HIDDEN, intermediate_size=HIDDEN * 2,
                  num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                  max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    kwargs.update(extra)
    if tok_kind in ("gemma", "bpe"):  # as Gemma ships, and the small byte-level BPE models
        kwargs["tie_word_embeddings"] = True  # (SmolLM2, Qwen2.5-0.5B, Llama 3.2 1B, Granite 3)
    config = cfg_cls(**kwargs)
    torch.manual_seed(seed)
    return save_tiny(AutoModelForCausalLM.from_config(config).eval(), tok, out)


def model_type(folder: Path) -> str:
    return json.loads((Path(folder) / "config.json").read_text())["model_type"]
