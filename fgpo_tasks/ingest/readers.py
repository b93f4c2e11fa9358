"""Finding a source's files and reading their rows; a row that cannot be read becomes a Rejected.

A source is a file, a folder (every data file under it), a glob, or a Hugging Face hub dataset id.
Rows are numbered 1-based: the physical line in JSONL, the data row (header excluded) in CSV, the
row index in Parquet, a JSON array and a hub split. Blank JSONL lines are not rows.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from fgpo_tasks import jsonio
from fgpo_tasks.errors import InputError

log = logging.getLogger(__name__)

EXTENSIONS = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
RAW_LIMIT = 2048  # bytes of a quarantined row kept in quarantine.parquet
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by surrogateescape


@dataclass
class SourceFile:
    display: str                 # how messages and the quarantine name it (path as the user gave it)
    rel: str                     # name relative to the source argument (the pair's ``source``)
    path: Path | None = None     # None for a hub split
    hub_id: str | None = None


@dataclass
class Source:
    arg: str
    kind: str                    # file | folder | glob | hub | synthetic
    basename: str                # the default batch id
    files: list[SourceFile] = field(default_factory=list)


@dataclass
class Row:
    file: SourceFile
    line: int
    data: dict
    raw: str | None = None       # the raw text when there is one (JSONL); else rebuilt on demand
    loose: bool = False          # values came as text (CSV): numbers may be numeric strings


@dataclass
class Rejected:
    file: SourceFile
    line: int | None
    field: str | None
    kind: str                    # short category, counted in the manifest
    reason: str                  # what a person reads
    raw: str = ""


def truncate_raw(raw: str | bytes | None) -> str:
    """At most RAW_LIMIT bytes of the raw row, as text (bytes that are not UTF-8 shown as \\xNN)."""
    if raw is None:
        return ""
    if isinstance(raw, str):
        raw = to_bytes(raw)
    text = raw[:RAW_LIMIT].decode("utf-8", "backslashreplace")
    encoded = text.encode("utf-8")
    return encoded[:RAW_LIMIT].decode("utf-8", "ignore") if len(encoded) > RAW_LIMIT else text


def to_bytes(text: str) -> bytes:
    """UTF-8 bytes of text that may hold undecodable bytes (surrogateescape) or lone surrogates."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def row_raw(row: Row) -> str:
    if row.raw is not None:
        return truncate_raw(row.raw)
    return truncate_raw(jsonio.dumps(row.data, ensure_ascii=False, default=str))


# ---------------------------------------------------------------------------- resolving sources

def resolve_source(arg: str, fmt: str, hub_split: str = "train") -> Source:
    """The files behind one --source argument; InputError when there are none."""
    if fmt == "synthetic":  # generated, nothing to read: the argument is only a name
        return Source(arg, "synthetic", Path(arg).stem or "synthetic")
    if arg.startswith("hf:"):
        return _hub_source(arg[3:], hub_split)
    path = Path(arg)
    if path.is_file():
        _check_extension(path)
        return Source(arg, "file", path.stem, [SourceFile(arg, path.name, path)])
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _is_data_file(p)
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise InputError(f"no data files ({', '.join(EXTENSIONS)}) in folder", file=arg)
        return Source(arg, "folder", path.resolve().name,
                      [SourceFile(str(p), p.relative_to(path).as_posix(), p) for p in files])
    if glob.has_magic(arg):
        matches = sorted(Path(p) for p in glob.glob(arg, recursive=True) if Path(p).is_file())
        if not matches:
            raise InputError("glob matches no file", file=arg)
        for p in matches:
            _check_extension(p)
        root = _glob_root(arg)
        return Source(arg, "glob", root.resolve().name or "data",
                      [SourceFile(str(p), _relative(p, root), p) for p in matches])
    if _HUB_ID.match(arg) and path.suffix.lower() not in EXTENSIONS:
        return _hub_source(arg, hub_split)
    raise InputError("no such file or folder", file=arg)


