"""``openai/gsm8k`` (config ``main``): grade-school math word problems, synthetic or real.

Row format (as on the Hub, and as ``grade_school_math/data/train.jsonl`` in
openai/grade-school-math, the file the original fetched with ``wget``)::

    {"question": str, "answer": str}   # answer: worked steps with <<calc>> notes, "#### 72"

Synthetic rows (:func:`synthetic_rows`) come from eight problem templates (selling, wages,
saving, sharing, discounts, travel, ages, reading) with random names, objects and numbers that
keep every step an integer, plus 0–3 scene-setting sentences. Statistics (checked by a test):

* ``TRAIN_ROWS`` = 7,473 rows, the size of the real train split, so sharding over regions
  leaves each of three regions ~2,491 questions as on real data;
* question length: median ≈ 45 words, 5th–95th percentile ≈ 30–65 words, range 20–75
  (GSM8K questions are a few sentences long); answers have 2–3 worked steps ending in
  ``#### <integer>``;
* row ``i`` is generated from ``(seed, i)`` alone, so any shard is cheap to make.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from pytest_lbbench.workloads.sources import Row

DATASET_ID = "openai/gsm8k"
CONFIG = "main"
SPLIT = "train"
TRAIN_ROWS = 7473

_NAMES = (("Natalia", "she"), ("Weng", "she"), ("Betty", "she"), ("Julie", "she"),
          ("James", "he"), ("Albert", "he"), ("Ken", "he"), ("Alexis", "she"), ("Tina", "she"),
          ("Randy", "he"), ("Joy", "she"), ("Mark", "he"), ("Carla", "she"), ("Tobias", "he"),
          ("Maddie", "she"), ("Jean", "he"), ("Priya", "she"), ("Omar", "he"))
_ITEMS = ("clips", "cupcakes", "stickers", "pencils", "apples", "bracelets", "candles", "comic books")
_FOOD = ("cookies", "muffins", "brownies", "dumplings", "tarts")
_THINGS = ("bicycle", "video game", "skateboard", "telescope", "guitar", "tablet")
_STORES = ("bookstore", "toy store", "bakery", "garden center", "sports shop")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August")
_SCENES = (
    "{Name} lives in a small town near the coast.",
    "It is the first week of the school year.",
    "{Pron} likes to keep careful notes of everything {pron} does.",
    "The weather has been sunny all week.",
    "{Pron} is saving up because {pron} wants to surprise {pos} family.",
    "{Name}'s best friend helps out on weekends.",
    "Prices at the market have not changed for a year.",
    "{Pron} always checks the math twice before answering.",
)

def _pos(pron: str) -> str:
    return "her" if pron == "she" else "his"


def _obj(pron: str) -> str:
    return "her" if pron == "she" else "him"


_Problem = tuple[str, list[tuple[str, str, int]]]  # question, [(what, expression, value)]


def _sell(r: random.Random, n: str, p: str) -> _Problem:
    a, k = r.randint(12, 96), r.randint(2, 4)
    item, m1 = r.choice(_ITEMS), r.randrange(len(_MONTHS) - 1)
    q = (f"{n} sold {a} {item} to {_pos(p)} friends in {_MONTHS[m1]}, and then "
         f"{p} sold {k} times as many {item} in {_MONTHS[m1 + 1]}. How many {item} did {n} sell "
         f"altogether in {_MONTHS[m1]} and {_MONTHS[m1 + 1]}?")
    return q, [(f"{n} sold", f"{a}*{k}", a * k), ("Altogether", f"{a}+{a * k}", a + a * k)]


def _wage(r: random.Random, n: str, p: str) -> _Problem:
    rate, h1, h2 = r.randint(8, 30), r.randint(2, 9), r.randint(2, 9)
    job = r.choice(("babysitting", "tutoring", "walking dogs", "mowing lawns"))
    q = (f"{n} earns ${rate} an hour for {job}. This week, {p} worked {h1} hours on Monday and "
         f"{h2} hours on Saturday. How much money did {n} earn this week?")
    return q, [("Hours worked", f"{h1}+{h2}", h1 + h2), ("Earnings", f"{rate}*{h1 + h2}", rate * (h1 + h2))]


def _save(r: random.Random, n: str, p: str) -> _Problem:
    s, w, weeks = r.randint(10, 80), r.randint(5, 25), r.randint(3, 12)
    price, thing = s + w * weeks, r.choice(_THINGS)
    rel = r.choice(("parents", "grandmother", "uncle", "aunt"))
    q = (f"{n} wants to buy a new {thing} that costs ${price}. {p.capitalize()} has already saved "
         f"${s}, and {p} gets ${w} every week from {_pos(p)} {rel}. "
         f"How many weeks will it take {n} to have enough money for the {thing}?")
    return q, [("Still needed", f"{price}-{s}", price - s), ("Weeks", f"{price - s}/{w}", weeks)]


def _share(r: random.Random, n: str, p: str) -> _Problem:
    a, k, m = r.randint(3, 20), r.randint(2, 8), r.randint(3, 15)
    total, food = a + k * m, r.choice(_FOOD)
    q = (f"{n} baked {total} {food} for a party. {p.capitalize()} ate {a} of them while they were "
         f"still warm and packed the rest equally into {k} boxes. How many {food} are in each box?")
    return q, [("Left to pack", f"{total}-{a}", total - a), ("Per box", f"{total - a}/{k}", m)]


def _discount(r: random.Random, n: str, p: str) -> _Problem:
    price, qty, d = 10 * r.randint(1, 9), r.randint(2, 12), r.choice((10, 20, 50))
    store = r.choice(_STORES)
    total, off = price * qty, price * qty * d // 100
    q = (f"A {store} sells each item in its window for ${price}. {n} buys {qty} of them and the "
         f"cashier gives {_obj(p)} a {d}% discount on the total. "
         f"How much does {n} pay?")
    return q, [("Full price", f"{price}*{qty}", total), ("Discount", f"{total}*{d}/100", off),
               ("Paid", f"{total}-{off}", total - off)]


def _travel(r: random.Random, n: str, p: str) -> _Problem:
    v1, h1, v2, h2 = 10 * r.randint(3, 8), r.randint(1, 5), 10 * r.randint(2, 7), r.randint(1, 4)
    q = (f"{n} drives at {v1} miles per hour for {h1} hours, stops for lunch, and then drives at "
         f"{v2} miles per hour for {h2} more hours. How many miles does {n} drive in total?")
    return q, [("First part", f"{v1}*{h1}", v1 * h1), ("Second part", f"{v2}*{h2}", v2 * h2),
               ("Total", f"{v1 * h1}+{v2 * h2}", v1 * h1 + v2 * h2)]


def _age(r: random.Random, n: str, p: str) -> _Problem:
    a, k, y = r.randint(3, 15), r.randint(2, 4), r.randint(2, 10)
    other = r.choice(("cousin", "neighbor", "aunt", "coach"))
    q = (f"{n} is {a} years old. {n}'s {other} is {k} times as old as {n}. "
         f"How old will {n}'s {other} be in {y} years?")
    return q, [("Now", f"{a}*{k}", a * k), ("Then", f"{a * k}+{y}", a * k + y)]


def _read(r: random.Random, n: str, p: str) -> _Problem:
    a, rest = r.randint(8, 40), 2 * r.randint(10, 60)
    total = 3 * a + rest
    q = (f"{n} is reading a {total}-page book. Yesterday, {p} read {a} pages, and today {p} read "
         f"twice as many pages as yesterday. If {p} wants to read half of the remaining pages "
         f"tomorrow, how many pages should {p} read?")
    return q, [("Today", f"{a}*2", 2 * a), ("Remaining", f"{total}-{a}-{2 * a}", rest),
               ("Tomorrow", f"{rest}/2", rest // 2)]


_TEMPLATES: tuple[Callable[[random.Random, str, str], _Problem], ...] = (
    _sell, _wage, _save, _share, _discount, _travel, _age, _read,
)


def synthetic_row(seed: int, index: int) -> Row:
    """Row ``index`` of the synthetic train split (depends on ``(seed, index)`` only)."""
    r = random.Random(f"gsm8k:{seed}:{index}")
    name, pron = r.choice(_NAMES)
    question, steps = r.choice(_TEMPLATES)(r, name, pron)
    scenes = [s.format(Name=name, Pron=pron.capitalize(), pron=pron, pos=_pos(pron))
              for s in r.sample(_SCENES, r.randint(0, 3))]
    answer = "\n".join(f"{what}: {expr} = <<{expr}={value}>>{value}" for what, expr, value in steps)
    return {"question": " ".join([*scenes, question]), "answer": f"{answer}\n#### {steps[-1][2]}"}


def synthetic_rows(seed: int, num_rows: int = TRAIN_ROWS) -> Iterator[Row]:
    """The synthetic train split, lazily, in row order."""
    for i in range(num_rows):
        yield synthetic_row(seed, i)


def final_answer(row: Row) -> str:
    """The number after ``####`` in a GSM8K answer."""
    return str(row["answer"]).rsplit("####", 1)[-1].strip()
