"""Data stage: ingest, clean, decontaminate and split one kind of data.

    posttrain prepare-data --kind sft --input data.jsonl [--input more.json ...] --out results/data/sft \\
        [--tokenizer results/base] [--eval results/data/eval/test.jsonl] [--params params.yaml]

Writes DIR/train.jsonl and DIR/val.jsonl (eval: DIR/test.jsonl), DIR/report.json (rows in/out and
drops by reason, per source), DIR/rejected.jsonl (every dropped or malformed row with file:line and
reason) and manifest.json. Nothing is dropped silently: `rows_in == rows_out + sum(dropped)` holds
for every source.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from posttrain.config import DATA_KINDS, DataParams, Params, SourceParams, section
from posttrain.core import publish
from posttrain.core.commands import params_arg
from posttrain.core.manifest import require_manifest, write_json, write_manifest
from posttrain.data import cleaning, formats
from posttrain.data.splits import SplitWriter

log = logging.getLogger(__name__)
QUARANTINE = Path("logs/prepare-data")
# Records looked at to detect a source's format (the rest stream past).
DETECT_ROWS = 200


class DataError(RuntimeError):
    pass


@dataclass
class SourceReport:
    rows_in: int = 0
    rows_out: int = 0
    dropped: Counter = field(default_factory=Counter)
    modified: Counter = field(default_factory=Counter)
    format: str = ""
    # rows of another format than the source's, each read by its own (a file that mixes formats)
    other_formats: Counter = field(default_factory=Counter)
    read: dict = field(default_factory=dict)        # container, encoding, layout (data.files)

    def as_dict(self) -> dict:
        out = {"format": self.format, "read": self.read, "rows_in": self.rows_in, "rows_out": self.rows_out,
               "dropped": dict(sorted(self.dropped.items())), "modified": dict(sorted(self.modified.items()))}
        if self.other_formats:
            out["other_formats"] = dict(sorted(self.other_formats.items()))
        return out


def main(params: Params, kind: str, inputs: list[str], out: Path, tokenizer_dir: Path | None = None,
         eval_file: Path | None = None) -> dict:
    if kind not in DATA_KINDS:
        raise DataError(f"--kind {kind!r} is not one of {', '.join(DATA_KINDS)}")
    if not inputs:
        raise DataError(f"no inputs for kind {kind!r}: pass --input FILE or list data.sources.{kind} in params.yaml")
    cfg = params.data
    tokenizer = _load_tokenizer(tokenizer_dir)
    decon = _load_decontaminator(cfg, eval_file) if kind != "eval" else None

    # 1. Read, parse and clean every source, streaming: each row goes to its split or to the
    # rejects as it is read, into a staging folder that replaces `out` only at the end.
    tmp = publish.staging(out)
    writer = SplitWriter(tmp, kind, cfg.seed, cfg.val_fraction)
    rejects = Rejects(tmp / "rejected.jsonl", kind)
    reports: dict[str, SourceReport] = {}
    c = cfg.cleaning
    exact = cleaning.ExactDuplicates(tmp.parent / f".{out.name}.exact.sqlite") if c.dedup_exact else None
    near = (cleaning.NearDuplicateFilter(tmp.parent / f".{out.name}.near.sqlite", c.near_dup_threshold,
                                         c.near_dup_num_perm, c.near_dup_shingle_words) if c.near_dup else None)
    try:
        for spec in inputs:
            source = _source_params(cfg, kind, spec)
            report = reports[spec] = SourceReport()
            records = formats.read_records(spec, report.read)
            head = list(itertools.islice(records, DETECT_ROWS))
            fmt = formats.FORMATS[source.format] if source.format != "auto" else formats.detect_format(head, spec)
            report.format = fmt.name
            if kind not in fmt.kinds:
                raise DataError(f"{spec}: format {fmt.name} cannot feed kind {kind!r} (it feeds: "
                                f"{', '.join(fmt.kinds)})")
            subset = source.subset or _stem(spec)
            for rec in tqdm(itertools.chain(head, records), desc=f"{kind}: {Path(spec).name}", unit="row",
                            disable=None):
                report.rows_in += 1
                row, reason, detail = _process(rec, fmt, kind, subset, cfg, tokenizer, decon, exact, near, report)
                if row is None:
                    report.dropped[reason] += 1
                    rejects.add(rec, reason, detail)
                else:
                    report.rows_out += 1
                    writer.add(row)
            if report.other_formats:
                log.warning("%s: read as %s, but %s row(s) are in other formats, each read by its own: %s", spec,
                            fmt.name, sum(report.other_formats.values()), dict(report.other_formats))
            _check_reject_ratio(spec, report, cfg.max_reject_ratio, rejects)
            _check_too_long_ratio(spec, report, cfg, rejects)
        splits = writer.close()
        rejects.close()
        if not sum(report.rows_out for report in reports.values()):
            raise DataError(f"nothing remains of {len(inputs)} source(s) for kind {kind!r} after cleaning; "
                            f"see {rejects.quarantine()} for why each row was dropped")
        if kind != "eval" and not splits["train"]:
            raise DataError(f"kind {kind!r}: every row fell into val; lower data.val_fraction")
    except BaseException:
        writer.close()
        rejects.close()
        rejects.quarantine()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for table in (exact, near):
            if table is not None:
                table.close()

    # 2. Report and manifest (last), then the folder replaces the previous one.
    report = _summary(kind, reports, splits, writer.subsets)
    write_json(tmp / "report.json", report)
    inputs_hashed = {f"input{i}": p for i, p in enumerate(inputs) if not p.startswith("hf:")}
    if tokenizer_dir:
        inputs_hashed["tokenizer"] = tokenizer_dir
    if eval_file:
        inputs_hashed["eval"] = eval_file
    write_manifest(tmp, stage=f"prepare-data:{kind}", params=section(params, "data"), seed=cfg.seed,
                   inputs=inputs_hashed, chat_template=getattr(tokenizer, "chat_template", None),
                   extra={"kind": kind, "rows": splits, "hub_sources": [p for p in inputs if p.startswith("hf:")]})
    publish.publish(tmp, out)
    log.info("%s: %d rows in, %d out, dropped %s", kind, report["rows_in"], report["rows_out"], report["dropped"])
    return report


# --- one record ------------------------------------------------------------------------------


def _process(rec, fmt, kind, subset, cfg: DataParams, tokenizer, decon, exact, near, report):
    """(row, None, None) for a kept record, else (None, reason, detail)."""
    if rec.error is not None:
        return None, rec.error.reason, rec.error.detail
    try:
        example = _parse(rec.data, fmt, kind, report)
        row = _to_kind(example, kind)
    except formats.RowError as err:
        return None, err.reason, err.detail
    row["subset"] = str(row["meta"].pop("subset", None) or subset)
    row["source"] = rec.locator
    c = cfg.cleaning

    if c.normalize:
        changes: set[str] = set()
        if _map_text(row, lambda t: _normalized(t, changes)):
            report.modified["normalized"] += 1
            report.modified.update(f"normalized_{change}" for change in changes)
    empty = _empty_part(row, kind)
    if empty:
        return None, "empty", f"{empty} is empty"
    if c.pii != "off":
        n_found = _count_pii(row)
        if n_found and c.pii == "drop":
            return None, "pii", f"{n_found} e-mail/phone/secret match(es)"
        if n_found:
            _map_text(row, lambda t: cleaning.scrub_pii(t)[0])
            report.modified["pii_scrubbed"] += 1
    text = _row_text(row)
    term = cleaning.blocked(text, c.blocklist)
    if term:
        return None, "blocklist", f"contains blocklisted {term!r}"
    if kind == "preference" and "chosen" in row and row["chosen"] == row["rejected"]:
        return None, "identical_pair", "chosen and rejected are the same"
    if tokenizer is not None:
        n_tokens = _n_tokens(tokenizer, row, kind)
        if n_tokens > c.max_tokens:
            return None, "too_long", f"{n_tokens} tokens > cleaning.max_tokens={c.max_tokens}"
    if decon is not None and decon.contaminated(text):
        return None, "contaminated", f"shares a {decon.n}-word sequence with an eval prompt"
    key = cleaning.content_hash(_content(row, kind))
    if exact is not None and exact.seen(key):
        return None, "duplicate", "exact duplicate of an earlier row"
    if near is not None and near.seen(text):
        return None, "near_duplicate", f"estimated Jaccard >= {c.near_dup_threshold} with an earlier row"
    row["id"] = key[:16]
    return row, None, None


def _parse(data: dict, fmt: formats.Format, kind: str, report: SourceReport) -> formats.Example:
    """The record in the source's format; a record of another format that feeds this kind (a file
    that mixes formats) is read by its own and counted, rather than dropped for missing fields."""
    try:
        return fmt.parse(data)
    except formats.RowError as err:
        other = formats.detect(data)
        if err.reason != "missing_field" or other is None or other is fmt or kind not in other.kinds:
            raise
        report.other_formats[other.name] += 1
        return other.parse(data)


def _normalized(text: str, changes: set[str]) -> str:
    out, found = cleaning.normalize_text_changes(text)
    changes.update(found)
    return out


def _to_kind(ex: formats.Example, kind: str) -> dict:
    if kind == "sft":
        if ex.messages[-1]["role"] != "assistant":
            raise formats.RowError("missing_field", "an SFT conversation must end with an assistant turn")
        return {"messages": ex.messages, "meta": ex.meta}
    if kind == "preference" and ex.label is not None:
        return {"prompt": ex.messages, "completion": ex.completion, "label": ex.label, "meta": ex.meta}
    if kind == "preference":
        return {"prompt": ex.messages, "chosen": ex.chosen, "rejected": ex.rejected, "meta": ex.meta}
    # prompts / eval: the conversation up to the last user turn; its answer as the reference.
    msgs = ex.messages
    reference = None
    if msgs[-1]["role"] == "assistant":
        reference = msgs[-1]["content"]
        msgs = msgs[:-1]
    if not msgs or msgs[-1]["role"] != "user":
        raise formats.RowError("missing_field", "a prompt must end with a user turn")
    return {"prompt": msgs, "answer": ex.answer, "reference": reference, "meta": ex.meta}


_TEXT_FIELDS = ("messages", "prompt", "chosen", "rejected", "completion")


def _map_text(row: dict, fn) -> bool:
    changed = False
    for key in _TEXT_FIELDS:
        for m in row.get(key) or []:
            new = fn(m["content"])
            changed |= new != m["content"]
            m["content"] = new
    if row.get("reference") is not None:
        new = fn(row["reference"])
        changed |= new != row["reference"]
        row["reference"] = new
    return changed


def _count_pii(row: dict) -> int:
    return sum(cleaning.scrub_pii(m["content"])[1] for key in _TEXT_FIELDS for m in row.get(key) or [])


def _empty_part(row: dict, kind: str) -> str | None:
    for key in _TEXT_FIELDS:
        for i, m in enumerate(row.get(key) or []):
            if not m["content"].strip() and m["role"] != "system":
                return f"{key}[{i}] ({m['role']})"
    return None


def _row_text(row: dict) -> str:
    return "\n".join(m["content"] for key in _TEXT_FIELDS for m in row.get(key) or [])


def _content(row: dict, kind: str):
    if "completion" in row:       # an unpaired rating: the same response rated both ways is two rows
        return {k: row[k] for k in ("prompt", "completion", "label")}
    return {k: row.get(k) for k in ("messages", "prompt", "chosen", "rejected", "answer")}


def _n_tokens(tokenizer, row: dict, kind: str) -> int:
    if kind == "sft":
        convs = [row["messages"]]
    elif kind == "preference":
        convs = [row["prompt"] + row[side] for side in ("chosen", "rejected", "completion") if side in row]
    else:
        convs = [row["prompt"]]
    return max(len(tokenizer.apply_chat_template(c, tokenize=True, add_generation_prompt=kind in ("prompts", "eval"),
                                                 return_dict=False)) for c in convs)


# --- helpers ---------------------------------------------------------------------------------


def _source_params(cfg: DataParams, kind: str, spec: str) -> SourceParams:
    """Per-source options from params when the input is listed there; defaults otherwise."""
    for s in cfg.sources.of(kind):
        if s.path == spec:
            return s
    return SourceParams(path=spec)


def _stem(spec: str) -> str:
    name = spec.rsplit("/", 1)[-1].split("?", 1)[0]
    for ext in (".jsonl.gz", ".jsonl", ".ndjson", ".json", ".parquet"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _load_tokenizer(tokenizer_dir: Path | None):
    if tokenizer_dir is None:
        return None
    require_manifest(tokenizer_dir, "base-model")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _load_decontaminator(cfg: DataParams, eval_file: Path | None):
    if not cfg.cleaning.decontaminate or eval_file is None:
        return None
    require_manifest(eval_file.parent, "prepare-data --kind eval")
    texts = []
    with open(eval_file) as fh:
        for line in fh:
            row = json.loads(line)
            texts.append("\n".join(m["content"] for m in row["prompt"] if m["role"] == "user"))
    return cleaning.Decontaminator(texts, n=cfg.cleaning.decontamination_ngram)


class Rejects:
    """rejected.jsonl, written as rows are dropped; the first malformed ones per source kept for
    error messages. On failure the runner removes the stage's outputs: `quarantine()` keeps a
    copy under logs/."""

    def __init__(self, path: Path, kind: str):
        self.path, self.kind = path, kind
        self.fh = open(path, "w", encoding="utf-8")
        self.first_malformed: dict[str, list[dict]] = {}

    def add(self, rec, reason: str, detail: str) -> None:
        entry = {"source": rec.locator, "reason": reason, "detail": detail,
                 "record": rec.data if rec.data is not None else rec.raw}
        self.fh.write(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
        if reason in MALFORMED:
            seen = self.first_malformed.setdefault(rec.locator.rsplit(":", 1)[0].split("#")[0], [])
            if len(seen) < 3:
                seen.append(entry)

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.close()

    def quarantine(self) -> Path:
        self.close()
        QUARANTINE.mkdir(parents=True, exist_ok=True)
        kept = QUARANTINE / f"{self.kind}.rejected.jsonl"
        if self.path.exists():
            shutil.copy(self.path, kept)
        return kept


MALFORMED = ("malformed_json", "missing_field", "wrong_type", "malformed_csv")


def _check_reject_ratio(spec: str, report: SourceReport, limit: float, rejects: Rejects) -> None:
    malformed = sum(report.dropped[r] for r in MALFORMED)
    if report.rows_in and malformed / report.rows_in > limit:
        kept = rejects.quarantine()
        examples = [e for source, entries in rejects.first_malformed.items() if source.startswith(spec)
                    for e in entries][:3]
        shown = "\n  ".join(f"{r['source']}: {r['reason']}: {r['detail']}" for r in examples)
        raise DataError(
            f"{spec}: {malformed} of {report.rows_in} rows are malformed ({malformed / report.rows_in:.1%} > "
            f"data.max_reject_ratio={limit:.1%}) as format {report.format}. First ones:\n  {shown}\n"
            f"All rejects: {kept}. Fix the file, set its `format:`, or raise data.max_reject_ratio.")


def _check_too_long_ratio(spec: str, report: SourceReport, cfg, rejects: Rejects) -> None:
    too_long, limit = report.dropped["too_long"], cfg.max_too_long_ratio
    if report.rows_in and too_long / report.rows_in > limit:
        kept = rejects.quarantine()
        raise DataError(
            f"{spec}: {too_long} of {report.rows_in} rows are longer than data.cleaning.max_tokens="
            f"{cfg.cleaning.max_tokens} tokens ({too_long / report.rows_in:.1%} > data.max_too_long_ratio="
            f"{limit:.1%}); the rows and their lengths: {kept}. Raise "
            f"cleaning.max_tokens (and the training max_length), or data.max_too_long_ratio.")


def _summary(kind: str, reports: dict[str, SourceReport], splits: dict[str, int], subsets: Counter) -> dict:
    dropped: Counter = Counter()
    modified: Counter = Counter()
    for r in reports.values():
        dropped.update(r.dropped)
        modified.update(r.modified)
    return {
        "kind": kind,
        "rows_in": sum(r.rows_in for r in reports.values()),
        "rows_out": sum(r.rows_out for r in reports.values()),
        "dropped": dict(sorted(dropped.items())),
        "modified": dict(sorted(modified.items())),
        "splits": splits,
        "subsets": dict(sorted(subsets.items())),
        "sources": {spec: r.as_dict() for spec, r in reports.items()},
    }


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare-data", help="ingest, clean, decontaminate and split one data kind")
    p.add_argument("--kind", required=True, choices=list(DATA_KINDS))
    p.add_argument("--input", action="append", default=[], metavar="FILE",
                   help="a .json/.jsonl/.jsonl.gz/.parquet file or hf:NAME[?name=CONFIG&split=SPLIT]; repeatable")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tokenizer", type=Path, help="base model folder, for the token-length filter")
    p.add_argument("--eval", type=Path, help="eval test.jsonl to decontaminate against")
    params_arg(p)
    p.set_defaults(run=lambda params, a: main(params, a.kind, a.input, a.out, a.tokenizer, a.eval))
