"""The judge: verdicts read from next-token probabilities (a prefix decoded once gives the same
numbers as each prompt decoded whole), a pair's win credit against the run's noise scale (parity
at 1 for an equally good rung, under 1 for a worse one; MT-Bench's swap rule with labels alone),
unparseable verdicts, calibration and its refusal, dedup and resume of RUN/eval/judge/ (an old
verdict log re-read without a question asked), gates on judge retention, and the endpoint path
against a real loopback llama.cpp server."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from edgedistill.config import JudgeConfig
from edgedistill.data import read_jsonl
from edgedistill.judge import pairwise, prompts
from edgedistill.judge import stage as js
from edgedistill.judge.scoring import Question

from test_bench import gguf_artifact, make_run

SYSTEM = "You are the support agent of a small electronics shop. Returns are accepted within 30 days."
CONVS = [
    ({"role": "user", "content": "Can I return headphones I bought two weeks ago?"},
     "Yes: returns are accepted within 30 days. Could you send me your order number?", ["30 days"]),
    ({"role": "user", "content": "How do I reset my password?"},
     "Click 'Forgot password' on the login page and follow the link we email you.", None),
    ({"role": "user", "content": "Where is my order?"},
     "Could you give me your order number so I can check it?", None),
    ({"role": "user", "content": "Can you give me a discount code?"},
     "I'm sorry, I can't create discount codes.", None),
]


def conv_records() -> list[dict]:
    return [{"id": f"c{i}", "messages": [{"role": "system", "content": SYSTEM}, user], "response": reply,
             **({"facts": facts} if facts else {})} for i, (user, reply, facts) in enumerate(CONVS)]


# --- reading verdicts ---------------------------------------------------------------------------------

def test_verdict_from_label_probabilities():
    v = prompts.from_logprobs("pair", {"A": -0.1, "B": -2.5, "C": None})
    assert v["label"] == "A" and v["probs"]["C"] == 0 and sum(v["probs"].values()) == pytest.approx(1)
    r = prompts.from_logprobs("rubric", {"1": None, "2": None, "3": -3.0, "4": -0.7, "5": -0.8})
    assert r["label"] == "4" and 4.0 < r["expected"] < 4.6
    # the judge meant to say something else: no label holds 5% of its probability
    assert prompts.from_logprobs("pair", {"A": -6.0, "B": -7.0, "C": None})["label"] is None


@pytest.mark.parametrize("kind, text, label", [
    ("pair", "B", "B"), ("pair", "Reply A is better.", "A"), ("pair", "I cannot decide", None),
    ("rubric", "4", "4"), ("rubric", "Score: five", None), ("gold", "yes.", "Yes"), ("gold", "", None),
])
def test_verdict_from_a_short_reply(kind, text, label):
    assert prompts.from_text(kind, text)["label"] == label


def _label_only(v1, v2):
    o = pairwise.outcome(v1, v2, None)
    return o["label"], o["consistent"], o["w"]


def test_swap_rule_with_labels_alone():
    """MT-Bench's rule: a win in both orders is a win (credit 1), a verdict that flips with the order
    a tie (0.5), a loss in both a loss (0); an unscored pair is never a win."""
    A, B, C = ({"label": x} for x in "ABC")
    assert _label_only(B, A) == ("win", True, 1.0)      # the rung preferred in both orders
    assert _label_only(A, B) == ("loss", True, 0.0)
    assert _label_only(A, A) == ("tie", False, 0.5)     # the first position preferred both times
    assert _label_only(C, C) == ("tie", True, 0.5)
    assert _label_only(B, None) == ("unscored", None, 0.0)
    assert _label_only({"label": None}, A) == ("unscored", None, 0.0)


def test_a_position_biased_judge_still_tells_the_better_reply_from_both_orders():
    """A judge that answers A most of the time: its label flips with the order (a tie by MT-Bench's
    rule), but the log-odds averaged over both orders still lean to the better reply; how far is
    read against the noise scale sigma."""
    import math

    from scipy.stats import norm

    in_order = {"label": "A", "probs": {"A": 0.90, "B": 0.08, "C": 0.02}}   # the teacher shown first
    swapped = {"label": "A", "probs": {"A": 0.95, "B": 0.04, "C": 0.01}}    # the rung shown first
    q = (math.log(0.95 / 0.04) - math.log(0.90 / 0.08)) / 2                # the rung's advantage, 0.375
    win = pairwise.outcome(in_order, swapped, 0.2)
    assert (win["label"], win["consistent"]) == ("win", False)
    assert win["q"] == pytest.approx(q) and win["w"] == pytest.approx(norm.cdf(q / 0.2))
    loss = pairwise.outcome(swapped, in_order, 0.2)
    assert loss["label"] == "loss" and loss["w"] == pytest.approx(1 - win["w"])
    tie = pairwise.outcome(in_order, swapped, 0.5)                          # |q| within sigma
    assert tie["label"] == "tie" and 0.5 < tie["w"] < win["w"]
    # a label with no probability (absent from the top tokens) is read as the smallest stored one
    sure = pairwise.outcome({"label": "B", "probs": {"A": 0.0, "B": 1.0, "C": 0.0}}, swapped, 0.2)
    assert sure["label"] == "win" and math.isfinite(sure["q"])


def _pair_summary(pairs: dict[str, list[tuple[dict, dict]]], jc: JudgeConfig | None = None) -> dict:
    """The stage's pairwise summary over hand-made verdicts: rung → one (in-order, swapped) pair of
    verdicts per eval conversation (each its own question, as distinct replies are)."""
    n = max(len(v) for v in pairs.values())
    examples = [{"id": f"e{i}", "messages": [{"role": "user", "content": f"q{i}"}], "response": "t"} for i in range(n)]
    per_example, verdicts = {}, {}
    for i, ex in enumerate(examples):
        per_example[ex["id"]] = {"teacher": {}}
        for rung, rows in pairs.items():
            if i < len(rows):
                qs = {role: Question(key=f"{rung}/{ex['id']}/{role}", kind="pair", group=ex["id"], messages=[])
                      for role in ("in_order", "swapped")}
                per_example[ex["id"]][rung] = qs
                verdicts[qs["in_order"].key], verdicts[qs["swapped"].key] = rows[i]
    replies = {rung: {ex["id"]: "r" for ex in examples} for rung in pairs}
    return js.summarize(None, jc or JudgeConfig(), "pairwise", examples, list(pairs), replies, per_example, verdicts)


def _probs_verdict(log_odds: float, tie_p: float = 0.2) -> dict:
    """A verdict whose ln(P(A) / P(B)) is ``log_odds``, with P(C) = ``tie_p``."""
    import math

    pa = (1 - tie_p) / (1 + math.exp(-log_odds))
    probs = {"A": pa, "B": 1 - tie_p - pa, "C": tie_p}
    return {"label": max(probs, key=probs.get), "probs": probs}


def _noisy_judge(advantage: float, n: int, seed: int, bias: float = 0.6, noise: float = 0.3) -> list:
    """n pairs judged by a position-biased judge with symmetric noise: in both orders the log-odds
    are its pull toward A plus noise, and the rung's reply gets ``advantage`` of them."""
    import numpy as np

    e = np.random.default_rng(seed).normal(0.0, noise, size=(n, 2))
    return [(_probs_verdict(bias - advantage + e1), _probs_verdict(bias + advantage + e2)) for e1, e2 in e]


