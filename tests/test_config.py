"""Recipes: every shipped recipe loads; overrides are typed; bad recipes fail with exit 2 and say why."""

from pathlib import Path

import pytest
import yaml

from hfgpt import train
from hfgpt.config import KEYS, load_recipe
from hfgpt.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_recipes_are_shipped():
    names = {p.name for p in RECIPES}
    assert {"shakespeare_char.yaml", "shakespeare_char_cpu.yaml", "finetune_shakespeare.yaml", "my_dataset.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads(path):
    recipe = load_recipe(str(path))
    written = yaml.safe_load(path.read_text())
    flat = recipe.to_dict()
    for key, value in written.items():
        assert key in KEYS
        if isinstance(value, float):
            assert flat[key] == pytest.approx(value)
        elif value is not None:
            assert str(flat[key]) == str(value)


def test_cpu_recipe_matches_nanogpt_readme():
    r = load_recipe(str(ROOT / "recipes" / "shakespeare_char_cpu.yaml"))
    assert (r.model.n_layer, r.model.n_head, r.model.n_embd, r.model.block_size) == (4, 4, 128, 64)
    assert (r.train.batch_size, r.train.max_iters, r.optim.lr_decay_iters, r.train.eval_iters) == (12, 2000, 2000, 20)
    assert r.model.dropout == 0.0 and r.system.compile is False and r.system.device == "cpu"


def test_gpu_recipe_matches_nanogpt_config():
    r = load_recipe(str(ROOT / "recipes" / "shakespeare_char.yaml"))
    assert (r.model.n_layer, r.model.n_head, r.model.n_embd, r.model.block_size) == (6, 6, 384, 256)
    assert (r.train.batch_size, r.model.dropout, r.optim.learning_rate, r.train.max_iters) == (64, 0.2, 1e-3, 5000)


def test_defaults_yaml_then_command_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("n_layer: 3\nlearning_rate: 1e-3\nmax_iters: 50\n")  # YAML reads 1e-3 as a string
    r = load_recipe(str(path), ["--max_iters=7", "--dropout", "0.25"])
    assert r.model.n_layer == 3 and r.model.n_head == 12  # YAML over default, default kept
    assert r.optim.learning_rate == 1e-3 and isinstance(r.optim.learning_rate, float)
    assert r.train.max_iters == 7 and r.model.dropout == 0.25  # command line over YAML


@pytest.mark.parametrize("arg, section, key, expected", [
    ("--max_iters=2e3", "train", "max_iters", 2000),
    ("--compile=False", "system", "compile", False),
    ("--compile=true", "system", "compile", True),
    ("--compile=None", "system", "compile", None),
    ("--bias=0", "model", "bias", False),
    ("--num_proc=4", "data", "num_proc", 4),
    ("--source=notes.txt", "data", "source", "notes.txt"),
    ("--min_lr=1e-5", "optim", "min_lr", 1e-5),
    ("--learning_rate=1", "optim", "learning_rate", 1.0),
])
def test_override_types(arg, section, key, expected):
    value = getattr(getattr(load_recipe(None, [arg]), section), key)
    assert value == expected and type(value) is type(expected)


def test_unknown_key_in_file_exits_2_with_suggestion(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("n_layers: 4\n")
    assert train.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "'n_layers'" in err and "did you mean 'n_layer'" in err
    assert "n_head" in err and "block_size" in err  # the valid keys of that section
    assert len(err.strip().splitlines()) == 1


def test_lr_points_to_learning_rate():
    with pytest.raises(UserError, match="'lr'.*learning_rate"):
        load_recipe(None, ["--lr=1e-3"])


def test_wrong_type_exits_2(capsys):
    assert train.main(["--max_iters=many"]) == 2
    err = capsys.readouterr().err
    assert "max_iters='many'" in err and "int" in err


def test_all_problems_reported_together(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("n_embd: 100\nn_head: 6\ndropout: 1.5\nbetaa2: 0.9\n")
    assert train.main([str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3
    assert any("n_embd=100 is not divisible by n_head=6" in line for line in err)
    assert any("dropout=1.5" in line for line in err)
    assert any("did you mean 'beta2'" in line for line in err)


@pytest.mark.parametrize("text, message", [
    ("- a\n- b\n", "mapping"),
    ("n_layer: [1\n", "not valid YAML"),
])
def test_malformed_recipe(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_recipe(str(path))


def test_missing_recipe_file():
    with pytest.raises(UserError, match="nope.yaml not found"):
        load_recipe("nope.yaml")


def test_help_lists_every_key_with_its_doc(capsys):
    assert train.main(["--help"]) == 0
    out = capsys.readouterr().out
    for key in KEYS:
        assert f"--{key}=" in out
    assert "Context length in tokens" in out  # block_size's docstring
    assert out.count("\n      ") == len(KEYS)  # one docstring line per key


def test_nanogpt_wandb_log_adds_wandb_to_log_with(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("log_with: tensorboard\nwandb_log: true\nwandb_project: owt\nwandb_run_name: gpt2-124M\n")
    r = load_recipe(str(path))
    assert (r.log.log_with, r.log.wandb_project, r.log.wandb_run_name) == ("tensorboard,wandb", "owt", "gpt2-124M")
    assert load_recipe(None, ["--wandb_log=False"]).log.log_with is None
    assert load_recipe(None, ["--wandb_log=true", "--log_with=wandb"]).log.log_with == "wandb"


@pytest.mark.parametrize("arg, message", [
    ("--log_with=tensorboard,wandbb", "log_with: 'wandbb' is not a tracker"),
    ("--hub_strategy=sometimes", "hub_strategy='sometimes' is not one of end, every_save, checkpoint"),
    ("--hub_model_id=a/b/c", "hub_model_id='a/b/c' is not a Hub repo id"),
    ("--eval_samples=-1", "eval_samples=-1 must be at least 0"),
    ("--wandb_log=maybe", "wandb_log='maybe' is not a valid bool"),
])
def test_bad_watch_and_hub_keys(arg, message):
    with pytest.raises(UserError, match=message):
        load_recipe(None, [arg])


def test_fast_cpu_recipe_races_on_nanogpts_data_with_muon_wsd_and_one_evaluation():
    """shakespeare_char_cpu_fast.yaml: nanoGPT's char-level data (so whole-val losses compare), the
    levers of docs/speed.md's Time to quality, and the shipped recipe's defaults left alone."""
    fast, cpu = (load_recipe(str(ROOT / "recipes" / name))
                 for name in ("shakespeare_char_cpu_fast.yaml", "shakespeare_char_cpu.yaml"))
    assert (fast.data.dataset, fast.data.tokenizer, fast.data.val_fraction, fast.data.source) == \
           (cpu.data.dataset, cpu.data.tokenizer, cpu.data.val_fraction, cpu.data.source)
    assert (fast.model.n_layer, fast.model.n_head, fast.model.n_embd, fast.model.block_size) == (1, 4, 128, 64)
    assert (fast.optim.optimizer, fast.optim.muon_momentum, fast.optim.lr_schedule) == ("muon", 0.9, "wsd")
    assert fast.train.eval_interval == fast.train.max_iters == fast.optim.lr_decay_iters == 260
    assert fast.system.mixed_precision == "auto" and fast.system.compile is False
    assert (cpu.optim.optimizer, cpu.optim.lr_schedule) == ("adamw", "cosine")  # nanoGPT's numbers stay the reference


NANOGPT_CONFIGS = ROOT / "tests" / "fixtures" / "nanogpt_config"  # nanoGPT's config/*.py as it ships them (ORIGIN.md)


def nanogpt_reads(path: Path) -> dict:
    """What nanoGPT's train.py gets from a config file: it exec()s it (here, in the test, on our fixture)."""
    scope = {}
    exec(path.read_text(), scope)
    return {k: v for k, v in scope.items() if not k.startswith("__") and isinstance(v, (bool, int, float, str))}


@pytest.mark.parametrize("path", sorted(p for p in NANOGPT_CONFIGS.glob("*.py") if p.name != "finetune_shakespeare.py"),
                         ids=lambda p: p.name)
def test_nanogpt_config_files_read_as_nanogpt_reads_them(path):
    expected = nanogpt_reads(path)
    recipe = load_recipe(str(path))
    flat = recipe.to_dict()
    for key, value in expected.items():
        if key == "wandb_log":  # nanoGPT's switch for wandb: hfgpt's log_with has wandb in it or not
            assert ("wandb" in (flat["log_with"] or "")) is value
        else:
            assert flat[key] == value and type(flat[key]) is type(value), key
    assert len(expected) >= 5  # the eval configs have 5 keys, the training ones 11-20


def test_nanogpt_config_values_and_command_line_overrides():
    from hfgpt.config import Command, parse_command

    parsed = parse_command([str(NANOGPT_CONFIGS / "train_gpt2.py"), "--batch_size=4"],
                           Command("train", "Train.", recipe_step="train"))
    r = parsed.recipe
    assert r.train.gradient_accumulation_steps == 40  # `5 * 8` in the file
    assert (r.train.batch_size, r.model.block_size, r.log.log_with, r.log.wandb_run_name) == (4, 1024, "wandb", "gpt2-124M")
    r = load_recipe(str(NANOGPT_CONFIGS / "eval_gpt2_xl.py"))
    assert (r.model.init_from, r.train.eval_only, r.train.eval_iters, r.log.log_with) == ("gpt2-xl", True, 500, None)


def test_nanogpt_finetune_config_is_refused_line_by_line_without_running_it(tmp_path):
    """It imports time and names its run 'ft-' + str(time.time()): code, which hfgpt does not run."""
    path = NANOGPT_CONFIGS / "finetune_shakespeare.py"
    with pytest.raises(UserError) as e:
        load_recipe(str(path))
    lines = str(e.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}: line 1: `import time` is not a `key = value` line")
    assert lines[1].startswith(f"{path}: line 8: the value of wandb_run_name is not a literal")
    fixed = tmp_path / "finetune_shakespeare.py"  # as the messages say: the import deleted, the value written
    fixed.write_text(path.read_text().replace("import time\n", "").replace("'ft-' + str(time.time())", "'ft-shakespeare'"))
    r = load_recipe(str(fixed))
    assert (r.model.init_from, r.log.wandb_run_name, r.optim.decay_lr, r.train.gradient_accumulation_steps) == \
        ("gpt2-xl", "ft-shakespeare", False, 32)


@pytest.mark.parametrize("text, message", [
    ("import os\nos.system('touch pwned')\n", "line 1: `import os` is not a `key = value` line"),
    ("n_layer = __import__('os').system('touch pwned')\n", "line 1: the value of n_layer is not a literal"),
    ("batch_size = 2 ** 10 ** 10\n", "the value of batch_size is not a literal"),
    ("n_layer = n_head = 4\n", "`n_layer = n_head = 4` is not a `key = value` line"),
    ("for i in range(3):\n    n_layer = i\n", "line 1: `for i in range(3):` is not a `key = value` line"),
    ("max_iters = 'a' * 10\n", "the value of max_iters is not a literal"),
    ("n_layer = 4\nn_layer = \n", "line 2 is not valid Python"),
    ("dtype = 'bfloat16'\n", "unknown key 'dtype': hfgpt calls it mixed_precision"),
    ("backend = 'nccl'\n", "unknown key 'backend': hfgpt calls it nothing"),
    ("n_layers = 4\n", "unknown key 'n_layers': did you mean 'n_layer'?"),
    ("dropout = 'high'\n", "dropout='high' is not a valid float"),
])
def test_nanogpt_style_config_that_is_not_plain_values_is_refused(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.py"
    path.write_text(text)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")
                       .replace("?", r"\?")):
        load_recipe(str(path))
    assert not (tmp_path / "pwned").exists()


def test_nanogpt_style_config_arithmetic_and_last_assignment_wins(tmp_path):
    path = tmp_path / "config.py"
    path.write_text("learning_rate = 6e-4\nmin_lr = 6e-4 / 10\nmax_iters = 2**10 - 24\nbatch_size: int = 8\n"
                         "n_layer = 4\nn_layer = 6  # a later line wins, as under exec\nlog_with = None\n")
    r = load_recipe(str(path))
    assert (r.optim.min_lr, r.train.max_iters, r.train.batch_size, r.model.n_layer) == (pytest.approx(6e-5), 1000, 8, 6)
