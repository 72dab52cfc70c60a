"""BABILong-style reasoning in a haystack (after Kuratov et al. 2024, written from the task definitions): short bAbI
stories, generated from a grammar of our own, whose sentences are scattered in order through long real text.

- qa1, single supporting fact: people move between places. "Where is Mary?"
- qa2, two supporting facts: people also pick up and drop objects. "Where is the football?"
- qa3, three supporting facts: "Where was the football before the kitchen?" (the object's place before its last)
- qa4, two-argument relations: "The kitchen is north of the office." "What is north of the office?"
- qa5, three-argument relations: "Fred gave the football to Bill." "Who gave the football to Bill?"

The world is simulated, so every question has exactly one answer, and a story is drawn again (from the same
random generator) until it does: qa3 asks only about a place the object was in once, qa5 only about a gift that
the question's two named parts single out. The answer is one word; naming another place (person, object) of the
story as well is wrong, unless the question names it too (`sample.matches`, "all" with the story's other
candidates as distractors, as BABILong's own scoring leaves out the labels of the question).

Depths: the grid's depth places the story's decisive sentence (the last one the answer depends on); the sentences
before it go at sorted random depths in [0, depth], those after it in [depth, 1], so the story keeps its order.

Held out (`sample.Pool`): the test split uses bAbI's own people, places, objects and verbs; the training split
other names ("Alice", "attic", "guitar") and verbs ("walked to", "lifted", "passed"), and other question wording.
"""

from __future__ import annotations

from cometlm.tasks.retrieval import check_depth
from cometlm.tasks.haystack import hidden_facts_sample, load_haystack, spread
from cometlm.tasks.sample import Pool, TaskSample, check_split

TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")
DEFAULT_FACTS = {"qa1": 6, "qa2": 8, "qa3": 10, "qa4": 2, "qa5": 8}
HAYSTACKS = ("bible", "essays", "noise", "file:PATH")

PEOPLE = Pool(
    train=("Alice", "Brian", "Chloe", "Ethan", "Fiona", "Gavin", "Hannah", "Ivan", "Kevin", "Laura", "Nora", "Oscar"),
    test=("Mary", "John", "Daniel", "Sandra", "Fred", "Bill", "Jeff", "Julie"),
)
PLACES = Pool(
    train=("attic", "cellar", "garage", "library", "balcony", "studio", "pantry", "porch", "basement", "lobby"),
    test=("bathroom", "hallway", "garden", "office", "bedroom", "kitchen"),
)
OBJECTS = Pool(train=("book", "lamp", "guitar", "umbrella", "camera", "wallet"), test=("football", "apple", "milk"))
MOVE = Pool(train=("walked to the {place}", "ran to the {place}", "headed to the {place}"),
            test=("moved to the {place}", "went to the {place}", "journeyed to the {place}",
                  "travelled to the {place}", "went back to the {place}"))
GRAB = Pool(train=("lifted the {obj}", "collected the {obj}", "fetched the {obj}"),
            test=("picked up the {obj} there", "got the {obj} there", "grabbed the {obj} there", "took the {obj} there"))
DROP = Pool(train=("set down the {obj}", "let go of the {obj}"),
            test=("dropped the {obj}", "discarded the {obj}", "put down the {obj}", "left the {obj}"))
GIVE = Pool(train=("passed the {obj} to {other}", "lent the {obj} to {other}"),
            test=("gave the {obj} to {other}", "handed the {obj} to {other}"))
RELATION = Pool(train=("The {a} lies {direction} of the {b}",), test=("The {a} is {direction} of the {b}",))
DIRECTIONS = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}

WORDING = {
    "test": dict(
        intro="Below is a long text with facts about people, objects and places hidden in it. Answer the question "
              "at the end using only those facts.",
        qa1="Where is {person}?", qa2="Where is the {obj}?", qa3="Where was the {obj} before the {place}?",
        qa4_a="What is {direction} of the {b}?", qa4_b="What is the {a} {direction} of?",
        giver="Who gave the {obj} to {receiver}?", gift="What did {giver} give to {receiver}?",
        receiver="Who did {giver} give the {obj} to?",
    ),
    "train": dict(
        intro="Some sentences of the following text say where people go and what they do with things. Read them "
              "and answer the question.",
        qa1="Which room is {person} in now?", qa2="In which room is the {obj} now?",
        qa3="Which room was the {obj} in before it was in the {place}?",
        qa4_a="Which room lies {direction} of the {b}?", qa4_b="The {a} lies {direction} of which room?",
        giver="Who passed the {obj} on to {receiver}?", gift="What did {giver} pass on to {receiver}?",
        receiver="To whom did {giver} pass the {obj}?",
    ),
}
_TRIES = 1000  # stories drawn before giving up; a valid one comes within a few


