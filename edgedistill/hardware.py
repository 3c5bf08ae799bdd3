"""Hardware targets as data (targets/*.yaml, bundled in the wheel): the device (arch, cores, RAM,
memory bandwidth, accelerators), the (format, precision) pairs its runtimes run, how to run there,
and budgets. ``bench --target NAME_OR_PATH`` loads one here."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Union

from pydantic import Field, field_validator

from edgedistill.errors import ConfigError
from edgedistill.registry import FORMAT_NAMES, RUNTIME_NAMES
from edgedistill.schema import Strict, bundled, read_yaml, validate



class RuntimeSupport(Strict):
    runtime: str
    format: Literal[FORMAT_NAMES]
    precisions: list[str]
    providers: list[str] = []  # e.g. CUDAExecutionProvider for onnxruntime on a Jetson
    gpu_layers: int = 0  # llama.cpp offload

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, v: str) -> str:
        if v not in RUNTIME_NAMES:
            raise ValueError(f"unknown runtime {v!r}; known runtimes: {', '.join(RUNTIME_NAMES)}")
        return v


class RunSettings(Strict):
    threads: Union[int, None] = Field(None, ge=1)  # None: all cores of the machine
    thread_sweep: list[int] = []
    context: int = Field(512, ge=64)
    prompt_tokens: int = Field(64, ge=1)
    generate_tokens: int = Field(64, ge=1)
    repetitions: int = Field(5, ge=1)
    warmup: int = Field(1, ge=0)


class Budgets(Strict):
    max_peak_rss_mb: Union[float, None] = None
    max_ttft_ms: Union[float, None] = None
    min_decode_tokens_per_s: Union[float, None] = None


class Target(Strict):
    name: str
    description: str = ""
    arch: Literal["x86_64", "aarch64", "armv7l"]
    cores: Union[int, None] = Field(None, ge=1)  # None: the host's (a generic host target)
    ram_mb: Union[int, None] = Field(None, ge=64)
    memory_bandwidth_gbs: Union[float, None] = Field(None, gt=0)  # None: measured on the host
    l3_cache_mb: Union[float, None] = None
    accelerators: list[str] = []
    runs: list[RuntimeSupport]
    settings: RunSettings = RunSettings()
    budgets: Budgets = Budgets()

    def runtime_for(self, fmt: str, precision: str) -> RuntimeSupport | None:
        for r in self.runs:
            if r.format == fmt and precision in r.precisions:
                return r
        return None



def known_targets() -> list[str]:
    return sorted(p.stem for p in bundled("targets").glob("*.yaml"))


def load_target(name_or_path: str) -> Target:
    p = Path(name_or_path)
    if not p.exists():
        named = bundled("targets") / f"{name_or_path}.yaml"
        if p.suffix or not named.exists():
            raise ConfigError(
                f"Unknown target {name_or_path!r}.",
                hint=f"Known targets: {', '.join(known_targets())}; or pass a path to a target YAML.",
            )
        p = named
    return validate(Target, read_yaml(p), str(p))
