"""The Trainer with four additions: the KD term mixed into the loss; the LM head computed only
over the positions the loss reads (completion-only labels: the prompt's logits would be thrown
away); the prompt prefix every example of a batch shares (the chat template's system turn)
computed once per batch instead of once per example (``train.share_prefix``); and non-padding
tokens per second in every log line (the progress bar, and RUN/logs/train.jsonl through TrainLog).

Sharing the prefix: the batch's first row runs over the common prefix alone and returns its
key/value cache; the cache is repeated along the batch (``Cache.batch_repeat_interleave``, a copy
that autograd sums the gradients of back into the one prefix) and the rows continue from it, with
their own attention masks and positions. The prefix's hidden states are the same in every row
(the same tokens at the same positions, attending only to each other), so the loss and the
gradients are those of the whole rows, to float rounding (tests/test_train.py); only their cost
falls. It needs one process (a wrapped DistributedDataParallel model is not called twice per step),
unpadded prefix positions, and a prefix that ends before the first position whose logit the loss
reads."""

from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

from edgedistill.train.collate import IGNORE
from edgedistill.data import append_jsonl
from edgedistill.train.kd import topk_kl

log = logging.getLogger(__name__)


MIN_SHARED = 4  # a shorter common prefix is computed with the rows: not worth a second call


def shared_prefix(input_ids: Any, attention_mask: Any, labels: Any) -> int:
    """How many leading positions hold the same token, unpadded, in every row of the batch and
    produce no logit the loss reads (they end before the logit that predicts the first label);
    0 for a single row or an unpadded (packed) batch."""
    if input_ids.shape[0] < 2 or attention_mask is None or labels is None:
        return 0
    labelled = (labels != IGNORE).any(dim=0)
    if not bool(labelled.any()):
        return 0
    first = int(labelled.int().argmax())
    same = (input_ids == input_ids[:1]).all(dim=0) & attention_mask.bool().all(dim=0)
    return max(min(int(same.int().cumprod(0).sum()), first - 1), 0)


def labelled_tail(labels: Any) -> int | None:
    """How many trailing positions hold every logit the loss reads: the logit at t predicts the
    label at t + 1, so the tail starts one before the batch's first label. None when that is the
    whole row (or there is no label)."""
    labelled = (labels != IGNORE).any(dim=0)
    if not bool(labelled.any()):
        return None
    first = int(labelled.int().argmax())
    keep = labels.shape[1] - max(first - 1, 0)
    return keep if keep < labels.shape[1] else None


