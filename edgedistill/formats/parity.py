"""Parity: every artifact proves it is still the student.

Against the merged HF model, on a fixed set of eval prompts: the rendered chat prompt's token ids
(each runtime's own tokenizer and template), greedy token agreement (the common prefix of the two
generations, the end-of-turn counted as a token) and the first divergence, max |logit difference|
at the positions generation reads, with the HF generation teacher-forced through the artifact
(where the runtime exposes logits), and
whether generation stops at the student's end-of-turn token within the limit.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedistill.errors import ArtifactError

log = logging.getLogger(__name__)

FIXED_PROMPTS = (
    "What is 12 + 7? Give only the number.",
    "What is the capital city of France?",
    "Answer yes or no: is 9 a prime number?",
    "Give one short sentence about rivers.",
    "What is the first letter of the word paris?",
    "How many letters are in the word answer?",
)
_STOP = -1  # stands for "stopped at the end-of-turn token" in the compared sequences

# The most a full-precision export's logits may differ from the merged model's (max |Δlogit|,
# teacher-forced on the reference generations), by precision. fp32 exports measured ~2e-4 on
# SmolLM2-135M; an f16 GGUF ~0.1 (weights rounded to 11 bits); bf16 keeps 8 bits, ~8x coarser.
LOGIT_TOLERANCE = {"fp32": 1e-2, "f32": 1e-2, "f16": 0.5, "bf16": 2.0}
# That difference is taken over the logits generation reads: from the prompt's last token on. The
# prompt's own positions are teacher-forced and never sampled from; an f16 GGUF of a trained
# SmolLM2-135M was measured to move logits at the template's second token (where the model puts
# its outsized activations) by up to 3.9 while every position generation reads stayed within
# 0.07. The difference over every position is recorded too (max_abs_logit_diff_all).


@dataclass
class Reference:
    messages: list[dict]
    prompt_ids: list[int]
    token_ids: list[int]
    finish_reason: str
    logits: Any  # np.ndarray [len(prompt_ids) + len(token_ids), vocab]
    eos_ids: list[int]  # the student's end-of-turn ids


def prompts_for(run: Any, n: int) -> list[list[dict]]:
    """The first ``n`` eval prompts as user-side chat messages (fixed prompts when there are none)."""
    from edgedistill.data import messages_of, read_jsonl

    if run.eval_data.exists():
        out = []
        for rec in read_jsonl(run.eval_data):
            msgs = messages_of(rec)
            while msgs and msgs[-1]["role"] == "assistant":
                msgs = msgs[:-1]
            if msgs:
                out.append(msgs)
            if len(out) == n:
                return out
        if out:
            return out
    return [[{"role": "user", "content": p}] for p in FIXED_PROMPTS[:n]]


def reference(merged: Path, prompts: list[list[dict]], max_new_tokens: int) -> list[Reference]:
    """The merged HF model's greedy generations and logits: what every artifact is held to."""
    from edgedistill import runtimes

    refs = []
    with runtimes.load("hf", merged) as hf:
        for msgs in prompts:
            g = hf.generate(msgs, max_new_tokens)
            refs.append(Reference(msgs, g.prompt_ids, g.token_ids, g.finish_reason,
                                  hf.logits(g.prompt_ids + g.token_ids), sorted(hf.eos)))
    return refs


def cached_reference(merged: Path, prompts: list[list[dict]], max_new_tokens: int,
                     cache: Path) -> list[Reference]:
    """``reference``, kept in ``cache`` (a folder: JSON + safetensors, no pickles) for as long as
    the merged model, prompts and limit are the same (export and quantize are separate commands;
    the reference costs as much as both)."""
    from safetensors.numpy import load_file, save_file

    from edgedistill.rundir import digest

    key = json.dumps([digest(merged)["sha256"], prompts, max_new_tokens])
    meta_path, logits_path = cache / "meta.json", cache / "logits.safetensors"
    if meta_path.exists() and logits_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            logits = load_file(str(logits_path))
            return [Reference(r["messages"], r["prompt_ids"], r["token_ids"], r["finish_reason"],
                              logits.get(f"ref_{i}"), r["eos_ids"])
                    for i, r in enumerate(meta["refs"])]
    refs = reference(merged, prompts, max_new_tokens)
    tmp = cache.with_name(cache.name + ".partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({f"ref_{i}": r.logits for i, r in enumerate(refs) if r.logits is not None},
              str(tmp / "logits.safetensors"))
    (tmp / "meta.json").write_text(json.dumps({"key": key, "refs": [
        {"messages": r.messages, "prompt_ids": r.prompt_ids, "token_ids": r.token_ids,
         "finish_reason": r.finish_reason, "eos_ids": r.eos_ids} for r in refs]}))
    if cache.exists():
        import shutil

        shutil.rmtree(cache)
    tmp.replace(cache)
    return refs


