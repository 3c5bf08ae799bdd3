"""``edgedistill generate``: the teacher answers the task's prompts, and its answers to the train
prompts are verified before they become training data.

RUN/data/prompts.jsonl      every prompt kept after exact and near-duplicate removal, with its split
                            (train, train:<set> for data.train_sets, eval, eval:<set>, and
                            train:synthesized)
RUN/data/teacher.jsonl      every answer the teacher gave, appended and flushed as it arrives: the
                            resume log, keyed by a hash of (model, params, messages)
RUN/data/synthesized.jsonl  prompts the teacher wrote (data.synthesize), kept or dropped, and why
RUN/data/train.jsonl        verified answers to train prompts, each saying how it was verified
RUN/data/eval.jsonl         every eval prompt with the teacher's reply exactly as it answered (a
                            reply that failed a check is kept and flagged, so the teacher is scored
                            on what it said); RUN/data/eval-<set>.jsonl for each data.eval_sets entry
RUN/data/rejected.jsonl     answers that did not become training data, and why

Rounds: (1) one answer to every prompt; (2) synthesis requests and one answer to each new prompt;
(3) more samples for train prompts without a gold answer (``teacher.samples``); (4) more samples for
gold prompts the teacher got wrong, one round per ``teacher.retries_on_wrong``. A run killed at any
moment (kill -9 included) resumes where it stopped: answers in the log are never asked again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from edgedistill.config import Recipe
from edgedistill.data import load_prompts, messages_of, write_jsonl
from edgedistill.errors import DataError, GateFailed
from edgedistill.rundir import Run
from edgedistill.teacher import Request
from edgedistill.teacher import synthesize as synth
from edgedistill.teacher import verify
from edgedistill.teacher.asking import Asker, make_request
from edgedistill.teacher.dedup import dedupe, prompt_text, split_ids
from edgedistill.teacher.resume_log import open_log, read_log

log = logging.getLogger(__name__)

PROMPT_FIELDS = ("id", "prompt", "messages", "answer")


def provenance(rec: dict[str, Any]) -> dict[str, Any]:
    keys = ("model", "backend", "endpoint", "params", "usage", "finish_reason", "latency_s", "retries",
            "time", "key")
    return {("teacher_model" if k == "model" else k): rec.get(k) for k in keys}


def _example(prompt: dict[str, Any], req: Request, rec: dict[str, Any] | None) -> dict[str, Any]:
    out = {k: v for k, v in prompt.items() if k not in PROMPT_FIELDS}
    out.update(id=prompt["id"], messages=req.messages, response=rec.get("response") if rec else None,
               answer=prompt.get("answer"), provenance=provenance(rec) if rec else None)
    return out


def _prompts(recipe: Recipe) -> tuple[list[dict], list[dict], dict[str, list[dict]], list[dict]]:
    """(train, eval, eval sets by name, removed duplicates) after dedup and the split. A train
    prompt too close to a prompt of an eval set is dropped from train, never from the eval set."""
    data = recipe.data
    prompts_in = load_prompts(Path(data.prompts))
    kept, removed = dedupe(prompts_in, [prompt_text(messages_of(p)) for p in prompts_in],
                           data.near_duplicate_threshold)
    eval_ids = split_ids([p["id"] for p in kept], data.eval_fraction, recipe.seed)
    train = [p for p in kept if p["id"] not in eval_ids]
    evals = [p for p in kept if p["id"] in eval_ids]
    sets: dict[str, list[dict]] = {}
    for name, path in data.eval_sets.items():
        rows = [{**p, "id": f"{name}:{p['id']}"} for p in load_prompts(Path(path))]
        sets[name] = rows
        if not train:
            continue
        both = train + rows
        _, dup = dedupe(both, [prompt_text(messages_of(p)) for p in both], data.near_duplicate_threshold)
        in_set = {p["id"] for p in rows}
        # a set prompt that duplicates a train prompt: the train prompt goes (eval is kept whole)
        clash = {d["duplicate_of"] for d in dup if d["id"] in in_set} | {
            d["id"] for d in dup if d["duplicate_of"] in in_set}
        removed += [{"id": i, "duplicate_of": f"eval set {name}", "kind": "eval_set"} for i in clash
                    if i not in in_set]
        train = [p for p in train if p["id"] not in clash]
    held_out = evals + [p for rows in sets.values() for p in rows]
    for name, path in data.train_sets.items():
        rows, dropped = _train_set(recipe, name, Path(path), train, held_out)
        train += rows
        removed += dropped
    return train, evals, sets, removed


TRAIN_SET = "train_sets:"  # the source of a data.train_sets prompt: train_sets:<name>


def train_set_of(prompt: dict) -> str | None:
    """The ``data.train_sets`` name a prompt comes from (None: the prompts file, or synthesized)."""
    source = str(prompt.get("source", ""))
    return source[len(TRAIN_SET):] if source.startswith(TRAIN_SET) else None


def _train_set(recipe: Recipe, name: str, path: Path, train: list[dict], held_out: list[dict]
               ) -> tuple[list[dict], list[dict]]:
    """(kept, removed) prompts of one ``data.train_sets`` file: those that duplicate a train
    prompt (exactly or nearly), or come as close to a held-out prompt as a synthesized prompt may
    not (edgedistill.teacher.synthesize's measures and thresholds), are removed."""
    data, syn = recipe.data, recipe.data.synthesize
    rows = [{**p, "id": f"{name}:{p['id']}", "source": TRAIN_SET + name} for p in load_prompts(path)]
    both = train + rows
    kept, dup = dedupe(both, [prompt_text(messages_of(p)) for p in both], data.near_duplicate_threshold)
    ours = {p["id"] for p in rows}
    removed = [{**d, "kind": f"train_set_{d['kind']}"} for d in dup if d["id"] in ours]
    index = synth.EvalIndex([prompt_text(messages_of(p)) for p in held_out], syn.ngram)
    out = []
    for p in (p for p in kept if p["id"] in ours):
        near_eval, overlap, similar = index.too_close(prompt_text(messages_of(p)), syn)
        if near_eval:
            removed.append({"id": p["id"], "duplicate_of": "a held-out prompt", "kind": "train_set_near_eval",
                            "eval_overlap": round(overlap, 3), "eval_content_similarity": round(similar, 3)})
        else:
            out.append(p)
    return out, removed


def _samples(asker: Asker, cfg: Any, prompt: dict, n: int) -> list[tuple[Request, dict | None]]:
    reqs = [make_request(cfg, prompt, i) for i in range(n)]
    return [(r, asker.cache.get(r.key)) for r in reqs]


def generate(run: Run, *, force: bool = False) -> None:
    """Ask the teacher every (deduplicated) prompt, verify the train answers, write the splits."""
    recipe = run.recipe
    cfg, task = recipe.teacher, recipe.task
    named = [("data.prompts", recipe.data.prompts)] + \
        [(f"data.{key}.{name}", path) for key in ("eval_sets", "train_sets")
         for name, path in getattr(recipe.data, key).items()]
    for key, path in named:
        if not Path(path).is_file():
            raise DataError(f"{key}: {path} does not exist.", hint="Fix the path (a recipe's relative paths are "
                            "read from its folder, a --set one's from the current folder).")
    sources = [Path(path) for _, path in named]
    stage = run.begin("generate", inputs=sources, force=force)
    if stage is None:
        return
    with stage:
        t0 = time.perf_counter()
        train, evals, sets, removed = _prompts(recipe)
        if not train:
            raise DataError(f"{recipe.data.prompts}: no prompt is left to train on after the split.",
                            hint="Lower data.eval_fraction or add prompts.")
        with open_log(run.teacher_log) as f, contextlib.ExitStack() as stack:
            asker = Asker(f, cfg, read_log(run.teacher_log), run.logs_dir, stack)
            if asker.cache:
                log.info("resuming: %d answers already in %s", len(asker.cache), run.rel(run.teacher_log))
            held_out = evals + [p for rows in sets.values() for p in rows]
            asker.ask([make_request(cfg, p) for p in held_out] +
                      [r for p in train for r in _first_requests(cfg, p)],
                      "one answer to every prompt (samples for those without a gold answer)")
            syn = synth.Synthesized()
            syn_reqs = synth.requests(recipe, train)
            if syn_reqs:
                asker.ask(syn_reqs, "new prompts (data.synthesize)")
                syn = synth.select(recipe, [(r, asker.cache.get(r.key)) for r in syn_reqs],
                                   [prompt_text(messages_of(p)) for p in train + held_out],
                                   [prompt_text(messages_of(p)) for p in held_out])
                asker.ask([r for p in syn.kept for r in _first_requests(cfg, p)],
                          f"{cfg.samples} answer(s) to each new prompt")
            pool = train + syn.kept
            wrong = [p for p in pool if p.get("answer") is not None]
            for attempt in range(1, cfg.retries_on_wrong + 1):
                wrong = [p for p in wrong if _gold_verdict(task, cfg, asker, p, attempt).index is None]
                if not wrong:
                    break
                asker.ask([make_request(cfg, p, attempt) for p in wrong],
                          f"retry {attempt} for {len(wrong)} wrong answer(s)")
        out = _assemble(recipe, asker, train, syn.kept, evals, sets)
        ratio = len(out["train"]) / max(len(pool), 1)
        write_jsonl(run.rejected, out["rejected"])  # kept even when the gate below fails: it says why
        from_sets = Counter(name for name in map(train_set_of, train) if name)
        stage.metrics.update({
            "prompts": len(train) - sum(from_sets.values()) + len(evals),
            "duplicates_removed": Counter(r["kind"] for r in removed),
            "train_prompts": len(train), "eval": len(evals), "eval_sets": {k: len(v) for k, v in sets.items()},
            "train_sets": dict(from_sets) or None,
            "synthesized": syn.metrics(recipe) if syn_reqs else None,
            "train": len(out["train"]), "accepted_ratio": round(ratio, 4),
            "verified": dict(Counter(r["verified"] for r in out["train"])),
            "rejected_by_reason": dict(Counter(r["reason"] for r in out["rejected"])),
            "teacher_first_answer_gold_accuracy": out["first_gold_accuracy"],
            "eval_rejected_kept": sum(1 for r in out["eval"] if r.get("rejected")),
            "asked": asker.asked, "reused": asker.reused, "retries": asker.retries,
            "completion_tokens": asker.tokens, "teacher_seconds": round(asker.seconds, 3),
            "tokens_per_s": round(asker.tokens / asker.seconds, 2) if asker.seconds else None,
            "seconds": round(time.perf_counter() - t0, 3),
        })
        why = ", ".join(f"{k} {v}" for k, v in Counter(r["reason"] for r in out["rejected"]).most_common())
        log.info("teacher: %d train prompts (+%d synthesized), %d eval; kept %d verified (%s), "
                 "rejected %d (%s); %d asked, %d reused, %.0f s", len(train), len(syn.kept), len(evals),
                 len(out["train"]), stage.metrics["verified"], len(out["rejected"]), why or "none",
                 asker.asked, asker.reused, asker.seconds)
        if ratio < cfg.min_success_ratio:
            raise GateFailed(
                f"Only {len(out['train'])} of {len(pool)} train prompts got a verified teacher answer "
                f"({ratio:.0%}, under teacher.min_success_ratio {cfg.min_success_ratio:.0%}). Rejected: {why}.",
                hint=f"See {run.rejected}. Raise teacher.max_tokens or teacher.retries_on_wrong, change "
                "the prompts or the teacher, or lower the bar (--set teacher.min_success_ratio=...); "
                "answers already given are reused.")
        stage.record(run.teacher_log)
        stage.record(run.rejected)
        splits = [(p, f"train:{train_set_of(p)}" if train_set_of(p) else "train") for p in train] + \
            [(p, "train:synthesized") for p in syn.kept] + \
            [(p, "eval") for p in evals] + [(p, f"eval:{n}") for n, rows in sets.items() for p in rows]
        write_jsonl(stage.output(run.prompts), [{**p, "split": s} for p, s in splits])
        if syn_reqs:
            write_jsonl(stage.output(run.data_dir / "synthesized.jsonl"), syn.kept + syn.dropped)
        write_jsonl(stage.output(run.train_data), out["train"])
        write_jsonl(stage.output(run.eval_data), out["eval"])
        for name in sets:
            write_jsonl(stage.output(run.eval_set_data(name)), out["sets"][name])
    log.info("Wrote %s (%d) and %s (%d)", run.train_data, len(out["train"]), run.eval_data, len(out["eval"]))


def _first_requests(cfg: Any, prompt: dict) -> list[Request]:
    """A gold train prompt's first answer; every sample of a train prompt without a gold answer,
    asked together so that a batched backend computes their prompt once."""
    n = cfg.samples if prompt.get("answer") is None else 1
    return [make_request(cfg, prompt, i) for i in range(n)]


def _gold_verdict(task: str, cfg: Any, asker: Asker, prompt: dict, n: int) -> verify.Verdict:
    pairs = _samples(asker, cfg, prompt, n)
    texts = [rec.get("response") if verify.check(task, cfg, rec, prompt) is None else None for _, rec in pairs]
    first = verify.check(task, cfg, pairs[0][1], prompt, asker.failures.get(pairs[0][0].key))
    return verify.against_gold(task, texts, prompt, first)


def _held_out(task: str, cfg: Any, asker: Asker, prompt: dict) -> dict[str, Any]:
    req = make_request(cfg, prompt)
    rec = asker.cache.get(req.key)
    example = _example(prompt, req, rec)
    reason = verify.check(task, cfg, rec, prompt, asker.failures.get(req.key))
    return {**example, "rejected": reason} if reason else example


def _assemble(recipe: Recipe, asker: Asker, train: list[dict], synthesized: list[dict],
              evals: list[dict], sets: dict[str, list[dict]]) -> dict[str, Any]:
    task, cfg = recipe.task, recipe.teacher
    out: dict[str, Any] = {"train": [], "rejected": [], "eval": [], "sets": {}}
    first_right = gold_n = 0
    for prompt in train + synthesized:
        gold = prompt.get("answer") is not None
        n = (1 + cfg.retries_on_wrong) if gold else cfg.samples
        pairs = [(r, rec) for r, rec in _samples(asker, cfg, prompt, n) if rec is not None
                 or r.key in asker.failures or r.params.get("sample", 0) == 0]
        checks = [verify.check(task, cfg, rec, prompt, asker.failures.get(r.key)) for r, rec in pairs]
        texts = [rec.get("response") if c is None else None for (_, rec), c in zip(pairs, checks)]
        if gold:
            verdict = verify.against_gold(task, texts, prompt, checks[0])
            gold_n += 1
            first_right += verdict.index == 0
        else:
            verdict = verify.by_vote(task, texts, prompt, cfg.min_agreement, checks[0])
        req, rec = pairs[verdict.index if verdict.index is not None else 0]
        example = {**_example(prompt, req, rec), "source": prompt.get("source", "data"),
                   "verified": verdict.verified, "attempts": len(pairs)}
        if verdict.agreement is not None:
            example["agreement"] = verdict.agreement
        if verdict.index is None:
            out["rejected"].append({**example, "split": "train", "reason": verdict.reason})
            continue
        if rec.get("logprobs") is not None:
            example["logprobs"] = rec["logprobs"]
        out["train"].append(example)
    for prompt in evals:
        out["eval"].append(_held_out(task, cfg, asker, prompt))
    for name, rows in sets.items():
        out["sets"][name] = [_held_out(task, cfg, asker, p) for p in rows]
    for split, rows in [("eval", out["eval"])] + [(f"eval:{n}", r) for n, r in out["sets"].items()]:
        out["rejected"] += [{**r, "split": split, "reason": r["rejected"], "kept_for_scoring": True}
                            for r in rows if r.get("rejected")]
    out["first_gold_accuracy"] = round(first_right / gold_n, 4) if gold_n else None
    return out