def test_an_equally_good_rung_reaches_parity_and_a_worse_one_does_not():
    """A judge with symmetric noise comparing a rung exactly as good as the teacher: judge retention's
    interval holds 1, where the old (wins + ties) / n stays below 1 (a loss is as likely as a win,
    and only wins and ties counted); a rung the judge prefers the teacher to comes out under 1."""
    s = _pair_summary({"equal": _noisy_judge(0.0, 200, seed=1), "worse": _noisy_judge(-0.25, 200, seed=2)})
    assert s["sigma_source"] == "run" and s["sigma_pairs"] == 400
    assert s["position_bias"] == pytest.approx(0.6, abs=0.05) and s["sigma"] == pytest.approx(0.3 / 2 ** 0.5, rel=0.15)
    equal, worse = s["rungs"]["equal"], s["rungs"]["worse"]
    lo, hi = equal["judge_retention_ci95"]
    assert lo < 1 < hi and equal["judge_retention"] == pytest.approx(1, abs=0.1)
    j = equal["judge"]
    assert j["losses"] > 0 and (j["wins"] + j["ties"]) / j["n"] < 0.9  # the dropped rule
    assert worse["judge_retention_ci95"][1] < 1 and worse["judge"]["losses"] > worse["judge"]["wins"]


def test_labels_alone_give_mt_bench_credit():
    A, B, C = ({"label": x} for x in "ABC")
    s = _pair_summary({"rung": [(B, A), (A, A), (A, B), (C, C)]})  # win, flip, loss, tie
    assert s["sigma"] is None and s["position_bias"] is None
    r = s["rungs"]["rung"]
    assert (r["judge"]["wins"], r["judge"]["ties"], r["judge"]["losses"]) == (1, 2, 1)
    assert r["judge_retention"] == pytest.approx(2 * (1 + 0.5 + 0 + 0.5) / 4)


