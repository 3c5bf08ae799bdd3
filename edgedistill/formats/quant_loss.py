"""Quantization loss: how far a quantized artifact's next-token distribution moved from the merged
student's, measured before any task eval.

On every eval record with a teacher reply, the prompt rendered with the student's chat template
and the reply teacher-forced (read, not generated; up to and including the end-of-turn token):

- ``kld``: mean KL(merged ‖ artifact) over the positions that predict the answer's tokens, with a
  95% bootstrap interval over examples (``kld_ci95``), and ``top1_agreement`` there (the argmax
  tokens are the same);
- ``kld_whole`` / ``top1_agreement_whole``: the same over every position of the chat, as
  llama.cpp's ``perplexity --kl-divergence`` measures it (``tokens`` positions: the shared prefix's
  counted once per chat that starts with it, as if each chat had computed it).

An artifact whose logits are not finite anywhere (NaN or inf: a broken one) gets ``kld: null`` and
``non_finite_positions``, never a NaN in the manifest; the ``max_kld`` gate fails it.

Every runtime feeds the merged model's own token ids (parity already proved each artifact renders
the chat prompt to the same ids). The prefix most chats share (their system turn: 281 of the
support profile's ~370 tokens a chat) is computed once, its key/value cache reused, and so is its
positions' divergence (:func:`shared_prefix`). The merged model's log-probabilities are computed
once per merged model and eval split and kept in RUN/export/.quant-loss-reference/ (float16, the
prefix's rows once: 0.9 GB for a 135M student over that profile's 101 chats).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgedistill.errors import DataError
from edgedistill.formats import prefix_logits

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

BOOTSTRAP = 1000


@dataclass
class Chat:
    id: Any
    ids: list[int]  # prompt + answer, ending with the end-of-turn token
    answer_start: int  # index of the answer's first token in ids
    shared: int = 0  # leading ids that are the shared prefix (0: this chat does not start with it)


def shared_prefix(seqs: list[list[int]]) -> list[int]:
    """The longest run of leading tokens that at least half of ``seqs`` (two at least) start with,
    each keeping a token of its own: the system turn most chats share, even when a few have
    another one. Sorted, sequences with a common prefix are neighbours, so the prefix a window of
    them shares is the one its first and last share."""
    from edgedistill.runtimes.llama_batch import common_prefix

    order = sorted(seqs)
    k = max(2, (len(order) + 1) // 2)
    best, at = max(((common_prefix([order[i], order[i + k - 1]]), i)
                    for i in range(len(order) - k + 1)), default=(0, 0))
    return order[at][:best] if best else []


def _groups(chats: list[Chat]) -> list[tuple[list[int], list[int]]]:
    """(prefix, indices of the chats that continue it): those sharing it, then the rest (none)."""
    with_p = [i for i, c in enumerate(chats) if c.shared]
    prefix = chats[with_p[0]].ids[:chats[with_p[0]].shared] if with_p else []
    rest = [i for i, c in enumerate(chats) if not c.shared]
    return [(p, idx) for p, idx in ((prefix, with_p), ([], rest)) if idx]


def eval_chats(run: Any) -> list[Chat]:
    """The eval split's records with a teacher reply, as the merged student's tokenizer renders
    prompt + reply (none when the run has no eval split)."""
    from transformers import AutoTokenizer

    from edgedistill.data import messages_of, read_jsonl
    from edgedistill.runtimes import eos_ids, hf_chat_ids

    if not run.eval_data.exists():
        return []
    tok = AutoTokenizer.from_pretrained(run.merged_dir)
    eos = eos_ids(run.merged_dir, tok)
    chats = []
    for rec in read_jsonl(run.eval_data):
        if not isinstance(rec.get("response"), str) or not rec["response"].strip():
            continue
        prompt = messages_of(rec)
        while prompt and prompt[-1]["role"] == "assistant":
            prompt = prompt[:-1]
        p_ids = hf_chat_ids(tok, prompt)
        full = _rendered_ids(tok, prompt + [{"role": "assistant", "content": rec["response"]}])
        if full[:len(p_ids)] != p_ids or len(full) <= len(p_ids):
            log.warning("eval record %s: the chat template does not extend the prompt with the "
                        "answer; left out of the quantization loss", rec.get("id"))
            continue
        end = next((i + 1 for i in range(len(p_ids), len(full)) if full[i] in eos), len(full))
        chats.append(Chat(rec.get("id"), full[:end], len(p_ids)))
    prefix = shared_prefix([c.ids for c in chats])
    for c in chats:
        c.shared = len(prefix) if len(c.ids) > len(prefix) and c.ids[:len(prefix)] == prefix else 0
    return chats


def _rendered_ids(tok: Any, messages: list[dict]) -> list[int]:
    ids = tok.apply_chat_template(messages, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def log_softmax(logits: "np.ndarray") -> "np.ndarray":
    import numpy as np

    x = logits.astype(np.float32, copy=False)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


class Reference:
    """The merged student's log-probabilities over the eval chats, cached on disk."""

    def __init__(self, run: Any):
        self.run = run
        self.dir = run.export_dir / ".quant-loss-reference"
        self.chats: list[Chat] | None = None

    def _key(self) -> str:
        from edgedistill.rundir import digest

        return json.dumps([digest(self.run.merged_dir)["sha256"],
                           digest(self.run.eval_data)["sha256"] if self.run.eval_data.exists() else None,
                           "shared-prefix"])  # the layout: a cache from before it is recomputed

    def load(self) -> list[Chat]:
        """The chats, computing and caching the reference when the cache is stale."""
        if self.chats is not None:
            return self.chats
        key = self._key()
        meta = self.dir / "meta.json"
        if meta.exists() and json.loads(meta.read_text()).get("key") == key:
            m = json.loads(meta.read_text())
            self.chats = [Chat(c["id"], c["ids"], c["answer_start"], c["shared"]) for c in m["chats"]]
            return self.chats
        self.chats = eval_chats(self.run)
        if self.chats:
            self._compute(key)
        return self.chats

    def _compute(self, key: str) -> None:
        import shutil

        import numpy as np
        from safetensors.numpy import save_file

        from edgedistill import runtimes

        log.info("quantization loss: the merged student's log-probabilities over %d eval chats "
                 "(%d of them continue a %d-token shared prefix)", len(self.chats),
                 sum(1 for c in self.chats if c.shared), max(c.shared for c in self.chats))
        tensors = {}
        with runtimes.load("hf", self.run.merged_dir) as hf:
            for prefix, idx in _groups(self.chats):
                suffixes = [self.chats[i].ids[len(prefix):] for i in idx]
                for j, logits in prefix_logits.hf_logits(hf.model, prefix, suffixes):
                    name = "prefix" if j < 0 else f"lp_{idx[j]}"
                    tensors[name] = log_softmax(logits if j < 0 else logits[:-1]).astype(np.float16)
        tmp = self.dir.with_name(self.dir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / "logprobs.safetensors"))
        (tmp / "meta.json").write_text(json.dumps({"key": key, "chats": [
            {"id": c.id, "ids": c.ids, "answer_start": c.answer_start, "shared": c.shared}
            for c in self.chats]}))
        shutil.rmtree(self.dir, ignore_errors=True)
        tmp.replace(self.dir)

    def logprobs(self):
        """A reader: ``get_tensor("prefix")`` → float16 log-probabilities [prefix length, vocab] at
        the shared prefix's positions; ``get_tensor(f"lp_{i}")`` → those of chat i's positions
        after it ([len(ids) - 1 - shared, vocab])."""
        from safetensors import safe_open

        return safe_open(str(self.dir / "logprobs.safetensors"), framework="numpy")


