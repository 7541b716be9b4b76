"""The in-process engine backend on a real model (SmolLM2-135M-Instruct, from its PyPI package).

One started backend is shared by the module (loading takes seconds); every request decodes few
tokens. Backends with other settings (int8 with 2 threads, an adapter, a GGUF file, wrong pins)
are started where a test needs one. Pieces without a model: ``test_engine_units.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import pytest_asyncio
import torch

from gateway.backends.engine.backend import EngineBackend
from gateway.backends.settings import EngineModelSettings
from gateway.kernel.digests import weights_sha256
from gateway.kernel.errors import InvalidRequestError, ModelIntegrityError
from gateway.kernel.generation import GenerationRequest, GenerationResult, SamplingParams
from gateway.kernel.modeltuple import AdapterRef, Quantization
from tests.conftest import GatewayFactory

module_loop = pytest.mark.asyncio(loop_scope="module")
"""Async tests share the module's event loop (and so the started backend)."""

SMOLLM2 = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
PROMPTS = ["What is the capital of France?", "Name a color.", "Count to five.",
           "Say hello in Spanish.", "What is 2+2?"]


def settings_for(path: Path, **extra: Any) -> EngineModelSettings:
    values: dict[str, Any] = {"device": "cpu", "threads": 1, "max_batch": 8,
                              "max_new_tokens": 16, **extra}
    return EngineModelSettings(path=path, **values)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(smollm2_dir: Path) -> AsyncIterator[EngineBackend]:
    backend = EngineBackend("smol", settings_for(smollm2_dir))
    await backend.start()
    yield backend
    await backend.aclose()


def chat(content: str | None = None, request_id: str = "t", **sampling: Any) -> GenerationRequest:
    messages = QUESTION if content is None else [{"role": "user", "content": content}]
    return GenerationRequest(request_id, "chat", SamplingParams(**sampling), messages=messages)


def ids_of(result: GenerationResult) -> list[list[int] | None]:
    return [choice.token_ids for choice in result.choices]


# -- identity ---------------------------------------------------------------------------------


@module_loop
async def test_describe_is_the_loaded_tuple(engine: EngineBackend, smollm2_dir: Path) -> None:
    model = engine.describe()
    recorded = json.loads((smollm2_dir / "tiergate-source.json").read_text())
    assert model.engine == "transformers"
    assert model.engine_version == (f"transformers {__import__('transformers').__version__}; "
                                    f"torch {torch.__version__}")
    assert model.upstream_model == SMOLLM2
    assert model.base_weights_sha256 == recorded["weights_sha256"]
    assert model.quantization.method == "none" and model.adapter is None
    assert model.source == str(smollm2_dir)


@module_loop
async def test_weights_digest_mismatch_refuses_to_start(smollm2_dir: Path) -> None:
    wrong = "0" * 64
    backend = EngineBackend("bad", settings_for(smollm2_dir, weights_sha256=wrong))
    with pytest.raises(ModelIntegrityError) as caught:
        await backend.start()
    actual = json.loads((smollm2_dir / "tiergate-source.json").read_text())["weights_sha256"]
    assert wrong in caught.value.message and actual in caught.value.message
    assert (await backend.health())["status"] == "not started"


# -- decoding ---------------------------------------------------------------------------------


@module_loop
async def test_greedy_is_deterministic_and_complete(engine: EngineBackend) -> None:
    first = await engine.generate(chat(temperature=0.0))
    second = await engine.generate(chat(temperature=0.0))
    choice = first.choices[0]
    assert ids_of(first) == ids_of(second) and choice.text == second.choices[0].text
    assert "Paris" in choice.text
    # Finished by EOS: the token is in the ids, its text is not.
    assert choice.finish_reason == "stop" and choice.stop_reason is None
    assert choice.token_ids and choice.token_ids[-1] in (2,) and "<|im_end|>" not in choice.text
    assert first.rendered_prompt is not None
    assert first.rendered_prompt.endswith("<|im_start|>assistant\n")
    tokenizer = engine.loaded.tokenizer
    assert first.prompt_token_ids == tokenizer(first.rendered_prompt,
                                               add_special_tokens=False).input_ids
    assert first.usage.prompt_tokens == len(first.prompt_token_ids or [])
    assert first.usage.completion_tokens == len(choice.token_ids)
    runtime = first.runtime
    assert runtime["threads"] == 1 and runtime["dtype"] == "float32"
    assert runtime["device"] and runtime["torch"] == torch.__version__
    assert runtime["seeds"] == [None] and first.timing.total_s > 0


