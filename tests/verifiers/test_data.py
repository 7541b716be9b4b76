"""The training-data format, malformed rows, the prompt-hash split, the RouteLLM loaders."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from verifiers.data import (
    Answer,
    Example,
    VerifierInput,
    prompt_text,
    read_examples,
    split_examples,
    split_of,
    write_examples,
)
from verifiers.errors import DataFormatError
from verifiers.routellm import load_routellm

ROUTELLM = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "routellm"


def row(i: int, **extra: object) -> dict[str, object]:
    return {"id": f"r{i}", "request": {"prompt": f"question {i}"}, "small": {"text": "42"},
            "small_correct": i % 2 == 0, "large_correct": True, "slice": "s", **extra}


def test_round_trip_and_line_separators(tmp_path: Path) -> None:
    tricky = Example(id="x", request={"messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "line\u2028separator and \u0085 next-line"}]},
        small_correct=False, large_correct=True,
        small=Answer("7", token_logprobs=(-0.5,), top_logprobs=((-0.5, -1.5),)),
        large=Answer("8"), slice="math")
    path = tmp_path / "rows.jsonl"
    write_examples(path, [tricky, Example(id="y", request={"prompt": "p"}, small_correct=True)])
    dataset = read_examples(path)
    assert dataset.problems == []
    assert dataset.examples[0] == tricky
    assert dataset.examples[0].prompt == "be brief\n\nline\u2028separator and \u0085 next-line"
    assert dataset.examples[1].small is None and dataset.examples[1].large_correct is None


def test_malformed_rows_are_skipped_with_reasons(tmp_path: Path) -> None:
    lines = [json.dumps(row(0)), "{not json", json.dumps(row(1, small_correct="yes")),
             json.dumps({"id": "r2", "small_correct": True}), json.dumps(row(0)),
             json.dumps(row(3, request={"messages": []})), "", json.dumps(row(4)),
             json.dumps(row(5, small={"text": "a", "token_logprobs": ["x"]}))]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    dataset = read_examples(path)
    assert [e.id for e in dataset.examples] == ["r0", "r4"]
    reasons = "\n".join(dataset.problems)
    assert len(dataset.problems) == 6
    for expected in (":2: invalid JSON", ":3: 'small_correct' must be true or false",
                     ":4: 'request' must be an object", ":5: duplicate id 'r0'",
                     ":6: 'messages' must be a non-empty list", ":9: 'token_logprobs'"):
        assert expected in reasons
    with pytest.raises(DataFormatError, match=":2: invalid JSON"):
        read_examples(path, strict=True)


def test_a_file_without_usable_rows_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("[]\n")
    with pytest.raises(DataFormatError, match="no usable rows"):
        read_examples(path)
    with pytest.raises(DataFormatError, match="cannot read"):
        read_examples(tmp_path / "missing.jsonl")


def test_answer_formats() -> None:
    openai = Answer.from_json({"text": "hi", "logprobs": {"content": [
        {"token": "h", "logprob": -0.1, "top_logprobs": [{"token": "h", "logprob": -0.1},
                                                         {"token": "y", "logprob": -2.5}]}]}})
    assert openai.token_logprobs == (-0.1,) and openai.top_logprobs == ((-0.1, -2.5),)
    legacy = Answer.from_json({"text": "hi", "token_logprobs": [-0.2],
                               "top_logprobs": [{"h": -0.2, "y": -1.7}]})
    assert legacy.top_logprobs == ((-0.2, -1.7),)
    assert Answer.from_json("plain").text == "plain"
    with pytest.raises(DataFormatError):
        Answer.from_json({"token_logprobs": [-1]})


def test_prompt_text_of_requests() -> None:
    assert prompt_text({"prompt": "p"}) == "p"
    assert prompt_text({"prompt": ["only"]}) == "only"
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                        {"type": "image_url"}]}]}
    assert prompt_text(parts) == "a"
    with pytest.raises(DataFormatError):
        prompt_text({"input": "x"})
    item = VerifierInput.from_request({"prompt": "q"}, answer="a", slice="s")
    assert item == VerifierInput("q", Answer("a"), "s")


def test_split_is_stable_disjoint_and_by_prompt() -> None:
    prompts = [f"prompt number {i}" for i in range(2000)]
    examples = [Example(id=str(i), request={"prompt": p}, small_correct=True)
                for i, p in enumerate(prompts)]
    train, validation = split_examples(examples)
    shuffled = examples[:]
    random.Random(0).shuffle(shuffled)
    _, validation2 = split_examples(shuffled)
    assert {e.id for e in validation} == {e.id for e in validation2}
    assert not {e.id for e in train} & {e.id for e in validation}
    assert len(train) + len(validation) == len(examples)
    assert 0.17 < len(validation) / len(examples) < 0.23
    for example in validation[:50]:
        digest = int(hashlib.sha256(example.prompt.encode()).hexdigest(), 16)
        assert digest % 10 < 2
    assert split_of("prompt number 1") == split_of("prompt number 1")


def test_routellm_loaders_on_the_copied_data() -> None:
    mmlu = load_routellm(ROUTELLM, "mmlu")
    assert mmlu.problems == [] and mmlu.dropped == 5
    assert len(mmlu.examples) == 11216
    assert len({e.slice for e in mmlu.examples}) == 57
    assert all(e.small is None and e.large_correct is not None for e in mmlu.examples[:100])
    gsm8k = load_routellm(ROUTELLM, "gsm8k")
    assert gsm8k.dropped == 10 and len(gsm8k.examples) == 1067
    assert all(e.small is not None and e.large is not None for e in gsm8k.examples)
    banned = {json.loads(line)["eval_prompt"]
              for line in (ROUTELLM / "gsm8k" / "contaminated_prompts.jsonl").read_text()
              .splitlines()}
    assert not banned & {e.prompt for e in gsm8k.examples}
    train, validation = gsm8k.split()
    prompts = {e.prompt for e in validation}
    assert not prompts & {e.prompt for e in train}
    assert (ROUTELLM / "LICENSE").is_file() and (ROUTELLM / "README.md").is_file()


def test_routellm_loader_skips_bad_csv_rows(tmp_path: Path) -> None:
    root = tmp_path / "routellm"
    (root / "gsm8k").mkdir(parents=True)
    header = ("prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview,"
              "mistralai/Mixtral-8x7B-Instruct-v0.1_response,gpt-4-1106-preview_response\n")
    (root / "gsm8k" / "gsm8k_responses.csv").write_text(
        header + 'q1,True,False,"a1","b1"\nq2,maybe,True,a2,b2\nq3,True\n')
    dataset = load_routellm(root, "gsm8k")
    assert [e.prompt for e in dataset.examples] == ["q1"]
    assert len(dataset.problems) == 2
    with pytest.raises(DataFormatError, match="no mmlu"):
        load_routellm(root, "mmlu")
