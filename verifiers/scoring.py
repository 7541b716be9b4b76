"""A loaded verifier, with a fast single-request path compiled from its fitted state.

Scoring one request through scikit-learn (``TfidfVectorizer.transform`` + ``predict_proba``)
costs about a millisecond of input validation and sparse-matrix construction. At load time
:class:`Verifier` turns the fitted state into plain arrays — the TF-IDF vocabulary and idf
weights, each logistic regression's coefficients split by feature block, the calibrator's
parameters — so :meth:`Verifier.predict_one` is a dictionary walk over the prompt's tokens and a
few dot products. ``tests/verifiers`` checks that it equals the batch path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from verifiers.data import VerifierInput
from verifiers.features import EMBEDDINGS, NumericExtractor
from verifiers.models import (
    Featurizer,
    FloatArray,
    Predictions,
    State,
    calibrate,
    expected_gain,
    outer_of,
    predict_blocks,
    slice_vector,
    stacked_numeric,
    text_of,
)
from verifiers.spec import HeadSpec, VerifierSpec

SparseRow = tuple[list[int], list[float]]


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


class CompiledTfidf:
    """``TfidfVectorizer.transform`` for one document (same analyzer, idf and l2 norm)."""

    def __init__(self, vectorizer: Any) -> None:
        self.analyze: Callable[[str], list[str]] = vectorizer.build_analyzer()
        self.vocabulary: dict[str, int] = vectorizer.vocabulary
        self.idf: list[float] = [float(x) for x in vectorizer.idf_]
        self.sublinear = bool(vectorizer.sublinear_tf)
        self.size = len(self.idf)

    def row(self, text: str) -> SparseRow:
        counts: dict[int, int] = {}
        vocabulary = self.vocabulary
        for token in self.analyze(text):
            index = vocabulary.get(token)
            if index is not None:
                counts[index] = counts.get(index, 0) + 1
        indices = list(counts)
        if self.sublinear:
            values = [(1.0 + math.log(counts[i])) * self.idf[i] for i in indices]
        else:
            values = [counts[i] * self.idf[i] for i in indices]
        norm = math.sqrt(sum(v * v for v in values))
        if norm > 0:
            values = [v / norm for v in values]
        return indices, values


def _dot(weights: FloatArray, row: SparseRow) -> float:
    indices, values = row
    if not indices:
        return 0.0
    return float(np.dot(weights[indices], values))


@dataclass(slots=True)
class _Linear:
    """A logistic regression split by block: text sources, slice, numeric columns, extras."""

    text: dict[str, FloatArray]
    slice: FloatArray
    numeric: FloatArray
    numeric_columns: list[int]
    extra: FloatArray
    bias: float

    def logit(self, rows: Mapping[str, SparseRow], slice_: FloatArray, numeric: FloatArray,
              extra: Sequence[float] = ()) -> float:
        z = self.bias
        for source, weights in self.text.items():
            z += _dot(weights, rows[source])
        if len(self.slice):
            z += float(np.dot(self.slice, slice_))
        if self.numeric_columns:
            z += float(np.dot(self.numeric, numeric[self.numeric_columns]))
        if len(self.extra):
            z += float(np.dot(self.extra, extra))
        return z


def _split(coef: FloatArray, sizes: Sequence[tuple[str, int]]) -> dict[str, FloatArray]:
    out = {}
    offset = 0
    for name, size in sizes:
        out[name] = coef[offset:offset + size]
        offset += size
    if offset != len(coef):
        raise ValueError(f"coefficients ({len(coef)}) do not match the blocks ({offset})")
    return out


class _CompiledHead:
    def __init__(self, head: HeadSpec, state: State, text: Mapping[str, CompiledTfidf],
                 n_slices: int, numeric_names: Sequence[str]) -> None:
        self.head = head
        self.model = state["model"]
        self.calibrator = state["calibrator"]
        outer = outer_of(head)
        self.numeric_columns = [i for i, name in enumerate(numeric_names)
                                if name.split(".", 1)[0] in outer.numeric]
        n_slices = n_slices if head.slice else 0
        self.linear: _Linear | None = None
        self.inner: dict[str, tuple[FloatArray, float]] = {}
        self.stack: list[tuple[list[int], FloatArray, float]] = []
        """Stacked numeric blocks: (their columns, inner weights, inner bias), in order."""
        outer_linear = head.params.get("outer", "linear") != "gbdt"
        if head.model == "linear":
            self.linear = self._compile(self.model, [(s, text[s].size) for s in head.text],
                                        n_slices, 0)
        elif head.model == "stacked":
            for source in head.text:
                inner = state["text_models"][source]
                self.inner[source] = (np.asarray(inner.coef_[0], dtype=np.float64),
                                      float(inner.intercept_[0]))
            for block in stacked_numeric(head):
                inner = state["stack_models"][block]
                columns = [i for i, name in enumerate(numeric_names)
                           if name.split(".", 1)[0] == block]
                self.stack.append((columns, np.asarray(inner.coef_[0], dtype=np.float64),
                                   float(inner.intercept_[0])))
            if outer_linear:
                self.linear = self._compile(self.model, [], n_slices,
                                            len(self.inner) + len(self.stack))
        self.n_slices = n_slices

    def _compile(self, model: Any, text_sizes: list[tuple[str, int]], n_slices: int,
                 n_extra: int) -> _Linear:
        sizes = [*text_sizes, ("__slice", n_slices),
                 ("__numeric", len(self.numeric_columns)), ("__extra", n_extra)]
        parts = _split(np.asarray(model.coef_[0], dtype=np.float64), sizes)
        return _Linear({s: parts[s] for s, _ in text_sizes}, parts["__slice"],
                       parts["__numeric"], self.numeric_columns, parts["__extra"],
                       float(model.intercept_[0]))

    def proba(self, rows: Mapping[str, SparseRow], slice_: FloatArray,
              numeric: FloatArray) -> float:
        extra = [_logit(_sigmoid(bias + _dot(weights, rows[source])))
                 for source, (weights, bias) in self.inner.items()]
        extra += [_logit(_sigmoid(bias + float(np.dot(weights, numeric[columns]))))
                  for columns, weights, bias in self.stack]
        if self.linear is not None:
            p = _sigmoid(self.linear.logit(rows, slice_, numeric, extra))
        else:  # gradient boosting: scikit-learn on one dense row
            parts = [slice_[: self.n_slices], numeric[self.numeric_columns], np.asarray(extra)]
            dense = np.concatenate(parts).reshape(1, -1)
            p = float(self.model.predict_proba(dense)[0, 1])
        if self.calibrator is None:
            return p
        return float(calibrate(self.calibrator, np.array([p]))[0])


@dataclass(frozen=True, slots=True)
class Prediction:
    score: float
    """The routing score: escalate when it is at or above the route's threshold."""
    p_small_wrong: float
    p_large_right: float | None