@module_loop
async def test_seeded_sampling_reproduces_and_seeds_differ(engine: EngineBackend) -> None:
    params: dict[str, Any] = {"temperature": 1.0, "max_tokens": 6}
    again = [ids_of(await engine.generate(chat("Tell me a story.", seed=11, **params)))
             for _ in range(2)]
    assert again[0] == again[1]
    others = {str(ids_of(await engine.generate(chat("Tell me a story.", seed=s, **params))))
              for s in (1, 2, 3)}
    assert len(others) > 1
    # Choice i of a request with seed s decodes with seed s + i.
    pair = await engine.generate(chat("Tell me a story.", seed=11, n=2, **params))
    assert pair.choices[0].token_ids == again[0][0]
    alone = await engine.generate(chat("Tell me a story.", seed=12, **params))
    assert pair.choices[1].token_ids == alone.choices[0].token_ids
    assert pair.runtime["seeds"] == [11, 12]


@module_loop
async def test_unseeded_sampling_records_the_drawn_seed(engine: EngineBackend) -> None:
    result = await engine.generate(chat("Tell me a story.", temperature=1.0, max_tokens=4))
    assert result.runtime["seed_drawn"] is True
    (seed,) = result.runtime["seeds"]
    replay = await engine.generate(chat("Tell me a story.", temperature=1.0, max_tokens=4,
                                        seed=seed))
    assert ids_of(replay) == ids_of(result)


def _concurrent_requests() -> list[GenerationRequest]:
    requests = []
    for i in range(20):
        sampling: dict[str, Any] = {"max_tokens": 2 + i % 4}
        if i % 4 == 0:
            sampling["temperature"] = 0.0
        else:
            sampling.update(temperature=0.9, top_p=0.95, seed=1000 + i)
        if i % 7 == 3:
            sampling["n"] = 2
        requests.append(chat(PROMPTS[i % len(PROMPTS)], request_id=f"c{i}", **sampling))
    return requests


@module_loop
async def test_twenty_concurrent_requests_equal_their_sequential_results(
        engine: EngineBackend) -> None:
    requests = _concurrent_requests()
    sequential = [ids_of(await engine.generate(r)) for r in requests]
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, (await engine.health())["decoding"])
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        concurrent = await asyncio.gather(*(engine.generate(r) for r in requests))
    finally:
        done.set()
        await watcher
    assert [ids_of(r) for r in concurrent] == sequential
    assert peak >= 2, "the requests did not decode at the same time"
    assert (await engine.health())["decoding"] == 0


@module_loop
async def test_stop_string_cuts_the_text(engine: EngineBackend) -> None:
    full = (await engine.generate(chat(temperature=0.0))).choices[0]
    words = full.text.split(" ")
    assert len(words) >= 3, full.text
    stop = " " + words[2]
    cut = (await engine.generate(chat(temperature=0.0, stop=["zzzz", stop]))).choices[0]
    assert cut.text == full.text[:full.text.index(stop)]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert stop not in cut.text


@module_loop
async def test_stop_token_ids_end_the_choice(engine: EngineBackend) -> None:
    full = (await engine.generate(chat(temperature=0.0))).choices[0]
    assert full.token_ids is not None
    third = full.token_ids[2]
    cut = (await engine.generate(chat(temperature=0.0, stop_token_ids=[third]))).choices[0]
    assert cut.token_ids == full.token_ids[:3]
    assert cut.finish_reason == "stop" and cut.stop_reason == third
    tokenizer = engine.loaded.tokenizer
    assert cut.text == tokenizer.decode(full.token_ids[:2])


@module_loop
async def test_max_tokens_min_tokens_and_ignore_eos(engine: EngineBackend) -> None:
    short = (await engine.generate(chat(temperature=0.0, max_tokens=3))).choices[0]
    assert short.finish_reason == "length" and short.token_ids and len(short.token_ids) == 3
    full = (await engine.generate(chat(temperature=0.0))).choices[0]
    assert full.token_ids is not None
    n = len(full.token_ids)  # ends with EOS
    ignored = (await engine.generate(chat(temperature=0.0, ignore_eos=True,
                                          max_tokens=n + 2))).choices[0]
    assert ignored.finish_reason == "length" and ignored.token_ids
    assert ignored.token_ids[:n] == full.token_ids and len(ignored.token_ids) == n + 2
    longer = (await engine.generate(chat(temperature=0.0, min_tokens=n + 1,
                                         max_tokens=n + 3))).choices[0]
    assert longer.token_ids and 2 not in longer.token_ids[:n + 1]


