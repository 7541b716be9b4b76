"""Continuous batching whose results do not depend on the batch (``batching = "invariant"``).

One engine thread runs the model. Requests join and leave between steps; every loop turn

1. drops the sequences of cancelled requests (their futures fail with
   :class:`~gateway.backends.engine.decoder.DecodeCancelled`), so a cancelled request stops
   within one step;
2. prefills the requests still prefilling, oldest first, each in its own chunks of
   ``prefill_chunk`` tokens counted from its prompt's start (all of its prompt but the last
   token, alone, at its own shape), until about ``prefill_chunk`` tokens were prefilled this turn
   or the batch has no room for more — so a long prompt delays the running sequences by one
   chunk per step, never by its whole length, and several short prompts join in one turn;
3. when a request's prompt is in its cache, forks it into its ``n`` choices (each a sequence with
   its own copy of the cache, its own sampler and seeded generator) and queues them;
4. admits queued sequences up to ``max_batch`` and runs **one decode step** for all of them at
   the fixed shape (see :mod:`gateway.backends.engine.invariant`): a new sequence's first step
   feeds its prompt's last token, so every logit a choice samples from comes from a decode step
   of the same shape, whether it ran alone or beside ``max_batch - 1`` others.

Sampling, logprobs, stops and text are each choice's own
(:class:`~gateway.backends.engine.decoder.ChoiceRun`), as in the unbatched engine.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from gateway.backends.engine.decoder import ChoiceRun, DecodeCancelled, Emit
from gateway.backends.engine.invariant import InvariantLlama, Row, SequenceCache
from gateway.backends.engine.loader import LoadedModel
from gateway.backends.engine.prompts import DecodeJob
from gateway.backends.engine.text import TokenText

log = logging.getLogger("tiergate.backends.engine.batcher")


@dataclass(eq=False)
class _Request:
    job: DecodeJob
    emit: Emit
    cancelled: threading.Event
    future: Future[int]
    cache: SequenceCache | None = None
    """Allocated by the engine thread at the request's first prefill turn."""
    prefilled: int = 0
    running: int = 0
    """Its choices queued or decoding."""
    generated: int = 0


@dataclass(eq=False)
class _Sequence:
    request: _Request
    run: ChoiceRun
    row: Row


