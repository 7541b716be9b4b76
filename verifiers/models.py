"""Fitting verifiers: feature blocks, classifier heads, calibration, batch prediction.

The fitted state is a plain dict of scikit-learn estimators, numpy arrays, lists and numbers
(never our own classes), so the artifact file holds only types on the trusted list; the code
that uses it is rebuilt from the spec. :mod:`verifiers.scoring` compiles the same state into a
fast single-request path.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import sparse  # type: ignore[import-untyped, unused-ignore]

from verifiers.answers import augment_style, rewrite_final
from verifiers.data import Answer, VerifierInput
from verifiers.errors import SpecError
from verifiers.features import NumericExtractor, build_extractor
from verifiers.spec import HeadSpec, TextSpec, VerifierSpec

STATE_FORMAT = 1
SEED = 0
LOGIT_CLIP = 1e-6
FloatArray = NDArray[np.float64]
State = dict[str, Any]


def text_of(item: VerifierInput, source: str) -> str:
    if source == "prompt":
        return item.prompt
    return item.answer.text if item.answer is not None else ""


def logit(p: FloatArray) -> FloatArray:
    clipped = np.clip(p, LOGIT_CLIP, 1 - LOGIT_CLIP)
    return np.asarray(np.log(clipped / (1 - clipped)), dtype=np.float64)


def extractors_of(spec: VerifierSpec) -> list[NumericExtractor]:
    return [build_extractor(name, params) for name, params in spec.extractors]


def numeric_names(extractors: Sequence[NumericExtractor]) -> list[str]:
    return [f"{e.name}.{n}" for e in extractors for n in e.names]


def slice_vector(names: Sequence[str], frequencies: FloatArray, value: str | None) -> FloatArray:
    """One-hot of a known slice; an unknown or missing slice is encoded as the training
    frequencies, so a linear head gives it the average of the slices' contributions."""
    if value is not None and value in names:
        vector = np.zeros(len(names))
        vector[list(names).index(value)] = 1.0
        return vector
    return frequencies.copy()


@dataclass(slots=True)
class Blocks:
    """The feature blocks of a batch of inputs."""

    text: dict[str, sparse.csr_matrix]
    slice: FloatArray
    numeric: FloatArray
    numeric_names: list[str]

    def take(self, rows: NDArray[np.int64]) -> Blocks:
        return Blocks({k: v[rows] for k, v in self.text.items()}, self.slice[rows],
                      self.numeric[rows], self.numeric_names)

    def numeric_columns(self, head: HeadSpec) -> FloatArray:
        return self.numeric_block(head.numeric)

    def numeric_block(self, blocks: Sequence[str]) -> FloatArray:
        keep = [i for i, name in enumerate(self.numeric_names)
                if name.split(".", 1)[0] in blocks]
        return self.numeric[:, keep]


def stacked_numeric(head: HeadSpec) -> tuple[str, ...]:
    """The numeric blocks a stacked head reduces to one out-of-fold logit each (``stack``)."""
    return tuple(head.params.get("stack", ())) if head.model == "stacked" else ()


def outer_of(head: HeadSpec) -> HeadSpec:
    """The outer model of a stacked head: slice + the numeric blocks that are not stacked."""
    stack = stacked_numeric(head)
    return HeadSpec(model="linear", text=(), slice=head.slice,
                    numeric=tuple(n for n in head.numeric if n not in stack))


