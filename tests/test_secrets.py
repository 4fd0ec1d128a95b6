"""No secret given anywhere (command line, recipe, environment) is written into any file hfgpt makes
or shown in any message: the lock's record of the command line, the refusal that names a lock's
holder, the note of a lock taken over, errors that quote a URL, and every file of out_dir and the
dataset folder, also after a kill -9."""

import json
import signal
import subprocess
import time

import pytest
import yaml

from hfgpt import eval as hfgpt_eval
from hfgpt import prepare, train
from hfgpt.core.lock import LOCK, holder_text
from tests.conftest import PYTHON, LocalServer, run_env
from tests.helpers import error_lines, read_metrics

PASSWORD, SIGNATURE, TOKEN = "pAss-9f3k2", "s1gnAture-77q", "hf_" + "SecretTokenOfTheTest" * 2
SECRETS = (PASSWORD, SIGNATURE, TOKEN, "us3rname")


@pytest.fixture
def secret_url(workdir, shakespeare_text):
    """A URL of a text that carries a password and a signed query, served locally."""
    (workdir / "served").mkdir()
    (workdir / "served" / "input.txt").write_text(shakespeare_text[:60_000], encoding="utf-8")
    server = LocalServer(workdir / "served")
    yield f"http://us3rname:{PASSWORD}@{server.url.removeprefix('http://')}/input.txt?X-Amz-Signature={SIGNATURE}"
    server.stop()


def leaked(*folders) -> list[str]:
    """Files below `folders` (every file, hidden ones and downloads/ included) that hold a secret."""
    found = []
    for folder in folders:
        for path in [folder] if folder.is_file() else folder.rglob("*"):
            if path.is_file() and any(s.encode() in path.read_bytes() for s in SECRETS):
                found.append(str(path))
    return found


def wait_for_training(proc, out, rows: int = 3, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if len([r for r in read_metrics(out, running=True) if "loss" in r]) >= rows:
            return
        time.sleep(0.05)
    raise AssertionError(f"training did not start (exit {proc.poll()}): {proc.stderr.read()[-2000:] if proc.stderr else ''}")


def test_a_command_line_is_saved_without_its_secrets():
    from hfgpt.core.names import shown_command

    shown = shown_command(["python", "-m", "hfgpt.train", "r.yaml", f"--hub_token={TOKEN}", "--password", PASSWORD,
                           f"--source=[https://us3rname:{PASSWORD}@h/a.txt?sig={SIGNATURE}, b.txt]", TOKEN])
    assert shown == "python -m hfgpt.train r.yaml --hub_token=*** --password *** --source=[https://h/a.txt, b.txt] ***"


@pytest.mark.parametrize("step, args", [
    ("train", ["--init_from=https://us3rname:{pw}@127.0.0.1:9/models/m?token={sig}"]),
    ("prepare", ["--tokenizer=https://us3rname:{pw}@127.0.0.1:9/tok?token={sig}"]),
    ("train", ["--init_from=resume", "--resume_from=https://us3rname:{pw}@127.0.0.1:9/ckpt?token={sig}"]),
    ("eval", []),
], ids=["init_from", "tokenizer", "resume_from", "eval's model"])
def test_errors_that_quote_a_url_show_it_without_its_secrets(tiny_recipe, workdir, capsys, step, args):
    recipe = str(tiny_recipe(max_iters=2, eval_interval=2, eval_iters=1))
    args = [a.format(pw=PASSWORD, sig=SIGNATURE) for a in args]
    if step == "eval":
        code = hfgpt_eval.main([f"https://us3rname:{PASSWORD}@127.0.0.1:9/models/m?token={SIGNATURE}"])
    else:
        code = (train if step == "train" else prepare).main([recipe, *args])
    errors = error_lines(capsys)
    assert code == 2 and len(errors) == 1 and "127.0.0.1:9" in errors[0]
    assert PASSWORD not in errors[0] and SIGNATURE not in errors[0] and "us3rname" not in errors[0]


@pytest.mark.e2e
def test_no_file_hfgpt_writes_holds_a_secret_given_anywhere(tiny_recipe, workdir, secret_url):
    """Secrets on the command line (a source URL's password and signature; the recipe's URL, with a
    Hub token in its query, is overridden: test_secrets_in_a_url_are_written_nowhere has a recipe's)
    and in the environment (HF_TOKEN): during a run, after a kill -9 midway, and after the run that
    resumes it, no file of out_dir, of data/<dataset>/ (downloads/ too) nor the lock holds one. The
    lock records the command line: without its secrets in the file, in the refusal a second run gets
    and in the note of the run that takes the lock over."""
    in_recipe = secret_url.replace("input.txt", "input.txt#frag") + f"&token={TOKEN}"
    recipe = tiny_recipe(source=in_recipe, max_iters=100_000, eval_interval=20, eval_iters=1, log_interval=1,
                         lr_decay_iters=300, init_from="auto")
    env = {**run_env(), "HF_TOKEN": TOKEN}
    out, data = workdir / "out", workdir / "data" / "tiny"
    args = [PYTHON, "-m", "hfgpt.train", str(recipe), f"--source={secret_url}"]
    killed = subprocess.Popen(args, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_training(killed, out, rows=25)  # past its first save (iteration 20)
        record = json.loads((out / LOCK).read_text())
        assert "hfgpt.train" in record["command"] and "/input.txt" in record["command"] and not leaked(out / LOCK)
        second = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "is in use by another hfgpt process" in second.stderr
        assert not [s for s in SECRETS if s in second.stdout + second.stderr], second.stderr
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert (out / LOCK).exists() and yaml.safe_load((out / "recipe.yaml").read_text())
    assert not leaked(out, data), leaked(out, data)  # the lock, as a kill -9 leaves it, too

    resumed = subprocess.run(args + ["--max_iters=45"], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "took over" in resumed.stdout, resumed.stderr[-2000:]
    assert not leaked(out, data) and not [s for s in SECRETS if s in resumed.stdout + resumed.stderr]
    assert len([p for p in [*out.rglob("*"), *data.rglob("*")] if p.is_file()]) > 30
    # a record an older hfgpt wrote, with the secrets in it: shown without them
    old = {"pid": 1, "host": "h", "started": 0, "command": f"python -m hfgpt.train r.yaml --source={secret_url}"}
    assert not [s for s in SECRETS if s in holder_text(old)]
