"""Typed recipes (profiles/*.yaml): one pydantic model per section.

A recipe's YAML key is the model's field name is the ``--set`` path. Unknown keys fail with the
valid ones listed; a wrong type fails with the key and the expected type. Paths in a recipe
resolve relative to the recipe file, and the resolved recipe is what a run stores as
RUN/config.yaml.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import Field, field_validator, model_validator

from edgedistill.errors import ConfigError
from edgedistill.registry import FORMAT_NAMES, TASKS
from edgedistill.schema import Strict, apply_overrides, bundled, parse_override, read_yaml, validate


class SynthesizeConfig(Strict):
    n: int = Field(0, ge=0)  # new prompts to ask the teacher for, in the style of the train split
    per_request: int = Field(8, ge=1)  # train prompts one request shows; one new prompt asked for each
    temperature: float = Field(1.0, ge=0.0)  # higher: more varied prompts
    max_tokens: int = Field(400, ge=16)
    ngram: int = Field(3, ge=1)  # decontamination: word n-grams ...
    max_eval_overlap: float = Field(0.8, gt=0.0, le=1.0)  # ... a prompt sharing this share of its n-grams
    max_eval_content_similarity: float = Field(0.6, gt=0.0, le=1.0)  # or of its content words with
    # one eval prompt is dropped (both thresholds and the counts are recorded)


class DataConfig(Strict):
    prompts: str
    eval_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    near_duplicate_threshold: float = Field(0.9, gt=0.0, le=1.0)  # token-set similarity
    # more held-out sets, by name: asked of the teacher, scored on every rung, never trained on
    eval_sets: dict[str, str] = {}
    # more train-only prompt files, by name: asked of the teacher and verified like the train
    # split, never held out; a prompt that duplicates a train prompt, or is too close to a held-out
    # one (the measures and thresholds of data.synthesize), is dropped and counted
    train_sets: dict[str, str] = {}
    synthesize: SynthesizeConfig = SynthesizeConfig()


class TeacherConfig(Strict):
    backend: Literal["openai", "hf", "gguf"] = "openai"
    model: str
    base_url: Union[str, list[str], None] = None  # one endpoint, or a list to spread over
    serve: bool = False  # start a llama.cpp OpenAI-compatible server on loopback for `model` (GGUF)
    api_key_env: Union[str, None] = None  # the NAME of the variable; the key is never stored
    concurrency: int = Field(8, ge=1)
    temperature: float = Field(0.2, ge=0.0)
    top_p: Union[float, None] = None
    max_tokens: int = Field(256, ge=1)
    seed: Union[int, None] = None
    system_prompt: Union[str, None] = None
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(6, ge=0)
    accept_finish_reasons: list[str] = ["stop"]
    min_success_ratio: float = Field(0.5, ge=0.0, le=1.0)
    logprobs: Union[int, None] = Field(None, ge=1, le=20)  # top-k logprobs per token, for KD
    batch_size: int = Field(8, ge=1)  # hf backend
    n_ctx: int = Field(2048, ge=128)  # gguf backend
    trust_remote_code: bool = False
    # verification of training labels (eval prompts are never filtered: the teacher is scored on
    # exactly what it answered)
    samples: int = Field(1, ge=1)  # answers per prompt without a gold answer; the majority is kept
    retries_on_wrong: int = Field(2, ge=0)  # more answers for a gold prompt the teacher got wrong
    sample_temperature: float = Field(0.7, gt=0.0)  # of those extra answers (the first uses temperature)
    min_agreement: float = Field(0.5, ge=0.0, le=1.0)  # a majority answer must have more than this share

    @field_validator("base_url")
    @classmethod
    def _no_credentials(cls, v: Union[str, list[str], None]) -> Union[str, list[str], None]:
        from pydantic_core import PydanticCustomError

        for url in [v] if isinstance(v, str) else v or []:
            found = credentials_in(url)
            if found:  # a custom type: schema.py never echoes this input back
                raise PydanticCustomError("secret_in_url", (
                    f"carries {found}, which would be stored in RUN/config.yaml; keep the key in an "
                    "environment variable and give that variable's NAME as teacher.api_key_env "
                    "(e.g. api_key_env: OPENAI_API_KEY)"))
        return v


SECRET_PARAMS = ("key", "token", "secret", "password", "passwd", "signature")


def credentials_in(url: str) -> str | None:
    """What kind of credential ``url`` carries (a user and password, a key in its query), if any."""
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        return "a user name and password (USER:PASSWORD@)"
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        flat = name.lower().replace("-", "").replace("_", "")
        if flat in ("sig", "auth", "code") or any(s in flat for s in SECRET_PARAMS):
            return f"a credential in its query string ({name}=...)"
    return None


class StudentConfig(Strict):
    model: str
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False


class LoraConfig(Strict):
    r: int = Field(16, ge=1)  # higher: more capacity, more memory
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    # every linear projection, attention and MLP (peft's "all-linear"); or a list of module names
    target_modules: Union[Literal["all-linear"], list[str]] = "all-linear"


class KDConfig(Strict):
    weight: float = Field(0.5, ge=0.0, le=1.0)  # share of the KL term; 0 is plain cross-entropy
    temperature: float = Field(1.0, gt=0.0)
    allow_vocab_mismatch: bool = False  # fall back to cross-entropy when vocabularies differ


class TrainConfig(Strict):
    method: Literal["lora", "full"] = "lora"  # full: every weight (students up to ~0.5B on a CPU)
    lora: LoraConfig = LoraConfig()
    # full: train only the last N transformer blocks (and what follows them); the token embeddings
    # and the blocks below stay frozen, and backward stops at the lowest trained block. null: all
    trainable_layers: Union[int, None] = Field(None, ge=1)
    learning_rate: Union[float, None] = Field(None, gt=0.0)  # null: 2e-4 for lora, 5e-5 for full
    epochs: Union[float, Literal["auto"]] = 3.0  # auto: until the dev score stops improving
    max_epochs: int = Field(8, ge=1)  # epochs: auto stops here at the latest
    patience: int = Field(2, ge=1)  # epochs: auto stops after this many evaluations without a gain
    max_steps: Union[int, None] = Field(None, ge=1)
    batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(512, ge=16)
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    # auto: bf16 autocast where the CPU computes bf16 natively (AMX / AVX512-BF16: ~1.7x faster
    # here, scripts/bench_train.py) or on a GPU; fp32 elsewhere. Weights stay fp32 either way.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # auto: eager on a CPU when every example is short and batches are padded (faster there,
    # scripts/bench_attention.py), SDPA otherwise (the two differ only in float rounding)
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    # the best checkpoint is chosen on a dev slice of the train split, never on the eval split:
    dev_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    dev_max: int = Field(64, ge=1)  # at most this many dev examples (scored by generation)
    select: Literal["dev_score", "dev_loss", "last"] = "dev_score"
    save_steps: int = Field(50, ge=1)
    eval_steps: Union[int, None] = Field(None, ge=1)  # null: evaluate on the dev slice once per epoch
    # false: batches of similar lengths, padded (measured fastest on CPU, scripts/bench_train.py);
    # true: examples packed into one row without cross-example attention (no padding at all)
    packing: bool = False
    # the prompt prefix all of a batch's examples share (a system prompt, the chat template's
    # header) computed once per batch and its cache shared: same loss and gradients, less compute
    # (scripts/bench_train.py); padded batches on one process only
    share_prefix: bool = True
    kd: Union[KDConfig, None] = None
    seed: int = 0

    @model_validator(mode="after")
    def _trainable_layers_need_full(self) -> "TrainConfig":
        if self.trainable_layers is not None and self.method != "full":
            raise ValueError("trainable_layers is for method: full (LoRA trains adapters, not blocks)")
        return self


class QuantizeConfig(Strict):
    onnx: list[Literal["int8", "int4"]] = ["int8", "int4"]
    # any type llama.cpp names; the low-bit ones (q3_k_s, q2_k, iq4_xs) want an importance matrix,
    # and iq2_xxs/iq2_xs/iq1_s/q2_k_s need one (calibration: task or text:FILE)
    gguf: list[str] = ["q8_0", "q4_k_m"]
    # per-tensor GGML types for every GGUF type above, as llama-quantize's --tensor-type: a
    # pattern (a regular expression searched in the tensor's GGUF name) -> a type; the first
    # pattern that matches a tensor wins over the type's own mix, and a type a tensor's rows
    # cannot tile falls back as llama.cpp does. Where hidden sizes are no multiple of 256
    # (SmolLM2's 576) q4_k_m holds mostly Q5_0, whose CPU kernels are slower than IQ4_NL's:
    # {"ffn_(gate|up)|attn_(q|k|output)": iq4_nl, attn_v: q8_0} is 4-bit where that q4_k_m is
    # 5-bit: faster and smaller, for a larger KL divergence; {"ffn_down|attn_v": q8_0,
    # token_embd: q5_0} is as large, for less of it (profiles/demo.yaml says how much)
    gguf_tensor_types: dict[str, str] = {}
    ortgenai: list[Literal["fp32", "int4"]] = ["int4"]
    # must tile the hidden and intermediate sizes an even number of times (576 and 1536: 16 or 32)
    int4_block_size: int = Field(32, ge=16)
    # ORT GenAI int4's LM head (which a tied embedding also reads): int8 keeps more of the merged
    # student, int4 makes a smaller package (scripts/bench_quant.py --set compares them)
    int4_lm_head: Literal["int8", "int4"] = "int8"
    # per-MatMul bits of ONNX and ORT GenAI int4, as gguf_tensor_types: a pattern (a regular
    # expression searched in the MatMul node's name: qkv_proj (ORT GenAI fuses q, k and v;
    # optimum's ONNX has q_proj, k_proj, v_proj), mlp/down_proj, layers\.0/) -> int8 or int4; the
    # first that matches wins over the mix (the first and last eighth of the layers and every
    # third between keep the attention value and FFN down projections at 8 bits, llama.cpp's
    # Q4_K_M choice); the LM head follows int4_lm_head. ORT GenAI's model builder takes no such
    # list: with one, its rtn and k_quant go through the ONNX quantizer over the fp32 package too.
    # The demo's {qkv_proj: int8} with an int4 head makes a smaller package for as little loss
    # (profiles/demo.yaml says how much)
    int4_matmul_types: dict[str, Literal["int8", "int4"]] = {}
    # int4 for ONNX and ORT GenAI: gptq uses the calibration data (slower: one model run per
    # calibration window, its Hessians from every MatMul input, edgedistill.formats.gptq); rtn and
    # k_quant need none (k_quant: better, ~4x slower)
    algo: Literal["rtn", "k_quant", "gptq"] = "gptq"
    # none | task (the run's train split: prompts + teacher answers) | text:FILE (generic text,
    # .txt or .jsonl). A calibrated artifact is kept only when its KL divergence from the merged
    # student at the eval answers is below the uncalibrated one's beyond noise (a 95% paired
    # bootstrap interval over the eval chats); both are recorded, and the comparison.
    calibration: str = "task"
    calibration_samples: int = Field(256, ge=1)  # importance matrix: one forward per sample
    # GPTQ's calibration tokens: one model run per 512-token window collects every Hessian
    # (formats/gptq.py one_pass), holding the activations meanwhile (~1 MB a token for a 135M
    # model). Demo student, int4 answer KLD: 0.035 at 256 tokens, 0.022 at 1024 (measured).
    gptq_max_tokens: int = Field(1024, ge=16)

    @field_validator("gguf_tensor_types", "int4_matmul_types", mode="before")
    @classmethod
    def _tensor_patterns(cls, v: Any) -> Any:
        import re

        if not isinstance(v, dict):
            return v
        for pattern in v:
            try:
                re.compile(str(pattern))
            except re.error as e:
                raise ValueError(f"{pattern!r} is not a regular expression: {e}") from None
        return {p: t.strip().lower() if isinstance(t, str) else t for p, t in v.items()}

    @field_validator("calibration")
    @classmethod
    def _calibration_source(cls, v: str) -> str:
        if v in ("none", "task"):
            return v
        if v.startswith("text:") and v[5:].strip():
            return "text:" + str(Path(v[5:].strip()).expanduser().resolve())
        raise ValueError("must be none, task or text:FILE")


class ExportConfig(Strict):
    formats: list[Literal[FORMAT_NAMES]] = list(FORMAT_NAMES)
    quantize: QuantizeConfig = QuantizeConfig()
    gguf_outtype: Literal["f16", "bf16", "f32"] = "f16"
    llama_cpp_dir: Union[str, None] = None  # a llama.cpp checkout to take the converter from
    parity_prompts: int = Field(4, ge=1)
    parity_max_new_tokens: int = Field(24, ge=1)


class EvalConfig(Strict):
    max_new_tokens: int = Field(64, ge=1)
    limit: Union[int, None] = Field(None, ge=1)  # score at most this many eval examples
    # replies generated together per rung (gguf: sequences in flight in one llama.cpp context);
    # 16: 2-3x the examples/s of 1 on a 2-core CPU (scripts/bench_eval.py), for batch_size KV
    # caches of memory; 1: one at a time, as `generate` does
    batch_size: int = Field(16, ge=1)


class GatesConfig(Strict):
    min_retention: Union[float, None] = Field(0.9, ge=0.0)  # judged on its 95% bootstrap interval
    max_peak_rss_mb: Union[float, None] = Field(None, gt=0)
    min_decode_tokens_per_s: Union[float, None] = Field(None, gt=0)
    max_ttft_ms: Union[float, None] = Field(None, gt=0)
    max_kld: Union[float, None] = Field(None, ge=0)  # quantized artifacts' KL divergence from merged
    min_eval_n: Union[int, None] = Field(None, ge=1)  # fewer eval examples: refuse to judge (fail)
    # a gate whose limit lies inside the interval: fail is safe; pass ships what might miss it
    on_indeterminate: Literal["fail", "pass"] = "fail"


class Recipe(Strict):
    task: Literal[TASKS]
    data: DataConfig
    teacher: TeacherConfig
    student: StudentConfig
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()
    eval: EvalConfig = EvalConfig()
    targets: list[str] = ["cpu-x86"]
    gates: GatesConfig = GatesConfig()
    seed: int = 0

    def section_hash(self, *keys: str) -> str:
        """A stable hash of the named top-level sections (what a stage depends on)."""
        dumped = self.model_dump(mode="json")
        picked = {k: dumped[k] for k in keys}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# loading


def _resolve_paths(data: dict, base: Path) -> dict:
    """Make recipe paths absolute, relative to the recipe file's folder."""
    def resolve(value: str) -> str:
        p = Path(value).expanduser()
        if p.is_absolute():
            return str(p)
        candidate = (base / p).resolve()
        return str(candidate)

    data_sec = data.get("data")
    if isinstance(data_sec, dict) and isinstance(data_sec.get("prompts"), str):
        data_sec["prompts"] = resolve(data_sec["prompts"])
    for key in ("eval_sets", "train_sets"):
        if isinstance(data_sec, dict) and isinstance(data_sec.get(key), dict):
            data_sec[key] = {k: resolve(v) if isinstance(v, str) else v for k, v in data_sec[key].items()}
    # model references that look like relative paths and exist next to the recipe
    for section in ("teacher", "student"):
        sec = data.get(section)
        if isinstance(sec, dict) and isinstance(sec.get("model"), str):
            m = sec["model"]
            if m.startswith((".", "~")) or (not Path(m).is_absolute() and (base / m).exists()):
                sec["model"] = resolve(m)
    exp = data.get("export")
    if isinstance(exp, dict) and isinstance(exp.get("llama_cpp_dir"), str):
        exp["llama_cpp_dir"] = resolve(exp["llama_cpp_dir"])
    return data


