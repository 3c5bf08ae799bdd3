"""Training throughput of `edgedistill train` against a plain padded Trainer baseline.

    python scripts/bench_train.py [--model pypi:smollm2-135m-instruct] [--steps 10] [--batch-size 8]
                                  [--data RUN/data/train.jsonl] [--modes grouped,unshared,...]

Same model, same examples, same number of optimizer steps and batch size; what differs is how a
batch is built and computed:
- edgedistill (length-grouped): `edgedistill train` as shipped (LoRA on every linear layer,
  train.packing: false, train.precision: auto): padded to the longest of a batch, batches of
  similar lengths (Trainer's group_by_length), bf16 autocast where the CPU computes bf16 natively;
- edgedistill (grouped, fp32): the same with --set train.precision=fp32;
- edgedistill (packing): --set train.packing=true: examples packed into one row, position_ids
  restarting per example (block-diagonal attention, no padding);
- edgedistill (full fine-tune): --set train.method=full (every weight);
- full, embeddings frozen: --set train.train_embeddings=false (for Gemma 3's 262k-row vocabulary);
- edgedistill (prefix not shared): --set train.share_prefix=false: every row computes the prompt
  prefix the batch shares (here the chat template's default system turn) itself; and the same
  for the full fine-tune (full, prefix not shared);
- baseline: a plain transformers Trainer, LoRA on q/k/v/o, fp32, DataCollatorForSeq2Seq padding to
  the longest of a random batch (the usual recipe).
The figure that matters is non-padding tokens per second (tokens of real examples / train
runtime); tokens per CPU-second is printed too, as it holds up better on a shared machine. Each mode runs in its own process so its peak RSS is its own. The data: the demo
profile's 300 questions with teacher-like answers, half one-line, half with an explanation of
10-120 words (seeded), so lengths vary as distillation data does; the token length
distribution is printed. ``--data`` trains on a run's own train.jsonl instead (what
`edgedistill generate` wrote: its system prompt and the teacher's answers); ``--modes`` runs
only the modes named (the baseline always runs). Prints a table, and ends stdout with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILLER = ("because the question asks for a single value we compute it step by step and check the "
          "result against the definition given in the prompt so that the final answer is exact and "
          "can be verified by anyone who repeats the same reasoning with the same numbers").split()


def records(data: str | None = None, seed: int = 0) -> list[dict]:
    if data:
        return [json.loads(line) for line in Path(data).read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    out = []
    for line in (ROOT / "profiles" / "data" / "demo.jsonl").read_text().splitlines():
        rec = json.loads(line)
        answer = str(rec["answer"])
        if rng.random() < 0.5:
            words = [rng.choice(FILLER) for _ in range(rng.randint(10, 120))]
            answer = f"{answer}. " + " ".join(words).capitalize() + "."
        out.append({"id": rec["id"], "messages": [{"role": "user", "content": rec["prompt"]}],
                    "response": answer, "answer": str(rec["answer"])})
    return out


MODES = {  # mode → train settings on top of the recipe below (the default recipe: "grouped")
    "grouped": {},
    "grouped-fp32": {"precision": "fp32"},
    "packing": {"packing": True},
    "full": {"method": "full", "learning_rate": 5e-5},
    "unshared": {"share_prefix": False},
    "full-unshared": {"method": "full", "learning_rate": 5e-5, "share_prefix": False},
    "full-frozen-embeddings": {"method": "full", "learning_rate": 5e-5, "train_embeddings": False},
}


def make_run(folder: Path, model: str, args, mode: str):
    import yaml

    from edgedistill.recipes import load_recipe
    from edgedistill.data import write_jsonl
    from edgedistill.rundir import Run

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompts.jsonl").write_text("".join(json.dumps({"id": r["id"], "messages": r["messages"]}) + "\n"
                                                  for r in records(args.data)))
    recipe = {"task": "qa", "data": {"prompts": "prompts.jsonl"},
              "teacher": {"model": "teacher", "base_url": "http://127.0.0.1:9/v1"},
              "student": {"model": model},
              "train": {"max_steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
                        "save_steps": 10_000, "learning_rate": 2e-4, "dev_fraction": 0.0,
                        "lora": {"r": 16, "alpha": 32, "dropout": 0.05}, **MODES[mode]}}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run = Run.create(folder / "run", load_recipe(folder / "recipe.yaml"))
    st = run.begin("generate", force=True)
    with st:
        recs = records(args.data)
        write_jsonl(st.output(run.train_data), recs)
        write_jsonl(st.output(run.eval_data), [])
    return run


def mode_edgedistill(folder: Path, model: str, args, mode: str) -> dict:
    from edgedistill.train.finetune import train

    run = make_run(folder, model, args, mode)
    train(run, force=True)  # every repeat trains again
    m = run.stage_entry("train")["metrics"]
    return {"tokens_per_s": m["tokens_per_s"], "train_runtime_s": m["train_runtime_s"],
            "tokens": m["nonpad_tokens_seen"], "steps": m["steps"], "base": m["base"],
            "precision": m["precision"], "method": m["method"],
            "tokens_per_cpu_s": round(m["nonpad_tokens_seen"] / m["train_cpu_s"], 1)}


def mode_baseline(folder: Path, model: str, args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments,
                              set_seed)

    from edgedistill.train.collate import encode_example
    from edgedistill.train.student import load_tokenizer

    tok = load_tokenizer(model)
    data = [e for e in (encode_example(tok, r, args.max_length) for r in records(args.data)) if e]
    data = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in data]
    set_seed(0)
    net = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, attn_implementation="sdpa")
    net.config.use_cache = False
    net = get_peft_model(net, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    pad = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    seen = {"tokens": 0}

    def collate(batch):
        out = pad(batch)
        seen["tokens"] += int(out["attention_mask"].sum())
        return out

    targs = TrainingArguments(output_dir=str(folder / "out"), per_device_train_batch_size=args.batch_size,
                              max_steps=args.steps, learning_rate=2e-4, save_strategy="no", report_to=[],
                              logging_steps=0.1, seed=0, use_cpu=True, dataloader_num_workers=0)
    cpu0 = cpu_seconds()
    out = Trainer(model=net, args=targs, train_dataset=data, data_collator=collate).train()
    cpu_s = cpu_seconds() - cpu0
    runtime = out.metrics["train_runtime"]
    return {"tokens_per_s": round(seen["tokens"] / runtime, 1), "train_runtime_s": round(runtime, 2),
            "tokens": seen["tokens"], "steps": out.global_step,
            "tokens_per_cpu_s": round(seen["tokens"] / cpu_s, 1)}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(args) -> None:
    folder = Path(args.workdir) / args.mode
    if args.mode == "baseline":
        result = mode_baseline(folder, args.model, args)
    else:
        result = mode_edgedistill(folder, args.model, args, args.mode)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print("RESULT " + json.dumps(result))


def length_stats(model: str, max_length: int, data: str | None) -> dict:
    from edgedistill.train.collate import encode_example
    from edgedistill.train.student import load_tokenizer

    tok = load_tokenizer(model)
    n = sorted(len(e["input_ids"]) for e in (encode_example(tok, r, max_length) for r in records(data)) if e)
    return {"examples": len(n), "mean": round(statistics.mean(n), 1), "p10": n[len(n) // 10],
            "p50": n[len(n) // 2], "p90": n[9 * len(n) // 10], "max": n[-1]}


def spawn(args, mode: str, model: str) -> dict:
    import os

    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    cmd = [sys.executable, __file__, "--child", mode, "--workdir", args.workdir, "--model", model,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--max-length", str(args.max_length)] + (["--data", args.data] if args.data else [])
    t0 = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return {**json.loads(line[7:]), "wall_s": round(time.time() - t0, 1)}


LABELS = {"grouped": "edgedistill (length-grouped)", "grouped-fp32": "edgedistill (grouped, fp32)",
          "packing": "edgedistill (packing)", "full": "edgedistill (full fine-tune)",
          "full-frozen-embeddings": "full, embeddings frozen",
          "unshared": "edgedistill (prefix not shared)", "full-unshared": "full, prefix not shared",
          "baseline": "baseline (padded, random, fp32)"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pypi:smollm2-135m-instruct", help="student: HF dir, GGUF, pypi:NAME")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--data", default=None, help="a run's data/train.jsonl to train on (default: built in)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of: {', '.join(MODES)}")
    p.add_argument("--workdir", default=None)
    p.add_argument("--repeats", type=int, default=2, help="runs per mode, interleaved; the best counts")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each run (default: torch's)")
    p.add_argument("--child", dest="mode", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        return child(args)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        p.error(f"--modes: each of {', '.join(MODES)}")
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench-train-")
    first = spawn(args, modes[0], args.model)  # imports a GGUF student once, into its run
    model = first.pop("base")
    # modes interleaved, each `--repeats` times; the best run of each counts (a shared machine
    # only ever slows a run down)
    runs: dict[str, list[dict]] = {modes[0]: [first], **{m: [] for m in modes[1:]}, "baseline": []}
    for i in range(args.repeats):
        for mode in runs:
            if mode == modes[0] and i == args.repeats - 1:
                continue
            r = spawn(args, mode, model)
            r.pop("base", None)
            runs[mode].append(r)
    best = {k: max(v, key=lambda r: r["tokens_per_s"]) for k, v in runs.items()}
    baseline = best["baseline"]
    stats = length_stats(model, args.max_length, args.data)
    print(f"model {args.model}; data {args.data or 'built in'}; {args.steps} steps x batch {args.batch_size}; "
          f"best of {args.repeats} interleaved runs per mode; example tokens {stats}")
    print(f"{'mode':<32}{'non-pad tok/s':>14}{'tok/CPU-s':>11}{'runtime s':>11}{'tokens':>9}{'peak RSS MB':>13}")
    for mode, r in best.items():
        print(f"{LABELS[mode]:<32}{r['tokens_per_s']:>14.1f}{r['tokens_per_cpu_s']:>11.1f}"
              f"{r['train_runtime_s']:>11.1f}{r['tokens']:>9}{r['peak_rss_mb']:>13.0f}")
    ratios = {k: {"tokens_per_s": round(r["tokens_per_s"] / baseline["tokens_per_s"], 3),
                  "tokens_per_cpu_s": round(r["tokens_per_cpu_s"] / baseline["tokens_per_cpu_s"], 3)}
              for k, r in best.items() if k != "baseline"}
    from edgedistill.config import TrainConfig

    default = "packing" if TrainConfig().packing else "grouped"
    speedup = ratios.get(default, {}).get("tokens_per_s")
    cpu_speedup = ratios.get(default, {}).get("tokens_per_cpu_s")
    if speedup is not None:
        print(f"speed-up of edgedistill train (default: {default}) over the padded baseline: {speedup}x in "
              f"non-padding tokens/s, {cpu_speedup}x per CPU-second (goal >= 1.3x)")

    def ratio(a: str, b: str, what: str) -> None:
        if a in best and b in best:
            print(f"{what}: {best[a]['tokens_per_s'] / best[b]['tokens_per_s']:.2f}x in non-padding tokens/s, "
                  f"{best[a]['tokens_per_cpu_s'] / best[b]['tokens_per_cpu_s']:.2f}x per CPU-second")

    ratio("grouped", "grouped-fp32", "bf16 autocast over fp32 (same LoRA, same batches)")
    ratio("grouped", "unshared", "the shared prompt prefix once per batch over once per row (LoRA)")
    ratio("full", "full-unshared", "the shared prompt prefix once per batch over once per row (full fine-tune)")
    ratio("full-frozen-embeddings", "full", "embeddings frozen over trained (full fine-tune)")
    print(json.dumps({"model": args.model, "data": args.data, "steps": args.steps, "batch_size": args.batch_size,
                      "lengths": stats, "best": best,
                      "default_mode": default, "speedup": speedup, "cpu_speedup": cpu_speedup,
                      "ratios": ratios, "threads": args.threads,
                      "repeats": args.repeats, "all_runs": runs}))


if __name__ == "__main__":
    main()
