"""RULER-style retrieval and tracking (after Hsieh et al. 2024, written from the task definitions, no code copied):
needles in a haystack with keys and values as words, numbers or UUIDs, and variable tracking.

Needle tasks (`niah_sample`), each needle "One of the special magic numbers for quiet-harbor is: 4913075.":
- single: one needle; answer its value.
- multikey: the needle and `needles - 1` distractor needles with other keys; answer the asked key's value (naming
  a distractor's value is wrong).
- multivalue: `needles` needles with the same key and different values; the answer must hold every value.
- multiquery: `needles` needles with different keys, all asked at once; the answer must hold every value.
The haystack is the bundled essays, the Bible, the passkey filler ("noise"), a user's text file, or "needles":
nothing but distractor needles with other keys (RULER's hardest multikey haystack).

Variable tracking (`vt_sample`): chains "VAR QWERT = 12345." "VAR ZXCVB = VAR QWERT." ... of `hops` assignments
after the first, `chains` of them with different values in the passkey filler; the answer must name every
variable of the asked value's chain and none of the others.

Depths: the grid's depth places the needle asked about (the first value of multivalue, the first key of
multiquery, the value assignment of the asked chain); the other needles go at depths drawn from the trial's
random generator, a chain's later assignments after its first.

Held out (`sample.Pool`): the test split uses the RULER phrasing (intro, needle, question) and key and value words
built on the nouns of `NOUNS.test`, variables of the letters N-Z; the training split other phrasings, nouns and
the letters A-M. Numbers and UUIDs are random in both.
"""

from __future__ import annotations

import uuid

from cometlm.bundled import encode

from cometlm.tasks.retrieval import check_depth
from cometlm.tasks.haystack import hidden_facts_sample, load_haystack, ordered, spread
from cometlm.tasks.sample import Pool, TaskSample, check_split

VARIANTS = ("single", "multikey", "multivalue", "multiquery")
VALUE_TYPES = ("word", "number", "uuid")
NEEDLE_HAYSTACKS = ("essays", "bible", "noise", "needles", "file:PATH")
PLURAL = {"word": "words", "number": "numbers", "uuid": "UUIDs"}

ADJECTIVES = (
    "quiet", "brave", "amber", "bitter", "calm", "clever", "crimson", "distant", "eager", "faint", "gentle", "golden",
    "hollow", "humble", "icy", "jolly", "kind", "lively", "lucky", "misty", "narrow", "noble", "odd", "pale",
    "proud", "rapid", "rough", "rusty", "shy", "silent", "sleepy", "smooth", "solid", "sturdy", "swift", "tame",
    "tender", "tidy", "vast", "warm", "wild", "wise", "young", "zesty",
)
NOUNS = Pool(
    train=(
        "harbor", "meadow", "lantern", "compass", "orchard", "pebble", "canyon", "falcon", "glacier", "hammock",
        "island", "jigsaw", "kettle", "ladder", "mirror", "nectar", "oyster", "parrot", "quartz", "ribbon", "saddle",
        "thistle", "utensil", "valley", "walrus", "yogurt", "zeppelin", "anchor", "blanket", "cactus", "dolphin",
        "engine", "feather", "garlic", "helmet", "igloo", "jacket", "koala", "lemon", "magnet", "needle", "onion",
        "pepper", "rocket", "shovel", "tunnel", "velvet", "window", "biscuit", "candle",
    ),
    test=(
        "pollution", "thought", "sunrise", "bicycle", "marble", "violin", "tractor", "pumpkin", "squirrel", "teapot",
        "wizard", "castle", "lobster", "puzzle", "comet", "blizzard", "cabbage", "dragon", "emerald", "fountain",
        "goblet", "hurricane", "lighthouse", "mushroom",
    ),
)