def test_too_few_pairs_or_no_spread_fall_back_to_the_sigma_floor():
    import math

    tiny = _pair_summary({"rung": _noisy_judge(0.3, 3, seed=0)})
    assert tiny["sigma_source"] == "floor" and tiny["sigma_pairs"] == 3 and tiny["sigma"] == pytest.approx(math.log(2))
    assert 1 < tiny["rungs"]["rung"]["judge_retention"] < 2
    flat = _pair_summary({"rung": _noisy_judge(0.3, 20, seed=0, noise=0.0)})  # a scripted, noiseless judge
    assert flat["sigma_source"] == "floor" and flat["sigma"] == pytest.approx(math.log(2))
    # identical replies are one question (both orders the same key): counted in B, not in sigma
    same = {"label": "A", "probs": {"A": 0.5, "B": 0.3, "C": 0.2}}
    scale = pairwise.noise_scale({("k", "k"): (same, same)})
    assert scale["sigma_pairs"] == 0 and scale["position_bias"] == pytest.approx(math.log(0.5 / 0.3))


def test_a_run_saved_with_the_retired_tie_margin_still_opens():
    assert JudgeConfig.model_validate({"tie_margin": 0.02, "min_agreement": 0.6}).min_agreement == 0.6


def test_required_facts_cap_the_rubric_at_four():
    assert prompts.fact_missing("Returns within 30 days, sure.", ["30 days"]) == []
    assert prompts.fact_missing("Returns within a month.", ["30 days"]) == ["30 days"]
    assert js._rubric_score({"label": "5", "expected": 4.9}, "within a month", ["30 days"]) == 4.0
    assert js._rubric_score({"label": "5", "expected": 4.9}, "within 30 days", ["30 days"]) == 4.9


def test_calibration_agreement_and_kappa():
    c = js.calibration([("tie", "tie"), ("loss", "loss"), ("loss", "tie"), ("tie", "tie")],
                       ["win", "tie", "loss"], 0.7)
    assert c["agreement"] == 0.75 and c["trusted"] and c["n"] == 4
    from sklearn.metrics import cohen_kappa_score

    assert c["kappa"] == pytest.approx(cohen_kappa_score(["tie", "loss", "loss", "tie"], ["tie", "loss", "tie", "tie"]))
    low = js.calibration([("loss", "win"), ("loss", "loss")], ["win", "tie", "loss"], 0.7)
    assert not low["trusted"] and "50%" in low["reason"]


# --- the prefix scorer -------------------------------------------------------------------------------

def test_shared_prefix_scores_equal_whole_prompt_scores(tiny_gguf):
    """Decoding each group's prefix once (and the instructions once across groups) gives the same
    next-token log-probabilities as decoding every prompt whole in a fresh context (an f32 model:
    a quantized one's figures move by ~0.1 with the batch's shape alone, shared prefix or not)."""
    import numpy as np

    from edgedistill.runtimes.llama_batch import next_token_logprobs
    from edgedistill.runtimes.llama_cpp import LlamaCppRuntime

    recs = conv_records()
    rt = LlamaCppRuntime(tiny_gguf, n_ctx=1024)
    try:
        groups = [[rt.chat_prompt_ids(prompts.pair(r["messages"], r["response"], other, None, 64))
                   for other in ("Sure.", "No idea.", r["response"])] for r in recs[:3]]
        labels = [rt.llm.tokenize(x.encode(), add_bos=False, special=False)[0] for x in ("A", "B", "C")]
        got = {}
        stats = next_token_logprobs(rt, groups, labels, lambda g, i, lp: got.__setitem__((g, i), lp), slots=2)
        for g, group in enumerate(groups):
            for i, ids in enumerate(group):
                row = rt.logits(ids)[-1].astype(np.float64)
                lse = row.max() + np.log(np.exp(row - row.max()).sum())
                assert got[(g, i)] == pytest.approx([row[t] - lse for t in labels], abs=2e-3)
    finally:
        rt.close()
    assert stats.prompts == 9 and stats.decoded_tokens < 0.6 * stats.prompt_tokens


