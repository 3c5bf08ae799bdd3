"""Logits of many chats that share a prefix, the prefix computed once (formats.quant_loss).

Each source yields ``(-1, the prefix's logits)`` first when there is a prefix, then ``(i, the
logits of suffixes[i] continuing it)``: the merged model in transformers (:func:`hf_logits`, the
prefix's cache repeated along a batch), llama.cpp (:func:`gguf_logits`, the prefix's sequence
copied into each chat's) and any other runtime (:func:`whole_logits`, each chat whole).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def hf_logits(model: Any, prefix: list[int], suffixes: list[list[int]], budget: int = 1024):
    """The merged model's logits: ``(-1, prefix's)`` first when there is a prefix, then ``(i, the
    logits of suffixes[i] continuing it)``, shortest first. The prefix is run once; its cache is
    repeated along a batch of suffixes (``batch_repeat_interleave``, as train.trainer shares a
    batch's prefix), padded on the right (no real token attends to a later one), up to ``budget``
    tokens a batch."""
    import torch
    from transformers import DynamicCache

    cache = None
    with torch.inference_mode():
        if prefix:
            out = model(input_ids=torch.tensor([prefix]), use_cache=True,
                        past_key_values=DynamicCache(config=model.config))
            cache = out.past_key_values
            yield -1, out.logits[0].float().numpy()
        batch: list[int] = []
        for i in sorted(range(len(suffixes)), key=lambda i: len(suffixes[i])) + [None]:
            if batch and (i is None or (len(batch) + 1) * len(suffixes[i]) > budget):
                yield from _hf_batch(model, cache, len(prefix), batch, [suffixes[j] for j in batch])
                batch = []
            if i is not None:
                batch.append(i)


def _hf_batch(model: Any, cache: Any, p: int, keys: list[int], rows: list[list[int]]):
    import copy

    import torch

    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = (torch.arange(p + width) < p + torch.tensor([[len(r)] for r in rows])).long()
    past = None
    if cache is not None:
        past = copy.deepcopy(cache)
        past.batch_repeat_interleave(len(rows))
    positions = torch.arange(p, p + width).unsqueeze(0).expand(len(rows), -1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                   use_cache=past is not None).logits
    for r, (key, row) in enumerate(zip(keys, rows)):
        yield key, logits[r, :len(row)].float().numpy()


# llama.cpp's logits depend on how tokens are split into batches: its CPU kernels take a batch's
# tokens in blocks of 4, and its last few or a batch of 32 or fewer (64: as in one) on other paths
# that round differently. The support profile's prefix decoded alone moved every answer's logits by
# ~0.1 (KL 1.3% off), and a chat keeping less of a longer decoded prefix by ~1: hence one cut.
ALIGN, MIN_ROWS = 32, 64


def gguf_logits(rt: Any, prefix: list[int], suffixes: list[list[int]]):
    """llama.cpp's logits, as :func:`hf_logits` yields them (in the suffixes' order) and as
    ``rt.logits`` gives each chat whole: the prefix's first ``top`` tokens decoded once into a
    sequence of a ``BatchedDecoder``'s context and copied into each chat's (``llama_memory_seq_cp``),
    the rest decoded after them, batches split where ``rt.logits`` splits them; a chat too short
    to keep ``top`` tokens is decoded whole (``top``: what costs the fewest tokens in all)."""
    import numpy as np

    from edgedistill.runtimes.llama_batch import BatchedDecoder

    dec = BatchedDecoder(rt, slots=1, n_batch=rt.llm.n_batch)  # sequence 0: a chat, 1: the prefix
    lc, p, nb = dec.lc, len(prefix), dec.n_batch

    def kept(n: int) -> int:  # how much of the prefix a chat of n tokens keeps
        c = min(p, nb - MIN_ROWS, n - MIN_ROWS) // ALIGN * ALIGN
        return c if c >= MIN_ROWS else 0

    def decode(ids: list[int], start: int, seq: int) -> "np.ndarray":
        rows, cuts = [], sorted({0, len(ids), *range(-start % nb, len(ids), nb)})
        for a, b in zip(cuts, cuts[1:]):
            for n, tok in enumerate(ids[a:b]):
                dec.add_token(n, tok, start + a + n, seq, True)
            dec.decode_batch(b - a)
            out = np.ctypeslib.as_array(lc.llama_get_logits(dec.ctx), shape=(b - a, rt.n_vocab))
            rows.append(out.copy())
        return np.concatenate(rows) if rows else np.zeros((0, rt.n_vocab), np.float32)

    lens = [p + len(s) for s in suffixes]
    top = min([0, *range(MIN_ROWS, kept(max(lens, default=0)) + 1, ALIGN)],
              key=lambda t: t + sum(n - t if t and kept(n) >= t else n for n in lens))
    dec.open_context(top + max(lens, default=0) + 8)
    try:
        head = decode(prefix[:top], 0, 1)
        for i, (n, suffix) in enumerate(zip(lens, suffixes)):
            c = top if top and kept(n) >= top else 0
            if c:
                lc.llama_memory_seq_cp(dec.mem, 1, 0, -1, -1)
            rows = decode(prefix[c:] + suffix, c, 0) if c else rt.logits(prefix + suffix)
            lc.llama_memory_seq_rm(dec.mem, 0, -1, -1)
            if i == 0 and p:
                yield -1, np.concatenate([head, rows[top - c:p - c]])
            yield i, rows[p - c:]
    finally:
        dec.close()


def whole_logits(rt: Any, prefix: list[int], suffixes: list[list[int]]):
    """Any other runtime's logits, as :func:`hf_logits` yields them (in order; none of them keeps
    a cache between calls): each chat whole, its rows after the prefix (the first chat's give the
    prefix's)."""
    for i, suffix in enumerate(suffixes):
        q = rt.logits(prefix + suffix)
        if i == 0 and prefix and q is not None:
            yield -1, q[:len(prefix)]
        yield i, None if q is None else q[len(prefix):]
