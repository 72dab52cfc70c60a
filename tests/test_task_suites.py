"""The task-suite generators: exact lengths, facts at their depths, one answer that a small independent parser of the
rendered prompt confirms, train/test separation, determinism, scoring, a user's JSONL, and the training datasets."""

import datetime
import json
import random
import re
from collections import Counter

import numpy as np
import pytest

from cometlm.bundled import encode
from cometlm.tasks import agent_trace, babilong, ruler, user_events
from cometlm.tasks.corpora import corpus_tokens
from cometlm.tasks.haystack import HELDOUT_FRACTION, load_haystack
from cometlm.tasks.logs import RecordError, split_region
from cometlm.tasks.retrieval import sentence_starts
from cometlm.tasks.sample import Pool, answer_matches, matches
from cometlm.tasks.suite import SPECS
from cometlm.training.specs import load_dataset

HIDDEN_IN_TEXT = [name for name in SPECS if name.startswith(("ruler-niah", "ruler-vt", "babilong"))]
LOGS = ["user-qa", "agent-qa"]


def build(tokenizer, name, n_tokens, depth, seed, split="test", **options):
    return SPECS[name].build(tokenizer, n_tokens, depth, random.Random(seed), split=split, **options)


def text_of(tokenizer, sample):
    return tokenizer.decode(sample.context_ids), tokenizer.decode(sample.question_ids)


# --------------------------------------------------------------------------------------------------------------
# Length, depth, determinism


@pytest.mark.parametrize("name", list(SPECS))
def test_exact_length_and_same_seed_same_prompt(tokenizer, name):
    for n_tokens in (700, 1501):
        for depth in (0.0, 0.4, 1.0):
            sample = build(tokenizer, name, n_tokens, depth, seed=n_tokens)
            assert len(sample.prompt_ids) == n_tokens
            assert sample.prompt_ids == sample.context_ids + sample.question_ids
            assert tokenizer.decode(sample.answer_ids) == " " + ", ".join(sample.answers)
    assert build(tokenizer, name, 900, 0.5, seed=3) == build(tokenizer, name, 900, 0.5, seed=3)
    assert build(tokenizer, name, 900, 0.5, seed=3).prompt_ids != build(tokenizer, name, 900, 0.5, seed=4).prompt_ids


def test_too_short_says_how_long(tokenizer):
    with pytest.raises(ValueError, match="too short for a multikey needle prompt; use at least") as error:
        build(tokenizer, "ruler-niah-multikey", 50, 0.5, seed=0)
    shortest = int(str(error.value).rsplit(" ", 1)[1])
    assert len(build(tokenizer, "ruler-niah-multikey", shortest, 0.5, seed=0).prompt_ids) == shortest


def haystack_cuts(tokenizer, sample, intro: str):
    """(haystack ids without intro and facts, where each fact was cut in, the haystack's length)."""
    start = len(encode(tokenizer, intro + "\n"))
    haystack, cuts, at = [], [], start
    for fact, fact_start in zip(sample.facts, sample.fact_starts):
        ids = encode(tokenizer, " " + fact)
        assert sample.context_ids[fact_start : fact_start + len(ids)] == ids
        haystack += sample.context_ids[at:fact_start]
        cuts.append(len(haystack))
        at = fact_start + len(ids)
    haystack += sample.context_ids[at:]
    return haystack, cuts


def intro_of(name: str) -> str:
    """The test split's intro of a task whose facts hide in text (needles with the default number values)."""
    if name.startswith("ruler-niah"):
        return ruler.STYLES["magic"]["intro"].format(kinds="numbers")
    return ruler.VT_STYLES["var"]["intro"] if name == "ruler-vt" else babilong.WORDING["test"]["intro"]


