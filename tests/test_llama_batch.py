"""Batched decoding across sequences in one llama.cpp context (edgedistill.runtimes.llama_batch):
the same greedy text as one prompt at a time, samples that share a prompt's prefill, seeds that
make sampling reproducible, and the gguf teacher backend on top of it."""

from __future__ import annotations

from edgedistill.runtimes.llama_batch import BatchedDecoder, Job, common_prefix
from edgedistill.runtimes.llama_cpp import LlamaCppRuntime

SYSTEM = {"role": "system", "content": "Reply with the answer only."}
QUESTIONS = ["What is 2 + 2?", "Name a colour.", "How many legs has a cat?", "Capital of France?",
             "Spell 'dog' backwards.", "Is ice cold?", "What is 10 times 3?", "Say hello.",
             "Which is larger, 4 or 9?", "A word that rhymes with cat?", "Count to three.", "Why?"]


def _messages(q: str) -> list[dict]:
    return [SYSTEM, {"role": "user", "content": q}]


def _batched(rt, jobs, slots):
    out = {}
    BatchedDecoder(rt, slots=slots).run(jobs, lambda job, done, s: out.__setitem__(job.key, done))
    return out


def test_common_prefix_keeps_a_token_per_prompt():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert common_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # identical prompts still decode their last token
    assert common_prefix([[7]]) == 0 and common_prefix([]) == 0


def test_greedy_batched_text_equals_one_at_a_time(tiny_gguf):
    with LlamaCppRuntime(tiny_gguf) as rt:
        alone = [rt.generate(_messages(q), 20) for q in QUESTIONS]
        jobs = [Job(key=i, prompt_ids=rt.chat_prompt_ids(_messages(q)), max_tokens=20)
                for i, q in enumerate(QUESTIONS)]
        for slots in (4, 16):  # fewer sequences than prompts: slots are reused as prompts finish
            got = _batched(rt, jobs, slots)
            assert [got[i][0].token_ids for i in range(len(QUESTIONS))] == [g.token_ids for g in alone]
            assert [got[i][0].text for i in range(len(QUESTIONS))] == [g.text for g in alone]
            assert [got[i][0].finish_reason for i in range(len(QUESTIONS))] == [g.finish_reason for g in alone]


def test_samples_share_a_prompt_and_are_reproducible_by_seed(tiny_gguf):
    with LlamaCppRuntime(tiny_gguf) as rt:
        ids = rt.chat_prompt_ids(_messages(QUESTIONS[0]))
        greedy = rt.generate(_messages(QUESTIONS[0]), 12).token_ids
        same = _batched(rt, [Job(key=0, prompt_ids=ids, max_tokens=12, seeds=[1, 2, 3])], 4)[0]
        assert [c.token_ids for c in same] == [greedy] * 3  # greedy samples of one prefill agree

        def sampled(seeds):
            job = Job(key=0, prompt_ids=ids, max_tokens=12, temperature=1.5, seeds=seeds)
            return [c.token_ids for c in _batched(rt, [job], 4)[0]]

        first, again = sampled([11, 12, 13, 14]), sampled([11, 12, 13, 14])
        assert first == again  # a seed fixes a sample, whatever shares its batch
        assert len({tuple(t) for t in first}) > 1  # different seeds: different samples


def test_logprobs_come_with_every_token(tiny_gguf):
    with LlamaCppRuntime(tiny_gguf) as rt:
        job = Job(key=0, prompt_ids=rt.chat_prompt_ids(_messages("Hi")), max_tokens=5, logprobs=3)
        (c,) = _batched(rt, [job], 2)[0]
        assert len(c.logprobs) == len(c.token_ids) + (c.finish_reason == "stop")
        for entry, tok in zip(c.logprobs, c.token_ids):
            assert entry["token_id"] == tok and len(entry["top_logprobs"]) == 3
            assert entry["top_logprobs"][0]["logprob"] >= entry["top_logprobs"][-1]["logprob"]
            assert entry["logprob"] <= 0
