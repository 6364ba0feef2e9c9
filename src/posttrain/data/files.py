"""A data file as users have it: its compression, encoding and layout found from its bytes, never
from its name (a `.json` file is often JSON Lines, a `.txt` a CSV export, a `.gz` anything).

`read(path, spec, info, is_record)` yields one `Record` per row, streaming, and fills `info` with
what it found (`container`, `encoding`, `layout`, and the `key` of a JSON object that wraps the
rows), which the data stage writes into report.json. What cannot be read fails with a message that
names what was seen and what to do."""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import json
import lzma
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


class RowError(ValueError):
    """A record that cannot be used; `reason` is a short counter key (`missing_field`, ...)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Record:
    locator: str          # "file:line", "file#index" or "file:row N": where to look when something is wrong
    data: dict | None     # None when the line itself could not be parsed
    error: RowError | None = None
    raw: str | None = None  # the unparseable text, kept for the quarantine file


COMPRESSION = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\xfd7zXZ\x00", "xz"))
# UTF-32's marks first: UTF-32 LE's starts with UTF-16 LE's.
BOMS = ((codecs.BOM_UTF32_LE, "utf-32", "UTF-32"), (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
        (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"), (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
        (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"))
# Keys under which a JSON object may hold the rows, in the order they are preferred.
WRAPPER_KEYS = ("data", "train", "rows", "examples", "records", "instances", "items")
CSV_DELIMITERS = ",\t;|"
CHUNK = 1 << 20


def read(path: Path, spec: str, info: dict, is_record: Callable[[dict], bool]) -> Iterator[Record]:
    """The rows of a file or a `datasets.save_to_disk` folder. `is_record` tells a record of a known
    format (`{"messages": [...]}`) from an object wrapping the rows (`{"train": [...]}`)."""
    if path.is_dir():
        yield from _saved_dataset(path, spec, info)
        return
    with open(path, "rb") as raw:
        head = raw.read(8)
    if head.startswith(b"PAR1"):
        info.update(container="parquet", layout="parquet")
        yield from _parquet(path, spec)
        return
    if head.startswith(b"PK\x03\x04"):
        raise ValueError(f"{spec}: a zip archive; unpack it and list the file inside as the source")
    container = next((name for magic, name in COMPRESSION if head.startswith(magic)), None)
    info["container"] = container or "plain"
    with _open(path, container) as stream:
        text = _decode(stream, spec, info)
        yield from _rows(text, spec, info, is_record)


def _open(path: Path, container: str | None):
    if container == "gzip":
        return gzip.open(path, "rb")
    if container == "bz2":
        return bz2.open(path, "rb")
    if container == "xz":
        return lzma.open(path, "rb")
    if container == "zstd":           # pyarrow carries the codec; no extra package
        import pyarrow as pa

        return pa.CompressedInputStream(pa.OSFile(str(path)), "zstd")
    return open(path, "rb")


def _decode(stream, spec: str, info: dict) -> io.TextIOBase:
    """A text stream with universal newlines (LF, CRLF and CR alike), in the encoding its
    byte-order mark names, UTF-8 without one."""
    buffered = io.BufferedReader(stream) if not isinstance(stream, io.BufferedReader) else stream
    head = buffered.peek(64)[:64]
    encoding, name = next(((enc, name) for bom, enc, name in BOMS if head.startswith(bom)), ("utf-8", "UTF-8"))
    if encoding == "utf-8" and b"\x00" in head:
        raise ValueError(f"{spec}: has NUL bytes in its first {len(head)} bytes but no byte-order mark: it looks like "
                         f"UTF-16 or UTF-32 saved without one; save it as UTF-8 (or UTF-16 with a byte-order mark)")
    info["encoding"] = name + (" with byte-order mark" if head.startswith(tuple(b for b, _, _ in BOMS)) else "")
    return io.TextIOWrapper(buffered, encoding=encoding, newline=None)


def _rows(text: io.TextIOBase, spec: str, info: dict, is_record) -> Iterator[Record]:
    try:
        head = text.read(CHUNK)
        body = head.lstrip()
        text = _Prefixed(body, text)
        if body[:1] == "[":
            info["layout"] = "json array"
            yield from _json_array(text, spec)
        elif body[:1] == "{":
            yield from _json_objects(text, spec, info, is_record)
        elif body:
            yield from _delimited(text, spec, info)
    except UnicodeDecodeError as err:
        raise ValueError(f"{spec}: not valid {info.get('encoding', 'UTF-8')} (byte 0x{err.object[err.start]:02x}: "
                         f"{err.reason}); save it as UTF-8") from None


class _Prefixed(io.TextIOBase):
    """A text stream whose first part was read already (to look at it): that part, then the rest."""

    def __init__(self, prefix: str, rest: io.TextIOBase):
        self._head, self._rest = io.StringIO(prefix), rest

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> str:
        if n is None or n < 0:
            return self._head.read() + self._rest.read()
        out = self._head.read(n)
        return out + self._rest.read(n - len(out)) if len(out) < n else out

    def readline(self, limit: int = -1) -> str:
        line = self._head.readline()
        return line if line.endswith("\n") else line + self._rest.readline()

    def __next__(self) -> str:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


def _json_array(text: io.TextIOBase, spec: str) -> Iterator[Record]:
    """The elements of a JSON array, decoded one at a time as the file is read."""
    decoder = json.JSONDecoder()
    buf, pos, index, done = text.read(CHUNK).lstrip()[1:], 0, 0, False
    while True:
        while pos < len(buf) and buf[pos] in " \t\r\n,":
            pos += 1
        if pos < len(buf) and buf[pos] == "]":
            return
        try:
            value, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError as err:
            more = "" if done else text.read(CHUNK)
            if not more:
                done = True
                if pos >= len(buf):
                    raise ValueError(f"{spec}: the JSON array is not closed (no ']' at the end)") from None
                raise ValueError(f"{spec}: not valid JSON in element {index} of the array: {err.msg}") from None
            buf, pos = buf[pos:] + more, 0
            continue
        yield _object(f"{spec}#{index}", value)
        index, pos = index + 1, end
        if pos > CHUNK:
            buf, pos = buf[pos:], 0


def _object(locator: str, value) -> Record:
    if isinstance(value, dict):
        return Record(locator, value)
    return Record(locator, None, RowError("wrong_type", f"record is {type(value).__name__}, not an object"),
                  json.dumps(value))


def _json_objects(text: io.TextIOBase, spec: str, info: dict, is_record) -> Iterator[Record]:
    """JSON Lines, or one JSON object: a wrapper of the rows (`{"train": [...]}`), or a single
    record written over several lines."""
    first = text.readline()
    try:
        value = json.loads(first)
    except json.JSONDecodeError:
        value = None
    if value is not None:                         # the first line is a whole object
        rest = text.read() if _wrapper(value, is_record) else None
        if rest is not None and not rest.strip():
            yield from _unwrap(value, spec, info, is_record)
            return
        info["layout"] = "json lines"
        yield _parse_line(f"{spec}:1", first)
        yield from _lines(io.StringIO(rest) if rest is not None else text, spec, start=2)
        return
    document = first + text.read()                # an object over several lines?
    try:
        value = json.loads(document)
    except json.JSONDecodeError:
        info["layout"] = "json lines"
        yield from _lines(io.StringIO(document), spec)
        return
    if _wrapper(value, is_record):
        yield from _unwrap(value, spec, info, is_record)
    else:
        info["layout"] = "json object"
        yield _object(f"{spec}:1", value)


def _wrapper(value, is_record) -> bool:
    return isinstance(value, dict) and not is_record(value) and _wrapped(value) is not None


def _unwrap(value: dict, spec: str, info: dict, is_record) -> Iterator[Record]:
    key = _wrapped(value)
    info.update(layout="json object", key=key)
    for i, row in enumerate(value[key]):
        yield _object(f"{spec}#{key}[{i}]", row)


def _wrapped(value: dict) -> str | None:
    """The key of a dict whose value is the list of rows: a preferred name, else the only list."""
    lists = [k for k, v in value.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
    return next((k for k in WRAPPER_KEYS if k in lists), lists[0] if len(lists) == 1 else None)


def _lines(text: io.TextIOBase, spec: str, start: int = 1) -> Iterator[Record]:
    for n, line in enumerate(text, start):
        if line.strip():
            yield _parse_line(f"{spec}:{n}", line)


def _parse_line(locator: str, line: str) -> Record:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        return Record(locator, None, RowError("malformed_json", f"{err.msg} at column {err.colno}"), line.rstrip("\n"))
    if not isinstance(data, dict):
        return Record(locator, None, RowError("wrong_type", f"record is {type(data).__name__}, not an object"),
                      line.rstrip("\n"))
    return Record(locator, data)


def _delimited(text: io.TextIOBase, spec: str, info: dict) -> Iterator[Record]:
    """CSV or TSV with a header row. A cell holding a JSON list or object (a `messages` column)
    is decoded."""
    sample = text.read(64 * 1024)
    header = sample.split("\n", 1)[0]
    try:
        dialect = csv.Sniffer().sniff("\n".join(sample.split("\n", 20)[:20]), delimiters=CSV_DELIMITERS)
        if dialect.delimiter not in header:
            raise csv.Error("the header has no delimiter")
    except csv.Error:
        if re.fullmatch(r"[A-Za-z_][\w ]*", header.strip()):       # one column: its name is the header
            dialect = csv.excel
        else:
            raise ValueError(f"{spec}: not JSON, JSON Lines, CSV or TSV: it starts with {sample[:60]!r}; supported: "
                         f"JSON (an array, or an object holding the rows), JSON Lines, CSV/TSV with a header, "
                             f"Parquet, a datasets folder, each plain or gzip/bz2/xz/zstd-compressed") from None
    info["layout"] = {"\t": "tsv"}.get(dialect.delimiter, f"csv (delimiter {dialect.delimiter!r})")
    reader = csv.DictReader(_chain(sample, text), dialect=dialect)
    for row in reader:
        locator = f"{spec}:{reader.line_num}"
        if None in row or None in row.values():
            yield Record(locator, None, RowError("malformed_csv", f"{len(row) - (None in row)} field(s) where the "
                                                 f"header has {len(reader.fieldnames)}"), json.dumps(row, default=str))
            continue
        yield Record(locator, {k: _cell(v) for k, v in row.items()})


def _chain(sample: str, text: io.TextIOBase) -> Iterator[str]:
    yield from io.StringIO(sample + text.readline())
    yield from text


def _cell(value: str):
    stripped = value.strip()
    if stripped[:1] in "[{" and stripped[-1:] in "]}":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            pass
    return value


def _parquet(path: Path, spec: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            yield Record(f"{spec}:row {n}", row)


def _saved_dataset(path: Path, spec: str, info: dict) -> Iterator[Record]:
    """A folder written by `datasets`' `save_to_disk`."""
    if (path / "dataset_dict.json").exists():
        splits = sorted(p.name for p in path.iterdir() if (p / "state.json").exists())
        raise ValueError(f"{spec}: a DatasetDict saved with save_to_disk, splits {splits}; list one split's folder "
                         f"as the source, e.g. {path / (splits[0] if splits else 'train')}")
    if not (path / "state.json").exists():
        raise ValueError(f"{spec}: a folder, but not one written by datasets' save_to_disk (no state.json); list "
                         f"the data files inside it as sources")
    from datasets import load_from_disk

    info.update(container="datasets folder", layout="arrow")
    for i, row in enumerate(load_from_disk(str(path))):
        yield Record(f"{spec}#{i}", dict(row))
