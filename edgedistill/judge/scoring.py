"""Asking the judge: a list of questions in, one verdict per question out, through the teacher
backends the project already has.

- ``gguf`` (a local GGUF, in-process): one forward pass per question through llama.cpp with the
  prefix of each conversation's questions decoded once (:func:`edgedistill.runtimes.llama_batch.
  next_token_logprobs`); the verdict is read from the probabilities of the labels;
- ``openai`` (any OpenAI-compatible endpoint) and ``hf``: the teacher client (retries, endpoints,
  ``api_key_env``, concurrency) asked for one token with its top log-probabilities, or, with
  ``eval.judge.logprobs: false``, a short greedy reply that is parsed.

A question the judge could not answer (refused, unparseable, no label among its top tokens) gets
a verdict with ``label: None``: counted as unscored, never as a win.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from edgedistill.config import JudgeConfig, Recipe, TeacherConfig
from edgedistill.judge import prompts
from edgedistill.teacher import Answer, Request, backend_module

log = logging.getLogger(__name__)

TOP_LOGPROBS = 20


@dataclass(frozen=True)
class Question:
    key: str  # a hash of (judge, prompt version, messages): identical questions are asked once
    kind: str  # pair | rubric | gold
    group: str  # questions of one group share their prompt's prefix (one eval conversation)
    messages: list


def judge_teacher(recipe: Recipe, jc: JudgeConfig) -> TeacherConfig:
    """The teacher config the judge is asked through: the teacher's own, with the judge's keys."""
    t = recipe.teacher
    return t.model_copy(update={
        "backend": jc.backend or t.backend, "model": jc.model or t.model,
        "base_url": jc.base_url if jc.base_url is not None else (t.base_url if not jc.model else None),
        "api_key_env": jc.api_key_env or t.api_key_env,
        "serve": t.serve and not jc.model and not jc.base_url,
        "concurrency": jc.concurrency or t.concurrency, "timeout_s": jc.timeout_s,
        "temperature": 0.0, "top_p": None, "seed": 0, "system_prompt": None,
        "max_tokens": 1 if jc.logprobs else 8, "logprobs": TOP_LOGPROBS if jc.logprobs else None,
        "n_ctx": jc.n_ctx,
    })


def identity(recipe: Recipe, jc: JudgeConfig) -> dict[str, Any]:
    """Who judges: backend, model, endpoint(s), and whether the judge is the teacher itself."""
    cfg = judge_teacher(recipe, jc)
    t = recipe.teacher
    return {"backend": cfg.backend, "model": cfg.model, "base_url": cfg.base_url if cfg.backend == "openai" else None,
            "is_teacher": cfg.model == t.model and cfg.backend == t.backend and cfg.base_url == t.base_url,
            "verdicts_from": "next-token probabilities" if jc.logprobs or cfg.backend == "gguf" else "short replies"}


def ask(recipe: Recipe, jc: JudgeConfig, questions: list[Question],
        on_verdict: Callable[[Question, dict[str, Any]], None], logs_dir: Any) -> dict[str, Any]:
    """Every question to the judge; ``on_verdict`` as each is answered. Returns counts and times."""
    if not questions:
        return {"questions": 0, "prompt_tokens": 0, "decoded_tokens": 0, "seconds": 0.0}
    cfg = judge_teacher(recipe, jc)
    if cfg.backend == "gguf":
        return _ask_gguf(cfg, questions, on_verdict)
    return _ask_client(cfg, jc, questions, on_verdict, logs_dir)


# --- a local GGUF ----------------------------------------------------------------------------------

def _label_ids(rt: Any, labels: tuple[str, ...]) -> dict[str, list[int]]:
    """The token ids that start each label (with and without a leading space)."""
    out = {}
    for lab in labels:
        ids = set()
        for text in (lab, " " + lab):
            toks = rt.llm.tokenize(text.encode(), add_bos=False, special=False)
            if toks:
                ids.add(int(toks[0]))
        out[lab] = sorted(ids)
    return out


def _ask_gguf(cfg: TeacherConfig, questions: list[Question],
              on_verdict: Callable[[Question, dict[str, Any]], None]) -> dict[str, Any]:
    from tqdm import tqdm

    from edgedistill.runtimes.llama_batch import next_token_logprobs
    from edgedistill.runtimes.llama_cpp import LlamaCppRuntime
    from edgedistill.teacher.backends.gguf import gguf_path

    path = gguf_path(cfg.model)
    rt = LlamaCppRuntime(path, n_ctx=256)  # its own context is unused: the scorer makes one
    try:
        ids = {kind: _label_ids(rt, labels) for kind, labels in prompts.LABELS.items()}
        vocab = sorted({t for per in ids.values() for toks in per.values() for t in toks})
        where = {t: i for i, t in enumerate(vocab)}
        grouped: dict[str, list[Question]] = {}
        for q in questions:
            grouped.setdefault(q.group, []).append(q)
        # within a group the questions of one kind first, so that neighbours share the most
        groups = [sorted(qs, key=lambda q: q.kind) for qs in grouped.values()]
        token_groups = []
        for qs in groups:
            token_groups.append([rt.chat_prompt_ids(q.messages) for q in qs])
        too_long = max(len(p) for g in token_groups for p in g)
        if too_long > cfg.n_ctx:
            log.warning("the longest judge prompt has %d tokens, over eval.judge.n_ctx %d", too_long, cfg.n_ctx)
        with tqdm(total=len(questions), desc="judge", unit="q", dynamic_ncols=True, disable=None) as bar:
            def done(g: int, i: int, lps: list[float]) -> None:
                q = groups[g][i]
                per = {lab: _logsumexp([lps[where[t]] for t in toks])
                       for lab, toks in ids[q.kind].items()}
                on_verdict(q, prompts.from_logprobs(q.kind, per))
                bar.update(1)

            stats = next_token_logprobs(rt, token_groups, vocab, done, slots=min(cfg.concurrency, 16))
    finally:
        rt.close()
    return {"questions": stats.prompts, "prompt_tokens": stats.prompt_tokens,
            "decoded_tokens": stats.decoded_tokens, "seconds": round(stats.seconds, 3)}


def _logsumexp(values: list[float]) -> float | None:
    """log(sum(exp(values))): a label's probability over the tokens that spell it; None for none."""
    if not values:
        return None
    from scipy.special import logsumexp

    return float(logsumexp(values))


