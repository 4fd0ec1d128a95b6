"""The Hub for real: huggingface_hub's own client, over HTTP, against tests/tools/fake_hub.py on 127.0.0.1.

HF_ENDPOINT is read when huggingface_hub is imported, so everything that talks to the Hub runs in
a subprocess with the fake hub's URL, its own HF_HOME and a token. Proxies point at a closed local
port (loopback excepted), so a request meant for anywhere but 127.0.0.1 fails instead of leaving
the machine; each test checks that the fake hub saw the requests.
"""

import hashlib
import json
import signal
import socket
import subprocess
import textwrap
import time

import pytest

from tests.tools import fault_injection
from tests.conftest import PYTHON, run_env
from tests.helpers import read_metrics
from tests.tools.fake_hub import FakeHub, client_env

TOKEN = "hf_" + "TestOnlySecret" * 3  # the fake hub accepts this token and no other
USER = "test-user"
MB = 1 << 20


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """One fake hub for the module: large files go through xet (local:// CAS) or, with
    HF_HUB_DISABLE_XET=1 on the client, through classic LFS."""
    with FakeHub(lfs_mode="xet", xet_dir=str(tmp_path_factory.mktemp("xet-cas")), token=TOKEN, user=USER) as hub:
        yield hub


def hub_env(hub, home, path: str = "xet", token: str = TOKEN) -> dict:
    return client_env(hub, run_env(), home, token, path)


