"""Watching a run: trackers get every metric row, loss.png is drawn, samples are generated at each
evaluation, and every saved model folder has a model card that renders."""

import json
import struct
import urllib.request

import pytest
import yaml
from huggingface_hub import ModelCard
from markdown_it import MarkdownIt

from hfgpt import train
from hfgpt.hub.card import write_card
from tests.conftest import free_port
from tests.helpers import read_metrics

SECRET = "hf_" + "WatchTestSecret" * 3


def wandb_history(run_file) -> list[dict]:
    """The history rows of an offline wandb run file (LevelDB-style log of protobuf Records:
    a 7-byte header, then 32 KiB blocks of records, each with a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    rows, pos, pending, block = [], 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the rest of a block too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for events in folder.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["tensors"]:  # text: the samples
            scalars[tag] = [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]
    return scalars


@pytest.mark.e2e
def test_tensorboard_and_offline_wandb_get_every_step(tiny_recipe, workdir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):  # nothing leaves the machine
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    recipe = tiny_recipe(max_iters=20, eval_interval=10, log_interval=5, lr_decay_iters=20, log_with="tensorboard,wandb",
                         wandb_run_name="tiny-run", eval_samples=1, sample_max_new_tokens=20)
    assert train.main([str(recipe)]) == 0
    out = workdir / "out"
    rows = read_metrics(out)
    logs = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "val_loss" in r]

    scalars = tensorboard_scalars(out / "runs" / "hfgpt")
    assert scalars["loss"] == [(r["iter"], pytest.approx(r["loss"])) for r in logs]
    assert [s for s, _ in scalars["tokens_per_sec"]] == [5, 10, 15, 20] and all(v > 0 for _, v in scalars["lr"])
    assert scalars["val_loss"] == [(r["iter"], pytest.approx(r["val_loss"])) for r in evals]
    assert scalars["samples/0/text_summary"] == [(r["iter"], r["samples"][0]) for r in evals]

    run_file, = (out / "wandb").glob("offline-run-*/run-*.wandb")
    history = wandb_history(run_file)
    logged = {(h["_step"], key): h[key] for h in history for key in h if not key.startswith("_")}
    for r in rows:
        for key, value in r.items():
            if key not in ("iter", "samples"):
                assert logged[(r["iter"], key)] == pytest.approx(value), (r["iter"], key)
    assert logged[(20, "samples/0")] == evals[-1]["samples"][0]
    for path in out.rglob("*"):  # the token is in the environment, and nowhere in what the run wrote
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path


@pytest.mark.e2e
def test_trackio_gets_every_step_offline_and_its_dashboard_shows_the_run(tiny_recipe, workdir, monkeypatch):
    """trackio keeps its runs in one local database per project (TRACKIO_DIR, else $HF_HOME/trackio:
    a folder of this test session, conftest's HF_HOME) that its dashboard reads."""
    from trackio.sqlite_storage import SQLiteStorage

    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):  # nothing leaves the machine
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    project = f"watch-{workdir.name}"
    recipe = tiny_recipe(max_iters=20, eval_interval=10, log_interval=5, lr_decay_iters=20, log_with="trackio",
                         wandb_project=project, wandb_run_name="tiny-run", eval_samples=1, sample_max_new_tokens=20)
    assert train.main([str(recipe)]) == 0
    rows = read_metrics(workdir / "out")
    logged = {(log["step"], key): value for log in SQLiteStorage.get_logs(project, "tiny-run") for key, value in log.items()}
    for r in rows:
        for key, value in r.items():
            if key not in ("iter", "samples"):
                assert logged[(r["iter"], key)] == pytest.approx(value), (r["iter"], key)
    assert logged[(20, "samples/0")] == rows[-1]["samples"][0]
    assert SQLiteStorage.get_runs(project) == ["tiny-run"]

    import trackio  # the dashboard (`trackio show --project NAME`, as docs/watching.md says), on a local port

    app, url, _, _ = trackio.show(project=project, open_browser=False, block_thread=False, server_port=free_port())
    try:
        with urllib.request.urlopen(f"{url}?project={project}", timeout=30) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        ask = urllib.request.Request(f"{url.rstrip('/')}/api/get_runs_for_project", data=json.dumps(
            {"project": project}).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(ask, timeout=30) as answer:
            runs = json.loads(answer.read())
    finally:
        app.close()
    print(runs)
    assert [run["name"] for run in runs["data"]] == ["tiny-run"]


@pytest.mark.e2e
def test_samples_leave_the_training_run_unchanged(tiny_recipe, workdir):
    common = {"max_iters": 20, "eval_interval": 10, "log_interval": 1, "lr_decay_iters": 20, "dropout": 0.1}
    assert train.main([str(tiny_recipe("a.yaml", out_dir=str(workdir / "a"), **common))]) == 0
    assert train.main([str(tiny_recipe("b.yaml", out_dir=str(workdir / "b"), eval_samples=2, sample_start="ROMEO:",
                                       sample_max_new_tokens=30, **common))]) == 0
    a, b = read_metrics(workdir / "a"), read_metrics(workdir / "b")
    assert [r.get("loss") for r in a] == [r.get("loss") for r in b]  # dropout's random stream is untouched
    samples = [r["samples"] for r in b if "samples" in r]
    assert len(samples) == 3 and all(len(s) == 2 and all(t.startswith("ROMEO:") for t in s) for s in samples)
    assert "samples" not in json.dumps(a)  # off by default on the CPU
    again = tiny_recipe("c.yaml", out_dir=str(workdir / "c"), eval_samples=2, sample_start="ROMEO:",
                        sample_max_new_tokens=30, **common)
    assert train.main([str(again)]) == 0
    assert [r["samples"] for r in read_metrics(workdir / "c") if "samples" in r] == samples  # reproducible


@pytest.mark.e2e
def test_loss_png_and_a_card_in_every_saved_folder(tiny_recipe, workdir):
    assert train.main([str(tiny_recipe(eval_samples=1, sample_max_new_tokens=40))]) == 0
    out = workdir / "out"
    png = (out / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    folders = [out, *sorted((out / "checkpoints").iterdir())]
    assert [f.name for f in folders[1:]] == ["iter-000050", "iter-000100"]
    for folder in folders:
        text = (folder / "README.md").read_text()
        card = ModelCard(text)  # parses the front matter
        meta = yaml.safe_load(text.split("---\n")[1])
        assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
        assert "char-level" in meta["tags"] and "datasets" not in meta  # the source is a local file
        facts = json.loads((folder / "training.json").read_text())
        loss, = [m["value"] for m in meta["model-index"][0]["results"][0]["metrics"] if m["type"] == "loss"]
        assert loss == pytest.approx(facts["val_loss"], abs=1e-4) and card.data.eval_results[0].dataset_split == "val"
        html = MarkdownIt("commonmark").enable("table").render(text.split("---\n", 2)[2])
        assert "<table>" in html and f"model=&quot;{folder}&quot;" in html
        assert facts["samples"][0] in text  # the sample of that evaluation
    assert '<img src="loss.png"' in MarkdownIt("commonmark").render((out / "README.md").read_text())


def test_card_for_any_folder_names_hub_datasets_and_the_base_model(tmp_path):
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"dataset": "corpus", "source": "someone/corpus",
                                                          "tokenizer": "gpt2", "init_from": "gpt2-medium"}))
    write_card(tmp_path, {"iter": 10, "val_loss": 3.0, "train_loss": 2.9, "tokens_seen": 1000}, model_id="me/model")
    meta = yaml.safe_load((tmp_path / "README.md").read_text().split("---\n")[1])
    assert meta["datasets"] == ["someone/corpus"] and meta["base_model"] == "gpt2-medium"
    assert meta["model-index"][0]["name"] == "model"
    (tmp_path / "eval_results.json").write_text(json.dumps({"iter": 9, "unit": "byte", "loss": 1.0}))
    write_card(tmp_path)  # results of another iteration are not this model's: left out
    assert "whole split" not in (tmp_path / "README.md").read_text()


