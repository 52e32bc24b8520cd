"""``allenai/WildChat-1M``: ChatGPT conversations with the user's IP hash and location.

Row format (as on the Hub)::

    {"conversation_hash": str, "model": str, "timestamp": datetime (UTC),
     "conversation": [{"content", "role", "country", "state", "hashed_ip", "header",
                       "language", "redacted", "timestamp", "toxic", "turn_identifier"}, ...],
     "turn": int, "language": str, "openai_moderation": [...], "detoxify_moderation": [...],
     "toxic": bool, "redacted": bool, "state": str | None, "country": str | None,
     "hashed_ip": str, "header": {"accept-language": str, "user-agent": str}}

The original read ``train[k·100000 : (k+1)·100000]`` for ``--start-index k`` and kept rows
with ``turn ≥ 2``, ``len(conversation) ≥ 4``, a known ``hashed_ip`` and a location served by
the client's region (:data:`REGION_FILTERS`).

**Region filters, corrected.** The original lists had three bugs, fixed here:

* a missing comma merged ``'Pakistan' 'Singapore'`` into ``'PakistanSingapore'``, so both
  countries were dropped from ap-northeast-1: they are now two entries;
* ``Romania`` and ``Norway`` were listed twice: every list is now duplicate-free (a test
  checks it);
* us-east-2 accepted any ``United States`` or ``Canada`` row, so its 20-state list had no
  effect: US rows now need one of the 20 eastern/central states below, and Canadian rows one
  of the eastern/central provinces (our choice, mirroring the state list's intent).

The exact original lists are not in our reference; these follow its description: us-east-2
serves eastern/central North America; ap-northeast-1 East, South-East and South Asia plus
Russia; eu-central-1 the UK, Ireland, Southern Europe, the Nordics, Central/Eastern Europe,
France and (as in the original) New Zealand. Germany, Benelux, the Alps, the Americas outside
the list, Africa, the Middle East and Australia match no region — as in the original — and are
used only by a region without a filter (any other region name, or ``none``).

Synthetic rows (:func:`synthetic_rows`; shape choices, not a calibration against the dump):

* users (``hashed_ip``): a population of 20,000, activity Zipf-like (weights ∝ 1/k^1.0), so
  the busiest IP owns ≥ 10× the conversations of the median one and most IPs appear once;
  each IP has one country/state, header and, for 5 %, a long prompt template (~350 words, one
  of 4, like the "act as a prompt generator for Midjourney" prompts shared by many WildChat
  users) that opens each of its conversations: cross-user prefix sharing;
* countries (:data:`COUNTRY_WEIGHTS`; US 30 %, China 12 %, Russia 10 %, …): ≈ 28 % of rows
  pass the us-east-2 filter (70 % of US users live in its states), ≈ 40 % ap-northeast-1,
  ≈ 15 % eu-central-1 and ≈ 17 % none of them (western US, Germany, Brazil, Australia, …);
* ``turn``: 1 with probability 0.45, else 2 + Geometric(0.45) capped at 30 (mean ≈ 3.2);
  3 % of multi-turn rows lack the last assistant reply (so ``len(conversation) ≥ 4`` filters
  some turn-2 rows) and 1 % have no ``hashed_ip``;
* user messages: lognormal word counts, median 45, sigma 1.4, clamped to [1, 6000] (mean
  ≈ 120: WildChat prompts are longer than the Arena's); replies median 250 words;
* ``timestamp``: a year from 2023-04-09 UTC, hours following a daytime peak in the user's
  local time (diurnal per country); slice ``k`` covers days ``[k·30, k·30 + 30)``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import accumulate
from typing import Any

from pytest_lbbench.workloads.base import Conversation
from pytest_lbbench.workloads.sources import (
    Moderation,
    Row,
    TextSynth,
    geometric_count,
    lognormal_int,
    zipf_weights,
)

DATASET_ID = "allenai/WildChat-1M"
ROWS_PER_SLICE = 100_000


def split_for(start_index: int) -> str:
    """The original's ``--start-index`` slice of the train split."""
    if start_index < 0:
        raise ValueError(f"--start-index must be >= 0, got {start_index}")
    return f"train[{start_index * ROWS_PER_SLICE}:{(start_index + 1) * ROWS_PER_SLICE}]"