def run(args: list[str], env: dict, cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert TOKEN not in result.stdout + result.stderr, "the token was printed"
    return result


def run_script(script: str, env: dict, cwd) -> dict:
    """Run Python code in a subprocess; it prints one JSON object as its last line."""
    result = run([PYTHON, "-c", textwrap.dedent(script)], env, cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_token_nowhere(folder) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def paths_for(hub, repo: str) -> list[str]:
    return [path for _, path in hub.requests if f"/{repo}" in path]


@pytest.mark.e2e
@pytest.mark.parametrize("path", ["xet", "lfs"])
def test_training_pushes_in_the_background_then_downloads_loads_and_resumes(tiny_recipe, workdir, hub, path):
    repo = f"{USER}/run-{path}"
    recipe = tiny_recipe(f"{path}.yaml", n_embd=384, n_head=4, max_iters=10, eval_interval=5, log_interval=5,
                         eval_iters=2, lr_decay_iters=10, push_to_hub=True, hub_model_id=repo,
                         hub_strategy="checkpoint")
    env = hub_env(hub, workdir / "hf-home", path)
    hub.commit_delay = 5.0  # slow commits: training must not wait for them
    try:
        result = run([PYTHON, "-m", "hfgpt.train", str(recipe)], env, workdir)
    finally:
        hub.commit_delay = 0.0
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = workdir / "out"
    assert (out / "model.safetensors").stat().st_size > 10 * MB

    # pushed in the background: iteration 10 was checkpointed while the iteration-5 push was still going
    commits = hub.history("model", repo)
    titles = [c["title"] for c in commits]
    assert titles[1].startswith("iter 5:") and titles[-1] == "end of training: iter 10", titles
    assert commits[1]["time"] > (out / "checkpoints" / "iter-000010" / "state.json").stat().st_mtime
    # the large files took the path under test
    xet_token = f"/api/models/{repo}/xet-write-token/main" in paths_for(hub, repo)
    lfs_batch = f"/{repo}.git/info/lfs/objects/batch" in paths_for(hub, repo)
    assert (xet_token, lfs_batch) == ((True, False) if path == "xet" else (False, True))

    # download it back: byte-identical; loads with from_pretrained and pipeline by its Hub id; resumes
    got = run_script(f"""
        import hashlib, json, pathlib
        from huggingface_hub import snapshot_download
        from transformers import AutoModelForCausalLM, pipeline
        from hfgpt import train
        folder = pathlib.Path(snapshot_download({repo!r}, local_dir="downloaded"))
        files = {{str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts}}
        model = AutoModelForCausalLM.from_pretrained({repo!r})
        text = pipeline("text-generation", model={repo!r})("ROMEO:", max_new_tokens=8, do_sample=False)[0]["generated_text"]
        code = train.main([{str(recipe)!r}, "--init_from=resume", "--resume_from={repo}", "--max_iters=15",
                           "--out_dir=resumed", "--push_to_hub=false"])
        print(json.dumps({{"files": files, "params": model.num_parameters(), "text": text, "code": code}}))
    """, env, workdir)
    # every file byte-identical, except the card, which the Hub copy words for the repo
    last = out / "checkpoints" / "iter-000010"
    expected = {p.name: sha256(p) for p in out.iterdir() if p.is_file() and p.name != "README.md"}
    expected |= {f"last-checkpoint/{p.name}": sha256(p) for p in last.iterdir() if p.name != "README.md"}
    assert {k: v for k, v in got["files"].items() if not k.endswith("README.md") and k != ".gitattributes"} == expected
    assert "model.safetensors" in expected and "last-checkpoint/optimizer.safetensors" in expected
    assert got["params"] > 3_000_000 and got["text"].startswith("ROMEO:")
    assert got["code"] == 0
    state = json.loads((workdir / "resumed" / "checkpoints" / "iter-000015" / "state.json").read_text())
    assert state["iter"] == 15 and state["tokens_seen"] == 15 * 8 * 32
    resumed_rows = read_metrics(workdir / "resumed")
    assert [r["iter"] for r in resumed_rows if "loss" in r] == [15]  # it went on from iteration 10
    card = (workdir / "downloaded" / "README.md").read_text()
    assert f'model="{repo}"' in card  # the card on the Hub names the repo
    assert_token_nowhere(workdir)


@pytest.mark.e2e
def test_push_command_revisions_init_from_and_eval_of_a_hub_id(tiny_recipe, workdir, hub):
    from hfgpt import eval as hfgpt_eval
    from hfgpt import train

    recipe = tiny_recipe(max_iters=20, eval_interval=20, lr_decay_iters=20)
    assert train.main([str(recipe)]) == 0
    (workdir / "out").rename(workdir / "first")
    assert train.main([str(recipe), "--seed=7"]) == 0
    repo = f"{USER}/cli"
    got = run_script(f"""
        import json
        import torch
        from safetensors.torch import load_file
        from hfgpt import eval, push, train
        from hfgpt.model.gpt import load_model
        from hfgpt.hub.push import Pusher
        pusher = Pusher("first", "{repo}")
        pusher.finish("first run")
        first = pusher.commit_url.rsplit("/", 1)[1]
        codes = [push.main(["out", "--hub_model_id={repo}"])]
        model = load_model("{repo}@" + first, block_size=32)  # as init_from: user/name@revision
        weights = load_file("first/model.safetensors")
        same = all(torch.equal(p, weights[k]) for k, p in model.state_dict().items() if k in weights)
        codes.append(eval.main(["{repo}@" + first, "--dataset=tiny", "--out=hub-eval.json"]))
        codes.append(train.main(["{recipe}", "--init_from={repo}@" + first, "--max_iters=2", "--eval_interval=2",
                                 "--out_dir=finetuned"]))
        print(json.dumps({{"codes": codes, "same": same}}))
    """, hub_env(hub, workdir / "hf-home"), workdir)
    assert got == {"codes": [0, 0, 0], "same": True}
    assert [c["title"] for c in hub.history("model", repo)][1:] == ["first run", "hfgpt: push out"]
    assert hfgpt_eval.main([str(workdir / "first")]) == 0  # the same model, evaluated from its local folder
    local, remote = (json.loads(p.read_text()) for p in (workdir / "first" / "eval_results.json", workdir / "hub-eval.json"))
    assert remote["loss"] == pytest.approx(local["loss"], abs=1e-6) and remote["tokens"] == local["tokens"] > 9000
    assert (workdir / "finetuned" / "model.safetensors").is_file()
    assert_token_nowhere(workdir)


@pytest.mark.e2e
def test_failed_pushes_are_reported_and_never_stop_training(tiny_recipe, workdir, hub):
    recipe = tiny_recipe(max_iters=10, eval_interval=5, log_interval=5, eval_iters=2, lr_decay_iters=10,
                         push_to_hub=True, hub_model_id=f"{USER}/flaky")
    env = hub_env(hub, workdir / "hf-home")
    script = f"""
        import json, sys
        from hfgpt import train
        print(json.dumps(train.main([{str(recipe)!r}] + sys.argv[1:])))
    """
    hub.fail_commits = 1  # a 400: the iteration-5 push fails at once, the later ones land
    try:
        partly = run([PYTHON, "-c", textwrap.dedent(script)], env, workdir)
        hub.fail_commits = 1000  # nothing lands
        never = run([PYTHON, "-c", textwrap.dedent(script), "--out_dir=out2"], env, workdir)
    finally:
        hub.fail_commits = 0
    bad_token = run([PYTHON, "-m", "hfgpt.train", str(recipe), "--out_dir=out3"],
                    hub_env(hub, workdir / "hf-home", token="hf_wrong"), workdir)

    assert partly.stdout.strip().splitlines()[-1] == "0", partly.stdout[-3000:] + partly.stderr[-3000:]
    titles = [c["title"] for c in hub.history("model", f"{USER}/flaky")]
    assert not any(t.startswith("iter 5:") for t in titles)
    # the final push lands, unless the iteration-10 push already holds the same files (no empty commit)
    assert titles[-1] == "end of training: iter 10" or titles[-1].startswith("iter 10:"), titles
    reports = [line for line in (partly.stdout + partly.stderr).splitlines() if line.startswith("warning: push")]
    assert len(reports) == 1 and "iter 5:" in reports[0] and "HTTP 400" in reports[0]  # reported, training went on

    assert never.stdout.strip().splitlines()[-1] == "2" and "error: the final push" in never.stderr
    assert (workdir / "out2" / "model.safetensors").is_file() and (workdir / "out2" / "checkpoints" / "iter-000010").is_dir()
    rows = read_metrics(workdir / "out2")
    assert rows[-1]["iter"] == 10  # training ran to the end
    assert not list((workdir / "out2").glob(".push-*"))

    assert bad_token.returncode == 2 and "hf auth login" in bad_token.stderr
    assert not (workdir / "out3").exists()  # stopped before training
    assert_token_nowhere(workdir)


def head_files(hub, repo: str) -> dict:
    """path -> the fake hub's FileEntry, in the repo's newest commit."""
    return hub.history("model", repo)[-1]["files"]


def pid_of_a_dead_process() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.e2e
def test_push_uploads_the_model_folder_only_and_keeps_others_snapshots(tiny_recipe, workdir, hub):
    from hfgpt import train

    assert train.main([str(tiny_recipe(max_iters=4, eval_interval=4, eval_iters=1, warmup_iters=1, lr_decay_iters=4,
                                       log_with="tensorboard"))]) == 0
    out, outside = workdir / "out", workdir / "private"
    model_files = {p.name for p in out.iterdir() if p.is_file()}
    runs = {str(p.relative_to(out)) for p in (out / "runs").rglob("*") if p.is_file()}
    outside.mkdir()
    (outside / "secret.txt").write_text("TOP-SECRET-CONTENT")
    (out / "notes.txt").write_text("my notes")
    (out / ".env").write_text("TOP-SECRET-CONTENT")
    (out / "link.txt").symlink_to(outside / "secret.txt")
    (out / "linked").symlink_to(outside)
    (out / "runs" / "leak.txt").symlink_to(outside / "secret.txt")
    host = socket.gethostname().replace("-", "_")
    sleeper = subprocess.Popen(["sleep", "120"])  # another pusher, still running: its snapshot is pending
    try:
        live, dead = (out / f".push-{host}-{pid}-0" for pid in (sleeper.pid, pid_of_a_dead_process()))
        for folder in (live, dead):
            folder.mkdir()
            (folder / "config.json").write_text("{}")
        result = run([PYTHON, "-m", "hfgpt.push", "out", f"--hub_model_id={USER}/only"], hub_env(hub, workdir / "home"),
                     workdir)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert live.is_dir() and not dead.exists()  # it cleaned only the dead pusher's snapshot
    finally:
        sleeper.kill()
        sleeper.wait()
    files = head_files(hub, f"{USER}/only")
    assert set(files) == {".gitattributes"} | model_files | runs, set(files)
    assert not [path for path, entry in files.items() if entry.data and b"TOP-SECRET" in entry.data]
    left_out = [line for line in result.stdout.splitlines() if line.startswith("left out of the push")]
    assert len(left_out) == 1 and all(name in left_out[0] for name in ("notes.txt", "link.txt", "linked", "leak.txt"))
    assert ".env" not in left_out[0]


@pytest.mark.e2e
@pytest.mark.parametrize("status, commits, code", [(400, 1, 2), (503, 2, 0)])
def test_only_answers_that_may_change_are_tried_again(workdir, hub, status, commits, code):
    """A 4xx answer comes again: reported at once. A 5xx (or 429, a dropped connection) may pass:
    huggingface_hub tries again itself (after 1 s, then 2, 4, 8, 8)."""
    repo = f"{USER}/retry-{status}"
    (workdir / "out").mkdir()
    (workdir / "out" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    hub.fail_commits, hub.fail_status = 1, status
    try:
        result = run([PYTHON, "-m", "hfgpt.push", "out", f"--hub_model_id={repo}"], hub_env(hub, workdir / "home"),
                     workdir)
    finally:
        hub.fail_commits, hub.fail_status = 0, 400
    assert result.returncode == code, result.stdout[-3000:] + result.stderr[-3000:]
    assert len([path for method, path in hub.requests if method == "POST" and path.endswith(f"{repo}/commit/main")]) \
        == commits
    if code:
        assert "HTTP 400: Bad request for commit endpoint: commit refused" in result.stdout
        assert "error: the final push" in result.stderr


def test_offline_mode_is_named_not_the_token(workdir, monkeypatch, capsys):
    from hfgpt import push

    (workdir / "out").mkdir()
    (workdir / "out" / "config.json").write_text("{}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # the tests run with HF_HUB_OFFLINE=1
    assert push.main(["out"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "offline mode (HF_HUB_OFFLINE=1" in errors[0] and "token" not in errors[0]


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["second SIGINT", "SIGTERM, push fails"])
def test_a_signal_and_the_final_push(tiny_recipe, workdir, hub, case):
    """SIGINT stops training; a second SIGINT while the final push is awaited stops at once (130).
    SIGTERM stops training; a final push that then fails is reported, and the exit code stays 143."""
    repo = f"{USER}/signal-{case[:6].strip()}"
    recipe = tiny_recipe(max_iters=100_000, eval_interval=100_000, log_interval=1, lr_decay_iters=100_000,
                         push_to_hub=True, hub_model_id=repo, hub_strategy="end")
    hub.commit_delay, hub.fail_commits = (60.0, 0) if case == "second SIGINT" else (0.0, 1000)
    commits = lambda: [p for m, p in hub.requests if m == "POST" and p.endswith(f"{repo}/commit/main")]  # noqa: E731
    try:
        proc = subprocess.Popen([PYTHON, "-m", "hfgpt.train", str(recipe)], env=hub_env(hub, workdir / "home"),
                                cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # a row in metrics.jsonl: the loop runs, with its signal handlers (the file itself is made
        # before them, and a signal during set-up ends the process as signals do: nothing to save yet)
        deadline = time.time() + 120
        while not read_metrics(workdir / "out", running=True) and time.time() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT if case == "second SIGINT" else signal.SIGTERM)
        if case == "second SIGINT":
            while not commits() and time.time() < deadline:  # the final push is being awaited
                time.sleep(0.1)
            time.sleep(0.5)
            second = time.time()
            proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
        ended = time.time()
    finally:
        hub.commit_delay, hub.fail_commits = 0.0, 0
    assert TOKEN not in stdout + stderr
    assert (workdir / "out" / "checkpoints").is_dir()  # training stopped with a checkpoint
    if case == "second SIGINT":
        assert proc.returncode == 130 and ended - second < 10, (proc.returncode, ended - second, stderr[-2000:])
        assert "SIGINT: stopped waiting for the push" in stdout + stderr
    else:
        assert proc.returncode == 143, stdout[-2000:] + stderr[-2000:]
        assert "error: the final push" in stdout + stderr and commits()


@pytest.mark.e2e
def test_background_push_survives_random_kills(tmp_path, shakespeare_text):
    """The CI-sized run of tests/tools/fault_injection.py --target=push (python -m tests.tools.fault_injection
    --target=push --kills=10 runs longer)."""
    got = fault_injection.run_push(tmp_path, shakespeare_text[:100_000], kills=3, seed=0, say=lambda message: None)
    assert got["kills"] == 3 and got["commits"] >= 3
