"""``batching = "invariant"``: continuous batching whose results are bit-identical to a decode
alone (SmolLM2-135M-Instruct, fp32 and int8).

A request's token ids and logprobs (the sampled token's and the top alternatives', compared as
``float.hex``) must be the same alone and decoded beside random other requests that join before
it and after it, at random steps, in batches of every size up to ``max_batch``; greedy and
seeded, ``n = 2``; fp32, dynamic int8 (``down_proj`` kept in float, on 2 threads) and the
default pair's int8 (weight-only, the head's top 32 re-scored in float, on 2 threads). The
forward pass is also checked against ``transformers``' own (an invariant but wrong forward
would pass the rest), and row-by-row: every slot of every batch size.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import torch

from gateway.backends.engine.backend import EngineBackend
from gateway.backends.engine.batcher import Batcher
from gateway.backends.engine.int8 import WeightOnlyInt8Linear
from gateway.backends.engine.invariant import (
    Int8Linear,
    Int8Product,
    InvariantLlama,
    RescoredHead,
    Row,
    WeightOnlyLinear,
)
from gateway.backends.engine.loader import LoadedModel, load_model
from gateway.backends.settings import EngineModelSettings
from gateway.kernel.errors import ConfigError
from gateway.kernel.generation import (
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    StreamAccumulator,
)
from tests.conftest import REPO

module_loop = pytest.mark.asyncio(loop_scope="module")

MAX_BATCH = 4
WORDS = ["apple", "river", "seven", "blue", "engine", "quiet", "storm", "paper", "north"]


def settings_for(path: Path, **extra: Any) -> EngineModelSettings:
    values: dict[str, Any] = {"device": "cpu", "threads": 1, "max_batch": MAX_BATCH,
                              "max_new_tokens": 8, "batching": "invariant",
                              "prefill_chunk": 8, **extra}
    return EngineModelSettings(path=path, **values)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engines(smollm2_dir: Path) -> AsyncIterator[dict[str, EngineBackend]]:
    # KV caches start with room for 3 generated tokens, so every decode here also grows them.
    room, Batcher.INITIAL_ROOM = Batcher.INITIAL_ROOM, 3
    started = {"fp32": EngineBackend("smol-batched", settings_for(smollm2_dir)),
               "int8": EngineBackend("smol-int8-batched", settings_for(
                   smollm2_dir, int8=True, threads=2, int8_keep_float=["down_proj"])),
               "int8-weight-only": EngineBackend("smol-int8wo-batched", settings_for(
                   smollm2_dir, int8=True, threads=2, int8_activations="float",
                   int8_rescore_top_k=32))}
    for backend in started.values():
        await backend.start()
    yield started
    for backend in started.values():
        await backend.aclose()
    Batcher.INITIAL_ROOM = room


@pytest.fixture(scope="module")
def unreleased(engines: dict[str, EngineBackend]) -> Callable[[str], LoadedModel]:
    """The engines' models loaded again, their ``transformers`` weights kept (an engine's
    batcher drops those its packed copies replace)."""
    loaded: dict[str, LoadedModel] = {}

    def get(precision: str) -> LoadedModel:
        if precision not in loaded:
            loaded[precision] = load_model(engines[precision].settings)
        return loaded[precision]

    return get


@module_loop
async def test_the_weights_the_packed_copies_replace_are_dropped(
        engines: dict[str, EngineBackend]) -> None:
    for precision, backend in engines.items():
        model = backend.loaded.model
        mlp = model.model.layers[0].mlp
        layer, name = {"fp32": (mlp.up_proj, "weight"), "int8": (mlp.down_proj, "weight"),
                       "int8-weight-only": (mlp.up_proj, "qweight")}[precision]
        assert getattr(layer, name) is None, precision
        with pytest.raises((TypeError, AttributeError)):  # its own forward cannot run
            layer(torch.zeros(1, layer.in_features))
        assert model.model.embed_tokens.weight is not None
        assert (await backend.generate(request("Hi.", max_tokens=2, ignore_eos=True))
                ).usage.completion_tokens == 2


def request(content: str, request_id: str = "t", **sampling: Any) -> GenerationRequest:
    return GenerationRequest(request_id, "chat", SamplingParams(**sampling),
                             messages=[{"role": "user", "content": content}])


def bits(result: GenerationResult) -> list[Any]:
    """Every choice's token ids and logprobs, floats as their exact bits."""
    return [(choice.token_ids, [(lp.token_id, lp.logprob.hex(),
                                 [(top.token_id, top.logprob.hex()) for top in lp.top])
                                for lp in choice.logprobs or []])
            for choice in result.choices]