# ---- region filters -------------------------------------------------------------------------

US_EAST_CENTRAL_STATES = (
    "Ohio", "Michigan", "Indiana", "Illinois", "Wisconsin", "Minnesota", "Missouri", "Kentucky",
    "Tennessee", "Pennsylvania", "New York", "New Jersey", "Massachusetts", "Connecticut",
    "Maryland", "Virginia", "North Carolina", "South Carolina", "Georgia", "Florida",
)
CANADA_EAST_CENTRAL_PROVINCES = (
    "Ontario", "Quebec", "Manitoba", "New Brunswick", "Nova Scotia", "Prince Edward Island",
    "Newfoundland and Labrador",
)
AP_NORTHEAST_COUNTRIES = (
    "Japan", "South Korea", "China", "Hong Kong", "Taiwan", "Macao", "Mongolia", "India",
    "Pakistan", "Singapore", "Bangladesh", "Sri Lanka", "Nepal", "Vietnam", "Thailand",
    "Malaysia", "Indonesia", "Philippines", "Cambodia", "Myanmar", "Laos", "Russia",
    "Kazakhstan", "Uzbekistan",
)
EU_CENTRAL_COUNTRIES = (
    "United Kingdom", "Ireland", "Spain", "Italy", "Portugal", "Greece", "Malta", "Cyprus",
    "Norway", "Sweden", "Denmark", "Finland", "Iceland", "Poland", "Czechia", "Slovakia",
    "Hungary", "Romania", "Bulgaria", "Slovenia", "Croatia", "Serbia", "Estonia", "Latvia",
    "Lithuania", "Ukraine", "Belarus", "Moldova", "France", "New Zealand",
)


@dataclass(frozen=True)
class RegionFilter:
    """Which rows a client region serves: a country list, and per-country state lists.

    A country with a state list (``United States``, ``Canada``) is accepted only with one of
    its listed states; a country in ``countries`` is accepted whatever its state.
    """

    countries: frozenset[str]
    states: Mapping[str, frozenset[str]]

    def accepts(self, country: str | None, state: str | None) -> bool:
        if country is None:
            return False
        if country in self.states:
            return state in self.states[country]
        return country in self.countries


REGION_FILTERS: dict[str, RegionFilter] = {
    "us-east-2": RegionFilter(
        countries=frozenset(),
        states={
            "United States": frozenset(US_EAST_CENTRAL_STATES),
            "Canada": frozenset(CANADA_EAST_CENTRAL_PROVINCES),
        },
    ),
    "ap-northeast-1": RegionFilter(countries=frozenset(AP_NORTHEAST_COUNTRIES), states={}),
    "eu-central-1": RegionFilter(countries=frozenset(EU_CENTRAL_COUNTRIES), states={}),
}


def region_filter(region: str) -> RegionFilter | None:
    """The filter of ``region``; ``None`` (keep every row) for any other region, as the original."""
    return REGION_FILTERS.get(region)


# ---- converter and filters -----------------------------------------------------------------


def _epoch(value: Any) -> float:
    # datasets yields datetimes for the Hub's timestamp column; JSON copies hold ISO strings.
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, (int, float)):
        return float(value)
    else:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def passes(turn: int, num_messages: int, hashed_ip: str | None, country: str | None,
           state: str | None, flt: RegionFilter | None) -> bool:
    """The original's filters: ``turn ≥ 2``, ``len(conversation) ≥ 4``, a known IP, the region."""
    if turn < 2 or num_messages < 4 or not hashed_ip:
        return False
    return flt is None or flt.accepts(country, state)