@module_loop
async def test_logprobs_are_the_raw_distribution(engine: EngineBackend) -> None:
    result = await engine.generate(chat(temperature=0.0, max_tokens=6, logprobs=3))
    choice = result.choices[0]
    assert choice.logprobs is not None and choice.token_ids is not None
    assert len(choice.logprobs) == len(choice.token_ids) == 6
    for token_id, lp in zip(choice.token_ids, choice.logprobs, strict=True):
        assert lp.token_id == token_id and len(lp.top) == 3
        assert lp.top[0].token_id == token_id and lp.top[0].logprob == lp.logprob
        assert lp.logprob <= 0 and lp.top[0].logprob >= lp.top[1].logprob >= lp.top[2].logprob
    assert bytes(b for lp in choice.logprobs for b in (lp.bytes or [])).decode() == choice.text
    # Sampling parameters do not change the reported logprobs of a token at a position.
    warm = await engine.generate(chat(temperature=0.0, max_tokens=1, logprobs=0,
                                      repetition_penalty=1.3))
    assert warm.choices[0].logprobs is not None
    assert warm.choices[0].logprobs[0].logprob == choice.logprobs[0].logprob
    assert warm.choices[0].logprobs[0].top == []


@module_loop
async def test_the_stop_token_is_not_in_the_logprobs(engine: EngineBackend) -> None:
    """An answer ended by a stop token (the end of the turn, or a stop_token_ids id): its
    logprobs' tokens join to the content, its id stays in token_ids."""
    first = await engine.generate(chat(temperature=0.0, max_tokens=3))
    assert first.choices[0].token_ids is not None
    stop_id = first.choices[0].token_ids[2]
    for request in (chat(temperature=0.0, max_tokens=8, logprobs=1, stop_token_ids=[stop_id]),
                    chat("What is 2+2? Answer with a number only.", temperature=0.0,
                         max_tokens=16, logprobs=0)):
        choice = (await engine.generate(request)).choices[0]
        assert choice.finish_reason == "stop" and choice.token_ids is not None
        assert choice.logprobs is not None
        assert len(choice.logprobs) == len(choice.token_ids) - 1
        assert [lp.token_id for lp in choice.logprobs] == choice.token_ids[:-1]
        assert "".join(lp.token for lp in choice.logprobs) == choice.text
        streamed = [c async for c in engine.stream(request) if c.index is not None]
        assert [lp.token for c in streamed for lp in c.logprobs or []] == \
            [lp.token for lp in choice.logprobs]


@module_loop
async def test_a_batch_of_prompts_numbers_choices_as_openai(engine: EngineBackend) -> None:
    def completion(prompt: Any, **sampling: Any) -> GenerationRequest:
        return GenerationRequest("b", "completion", SamplingParams(max_tokens=3, **sampling),
                                 prompt=prompt)

    alone = [await engine.generate(completion(p, temperature=0.7, seed=3, n=2))
             for p in ("Once upon", "The sky")]
    batch = completion(["Once upon", "The sky"], temperature=0.7, seed=3, n=2)
    whole = await engine.generate(batch)
    assert [c.index for c in whole.choices] == [0, 1, 2, 3]
    assert ids_of(whole) == ids_of(alone[0]) + ids_of(alone[1])
    assert whole.usage.completion_tokens == sum(r.usage.completion_tokens for r in alone)
    assert whole.usage.prompt_tokens == sum(r.usage.prompt_tokens for r in alone)
    chunks = [c async for c in engine.stream(batch)]
    assert [c.index for c in chunks if c.index is not None][-1] == 3
    assert chunks[-1].usage == whole.usage
    ids = engine.loaded.tokenizer("Once upon").input_ids
    tokens = await engine.generate(completion([ids, ids], temperature=0.0))
    assert tokens.choices[0].token_ids == tokens.choices[1].token_ids