def other(rng: random.Random, index: int) -> GenerationRequest:
    """A random request: prompt length, sampling, choices and length all drawn."""
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30)))
    sampling: dict[str, Any] = {"max_tokens": rng.randint(2, 9), "n": rng.choice((1, 1, 2))}
    if rng.random() < 0.5:
        sampling.update(temperature=rng.uniform(0.5, 1.5), seed=rng.randrange(1000))
    else:
        sampling["temperature"] = 0.0
    return request(f"Tell me about {words}.", f"other-{index}", **sampling)


async def collect(backend: EngineBackend, job: GenerationRequest,
                  progress: asyncio.Event | None = None, after: int = 0) -> None:
    """Stream ``job`` to its end, setting ``progress`` once ``after`` tokens came."""
    count = 0
    async for chunk in backend.stream(job):
        count += len(chunk.token_ids or ())
        if progress is not None and count >= after:
            progress.set()
    if progress is not None:
        progress.set()


async def joined(backend: EngineBackend, target: GenerationRequest, rng: random.Random
                 ) -> GenerationResult:
    """``target`` decoded while random requests run: some start first (``target`` joins them
    after a random number of their tokens), more join after a random number of its own."""
    others: list[asyncio.Task[None]] = []
    first = asyncio.Event()
    for index in range(rng.randint(1, MAX_BATCH)):
        others.append(asyncio.create_task(collect(backend, other(rng, index),
                                                  first if index == 0 else None,
                                                  rng.randint(1, 3))))
    await first.wait()
    own = asyncio.Event()
    seen = rng.randint(1, 4)
    chunks: list[GenerationChunk] = []

    async def target_run() -> None:
        async for chunk in backend.stream(target):
            chunks.append(chunk)
            if sum(len(c.token_ids or ()) for c in chunks) >= seen:
                own.set()
        own.set()

    task = asyncio.create_task(target_run())
    await own.wait()
    for index in range(rng.randint(1, MAX_BATCH)):
        others.append(asyncio.create_task(collect(backend, other(rng, 100 + index))))
    await asyncio.gather(task, *others)
    return assemble(backend, target, chunks)


def assemble(backend: EngineBackend, target: GenerationRequest,
             chunks: list[GenerationChunk]) -> GenerationResult:
    accumulator = StreamAccumulator(backend.describe(), target.sampling.n)
    for chunk in chunks:
        accumulator.add(chunk)
    return accumulator.result()


TARGETS = {
    "greedy": {"temperature": 0.0},
    "seeded-n2": {"temperature": 1.0, "top_p": 0.9, "seed": 7, "n": 2},
}


@module_loop
@pytest.mark.parametrize("precision", ["fp32", "int8", "int8-weight-only"])
@pytest.mark.parametrize("sampling", sorted(TARGETS))
async def test_a_request_is_bit_identical_alone_and_joined_at_random_steps(
        engines: dict[str, EngineBackend], precision: str, sampling: str) -> None:
    backend = engines[precision]
    target = request("Write a short poem about the sea.", "target", max_tokens=8,
                     ignore_eos=True, logprobs=3, **TARGETS[sampling])
    alone = await backend.generate(target)
    assert all(len(c.token_ids or ()) == 8 for c in alone.choices)
    assert len(alone.choices) == target.sampling.n
    rng = random.Random(f"{precision}-{sampling}")
    for _ in range(2):
        batched = await joined(backend, target, rng)
        assert bits(batched) == bits(alone)
    forward = 3 if precision == "int8-weight-only" else 2  # its digits (invariant.py)
    assert alone.runtime["batching"] == {"mode": "invariant", "forward": forward,
                                         "max_batch": MAX_BATCH, "prefill_chunk": 8}


