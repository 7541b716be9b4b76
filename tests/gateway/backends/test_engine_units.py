"""The in-process engine's pieces that need no model: detokenizing, stop strings, sampling,
the shipped chat template (int8: test_int8.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from gateway.backends.engine.prompts import shipped_template
from gateway.backends.engine.sampling import ChoiceSampler
from gateway.backends.engine.text import IncrementalDetokenizer, StopMatcher, TokenText
from gateway.kernel.generation import SamplingParams
from tests.gateway.conftest import MODELS_DIR


@pytest.fixture(scope="module")
def tokenizers(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from transformers import AutoTokenizer

    found = {"byte-level": AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)}
    gemma = MODELS_DIR / "gemma3-270m"
    if gemma.is_dir():  # a SentencePiece tokenizer: the prepared larger model's
        found["sentencepiece"] = AutoTokenizer.from_pretrained(gemma, local_files_only=True)
    else:  # or read from its packaged GGUF (~30 s; converting the whole model takes minutes)
        from gateway.backends.engine.packaged import CATALOGUE, assemble

        work = tmp_path_factory.mktemp("gemma-gguf")
        gguf = assemble(CATALOGUE["gemma3-270m"], work)
        found["sentencepiece"] = AutoTokenizer.from_pretrained(work, gguf_file=gguf.name)
    return found


@pytest.mark.parametrize("style", ["byte-level", "sentencepiece"])
def test_incremental_detokenizing_of_multibyte_text(tokenizers: dict[str, Any],
                                                    style: str) -> None:
    tokenizer = tokenizers[style]
    text = "Héllo wörld: 日本語 🙂🙂 naïve — ok"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    prompt = tokenizer("Say:", add_special_tokens=False).input_ids
    detokenizer = IncrementalDetokenizer(tokenizer, prompt)
    deltas = [detokenizer.push(i) for i in ids]
    deltas.append(detokenizer.flush())
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)
    token_text = TokenText(tokenizer)
    assert token_text.style == style
    assert bytes(b for i in ids for b in token_text.get(i)[1]).decode() == text


def test_stop_matcher_holds_back_possible_stops() -> None:
    matcher = StopMatcher(["END", "xy"])
    assert matcher.feed("abc E") == ("abc ", None)
    assert matcher.feed("N") == ("", None)
    assert matcher.feed("D more") == ("", "END")
    assert matcher.text == "abc "
    other = StopMatcher(["END"])
    assert other.feed("EN") == ("", None)
    assert other.feed("d!") == ("ENd!", None)
    assert other.feed("EN", final=True) == ("EN", None)


def _sampler(**params: Any) -> ChoiceSampler:
    return ChoiceSampler(SamplingParams(**params), seed=params.get("seed", 0), vocab_size=6,
                         logits_size=6, prompt_ids=[4], eos_token_ids=frozenset({5}),
                         device=torch.device("cpu"))


def test_sampling_warpers_and_penalties() -> None:
    logits = torch.log(torch.tensor([0.4, 0.3, 0.15, 0.1, 0.04, 0.01]))
    draws = {_sampler(top_p=0.6, seed=s).choose(logits, None).token_id for s in range(200)}
    assert draws == {0, 1}
    assert {_sampler(top_k=3, seed=s).choose(logits, None).token_id for s in range(200)} == {
        0, 1, 2}
    assert {_sampler(min_p=0.5, seed=s).choose(logits, None).token_id for s in range(200)} == {
        0, 1}
    assert {_sampler(seed=s).choose(logits, None).token_id for s in range(400)} == set(range(6))
    same = [_sampler(seed=9).choose(logits, None).token_id for _ in range(3)]
    assert len(set(same)) == 1
    eos_first = torch.tensor([0.0, 0, 0, 0, 0, 10.0])
    assert _sampler(temperature=0.0).choose(eos_first, None).token_id == 5
    assert _sampler(temperature=0.0, min_tokens=1).choose(eos_first, None).token_id != 5
    prompt_first = torch.tensor([0.0, 0, 0, 0, 2.0, 1.5])
    assert _sampler(temperature=0.0).choose(prompt_first, None).token_id == 4
    assert _sampler(temperature=0.0, repetition_penalty=2.0).choose(
        prompt_first, None).token_id == 5
    sampler = _sampler(temperature=0.0, frequency_penalty=1.0)
    flat = torch.tensor([1.0, 0.9, 0.8, 0, 0, 0])
    assert [sampler.choose(flat, 0).token_id for _ in range(3)] == [0, 1, 2]



def test_shipped_gemma3_template_renders_turns() -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    result: Any = render_jinja_template(
        conversations=[[{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello!"},
                        {"role": "user", "content": "Bye"}]],
        chat_template=shipped_template("gemma3.jinja"), add_generation_prompt=True,
        bos_token="<bos>")
    assert result[0][0] == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
                            "<start_of_turn>model\nHello!<end_of_turn>\n"
                            "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
