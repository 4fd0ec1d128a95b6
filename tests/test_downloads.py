"""URL sources: kept by the whole URL, downloaded whole or not at all (resumed where the server
allows), never written anywhere with their secrets, never in the way of prepare's own files."""

import hashlib
import json

import pytest

from hfgpt import eval as hfgpt_eval
from hfgpt import prepare, train
from hfgpt.data.downloads import TRIES
from tests.conftest import LocalServer

A_CHARS, B_CHARS = 30_000, 40_000


@pytest.fixture
def served(tmp_path_factory, shakespeare_text):
    """Two different texts under the same file name: a/input.txt and b/input.txt."""
    folder = tmp_path_factory.mktemp("served")
    for name, text in {"a": shakespeare_text[:A_CHARS], "b": shakespeare_text[A_CHARS:A_CHARS + B_CHARS]}.items():
        (folder / name).mkdir()
        (folder / name / "input.txt").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr("hfgpt.data.downloads.RETRY_WAIT", 0)


def prepared(workdir, *args: str) -> dict:
    assert prepare.main(["--dataset=web", "--block_size=32", *args]) == 0
    return json.loads((workdir / "data" / "web" / "meta.json").read_text())


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_url_is_kept_by_the_whole_url(workdir, served):
    server = LocalServer(served)
    a, b = f"{server.url}/a/input.txt", f"{server.url}/b/input.txt"
    try:
        assert prepared(workdir, f"--source={a}")["source_sha256"] == sha256(served / "a" / "input.txt")
        meta = prepared(workdir, f"--source={b}")  # the same file name at another URL: B's text, not A's again
        assert meta["source"] == b and meta["source_sha256"] == sha256(served / "b" / "input.txt")
        assert meta["train_tokens"] + meta["val_tokens"] == B_CHARS
        both = prepared(workdir, f"--source=[{a}, {b}]")  # two documents, one of them validates
        assert both["documents"] == {"train": 1, "val": 1}
        assert both["train_tokens"] + both["val_tokens"] == A_CHARS + 1 + B_CHARS + 1  # each ends with <|endoftext|>
        prepared(workdir, f"--source={a}")
    finally:
        server.stop()
    assert sorted(path for path, _ in server.received) == ["/a/input.txt", "/b/input.txt"]  # each downloaded once
    downloads = sorted((workdir / "data" / "web" / "downloads").iterdir())
    assert [p.name.split("-", 1)[1] for p in downloads] == ["input.txt", "input.txt"]


def test_a_copy_the_user_put_there_is_used_unless_made_for_another_url(workdir, served, shakespeare_text):
    folder = workdir / "data" / "web"
    folder.mkdir(parents=True)
    (folder / "input.txt").write_text(shakespeare_text[-20_000:], encoding="utf-8")  # as an offline user does
    server = LocalServer(served)
    try:
        meta = prepared(workdir, f"--source={server.url}/a/input.txt")
        assert server.requests == 0 and meta["source_sha256"] == sha256(folder / "input.txt")
        meta = prepared(workdir, f"--source={server.url}/b/input.txt")  # that copy was A's: B is downloaded
        assert server.requests == 1 and meta["source_sha256"] == sha256(served / "b" / "input.txt")
    finally:
        server.stop()


