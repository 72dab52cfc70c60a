"""User-behaviour QA: a long event log of one shop user, and a question that one fact or a small count answers.

The log holds dated views, cart additions, purchases, returns and ratings of items that each have a category and a
price; it is generated from the trial's random generator, or read from a user's own JSONL (`EVENTS_SCHEMA`). The
facts the question needs are events of items that appear nowhere else in the window, inserted at depths
(`logs.log_prompt`), so that the answer is exactly one:

- last-purchase: "What was the last item the user bought in the garden category?" One to three purchases in that
  category, the last at the grid's depth and the others before it; the log holds no other purchase in it (the
  background never uses the category). Answer: the item's name; naming an earlier one as well is wrong.
- rating: "How many stars did the user give to Cobalt kettle?" A purchase of the item, then its rating at the
  grid's depth. Answer: the number of stars, as the answer's first number (`sample.matches`' "number": "4 stars"
  passes for 4, "2024-03-05: 4" does not).
- date: "What did the user buy on 2024-03-05?" A purchase at the grid's depth, dated like the event before it.
  Answer: every item bought that day that the window shows whole, in log order (all must be named); items that differ
  only in case or spacing are one item, named as first shown, since the matcher takes them for one.
- returns: "How many items from the garden category did the user return?" One to four returns in the category, the
  first at the grid's depth and the others anywhere. Answer: their number, as the answer's first number.
An inserted event takes the time of the event before it, or a minute after the event inserted before it where that
is later, so that the log stays in time order and every inserted event is later than the ones inserted before it
(the last purchase is the latest in time, not only in line order; at depth 0 all of them go in at the window's first
record start). Where the two events around it leave no minute for it, it goes in at the next record start that does.

With a user's own events, events in the asked category (last-purchase, returns) or of the fact's items, in any case
and spacing (`sample.normalised`, as the matcher reads them: "Sports" is the sports category), are left out of the
window, so that no record of theirs can make a second answer. A window that runs past the split's last event
goes on with a copy of the split's events moved later by whole days (`_later_lap`), so the log stays in time order.

Held out (`sample.Pool`): the test split renders events as pipe-separated lines and words the questions one way,
with the item brands of `BRANDS.test`; the training split uses another line format, other wording and other brands.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

from cometlm.bundled import encode
from cometlm.tasks.retrieval import check_depth
from cometlm.tasks.logs import cycle_from, log_prompt, read_records, split_region
from cometlm.tasks.sample import Pool, TaskSample, check_split, normalised

QUESTIONS = ("last-purchase", "rating", "date", "returns")
# A count is scored as the answer's first number: as a whole word anywhere, "1" would be found in "2023-08-1".
MATCH = {"last-purchase": "all", "rating": "number", "date": "all", "returns": "number"}
EVENTS = ("view", "cart", "purchase", "return", "rating")
EVENTS_SCHEMA = (
    'one JSON object per line: {"time": "2024-03-05 14:22" (or ISO 8601 such as "2024-03-05T14:22:00"), "event": '
    'one of view, cart, purchase, return, rating, "item": name, "category": name, "price": number >= 0, "stars": '
    "1-5 (rating events only)}; other keys are ignored; events are sorted by time"
)
PRODUCTS = {
    "shoes": ("running shoes", "hiking boots", "sandals", "sneakers"),
    "kitchen": ("kettle", "blender", "frying pan", "knife set"),
    "books": ("cookbook", "thriller novel", "atlas", "poetry collection"),
    "electronics": ("headphones", "e-reader", "webcam", "power bank"),
    "garden": ("watering can", "garden hose", "pruning shears", "seed tray"),
    "toys": ("jigsaw puzzle", "kite", "board game", "toy train"),
    "sports": ("yoga mat", "tennis racket", "dumbbells", "water bottle"),
    "beauty": ("face cream", "shampoo", "perfume", "hair dryer"),
}
BRANDS = Pool(train=("Acme", "Bolt", "Crest", "Dune", "Echo", "Flint", "Grove", "Halo", "Ivory", "Juno"),
              test=("Cobalt", "Nova", "Orbit", "Pine", "Quill", "Rook", "Sable", "Tundra"))
VERBS = {"view": "viewed", "cart": "added to cart", "purchase": "bought", "return": "returned", "rating": "rated"}
LINE_STYLES = Pool(train=("bracket",), test=("pipe",))
WORDING = {
    "test": dict(
        intro="Below is the event log of one user of an online shop, oldest event first. Answer the question after it.",
        questions={"last-purchase": "What was the last item the user bought in the {category} category?",
                   "rating": "How many stars did the user give to {item}?",
                   "date": "What did the user buy on {date}?",
                   "returns": "How many items from the {category} category did the user return?"},
    ),
    "train": dict(
        intro="The following lines are one shopper's activity history, in time order.",
        questions={"last-purchase": "Which {category} item did the user purchase most recently?",
                   "rating": "What rating out of 5 did the user assign to {item}?",
                   "date": "Which items did the user purchase on {date}?",
                   "returns": "How many {category} items were sent back by the user?"},
    ),
}
_START = dt.datetime(2023, 1, 2, 9, 0)


@dataclass(frozen=True)
class Event:
    time: str  # "YYYY-MM-DD HH:MM"
    event: str
    item: str
    category: str
    price: float
    stars: int | None = None

    @property
    def date(self) -> str:
        return self.time[:10]


def render(event: Event, style: str) -> str:
    """One log line, ending in a line break."""
    if style == "pipe":
        stars = f" | {event.stars} stars" if event.event == "rating" else ""
        return f"{event.time} | {event.event} | {event.item} | {event.category} | ${event.price:.2f}{stars}\n"
    stars = f", {event.stars}/5" if event.event == "rating" else ""
    return f"[{event.time}] {VERBS[event.event]} {event.item} ({event.category}, ${event.price:.2f}){stars}\n"


def parse_event(record: dict) -> Event:
    """An `Event` from one JSONL record (`EVENTS_SCHEMA`); ValueError says what is wrong."""
    for name in ("time", "event", "item", "category", "price"):
        if name not in record:
            raise ValueError(f"missing {name!r}")
    time, event, item, category, price = (record[k] for k in ("time", "event", "item", "category", "price"))
    if not isinstance(time, str):
        raise ValueError(f"'time' must be a string such as \"2024-03-05 14:22\" (got {time!r})")
    try:
        when = dt.datetime.fromisoformat(time)
    except ValueError:
        raise ValueError(f"'time' is not a date and time such as \"2024-03-05 14:22\" (got {time!r})") from None
    if event not in EVENTS:
        raise ValueError(f"'event' must be one of {', '.join(EVENTS)} (got {event!r})")
    for name, value in (("item", item), ("category", category)):
        if not isinstance(value, str) or not value.strip() or "\n" in value:
            raise ValueError(f"{name!r} must be a non-empty one-line string (got {value!r})")
    if isinstance(price, bool) or not isinstance(price, (int, float)) or not price >= 0:
        raise ValueError(f"'price' must be a number >= 0 (got {price!r})")
    stars = record.get("stars")
    if event == "rating" and (isinstance(stars, bool) or not isinstance(stars, int) or not 1 <= stars <= 5):
        raise ValueError(f"a rating needs 'stars', an integer from 1 to 5 (got {stars!r})")
    return Event(when.strftime("%Y-%m-%d %H:%M"), event, item.strip(), category.strip(), float(price),
                 stars if event == "rating" else None)


def load_events(path) -> list[Event]:
    """A user's events (`EVENTS_SCHEMA`), sorted by time (stably); every bad line is reported (`logs.RecordError`)."""
    return sorted(read_records(path, parse_event), key=lambda e: e.time)


