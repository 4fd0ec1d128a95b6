"""Tables: documents that are rows of a text column, read through `datasets.load_dataset`.

    table = Table("rows.jsonl", recipe, [Path("rows.jsonl")])    # .jsonl/.json/.csv/.parquet files
    table = Table("user/name", recipe)                             # a Hub dataset
    table.load(cache_dir)                                          # checks text_column; n_documents
    for document in table.documents(): ...                         # one row's text per document

Local files are converted into Arrow files in cache_dir (a temporary folder of prepare), or
streamed with `streaming: true`; a Hub dataset goes through the Hugging Face cache as usual.
"""

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from hfgpt.config import Recipe
from hfgpt.core.errors import UserError, first_line

TABLES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
ROWS_PER_READ = 1000


class Table:
    """Rows of text_column from .jsonl/.json/.csv/.parquet files or a Hub dataset, through datasets."""

    def __init__(self, name: str, recipe: Recipe, paths: list[Path] | None = None):
        self.name, self.paths, self.recipe = name, paths, recipe
        self.dataset = None
        self.n_documents = None
        self.text_sha256 = hashlib.sha256()  # of the text as read: the content hash of a Hub dataset

    def load(self, cache_dir: Path) -> None:
        """Open the dataset (once) and check its text column; n_documents is known unless streaming."""
        if self.dataset is not None:
            return
        self.dataset = _load_dataset(self, cache_dir)
        column, names = self.recipe.data.text_column, _column_names(self.dataset)
        if column not in names:
            raise UserError(f"{self.name} has no column '{column}': its columns are {', '.join(names)}; "
                            f"set text_column to the one with the text, e.g. --text_column={names[0]}")
        kind = getattr(self.dataset.features.get(column) if self.dataset.features else None, "dtype", "string")
        if kind not in ("string", "large_string"):
            raise UserError(f"column '{column}' of {self.name} holds {kind}, not text: set text_column to a text column")
        if not self.recipe.data.streaming:
            self.n_documents = len(self.dataset)

    def documents(self) -> Iterator[Iterator[str]]:
        row = 0
        for column in _text_columns(self.dataset, self.recipe.data.text_column):
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
            return column.to_pylist()
        except UnicodeDecodeError:
            raw = column.cast(pa.large_binary()).to_pylist()
        errors = self.recipe.data.errors
        for i, value in enumerate(raw):
            try:
                raw[i] = None if value is None else value.decode("utf-8", errors)
            except UnicodeDecodeError as e:
                raise UserError(f"{self.name} is not UTF-8 at row {first_row + i + 1:,}, byte {e.start:,} of its "
                                f"{self.recipe.data.text_column} ({e.reason}): convert it to UTF-8, or set errors: "
                                "replace (or --errors=replace) to write U+FFFD for such bytes") from None
        return raw


def _load_dataset(table: Table, cache_dir: Path):
    import datasets

    d = table.recipe.data
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
            cause = e.__cause__ or e
            raise UserError(f"could not read {table.name} as {builder} ({first_line(cause)}): check the file, "
                            "or set errors: replace for bytes that are not UTF-8") from None
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
