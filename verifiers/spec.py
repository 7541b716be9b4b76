"""What a verifier is made of: its features and classifier heads, as plain JSON-able data.

A verifier has one or two **heads**, each a classifier over some of the verifier's feature
blocks (TF-IDF of the prompt and/or of the answer, the slice one-hot, numeric extractors):

- the **small head** predicts ``P(small answer is not good enough)`` (label ``not small_correct``);
- the optional **large head** predicts ``P(large answer is correct)`` (label ``large_correct``).

With target ``"gain"`` (the default) both heads are trained and the routing score is the
expected accuracy gain of escalating, ``P(large right) - P(small right)`` in [-1, 1]: escalating
where both models fail, or where only the small one is right, gains nothing, and ranking by the
gain is what maximises the routing curve. With target ``"small-wrong"`` only the small head is
trained and the score is ``P(small wrong)`` in [0, 1]. ``docs/verifiers.md`` explains the choice.

Classifier models (``HeadSpec.model``), by name:

- ``linear``: one logistic regression over the concatenated blocks (sparse TF-IDF, slice,
  standardised numeric features); ``C``.
- ``stacked``: a logistic regression per text source gives an out-of-fold probability that
  becomes one more numeric column for an outer logistic regression (``C``, ``text_C``,
  ``folds``) — or an outer gradient-boosting model with ``outer="gbdt"``.
- ``gbdt``: histogram gradient boosting over the numeric and slice blocks (no text);
  ``learning_rate``, ``max_iter``, ``max_depth``, ``min_samples_leaf``, ``l2_regularization``.

Each head may be calibrated (``none``, ``sigmoid`` or ``isotonic``) on out-of-fold predictions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from verifiers.embeddings import DEFAULT_MODEL, model_entry
from verifiers.errors import SpecError
from verifiers.features import EMBEDDINGS, EXTRACTORS, NEEDS_ANSWER

Kind = Literal["prompt", "answer"]
Target = Literal["gain", "small-wrong"]
KINDS: tuple[Kind, ...] = ("prompt", "answer")
TARGETS: tuple[Target, ...] = ("gain", "small-wrong")
TEXT_SOURCES = ("prompt", "answer")
MODELS = ("linear", "stacked", "gbdt")
CALIBRATIONS = ("none", "sigmoid", "isotonic")


@dataclass(frozen=True, slots=True)
class TextSpec:
    """TF-IDF over word n-grams (lower-cased, scikit-learn's default tokenizer)."""

    ngram_max: int = 2
    min_df: int = 2
    max_features: int | None = 200_000
    sublinear_tf: bool = True


@dataclass(frozen=True, slots=True)
class HeadSpec:
    model: str = "linear"
    text: tuple[str, ...] = ("prompt",)
    slice: bool = True
    numeric: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    calibration: str = "none"

    def check(self, kind: Kind, extractors: tuple[str, ...]) -> None:
        if self.model not in MODELS:
            raise SpecError(f"unknown classifier model {self.model!r} (known: {', '.join(MODELS)})")
        if self.calibration not in CALIBRATIONS:
            raise SpecError(f"unknown calibration {self.calibration!r} "
                            f"(known: {', '.join(CALIBRATIONS)})")
        for source in self.text:
            if source not in TEXT_SOURCES:
                raise SpecError(f"unknown text source {source!r} (prompt, answer)")
            if source == "answer" and kind == "prompt":
                raise SpecError("a prompt verifier cannot read the answer text")
        for name in self.numeric:
            if name not in extractors:
                raise SpecError(f"head uses numeric features {name!r} that the verifier does "
                                f"not extract ({', '.join(extractors) or 'none'})")
        stack = self.params.get("stack", ())
        if stack and self.model != "stacked":
            raise SpecError("'stack' (numeric blocks reduced by an inner model) needs model "
                            "'stacked'")
        for name in stack:
            if name not in self.numeric:
                raise SpecError(f"stacked block {name!r} is not one of the head's numeric "
                                f"blocks ({', '.join(self.numeric) or 'none'})")
        if self.model == "gbdt" and self.text:
            raise SpecError("a gbdt head takes no text blocks; use model 'stacked' with "
                            "outer='gbdt'")
        if not (self.text or self.slice or self.numeric):
            raise SpecError("a head needs at least one feature block")


@dataclass(frozen=True, slots=True)
class VerifierSpec:
    kind: Kind
    target: Target = "gain"
    text: TextSpec = field(default_factory=TextSpec)
    extractors: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    small: HeadSpec = field(default_factory=HeadSpec)
    large: HeadSpec | None = field(default_factory=HeadSpec)
    slice_dropout: bool = True
    """Train on every sliced row twice, with and without its slice (see models.fit_state)."""
    answer_formats: int = 0
    """Answer verifiers: train on each answer also with its final-answer ending rewritten in
    this many other styles (see models.fit_state and :mod:`verifiers.answers`)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SpecError(f"unknown verifier kind {self.kind!r} (prompt, answer)")
        if self.target not in TARGETS:
            raise SpecError(f"unknown target {self.target!r} (gain, small-wrong)")
        names = tuple(name for name, _ in self.extractors)
        for name in names:
            if name not in EXTRACTORS:
                raise SpecError(f"unknown feature extractor {name!r} "
                                f"(known: {', '.join(EXTRACTORS)})")
            if self.kind == "prompt" and name in NEEDS_ANSWER:
                raise SpecError(f"a prompt verifier cannot use answer features ({name!r})")
        for name, params in self.extractors:
            if name in EMBEDDINGS:
                model_entry(str(params.get("model", DEFAULT_MODEL)))  # known, or SpecError
        if not isinstance(self.answer_formats, int) or self.answer_formats < 0:
            raise SpecError(f"answer_formats must be a count >= 0, got {self.answer_formats!r}")
        if self.answer_formats and self.kind != "answer":
            raise SpecError("answer_formats (rewritten answer endings) needs an answer verifier")
        self.small.check(self.kind, names)
        if self.target == "gain":
            if self.large is None:
                raise SpecError("target 'gain' needs a large head")
            self.large.check(self.kind, names)
            if "answer" in self.large.text:
                raise SpecError("the large head predicts the large model's correctness from "
                                "the request; it cannot read the small model's answer")

    @property
    def score_name(self) -> str:
        return "expected_gain" if self.target == "gain" else "p_small_wrong"

    def to_json(self) -> dict[str, Any]:
        def head(spec: HeadSpec | None) -> dict[str, Any] | None:
            if spec is None:
                return None
            obj = asdict(spec)
            obj["text"] = list(spec.text)
            obj["numeric"] = list(spec.numeric)
            obj["params"] = dict(spec.params)
            return obj

        return {"kind": self.kind, "target": self.target, "text": asdict(self.text),
                "extractors": [{"name": name, "params": dict(params)}
                               for name, params in self.extractors],
                "small": head(self.small),
                "large": head(self.large) if self.target == "gain" else None,
                "slice_dropout": self.slice_dropout,
                **({"answer_formats": self.answer_formats} if self.answer_formats else {})}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> VerifierSpec:
        def head(data: Mapping[str, Any] | None) -> HeadSpec | None:
            if data is None:
                return None
            return HeadSpec(model=str(data["model"]), text=tuple(data["text"]),
                            slice=bool(data["slice"]), numeric=tuple(data["numeric"]),
                            params=dict(data["params"]),
                            calibration=str(data.get("calibration", "none")))

        try:
            return cls(kind=obj["kind"], target=obj["target"], text=TextSpec(**obj["text"]),
                       extractors=tuple((e["name"], dict(e["params"]))
                                        for e in obj["extractors"]),
                       small=head(obj["small"]) or HeadSpec(), large=head(obj.get("large")),
                       slice_dropout=bool(obj.get("slice_dropout", False)),
                       answer_formats=int(obj.get("answer_formats", 0)))
        except (KeyError, TypeError) as exc:
            raise SpecError(f"invalid verifier spec: {exc!r}") from exc


ANSWER_EXTRACTORS: tuple[tuple[str, Mapping[str, Any]], ...] = (
    ("prompt_stats", {}), ("answer_stats", {"version": 2}), ("arithmetic", {}),
    ("logprobs", {}))
ANSWER_FORMATS = 1
"""Rewritten endings per training answer in the ``default`` answer preset."""


SHORT_PROMPT = ("prompt_stats", "prompt_shape")
SHORT_ANSWER = (*SHORT_PROMPT, "answer_shape", "logprobs")
SHORT_GBDT = {"min_samples_leaf": 10, "max_iter": 200, "learning_rate": 0.05, "max_depth": 3}
RECIPES = ("default", "short")
"""``default``: the recipes chosen on RouteLLM (prose prompts, chains of thought). ``short``:
gradient boosting over shape and logprob features (:mod:`verifiers.shape`), for short,
structured prompts and answers such as the reference pair's tasks."""


def preset(kind: Kind, target: Target = "gain", recipe: str = "default") -> VerifierSpec:
    """The recipe of each kind: ``default`` (chosen by cross-validation on the RouteLLM train
    split, see ``docs/verifiers.md``) or ``short`` (see :data:`RECIPES`)."""
    if recipe not in RECIPES:
        raise SpecError(f"unknown recipe {recipe!r} (known: {', '.join(RECIPES)})")
    if kind not in KINDS:
        raise SpecError(f"unknown verifier kind {kind!r} (prompt, answer)")
    if recipe == "short":
        small_numeric = SHORT_PROMPT if kind == "prompt" else SHORT_ANSWER
        spec = VerifierSpec(
            kind=kind, target=target,
            extractors=tuple((name, {}) for name in small_numeric),
            small=HeadSpec(model="gbdt", text=(), slice=True, numeric=small_numeric,
                           params=SHORT_GBDT),
            large=HeadSpec(model="gbdt", text=(), slice=True, numeric=SHORT_PROMPT,
                           params=SHORT_GBDT))
    elif kind == "prompt":
        spec = VerifierSpec(
            kind="prompt", target=target, extractors=(),
            small=HeadSpec(model="linear", text=("prompt",), slice=True, params={"C": 1.0}),
            large=HeadSpec(model="linear", text=("prompt",), slice=True, params={"C": 1.0}))
    else:
        names = tuple(name for name, _ in ANSWER_EXTRACTORS)
        spec = VerifierSpec(
            kind="answer", target=target, extractors=ANSWER_EXTRACTORS,
            small=HeadSpec(model="stacked", text=("answer",), slice=True, numeric=names,
                           params={"C": 0.1, "text_C": 1.0, "folds": 5}),
            large=HeadSpec(model="linear", text=("prompt",), slice=True,
                           numeric=("prompt_stats",), params={"C": 0.5}),
            answer_formats=ANSWER_FORMATS)
    return spec if target == "gain" else replace(spec, large=None)


EMBEDDING_BLOCK = "prompt_embedding"


def stack_embedding(head: HeadSpec, block: str = EMBEDDING_BLOCK) -> HeadSpec:
    """``head`` with an embedding block stacked: an inner logistic regression over the 384
    columns gives one out-of-fold logit for the outer model (the raw columns in a joint model
    swamp the other features: GSM8K validation APGR fell from 0.826 to 0.679). A ``linear``
    head becomes ``stacked`` (its TF-IDF stacked too, inner C = its C); a ``gbdt`` head becomes
    ``stacked`` with ``outer="gbdt"``."""
    params = dict(head.params)
    if head.model == "linear":
        params = {"C": params.get("C", 1.0), "text_C": params.get("C", 1.0), "folds": 5}
    elif head.model == "gbdt":
        params["outer"] = "gbdt"
    params["stack"] = [*params.get("stack", []), block]
    return replace(head, model="stacked", numeric=(*head.numeric, block), params=params)


def with_embeddings(spec: VerifierSpec, model: str = DEFAULT_MODEL) -> VerifierSpec:
    """``spec`` plus the sentence embedding of the prompt (:mod:`verifiers.embeddings`),
    stacked into every head (:func:`stack_embedding`; the optional extra, ``--embeddings`` on
    the CLI)."""
    model_entry(model)
    if any(name == EMBEDDING_BLOCK for name, _ in spec.extractors):
        return spec

    def add(head: HeadSpec | None) -> HeadSpec | None:
        return None if head is None else stack_embedding(head)

    return replace(spec, extractors=(*spec.extractors, (EMBEDDING_BLOCK, {"model": model})),
                   small=add(spec.small) or spec.small, large=add(spec.large))
