"""The Trainer with three additions: the KD term mixed into the loss; the LM head computed only
over the positions the loss reads (completion-only labels: the prompt's logits would be thrown
away); and non-padding tokens per second in every log line (the progress bar, and
RUN/logs/train.jsonl through TrainLog)."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

from edgedistill.train.collate import IGNORE
from edgedistill.data import append_jsonl
from edgedistill.train.kd import topk_kl


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
                 dev_scorer: Any = None, **kwargs):
        super().__init__(*args, **kwargs)
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

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        kd_ids = inputs.pop("kd_ids", None)
        kd_logprobs = inputs.pop("kd_logprobs", None)
        inputs, (kd_ids, kd_logprobs) = self._trim_to_labelled_tail(model, inputs, [kd_ids, kd_logprobs])
        if model.training:
            mask = inputs.get("attention_mask")
            self._tokens += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            if self._t_last is None:
                self._t_last = time.perf_counter()
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
