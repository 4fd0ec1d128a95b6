"""The command line as people meet it: --version, --config, scoped and fast --help, log lines
without a terminal, the closing summary, warnings that save a run, errors under accelerate launch."""

import re
import subprocess
import sys

import pytest

from hfgpt import cli, prepare, sample, train
from hfgpt.config import KEYS, cautions, keys_of_step, load_recipe
from hfgpt.config.recipe import FIELDS
from tests.conftest import PYTHON, ROOT, run_env
from tests.helpers import ACCELERATE

STEPS = ["prepare", "train", "sample", "eval", "push", "convert", "export", "bench"]


def run(args: list[str], cwd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=run_env(), cwd=cwd, timeout=600, **kwargs)


def test_version(capsys):
    from hfgpt import __version__

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"hfgpt {__version__}"


@pytest.mark.parametrize("step", STEPS)
def test_every_step_has_help_that_names_both_commands(step, capsys):
    assert cli.main([step, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: hfgpt {step}" in out and f"python -m hfgpt.{step}" in out


@pytest.mark.e2e
def test_help_is_fast_it_imports_no_torch(tmp_path):
    """--help prints from the option declarations alone: no torch, transformers or datasets import."""
    script = ("import sys; from hfgpt import train, sample, eval, push, prepare, export\n"
              "for m in (train, sample, eval, push, prepare, export): m.main(['--help'])\n"
              "print([name for name in ('torch', 'transformers', 'datasets') if name in sys.modules])")
    result = run([PYTHON, "-c", script], tmp_path)
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == "[]", result.stderr[-2000:]


def test_help_lists_only_the_keys_a_step_reads(capsys):
    assert prepare.main(["--help"]) == 0
    prepare_help = capsys.readouterr().out
    assert "--tokenizer=" in prepare_help and "--block_size=" in prepare_help and "--seed=" in prepare_help
    for key in ("learning_rate", "beta2", "max_iters", "compile", "push_to_hub", "n_layer"):
        assert f"--{key}=" not in prepare_help
    assert train.main(["--help"]) == 0
    train_help = capsys.readouterr().out
    assert all(f"--{key}=" in train_help for key in keys_of_step("train"))
    assert sample.main(["--help"]) == 0
    sample_help = capsys.readouterr().out
    assert "--top_k=" in sample_help and "--learning_rate" not in sample_help


def test_every_recipe_key_is_read_by_some_step():
    assert set(KEYS) == keys_of_step("prepare") | keys_of_step("train")
    assert all(FIELDS[k].metadata.get("shapes") in (None, "data", "model", "new_model", "optimizer") for k in KEYS)


@pytest.mark.e2e
def test_config_flag_is_the_same_as_the_positional_recipe(tiny_recipe, workdir):
    path = tiny_recipe(max_iters=4, eval_interval=4, log_interval=2, warmup_iters=1, lr_decay_iters=4)
    assert cli.main(["train", "--config", str(path), "--out_dir=a"]) == 0
    assert cli.main(["train", str(path), "--out_dir=b"]) == 0
    assert (workdir / "a" / "model.safetensors").read_bytes() == (workdir / "b" / "model.safetensors").read_bytes()


@pytest.mark.e2e
def test_log_lines_without_a_terminal(tiny_recipe, workdir):
    """stdout to a file (CI, nohup): plain lines with elapsed time, ETA and ms/iter, no carriage
    returns, no 'mfu n/a' on a CPU; then the summary with where everything is and what to run next."""
    path = tiny_recipe(max_iters=20, eval_interval=10, log_interval=5, lr_decay_iters=20, eval_iters=2)
    result = run([PYTHON, "-m", "hfgpt.train", str(path)], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "\r" not in out + result.stderr
    lines = [line for line in out.splitlines() if re.match(r"iter \d+/20: loss", line)]
    assert len(lines) == 4
    pattern = r"iter \d+/20: loss \d\.\d{4}, lr \S+, [\d.]+ ms/iter, [\d,]+ tokens/s, elapsed \d+:\d\d, eta \d+:\d\d"
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    assert "mfu" not in out
    assert "(float32)" in out and "no precision" not in out
    summary = out[out.index("done: 20 iterations"):]
    assert "val loss" in summary and "best val loss" in summary
    assert f"model:       {workdir / 'out'}/" in summary and "checkpoints:" in summary and "iter-000020" in summary
    for step in ("sample", "eval", "push"):
        assert f"python -m hfgpt.{step} {workdir / 'out'}" in summary


@pytest.mark.parametrize("overrides, warning", [
    ({"max_iters": 100, "warmup_iters": 10, "lr_decay_iters": 5000}, "max_iters=100 is short of lr_decay_iters=5000"),
    ({"max_iters": 100, "warmup_iters": 100, "lr_decay_iters": 200}, "warmup_iters=100 >= max_iters=100"),
])
def test_warnings_that_save_a_run(overrides, warning):
    recipe = load_recipe(None, {**{"decay_lr": True}, **overrides})
    assert any(warning in note for note in cautions(recipe))


def test_warnings_are_printed_when_training_starts(tiny_recipe, capsys):
    path = tiny_recipe(max_iters=4, eval_interval=4, warmup_iters=1, lr_decay_iters=100)
    assert train.main([str(path)]) == 0
    assert "warning: max_iters=4 is short of lr_decay_iters=100" in capsys.readouterr().err
    assert cautions(load_recipe(str(path), ["--lr_decay_iters=4"])) == []


def test_one_error_prefix(capsys):
    from hfgpt.core.errors import UserError, cli as cli_wrapper

    @cli_wrapper
    def failing(argv=None):
        raise UserError("error: something")

    assert failing([]) == 2
    assert capsys.readouterr().err == "error: something\n"


@pytest.mark.e2e
def test_errors_under_accelerate_launch_come_last(tmp_path):
    """The README's launch command (accelerate's own config, -q) prints no 'values not passed'
    block and ends with hfgpt's one line; under torchrun (--multi_gpu) the closing summary
    carries hfgpt's line as the failure's cause."""
    single = run([ACCELERATE, "launch", "-q", "--config_file", str(ROOT / "accelerate_config.yaml"), "-m",
                  "hfgpt.train", "--n_layerr=2"], tmp_path)
    assert single.returncode != 0
    assert "were not passed" not in single.stderr
    assert single.stderr.strip().splitlines()[-1].startswith("error: command line: unknown key 'n_layerr'")
    multi = run([ACCELERATE, "launch", "--config_file", str(ROOT / "accelerate_config.yaml"), "--multi_gpu",
                 "--num_processes", "2", "-m", "hfgpt.train", "--n_layerr=2", "--device=cpu"], tmp_path)
    assert multi.returncode != 0
    tail = multi.stderr[multi.stderr.index("Root Cause"):]
    assert "traceback : error: command line: unknown key 'n_layerr'" in tail


def test_prepare_from_a_local_copy_names_the_copy(workdir, shakespeare, capsys):
    url = "https://example.invalid/tiny/input.txt"  # never fetched: the copy is there
    (workdir / "data" / "tiny").mkdir(parents=True)
    (workdir / "data" / "tiny" / "input.txt").write_text(shakespeare.read_text()[:20_000])
    assert prepare.main([f"--source={url}", "--dataset=tiny", "--block_size=32"]) == 0
    out = capsys.readouterr().out
    assert "example.invalid" not in out and "downloading" not in out
    assert str(workdir / "data" / "tiny" / "input.txt").endswith("data/tiny/input.txt") and "data/tiny/input.txt" in out


def test_adding_a_key_is_one_field():
    """Every rule and flag of a key comes from its field: the help, the range check and what it shapes."""
    field = FIELDS["block_size"]
    assert field.metadata == {"min": 1, "shapes": "model", "steps": ("prepare", "train"), "planned": True}
    with pytest.raises(Exception, match="block_size=0 must be at least 1"):
        load_recipe(None, ["--block_size=0"])
    assert sys.modules["hfgpt.config.recipe"].keys_that_shape("model") == ("block_size", "bias", "lora_r", "lora_alpha",
                                                                           "lora_target_modules")


def deep_pickle(depth: int) -> bytes:
    """A pickle of {'a': {'a': ... {}}} nested `depth` deep, written opcode by opcode (pickle.dumps
    itself would overflow the stack)."""
    return b"\x80\x02" + (b"}X\x01\x00\x00\x00a") * depth + b"}" + b"s" * depth + b"."


@pytest.mark.parametrize("case, message", [
    ("--seed=-1", "seed=-1 must be at least 0"),
    ("--n_embd=65536", "n_layer=2, n_embd=65536: the model has 103.1B parameters"),
    ("nested meta.pkl", "meta.pkl holds something other than dicts of strings and ints"),
])
def test_one_line_errors_instead_of_tracebacks(tiny_recipe, workdir, capsys, case, message):
    if case == "nested meta.pkl":
        nano = workdir / "nano"
        nano.mkdir()
        for split in ("train", "val"):
            (nano / f"{split}.bin").write_bytes(bytes(200))
        (nano / "meta.pkl").write_bytes(deep_pickle(100_000))
        code = prepare.main([f"--source={nano}", "--dataset=deep"])
    else:
        code = train.main([str(tiny_recipe()), case])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, err[-2000:]
    if case == "--n_embd=65536":  # the estimate (16 bytes per parameter) against the memory there is
        assert re.search(r"needs at least 1,649\.\d GB .* but this machine's RAM has [\d,.]+ GB available", errors[0])


def test_a_command_run_from_the_command_line_skips_the_last_garbage_collections(monkeypatch):
    """python -m hfgpt.X: once main returns, gc.freeze() spares the exiting interpreter its collections
    over torch's and transformers' objects (about 1 s of CPU); a call from Python (argv given) does not."""
    import gc

    from hfgpt.core.errors import cli as cli_main

    monkeypatch.setattr(sys, "argv", ["hfgpt.x"])
    command = cli_main(lambda argv: 0)
    try:
        assert command([]) == 0 and gc.get_freeze_count() == 0
        assert command() == 0 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
