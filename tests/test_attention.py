"""The training attention (hfgpt.model.attention): in the compiled training graph SDPA gets
`is_causal=True` and no mask (what flash attention needs on a GPU), read from the FX graph that
Dynamo builds on the CPU; the eager training forward never reads the device; losses, gradients and
cached generation are those of plain SDPA."""

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hfgpt.config import ModelConfig
from hfgpt.model.attention import use_training_attention
from hfgpt.model.gpt import build_model, lm_loss
from transformers.integrations.sdpa_attention import sdpa_attention_forward

CFG = dict(vocab_size=65, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=64, eos_token_id=64,
           embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)


def sdpa_calls(model, x, y, compile_blocks=False, graphs=None) -> tuple[list[dict], torch.Tensor]:
    """(attn_mask, is_causal) of every scaled_dot_product_attention call in the Dynamo graphs of a
    compiled training forward, and its loss. The backend records each FX graph (in `graphs`) and
    runs it as is."""
    graphs = [] if graphs is None else graphs

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    if compile_blocks:  # FSDP's and DeepSpeed's way (hfgpt.training.run.compile_blocks)
        for block in model.transformer.h:
            block.compile(backend=backend)
        loss = lm_loss(model, x, y)
    else:
        loss = lm_loss(torch.compile(model, backend=backend), x, y)
    calls = [{"attn_mask": node.kwargs.get("attn_mask"), "is_causal": node.kwargs.get("is_causal", False)}
             for gm in graphs for node in gm.graph.nodes
             if node.op == "call_function" and "scaled_dot_product_attention" in str(node.target)]
    return calls, loss


@pytest.mark.e2e
def test_plain_sdpa_under_compile_gets_a_mask():
    """Why the training attention exists (transformers 5.24, torch 2.13): a compiled GPT-2 on plain
    SDPA builds a (B, 1, T, T) mask, which no flash kernel takes. If this starts failing, transformers
    fixed it and hfgpt.model.attention's reason is gone."""
    model = GPT2LMHeadModel(GPT2Config(**CFG)).train()
    calls, _ = sdpa_calls(model, torch.randint(64, (4, 32)), torch.randint(64, (4, 32)))
    assert len(calls) == 2 and all(c["attn_mask"] is not None and c["is_causal"] is False for c in calls)


@pytest.mark.e2e
@pytest.mark.parametrize("precision, compile_blocks", [("no", False), ("bf16", False), ("no", True)])
def test_compiled_training_attention_is_causal_without_mask(precision, compile_blocks):
    torch.manual_seed(0)
    reference = GPT2LMHeadModel(GPT2Config(**CFG)).train()
    model = copy.deepcopy(reference)
    use_training_attention(model)
    x, y = torch.randint(64, (4, 32)), torch.randint(64, (4, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        calls, loss = sdpa_calls(model, x, y, compile_blocks)
        expected = lm_loss(reference, x, y)
    assert len(calls) == (1 if compile_blocks else 2)  # the blocks share one compiled graph
    assert all(c["attn_mask"] is None and c["is_causal"] is True for c in calls)
    loss.backward()
    expected.backward()
    tolerance = 0 if precision == "no" else 2e-2  # bf16 plain SDPA vs float32 attention on the CPU
    assert abs(loss.item() - expected.item()) <= tolerance
    for a, b in zip(reference.parameters(), model.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=tolerance or 1e-5, atol=tolerance or 1e-6)


def test_generation_with_the_cache_is_unchanged():
    """Prefill (query length > 1) is causal, a one-token step attends to the whole cache."""
    torch.manual_seed(0)
    reference = GPT2LMHeadModel(GPT2Config(**CFG)).eval()
    model = copy.deepcopy(reference)
    use_training_attention(model)
    ids = torch.randint(64, (1, 5))
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False, pad_token_id=64)
    assert torch.equal(reference.generate(ids, **kw), model.generate(ids, **kw))


def test_windowed_models_keep_their_masks():
    config = GPT2Config(**CFG)
    config.sliding_window = 16  # e.g. Mistral's: the mask transformers builds is the model's attention pattern
    model = GPT2LMHeadModel(config)
    use_training_attention(model)
    assert model.config._attn_implementation == "sdpa"


def host_reads(model, x) -> int:
    """Device-to-host reads (a sync on CUDA or MPS) in one eager forward, as the profiler counts them."""
    lm_loss(model, x, x)
    with torch.profiler.profile() as prof:
        lm_loss(model, x, x)
    return sum(e.name == "aten::_local_scalar_dense" for e in prof.events())


def test_eager_training_forward_never_reads_the_device():
    """A pad id in config.json costs one host read per uncompiled forward (transformers looks for it
    in the batch), transformers' packed-sequence check another; hfgpt's model has neither."""
    x = torch.randint(64, (4, 32))
    assert host_reads(GPT2LMHeadModel(GPT2Config(**CFG, pad_token_id=64)).train(), x) == 2
    model = build_model(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, dropout=0.0), vocab_size=65,
                        eot_token_id=64)
    assert model.config.pad_token_id is None and model.generation_config.pad_token_id == 64
    use_training_attention(model)
    assert host_reads(model.train(), x) == 0