# --- the stage, with a scripted judge ------------------------------------------------------------------

@pytest.fixture
def conv_run(tmp_path, tiny_model_dir, smollm2_gguf):
    """A conversation run, eval done: teacher = the SmolLM2 GGUF (in-process), the tiny model as base
    and merged student, the SmolLM2 GGUF as the one artifact."""
    from edgedistill.evaluate.ladder import evaluate

    run = make_run(tmp_path, conv_records(), task="conversation", student={"model": str(tiny_model_dir)},
                   teacher={"backend": "gguf", "model": str(smollm2_gguf), "temperature": 0.7,
                            "max_tokens": 24, "concurrency": 4},
                   eval={"max_new_tokens": 8}, gates={"min_retention": None})
    shutil.copytree(tiny_model_dir, run.merged_dir)
    gguf_artifact(run, smollm2_gguf)
    evaluate(run)
    return run


class Scripted:
    """A judge that answers from a rule over the question (which reply is which is read back from
    the prompt): records every question it is asked."""

    def __init__(self, rule):
        self.rule, self.asked = rule, []

    def __call__(self, recipe, jc, questions, on_verdict, logs_dir):
        for q in questions:
            self.asked.append(q.key)
            on_verdict(q, self.rule(q))
        return {"questions": len(questions), "prompt_tokens": 0, "decoded_tokens": 0, "seconds": 0.01}


def _replies(q) -> tuple[str, str]:
    text = q.messages[1]["content"]
    a = text.split("[Reply A]\n")[1].split("\n\n[Reply B]")[0]
    b = text.split("[Reply B]\n")[1].split("\n\nWhich reply")[0]
    return a, b


def teacher_wins(q, resampled: frozenset = frozenset()):
    """Prefers whichever reply is the teacher's (or its resample's); a tie between two of them;
    grades the teacher's 5 and any other 2."""
    teacher = {r for _, r, _ in CONVS} | resampled
    if q.kind == "rubric":
        reply = q.messages[1]["content"].split("[Reply]\n")[1].split("\n\nGrade")[0]
        return {"label": "5" if reply in teacher else "2", "expected": 5.0 if reply in teacher else 2.0}
    a, b = _replies(q)
    return {"label": "C" if (a in teacher) == (b in teacher) else ("A" if a in teacher else "B")}


