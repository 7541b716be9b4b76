"""The in-process engine backend: transformers + torch, decoded by tiergate itself.

A request is validated and tokenized on the event loop (fast, and it keeps the tokenizer's
encoder on one thread), then decoded in a worker thread (torch releases the GIL) while the event
loop relays its chunks. At most ``max_batch`` requests decode at once; more wait for a slot, and a
request cancelled while waiting never starts. A request that is cancelled while decoding (client
gone, ``asyncio`` cancellation, shutdown) stops within one token, and its slot is freed only
once its decode has stopped.

``batching = "off"``: each request decodes alone in a worker thread
(:mod:`gateway.backends.engine.decoder`); ``batching = "invariant"``: the requests share one
engine thread that batches their choices at a fixed shape
(:mod:`gateway.backends.engine.batcher`). Either way a request's output does not depend on what
else runs; the two modes' bits differ from each other, so records say which one decoded.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import platform
import secrets
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.backends.settings import EngineModelSettings
from gateway.kernel.backend import Backend
from gateway.kernel.errors import ConfigError, ServiceUnavailableError, TiergateError
from gateway.kernel.generation import (
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    StreamAccumulator,
    Timing,
    Usage,
    prompt_batch,
)
from gateway.kernel.modeltuple import ModelTuple, Quantization

if TYPE_CHECKING:
    from gateway.backends.engine.batcher import Batcher
    from gateway.backends.engine.decoder import Decoder
    from gateway.backends.engine.loader import LoadedModel
    from gateway.backends.engine.prompts import DecodeJob

log = logging.getLogger("tiergate.backends.engine")

_END = object()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for records."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


class EngineBackend(Backend):
    """A model decoded in-process. Safe for concurrent use."""

    def __init__(self, name: str, settings: EngineModelSettings) -> None:
        super().__init__(name)
        if settings.path is None:
            raise ConfigError(f"model {name}: no path (a packaged model is resolved to one by "
                              "the registry)")
        self.path: Path = settings.path
        self.settings = settings
        self._loaded: LoadedModel | None = None
        self._decoder: Decoder | None = None
        self._batcher: Batcher | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._slots = asyncio.Semaphore(settings.max_batch)
        self._active: set[threading.Event] = set()
        self._waiting = 0
        self._peak = 0
        self._tokens = 0
        self._runtime: dict[str, Any] = {}
        self._tuple = self._build_tuple()

    # -- identity ----------------------------------------------------------------------------

    def _build_tuple(self) -> ModelTuple:
        s = self.settings
        loaded = self._loaded
        if loaded is None:  # before start: what the settings pin
            quantization = s.quantization or (
                Quantization(method=s.int8_method, bits=8) if s.int8_method else Quantization())
            weights, adapter = s.weights_sha256, s.adapter
        else:
            quantization, weights, adapter = (loaded.quantization, loaded.weights_sha256,
                                              loaded.adapter)
        return ModelTuple(
            name=self.name,
            engine="transformers",
            engine_version=f"transformers {_version('transformers')}; torch {_version('torch')}",
            upstream_model=self.path.stem if self.path.is_file() else self.path.name,
            base_weights_sha256=weights,
            adapter=adapter,
            quantization=quantization,
            source=str(self.path),
        )

    def describe(self) -> ModelTuple:
        return self._tuple

    @property
    def loaded(self) -> LoadedModel:
        """The loaded model, tokenizer and their facts (after :meth:`start`)."""
        if self._loaded is None:
            raise ServiceUnavailableError(f"model {self.name} is not started")
        return self._loaded

    def _build_runtime(self, loaded: LoadedModel) -> dict[str, Any]:
        import torch

        device = loaded.device
        cuda = device.type == "cuda"
        return {
            "device": torch.cuda.get_device_name(device) if cuda else cpu_name(),
            "device_type": device.type,
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "threads": self.settings.threads or torch.get_num_threads(),
            "dtype": str(loaded.dtype).removeprefix("torch."),
            "chat_template": loaded.chat_format.source,
            "batching": self.batching(),
            "deterministic": {
                "batching": (
                    "none: each request decodes alone (batch 1, own KV cache)"
                    if self.settings.batching == "off" else
                    "invariant: fixed-shape decode steps, per-sequence attention and KV cache, "
                    "prompt prefilled alone in fixed chunks"),
                "sampler": "inverse-CDF, float64 on CPU, CPU torch.Generator per choice",
                "logprobs": "raw model distribution",
                "torch_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                **({"cudnn_deterministic": torch.backends.cudnn.deterministic,
                    "tf32_matmul": torch.backends.cuda.matmul.allow_tf32} if cuda else {}),
            },
        }

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        from gateway.backends.engine.decoder import Decoder
        from gateway.backends.engine.loader import load_model

        # transformers resolves its classes lazily, and two threads resolving them at once can
        # fail ("cannot import name AutoModelForCausalLM"): they are resolved first, in a worker
        # thread (seconds, the first time: never on the event loop, which serves meanwhile);
        # the registry starts engines one after the other.
        await asyncio.to_thread(_resolve_transformers)
        loaded = await asyncio.to_thread(load_model, self.settings)
        if loaded.device.type == "cuda":
            self._cuda_determinism()
        self._loaded = loaded
        s = self.settings
        if s.batching == "invariant":
            from gateway.backends.engine.batcher import Batcher

            self._batcher = await asyncio.to_thread(
                Batcher, loaded, max_batch=s.max_batch, prefill_chunk=s.prefill_chunk,
                threads=s.threads, name=self.name)
        else:
            self._decoder = Decoder(loaded, s.threads)
            self._executor = ThreadPoolExecutor(max_workers=s.max_batch,
                                                thread_name_prefix=f"tiergate-engine-{self.name}")
        self._tuple = self._build_tuple()
        self._runtime = self._build_runtime(loaded)
        log.info("model %s: %s on %s, %d threads, tuple %s", self.name, self._tuple.upstream_model,
                 self._runtime["device"], self._runtime["threads"], self._tuple.short_digest())

    @staticmethod
    def _cuda_determinism() -> None:
        """Deterministic kernels on CUDA. cuBLAS also needs ``CUBLAS_WORKSPACE_CONFIG=:4096:8``
        in the process environment before CUDA starts (set it where the process is launched);
        without it torch warns instead of failing (``warn_only``)."""
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    async def aclose(self) -> None:
        for cancelled in list(self._active):
            cancelled.set()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self._batcher is not None:
            batcher, self._batcher = self._batcher, None
            batcher.close()
            await asyncio.to_thread(batcher.join, 60)
        self._decoder = None
        self._loaded = None

    async def health(self) -> dict[str, Any]:
        if self._loaded is None:
            return {"status": "not started"}
        return {"status": "ok", "decoding": len(self._active), "waiting": self._waiting,
                "peak_decoding": self._peak, "max_batch": self.settings.max_batch,
                "batching": self.settings.batching, "tokens_generated": self._tokens,
                **({"step_rows": dict(sorted(self._batcher.step_rows.items()))}
                   if self._batcher is not None else {})}

    # -- decoding ----------------------------------------------------------------------------

    def _job(self, request: GenerationRequest) -> DecodeJob:
        from gateway.backends.engine.prompts import build_job

        loaded = self._loaded
        if loaded is None:
            raise ServiceUnavailableError(f"model {self.name} is not started")
        return build_job(request, loaded.tokenizer, loaded.chat_format,
                         vocab_size=loaded.vocab_size, context_length=loaded.context_length,
                         default_max_tokens=self.settings.max_new_tokens)

    def _jobs(self, request: GenerationRequest) -> list[DecodeJob]:
        """One job per prompt, every one validated before any decodes. A batch's prompts share
        one seed (drawn here when the request samples without one), as OpenAI's do."""
        batch = prompt_batch(request.prompt)
        if batch is None:
            return [self._job(request)]
        sampling = request.sampling
        drawn = sampling.seed is None and not sampling.greedy
        if drawn:
            sampling = replace(sampling, seed=secrets.randbits(63))
        jobs = [self._job(replace(request, prompt=prompt, sampling=sampling)) for prompt in batch]
        for job in jobs:
            job.seed_drawn = drawn
        return jobs

    async def _decode_all(self, jobs: list[DecodeJob], n: int
                          ) -> AsyncGenerator[GenerationChunk, None]:
        """The jobs of one request, one after the other: prompt ``i``'s choice ``j`` is choice
        ``i * n + j``; one usage chunk at the end, for them all."""
        if len(jobs) == 1:
            async with aclosing(self._decode(jobs[0])) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        usage = Usage()
        for position, job in enumerate(jobs):
            async with aclosing(self._decode(job)) as chunks:
                async for chunk in chunks:
                    if chunk.index is not None:
                        chunk.index += position * n
                        yield chunk
                    elif chunk.usage is not None:
                        usage.prompt_tokens += chunk.usage.prompt_tokens
                        usage.completion_tokens += chunk.usage.completion_tokens
        runtime = self._job_runtime(jobs[0])
        runtime["seeds"] = [seed for job in jobs for seed in job.seeds]
        yield GenerationChunk(index=None, usage=usage, runtime=runtime)

    def _job_runtime(self, job: DecodeJob) -> dict[str, Any]:
        runtime = {**self._runtime, "seeds": list(job.seeds), "seed_drawn": job.seed_drawn}
        if job.threads is not None:
            runtime["threads"] = job.threads
        return runtime

    async def _decode(self, job: DecodeJob) -> AsyncGenerator[GenerationChunk, None]:
        from gateway.backends.engine.decoder import DecodeCancelled

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def relay(chunk: GenerationChunk) -> None:  # on the event loop
            self._tokens += len(chunk.token_ids or ())
            queue.put_nowait(chunk)

        def emit(chunk: GenerationChunk) -> None:  # in the worker thread
            loop.call_soon_threadsafe(relay, chunk)

        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            future = self._submit(job, emit, cancelled)
            self._active.add(cancelled)
            self._peak = max(self._peak, len(self._active))
            future.add_done_callback(lambda _: queue.put_nowait(_END))
            try:
                while (item := await queue.get()) is not _END:
                    yield item
                try:
                    generated = future.result()
                except DecodeCancelled as exc:
                    raise ServiceUnavailableError(f"model {self.name} stopped decoding",
                                                  retry_after=1) from exc
                except TiergateError:
                    raise
                except Exception as exc:
                    log.exception("model %s: request %s: decoding failed", self.name,
                                  job.request_id)
                    raise TiergateError(f"model {self.name} failed to decode; see the "
                                        "gateway's logs") from exc
                yield GenerationChunk(
                    index=None,
                    usage=Usage(prompt_tokens=len(job.prompt_ids), completion_tokens=generated),
                    prompt_token_ids=list(job.prompt_ids), rendered_prompt=job.rendered_prompt,
                    runtime=self._job_runtime(job))
            finally:
                cancelled.set()
                if not future.done():
                    # Hold the slot until the decode has really stopped (within one token).
                    await asyncio.wait([future])
                if not future.cancelled():
                    future.exception()  # retrieved: a stopped decode's DecodeCancelled
                self._active.discard(cancelled)
        finally:
            self._slots.release()

    def _submit(self, job: DecodeJob, emit: Callable[[GenerationChunk], None],
                cancelled: threading.Event) -> asyncio.Future[int]:
        """Start decoding ``job``: in the engine thread, or in a worker thread of its own."""
        if self._batcher is not None:
            return asyncio.wrap_future(self._batcher.submit(job, emit, cancelled))
        decoder, executor = self._decoder, self._executor
        if decoder is None or executor is None:
            raise ServiceUnavailableError(f"model {self.name} is shutting down")
        try:
            return asyncio.get_running_loop().run_in_executor(executor, decoder.run, job, emit,
                                                              cancelled)
        except RuntimeError as exc:  # the executor was shut down meanwhile
            raise ServiceUnavailableError(f"model {self.name} is shutting down") from exc

    def batching(self) -> dict[str, Any]:
        """The batching mode decodes run under (recorded in ``runtime.batching``): a decode's
        bits depend on it, so replay compares it."""
        s = self.settings
        if s.batching == "off":
            return {"mode": "off"}
        from gateway.backends.engine.invariant import forward_version

        weight_only = s.int8 and s.int8_activations == "float"
        return {"mode": "invariant", "forward": forward_version(weight_only),
                "max_batch": s.max_batch,
                "prefill_chunk": s.prefill_chunk}

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        jobs = self._jobs(request)
        async with aclosing(self._decode_all(jobs, request.sampling.n)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        started_at, started = time.time(), time.perf_counter()
        jobs = self._jobs(request)
        accumulator = StreamAccumulator(self._tuple, request.sampling.n * len(jobs))
        async with aclosing(self._decode_all(jobs, request.sampling.n)) as chunks:
            async for chunk in chunks:
                accumulator.add(chunk)
        result = accumulator.result()
        result.timing = Timing(started_at=started_at, first_token_s=(
            None if accumulator.first_token_s is None
            else accumulator.first_token_s + (accumulator.started - started)),
            total_s=time.perf_counter() - started)
        return result


def _resolve_transformers() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