# --- an endpoint or transformers ------------------------------------------------------------------

class _Sink:
    """Receives the backend's answers and turns each into a verdict."""

    def __init__(self, by_key: dict[str, Question], on_verdict: Callable, total: int):
        from tqdm import tqdm

        self.by_key, self.on_verdict = by_key, on_verdict
        self.tokens = 0
        self.bar = tqdm(total=total, desc="judge", unit="q", dynamic_ncols=True, disable=None)

    def answer(self, a: Answer) -> None:
        q = self.by_key[a.request.key]
        self.tokens += a.prompt_tokens or 0
        first = (a.logprobs or [None])[0]
        if first is not None:
            per: dict[str, float | None] = {}
            for lab in prompts.LABELS[q.kind]:
                hits = [e["logprob"] for e in first.get("top_logprobs") or []
                        if _same_label(q.kind, e.get("token"), lab) and e.get("logprob") is not None]
                per[lab] = _logsumexp(hits)
            verdict = prompts.from_logprobs(q.kind, per)
            if verdict["label"] is None:  # nothing among its top tokens: what did it say?
                verdict = {**prompts.from_text(q.kind, a.text), "mass": verdict.get("mass")}
        else:
            verdict = prompts.from_text(q.kind, a.text)
        self.on_verdict(q, {**verdict, "text": (a.text or "")[:40]})
        self.bar.update(1)

    def failed(self, request: Request, reason: str) -> None:
        self.on_verdict(self.by_key[request.key], {"label": None, "probs": None, "reason": reason})
        self.bar.update(1)

    def retry(self, reason: str) -> None:
        log.debug("judge: retrying: %s", reason)


def _same_label(kind: str, token: str | None, label: str) -> bool:
    t = (token or "").strip()
    return t.lower() == label.lower() if kind == "gold" else t == label


def _ask_client(cfg: TeacherConfig, jc: JudgeConfig, questions: list[Question],
                on_verdict: Callable, logs_dir: Any) -> dict[str, Any]:
    from edgedistill.teacher.asking import served

    params = {"temperature": 0.0, "top_p": None, "max_tokens": cfg.max_tokens, "seed": 0,
              "logprobs": cfg.logprobs}
    requests = [Request(key=q.key, id=q.group, messages=q.messages, params=params) for q in questions]
    sink = _Sink({q.key: q for q in questions}, on_verdict, len(questions))
    t0 = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            asking = stack.enter_context(served(cfg, logs_dir))
            backend_module(asking.backend).answer_all(asking, requests, sink)
    finally:
        sink.bar.close()
    return {"questions": len(questions), "prompt_tokens": sink.tokens, "decoded_tokens": None,
            "seconds": round(time.perf_counter() - t0, 3)}
