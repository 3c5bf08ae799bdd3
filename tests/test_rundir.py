"""The run directory: skip unchanged stages, redo forced or changed ones, and never trust the
output of a stage that did not finish."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from edgedistill.recipes import load_recipe
from edgedistill.errors import StageMissing
from edgedistill.rundir import Run


def _make_run(recipe_file, tmp_path, *overrides):
    return Run.create(tmp_path / "run", load_recipe(recipe_file, list(overrides)))


def _produce(run, text="x", force=False, inputs=()):
    """A toy stage writing data/train.jsonl; returns whether it ran."""
    st = run.begin("generate", inputs=list(inputs), force=force)
    if st is None:
        return False
    with st:
        tmp = st.output(run.train_data)
        tmp.write_text(text)
        st.metrics["n"] = 1
    return True


def test_stage_outputs_are_recorded_in_the_manifest(recipe_file, tmp_path):
    run = _make_run(recipe_file, tmp_path)
    assert _produce(run, "hello")
    entry = run.require("generate", needed_by="train")
    out = entry["outputs"]["data/train.jsonl"]
    assert out["bytes"] == 5 and len(out["sha256"]) == 64
    assert entry["status"] == "done" and entry["metrics"] == {"n": 1}
    assert entry["versions"]["edgedistill"] and "torch" in entry["versions"]
    assert not list(run.data_dir.glob(".*partial"))


def test_unchanged_stage_is_skipped_and_force_redoes_it(recipe_file, tmp_path):
    run = _make_run(recipe_file, tmp_path)
    assert _produce(run)
    assert not _produce(run)
    assert _produce(run, force=True)


def test_changed_config_section_reruns_only_dependent_stages(recipe_file, tmp_path):
    run = _make_run(recipe_file, tmp_path)
    assert _produce(run)
    Run.open(run.root, ["gates.min_retention=0.1"])  # report's section, not generate's
    assert not _produce(run)
    Run.open(run.root, ["teacher.temperature=0.9"])
    assert _produce(run)
    assert run.read_manifest()["overrides"][-1]["set"] == ["teacher.temperature=0.9"]


def test_changed_input_reruns(recipe_file, tmp_path):
    run = _make_run(recipe_file, tmp_path)
    src = tmp_path / "input.txt"
    src.write_text("a")
    assert _produce(run, inputs=[src])
    assert not _produce(run, inputs=[src])
    src.write_text("b")
    assert _produce(run, inputs=[src])


def test_deleted_or_altered_output_reruns(recipe_file, tmp_path):
    run = _make_run(recipe_file, tmp_path)
    assert _produce(run, "abc")
    run.train_data.write_text("abcdef")
    assert _produce(run, "abc")
    run.train_data.unlink()
    with pytest.raises(StageMissing):
        run.require("generate", needed_by="train")
    assert _produce(run, "abc")


def test_failed_stage_leaves_no_output_and_is_not_trusted(recipe_file, tmp_path):
    run = _make_run(recipe_file, tmp_path)
    st = run.begin("generate")
    with pytest.raises(RuntimeError):
        with st:
            st.output(run.train_data).write_text("half")
            raise RuntimeError("boom")
    assert not run.train_data.exists() and not list(run.data_dir.glob(".*partial"))
    assert run.stage_entry("generate")["status"] == "failed"
    with pytest.raises(StageMissing) as e:
        run.require("generate", needed_by="train")
    assert "failed" in str(e.value) and "edgedistill generate" in str(e.value)


def test_stage_killed_mid_write_leaves_nothing_a_later_stage_trusts(recipe_file, tmp_path):
    run = _make_run(recipe_file, tmp_path)
    assert _produce(run, "old")  # a previous good output exists
    script = textwrap.dedent(f"""
        import sys, time
        from edgedistill.rundir import Run
        run = Run({str(run.root)!r})
        st = run.begin("generate", force=True)
        with st:
            f = open(st.output(run.train_data), "w")
            f.write("partial"); f.flush()
            print("writing", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert run.stage_entry("generate")["status"] == "running"
    with pytest.raises(StageMissing) as e:
        run.require("generate", needed_by="train")
    assert "was interrupted" in str(e.value)
    # the next attempt cleans the temp file and produces a trusted output
    assert _produce(run, "new")
    assert run.train_data.read_text() == "new"
    assert not list(run.data_dir.glob(".*partial"))


def test_manifest_is_valid_json_after_every_write(recipe_file, tmp_path):
    run = _make_run(recipe_file, tmp_path)
    for i in range(3):
        _produce(run, str(i), force=True)
        json.loads(run.manifest_path.read_text())


def test_require_names_what_exists_and_the_command(recipe_file, tmp_path):
    run = _make_run(recipe_file, tmp_path)
    _produce(run)
    with pytest.raises(StageMissing) as e:
        run.require("train", needed_by="merge")
    msg = str(e.value)
    assert "data/train.jsonl" in msg and f"edgedistill train {run.root}" in msg


def test_open_missing_run_dir(tmp_path):
    with pytest.raises(StageMissing) as e:
        Run.open(tmp_path / "nope")
    assert "does not exist" in str(e.value) and "edgedistill run" in str(e.value)


def test_config_yaml_is_the_resolved_recipe(recipe_file, tmp_path):
    run = _make_run(recipe_file, tmp_path, "train.max_steps=7")
    assert run.recipe.train.max_steps == 7
    assert os.path.isabs(run.recipe.data.prompts)
