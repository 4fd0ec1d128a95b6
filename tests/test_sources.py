"""Every kind of source prepares into documents split by a seeded draw and trains; bad sources fail
with one line and leave nothing behind."""

import hashlib
import json
import os
import subprocess
import textwrap

import numpy as np
import pandas as pd
import pytest
from transformers import PreTrainedTokenizerFast

from hfgpt import prepare, train
from hfgpt.core.errors import UserError
from hfgpt.data.sources import read_pieces
from tests.conftest import PYTHON, TINY, LocalServer, run_env
from tests.tools.fake_hub import FakeHub

N_ROWS = 60
QUICK = {**TINY, "max_iters": 4, "eval_interval": 4, "eval_iters": 2, "warmup_iters": 1, "lr_decay_iters": 4}


@pytest.fixture(scope="session")
def paragraphs(shakespeare_text) -> list[str]:
    return [p for p in shakespeare_text.split("\n\n") if p.strip()]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, paragraphs):
    """The same kinds of text a user brings: a folder of .txt files (and a .md file the default
    glob skips), and N_ROWS documents as .jsonl, .json, .csv (column 'body') and .parquet."""
    d = tmp_path_factory.mktemp("corpus")
    for i in range(12):
        path = d / "docs" / ("deep" if i % 2 else "") / f"part{i:02d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n\n".join(paragraphs[i * 40:(i + 1) * 40]) + "\n", encoding="utf-8")
    (d / "docs" / "README.md").write_text("# not text for the model\n")
    rows = paragraphs[500:500 + N_ROWS]
    with open(d / "rows.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(rows):
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    (d / "rows.json").write_text(json.dumps([{"text": t, "id": i} for i, t in enumerate(rows)]))
    pd.DataFrame({"body": rows, "id": range(N_ROWS)}).to_csv(d / "rows.csv", index=False)
    pd.DataFrame({"text": rows, "id": range(N_ROWS)}).to_parquet(d / "rows.parquet")
    return d


def documents_of(folder, meta) -> dict[str, list[str]]:
    """Each split's token files decoded and cut at the end-of-text id: the documents it holds."""
    tok = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
    out = {}
    for split in ("train", "val"):
        ids = np.concatenate([np.fromfile(folder / e["file"], dtype=meta["dtype"]) for e in meta["shards"][split]])
        ends = np.flatnonzero(ids == meta["eot_token_id"])
        assert len(ids) and ends[-1] == len(ids) - 1  # every document ends with the separator
        out[split] = [tok.decode(doc.tolist()) for doc in np.split(ids[:-1], ends[:-1] + 1)]
        out[split] = [d[:-len("<|endoftext|>")] if d.endswith("<|endoftext|>") else d for d in out[split]]
    return out


def quick_recipe(workdir, **values):
    path = workdir / "r.yaml"
    path.write_text(json.dumps({**QUICK, "out_dir": str(workdir / "out"), **values}))
    return str(path)


def expected_documents(corpus, kind, paragraphs) -> list[str]:
    files = sorted((corpus / "docs").glob("**/*.txt"))
    texts = [f.read_text(encoding="utf-8") for f in files]
    rows = paragraphs[500:500 + N_ROWS]
    return {"folder": texts, "glob": texts, "list": texts + rows, "jsonl": rows, "json": rows, "csv": rows,
            "parquet": rows, "jsonl-streaming": rows}[kind]


SOURCES = {
    "folder": {"source": "{c}/docs"},
    "glob": {"source": "{c}/docs/**/*.txt"},
    "list": {"source": ["{c}/docs", "{c}/rows.parquet"]},
    "jsonl": {"source": "{c}/rows.jsonl"},
    "json": {"source": "{c}/rows.json"},
    "csv": {"source": "{c}/rows.csv", "text_column": "body"},
    "parquet": {"source": "{c}/rows.parquet"},
    "jsonl-streaming": {"source": "{c}/rows.jsonl", "streaming": True},
}


@pytest.mark.e2e
@pytest.mark.parametrize("kind", SOURCES)
def test_source_prepares_by_document_and_trains(kind, corpus, paragraphs, workdir):
    values = {k: (v.format(c=corpus) if isinstance(v, str) else [x.format(c=corpus) for x in v] if isinstance(v, list)
                  else v) for k, v in SOURCES[kind].items()}
    assert train.main([quick_recipe(workdir, **values)]) == 0
    folder = workdir / "data" / "tiny"
    meta = json.loads((folder / "meta.json").read_text())
    expected = expected_documents(corpus, kind, paragraphs)
    got = documents_of(folder, meta)
    # every document arrives whole, in source order within its split, and in exactly one split
    assert sorted(got["train"] + got["val"]) == sorted(expected)
    assert got["train"] == [d for d in expected if d in set(got["train"])]
    assert meta["split"] == "documents" and meta["documents"] == {"train": len(got["train"]), "val": len(got["val"])}
    if kind != "jsonl-streaming":  # a stream draws each document with probability val_fraction instead
        assert len(got["val"]) == round(len(expected) * 0.1)
    assert 0 < len(got["val"]) < len(expected) // 3
    assert (workdir / "out" / "model.safetensors").exists()


@pytest.mark.e2e
def test_url_of_a_jsonl_file_is_downloaded_once_and_trains(corpus, paragraphs, workdir):
    server = LocalServer(corpus)
    try:
        url = f"{server.url}/rows.jsonl"
        assert train.main([quick_recipe(workdir, source=url)]) == 0
        # the copy is reused: no second download
        assert train.main([quick_recipe(workdir, source=url), "--overwrite_out_dir=True"]) == 0
        assert server.requests == 1
    finally:
        server.stop()
    folder = workdir / "data" / "tiny"
    meta = json.loads((folder / "meta.json").read_text())
    assert [p.read_bytes() for p in (folder / "downloads").iterdir()] == [(corpus / "rows.jsonl").read_bytes()]
    assert meta["source"] == url and meta["source_sha256"] == hashlib.sha256((corpus / "rows.jsonl").read_bytes()).hexdigest()
    got = documents_of(folder, meta)
    assert sorted(got["train"] + got["val"]) == sorted(paragraphs[500:500 + N_ROWS])
    assert (workdir / "out" / "model.safetensors").exists()


def test_document_split_follows_the_seed(corpus, workdir):
    picks = {}
    for seed in (1, 1, 2):
        assert prepare.main([f"--source={corpus}/rows.jsonl", "--dataset=s", "--block_size=32", f"--seed={seed}"]) == 0
        folder = workdir / "data" / "s"
        picks.setdefault(seed, []).append(documents_of(folder, json.loads((folder / "meta.json").read_text()))["val"])
    assert picks[1][0] == picks[1][1] and picks[1][0] != picks[2][0]


def test_rerun_of_a_folder_is_a_no_op_until_its_text_changes(corpus, workdir, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for f in sorted((corpus / "docs").glob("*.txt")):
        (docs / f.name).write_bytes(f.read_bytes())
    args = [f"--source={docs}", "--dataset=f", "--block_size=32"]
    assert prepare.main(args) == 0
    folder = workdir / "data" / "f"
    stamp = (folder / "train.bin").stat().st_mtime_ns
    first = sorted(docs.iterdir())[0]
    os.utime(first)  # touched, same bytes: the sha256 says nothing changed
    assert prepare.main(args) == 0
    assert (folder / "train.bin").stat().st_mtime_ns == stamp
    first.write_text(first.read_text() + "One more line.\n")
    assert prepare.main(args) == 0
    meta = json.loads((folder / "meta.json").read_text())
    assert any("One more line." in d for split in documents_of(folder, meta).values() for d in split)


def test_too_little_validation_text_says_how_much_more(corpus, workdir, capsys):
    assert prepare.main([f"--source={corpus}/docs", "--dataset=few", "--block_size=8000"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "val split" in err and "block_size + 1 = 8,001" in err
    assert "more tokens of text" in err
    assert not (workdir / "data" / "few").exists()


def _make(workdir, kind):
    """Write a bad source of the given kind into workdir; returns the command-line arguments."""
    if kind == "folder without matches":
        (workdir / "notes").mkdir()
        (workdir / "notes" / "a.md").write_text("markdown only\n")
        return ["--source=notes"]
    if kind == "glob without matches":
        return ["--source=nothing/**/*.txt"]
    if kind == "not UTF-8":
        (workdir / "latin1.txt").write_bytes("caf\u00e9 au lait\n".encode("utf-8") * 100 + "d\u00e9j\u00e0".encode("latin-1"))
        return ["--source=latin1.txt"]
    if kind == "not UTF-8 rows":
        (workdir / "rows.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9 noir"}\n')
        return ["--source=rows.jsonl"]
    if kind == "missing column":
        (workdir / "rows.jsonl").write_text('{"body": "some text"}\n{"body": "more"}\n')
        return ["--source=rows.jsonl"]
    if kind == "unknown Hub dataset offline":
        return ["--source=nobody/no-such-dataset"]
    if kind == "unwritable output":
        (workdir / "t.txt").write_text("some text\n" * 100)
        (workdir / "afile").write_text("")
        return ["--source=t.txt", "--data_dir=afile/data"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, message", [
    ("folder without matches", "has no files matching **/*.txt"),
    ("glob without matches", "matches no files"),
    ("not UTF-8", "latin1.txt is not UTF-8 at byte 1,401"),
    ("not UTF-8 rows", "rows.jsonl is not UTF-8 at row 2, byte 3 of its text"),
    ("missing column", "has no column 'text': its columns are body"),
    ("unknown Hub dataset offline", "is not in the local cache and the Hub is offline"),
    ("unwritable output", "cannot write to afile/data/bad"),
])
def test_bad_source_is_one_line_and_leaves_nothing(workdir, capsys, kind, message):
    args = _make(workdir, kind)
    assert prepare.main([*args, "--dataset=bad", "--block_size=8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not (workdir / "data" / "bad").exists()


@pytest.mark.parametrize("name", ["latin1.txt", "latin1.jsonl"])
def test_errors_replace_prepares_text_that_is_not_utf8(workdir, name):
    if name.endswith(".txt"):
        (workdir / name).write_bytes(("caf\u00e9\n" * 200).encode("latin-1"))
    else:
        (workdir / name).write_bytes(b"".join(b'{"text": "caf\xe9 %d"}\n' % i for i in range(20)))
    assert prepare.main([f"--source={name}", "--dataset=r", "--block_size=8", "--errors=replace"]) == 0
    folder = workdir / "data" / "r"
    tok = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
    ids = np.concatenate([np.fromfile(folder / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    text = tok.decode(ids.tolist())
    if name.endswith(".txt"):
        assert text == "caf\ufffd\n" * 200
    else:
        assert sorted(text.split("<|endoftext|>")[:-1]) == sorted(f"caf\ufffd {i}" for i in range(20))


def hub_dataset(hub, paragraphs):
    """A dataset repo as the Hub serves one: parquet files and a README that names two configs."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    def parquet(texts):
        buf = io.BytesIO()
        pq.write_table(pa.table({"text": texts, "n": [len(t) for t in texts]}), buf)
        return buf.getvalue()

    readme = textwrap.dedent("""\
        ---
        configs:
        - config_name: full
          data_files:
          - split: train
            path: full/*.parquet
          default: true
        - config_name: small
          data_files:
          - split: train
            path: small/*.parquet
        ---
        # plays
        """).encode()
    hub.add_files("dataset", "someone/plays", {
        "README.md": readme,
        "full/train-00000-of-00002.parquet": parquet(paragraphs[:200]),
        "full/train-00001-of-00002.parquet": parquet(paragraphs[200:400]),
        "small/train-00000-of-00001.parquet": parquet(paragraphs[400:440]),
    })


@pytest.mark.e2e
def test_hub_dataset_through_load_dataset_against_a_local_hub(workdir, paragraphs, tmp_path):
    """The real datasets.load_dataset talks HTTP to a stand-in Hub on 127.0.0.1; any other host
    goes to a dead proxy, so no request can leave the machine."""
    with FakeHub(lfs_mode="lfs") as hub:
        hub_dataset(hub, paragraphs)
        recipe = quick_recipe(workdir, source="someone/plays")
        script = textwrap.dedent(f"""
            import json, sys
            from hfgpt import prepare, train
            assert train.main([{recipe!r}]) == 0
            assert prepare.main([{recipe!r}, "--dataset=small", "--source_config=small", "--streaming=true"]) == 0
        """)
        env = {**run_env(), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
               "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1,localhost",
               "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "ALL_PROXY": "http://127.0.0.1:9"}
        result = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, env=env, cwd=workdir, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert any(path.endswith(".parquet") for _, path in hub.requests)
    full = json.loads((workdir / "data" / "tiny" / "meta.json").read_text())
    got = documents_of(workdir / "data" / "tiny", full)
    assert sorted(got["train"] + got["val"]) == sorted(paragraphs[:400]) and len(got["val"]) == 40
    assert full["source"] == "someone/plays" and len(full["source_sha256"]) == 64
    small = json.loads((workdir / "data" / "small" / "meta.json").read_text())
    got = documents_of(workdir / "data" / "small", small)
    assert sorted(got["train"] + got["val"]) == sorted(paragraphs[400:440])
    assert small["streaming"] is True and small["source_config"] == "small"
    assert (workdir / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("piece_chars", [1, 2, 3, 5, 1 << 20])
def test_byte_offset_of_bad_utf8_across_pieces(tmp_path, piece_chars):
    """Multi-byte characters split between reads decode whole; the offset of a bad byte is exact."""
    good = "h\u00e9 \u65e5\u672c\n\U0001f600 x\n" * 3
    path = tmp_path / "t.txt"
    path.write_bytes(good.encode() + b"ab\xffcd")
    with pytest.raises(UserError, match=f"at byte {len(good.encode()) + 2:,} "):
        list(read_pieces(path, piece_chars=piece_chars))
    path.write_bytes(good.encode() + b"\xe6\x97")  # a character cut off by the end of the file
    with pytest.raises(UserError, match=f"at byte {len(good.encode()):,} "):
        list(read_pieces(path, piece_chars=piece_chars))
    path.write_bytes(good.encode())
    assert "".join(read_pieces(path, piece_chars=piece_chars)) == good
