"""What the votes say: a win rate with its 95 % interval and a sign test per pair of models, and
the votes as preference pairs for the data stage (`posttrain prepare-data --kind preference`)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

Z95 = 1.959963984540054


def wilson(successes: float, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion (ties count half a win)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summary(votes: list[dict]) -> list[dict]:
    """Per pair of models (in name order): votes, wins of each, ties, both bad; the first model's
    win rate over the decided and tied votes (a tie is half a win), its interval, and the exact
    two-sided sign test of wins against losses."""
    from scipy.stats import binomtest

    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for v in votes:
        first, second = sorted((v["model_a"], v["model_b"]))
        c = counts[(first, second)]
        c["votes"] += 1
        if v["choice"] in ("tie", "both_bad"):
            c[v["choice"]] += 1
        else:
            winner = v["model_a"] if v["choice"] == "a" else v["model_b"]
            c["first_wins" if winner == first else "second_wins"] += 1
    rows = []
    for (first, second), c in sorted(counts.items()):
        wins, losses, ties = c["first_wins"], c["second_wins"], c["tie"]
        n = wins + losses + ties
        rate = (wins + ties / 2) / n if n else None
        low, high = wilson(wins + ties / 2, n)
        p = binomtest(wins, wins + losses).pvalue if wins + losses else 1.0
        rows.append({"model": first, "versus": second, "votes": c["votes"], "wins": wins, "losses": losses,
                     "ties": ties, "both_bad": c["both_bad"], "win_rate": rate, "ci95": [low, high],
                     "sign_test_p": p, "annotators": len({v["annotator"] for v in votes
                                                            if {v["model_a"], v["model_b"]} == {first, second}})})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | versus | votes | wins | losses | ties | both bad | win rate (95 % CI) | sign test p |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        rate = "n/a" if r["win_rate"] is None else f"{r['win_rate']:.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f})"
        lines.append(f"| {r['model']} | {r['versus']} | {r['votes']} | {r['wins']} | {r['losses']} | {r['ties']} | "
                     f"{r['both_bad']} | {rate} | {r['sign_test_p']:.3g} |")
    return "\n".join(lines) + "\n\nA tie counts half a win; both-bad votes are left out of the win rate. The " \
                              "interval is Wilson's; the sign test compares wins with losses (exact binomial).\n"


def preference_pairs(votes: list[dict], subset: str = "helpful") -> tuple[list[dict], dict[str, int]]:
    """A vote for A or B as a preference pair (prompt, chosen, rejected) in `subset` (the reward
    aspect that trains on it); ties and both-bad votes say nothing about which is better and are
    counted, not exported."""
    pairs, skipped = [], {"tie": 0, "both_bad": 0}
    for v in votes:
        if v["choice"] in skipped:
            skipped[v["choice"]] += 1
            continue
        chosen, rejected = (v["answer_a"], v["answer_b"]) if v["choice"] == "a" else (v["answer_b"], v["answer_a"])
        winner, loser = (v["model_a"], v["model_b"]) if v["choice"] == "a" else (v["model_b"], v["model_a"])
        pairs.append({"id": f"ab-{v['token'][:16]}", "subset": subset, "prompt": v["prompt"],
                      "chosen": [{"role": "assistant", "content": chosen}],
                      "rejected": [{"role": "assistant", "content": rejected}],
                      "annotator": v["annotator"], "chosen_model": winner, "rejected_model": loser,
                      "prompt_id": v["prompt_id"], "voted_at": v["voted_at"]})
    return pairs, skipped


def unpaired_ratings(votes: list[dict], subset: str = "helpful") -> list[dict]:
    """A both-bad vote as two thumbs-down ratings (KTO's unpaired format: prompt, completion,
    label), which the KTO stage trains on; a vote for A or B is a pair (`preference_pairs`)."""
    return [{"id": f"ab-{v['token'][:16]}-{side}", "subset": subset, "prompt": v["prompt"],
             "completion": [{"role": "assistant", "content": v[f"answer_{side}"]}], "label": False,
             "annotator": v["annotator"], "model": v[f"model_{side}"], "prompt_id": v["prompt_id"],
             "voted_at": v["voted_at"]}
            for v in votes if v["choice"] == "both_bad" for side in ("a", "b")]


def write_report(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ab.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "ab.md").write_text("# Human A/B\n\n" + markdown(rows))