@module_loop
async def test_a_decode_is_the_model_s_own_distribution(
        engines: dict[str, EngineBackend], unreleased: Callable[[str], LoadedModel]) -> None:
    """Greedy tokens and their logprobs match ``transformers``' forward over the whole sequence:
    the prompt prefilled in several chunks, the cache grown twice, positions right."""
    backend = engines["fp32"]
    result = await backend.generate(request("Write a short poem about the sea.", max_tokens=12,
                                            temperature=0.0, ignore_eos=True, logprobs=0))
    prompt, (choice,) = result.prompt_token_ids or [], result.choices
    tokens = choice.token_ids or []
    assert len(prompt) > 3 * backend.settings.prefill_chunk and len(tokens) == 12
    with torch.inference_mode():
        logits = unreleased("fp32").model(torch.tensor([prompt + tokens[:-1]])).logits[0]
    expected = logits[len(prompt) - 1:].log_softmax(-1)
    assert expected.argmax(-1).tolist() == tokens
    got = torch.tensor([lp.logprob for lp in choice.logprobs or []])
    chosen = expected[torch.arange(len(tokens)), torch.tensor(tokens)]
    assert float((got - chosen).abs().max()) < 1e-3


@module_loop
async def test_every_batch_size_up_to_max_batch_ran(engines: dict[str, EngineBackend]) -> None:
    """The random joins above decoded in batches of every size (else they checked less)."""
    for backend in engines.values():
        health = await backend.health()
        assert set(health["step_rows"]) == set(range(1, MAX_BATCH + 1)), health
        assert health["peak_decoding"] > 1


@module_loop
@pytest.mark.parametrize("kind", ["fp32", "int8", "int8-int_mm", "int8-weight-only",
                                  "int8-weight-only-int_mm"])