# Phrasings: the test split uses RULER's; training never sees them.
STYLES = {
    "magic": dict(
        intro="Some special magic {kinds} are hidden within the following text. Make sure to memorize them. I will "
              "quiz you about the {kinds} afterwards.",
        needle="One of the special magic {kinds} for {key} is: {value}.",
        one="What is the special magic {kind} for {key} mentioned in the provided text? The special magic {kind} "
            "for {key} mentioned in the provided text is",
        many="What are all the special magic {kinds} for {key} mentioned in the provided text? The special magic "
             "{kinds} for {key} mentioned in the provided text are",
    ),
    "secret": dict(
        intro="The text below hides a few secret {kinds}. Remember them: you will be asked about them at the end.",
        needle="The secret {kind} for {key} is {value}.",
        one="Which secret {kind} belongs to {key}? The secret {kind} for {key} is",
        many="List every secret {kind} that belongs to {key}. The secret {kinds} for {key} are",
    ),
    "note": dict(
        intro="Read the following document and note the {kinds} that are attached to names in it.",
        needle="Note: {key} has the {kind} {value}.",
        one="Question: what {kind} does {key} have? Answer: {key} has the {kind}",
        many="Question: which {kinds} does {key} have? Answer: {key} has the {kinds}",
    ),
    "memo": dict(
        intro="Inside the long text that follows there are memos about special {kinds}. Keep track of them.",
        needle="Memo - the special {kind} of {key}: {value}.",
        one="According to the memos, what is the special {kind} of {key}? It is",
        many="According to the memos, what are the special {kinds} of {key}? They are",
    ),
}
NEEDLE_STYLES = Pool(train=("secret", "note", "memo"), test=("magic",))

VARIABLE_LETTERS = Pool(train=tuple("ABCDEFGHIJKLM"), test=tuple("NOPQRSTUVWXYZ"))
VT_STYLES = {
    "var": dict(intro="Memorize and track the chains of variable assignments hidden in the following text.",
                value="VAR {name} = {value}.", copy="VAR {name} = VAR {source}.",
                question="Question: Which variables in the text above are assigned the value {value}, directly or "
                         "through other variables? Answer: The variables assigned the value {value} are"),
    "set": dict(intro="The following text hides some variable assignments. Follow them carefully.",
                value="SET {name} TO {value}.", copy="SET {name} TO {source}.",
                question="Question: List every variable whose value ends up being {value}. Answer:"),
    "let": dict(intro="Track the variables defined in the text below.",
                value="Let {name} be {value}.", copy="Let {name} be {source}.",
                question="Question: Which variables hold {value}? Answer: The variables holding {value} are"),
}
VT_STYLE_POOL = Pool(train=("set", "let"), test=("var",))


def draw_value(rng, value_type: str, split: str, used: set[str], remember: bool = True) -> str:
    """A key or value of the given type that is not in `used` (and is then added to it, with `remember`)."""
    if value_type not in VALUE_TYPES:
        raise ValueError(f"keys and values are one of {', '.join(VALUE_TYPES)} (got {value_type!r})")
    while True:
        if value_type == "word":
            value = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS.of(split))}"
        elif value_type == "number":
            value = str(rng.randrange(10**6, 10**7))
        else:
            value = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if value not in used:
            if remember:
                used.add(value)
            return value


def niah_sample(tokenizer, n_tokens: int, depth: float, rng, *, split: str = "test", variant: str = "single",
                haystack: str = "essays", keys: str = "word", values: str = "number", needles: int = 4) -> TaskSample:
    """A needle prompt of exactly `n_tokens` ids (module docstring); `needles` counts every needle of multikey
    (the asked one included), the values of multivalue and the keys of multiquery."""
    check_depth(depth)
    check_split(split)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)} (got {variant!r})")
    if variant != "single" and needles < 2:
        raise ValueError(f"{variant} needs at least 2 needles (got {needles})")
    style = STYLES[rng.choice(NEEDLE_STYLES.of(split))]
    kinds = {"kind": values if values != "uuid" else "UUID", "kinds": PLURAL[values]}
    used: set[str] = set()
    count = 1 if variant == "single" else needles
    key_list = [draw_value(rng, keys, split, used) for _ in range(1 if variant == "multivalue" else count)]
    value_list = [draw_value(rng, values, split, used) for _ in range(count)]
    pairs = list(zip(key_list * count if variant == "multivalue" else key_list, value_list))
    depths = [depth] + [rng.random() for _ in range(count - 1)]
    facts = [style["needle"].format(key=k, value=v, **kinds) for k, v in pairs]
    facts, depths, where = ordered(facts, depths)
    answers, distractors = [value_list[0]], ()
    if variant == "multikey":
        distractors = tuple(value_list[1:])
    elif variant in ("multivalue", "multiquery"):
        answers = value_list
    if variant == "multiquery":
        asked = ", ".join(key_list[:-1]) + " and " + key_list[-1]
        question = style["many"].format(key=asked, **kinds)
    else:
        question = style["many" if variant == "multivalue" else "one"].format(key=key_list[0], **kinds)
    if haystack == "needles":
        background = _DistractorNeedles(tokenizer, style["needle"], kinds, keys, values, split, used)
    else:
        background = load_haystack(haystack, tokenizer, split)
    return hidden_facts_sample(
        tokenizer, n_tokens, background, rng, intro=style["intro"].format(**kinds), facts=facts, depths=depths,
        question=question, answers=answers, depth=depth, key=where[0], what=f"a {variant} needle prompt",
        split=split, distractors=distractors, match="all", kind=variant,
    )