def babilong_sample(tokenizer, n_tokens: int, depth: float, rng, *, split: str = "test", task: str = "qa1",
                    haystack: str = "bible", facts: int = 0) -> TaskSample:
    """A BABILong-style prompt of exactly `n_tokens` ids: a story of `facts` sentences (0: the task's default,
    `DEFAULT_FACTS`) hidden in order in `haystack` text, and its question (module docstring)."""
    check_depth(depth)
    check_split(split)
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)} (got {task!r})")
    count = facts or DEFAULT_FACTS[task]
    least = 2 if task == "qa3" else 1
    if count < least or (task == "qa4" and count >= len(PLACES.test)):
        raise ValueError(f"{task} needs {least} to {len(PLACES.test) - 1 if task == 'qa4' else 'any number of'} "
                         f"facts (got {count})")
    words = WORDING[split]
    for _ in range(_TRIES):
        story = _STORIES[task](rng, split, count, words)
        if story is not None:
            break
    else:
        raise RuntimeError(f"no {task} story of {count} facts with a unique answer in {_TRIES} draws")
    sentences, key, question, answer, candidates = story
    depths = spread(rng, depth, key, len(sentences) - key - 1)
    # A word the question names is never the answer, so an answer may repeat it ("north of the office").
    wrong = {c for c in candidates if c != answer and c not in question}
    return hidden_facts_sample(
        tokenizer, n_tokens, load_haystack(haystack, tokenizer, split), rng, intro=words["intro"], facts=sentences,
        depths=depths, question=f"Question: {question}\nAnswer:", answers=[answer], depth=depth, key=key,
        what=f"a {task} prompt of {count} facts", split=split,
        distractors=tuple(sorted(wrong)), match="all", kind=task,
    )


class _World:
    """Where people are, who holds what, where things lie; and the story's sentences."""

    def __init__(self, rng, split: str, people: int, objects: int = 0):
        self.rng, self.split = rng, split
        self.people = rng.sample(PEOPLE.of(split), people)
        self.objects = rng.sample(OBJECTS.of(split), objects)
        self.at: dict[str, str] = {}  # person or object -> place
        self.holder: dict[str, str] = {}  # object -> person
        self.sentences: list[str] = []
        self.places_named: set[str] = set()

    def say(self, person: str, pool: Pool, **fields) -> int:
        self.sentences.append(f"{person} {self.rng.choice(pool.of(self.split)).format(**fields)}.")
        return len(self.sentences) - 1

    def move(self, person: str) -> int:
        place = self.rng.choice([p for p in PLACES.of(self.split) if p != self.at.get(person)])
        self.at[person] = place
        self.places_named.add(place)
        for obj, holder in self.holder.items():
            if holder == person:
                self.at[obj] = place
        return self.say(person, MOVE, place=place)

    def act(self, gifts: bool) -> tuple[str, str, str | None, int]:
        """One random event: a move, or a pick-up, drop or (with `gifts`) gift where one is possible."""
        person = self.rng.choice(self.people)
        held = [o for o, h in self.holder.items() if h == person]
        where = self.at.get(person)
        here = [o for o in self.objects if o not in self.holder and self.at.get(o, where) == where]  # free, here
        roll = self.rng.random()
        if person in self.at and here and roll < 0.35:
            obj = self.rng.choice(here)
            self.holder[obj], self.at[obj] = person, self.at[person]
            return "grab", person, obj, self.say(person, GRAB, obj=obj)
        if held and roll < 0.55:
            obj = self.rng.choice(held)
            del self.holder[obj]
            return "drop", person, obj, self.say(person, DROP, obj=obj)
        if gifts and held and roll < 0.75:
            obj, other = self.rng.choice(held), self.rng.choice([p for p in self.people if p != person])
            self.holder[obj] = other
            self.at[obj] = self.at.get(other, self.at[obj])
            return "give", person, obj, self.say(person, GIVE, obj=obj, other=other)
        return "move", person, None, self.move(person)


def _qa1(rng, split, count, words):
    world = _World(rng, split, people=min(4, len(PEOPLE.of(split))))
    last = {}
    for _ in range(count):
        person = rng.choice(world.people)
        last[person] = world.move(person)
    person = rng.choice(sorted(last))
    return world.sentences, last[person], words["qa1"].format(person=person), world.at[person], world.places_named


