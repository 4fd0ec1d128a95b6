"""MFU: FLOPs per token by nanoGPT's formula, counted for grouped-query attention, gated MLPs, windows,
LoRA and mixtures of experts, against a table of GPUs' peaks (hfgpt.training.mfu)."""

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from hfgpt.training.mfu import flops_per_token, mfu, peak_flops

# torch.cuda.get_device_name() -> dense bf16 TFLOPS (fp16 where the GPU has no bf16)
PEAK_BY_NAME = {
    "NVIDIA H100 80GB HBM3": 989, "NVIDIA H100 PCIe": 756, "NVIDIA H100 NVL": 835, "NVIDIA H800": 989,
    "NVIDIA H200": 989, "NVIDIA H200 NVL": 835, "NVIDIA GH200 480GB": 989, "NVIDIA GH200 144G HBM3e": 989,
    "NVIDIA B200": 2250, "NVIDIA GB200": 2500, "NVIDIA A100-SXM4-80GB": 312, "NVIDIA A100-SXM4-40GB": 312,
    "NVIDIA A100-PCIE-40GB": 312, "NVIDIA A100 80GB PCIe": 312, "NVIDIA A10G": 70, "NVIDIA A10": 125,
    "NVIDIA L40S": 362, "NVIDIA L40": 181, "NVIDIA L4": 121, "NVIDIA RTX A6000": 154.8,
    "NVIDIA GeForce RTX 4090": 165, "NVIDIA GeForce RTX 3090": 71,
    "Tesla V100-SXM2-16GB": 125, "Tesla V100-PCIE-32GB": 112, "Tesla T4": 65,
}


@pytest.mark.parametrize("name", PEAK_BY_NAME)
def test_peak_flops_by_device_name(name):
    """Each name finds its own GPU's figure: H100/H200 NVL are not SXM parts, GH200 is not H200,
    A10G is not A10, L40 is not L4."""
    precision = "fp16" if name.startswith("Tesla") else "bf16"
    assert peak_flops("cuda", precision, name) == pytest.approx(PEAK_BY_NAME[name] * 1e12)


@pytest.mark.parametrize("name, precision, tflops", [
    ("NVIDIA A100-SXM4-80GB", "no", 156), ("Tesla T4", "no", 8.1), ("Tesla T4", "bf16", None),
    ("Tesla V100-SXM2-16GB", "bf16", None), ("Some Future GPU", "bf16", None),
])
def test_peak_flops_float32_and_unknown(name, precision, tflops):
    peak = peak_flops("cuda", precision, name)
    assert (peak is None and tflops is None) or peak == pytest.approx(tflops * 1e12)


def test_no_peak_on_cpu_means_no_mfu():
    assert peak_flops("cpu", "no") is None and mfu(1e9, 1e4, None) is None


def test_flops_per_token_is_nanogpts_formula():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=65, n_positions=64, n_embd=128, n_layer=4, n_head=4))
    n = sum(p.numel() for p in model.parameters()) - 64 * 128  # without the position table, as nanoGPT
    assert flops_per_token(model, 64) == 6 * n + 12 * 4 * 4 * 32 * 64
    assert mfu(1e9, 156e3, peak_flops("cuda", "bf16", "NVIDIA A100 80GB PCIe")) == pytest.approx(0.5)


def llama_weights(h=64, layers=2, heads=4, kv=2, inner=160, vocab=70) -> int:
    """The matrices a token goes through in a Llama, by hand: grouped-query attention (k, v of kv
    heads), the gated MLP's three matrices, the norms, the output layer (untied: the embedding is a lookup)."""
    head = h // heads
    attention = h * heads * head + 2 * h * kv * head + heads * head * h
    return layers * (attention + 3 * h * inner + 2 * h) + h + vocab * h


@pytest.mark.parametrize("window, keys", [(None, 64), (4096, 64), (16, 16)])
def test_flops_per_token_counts_grouped_query_attention_gated_mlps_and_windows(window, keys):
    from transformers import LlamaForCausalLM, MistralConfig, MistralForCausalLM, LlamaConfig

    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=160, vocab_size=70, max_position_embeddings=128)
    model = LlamaForCausalLM(LlamaConfig(**shape)) if window is None else \
        MistralForCausalLM(MistralConfig(**shape, sliding_window=window))
    assert flops_per_token(model, 64) == 6 * llama_weights() + 12 * 2 * 4 * 16 * keys


def test_flops_per_token_of_lora_counts_weight_gradients_of_the_adapters_only():
    """4N + 2N_trained: the frozen weights still carry the forward and the input gradients."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hfgpt.config import ModelConfig
    from hfgpt.model.lora import add_lora

    model = add_lora(LlamaForCausalLM(LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                  num_key_value_heads=2, intermediate_size=160, vocab_size=70)),
                     ModelConfig(lora_r=4))
    # r x (in + out) per adapted matrix: q, k, v, o, gate, up, down in each of the 2 layers
    adapters = 2 * 4 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 2 * (64 + 160) + (160 + 64))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == adapters
    n = llama_weights() + adapters
    assert flops_per_token(model, 64) == 4 * n + 2 * adapters + 12 * 2 * 4 * 16 * 64


def test_flops_per_token_of_a_mixture_of_experts_counts_the_experts_a_token_uses():
    from transformers import MixtralConfig, MixtralForCausalLM

    def flops(experts: int, per_token: int) -> float:
        return flops_per_token(MixtralForCausalLM(MixtralConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=160,
            vocab_size=70, num_local_experts=experts, num_experts_per_tok=per_token)), 64)

    router = 64  # per layer and expert: its row of the router
    assert flops(8, 2) - flops(4, 2) == 6 * 2 * 4 * router  # only the router grows; the experts used stay 2
    assert flops(4, 2) == flops(4, 1) + 6 * 2 * 3 * 64 * 160  # one more expert per token: one more gated MLP