@module_loop
async def test_stream_equals_generate(engine: EngineBackend) -> None:
    request = chat("Tell me a story.", temperature=0.8, seed=5, n=2, max_tokens=10,
                   stop=[" the "], logprobs=1)
    whole = await engine.generate(request)
    chunks = [chunk async for chunk in engine.stream(request)]
    final = chunks[-1]
    assert final.index is None and final.usage == whole.usage
    # What records need of a stream: the same prompt ids, rendering and runtime as a whole call.
    assert final.prompt_token_ids == whole.prompt_token_ids
    assert final.rendered_prompt == whole.rendered_prompt
    assert final.runtime == whole.runtime and whole.runtime["device"]
    for choice in whole.choices:
        mine = [c for c in chunks if c.index == choice.index]
        assert all(c.token_ids and len(c.token_ids) == 1 for c in mine)
        assert "".join(c.text for c in mine) == choice.text
        assert [c.token_ids[0] for c in mine if c.token_ids] == choice.token_ids
        assert [c.finish_reason for c in mine][-1] == choice.finish_reason
        assert all(c.finish_reason is None for c in mine[:-1])


@module_loop
async def test_completion_with_text_and_token_ids(engine: EngineBackend) -> None:
    tokenizer = engine.loaded.tokenizer
    prompt = "The capital of France is"
    text = await engine.generate(GenerationRequest(
        "p", "completion", SamplingParams(temperature=0.0, max_tokens=5), prompt=prompt))
    ids = await engine.generate(GenerationRequest(
        "q", "completion", SamplingParams(temperature=0.0, max_tokens=5),
        prompt=tokenizer(prompt).input_ids))
    assert ids_of(text) == ids_of(ids) and text.choices[0].text == ids.choices[0].text
    assert text.rendered_prompt == prompt and ids.rendered_prompt is None
    assert text.prompt_token_ids == ids.prompt_token_ids == tokenizer(prompt).input_ids


@pytest.mark.parametrize("passthrough", [
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    {"response_format": {"type": "json_object"}},
    {"logit_bias": {"1": 5}},
    {"no_such_field": 1},
])
@module_loop
async def test_unsupported_fields_are_refused(engine: EngineBackend,
                                              passthrough: dict[str, Any]) -> None:
    request = chat(temperature=0.0, max_tokens=2)
    request.passthrough = passthrough
    with pytest.raises(InvalidRequestError) as caught:
        await engine.generate(request)
    (name,) = passthrough
    assert caught.value.param == name and name in caught.value.message
    assert caught.value.status == 400


