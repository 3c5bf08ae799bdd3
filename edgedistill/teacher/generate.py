"""``edgedistill generate``: the teacher answers the task's prompts.

RUN/data/prompts.jsonl    the prompts kept after exact and near-duplicate removal, with their split
RUN/data/teacher.jsonl    every answer the teacher gave, appended and flushed as it arrives: the
                          resume log, keyed by a hash of (model, params, messages)
RUN/data/rejected.jsonl   answers that failed validation, with the reason
RUN/data/train.jsonl      accepted answers to train prompts
RUN/data/eval.jsonl       every eval prompt, with the teacher's answer (null + reason if rejected)

A run killed at any moment (kill -9 included) resumes where it stopped: answers in the log are
never asked again, and a changed prompt or parameter is a new key.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from edgedistill.evaluate import tasks
from edgedistill.config import Recipe, TeacherConfig
from edgedistill.data import append_jsonl, content_id, load_prompts, messages_of, write_jsonl
from edgedistill.errors import ConfigError, EndpointError, GateFailed
from edgedistill.rundir import Run
from edgedistill.teacher import Answer, Request, backend_module
from edgedistill.teacher.resume_log import open_log, read_log
from edgedistill.teacher.dedup import dedupe, prompt_text, split_ids

log = logging.getLogger(__name__)

_REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry,? (?:but )?i (?:can|am|won)|i (?:can ?not|can't|won't|am unable to|'m unable to)"
    r" (?:help|assist|comply|provide|answer|do that|fulfil)|as an ai(?: language model)?,? i (?:can|don|am))", re.I)
PROMPT_FIELDS = ("id", "prompt", "messages", "answer")


def request_params(cfg: TeacherConfig) -> dict[str, Any]:
    return {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens,
            "seed": cfg.seed, "logprobs": cfg.logprobs}


def make_request(cfg: TeacherConfig, prompt: dict[str, Any]) -> Request:
    msgs = messages_of(prompt, cfg.system_prompt)
    params = request_params(cfg)
    key = content_id({"model": cfg.model, "params": params, "messages": msgs})
    return Request(key=key, id=prompt["id"], messages=msgs, params=params)


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(text.replace("\u2019", "'")[:200]))


def validate(task: str, cfg: TeacherConfig, rec: dict[str, Any], prompt: dict[str, Any]) -> str | None:
    """None when a teacher answer is usable training data, else why not."""
    text = rec.get("response")
    if text is None:
        return rec.get("error") or "no_response"
    if rec.get("finish_reason") not in cfg.accept_finish_reasons:
        return f"finish_reason:{rec.get('finish_reason')}"
    if not text.strip():
        return "empty"
    if is_refusal(text):
        return "refusal"
    return tasks.check_answer(task, text, prompt, rec.get("messages"))


class Session:
    """Receives answers from a backend: logs each one at once, validates it, drives the bar."""

    def __init__(self, f: Any, recipe: Recipe, cfg: TeacherConfig, prompts: dict[str, dict[str, Any]],
                 cache: dict[str, dict[str, Any]], total: int, done: int):
        from tqdm import tqdm

        self.f, self.recipe, self.cfg, self.prompts, self.cache = f, recipe, cfg, prompts, cache
        self.failures: dict[str, str] = {}
        self.retries = self.rejected = self.tokens = 0
        self.t0 = time.perf_counter()
        self.seconds = 0.0
        self.bar = tqdm(total=total, initial=done, desc="teacher", unit="ans", dynamic_ncols=True,
                        disable=None)  # no bar in logs (not a terminal); the summary line stays

    def answer(self, a: Answer) -> None:
        rec = {
            "key": a.request.key, "id": a.request.id, "response": a.text, "finish_reason": a.finish_reason,
            "usage": {"prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens},
            "model": self.cfg.model, "backend": self.cfg.backend, "endpoint": a.endpoint,
            "params": a.request.params, "messages": a.request.messages, "latency_s": round(a.latency_s, 4),
            "retries": a.retries, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **a.extra,
        }
        if a.logprobs is not None:
            rec["logprobs"] = a.logprobs
        append_jsonl(self.f, rec)
        self.cache[a.request.key] = rec
        self.tokens += a.completion_tokens or 0
        if validate(self.recipe.task, self.cfg, rec, self.prompts[a.request.id]):
            self.rejected += 1
        self._tick()

    def failed(self, request: Request, reason: str) -> None:
        log.warning("prompt %s: %s", request.id, reason)
        self.failures[request.key] = reason
        self.rejected += 1
        self._tick()

    def retry(self, reason: str) -> None:
        log.debug("retrying: %s", reason)
        self.retries += 1
        self._tick(0)

    def _tick(self, n: int = 1) -> None:
        rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(rejected=self.rejected, retries=self.retries, tok_s=f"{rate:.0f}", refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.bar.close()


@contextlib.contextmanager
def teacher_config(run: Run, cfg: TeacherConfig, needed: bool) -> Iterator[TeacherConfig]:
    """The teacher config to ask with: with ``teacher.serve`` (and work to do), a llama.cpp server
    on loopback is started for ``teacher.model`` and stopped afterwards."""
    if not cfg.serve or not needed:
        yield cfg
        return
    if cfg.backend != "openai":
        raise ConfigError(f"teacher.serve needs teacher.backend: openai (got {cfg.backend}).",
                          hint="Use backend gguf to run the GGUF in-process instead.")
    if cfg.base_url:
        raise ConfigError("teacher.serve starts its own server, but teacher.base_url is set too.",
                          hint="Remove one of them (--set teacher.base_url=null or --set teacher.serve=false).")
    from edgedistill.teacher.serve import serve

    run.logs_dir.mkdir(parents=True, exist_ok=True)
    with serve(cfg.model, n_ctx=cfg.n_ctx, log_path=run.logs_dir / "teacher-server.log") as url:
        yield cfg.model_copy(update={"base_url": url})


def provenance(rec: dict[str, Any]) -> dict[str, Any]:
    keys = ("model", "backend", "endpoint", "params", "usage", "finish_reason", "latency_s", "retries",
            "time", "key")
    return {("teacher_model" if k == "model" else k): rec.get(k) for k in keys}


def _example(prompt: dict[str, Any], req: Request, rec: dict[str, Any] | None) -> dict[str, Any]:
    out = {k: v for k, v in prompt.items() if k not in PROMPT_FIELDS}
    out.update(id=prompt["id"], messages=req.messages, response=rec.get("response") if rec else None,
               answer=prompt.get("answer"), provenance=provenance(rec) if rec else None)
    return out


@dataclass
class Outcome:
    accepted: int = 0
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)
    usage: Counter = field(default_factory=Counter)
    endpoints: Counter = field(default_factory=Counter)


def assemble(recipe: Recipe, requests: dict[str, Request], prompts: dict[str, dict[str, Any]],
             eval_ids: set[str], answers: dict[str, dict[str, Any]], failures: dict[str, str]) -> Outcome:
    """Validate every answer and sort it into train, eval (every eval prompt) and rejected."""
    out = Outcome()
    for pid, req in requests.items():
        rec = answers.get(req.key)
        reason = (failures.get(req.key) or "no_response") if rec is None else validate(
            recipe.task, recipe.teacher, rec, prompts[pid])
        if rec is not None:
            out.usage.update({k: v for k, v in (rec.get("usage") or {}).items() if isinstance(v, int)})
            out.endpoints[rec.get("endpoint") or "?"] += 1
        example = _example(prompts[pid], req, rec)
        if reason:
            out.reasons["request_failed" if reason.startswith("request_failed") else reason] += 1
            out.rejected.append({**example, "reason": reason})
            if pid in eval_ids:
                out.evals.append({**example, "response": None, "rejected": reason})
            continue
        out.accepted += 1
        if pid in eval_ids:
            out.evals.append(example)
        else:
            if rec.get("logprobs") is not None:
                example["logprobs"] = rec["logprobs"]
            out.train.append(example)
    return out


def generate(run: Run, *, force: bool = False) -> None:
    """Ask the teacher every (deduplicated) prompt, validate, and write the train/eval split."""
    recipe = run.recipe
    cfg = recipe.teacher
    source = Path(recipe.data.prompts)
    stage = run.begin("generate", inputs=[source], force=force)
    if stage is None:
        return
    with stage:
        t0 = time.perf_counter()
        prompts_in = load_prompts(source)
        texts = [prompt_text(messages_of(p)) for p in prompts_in]
        prompts, removed = dedupe(prompts_in, texts, recipe.data.near_duplicate_threshold)
        for r in removed:
            log.debug("dropped %s: %s duplicate of %s", r["id"], r["kind"], r["duplicate_of"])
        eval_ids = split_ids([p["id"] for p in prompts], recipe.data.eval_fraction, recipe.seed)
        requests = {p["id"]: make_request(cfg, p) for p in prompts}
        by_id = {p["id"]: p for p in prompts}

        backend = backend_module(cfg.backend)
        with open_log(run.teacher_log) as f:
            cache = read_log(run.teacher_log)
            todo = [r for r in requests.values() if r.key not in cache]
            reused = len(requests) - len(todo)
            if reused:
                log.info("resuming: %d of %d prompts already answered in %s", reused, len(requests),
                         run.rel(run.teacher_log))
            session = None
            try:
                with teacher_config(run, cfg, bool(todo)) as asking:
                    session = Session(f, recipe, cfg, by_id, cache, total=len(requests), done=reused)
                    backend.answer_all(asking, todo, session)
            except EndpointError as err:
                have = sum(1 for r in requests.values() if r.key in cache)
                raise type(err)(err.message, hint=(err.hint + "\n" if err.hint else "") + (
                    f"{have} of {len(requests)} answers are kept in {run.teacher_log}; run the same "
                    "command again to resume with the rest.")) from None
            finally:
                if session is not None:
                    session.close()
        gen_s = time.perf_counter() - t0

        out = assemble(recipe, requests, by_id, eval_ids, cache, session.failures)
        accepted, rejected, train, evals, reasons = out.accepted, out.rejected, out.train, out.evals, out.reasons
        write_jsonl(run.rejected, rejected)  # kept even when the gate below fails: it says why
        ratio = accepted / len(requests)
        stage.metrics.update({
            "prompts_in": len(prompts_in), "exact_duplicates": sum(r["kind"] == "exact" for r in removed),
            "near_duplicates": sum(r["kind"] == "near" for r in removed), "prompts": len(requests),
            "asked": len(todo), "reused": reused, "accepted": accepted, "rejected": len(rejected),
            "rejected_by_reason": dict(reasons), "accepted_ratio": round(ratio, 4),
            "train": len(train), "eval": len(evals), "retries": session.retries,
            "prompt_tokens": out.usage.get("prompt_tokens", 0),
            "completion_tokens": out.usage.get("completion_tokens", 0),
            "session_completion_tokens": session.tokens, "seconds": round(gen_s, 3),
            "teacher_seconds": round(session.seconds, 3),
            "tokens_per_s": round(session.tokens / session.seconds, 2) if session.tokens else None,
            "endpoints": dict(out.endpoints),
        })
        why = ", ".join(f"{k} {v}" for k, v in reasons.most_common()) or "none"
        log.info("teacher: %d prompts (%d duplicates dropped), %d asked now, %d reused; accepted %d, "
                 "rejected %d (%s); %d retries; %d tokens in %.1f s", len(requests), len(removed), len(todo),
                 reused, accepted, len(rejected), why, session.retries, session.tokens, session.seconds)
        if ratio < cfg.min_success_ratio:
            raise GateFailed(
                f"Only {accepted} of {len(requests)} teacher answers passed validation ({ratio:.0%}, "
                f"under teacher.min_success_ratio {cfg.min_success_ratio:.0%}). Rejected: {why}.",
                hint=f"See {run.rejected}. Raise teacher.max_tokens, change the prompts or teacher, or lower "
                "the bar (--set teacher.min_success_ratio=...); answers already given are reused.")
        stage.record(run.teacher_log)
        stage.record(run.rejected)
        write_jsonl(stage.output(run.prompts), [{**p, "split": "eval" if p["id"] in eval_ids else "train"}
                                                for p in prompts])
        write_jsonl(stage.output(run.train_data), train)
        write_jsonl(stage.output(run.eval_data), evals)
    log.info("Wrote %s (%d) and %s (%d)", run.train_data, len(train), run.eval_data, len(evals))
