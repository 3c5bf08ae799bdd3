"""`edgedistill train` on the tiny Llama: adapter moves, base does not; completion-only labels;
packing without cross-example attention; KD; resume after SIGKILL; 2-process accelerate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgedistill.errors import ConfigError
from edgedistill.rundir import digest
from trainkit import make_run, records

# one thread per process: on a shared 2-core machine OpenMP spinning makes tiny steps erratic
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(Path(__file__).parents[1])}


def _adapter_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


def test_train_moves_the_adapter_not_the_base(tmp_path, tiny_model_dir):
    from edgedistill.train.finetune import train

    before = digest(tiny_model_dir)
    run = make_run(tmp_path, tiny_model_dir, max_steps=6)
    train(run)
    assert digest(tiny_model_dir) == before  # base weights untouched on disk
    weights = _adapter_tensors(run.adapter_dir)
    assert weights and all("lora_" in k for k in weights)  # only adapter weights saved
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert len(lora_b) == 2 * 4  # 2 layers x q,k,v,o
    assert all(float(t.abs().max()) > 0 for t in lora_b)  # LoRA B starts at zero: it moved

    entry = run.stage_entry("train")
    m = entry["metrics"]
    assert entry["status"] == "done" and m["steps"] == 6 and m["seed"] == 0
    # the dev slice comes from train.jsonl (never eval.jsonl): 2 of its 24 records
    assert m["train_examples"] == 22 and m["dev_examples"] == 2 and m["dev_history"]
    assert m["method"] == "lora" and m["precision"] in ("fp32", "bf16")
    assert m["tokens_per_s"] > 0 and m["trained_tokens"] < m["train_tokens"]
    rows = [json.loads(line) for line in (run.logs_dir / "train.jsonl").read_text().splitlines()]
    step_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in step_rows] == list(range(1, 7))
    assert all({"step", "loss", "lr", "tokens_per_s"} <= set(r) for r in step_rows)
    assert any("dev_loss" in r and "dev_score" in r for r in rows)
    assert "student/adapter" in entry["outputs"] and "logs/train.jsonl" in entry["outputs"]
    assert not run.checkpoints_dir.exists()  # cleared once the adapter is in place

    stamp = run.stage_entry("train")["finished_at"]
    train(run)  # up to date: nothing redone
    assert run.stage_entry("train")["finished_at"] == stamp


def test_labels_cover_only_the_assistant_turn(tiny_model_dir):
    from edgedistill.train.collate import IGNORE, encode_example
    from edgedistill.train.student import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    rec = {"id": "x", "messages": [{"role": "system", "content": "Be short."},
                                   {"role": "user", "content": "What is 2 + 2?"}],
           "response": "The answer is 4."}
    enc = encode_example(tok, rec, 256)
    trained = [t for t in enc["labels"] if t != IGNORE]
    assert tok.decode(trained) == "The answer is 4.<|im_end|>\n"
    assert enc["labels"][: enc["response_start"]] == [IGNORE] * enc["response_start"]
    assert encode_example(tok, rec, enc["response_start"]) is None  # prompt alone fills max_length


def test_packing_does_not_leak_attention_across_examples(tiny_model_dir):
    """Logits of examples packed into one row equal their logits when run alone."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgedistill.train.collate import Collator, encode_example
    from edgedistill.train.student import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    examples = [encode_example(tok, r, 256) for r in records(3)]
    packed = Collator(pad_id=tok.pad_token_id, packing=True)(examples)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    with torch.no_grad():
        # no KV cache, as in training (use_cache=False): only then are packed rows detected
        together = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                         use_cache=False).logits[0]
        start = 0
        for e in examples:
            alone = model(input_ids=torch.tensor([e["input_ids"]])).logits[0]
            part = together[start:start + len(e["input_ids"])]
            assert torch.allclose(part, alone, atol=1e-5), (part - alone).abs().max()
            start += len(e["input_ids"])
        # the control: the same row without position_ids restarts attends across examples
        leaky = model(input_ids=packed["input_ids"], use_cache=False).logits[0]
    assert not torch.allclose(leaky[-5:], together[-5:], atol=1e-3)


def test_kd_loss_is_zero_when_distributions_are_equal():
    import torch

    from edgedistill.train.kd import topk_kl

    torch.manual_seed(0)
    logits = torch.randn(2, 7, 50)
    top = torch.log_softmax(logits, -1).topk(5, dim=-1)
    ids = top.indices.clone()
    ids[0, 3] = -1  # a position without teacher signal
    for t in (1.0, 2.0):
        kl, n = topk_kl(logits, ids, top.values, temperature=t)
        assert n == 2 * 7 - 1 and abs(float(kl)) < 1e-5
    kl, _ = topk_kl(torch.randn(2, 7, 50), ids, top.values)
    assert float(kl) > 0.01