def _hub_source(dataset_id: str, split: str) -> Source:
    return Source(dataset_id, "hub", dataset_id.rstrip("/").split("/")[-1],
                  [SourceFile(f"{dataset_id}[{split}]", split, None, hub_id=dataset_id)])


def _is_data_file(p: Path) -> bool:
    return p.suffix.lower() in EXTENSIONS


def _check_extension(p: Path) -> None:
    if not _is_data_file(p):
        raise InputError(f"unsupported file type {p.suffix!r}; expected one of {', '.join(EXTENSIONS)}",
                         file=str(p))


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _relative(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.name


# ---------------------------------------------------------------------------- reading rows

def read_rows(sf: SourceFile, max_row_bytes: int, hub_options: dict | None = None
              ) -> Iterator[Row | Rejected]:
    """Every row of one file (or hub split), in order; InputError when it holds no row at all."""
    if sf.hub_id is not None:
        reader = _read_hub(sf, max_row_bytes, hub_options or {})
    else:
        if sf.path.stat().st_size == 0:
            raise InputError("file is empty", file=sf.display)
        suffix = sf.path.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            reader = _read_jsonl(sf, max_row_bytes)
        elif suffix == ".json":
            reader = _read_json(sf, max_row_bytes)
        elif suffix == ".csv":
            reader = _read_csv(sf, max_row_bytes)
        elif suffix == ".parquet":
            reader = _read_parquet(sf, max_row_bytes)
        else:
            raise InputError(f"unsupported file type {suffix!r}", file=sf.display)
    n = 0
    try:
        for item in reader:
            n += 1
            yield item
    except OSError as e:  # unreadable file, permission denied, a folder vanished mid-read
        raise InputError(f"cannot read: {e.strerror or e}", file=sf.display) from None
    if n == 0:
        raise InputError("file is empty (no rows)", file=sf.display)


def _too_big(sf: SourceFile, line: int, size: int, limit: int, raw) -> Rejected:
    return Rejected(sf, line, None, "row_too_large",
                    f"row is {size:,} bytes, over max_row_bytes={limit:,}", truncate_raw(raw))


def _read_jsonl(sf: SourceFile, max_row_bytes: int) -> Iterator[Row | Rejected]:
    with open(sf.path, "rb") as fh:
        line = 0
        while True:
            # Read at most max_row_bytes + 1: an enormous line is skipped, never held in memory.
            chunk = fh.readline(max_row_bytes + 1)
            if not chunk:
                return
            line += 1
            if not chunk.endswith(b"\n") and len(chunk) > max_row_bytes:
                head, size = chunk[:RAW_LIMIT], len(chunk)
                while rest := fh.readline(1 << 20):
                    size += len(rest)
                    if rest.endswith(b"\n"):
                        size -= 1
                        break
                yield _too_big(sf, line, size, max_row_bytes, head)
                continue
            raw = chunk.rstrip(b"\r\n")
            if line == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            yield _parse_json_line(sf, line, raw)


def _parse_json_line(sf: SourceFile, line: int, raw: bytes) -> Row | Rejected:
    try:
        text, bad_byte = raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        text, bad_byte = raw.decode("utf-8", "surrogateescape"), e.start
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if bad_byte is not None:
            return Rejected(sf, line, None, "invalid_utf8", f"invalid UTF-8 at byte {bad_byte}",
                            truncate_raw(raw))
        return Rejected(sf, line, None, "malformed_json",
                        f"malformed JSON: {e.msg} (column {e.colno})", truncate_raw(raw))
    if not isinstance(data, dict):
        return Rejected(sf, line, None, "not_an_object",
                        f"expected a JSON object, got {type(data).__name__}", truncate_raw(raw))
    if bad_byte is not None:
        bad_field = next((k for k, v in data.items() if _has_surrogate(k) or _has_surrogate(v)), None)
        return Rejected(sf, line, bad_field, "invalid_utf8", f"invalid UTF-8 at byte {bad_byte}",
                        truncate_raw(raw))
    return Row(sf, line, data, raw=text)


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


def _sized(sf: SourceFile, line: int, data: Any, max_row_bytes: int, loose: bool = False
           ) -> Row | Rejected:
    """A row already parsed (JSON array, Parquet, hub): checks its size and that it is a mapping."""
    raw = jsonio.dumps(data, ensure_ascii=False, default=str)
    size = len(to_bytes(raw))
    if size > max_row_bytes:
        return _too_big(sf, line, size, max_row_bytes, raw)
    if not isinstance(data, dict):
        return Rejected(sf, line, None, "not_an_object",
                        f"expected an object, got {type(data).__name__}", truncate_raw(raw))
    return Row(sf, line, data, raw=raw, loose=loose)


def _read_json(sf: SourceFile, max_row_bytes: int) -> Iterator[Row | Rejected]:
    """A JSON array of objects (or {key: [objects]}); JSON Lines saved as .json reads as JSONL."""
    try:
        data = json.loads(sf.path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start})", file=sf.display) from None
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several JSON values: JSON Lines with a .json name
            yield from _read_jsonl(sf, max_row_bytes)
            return
        raise InputError(f"malformed JSON: {e.msg}", file=sf.display, line=e.lineno) from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise InputError("expected a JSON array of rows (or an object holding one array)",
                             file=sf.display)
        data = lists[0]
    if not isinstance(data, list):
        raise InputError(f"expected a JSON array of rows, got {type(data).__name__}", file=sf.display)
    for i, item in enumerate(data, start=1):
        yield _sized(sf, i, item, max_row_bytes)


