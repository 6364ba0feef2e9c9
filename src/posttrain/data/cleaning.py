"""Cleaning steps for canonical rows: normalisation, PII scrubbing, blocklist, decontamination
and (near-)duplicate removal. Each step is small and counted by the data stage."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

# --- normalisation ---------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200d\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0]+")
_TRAILING = re.compile(r" +\n")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """NFKC, no control or zero-width characters, single spaces, at most one blank line.
    Newlines are kept: they carry structure (lists, code, `#### N` answer lines)."""
    return normalize_text_changes(text)[0]


def normalize_text_changes(text: str) -> tuple[str, list[str]]:
    """normalize_text, and which of its steps changed something: `unicode` (NFKC: compatibility
    forms, composed accents), `newlines` (CR and CRLF inside the text), `invisible` (control and
    zero-width characters, stray byte-order marks), `whitespace` (runs of spaces, trailing spaces,
    blank lines, the ends)."""
    changes = []
    steps = (("unicode", lambda t: unicodedata.normalize("NFKC", t)),
             ("newlines", lambda t: t.replace("\r\n", "\n").replace("\r", "\n")),
             ("invisible", lambda t: _CONTROL.sub("", t)),
             ("whitespace", lambda t: _BLANK_LINES.sub("\n\n", _TRAILING.sub("\n", _SPACES.sub(" ", t))).strip()))
    for name, step in steps:
        new = step(text)
        if new != text:
            changes.append(name)
            text = new
    return text, changes


# --- PII and secrets -------------------------------------------------------------------------

PII_PATTERNS: dict[str, re.Pattern] = {
    "<EMAIL>": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"),
    # Separators are required between the digit groups, so sums like "12 + 7 = 19" never match.
    "<PHONE>": re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-])?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}(?!\w)"),
    "<SECRET>": re.compile(
        r"\b(?:sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|xox[abpors]-[A-Za-z0-9-]{10,}"
        r"|hf_[A-Za-z0-9]{30,}|AIza[0-9A-Za-z_-]{35})\b"),
}
# `api_key = "..."`-style assignments: keep the name, hide the value.
_ASSIGNED_SECRET = re.compile(r"(?i)\b((?:api[_-]?key|secret|access[_-]?token|auth[_-]?token|password)\s*[:=]\s*)"
                              r"(['\"]?)[^\s'\"]{8,}\2")


def scrub_pii(text: str) -> tuple[str, int]:
    """Replace e-mail addresses, phone numbers and secrets with placeholders; return the count."""
    total = 0
    for placeholder, pattern in PII_PATTERNS.items():
        text, n = pattern.subn(placeholder, text)
        total += n
    text, n = _ASSIGNED_SECRET.subn(lambda m: f"{m.group(1)}<SECRET>", text)
    return text, total + n


# --- words, n-grams and hashes ---------------------------------------------------------------

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def content_hash(content) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class Decontaminator:
    """Flags text that shares an n-gram of words with any eval prompt.

    Eval prompts shorter than n words (common in short-answer sets) are matched whole, so a
    training row that quotes a short eval question verbatim is caught too; prompts under
    `min_words` are ignored as too generic to signal contamination."""

    def __init__(self, eval_texts: Iterable[str], n: int = 13, min_words: int = 6):
        self.n = n
        self.grams: dict[int, set[tuple[str, ...]]] = {}
        for text in eval_texts:
            w = words(text)
            if len(w) < min_words:
                continue
            size = min(n, len(w))
            bucket = self.grams.setdefault(size, set())
            bucket.update(tuple(w[i:i + size]) for i in range(len(w) - size + 1))

    def __len__(self) -> int:
        return sum(len(b) for b in self.grams.values())

    def contaminated(self, text: str) -> bool:
        w = words(text)
        for size, bucket in self.grams.items():
            if any(tuple(w[i:i + size]) in bucket for i in range(len(w) - size + 1)):
                return True
        return False


class _SeenTable:
    """A set of 64-bit keys in an SQLite file beside the outputs rather than in memory, so the data
    stage's memory stays flat however many rows a source has (UltraChat: 200k). The file is
    scratch: one transaction, no journal, deleted on close."""

    def __init__(self, path: Path, columns: str):
        import sqlite3

        self.path = path
        path.unlink(missing_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute(f"CREATE TABLE seen ({columns}, PRIMARY KEY ({columns.replace(' INTEGER', '')})) "
                        f"WITHOUT ROWID")
        self.db.execute("BEGIN")

    def close(self) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)


def _key64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


class ExactDuplicates(_SeenTable):
    """Content hashes seen so far."""

    def __init__(self, path: Path):
        super().__init__(path, "hash INTEGER")

    def seen(self, key: str) -> bool:
        """True when `key` (a hex content hash) was added before; otherwise adds it."""
        return self.db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (_key64(bytes.fromhex(key)),)).rowcount == 0


class NearDuplicateFilter(_SeenTable):
    """MinHash LSH over word shingles: `seen(text)` is True when an earlier text shares a band of
    its MinHash signature (estimated Jaccard similarity >= threshold, as datasketch's MinHashLSH
    finds candidates, with its band layout); otherwise its bands are remembered."""

    def __init__(self, path: Path, threshold: float, num_perm: int, shingle_words: int, seed: int = 1):
        from datasketch import MinHashLSH

        super().__init__(path, "band INTEGER, key INTEGER")
        self.num_perm, self.shingle, self.seed = num_perm, shingle_words, seed
        self.bands = MinHashLSH(threshold=threshold, num_perm=num_perm).hashranges

    def _minhash(self, text: str):
        from datasketch import MinHash

        w = words(text)
        shingles = {" ".join(w[i:i + self.shingle]) for i in range(max(1, len(w) - self.shingle + 1))}
        m = MinHash(num_perm=self.num_perm, seed=self.seed)
        m.update_batch(s.encode() for s in shingles)
        return m

    def seen(self, text: str) -> bool:
        values = self._minhash(text).hashvalues
        keys = [(band, _key64(values[start:end].tobytes())) for band, (start, end) in enumerate(self.bands)]
        if any(self.db.execute("SELECT 1 FROM seen WHERE band = ? AND key = ?", k).fetchone() for k in keys):
            return True
        self.db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", keys)
        return False


def blocked(text: str, blocklist: list[str]) -> str | None:
    low = text.lower()
    for term in blocklist:
        if term.lower() in low:
            return term
    return None