@pytest.mark.e2e
@pytest.mark.parametrize("family, config", [("llama", {}), ("qwen3", {}), ("gpt_neox", {}), ("phi3", {}),
                                            ("mistral", {"sliding_window": 4096}), ("gemma3", {"sliding_window": 32})])
def test_every_familys_compiled_training_forward_is_one_graph_of_causal_sdpa(family, config, tmp_path, shakespeare_text):
    """Llama, Qwen3, GPT-NeoX, Phi-3 and windowed models whose windows cover block_size: one
    Dynamo graph (no graph break), every attention is_causal without a mask, the loss and
    gradients of plain SDPA."""
    from hfgpt.model.gpt import load_model
    from tests.tools.families import make_model_folder

    folder = make_model_folder(family, tmp_path / family, shakespeare_text[:20_000], **config)
    reference = load_model(str(folder), block_size=32, dropout=0.0).train()
    model = copy.deepcopy(reference)
    use_training_attention(model, block_size=32)
    assert model.config._attn_implementation == "hfgpt_sdpa"
    x = torch.randint(0, reference.config.vocab_size, (2, 33), generator=torch.Generator().manual_seed(0))
    graphs = []
    calls, loss = sdpa_calls(model, x[:, :-1], x[:, 1:], graphs=graphs)
    assert len(graphs) == 1 and len(calls) == 2
    assert all(c["attn_mask"] is None and c["is_causal"] is True for c in calls)
    expected = lm_loss(reference, x[:, :-1], x[:, 1:])
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected)
    for a, b in zip(reference.parameters(), model.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("family, config", [("mistral", {"sliding_window": 8}),
                                            ("gemma3", {"sliding_window": 8})])
def test_a_window_shorter_than_block_size_trains_with_its_mask(family, config, tmp_path, shakespeare_text):
    """Mistral's sliding window and Gemma 3's local layers, shorter than the training window: the
    model keeps the attention transformers masks, which computes what eager attention with the
    window computes, and not full causal attention."""
    from hfgpt.model.gpt import load_model
    from tests.tools.families import make_model_folder

    folder = make_model_folder(family, tmp_path / family, shakespeare_text[:20_000], **config)
    model = load_model(str(folder), block_size=32, dropout=0.0).train()
    use_training_attention(model, block_size=32)
    assert model.config._attn_implementation == "sdpa"
    x = torch.randint(0, model.config.vocab_size, (2, 33), generator=torch.Generator().manual_seed(0))
    loss = lm_loss(model, x[:, :-1], x[:, 1:])
    model.set_attn_implementation("eager")
    torch.testing.assert_close(loss, lm_loss(model, x[:, :-1], x[:, 1:]))
    model.config.sliding_window = 4096
    model.set_attn_implementation("sdpa")
    assert (loss - lm_loss(model, x[:, :-1], x[:, 1:])).abs() > 1e-4  # the window changes what is computed


def test_rotary_models_attention_runs_in_float32_under_cpu_autocast(tmp_path, shakespeare_text):
    """A rotary model gives the attention float32 queries and keys (its cos and sin are float32)
    under bf16 autocast; left on, autocast would run the CPU attention in bf16, whose backward is
    ~4x slower: the training attention turns it off for them as for bf16 inputs."""
    from hfgpt.model.attention import training_attention
    from hfgpt.model.gpt import load_model
    from tests.tools.families import make_model_folder

    model = load_model(str(make_model_folder("llama", tmp_path / "llama", shakespeare_text[:20_000])), block_size=32)
    module = model.model.layers[0].self_attn
    q, k, v = (torch.randn(2, 4, 32, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = training_attention(module, q, k[:, :2], v[:, :2], None, dropout=0.0, scaling=0.25)
        plain, _ = sdpa_attention_forward(module, q, k[:, :2], v[:, :2], None, dropout=0.0, scaling=0.25)
    reference, _ = sdpa_attention_forward(module, q, k[:, :2], v[:, :2], None, dropout=0.0, scaling=0.25)
    assert plain.dtype == torch.bfloat16  # what autocast does to plain SDPA
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference)
