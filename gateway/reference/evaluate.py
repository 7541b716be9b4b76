"""Greedy decoding and per-slice accuracy of a reference model (used by training and tests).

Works on the model objects directly (no server): prompts are grouped by length, so a batch never
needs padding, and decoded greedily until every row has produced ``<eos>`` or its budget.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.reference.tasks import ReferenceItem
from gateway.reference.tokenizer import EOS, vocabulary

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, slots=True)
class SliceScore:
    slice: str
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def encode(text: str) -> list[int]:
    """Token ids of ``text`` (one per character), exactly as the shipped tokenizer encodes it."""
    vocab = vocabulary()
    try:
        return [vocab[c] for c in text]
    except KeyError as exc:
        raise ValueError(f"character {exc.args[0]!r} is not in the reference vocabulary") from exc


def decode(ids: Sequence[int]) -> str:
    """Text of ``ids`` up to (not including) the first ``<eos>``."""
    tokens = list(vocabulary())
    eos = vocabulary()[EOS]
    out: list[str] = []
    for token_id in ids:
        if token_id == eos:
            break
        out.append(tokens[token_id])
    return "".join(out)


def greedy_complete(
    model: Any, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 64
) -> list[str]:
    """The greedy completion of each prompt (text before ``<eos>``), in input order."""
    import torch

    eos = vocabulary()[EOS]
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, prompt in enumerate(prompts):
        by_length[len(prompt)].append(index)
    answers = [""] * len(prompts)
    with torch.no_grad():
        for indices in by_length.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                ids = torch.tensor([encode(prompts[i]) for i in chunk], dtype=torch.long)
                generated = _greedy(model, ids, max_new_tokens, eos)
                for row, index in enumerate(chunk):
                    answers[index] = decode(generated[row].tolist())
    return answers


def _greedy(model: Any, ids: torch.Tensor, max_new_tokens: int, eos: int) -> torch.Tensor:
    import torch

    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    new: list[torch.Tensor] = []
    past = None
    step_input = ids
    for _ in range(max_new_tokens):
        out = model(input_ids=step_input, past_key_values=past, use_cache=True)
        past = out.past_key_values
        token = out.logits[:, -1, :].argmax(dim=-1)
        token = torch.where(done, torch.full_like(token, eos), token)
        new.append(token)
        done |= token == eos
        if bool(done.all()):
            break
        step_input = token.unsqueeze(1)
    return torch.stack(new, dim=1)


def score_items(model: Any, items: Sequence[ReferenceItem]) -> dict[str, SliceScore]:
    """Exact-match accuracy per slice (greedy), with one extra token of budget for ``<eos>``."""
    budget = max(item.max_answer_chars for item in items) + 1
    answers = greedy_complete(model, [item.prompt for item in items], budget)
    correct: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    for item, answer in zip(items, answers, strict=True):
        total[item.slice] += 1
        correct[item.slice] += answer == item.answer
    return {name: SliceScore(name, correct[name], total[name]) for name in total}


def summarize(scores: dict[str, SliceScore]) -> dict[str, float]:
    """Accuracy per slice plus ``all``, rounded for logs and ``training.json``."""
    summary = {name: round(score.accuracy, 4) for name, score in scores.items()}
    right = sum(s.correct for s in scores.values())
    count = sum(s.total for s in scores.values())
    summary["all"] = round(right / count, 4) if count else 0.0
    return summary
