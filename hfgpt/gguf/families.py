"""Model families as llama.cpp's architectures: the hyperparameters it reads and each weight in the
layout it expects. GPT2LMHeadModel is llama.cpp's `gpt2`, LlamaForCausalLM its `llama`.

    family = family_of(model.config, folder)     # UserError for a model llama.cpp's gpt2/llama cannot run
    family.hparams(writer, config)
    for name, tensor in family.tensors(model.state_dict(), config): ...   # GGUF names, llama.cpp's layout

Names come from the gguf package's own table (gguf.get_tensor_name_map), the one llama.cpp's
convert_hf_to_gguf.py uses, and so do the two changes of layout: GPT-2's Conv1D weights are stored
(in, out) and are transposed; Llama's q and k rows are permuted from transformers' rotate-half
RoPE to llama.cpp's interleaved pairs (LlamaModel.permute there).
"""

from collections.abc import Iterator
from dataclasses import dataclass

import gguf
import torch

from hfgpt.core.errors import UserError

GPT2_CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
# llama.cpp computes GPT-2's GELU as the tanh approximation (transformers' gelu_new) from a half-precision
# table: with hfgpt's exact "gelu" the logits come out up to ~2e-3 apart (tests/test_export.py; ~3e-5 with
# gelu_new), close enough that the greedy tokens agree there, but not bitwise.
GPT2_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast")


@dataclass
class Family:
    arch: gguf.MODEL_ARCH
    model_type: str

    @property
    def name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]

    def context(self, config) -> int:
        return config.n_positions if self.model_type == "gpt2" else config.max_position_embeddings

    def hparams(self, writer: gguf.GGUFWriter, config) -> None:
        writer.add_context_length(self.context(config))
        if self.model_type == "gpt2":
            writer.add_embedding_length(config.n_embd)
            writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
            writer.add_block_count(config.n_layer)
            writer.add_head_count(config.n_head)
            writer.add_layer_norm_eps(config.layer_norm_epsilon)
            return
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_rope_freq_base(float(rope(config).get("rope_theta", 10000.0)))
        writer.add_rope_dimension_count(head_dim)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)

    def tensors(self, state_dict: dict, config) -> Iterator[tuple[str, torch.Tensor]]:
        """(GGUF name, tensor) for every weight; a tied output layer is left out (llama.cpp uses the
        token embedding for it)."""
        n_layer = config.n_layer if self.model_type == "gpt2" else config.num_hidden_layers
        names = gguf.get_tensor_name_map(self.arch, n_layer)
        tied = getattr(config, "tie_word_embeddings", True)
        for name, tensor in state_dict.items():
            if name.endswith((".attn.bias", ".attn.masked_bias")) or (name == "lm_head.weight" and tied):
                continue  # GPT-2's causal-mask buffers (older transformers), a tied output layer
            new = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if new is None:
                raise UserError(f"the model's weight {name} has no place in llama.cpp's {self.name} architecture: "
                                "hfgpt export gguf writes plain GPT-2 and Llama models; llama.cpp's "
                                "convert_hf_to_gguf.py may know this one")
            yield new, self.layout(name, tensor, config)

    def layout(self, name: str, tensor: torch.Tensor, config) -> torch.Tensor:
        if self.model_type == "gpt2" and name.endswith(GPT2_CONV1D):
            return tensor.t()
        if self.model_type == "llama" and name.endswith(("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")):
            heads = config.num_attention_heads if ".q_proj." in name else config.num_key_value_heads
            return permute(tensor, heads or config.num_attention_heads)
        return tensor


FAMILIES = {"gpt2": Family(gguf.MODEL_ARCH.GPT2, "gpt2"), "llama": Family(gguf.MODEL_ARCH.LLAMA, "llama")}


def rope(config) -> dict:
    """RoPE's settings: transformers 5's config.rope_parameters, or 4.x's rope_theta and rope_scaling."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if "rope_theta" not in params and getattr(config, "rope_theta", None) is not None:
        params["rope_theta"] = config.rope_theta
    return params


def permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of q or k from rotate-half order (each head's first half, then its second) to
    interleaved pairs: llama.cpp's convert_hf_to_gguf.py LlamaModel.permute."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def family_of(config, folder) -> Family:
    """The family of a model llama.cpp can run as it is; UserError, naming what differs, otherwise."""
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise UserError(f"{folder}: model_type {config.model_type}: hfgpt export gguf writes GPT-2 (gpt2) and Llama "
                        "(llama) models; llama.cpp's convert_hf_to_gguf.py converts many others")
    if config.model_type == "gpt2":
        problems = [f"activation_function={config.activation_function}"] * (config.activation_function not in GPT2_ACTIVATIONS)
        problems += ["scale_attn_by_inverse_layer_idx=true"] * bool(config.scale_attn_by_inverse_layer_idx)
        problems += ["scale_attn_weights=false"] * (not config.scale_attn_weights)
    else:
        rope_type = rope(config).get("rope_type", rope(config).get("type", "default"))
        problems = [f"hidden_act={config.hidden_act}"] * (config.hidden_act != "silu")
        problems += [f"rope_type={rope_type}"] * (rope_type != "default")
        problems += ["mlp_bias=true"] * bool(getattr(config, "mlp_bias", False))
    if problems:
        raise UserError(f"{folder}: {', '.join(problems)} in config.json: llama.cpp's {family.name} architecture does "
                        "not compute that as transformers does, so hfgpt export gguf does not write it; llama.cpp's "
                        "convert_hf_to_gguf.py may know another way")
    return family
