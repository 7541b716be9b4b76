"""The reference pair: shipped models load offline as-is, tokenizer and chat template match the
training format, task generation is deterministic and disjoint, and the pair's accuracy gap holds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from gateway.evals.tasksets import load_taskset
from gateway.kernel.digests import weights_sha256
from gateway.reference import MODELS_DIR, REFERENCE_MODELS, model_path
from gateway.reference.evaluate import encode, greedy_complete
from gateway.reference.tasks import (
    FAMILIES,
    TASKSET_DIR,
    TASKSET_FILES,
    all_slices,
    answer_for,
    generate_split,
    make_item,
    reference_splits,
    sample_training_item,
    to_task_items,
)
from gateway.reference.tokenizer import CHARACTERS, EOS, MAX_LENGTH, vocabulary

pytest.importorskip("torch")
pytest.importorskip("transformers")

MODELS = MODELS_DIR
NAMES = REFERENCE_MODELS


@pytest.fixture(scope="session")
def loaded() -> dict[str, tuple[Any, Any]]:
    """Each shipped model and tokenizer, loaded once with transformers from local files only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    pair = {}
    for name in NAMES:
        model: Any = AutoModelForCausalLM.from_pretrained(model_path(name), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(model_path(name), local_files_only=True)
        model.eval()
        pair[name] = (model, tokenizer)
    return pair


@pytest.fixture(scope="session")
def heldout() -> list[Any]:
    return load_taskset(TASKSET_DIR / TASKSET_FILES["heldout"])


@pytest.mark.parametrize("name", NAMES)
def test_model_directory_is_complete_and_pinned(name: str) -> None:
    directory = MODELS / name
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "gpt2"
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert config["n_positions"] == MAX_LENGTH
    assert config["vocab_size"] == len(vocabulary())
    training = json.loads((directory / "training.json").read_text())
    assert training["weights_sha256"] == weights_sha256(directory)
    assert training["steps"] > 0 and training["torch"].startswith("2.13.0")
    assert set(training["heldout_accuracy"]) == {*all_slices(), "all"}
    total = sum(p.stat().st_size for p in directory.iterdir())
    assert total < 10 * 2**20


def test_model_path_refuses_unknown_names() -> None:
    assert model_path("ref-small") == MODELS / "ref-small"
    with pytest.raises(ValueError, match="unknown reference model 'ref-huge'"):
        model_path("ref-huge")


def test_pair_weights_total_under_20_mb() -> None:
    assert sum(p.stat().st_size for p in MODELS.rglob("*") if p.is_file()) < 20 * 2**20


@pytest.mark.parametrize("name", NAMES)
def test_loads_as_gpt2_with_fast_char_tokenizer(
    loaded: dict[str, tuple[Any, Any]], name: str
) -> None:
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    model, tokenizer = loaded[name]
    assert isinstance(model, GPT2LMHeadModel)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.eos_token == EOS
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 0)
    assert model.config.eos_token_id == model.generation_config.eos_token_id == 2


def test_tokenizer_round_trips_every_character(loaded: dict[str, tuple[Any, Any]]) -> None:
    _, tokenizer = loaded["ref-small"]
    text = "rev(4821+377)= sort(dbca)=\n" + CHARACTERS
    ids = tokenizer(text)["input_ids"]
    assert ids == encode(text)
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(
        [*encode("8915"), tokenizer.eos_token_id], skip_special_tokens=True
    ) == ("8915")
    assert tokenizer("é")["input_ids"] == [tokenizer.unk_token_id]