def _bootstrap_ratio(num: "np.ndarray", den: "np.ndarray", seed: int = 0) -> list[float]:
    """95% percentile interval of sum(num)/sum(den) with examples resampled."""
    import numpy as np

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), size=(BOOTSTRAP, len(num)))
    stats = num[idx].sum(axis=1) / np.maximum(den[idx].sum(axis=1), 1)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return [round(float(lo), 6), round(float(hi), 6)]


PER_EXAMPLE = "_per_example"


def public(loss: dict[str, Any] | None) -> dict[str, Any] | None:
    """A measurement as recorded: without its per-chat sums."""
    return None if loss is None else {k: v for k, v in loss.items() if k != PER_EXAMPLE}


def paired_difference(a: dict[str, Any], b: dict[str, Any], seed: int = 0) -> dict[str, Any] | None:
    """Answer-position KLD of ``a`` minus that of ``b``, two artifacts measured on the same eval
    chats, with a 95% paired bootstrap interval over the chats (each resample draws the same
    chats for both, so what the chats share cancels out). An upper end below zero: ``a`` is
    measurably closer to the merged student. None when either has no per-chat sums (a broken
    artifact) or they were measured on different chats."""
    import numpy as np

    pa, pb = a.get(PER_EXAMPLE), b.get(PER_EXAMPLE)
    if not pa or not pb or pa["tokens"] != pb["tokens"]:
        return None
    kl = np.asarray(pa["kl"]) - np.asarray(pb["kl"])
    n = np.asarray(pa["tokens"], dtype=float)
    return {"difference": round(float(kl.sum() / max(n.sum(), 1)), 6), "ci95": _bootstrap_ratio(kl, n, seed)}