@pytest.mark.parametrize("name", HIDDEN_IN_TEXT)
def test_every_fact_goes_in_at_the_sentence_start_nearest_its_depth(tokenizer, name):
    for depth, seed in ((0.0, 1), (0.37, 2), (0.8, 3), (1.0, 4)):
        sample = build(tokenizer, name, 2500, depth, seed)
        haystack, cuts = haystack_cuts(tokenizer, sample, intro_of(name))
        starts = [0, *sentence_starts(tokenizer, haystack, line_breaks=False), len(haystack)]
        assert sample.depths[sample.key] == depth and list(sample.depths) == sorted(sample.depths)
        previous = 0
        for cut, fact_depth in zip(cuts, sample.depths):
            target = fact_depth * len(haystack)
            assert cut in starts
            assert cut == previous or abs(cut - target) == min(abs(s - target) for s in starts)
            previous = cut
        if depth in (0.0, 1.0):
            assert cuts[sample.key] == (0 if depth == 0.0 else len(haystack))


@pytest.mark.parametrize("name", LOGS)
def test_every_fact_goes_in_between_records_near_its_depth(tokenizer, name):
    for depth, seed in ((0.0, 1), (0.37, 2), (0.8, 3), (1.0, 4)):
        sample = build(tokenizer, name, 3000, depth, seed)
        facts = [encode(tokenizer, fact + "\n") for fact in sample.facts]
        intro = len(encode(tokenizer, (user_events.WORDING if name == "user-qa" else agent_trace.WORDING)["test"]["intro"] + "\n"))
        size = len(sample.context_ids) - intro - sum(map(len, facts))
        for i, (fact, start, fact_depth) in enumerate(zip(facts, sample.fact_starts, sample.depths)):
            assert sample.context_ids[start : start + len(fact)] == fact
            assert tokenizer.decode(sample.context_ids[:start]).endswith("\n")  # a record ended before it
            cut = start - intro - sum(map(len, facts[:i]))
            assert abs(cut - fact_depth * size) <= 80  # within a record (they are shorter than 80 tokens)


# --------------------------------------------------------------------------------------------------------------
# One answer, confirmed by parsing the prompt


def niah_answer(context: str, question: str):
    needles = re.findall(r"One of the special magic (?:numbers|words|UUIDs) for ([0-9a-z-]+) is: ([0-9a-z-]+)\.", context)
    asked = re.search(r"for (.+?) mentioned", question).group(1).replace(" and ", ", ").split(", ")
    return [v for key in asked for k, v in needles if k == key], needles


@pytest.mark.parametrize("variant", ruler.VARIANTS)
@pytest.mark.parametrize("haystack", ["essays", "needles", "noise"])
def test_needle_answers_are_what_the_prompt_says(tokenizer, variant, haystack):
    for seed, (keys, values) in enumerate([("word", "number"), ("number", "uuid"), ("uuid", "word")]):
        sample = build(tokenizer, f"ruler-niah-{variant}", 1200, 0.5, seed, haystack=haystack, keys=keys, values=values)
        expected, needles = niah_answer(*text_of(tokenizer, sample))
        assert sorted(expected) == sorted(sample.answers)
        assert len(expected) == (1 if variant in ("single", "multikey") else 4)
        others = {v for k, v in needles} - set(expected)
        assert set(sample.distractors) <= others and len(sample.distractors) == (3 if variant == "multikey" else 0)
        assert matches(" " + ", ".join(sample.answers), sample)


def test_variable_tracking_answer_is_what_the_prompt_says(tokenizer):
    for seed in range(4):
        sample = build(tokenizer, "ruler-vt", 1500, 0.3, seed, hops=3, chains=3)
        context, question = text_of(tokenizer, sample)
        value = {}
        for name, source, number in re.findall(r"VAR ([A-Z]{5}) = (?:VAR ([A-Z]{5})|(\d+))\.", context):
            value[name] = value[source] if source else number
        asked = re.search(r"assigned the value (\d+),", question).group(1)
        assert {n for n, v in value.items() if v == asked} == set(sample.answers) and len(sample.answers) == 4
        assert set(sample.distractors) == set(value) - set(sample.answers)


@pytest.mark.parametrize("name", ["ruler-cwe", "ruler-fwe"])
def test_common_and_frequent_words_are_counted_from_the_prompt(tokenizer, name):
    for n_tokens, seed in ((600, 0), (3000, 1)):
        sample = build(tokenizer, name, n_tokens, 0.5, seed)
        context, question = text_of(tokenizer, sample)
        counts = Counter(context.split("\n", 1)[1].split()).most_common()
        k = int(re.search(r"\d+", question).group())
        assert {w for w, _ in counts[:k]} == set(sample.answers) and counts[k - 1][1] > counts[k][1]
        assert set(sample.distractors) >= {w for w, c in counts[k:] if c > 1}