def user_qa_sample(tokenizer, n_tokens: int, depth: float, rng, *, split: str = "test", question: str = "mixed",
                   events: str = "") -> TaskSample:
    """A user-behaviour QA prompt of exactly `n_tokens` ids (module docstring). `question`: one of `QUESTIONS` or
    "mixed" (drawn per prompt); `events`: a user's JSONL of events to use as the log instead of generated ones."""
    check_depth(depth)
    check_split(split)
    if question not in (*QUESTIONS, "mixed"):
        raise ValueError(f"question must be one of {', '.join(QUESTIONS)} or mixed (got {question!r})")
    kind = rng.choice(QUESTIONS) if question == "mixed" else question
    style = rng.choice(LINE_STYLES.of(split))
    words = WORDING[split]
    category = rng.choice(sorted(PRODUCTS))
    fresh = _fresh_items(rng, split, category, 4)
    price = {item: _price(rng) for item in fresh}

    def event(item, name="purchase", stars=None):
        return lambda time: Event(time, name, item, category, price[item], stars)

    questions = words["questions"]
    if kind == "last-purchase":
        count = rng.randint(1, 3)
        facts = [event(item) for item in fresh[:count]]
        depths = sorted(rng.uniform(0.0, depth) for _ in range(count - 1)) + [depth]
        key = count - 1
    elif kind == "rating":
        facts = [event(fresh[0]), event(fresh[0], "rating", rng.randint(1, 5))]
        depths, key = [rng.uniform(0.0, depth), depth], 1
    elif kind == "date":
        facts, depths, key = [event(fresh[0])], [depth], 0
    else:
        count = rng.randint(1, 4)
        facts = [event(item, "return") for item in fresh[:count]]
        depths = sorted([depth] + [rng.random() for _ in range(count - 1)])
        key = depths.index(depth)
    avoid = (category,) if kind in ("last-purchase", "returns") else ()
    if events:
        # as the matcher reads names: a user's "Sports" is the asked "sports", their "cobalt KETTLE A42" a fact's item
        categories, items = {normalised(c) for c in avoid}, {normalised(item) for item in fresh}
        region = [e for e in split_region(load_events(events), split)
                  if normalised(e.category) not in categories and normalised(e.item) not in items]
        if not region:
            raise ValueError(f"{events}: no events left for the {split} split outside category {category!r}")
        stream = cycle_from(region, rng, _later_lap(region))
    else:
        stream = _generated_events(rng, split, exclude=avoid)

    def question_text(made) -> str:
        return "Question: " + questions[kind].format(category=category, item=fresh[0], date=made[0].date) + "\nAnswer:"

    def placed(new, later: int):
        def make(before, after, previous):
            time = _fact_time(before, after, previous, later)
            return None if time is None else new(time)
        return make

    log = log_prompt(tokenizer, n_tokens, stream, lambda e: render(e, style), intro=words["intro"],
                     facts=[placed(new, len(facts) - 1 - i) for i, new in enumerate(facts)], depths=depths,
                     question=question_text, what=f"a {kind} question")
    made = log.facts
    if kind == "last-purchase":
        answers, distractors = [made[key].item], tuple(f.item for f in made[:key])
    elif kind == "date":  # every item bought that day, as far as the log shows it, once as the matcher reads them
        bought = {}
        for e in log.shown:
            if e.event == "purchase" and e.date == made[0].date:
                bought.setdefault(normalised(e.item), e.item)
        answers = list(bought.values())
        distractors = ()
    else:
        answers = [str(made[key].stars if kind == "rating" else len(made))]
        distractors = tuple(str(n) for n in range(10) if str(n) != answers[0])  # a count or stars: small numbers
    return TaskSample(
        context_ids=log.context_ids, question_ids=log.question_ids,
        answer_ids=encode(tokenizer, " " + ", ".join(answers)), answers=tuple(answers),
        facts=tuple(t.rstrip("\n") for t in log.fact_texts), fact_starts=tuple(log.fact_starts), depths=tuple(depths),
        depth=depth, key=key, distractors=distractors, match=MATCH[kind], kind=kind, split=split,
    )


