"""HFRuntime.generate_ids_batch computes a long prefix that every prompt shares (a policy card in
the system turn) once for the batch: the same greedy tokens as every row computing its whole
prompt, on a tiny Llama and on a tiny Gemma 3 (sliding-window layers)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from families import build_family_model
from edgedistill.runtimes.hf import MIN_SHARED_PREFIX, HFRuntime

POLICY = ("You are the support assistant of a small shop. Follow this policy: orders ship within "
          "two business days, returns within thirty days in the original packaging, refunds to the "
          "original payment method, a free replacement for damaged items after a photo, two years "
          "of warranty, free shipping from fifty dollars, never ask for or reveal a password, and "
          "politely decline anything else. Answer in at most three sentences.")
QUESTIONS = ["Where is my order?", "Can I return the headphones I bought last month, unopened?",
             "My password?", "The screen arrived cracked, what now?"]
NEW = 12


def _chats(rt: HFRuntime, system: str) -> list[list[int]]:
    return [rt.chat_prompt_ids([{"role": "system", "content": system}, {"role": "user", "content": q}])
            for q in QUESTIONS]


def _both(rt: HFRuntime, prompts: list[list[int]]) -> tuple[list, list]:
    """(shared, unshared) generations of the batch."""
    shared = rt.generate_ids_batch(prompts, NEW)
    rt.share_prefix = False
    try:
        return shared, rt.generate_ids_batch(prompts, NEW)
    finally:
        rt.share_prefix = True


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory) -> Path:
    """A tiny Gemma 3: every layer slides, over a 64-token window."""
    return build_family_model("Gemma 3", tmp_path_factory.mktemp("gemma3") / "model")


def test_a_long_system_prompt_is_computed_once_with_the_same_tokens(tiny_model_dir):
    rt = HFRuntime(tiny_model_dir)
    prompts = _chats(rt, POLICY)
    assert len({len(p) for p in prompts}) > 1  # the suffixes are padded
    shared, plain = _both(rt, prompts)
    assert rt.prefix_stats["batches"] == 1
    assert rt.prefix_stats["tokens_not_recomputed"] >= MIN_SHARED_PREFIX * (len(prompts) - 1)
    assert shared == plain
    assert any(ids for ids, _ in shared)


def test_a_short_common_prefix_takes_the_plain_path(tiny_model_dir):
    rt = HFRuntime(tiny_model_dir)
    prompts = _chats(rt, "Reply with the answer only.")  # the demo's system prompt
    shared, plain = _both(rt, prompts)
    assert rt.prefix_stats["batches"] == 0
    assert shared == plain


def test_a_single_prompt_takes_the_plain_path(tiny_model_dir):
    rt = HFRuntime(tiny_model_dir)
    prompt = _chats(rt, POLICY)[1]
    [(ids, finish)] = rt.generate_ids_batch([prompt], NEW)
    assert rt.prefix_stats["batches"] == 0
    assert (ids, finish) == rt.greedy_ids(prompt, NEW)


def test_a_model_that_cannot_continue_from_a_cache_falls_back(tiny_model_dir, monkeypatch, caplog):
    # no model here refuses; a cache without batch_repeat_interleave (what remote code can bring)
    # is stood in for by making the real one raise
    from transformers import DynamicCache

    def refuse(self, repeats):
        raise NotImplementedError("no batch_repeat_interleave")

    rt = HFRuntime(tiny_model_dir)
    prompts = _chats(rt, POLICY)
    rt.share_prefix = False
    plain = rt.generate_ids_batch(prompts, NEW)
    rt.share_prefix = True
    monkeypatch.setattr(DynamicCache, "batch_repeat_interleave", refuse)
    with caplog.at_level(logging.WARNING, logger="edgedistill.runtimes.hf"):
        assert rt.generate_ids_batch(prompts, NEW) == plain
    assert rt.share_prefix is False and rt.prefix_stats["batches"] == 0
    assert "cannot continue a batch from a shared prefix" in caplog.text


def _rows(prefix: int, tails: list[int], vocab: int) -> list[list[int]]:
    """Raw ids: a shared prefix of ``prefix`` tokens, then tails of the given lengths."""
    head = [(7 * i) % (vocab - 10) + 5 for i in range(prefix)]
    return [head + [(11 * r + 3 * j) % (vocab - 10) + 5 for j in range(n)] for r, n in enumerate(tails)]


def test_gemma3_equal_suffixes_share_past_the_sliding_window(gemma3):
    rt = HFRuntime(gemma3)
    prompts = _rows(100, [6, 6, 6], rt.model.config.vocab_size)  # prefix longer than the window
    shared, plain = _both(rt, prompts)
    assert rt.prefix_stats["batches"] == 1
    assert shared == plain


def test_gemma3_padded_suffixes_past_the_window_take_the_plain_path(gemma3):
    rt = HFRuntime(gemma3)
    prompts = _rows(100, [3, 6, 9], rt.model.config.vocab_size)
    shared, plain = _both(rt, prompts)
    assert rt.prefix_stats["batches"] == 0  # padding after the prefix would eat into the window
    assert shared == plain


def test_gemma3_padded_suffixes_within_the_window_share(gemma3, tmp_path):
    import shutil

    model = shutil.copytree(gemma3, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "sliding_window": 256}))
    rt = HFRuntime(model)
    prompts = _rows(100, [3, 6, 9], rt.model.config.vocab_size)
    shared, plain = _both(rt, prompts)
    assert rt.prefix_stats["batches"] == 1
    assert shared == plain
