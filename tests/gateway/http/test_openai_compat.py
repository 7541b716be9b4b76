"""Unmodified clients — the official openai SDK and langchain-openai — against a real tiergate
serving the in-process engine, an HTTP pass-through model and a fixed route: every prompt form,
OpenAI's nulls, logprobs that join to the content, pass-through of fields tiergate does not
touch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GatewayFactory, ServerProcess, upstream_model


@pytest.fixture(scope="module")
def served(gateway_factory: GatewayFactory, upstream: ServerProcess,
           smollm2_dir: Path) -> ServerProcess:
    return gateway_factory({
        "models.echo": upstream_model(upstream, "echo"),
        "models.tools": upstream_model(upstream, "tools"),
        "models.smol": {"backend": "engine", "path": str(smollm2_dir), "threads": 1,
                        "max_new_tokens": 16},
        "routes.auto": {"mode": "fixed", "small": "smol", "large": "echo", "tier": "small"},
    })


@pytest.fixture(scope="module")
def client(served: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)


QUESTION = [{"role": "user", "content": "What is 2+2? Answer with a number only."}]


def test_every_prompt_form_on_an_upstream(client: openai.OpenAI) -> None:
    one = client.completions.create(model="echo", prompt=["once upon"], max_tokens=100)
    assert [c.text for c in one.choices] == ["echo: once upon"]
    batch = client.completions.create(model="echo", prompt=["a b", "c d"], n=2, max_tokens=100)
    assert [(c.index, c.text) for c in batch.choices] == [
        (0, "echo: a b"), (1, "echo: a b"), (2, "echo: c d"), (3, "echo: c d")]
    ids = client.completions.create(model="echo", prompt=[[5, 6]], max_tokens=100)
    assert ids.choices[0].text == "echo: 5 6"
    lists = client.completions.create(model="echo", prompt=[[1], [2, 3]], max_tokens=100)
    assert [c.text for c in lists.choices] == ["echo: 1", "echo: 2 3"]
    streamed: dict[int, str] = {}
    for chunk in client.completions.create(model="echo", prompt=["a", "b"], stream=True,
                                           max_tokens=100):
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + choice.text
    assert streamed == {0: "echo: a", 1: "echo: b"}


@pytest.mark.parametrize("model", ["smol", "auto"])
def test_every_prompt_form_on_the_engine(client: openai.OpenAI, model: str) -> None:
    text = client.completions.create(model=model, prompt="The sky is", max_tokens=4,
                                     temperature=0)
    listed = client.completions.create(model=model, prompt=["The sky is"], max_tokens=4,
                                       temperature=0)
    assert listed.choices[0].text == text.choices[0].text
    batch = client.completions.create(model=model, prompt=["The sky is", "Once upon a"],
                                      max_tokens=4, temperature=0.8, seed=7, n=2)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    alone = client.completions.create(model=model, prompt="Once upon a", max_tokens=4,
                                      temperature=0.8, seed=7, n=2)
    assert [c.text for c in batch.choices[2:]] == [c.text for c in alone.choices]
    assert batch.usage is not None and alone.usage is not None
    assert batch.usage.completion_tokens > alone.usage.completion_tokens
    tokens = client.completions.create(model=model, prompt=[[504, 3156], [504, 3156]],
                                       max_tokens=3, temperature=0)
    assert tokens.choices[0].text == tokens.choices[1].text


NULLS: dict[str, Any] = {"n": None, "stream": None, "logprobs": None, "top_logprobs": None,
                         "temperature": None, "top_p": None, "stop": None, "seed": None,
                         "presence_penalty": None, "frequency_penalty": None,
                         "max_tokens": None, "max_completion_tokens": None,
                         "stream_options": None, "tools": None, "tool_choice": None,
                         "response_format": None, "user": None, "logit_bias": None}


@pytest.mark.parametrize("model", ["echo", "smol", "auto"])
def test_null_where_openai_allows_null(served: ServerProcess, model: str) -> None:
    chat = httpx.post(served.url + "/v1/chat/completions", timeout=60, json={
        "model": model, "messages": QUESTION, **NULLS})
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"]
    completion = httpx.post(served.url + "/v1/completions", timeout=60, json={
        "model": model, "prompt": "The sky is", "n": None, "stream": None, "logprobs": None,
        "echo": None, "suffix": None, "max_tokens": None, "temperature": None, "seed": None,
        "stop": None, "stream_options": None, "user": None})
    assert completion.status_code == 200, completion.text
    assert completion.json()["choices"][0]["text"]


@pytest.mark.parametrize("model", ["smol", "auto"])
def test_engine_logprobs_join_to_the_content(client: openai.OpenAI, model: str) -> None:
    answer = client.chat.completions.create(model=model, messages=QUESTION,  # type: ignore[arg-type]
                                            temperature=0, logprobs=True, top_logprobs=2)
    choice = answer.choices[0]
    assert choice.finish_reason == "stop" and choice.logprobs and choice.logprobs.content
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    assert answer.usage is not None
    assert answer.usage.completion_tokens == len(choice.logprobs.content) + 1  # the stop token
    streamed = [t.token for chunk in client.chat.completions.create(
        model=model, messages=QUESTION, temperature=0, logprobs=True,  # type: ignore[arg-type]
        stream=True) for c in chunk.choices for t in (c.logprobs.content or [] if c.logprobs
                                                      else [])]
    assert "".join(streamed) == choice.message.content


def test_pass_through_keeps_nulls_and_unknown_fields(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="tools", messages=[{"role": "user", "content": "look it up"}],
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}])
    message = raw.http_response.json()["choices"][0]["message"]
    assert message["content"] is None and "refusal" in message and message["refusal"] is None
    assert message["annotations"] == [] and message["provider_note"] == {"kept": True}
    assert raw.http_response.json()["service_tier"] == "default"
    parsed = raw.parse().choices[0]
    assert parsed.finish_reason == "tool_calls" and parsed.message.content is None
    assert parsed.message.tool_calls and parsed.message.tool_calls[0].function.name == "lookup"
    deltas = [c.choices[0].delta for c in client.chat.completions.create(
        model="tools", messages=[{"role": "user", "content": "x"}], stream=True) if c.choices]
    assert deltas[0].content is None and deltas[0].tool_calls
    assert deltas[0].tool_calls[0].function and deltas[0].tool_calls[0].function.name == "lookup"


def test_langchain_openai_chat_and_completions(served: ServerProcess) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    for model in ("echo", "smol", "auto"):
        chat = langchain_openai.ChatOpenAI(model=model, base_url=served.url + "/v1",
                                           api_key="unused", temperature=0, max_tokens=12,
                                           max_retries=0)
        reply = chat.invoke("What is 2+2? Answer with a number only.")
        assert isinstance(reply.content, str) and reply.content
        assert "".join(str(c.content) for c in chat.stream("Say hi.")).strip()
        llm = langchain_openai.OpenAI(model=model, base_url=served.url + "/v1",
                                      api_key="unused", temperature=0, max_tokens=8,
                                      max_retries=0)
        text = llm.invoke("The sky is")
        assert isinstance(text, str) and text
        assert llm.batch(["The sky is", "Once upon a"]) and "".join(llm.stream("The sky is"))


# -- /v1/responses --------------------------------------------------------------------------


def last_upstream_body(upstream: ServerProcess) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(upstream.url + "/last").json()["body"]
    return body


@pytest.mark.parametrize("model", ["echo", "smol", "auto"])
def test_responses_create(client: openai.OpenAI, model: str) -> None:
    raw = client.responses.with_raw_response.create(
        model=model, instructions="Answer briefly.", input="What is 2+2?", temperature=0,
        max_output_tokens=12)
    response = raw.parse()
    assert response.id == f"resp_{raw.headers['x-request-id']}"
    assert response.object == "response" and response.status in ("completed", "incomplete")
    assert response.output_text and response.output[0].type == "message"
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.usage.total_tokens == (response.usage.input_tokens
                                           + response.usage.output_tokens)
    assert raw.headers["x-tiergate-model"].split("@")[0] == ("smol" if model == "auto"
                                                             else model)
    assert response.model == raw.headers["x-tiergate-model"].split("@")[0]


def test_responses_input_items_reach_an_upstream_as_chat(client: openai.OpenAI,
                                                         upstream: ServerProcess) -> None:
    response = client.responses.create(
        model="echo", instructions="Be terse.", max_output_tokens=100, temperature=0.5,
        top_p=0.9, extra_body={"seed": 9}, input=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
            {"role": "user", "content": [{"type": "input_text", "text": "and then?"}]}],
        text={"format": {"type": "json_schema", "name": "answer", "strict": True,
                         "schema": {"type": "object", "properties": {}}}},
        tools=[{"type": "function", "name": "f", "parameters": {"type": "object"},
                "strict": False}], tool_choice={"type": "function", "name": "f"})
    assert response.output_text == "echo: and then?"
    sent = last_upstream_body(upstream)
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant",
                                                     "assistant", "tool", "user"]
    assert sent["messages"][3]["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}
    assert sent["messages"][4] == {"role": "tool", "tool_call_id": "c1", "content": "42"}
    assert sent["max_completion_tokens"] == 100 and sent["seed"] == 9 and sent["top_p"] == 0.9
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["name"] == "answer"
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object"}, "strict": False}}]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "f"}}


def test_responses_streaming_event_sequence(client: openai.OpenAI) -> None:
    for model in ("echo", "smol"):
        events = list(client.responses.create(model=model, input="Say hi.", stream=True,
                                              temperature=0, max_output_tokens=12))
        kinds = [e.type for e in events]
        assert kinds[:4] == ["response.created", "response.in_progress",
                             "response.output_item.added", "response.content_part.added"]
        assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done",
                                "response.output_item.done"]
        assert kinds[-1] in ("response.completed", "response.incomplete")
        assert [e.sequence_number for e in events] == list(range(len(events)))
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        final = events[-1].response  # type: ignore[union-attr]
        assert text and final.output_text == text
        assert final.usage is not None and final.usage.output_tokens > 0


def test_responses_seed_and_max_output_tokens_on_the_engine(client: openai.OpenAI) -> None:
    sampled = [client.responses.create(model="smol", input="Tell me a story.", temperature=1.0,
                                       extra_body={"seed": 42}, max_output_tokens=6)
               for _ in range(2)]
    assert sampled[0].output_text == sampled[1].output_text
    assert sampled[0].status == "incomplete"
    assert sampled[0].incomplete_details is not None
    assert sampled[0].incomplete_details.reason == "max_output_tokens"


def test_responses_tool_calls_from_an_upstream(client: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    response = client.responses.create(model="tools", input="look it up", tools=tools)
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "lookup" and calls[0].call_id == "call_1"
    assert calls[0].arguments == '{"q": "x"}'
    events = list(client.responses.create(model="tools", input="x", tools=tools, stream=True))
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and done[0].arguments == '{"q": "x"}'
    assert events[-1].type == "response.completed"


def test_responses_refusals(client: openai.OpenAI) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": "echo", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"model": "echo", "tools": [{"type": "web_search"}]}, "tools.0"),
        ({"model": "smol", "text": {"format": {"type": "json_object"}}}, "text.format"),
        ({"model": "smol", "tools": [{"type": "function", "name": "f",
                                      "parameters": {}}]}, "tools"),
        ({"model": "echo", "input": [{"type": "reasoning", "summary": []}]}, "input.0"),
    ]
    for fields, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(**{"input": "x", **fields})
        assert caught.value.param == param, caught.value.message


# -- /v1/embeddings -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder(gateway_factory: GatewayFactory, upstream: ServerProcess) -> ServerProcess:
    pytest.importorskip("all_minilm_l6_v2", reason="the MiniLM weights package (make embeddings)")
    return gateway_factory({
        "models.remote": upstream_model(upstream, "echo"),
        "models.minilm": {"backend": "embedding", "model": "all-minilm-l6-v2",
                          "weights_sha256": MINILM_WEIGHTS},
    })


MINILM_WEIGHTS = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def test_embeddings_pass_through_an_upstream(embedder: ServerProcess,
                                             upstream: ServerProcess) -> None:
    client = openai.OpenAI(base_url=embedder.url + "/v1", api_key="unused", max_retries=0)
    floats = client.embeddings.create(model="remote", input=["ab", "cde"],
                                      encoding_format="float", dimensions=3)
    assert [d.embedding for d in floats.data] == [[2.0, 0.0, 0.5], [3.0, 1.0, 0.5]]
    assert last_upstream_body(upstream)["dimensions"] == 3
    assert floats.usage.prompt_tokens == 2 and floats.model == "remote"
    default = client.embeddings.create(model="remote", input="abcd")  # the SDK asks base64
    assert last_upstream_body(upstream)["encoding_format"] == "base64"
    assert default.data[0].embedding == [4.0, 0.0, 0.5]
    raw = httpx.post(embedder.url + "/v1/embeddings", json={
        "model": "remote", "input": [[1, 2], [3]], "encoding_format": "base64"}).json()
    assert [d["index"] for d in raw["data"]] == [0, 1]
    assert all(isinstance(d["embedding"], str) for d in raw["data"])


def test_embeddings_of_the_in_process_minilm(embedder: ServerProcess) -> None:
    from verifiers.embeddings import CATALOGUE, SentenceEncoder

    client = openai.OpenAI(base_url=embedder.url + "/v1", api_key="unused", max_retries=0)
    texts = ["The sky is blue.", "Paris is the capital of France.", "hello"]
    raw = client.embeddings.with_raw_response.create(model="minilm", input=texts)
    result = raw.parse()
    assert raw.headers["x-tiergate-model"].startswith("minilm@")
    encoder = SentenceEncoder(CATALOGUE["all-minilm-l6-v2"])
    for text, item in zip(texts, result.data, strict=True):
        expected = encoder.encode(text).astype("float32").tolist()
        assert len(item.embedding) == 384 and item.embedding == expected  # base64: float32
    floats = client.embeddings.create(model="minilm", input=texts[0], encoding_format="float")
    assert floats.data[0].embedding == encoder.encode(texts[0]).tolist()
    assert floats.usage.prompt_tokens == len(encoder.tokenizer.encode(texts[0]).ids)
    card = client.models.retrieve("minilm").model_dump()["tiergate"]
    assert card["base_weights_sha256"] == MINILM_WEIGHTS and card["digest"].startswith("sha256:")
    assert client.embeddings.create(model="minilm", input="x", dimensions=384).data
    for fields, param in (({"model": "minilm", "input": [[1, 2]]}, "input"),
                          ({"model": "minilm", "input": "x", "dimensions": 8}, "dimensions")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(**fields)  # type: ignore[arg-type]
        assert caught.value.param == param
    with pytest.raises(openai.BadRequestError) as not_chat:
        client.chat.completions.create(model="minilm",
                                       messages=[{"role": "user", "content": "x"}])
    assert not_chat.value.param == "model"


def test_embeddings_refused_by_generating_models(client: openai.OpenAI) -> None:
    for model in ("smol", "auto"):
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(model=model, input="x")
        assert caught.value.param == "model"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="echo", input=[])
