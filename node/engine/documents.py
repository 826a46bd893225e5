"""Finding input files and reading their documents (for `gradmesh data prepare` and
`gradmesh tokenizer train`).

This module owns the input side: which files a set of inputs names
(`collect_files`, `normalize_suffixes`, `DEFAULT_SUFFIXES`) and the documents
each holds (`read_documents`, the text, .jsonl and .parquet readers,
`BadRecordError`). `node.engine.prepare` tokenizes the documents into shards.

Documents: a text file (.txt, .md, .py, ... any suffix but the two below) is one
document, read as UTF-8 with undecodable bytes replaced; a `.jsonl` file holds
one document per line, the string under `text_field` (blank lines are
ignored); a `.parquet` file one per row of the string column `text_field`. A
null or empty text is skipped and counted (`skipped.empty`). A malformed
.jsonl line (not JSON, not an object, the field missing or not a string) is a
`BadRecordError` naming file:line, unless `skip_bad_records` is set, when it
is skipped and counted (`skipped.bad_records`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.errors import ConfigError, DataError

DEFAULT_SUFFIXES = frozenset({".txt", ".md", ".py", ".json", ".jsonl", ".parquet"})


class BadRecordError(DataError):
    """A .jsonl line or .parquet column that does not hold a document's text."""


# --- inputs ---------------------------------------------------------------------------------------
def normalize_suffixes(suffixes: Iterable[str]) -> frozenset[str]:
    """Accept "txt" as well as ".txt"."""
    if isinstance(suffixes, str):
        suffixes = [suffixes]  # a lone string would otherwise be split into characters
    result = frozenset(s if s.startswith(".") else f".{s}" for s in suffixes if s)
    if not result:
        raise ConfigError("no file suffixes given")
    return result


def collect_files(inputs: Sequence[Path], suffixes: frozenset[str]) -> list[tuple[str, Path]]:
    """(path relative to its input root, path): inputs in the given order, each sorted.

    A file named on the command line is taken whatever its suffix; folders are
    searched for files with one of `suffixes`.
    """
    found: list[tuple[str, Path]] = []
    for root in map(Path, inputs):
        if root.is_file():
            found.append((root.name, root))
        elif root.is_dir():
            files = [p for p in root.rglob("*") if p.is_file() and p.suffix in suffixes]
            found += sorted((p.relative_to(root).as_posix(), p) for p in files)
        else:
            raise DataError(f"input {root} is neither a file nor a directory")
    return found


def _cannot_read(path: Path, exc: OSError) -> DataError:
    return DataError(f"cannot read {path}: {exc.strerror or exc}")


def file_size(path: Path) -> int:
    """The size of an input file in bytes (a DataError if it cannot be read)."""
    try:
        return path.stat().st_size
    except OSError as exc:
        raise _cannot_read(path, exc) from None


# --- documents ------------------------------------------------------------------------------------
@dataclass
class Skipped:
    """Documents left out of one read: empty texts and (with skip_bad_records) bad records."""

    empty: int = 0
    bad_records: int = 0


def read_documents(path: Path, *, text_field: str = "text",
                   skip_bad_records: bool = False) -> Iterator[str]:
    """The non-empty documents of one input file, by its suffix (see the module docstring)."""
    for text, _ in documents_with_offsets(Path(path), text_field, skip_bad_records, Skipped()):
        yield text


def documents_with_offsets(path: Path, text_field: str, skip_bad: bool,
                           skipped: Skipped) -> Iterator[tuple[str, int]]:
    """(text, bytes of the file consumed so far) of each non-empty document."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl_documents(path, text_field, skip_bad, skipped)
    elif suffix == ".parquet":
        yield from _parquet_documents(path, text_field, skipped)
    else:
        yield from _text_document(path, skipped)


def _text_document(path: Path, skipped: Skipped) -> Iterator[tuple[str, int]]:
    """The whole file as one document, undecodable bytes replaced."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _cannot_read(path, exc) from None
    if data:
        yield data.decode("utf-8", errors="replace"), len(data)
    else:
        skipped.empty += 1


def _jsonl_documents(path: Path, text_field: str, skip_bad: bool,
                     skipped: Skipped) -> Iterator[tuple[str, int]]:
    consumed = 0
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise _cannot_read(path, exc) from None
    with fh:
        for number, line in enumerate(fh, start=1):
            consumed += len(line)
            if not line.strip():
                continue
            try:
                text = _jsonl_text(line, text_field)
            except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
                if skip_bad:
                    skipped.bad_records += 1
                    continue
                raise BadRecordError(f"{path}:{number}: bad record ({str(exc)[:200]})") from None
            if text:
                yield _valid_utf8(text), consumed
            else:
                skipped.empty += 1


def _jsonl_text(line: bytes, text_field: str) -> str | None:
    """The text of one .jsonl record (None for a null); ValueError saying what is wrong."""
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    if text_field not in record:
        raise ValueError(f"no field {text_field!r}")
    text = record[text_field]
    if text is not None and not isinstance(text, str):
        raise ValueError(f"field {text_field!r} is a {type(text).__name__}, not a string")
    return text


def _valid_utf8(text: str) -> str:
    """JSON may escape lone surrogates, which no UTF-8 tokenizer takes: replace them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="replace").decode("utf-8")
    return text


def _parquet_documents(path: Path, text_field: str,
                       skipped: Skipped) -> Iterator[tuple[str, int]]:
    """Each row's text, with the file's bytes consumed estimated from the row count."""
    import pyarrow as pa

    size, reader = _open_parquet(path)
    _check_text_column(path, reader.schema_arrow, text_field)
    total_rows = max(1, reader.metadata.num_rows)
    rows = 0
    try:
        for batch in reader.iter_batches(batch_size=1024, columns=[text_field]):
            texts = batch.column(0).to_pylist()
            for i, text in enumerate(texts, start=1):
                if text:
                    yield text, size * (rows + i) // total_rows
                else:
                    skipped.empty += 1
            rows += len(texts)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read parquet file {path}: {exc}") from None


def _open_parquet(path: Path) -> tuple[int, Any]:
    """(file size, pyarrow ParquetFile)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return path.stat().st_size, pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read parquet file {path}: {exc}") from None


def _check_text_column(path: Path, schema: Any, text_field: str) -> None:
    """The parquet schema has a string column named `text_field`."""
    import pyarrow as pa

    if text_field not in schema.names:
        raise BadRecordError(f"{path}: no column {text_field!r} (columns: "
                             f"{', '.join(schema.names[:20])})")
    kind = schema.field(text_field).type
    is_view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow >= 16
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or is_view(kind)):
        raise BadRecordError(f"{path}: column {text_field!r} is {kind}, not a string")