def test_tracker_that_is_not_installed_is_a_one_line_error(tiny_recipe, capsys):
    assert train.main([str(tiny_recipe()), "--log_with=mlflow"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pip install mlflow" in errors[0]


@pytest.mark.e2e
def test_the_evaluations_neither_draw_nor_generate_on_the_training_thread(tiny_recipe, workdir, monkeypatch):
    """An evaluation asks for loss.png's redraw and goes on (matplotlib takes 0.5-1.8 s a redraw); the
    run ends with the last redraw done, from every evaluation's row. With eval_samples None on a GPU
    the evaluations generate no text (on a GPU a 200-token sample costs about what the loss estimate
    does): out_dir's card gets one at the end, from the model saved there."""
    import threading
    import time

    from hfgpt.config import LogConfig
    from hfgpt.training import evaluate, loop, plot

    real, draws = plot.plot_losses, []

    def slow(metrics_path, *args, **kwargs):
        time.sleep(0.2)
        rows = [r for r in read_metrics(metrics_path.parent) if "val_loss" in r]
        draws.append((threading.current_thread() is threading.main_thread(), len(rows)))
        return real(metrics_path, *args, **kwargs)

    monkeypatch.setattr(plot, "plot_losses", slow)
    assert [evaluate.card_samples(LogConfig(eval_samples=n), dev) for n, dev in
            [(None, "cuda"), (None, "mps"), (None, "cpu"), (2, "cuda"), (0, "cuda")]] == [1, 1, 0, 0, 0]
    monkeypatch.setattr(loop, "card_samples", lambda log, dev: evaluate.card_samples(log, "cuda"))  # as on a GPU
    assert train.main([str(tiny_recipe(max_iters=30, eval_interval=10, lr_decay_iters=30, sample_start="ROMEO:",
                                       sample_max_new_tokens=20))]) == 0
    out = workdir / "out"
    assert draws and not any(main for main, _ in draws) and draws[-1][1] == 4  # evaluations at 0, 10, 20, 30
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not [r for r in read_metrics(out) if "samples" in r]
    facts = json.loads((out / "training.json").read_text())
    assert len(facts["samples"]) == 1 and facts["samples"][0].startswith("ROMEO:")
    card = (out / "README.md").read_text()
    assert f"## A sample (iteration {facts['iter']:,})" in card and "![train and val loss" in card


def test_a_redraw_that_fails_stops_the_run_with_one_line(tiny_recipe, workdir, monkeypatch, capsys):
    import errno

    from hfgpt.training import plot

    def full(metrics_path, png, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(png))

    monkeypatch.setattr(plot, "plot_losses", full)
    assert train.main([str(tiny_recipe(max_iters=20, eval_interval=10, lr_decay_iters=20))]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left on the device of" in errors[0]