BABI_PEOPLE = r"(Mary|John|Daniel|Sandra|Fred|Bill|Jeff|Julie)"
BABI = re.compile(
    BABI_PEOPLE + r" (?:(?P<move>moved to|went to|journeyed to|travelled to|went back to) the (?P<place>\w+)"
    r"|(?P<grab>picked up|got|grabbed|took) the (?P<got>\w+) there"
    r"|(?P<drop>dropped|discarded|put down|left) the (?P<dropped>\w+)"
    r"|(?:gave|handed) the (?P<given>\w+) to " + BABI_PEOPLE.replace("(", "(?P<to>") + r")\."
    r"|The (?P<a>\w+) is (?P<dir>north|south|east|west) of the (?P<b>\w+)\."
)
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}


def babi_answers(context: str, question: str) -> list[str]:
    """Every answer the story hidden in the prompt allows: a simulation written apart from the generator."""
    at, holder, history, gifts, relations = {}, {}, {}, [], []
    for m in BABI.finditer(context):
        person = m.group(1)
        if m["move"]:
            at[person] = m["place"]
            for obj, who in holder.items():
                if who == person and history[obj][-1] != m["place"]:
                    history[obj].append(m["place"])
        elif m["grab"]:
            holder[m["got"]] = person
            if history.setdefault(m["got"], [at[person]])[-1] != at[person]:
                history[m["got"]].append(at[person])
        elif m["drop"]:
            del holder[m["dropped"]]
        elif m["given"]:
            holder[m["given"]] = m["to"]
            gifts.append((person, m["given"], m["to"]))
        elif m["a"]:
            relations += [(m["a"], m["dir"], m["b"]), (m["b"], OPPOSITE[m["dir"]], m["a"])]
    if q := re.fullmatch(r"Question: Where is " + BABI_PEOPLE + r"\?\nAnswer:", question.strip()):
        return [at[q.group(1)]]
    if q := re.fullmatch(r"Question: Where is the (\w+)\?\nAnswer:", question.strip()):
        return [at[holder[q.group(1)]]] if q.group(1) in holder else [history[q.group(1)][-1]]
    if q := re.fullmatch(r"Question: Where was the (\w+) before the (\w+)\?\nAnswer:", question.strip()):
        places = history[q.group(1)]
        return [places[i - 1] for i, p in enumerate(places) if p == q.group(2) and i > 0]
    if q := re.search(r"What is (\w+) of the (\w+)\?", question):
        return [a for a, d, b in relations if (d, b) == q.groups()]
    if q := re.search(r"What is the (\w+) (\w+) of\?", question):
        return [b for a, d, b in relations if (a, d) == q.groups()]
    if q := re.search(r"Who gave the (\w+) to (\w+)\?", question):
        return [g for g, o, r in gifts if (o, r) == q.groups()]
    if q := re.search(r"What did (\w+) give to (\w+)\?", question):
        return [o for g, o, r in gifts if (g, r) == q.groups()]
    if q := re.search(r"Who did (\w+) give the (\w+) to\?", question):
        return [r for g, o, r in gifts if (g, o) == q.groups()]
    raise AssertionError(f"unknown question {question!r}")


@pytest.mark.parametrize("task", babilong.TASKS)
def test_babilong_answer_is_the_one_the_story_allows(tokenizer, task):
    for seed in range(12):
        sample = build(tokenizer, f"babilong-{task}", 1200, seed / 11, seed, haystack="bible" if seed % 2 else "essays")
        context, question = text_of(tokenizer, sample)
        assert len(BABI.findall(context)) == len(sample.facts)  # nothing in the haystack reads like a fact
        assert babi_answers(context, question) == list(sample.answers)
        assert sample.answers[0] not in sample.distractors


USER_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d) \| (view|cart|purchase|return|rating) \| (.+?) \| (.+?) \| "
                       r"\$\d+\.\d\d(?: \| (\d) stars)?$", re.M)