def find_recipe(name_or_path: str | None) -> Path:
    """A recipe path, or the name of a bundled profile (``demo``)."""
    if name_or_path is None:
        return bundled("profiles") / "demo.yaml"
    p = Path(name_or_path)
    if p.exists():
        return p
    named = bundled("profiles") / f"{name_or_path}.yaml"
    if not p.suffix and named.exists():
        return named
    known = sorted(x.stem for x in bundled("profiles").glob("*.yaml"))
    raise ConfigError(
        f"Recipe {name_or_path} does not exist.",
        hint=f"Bundled profiles: {', '.join(known)} (pass a name or a path).",
    )


def _from_cwd(item: str) -> str:
    """A path given with --set is read from the current folder (a recipe's own paths from the
    recipe's folder): made absolute here, so the run's saved config.yaml reads the same file."""
    key, _ = parse_override(item)
    alone = apply_overrides(Recipe, {}, [item])
    resolved = _resolve_paths(json.loads(json.dumps(alone)), Path.cwd())
    for part in key:
        alone, resolved = alone[part], resolved[part]
    return item if resolved == alone else f"{'.'.join(key)}={json.dumps(resolved)}"


def load_recipe(path: Path, overrides: list[str] = ()) -> Recipe:
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a YAML mapping of recipe keys.")
    raw = _resolve_paths(raw, path.resolve().parent)
    raw = apply_overrides(Recipe, raw, [_from_cwd(o) for o in overrides])
    shown = [o.partition("=")[0] + "=<credential hidden>" if credentials_in(o.partition("=")[2]) else o
             for o in overrides]
    source = str(path) + (f" with --set {' '.join(shown)}" if overrides else "")
    return validate(Recipe, raw, source)


def load_recipe_dict(raw: dict, overrides: list[str] = (), source: str = "recipe") -> Recipe:
    raw = apply_overrides(Recipe, raw, list(overrides))
    return validate(Recipe, raw, source)


def save_recipe(recipe: Recipe, path: Path) -> None:
    text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # this process's own
    tmp.write_text(text)
    tmp.replace(path)


def cache_dir() -> Path:
    """Where fetched models and tools are cached, outside any repo: $EDGEDISTILL_CACHE or
    ~/.cache/edgedistill."""
    import os

    root = os.environ.get("EDGEDISTILL_CACHE") or Path.home() / ".cache" / "edgedistill"
    return Path(root)