@module_loop
async def test_harmless_fields_and_bad_prompts(engine: EngineBackend) -> None:
    request = chat(temperature=0.0, max_tokens=2)
    request.passthrough = {"user": "u-1", "tools": [], "response_format": {"type": "text"}}
    assert (await engine.generate(request)).choices[0].token_ids
    context = engine.loaded.context_length
    too_long = GenerationRequest("x", "completion", SamplingParams(max_tokens=1),
                                 prompt=[1] * context)
    with pytest.raises(InvalidRequestError, match="maximum context length"):
        await engine.generate(too_long)
    no_room = GenerationRequest("x", "completion", SamplingParams(max_tokens=context),
                                prompt=[1, 2])
    with pytest.raises(InvalidRequestError, match="maximum context length"):
        await engine.generate(no_room)
    with pytest.raises(InvalidRequestError, match="prompt token ids"):
        await engine.generate(GenerationRequest("x", "completion", SamplingParams(),
                                                prompt=[10**7]))
    image = GenerationRequest("x", "chat", SamplingParams(), messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    with pytest.raises(InvalidRequestError, match="image_url"):
        await engine.generate(image)


@module_loop
async def test_cancellation_stops_decoding(engine: EngineBackend) -> None:
    before = (await engine.health())["tokens_generated"]
    task = asyncio.create_task(engine.generate(chat(temperature=0.0, ignore_eos=True,
                                                    max_tokens=400)))
    seen = 0
    while seen < 3:
        await asyncio.sleep(0.02)
        seen = (await engine.health())["tokens_generated"] - before
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    health = await engine.health()
    assert health["decoding"] == 0
    assert health["tokens_generated"] - before <= seen + 3
    # The slot is free again.
    assert (await engine.generate(chat(temperature=0.0, max_tokens=2))).choices[0].token_ids


@module_loop
async def test_closing_a_stream_stops_decoding(engine: EngineBackend) -> None:
    before = (await engine.health())["tokens_generated"]
    stream = engine.stream(chat(temperature=0.0, ignore_eos=True, max_tokens=400))
    for _ in range(3):
        await anext(stream)
    await stream.aclose()
    health = await engine.health()
    assert health["decoding"] == 0 and health["tokens_generated"] - before <= 6


# -- int8, GPT-2 conversion, adapters, GGUF ---------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def int8_engine(smollm2_dir: Path) -> AsyncIterator[EngineBackend]:
    """The small tier as served: int8, here with 2 intra-op threads per request."""
    pinned = Quantization(method="int8-dynamic", bits=8, details={"layers_quantized": 211})
    backend = EngineBackend("smol-int8", settings_for(smollm2_dir, int8=True, threads=2,
                                                      quantization=pinned))
    await backend.start()
    yield backend
    await backend.aclose()


@module_loop
async def test_int8_backend_quantizes_every_linear_and_generates(
        engine: EngineBackend, int8_engine: EngineBackend) -> None:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    quantization = int8_engine.describe().quantization
    count = sum(isinstance(m, DynamicQuantizedLinear) for m in int8_engine.loaded.model.modules())
    linears = sum(isinstance(m, torch.nn.Linear) for m in engine.loaded.model.modules())
    assert quantization.method == "int8-dynamic" and quantization.bits == 8
    assert quantization.details["layers_quantized"] == count == linears == 30 * 7 + 1
    assert int8_engine.describe().digest() != engine.describe().digest()
    result = await int8_engine.generate(chat(temperature=0.0))
    assert result.choices[0].text.strip() and result.runtime["threads"] == 2


@module_loop
async def test_pinned_quantization_is_checked(smollm2_dir: Path) -> None:
    backend = EngineBackend("smol-int8", settings_for(smollm2_dir, int8=True,
                                                      quantization=Quantization(method="none")))
    with pytest.raises(ModelIntegrityError, match="int8-dynamic"):
        await backend.start()


@module_loop
async def test_two_threads_per_request_stay_deterministic_under_concurrency(
        engine: EngineBackend, int8_engine: EngineBackend) -> None:
    """Each worker thread runs its kernels on an OpenMP team of its own: requests decoding at
    the same time (on this backend and on another one with 1 thread) change no token."""
    requests = _concurrent_requests()[:8]
    for request in requests:
        request.sampling.max_tokens = 3
    sequential = [ids_of(await int8_engine.generate(r)) for r in requests]
    alone = ids_of(await engine.generate(requests[1]))
    results = await asyncio.gather(engine.generate(requests[1]),
                                   *(int8_engine.generate(r) for r in requests))
    assert ids_of(results[0]) == alone
    assert [ids_of(r) for r in results[1:]] == sequential
    assert all(r.runtime["threads"] == 2 for r in results[1:]) and results[0].runtime[
        "threads"] == 1


@pytest.fixture(scope="module")
def lora_dir(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, local_files_only=True)
    config = LoraConfig(r=2, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                        init_lora_weights=False)  # random B: the adapter changes the outputs
    out = tmp_path_factory.mktemp("adapters") / "smol-lora-test"
    get_peft_model(base, config).save_pretrained(str(out))
    return out


@module_loop
async def test_lora_adapter_is_in_the_tuple(engine: EngineBackend, smollm2_dir: Path,
                                            lora_dir: Path) -> None:
    backend = EngineBackend("smol-lora", settings_for(smollm2_dir, adapter_path=lora_dir))
    await backend.start()
    try:
        assert backend.describe().adapter == AdapterRef(id="smol-lora-test",
                                                        sha256=weights_sha256(lora_dir))
        assert backend.describe().base_weights_sha256 == engine.describe().base_weights_sha256
        adapted = await backend.generate(chat(temperature=0.0, max_tokens=6))
        base = await engine.generate(chat(temperature=0.0, max_tokens=6))
        assert ids_of(adapted) != ids_of(base)
    finally:
        await backend.aclose()


@module_loop
async def test_lora_adapter_digest_mismatch_refuses(smollm2_dir: Path, lora_dir: Path) -> None:
    wrong = "f" * 64
    backend = EngineBackend("smol-lora", settings_for(
        smollm2_dir, adapter_path=lora_dir, adapter=AdapterRef(id="smol-lora", sha256=wrong)))
    with pytest.raises(ModelIntegrityError) as caught:
        await backend.start()
    assert wrong in caught.value.message and weights_sha256(lora_dir) in caught.value.message


def write_tiny_gguf(path: Path) -> Path:
    """A real GGUF file (1-layer llama, byte-level BPE vocabulary, random F32 weights) that
    transformers' GGUF loader reads in well under a second; the shipped GGUFs take ~20-80 s."""
    from gguf import GGUFWriter, TokenType

    from gateway.backends.engine.text import _byte_level_decoder

    table = _byte_level_decoder()
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *sorted(table, key=table.__getitem__),
              "Ġt", "he", "Ġthe"]
    vocab, hidden, ffn = len(tokens), 16, 32
    writer = GGUFWriter(str(path), "llama")
    writer.add_file_type(0)  # ALL_F32
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_rope_dimension_count(hidden // 2)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([TokenType.CONTROL] * 3 + [TokenType.NORMAL] * (vocab - 3))
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                             "{{ m['content'] }}<|im_end|>\n{% endfor %}"
                             "{{ '<|im_start|>assistant\\n' }}")
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (vocab, hidden), "output.weight": (vocab, hidden),
              "output_norm.weight": (hidden,), "blk.0.attn_norm.weight": (hidden,),
              "blk.0.ffn_norm.weight": (hidden,), "blk.0.ffn_gate.weight": (ffn, hidden),
              "blk.0.ffn_up.weight": (ffn, hidden), "blk.0.ffn_down.weight": (hidden, ffn),
              **{f"blk.0.attn_{n}.weight": (hidden, hidden) for n in ("q", "k", "v", "output")}}
    for name, shape in shapes.items():
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.3).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@module_loop
async def test_a_gguf_file_loads_with_its_digest(tmp_path: Path) -> None:
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()  # a file's digest is its sha256
    backend = EngineBackend("tiny", settings_for(gguf, weights_sha256=digest))
    await backend.start()
    try:
        model = backend.describe()
        assert model.base_weights_sha256 == digest and model.upstream_model == "tiny"
        assert model.quantization.method == "gguf-f32" and model.quantization.bits == 32
        assert backend.loaded.chat_format.source == "tokenizer"
        first, second = [await backend.generate(chat("the the", temperature=0.0, max_tokens=5,
                                                     ignore_eos=True)) for _ in range(2)]
        assert ids_of(first) == ids_of(second) and len(first.choices[0].token_ids or []) == 5
        assert first.rendered_prompt == ("<|im_start|>user\nthe the<|im_end|>\n"
                                         "<|im_start|>assistant\n")
    finally:
        await backend.aclose()
    wrong = EngineBackend("tiny", settings_for(gguf, weights_sha256="1" * 64))
    with pytest.raises(ModelIntegrityError, match=digest):
        await wrong.start()