def keep_row(row: Row, flt: RegionFilter | None) -> bool:
    """:func:`passes` for a row."""
    return passes(int(row.get("turn") or 0), len(row.get("conversation") or ()),
                  row.get("hashed_ip"), row.get("country"), row.get("state"), flt)


def to_conversation(row: Row, index: int) -> Conversation:
    """A kept row as a :class:`Conversation`; ``index`` (its position among the kept rows)
    makes ids unique, as ``conversation_hash`` repeats for identical conversations."""
    turns = tuple(m["content"] for m in row["conversation"] if m.get("role") == "user")
    return Conversation(
        conv_id=f"{row['conversation_hash']}-{index}",
        user_key=str(row["hashed_ip"]),
        timestamp=_epoch(row["timestamp"]),
        user_turns=turns,
    )


def region_conversations(rows: Iterable[Row], region: str, limit: int) -> list[Conversation]:
    """The first ``limit`` (``<= 0``: all) kept conversations of ``rows`` for ``region``."""
    flt = region_filter(region)
    out: list[Conversation] = []
    for row in rows:
        if keep_row(row, flt):
            out.append(to_conversation(row, len(out)))
            if 0 < limit <= len(out):
                break
    return out


# ---- synthetic rows ------------------------------------------------------------------------

POPULATION = 20_000
IP_ZIPF_EXPONENT = 1.0
TEMPLATE_USER_FRACTION = 0.05
TEMPLATES = 4
TEMPLATE_WORDS = 350
SINGLE_TURN_FRACTION = 0.45
TURNS_MIN = 2
TURNS_GEOMETRIC_P = 0.45
TURNS_MAX = 30
TRUNCATED_FRACTION = 0.03
UNKNOWN_IP_FRACTION = 0.01
PROMPT_TOKENS_MEDIAN = 45
PROMPT_TOKENS_SIGMA = 1.4
PROMPT_TOKENS_MIN = 1
PROMPT_TOKENS_MAX = 6000
ANSWER_WORDS_MEDIAN = 250
DATASET_START = datetime(2023, 4, 9, tzinfo=timezone.utc)
DAYS_PER_SLICE = 30
DATASET_DAYS = 365

# (country, weight, UTC offset in hours). US and Canada are split by state below.
COUNTRY_WEIGHTS: tuple[tuple[str, float, int], ...] = (
    ("United States", 0.30, -5), ("Canada", 0.04, -5),
    ("China", 0.12, 8), ("Russia", 0.10, 3), ("Hong Kong", 0.04, 8), ("Japan", 0.02, 9),
    ("India", 0.02, 5), ("Taiwan", 0.015, 8), ("Singapore", 0.01, 8), ("Pakistan", 0.01, 5),
    ("South Korea", 0.01, 9), ("Vietnam", 0.01, 7), ("Indonesia", 0.005, 7),
    ("Philippines", 0.005, 8),
    ("United Kingdom", 0.04, 0), ("France", 0.025, 1), ("Ukraine", 0.025, 2),
    ("Poland", 0.015, 1), ("Italy", 0.015, 1), ("Spain", 0.015, 1), ("Romania", 0.01, 2),
    ("Norway", 0.005, 1), ("Sweden", 0.005, 1), ("Greece", 0.005, 2), ("New Zealand", 0.005, 12),
    ("Germany", 0.04, 1), ("Netherlands", 0.01, 1), ("Brazil", 0.02, -3), ("Mexico", 0.01, -6),
    ("Turkey", 0.015, 3), ("Egypt", 0.01, 2), ("Australia", 0.015, 10), ("Iran", 0.01, 3),
    ("Nigeria", 0.005, 1),
)
# US rows: 70 % from the eastern/central states (us-east-2), the rest from the West.
US_OTHER_STATES = ("California", "Washington", "Oregon", "Arizona", "Colorado", "Utah", "Nevada", "Texas")
US_EAST_SHARE = 0.7
CANADA_OTHER_PROVINCES = ("British Columbia", "Alberta", "Saskatchewan")
CANADA_EAST_SHARE = 0.75

