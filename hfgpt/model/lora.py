"""LoRA through peft: adapters on a loaded model, saved alone, merged into a plain model folder.

    model = add_lora(model, recipe.model, base="gpt2-medium")   # lora_r > 0: only lora_A/lora_B train
    load_adapter(model, checkpoint / ADAPTER)                     # resume: the saved adapter, bit for bit
    save_adapter(model, folder / ADAPTER, state_dict)             # adapter_config.json + adapter_model.safetensors
    weights = merged_weights(model, state_dict)                   # W + (lora_alpha / lora_r) B @ A, plain names

A LoRA run's out_dir is a plain folder of the base model's family (a GPT2LMHeadModel,
LlamaForCausalLM, ...: the adapter merged into the weights, no peft needed to load it) with the
adapter beside it in out_dir/adapter/ (`PeftModel.from_pretrained(base, "out_dir/adapter")`); its
checkpoints hold the adapter and its optimizer state, not the base model. peft is imported only when lora_r > 0.
"""

import json
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from hfgpt.config import ModelConfig
from hfgpt.core.errors import UserError, first_line
from hfgpt.core.names import split_revision
from hfgpt.model.families import linear_layer_names

ADAPTER = "adapter"  # out_dir/adapter/ and checkpoints' adapter/: what PeftModel.from_pretrained loads
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LORA_A = re.compile(r"^(?P<layer>.*)\.lora_A\.(?P<adapter>[^.]+)\.weight$")


def is_lora(model) -> bool:
    return hasattr(model, "peft_config")


@contextmanager
def quiet_peft():
    """peft (0.18-0.21) reads model.is_gradient_checkpointing when it wraps a model, a property transformers
    5.24 deprecated: every wrap would print a FutureWarning the user can do nothing about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def add_lora(model, m: ModelConfig, base: str | None = None):
    """peft's LoRA on m.lora_target_modules (a name matches a module whose name ends in it: GPT-2's
    c_proj is attention's and the MLP's; None: every linear layer of the blocks, whatever the
    family calls them): the model's own weights frozen, lora_A and lora_B the only trainable
    tensors. `base` (init_from) is written into adapter_config.json as the model to load the
    adapter onto."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    targets = list(m.lora_target_modules) if m.lora_target_modules is not None else linear_layer_names(model)
    if not targets:
        raise UserError(f"lora_r={m.lora_r}: found no linear layer in the transformer blocks of {model.name_or_path}: "
                        "name the modules to adapt in lora_target_modules")
    found = {name.rsplit(".", 1)[-1]: module for name, module in model.named_modules()}
    missing = [t for t in targets if t not in found]
    if missing:
        linear = sorted({n for n, mod in found.items() if isinstance(mod, (torch.nn.Linear, Conv1D))})
        raise UserError(f"lora_target_modules: {', '.join(missing)} is no module of {model.name_or_path}; its "
                        f"layers are {', '.join(linear)}")
    # GPT-2's Conv1D stores its weight as (in, out): peft must transpose its update (fan_in_fan_out)
    kinds = {isinstance(found[t], Conv1D) for t in targets}
    if len(kinds) > 1:
        raise UserError(f"lora_target_modules: {', '.join(targets)} mixes Conv1D and Linear layers, which peft adapts "
                        "with different settings: choose layers of one kind")
    fan_in_fan_out = kinds.pop()
    config = LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout, target_modules=targets,
                        fan_in_fan_out=fan_in_fan_out, bias="none", task_type="CAUSAL_LM")
    try:
        with quiet_peft():
            model = get_peft_model(model, config)
    except ValueError as e:  # peft refuses some layers of some families (Mamba's out_proj and conv1d)
        raise UserError(f"lora_target_modules: peft cannot adapt {', '.join(targets)} of {model.config.model_type} models "
                        f"({first_line(e)}): set lora_target_modules to the layers it can (of {', '.join(targets)})") from None
    if base is not None:
        config.base_model_name_or_path, config.revision = split_revision(base)
    return model


def adapter_base(folder: Path) -> str:
    """The model an adapter was trained on, from its adapter_config.json: name@revision (a Hub
    commit when it came from the Hub) or a local folder."""
    try:
        config = json.loads((Path(folder) / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{folder} holds no LoRA adapter ({first_line(e)}): resume from a checkpoint of a LoRA run, "
                        "or set lora_r to the checkpoint's") from None
    name, revision = config["base_model_name_or_path"], config.get("revision")
    return f"{name}@{revision}" if revision else name


def save_adapter(model, folder: Path, state_dict: dict | None = None) -> None:
    """The adapter alone, as peft saves it (`state_dict`: the model's, gathered across processes).
    peft's own README.md (a template card) is left out: the folder above has hfgpt's card."""
    model.save_pretrained(str(folder), safe_serialization=True, state_dict=state_dict, save_embedding_layers=False)
    (Path(folder) / "README.md").unlink(missing_ok=True)


def load_adapter(model, folder: Path) -> None:
    """Load a saved adapter's weights into a model that add_lora built with the same settings."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(folder) / ADAPTER_WEIGHTS
    try:
        weights = load_file(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} could not be read ({first_line(e)}): resume from another checkpoint") from None
    result = set_peft_model_state_dict(model, weights)
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing or result.unexpected_keys:
        raise UserError(f"the adapter in {folder} does not fit lora_r and lora_target_modules of this recipe "
                        f"({len(missing)} adapter tensors missing, {len(result.unexpected_keys)} unexpected): "
                        "set them back to the checkpoint's recipe.yaml")


def merged_weights(model, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plain model's weights from a LoRA model's state dict (accelerator.get_state_dict: gathered
    under FSDP, no second copy of the model in memory): each adapted weight becomes
    W + (lora_alpha / lora_r) * B @ A (transposed for Conv1D), computed in float32 as peft's
    merge; peft's prefixes dropped, the adapter tensors left out."""
    config = model.peft_config["default"]
    scaling = config.lora_alpha / config.r
    plain, lora_a = {}, {}
    for key, value in state_dict.items():
        if ".lora_" in key:
            if (match := LORA_A.match(key)) is not None and match["adapter"] == "default":
                lora_a[match["layer"]] = value
            continue
        plain[key.removeprefix("base_model.model.").replace(".base_layer.", ".")] = value
    for layer, a in lora_a.items():
        b = state_dict[f"{layer}.lora_B.default.weight"]
        name = layer.removeprefix("base_model.model.") + ".weight"
        delta = (b.float() @ a.float()) * scaling  # (out, in)
        if config.fan_in_fan_out:
            delta = delta.T
        plain[name] = (plain[name].float() + delta).to(plain[name].dtype)
    return plain
