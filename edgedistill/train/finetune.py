"""`edgedistill train RUN`: the student fine-tuned on the teacher's verified answers.

transformers' Trainer, on the student's own chat template, loss on the assistant's tokens only
(edgedistill.train.collate), with ``train.method``:
- ``lora`` (default): a peft LoRA adapter on every linear projection → RUN/student/adapter/;
- ``full``: every weight (students up to ~0.5B on a CPU) → RUN/student/finetuned/;
the learning rate scaled to the choice when ``train.learning_rate`` is null (2e-4 LoRA, 5e-5 full).
A dev slice of the train split (edgedistill.train.dev; never the eval split) is scored with the
task's metric after every epoch (or ``train.eval_steps``), and the best checkpoint is kept
(``train.select``); ``train.epochs: auto`` stops when the dev score stops improving. bf16 autocast
where the hardware computes it natively (``train.precision: auto``). Checkpoints in
RUN/student/checkpoints/ let a killed run resume; optional logit distillation from the teacher's
top-k logprobs (edgedistill.train.kd).

The same function runs as N data-parallel processes:

    accelerate launch --multi_gpu --num_processes N -m edgedistill.cli train RUN   # or torchrun

every process trains on its share of each batch (DDP; NCCL on GPUs, gloo on CPUs), and only the
main one writes the manifest, the train log and the adapter. (accelerate 1.x starts several CPU
processes only this way or through MPI: ``--cpu`` alone runs one process.) On one GPU, plain
``edgedistill train RUN`` uses it, in ``student.dtype`` mixed precision.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any

from edgedistill.train.collate import Collator, count_tokens, encode_example
from edgedistill.data import read_jsonl
from edgedistill.errors import ConfigError, DataError
from edgedistill.rundir import Run, digest
from edgedistill.train.student import load_tokenizer, student_path

log = logging.getLogger(__name__)

RESUME_RECORD = "edgedistill_resume.json"


def train(run: Run, *, force: bool = False) -> None:
    """Train the run's LoRA adapter into RUN/student/adapter/ (skipped when up to date)."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    # CPU unless a GPU is there (and `accelerate launch --cpu` was not asked for); under a
    # multi-process launcher (accelerate launch --multi_gpu, torchrun) CPU processes use gloo.
    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    state = PartialState(cpu=cpu)
    run.require("generate", needed_by="train")
    inputs = [p for p in (run.train_data,) if p.exists()]  # missing: a DataError once the student is checked
    stage = run.begin("train", inputs=inputs, force=force) if state.is_main_process else None
    flag = [stage is None]
    if state.num_processes > 1:
        broadcast_object_list(flag)
    if flag[0]:
        return
    out_dir = run.adapter_dir if run.recipe.train.method == "lora" else run.finetuned_dir
    with stage if stage is not None else contextlib.nullcontext() as st:
        metrics = _train(run, state, force=force, adapter_out=st.output(out_dir) if st else None)
        if st is not None:
            st.metrics.update(metrics)
            st.record(run.logs_dir / "train.jsonl")
    if state.is_main_process:
        shutil.rmtree(run.checkpoints_dir, ignore_errors=True)
        log.info("%s written to %s (%d steps; best dev score %s at step %s)", run.recipe.train.method,
                 out_dir, metrics["steps"], metrics.get("best_dev_score"), metrics.get("best_step"))


LEARNING_RATE = {"lora": 2e-4, "full": 5e-5}


