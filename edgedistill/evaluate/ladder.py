"""eval: the retention ladder on the eval split (and on each ``data.eval_sets`` set).

Rungs, each scored with the task's metric (:mod:`edgedistill.evaluate.metrics`) on the same examples:
the teacher (its answers from ``generate``, never asked again), the student before distillation,
the merged student, and every exported artifact run in its own runtime
(:mod:`edgedistill.runtimes`). The reference of an example is its gold answer when the data has
one, else the teacher's reply; the summary says which. Every rung writes its per-example outputs
and scores to RUN/eval/<rung>.jsonl (RUN/eval/<set>/<rung>.jsonl for an eval set), so each score
can be recomputed; RUN/eval/summary.json holds the corpus scores, ``retention = score / teacher
score`` and their paired-bootstrap 95% intervals (``sets``: the same for each eval set).

A rung whose model, eval settings and data are unchanged since the last eval is reused, so adding
one artifact re-scores only that artifact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from edgedistill.evaluate import metrics
from edgedistill.data import read_jsonl, write_jsonl
from edgedistill.errors import DataError
from edgedistill.artifacts import list_artifacts
from edgedistill.registry import FREE_TEXT_TASKS, kind_of
from edgedistill.rundir import Run, Stage, digest

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
TEACHER, BASE, MERGED = "teacher", "student_base", "student_merged"
RESAMPLE = "teacher_resample"  # the teacher asked again (with a judge): what parity looks like


def reference_of(rec: dict[str, Any]) -> tuple[str, str, bool] | None:
    """(source, reference text, is a full reply) for one eval record; None when it has neither a
    gold answer nor a teacher reply."""
    gold = rec.get("answer")
    if gold is not None and str(gold).strip():
        return "gold", str(gold), False
    if rec.get("response"):
        return "teacher", rec["response"], True
    return None


def eval_examples(run: Run, path: Path) -> tuple[list[dict[str, Any]], int]:
    recipe = run.recipe
    records = read_jsonl(path)
    if recipe.eval.limit:
        records = records[: recipe.eval.limit]
    usable = [r for r in records if reference_of(r) is not None]
    return usable, len(records) - len(usable)


def eval_sets(run: Run) -> dict[str, Path]:
    """The held-out sets to score: ``eval`` (the split) and each ``data.eval_sets`` entry."""
    return {"eval": run.eval_data, **{n: run.eval_set_data(n) for n in run.recipe.data.eval_sets}}


def _score_rows(task: str, examples: list[dict[str, Any]],
                outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for rec, out in zip(examples, outputs):
        source, ref, is_reply = reference_of(rec)
        scores = metrics.score_example(task, out.get("prediction"), ref, is_reply, rec)
        rows.append({"id": rec["id"], "reference_source": source, "reference": ref, **out, **scores})
    return rows


def _generate_all(kind: str, path: Path, examples: list[dict[str, Any]], max_new_tokens: int,
                  label: str, batch_size: int = 16) -> list[dict[str, Any]]:
    """The rung's reply to every example (one load of the model for all of them), generated in
    batches of ``batch_size`` (:meth:`edgedistill.runtimes.Runtime.generate_batch`); an output's
    ``seconds`` is its share of its batch's wall time."""
    from tqdm import tqdm

    from edgedistill import runtimes

    t0 = time.perf_counter()
    with runtimes.load(kind, path) as rt:
        loaded = time.perf_counter() - t0
        with tqdm(total=len(examples), desc=f"eval {label}", unit="ex", leave=False, disable=None) as bar:
            gens = rt.generate_batch([rec["messages"] for rec in examples], max_new_tokens,
                                     batch_size=batch_size, progress=bar.update)
    outputs = [{"prediction": g.text, "finish_reason": g.finish_reason,
                "prompt_tokens": len(g.prompt_ids), "new_tokens": len(g.token_ids),
                "seconds": round(g.seconds, 4)} for g in gens]
    spent = time.perf_counter() - t0 - loaded
    log.info("eval %s: loaded in %.1f s, %d examples in %.1f s (%.2f examples/s, batches of %d)",
             label, loaded, len(examples), spent, len(examples) / spent if spent > 0 else 0.0, batch_size)
    return outputs