def fit_featurizer(spec: VerifierSpec, items: Sequence[VerifierInput],
                   extractors: Sequence[NumericExtractor] | None = None,
                   raw: FloatArray | None = None) -> State:
    """Fit the TF-IDF vocabularies, the slice list and the numeric standardisation.

    A vocabulary is stored as its terms joined by newlines (in column order) plus the idf
    array, not as scikit-learn's vocabulary dict: skops writes a dict entry by entry, which is
    slow and large for 10^5 terms. ``extractors``: the spec's, when already built; ``raw``: the
    items' numeric features, when already extracted.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    sources = sorted({s for head in (spec.small, spec.large) if head is not None
                      for s in head.text})
    text = {}
    for source in sources:
        vectorizer = TfidfVectorizer(**_tfidf_params(spec.text))
        try:
            vectorizer.fit([text_of(item, source) for item in items])
        except ValueError as exc:  # empty vocabulary
            raise SpecError(f"cannot fit TF-IDF on the {source} texts: {exc}") from exc
        terms = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.__getitem__)
        text[source] = {"terms": "\n".join(terms),
                        "idf": np.asarray(vectorizer.idf_, dtype=np.float64)}
    counts = Counter(item.slice for item in items if item.slice is not None)
    names = sorted(counts)
    total = sum(counts.values())
    if extractors is None:
        extractors = extractors_of(spec)
    if raw is None:
        raw = raw_numeric(extractors, items)
    mean = raw.mean(axis=0) if len(raw) else np.zeros(raw.shape[1])
    scale = raw.std(axis=0) if len(raw) else np.ones(raw.shape[1])
    scale[scale == 0] = 1.0
    return {"text": text,
            "slices": {"names": names,
                       "frequencies": np.array([counts[n] / total for n in names])
                       if total else np.zeros(0)},
            "numeric": {"names": numeric_names(extractors), "mean": mean, "scale": scale}}


def _tfidf_params(text: TextSpec) -> dict[str, Any]:
    return {"ngram_range": (1, text.ngram_max), "min_df": text.min_df,
            "max_features": text.max_features, "sublinear_tf": text.sublinear_tf,
            "dtype": np.float64}


def vectorizer_from_state(text: TextSpec, state: Mapping[str, Any]) -> Any:
    """A fitted ``TfidfVectorizer`` rebuilt from stored terms and idf weights."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    terms = state["terms"].split("\n") if state["terms"] else []
    idf = np.asarray(state["idf"], dtype=np.float64)
    if len(terms) != len(idf):
        raise ValueError(f"{len(terms)} terms but {len(idf)} idf weights")
    vectorizer = TfidfVectorizer(**_tfidf_params(text),
                                 vocabulary={term: i for i, term in enumerate(terms)})
    vectorizer.idf_ = idf
    return vectorizer


def raw_numeric(extractors: Sequence[NumericExtractor],
                items: Sequence[VerifierInput]) -> FloatArray:
    """The unscaled numeric features of ``items`` (an extractor's ``values_batch`` if it has
    one, else ``values`` per item)."""
    columns = []
    for extractor in extractors:
        batch = getattr(extractor, "values_batch", None)
        if batch is not None:
            block = np.asarray(batch(items), dtype=np.float64)
        else:
            block = np.array([extractor.values(item) for item in items], dtype=np.float64)
        columns.append(block.reshape(len(items), len(extractor.names)))
    if not columns:
        return np.zeros((len(items), 0))
    return np.hstack(columns)


class Featurizer:
    """The fitted feature blocks, ready to transform batches (built once per verifier)."""

    def __init__(self, spec: VerifierSpec, state: State,
                 extractors: Sequence[NumericExtractor] | None = None) -> None:
        self.spec = spec
        self.vectorizers = {source: vectorizer_from_state(spec.text, text_state)
                            for source, text_state in state["text"].items()}
        self.slice_names: list[str] = list(state["slices"]["names"])
        self.slice_frequencies = np.asarray(state["slices"]["frequencies"], dtype=np.float64)
        self.numeric_names: list[str] = list(state["numeric"]["names"])
        self.mean = np.asarray(state["numeric"]["mean"], dtype=np.float64)
        self.scale = np.asarray(state["numeric"]["scale"], dtype=np.float64)
        self.extractors = list(extractors) if extractors is not None else extractors_of(spec)
        if len(self.numeric_names) != sum(len(e.names) for e in self.extractors):
            raise ValueError("stored numeric features do not match the spec's extractors")

    def blocks(self, items: Sequence[VerifierInput], raw: FloatArray | None = None) -> Blocks:
        """The blocks of ``items`` (``raw``: their numeric features, if already extracted)."""
        text = {source: vectorizer.transform([text_of(item, source) for item in items]).tocsr()
                for source, vectorizer in self.vectorizers.items()}
        slices = np.array([slice_vector(self.slice_names, self.slice_frequencies, item.slice)
                           for item in items], dtype=np.float64
                          ).reshape(len(items), len(self.slice_names))
        if raw is None:
            raw = raw_numeric(self.extractors, items)
        scaled = (raw - self.mean) / self.scale
        return Blocks(text, slices, scaled, self.numeric_names)