class DistilTrainer(Trainer):
    """``loss = (1 - w) * CE + w * T² * KL(teacher top-k || student)`` when batches carry the
    teacher's top-k (``kd_ids`` / ``kd_logprobs``); plain Trainer loss otherwise."""

    def __init__(self, *args, kd_weight: float = 0.0, kd_temperature: float = 1.0,
                 dev_scorer: Any = None, share_prefix: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.asked_to_share_prefix = share_prefix
        self.prefix_stats: dict[str, Any] = {"batches": 0, "tokens_not_recomputed": 0}
        processes = self.accelerator.num_processes
        self.share_prefix = share_prefix and processes == 1  # DDP: one forward per step
        if share_prefix and processes > 1:
            self.prefix_stats["off"] = f"{processes} processes"
        self.dev_scorer = dev_scorer  # edgedistill.train.dev.DevScorer: the task metric on the dev slice
        self.kd_weight = kd_weight
        self.kd_temperature = kd_temperature
        self._tokens = 0  # non-padding tokens since the last log, this process
        self._tokens_total = 0
        self._t_last = None
        self._keeps_logits: bool | None = None

    def _accepts_logits_to_keep(self, model) -> bool:
        if self._keeps_logits is None:
            inner = self.accelerator.unwrap_model(model)
            inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
            self._keeps_logits = "logits_to_keep" in inspect.signature(inner.forward).parameters
        return self._keeps_logits

    def _trim_to_labelled_tail(self, model, inputs: dict, kd: list) -> tuple[dict, list]:
        """LM head and loss over the labelled tail only (same loss: nothing the loss reads is
        dropped); the prompt's hidden states still feed attention."""
        labels = inputs.get("labels")
        keep = labelled_tail(labels) if labels is not None and self._accepts_logits_to_keep(model) else None
        if keep is None:
            return inputs, kd
        inputs = {**inputs, "labels": labels[:, -keep:], "logits_to_keep": keep}
        return inputs, [t[:, -keep:] if t is not None else None for t in kd]

    def _from_shared_prefix(self, model, inputs: dict, kd: list) -> tuple[dict, list, int] | None:
        """The batch's common prefix run once; the rows continue from its repeated cache: their
        inputs, KD tensors and the prefix tokens not recomputed. None when there is nothing to
        share (or sharing is off)."""
        import torch

        if not (self.share_prefix and model.training) or "position_ids" in inputs:
            return None
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        p = shared_prefix(ids, mask, inputs.get("labels"))
        if p < MIN_SHARED:
            return None
        from transformers import DynamicCache

        extra = {"logits_to_keep": 1} if self._accepts_logits_to_keep(model) else {}
        # a cache of our own: some models make one only when not training (Gemma 3: none back)
        config = self.accelerator.unwrap_model(model).config
        cache = model(input_ids=ids[:1, :p], use_cache=True, past_key_values=DynamicCache(config=config),
                      **extra).past_key_values
        rows, width = ids.shape
        cache.batch_repeat_interleave(rows)
        positions = torch.arange(p, width, device=ids.device).unsqueeze(0).expand(rows, -1)
        inputs = {**inputs, "input_ids": ids[:, p:], "labels": inputs["labels"][:, p:],
                  "position_ids": positions, "past_key_values": cache}  # attention_mask: whole rows
        return inputs, [t[:, p:] if t is not None else None for t in kd], p * (rows - 1)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        kd = [inputs.pop("kd_ids", None), inputs.pop("kd_logprobs", None)]
        if model.training:
            mask = inputs.get("attention_mask")
            self._tokens += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            if self._t_last is None:
                self._t_last = time.perf_counter()
        try:
            shared = self._from_shared_prefix(model, inputs, kd)
            if shared is not None:
                out = self._loss(model, shared[0], shared[1], return_outputs, num_items_in_batch)
                self.prefix_stats["batches"] += 1
                self.prefix_stats["tokens_not_recomputed"] += shared[2]
                return out
        except (TypeError, ValueError, AttributeError, NotImplementedError) as e:
            if self.prefix_stats["batches"]:  # it worked before: not the model's refusal
                raise
            # a model whose forward cannot continue from a cache in training (remote code, a
            # cache class without batch_repeat_interleave): every row computes its prompt
            log.warning("train.share_prefix: %s cannot continue a batch from a shared prefix (%s: %s); "
                        "every row computes its own prompt", type(model).__name__, type(e).__name__, e)
            self.share_prefix = False
            self.prefix_stats["off"] = f"{type(e).__name__}: {e}"[:300]
        return self._loss(model, inputs, kd, return_outputs, num_items_in_batch)

    def _loss(self, model, inputs: dict, kd: list, return_outputs: bool, num_items_in_batch):
        inputs, (kd_ids, kd_logprobs) = self._trim_to_labelled_tail(model, inputs, kd)
        if kd_ids is None or self.kd_weight == 0 or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        ce, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        kl_sum, n = topk_kl(outputs.logits[:, :-1], kd_ids[:, 1:], kd_logprobs[:, 1:], self.kd_temperature)
        kl = kl_sum / (num_items_in_batch if num_items_in_batch is not None else max(n, 1))
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs \
                and num_items_in_batch is not None:
            kl = kl * self.accelerator.num_processes  # the same scaling Trainer gives the CE term
        t = self.kd_temperature
        loss = (1 - self.kd_weight) * ce + self.kd_weight * t * t * kl
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, *args, **kwargs) -> dict[str, float]:
        """Dev loss, and the task metric on the dev slice (``eval_dev_score``, which the best
        checkpoint is chosen by when ``train.select`` is dev_score)."""
        extra = {f"eval_{k}": v for k, v in self.dev_scorer(self.model).items()} if self.dev_scorer else {}
        if self.eval_dataset is None:
            self.log(extra)
            return extra
        self._pending_eval = extra  # logged with the dev loss, in one line
        try:
            metrics = super().evaluate(*args, **kwargs)
        finally:
            self._pending_eval = {}
        return {**metrics, **extra}

    _pending_eval: dict[str, float] = {}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "eval_loss" in logs and self._pending_eval:
            logs.update(self._pending_eval)  # in place: the same dict reaches on_evaluate (early stopping)
        if "loss" in logs and self._t_last is not None:
            import torch

            now = time.perf_counter()
            n = int(self.accelerator.reduce(torch.tensor(self._tokens, device=self.args.device), "sum"))
            self._tokens_total += n
            logs["tokens_per_s"] = round(n / max(now - self._t_last, 1e-9), 1)
            self._tokens, self._t_last = 0, now
        super().log(logs, start_time)

    def tokens_seen(self) -> int:
        """Non-padding tokens trained on so far, all processes (a collective: call on every rank)."""
        import torch

        n = int(self.accelerator.reduce(torch.tensor(self._tokens, device=self.args.device), "sum"))
        self._tokens_total += n
        self._tokens = 0
        return self._tokens_total


class TrainLog(TrainerCallback):
    """One JSON line per log: step, loss, lr, tokens/s (and eval loss), flushed as written."""

    def __init__(self, path: Path, append: bool):
        self.path = Path(path)
        self.append = append

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.append:
                self.path.write_text("")

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4)}
        for key, name in (("loss", "loss"), ("learning_rate", "lr"), ("tokens_per_s", "tokens_per_s"),
                          ("grad_norm", "grad_norm"), ("eval_loss", "dev_loss"), ("eval_dev_score", "dev_score")):
            if key in logs:
                row[name] = logs[key]
        if len(row) > 2:
            with self.path.open("a") as f:
                append_jsonl(f, row)
