"""The votes database (SQLite): the answers shown, the pairs issued to each annotator and their
votes. Every statement is parameterised; each request opens its own connection and writes in one
immediate transaction, so concurrent voters and a killed server lose or double nothing (WAL)."""

from __future__ import annotations

import json
import random
import re
import secrets
import sqlite3
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

CHOICES = ("a", "b", "tie", "both_bad")
ANNOTATOR = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    prompt_id TEXT NOT NULL, model TEXT NOT NULL, prompt TEXT NOT NULL, answer TEXT NOT NULL,
    PRIMARY KEY (prompt_id, model));
CREATE TABLE IF NOT EXISTS issued (
    token TEXT PRIMARY KEY, annotator TEXT NOT NULL, prompt_id TEXT NOT NULL,
    model_a TEXT NOT NULL, model_b TEXT NOT NULL, issued_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS votes (
    token TEXT PRIMARY KEY REFERENCES issued (token), prompt_id TEXT NOT NULL,
    model_a TEXT NOT NULL, model_b TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad')),
    annotator TEXT NOT NULL, voted_at TEXT NOT NULL);
"""


class VoteRefused(Exception):
    """A vote or request the server turns down: `status` is the HTTP status it answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_annotator(name: str) -> str:
    if not isinstance(name, str) or not ANNOTATOR.match(name):
        raise VoteRefused(400, "annotator: 1 to 64 letters, digits or _ . @ -")
    return name


class VoteStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=30)) as db:
            db.execute("PRAGMA journal_mode=WAL")     # kept in the file: readers never block the writer
            db.executescript(SCHEMA)

    @contextmanager
    def _transaction(self):
        # isolation_level=None: we open the transaction ourselves, IMMEDIATE so two voters never
        # both read "not voted yet" before either writes
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def add_answers(self, model: str, rows: list[tuple[str, list[dict], str]]) -> None:
        """(prompt id, prompt messages, answer) of one model; an existing answer is kept."""
        with self._transaction() as db:
            db.executemany("INSERT OR IGNORE INTO answers (prompt_id, model, prompt, answer) VALUES (?, ?, ?, ?)",
                           [(pid, model, json.dumps(prompt), answer) for pid, prompt, answer in rows])

    def answered(self, model: str) -> set[str]:
        with self._transaction() as db:
            return {r[0] for r in db.execute("SELECT prompt_id FROM answers WHERE model = ?", (model,))}

    def issue(self, annotator: str, models: tuple[str, str], rng: random.Random | None = None) -> dict | None:
        """The next pair for `annotator`: the one issued and not yet voted on (a reload shows it
        again), else a prompt both models answered that they have not seen, the models in random
        order. None when they have seen every prompt. Model names stay in the database."""
        check_annotator(annotator)
        rng = rng or random.SystemRandom()
        with self._transaction() as db:
            both = [r[0] for r in db.execute(
                "SELECT prompt_id FROM answers WHERE model IN (?, ?) GROUP BY prompt_id "
                "HAVING COUNT(DISTINCT model) = 2 ORDER BY prompt_id", models)]
            seen = {r[0] for r in db.execute(
                "SELECT prompt_id FROM issued WHERE annotator = ? AND "
                "((model_a = ? AND model_b = ?) OR (model_a = ? AND model_b = ?))",
                (annotator, *models, *reversed(models)))}
            row = db.execute(
                "SELECT i.token, i.prompt_id, i.model_a, i.model_b FROM issued i LEFT JOIN votes v USING (token) "
                "WHERE i.annotator = ? AND v.token IS NULL AND "
                "((i.model_a = ? AND i.model_b = ?) OR (i.model_a = ? AND i.model_b = ?)) ORDER BY i.issued_at LIMIT 1",
                (annotator, *models, *reversed(models))).fetchone()
            if row is None:
                fresh = [pid for pid in both if pid not in seen]
                if not fresh:
                    return None
                order = list(models)
                rng.shuffle(order)
                row = (secrets.token_urlsafe(24), rng.choice(fresh), *order)
                db.execute("INSERT INTO issued (token, annotator, prompt_id, model_a, model_b, issued_at) "
                           "VALUES (?, ?, ?, ?, ?, ?)", (row[0], annotator, row[1], row[2], row[3], _now()))
                seen.add(row[1])
            token, prompt_id, model_a, model_b = row
            answers = dict(db.execute("SELECT model, answer FROM answers WHERE prompt_id = ? AND model IN (?, ?)",
                                      (prompt_id, model_a, model_b)).fetchall())
            prompt = db.execute("SELECT prompt FROM answers WHERE prompt_id = ? LIMIT 1", (prompt_id,)).fetchone()[0]
        return {"token": token, "prompt": json.loads(prompt), "answers": [answers[model_a], answers[model_b]],
                "position": len(seen), "total": len(both)}

    def vote(self, token: str, annotator: str, choice: str) -> None:
        """Record a vote on a pair issued to this annotator, once."""
        check_annotator(annotator)
        if choice not in CHOICES:
            raise VoteRefused(400, f"choice: one of {', '.join(CHOICES)}")
        if not isinstance(token, str) or not 10 <= len(token) <= 64:
            raise VoteRefused(400, "token: the pair's token, as the server issued it")
        with self._transaction() as db:
            issued = db.execute("SELECT annotator, prompt_id, model_a, model_b FROM issued WHERE token = ?",
                                (token,)).fetchone()
            if issued is None or issued[0] != annotator:
                raise VoteRefused(403, "this pair was not issued to this annotator")
            if db.execute("SELECT 1 FROM votes WHERE token = ?", (token,)).fetchone():
                raise VoteRefused(409, "this pair has its vote already")
            db.execute("INSERT INTO votes (token, prompt_id, model_a, model_b, choice, annotator, voted_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", (token, issued[1], issued[2], issued[3], choice, annotator,
                                                        _now()))

    def votes(self) -> list[dict]:
        """Every vote, unblinded, with the prompt and both answers."""
        with self._transaction() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT v.*, p.prompt, a.answer AS answer_a, b.answer AS answer_b FROM votes v "
                "JOIN answers a ON a.prompt_id = v.prompt_id AND a.model = v.model_a "
                "JOIN answers b ON b.prompt_id = v.prompt_id AND b.model = v.model_b "
                "JOIN answers p ON p.prompt_id = v.prompt_id AND p.model = v.model_a "
                "ORDER BY v.voted_at, v.token").fetchall()
        return [{**dict(r), "prompt": json.loads(r["prompt"])} for r in rows]
