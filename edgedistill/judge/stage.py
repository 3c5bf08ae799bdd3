"""judge: a judge model reads the eval replies, so free-text retention means something.

For each eval conversation the judge compares every judged rung's reply with the teacher's, in
both orders (A/B, then B/A); each pair gets a win credit from the order-averaged log-odds of the
label probabilities, read against the run's own noise scale (:mod:`.pairwise`; with labels alone,
MT-Bench's rule). ``judge_retention = 2 * mean(credit)``, a win rate against the teacher over
parity's 0.5 (1: as good as the teacher), with a 95% bootstrap interval over the conversations; an
unscored pair (the judge named no label) counts as a loss. Each reply (the
teacher's too) is also graded 1-5 against the recipe's rubric, capped at 4 when it misses one of
the record's required ``facts``; ``rubric_ratio`` is (mean - 1) over the teacher's (mean - 1).
On tasks with gold answers (``eval.judge: true``) the judge instead says whether each reply is
right *and* in the form asked; ``judge_retention`` is that judged score over the teacher's.

How far the judge can be trusted is measured on the same run: its verdicts on pairs whose verdict
is known (the teacher against itself resampled: a tie; against the student before distillation:
the teacher's; on gold tasks, the teacher's gold-checked right replies and every rung's wrong
ones) give an agreement rate and Cohen's kappa. Below ``eval.judge.min_agreement`` every
judge-based gate is indeterminate.

RUN/eval/judge/verdicts.jsonl holds every verdict, appended as it arrives and keyed by the hash of
its prompt (with the eval ids, rungs and roles it was asked for): a question asked for two rungs
(identical replies) is asked once, and a run killed in the middle asks only what is missing.
RUN/eval/judge/summary.json holds the figures the report reads, RUN/eval/judge/<rung>.jsonl the
per-conversation outcomes with the keys of their verdicts.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from edgedistill.config import JudgeConfig, Recipe
from edgedistill.data import append_jsonl, content_id, read_jsonl, write_jsonl
from edgedistill.errors import ConfigError, DataError
from edgedistill.judge import prompts
from edgedistill.judge.pairwise import noise_scale, outcome
from edgedistill.judge.scoring import Question, ask, identity
from edgedistill.rundir import Run

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
VERDICTS = "verdicts.jsonl"
RESAMPLE = "teacher_resample"
# rungs judged pairwise for calibration and parity, not graded by the rubric (judging costs)
CALIBRATION_ONLY = ("teacher_resample", "student_base")
SPECIAL_RUNGS = ("teacher_resample", "student_base", "student_merged", "shipped", "artifacts")
AGGREGATION = 2  # how verdicts become figures (2: win credit against the run's noise scale)


def judge_dir(run: Run) -> Path:
    return run.eval_dir / "judge"


def load_judge_summary(run: Run) -> dict[str, Any] | None:
    p = judge_dir(run) / SUMMARY
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def _rung_names(run: Run, jc: JudgeConfig, ladder: dict[str, Any]) -> list[str]:
    """The rungs ``eval.judge.rungs`` names, resolved against the ladder; calibration's two
    (the teacher's resample, the student before) always among them."""
    artifacts = [n for n, r in ladder.items() if r.get("artifact")]
    names: list[str] = []
    for want in jc.rungs:
        if want == "shipped":
            names += [a for a in [_shipped(run, artifacts)] if a]
        elif want == "artifacts":
            names += artifacts
        elif want in ladder:
            names.append(want)
        elif want not in SPECIAL_RUNGS:
            raise ConfigError(f"eval.judge.rungs names {want!r}, which the eval ladder does not hold.",
                              hint=f"Rungs: {', '.join(SPECIAL_RUNGS)}, or an artifact id: "
                                   f"{', '.join(artifacts) or '(none yet)'}.")
    if run.recipe.gates.min_judge_retention is not None:  # a gate on every artifact: judge them all
        names += artifacts
    names += [n for n in (RESAMPLE, "student_base") if n in ladder]
    return list(dict.fromkeys(n for n in names if n != "teacher"))


def _shipped(run: Run, artifacts: list[str]) -> str | None:
    """The artifact a device would ship: the smallest one the ladder scored."""
    from edgedistill.artifacts import list_artifacts

    sizes = {a["id"]: a.get("bytes") or 0 for a in list_artifacts(run)}
    scored = [a for a in artifacts if a in sizes]
    return min(scored, key=lambda a: sizes[a]) if scored else None


def _questions_for(recipe: Recipe, jc: JudgeConfig, judge_id: dict, ex: dict, replies: dict[str, str | None],
                   mode: str, calibrate: bool = True) -> dict[str, dict[str, Question]]:
    """rung → role → Question for one eval example; role: ``in_order``, ``swapped``, ``rubric``,
    ``gold`` (the teacher's own under rung "teacher")."""
    msgs = ex["messages"]
    facts = ex.get("facts")
    rubric_text = jc.rubric or prompts.DEFAULT_RUBRIC
    words = jc.max_reply_tokens

    def q(kind: str, messages: list) -> Question:
        key = content_id({"judge": judge_id, "v": prompts.PROMPT_VERSION, "kind": kind, "messages": messages})
        return Question(key=key, kind=kind, group=str(ex["id"]), messages=messages)

    teacher = ex.get("response")
    out: dict[str, dict[str, Question]] = {}
    if mode == "gold":
        for rung, reply in {"teacher": teacher, **replies}.items():
            if rung in CALIBRATION_ONLY and not calibrate:
                continue
            out[rung] = {"gold": q("gold", prompts.gold(msgs, reply, str(ex["answer"]), words))}
        return out
    out["teacher"] = {"rubric": q("rubric", prompts.rubric(msgs, teacher, facts, rubric_text, words))}
    for rung, reply in replies.items():
        if rung in CALIBRATION_ONLY and not calibrate:
            continue
        out[rung] = {"in_order": q("pair", prompts.pair(msgs, teacher, reply, facts, words, rubric_text)),
                     "swapped": q("pair", prompts.pair(msgs, reply, teacher, facts, words, rubric_text))}
        if rung not in CALIBRATION_ONLY:  # the second view, where it informs a decision
            out[rung]["rubric"] = q("rubric", prompts.rubric(msgs, reply, facts, rubric_text, words))
    return out


def judge(run: Run, *, force: bool = False) -> None:
    """Judge the eval replies of the rungs ``eval.judge.rungs`` names against the teacher's."""
    from edgedistill.evaluate.ladder import SUMMARY as LADDER, eval_examples, load_summary, rung_file
    from edgedistill.teacher.resume_log import open_log, read_log

    recipe = run.recipe
    jc = recipe.eval.judge_config(recipe.task)
    if jc is None:
        log.info("judge: none asked for (eval.judge); retention is the task metric's alone")
        return
    run.require("eval", needed_by="judge")
    ladder = (load_summary(run) or {}).get("rungs", {})
    rungs = _rung_names(run, jc, ladder)
    files = [run.eval_dir / LADDER] + [rung_file(run, "eval", n) for n in rungs]
    stage = run.begin("judge", inputs=files, force=force,
                      config={"judge": jc.model_dump(mode="json"), "rungs": rungs, "aggregation": AGGREGATION,
                              "teacher": recipe.teacher.model_dump(mode="json")})
    if stage is None:
        return
    examples, _ = eval_examples(run, run.eval_data)
    if not examples:
        raise DataError(f"{run.eval_data} has no example to judge.")
    mode = "gold" if all(ex.get("answer") is not None and str(ex["answer"]).strip() for ex in examples) \
        else "pairwise"
    judge_id = identity(recipe, jc)
    replies = {n: {r["id"]: r.get("prediction") for r in read_jsonl(rung_file(run, "eval", n))} for n in rungs}
    calibrated = {ex["id"] for ex in examples[:jc.calibration_n or len(examples)]}
    per_example = {ex["id"]: _questions_for(recipe, jc, {k: judge_id[k] for k in ("backend", "model")}, ex,
                                             {n: replies[n].get(ex["id"]) for n in rungs}, mode,
                                             ex["id"] in calibrated)
                   for ex in examples}
    unique = {q.key: q for qs in per_example.values() for roles in qs.values() for q in roles.values()}
    asked_for: dict[str, list] = {}  # question key -> what it was asked for, written with its verdict
    for ex_id, qs in per_example.items():
        for rung, roles in qs.items():
            for role, q in roles.items():
                asked_for.setdefault(q.key, []).append({"id": ex_id, "rung": rung, "role": role})
    out_dir = judge_dir(run)
    log_path = out_dir / VERDICTS
    with stage:
        verdicts = read_log(log_path) if not force else {}
        if force and log_path.exists():
            log_path.unlink()
        todo = [q for k, q in unique.items() if k not in verdicts]
        log.info("judge: %s (%s) on %d eval examples, rungs %s: %d unique questions, %d already judged",
                 judge_id["model"], mode, len(examples), ", ".join(rungs), len(unique), len(unique) - len(todo))
        with open_log(log_path) as f:
            def on_verdict(q: Question, v: dict[str, Any]) -> None:
                rec = {"key": q.key, "kind": q.kind, "group": q.group, "asked_for": asked_for[q.key], **v}
                append_jsonl(f, rec)
                verdicts[q.key] = rec

            cost = ask(recipe, jc, todo, on_verdict, run.logs_dir)
        stage.record(log_path)
        summary = summarize(recipe, jc, mode, examples, rungs, replies, per_example, verdicts)
        summary.update(judge={**judge_id, "note": _bias_note(judge_id)}, rungs_judged=rungs,
                       unique_questions=len(unique), asked_now=len(todo),
                       cost=_cost(cost, None if force else load_judge_summary(run)))
        for name, rows in summary.pop("_rows").items():
            write_jsonl(stage.output(out_dir / f"{name}.jsonl"), rows)
        stage.output(out_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        stage.metrics.update(mode=mode, unique_questions=len(unique), asked=len(todo),
                             agreement=summary["calibration"]["agreement"], sigma=summary.get("sigma"),
                             judge_retention={n: r["judge_retention"] for n, r in summary["rungs"].items()},
                             seconds=cost["seconds"], prompt_tokens=cost["prompt_tokens"])
    _log_summary(summary)
    log.info("Wrote %s", out_dir / SUMMARY)


def _cost(now: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """What the verdicts in the log cost to ask: this stage's asking added to what the last run of
    it that finished had recorded (a killed run records nothing; --force starts from zero)."""
    before = (previous or {}).get("cost") or {}
    total = {k: (now.get(k) or 0) + (before.get(k) or 0) for k in ("questions", "prompt_tokens", "seconds")}
    decoded = [c.get("decoded_tokens") for c in (now, before) if c]
    total["decoded_tokens"] = sum(d for d in decoded if d) if all(d is not None for d in decoded) else None
    total["seconds"] = round(total["seconds"], 3)
    total["tokens_per_s"] = round(total["prompt_tokens"] / total["seconds"], 1) if total["seconds"] else None
    total["this_run"] = now
    return total


def _bias_note(judge_id: dict[str, Any]) -> str | None:
    if judge_id["is_teacher"]:
        return ("the judge is the teacher: judging its own replies, it favours them, so judge "
                "retention is conservative (set eval.judge.model to use another judge)")
    return None


def _rubric_score(v: dict | None, reply: str | None, facts: list | None) -> float | None:
    if not v or v.get("label") is None:
        return None
    score = float(v.get("expected") or v["label"])
    return min(score, 4.0) if prompts.fact_missing(reply, facts) else score


def summarize(recipe: Recipe, jc: JudgeConfig, mode: str, examples: list[dict], rungs: list[str],
              replies: dict[str, dict], per_example: dict, verdicts: dict[str, dict]) -> dict[str, Any]:
    """The per-rung figures and the judge's calibration, from the verdicts."""
    from edgedistill.evaluate.bootstrap import mean_ci, rung_intervals

    def verdict(ex_id: Any, rung: str, role: str) -> dict | None:
        q = per_example[ex_id].get(rung, {}).get(role)
        return verdicts.get(q.key) if q else None

    def keys(ex_id: Any, rung: str) -> dict[str, str]:  # role -> question key: a row's verdicts
        return {role: q.key for role, q in per_example[ex_id].get(rung, {}).items()}

    out: dict[str, Any] = {"mode": mode, "n": len(examples), "rungs": {}, "_rows": {}}
    calib: list[tuple[str, str]] = []  # (expected, judged)
    if mode == "gold":
        from edgedistill.evaluate.metrics import score_example

        judged, known = {}, {}  # known: question key -> (expected, judged): a reply once, however many rungs gave it
        for rung in ["teacher"] + rungs:
            scores, rows = {}, []
            for ex in (e for e in examples if rung in per_example[e["id"]]):
                reply = ex.get("response") if rung == "teacher" else replies[rung].get(ex["id"])
                v = verdict(ex["id"], rung, "gold")
                label = (v or {}).get("label")
                scores[ex["id"]] = 1.0 if label == "Yes" else 0.0
                right = score_example(recipe.task, reply, str(ex["answer"]), False, ex)["score"] >= 1.0
                if label is not None and (not right or rung == "teacher"):
                    known[per_example[ex["id"]][rung]["gold"].key] = ("Yes" if right else "No", label)
                rows.append({"id": ex["id"], "rung": rung, "judged": label,
                             "p_yes": ((v or {}).get("probs") or {}).get("Yes"), "metric_right": right,
                             "reason": (v or {}).get("reason"), "keys": keys(ex["id"], rung)})
            judged[rung] = scores
            out["_rows"][rung] = rows
        calib += list(known.values())
        teacher_scores = judged["teacher"]
        t_mean = sum(teacher_scores.values()) / len(teacher_scores)
        out["teacher"] = {"judge_score": round(t_mean, 6), "judge_score_ci95": mean_ci(list(teacher_scores.values())),
                          "unscored": sum(1 for r in out["_rows"]["teacher"] if r["judged"] is None)}
        for rung in rungs:
            s = judged[rung]
            mean = sum(s.values()) / len(s)
            t_on = sum(teacher_scores[i] for i in s) / len(s)  # the teacher's on the same examples
            ci = rung_intervals(s, teacher_scores)
            out["rungs"][rung] = {
                "judge_score": round(mean, 6), "judge_score_ci95": ci["score_ci95"],
                "judge_retention": round(mean / t_on, 6) if t_on > 0 else None,
                "judge_retention_ci95": ci["retention_ci95"], "n": ci["n"],
                "judge": {"n": ci["n"], "unscored": sum(1 for r in out["_rows"][rung] if r["judged"] is None)}}
        labels = list(prompts.GOLD_LABELS)
    else:
        t_rubric = []
        t_rows = []
        for ex in examples:
            s = _rubric_score(verdict(ex["id"], "teacher", "rubric"), ex.get("response"), ex.get("facts"))
            t_rows.append({"id": ex["id"], "rung": "teacher", "rubric": s, "keys": keys(ex["id"], "teacher")})
            if s is not None:
                t_rubric.append(s)
        out["_rows"]["teacher"] = t_rows
        t_mean_rubric = sum(t_rubric) / len(t_rubric) if t_rubric else None
        out["teacher"] = {"rubric_mean": _r(t_mean_rubric), "rubric_n": len(t_rubric)}
        pairs = {}  # each distinct pair question of the run, whatever rungs asked it: the noise scale
        for ex in examples:
            for rung in rungs:
                k = keys(ex["id"], rung)
                if "in_order" in k:
                    pairs[(k["in_order"], k["swapped"])] = (verdicts.get(k["in_order"]), verdicts.get(k["swapped"]))
        out.update(noise_scale(pairs))
        for rung in rungs:
            counts: Counter = Counter()
            consistent = scored = 0
            credit, rows, lens_r, lens_t = [], [], [], []
            rub = []
            judged_on = [ex for ex in examples if rung in per_example[ex["id"]]]
            for ex in judged_on:
                v1, v2 = verdict(ex["id"], rung, "in_order"), verdict(ex["id"], rung, "swapped")
                o = outcome(v1, v2, out["sigma"])
                label, same = o["label"], o["consistent"]
                counts[label] += 1
                if same is not None:
                    scored += 1
                    consistent += same
                credit.append(2 * o["w"])
                reply = replies[rung].get(ex["id"])
                lens_r.append(len((reply or "").split()))
                lens_t.append(len((ex.get("response") or "").split()))
                s = _rubric_score(verdict(ex["id"], rung, "rubric"), reply, ex.get("facts"))
                if s is not None:
                    rub.append(s)
                rows.append({"id": ex["id"], "rung": rung, "in_order": (v1 or {}).get("label"),
                             "swapped": (v2 or {}).get("label"), "outcome": label, "win_credit": _r(o["w"]),
                             "q": _r(o["q"]), "a1": _r(o["a1"]), "a2": _r(o["a2"]), "swap_consistent": same,
                             "rubric": s, "missing_facts": prompts.fact_missing(reply, ex.get("facts")) or None,
                             "keys": keys(ex["id"], rung)})
                if rung == RESAMPLE and same is not None:
                    calib.append(("tie", label))
                elif rung == "student_base" and same is not None:
                    calib.append(("loss", label))
            out["_rows"][rung] = rows
            n = len(judged_on)
            mean_rub = sum(rub) / len(rub) if rub else None
            out["rungs"][rung] = {
                "judge_retention": round(sum(credit) / n, 6) if n else None, "judge_retention_ci95": mean_ci(credit),
                "n": n,
                "judge": {"n": n, "wins": counts["win"], "ties": counts["tie"], "losses": counts["loss"],
                          "unscored": counts["unscored"],
                          "swap_consistency": round(consistent / scored, 6) if scored else None,
                          "length_ratio": round(sum(lens_r) / sum(lens_t), 6) if sum(lens_t) else None,
                          "length_unit": "words",
                          "rubric_mean": _r(mean_rub), "rubric_n": len(rub),
                          "rubric_ratio": _r((mean_rub - 1) / (t_mean_rubric - 1))
                          if mean_rub is not None and t_mean_rubric and t_mean_rubric > 1 else None}}
        labels = ["win", "tie", "loss"]
    out["calibration"] = calibration(calib, labels, jc.min_agreement)
    return out


def calibration(pairs: list[tuple[str, str]], labels: list[str], min_agreement: float) -> dict[str, Any]:
    """Agreement (accuracy) and Cohen's kappa of the judge's verdicts with the known ones."""
    if not pairs:
        return {"agreement": None, "kappa": None, "n": 0, "trusted": False, "min_agreement": min_agreement,
                "reason": "no pair with a known verdict was judged"}
    from sklearn.metrics import cohen_kappa_score

    expected, judged = [e for e, _ in pairs], [j for _, j in pairs]
    agreement = sum(e == j for e, j in pairs) / len(pairs)
    if len(set(expected) | set(judged)) > 1:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            kappa = float(cohen_kappa_score(expected, judged, labels=labels))
        kappa = None if kappa != kappa else round(kappa, 6)  # NaN: one class on both sides
    else:
        kappa = None
    trusted = agreement >= min_agreement
    by_expected = {e: {"n": sum(1 for x, _ in pairs if x == e),
                       "agreed": sum(1 for x, j in pairs if x == e and j == e)} for e in dict.fromkeys(expected)}
    return {"agreement": round(agreement, 6), "kappa": kappa, "n": len(pairs), "trusted": trusted,
            "min_agreement": min_agreement, "by_expected": by_expected,
            "reason": None if trusted else (f"the judge agreed with {agreement:.0%} of {len(pairs)} known "
                                            f"verdicts, under eval.judge.min_agreement {min_agreement:.0%}")}


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 6)


def _log_summary(s: dict[str, Any]) -> None:
    c = s["calibration"]
    log.info("judge calibration: agreement %s, kappa %s on %d known verdicts%s",
             c["agreement"], c["kappa"], c["n"], "" if c["trusted"] else f" (untrusted: {c['reason']})")
    if s.get("sigma") is not None:
        log.info("judge noise scale: sigma %s (%s, %d pairs), position bias B %s",
                 s["sigma"], s["sigma_source"], s["sigma_pairs"], s["position_bias"])
    for name, r in s["rungs"].items():
        j = r.get("judge") or {}
        ci = r.get("judge_retention_ci95") or [None, None]
        log.info("%-22s judge retention %s [%s, %s]%s", name, r["judge_retention"], ci[0], ci[1],
                 f"  (w/t/l/u {j.get('wins')}/{j.get('ties')}/{j.get('losses')}/{j.get('unscored')}, "
                 f"swap consistency {j.get('swap_consistency')}, rubric ratio {j.get('rubric_ratio')})"
                 if "wins" in j else "")