def test_chat_template_renders_the_training_format(loaded: dict[str, tuple[Any, Any]]) -> None:
    _, tokenizer = loaded["ref-large"]
    prompt = "rev(4821+377)="
    chat = [{"role": "user", "content": prompt}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == prompt
    ids = tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert list(ids) == tokenizer(prompt)["input_ids"] == encode(prompt)
    turn = [*chat, {"role": "assistant", "content": "8915"}]
    assert tokenizer.apply_chat_template(turn, tokenize=False) == prompt + "8915" + EOS
    with pytest.raises(Exception, match="only user and assistant"):
        tokenizer.apply_chat_template([{"role": "system", "content": "x"}, *chat], tokenize=False)


def test_items_are_correct_and_deterministic() -> None:
    assert generate_split(7, per_slice=3) == generate_split(7, per_slice=3)
    assert generate_split(7, per_slice=3) != generate_split(8, per_slice=3)
    rng = random.Random(0)
    for family in FAMILIES:
        for level in (1, 3, 5):
            item = make_item(family, level, rng)
            assert answer_for(item.prompt) == item.answer
            assert len(item.answer) <= item.max_answer_chars
    item = make_item("add", 3, random.Random(3))
    a, b = item.meta["a"], item.meta["b"]
    assert isinstance(a, int) and isinstance(b, int)
    assert item.prompt == f"rev({a}+{b})=" and item.answer == str(a + b)[::-1]
    assert answer_for("rev(4821*7)=") == "74733" and answer_for("sort(dbca)=") == "abcd"
    with pytest.raises(ValueError, match="not a reference task prompt"):
        answer_for("what is 2+2?")


def test_shipped_task_sets_are_the_generator_output_and_disjoint() -> None:
    splits = reference_splits()
    for split, items in splits.items():
        shipped = load_taskset(TASKSET_DIR / TASKSET_FILES[split])
        assert shipped == to_task_items(items, split, "completion")
        assert {i.slice for i in shipped} == set(all_slices())
        assert all(i.answer == answer_for(i.prompt or "") for i in shipped)
    heldout = {i.prompt for i in splits["heldout"]}
    train = {i.prompt for i in splits["train"]}
    assert len(heldout) == len(splits["heldout"]) and len(train) == len(splits["train"])
    assert not heldout & train


def test_training_stream_never_yields_an_excluded_prompt() -> None:
    every_add1 = {f"rev({a}+{b})=" for a in range(10) for b in range(10)}
    exclude = frozenset(every_add1 - {"rev(3+4)="})
    rng = random.Random(1)
    only_level_1 = (1.0, 0.0, 0.0, 0.0, 0.0)
    drawn = [sample_training_item(rng, only_level_1, exclude) for _ in range(300)]
    adds = {i.prompt for i in drawn if i.family == "add"}
    assert adds == {"rev(3+4)="}
    assert {i.family for i in drawn} == set(FAMILIES)


def test_greedy_helper_matches_transformers_generate(loaded: dict[str, tuple[Any, Any]]) -> None:
    import torch

    model, tokenizer = loaded["ref-large"]
    prompts = ["rev(482+377)=", "rev(905+118)=", "rev(31*7)=", "sort(dbcaf)="]
    mine = greedy_complete(model, prompts, max_new_tokens=6)
    for prompt, answer in zip(prompts, mine, strict=True):
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        out = model.generate(ids, max_new_tokens=6, do_sample=False)
        text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        assert text == answer


def test_small_model_is_right_on_easy_items(
    loaded: dict[str, tuple[Any, Any]], heldout: list[Any]
) -> None:
    """30 held-out easy items (add/1, add/2, sort/3), decoded greedily with transformers.

    Measured: 28/30 (it says 9+0 and 6+0 are 10); the floor leaves room for other CPUs.
    """
    import torch

    model, tokenizer = loaded["ref-small"]
    easy = [i for s in ("add/1", "add/2", "sort/3") for i in heldout if i.slice == s][::3]
    assert len(easy) == 30
    right = 0
    for item in easy:
        ids = torch.tensor([tokenizer(item.prompt)["input_ids"]])
        out = model.generate(ids, max_new_tokens=item.max_tokens, do_sample=False)
        right += item.grade(
            tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        ).passed
    assert right >= 24, f"small model: {right}/30 easy items"


def test_large_beats_small_on_hard_slices(
    loaded: dict[str, tuple[Any, Any]], heldout: list[Any]
) -> None:
    """The first 20 held-out items of every hard slice (levels 3-5): the gap routing exploits.

    Measured (of 60 per family): add small 1 / large 24, mul 2 / 26, sort 42 / 59.
    """
    hard = [
        item
        for name in all_slices()
        for item in [i for i in heldout if i.slice == name][:20]
        if item.meta["level"] >= 3
    ]
    assert len(hard) == 9 * 20
    budget = max(i.max_tokens for i in hard)
    right: dict[str, dict[str, int]] = {}
    for name in NAMES:
        answers = greedy_complete(loaded[name][0], [i.prompt for i in hard], budget)
        per_family = {family: 0 for family in FAMILIES}
        for item, answer in zip(hard, answers, strict=True):
            per_family[item.meta["family"]] += item.grade(answer).passed
        right[name] = per_family
    small, large = right["ref-small"], right["ref-large"]
    assert all(large[f] > small[f] for f in FAMILIES), right
    assert sum(large.values()) >= sum(small.values()) + 30, right


def _train(out: Path, *extra: str) -> dict[str, Any]:
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "gateway.reference.train",
        "--size",
        "small",
        "--out",
        str(out),
        "--steps",
        "4",
        "--warmup-steps",
        "2",
        "--n-layer",
        "1",
        "--n-embd",
        "16",
        "--n-head",
        "2",
        "--seed",
        "5",
        *extra,
    ]
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    repo = MODELS.parents[2]
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=repo, timeout=240)
    record: dict[str, Any] = json.loads((out / "training.json").read_text())
    return record


@pytest.mark.slow
def test_training_script_is_deterministic_and_writes_a_loadable_model(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = _train(tmp_path / "a")
    second = _train(tmp_path / "b")
    assert first["steps"] == second["steps"] == 4
    assert first["seed"] == 5 and first["data_seed"] == 6
    assert first["weights_sha256"] == second["weights_sha256"]
    assert first["heldout_accuracy"] == second["heldout_accuracy"]
    assert "--steps 4" in first["replay"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a", local_files_only=True)
    assert model.config.n_layer == 1
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "a", local_files_only=True)
    assert (
        tokenizer.apply_chat_template([{"role": "user", "content": "sort(ba)="}], tokenize=False)
        == "sort(ba)="
    )
    continued = _train(tmp_path / "c", "--init-from", str(tmp_path / "a"), "--data-seed", "9")
    assert continued["init_from"]["weights_sha256"] == first["weights_sha256"]
    assert continued["init_from"]["training"]["steps"] == 4
    assert continued["weights_sha256"] != first["weights_sha256"]