def same(a: str, b: str) -> bool:
    """Two names as a reader (and `sample.matches`) takes them: any case, runs of white space equal."""
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def user_events_of(context: str) -> list[tuple]:
    """(time, event, item, category, stars) of every whole line of the log; the times never go back."""
    events = USER_LINE.findall(context)
    times = [event[0] for event in events]
    assert times == sorted(times), "the log goes back in time"
    return events


def user_answers(context: str, question: str) -> list[str]:
    """What the log answers, read as a person would: a category in any case; the last purchase is the latest in
    time (another at the same minute would leave it to line order); the items of a day as the matcher counts them."""
    events = user_events_of(context)
    if q := re.search(r"last item the user bought in the (.+) category\?", question):
        bought = [(time, item) for time, kind, item, category, _ in events
                  if kind == "purchase" and same(category, q.group(1))]
        assert [time for time, _ in bought].count(bought[-1][0]) == 1, f"purchases at the same last time: {bought}"
        return [bought[-1][1]]
    if q := re.search(r"How many stars did the user give to (.+)\?", question):
        stars = [s for _, kind, item, _, s in events if kind == "rating" and same(item, q.group(1))]
        assert len(stars) == 1
        return stars
    if q := re.search(r"What did the user buy on (\S+)\?", question):
        items = {}
        for time, kind, item, _, _ in events:
            if kind == "purchase" and time[:10] == q.group(1):
                items.setdefault(" ".join(item.lower().split()), item)
        return list(items.values())
    q = re.search(r"How many items from the (.+) category did the user return\?", question)
    return [str(sum(kind == "return" and same(category, q.group(1)) for _, kind, _, category, _ in events))]


def agent_answers(context: str, question: str) -> list[str]:
    calls = re.findall(r"Action: (\w+)\nAction input: ([^\n]*)\nObservation: (.*?)(?=\nAction: |\Z)", context, re.S)
    if q := re.search(r"read_file on (\S+), what is the value of (\w+)\?", question):
        (output,) = [o for tool, given, o in calls if tool == "read_file" and given == q.group(1)]
        return re.findall(rf"^{q.group(2)} = (\d+)$", output, re.M)
    if q := re.search(r"`wc -l (\S+)` report", question):
        (output,) = [o for tool, given, o in calls if given == f"wc -l {q.group(1)}"]
        return [output.split()[0]]
    if q := re.search(r"`pytest (\S+)` ran", question):
        (output,) = [o for tool, given, o in calls if given == f"pytest {q.group(1)}"]
        return re.findall(r"(\d+) failed", output)
    q = re.search(r'search for "(.+)"\?', question)
    (output,) = [o for tool, given, o in calls if tool == "search" and json.loads(given)["query"] == q.group(1)]
    return [re.match(r"1\. (\S+)", output).group(1)]


@pytest.mark.parametrize("name, questions, parse", [("user-qa", user_events.QUESTIONS, user_answers),
                                                   ("agent-qa", agent_trace.QUESTIONS, agent_answers)])
def test_log_answers_are_what_the_log_says(tokenizer, name, questions, parse):
    for question in questions:
        for seed in range(4):
            sample = build(tokenizer, name, 1500, seed / 3, seed, question=question)
            assert sample.kind == question and parse(*text_of(tokenizer, sample)) == list(sample.answers)
            assert not set(sample.answers) & set(sample.distractors)


def test_a_later_user_event_has_a_later_time(tokenizer):
    """Facts that must come later (the last purchase after the earlier ones, a rating after its purchase) are later in
    time, not only in line order, wherever they go in: at depth 0 every fact goes in at the first record start."""
    for question in ("last-purchase", "rating"):
        for depth in (0.0, 0.03, 0.5, 1.0):
            for seed in range(15):
                sample = build(tokenizer, "user-qa", 1200, depth, seed, question=question)
                context, text = text_of(tokenizer, sample)
                assert user_answers(context, text) == list(sample.answers)
                times = [USER_LINE.match(fact).group(1) for fact in sample.facts]
                assert times == sorted(set(times)), (question, depth, seed, sample.facts)


@pytest.mark.parametrize("name, question", [("user-qa", "rating"), ("user-qa", "returns"), ("agent-qa", "lines"),
                                            ("agent-qa", "tests")])
