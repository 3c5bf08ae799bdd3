"""Training step time with eager attention against SDPA, by example length, on this machine.

    python scripts/bench_attention.py [--model pypi:smollm2-135m-instruct] [--steps 8] [--repeats 3]

`train.attention: auto` picks eager attention on a CPU for padded batches whose longest example
is at most edgedistill.train.dev.EAGER_MAX_TOKENS tokens, and SDPA otherwise. This script
measures what that rule rests on: for each shape (example length x batch, about the same tokens
per batch), a full fine-tune step as `edgedistill train` runs it (fp32 weights, the precision
`train.precision: auto` picks, fused AdamW, right padding on half the rows, loss on the last
tokens only), with each attention implementation, taking turns so a busy machine slows both
alike; the median step of the best repeat counts. Prints a table with eager / SDPA step-time
ratios and what auto picks, and ends stdout with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = [(38, 16), (64, 10), (96, 6), (128, 5), (256, 2)]


def hf_dir(model: str) -> str:
    """An HF directory for ``model`` (a pypi:NAME or GGUF student is imported once, as train does)."""
    from edgedistill import models
    from edgedistill.train.student import import_gguf, is_gguf

    if not is_gguf(model):
        return model
    out = Path(tempfile.gettempdir()) / "edgedistill-bench-attention" / Path(models.resolve(model)).stem
    return str(import_gguf(Path(models.resolve(model)), out))


def step_seconds(path: str, impl: str, length: int, batch: int, steps: int, prec: str) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=impl)
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    ids = torch.randint(0, model.config.vocab_size, (batch, length))
    mask = torch.ones_like(ids)
    mask[: batch // 2, -max(length // 8, 1):] = 0  # right padding, as the collator makes it
    tail = max(length // 8, 2)  # the answer: the LM head and loss over the labelled tail only
    labels = ids[:, -tail:].clone()
    labels[mask[:, -tail:] == 0] = -100
    out = []
    for _ in range(steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels, logits_to_keep=tail).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        out.append(time.perf_counter() - t0)
    return out[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pypi:smollm2-135m-instruct", help="student: HF dir, GGUF, pypi:NAME")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per run (after one warm-up step)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per implementation and shape, taking turns")
    ap.add_argument("--shapes", default=",".join(f"{n}x{b}" for n, b in SHAPES),
                    help="LENGTHxBATCH,... (default: about 600 tokens per batch)")
    a = ap.parse_args()

    from edgedistill.train.dev import attention, precision

    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    path = hf_dir(a.model)
    prec = precision("auto")
    rows = []
    for length, batch in shapes:
        best: dict[str, float] = {}
        for _ in range(a.repeats):
            for impl in ("sdpa", "eager"):
                med = statistics.median(step_seconds(path, impl, length, batch, a.steps, prec))
                best[impl] = min(best.get(impl, med), med)
        rows.append({"length": length, "batch": batch, "sdpa_s": round(best["sdpa"], 3),
                     "eager_s": round(best["eager"], 3), "eager_over_sdpa": round(best["eager"] / best["sdpa"], 3),
                     "auto": attention("auto", on_gpu=False, packing=False, longest=length)})
    print(f"model {a.model}; full fine-tune step ({prec}), median of {a.steps} steps, best of {a.repeats} runs")
    print(f"{'tokens x batch':>15}{'SDPA s':>9}{'eager s':>9}{'eager/SDPA':>12}{'auto picks':>12}")
    for r in rows:
        print(f"{r['length']:>8} x {r['batch']:<4}{r['sdpa_s']:>9.3f}{r['eager_s']:>9.3f}"
              f"{r['eager_over_sdpa']:>12.3f}{r['auto']:>12}")
    print(json.dumps({"model": a.model, "precision": prec, "steps": a.steps, "repeats": a.repeats, "rows": rows}))


if __name__ == "__main__":
    main()
