"""Logit distillation from the teacher's top-k next-token logprobs.

Accepted shape of a record's ``"logprobs"`` (written by `edgedistill generate` when
``teacher.logprobs: K``): a list with one entry per generated token of the response, each either
- OpenAI style: ``{"token": str, "logprob": float, "bytes": [int]?, "token_id": int?,
  "top_logprobs": [{"token": str, "logprob": float, "bytes": [int]?, "token_id": int?}, ...]}``
  (what OpenAI, vLLM and llama.cpp servers return in ``choices[0].logprobs.content``), or
- a plain mapping ``{token string: logprob}`` of the top-k alternatives.
A candidate is matched to a student token by ``token_id`` when given, else by its bytes
(``bytes`` or the UTF-8 of ``token``). That only means something when teacher and student share a
vocabulary; :func:`check_vocab` refuses otherwise, naming both sizes.

The loss (:func:`topk_kl`) is KL(teacher || student) over the teacher's top-k ids, both
distributions renormalised over those k ids at temperature T: zero when they agree there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edgedistill.errors import ConfigError

log = logging.getLogger(__name__)


def token_bytes_table(tok) -> dict[bytes, int]:
    """bytes → id for every token of a byte-level BPE or SentencePiece vocabulary."""
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    spec = json.loads(tok.backend_tokenizer.to_str())
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) or \
        "ByteLevel" in json.dumps(spec.get("decoder"))
    unbyte = {c: b for b, c in bytes_to_unicode().items()}
    special = {t.content for t in tok.added_tokens_decoder.values()}
    table: dict[bytes, int] = {}
    # byte-fallback pieces (<0x41>) last, so a plain piece wins when both spell the same bytes
    pieces = sorted(tok.get_vocab().items(), key=lambda kv: (kv[0].startswith("<0x"), kv[1]))
    for piece, idx in pieces:
        if piece in special:
            raw = piece.encode()
        elif byte_level:
            try:
                raw = bytes(unbyte[c] for c in piece)
            except KeyError:
                raw = piece.encode()
        elif piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            raw = bytes([int(piece[3:5], 16)])
        else:
            raw = piece.replace("\u2581", " ").encode()
        table.setdefault(raw, idx)
    return table


def _candidate_id(c: dict[str, Any], table: dict[bytes, int]) -> int | None:
    if isinstance(c.get("token_id"), int):
        return c["token_id"]
    raw = bytes(c["bytes"]) if isinstance(c.get("bytes"), list) else str(c.get("token", "")).encode()
    return table.get(raw)


def teacher_topk(entries: list[Any], table: dict[bytes, int]) -> tuple[list[list[int]], list[list[float]], list[int | None], int]:
    """(top-k ids, top-k logprobs, chosen id per token, unmapped candidates) from ``entries``."""
    ids, lps, chosen, unmapped = [], [], [], 0
    for e in entries:
        if isinstance(e, dict) and "top_logprobs" in e:
            cands = [c for c in e["top_logprobs"] if isinstance(c, dict)]
            chosen.append(_candidate_id(e, table))
        elif isinstance(e, dict):
            cands = [{"token": t, "logprob": v} for t, v in e.items()]
            chosen.append(None)
        else:
            raise ValueError(f"a logprobs entry must be an object, got {type(e).__name__}")
        row_ids, row_lps = [], []
        for c in cands:
            i = _candidate_id(c, table)
            if i is None:
                unmapped += 1
            elif i not in row_ids and c.get("logprob") is not None:
                row_ids.append(i)
                row_lps.append(max(float(c["logprob"]), -1e4))
        ids.append(row_ids)
        lps.append(row_lps)
    return ids, lps, chosen, unmapped


def teacher_vocab_size(recipe, records: list[dict[str, Any]]) -> int | None:
    """The teacher's vocabulary size when something says it: the records, or a local teacher."""
    for rec in records[:1]:
        for key in ("teacher_vocab_size", "vocab_size"):
            if isinstance(rec.get(key), int):
                return rec[key]
    from edgedistill import models

    ref = recipe.teacher.model
    path: Path | None = None
    if models.is_packaged(ref):
        cached = models.cached_path(models.lookup(ref))
        path = cached if cached.exists() else None  # never download a teacher just to count
    elif Path(ref).exists():
        path = Path(ref)
    if path is None:
        return None
    if path.is_file() and path.suffix == ".gguf":
        from gguf import GGUFReader

        field = GGUFReader(str(path)).fields.get("tokenizer.ggml.tokens")
        return len(field.data) if field is not None else None
    if (path / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        return len(AutoTokenizer.from_pretrained(path))
    return None


def check_vocab(student_size: int, teacher_size: int | None, mapped: int, unmapped: int,
                misaligned: int, examples: int, allow_mismatch: bool) -> bool:
    """True when KD can run; False (with a warning) when the recipe allows falling back to
    cross-entropy; otherwise a ConfigError naming both vocabulary sizes."""
    differ = (teacher_size is not None and teacher_size != student_size) or \
        unmapped > 0.01 * max(mapped + unmapped, 1) or misaligned > 0
    if not differ:
        return True
    shown = f"{teacher_size:,}" if teacher_size is not None else "an unknown number of"
    msg = (f"train.kd needs the teacher and the student to share a vocabulary, but the teacher's has "
           f"{shown} tokens and the student's has {student_size:,} "
           f"({unmapped:,} of {mapped + unmapped:,} teacher candidates are not student tokens; "
           f"{misaligned} of {examples} responses tokenize differently).")
    if allow_mismatch:
        log.warning("%s Falling back to cross-entropy only (train.kd.allow_vocab_mismatch).", msg)
        return False
    raise ConfigError(msg, hint="Use a teacher from the student's model family, or train without KD "
                                "(`--set train.kd=null`), or allow the fallback to plain cross-entropy "
                                "(`--set train.kd.allow_vocab_mismatch=true`).")


def topk_kl(logits, kd_ids, kd_logprobs, temperature: float = 1.0):
    """(sum of KL(teacher || student) over positions with teacher signal, number of positions).

    ``logits`` [..., V] predict the tokens whose teacher top-k is in ``kd_ids`` / ``kd_logprobs``
    [..., k] (already aligned: shift before calling); id -1 marks no signal."""
    import torch

    valid = kd_ids >= 0
    rows = valid.any(-1)
    if not bool(rows.any()):
        return logits.sum() * 0.0, 0
    logits, ids, lps, valid = logits[rows], kd_ids[rows], kd_logprobs[rows], valid[rows]
    student = torch.gather(logits.float(), -1, ids.clamp(min=0)) / temperature
    log_q = torch.log_softmax(student.masked_fill(~valid, float("-inf")), -1)
    log_p = torch.log_softmax((lps / temperature).masked_fill(~valid, float("-inf")), -1)
    kl = (log_p.exp() * (log_p - log_q)).masked_fill(~valid, 0.0).sum(-1)
    return kl.sum(), int(rows.sum())
