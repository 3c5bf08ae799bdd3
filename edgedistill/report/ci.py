"""Output for CI systems, from what ``report`` wrote: a JUnit XML file with one test case per
(artifact, target, gate), and report.md appended to ``$GITHUB_STEP_SUMMARY`` when it is set.

A gate's outcome is its ``verdict`` (pass, fail, indeterminate, unchecked) when the report gives
one, else where report.json lists it: under an artifact's ``gates.failed`` it failed, under
``gates.unchecked`` it was not applied (a skipped test case), and a gate that is set and listed
nowhere passed. Whatever counts as failed for the exit code -- an indeterminate verdict included,
unless ``gates.on_indeterminate: pass`` -- is a ``<failure>``, so the JUnit file and the exit code
of ``report --check`` agree.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedistill.report.gates import BENCH_GATES, describe

RECIPE = "recipe"


@dataclass
class Case:
    artifact: str | None
    target: str | None
    gate: str
    source: str = RECIPE
    verdict: str = "pass"  # pass | fail | indeterminate | unchecked
    failed: bool = False  # counted as a failure by report.json (the exit code)
    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> tuple:
        return (self.artifact, self.target, self.gate, self.source)


def _key(e: dict[str, Any]) -> tuple:
    return (e.get("artifact"), e.get("target"), e.get("gate"), e.get("source") or RECIPE)


def _text(e: dict[str, Any]) -> str:
    if "value" in e or e.get("message"):
        return describe(e)
    where = f" on {e['target']}" if e.get("target") else ""
    return f"{e.get('artifact')}: {e.get('gate')}{where}, limit {e.get('limit')}: {e.get('reason', '')}"


def _expected(art: dict[str, Any], limits: dict[str, Any]) -> list[tuple]:
    """The (artifact, target, gate, source) a report judges for one artifact: each recipe gate
    that is set, bench gates on every target benched, target budgets where measured on target."""
    out = []
    if limits.get("min_retention") is not None:
        out.append((art["id"], None, "min_retention", RECIPE))
    bench = art.get("bench") or {}
    for gate in BENCH_GATES:
        if limits.get(gate) is not None:
            out += [(art["id"], target, gate, RECIPE) for target in bench]
        out += [(art["id"], target, gate, "target budget") for target, b in bench.items()
                if b.get("on_target") and (b.get("budgets") or {}).get(gate) is not None]
    return out


RANK = {"pass": 0, "unchecked": 1, "indeterminate": 2, "fail": 3}


def cases(data: dict[str, Any]) -> list[Case]:
    """Every gate report.json judged, one Case per (artifact, target, gate, source). An artifact's
    ``gates.checks`` (every judged gate with its verdict) is used when the report has it; without
    it, the gates that are set and not listed under ``gates.failed`` passed."""
    limits = data.get("gate_limits") or {}
    lenient = limits.get("on_indeterminate") == "pass"
    found: dict[tuple, Case] = {}

    def add(e: dict[str, Any], verdict: str, failed: bool) -> None:
        case = found.setdefault(_key(e), Case(*_key(e)))
        if e not in case.entries:
            case.entries.append(e)
        if RANK.get(verdict, 3) > RANK.get(case.verdict, 3) or case.verdict not in RANK:
            case.verdict = verdict
        case.failed = case.failed or failed

    for art in data.get("artifacts") or []:
        gates = art.get("gates") or {}
        if isinstance(gates.get("checks"), list):
            for e in gates["checks"]:
                v = e.get("verdict") or "fail"
                add({"artifact": art["id"], **e}, v, v == "fail" or (v == "indeterminate" and not lenient))
            continue
        for key in _expected(art, limits):
            found.setdefault(key, Case(*key))
        for e in gates.get("failed") or []:
            add({"artifact": art["id"], **e}, e.get("verdict") or "fail", True)
        for e in gates.get("unchecked") or []:  # only target budgets go unchecked
            add({"source": "target budget", "artifact": art["id"], **e}, "unchecked", False)
    for e in (data.get("gates") or {}).get("failed") or []:  # run-level: nothing to ship, ...
        if _key(e) not in found or not found[_key(e)].failed:
            add(e, e.get("verdict") or "fail", True)
    return list(found.values())


def _name(case: Case) -> str:
    where = f" on {case.target}" if case.target else ""
    return case.gate + where + (" (target budget)" if case.source != RECIPE else "")


def junit_tree(data: dict[str, Any]) -> ET.ElementTree:
    all_cases = cases(data)
    failures = sum(c.failed for c in all_cases)
    skipped = sum(not c.failed and c.verdict == "unchecked" for c in all_cases)
    suites = ET.Element("testsuites", name="edgedistill", tests=str(len(all_cases)),
                        failures=str(failures), errors="0", skipped=str(skipped))
    suite = ET.SubElement(suites, "testsuite", name=f"edgedistill gates: {data.get('run_dir')}",
                          tests=str(len(all_cases)), failures=str(failures), errors="0",
                          skipped=str(skipped))
    props = ET.SubElement(suite, "properties")
    for name in ("run_dir", "recipe", "task", "metric", "edgedistill_version"):
        if data.get(name) is not None:
            ET.SubElement(props, "property", name=name, value=str(data[name]))
    for case in all_cases:
        el = ET.SubElement(suite, "testcase", classname=f"edgedistill.{case.artifact or 'run'}",
                           name=_name(case))
        text = "\n".join(_text(e) for e in case.entries)
        if case.failed:
            fail = ET.SubElement(el, "failure", type=case.verdict if case.verdict != "pass" else "fail",
                                 message=text.splitlines()[0] if text else case.gate)
            fail.text = text
        elif case.verdict == "unchecked":
            reason = "; ".join(e.get("reason") or "not applied" for e in case.entries)
            ET.SubElement(el, "skipped", message=f"not checked: {reason}")
        elif case.verdict == "indeterminate":
            ET.SubElement(el, "system-out").text = (
                f"indeterminate, counted as a pass (gates.on_indeterminate): {text}")
    ET.indent(suites)
    return ET.ElementTree(suites)


def write_junit(data: dict[str, Any], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    junit_tree(data).write(path, encoding="utf-8", xml_declaration=True)
    return path


def append_step_summary(markdown: str) -> Path | None:
    """Append ``markdown`` to $GITHUB_STEP_SUMMARY (GitHub Actions' job summary) when it is set."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as f:
        f.write(markdown.rstrip("\n") + "\n\n")
    return Path(target)