def _train(run: Run, state, *, force: bool, adapter_out: Path | None) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, EarlyStoppingCallback, TrainingArguments, set_seed

    from edgedistill.train.dev import DevScorer, attention, precision, split_dev
    from edgedistill.train.trainer import DistilTrainer, TrainLog

    recipe = run.recipe
    cfg = recipe.train
    t0 = time.time()
    base = student_path(run) if state.is_main_process else None
    if state.num_processes > 1:  # a GGUF student is imported once, by the main process
        box = [base]
        from accelerate.utils import broadcast_object_list
        broadcast_object_list(box)
        base = box[0]
    tok = load_tokenizer(base, recipe.student.trust_remote_code)
    if not run.train_data.is_file():
        raise DataError(f"{run.train_data} is missing: the generate stage's output is gone.",
                        hint=f"Write it again: `edgedistill generate {run.root} --force`.")
    records = read_jsonl(run.train_data)
    if not records:
        raise DataError(f"{run.train_data} holds no teacher answer to train on: every one was rejected "
                        f"(why: {run.rejected}).",
                        hint="See teacher.min_success_ratio, teacher.retries_on_wrong and teacher.max_tokens, "
                             "or a stronger teacher.")
    fit_records, dev_records = split_dev(records, cfg.dev_fraction, cfg.dev_max, cfg.seed)
    train_set, dropped = _encode(tok, fit_records, run.train_data, cfg.max_length)
    dev_set, _ = _encode(tok, dev_records, run.train_data, cfg.max_length)
    if not train_set:
        raise DataError(f"{run.train_data} has no example that fits train.max_length={cfg.max_length}.",
                        hint=f"Raise it: `edgedistill train {run.root} --set train.max_length=1024`.")
    kd = _attach_kd(run, tok, train_set) if cfg.kd is not None and cfg.kd.weight > 0 else {"used": False}

    resume = _prepare_checkpoints(run, state, force)
    if cfg.method == "full" and resume is not None:  # full checkpoints keep no optimizer state
        log.info("train.method full: starting over (its checkpoints hold the model only)")
        resume = None
    set_seed(cfg.seed)
    on_gpu = state.device.type == "cuda"
    prec = precision(cfg.precision)
    dtype = getattr(torch, recipe.student.dtype) if on_gpu else torch.float32  # CPU keeps fp32 weights
    attn = attention(cfg.attention, on_gpu=on_gpu, packing=cfg.packing,
                     longest=max(len(e["input_ids"]) for e in train_set + dev_set))
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, attn_implementation=attn,
                                                 trust_remote_code=recipe.student.trust_remote_code)
    model.config.use_cache = False
    if cfg.method == "lora":
        model = _with_lora(model, cfg, base)
    elif cfg.trainable_layers is not None:
        _freeze_below(model, cfg.trainable_layers, base)
    elif not cfg.train_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)  # a tied LM head with them
    lr = cfg.learning_rate or LEARNING_RATE[cfg.method]
    auto = cfg.epochs == "auto"
    select = cfg.select if dev_set or cfg.select == "last" else "last"
    if select == "dev_score" and not dev_set:
        select = "last"
    evaluate = bool(dev_set)
    strategy = ("steps" if cfg.eval_steps else "epoch") if evaluate else "no"
    args = TrainingArguments(
        output_dir=str(run.checkpoints_dir),
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=lr, num_train_epochs=cfg.max_epochs if auto else cfg.epochs,
        max_steps=cfg.max_steps or -1, warmup_ratio=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler, logging_steps=0.02, logging_first_step=True,
        # one fused kernel per tensor: the step of a 168M-weight embedding in 0.10 s against 0.51
        # for torch's default foreach AdamW on 2 cores (scripts/bench_optimizer.py)
        optim="adamw_torch_fused",
        save_strategy=strategy if select != "last" else "steps", save_steps=cfg.eval_steps or cfg.save_steps,
        save_total_limit=2, save_only_model=cfg.method == "full",  # no 1 GB optimizer state per save
        eval_strategy=strategy, eval_steps=cfg.eval_steps,
        load_best_model_at_end=select != "last",
        metric_for_best_model={"dev_score": "dev_score", "dev_loss": "loss"}.get(select),
        greater_is_better=select == "dev_score" if select != "last" else None,
        seed=cfg.seed, data_seed=cfg.seed, report_to=[], remove_unused_columns=False,
        prediction_loss_only=True,  # dev loss only: no dev-set logits held in memory
        group_by_length=not cfg.packing, dataloader_num_workers=0,
        use_cpu=not on_gpu, bf16=prec == "bf16" and (not on_gpu or recipe.student.dtype != "float16"),
        fp16=on_gpu and recipe.student.dtype == "float16",
        ddp_backend="gloo" if (state.num_processes > 1 and not on_gpu) else None,
        ddp_find_unused_parameters=False if state.num_processes > 1 else None,
    )
    callbacks = [TrainLog(run.logs_dir / "train.jsonl", append=resume is not None)]
    if auto and select != "last":
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.patience))
    scorer = DevScorer(tok, [e["record"] for e in dev_set], recipe.task, recipe.eval.max_new_tokens) \
        if dev_set and select != "dev_loss" else None
    trainer = DistilTrainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=dev_set or None,
        data_collator=Collator(pad_id=tok.pad_token_id, packing=cfg.packing), processing_class=tok,
        callbacks=callbacks, kd_weight=cfg.kd.weight if kd["used"] else 0.0,
        kd_temperature=cfg.kd.temperature if cfg.kd else 1.0, dev_scorer=scorer,
        share_prefix=cfg.share_prefix and not cfg.packing,
    )
    if resume:
        log.info("resuming from %s", resume.name)
    cpu0 = _cpu_seconds()
    out = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    cpu_s = _cpu_seconds() - cpu0
    tokens, runtime = trainer.tokens_seen(), out.metrics["train_runtime"]
    model = trainer.model  # the best checkpoint, when one was selected
    if adapter_out is not None:
        model.save_pretrained(adapter_out, safe_serialization=True)
        tok.save_pretrained(adapter_out)
        (adapter_out / "edgedistill_train.json").write_text(json.dumps(
            {"base": base, "method": cfg.method, "steps": trainer.state.global_step, "seed": cfg.seed,
             "best_checkpoint": trainer.state.best_model_checkpoint}, indent=2))
    state.wait_for_everyone()
    trained = count_tokens(train_set)
    history = [{k: h[k] for k in ("step", "epoch", "eval_loss", "eval_dev_score") if k in h}
               for h in trainer.state.log_history if "eval_loss" in h or "eval_dev_score" in h]
    best = trainer.state.best_model_checkpoint
    return {
        "base": base, "method": cfg.method, "precision": prec, "attention": attn, "learning_rate": lr,
        "steps": trainer.state.global_step, "epochs": round(trainer.state.epoch or 0, 3),
        "train_loss": round(out.training_loss, 5), "select": select,
        "best_step": int(best.rsplit("-", 1)[-1]) if best else None,
        "best_dev_score": trainer.state.best_metric if select == "dev_score" else None,
        "dev_history": history, "stopped_early": auto and trainer.state.epoch is not None
        and trainer.state.epoch < cfg.max_epochs - 1e-6,
        "train_examples": trained["examples"], "dev_examples": len(dev_set), "dropped_too_long": dropped,
        "train_tokens": trained["tokens"], "trained_tokens": trained["trained_tokens"],
        "nonpad_tokens_seen": tokens, "train_runtime_s": round(runtime, 2),
        "tokens_per_s": round(tokens / max(runtime, 1e-9), 1),  # non-padding tokens / train runtime
        "train_cpu_s": round(cpu_s, 2),  # CPU time of this process while training
        "seconds": round(time.time() - t0, 1), "seed": cfg.seed, "data_seed": cfg.seed,
        "recipe_seed": recipe.seed, "processes": state.num_processes, "packing": cfg.packing,
        "resumed_from": resume.name if resume else None,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "embeddings_trained": bool(model.get_input_embeddings().weight.requires_grad),
        "shared_prefix": trainer.prefix_stats if trainer.asked_to_share_prefix else None,
        "kd": kd, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _freeze_below(model, trainable: int, base: str) -> None:
    """Only the last ``trainable`` transformer blocks and what follows them (final norm, an untied
    LM head) keep requires_grad; the token embeddings (a tied LM head with them) and the blocks
    below are frozen, so backward never reaches them."""
    blocks = getattr(model.get_decoder(), "layers", None)
    if blocks is None:
        raise ConfigError(f"train.trainable_layers: {base} keeps its transformer blocks in no "
                          f"`layers` list this option knows.", hint="Leave it null (every weight trains).")
    if trainable > len(blocks):
        raise ConfigError(f"train.trainable_layers={trainable}, but {base} has {len(blocks)} blocks.",
                          hint=f"At most {len(blocks)}, or null for every weight.")
    frozen = [model.get_input_embeddings(), *blocks[:len(blocks) - trainable]]
    for module in frozen:
        for param in module.parameters():
            param.requires_grad_(False)
    log.info("train.trainable_layers: the last %d of %d blocks train; the embeddings and %d blocks are frozen",
             trainable, len(blocks), len(blocks) - trainable)


def _with_lora(model, cfg, base: str):
    import torch
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                        if isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"train.lora.target_modules does not fit {base}: {e}",
                          hint=f"Its linear layers: {', '.join(names)}.") from None


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _encode(tok, records: list[dict[str, Any]], path: Path, max_length: int) -> tuple[list[dict[str, Any]], int]:
    out, dropped = [], 0
    for rec in records:
        enc = encode_example(tok, rec, max_length, where=f"{path}, record {rec.get('id')!r}")
        if enc is None:
            dropped += 1
            continue
        enc["record"] = rec
        out.append(enc)
    if dropped:
        log.warning("%d example(s) of %s have prompts longer than train.max_length=%d; skipped",
                    dropped, path.name, max_length)
    return out, dropped


