"""The lists every other module asks for: the stages in order, the task families, and the artifact
formats with the runtime kind that runs each. Each list is written here once; nothing else spells
them out. Pure data, no imports beyond the standard library: the CLI, the config and the
device-side bench all read it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class StageInfo:
    name: str
    function: str  # "module:attribute", imported only when the stage runs
    sections: tuple[str, ...]  # the recipe sections it depends on: a change re-runs it


STAGES: tuple[StageInfo, ...] = (
    StageInfo("generate", "edgedistill.teacher.generate:generate", ("task", "data", "teacher", "seed")),
    StageInfo("train", "edgedistill.train.finetune:train", ("task", "student", "train", "seed")),
    StageInfo("merge", "edgedistill.train.merge:merge", ("student",)),
    StageInfo("export", "edgedistill.formats.export:export", ("export",)),
    StageInfo("quantize", "edgedistill.formats.quantize:quantize", ("export",)),
    StageInfo("eval", "edgedistill.evaluate.ladder:evaluate", ("task", "eval", "teacher", "student")),
    StageInfo("judge", "edgedistill.judge.stage:judge", ("task", "eval", "teacher")),
    StageInfo("bench", "edgedistill.bench.run:bench", ("targets",)),
    StageInfo("report", "edgedistill.report.build:report", ("gates", "targets")),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def stage_info(name: str) -> StageInfo:
    """A stage by name; ``export:gguf`` and ``bench:cpu-x86`` are parts of ``export`` and ``bench``."""
    base = name.partition(":")[0]
    for s in STAGES:
        if s.name == base:
            return s
    raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")


def stage_fn(name: str) -> Callable[..., Any]:
    module, _, attr = stage_info(name).function.partition(":")
    return getattr(importlib.import_module(module), attr)


# Task families: the metric each is scored with lives in evaluate/metrics.py.
TASKS: tuple[str, ...] = ("qa", "math", "nli", "classification", "summarization", "conversation")
# the tasks without a gold answer to check: a judge model reads their replies by default
FREE_TEXT_TASKS: tuple[str, ...] = ("summarization", "conversation")


@dataclass(frozen=True)
class FormatInfo:
    name: str
    kind: str  # the runtimes/ module that loads it
    runtime: str  # the runtime's name, as target files and reports write it
    full_precision: str | None  # the precision of the plain export (None: set by the recipe)


FORMATS: dict[str, FormatInfo] = {f.name: f for f in (
    FormatInfo("onnx", "onnx", "onnxruntime", "fp32"),
    FormatInfo("ortgenai", "ortgenai", "onnxruntime-genai", "fp32"),
    FormatInfo("gguf", "gguf", "llama.cpp", None),  # export.gguf_outtype
)}
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)

# runtime kind → the module under edgedistill.runtimes and the runtime's name
KINDS: dict[str, tuple[str, str]] = {
    "hf": ("edgedistill.runtimes.hf", "transformers"),
    "gguf": ("edgedistill.runtimes.llama_cpp", "llama.cpp"),
    "onnx": ("edgedistill.runtimes.onnx", "onnxruntime"),
    "ortgenai": ("edgedistill.runtimes.ortgenai", "onnxruntime-genai"),
}
RUNTIME_NAMES: tuple[str, ...] = tuple(name for _, name in KINDS.values())


def kind_of(name: str) -> str:
    """The runtime kind for a format, a kind or a runtime name (``onnxruntime`` → ``onnx``)."""
    if name in KINDS:
        return name
    if name in FORMATS:
        return FORMATS[name].kind
    for kind, (_, runtime) in KINDS.items():
        if runtime == name:
            return kind
    raise KeyError(name)


def runtime_name(kind: str) -> str:
    return KINDS[kind_of(kind)][1]