def test_a_count_is_the_answers_first_number_and_a_date_is_not_a_count(tokenizer, name, question):
    for seed in range(3):
        sample = build(tokenizer, name, 1500, 0.5, seed, question=question)
        (count,) = sample.answers
        assert matches(f" {count}", sample) and matches(f" {count} in all", sample)
        assert matches(f" Pine frying pan B74: {count}", sample)  # an item's model number named before the count
        assert not matches(f" 2023-08-{count}", sample)  # scored as a whole word, the date's last part was a count
        assert not matches(f" {int(count) + 1}, not {count}", sample) and not matches(f" {count}0", sample)
    for other in {"user-qa": ("last-purchase", "date"), "agent-qa": ("config", "search")}[name]:
        assert build(tokenizer, name, 1500, 0.5, 0, question=other).match == "all"


# --------------------------------------------------------------------------------------------------------------
# Train and test apart


def pools(module) -> dict[str, Pool]:
    return {name: value for name, value in vars(module).items() if isinstance(value, Pool)}


def strings(value) -> set[str]:
    if isinstance(value, dict):
        return set().union(*(strings(v) for v in value.values()))
    return {value} if isinstance(value, str) else set()


def test_templates_and_names_of_train_and_test_never_overlap():
    for module in (ruler, babilong, user_events, agent_trace):
        for name, pool in pools(module).items():
            assert not set(pool.train) & set(pool.test), f"{module.__name__}.{name}"
    styles = [(ruler.STYLES, ruler.NEEDLE_STYLES), (ruler.VT_STYLES, ruler.VT_STYLE_POOL),
              (ruler.COUNT_STYLES, ruler.CWE_STYLES), (ruler.COUNT_STYLES, ruler.FWE_STYLES)]
    for table, pool in styles:
        train = set().union(*(strings(table[s]) for s in pool.train))
        test = set().union(*(strings(table[s]) for s in pool.test))
        assert not train & test
    for wording in (babilong.WORDING, user_events.WORDING, agent_trace.WORDING):
        assert not strings(wording["train"]) & strings(wording["test"])
    with pytest.raises(ValueError, match="overlap"):
        Pool(train=("a", "b"), test=("b",))


# The names each family holds out: none of the other split's may appear in what a generator writes.
FAMILY_POOLS = {
    "ruler-niah": [ruler.NOUNS], "ruler-vt": [], "ruler-cwe": [], "ruler-fwe": [],
    "babilong": [babilong.PEOPLE, babilong.PLACES, babilong.OBJECTS],
    "user-qa": [user_events.BRANDS], "agent-qa": [agent_trace.PROJECTS, agent_trace.SETTINGS, agent_trace.TOPICS],
}
LETTERS = {"ruler-vt": ruler.VARIABLE_LETTERS, "ruler-cwe": ruler.WORD_INITIALS, "ruler-fwe": ruler.WORD_INITIALS}


@pytest.mark.parametrize("name", list(SPECS))
def test_a_prompt_holds_no_name_and_no_phrasing_of_the_other_split(tokenizer, name):
    family = next(f for f in FAMILY_POOLS if name.startswith(f))
    for seed in range(3):
        samples = {split: build(tokenizer, name, 1200, 0.5, seed, split=split) for split in ("train", "test")}
        for split, sample in samples.items():
            other = "test" if split == "train" else "train"
            assert sample.split == split
            # what the generator wrote: facts, question and answers, and the whole log of the log tasks
            text = " ".join([*sample.facts, *sample.answers, *sample.distractors, tokenizer.decode(sample.question_ids)])
            if name in LOGS:
                text += tokenizer.decode(sample.context_ids)
            for pool in FAMILY_POOLS[family]:
                found = [n for n in pool.of(other) if re.search(rf"(?<![A-Za-z]){re.escape(n)}(?![A-Za-z])", text)]
                assert not found, (split, found)
            if name in LETTERS:  # variables and made-up words start with the split's own letters
                assert all(w[0] in LETTERS[name].of(split) for w in (*sample.answers, *sample.distractors)
                           if w.isalpha())
        assert tokenizer.decode(samples["train"].question_ids) != tokenizer.decode(samples["test"].question_ids)


