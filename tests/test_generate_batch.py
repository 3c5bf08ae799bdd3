"""Runtime.generate_batch: for every runtime kind, the tiny fp32 model's batched greedy replies equal
its one-at-a-time replies (tokens, text, prompt ids, finish reason), on prompts of very different
lengths, in batches smaller than the prompt list, with rows that stop at different steps.

Exact equality holds for every kind here. It need not for a quantized artifact: batched kernels sum
in another order, and where two logits nearly tie the argmax can flip (scripts/bench_eval.py counts
such replies on a real run: a couple in 32 for a q4_k_m GGUF, none for the fp32/f16 rungs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import write_recipe
from edgedistill import runtimes
from edgedistill.recipes import load_recipe
from edgedistill.formats.export import export
from edgedistill.rundir import Run

SYSTEM = {"role": "system", "content": "You are helpful."}
CHATS = [  # 13 to 67 prompt tokens with the tiny tokenizer
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "What is 2 + 2?"}],
    [SYSTEM, {"role": "user", "content": "The capital of France is which city? Answer briefly please, "
                                         "with one word."}],
    [{"role": "user", "content": "Count from one to ten, slowly, and then say what comes after ten."}],
    [SYSTEM, {"role": "user", "content": "The capital of France?"},
     {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy, 7 times 3?"}],
    [{"role": "user", "content": "x"}],
    [{"role": "user", "content": "Name three colours of the rainbow."}],
]
MAX_NEW = 24
# Token 2 of the tiny tokenizer is one llama.cpp counts as end-of-generation; the random tiny model
# emits it early for two of the chats. The other kinds are told it is a stop token too, so every kind
# has rows that stop (at different steps) next to rows that run to MAX_NEW.
EXTRA_STOP = 2


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_dir) -> Run:
    """The tiny model exported to ONNX (optimum) and ORT GenAI (model builder), fp32 only."""
    root = tmp_path_factory.mktemp("batch")
    recipe = load_recipe(write_recipe(root / "recipe", export={
        "formats": ["onnx", "ortgenai"], "quantize": {}, "parity_prompts": 1,
        "parity_max_new_tokens": 4}))
    run = Run.create(root / "run", recipe)
    with run.begin("merge") as stage:
        shutil.copytree(tiny_model_dir, stage.output(run.merged_dir))
    export(run)
    return run


def _genai_copy(src: Path, out: Path, **model: object) -> Path:
    """The ORT GenAI package with its genai_config.json ``model`` entries changed."""
    shutil.copytree(src, out)
    cfg = json.loads((out / "genai_config.json").read_text())
    cfg["model"].update(model)
    (out / "genai_config.json").write_text(json.dumps(cfg))
    return out


def _load(kind: str, exported: Run, tiny_gguf: Path, tmp_path: Path) -> runtimes.Runtime:
    genai = exported.ortgenai_dir / "fp32"
    eos = json.loads((genai / "genai_config.json").read_text())["model"]["eos_token_id"]
    if kind in ("hf", "onnx", "onnx-prefill-in-parts"):
        rt = runtimes.load(kind.partition("-")[0], exported.merged_dir if kind == "hf" else exported.onnx_dir)
        rt.eos.add(EXTRA_STOP)  # the stop set that both generate and generate_batch use
        return rt
    if kind == "gguf":
        return runtimes.load("gguf", tiny_gguf)
    if kind == "ortgenai":
        changes = {"eos_token_id": [eos, EXTRA_STOP]}
    elif kind == "ortgenai-pad-is-eos":
        # SmolLM2's packages: the pad token is <|im_end|>, which also closes every earlier turn of
        # a prompt; ORT GenAI must treat only the trailing run of it as padding
        changes = {"eos_token_id": [eos, EXTRA_STOP], "pad_token_id": eos}
    else:  # a pad token that ends the prompts would hide their last token: one at a time instead
        with runtimes.load("hf", exported.merged_dir) as hf:
            changes = {"pad_token_id": hf.chat_prompt_ids(CHATS[0])[-1]}
    return runtimes.load("ortgenai", _genai_copy(genai, tmp_path / "genai", **changes))


@pytest.mark.parametrize("kind", ["hf", "onnx", "onnx-prefill-in-parts", "ortgenai",
                                  "ortgenai-pad-is-eos", "ortgenai-pad-ends-prompts", "gguf"])
def test_batched_greedy_equals_one_at_a_time(kind, exported, tiny_gguf, tmp_path, monkeypatch):
    if kind == "onnx-prefill-in-parts":  # the prompt pass one row at a time, its pasts joined
        from edgedistill.runtimes import onnx

        monkeypatch.setattr(onnx, "PREFILL_LOGITS_BYTES", 1)
    with _load(kind, exported, tiny_gguf, tmp_path) as rt:
        alone = [rt.generate(chat, MAX_NEW) for chat in CHATS]
        steps: list[int] = []
        batched = rt.generate_batch(CHATS, MAX_NEW, batch_size=3, progress=steps.append)
    assert len({len(g.prompt_ids) for g in alone}) == len(CHATS)  # every prompt a different length
    for a, b in zip(alone, batched):
        assert (b.token_ids, b.text, b.prompt_ids, b.finish_reason) == \
            (a.token_ids, a.text, a.prompt_ids, a.finish_reason), kind
        assert b.seconds > 0
    reasons = [g.finish_reason for g in alone]
    if kind != "ortgenai-pad-ends-prompts":
        assert "stop" in reasons and "length" in reasons, reasons
        assert len({len(g.token_ids) for g in alone if g.finish_reason == "stop"}) > 1
    assert sum(steps) == len(CHATS)
    if kind == "gguf":  # continuous batching: progress per reply
        assert steps == [1] * len(CHATS)
    else:  # padded batches of at most 3, longest prompts first
        assert steps == [3, 3, 1]
        assert batched[4].seconds == batched[2].seconds  # the two longest share the first batch


def test_length_batches_group_similar_lengths():
    assert runtimes.length_batches([5, 50, 7, 40, 6], 2) == [[1, 3], [2, 4], [0]]
    assert runtimes.length_batches([], 4) == []


def test_first_stop_cuts_at_the_first_stop_token():
    assert runtimes.first_stop([4, 5, 9, 5], lambda t: t == 5) == ([4], "stop")
    assert runtimes.first_stop([4, 6], lambda t: t == 5) == ([4, 6], "length")
    assert runtimes.first_stop([5], lambda t: t == 5) == ([], "stop")


def test_the_fallback_decodes_one_prompt_at_a_time(tiny_model_dir):
    with runtimes.load("hf", tiny_model_dir) as rt:
        prompts = [rt.chat_prompt_ids(chat) for chat in CHATS[:3]]
        rows = runtimes.Runtime.generate_ids_batch(rt, prompts, 6)
        assert rows == [rt.greedy_ids(p, 6) for p in prompts]
        assert all(len(ids) == 6 and finish == "length" for ids, finish in rows)
        # batch_size 1 is generate itself, chat by chat (each reply its own seconds)
        steps: list[int] = []
        one = rt.generate_batch(CHATS[:3], 6, batch_size=1, progress=steps.append)
        assert [g.token_ids for g in one] == [ids for ids, _ in rows] and steps == [1, 1, 1]