def test_the_stage_judges_each_unique_question_once_and_resumes(conv_run, monkeypatch):
    resampled = frozenset(r["prediction"] for r in read_jsonl(conv_run.eval_dir / "teacher_resample.jsonl"))
    judge = Scripted(lambda q: teacher_wins(q, resampled))
    monkeypatch.setattr(js, "ask", judge)
    js.judge(conv_run)
    s = js.load_judge_summary(conv_run)
    log = read_jsonl(conv_run.eval_dir / "judge" / "verdicts.jsonl")
    assert len(log) == len(set(judge.asked)) == len(judge.asked) == s["unique_questions"]
    # the artifact and the resample may repeat replies: one question per unique (prompt, replies)
    per_rung = 3 * len(s["rungs"]) * 4 + 4  # at most two orders + a rubric per rung and example
    assert s["unique_questions"] <= per_rung
    assert set(s["rungs"]) >= {"teacher_resample", "student_base", "gguf-q4_1"}
    base = s["rungs"]["student_base"]
    assert base["judge"]["losses"] + base["judge"]["ties"] + base["judge"]["wins"] == 4
    # labels alone (the scripted judge gives no probabilities): credit 1 / 0.5 / 0, retention 2 * mean
    credit = base["judge"]["wins"] + 0.5 * base["judge"]["ties"]
    assert base["judge"]["losses"] >= 1 and base["judge_retention"] == pytest.approx(2 * credit / 4)
    assert s["sigma"] is None
    assert s["rungs"]["student_merged"]["judge"]["rubric_ratio"] == pytest.approx(0.25)  # (2 - 1) / (5 - 1)
    assert s["rungs"]["student_base"]["judge"]["rubric_n"] == 0  # calibration rungs: pairwise only
    resample = s["rungs"]["teacher_resample"]
    assert resample["judge"]["ties"] == 4 and resample["judge_retention"] == 1.0  # parity
    assert s["calibration"]["n"] == 8 and s["calibration"]["agreement"] >= 0.5
    # every verdict says what it was asked for, every row which verdicts it was read from
    by_key = {v["key"]: v for v in log}
    rows = read_jsonl(conv_run.eval_dir / "judge" / "student_base.jsonl")
    assert {r["rung"] for r in rows} == {"student_base"} and len(rows) == 4
    for r in rows:
        for role in ("in_order", "swapped"):
            assert by_key[r["keys"][role]]["label"] == r[role]
            assert {"id": r["id"], "rung": "student_base", "role": role} in by_key[r["keys"][role]]["asked_for"]

    # a verdict log written before verdicts said what they were asked for, and a stage entry from
    # an older way of aggregating: re-read and re-aggregated, nothing asked again
    log_path = conv_run.eval_dir / "judge" / "verdicts.jsonl"
    log_path.write_text("".join(json.dumps({k: v for k, v in rec.items() if k != "asked_for"}) + "\n" for rec in log))
    entry = conv_run.read_manifest()["stages"]["judge"]
    with conv_run._manifest() as m:
        m["stages"]["judge"] = {**entry, "config_hash": "an-older-one"}
    judge.asked.clear()
    js.judge(conv_run)
    assert judge.asked == [] and js.load_judge_summary(conv_run)["rungs"] == s["rungs"]
    assert len(read_jsonl(log_path)) == len(log)

    # a rerun with nothing changed: up to date, nothing asked
    judge.asked.clear()
    js.judge(conv_run)
    assert judge.asked == []
    # killed midway (half the log lost, the last line torn): a forced rerun keeps nothing, but a
    # plain rerun after a kill asks only what is missing
    lines = (conv_run.eval_dir / "judge" / "verdicts.jsonl").read_text().splitlines()
    keep = len(lines) // 2
    (conv_run.eval_dir / "judge" / "verdicts.jsonl").write_text("\n".join(lines[:keep]) + "\n" + lines[keep][:17])
    entry = conv_run.read_manifest()["stages"]["judge"]
    with conv_run._manifest() as m:
        m["stages"]["judge"] = {**entry, "status": "running"}
    js.judge(conv_run)
    assert len(judge.asked) == len(lines) - keep
    assert len(read_jsonl(conv_run.eval_dir / "judge" / "verdicts.jsonl")) == len(lines)


def test_unparseable_verdicts_are_unscored_never_wins(conv_run, monkeypatch):
    monkeypatch.setattr(js, "ask", Scripted(lambda q: prompts.from_text(q.kind, "I would rather not say")))
    js.judge(conv_run)
    s = js.load_judge_summary(conv_run)
    for r in s["rungs"].values():
        assert r["judge"]["unscored"] == 4 and r["judge"]["wins"] == r["judge"]["ties"] == 0
        assert r["judge_retention"] == 0 and r["judge"]["rubric_mean"] is None
    assert s["calibration"]["n"] == 0 and not s["calibration"]["trusted"]


def _report(run):
    from edgedistill.report.build import build

    return build(run)


