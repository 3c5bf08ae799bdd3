"""A local GGUF teacher through llama-cpp-python, in-process, with batched decoding across
sequences (``teacher.concurrency`` at once). ``teacher.model`` is a GGUF path or ``pypi:NAME``
(see ``edgedistill models list``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edgedistill.config import TeacherConfig
from edgedistill.errors import ConfigError
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
    from edgedistill.integrity import check_gguf

    check_gguf(path, f"teacher.model {ref}")  # a truncated file: exit 2 before llama.cpp sees it
    return path


def _jobs(rt, cfg: TeacherConfig, requests: list[Request], sink: Sink) -> tuple[list, dict]:
    """One job per distinct (messages, parameters but the sample's seed and temperature): the
    samples of a prompt share its prefill."""
    from edgedistill.runtimes.llama_batch import Job

    groups: dict[str, list[Request]] = {}
    for req in requests:
        p = {k: v for k, v in req.params.items() if k not in ("sample", "seed", "temperature")}
        groups.setdefault(json.dumps([req.messages, p], sort_keys=True), []).append(req)
    jobs, members = [], {}
    for key, reqs in groups.items():
        p = reqs[0].params
        ids = rt.chat_prompt_ids(reqs[0].messages)
        if len(ids) + p["max_tokens"] > cfg.n_ctx:
            for req in reqs:
                sink.failed(req, f"request_failed: the prompt ({len(ids)} tokens) and max_tokens "
                                 f"({p['max_tokens']}) do not fit teacher.n_ctx ({cfg.n_ctx})")
            continue
        for start in range(0, len(reqs), max(cfg.concurrency, 1)):  # more samples than sequences
            part = reqs[start:start + max(cfg.concurrency, 1)]
            seeds = [r.params["seed"] if r.params.get("seed") is not None else int(r.key[:8], 16)
                     for r in part]
            jobs.append(Job(key=(key, start), prompt_ids=ids, max_tokens=p["max_tokens"],
                            temperatures=[r.params["temperature"] for r in part], top_p=p.get("top_p"),
                            seeds=seeds, logprobs=p.get("logprobs")))
            members[(key, start)] = part
    return jobs, members


def answer_all(cfg: TeacherConfig, requests: list[Request], sink: Sink) -> None:
    """Every request through one llama.cpp context, ``teacher.concurrency`` sequences at a time
    (edgedistill.runtimes.llama_batch): the shared system prompt is computed once, and the samples
    of one prompt share its prefill."""
    if not requests:
        return
    from edgedistill.runtimes.llama_batch import BatchedDecoder
    from edgedistill.runtimes.llama_cpp import LlamaCppRuntime

    path = gguf_path(cfg.model)
    rt = LlamaCppRuntime(path, n_ctx=256)  # its own context is unused: the decoder makes one
    endpoint = f"llama.cpp:{path.name}"
    try:
        jobs, members = _jobs(rt, cfg, requests, sink)

        def done(job, completions, seconds: float) -> None:
            for req, c in zip(members[job.key], completions):
                sink.answer(Answer(
                    request=req, text=c.text, finish_reason=c.finish_reason,
                    prompt_tokens=len(job.prompt_ids),
                    completion_tokens=len(c.token_ids) + (c.finish_reason == "stop"),
                    endpoint=endpoint, latency_s=seconds,
                    logprobs=compact_logprobs(c.logprobs) if c.logprobs is not None else None))

        BatchedDecoder(rt, slots=cfg.concurrency).run(jobs, done)
    finally:
        rt.close()
