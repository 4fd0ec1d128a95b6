"""What each accelerate strategy needs from hfgpt: settings made before accelerator.prepare, and
the whole model and optimizer state that a checkpoint saves, gathered from where the strategy keeps it.

    compile_blocks(gpt)                                   # FSDP, DeepSpeed: compile each block in place
    set_wrap_unit(accelerator, gpt)                       # FSDP: shard by the model's own blocks
    fill_deepspeed_config(accelerator, 12, accum=5, grad_clip=1.0)
    reduce_in_float32(accelerator)                        # FSDP: gradients summed in float32
    state_dict = model_state_dict(accelerator, model)     # every process calls these three
    state = optimizer_state(accelerator, model, optimizer)
    shared = shared_storage(accelerator, out_dir)         # do all machines see out_dir?

DDP and one device need none of it beyond the plain state dicts. accelerate runs FSDP on GPUs
only; FSDP2's parts are tested on CPU processes with torch's fully_shard, DeepSpeed's with its
CPU accelerator.
"""

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from hfgpt.core.errors import UserError
from hfgpt.core.files import make_temp_dir
from hfgpt.model.families import transformer_blocks
from hfgpt.model.gpt import own_names

SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


# --- before prepare ------------------------------------------------------------------------------

def compile_blocks(gpt) -> None:
    """torch.compile each transformer block in place (accelerate's recipe for FSDP2): FSDP shards
    and DeepSpeed partitions the modules of the tree, which a compiled root would hide from them,
    with a graph break at every block (hfgpt.model.families.transformer_blocks)."""
    for block in transformer_blocks(gpt):
        block.compile()


def set_wrap_unit(accelerator: Accelerator, gpt, say=print) -> None:
    """Under FSDP, shard by the causal LM's own blocks (its _no_split_modules: GPT2Block,
    LlamaDecoderLayer, Qwen2DecoderLayer, GPTNeoXLayer, ...): accelerate looks for them on the
    module it prepares, NextTokenLoss, which has none, so an accelerate config that names no class
    would shard nothing per block, and one that names another family's class would fail. A class
    named in the config that the model has is kept."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is None:
        return
    blocks = {type(b).__name__ for b in transformer_blocks(gpt)}
    own = [name for name in (getattr(gpt, "_no_split_modules", None) or ()) if name in blocks]
    named = plugin.transformer_cls_names_to_wrap
    if named and all(name in blocks for name in named):
        return
    if named:
        say(f"note: the accelerate config shards by {', '.join(named)}, which {gpt.config.model_type} models do not "
            f"have: sharding by their blocks, {', '.join(own)}")
    plugin.transformer_cls_names_to_wrap = own


def fill_deepspeed_config(accelerator: Accelerator, batch_size: int, accum: int, grad_clip: float) -> None:
    """Make the accumulation over `accum` micro-batches accelerate's (accelerator.accumulate in
    train_step) and, under DeepSpeed, give DeepSpeed the recipe's micro-batch, accumulation and
    clipping before prepare: its config says "auto" for them (accelerate can fill them only from
    a DataLoader, and hfgpt has none), and a value that disagrees with the recipe is refused."""
    accelerator.gradient_accumulation_steps = accum
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    wanted = {"train_micro_batch_size_per_gpu": batch_size, "gradient_accumulation_steps": accum,
              "train_batch_size": batch_size * accum * accelerator.num_processes, "gradient_clipping": float(grad_clip)}
    wrong = []
    for key, value in wanted.items():
        node, leaf = plugin.hf_ds_config.find_config_node(key)
        current = node.get(leaf, "auto")
        if current == "auto":
            node[leaf] = value
        elif current != value:
            wrong.append(f"{key}={current} (recipe: {value})")
    if wrong:
        raise UserError(f"the DeepSpeed config disagrees with the recipe: {', '.join(wrong)}; leave these keys out of "
                        "the accelerate config (or set them to auto in a DeepSpeed JSON): hfgpt fills them from the recipe")


def reduce_in_float32(accelerator: Accelerator) -> None:
    """Under FSDP with bf16/fp16, sum gradients across processes in float32, as DDP does with its
    float32 gradients: accelerate's policy reduces them in the low precision."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    policy = getattr(plugin, "mixed_precision_policy", None)
    if dataclasses.is_dataclass(policy) and getattr(policy, "reduce_dtype", None) not in (None, torch.float32):
        plugin.mixed_precision_policy = dataclasses.replace(policy, reduce_dtype=torch.float32)



# --- the whole state, for checkpoints ----------------------------------------------------------

def model_state_dict(accelerator: Accelerator, model) -> dict[str, torch.Tensor]:
    """The whole model's weights, under the causal LM's own names (every process must call it).
    Under DeepSpeed, its float32 master weights: accelerator.get_state_dict gives DeepSpeed's bf16
    working copy under ZeRO-1/2 and refuses under ZeRO-3 (unless it gathers a 16-bit copy)."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return own_names(model, accelerator.get_state_dict(model))
    from deepspeed.utils import safe_get_full_fp32_param

    module = accelerator.deepspeed_engine_wrapped.engine.module
    state = {name: safe_get_full_fp32_param(p).detach().cpu() for name, p in module.named_parameters()}
    for prefix, sub in module.named_modules():
        for name, buffer in sub.named_buffers(recurse=False):
            if buffer is not None and name not in sub._non_persistent_buffers_set:
                state[f"{prefix}.{name}" if prefix else name] = buffer.detach().cpu()
    return own_names(model, state)


def optimizer_state(accelerator: Accelerator, model, optimizer) -> dict:
    """The optimizer's whole state on the process that writes it (every process must call it):
    gathered from the shards under FSDP (keyed by parameter names, empty on other processes)."""
    if accelerator.distributed_type != DistributedType.FSDP:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer),
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(accelerator: Accelerator, model, optimizer, read: Callable[[], dict]) -> None:
    """optimizer_state()'s inverse; read() returns what it saved. Under FSDP only the main process
    reads it, and the state is sent to every process's shard."""
    if accelerator.distributed_type != DistributedType.FSDP:
        optimizer.load_state_dict(read())
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state = read() if accelerator.is_main_process else {}
    set_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def shared_storage(accelerator: Accelerator, folder: str | Path) -> bool:
    """Whether every process sees what the main process writes in `folder` (every process must
    call it): the main process makes a probe folder there, the others look for it by name."""
    if accelerator.num_processes == 1:
        return True
    from accelerate.utils import broadcast_object_list

    folder = Path(folder)
    probe = [None]
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        probe = [make_temp_dir(folder, ".storage-probe-").name]
    broadcast_object_list(probe)
    seen = folder.is_dir() and probe[0] in os.listdir(folder)  # listing refreshes a network file system's cache
    everyone = accelerator.gather(torch.tensor([float(seen)], device=accelerator.device))
    if accelerator.is_main_process:
        (folder / probe[0]).rmdir()
    return bool(everyone.min().item() == 1)
