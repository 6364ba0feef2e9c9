"""`posttrain ab serve | report | export`: a human A/B round between two models."""

from __future__ import annotations

import argparse
import json
import logging
import signal
from pathlib import Path

from posttrain.ab import results
from posttrain.ab.store import VoteStore

logger = logging.getLogger(__name__)
DEFAULT_DB = Path("results/ab/votes.sqlite")


def register(sub: argparse._SubParsersAction) -> None:
    ab = sub.add_parser("ab", help="human A/B: two models' answers side by side, votes, win rate, preference pairs")
    cmds = ab.add_subparsers(dest="ab_command", required=True, metavar="ab COMMAND")
    s = cmds.add_parser("serve", help="answer the prompts with both models, then serve the voting page",
                        description="Both models answer the prompts once (greedy; kept in the database), then a "
                                    "local page shows each prompt with the two answers, blind and in random order. "
                                    "Open http://HOST:PORT/?annotator=NAME; keys A, B, T (tie), X (both bad).")
    s.add_argument("--models", nargs=2, required=True, metavar=("A", "B"),
                   help="two model artifacts: folders, or names under results/ (sft, helpfulness, ...)")
    s.add_argument("--prompts", type=Path, default=Path("results/data/prompts/val.jsonl"),
                   help="JSONL rows with a `prompt` (string or messages); default: the held-out RL prompts")
    s.add_argument("--subset", default="helpful", help="only rows of this subset ('' for all)")
    s.add_argument("--limit", type=int, default=20, help="at most this many prompts")
    s.add_argument("--max-new-tokens", type=int, default=128)
    s.add_argument("--db", type=Path, default=DEFAULT_DB, help="the votes database (SQLite)")
    s.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    s.add_argument("--port", type=int, default=8765)
    s.set_defaults(run=serve, params_free=True)

    r = cmds.add_parser("report", help="win rate with its 95 %% interval and a sign test, per pair of models")
    r.add_argument("--db", type=Path, default=DEFAULT_DB)
    r.add_argument("--out", type=Path, default=Path("results/ab"), help="where ab.json and ab.md go")
    r.set_defaults(run=report, params_free=True)

    e = cmds.add_parser("export", help="the votes for A or B as preference pairs (prepare-data --kind preference)")
    e.add_argument("--db", type=Path, default=DEFAULT_DB)
    e.add_argument("--out", type=Path, default=Path("results/ab/preference.jsonl"))
    e.add_argument("--subset", default="helpful", help="the pairs' subset: the reward aspect that trains on them")
    e.add_argument("--unpaired", type=Path, metavar="FILE",
                   help="also write the both-bad votes as thumbs-down ratings (KTO's unpaired format) to FILE")
    e.set_defaults(run=export, params_free=True)


def model_folder(name: str) -> Path:
    for candidate in (Path(name), Path("results") / name, Path("results") / "rl" / name):
        if (candidate / "manifest.json").is_file():
            return candidate
    raise FileNotFoundError(f"model {name!r}: no artifact at {name}, results/{name} or results/rl/{name} "
                            f"(a folder with a manifest.json: run its stage first)")


def serve(args: argparse.Namespace) -> int:
    from posttrain.ab.answers import ensure_answers, read_prompts
    from posttrain.ab.server import make_server

    if args.models[0] == args.models[1]:
        raise ValueError("ab serve: two different models, please")
    models = {Path(name).name if Path(name).is_dir() else name: model_folder(name) for name in args.models}
    store = VoteStore(args.db)
    ensure_answers(store, models, read_prompts(args.prompts, args.subset or None, args.limit), args.max_new_tokens)
    server = make_server(store, tuple(models), args.host, args.port)
    host, port = server.server_address[:2]
    # Ctrl-C and a process manager's SIGTERM stop it cleanly; set explicitly, since a process
    # started in the background of a shell inherits SIGINT ignored
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, _interrupt)
    print(f"A/B page: http://{host}:{port}/?annotator=YOUR_NAME  (votes in {args.db}; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def report(args: argparse.Namespace) -> int:
    rows = results.summary(_store(args.db).votes())
    results.write_report(rows, args.out)
    print(results.markdown(rows))
    print(f"wrote {args.out / 'ab.json'} and {args.out / 'ab.md'}")
    return 0


def export(args: argparse.Namespace) -> int:
    votes = _store(args.db).votes()
    pairs, skipped = results.preference_pairs(votes, args.subset)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    print(f"wrote {args.out}: {len(pairs)} preference pairs ({skipped['tie']} ties and {skipped['both_bad']} "
          f"both-bad votes left out)")
    if args.unpaired:
        ratings = results.unpaired_ratings(votes, args.subset)
        args.unpaired.parent.mkdir(parents=True, exist_ok=True)
        args.unpaired.write_text("".join(json.dumps(r) + "\n" for r in ratings))
        print(f"wrote {args.unpaired}: {len(ratings)} thumbs-down ratings from {len(ratings) // 2} both-bad votes")
    return 0


def _store(db: Path) -> VoteStore:
    if not db.is_file():
        raise FileNotFoundError(f"{db}: no votes database (posttrain ab serve makes it)")
    return VoteStore(db)