def test_judge_gates_on_the_interval_and_refuse_an_untrusted_judge(conv_run, monkeypatch):
    from edgedistill.report.gates import describe

    resampled = frozenset(r["prediction"] for r in read_jsonl(conv_run.eval_dir / "teacher_resample.jsonl"))
    monkeypatch.setattr(js, "ask", Scripted(lambda q: teacher_wins(q, resampled)))
    conv_run_set = lambda *kv: type(conv_run).open(conv_run.root, list(kv))  # noqa: E731
    run = conv_run_set("gates.min_judge_retention=0.2")
    js.judge(run)
    data = _report(run)
    art = next(a for a in data["artifacts"] if a["id"] == "gguf-q4_1")
    gate = next(c for c in art["gates"]["checks"] if c["gate"] == "min_judge_retention")
    assert gate["value"] == art["judge_retention"] and gate["ci95"] == art["judge_retention_ci95"]
    assert data["judge_calibration"]["trusted"] and data["teacher"]["resample"]["judge_retention"] is not None
    assert data["judge"]["is_teacher"] and "conservative" in data["judge"]["note"]
    from edgedistill.report.render import render_html, render_markdown

    md = render_markdown(data)
    assert "## The judge" in md and "teacher (resampled)" in md and "Cohen's kappa" in md
    row = next(line for line in md.split("## The judge")[1].splitlines() if line.startswith("| gguf-q4_1 |"))
    j = art["judge"]
    assert f"{j['wins']} / {j['ties']} / {j['losses']} / {j['unscored']}" in row
    assert "<h2>The judge</h2>" in render_html(data)

    # a judge that always prefers the first reply: ties everywhere, calibration fails on the
    # base student's pairs (known: the teacher's), and the gate is indeterminate with the reason
    monkeypatch.setattr(js, "ask", Scripted(lambda q: {"label": "A"} if q.kind == "pair" else {"label": "3"}))
    run = conv_run_set("eval.judge.model=biased-judge.gguf")  # another judge: its own verdicts
    js.judge(run)
    data = _report(run)
    assert not data["judge_calibration"]["trusted"]
    art = next(a for a in data["artifacts"] if a["id"] == "gguf-q4_1")
    gate = next(c for c in art["gates"]["checks"] if c["gate"] == "min_judge_retention")
    assert gate["verdict"] == "indeterminate" and "min_agreement" in describe(gate)
    assert art["judge"]["swap_consistency"] == 0.0


def test_gold_tasks_judge_right_and_in_form(tmp_path, tiny_model_dir, smollm2_gguf, monkeypatch):
    """eval.judge: true on a task with gold answers: a judged score against gold beside exact match;
    calibration on the teacher's right replies and every wrong one."""
    from edgedistill.evaluate.ladder import evaluate

    recs = [{"id": f"q{i}", "messages": [{"role": "system", "content": "Reply with the answer only."},
                                          {"role": "user", "content": f"What is {i} + {i}? Answer with the number only."}],
             "response": str(2 * i) if i < 5 else f"The answer is {2 * i}.", "answer": str(2 * i)} for i in range(6)]
    run = make_run(tmp_path, recs, student={"model": str(tiny_model_dir)}, eval={"max_new_tokens": 6, "judge": True},
                   teacher={"backend": "gguf", "model": str(smollm2_gguf), "max_tokens": 8})
    shutil.copytree(tiny_model_dir, run.merged_dir)
    evaluate(run)

    def form(q):  # "right and in the form asked": the bare number
        text = q.messages[1]["content"]
        gold = text.split("[The right answer]\n")[1].split("\n")[0]
        reply = text.split("[Reply]\n")[1]  # the reply comes last, after the question
        return {"label": "Yes" if reply.strip() == gold else "No"}

    monkeypatch.setattr(js, "ask", Scripted(form))
    js.judge(run)
    data = _report(run)
    assert data["teacher"]["score"] == 1.0  # exact match reads "The answer is 10." as right
    assert data["teacher"]["judge_score"] == pytest.approx(5 / 6)  # the judge sees the form
    assert data["judge"]["mode"] == "gold" and data["judge_calibration"]["n"] >= 5


