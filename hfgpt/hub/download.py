"""Reading runs back from the Hugging Face Hub: resume a run from its pushed checkpoint.

    python -m hfgpt.train recipes/shakespeare_char_cpu.yaml --init_from=resume --resume_from=user/shakespeare-char
    python -m hfgpt.train recipes/shakespeare_char_cpu.yaml --init_from=resume --resume_from=user/shakespeare-char@a1b2c3d

A run pushed with hub_strategy: checkpoint has its newest resumable checkpoint in last-checkpoint/
on the Hub. resume_from=user/name[@revision] downloads that folder into out_dir/checkpoints/iter-NNNNNN
(through a temporary folder, renamed when whole) and resumes from it as from a local checkpoint.
The token comes from HF_TOKEN or `hf auth login`; it is never printed (hfgpt.hub.token).
"""

import filecmp
import shutil
from pathlib import Path

from hfgpt.core.errors import UserError
from hfgpt.core.files import make_temp_dir, replace_dir
from hfgpt.core.layout import LAST_CHECKPOINT, checkpoint_dir, read_state
from hfgpt.core.names import is_hub_id, split_revision
from hfgpt.hub.token import reason


def download_checkpoint(source: str, out_dir: str | Path) -> Path:
    """Download last-checkpoint/ of the Hub repo `source` into out_dir/checkpoints/iter-NNNNNN."""
    from huggingface_hub import snapshot_download

    repo_id, revision = split_revision(source)
    root = checkpoint_dir(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(root, ".tmp-hub-")  # named after this process: the next start removes it if we are killed
    try:
        try:
            snapshot_download(repo_id, revision=revision, allow_patterns=[f"{LAST_CHECKPOINT}/*"], local_dir=tmp)
        except Exception as e:  # offline, unknown repo or revision, no access: all end the same way
            raise UserError(f"resume_from={source}: could not download its {LAST_CHECKPOINT}/ from the Hub "
                            f"({reason(e)}); check the repo id and your access (HF_TOKEN or `hf auth login`), "
                            "or give a local checkpoint folder") from None
        folder = tmp / LAST_CHECKPOINT
        state = read_state(folder)
        if state is None:
            raise UserError(f"resume_from={source}: the repo has no complete {LAST_CHECKPOINT}/ (no valid state.json): "
                            "push the run with hub_strategy: checkpoint, or give a local checkpoint folder")
        final = root / f"iter-{state['iter']:06d}"
        if final.exists():
            if not same_files(folder, final):
                raise UserError(f"resume_from={source}: its {LAST_CHECKPOINT}/ (iteration {state['iter']}) is not the "
                                f"checkpoint {final} of the run in {out_dir}, which it would replace: resume that run "
                                "with --init_from=resume alone, or resume the Hub's run in another --out_dir")
            print(f"{source}/{LAST_CHECKPOINT} is the checkpoint {final} already here: resuming it")
            return final
        replace_dir(folder, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"downloaded {source}/{LAST_CHECKPOINT} (iteration {state['iter']}) to {final}")
    return final


def same_files(a: Path, b: Path) -> bool:
    """Whether two checkpoint folders hold the same files, byte for byte (their model cards aside: the
    Hub's names the repo)."""
    names = {p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "README.md"}
    if names != {p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != "README.md"}:
        return False
    return all(filecmp.cmp(a / name, b / name, shallow=False) for name in names)


def resume_from_hub(accelerator, recipe) -> None:
    """With init_from=resume and resume_from=user/name: the main process downloads the checkpoint and
    every process then resumes from the local copy."""
    if recipe.model.init_from != "resume" or not is_hub_id(recipe.train.resume_from):
        return
    from accelerate.utils import broadcast_object_list

    local = [str(download_checkpoint(recipe.train.resume_from, recipe.train.out_dir))
             if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(local)
    recipe.train.resume_from = local[0]