def test_haystack_regions_of_train_and_test_are_apart(tokenizer, tmp_path):
    for corpus in ("bible", "essays"):
        ids = corpus_tokens(corpus, tokenizer).numpy()
        cut = int(len(ids) * (1 - HELDOUT_FRACTION))
        train, test = load_haystack(corpus, tokenizer, "train"), load_haystack(corpus, tokenizer, "test")
        assert np.array_equal(train.ids, ids[:cut])
        assert len(test.ids) <= len(ids) - cut and np.array_equal(test.ids, ids[len(ids) - len(test.ids):])
    text = "".join(f"Sentence number {i} of the user's file. " for i in range(400))
    (tmp_path / "mine.txt").write_text(text)
    train, test = (load_haystack(f"file:{tmp_path / 'mine.txt'}", tokenizer, s) for s in ("train", "test"))
    assert tokenizer.decode(train.ids.tolist()).startswith("Sentence number 0 ")
    assert "number 399 " in tokenizer.decode(test.ids.tolist()) and "number 399 " not in tokenizer.decode(train.ids.tolist())
    assert "number 300 " not in tokenizer.decode(test.ids.tolist())
    sample = build(tokenizer, "babilong-qa1", 900, 0.5, 0, haystack=f"file:{tmp_path / 'mine.txt'}")
    assert len(sample.prompt_ids) == 900 and "of the user's file" in tokenizer.decode(sample.context_ids)
    assert split_region(list(range(100)), "train") == list(range(95)) and split_region(list(range(100)), "test") == list(range(95, 100))
    assert split_region([7], "train") == [7] == split_region([7], "test")  # one record: both read it


# --------------------------------------------------------------------------------------------------------------
# Scoring


@pytest.mark.parametrize("generated, answers, distractors, expected", [
    (" 4913075.", ["4913075"], (), True),
    (" The value is 4913075", ["4913075"], (), True),
    (" 49130751", ["4913075"], (), False),  # extra digit
    (" 491307", ["4913075"], (), False),  # digit missing
    (" 14913075", ["4913075"], (), False),
    (" 4913075 and 1234567", ["4913075"], ("1234567",), False),  # a distractor too
    (" 4913075, 1234567", ["4913075", "1234567"], (), True),
    (" 4913075", ["4913075", "1234567"], (), False),  # partial
    (" Quiet-Harbor", ["quiet-harbor"], (), True),  # any case
    (" quiet-harbors", ["quiet-harbor"], (), False),  # whole words only
    (" Cobalt  kettle\nK42", ["Cobalt kettle K42"], (), True),  # runs of white space are one space
    (" the blue shoes", ["blue shoes"], ("shoes",), True),  # a distractor inside the expected value is no error
    (" kitchen, then the garden", ["kitchen"], ("garden",), False),
    (" 3 stars for K42", ["3"], ("4", "2"), True),  # "42" is not "4" or "2"
    (" zulo, mebo", ["zulo", "mebo"], ("rafu", "tiki"), True),
    (" zulo, mebo, tiki", ["zulo", "mebo"], ("rafu", "tiki"), False),
    ("", ["1"], (), False),
    # one expected value inside another: each is found, whichever order the answers list them in
    (" Cobalt kettle, Cobalt kettle A42", ["Cobalt kettle", "Cobalt kettle A42"], (), True),
    (" Cobalt kettle A42", ["Cobalt kettle", "Cobalt kettle A42"], (), False),
    (" Cobalt kettle A42, Cobalt kettle", ["Cobalt kettle A42", "Cobalt kettle"], (), True),
])
def test_answer_matching(generated, answers, distractors, expected):
    assert answer_matches(generated, answers, distractors) is expected


def test_number_matching_takes_the_first_number():
    assert answer_matches(" 12 items", ["12"], match="number")
    assert not answer_matches(" 123", ["12"], match="number")
    assert not answer_matches(" 5 passed, 12 failed", ["12"], match="number")
    assert not answer_matches(" twelve", ["12"], match="number")


# --------------------------------------------------------------------------------------------------------------
# A user's own events and tool calls