def _compare(p: "np.ndarray", q: "np.ndarray") -> tuple["np.ndarray", "np.ndarray", int]:
    """Per position: KL(reference log-probabilities ``p`` ‖ artifact logits ``q``), whether their
    argmax agrees; and how many positions hold a non-finite logit."""
    import numpy as np

    width = min(p.shape[1], q.shape[1])
    bad = int((~np.isfinite(q[:, :width])).any(axis=1).sum())
    lq = log_softmax(q[:, :width])
    lp = log_softmax(p[:, :width])  # renormalised after float16 storage: KL stays >= 0
    return (np.exp(lp) * (lp - lq)).sum(axis=1), lp.argmax(axis=1) == lq.argmax(axis=1), bad


def measure(ref: Reference, kind: str, path: Path, calibration: str) -> dict[str, Any] | None:
    """The quantization loss of the artifact at ``path`` (runtime ``kind``) against the merged
    student; None when the run has no eval chats to measure on."""
    import numpy as np

    from edgedistill import runtimes

    chats = ref.load()
    if not chats:
        log.warning("no eval chats with a teacher reply: the quantization loss of %s is not measured",
                    path.name)
        return None
    per = np.zeros((len(chats), 6))  # answer: kl sum, agree, n; whole: kl sum, agree, n
    non_finite = 0
    source = prefix_logits.gguf_logits if kind == "gguf" else prefix_logits.whole_logits
    with runtimes.load(kind, path) as rt, ref.logprobs() as lp_file:
        for prefix, idx in _groups(chats):
            head = None  # the prefix positions' (kl, agree, non-finite), the same in every chat
            for j, q in source(rt, prefix, [chats[i].ids[len(prefix):] for i in idx]):
                if q is None:
                    raise DataError(f"the {kind} runtime exposes no logits; the quantization loss of "
                                    f"{path.name} cannot be measured.")
                if j < 0:
                    head = _compare(lp_file.get_tensor("prefix"), q)
                    continue
                i = idx[j]
                kl, agree, bad = _compare(lp_file.get_tensor(f"lp_{i}"), q[:-1])
                if head is not None:
                    kl, agree, bad = (np.concatenate([head[0], kl]), np.concatenate([head[1], agree]),
                                      head[2] + bad)
                non_finite += bad
                a = slice(chats[i].answer_start - 1, None)
                per[i] = [kl[a].sum(), agree[a].sum(), len(kl[a]), kl.sum(), agree.sum(), len(kl)]
    total = per.sum(axis=0)
    if non_finite:  # a broken artifact: no divergence to report, and no gate may pass it
        log.warning("%s: its logits are not finite at %d of %d positions", path.name, non_finite,
                    int(total[5]))
        return {"kld": None, "kld_ci95": None, "top1_agreement": None, "kld_whole": None,
                "top1_agreement_whole": None, "calibration": calibration, "examples": len(chats),
                "answer_tokens": int(total[2]), "tokens": int(total[5]),
                "non_finite_positions": non_finite}
    return {
        "kld": round(float(total[0] / total[2]), 6),
        "kld_ci95": _bootstrap_ratio(per[:, 0], per[:, 2]),
        # per chat: the answer positions' KL sum and count, for paired comparisons between
        # artifacts (:func:`paired_difference`); not recorded (:func:`public`)
        PER_EXAMPLE: {"kl": per[:, 0].tolist(), "tokens": per[:, 2].astype(int).tolist()},
        "top1_agreement": round(float(total[1] / total[2]), 4),
        "kld_whole": round(float(total[3] / total[5]), 6),
        "top1_agreement_whole": round(float(total[4] / total[5]), 4),
        "calibration": calibration,
        "examples": len(chats),
        "answer_tokens": int(total[2]),
        "tokens": int(total[5]),
    }