class _DistractorNeedles:
    """A haystack made of needles with keys and values that the prompt's own needles do not use (they may repeat
    among themselves: there are fewer key words than needles in a long haystack)."""

    def __init__(self, tokenizer, template: str, kinds: dict, keys: str, values: str, split: str, used: set[str]):
        self.tokenizer, self.template, self.kinds = tokenizer, template, kinds
        self.keys, self.values, self.split, self.used = keys, values, split, used

    def window(self, n: int, rng) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        starts = [0]
        while len(ids) < n:
            batch = [" " + self.template.format(key=draw_value(rng, self.keys, self.split, self.used, False),
                                                value=draw_value(rng, self.values, self.split, self.used, False),
                                                **self.kinds) for _ in range(64)]
            for needle in self.tokenizer(batch, add_special_tokens=False)["input_ids"]:
                ids += needle
                starts.append(len(ids))
        return ids[:n], [s for s in starts if s < n] + [n]


def vt_sample(tokenizer, n_tokens: int, depth: float, rng, *, split: str = "test", haystack: str = "noise",
              hops: int = 4, chains: int = 2) -> TaskSample:
    """A variable-tracking prompt of exactly `n_tokens` ids (module docstring): `chains` chains of 1 + `hops`
    assignments; the first chain is asked about."""
    check_depth(depth)
    check_split(split)
    if hops < 1 or chains < 1:
        raise ValueError(f"variable tracking needs hops >= 1 and chains >= 1 (got hops={hops}, chains={chains})")
    style = VT_STYLES[rng.choice(VT_STYLE_POOL.of(split))]
    letters = VARIABLE_LETTERS.of(split)
    used: set[str] = set()
    facts, depths, names = [], [], []
    for chain in range(chains):
        value = str(rng.randrange(10**4, 10**5))
        while value in used:
            value = str(rng.randrange(10**4, 10**5))
        used.add(value)
        chain_names = []
        while len(chain_names) < hops + 1:
            name = "".join(rng.choice(letters) for _ in range(5))
            if name not in used:
                used.add(name)
                chain_names.append(name)
        names.append(chain_names)
        facts.append(style["value"].format(name=chain_names[0], value=value))
        facts += [style["copy"].format(name=b, source=a) for a, b in zip(chain_names, chain_names[1:])]
        if chain == 0:
            asked = value
            depths += spread(rng, depth, 0, hops)
        else:
            depths += sorted(rng.random() for _ in range(hops + 1))
    facts, depths, where = ordered(facts, depths)
    return hidden_facts_sample(
        tokenizer, n_tokens, load_haystack(haystack, tokenizer, split), rng, intro=style["intro"], facts=facts,
        depths=depths, question=style["question"].format(value=asked), answers=names[0], depth=depth, key=where[0],
        what="a variable-tracking prompt", split=split, distractors=tuple(n for c in names[1:] for n in c),
        match="all", kind="vt",
    )


# --------------------------------------------------------------------------------------------------------------
# Counting words: common-word and frequent-word extraction