def write_jsonl(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def good_events(n):
    return [{"time": f"2024-03-{1 + i // 24:02d}T{i % 24:02d}:15:00", "event": ["view", "purchase", "cart"][i % 3],
             "item": f"Thing {i % 7}", "category": ["tools", "food"][i % 2], "price": 3.5 + i} for i in range(n)]


def test_a_users_events_become_the_log_and_bad_lines_are_reported(tokenizer, tmp_path):
    events = write_jsonl(tmp_path / "events.jsonl", [*good_events(300), {"time": "2024-04-01 10:00", "event": "rating",
                         "item": "Thing 1", "category": "tools", "price": 4, "stars": 5}])
    sample = build(tokenizer, "user-qa", 1500, 0.5, 0, question="date", events=str(events))
    context, question = text_of(tokenizer, sample)
    assert len(sample.prompt_ids) == 1500 and "| Thing " in context and user_answers(context, question) == list(sample.answers)
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        good_events(1)[0], "{not json", {"time": "yesterday", "event": "view", "item": "x", "category": "y", "price": 1},
        {"time": "2024-03-01 10:00", "event": "rating", "item": "x", "category": "y", "price": 1}, "[1, 2]",
        {"time": "2024-03-01 10:00", "event": "view", "item": "x", "category": "y", "price": -2},
        {"time": "2024-03-01 10:00", "event": "buy", "item": "x", "category": "y", "price": 2},
    ])
    with pytest.raises(RecordError) as error:
        build(tokenizer, "user-qa", 1500, 0.5, 0, events=str(bad))
    assert [e.split(": ", 1)[0] for e in error.value.errors] == [f"{bad}:{line}" for line in (2, 3, 4, 5, 6, 7)]
    message = str(error.value)
    for reason in ("not JSON", "'time' is not a date", "needs 'stars'", "not a JSON object", "'price' must be",
                   "'event' must be one of"):
        assert reason in message


def test_a_users_events_stay_in_time_order_when_the_window_is_longer_than_the_split(tokenizer, tmp_path):
    """The test split holds the last 15 of 300 events; a 2,500-token window repeats them, each lap later in time."""
    events = write_jsonl(tmp_path / "events.jsonl", good_events(300))
    for question in user_events.QUESTIONS:
        for seed in range(6):
            sample = build(tokenizer, "user-qa", 2500, 0.6, seed, question=question, events=str(events))
            context, text = text_of(tokenizer, sample)
            assert len(user_events_of(context)) > 40  # more lines than the split holds: it wrapped
            assert user_answers(context, text) == list(sample.answers)


def mixed_case_events(path):
    """2,000 events (a test split of 100) whose categories are the generator's in other cases and spacing ("Sports",
    " SPORTS "), and whose items "Trail shoes" and "trail  SHOES" are bought on the same days."""
    rows, start = [], datetime.datetime(2024, 1, 1, 8, 0)
    for i in range(2000):
        category = sorted(user_events.PRODUCTS)[i % len(user_events.PRODUCTS)]
        rows.append({"time": (start + datetime.timedelta(minutes=37 * i)).isoformat(),
                     "event": ["purchase", "return", "purchase", "view", "cart"][i % 5],
                     "item": ["Trail shoes", "trail  SHOES", "Mug"][i % 3],
                     "category": [category.title(), f" {category.upper()} "][i % 2], "price": 5})
    return write_jsonl(path, rows)


def test_a_users_categories_count_in_any_case(tokenizer, tmp_path):
    """A user's "Sports" is the asked "sports" category, so it is left out of the window like "sports"."""
    events = mixed_case_events(tmp_path / "events.jsonl")
    for question in ("last-purchase", "returns"):
        for seed in range(8):
            sample = build(tokenizer, "user-qa", 1500, 0.5, seed, question=question, events=str(events))
            assert user_answers(*text_of(tokenizer, sample)) == list(sample.answers)


def test_items_of_a_day_that_differ_only_in_case_are_one_answer(tokenizer, tmp_path):
    """The matcher takes "Trail shoes" and "trail  SHOES" for one item: the reference answer names it once."""
    events = mixed_case_events(tmp_path / "events.jsonl")
    for seed in range(6):
        sample = build(tokenizer, "user-qa", 1500, 0.5, seed, question="date", events=str(events))
        assert user_answers(*text_of(tokenizer, sample)) == list(sample.answers)
        assert matches(tokenizer.decode(sample.answer_ids), sample)  # the reference answer passes


