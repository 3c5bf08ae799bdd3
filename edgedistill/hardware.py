"""Hardware targets as data (targets/*.yaml, bundled in the wheel): the device (arch, cores, RAM,
CPU model, memory bandwidth, cache, accelerators), the (format, precision) pairs its runtimes run,
how to run there, and budgets. ``bench --target NAME_OR_PATH`` loads one here.

Every field is used: the device fields decide whether a machine *is* the target
(:meth:`Target.mismatches`: arch, core count, RAM within ±15%, ``cpu_pattern``, accelerators) and
feed the roofline prediction where it is not (``memory_bandwidth_gbs``, ``l3_cache_mb``);
``ram_mb`` is also a memory budget; ``settings`` reach the runtime (``context`` is llama.cpp's
n_ctx); ``budgets`` are gates where the bench ran on the target.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from edgedistill.errors import ConfigError
from edgedistill.registry import FORMAT_NAMES, RUNTIME_NAMES
from edgedistill.schema import Strict, bundled, read_yaml, validate



class RuntimeSupport(Strict):
    """One runtime on the device and the artifacts it runs."""

    runtime: str  # llama.cpp, onnxruntime or onnxruntime-genai
    format: Literal[FORMAT_NAMES]  # the export format it loads
    precisions: list[str]  # the precisions of that format it runs (artifact id: <format>-<precision>)
    providers: list[str] = []  # onnxruntime execution providers (CUDAExecutionProvider on a Jetson)
    gpu_layers: int = Field(0, ge=-1)  # llama.cpp offload: layers on the GPU (-1 or 999: all)

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, v: str) -> str:
        if v not in RUNTIME_NAMES:
            raise ValueError(f"unknown runtime {v!r}; known runtimes: {', '.join(RUNTIME_NAMES)}")
        return v


# What bench/host.py detects on a machine, and so what a target may list under ``accelerators``:
# cuda (any NVIDIA CUDA GPU) and cuda-<generation> (from its compute capability), jetson (an NVIDIA
# Tegra board), adreno-gpu (/sys/class/kgsl), hexagon-npu (a FastRPC DSP device), mali-gpu.
ACCELERATORS = ("cuda", "cuda-maxwell", "cuda-pascal", "cuda-volta", "cuda-turing", "cuda-ampere",
                "cuda-ada", "cuda-hopper", "cuda-blackwell", "jetson", "adreno-gpu", "hexagon-npu",
                "mali-gpu")
RAM_TOLERANCE = 0.15  # a host's RAM within ±15% of the target's ram_mb is the same size of device


class RunSettings(Strict):
    """How bench runs each artifact there."""

    threads: Union[int, None] = Field(None, ge=1)  # None: all cores of the machine
    thread_sweep: list[Annotated[int, Field(ge=1)]] = []  # thread counts to try besides threads
    context: int = Field(512, ge=64)  # llama.cpp n_ctx (the KV cache it allocates)
    prompt_tokens: int = Field(64, ge=1)  # the prompt each measurement prefills
    generate_tokens: int = Field(64, ge=1)  # tokens decoded per measurement
    repetitions: int = Field(5, ge=1)  # timed measurements (the percentiles are over them)
    warmup: int = Field(1, ge=0)  # untimed runs before them
    # users at once for the concurrency sweep (bench/concurrency.py), e.g. [1, 2, 4, 8, 16]; empty:
    # no sweep. Each user's request gets `context` tokens, up to `generate_tokens` of answer.
    concurrency: list[Annotated[int, Field(ge=1, le=256)]] = []
    concurrency_requests: int = Field(2, ge=1)  # requests each user sends per level, back to back

    @model_validator(mode="after")
    def _fits_context(self) -> "RunSettings":
        if self.prompt_tokens + self.generate_tokens > self.context:
            raise ValueError(f"prompt_tokens + generate_tokens ({self.prompt_tokens} + "
                             f"{self.generate_tokens}) exceed context ({self.context}); raise context "
                             "or shorten them")
        return self


class Budgets(Strict):
    """Gates that hold where bench ran on this very device (elsewhere they stay unchecked)."""

    max_peak_rss_mb: Union[float, None] = Field(None, gt=0)  # peak resident memory, MB
    max_ttft_ms: Union[float, None] = Field(None, gt=0)  # time to first token, p50
    min_decode_tokens_per_s: Union[float, None] = Field(None, gt=0)  # decode speed, p50


class ServiceLevel(Strict):
    """What each user must get for the concurrency sweep to count them as served."""

    max_ttft_ms_p95: Union[float, None] = Field(None, gt=0)  # time to the first token, 95th percentile
    min_tokens_per_s_per_user: Union[float, None] = Field(None, gt=0)  # the median user's decode speed


class Target(Strict):
    """A hardware target (targets/*.yaml)."""

    name: str  # what reports and bench records call it
    description: str = ""  # one line for the report
    arch: Literal["x86_64", "aarch64", "armv7l"]  # the machine architecture (uname -m)
    cores: Union[int, None] = Field(None, ge=1)  # None: the host's (a generic host target)
    ram_mb: Union[int, None] = Field(None, ge=64)  # the device's RAM: matched ±15%, and a budget
    cpu_pattern: Union[str, None] = None  # regex searched in the host's CPU model and board name
    memory_bandwidth_gbs: Union[float, None] = Field(None, gt=0)  # None: measured on the host
    l3_cache_mb: Union[float, None] = Field(None, gt=0)  # a model this small is not DRAM-bound there
    accelerators: list[str] = []  # each must be present on the host (see ACCELERATORS)
    runs: list[RuntimeSupport]  # what the device runs: bench measures only these artifacts there
    settings: RunSettings = RunSettings()
    budgets: Budgets = Budgets()
    service_level: ServiceLevel = ServiceLevel()  # users_supported: the most users that get it

    @field_validator("cpu_pattern")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"cpu_pattern {v!r} is not a regular expression: {e}") from None
        return v

    @field_validator("accelerators")
    @classmethod
    def _known_accelerators(cls, v: list[str]) -> list[str]:
        unknown = [a for a in v if a not in ACCELERATORS]
        if unknown:
            raise ValueError(f"unknown accelerator(s) {', '.join(unknown)}; bench detects: "
                             f"{', '.join(ACCELERATORS)}")
        return v

    def mismatches(self, host: dict[str, Any]) -> list[str]:
        """Why the machine ``host`` (bench/host.py's ``host_info``) is not this target; empty when
        it is. Never guessed in the target's favour: a field the host does not report fails."""
        why = []
        if host.get("arch") != self.arch:
            why.append(f"arch {host.get('arch')}, not {self.arch}")
        if self.cores is not None and host.get("cores_logical") != self.cores:
            why.append(f"{host.get('cores_logical')} cores, not {self.cores}")
        ram = host.get("ram_mb")
        if self.ram_mb is not None and (not ram or abs(ram - self.ram_mb) > RAM_TOLERANCE * self.ram_mb):
            why.append(f"{ram} MB of RAM, not {self.ram_mb} MB ±{RAM_TOLERANCE:.0%}")
        if self.cpu_pattern:
            model = " / ".join(str(host[k]) for k in ("cpu", "board") if host.get(k))
            if not re.search(self.cpu_pattern, model, re.IGNORECASE):
                why.append(f"CPU {model or 'unknown'!r} does not match cpu_pattern {self.cpu_pattern!r}")
        have = host.get("accelerators") or []
        missing = [a for a in self.accelerators if a not in have]
        if missing:
            why.append(f"no {', '.join(missing)} (the host has {', '.join(have) or 'no accelerator'})")
        return why

    def device(self) -> dict[str, Any]:
        """The device fields, as bench records and the report show them."""
        return self.model_dump(include={"name", "description", "arch", "cores", "ram_mb", "cpu_pattern",
                                        "memory_bandwidth_gbs", "l3_cache_mb", "accelerators"})

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
