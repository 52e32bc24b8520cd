"""A deterministic offline tokenizer and the Llama-3 chat template, as the simulated replica sees them.

Tokens are string pieces, not ids: the simulator only needs equal prompts to give equal token
sequences (for the prefix cache) and a realistic count (about one token per English word). A
piece carries its leading whitespace, GPT-style, so joining pieces gives back the text exactly.

The property the whole benchmark relies on: for a multi-turn conversation,
``prompt_tokens(turn k) + output_tokens(turn k)`` is an exact prefix of ``prompt_tokens(turn k+1)``
when the client feeds the answer text back as the assistant message. That needs

* the chat template to be rendered message by message (never tokenising across a message
  boundary), and
* generated output pieces that survive ``tokenize(detokenize(pieces)) == pieces``
  (see :mod:`pytest_lbbench.sim.generation`).
"""

from __future__ import annotations

import functools
import re
from typing import Any
from collections.abc import Iterable, Mapping, Sequence

BOS = "<|begin_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
SPECIAL_TOKENS = frozenset({BOS, START_HEADER, END_HEADER, EOT})

#: The longest piece; longer words are cut into chunks of this many characters.
MAX_PIECE_CHARS = 6

# One piece = optional single leading whitespace + a word, or + a punctuation run, or a pure
# whitespace run. Same shape as the GPT-2 / cl100k pre-tokenizers, without their special cases.
_PIECE_RE = re.compile(r"\s?\w+|\s?[^\w\s]+|\s+")

_HEADER_SEPARATOR = "\n\n"

#: The Llama-3.1-8B-Instruct chat template (``tokenizer_config.json``) always opens with a
#: system block: ``"Cutting Knowledge Date: December 2023\n"`` then ``"Today Date: " +
#: date_string + "\n\n"`` (``date_string`` defaults to ``"26 Jul 2024"``; SGLang passes none),
#: then the request's system message, if any (``messages[0]['content']|trim``). So every request
#: shares this prefix.
DEFAULT_SYSTEM_PREAMBLE = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"


def tokenize(text: str) -> list[str]:
    """Split ``text`` into pieces; ``"".join(tokenize(text)) == text`` for every string."""
    out: list[str] = []
    append = out.append
    for piece in _PIECE_RE.findall(text):
        if len(piece) <= MAX_PIECE_CHARS:
            append(piece)
        else:
            out.extend(piece[i : i + MAX_PIECE_CHARS] for i in range(0, len(piece), MAX_PIECE_CHARS))
    return out


@functools.lru_cache(maxsize=4096)
def _message_pieces(text: str) -> tuple[str, ...]:
    """:func:`tokenize` of one message's text, remembered: a conversation sends its whole
    history every turn, and re-tokenizing it was most of a replica's intake time (0.4 ms for a
    12 kB history on the development machine, against 0.01 ms to parse its JSON). Only the
    newest messages are new; the others are found by their text (hashing a string runs in C)."""
    return tuple(tokenize(text))


def detokenize(pieces: Iterable[str]) -> str:
    """Join pieces back into text (special tokens included verbatim)."""
    return "".join(pieces)


def message_text(content: Any) -> str:
    """The text of an OpenAI message ``content``: a string, ``None``, or a list of parts.

    Only ``{"type": "text", "text": ...}`` parts contribute; other part types (images) are ignored
    because the simulated model is text-only.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, str):
                texts.append(part)
        return "".join(texts)
    raise ValueError(f"message content must be a string or a list of parts, got {type(content).__name__}")


def _header(role: str) -> list[str]:
    return [START_HEADER, *tokenize(role), END_HEADER, _HEADER_SEPARATOR]


_PREAMBLE_TOKENS = tokenize(DEFAULT_SYSTEM_PREAMBLE)


def apply_chat_template(
    messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True
) -> list[str]:
    """Render OpenAI chat ``messages`` with the Llama-3.1 template, as a list of pieces.

    ``<|begin_of_text|>``, then the system block the real template always emits: the system
    header, :data:`DEFAULT_SYSTEM_PREAMBLE` and the request's system message (if the first
    message has role ``system``; otherwise nothing), ``<|eot_id|>``. Then per other message the
    role header, a blank-line piece, the content pieces and ``<|eot_id|>``; the generation prompt
    is an open assistant header. The preamble is tokenised on its own so that it is the same
    pieces for every request. Content is *not* trimmed (the real template trims): trimming
    would break the round trip of an answer that starts or ends with whitespace, and our
    generated answers never do.

    Raises ``ValueError`` on a malformed message.
    """
    tokens = [BOS]
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{i}] must be an object with 'role' and 'content'")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{i}].role must be a non-empty string")
    rest = list(messages)
    system_text = ""
    if rest and rest[0].get("role") == "system":
        system_text = message_text(rest[0].get("content"))
        rest = rest[1:]
    tokens.extend(_header("system"))
    tokens.extend(_PREAMBLE_TOKENS)
    tokens.extend(_message_pieces(system_text))
    tokens.append(EOT)
    for message in rest:
        tokens.extend(_header(str(message["role"])))
        tokens.extend(_message_pieces(message_text(message.get("content"))))
        tokens.append(EOT)
    if add_generation_prompt:
        tokens.extend(_header("assistant"))
    return tokens


def completion_prompt(prompt: str) -> list[str]:
    """Tokens of a ``/v1/completions`` prompt: BOS, then the text (as Llama tokenizers do)."""
    return [BOS, *tokenize(prompt)]
