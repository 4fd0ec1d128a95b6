"""Tables: documents that are rows of a text column, read through `datasets.load_dataset`.

    table = Table("rows.jsonl", recipe.data, [Path("rows.jsonl")])   # .jsonl/.json/.csv/.parquet files
    table = Table("user/name", recipe.data)                          # a Hub dataset
    table.load(cache_dir)                                          # checks text_column; n_documents
    for document in table.documents(): ...                         # one row's text per document

Local files are converted into Arrow files in cache_dir (a temporary folder of prepare), or
streamed with `streaming: true`; a Hub dataset goes through the Hugging Face cache as usual.
"""

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hfgpt.config import DataConfig
from hfgpt.core.errors import UserError, first_line

TABLES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
ROWS_PER_READ = 1000


class Table:
    """Rows of text_column from .jsonl/.json/.csv/.parquet files or a Hub dataset, through datasets."""

    def __init__(self, name: str, data: DataConfig, paths: list[Path] | None = None):
        self.name, self.paths, self.data = name, paths, data
        self.dataset = None
        self.n_documents = None
        self.text_sha256 = hashlib.sha256()  # of the text as read: the content hash of a Hub dataset

    def load(self, cache_dir: Path) -> None:
        """Open the dataset (once) and check its text column; n_documents is known unless streaming."""
        if self.dataset is not None:
            return
        self.dataset = _load_dataset(self, cache_dir)
        with _reading(self):  # a stream reads its first row here
            column, names = self.data.text_column, _column_names(self.dataset)
        if column not in names:
            raise UserError(f"{self.name} has no column '{column}': its columns are {', '.join(names)}; "
                            f"set text_column to the one with the text, e.g. --text_column={names[0]}")
        feature = self.dataset.features.get(column) if self.dataset.features else None
        kind = "string" if feature is None else getattr(feature, "dtype", None) or type(feature).__name__
        if kind not in ("string", "large_string") or not isinstance(feature, (type(None), _value_type())):
            shown = kind if isinstance(feature, _value_type()) or feature is None else f"{type(feature).__name__} values"
            raise UserError(f"column '{column}' of {self.name} holds {shown}, not text: set text_column to a text column")
        if not self.data.streaming:
            self.n_documents = len(self.dataset)

    def documents(self) -> Iterator[Iterator[str]]:
        row = 0
        with _reading(self):  # a stream meets a bad line only as it reads it
            for column in _text_columns(self.dataset, self.data.text_column):
                for text in self._decode(column, row):
                    if text and self.paths is None:  # files are hashed as files
                        self.text_sha256.update(text.encode("utf-8", "surrogatepass"))
                    yield iter((text,) if text else ())
                row += len(column)

    def _decode(self, column, first_row: int) -> list:
        """The column's texts. Arrow's JSON reader keeps bytes that are not UTF-8: they stop with the
        row (errors='strict') or are replaced / dropped as `errors` says."""
        import pyarrow as pa

        try:
            texts = column.to_pylist()
        except UnicodeDecodeError:
            raw = column.cast(pa.large_binary()).to_pylist()
        else:
            for i, text in enumerate(texts):
                if text is not None and not isinstance(text, str):  # a stream's column kind shows only here
                    raise UserError(f"column '{self.data.text_column}' of {self.name} holds "
                                    f"{type(text).__name__} values (row {first_row + i + 1:,}), not text: set "
                                    "text_column to a text column")
            return texts
        errors = self.data.errors
        for i, value in enumerate(raw):
            try:
                raw[i] = None if value is None else value.decode("utf-8", errors)
            except UnicodeDecodeError as e:
                raise UserError(f"{self.name} is not UTF-8 at row {first_row + i + 1:,}, byte {e.start:,} of its "
                                f"{self.data.text_column} ({e.reason}): convert it to UTF-8, or set errors: "
                                "replace (or --errors=replace) to write U+FFFD for such bytes") from None
        return raw