class Verifier:
    """A trained verifier: ``score(item)`` for one request, ``score_batch(items)`` for many."""

    def __init__(self, spec: VerifierSpec, state: State, *, verifier_id: str = "",
                 sha256: str = "", manifest: Mapping[str, Any] | None = None,
                 extractors: Sequence[NumericExtractor] | None = None) -> None:
        self.spec = spec
        self.state = state
        self.id = verifier_id
        self.sha256 = sha256
        self.manifest = dict(manifest or {})
        self.blocking = any(name in EMBEDDINGS for name, _ in spec.extractors)
        """Scoring runs a neural encoder (milliseconds): the router scores it off the event
        loop."""
        self.featurizer = Featurizer(spec, state["featurizer"], extractors)
        self._text = {source: CompiledTfidf(v)
                      for source, v in self.featurizer.vectorizers.items()}
        self._slice_names = self.featurizer.slice_names
        self._slice_frequencies = self.featurizer.slice_frequencies
        self._numeric_mean = self.featurizer.mean
        self._numeric_scale = self.featurizer.scale
        self._extractors = self.featurizer.extractors
        names = self.featurizer.numeric_names
        self._small = _CompiledHead(spec.small, state["heads"]["small"], self._text,
                                    len(self._slice_names), names)
        self._large = None
        if spec.target == "gain" and spec.large is not None:
            self._large = _CompiledHead(spec.large, state["heads"]["large"], self._text,
                                        len(self._slice_names), names)

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def score_name(self) -> str:
        return self.spec.score_name

    def predict_one(self, item: VerifierInput) -> Prediction:
        rows = {source: compiled.row(text_of(item, source))
                for source, compiled in self._text.items()}
        slice_ = slice_vector(self._slice_names, self._slice_frequencies, item.slice)
        numeric = np.zeros(0)
        if self._extractors:
            raw = [v for extractor in self._extractors for v in extractor.values(item)]
            numeric = (np.asarray(raw, dtype=np.float64) - self._numeric_mean) \
                / self._numeric_scale
        p_small_wrong = self._small.proba(rows, slice_, numeric)
        p_large_right = None if self._large is None else self._large.proba(rows, slice_, numeric)
        return Prediction(expected_gain(p_small_wrong, p_large_right), p_small_wrong,
                          p_large_right)

    def score(self, item: VerifierInput) -> float:
        """The routing score of one request (single-request fast path)."""
        return self.predict_one(item).score

    def predict_batch(self, items: Sequence[VerifierInput]) -> Predictions:
        return predict_blocks(self.spec, self.state, self.featurizer.blocks(items))

    def score_batch(self, items: Sequence[VerifierInput]) -> FloatArray:
        return self.predict_batch(items).score
