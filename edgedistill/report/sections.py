"""Report sections about the data: each rung on the extra eval sets (e.g. the same questions
worded differently), and how the training labels were verified. Rows of strings; render.py
lays them out as Markdown or HTML."""

from __future__ import annotations

from typing import Any

SETS_HEAD = ["rung", "eval set", "score", "score 95% CI", "retention", "retention 95% CI", "n"]


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
                         _fmt(s.get("retention")), _interval(s.get("retention_ci95")), _fmt(s.get("eval_n"))])
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
