"""A local GGUF teacher through llama-cpp-python, in-process, one request at a time (llama.cpp
has one context; concurrency would only interleave). ``teacher.model`` is a GGUF path or
``pypi:NAME`` (see ``edgedistill models list``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from edgedistill.config import TeacherConfig
from edgedistill.errors import ConfigError, NotAvailable
from edgedistill.teacher import Answer, Request, Sink, compact_logprobs

log = logging.getLogger(__name__)


def gguf_path(ref: str) -> Path:
    from edgedistill import models

    path = Path(models.resolve(ref)).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"teacher.model {ref!r} is not a GGUF file.",
            hint="Give the path of a .gguf file, or a packaged model such as "
            "pypi:smollm2-135m-instruct (`edgedistill models list`).")
    return path


def load_llama(path: Path, cfg: TeacherConfig):
    try:
        from llama_cpp import Llama
    except ImportError:
        raise NotAvailable("The gguf teacher needs llama-cpp-python, which is not installed.",
                           hint="Install it with scripts/install.sh (it compiles llama.cpp).") from None
    from edgedistill.runtimes.llama_cpp import settings

    return Llama(model_path=str(path), seed=cfg.seed if cfg.seed is not None else 0,
                 logits_all=bool(cfg.logprobs), verbose=False, **settings(n_ctx=cfg.n_ctx))


def answer_all(cfg: TeacherConfig, requests: list[Request], sink: Sink) -> None:
    if not requests:
        return
    path = gguf_path(cfg.model)
    llm = load_llama(path, cfg)
    endpoint = f"llama.cpp:{path.name}"
    try:
        for req in requests:
            p = req.params
            kw = {"temperature": p["temperature"], "max_tokens": p["max_tokens"]}
            if p.get("top_p") is not None:
                kw["top_p"] = p["top_p"]
            if p.get("seed") is not None:
                kw["seed"] = p["seed"]
            if p.get("logprobs"):
                kw.update(logprobs=True, top_logprobs=p["logprobs"])
            t0 = time.perf_counter()
            try:
                out = llm.create_chat_completion(messages=req.messages, **kw)
            except ValueError as err:  # llama-cpp-python: prompt longer than the context
                sink.failed(req, f"request_failed: {err}")
                continue
            choice = out["choices"][0]
            usage = out.get("usage") or {}
            logprobs = None
            if p.get("logprobs"):
                content = (choice.get("logprobs") or {}).get("content") or []
                logprobs = compact_logprobs(content)
            sink.answer(Answer(
                request=req, text=choice["message"].get("content"), finish_reason=choice.get("finish_reason"),
                prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                endpoint=endpoint, latency_s=time.perf_counter() - t0, logprobs=logprobs))
    finally:
        llm.close()
