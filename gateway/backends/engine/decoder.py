"""One request's decode loop, run in a worker thread.

Determinism under concurrency is a property of this loop, by construction:

- a request decodes alone: batch size 1, its own KV cache, no padding, no batching with other
  requests — the tensors it computes, and their shapes, depend on the request alone;
- each choice draws from its own CPU ``torch.Generator`` seeded with its seed
  (:mod:`gateway.backends.engine.sampling`), so no other request can consume its random numbers;
- every job runs its kernels with the backend's intra-op thread count (settings ``threads``;
  set per worker thread, as OpenMP and MKL keep it per calling thread), and OpenMP gives every
  calling thread its own team with a static work split, so a GEMM's arithmetic order does not
  depend on what else runs. ``tests/gateway/backends/test_engine.py`` checks this: 20 concurrent
  requests (and 2-thread requests beside 1-thread ones) give the token ids each gives alone.

The ``n`` choices of a request share one prefill (its KV cache is copied) and then decode one
after the other. Between any two forward passes the loop checks its cancel flag, so a request
whose client went away stops within one token.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

import torch

from gateway.backends.engine.loader import LoadedModel
from gateway.backends.engine.prompts import DecodeJob
from gateway.backends.engine.sampling import ChoiceSampler, TokenChoice
from gateway.backends.engine.text import IncrementalDetokenizer, StopMatcher, TokenText
from gateway.kernel.generation import GenerationChunk, TokenLogprob, TopLogprob

Emit = Callable[[GenerationChunk], None]


class DecodeCancelled(Exception):
    """The request was cancelled (client gone, shutdown) while decoding."""


class Decoder:
    """Decodes jobs on one loaded model. Thread-safe: every job keeps its state to itself."""

    def __init__(self, loaded: LoadedModel, threads: int | None = None) -> None:
        self.loaded = loaded
        self.threads = threads
        """Intra-op threads of every job (``None``: torch's default)."""
        self.token_text = TokenText(loaded.tokenizer)

    def _forward(self, input_ids: list[int], cache: Any) -> tuple[torch.Tensor, Any]:
        loaded = self.loaded
        tensor = torch.tensor([input_ids], dtype=torch.long, device=loaded.device)
        kwargs: dict[str, Any] = {"input_ids": tensor, "past_key_values": cache, "use_cache": True}
        if loaded.accepts_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        output = loaded.model(**kwargs)
        return output.logits[0, -1], output.past_key_values

    def run(self, job: DecodeJob, emit: Emit, cancelled: threading.Event) -> int:
        """Decode every choice of ``job``, emitting one chunk per token; the tokens generated."""
        # OpenMP's team size and MKL's thread count are per calling thread: set them for this
        # worker thread on every job, whatever another backend in the process asked for.
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        job.threads = torch.get_num_threads()
        total = 0
        with torch.inference_mode():
            if cancelled.is_set():
                raise DecodeCancelled
            first_logits, prefill_cache = self._forward(job.prompt_ids, None)
            n = len(job.seeds)
            for index, seed in enumerate(job.seeds):
                cache = prefill_cache if index == n - 1 else copy.deepcopy(prefill_cache)
                total += self._choice(job, index, seed, first_logits, cache, emit, cancelled)
        return total

    def _choice(self, job: DecodeJob, index: int, seed: int | None, logits: torch.Tensor,
                cache: Any, emit: Emit, cancelled: threading.Event) -> int:
        run = ChoiceRun(self.loaded, self.token_text, job, index, seed, logits.shape[-1])
        while True:
            if cancelled.is_set():
                raise DecodeCancelled
            chunk = run.step(logits)
            emit(chunk)
            if chunk.finish_reason is not None:
                return run.generated
            logits, cache = self._forward([run.token], cache)


class ChoiceRun:
    """One choice's state between steps: its sampler, detokenizer and stop matcher. Each step
    turns one position's logits into the chunk of one token (and whether the choice ended)."""

    def __init__(self, loaded: LoadedModel, token_text: TokenText, job: DecodeJob, index: int,
                 seed: int | None, logits_size: int) -> None:
        params = job.sampling
        self.loaded, self.token_text, self.job, self.index = loaded, token_text, job, index
        self.sampler = ChoiceSampler(
            params, seed=seed, vocab_size=loaded.vocab_size, logits_size=logits_size,
            prompt_ids=job.prompt_ids, eos_token_ids=loaded.eos_token_ids, device=loaded.device)
        self.detokenizer = IncrementalDetokenizer(loaded.tokenizer, job.prompt_ids)
        self.stops = StopMatcher(params.stop)
        self.stop_ids = set(params.stop_token_ids)
        self.min_tokens = params.min_tokens or 0
        self.generated = 0
        self.token = -1
        """The last token chosen."""

    def _logprob(self, choice: TokenChoice) -> TokenLogprob | None:
        if choice.logprob is None:
            return None
        text, raw = self.token_text.get(choice.token_id)
        top = []
        for token_id, logprob in choice.top or []:
            top_text, top_raw = self.token_text.get(token_id)
            top.append(TopLogprob(top_text, logprob, token_id, top_raw))
        return TokenLogprob(text, choice.logprob, choice.token_id, raw, top)

    def step(self, logits: torch.Tensor) -> GenerationChunk:
        """The next token's chunk; its ``finish_reason`` is set when the choice ended."""
        params, stops = self.job.sampling, self.stops
        choice = self.sampler.choose(logits, params.logprobs)
        token = self.token = choice.token_id
        self.generated += 1
        generated = self.generated
        chunk = GenerationChunk(index=self.index, token_ids=[token])
        logprob = self._logprob(choice)
        if logprob is not None:
            chunk.logprobs = [logprob]
        finished_by_token = True
        if token in self.stop_ids:
            chunk.finish_reason, chunk.stop_reason = "stop", token
        elif token in self.loaded.eos_token_ids and not params.ignore_eos:
            chunk.finish_reason = "stop"
        else:
            finished_by_token = False
            last = generated >= self.job.max_tokens
            delta = self.detokenizer.push(token) + (self.detokenizer.flush() if last else "")
            chunk.text, stop = stops.feed(delta, check=generated >= self.min_tokens, final=last)
            if stop is not None:
                chunk.finish_reason, chunk.stop_reason = "stop", stop
            elif last:
                chunk.finish_reason = "length"
        if finished_by_token:
            # The stop token adds no text, and is not one of the answer's tokens in its
            # logprobs (as OpenAI and vLLM report them: the logprobs' tokens join to the
            # content); its id stays in token_ids. Release what the detokenizer and the
            # matcher hold.
            chunk.logprobs = None
            chunk.text, stop = stops.feed(self.detokenizer.flush(),
                                          check=generated >= self.min_tokens, final=True)
            if stop is not None:
                chunk.stop_reason = stop
        return chunk