_MODELS = (("gpt-3.5-turbo-0613", 0.5), ("gpt-3.5-turbo-0125", 0.25), ("gpt-4-0314", 0.1),
           ("gpt-4-1106-preview", 0.1), ("gpt-4-0125-preview", 0.05))
_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/114.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 16_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/115.0",
)
_LANGUAGE = {"China": "Chinese", "Hong Kong": "Chinese", "Taiwan": "Chinese", "Russia": "Russian",
             "Ukraine": "Russian", "Japan": "Japanese", "France": "French", "Spain": "Spanish",
             "Mexico": "Spanish", "Brazil": "Portuguese", "Germany": "German", "Italy": "Italian"}
# Relative activity by local hour: low at night, peaking in the afternoon and evening.
_DIURNAL = (2, 1.5, 1, 1, 1, 1.5, 2, 3, 4, 5, 6, 6, 6, 6.5, 7, 7, 7, 6.5, 6, 6, 5.5, 5, 4, 3)
_DETOXIFY_KEYS = ("identity_attack", "insult", "obscene", "severe_toxicity", "sexual_explicit",
                  "threat", "toxicity")


@dataclass(frozen=True)
class _User:
    hashed_ip: str
    country: str
    state: str | None
    utc_offset: int
    header: dict[str, str]
    language: str
    template: int | None


def _make_user(seed: int, rank: int) -> _User:
    # Each IP is derived from (seed, rank) alone, so it is the same in every slice.
    rng = random.Random(f"wildchat-user:{seed}:{rank}")
    names = [c for c, _, _ in COUNTRY_WEIGHTS]
    weights = [w for _, w, _ in COUNTRY_WEIGHTS]
    k = rng.choices(range(len(names)), weights=weights)[0]
    country, offset = names[k], COUNTRY_WEIGHTS[k][2]
    state: str | None = None
    if country == "United States":
        pool = US_EAST_CENTRAL_STATES if rng.random() < US_EAST_SHARE else US_OTHER_STATES
        state = rng.choice(pool)
        offset = -5 if pool is US_EAST_CENTRAL_STATES else -8
    elif country == "Canada":
        east = rng.random() < CANADA_EAST_SHARE
        state = rng.choice(CANADA_EAST_CENTRAL_PROVINCES if east else CANADA_OTHER_PROVINCES)
        offset = -5 if east else -7
    language = _LANGUAGE.get(country, "English")
    lang_code = {"English": "en-US", "Chinese": "zh-CN", "Russian": "ru-RU"}.get(language, "en-US")
    return _User(
        hashed_ip=f"{rng.getrandbits(256):064x}",
        country=country,
        state=state,
        utc_offset=offset,
        header={"accept-language": f"{lang_code},en;q=0.9", "user-agent": rng.choice(_USER_AGENTS)},
        language=language,
        template=rng.randrange(TEMPLATES) if rng.random() < TEMPLATE_USER_FRACTION else None,
    )