def _attach_kd(run: Run, tok, examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Teacher top-k per response token onto each example; checks the vocabularies match."""
    from edgedistill.train.kd import check_vocab, teacher_topk, teacher_vocab_size, token_bytes_table

    kd_cfg = run.recipe.train.kd
    with_lp = [e for e in examples if e["record"].get("logprobs")]
    if not with_lp:
        log.warning("train.kd is set but no record of %s has teacher logprobs (set teacher.logprobs "
                    "and regenerate); training with cross-entropy only", run.train_data.name)
        return {"used": False, "reason": "no teacher logprobs"}
    table = token_bytes_table(tok)
    mapped = unmapped = misaligned = 0
    for e in with_lp:
        rec = e["record"]
        try:
            ids, lps, chosen, bad = teacher_topk(rec["logprobs"], table)
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{run.train_data}: record {rec.get('id')!r} has malformed logprobs ({err}).",
                            hint="See edgedistill/kd.py for the accepted shape.") from None
        unmapped += bad
        mapped += sum(len(r) for r in ids)
        start = e["response_start"]
        student = e["input_ids"][start:start + len(chosen)]
        if any(c is not None and c != s for c, s in zip(chosen, student)):
            misaligned += 1
        e["kd_ids"], e["kd_logprobs"] = ids, lps
    ok = check_vocab(len(tok), teacher_vocab_size(run.recipe, [e["record"] for e in with_lp]),
                     mapped, unmapped, misaligned, len(with_lp), kd_cfg.allow_vocab_mismatch)
    if not ok:
        for e in with_lp:
            e.pop("kd_ids"), e.pop("kd_logprobs")
        return {"used": False, "reason": "vocabulary mismatch"}
    return {"used": True, "examples": len(with_lp), "weight": kd_cfg.weight,
            "temperature": kd_cfg.temperature, "top_k_candidates": mapped}


def _prepare_checkpoints(run: Run, state, force: bool) -> Path | None:
    """The checkpoint to resume from: the latest complete one written for this same config and
    data; anything else in the checkpoints folder is cleared (by the main process)."""
    ckpt = run.checkpoints_dir
    key = {"config_hash": run.config_hash("train"),
           "inputs": {run.rel(run.train_data): digest(run.train_data)["sha256"]}}
    if state.is_main_process:
        record = ckpt / RESUME_RECORD
        same = record.is_file() and json.loads(record.read_text()) == key
        if force or not same:
            shutil.rmtree(ckpt, ignore_errors=True)
            ckpt.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps(key, indent=2))
    state.wait_for_everyone()
    done = [p for p in ckpt.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)
