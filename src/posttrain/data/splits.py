"""Writing a data kind's rows to their splits as they come (the data stage streams: no file's rows
are held in memory), by a salted hash of each row's content: stable across reruns and input order,
independent of which other rows survive."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

from posttrain.data import cleaning


class SplitWriter:
    """train.jsonl and val.jsonl (eval: test.jsonl) in `folder`, written row by row."""

    def __init__(self, folder: Path, kind: str, seed: int, val_fraction: float):
        self.folder, self.kind, self.seed, self.val_fraction = folder, kind, seed, val_fraction
        self.names = ("test",) if kind == "eval" else ("train", "val")
        self.files = {name: open(folder / f"{name}.jsonl", "w", encoding="utf-8") for name in self.names}
        self.counts: Counter = Counter()
        self.subsets: Counter = Counter()
        # prompts: per subset, its train rows, whether val has one, and the lowest-hash train row
        self._train_rows: Counter = Counter()
        self._held: set = set()
        self._lowest: dict = {}

    def add(self, row: dict) -> None:
        name = "test" if self.kind == "eval" else "val" if self._hash(row) < self.val_fraction else "train"
        if name == "train" and self.kind == "prompts":
            subset, h = row.get("subset"), self._hash(row)
            if subset not in self._lowest or h < self._lowest[subset][0]:
                self._lowest[subset] = (h, self.counts["train"], row)
            self._train_rows[subset] += 1
        elif name == "val":
            self._held.add(row.get("subset"))
        self._write(name, row)

    def _hash(self, row: dict) -> float:
        return int(cleaning.content_hash([self.seed, row["id"]])[:8], 16) / 0xFFFFFFFF

    def _write(self, name: str, row: dict) -> None:
        self.files[name].write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        self.counts[name] += 1
        self.subsets[row["subset"]] += 1

    def close(self) -> dict[str, int]:
        """Closes the files (prompts: each subset with two or more rows keeps its lowest-hash row in
        val, since RL stages select checkpoints on the held-out prompts of their own subsets) and
        returns the rows per split."""
        moves = {}
        if self.kind == "prompts" and self.val_fraction > 0:
            for subset in sorted(self._lowest, key=str):
                if subset not in self._held and self._train_rows[subset] >= 2:
                    moves[self._lowest[subset][1]] = self._lowest[subset][2]
        for name in self.names:
            self.files[name].close()
        if moves:
            self._move_to_val(moves)
        return {name: self.counts[name] for name in self.names}

    def _move_to_val(self, moves: dict[int, dict]) -> None:
        train, kept = self.folder / "train.jsonl", self.folder / ".train.jsonl"
        with open(train, encoding="utf-8") as src, open(kept, "w", encoding="utf-8") as dst:
            for i, line in enumerate(src):
                if i not in moves:
                    dst.write(line)
        shutil.move(kept, train)
        with open(self.folder / "val.jsonl", "a", encoding="utf-8") as val:
            for _, row in sorted(moves.items(), key=lambda kv: str(kv[1].get("subset"))):
                val.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        self.counts["train"] -= len(moves)
        self.counts["val"] += len(moves)