def synthetic_rows(
    seed: int, start_index: int = 0, num_rows: int = ROWS_PER_SLICE, *, kept_for: str | None = None,
) -> Iterator[Row]:
    """Slice ``start_index`` of a synthetic WildChat, in the Hub's row format (lazily).

    Reproducible from ``(seed, start_index)``; users (IPs, their location and header) depend
    on ``seed`` only, so the same people appear in every slice, as in the real dump.

    ``kept_for=region`` is a fast path: rows :func:`keep_row` would drop for that region are
    skipped before their text is made. The rows it yields are exactly the kept rows of the
    full stream (each row's text comes from its own seed, drawn for every row).
    """
    split_for(start_index)  # validates start_index
    flt = region_filter(kept_for) if kept_for is not None else None
    rng = random.Random(f"wildchat:{seed}:{start_index}")
    text = TextSynth(random.Random(f"wildchat-text:{seed}"))
    template_rng = random.Random(f"wildchat-templates:{seed}")
    templates = [text.message(template_rng, TEMPLATE_WORDS) for _ in range(TEMPLATES)]
    moderation = Moderation(rng)
    detoxify = [{k: round(rng.random() * 1e-3, 8) for k in _DETOXIFY_KEYS} for _ in range(50)]
    ip_cum = list(accumulate(zipf_weights(POPULATION, IP_ZIPF_EXPONENT)))
    ranks = range(POPULATION)
    users: dict[int, _User] = {}
    models = [m for m, _ in _MODELS]
    model_cum = list(accumulate([w for _, w in _MODELS]))
    hours = range(24)
    diurnal_cum = list(accumulate(_DIURNAL))
    day0 = DATASET_START + timedelta(days=(start_index * DAYS_PER_SLICE) % DATASET_DAYS)
    for _ in range(num_rows):
        # Metadata first, from the slice's stream; text below from the row's own seed.
        rank = rng.choices(ranks, cum_weights=ip_cum)[0]
        user = users.get(rank)
        if user is None:
            user = users[rank] = _make_user(seed, rank)
        turns = 1 if rng.random() < SINGLE_TURN_FRACTION else geometric_count(
            rng, TURNS_MIN, TURNS_GEOMETRIC_P, TURNS_MAX)
        truncated = turns > 1 and rng.random() < TRUNCATED_FRACTION
        hashed_ip = user.hashed_ip if rng.random() >= UNKNOWN_IP_FRACTION else None
        row_seed = rng.getrandbits(64)
        if kept_for is not None and not passes(
            turns, 2 * turns - truncated, hashed_ip, user.country, user.state, flt,
        ):
            continue
        r = random.Random(row_seed)
        local_hour = r.choices(hours, cum_weights=diurnal_cum)[0]
        start = day0 + timedelta(
            days=r.randrange(DAYS_PER_SLICE),
            hours=(local_hour - user.utc_offset) % 24, seconds=r.randrange(3600),
        )
        conversation: list[dict[str, Any]] = []
        t = start
        for k in range(turns):
            words = lognormal_int(r, PROMPT_TOKENS_MEDIAN, PROMPT_TOKENS_SIGMA,
                                  PROMPT_TOKENS_MIN, PROMPT_TOKENS_MAX)
            content = text.message(r, words)
            if k == 0 and user.template is not None:
                content = f"{templates[user.template]}\n\n{content}"
            common = {"language": user.language, "redacted": False, "toxic": False}
            turn_id = r.getrandbits(31)
            conversation.append({
                "content": content, "role": "user", "country": user.country, "state": user.state,
                "hashed_ip": hashed_ip, "header": user.header, "timestamp": None,
                "turn_identifier": turn_id, **common,
            })
            t += timedelta(seconds=r.randrange(5, 60))
            conversation.append({
                "content": text.answer(r, lognormal_int(r, ANSWER_WORDS_MEDIAN, 0.8, 1, 2000)),
                "role": "assistant", "country": None, "state": None, "hashed_ip": None,
                "header": None, "timestamp": t, "turn_identifier": turn_id, **common,
            })
            t += timedelta(seconds=r.randrange(10, 300))
        if truncated:
            conversation.pop()
        yield {
            "conversation_hash": f"{r.getrandbits(128):032x}",
            "model": r.choices(models, cum_weights=model_cum)[0],
            "timestamp": start,
            "conversation": conversation,
            "turn": turns,
            "language": user.language,
            "openai_moderation": moderation.pick(r, len(conversation)),
            "detoxify_moderation": r.choices(detoxify, k=len(conversation)),
            "toxic": False,
            "redacted": False,
            "state": user.state,
            "country": user.country,
            "hashed_ip": hashed_ip,
            "header": user.header,
        }