def _resample(run: Run, stage: Stage, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The teacher's second reply to each of ``examples``: at ``teacher.temperature`` (at
    ``teacher.sample_temperature`` when that is 0, where a second greedy reply would be the first
    again), through the teacher's backend, every answer in RUN/data/teacher-resample.jsonl as it
    arrives (a killed eval asks only what is missing)."""
    import contextlib

    from edgedistill.teacher.asking import Asker, make_request
    from edgedistill.teacher.resume_log import open_log, read_log

    cfg = run.recipe.teacher
    temperature = cfg.temperature if cfg.temperature > 0 else cfg.sample_temperature
    reqs = [make_request(cfg, rec, sample=RESAMPLE_SAMPLE, temperature=temperature, logprobs=None)
            for rec in examples]
    path = run.data_dir / "teacher-resample.jsonl"
    with open_log(path) as f, contextlib.ExitStack() as stack:
        asker = Asker(f, cfg, read_log(path), run.logs_dir, stack)
        asker.ask(reqs, "a second reply to each eval prompt (the judge's parity check)")
    stage.record(path)
    answered = read_log(path)
    return [{"prediction": (answered.get(r.key) or {}).get("response"),
             "finish_reason": (answered.get(r.key) or {}).get("finish_reason")} for r in reqs]


RESAMPLE_SAMPLE = 1000  # the resample's sample index: a key of its own in the teacher's logs


def _rungs(run: Run) -> list[dict[str, Any]]:
    """What to score besides the teacher: base student, merged student, every artifact."""
    from edgedistill import models
    from edgedistill.train.student import is_gguf, student_path

    recipe = run.recipe
    ref = recipe.student.model
    # a GGUF student is scored as packaged, in llama.cpp (the same weights the HF import
    # dequantizes, several times faster than transformers on a CPU), unless the recipe gives it a
    # chat template of its own (student.chat_template): the imported copy carries that one
    packaged = is_gguf(ref) and recipe.student.chat_template == "model"
    base = ({"kind": "gguf", "path": Path(models.resolve(ref))} if packaged
            else {"kind": "hf", "path": Path(student_path(run))})
    rungs: list[dict[str, Any]] = [{"name": BASE, **base, "model": ref}]
    if (run.merged_dir / "config.json").is_file():
        rungs.append({"name": MERGED, "kind": "hf", "path": run.merged_dir,
                      "model": run.rel(run.merged_dir)})
    else:
        log.warning("no merged student in %s (run `edgedistill merge %s`); the ladder skips it",
                    run.merged_dir, run.root)
    for art in list_artifacts(run):
        rungs.append({"name": art["id"], "kind": kind_of(art["format"]), "path": Path(art["path"]),
                      "model": run.rel(Path(art["path"])), "sha256": art.get("sha256"),
                      "artifact": True})
    return rungs


def _rung_key(rung: dict[str, Any], settings: dict[str, Any]) -> str:
    model = rung.get("sha256") or digest(Path(rung["path"]))["sha256"]
    blob = json.dumps({"model": model, "kind": rung["kind"], **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def evaluate(run: Run, *, force: bool = False) -> None:
    """Score the teacher, the student before and after distillation, and every artifact, on the
    eval split and on every ``data.eval_sets`` set."""
    run.require("generate", needed_by="eval")
    recipe = run.recipe
    task = recipe.task
    rungs = _rungs(run)
    paths = eval_sets(run)
    inputs = list(paths.values()) + [r["path"] for r in rungs if r["name"] != BASE]
    stage = run.begin("eval", inputs=inputs, force=force)
    if stage is None:
        return
    sets = {name: eval_examples(run, path) for name, path in paths.items()}
    if not sets["eval"][0]:
        raise DataError(f"{run.eval_data} has no example with a gold answer or a teacher reply.",
                        hint=f"Re-run `edgedistill generate {run.config_path} --run-dir {run.root} --force`.")
    metric = metrics.primary_metric(task)
    summaries = {name: _new_summary(metric, task, examples, skipped, recipe.eval.max_new_tokens)
                 for name, (examples, skipped) in sets.items()}
    previous = _previous(run)
    with stage:
        for name, (examples, _) in sets.items():
            teacher_rows = _score_rows(task, examples, [
                {"prediction": r.get("response"), "rejected": r.get("rejected"),
                 "finish_reason": (r.get("provenance") or {}).get("finish_reason")} for r in examples])
            _write_rung(run, stage, summaries[name], {"name": TEACHER, "model": recipe.teacher.model,
                                                      "kind": "teacher"}, teacher_rows, task, None, name)
        judge = recipe.eval.judge_config(task)
        if task in FREE_TEXT_TASKS and judge is not None:  # the judge's parity check
            # on the examples the judge calibrates on (the first eval.judge.calibration_n)
            examples = sets["eval"][0][:judge.calibration_n or None]
            _write_rung(run, stage, summaries["eval"], {"name": RESAMPLE, "model": recipe.teacher.model,
                                                        "kind": "teacher"},
                        _score_rows(task, examples, _resample(run, stage, examples)), task, None, "eval")
        for rung in rungs:
            # batch_size: batched replies can differ from one-at-a-time ones where two logits
            # nearly tie (other kernel shapes, other float summation order)
            settings = {"task": task, "max_new_tokens": recipe.eval.max_new_tokens, "metrics_version": 3,
                        "batch_size": recipe.eval.batch_size,
                        "sets": {n: [digest(paths[n])["sha256"], [r["id"] for r in ex]]
                                 for n, (ex, _) in sets.items()}}
            key = _rung_key(rung, settings)
            files = {n: rung_file(run, n, rung["name"]) for n in sets}
            if not force and previous.get(rung["name"], {}).get("key") == key and \
                    all(f.is_file() for f in files.values()):
                log.info("eval %s: unchanged, reusing %s", rung["name"], run.rel(files["eval"]))
                rows = {n: read_jsonl(f) for n, f in files.items()}
            else:
                every = [r for ex, _ in sets.values() for r in ex]
                outputs = iter(_generate_all(rung["kind"], rung["path"], every, recipe.eval.max_new_tokens,
                                             rung["name"], batch_size=recipe.eval.batch_size))
                rows = {n: _score_rows(task, ex, [next(outputs) for _ in ex]) for n, (ex, _) in sets.items()}
            for n in sets:
                _write_rung(run, stage, summaries[n], rung, rows[n], task, key, n)
        for summary in summaries.values():
            _retention(summary)
        summary = summaries.pop("eval")
        if summaries:
            summary["sets"] = summaries
        _write_json(stage.output(run.eval_dir / SUMMARY), summary)
        stage.metrics.update(metric=metric, reference=summary["reference"], n=summary["n"],
                             scores={k: v["score"] for k, v in summary["rungs"].items()},
                             retention={k: v["retention"] for k, v in summary["rungs"].items()},
                             sets={n: {"n": s["n"], "retention": {k: v["retention"] for k, v in s["rungs"].items()}}
                                   for n, s in summaries.items()})
    _log_ladder(summary)
    for name, s in summaries.items():
        log.info("eval set %s:", name)
        _log_ladder(s)
    log.info("Wrote %s", run.eval_dir / SUMMARY)


def _new_summary(metric: str, task: str, examples: list[dict[str, Any]], skipped: int,
                 max_new_tokens: int) -> dict[str, Any]:
    sources = {reference_of(r)[0] for r in examples}
    return {"metric": metric, "task": task,
            "reference": sources.pop() if len(sources) == 1 else "mixed" if sources else None,
            "n": len(examples), "skipped_no_reference": skipped, "max_new_tokens": max_new_tokens,
            "rungs": {}}


def _retention(summary: dict[str, Any]) -> None:
    """retention = score / teacher score per rung, with paired-bootstrap intervals."""
    from edgedistill.evaluate.bootstrap import rung_intervals  # n, score_ci95, retention_ci95

    teacher_score = summary["rungs"][TEACHER]["score"]
    per_example = summary.pop("_per_example")  # {rung: {example id: score}}, from _write_rung
    for name, entry in summary["rungs"].items():
        entry["retention"] = round(entry["score"] / teacher_score, 6) if teacher_score > 0 else None
        entry.update(rung_intervals(per_example[name], per_example[TEACHER]))


def rung_file(run: Run, eval_set: str, rung: str) -> Path:
    return run.eval_dir / (f"{rung}.jsonl" if eval_set == "eval" else f"{eval_set}/{rung}.jsonl")


def _write_rung(run: Run, stage: Stage, summary: dict[str, Any], rung: dict[str, Any],
                rows: list[dict[str, Any]], task: str, key: str | None, eval_set: str = "eval") -> None:
    path = rung_file(run, eval_set, rung["name"])
    write_jsonl(stage.output(path), rows)
    agg = metrics.aggregate(rows, task)
    summary.setdefault("_per_example", {})[rung["name"]] = {r["id"]: r.get("score") for r in rows}
    summary["rungs"][rung["name"]] = {
        "kind": rung["kind"], "model": str(rung.get("model")), "artifact": bool(rung.get("artifact")),
        "score": agg["score"], "metrics": agg, "file": run.rel(path), "key": key,
    }


def _write_json(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(summary, indent=2) + "\n")


def _previous(run: Run) -> dict[str, Any]:
    p = run.eval_dir / SUMMARY
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text()).get("rungs", {})
    except json.JSONDecodeError:
        return {}


def load_summary(run: Run) -> dict[str, Any] | None:
    p = run.eval_dir / SUMMARY
    return json.loads(p.read_text()) if p.is_file() else None


def _log_ladder(summary: dict[str, Any]) -> None:
    log.info("%-24s %10s %10s   (%s vs %s answers, n=%d)", "rung", summary["metric"], "retention",
             summary["metric"], summary["reference"], summary["n"])
    for name, e in summary["rungs"].items():
        ret = "-" if e["retention"] is None else f"{e['retention']:.3f}"
        log.info("%-24s %10.3f %10s", name, e["score"], ret)