def _load_dataset(table: Table, cache_dir: Path):
    import datasets

    d = table.data
    if table.paths is not None:
        builder = TABLES[table.paths[0].suffix.lower()]
        options = {"encoding_errors": d.errors} if builder in ("json", "csv") else {}
        quiet, verbosity = not datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
        datasets.disable_progress_bars()  # converting local files is quick: the tokenizing bar is the one to watch
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its "Failed to read file" duplicates our error
        try:
            return datasets.load_dataset(builder, data_files=[str(p) for p in table.paths], split="train",
                                         streaming=d.streaming, cache_dir=str(cache_dir), **options)
        except (ValueError, OSError, datasets.exceptions.DatasetGenerationError) as e:
            raise UserError(read_problem(table, e)) from None
        finally:
            datasets.logging.set_verbosity(verbosity)
            if not quiet:
                datasets.enable_progress_bars()
    try:
        return datasets.load_dataset(table.name, d.source_config, split=d.source_split, streaming=d.streaming)
    except ConnectionError as e:
        offline = "Offline" in str(e) or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "")
        where = "is not in the local cache and the Hub is offline (HF_HUB_OFFLINE=1)" if offline else \
            f"could not be reached ({first_line(e)})"
        raise UserError(f"source {table.name} is not a local path, and as a Hub dataset it {where}: check the "
                        f"path, or with network access run once to cache it (hf download --repo-type dataset "
                        f"{table.name})") from None
    except (datasets.exceptions.DatasetNotFoundError, FileNotFoundError) as e:
        raise UserError(f"source {table.name} is not a local path nor a dataset on the Hub ({first_line(e)}): "
                        "check the spelling, or log in (hf auth login) for a private dataset") from None
    except ValueError as e:
        raise UserError(f"Hub dataset {table.name} (source_config={d.source_config}, source_split={d.source_split}) "
                        f"could not be loaded: {first_line(e)}") from None


def _value_type():
    import datasets

    return datasets.Value


@contextmanager
def _reading(table: Table) -> Iterator[None]:
    """A table file that fails while it is read (datasets' and Arrow's errors) as one line."""
    import datasets

    try:
        yield
    except (ValueError, OSError, datasets.exceptions.DatasetGenerationError) as e:
        raise UserError(read_problem(table, e)) from None


def read_problem(table: Table, e: BaseException) -> str:
    """The one line for a table file datasets could not read: the line of a .jsonl file that is not a
    JSON object, bytes that are not UTF-8 (with errors: replace as the way round), or the reader's
    own words."""
    cause = e.__cause__ or e
    for path in table.paths or []:
        if path.suffix.lower() == ".jsonl" and (bad := _bad_json_line(path)):
            line, why = bad
            return f"{path} line {line:,} is not a JSON object ({why}): fix that line (one JSON object per line)"
    fmt = TABLES[table.paths[0].suffix.lower()] if table.paths else "a dataset"
    utf8 = all(_is_utf8(path) for path in table.paths or [])
    return (f"could not read {table.name} as {fmt} ({first_line(cause)}): check the file"
            + ("" if utf8 else ", or set errors: replace for its bytes that are not UTF-8"))


def _bad_json_line(path: Path) -> tuple[int, str] | None:
    """(line number, why) of the first line of a JSON Lines file that is not a JSON object, or None."""
    import json

    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except UnicodeDecodeError:
                return None  # an encoding problem, not a JSON one
            except ValueError as e:
                return number, first_line(e)
            if not isinstance(row, dict):
                return number, f"a JSON {type(row).__name__}"
    return None


def _is_utf8(path: Path) -> bool:
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                decoder.decode(block)
            decoder.decode(b"", final=True)
    except (UnicodeDecodeError, OSError):
        return False
    return True


def _column_names(dataset) -> list[str]:
    names = list(dataset.column_names or dataset.features or [])
    if not names:  # a stream whose features are unknown until read
        names = list(next(iter(dataset), {}).keys())
    return names


def _text_columns(dataset, column: str) -> Iterator:
    """The text column, a batch of rows at a time, in dataset order. A Dataset that is exactly its
    Arrow files is read with plain reads rather than through ds.iter's memory map: mapped pages
    count as resident, so RSS would grow to the dataset's size."""
    import pyarrow as pa

    if _is_its_files(dataset):
        for cache in dataset.cache_files:
            with pa.OSFile(cache["filename"]) as f:
                for batch in pa.ipc.open_stream(f):
                    yield batch.column(column)
        return
    for batch in dataset.select_columns([column]).with_format("arrow").iter(batch_size=ROWS_PER_READ):
        yield batch.column(column)


def _is_its_files(dataset) -> bool:
    """Whether a Dataset's rows are all the rows of its cache files, in order: no indices mapping and
    no slice (source_split: train[:10%] keeps the whole file). Counting the rows through a memory
    map reads only the batch headers."""
    import datasets
    import pyarrow as pa

    if not isinstance(dataset, datasets.Dataset) or not dataset.cache_files or dataset._indices is not None:
        return False
    rows = 0
    for cache in dataset.cache_files:
        with pa.memory_map(cache["filename"]) as f:
            rows += sum(batch.num_rows for batch in pa.ipc.open_stream(f))
    return rows == len(dataset)