def test_a_users_tool_calls_become_the_log_and_bad_lines_are_reported(tokenizer, tmp_path):
    calls = [{"tool": "shell", "input": f"cat notes_{i}.txt", "output": f"line {i}\nmore"} for i in range(200)]
    calls.append({"tool": "search", "input": {"query": "weather"}, "output": "sunny"})
    trace = write_jsonl(tmp_path / "trace.jsonl", calls)
    for question in agent_trace.QUESTIONS:
        sample = build(tokenizer, "agent-qa", 1500, 0.3, 1, question=question, trace=str(trace))
        context, text = text_of(tokenizer, sample)
        assert "Action input: cat notes_" in context and agent_answers(context, text) == list(sample.answers)
    bad = write_jsonl(tmp_path / "bad.jsonl", [calls[0], {"tool": "", "input": "x", "output": "y"},
                                               {"tool": "shell", "input": 3, "output": "y"}, {"tool": "shell", "input": "x"}])
    with pytest.raises(RecordError, match=rf"{bad}:2: 'tool' must be(.|\n)*{bad}:3: 'input' must be(.|\n)*{bad}:4: "
                                          "missing 'output'"):
        build(tokenizer, "agent-qa", 1500, 0.3, 1, trace=str(bad))


# --------------------------------------------------------------------------------------------------------------
# Training on the suites


@pytest.mark.parametrize("spec", ["ruler-niah-multivalue:needles=3,depth=0-50", "babilong-qa2:haystack=essays",
                                  "user-qa:question=returns", "agent-qa", "ruler-cwe:words=5"])
def test_training_samples_fit_and_learn_the_answer_only(tokenizer, spec):
    dataset = load_dataset(spec, tokenizer, max_length=1200, seed=3)
    for i in range(3):
        sample = dataset[i]
        assert 600 <= len(sample.input_ids) <= 1200
        answer = [t for t, label in zip(sample.input_ids, sample.labels) if label != -100]
        assert answer == [label for label in sample.labels if label != -100]
        assert sample.input_ids[-len(answer):] == answer and tokenizer.decode(answer).startswith(" ")
    assert dataset[1] == load_dataset(spec, tokenizer, max_length=1200, seed=3)[1]
    assert dataset.split == "train"


@pytest.mark.parametrize("spec", ["ruler-niah-single", "babilong-qa1:depth=0-70", "agent-qa"])
def test_eos_ends_the_target_after_the_answer_and_changes_nothing_else(tokenizer, spec):
    """eos=1: the same prompt and answer, then the end-of-sequence token, a target too (a model learns to stop)."""
    plain = load_dataset(spec, tokenizer, max_length=1200, seed=3)
    ended = load_dataset(f"{spec},eos=1" if ":" in spec else f"{spec}:eos=1", tokenizer, max_length=1200, seed=3)
    eos = tokenizer.eos_token_id
    for i in range(4):
        a, b = plain[i], ended[i]
        answer_a = [label for label in a.labels if label != -100]
        answer_b = [label for label in b.labels if label != -100]
        assert answer_b == answer_a + [eos] and b.input_ids[-1] == eos and eos not in answer_a
        assert len(b.input_ids) <= 1200
        if len(a.input_ids) < 1200:  # room for the extra token: the prompt is the same
            assert b.input_ids[: -len(answer_b)] == a.input_ids[: -len(answer_a)]


def test_training_specs_are_checked(tokenizer):
    for spec, message in (("ruler-vt:hopz=3", "ruler-vt's own are haystack, hops, chains"),
                          ("ruler-vt:hops=many", "options are comma-separated"),
                          ("ruler-vt:eos=yes", "options are comma-separated"),
                          ("ruler-vt:eos=1,eos=0", "options are comma-separated"),
                          ("user-qa:question=colour", "must be one of"),
                          ("babilong-qa1:depth=80-20", "0 <= LOW <= HIGH <= 100"),
                          ("ruler-fwe", "--max-length 300 is too short for ruler-fwe")):
        with pytest.raises(ValueError, match=re.escape(message)):
            load_dataset(spec, tokenizer, max_length=300)