def _with_teacher_logprobs(tok, recs: list[dict], k: int = 3) -> list[dict]:
    """Teacher records as an OpenAI-compatible server sharing the student's vocabulary writes them:
    per generated token, the chosen token and its top-k alternatives, as text and bytes."""
    import torch

    from edgedistill.train.collate import encode_example
    from edgedistill.train.kd import token_bytes_table

    by_id = {i: b for b, i in token_bytes_table(tok).items()}
    gen = torch.Generator().manual_seed(0)
    out = []
    for rec in recs:
        enc = encode_example(tok, rec, 256)
        response = enc["input_ids"][enc["response_start"]:-2]  # the text, without <|im_end|>\n
        entries = []
        for tid in response:
            alts = [tid] + [int(i) for i in torch.randint(10, 500, (k - 1,), generator=gen)]
            lps = sorted(torch.log_softmax(torch.randn(k, generator=gen), 0).tolist(), reverse=True)
            entries.append({"token": by_id[tid].decode(errors="replace"), "bytes": list(by_id[tid]),
                            "logprob": lps[0], "top_logprobs": [
                                {"token": by_id[a].decode(errors="replace"), "bytes": list(by_id[a]),
                                 "logprob": lp} for a, lp in zip(alts, lps) if a in by_id]})
        out.append({**rec, "logprobs": entries})
    return out


def test_kd_trains_on_teacher_topk(tmp_path, tiny_model_dir):
    from edgedistill.train.student import load_tokenizer
    from edgedistill.train.finetune import train

    tok = load_tokenizer(str(tiny_model_dir))
    run = make_run(tmp_path, tiny_model_dir, max_steps=3, kd={"weight": 0.5, "temperature": 2.0},
                   packing=True, train_records=_with_teacher_logprobs(tok, records(12)))
    train(run)
    assert run.stage_entry("train")["metrics"]["packing"] is True
    assert run.stage_entry("train")["metrics"]["attention"] == "sdpa"  # packed rows are long
    kd = run.stage_entry("train")["metrics"]["kd"]
    assert kd["used"] is True and kd["examples"] == 12 and kd["temperature"] == 2.0


def test_the_lm_head_runs_only_over_the_labelled_tail_and_the_loss_is_unchanged(tmp_path, tiny_model_dir):
    """Completion-only labels: the logits of the prompt are never read, so the trainer computes the
    LM head over the batch's labelled tail only; cross-entropy and KD terms stay the same."""
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    from edgedistill.train.collate import IGNORE, Collator, encode_example
    from edgedistill.train.student import load_tokenizer
    from edgedistill.train.trainer import DistilTrainer

    tok = load_tokenizer(str(tiny_model_dir))
    batch = Collator(pad_id=tok.pad_token_id, packing=False)(
        [encode_example(tok, r, 256) for r in records(6)])
    labelled = batch["labels"] != IGNORE
    gen = torch.Generator().manual_seed(0)
    kd_ids = torch.where(labelled[..., None], torch.randint(0, len(tok), (*labelled.shape, 3), generator=gen), -1)
    kd_logprobs = torch.log_softmax(torch.randn(*labelled.shape, 3, generator=gen), -1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()
    widths = []
    model.lm_head.register_forward_hook(lambda m, args, out: widths.append(args[0].shape[1]))
    trainer = DistilTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]),
                            kd_weight=0.5, kd_temperature=2.0)

    def loss(trim: bool, kd: bool) -> float:
        trainer._keeps_logits = None if trim else False
        inputs = {**batch, **({"kd_ids": kd_ids, "kd_logprobs": kd_logprobs} if kd else {})}
        return float(trainer.compute_loss(model, inputs).detach())

    for kd in (False, True):
        widths.clear()
        trimmed, full = loss(True, kd), loss(False, kd)
        assert trimmed == pytest.approx(full, rel=1e-5)
        first = int(labelled.any(0).int().argmax())
        assert widths == [batch["labels"].shape[1] - (first - 1), batch["labels"].shape[1]]