def _object_story(rng, split, count):
    """A qa2/qa3 story and, per object, the index of the last sentence its place depends on and its places in
    order (a place once per stay)."""
    world = _World(rng, split, people=min(4, len(PEOPLE.of(split))), objects=min(2, len(OBJECTS.of(split))))
    decisive: dict[str, int] = {}
    history: dict[str, list[tuple[str, int]]] = {}
    while len(world.sentences) < count:
        if world.sentences:
            kind, person, obj, index = world.act(gifts=False)
        else:
            kind, person, obj, index = "move", None, None, world.move(rng.choice(world.people))
        moved = [obj] if kind == "grab" else [o for o, h in world.holder.items() if h == person] if kind == "move" else []
        for o in moved:
            if not history.get(o) or history[o][-1][0] != world.at[o]:
                history.setdefault(o, []).append((world.at[o], index))
        for o in set(moved) | ({obj} if kind == "drop" else set()):
            decisive[o] = index
    return world, decisive, history


def _qa2(rng, split, count, words):
    made = _object_story(rng, split, count)
    if made is None or not made[1]:
        return None
    world, decisive, _ = made
    obj = rng.choice(sorted(decisive))
    return world.sentences, decisive[obj], words["qa2"].format(obj=obj), world.at[obj], world.places_named


def _qa3(rng, split, count, words):
    made = _object_story(rng, split, count)
    if made is None:
        return None
    world, _, history = made
    askable = [o for o, places in history.items() if len(places) >= 2 and [p for p, _ in places].count(places[-1][0]) == 1]
    if not askable:
        return None
    obj = rng.choice(sorted(askable))
    (before, _), (last, index) = history[obj][-2:]
    return world.sentences, index, words["qa3"].format(obj=obj, place=last), before, world.places_named


def _qa4(rng, split, count, words):
    places = rng.sample(PLACES.of(split), count + 1)
    cells = {places[0]: (0, 0)}
    relations = []  # (a, direction, b): a is `direction` of b
    for new in places[1:]:
        options = [(old, d) for old in cells for d, (dx, dy) in DIRECTIONS.items()
                   if (cells[old][0] + dx, cells[old][1] + dy) not in cells.values()]
        old, direction = rng.choice(options)
        dx, dy = DIRECTIONS[direction]
        cells[new] = (cells[old][0] + dx, cells[old][1] + dy)
        relations.append((new, direction, old) if rng.random() < 0.5 else (old, OPPOSITE[direction], new))
    template = rng.choice(RELATION.of(split))
    sentences = [template.format(a=a, direction=d, b=b) + "." for a, d, b in relations]
    key = rng.randrange(count)
    order = [i for i in range(count) if i != key]
    rng.shuffle(order)
    a, direction, b = relations[key]
    if rng.random() < 0.5:
        question, answer = words["qa4_a"].format(direction=direction, b=b), a
    else:
        question, answer = words["qa4_b"].format(a=a, direction=direction), b
    before = order[: rng.randint(0, len(order))]
    story = [sentences[i] for i in before] + [sentences[key]] + [sentences[i] for i in order[len(before):]]
    return story, len(before), question, answer, set(places)


def _qa5(rng, split, count, words):
    world = _World(rng, split, people=min(4, len(PEOPLE.of(split))), objects=min(3, len(OBJECTS.of(split))))
    gifts = []  # (giver, object, receiver, sentence index)
    for person in world.people[:2]:
        world.move(person)
    while len(world.sentences) < count:
        kind, person, obj, index = world.act(gifts=True)
        if kind == "give":
            gifts.append((person, obj, world.holder[obj], index))
    candidates = []
    for giver, obj, receiver, index in gifts:
        if sum((g, r) == (giver, receiver) for g, _, r, _ in gifts) == 1:
            candidates.append(("gift", words["gift"].format(giver=giver, receiver=receiver), obj, index))
        if sum((o, r) == (obj, receiver) for _, o, r, _ in gifts) == 1:
            candidates.append(("giver", words["giver"].format(obj=obj, receiver=receiver), giver, index))
        if sum((g, o) == (giver, obj) for g, o, _, _ in gifts) == 1:
            candidates.append(("receiver", words["receiver"].format(giver=giver, obj=obj), receiver, index))
    if not candidates:
        return None
    kind, question, answer, index = rng.choice(candidates)
    pool = {x for x in (world.objects if kind == "gift" else world.people) if any(x in s for s in world.sentences)}
    return world.sentences, index, question, answer, pool


_STORIES = {"qa1": _qa1, "qa2": _qa2, "qa3": _qa3, "qa4": _qa4, "qa5": _qa5}
