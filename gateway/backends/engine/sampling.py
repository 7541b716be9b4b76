"""From one position's logits to the next token, for one choice: penalties, warpers, sampling.

Order of processing (the same as transformers' and vLLM's):

1. ``min_tokens``: EOS and ``stop_token_ids`` are masked until that many tokens exist;
2. ``repetition_penalty`` (prompt and output tokens; positive logits divided, negative
   multiplied), then ``frequency_penalty`` times count and ``presence_penalty`` (output tokens);
3. greedy (``temperature == 0`` or ``top_k == 1``): the arg-max, first index on ties;
4. otherwise ``temperature``, ``top_k``, ``top_p``, ``min_p``; then one draw.

The draw is an inverse-CDF draw in float64 on the CPU over the surviving tokens, with one uniform
number from the choice's own CPU ``torch.Generator`` (seeded with the choice's seed). So a choice's
random stream depends on its seed alone — never on other requests, threads or the device — and
the same logits always give the same token.

Logprobs are those of the *raw* model distribution (``log_softmax`` of the unprocessed logits,
before penalties, temperature and truncation), as vLLM reports by default: they describe the
model, whatever sampling parameters chose the token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gateway.kernel.generation import SamplingParams


@dataclass(slots=True)
class TokenChoice:
    token_id: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None
    """``(token id, logprob)`` of the most likely tokens, most likely first."""


class ChoiceSampler:
    """The sampling state of one choice (one sequence) of one request."""

    def __init__(
        self,
        params: SamplingParams,
        *,
        seed: int | None,
        vocab_size: int,
        logits_size: int,
        prompt_ids: list[int],
        eos_token_ids: frozenset[int],
        device: torch.device,
    ) -> None:
        self.params = params
        self.device = device
        self.generator = torch.Generator(device="cpu")
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()
        self.generated = 0
        self.top_k = params.top_k if params.top_k is not None and params.top_k > 0 else None
        self.repetition = (params.repetition_penalty
                           if params.repetition_penalty not in (None, 1.0) else None)
        self.seen: torch.Tensor | None = None
        if self.repetition is not None:
            self.seen = torch.zeros(logits_size, dtype=torch.bool, device=device)
            if prompt_ids:
                self.seen[torch.tensor(prompt_ids, device=device)] = True
        self.counts: torch.Tensor | None = None
        if params.frequency_penalty or params.presence_penalty:
            self.counts = torch.zeros(logits_size, dtype=torch.float32, device=device)
        early = set(params.stop_token_ids)
        if not params.ignore_eos:
            early |= eos_token_ids
        self.early_stops = torch.tensor(sorted(early), dtype=torch.long, device=device)
        self.min_tokens = params.min_tokens or 0
        # Ids past the tokenizer's vocabulary (padded embedding rows) are never produced.
        self.padding_start = vocab_size if vocab_size < logits_size else None

    def process(self, raw: torch.Tensor) -> torch.Tensor:
        """Steps 1-2: the logits a token is chosen from (float32, 1-D)."""
        logits = raw.float().clone()
        if self.padding_start is not None:
            logits[self.padding_start:] = float("-inf")
        if self.generated < self.min_tokens and self.early_stops.numel():
            logits[self.early_stops] = float("-inf")
        if self.seen is not None and self.repetition is not None:
            penalized = torch.where(logits > 0, logits / self.repetition,
                                    logits * self.repetition)
            logits = torch.where(self.seen, penalized, logits)
        if self.counts is not None:
            logits = (logits - self.params.frequency_penalty * self.counts
                      - self.params.presence_penalty * (self.counts > 0).float())
        return logits

    def _draw(self, logits: torch.Tensor) -> int:
        p = self.params
        scaled = logits / p.temperature
        ids: torch.Tensor | None = None
        if self.top_k is not None and self.top_k < scaled.numel():
            scaled, ids = torch.topk(scaled, self.top_k, sorted=True)
        elif p.top_p < 1.0:
            scaled, ids = torch.sort(scaled, descending=True, stable=True)
        probs = torch.softmax(scaled.to("cpu", torch.float64), dim=-1)
        if p.top_p < 1.0:  # probs are sorted (descending) here
            before = torch.cumsum(probs, dim=-1) - probs
            keep = before < p.top_p
            keep[0] = True
            probs = probs * keep
        if p.min_p:
            probs = torch.where(probs < p.min_p * probs.max(), 0.0, probs)
        cdf = torch.cumsum(probs, dim=-1)
        u = torch.rand((), generator=self.generator, dtype=torch.float64)
        index = int(torch.searchsorted(cdf, u * cdf[-1], right=True).clamp(max=cdf.numel() - 1))
        if ids is None:
            return index
        return int(ids[index])

    def choose(self, raw: torch.Tensor, top_logprobs: int | None) -> TokenChoice:
        """The next token from ``raw`` (this position's unprocessed logits), and its logprobs."""
        logits = self.process(raw)
        token = int(torch.argmax(logits)) if self.params.greedy else self._draw(logits)
        choice = TokenChoice(token)
        if top_logprobs is not None:
            logprobs = torch.log_softmax(raw.float(), dim=-1)
            choice.logprob = float(logprobs[token])
            if top_logprobs > 0:
                values, indices = torch.topk(logprobs, top_logprobs, sorted=True)
                choice.top = list(zip(indices.tolist(), values.tolist(), strict=True))
            else:
                choice.top = []
        self._record(token)
        return choice

    def _record(self, token: int) -> None:
        self.generated += 1
        if self.seen is not None:
            self.seen[token] = True
        if self.counts is not None:
            self.counts[token] += 1
