"""eval: every token of a split scored once, deterministically, through hfgpt's `evaluate` metric module."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from hfgpt import eval as hfgpt_eval
from hfgpt import train
from hfgpt.evaluation.score import unit_lengths, windows
from hfgpt.data.tokenizer import bpe_from_vocab_merges, char_tokenizer
from tests.helpers import read_metrics


@pytest.mark.parametrize("n, block_size, stride", [(100, 8, 8), (100, 8, 3), (9, 8, 8), (5, 8, 8), (1001, 64, 64),
                                                   (1001, 64, 1)])
def test_windows_score_every_target_once(n, block_size, stride):
    scored = []
    for k, (start, first) in enumerate(windows(n, block_size, stride)):
        length = min(block_size, n - 1 - start)  # inputs tokens[start:start + length]
        assert start == 0 or length == block_size  # full context, except where the text is shorter
        targets = range(first, start + length + 1)
        assert k == 0 or len(targets) <= stride
        scored += targets
    assert scored == list(range(1, n))


def test_unit_lengths_count_characters_and_bytes(gpt2_dir):
    char = char_tokenizer("ab\né")
    lengths = unit_lengths(char, "char")
    assert [lengths[i] for i in char("ab\né", add_special_tokens=False)["input_ids"]] == [1, 1, 1, 1]
    assert all(lengths[i] == 0 for i in char.all_special_ids)
    gpt2 = bpe_from_vocab_merges(gpt2_dir)
    text = "Héllo wörld, naïve café — ok"
    ids = gpt2(text)["input_ids"]
    assert unit_lengths(gpt2, "byte")[ids].sum() == len(text.encode("utf-8"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare_text):
    """A tiny char model trained on 100k characters, and its run folder."""
    import os

    import yaml

    from tests.conftest import TINY

    work = tmp_path_factory.mktemp("eval-run")
    (work / "tiny.txt").write_text(shakespeare_text[:100_000])
    recipe = {**TINY, "source": str(work / "tiny.txt"), "out_dir": str(work / "out"), "data_dir": str(work / "data"),
              "eval_iters": 50}
    (work / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    cwd = os.getcwd()
    os.chdir(work)
    try:
        assert train.main([str(work / "tiny.yaml")]) == 0
    finally:
        os.chdir(cwd)
    return work


def brute_force_loss(folder, tokens: np.ndarray, block_size: int, stride: int) -> float:
    """Mean loss over the targets 1 .. n-1, the obvious way: one forward pass per chunk of targets
    (block_size of them first, then stride), each chunk predicted by the block_size tokens before its end."""
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    nlls, first = [], 1
    with torch.no_grad():
        while first < len(tokens):
            last = min(first - 1 + (block_size if first == 1 else stride), len(tokens) - 1)  # targets first .. last
            context = max(0, last - block_size)  # inputs tokens[context:last] predict tokens context+1 .. last
            x = torch.from_numpy(tokens[context:last].astype(np.int64))[None]
            y = torch.from_numpy(tokens[context + 1:last + 1].astype(np.int64))
            nlls.append(F.cross_entropy(model(input_ids=x).logits[0].float(), y, reduction="none")[first - 1 - context:])
            first = last + 1
    nll = torch.cat(nlls).double()
    assert len(nll) == len(tokens) - 1
    return nll.mean().item()


@pytest.mark.e2e
def test_eval_whole_split_matches_brute_force_and_the_estimate(trained, workdir):
    out = trained / "out"
    assert hfgpt_eval.main([str(out), f"--data_dir={trained / 'data'}", "--batch_size=7"]) == 0
    results = json.loads((out / "eval_results.json").read_text())
    val = np.fromfile(trained / "data" / "tiny" / "val.bin", dtype=np.uint16)
    assert results["tokens"] == results["units"] == len(val) - 1 == 9_999
    assert results["loss"] == pytest.approx(brute_force_loss(out, val, 32, 32), abs=1e-5)
    assert results["perplexity"] == pytest.approx(math.exp(results["loss"]))
    assert results["bits_per_char"] == pytest.approx(results["loss"] / math.log(2))
    estimate = read_metrics(out)[-1]["val_loss"]
    assert results["loss"] == pytest.approx(estimate, abs=0.05) and results["iter"] == 100

    # deterministic, whatever the batch size; overlapping windows score each token once too
    assert hfgpt_eval.main([str(out), f"--data_dir={trained / 'data'}", "--batch_size=64", "--out=again.json"]) == 0
    assert json.loads((workdir / "again.json").read_text())["loss"] == pytest.approx(results["loss"], abs=1e-6)
    assert hfgpt_eval.main([str(out), f"--data_dir={trained / 'data'}", "--stride=8", "--out=strided.json"]) == 0
    strided = json.loads((workdir / "strided.json").read_text())
    assert strided["tokens"] == results["tokens"] and strided["stride"] == 8
    assert strided["loss"] == pytest.approx(brute_force_loss(out, val, 32, 8), abs=1e-5) != results["loss"]

    card = (out / "README.md").read_text()  # the results went into the card
    assert "Val loss (whole split)" in card and f"{results['bits_per_char']:.4f}" in card


def test_eval_text_file_and_errors(trained, workdir, capsys):
    out = trained / "out"
    (workdir / "held_out.txt").write_text("ROMEO:\nWhat light through yonder window breaks?\n")
    assert hfgpt_eval.main([str(out), "--text=held_out.txt", "--out=text.json"]) == 0
    results = json.loads((workdir / "text.json").read_text())
    assert results["tokens"] == len("ROMEO:\nWhat light through yonder window breaks?\n") - 1
    capsys.readouterr()
    assert hfgpt_eval.main([str(out), f"--data_dir={trained / 'data'}", "--split=test"]) == 2
    assert hfgpt_eval.main([str(out), "--data_dir=nowhere"]) == 2
    assert hfgpt_eval.main([str(out), "--block_size=64"]) == 2  # more than the model's 32 positions
    assert hfgpt_eval.main(["no-such-folder"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 4
    assert "--split=test" in errors[0] and "train, val" in errors[0]
    assert "nowhere/tiny/meta.json not found" in errors[1]
    assert "--block_size=64" in errors[2] and "no-such-folder" in errors[3]


def test_an_unwritable_out_fails_before_the_evaluation(trained, monkeypatch, capsys):
    monkeypatch.setattr("hfgpt.evaluation.score.evaluate_model", lambda *a, **k: pytest.fail("it evaluated first"))
    assert hfgpt_eval.main([str(trained / "out"), "--out=/missing/dir/r.json"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "/missing/dir does not exist" in errors[0]
