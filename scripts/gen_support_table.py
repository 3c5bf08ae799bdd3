"""Write the README's support table (student family x format) from the results the fast tests
record in docs/support-matrix.json (tests/test_families.py writes it; its last test checks this).

    python -m pytest tests/test_families.py     # re-measure: rewrites docs/support-matrix.json
    python scripts/gen_support_table.py          # rewrite the section in README.md
    python scripts/gen_support_table.py --check  # exit 1 when README.md is out of date
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from generated import between, write_or_check  # scripts/generated.py

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "support-matrix.json"
START, END = "<!-- support-table:start -->", "<!-- support-table:end -->"
COLUMNS = ("onnx-fp32", "onnx-int8", "onnx-int4", "ortgenai-fp32", "ortgenai-int4",
           "gguf-f16", "gguf-q8_0", "gguf-q4_k_m")
ORDER = ("Llama", "Qwen2", "Qwen3", "Mistral", "Granite", "Phi-3", "Phi-3 (LongRoPE)",
         "Gemma 2", "Gemma 3")


def _cell(result: dict, notes: list[str]) -> str:
    if result["status"] == "works":
        return "✓"
    reason = result.get("reason", "")
    if reason not in notes:
        notes.append(reason)
    mark = "refused" if result["status"] == "refused" else "✗"
    return f"{mark} [{notes.index(reason) + 1}]"


METHODS = {"lora": "LoRA", "full": "full"}


def _training(r: dict, notes: list[str]) -> str:
    """The training methods the row went through, each ✓ or ✗ with its note (- not run)."""
    done = r.get("training") or {}
    return " · ".join(f"{label} " + (_cell(done[m], notes) if m in done else "-")
                      for m, label in METHODS.items())


def table(results: dict) -> str:
    notes: list[str] = []
    names = [n for n in ORDER if n in results] + sorted(n for n in results if n not in ORDER)
    lines = ["| family (tiny test model) | tokenizer | trained | " + " | ".join(COLUMNS)
             + " | token ids HF = llama.cpp = ORT GenAI |",
             "|---" * (len(COLUMNS) + 4) + "|"]
    for name in names:
        r = results[name]
        trained = _training(r, notes)
        cells = [_cell(r["artifacts"][c], notes) if c in r["artifacts"] else "" for c in COLUMNS]
        trip = r.get("tokenizer_roundtrip") or {}
        ids = "✓" if trip.get("match") else "✗ (" + ", ".join(trip.get("differ", [])) + ")"
        lines.append(f"| {name} (`{r['architecture']}`) | {r['tokenizer']} | {trained} | " + " | ".join(cells)
                     + f" | {ids} |")
    out = "\n".join(lines) + "\n"
    if notes:
        out += "\n" + "\n".join(f"[{i + 1}] {n}" + "  " for i, n in enumerate(notes)).rstrip() + "\n"
    return out


def render(text: str, results: dict) -> str:
    intro = ("Each row: a tiny random model (hidden 64, 2 layers) built from the family's transformers "
             "config class with a tokenizer of the kind the family ships, LoRA-trained 2 steps, merged, "
             "exported and quantized with every artifact's parity check, and evaluated; and again "
             "with `train.method: full` (one step, every weight), merged and exported to ONNX fp32 "
             "with parity (`tests/test_families.py`, which records "
             "`docs/support-matrix.json`; `python scripts/gen_support_table.py` writes this table). "
             "✓ works; ✗ fails; refused: `edgedistill run` exits 2 before any work, naming family and "
             "format. The last column: the same token ids from the HF tokenizer, llama.cpp and ORT "
             "GenAI on a text with digits, accents, emoji, whitespace runs and special tokens, and "
             "on its chat prompt.\n\n")
    return between(text, START, END, intro + table(results))


def main() -> int:
    new = render(README.read_text(), json.loads(RESULTS.read_text()))
    return write_or_check(README, new, "README.md's support table", "python scripts/gen_support_table.py")


if __name__ == "__main__":
    sys.exit(main())
