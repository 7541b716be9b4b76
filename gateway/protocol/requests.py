"""OpenAI's chat and completions requests (plus vLLM's extensions), typed, with their own
conversion to a :class:`GenerationRequest`.

Unknown fields are kept (``extra="allow"``) and reach HTTP upstreams in
``GenerationRequest.passthrough``. Types are strict: a boolean is ``true`` or ``false``, a number
a JSON number (never a string; an integer may be written ``2.0``, as JSON Schema allows), every
number finite; free-form JSON (unknown fields, tools, content parts) must be writable back
unchanged (:func:`gateway.protocol.limits.check_json`). A list stops validating at its first bad
item. Bounds that are settings (:class:`LimitsSettings`) are held by :meth:`check_limits`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

from gateway.kernel.errors import InvalidRequestError
from gateway.kernel.generation import GenerationRequest, Prompts, SamplingParams
from gateway.protocol.limits import LimitsSettings, check_json

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


_STRICT = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
"""Request models: unknown fields kept, no type coercion ("true" is not a boolean, "5" not a
number), no inf or nan."""

FreeList = Annotated[list[dict[str, Any]], Field(fail_fast=True)]
"""A list of free-form objects; validation stops at the first bad item (a list of a million bad
items is one error, not a million)."""


class ChatMessage(BaseModel):
    model_config = _STRICT

    role: Role
    content: str | FreeList | None = None
    name: str | None = None
    tool_calls: FreeList | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_required(self) -> ChatMessage:
        if self.content is None and self.role in ("system", "developer", "user"):
            raise ValueError(f"a {self.role} message needs content")
        if isinstance(self.content, list):
            for part in self.content:
                if not isinstance(part.get("type"), str):
                    raise ValueError("each content part needs a string 'type'")
        return self


class StreamOptions(BaseModel):
    model_config = _STRICT

    include_usage: bool | None = False


def _integral(value: Any) -> Any:
    """An integral float as its integer: JSON Schema's integers include ``2.0`` (a string or a
    boolean stays what it is, and is refused)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _integral_items(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A list of integers, its integral floats taken as integers — walked in Python only when
    strict validation refused it (a prompt of 100,000 token ids stays a pass in Rust)."""
    try:
        return handler(value)
    except ValidationError:
        if not isinstance(value, list) or not any(isinstance(v, float) for v in value):
            raise
        return handler([_integral(v) for v in value])


Integral = BeforeValidator(_integral)
# Bounds first, then Integral: so the published schema says minimum/maximum.
NonNegInt = Annotated[int, Field(ge=0, le=2**31 - 1)]
Count = Annotated[int, Field(ge=0, le=2**31 - 1), Integral]
TokenBudget = Annotated[int, Field(ge=1, le=2**31 - 1), Integral]
TopK = Annotated[int, Field(ge=-1, le=2**31 - 1), Integral]
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1), Integral]
TopLogprobs = Annotated[int, Field(ge=0, le=20), Integral]
TokenIds = Annotated[list[NonNegInt], Field(fail_fast=True), WrapValidator(_integral_items)]


class SamplingFields(BaseModel):
    """Fields shared by both surfaces (OpenAI's and vLLM's names)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False,
                              populate_by_name=True)

    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: Annotated[int, Field(ge=1, le=128), Integral] | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(fail_fast=True)] | None = None
    seed: Seed | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    user: str | None = None
    # vLLM extensions
    top_k: TopK | None = None
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    stop_token_ids: TokenIds | None = None
    min_tokens: Count | None = None
    ignore_eos: bool | None = False
    return_token_ids: bool | None = False

    @model_validator(mode="after")
    def _stop_list(self) -> SamplingFields:
        if isinstance(self.stop, list) and not all(self.stop):
            raise ValueError("stop sequences must be non-empty strings")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @model_validator(mode="after")
    def _free_form_json(self) -> SamplingFields:
        extra = self.__pydantic_extra__  # model_extra without its property call
        options = self.stream_options
        if not extra and options is None and \
                self.__pydantic_fields_set__.isdisjoint(self.free_form_fields):
            return self  # nothing free-form sent: the common request
        free = dict(extra) if extra else {}
        for name in self.free_form_fields:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                free[name] = value
        if options is not None and options.__pydantic_extra__:
            free["stream_options"] = options.__pydantic_extra__
        if free:
            check_json(free)
        return self

    # Declared fields whose content is free-form JSON (checked by check_json).
    free_form_fields: ClassVar[tuple[str, ...]] = ()

    def check_limits(self, limits: LimitsSettings) -> None:
        """The bounds of ``limits`` that validation does not know (they are settings)."""
        if len(self.model) > limits.max_model_name_chars:
            raise InvalidRequestError(f"model: names are at most {limits.max_model_name_chars} "
                                      f"characters, not {len(self.model)}", param="model")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def _sampling(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            stop=stop,
            stop_token_ids=list(self.stop_token_ids or []),
            seed=self.seed,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty,
            logprobs=logprobs,
            n=self.n or 1,
            ignore_eos=bool(self.ignore_eos),
        )

    # Declared (so validated) but interpreted by upstreams only: passed on as sent.
    passthrough_fields: ClassVar[tuple[str, ...]] = ("user",)

    def _passthrough(self) -> dict[str, Any]:
        """Fields tiergate does not interpret, as the client sent them (unknown ones included)."""
        extra = self.__pydantic_extra__
        data = dict(extra) if extra else {}
        for name in self.passthrough_fields:
            if name in self.model_fields_set:
                data[name] = getattr(self, name)
        return data


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, fail_fast=True)
    max_tokens: TokenBudget | None = None
    max_completion_tokens: TokenBudget | None = None
    logprobs: bool | None = False
    top_logprobs: TopLogprobs | None = None
    tools: FreeList | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    passthrough_fields: ClassVar[tuple[str, ...]] = (
        "user", "tools", "tool_choice", "response_format")
    free_form_fields: ClassVar[tuple[str, ...]] = ("tools", "tool_choice", "response_format")

    @model_validator(mode="after")
    def _logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    @model_validator(mode="after")
    def _free_form_messages(self) -> ChatCompletionRequest:
        free: dict[str, Any] = {}
        for index, message in enumerate(self.messages):
            extra = message.__pydantic_extra__
            if not extra and message.tool_calls is None and isinstance(message.content, str):
                continue  # a plain text message: nothing free-form
            parts = dict(extra) if extra else {}
            if isinstance(message.content, list):
                parts["content"] = message.content
            if message.tool_calls is not None:
                parts["tool_calls"] = message.tool_calls
            if parts:
                free[f"messages.{index}"] = parts
        if free:
            check_json(free)
        return self

    def check_limits(self, limits: LimitsSettings) -> None:
        super().check_limits(limits)
        if len(self.messages) > limits.max_messages:
            raise InvalidRequestError(f"messages: at most {limits.max_messages} messages, not "
                                      f"{len(self.messages)}", param="messages")

    def to_generation_request(self, request_id: str) -> GenerationRequest:
        max_tokens = self.max_completion_tokens or self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        messages = [m.model_dump(exclude_none=True) for m in self.messages]
        return GenerationRequest(
            request_id=request_id,
            kind="chat",
            sampling=self._sampling(max_tokens, logprobs),
            messages=messages,
            passthrough=self._passthrough(),
            return_token_ids=bool(self.return_token_ids),
            max_tokens_field=("max_completion_tokens" if self.max_completion_tokens is not None
                              else "max_tokens"),
        )


PromptTokens = Annotated[TokenIds, Field(min_length=1)]
PromptTexts = Annotated[list[str], Field(min_length=1, fail_fast=True)]
PromptTokenLists = Annotated[list[PromptTokens], Field(min_length=1, fail_fast=True)]


def single_prompt(prompt: Prompts) -> Prompts:
    """A batch of one prompt is that prompt (langchain-openai always sends a list)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        return prompt[0]
    return prompt


class CompletionRequest(SamplingFields):
    prompt: str | PromptTokens | PromptTexts | PromptTokenLists
    """Text, token ids, or a batch of either (prompt ``i``'s choices are ``i * n ...``)."""
    max_tokens: TokenBudget | None = 16
    logprobs: TopLogprobs | None = None
    echo: bool | None = False
    suffix: str | None = None

    passthrough_fields: ClassVar[tuple[str, ...]] = ("user", "echo", "suffix")

    def to_generation_request(self, request_id: str) -> GenerationRequest:
        return GenerationRequest(
            request_id=request_id,
            kind="completion",
            sampling=self._sampling(self.max_tokens, self.logprobs),
            prompt=single_prompt(self.prompt),
            passthrough=self._passthrough(),
            return_token_ids=bool(self.return_token_ids),
        )