async def test_every_slot_of_every_batch_size_gives_the_same_row(
        engines: dict[str, EngineBackend], unreleased: Callable[[str], LoadedModel], kind: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    precision = kind.removesuffix("-int_mm")
    loaded = unreleased(precision)
    if kind.endswith("-int_mm"):  # the integer GEMM where torch has no oneDNN int8
        monkeypatch.setattr(Int8Product, "use_onednn", False)
    model = InvariantLlama(loaded.model, MAX_BATCH, 512)
    first_pass = model.lm_head.first_pass if isinstance(model.lm_head, RescoredHead) else (
        model.lm_head)
    assert isinstance(model.lm_head, RescoredHead) == (precision == "int8-weight-only")
    assert kind == "fp32" or (isinstance(first_pass, Int8Linear) and (
        (first_pass.product.packed is None) == kind.endswith("-int_mm")))
    if precision == "int8-weight-only":
        assert isinstance(model.layers[0].qkv, WeightOnlyLinear)
    torch.set_num_threads(engines[precision].settings.threads or 1)
    ids = loaded.tokenizer("The capital of France is").input_ids
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        cache = model.new_cache(len(ids) + 1)
        model.prefill(cache, ids[:-1], 0)

        def target() -> Row:
            return Row(cache.copy(), ids[-1], len(ids) - 1)

        def stranger() -> Row:
            noise = model.new_cache(64)
            noise.keys.normal_(generator=generator)
            noise.values.normal_(generator=generator)
            position = int(torch.randint(0, 64, (), generator=generator))
            token = int(torch.randint(0, model.logits_size, (), generator=generator))
            return Row(noise, token, position)

        alone = model.decode([target()])[0]
        for size in range(1, MAX_BATCH + 1):
            for slot in range(size):
                rows = [stranger() for _ in range(size - 1)]
                rows.insert(slot, target())
                row = model.decode(rows)[slot]
                assert torch.equal(row, alone), (size, slot)
        reference = unreleased("fp32").model(torch.tensor([ids])).logits[0, -1]
    if precision == "fp32":  # the same model as transformers' forward, to float32 rounding
        assert float((alone - reference).abs().max()) < 1e-3
    else:  # int8 stays close to the float model
        kl = torch.sum(reference.softmax(-1) * (reference.log_softmax(-1)
                                                 - alone.log_softmax(-1)))
        assert float(kl) < 0.25  # measured 0.07 (0.01-0.15 over prompts and int8 GEMMs)
    assert int(alone.argmax()) == int(reference.argmax())


@pytest.mark.parametrize("onednn", [True, False])
def test_weight_only_digits_give_the_float_product(onednn: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Three int8 digits per activation: ``off``'s float product of the same int8 weights to
    a few millionths of a row's largest output, outliers and all (the float product itself is
    within a few ten-millionths); each row the same bits computed alone or among others."""
    monkeypatch.setattr(Int8Product, "use_onednn", onednn)
    generator = torch.Generator().manual_seed(1)
    linear = torch.nn.Linear(256, 96, bias=True)
    with torch.no_grad():
        linear.weight.normal_(generator=generator)
        linear.bias.normal_(generator=generator)
    layer = WeightOnlyInt8Linear(linear)
    x = torch.randn(MAX_BATCH, 256, generator=generator)
    x[:, 7] *= 300.0  # an outlier channel sets each row's scale
    x[1] *= 1e-4  # a row of small activations
    product = WeightOnlyLinear([layer], MAX_BATCH)
    with torch.inference_mode():
        exact = torch.nn.functional.linear(x.double(), layer.qweight.double()) * layer.scale \
            + linear.bias.double()
        ours, off = product(x, MAX_BATCH), layer(x)
        for row in range(MAX_BATCH):  # the row alone: the same bits
            alone = product(x[row:row + 1], 1)
            assert torch.equal(alone[0], ours[row])
    scale = exact.abs().amax(dim=-1, keepdim=True)  # errors relative to each row's largest
    assert float(((ours.double() - exact).abs() / scale).max()) < 1e-5  # measured 2.8e-6
    assert float(((off.double() - exact).abs() / scale).max()) < 1e-6  # 4.4e-7


@module_loop
async def test_a_long_prompt_prefills_between_the_others_steps(
        engines: dict[str, EngineBackend]) -> None:
    """A prompt of ~40 chunks joins while a request decodes: the running request keeps getting
    a token every turn and finishes before the long one's first token."""
    backend = engines["int8"]
    order: list[str] = []
    started = asyncio.Event()

    async def run(name: str, job: GenerationRequest) -> None:
        async for chunk in backend.stream(job):
            if chunk.token_ids:
                order.append(name)
                started.set()

    short = asyncio.create_task(run("short", request(
        "Hi.", temperature=0.0, ignore_eos=True, max_tokens=12)))
    await started.wait()
    text = " ".join(WORDS * 35)
    assert len(backend.loaded.tokenizer(text).input_ids) > 30 * backend.settings.prefill_chunk
    long_prompt = request(text, temperature=0.0, max_tokens=1)
    await asyncio.gather(short, run("long", long_prompt))
    assert order == ["short"] * 12 + ["long"]


@module_loop
async def test_cancellation_stops_within_one_step(engines: dict[str, EngineBackend]) -> None:
    backend = engines["int8"]

    async def tokens() -> int:
        return int((await backend.health())["tokens_generated"])

    before = await tokens()
    stream = backend.stream(request("Hello.", temperature=0.0, ignore_eos=True,
                                    max_tokens=400))
    for _ in range(3):
        await anext(stream)
    await stream.aclose()
    assert (await backend.health())["decoding"] == 0
    assert await tokens() - before <= 6
    before = await tokens()
    task = asyncio.create_task(backend.generate(request(
        "Count.", temperature=0.0, ignore_eos=True, max_tokens=400)))
    seen = 0
    while seen < 3:
        await asyncio.sleep(0.02)
        seen = await tokens() - before
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stopped = await tokens()
    assert (await backend.health())["decoding"] == 0 and stopped - before <= seen + 3
    # Nothing decodes for them any more: the next request adds exactly its own tokens.
    await backend.generate(request("Hi.", temperature=0.0, ignore_eos=True, max_tokens=2))
    assert await tokens() == stopped + 2


@module_loop
async def test_a_model_it_cannot_run_invariantly_is_refused() -> None:
    gemma = REPO / "var" / "models" / "gemma3-270m"
    if not gemma.is_dir():
        pytest.skip("gemma3-270m is not prepared")
    backend = EngineBackend("gemma", settings_for(gemma))
    with pytest.raises(ConfigError, match="batching = 'invariant' supports"):
        await backend.start()
    await backend.aclose()