# -- end to end: a tiergate process serving the engine to the openai SDK ----------------------


def test_openai_sdk_against_a_served_engine(gateway_factory: GatewayFactory,
                                            smollm2_dir: Path) -> None:
    server = gateway_factory({"models.smol": {"backend": "engine", "path": str(smollm2_dir),
                                              "threads": 1, "max_new_tokens": 16}})
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    question = "What is the capital of France?"
    answer = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": question}], temperature=0,
        max_tokens=12)
    text = answer.choices[0].message.content
    assert text and "Paris" in text and answer.usage and answer.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": question}], temperature=0,
        max_tokens=12, stream=True, stream_options={"include_usage": True})
    parts, usage = [], None
    for event in stream:
        if event.choices:
            parts.append(event.choices[0].delta.content or "")
        if event.usage is not None:
            usage = event.usage
    assert "".join(parts) == text
    assert usage is not None and usage.completion_tokens == answer.usage.completion_tokens
    sampled = [client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Tell me a story."}],
        temperature=1.0, seed=42, max_tokens=6).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": question}], max_tokens=2,
            response_format={"type": "json_object"})
    assert "response_format" in str(caught.value)
    card = httpx.get(server.url + "/v1/models").json()["data"][0]["tiergate"]
    assert card["engine"] == "transformers" and card["base_weights_sha256"]