# Made-up words of two or three syllables ("tamoki", "bexulon"): an unlimited vocabulary that no tokenizer
# favours. The test split's words start with one of N P R S T V W Z, the training split's with B D F G H J K L M.
WORD_INITIALS = Pool(train=tuple("bdfghjklm"), test=tuple("nprstvwz"))
_ONSETS, _VOWELS, _CODAS = "bdfghjklmnprstvwz", "aeiou", "nrls"
COUNT_STYLES = {
    "common": dict(intro="Below is a list of words. Some of them appear more often than the others. Memorize the "
                         "ones that appear most often.",
                   question="Question: What are the {k} most common words in the list above? Answer: The {k} most "
                            "common words in the list are:"),
    "tally": dict(intro="Here is a long sequence of made-up words; some of them are repeated many times.",
                  question="Question: Which {k} words occur most often in the sequence above? Answer:"),
    "coded": dict(intro="Read the following coded text and track how often each coded word appears.",
                  question="Question: What are the {k} most frequent coded words in the text above? Answer: The {k} "
                           "most frequent coded words are:"),
    "cipher": dict(intro="The text below is written in a cipher. Count how many times each cipher word is used.",
                   question="Question: Name the {k} cipher words used most often above. Answer: They are"),
}
CWE_STYLES = Pool(train=("tally",), test=("common",))
FWE_STYLES = Pool(train=("cipher",), test=("coded",))
_ZIPF = 2  # rank r of the frequent-word text appears about C / r**2 times


def made_up_word(rng, split: str) -> str:
    syllables = [rng.choice(WORD_INITIALS.of(split)) + rng.choice(_VOWELS)]
    syllables += [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(1, 2))]
    return "".join(syllables) + (rng.choice(_CODAS) if rng.random() < 0.25 else "")


def cwe_sample(tokenizer, n_tokens: int, depth: float, rng, *, split: str = "test", words: int = 10,
               common_freq: int = 30, rare_freq: int = 3) -> TaskSample:
    """Common-word extraction with exactly `n_tokens` ids: `words` common words appear `common_freq` times each
    (fewer on short prompts, at least `rare_freq + 2`), every other word at most `rare_freq` times, shuffled; the
    answer must name every common word and no other word of the list. `depth` plays no part."""
    check_depth(depth)
    if words < 1 or rare_freq < 1 or common_freq < rare_freq + 2:
        raise ValueError(f"common-word extraction needs words >= 1, rare_freq >= 1 and common_freq >= rare_freq + 2 "
                         f"(got {words}, {rare_freq}, {common_freq})")
    style = COUNT_STYLES[rng.choice(CWE_STYLES.of(check_split(split)))]
    vocabulary = _Vocabulary(tokenizer, rng, split)
    common = vocabulary.draw(words)
    intro, question, size = _count_frame(tokenizer, style, words, n_tokens)
    common_tokens = sum(len(vocabulary.ids[w]) for w in common)
    freq = common_freq
    while freq > rare_freq + 2 and freq * common_tokens > size // 2:
        freq -= 1
    if freq * common_tokens >= size:
        raise ValueError(f"n_tokens={n_tokens} is too short for common-word extraction; use at least "
                         f"{n_tokens - size + freq * common_tokens + 1}")
    occurrences = [w for w in common for _ in range(freq)]
    filled, rare = freq * common_tokens, []
    while filled < size:
        word = vocabulary.draw(1)[0]
        rare.append(word)
        for _ in range(rare_freq):
            if filled < size:
                occurrences.append(word)
                filled += len(vocabulary.ids[word])
    listing = vocabulary.listing(occurrences, size, protect=common)
    return _count_sample(tokenizer, intro, listing, question, common, rare, depth, split, "cwe")