def test_gold_tasks_judge_the_student_before_on_the_calibration_conversations_only(
        tmp_path, tiny_model_dir, smollm2_gguf, monkeypatch):
    """eval.judge.calibration_n on a gold task: the student before distillation (judged for its
    wrong replies, verdicts known in advance) is asked about on the first N examples only; its
    judge retention divides by the teacher's judged score on those same examples."""
    from edgedistill.evaluate.ladder import evaluate

    recs = [{"id": f"q{i:02d}", "messages": [{"role": "user", "content": f"What is {i} + {i}?"}],
             "response": str(2 * i) if i % 3 else "no idea", "answer": str(2 * i)} for i in range(14)]
    run = make_run(tmp_path, recs, student={"model": str(tiny_model_dir)},
                   eval={"max_new_tokens": 4, "judge": {"calibration_n": 10}},
                   teacher={"backend": "gguf", "model": str(smollm2_gguf), "max_tokens": 8})
    shutil.copytree(tiny_model_dir, run.merged_dir)
    evaluate(run)
    scripted = Scripted(lambda q: {"label": "No" if q.messages[1]["content"].endswith("no idea") else "Yes"})
    monkeypatch.setattr(js, "ask", scripted)
    js.judge(run)
    ids = [r["id"] for r in read_jsonl(run.eval_data)]
    rows = {r: read_jsonl(js.judge_dir(run) / f"{r}.jsonl") for r in ("teacher", "student_base", "student_merged")}
    assert [r["id"] for r in rows["student_base"]] == ids[:10]
    assert [r["id"] for r in rows["student_merged"]] == ids and [r["id"] for r in rows["teacher"]] == ids
    summary = js.load_judge_summary(run)
    teacher_yes = [int(i[1:]) % 3 != 0 for i in ids]  # the tiny student's replies are never "no idea"
    assert summary["rungs"]["student_base"]["n"] == 10 and sum(teacher_yes[:10]) < 10
    assert summary["rungs"]["student_base"]["judge_retention"] == pytest.approx(10 / sum(teacher_yes[:10]), abs=1e-6)
    assert summary["teacher"]["judge_score"] == pytest.approx(sum(teacher_yes) / len(ids), abs=1e-6)


# --- a real endpoint -----------------------------------------------------------------------------------

def test_an_endpoint_judge_through_the_teacher_client(conv_run, smollm2_gguf):
    """The judge as an OpenAI-compatible endpoint (llama.cpp's server on loopback): verdicts read
    from the top log-probabilities the server returns; each question asked once."""
    from servers import llama_server

    with llama_server(smollm2_gguf, threads=2) as url:
        run = type(conv_run).open(conv_run.root, [f"eval.judge.backend=openai", f"eval.judge.base_url={url}",
                                                  "eval.judge.model=judge", "eval.judge.concurrency=2",
                                                  "eval.judge.rungs=[student_base]"])
        js.judge(run)
    s = js.load_judge_summary(run)
    log = read_jsonl(run.eval_dir / "judge" / "verdicts.jsonl")
    assert len(log) == s["unique_questions"] and s["judge"]["backend"] == "openai" and not s["judge"]["is_teacher"]
    scored = [v for v in log if v["label"] is not None]
    assert len(scored) >= len(log) // 2 and all(v["probs"] for v in scored if v.get("mass"))


def test_an_unreachable_judge_exits_2_within_seconds(conv_run):
    from click.testing import CliRunner

    from edgedistill.cli import cli
    from servers import closed_port_url

    t0 = time.monotonic()
    res = CliRunner().invoke(cli, ["judge", str(conv_run.root), "--set", "eval.judge.backend=openai",
                                   "--set", f"eval.judge.base_url={closed_port_url()}",
                                   "--set", "eval.judge.model=judge"])
    assert res.exit_code == 2, res.output
    assert time.monotonic() - t0 < 30
    assert "Traceback" not in res.output


def test_the_teacher_is_asked_again_only_on_the_conversations_the_judge_calibrates_on(tmp_path, monkeypatch):
    """eval.judge.calibration_n: the resample is judged on the first N conversations only, so the
    teacher is asked again on those only (the support profile's run: 40 of 101)."""
    from edgedistill.evaluate import ladder

    records = [{**r, "id": f"{r['id']}-{k}"} for k in range(3) for r in conv_records()]
    run = make_run(tmp_path, records, task="conversation", gates={"min_retention": None},
                   eval={"judge": {"calibration_n": 10}})
    asked = []

    def resample(run_, stage, examples):
        asked.extend(ex["id"] for ex in examples)
        return [{"prediction": ex["response"], "finish_reason": "stop"} for ex in examples]

    monkeypatch.setattr(ladder, "_resample", resample)
    monkeypatch.setattr(ladder, "_rungs", lambda run_: [])
    ladder.evaluate(run)
    assert len(records) == 12 and asked == [r["id"] for r in read_jsonl(run.eval_data)][:10]
    summary = ladder.load_summary(run)
    assert summary["rungs"]["teacher_resample"]["n"] == 10 and summary["n"] == 12