@pytest.mark.e2e
@pytest.mark.parametrize("fault", ["half sent", "dropped, resumed", "dropped, no Range", "404"])
def test_a_download_is_whole_or_nothing(workdir, served, capsys, fault):
    server = LocalServer(served, short=fault == "half sent", drops=int(fault.startswith("dropped")),
                         ranges=fault == "dropped, resumed")
    try:
        code = prepare.main(["--dataset=web", "--block_size=32",
                             f"--source={server.url}/{'missing' if fault == '404' else 'b'}/input.txt"])
    finally:
        server.stop()
    folder, whole = workdir / "data" / "web", (served / "b" / "input.txt").read_bytes()
    ranges = [headers.get("Range") for _, headers in server.received]
    if fault.startswith("dropped"):
        assert code == 0
        assert [p.read_bytes() for p in (folder / "downloads").iterdir()] == [whole]
        assert ranges == [None, f"bytes={len(whole) // 2}-"]  # the second request asks for the rest ...
        assert json.loads((folder / "meta.json").read_text())["source_sha256"] == hashlib.sha256(whole).hexdigest()
        return  # ... which a server without Range answers with the whole file, written from the start
    assert code == 2 and not folder.exists()  # nothing kept: no half file, no temporary file
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "could not download" in errors[0]
    if fault == "404":
        assert "HTTP 404" in errors[0] and len(ranges) == 1  # an answer that would come again is not asked again
    else:
        assert f"sent {len(whole) // 2:,} of its {len(whole):,} bytes" in errors[0] and len(ranges) == TRIES


@pytest.mark.e2e
@pytest.mark.parametrize("login", ["", "us3r9x7:pa55word@"])
def test_secrets_in_a_url_are_written_nowhere(workdir, served, tiny_recipe, capsys, login):
    server = LocalServer(served)
    query = "X-Amz-Signature=5ecret5ignature&token=t0kenValue"
    url = f"http://{login}{server.url.removeprefix('http://')}/b/input.txt?{query}"
    recipe = tiny_recipe(source=url, max_iters=4, eval_interval=2, eval_iters=1, log_interval=2, warmup_iters=1,
                         lr_decay_iters=4)
    try:
        assert train.main([str(recipe)]) == 0  # prepare, train, checkpoints, model card
        assert hfgpt_eval.main([str(workdir / "out")]) == 0  # eval_results.json, the card again
    finally:
        server.stop()
    assert server.received[0][0] == f"/b/input.txt?{query}"  # the server got the whole URL ...
    if login:  # ... and the credentials
        assert server.received[0][1]["Authorization"] == "Basic dXMzcjl4NzpwYTU1d29yZA=="
    shown = f"{server.url}/b/input.txt"
    assert json.loads((workdir / "data" / "tiny" / "meta.json").read_text())["source"] == shown
    assert f"source: {shown}\n" in (workdir / "out" / "recipe.yaml").read_text()
    output = capsys.readouterr()
    files = [p for folder in ("out", "data") for p in (workdir / folder).rglob("*") if p.is_file()]
    assert len(files) > 30
    for secret in ("us3r9x7", "pa55word", "5ecret5ignature", "t0kenValue"):
        assert secret not in output.out + output.err
        assert not [p for p in files if secret.encode() in p.read_bytes()]


def test_urls_named_like_prepares_own_files(workdir, served):
    text = (served / "a" / "input.txt").read_text()
    paragraphs = (text[:500], text[500:1000])
    (served / "x").mkdir()
    (served / "x" / "meta.json").write_text(json.dumps([{"text": t} for t in paragraphs]))  # a JSON table
    (served / "x" / "tokenizer").write_text((served / "b" / "input.txt").read_text())  # a text file
    server = LocalServer(served)
    source = f"--source=[{server.url}/x/tokenizer, {server.url}/x/meta.json]"
    try:
        meta = prepared(workdir, source)
        again = prepared(workdir, source)
    finally:
        server.stop()
    folder = workdir / "data" / "web"
    assert again == meta and server.requests == 2  # the second run found everything up to date
    assert meta["documents"]["train"] + meta["documents"]["val"] == 3 and meta["split"] == "documents"
    assert meta["train_tokens"] + meta["val_tokens"] == B_CHARS + sum(map(len, paragraphs)) + 3
    assert (folder / "tokenizer" / "tokenizer.json").is_file()
    assert sorted(p.name.split("-", 1)[1] for p in (folder / "downloads").iterdir()) == ["meta.json", "tokenizer"]
