"""Calibration data for GGUF importance matrices and GPTQ, which can never come from the eval split.

``export.quantize.calibration`` picks the source:

- ``none``: data-free quantization only;
- ``task``: the run's train split (RUN/data/train.jsonl, synthesized prompts included): each
  record's prompt turns and teacher answer rendered with the student's chat template, exactly as
  training saw them (edgedistill/train/collate.py);
- ``text:FILE``: generic text to compare against; a .jsonl file of ``{"text": ...}`` records (or of
  chat records with ``messages``/``prompt`` and ``response``), any other file plain text, cut into
  windows of :data:`TEXT_WINDOW` tokens.

Before anything is built, :func:`check_no_leak` refuses a source that holds an eval prompt: the
prompt turns of an eval record (case, spacing and the shared system turn ignored) equal to a
calibration prompt, or, when at least :data:`MIN_CONTAINED` words long, found word for word inside
a calibration text. What the quantizers then use is written to
RUN/export/calibration/calibration.json: the source, the token ids of every sample, their count and
the sha256 of the rendered texts; the ``quantize:calibration`` manifest stage records the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedistill.data import messages_of, read_jsonl
from edgedistill.errors import DataError, StageMissing

log = logging.getLogger(__name__)

TEXT_WINDOW = 128  # tokens per sample of a generic text file


_TOKEN = re.compile(r"\w+|[^\w\s]")
MIN_CONTAINED = 4  # an eval prompt this many tokens long leaks when found inside a calibration text


def normalize(text: str) -> str:
    """Lower case, words and punctuation marks separated by single spaces."""
    return " ".join(_TOKEN.findall(text.lower()))


def prompt_key(messages: list[dict[str, str]]) -> str:
    """What makes a prompt the same prompt: its non-system turns, normalised (every prompt of a
    run shares the system turn, so it cannot tell two prompts apart)."""
    return normalize("\n".join(m["content"] for m in messages
                               if m["role"] not in ("system", "assistant")))


def text_file(spec: str) -> Path | None:
    return Path(spec[len("text:"):]) if spec.startswith("text:") else None


def source_files(run: Any, spec: str) -> list[Path]:
    """The files a calibration source reads (what its stage depends on)."""
    if spec == "task":
        return [run.train_data]
    path = text_file(spec)
    return [path] if path else []


def available(run: Any, spec: str) -> bool:
    """Whether ``spec`` can be served. ``task`` on a run without a train split (a run assembled
    by hand, with no generate stage) falls back to none, and says so; a missing FILE is an error."""
    if spec == "none":
        return False
    if spec == "task":
        if not run.train_data.exists():
            log.warning("export.quantize.calibration is task, but %s has no train split: "
                        "quantizing without calibration data", run.root)
            return False
        return True
    path = text_file(spec)
    if not path.is_file():
        raise DataError(f"export.quantize.calibration names {path}, which does not exist.",
                        hint="Give a text or JSONL file of generic text: "
                             "--set export.quantize.calibration=text:/path/to/file.txt")
    return True


# --- reading a source --------------------------------------------------------------------------

def _chat(rec: dict[str, Any]) -> tuple[list[dict], str] | None:
    if ("messages" in rec or "prompt" in rec) and isinstance(rec.get("response"), str) \
            and rec["response"].strip():
        return messages_of(rec), rec["response"]
    return None


def _raw_samples(run: Any, spec: str) -> list[dict[str, Any]]:
    """``{"id", "prompt": messages | None, "answer" | "text"}`` per sample, before tokenizing."""
    if spec == "task":
        out = []
        for rec in read_jsonl(run.train_data):
            chat = _chat(rec)
            if chat:
                out.append({"id": rec.get("id"), "prompt": chat[0], "answer": chat[1]})
        if not out:
            raise DataError(f"{run.train_data} holds no record with messages and a response to "
                            "calibrate on.", hint=f"Regenerate it: `edgedistill generate "
                            f"{run.config_path} --run-dir {run.root} --force`.")
        return out
    path = text_file(spec)
    if path.suffix == ".jsonl":
        out = []
        for i, rec in enumerate(read_jsonl(path)):
            if isinstance(rec.get("text"), str):
                out.append({"id": rec.get("id", i), "prompt": None, "text": rec["text"]})
            elif _chat(rec):
                prompt, answer = _chat(rec)
                out.append({"id": rec.get("id", i), "prompt": prompt, "answer": answer})
            else:
                raise DataError(f"{path}, record {i + 1}: needs \"text\", or \"messages\"/\"prompt\" "
                                "and \"response\".")
        return out
    return [{"id": path.name, "prompt": None, "text": path.read_text(errors="replace")}]


def check_no_leak(run: Any, spec: str) -> dict[str, Any]:
    """Refuse (DataError, exit 2) a calibration source that holds an eval prompt; before any
    file is written. Returns what was checked."""
    if not run.eval_data.exists():
        return {"eval_prompts": 0, "overlap": 0}
    evals = {}
    for rec in read_jsonl(run.eval_data):
        if "messages" in rec or "prompt" in rec:
            key = prompt_key(messages_of(rec))
            if key:
                evals.setdefault(key, rec.get("id"))
    leaks = []
    for s in _raw_samples(run, spec):
        if s["prompt"] is not None:
            key = prompt_key(s["prompt"])
            hay = normalize(key + "\n" + s["answer"])
            same = evals.get(key)
        else:
            hay, same = normalize(s["text"]), None
        hit = same if same is not None else next(
            (i for k, i in evals.items() if k.count(" ") + 1 >= MIN_CONTAINED and f" {k} " in f" {hay} "),
            None)
        if hit is not None:
            leaks.append((s["id"], hit))
    if leaks:
        shown = ", ".join(f"{c!r} holds eval prompt {e!r}" for c, e in leaks[:5])
        raise DataError(
            f"The calibration data ({spec}) overlaps the eval split in {len(leaks)} sample(s): "
            f"{shown}{' …' if len(leaks) > 5 else ''}. A quantization tuned on the eval prompts "
            "would make every score measured on them optimistic; nothing was quantized.",
            hint="Remove those prompts from the calibration data, or quantize without it: "
                 "--set export.quantize.calibration=none")
    return {"eval_prompts": len(evals), "overlap": 0}


# --- tokenizing what the quantizers see ---------------------------------------------------------

@dataclass
class Calibration:
    source: str
    ids: list[list[int]]  # token ids per sample, as the student's tokenizer gives them
    sample_ids: list[Any]
    sha256: str  # of the rendered texts, in order
    available: int  # samples in the source before selection
    leak_check: dict[str, Any]

    @property
    def tokens(self) -> int:
        return sum(len(i) for i in self.ids)

    def record(self) -> dict[str, Any]:
        return {"source": self.source, "samples": len(self.ids), "of": self.available,
                "tokens": self.tokens, "sha256": self.sha256, "leak_check": self.leak_check}

    def select_tokens(self, budget: int) -> list[list[int]]:
        """Samples spread evenly over the set, at most ``budget`` tokens in all (at least one)."""
        mean = max(1, self.tokens // max(1, len(self.ids)))
        k = max(1, min(len(self.ids), budget // mean))
        while True:
            picked = [self.ids[i] for i in spread(len(self.ids), k)]
            if k == 1 or sum(map(len, picked)) <= budget:
                return [p[:budget] for p in picked]
            k -= 1


def spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over range(n) (the train split is ordered by prompt)."""
    k = min(n, k)
    return sorted({(i * n) // k for i in range(k)})


def build(run: Any, spec: str, max_samples: int, max_length: int) -> Calibration:
    """The calibration samples of ``spec`` as the merged student's tokenizer encodes them."""
    from transformers import AutoTokenizer

    leak = check_no_leak(run, spec)
    tok = AutoTokenizer.from_pretrained(run.merged_dir)
    raw = _raw_samples(run, spec)
    texts, ids, names = [], [], []
    for s in raw:
        if s["prompt"] is not None:
            conv = s["prompt"] + [{"role": "assistant", "content": s["answer"]}]
            texts.append(tok.apply_chat_template(conv, tokenize=False))
            enc = tok.apply_chat_template(conv, tokenize=True)
            enc = enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "input_ids") else enc
            ids.append([int(t) for t in enc][:max_length])
            names.append(s["id"])
        else:
            stream = tok(s["text"], add_special_tokens=False)["input_ids"]
            for start in range(0, len(stream), TEXT_WINDOW):
                window = stream[start:start + TEXT_WINDOW]
                if len(window) >= 8:
                    ids.append(window)
                    texts.append(tok.decode(window))
                    names.append(f"{s['id']}@{start}")
    if not ids:
        raise DataError(f"The calibration source {spec} gave no usable sample.")
    keep = spread(len(ids), max_samples)
    h = hashlib.sha256()
    for i in keep:
        h.update(texts[i].encode() + b"\x00")
    return Calibration(spec, [ids[i] for i in keep], [names[i] for i in keep], h.hexdigest(),
                       len(ids), leak)


def save(cal: Calibration, path: Path) -> None:
    path.write_text(json.dumps({**cal.record(), "sample_ids": cal.sample_ids, "ids": cal.ids}))


def load(path: Path) -> Calibration:
    if not path.exists():
        raise StageMissing(f"{path} does not exist: the calibration stage has not run.",
                           hint="Run `edgedistill quantize RUN` (it writes the calibration first).")
    d = json.loads(path.read_text())
    return Calibration(d["source"], d["ids"], d["sample_ids"], d["sha256"], d["of"], d["leak_check"])