def test_kd_with_a_different_vocabulary_fails_naming_both_sizes(tmp_path, tiny_model_dir):
    from edgedistill.train.student import load_tokenizer
    from edgedistill.train.finetune import train

    tok = load_tokenizer(str(tiny_model_dir))
    recs = [{**r, "teacher_vocab_size": 151936} for r in _with_teacher_logprobs(tok, records(8))]
    run = make_run(tmp_path, tiny_model_dir, max_steps=2, kd={"weight": 0.5}, train_records=recs)
    with pytest.raises(ConfigError, match="151,936 tokens and the student's has 512") as e:
        train(run)
    assert "allow_vocab_mismatch=true" in str(e.value)
    assert run.stage_entry("train")["status"] == "failed" and not run.adapter_dir.exists()

    run = make_run(tmp_path / "again", tiny_model_dir, max_steps=2, train_records=recs,
                   kd={"weight": 0.5, "allow_vocab_mismatch": True})
    train(run)
    assert run.stage_entry("train")["metrics"]["kd"] == {"used": False, "reason": "vocabulary mismatch"}


def test_resume_after_kill_ends_with_the_same_steps(tmp_path, tiny_model_dir):
    """SIGKILL a real `edgedistill train` after its first checkpoint; the rerun resumes from it and
    ends with the same optimizer steps and the same adapter as an uninterrupted run."""
    from edgedistill.train.finetune import train

    steps = 24
    run = make_run(tmp_path / "killed", tiny_model_dir, max_steps=steps, save_steps=4, batch_size=2)
    cmd = [sys.executable, "-m", "edgedistill.cli", "train", str(run.root)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(run.checkpoints_dir.glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not run.adapter_dir.exists() and run.stage_entry("train")["status"] == "running"

    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    m = run.stage_entry("train")["metrics"]
    assert m["resumed_from"].startswith("checkpoint-") and m["steps"] == steps
    logged = [json.loads(x)["step"] for x in (run.logs_dir / "train.jsonl").read_text().splitlines()]
    assert logged[-1] == steps and steps in logged

    import torch

    ref = make_run(tmp_path / "straight", tiny_model_dir, max_steps=steps, save_steps=4, batch_size=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses ran (OMP_NUM_THREADS=1)
    try:
        train(ref)
    finally:
        torch.set_num_threads(threads)
    assert ref.stage_entry("train")["metrics"]["steps"] == steps
    a, b = _adapter_tensors(run.adapter_dir), _adapter_tensors(ref.adapter_dir)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def test_two_process_accelerate_run(tmp_path, tiny_model_dir):
    """The same stage as 2 DDP processes on CPU (gloo). accelerate 1.x starts several CPU
    processes only through its torchrun path (`--multi_gpu`; `--cpu` alone runs one process
    unless MPI is configured); without a GPU each process picks gloo on CPU."""
    run = make_run(tmp_path, tiny_model_dir, max_steps=4, batch_size=2)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "edgedistill.cli", "train", str(run.root)]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    m = run.stage_entry("train")["metrics"]
    assert m["processes"] == 2 and m["steps"] == 4
    assert m["shared_prefix"] == {"batches": 0, "tokens_not_recomputed": 0, "off": "2 processes"}
    assert all(float(t.abs().max()) > 0 for k, t in _adapter_tensors(run.adapter_dir).items() if "lora_B" in k)


def _dev_loss(model_dir: Path, adapter: Path | None, run) -> float:
    """Mean loss of a model over the dev slice, as the Trainer computes its eval loss."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from edgedistill.data import read_jsonl
    from edgedistill.train.collate import Collator, encode_example
    from edgedistill.train.dev import split_dev
    from edgedistill.train.student import load_tokenizer

    cfg = run.recipe.train
    tok = load_tokenizer(str(model_dir))
    _, dev = split_dev(read_jsonl(run.train_data), cfg.dev_fraction, cfg.dev_max, cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    collate = Collator(pad_id=tok.pad_token_id, packing=False)
    examples = [encode_example(tok, r, cfg.max_length) for r in dev]
    total = 0.0
    with torch.no_grad():  # the Trainer's eval loss: each batch's mean loss, weighted by its size
        for i in range(0, len(examples), cfg.batch_size):
            chunk = examples[i:i + cfg.batch_size]
            total += float(model(**collate(chunk)).loss) * len(chunk)
    return total / len(examples)


def test_the_best_checkpoint_on_the_dev_slice_is_kept(tmp_path, tiny_model_dir):
    """With a learning rate that overshoots, the dev loss rises again; the adapter written is the
    one from the evaluation with the lowest dev loss, not the last step's."""
    from edgedistill.train.finetune import train

    run = make_run(tmp_path, tiny_model_dir, max_steps=12, eval_steps=2, learning_rate=0.3,
                   select="dev_loss", dev_fraction=0.2, precision="fp32", n_train=40)
    train(run)
    m = run.stage_entry("train")["metrics"]
    losses = {h["step"]: h["eval_loss"] for h in m["dev_history"]}
    assert sorted(losses) == [2, 4, 6, 8, 10, 12] and m["dev_examples"] == 8
    best = min(losses, key=losses.get)
    assert m["best_step"] == best
    kept = _dev_loss(tiny_model_dir, run.adapter_dir, run)
    assert kept == pytest.approx(losses[best], rel=1e-3)
    assert min(losses, key=lambda step: abs(losses[step] - kept)) == best  # nearest of all evaluations
    if best != 12:  # the last step was worse: what was kept is not the last step
        assert losses[12] > losses[best]


def test_epochs_auto_stops_when_the_dev_score_stops_improving(tmp_path, tiny_model_dir):
    from edgedistill.train.finetune import train

    run = make_run(tmp_path, tiny_model_dir, max_steps=None, epochs="auto", max_epochs=6, patience=1,
                   learning_rate=1e-6, batch_size=8, precision="fp32", n_train=32)
    train(run)  # a learning rate too small to change a greedy answer: the dev score cannot rise
    m = run.stage_entry("train")["metrics"]
    assert m["stopped_early"] and m["epochs"] <= 2 + 1e-6 and m["select"] == "dev_score"
    assert all("eval_dev_score" in h for h in m["dev_history"])


def test_full_fine_tune_writes_a_model_and_merge_takes_it(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    from edgedistill.train.finetune import train
    from edgedistill.train.merge import merge

    run = make_run(tmp_path, tiny_model_dir, max_steps=4, method="full", learning_rate=1e-3,
                   precision="fp32")
    train(run)
    m = run.stage_entry("train")["metrics"]
    assert m["method"] == "full" and m["learning_rate"] == 1e-3
    assert m["trainable_parameters"] > 100_000  # every weight, not an adapter
    trained = load_file(run.finetuned_dir / "model.safetensors")
    base = load_file(tiny_model_dir / "model.safetensors")
    moved = [k for k in base if not torch_equal(base[k], trained[k])]
    assert len(moved) > len(base) // 2 and not run.adapter_dir.exists()
    merge(run)
    merged = load_file(run.merged_dir / "model.safetensors")
    assert all(torch_equal(trained[k], merged[k]) for k in trained)
    assert run.stage_entry("merge")["metrics"]["max_abs_logit_diff"] == 0.0


def test_trainable_layers_freeze_the_embeddings_and_the_blocks_below(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    from edgedistill.train.finetune import train

    run = make_run(tmp_path, tiny_model_dir, max_steps=4, method="full", learning_rate=1e-3,
                   precision="fp32", trainable_layers=1)  # the tiny model has 2 blocks
    train(run)
    trained = load_file(run.finetuned_dir / "model.safetensors")
    base = load_file(tiny_model_dir / "model.safetensors")
    moved = {k for k in base if not torch_equal(base[k], trained[k])}
    frozen = {k for k in base if k.startswith(("model.embed_tokens.", "model.layers.0."))}
    assert frozen and not moved & frozen
    assert {k for k in base if k.startswith("model.layers.1.")} <= moved
    assert {"model.norm.weight", "lm_head.weight"} <= moved  # what follows the last block trains
    m = run.stage_entry("train")["metrics"]
    assert m["trainable_parameters"] == sum(base[k].numel() for k in base if k not in frozen)

    too_many = make_run(tmp_path / "more", tiny_model_dir, max_steps=1, method="full",
                        precision="fp32", trainable_layers=3)
    with pytest.raises(ConfigError, match="has 2 blocks"):
        train(too_many)


def test_a_full_fine_tune_can_leave_the_embeddings_frozen(tmp_path):
    """train.train_embeddings false: a vocabulary that holds most of the weights (the tiny byte-level
    BPE Llama's 49k rows, as Gemma 3 270M's 262k) stays frozen, tied LM head with it, and the blocks
    train; true (the default) trains it as well."""
    from safetensors.torch import load_file

    from edgedistill.train.finetune import train
    from families import build_family_model

    model_dir = build_family_model("Llama", tmp_path / "model")
    base = load_file(model_dir / "model.safetensors")
    embed = [k for k in base if "embed_tokens" in k]
    assert embed and base[embed[0]].numel() > sum(t.numel() for t in base.values()) / 2
    for setting, trained in ((False, False), (True, True)):
        run = make_run(tmp_path / str(setting), model_dir, max_steps=2, method="full", learning_rate=1e-3,
                       precision="fp32", train_embeddings=setting)
        train(run)
        after = load_file(run.finetuned_dir / "model.safetensors")
        assert (not torch_equal(base[embed[0]], after[embed[0]])) is trained
        assert not torch_equal(base["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])
        assert run.stage_entry("train")["metrics"]["embeddings_trained"] is trained


def test_lora_covers_every_linear_projection_by_default(tmp_path, tiny_model_dir):
    from edgedistill.train.finetune import train

    run = make_run(tmp_path, tiny_model_dir, max_steps=2, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    assert run.recipe.train.lora.target_modules == "all-linear"
    train(run)
    names = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in _adapter_tensors(run.adapter_dir)}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_auto_attention_is_eager_only_for_short_padded_batches_on_a_cpu():
    from edgedistill.train.dev import EAGER_MAX_TOKENS, attention

    short, long = EAGER_MAX_TOKENS, EAGER_MAX_TOKENS + 1
    assert attention("auto", on_gpu=False, packing=False, longest=short) == "eager"
    assert attention("auto", on_gpu=False, packing=False, longest=long) == "sdpa"
    assert attention("auto", on_gpu=False, packing=True, longest=short) == "sdpa"  # one long row
    assert attention("auto", on_gpu=True, packing=False, longest=short) == "sdpa"
    assert attention("sdpa", on_gpu=False, packing=False, longest=short) == "sdpa"  # asked for
    assert attention("eager", on_gpu=True, packing=False, longest=long) == "eager"


def test_eager_and_sdpa_attention_train_alike_on_a_padded_batch(tiny_model_dir):
    """Same loss and gradients (to float rounding) with either implementation, padding included."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgedistill.train.collate import Collator, encode_example
    from edgedistill.train.student import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    batch = Collator(pad_id=tok.pad_token_id, packing=False)([encode_example(tok, r, 256) for r in records(4)])
    assert int((batch["attention_mask"] == 0).sum()) > 0  # rows of different lengths: padding
    grads = {}
    for impl in ("eager", "sdpa"):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=impl)
        model.config.use_cache = False
        model.train()
        loss = model(**batch).loss
        loss.backward()
        assert model.config._attn_implementation == impl
        grads[impl] = (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (le, ge), (ls, gs) = grads["eager"], grads["sdpa"]
    assert abs(le - ls) < 1e-5
    assert all(torch.allclose(ge[n], gs[n], atol=1e-5, rtol=1e-4) for n in ge)


def test_the_train_stage_records_the_attention_it_picked(tmp_path, tiny_model_dir):
    from edgedistill.train.finetune import train

    short = [{"id": f"s{i}", "messages": [{"role": "user", "content": f"What is {i} + 1?"}],
              "response": str(i + 1), "answer": str(i + 1)} for i in range(12)]
    run = make_run(tmp_path / "short", tiny_model_dir, max_steps=2, train_records=short, precision="fp32")
    train(run)
    assert run.stage_entry("train")["metrics"]["attention"] == "eager"
    run = make_run(tmp_path / "asked", tiny_model_dir, max_steps=2, train_records=short, precision="fp32",
                   attention="sdpa")
    train(run)
    assert run.stage_entry("train")["metrics"]["attention"] == "sdpa"


def _with_system_prompt(recs: list[dict]) -> list[dict]:
    return [{**r, "messages": [{"role": "system", "content": "Reply with the answer only, in one short line."}]
             + r["messages"]} for r in recs]


@pytest.mark.parametrize("impl,family", [("eager", None), ("sdpa", None), ("sdpa", "Gemma 3")])
def test_a_shared_prompt_prefix_runs_once_and_the_loss_and_gradients_stay(tmp_path, tiny_model_dir, impl, family):
    """train.share_prefix: the batch's common prefix (system turn) runs once, on one row, and the
    rows continue from its repeated cache; cross-entropy, KD and every gradient are those of the
    whole rows, padding included. Gemma 3 makes no cache of its own in training (and has sliding
    window layers): the trainer hands it one."""
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    from edgedistill.train.collate import IGNORE, Collator, encode_example
    from edgedistill.train.student import load_tokenizer
    from edgedistill.train.trainer import DistilTrainer, shared_prefix

    if family:
        from families import build_family_model

        tiny_model_dir = build_family_model(family, tmp_path / "model")
    tok = load_tokenizer(str(tiny_model_dir))
    batch = Collator(pad_id=tok.pad_token_id, packing=False)(
        [encode_example(tok, r, 256) for r in _with_system_prompt(records(5))])
    assert int((batch["attention_mask"] == 0).sum()) > 0
    p = shared_prefix(batch["input_ids"], batch["attention_mask"], batch["labels"])
    system = len(tok.apply_chat_template([{"role": "system", "content": "Reply with the answer only, in one "
                                                                        "short line."}], tokenize=True))
    assert p >= system  # the system turn at least
    labelled = batch["labels"] != IGNORE
    gen = torch.Generator().manual_seed(0)
    kd_ids = torch.where(labelled[..., None], torch.randint(0, len(tok), (*labelled.shape, 3), generator=gen), -1)
    kd_logprobs = torch.log_softmax(torch.randn(*labelled.shape, 3, generator=gen), -1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=impl).train()
    model.config.use_cache = False  # as the train stage sets it
    widths = []
    model.model.layers[0].register_forward_hook(lambda m, args, out: widths.append(tuple(args[0].shape[:2])))
    trainer = DistilTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]),
                            kd_weight=0.5, kd_temperature=2.0)

    def run(share: bool, kd: bool):
        trainer.share_prefix = share
        model.zero_grad()
        inputs = {**batch, **({"kd_ids": kd_ids, "kd_logprobs": kd_logprobs} if kd else {})}
        loss = trainer.compute_loss(model, inputs)
        loss.backward()
        return float(loss.detach()), {n: t.grad.clone() for n, t in model.named_parameters()}

    rows, width = batch["input_ids"].shape
    for kd in (False, True):
        widths.clear()
        (shared_loss, shared_grads), (whole_loss, whole_grads) = run(True, kd), run(False, kd)
        assert widths == [(1, p), (rows, width - p), (rows, width)]
        assert shared_loss == pytest.approx(whole_loss, rel=1e-5)
        for name, g in whole_grads.items():
            assert torch.allclose(shared_grads[name], g, atol=1e-5, rtol=1e-4), name
    assert trainer.prefix_stats == {"batches": 2, "tokens_not_recomputed": 2 * p * (rows - 1)}


def test_the_train_stage_shares_the_prompt_prefix_and_says_so(tmp_path, tiny_model_dir):
    from edgedistill.train.finetune import train

    recs = _with_system_prompt(records(12))
    run = make_run(tmp_path / "on", tiny_model_dir, max_steps=2, train_records=recs, precision="fp32")
    train(run)
    shared = run.stage_entry("train")["metrics"]["shared_prefix"]
    assert shared["batches"] == 2 and shared["tokens_not_recomputed"] > 0
    run = make_run(tmp_path / "off", tiny_model_dir, max_steps=2, train_records=recs, precision="fp32",
                   share_prefix=False)
    train(run)
    assert run.stage_entry("train")["metrics"]["shared_prefix"] is None


def test_a_model_that_cannot_continue_from_a_shared_cache_trains_on_whole_rows(tmp_path, tiny_model_dir):
    """A forward that refuses a cache in training (remote code, say): the first batch falls back to
    whole rows with the same loss, sharing stays off, and the train stage says why."""
    from transformers import AutoModelForCausalLM, TrainingArguments

    from edgedistill.train.collate import Collator, encode_example
    from edgedistill.train.student import load_tokenizer
    from edgedistill.train.trainer import DistilTrainer

    tok = load_tokenizer(str(tiny_model_dir))
    batch = Collator(pad_id=tok.pad_token_id, packing=False)(
        [encode_example(tok, r, 256) for r in _with_system_prompt(records(4))])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()
    whole = float(model(**batch).loss)
    plain_forward = model.forward

    def forward(*args, **kwargs):
        if kwargs.get("past_key_values") is not None or kwargs.get("use_cache"):
            raise TypeError("forward() got an unexpected keyword argument 'past_key_values'")
        return plain_forward(*args, **kwargs)

    model.forward = forward
    trainer = DistilTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]),
                            share_prefix=True)
    assert float(trainer.compute_loss(model, dict(batch)).detach()) == pytest.approx(whole, rel=1e-5)
    assert trainer.share_prefix is False and trainer.prefix_stats["batches"] == 0
    assert "TypeError" in trainer.prefix_stats["off"]