def _read_csv(sf: SourceFile, max_row_bytes: int) -> Iterator[Row | Rejected]:
    # Sizes are checked per row below, so the csv module's own field limit only guards memory.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    with open(sf.path, newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            if header is None:
                return
            if any(_has_surrogate(h) for h in header):
                raise InputError("invalid UTF-8 in the header", file=sf.display, line=1)
            for i, values in enumerate(reader, start=1):
                if not values:
                    continue
                raw = _csv_line(values)
                size = len(to_bytes(raw))
                if size > max_row_bytes:
                    yield _too_big(sf, i, size, max_row_bytes, raw)
                elif len(values) != len(header):
                    yield Rejected(sf, i, None, "malformed_csv", f"row has {len(values)} fields, "
                                   f"the header {len(header)}", truncate_raw(raw))
                elif bad := next((h for h, v in zip(header, values) if _has_surrogate(v)), None):
                    yield Rejected(sf, i, bad, "invalid_utf8", "invalid UTF-8", truncate_raw(raw))
                else:
                    yield Row(sf, i, dict(zip(header, values)), raw=raw, loose=True)
        except csv.Error as e:
            raise InputError(f"unreadable CSV: {e}", file=sf.display, line=reader.line_num) from None


def _csv_line(values: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(values)
    return buf.getvalue().rstrip("\r\n")


def _read_parquet(sf: SourceFile, max_row_bytes: int) -> Iterator[Row | Rejected]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(sf.path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"not a readable Parquet file: {e}", file=sf.display) from None
    line = 0
    for batch in pf.iter_batches(batch_size=1024):
        for data in batch.to_pylist():
            line += 1
            yield _sized(sf, line, data, max_row_bytes)


def load_hub_dataset(dataset_id: str, *, name: str | None, split: str, revision: str | None):
    """``datasets.load_dataset`` for one split; tests replace this (or the loader) offline."""
    import datasets

    return datasets.load_dataset(dataset_id, name, split=split, revision=revision)


def _read_hub(sf: SourceFile, max_row_bytes: int, options: dict) -> Iterator[Row | Rejected]:
    try:
        ds = load_hub_dataset(sf.hub_id, name=options.get("name"), split=options["split"],
                              revision=options.get("revision"))
    except Exception as e:  # noqa: BLE001 - network, auth, missing split: all one user-facing error
        raise InputError(f"not a local path, and loading it as a Hugging Face dataset failed: "
                         f"{type(e).__name__}: {e}", file=sf.hub_id) from None
    for i, data in enumerate(ds, start=1):
        yield _sized(sf, i, dict(data) if hasattr(data, "keys") else data, max_row_bytes)