def fwe_sample(tokenizer, n_tokens: int, depth: float, rng, *, split: str = "test", words: int = 3) -> TaskSample:
    """Frequent-word extraction with exactly `n_tokens` ids: made-up words with Zipf counts (rank r about C / r^2
    times, then words that appear once), shuffled; the answer must name the `words` most frequent ones and no other
    word of the text. `depth` plays no part."""
    check_depth(depth)
    if words < 1:
        raise ValueError(f"frequent-word extraction needs words >= 1 (got {words})")
    style = COUNT_STYLES[rng.choice(FWE_STYLES.of(check_split(split)))]
    vocabulary = _Vocabulary(tokenizer, rng, split)
    intro, question, size = _count_frame(tokenizer, style, words, n_tokens)
    least = 1  # the smallest C for which rank `words` appears at least twice more often than rank `words` + 1
    while least // words**_ZIPF < least // (words + 1) ** _ZIPF + 2:
        least *= 2
    scale = max(least, size // 12)
    while True:
        ranks = vocabulary.draw(int(scale ** (1 / _ZIPF)))
        counts = [scale // r**_ZIPF for r in range(1, len(ranks) + 1)]
        filled = sum(c * len(vocabulary.ids[w]) for w, c in zip(ranks, counts))
        if filled < size:
            break
        if scale == least:
            raise ValueError(f"n_tokens={n_tokens} is too short for frequent-word extraction; use at least "
                             f"{n_tokens - size + filled + 1}")
        scale = max(least, scale // 2)
    occurrences = [w for w, c in zip(ranks, counts) for _ in range(c)]
    tail = []
    while filled < size:
        tail.append(vocabulary.draw(1)[0])
        occurrences.append(tail[-1])
        filled += len(vocabulary.ids[tail[-1]])
    listing = vocabulary.listing(occurrences, size, protect=ranks[:words])
    return _count_sample(tokenizer, intro, listing, question, ranks[:words], ranks[words:] + tail, depth, split,
                         "fwe")


class _Vocabulary:
    """Distinct made-up words of one split and their token ids (after a space), tokenized in batches."""

    def __init__(self, tokenizer, rng, split: str):
        self.tokenizer, self.rng, self.split = tokenizer, rng, split
        self.ids: dict[str, list[int]] = {}

    def draw(self, count: int) -> list[str]:
        fresh: list[str] = []
        drawn: set[str] = set()  # this call's; earlier calls' words are the keys of self.ids (no copy: O(count))
        while len(fresh) < count:
            word = made_up_word(self.rng, self.split)
            if word not in self.ids and word not in drawn:
                drawn.add(word)
                fresh.append(word)
        if fresh:
            encoded = self.tokenizer([" " + w for w in fresh], add_special_tokens=False)["input_ids"]
            self.ids.update(zip(fresh, encoded))
        return fresh

    def listing(self, occurrences: list[str], size: int, protect: list[str]) -> list[int]:
        """The occurrences shuffled, as `size` ids. The last one is cut short where the ids overflow: it is an
        occurrence of an unprotected word whose cut text is no protected word, so the counts that decide the answer
        stay exact (a cut word is a new word that appears once)."""
        self.rng.shuffle(occurrences)
        total = sum(len(self.ids[w]) for w in occurrences)
        for i in reversed(range(len(occurrences))):  # the words added last can end the list: ids overflow in them
            word = occurrences[i]
            keep = size - (total - len(self.ids[word]))
            if word in protect or keep <= 0 or self.tokenizer.decode(self.ids[word][:keep]).strip() in protect:
                continue
            occurrences.append(occurrences.pop(i))
            return [t for w in occurrences for t in self.ids[w]][:size]
        raise AssertionError("a word list always holds an unprotected word that can end it")


def _count_frame(tokenizer, style: dict, words: int, n_tokens: int) -> tuple[list[int], list[int], int]:
    intro = encode(tokenizer, style["intro"] + "\n")
    question = encode(tokenizer, "\n" + style["question"].format(k=words))
    return intro, question, n_tokens - len(intro) - len(question)


def _count_sample(tokenizer, intro, listing, question, answers, others, depth, split, kind) -> TaskSample:
    return TaskSample(
        context_ids=intro + listing, question_ids=question, answer_ids=encode(tokenizer, " " + ", ".join(answers)),
        answers=tuple(answers), facts=(), fact_starts=(), depths=(), depth=depth, distractors=tuple(others),
        match="all", kind=kind, split=split,
    )