def _design(head: HeadSpec, blocks: Blocks, extra: FloatArray | None = None
            ) -> sparse.csr_matrix:
    parts: list[Any] = [blocks.text[source] for source in head.text]
    if head.slice and blocks.slice.shape[1]:
        parts.append(sparse.csr_matrix(blocks.slice))
    numeric = blocks.numeric_columns(head)
    if numeric.shape[1]:
        parts.append(sparse.csr_matrix(numeric))
    if extra is not None:
        parts.append(sparse.csr_matrix(extra))
    return sparse.hstack(parts, format="csr") if parts else sparse.csr_matrix(
        (blocks.slice.shape[0], 0))


def _logistic(c: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=5000, random_state=SEED)


def _gbdt(params: Mapping[str, Any]) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        learning_rate=float(params.get("learning_rate", 0.05)),
        max_iter=int(params.get("max_iter", 200)), max_depth=int(params.get("max_depth", 3)),
        min_samples_leaf=int(params.get("min_samples_leaf", 20)),
        l2_regularization=float(params.get("l2_regularization", 1.0)),
        early_stopping=False, random_state=SEED)


Folds = list[tuple[NDArray[np.int64], NDArray[np.int64]]]


def _folds(labels: FloatArray, folds: int, groups: NDArray[np.int64]) -> Folds:
    """Stratified folds that keep each group (a row and its slice-less copy) on one side."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=SEED)
    return list(splitter.split(np.zeros(len(labels)), labels, groups))


def _check_labels(labels: FloatArray, what: str) -> None:
    if len(np.unique(labels)) < 2:
        raise SpecError(f"cannot train the {what} head: every training row has the same label")


def fit_head(head: HeadSpec, blocks: Blocks, labels: FloatArray, what: str,
             groups: NDArray[np.int64] | None = None) -> State:
    _check_labels(labels, what)
    if groups is None:
        groups = np.arange(len(labels))
    state = _fit_uncalibrated(head, blocks, labels, groups)
    state["calibrator"] = None
    if head.calibration != "none":
        folds = int(head.params.get("folds", 5))
        oof = np.zeros(len(labels))
        for train, test in _folds(labels, folds, groups):
            fold_state = _fit_uncalibrated(head, blocks.take(train), labels[train],
                                           groups[train])
            oof[test] = _raw_proba(head, fold_state, blocks.take(test))
        state["calibrator"] = _fit_calibrator(head.calibration, oof, labels)
    return state


def _fit_uncalibrated(head: HeadSpec, blocks: Blocks, labels: FloatArray,
                      groups: NDArray[np.int64]) -> State:
    params = head.params
    if head.model == "linear":
        model = _logistic(float(params.get("C", 1.0)))
        model.fit(_design(head, blocks), labels)
        return {"model": model}
    if head.model == "gbdt":
        model = _gbdt(params)
        model.fit(_design(head, blocks).toarray(), labels)
        return {"model": model}
    # stacked: out-of-fold text (and stacked numeric block) probabilities feed the outer model
    folds = int(params.get("folds", 5))
    text_c = float(params.get("text_C", 1.0))
    stack_c = float(params.get("stack_C", 1.0))
    inner_models: dict[str, dict[str, Any]] = {"text": {}, "stack": {}}
    columns = []
    sources: list[tuple[str, str, Any, float]] = [
        ("text", source, blocks.text[source], text_c) for source in head.text]
    sources += [("stack", name, blocks.numeric_block((name,)), stack_c)
                for name in stacked_numeric(head)]
    for group, source, matrix, c in sources:
        oof = np.zeros(len(labels))
        for train, test in _folds(labels, folds, groups):
            inner = _logistic(c).fit(matrix[train], labels[train])
            oof[test] = inner.predict_proba(matrix[test])[:, 1]
        inner_models[group][source] = _logistic(c).fit(matrix, labels)
        columns.append(logit(oof))
    extra = np.column_stack(columns) if columns else None
    design = _design(outer_of(head), blocks, extra)
    if params.get("outer", "linear") == "gbdt":
        model = _gbdt(params).fit(design.toarray(), labels)
    else:
        model = _logistic(float(params.get("C", 1.0))).fit(design, labels)
    state = {"model": model, "text_models": inner_models["text"]}
    if inner_models["stack"]:
        state["stack_models"] = inner_models["stack"]
    return state


def _raw_proba(head: HeadSpec, state: State, blocks: Blocks) -> FloatArray:
    model = state["model"]
    if head.model == "linear":
        return np.asarray(model.predict_proba(_design(head, blocks))[:, 1])
    if head.model == "gbdt":
        return np.asarray(model.predict_proba(_design(head, blocks).toarray())[:, 1])
    columns = [logit(state["text_models"][source].predict_proba(blocks.text[source])[:, 1])
               for source in head.text]
    columns += [logit(state["stack_models"][name].predict_proba(
                    blocks.numeric_block((name,)))[:, 1]) for name in stacked_numeric(head)]
    extra = np.column_stack(columns) if columns else None
    design = _design(outer_of(head), blocks, extra)
    if head.params.get("outer", "linear") == "gbdt":
        design = design.toarray()
    return np.asarray(model.predict_proba(design)[:, 1])


def _fit_calibrator(method: str, oof: FloatArray, labels: FloatArray) -> Any:
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(oof, labels)
    return _logistic(1e6).fit(logit(oof).reshape(-1, 1), labels)


def calibrate(calibrator: Any, p: FloatArray) -> FloatArray:
    if calibrator is None:
        return p
    from sklearn.isotonic import IsotonicRegression

    if isinstance(calibrator, IsotonicRegression):
        return np.asarray(calibrator.predict(p), dtype=np.float64)
    return np.asarray(calibrator.predict_proba(logit(p).reshape(-1, 1))[:, 1])


def head_proba(head: HeadSpec, state: State, blocks: Blocks) -> FloatArray:
    return calibrate(state["calibrator"], _raw_proba(head, state, blocks))


@dataclass(frozen=True, slots=True)
class Labels:
    small_wrong: FloatArray
    large_right: FloatArray | None


@contextmanager
def one_thread() -> Iterator[None]:
    """Run on one BLAS and one OpenMP thread: the order of a parallel sum depends on the thread
    count, so a verifier trained on two threads differs in its low bits, and its artifact in its
    bytes, from one trained on one. The estimators' libraries are loaded first: a native
    library that loads inside the limit (scikit-learn's OpenMP loads with its gradient boosting)
    would not be limited, and the first fit in a process would differ from the next."""
    from sklearn import ensemble  # noqa: F401  (loads scikit-learn's OpenMP runtime)
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped, unused-ignore]

    with threadpool_limits(limits=1):
        yield


def fit_state(spec: VerifierSpec, items: Sequence[VerifierInput], labels: Labels,
              extractors: Sequence[NumericExtractor] | None = None) -> State:
    """Train every part of a verifier; returns the state that the artifact stores. Always on
    one thread (:func:`one_thread`): the same rows give the same artifact, byte for byte.

    With ``spec.slice_dropout`` every row that has a slice is used twice, once with and once
    without it, so the text features learn to stand in for a missing slice label; the two
    copies always fall in the same cross-validation fold (numeric features never read the
    slice, so a copy's are its original's). With ``spec.answer_formats`` = ``k``, every row
    whose answer has a recognised final-answer ending (:mod:`verifiers.answers`) is also used
    with that ending rewritten in ``k`` other styles (same labels, same fold), so no feature
    keys on one model's way of ending its answers. ``extractors``: the spec's, when already
    built (an embedding block loads a model).
    """
    if len(items) != len(labels.small_wrong):
        raise SpecError("inputs and labels differ in length")
    if extractors is None:
        extractors = extractors_of(spec)
    with one_thread():
        return _fit_state(spec, items, labels, extractors)


def _fit_state(spec: VerifierSpec, items: Sequence[VerifierInput], labels: Labels,
               extractors: Sequence[NumericExtractor]) -> State:
    groups = np.arange(len(items))
    small_wrong, large_right = labels.small_wrong, labels.large_right
    if spec.answer_formats:
        sources, rewritten = augment_answers(items, spec.answer_formats)
        if sources:
            picked = np.array(sources, dtype=np.int64)
            items = [*items, *rewritten]
            groups = np.concatenate([groups, picked])
            small_wrong = np.concatenate([small_wrong, small_wrong[picked]])
            if large_right is not None:
                large_right = np.concatenate([large_right, large_right[picked]])
    raw = raw_numeric(extractors, items)
    featurizer = fit_featurizer(spec, items, extractors, raw)
    rows = list(items)
    if spec.slice_dropout:
        copies = np.array([i for i, item in enumerate(items) if item.slice is not None],
                          dtype=np.int64)
        if len(copies):
            rows += [replace(items[i], slice=None) for i in copies]
            raw = np.concatenate([raw, raw[copies]])
            groups = np.concatenate([groups, groups[copies]])
            small_wrong = np.concatenate([small_wrong, small_wrong[copies]])
            if large_right is not None:
                large_right = np.concatenate([large_right, large_right[copies]])
    blocks = Featurizer(spec, featurizer, extractors).blocks(rows, raw)
    heads = {"small": fit_head(spec.small, blocks, small_wrong, "small", groups)}
    if spec.target == "gain":
        if large_right is None or spec.large is None:
            raise SpecError("target 'gain' needs large_correct on every training row "
                            "(or train with target 'small-wrong')")
        heads["large"] = fit_head(spec.large, blocks, large_right, "large", groups)
    return {"format": STATE_FORMAT, "featurizer": featurizer, "heads": heads}


def augment_answers(items: Sequence[VerifierInput], copies: int
                    ) -> tuple[list[int], list[VerifierInput]]:
    """For each item whose answer has a recognised ending, ``copies`` rewrites of it in
    distinct other styles (drawn by prompt hash): ``(source indices, rewritten items)``."""
    sources: list[int] = []
    rewritten: list[VerifierInput] = []
    for index, item in enumerate(items):
        if item.answer is None:
            continue
        seen = {item.answer.text}
        for attempt in range(4 * copies):
            if len(seen) > copies:
                break
            text = rewrite_final(item.answer.text, augment_style(item.prompt, attempt))
            if text is None:
                break
            if text in seen:
                continue
            seen.add(text)
            sources.append(index)
            # token logprobs belong to the original text: a rewritten answer carries none
            rewritten.append(replace(item, answer=Answer(text)))
    return sources, rewritten


@dataclass(frozen=True, slots=True)
class Predictions:
    score: FloatArray
    p_small_wrong: FloatArray
    p_large_right: FloatArray | None


def predict_blocks(spec: VerifierSpec, state: State, blocks: Blocks) -> Predictions:
    p_small_wrong = head_proba(spec.small, state["heads"]["small"], blocks)
    if spec.target == "gain" and spec.large is not None:
        p_large_right = head_proba(spec.large, state["heads"]["large"], blocks)
        return Predictions(p_large_right + p_small_wrong - 1.0, p_small_wrong, p_large_right)
    return Predictions(p_small_wrong, p_small_wrong, None)


def expected_gain(p_small_wrong: float, p_large_right: float | None) -> float:
    """The routing score: ``P(large right) - P(small right)``, or ``P(small wrong)`` alone."""
    if p_large_right is None:
        return p_small_wrong
    value = p_large_right + p_small_wrong - 1.0
    return value if math.isfinite(value) else 0.0