def _seq(ids: list[int], finish: str) -> list[int]:
    return ids + ([_STOP] if finish == "stop" else [])


def compare(kind: str, path: Path, refs: list[Reference], max_new_tokens: int) -> dict[str, Any]:
    """Load the artifact with its runtime and measure it against the HF references."""
    import numpy as np

    from edgedistill import runtimes

    agree = total = chat_mismatch = lost_eos = stopped = identical = non_finite = 0
    divergences: list[int | None] = []
    margins: list[float | None] = []
    max_diff: float | None = None
    max_all: float | None = None
    with runtimes.load(kind, path) as rt:
        eos_is_stop = all(rt.is_stop(e) for e in refs[0].eos_ids)
        for ref in refs:
            if rt.chat_prompt_ids(ref.messages) != ref.prompt_ids:
                chat_mismatch += 1
            g = rt.generate(ref.messages, max_new_tokens)
            a, b = _seq(ref.token_ids, ref.finish_reason), _seq(g.token_ids, g.finish_reason)
            common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            agree += common
            total += max(len(a), len(b))
            divergences.append(None if a == b else common)
            margins.append(None if a == b else _margin(ref, a[common], b[common], common))
            identical += a == b
            stopped += g.finish_reason == "stop"
            lost_eos += ref.finish_reason == "stop" and g.finish_reason != "stop"
            logits = rt.logits(ref.prompt_ids + ref.token_ids)
            if logits is not None and not np.isfinite(logits).all():
                non_finite += 1  # a broken artifact: no difference to report (and no NaN in JSON)
            elif logits is not None:
                d, d_all = logit_differences(logits, ref.logits, len(ref.prompt_ids) - 1)
                max_diff = d if max_diff is None else max(max_diff, d)
                max_all = d_all if max_all is None else max(max_all, d_all)
    first = [d for d in divergences if d is not None]
    return {
        "prompts": len(refs),
        "max_new_tokens": max_new_tokens,
        "greedy_token_agreement": round(agree / total, 4) if total else 1.0,
        "identical_generations": identical,
        "first_divergence": min(first) if first else None,
        "divergence_per_prompt": divergences,
        # at each first divergence: the merged model's logit of its own token minus its logit of
        # the artifact's token (a near tie is a margin the measured logit difference explains)
        "divergence_margins": margins,
        "max_abs_logit_diff": None if max_diff is None else float(f"{max_diff:.4g}"),  # where generation reads
        "max_abs_logit_diff_all": None if max_all is None else float(f"{max_all:.4g}"),
        "non_finite_logits": non_finite,  # prompts on which some logit was NaN or inf
        "chat_prompt_ids_match": chat_mismatch == 0,
        "chat_prompt_mismatches": chat_mismatch,
        "eos_is_stop_token": eos_is_stop,
        "stopped_at_eos": stopped,
        "reference_stopped_at_eos": sum(r.finish_reason == "stop" for r in refs),
        "lost_eos": lost_eos,
    }


def logit_differences(logits: "np.ndarray", ref: "np.ndarray", start: int) -> tuple[float, float]:
    """(max |difference| over positions ``start`` on -- the ones generation reads --, max
    |difference| over every position) of two [positions, vocab] logit arrays."""
    import numpy as np

    diff = np.abs(logits - ref)
    return float(diff[start:].max()), float(diff.max())


def _margin(ref: Reference, ref_tok: int, art_tok: int, position: int) -> float | None:
    """The reference's logit of its own choice minus its logit of the artifact's choice at
    generated position ``position`` (_STOP: the best end-of-turn token)."""
    if ref.logits is None:
        return None
    row = ref.logits[len(ref.prompt_ids) - 1 + position]

    def logit(tok: int) -> float:
        return float(max(row[e] for e in ref.eos_ids)) if tok == _STOP else float(row[tok])

    return round(logit(ref_tok) - logit(art_tok), 6)