def _fact_time(before: Event | None, after: Event | None, previous: Event | None, later: int) -> str | None:
    """The time of an event inserted between the events `before` and `after` (either may be None): that of the
    event before it, and at least a minute after the event inserted before it (`previous`), so that an inserted
    event is never at the same time as an earlier one; with no event before it, `later` minutes before the event
    after it, which leaves a minute to each of the `later` inserted events that follow it there. None where it would
    be later than `after`: no minute left between the two."""
    minute = dt.timedelta(minutes=1)
    if before is not None:
        time = dt.datetime.fromisoformat(before.time)
    elif after is not None:
        time = dt.datetime.fromisoformat(after.time) - later * minute
    else:
        time = _START
    if previous is not None:
        time = max(time, dt.datetime.fromisoformat(previous.time) + minute)
    if after is not None and time > dt.datetime.fromisoformat(after.time):
        return None
    return time.strftime("%Y-%m-%d %H:%M")


def _later_lap(events: list[Event]):
    """The copy of a user's events (sorted by time) on the n-th wrap of a window: moved n periods of whole days later,
    a period being the days from the first event's to the last one's, plus one. Each copy begins on the day after
    the one before it ends, at the same times of day."""
    first, last = (dt.date.fromisoformat(e.date) for e in (events[0], events[-1]))
    period = dt.timedelta(days=(last - first).days + 1)

    def lap(event: Event, n: int) -> Event:
        return replace(event, time=(dt.datetime.fromisoformat(event.time) + n * period).strftime("%Y-%m-%d %H:%M"))
    return lap


def _fresh_items(rng, split: str, category: str, count: int) -> list[str]:
    """Items of a category that the generated background never shows: brand + product + a model number."""
    items: list[str] = []
    while len(items) < count:
        model = f"{rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{rng.randint(10, 99)}"
        item = f"{rng.choice(BRANDS.of(split))} {rng.choice(PRODUCTS[category])} {model}"
        if item not in items:
            items.append(item)
    return items


def _price(rng) -> float:
    return round(rng.uniform(3, 250)) - 0.01


def _generated_events(rng, split: str, exclude=()):
    """A user's events forever: a catalogue of brand + product items (no model numbers, so never a fact's item)
    outside the `exclude`d categories; views, cart additions and purchases of any item, ratings and returns of
    bought ones; one to 240 minutes apart."""
    categories = [c for c in sorted(PRODUCTS) if c not in exclude]
    catalogue = [(f"{brand} {product}", category, _price(rng)) for category in categories
                 for product in PRODUCTS[category] for brand in rng.sample(BRANDS.of(split), 2)]
    time = _START + dt.timedelta(days=rng.randrange(365))
    bought: list[tuple] = []
    while True:
        time += dt.timedelta(minutes=rng.randint(1, 240))
        roll = rng.random()
        kind = "view" if roll < 0.45 else "cart" if roll < 0.65 else "purchase" if roll < 0.8 else \
            "rating" if roll < 0.9 else "return"
        if kind in ("rating", "return") and bought:
            item = rng.choice(bought)
        else:
            kind = "view" if kind in ("rating", "return") else kind
            item = rng.choice(catalogue)
            if kind == "purchase":
                bought.append(item)
        yield Event(time.strftime("%Y-%m-%d %H:%M"), kind, *item, stars=rng.randint(1, 5) if kind == "rating" else None)

