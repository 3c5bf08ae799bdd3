"""The quantization loss computes the prompt prefix the eval chats share once (the merged model's
cache repeated along a batch, llama.cpp's kept in its KV cache) and gets the figures of computing
every chat whole: with the tiny in-process student and real llama.cpp."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import write_recipe
from edgedistill import runtimes
from edgedistill.data import write_jsonl
from edgedistill.formats.export import export
from edgedistill.formats.prefix_logits import ALIGN, MIN_ROWS, gguf_logits, hf_logits, whole_logits
from edgedistill.formats.quant_loss import (PER_EXAMPLE, Reference, eval_chats, log_softmax, measure,
                                            shared_prefix)
from edgedistill.formats.quantize import quantize
from edgedistill.recipes import load_recipe
from edgedistill.rundir import Run

POLICY = {"role": "system", "content": "You are the shop's assistant. Returns within 30 days, "
          "refunds in 5 business days, a 2-year warranty, free shipping over 50 dollars. "
          "Answer briefly."}
OTHER = {"role": "system", "content": "Reply with the answer only."}


def record(i: int, system: dict | None) -> dict:
    question = {"role": "user", "content": f"What is {i} plus {i + 3}?"}
    return {"id": f"e{i}", "messages": ([system] if system else []) + [question],
            "response": f"It is {2 * i + 3}.", "answer": str(2 * i + 3)}


def make_run(root: Path, model_dir: Path, eval_records: list[dict]) -> Run:
    exp = {"parity_prompts": 2, "parity_max_new_tokens": 8,
           "quantize": {"onnx": [], "ortgenai": [], "gguf": ["q4_0"], "calibration": "none"}}
    run = Run.create(root / "run", load_recipe(write_recipe(root / "recipe", export=exp)))
    write_jsonl(run.train_data, [record(i, POLICY) for i in range(8)])
    write_jsonl(run.eval_data, eval_records)
    with run.begin("merge") as stage:
        shutil.copytree(model_dir, stage.output(run.merged_dir))
    export(run, formats=["gguf"])
    quantize(run)
    return run


def unshared(run: Run, path: Path) -> dict:
    """The figures as computed before the prefix was shared: every chat whole, one at a time."""
    per = []
    with runtimes.load("hf", run.merged_dir) as hf, runtimes.load("gguf", path) as rt:
        for c in eval_chats(run):
            lp = log_softmax(log_softmax(hf.logits(c.ids)[:-1]).astype(np.float16))
            q = rt.logits(c.ids)[:-1]
            width = min(lp.shape[1], q.shape[1])
            lq = log_softmax(q[:, :width])
            lp = lp[:, :width]
            kl = (np.exp(lp) * (lp - lq)).sum(axis=1)
            agree = lp.argmax(axis=1) == lq.argmax(axis=1)
            a = slice(c.answer_start - 1, None)
            per.append([kl[a].sum(), agree[a].sum(), len(kl[a]), kl.sum(), agree.sum(), len(kl)])
    t = np.sum(per, axis=0)
    return {"kld": t[0] / t[2], "top1_agreement": t[1] / t[2], "kld_whole": t[3] / t[5],
            "top1_agreement_whole": t[4] / t[5], "answer_tokens": t[2], "tokens": t[5],
            PER_EXAMPLE: [row[0] for row in per]}


@pytest.fixture(scope="module")
def prefix_run(tmp_path_factory, tiny_model_dir) -> Run:
    """Eight chats with the policy card as system turn, one with another system turn."""
    records = [record(i, POLICY) for i in range(100, 108)] + [record(108, OTHER)]
    return make_run(tmp_path_factory.mktemp("prefix"), tiny_model_dir, records)


def assert_same_loss(run: Run) -> dict:
    path = run.gguf_dir / "model-q4_0.gguf"
    got = measure(Reference(run), "gguf", path, "none")
    want = unshared(run, path)
    assert got["tokens"] == want["tokens"] and got["answer_tokens"] == want["answer_tokens"]
    assert got["kld"] > 1e-4 and got["kld_whole"] > 1e-4  # a divergence to compare, not noise
    # each chat's answer KL, unrounded (the merged model's float16 log-probabilities from a padded
    # batch round a few values the other way: up to 1.2e-4 apart here); the figures as recorded
    assert got[PER_EXAMPLE]["kl"] == pytest.approx(want[PER_EXAMPLE], rel=5e-4)
    for key in ("kld", "kld_whole"):
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    for key in ("top1_agreement", "top1_agreement_whole"):
        assert got[key] == pytest.approx(want[key], abs=1.5 / want["answer_tokens"]), key
    recorded = run.stage_entry("quantize:gguf-q4_0")["metrics"]["quant_loss"]
    assert recorded["kld"] == got["kld"]  # the stage measured the same way
    return got


def test_shared_prefix_loss_equals_every_chat_computed_whole(prefix_run):
    chats = Reference(prefix_run).load()
    shared = [c.shared for c in chats]
    system_turn = eval_chats(prefix_run)[0].ids[:shared[0]]
    assert shared[:8] == [shared[0]] * 8 and shared[8] == 0  # the outlier: computed whole
    assert shared[0] > MIN_ROWS and shared[0] % ALIGN  # llama.cpp keeps part of it
    assert all(c.ids[:shared[0]] == system_turn for c in chats[:8])
    got = assert_same_loss(prefix_run)
    assert got["examples"] == 9


def test_chats_without_a_common_prefix_are_computed_whole(tmp_path, tiny_model_dir):
    run = make_run(tmp_path, tiny_model_dir, [record(200, None)])  # one chat: nothing is shared
    assert [c.shared for c in Reference(run).load()] == [0]
    assert_same_loss(run)


def test_shared_prefix_is_what_at_least_half_the_chats_start_with():
    assert shared_prefix([]) == [] and shared_prefix([[1, 2, 3]]) == []
    assert shared_prefix([[1, 2], [3, 4]]) == []
    assert shared_prefix([[5, 1, 2, 3, 9], [1, 2, 3, 7], [1, 2, 3, 8, 8], [6, 6]]) == [1, 2, 3]
    assert shared_prefix([[1, 2, 3], [1, 2, 3, 4]]) == [1, 2]  # each keeps a token of its own


def test_every_runtime_path_gives_the_logits_of_the_whole_chat(prefix_run):
    """The rows of the prefix once and of each suffix continuing it are the rows of the whole
    chat: the merged model's (its cache repeated along a padded batch), llama.cpp's (its KV cache
    kept: the same bits) and the fallback the ONNX runtimes take."""
    chats = eval_chats(prefix_run)
    with runtimes.load("hf", prefix_run.merged_dir) as hf:
        p = chats[0].shared
        prefix, suffixes = chats[0].ids[:p], [c.ids[p:] for c in chats[:8]]
        got = dict(hf_logits(hf.model, prefix, suffixes, budget=3 * max(map(len, suffixes))))
        for i, s in enumerate(suffixes):
            np.testing.assert_allclose(np.concatenate([got[-1], got[i]]), hf.logits(prefix + s),
                                       atol=1e-4)
    with runtimes.load("gguf", prefix_run.gguf_dir / "model-q4_0.gguf") as rt:
        for p in (chats[0].shared, MIN_ROWS - 1):  # kept up to a block boundary; too short to keep
            # first a chat too short to keep what the others keep: decoded whole
            prefix = chats[0].ids[:p]
            suffixes = [chats[0].ids[p:p + 5]] + [c.ids[p:] for c in chats[:8]]
            for source in (gguf_logits, whole_logits):
                got = dict(source(rt, prefix, suffixes))
                for i, s in enumerate(suffixes):
                    np.testing.assert_array_equal(np.concatenate([got[-1], got[i]]),
                                                  rt.logits(prefix + s), err_msg=source.__name__)
