"""One AdamW step on tensors of a student's sizes: torch's default (foreach) against the fused
kernel `edgedistill train` uses (TrainingArguments optim adamw_torch_fused).

    python scripts/bench_optimizer.py [--sizes 168000000,100000000] [--repeats 3]

Defaults: Gemma 3 270M's tied embedding table (262,144 x 640) and the rest of its weights as one
tensor. Prints seconds per step for each and the ratio, measured in this run.
"""

from __future__ import annotations

import argparse
import json
import time


def step_seconds(n: int, fused: bool, repeats: int) -> float:
    import torch

    p = torch.nn.Parameter(torch.randn(n))
    p.grad = torch.randn(n)
    opt = torch.optim.AdamW([p], lr=1e-4, **({"fused": True} if fused else {"foreach": True}))
    opt.step()  # the first step allocates the moments
    t0 = time.perf_counter()
    for _ in range(repeats):
        opt.step()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=f"{262_144 * 640},{100_000_000}")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    out = []
    for n in (int(x) for x in a.sizes.split(",")):
        foreach, fused = step_seconds(n, False, a.repeats), step_seconds(n, True, a.repeats)
        out.append({"weights": n, "foreach_s": round(foreach, 3), "fused_s": round(fused, 3),
                    "speedup": round(foreach / fused, 2)})
        print(f"{n:>12,} weights: foreach {foreach:.3f} s, fused {fused:.3f} s per step ({foreach / fused:.1f}x)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