class Batcher:
    """The engine thread of one loaded model in ``invariant`` mode. Thread-safe ``submit``."""

    INITIAL_ROOM = 128
    """Positions past the prompt a new KV cache has (it doubles when full)."""

    def __init__(self, loaded: LoadedModel, *, max_batch: int, prefill_chunk: int,
                 threads: int | None, name: str = "engine") -> None:
        self.loaded = loaded
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.threads = threads
        self.model = InvariantLlama(loaded.model, max_batch, loaded.context_length)
        self.released = self.model.release(loaded.model)
        """Bytes of ``transformers`` weights dropped: the packed copies replace them (the
        loaded model's own forward cannot run after)."""
        self.token_text = TokenText(loaded.tokenizer)
        self._lock = threading.Condition()
        self._incoming: deque[_Request] = deque()
        self._closed = False
        self.step_rows: Counter[int] = Counter()
        """How many decode steps ran with how many sequences."""
        self._thread = threading.Thread(target=self._loop, name=f"tiergate-batch-{name}",
                                         daemon=True)
        self._thread.start()

    def submit(self, job: DecodeJob, emit: Emit, cancelled: threading.Event) -> Future[int]:
        """Queue ``job``; its future holds the tokens generated (or the failure)."""
        future: Future[int] = Future()
        request = _Request(job, emit, cancelled, future)
        with self._lock:
            if self._closed:
                future.set_exception(DecodeCancelled())
                return future
            self._incoming.append(request)
            self._lock.notify()
        return future

    def close(self) -> None:
        """Stop the thread after its current step; queued and running requests are cancelled."""
        with self._lock:
            self._closed = True
            self._lock.notify()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to stop (after :meth:`close`; within one step)."""
        self._thread.join(timeout)

    # -- the engine thread -------------------------------------------------------------------

    def _loop(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        threads = torch.get_num_threads()
        prefilling: deque[_Request] = deque()
        queued: deque[_Sequence] = deque()
        running: list[_Sequence] = []
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not (self._closed or self._incoming or prefilling or queued
                               or running):
                        self._lock.wait()
                    closed = self._closed
                    taken = list(self._incoming)
                    self._incoming.clear()
                for request in taken:
                    request.job.threads = threads
                    prefilling.append(request)
                if closed:
                    for request in {s.request for s in (*queued, *running)} | set(prefilling):
                        request.cancelled.set()
                self._drop_cancelled(prefilling, queued, running)
                if closed:
                    return
                try:
                    self._turn(prefilling, queued, running)
                except Exception as exc:  # a bug or an out-of-memory: fail what was involved
                    log.exception("batched decode step failed")
                    for request in {s.request for s in (*queued, *running)} | set(prefilling):
                        if not request.future.done():
                            request.future.set_exception(exc)
                    prefilling.clear()
                    queued.clear()
                    running.clear()

    def _drop_cancelled(self, prefilling: deque[_Request], queued: deque[_Sequence],
                        running: list[_Sequence]) -> None:
        gone = {r for r in prefilling if r.cancelled.is_set()}
        gone |= {s.request for s in (*queued, *running) if s.request.cancelled.is_set()}
        if not gone:
            return
        for request in gone:
            if not request.future.done():
                request.future.set_exception(DecodeCancelled())
        kept = [r for r in prefilling if r not in gone]
        prefilling.clear()
        prefilling.extend(kept)
        kept_queued = [s for s in queued if s.request not in gone]
        queued.clear()
        queued.extend(kept_queued)
        running[:] = [s for s in running if s.request not in gone]

    def _turn(self, prefilling: deque[_Request], queued: deque[_Sequence],
              running: list[_Sequence]) -> None:
        budget = self.prefill_chunk
        while prefilling and budget > 0 and len(queued) + len(running) < self.max_batch:
            request = prefilling[0]
            prompt = request.job.prompt_ids
            if request.cache is None:
                request.cache = self.model.new_cache(self._capacity(request.job, len(prompt)))
            end = min(request.prefilled + self.prefill_chunk, len(prompt) - 1)
            if end > request.prefilled:
                self.model.prefill(request.cache, prompt[request.prefilled:end],
                                   request.prefilled)
                budget -= end - request.prefilled
                request.prefilled = end
            if request.prefilled >= len(prompt) - 1:
                prefilling.popleft()
                queued.extend(self._fork(request))
        while queued and len(running) < self.max_batch:
            running.append(queued.popleft())
        if running:
            self._step(running)

    @staticmethod
    def _capacity(job: DecodeJob, needed: int) -> int:
        """A cache's positions for ``needed`` of them: the prompt and ``INITIAL_ROOM`` more at
        first, then doubling, never past the prompt and ``max_tokens`` (a function of the request
        only, so a cache's layout never depends on the batch)."""
        limit = len(job.prompt_ids) + job.max_tokens
        capacity = min(len(job.prompt_ids) + Batcher.INITIAL_ROOM, limit)
        while capacity < needed:
            capacity = min(capacity * 2, limit)
        return capacity

    def _fork(self, request: _Request) -> list[_Sequence]:
        job = request.job
        cache = request.cache
        assert cache is not None  # allocated at its first prefill turn
        n = len(job.seeds)
        request.running = n
        last, position = job.prompt_ids[-1], len(job.prompt_ids) - 1
        return [_Sequence(request, ChoiceRun(self.loaded, self.token_text, job, index, seed,
                                             self.model.logits_size),
                          Row(cache if index == n - 1 else cache.copy(), last, position))
                for index, seed in enumerate(job.seeds)]

    def _step(self, running: list[_Sequence]) -> None:
        for sequence in running:
            row = sequence.row
            if row.position >= row.cache.capacity:
                row.cache.grow(self._capacity(sequence.request.job, row.position + 1))
        logits = self.model.decode([s.row for s in running])
        self.step_rows[len(running)] += 1
        finished: list[_Sequence] = []
        for slot, sequence in enumerate(running):
            chunk = sequence.run.step(logits[slot])
            request = sequence.request
            request.emit(chunk)
            request.generated += 1
            if chunk.finish_reason is None:
                sequence.row.token = sequence.run.token
                sequence.row.position += 1
                continue
            finished.append(sequence)
            request.running -= 1
            if request.running == 0 and not request.future.done():
                request.future.set_result(request.generated)
        if finished:
            running[:] = [s for s in running if s not in finished]

