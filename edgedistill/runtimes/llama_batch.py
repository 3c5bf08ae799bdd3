"""Many prompts at once through one llama.cpp context: continuous batching across sequences.

A llama.cpp context holds several sequences in one KV cache (``n_seq_max``, unified cache). Every
step decodes one batch that carries the next token of each sequence that is generating and the
prompt tokens of sequences being admitted, so the weights are read once per step for all of
them instead of once per prompt. Two kinds of sharing save prompt processing:

- the longest prefix every prompt has in common (the chat template's system turn) is decoded once
  into a sequence of its own and copied (``llama_memory_seq_cp``: the cells are shared, not
  duplicated) into each new sequence;
- a prompt asked for ``samples`` answers (self-consistency) is decoded once and copied into the
  other samples' sequences before they diverge.

Sampling is llama.cpp's own sampler chain per sequence (greedy, or top-p, temperature and a
seeded distribution), so a sequence's text does not depend on which others share its batch.
Imports llama_cpp only inside the class (this package must import without it), and nothing from
``runtimes.llama_cpp``: ``LlamaCppRuntime.generate_batch`` builds on this module.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from edgedistill.errors import ArtifactError
from edgedistill.runtimes import Runtime


@dataclass
class Job:
    """One prompt, asked ``samples`` times (each sample gets its own seed)."""

    key: Any
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    temperatures: list[float] | None = None  # one per sample, instead of ``temperature``
    logprobs: int | None = None  # top-k logprobs per generated token
    on_token: Callable[[int, int], None] | None = None  # (sample, token id) as each is generated
    cancelled: bool = False  # set from any thread: the job ends at its next token ("cancelled")

    @property
    def samples(self) -> int:
        return len(self.seeds)

    def temperature_of(self, sample: int) -> float:
        return self.temperatures[sample] if self.temperatures else self.temperature


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" | "length"
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class _Slot:
    seq: int
    job: Job | None = None
    index: int = 0  # which sample of the job
    feed: list[int] = field(default_factory=list)  # tokens to decode next
    pos: int = 0  # tokens already in this sequence's cache
    out: list[int] = field(default_factory=list)
    lp: list[dict[str, Any]] = field(default_factory=list)
    sampler: Any = None
    leader: bool = True  # decodes the prompt; followers copy it
    result: Completion | None = None


def common_prefix(prompts: list[list[int]]) -> int:
    """How many leading tokens every prompt shares (at most the shortest minus one: each prompt
    keeps a token of its own to produce the logits of its first answer token)."""
    if not prompts:
        return 0
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        i = 0
        while i < n and p[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


class BatchedDecoder:
    """Runs jobs on ``rt``'s model (a gguf runtime, ``LlamaCppRuntime``) with up to ``slots``
    sequences in flight, on as many threads as ``rt`` uses unless ``threads`` says otherwise."""

    def __init__(self, rt: Runtime, *, slots: int = 8, n_batch: int = 512,
                 threads: int | None = None):
        import llama_cpp

        self.lc, self.rt = llama_cpp, rt
        self.slots, self.n_batch = max(1, slots), n_batch
        self._threads = threads or rt.llm.n_threads
        self.ctx = None

    # --- the context -----------------------------------------------------------------------
    def open_context(self, n_ctx: int) -> None:
        lc = self.lc
        p = lc.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch = n_ctx, self.n_batch, self.n_batch
        p.n_seq_max = self.slots + 1  # one more: the shared prefix
        p.kv_unified = True
        p.n_threads = p.n_threads_batch = self._threads
        p.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.ctx = lc.llama_init_from_model(self.rt.llm.model, p)
        if not self.ctx:
            raise ArtifactError(f"llama.cpp could not make a {n_ctx}-token context for "
                                f"{self.rt.path.name} with {self.slots} sequences.",
                                hint="Lower the concurrency (teacher.concurrency) or teacher.max_tokens.")
        self.mem = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(self.n_batch, 0, self.slots + 1)

    def close(self) -> None:
        if self.ctx is not None:
            self.lc.llama_batch_free(self.batch)
            self.lc.llama_free(self.ctx)
            self.ctx = None

    def _sampler(self, job: Job, sample: int) -> Any:
        lc = self.lc
        seed, temperature = job.seeds[sample], job.temperature_of(sample)
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if temperature <= 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        else:
            if job.top_p is not None and job.top_p < 1:
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(job.top_p, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(temperature))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    # --- one step ----------------------------------------------------------------------------
    def add_token(self, n: int, token: int, pos: int, seq: int, logits: bool) -> None:
        b = self.batch
        b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = token, pos, 1, logits
        b.seq_id[n][0] = seq

    def decode_batch(self, n: int) -> None:
        self.batch.n_tokens = n
        rc = self.lc.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise ArtifactError(f"llama.cpp could not decode a batch of {n} tokens with "
                                f"{self.rt.path.name} (llama_decode returned {rc}).",
                                hint="The context is full: lower teacher.max_tokens or teacher.concurrency.")

    def _prefill_prefix(self, ids: list[int]) -> None:
        for start in range(0, len(ids), self.n_batch):
            chunk = ids[start:start + self.n_batch]
            for i, tok in enumerate(chunk):
                self.add_token(i, tok, start + i, self.slots, False)
            self.decode_batch(len(chunk))

    def _top_logprobs(self, idx: int, chosen: int, k: int) -> dict[str, Any]:
        import numpy as np

        row = np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, idx), shape=(self.rt.n_vocab,))
        row = row.astype(np.float64)
        lse = np.log(np.exp(row - row.max()).sum()) + row.max()
        top = np.argpartition(-row, k)[:k]
        top = top[np.argsort(-row[top])]

        def entry(t: int) -> dict[str, Any]:
            raw = self.rt.llm.detokenize([int(t)], special=True)
            return {"token": raw.decode("utf-8", errors="replace"), "bytes": list(raw),
                    "token_id": int(t), "logprob": float(row[t] - lse)}

        return {**entry(chosen), "top_logprobs": [entry(t) for t in top]}

    def _sample(self, slot: _Slot, idx: int) -> None:
        if slot.job.cancelled:
            slot.result = Completion(slot.out, self.rt.decode(slot.out), "cancelled", slot.lp or None)
            return
        tok = int(self.lc.llama_sampler_sample(slot.sampler, self.ctx, idx))
        if slot.job.logprobs:
            slot.lp.append(self._top_logprobs(idx, tok, slot.job.logprobs))
        if self.rt.is_stop(tok):
            slot.result = Completion(slot.out, self.rt.decode(slot.out), "stop", slot.lp or None)
            return
        slot.out.append(tok)
        if slot.job.on_token is not None:
            slot.job.on_token(slot.index, tok)
        if len(slot.out) >= slot.job.max_tokens:
            slot.result = Completion(slot.out, self.rt.decode(slot.out), "length", slot.lp or None)
        else:
            slot.feed = [tok]

    # --- the loop ----------------------------------------------------------------------------
    def run(self, jobs: Iterable[Job], done: Callable[[Job, list[Completion], float], None]) -> None:
        """Answer every job; ``done(job, completions, seconds)`` is called as each one finishes."""
        jobs = list(jobs)
        if not jobs:
            return
        too_many = [j for j in jobs if j.samples > self.slots]
        if too_many:
            raise ArtifactError(f"{too_many[0].samples} samples of one prompt need as many sequences; "
                                f"this decoder has {self.slots}.", hint="Raise teacher.concurrency.")
        prefix_len = common_prefix([j.prompt_ids for j in jobs])
        per_slot = max(len(j.prompt_ids) - prefix_len + j.max_tokens for j in jobs) + 1
        self.open_context(prefix_len + self.slots * per_slot + 8)
        try:
            self._prefill_prefix(jobs[0].prompt_ids[:prefix_len])
            self._loop(deque(jobs), prefix_len, done)
        finally:
            self.close()

    def serve(self, take: Callable[[bool], list[Job] | None],
              done: Callable[[Job, list[Completion], float], None], n_ctx: int) -> None:
        """Answer jobs as they arrive (a server's requests), in one ``n_ctx``-token context (the
        KV cache all sequences share): ``take(idle)`` returns the jobs that arrived since it was
        last called (while ``idle``, nothing is in flight and it may wait for one), or None to
        stop once the jobs in flight are done. No shared prefix: each prompt is its own."""
        self.open_context(n_ctx)
        try:
            self._loop(deque(), 0, done, take)
        finally:
            self.close()

    def _admit(self, queue: deque, free: list[_Slot], prefix_len: int) -> list[list[_Slot]]:
        groups = []
        while queue and len(free) >= queue[0].samples:
            job = queue.popleft()
            group = [free.pop(0) for _ in range(job.samples)]
            for i, slot in enumerate(group):
                slot.job, slot.index, slot.out, slot.lp, slot.result = job, i, [], [], None
                slot.sampler = self._sampler(job, i)
                slot.leader = i == 0
                slot.pos = prefix_len
                slot.feed = list(job.prompt_ids[prefix_len:]) if i == 0 else []
            self.lc.llama_memory_seq_cp(self.mem, self.slots, group[0].seq, -1, -1)
            groups.append(group)
        return groups

    def _loop(self, queue: deque, prefix_len: int, done: Callable,
              arrivals: Callable[[bool], list[Job] | None] | None = None) -> None:
        slots = [_Slot(seq=s) for s in range(self.slots)]
        free = list(slots)
        groups: list[list[_Slot]] = []
        started: dict[int, float] = {}
        while queue or groups or arrivals is not None:
            if arrivals is not None:  # serving: admit what arrived; stop when told and idle
                more = arrivals(not queue and not groups)
                if more is None:
                    arrivals = None
                else:
                    queue.extend(more)
                if not queue and not groups:
                    continue
            for g in self._admit(queue, free, prefix_len):
                groups.append(g)
                started[id(g[0].job)] = time.perf_counter()
            n, wants = 0, []  # wants: (batch index, slot) for each slot that samples after this step
            for g in groups:  # generating slots first: one token each
                for s in g:
                    if s.result is None and s.feed and (not s.leader or s.out):
                        self.add_token(n, s.feed[0], s.pos, s.seq, True)
                        wants.append((n, s))
                        n += 1
            for g in groups:  # then prompts, in chunks that fit
                lead = g[0]
                if lead.out or not lead.feed or lead.result is not None or n >= self.n_batch:
                    continue
                take = lead.feed[: self.n_batch - n]
                for i, tok in enumerate(take):
                    last = i == len(take) - 1 and len(take) == len(lead.feed)
                    self.add_token(n, tok, lead.pos + i, lead.seq, last)
                    if last:
                        wants.append((n, lead))
                    n += 1
                lead.pos += len(take)
                lead.feed = lead.feed[len(take):]
            if n == 0:
                raise ArtifactError("the batched decoder has nothing to decode (a bug)")
            self.decode_batch(n)
            for idx, s in wants:
                if s.leader and not s.out and s.pos == len(s.job.prompt_ids):  # prompt just finished
                    g = next(g for g in groups if g[0] is s)
                    for follower in g[1:]:
                        self.lc.llama_memory_seq_cp(self.mem, s.seq, follower.seq, -1, -1)
                        follower.pos = s.pos
                        self._sample(follower, idx)
                    s.feed = []
                    self._sample(s, idx)
                else:
                    s.pos += 1
                    s.feed = []
                    self._sample(s, idx)
            for g in list(groups):
                for s in g:
                    if s.result is not None and s.sampler is not None:
                        self.lc.llama_memory_seq_rm(self.mem, s.seq, -1, -1)
                        self.lc.llama_sampler_free(s.sampler)
                        s.sampler = None
                if all(s.result is not None for s in g):
                    groups.remove(g)
                    free.extend(g)
                    free.sort(key=lambda s: s.seq)
                    done(g[0].job, [s.result for s in g], time.perf_counter() - started.pop(id(g[0].job)))


@dataclass
class ScoreStats:
    prompts: int = 0
    prompt_tokens: int = 0  # what the prompts hold in all
    decoded_tokens: int = 0  # what was decoded: a shared prefix counts once
    seconds: float = 0.0


def next_token_logprobs(rt: Runtime, groups: list[list[list[int]]], token_ids: list[int],
                        done: Callable[[int, int, list[float]], None], *, slots: int = 8,
                        n_batch: int = 512, threads: int | None = None) -> ScoreStats:
    """The log-probability of each of ``token_ids`` as the next token after every prompt, in one
    forward pass per prompt: no sampling, nothing generated. ``groups`` holds prompts that share a
    long prefix (a judge's instructions and one conversation, asked about several replies): a
    group's common prefix is decoded once into a sequence of its own and copied into each prompt's
    sequence, and what consecutive groups share (the instructions) stays decoded between them.
    ``done(group, index, logprobs)`` is called for each prompt as soon as it is scored."""
    import numpy as np

    dec = BatchedDecoder(rt, slots=slots, n_batch=n_batch, threads=threads)
    lc, pre_seq = dec.lc, dec.slots
    chunks = [(g, i, prompts[i:i + dec.slots]) for g, prompts in enumerate(groups)
              for i in range(0, len(prompts), dec.slots) if prompts]
    if not chunks:
        return ScoreStats()
    need = max(common_prefix(c) + sum(len(p) - common_prefix(c) for p in c) for _, _, c in chunks)
    stats = ScoreStats()
    t0 = time.perf_counter()
    dec.open_context(need + 8)
    try:
        held: list[int] = []
        for g, first, chunk in chunks:
            pre = common_prefix(chunk)
            keep = common_prefix([held + [-1], chunk[0][:pre] + [-2]]) if held else 0
            if keep < len(held):
                lc.llama_memory_seq_rm(dec.mem, pre_seq, keep, -1)
            todo = chunk[0][keep:pre]
            for start in range(0, len(todo), dec.n_batch):
                part = todo[start:start + dec.n_batch]
                for i, tok in enumerate(part):
                    dec.add_token(i, tok, keep + start + i, pre_seq, False)
                dec.decode_batch(len(part))
            held = chunk[0][:pre]
            stats.decoded_tokens += len(todo)
            feeds = []
            for s, ids in enumerate(chunk):
                lc.llama_memory_seq_cp(dec.mem, pre_seq, s, -1, -1)
                feeds.append((s, ids[pre:]))
                stats.prompts += 1
                stats.prompt_tokens += len(ids)
                stats.decoded_tokens += len(ids) - pre
            # every suffix token in batches of n_batch; a sequence's last token asks for logits
            flat = [(s, pre + j, tok, j == len(suffix) - 1) for s, suffix in feeds
                    for j, tok in enumerate(suffix)]
            for start in range(0, len(flat), dec.n_batch):
                part = flat[start:start + dec.n_batch]
                wants = []
                for n, (s, pos, tok, last) in enumerate(part):
                    dec.add_token(n, tok, pos, s, last)
                    if last:
                        wants.append((n, s))
                dec.decode_batch(len(part))
                for n, s in wants:
                    row = np.ctypeslib.as_array(lc.llama_get_logits_ith(dec.ctx, n),
                                                shape=(rt.n_vocab,)).astype(np.float64)
                    top = row.max()
                    lse = top + np.log(np.exp(row - top).sum())
                    done(g, first + s, [float(row[t] - lse) for t in token_ids])
            for s, _ in feeds:
                lc.llama_memory_seq_rm(dec.mem, s, -1, -1)
    finally:
        dec.close()
    stats.seconds = time.perf_counter() - t0
    return stats
