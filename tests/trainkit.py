"""Runs for the train/merge tests: a run directory whose generate stage is marked done, with
train/eval JSONL written here (the shape `edgedistill generate` writes)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from edgedistill.recipes import load_recipe
from edgedistill.data import write_jsonl
from edgedistill.rundir import Run

WORDS = "the capital of france is paris and the answer is yes because the sum equals".split()


def records(n: int, seed: int = 0, prefix: str = "t") -> list[dict]:
    """Question/answer records of varied lengths, so grouping and packing have something to save."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(0, 40), rng.randint(0, 40)
        tail = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 40)))
        out.append({"id": f"{prefix}{i}",
                    "messages": [{"role": "user", "content": f"What is {a} + {b}? {tail}"}],
                    "response": f"The answer is {a + b}." + (" " + tail if i % 3 == 0 else ""),
                    "answer": str(a + b)})
    return out


def make_run(root: Path, model_dir: Path, *, n_train: int = 24, n_eval: int = 6,
             train_records: list[dict] | None = None, **train) -> Run:
    from conftest import write_recipe

    settings = {"max_steps": 6, "batch_size": 4, "save_steps": 50, "learning_rate": 1e-2,
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0,
                         "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}}
    settings.update(train)
    recipe_path = write_recipe(root / "recipe", student={"model": str(model_dir)}, train=settings)
    run = Run.create(root / "run", load_recipe(recipe_path))
    write_data(run, train_records if train_records is not None else records(n_train),
               records(n_eval, seed=1, prefix="e"))
    return run


def write_data(run: Run, train: list[dict], eval_: list[dict]) -> None:
    """Write train/eval as the generate stage would, and mark generate done."""
    st = run.begin("generate", force=True)
    with st:
        write_jsonl(st.output(run.train_data), train)
        write_jsonl(st.output(run.eval_data), eval_)


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