def _fp_faults(parity: dict[str, Any], tolerance: float) -> list[str]:
    """A full-precision export is the student when its logits are within ``tolerance`` of the
    merged model's and every greedy divergence is a near tie those differences explain: with
    |Δlogit| <= d everywhere, the artifact can only pick another token whose reference logit is
    within 2d of the best. A divergence beyond that (or one where no logits are exposed) is a
    fault, as is a lost end-of-turn that is not such a tie."""
    diff = parity["max_abs_logit_diff"]
    if parity.get("non_finite_logits"):
        return [f"its logits are not finite (NaN or inf) on {parity['non_finite_logits']} of "
                f"{parity['prompts']} prompts"]
    if diff is not None and diff > tolerance:
        return [f"its logits differ from the merged model's by up to {diff:.4g} (tolerance {tolerance:g})"]
    margins = [m for m in parity.get("divergence_margins") or [] if m is not None]
    diverged = parity["prompts"] - parity["identical_generations"]
    explained = diff is not None and len(margins) == diverged and all(m <= 2 * diff + 1e-6 for m in margins)
    if diverged and not explained:
        faults = [f"greedy tokens differ (agreement {parity['greedy_token_agreement']:.3f}, first "
                  f"divergence at token {parity['first_divergence']}) beyond what its logit "
                  f"difference explains"]
        if parity["lost_eos"]:
            faults.append(f"generation ran past the end-of-turn on {parity['lost_eos']} prompts")
        return faults
    return []


def judge(artifact_id: str, parity: dict[str, Any], tolerance: float | None) -> None:
    """Structural faults (a tokenizer that renders the chat prompt differently, an end-of-turn
    token that does not stop generation) fail every artifact. Full-precision artifacts
    (``tolerance``: their LOGIT_TOLERANCE) must also be the student numerically (``_fp_faults``);
    quantized ones (None) only record their numbers, and eval judges them on the task metric."""
    structural, numeric = [], []
    if not parity["chat_prompt_ids_match"]:
        structural.append(f"the chat prompt tokenizes differently on "
                          f"{parity['chat_prompt_mismatches']} of {parity['prompts']} prompts")
    if not parity["eos_is_stop_token"]:
        structural.append("the student's end-of-turn token does not stop generation")
    if parity["lost_eos"]:
        numeric.append(f"generation ran past the end-of-turn on {parity['lost_eos']} prompts")
    if parity["identical_generations"] != parity["prompts"]:
        numeric.append(f"greedy tokens differ (agreement {parity['greedy_token_agreement']:.3f}, "
                       f"first divergence at token {parity['first_divergence']})")
    failed = structural + (_fp_faults(parity, tolerance) if tolerance is not None else [])
    log.info("%s %s: agreement %.3f, max|Δlogit| %s, chat ids %s, stopped %d/%d",
             "✗" if failed else "✓", artifact_id, parity["greedy_token_agreement"],
             parity["max_abs_logit_diff"], "match" if parity["chat_prompt_ids_match"] else "DIFFER",
             parity["stopped_at_eos"], parity["prompts"])
    if failed:
        raise ArtifactError(
            f"{artifact_id} is not the student: " + "; ".join(failed) + ".",
            hint="It is not recorded as an artifact. " + (
                "A full-precision export must reproduce the merged model: its greedy tokens, but "
                "for near ties its logit differences explain." if tolerance is not None
                else "The tokenizer or end-of-turn handling broke in the export."))
    if tolerance is not None and numeric:
        numeric = [f"{', '.join(numeric)}, at near ties (reference margins "
                   f"{[m for m in parity['divergence_margins'] if m is not None]}, within 2 x max|Δlogit|)"]
    for p in numeric:
        log.warning("%s: %s", artifact_id, p)


class Checker:
    """The HF reference, computed once per command and only when some artifact is (re)built."""

    def __init__(self, run: Any):
        self.run, self.recipe, self._refs = run, run.recipe, None

    def check(self, artifact_id: str, kind: str, path: Path, exact: bool) -> dict[str, Any]:
        """Parity of one artifact; ``exact``: a full-precision one, held to the merged model
        within its precision's logit tolerance (LOGIT_TOLERANCE)."""
        exp = self.recipe.export
        if self._refs is None:
            prompts = prompts_for(self.run, exp.parity_prompts)
            self._refs = cached_reference(self.run.merged_dir, prompts, exp.parity_max_new_tokens,
                                          self.run.export_dir / ".parity-reference")
        t0 = time.perf_counter()
        result = compare(kind, path, self._refs, exp.parity_max_new_tokens)
        precision = artifact_id.rsplit("-", 1)[-1]
        judge(artifact_id, result, LOGIT_TOLERANCE[precision] if exact else None)
        result["seconds"] = round(time.perf_counter() - t0, 2)  # comparing, not the reference
        return result
