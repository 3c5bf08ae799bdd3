"""Report sections about the data: each rung on the extra eval sets (e.g. the same questions
worded differently), and how the training labels were verified. Rows of strings; render.py
lays them out as Markdown or HTML."""

from __future__ import annotations

from typing import Any

SETS_HEAD = ["rung", "eval set", "score", "score 95% CI", "retention", "retention 95% CI", "in form", "n"]


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _interval(ci: Any) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "–"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def eval_set_rows(data: dict[str, Any]) -> list[list[str]]:
    named = [("teacher", data["teacher"]), ("student (before)", data["student_base"]),
             ("student (merged)", data["student_merged"])] + [(a["id"], a) for a in data["artifacts"]]
    rows = []
    for label, r in named:
        for name, s in (r.get("eval_sets") or {}).items():
            rows.append([label, name, _fmt(s.get("score")), _interval(s.get("score_ci95")),
                         _fmt(s.get("retention")), _interval(s.get("retention_ci95")), _fmt(s.get("in_form")),
                         _fmt(s.get("eval_n"))])
    return rows


def training_lines(data: dict[str, Any]) -> list[str]:
    """One line per fact about the training labels (empty when generate recorded nothing)."""
    t = data.get("training_data")
    if not t:
        return []
    verified = ", ".join(f"{v} {k}" for k, v in sorted((t.get("verified") or {}).items())) or "none"
    rejected = ", ".join(f"{v} {k}" for k, v in sorted((t.get("rejected_by_reason") or {}).items())) or "none"
    sets = t.get("train_sets") or {}
    lines = [f"{t.get('train')} training examples from {t.get('train_prompts')} train prompts"
             + (f" ({', '.join(f'{v} from train set {k}' for k, v in sorted(sets.items()))})" if sets else "")
             + (f" and {t['synthesized']['kept']} synthesized ones" if t.get("synthesized") else "")
             + f"; verified: {verified}.", f"Not used for training: {rejected}."]
    if t.get("teacher_first_answer_gold_accuracy") is not None:
        lines.append(f"The teacher's first answer matched the gold answer on "
                     f"{t['teacher_first_answer_gold_accuracy']:.1%} of the train prompts that have one.")
    syn = t.get("synthesized")
    if syn:
        d = syn.get("decontamination") or {}
        dropped = ", ".join(f"{v} {k}" for k, v in sorted((syn.get("dropped") or {}).items())) or "none"
        lines.append(f"Synthesized: {syn.get('kept')} kept of {syn.get('parsed')} written (dropped: {dropped}); "
                     f"decontaminated against every eval prompt (word {d.get('ngram')}-gram overlap < "
                     f"{d.get('max_eval_overlap')}, content-word similarity < {d.get('max_eval_content_similarity')}).")
    if t.get("eval_rejected_kept"):
        lines.append(f"{t['eval_rejected_kept']} eval replies failed a check and are scored as the teacher gave them.")
    return lines


JUDGE_HEAD = ["rung", "metric retention", "judge retention [95% CI]", "wins / ties / losses / unscored",
              "swap consistency", "length ratio", "rubric ratio"]
GOLD_JUDGE_HEAD = ["rung", "metric retention", "judged score [95% CI]", "judge retention [95% CI]", "unscored"]


def _judged_rungs(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    teacher = data["teacher"]
    named = [("teacher (resampled)", teacher.get("resample") or {}), ("student (before)", data["student_base"]),
             ("student (merged)", data["student_merged"])] + [(a["id"], a) for a in data["artifacts"]]
    return [(label, r) for label, r in named if r.get("judge_retention") is not None]


def judge_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The judge's view of each judged rung beside the task metric's (empty without a judge)."""
    j = data.get("judge")
    if not j:
        return [], []
    rows = []
    if j["mode"] == "gold":
        t = data["teacher"]
        rows.append(["teacher", "1", f"{_fmt(t.get('judge_score'))} {_interval(t.get('judge_score_ci95'))}", "1",
                     _fmt(t.get("unscored"))])
        for label, r in _judged_rungs(data):
            rows.append([label, _fmt(r.get("retention")),
                         f"{_fmt(r.get('judge_score'))} {_interval(r.get('judge_score_ci95'))}",
                         f"{_fmt(r.get('judge_retention'))} {_interval(r.get('judge_retention_ci95'))}",
                         _fmt((r.get("judge") or {}).get("unscored"))])
        return GOLD_JUDGE_HEAD, rows
    for label, r in _judged_rungs(data):
        v = r.get("judge") or {}
        rows.append([label, _fmt(r.get("retention")),
                     f"{_fmt(r.get('judge_retention'))} {_interval(r.get('judge_retention_ci95'))}",
                     f"{v.get('wins')} / {v.get('ties')} / {v.get('losses')} / {v.get('unscored')}",
                     _fmt(v.get("swap_consistency")), _fmt(v.get("length_ratio")), _fmt(v.get("rubric_ratio"))])
    return JUDGE_HEAD, rows


def judge_lines(data: dict[str, Any]) -> list[str]:
    """Who judged, how far it can be trusted on this run, and what it cost."""
    j, c = data.get("judge"), data.get("judge_calibration")
    if not j or not c:
        return []
    if j["mode"] != "pairwise":
        how = ("each reply against the gold answer: right and in the form asked; judge retention = judged score "
               "/ the teacher's")
    elif j.get("sigma") is not None:
        where = (f"from {j.get('sigma_pairs')} pairs" if j.get("sigma_source") == "run"
                 else "its floor: too few pairs to measure it")
        how = ("each reply against the teacher's, in both orders; a pair's win credit is Φ(q / σ), q the rung's "
               "advantage in log-odds averaged over both orders, σ the run's noise scale "
               f"({_fmt(j['sigma'])}, {where}; the judge's pull toward reply A: {_fmt(j.get('position_bias'))}); "
               "a tie when |q| ≤ σ; judge retention = 2 × mean credit, 1 for a rung as good as the teacher")
    else:
        how = ("each reply against the teacher's, in both orders; credit 1 for a win in both, 0.5 for a verdict "
               "that flips with the order (a tie), 0 for a loss in both; judge retention = 2 × mean credit, "
               "1 for a rung as good as the teacher")
    lines = [f"Judge: {j.get('model')} ({j.get('backend')}, verdicts from {j.get('verdicts_from')}); {how}."]
    if j.get("note"):
        lines.append(f"Note: {j['note']}.")
    known = ", ".join(f"{k}: {v['agreed']}/{v['n']}" for k, v in (c.get("by_expected") or {}).items())
    lines.append(f"Calibration on {c.get('n')} verdicts known in advance ({known or 'none'}): agreement "
                 f"{_fmt(c.get('agreement'))}, Cohen's kappa {_fmt(c.get('kappa'))}" +
                 (f", swap consistency {_fmt(c.get('swap_consistency'))}" if c.get("swap_consistency") is not None
                  else "") + "; " +
                 ("trusted." if c.get("trusted") else f"not trusted: {c.get('reason')}; every judge gate is "
                                                     "indeterminate."))
    cost = j.get("cost") or {}
    if cost.get("seconds") is not None:
        lines.append(f"Cost: {j.get('unique_questions')} unique questions, {cost.get('prompt_tokens')} prompt tokens "
                     f"({_fmt(cost.get('decoded_tokens'))} decoded after sharing prefixes), {cost.get('seconds')} s "
                     "in this run's last judge stage.")
    return lines
