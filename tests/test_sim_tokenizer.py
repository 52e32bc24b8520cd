"""The simulated replica's tokenizer, chat template and answer generator."""

from __future__ import annotations

import random

import pytest

from pytest_lbbench.sim import tokenizer
from pytest_lbbench.sim.generation import generate_answer
from pytest_lbbench.sim.tokenizer import (
    BOS,
    DEFAULT_SYSTEM_PREAMBLE,
    END_HEADER,
    EOT,
    START_HEADER,
    apply_chat_template,
    detokenize,
    tokenize,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces   ",
    "Internationalization isn't   easy!!! 1234567890 ünïcödé_wörds\n\n- bullet\n\tcode()",
    "",
    "<|eot_id|> is not special inside user text",
]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenize_round_trips_and_limits_piece_length(text: str) -> None:
    pieces = tokenize(text)
    assert detokenize(pieces) == text
    assert all(0 < len(p) <= tokenizer.MAX_PIECE_CHARS for p in pieces)
    assert not (set(pieces) & tokenizer.SPECIAL_TOKENS)


def test_pieces_carry_leading_whitespace_and_long_words_are_chunked() -> None:
    assert tokenize("Hello world, again") == ["Hello", " world", ",", " again"]
    assert tokenize(" internationalization") == [" inter", "nation", "alizat", "ion"]
    # About one token per English word.
    words = "the cat sat on the mat and looked at the bird in the tree".split()
    assert len(tokenize(" ".join(words))) == len(words) + 1  # " looked" is 7 characters: 2 pieces


def test_chat_template_renders_llama3_layout() -> None:
    tokens = apply_chat_template(
        [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi there"}]
    )
    preamble = tokenize(DEFAULT_SYSTEM_PREAMBLE)
    assert tokens == [
        BOS,
        START_HEADER, "system", END_HEADER, "\n\n", *preamble, "Be", " brief", EOT,
        START_HEADER, "user", END_HEADER, "\n\n", "Hi", " there", EOT,
        START_HEADER, "assist", "ant", END_HEADER, "\n\n",
    ]  # fmt: skip
    assert tokens.count(BOS) == 1
    # The Llama-3.1 template's default system block, verbatim.
    assert DEFAULT_SYSTEM_PREAMBLE == "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
    # Without a system message the block is still there (empty message): every request shares it.
    bare = apply_chat_template([{"role": "user", "content": "Hi there"}])
    assert bare[: 5 + len(preamble) + 1] == [BOS, START_HEADER, "system", END_HEADER, "\n\n", *preamble, EOT]
    other = apply_chat_template([{"role": "user", "content": "Something else entirely"}])
    assert other[: len(preamble) + 6] == bare[: len(preamble) + 6]
    assert 20 <= len(preamble) + 6 <= 30  # about 25 tokens, as the real template's block
    # Content given as a list of text parts renders like the plain string.
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": " there"}]}
    ]
    assert apply_chat_template(parts) == apply_chat_template([{"role": "user", "content": "Hi there"}])


@pytest.mark.parametrize("bad", [[{"content": "no role"}], ["not a dict"], [{"role": "user", "content": 5}]])
def test_chat_template_rejects_malformed_messages(bad: list[object]) -> None:
    with pytest.raises(ValueError):
        apply_chat_template(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(20))
def test_generated_answers_round_trip_through_the_tokenizer(seed: int) -> None:
    prompt = tokenize(f"question number {seed}")
    answer = generate_answer(prompt, seed=seed, max_new_tokens=400, median_tokens=180, sigma=0.9)
    assert tokenize(detokenize(answer.tokens)) == answer.tokens
    text = detokenize(answer.tokens)
    assert text == text.strip(), "a client that strips the answer must not change it"


def test_answer_is_deterministic_and_prefix_stable() -> None:
    prompt = tokenize("Tell me a story about a lighthouse")
    a = generate_answer(prompt, seed=0, max_new_tokens=10_000, median_tokens=180, sigma=0.9)
    b = generate_answer(list(prompt), seed=0, max_new_tokens=10_000, median_tokens=180, sigma=0.9)
    assert a == b and a.finish_reason == "stop"
    short = generate_answer(prompt, seed=0, max_new_tokens=5, median_tokens=180, sigma=0.9)
    assert short.tokens == a.tokens[:5] and short.finish_reason == "length"
    other = generate_answer(prompt, seed=1, max_new_tokens=10_000, median_tokens=180, sigma=0.9)
    assert other.tokens != a.tokens
    fixed = generate_answer(prompt, seed=0, max_new_tokens=300, median_tokens=180, sigma=0.9, ignore_eos=True)
    assert len(fixed.tokens) == 300 and fixed.finish_reason == "length"


def test_answer_lengths_follow_the_configured_lognormal() -> None:
    lengths = sorted(
        len(
            generate_answer(
                tokenize(f"prompt {i}"), seed=0, max_new_tokens=100_000, median_tokens=180, sigma=0.9
            ).tokens
        )
        for i in range(2000)
    )
    median = lengths[len(lengths) // 2]
    assert 150 < median < 215
    assert min(lengths) >= 1
    # sigma 0.9: the 84th percentile sits near median * e^0.9 ≈ 443.
    p84 = lengths[int(0.84 * len(lengths))]
    assert 330 < p84 < 600


def test_conversation_prompt_plus_output_is_a_prefix_of_the_next_prompt() -> None:
    rng = random.Random(7)
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful assistant."}]
    previous: list[str] | None = None
    for turn in range(6):
        user = " ".join(
            rng.choice(["why", "is", "the", "sky", "blue?", "Explain", "photosynthesis,", "please!"])
            for _ in range(12)
        )
        messages.append({"role": "user", "content": user})
        prompt = apply_chat_template(messages)
        if previous is not None:
            assert prompt[: len(previous)] == previous, f"turn {turn}: history is not a token prefix"
            assert len(prompt) > len(previous)
        answer = generate_answer(prompt, seed=0, max_new_tokens=64, median_tokens=40, sigma=0.9)
        previous = prompt + answer.tokens
        # The client feeds the detokenized text back, as a real benchmark client does.
        messages.append({"role": "assistant", "content": detokenize(answer.tokens)})
