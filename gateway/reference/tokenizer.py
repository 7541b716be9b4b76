"""The character-level tokenizer of the reference models, with their chat template.

One token per character: the printable ASCII characters plus newline and tab, and four special
tokens. Nothing is added around a prompt when it is encoded (no BOS): the models are trained on
``<prompt><answer><eos>``, so a plain completion prompt is already the exact training format.

The chat template renders ``[{"role": "user", "content": P}]`` to exactly ``P`` (and an
assistant turn to its content followed by ``<eos>``), so a chat request and a completion request
with the same text give the same token ids, whether or not special tokens are added.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
CHARACTERS: str = "\t\n" + "".join(chr(c) for c in range(32, 127))
MAX_LENGTH = 64
"""The models' context (``n_positions``): prompt and answer together."""

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ message['content'] }}{{ eos_token }}"
    "{%- else -%}"
    "{{ raise_exception('the reference models take only user and assistant messages, got role '"
    " + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def vocabulary() -> dict[str, int]:
    """Token → id: the special tokens first (``<pad>`` = 0), then one id per character."""
    tokens = [*SPECIAL_TOKENS, *CHARACTERS]
    return {token: index for index, token in enumerate(tokens)}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh ``PreTrainedTokenizerFast`` (built with the ``tokenizers`` library)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab=vocabulary(), unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=MAX_LENGTH,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
