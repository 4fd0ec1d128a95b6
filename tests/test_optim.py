"""The optimizer (AdamW; Muon for the blocks' matrices) and the learning-rate schedules (nanoGPT's
cosine, warmup-stable-decay). Exact resume with each optimizer: test_checkpoint.py."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hfgpt import train
from hfgpt.bench.optim import counted_ops
from hfgpt.config import OptimConfig
from hfgpt.core.errors import UserError
from hfgpt.training.optim import MuonAdamW, get_lr, make_optimizer, set_lr


def test_lr_schedule_is_nanogpts():
    o = OptimConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=2000)
    assert get_lr(0, o) == pytest.approx(1e-3 * 1 / 101)
    assert get_lr(99, o) == pytest.approx(1e-3 * 100 / 101)
    assert get_lr(100, o) == pytest.approx(1e-3)
    assert get_lr(1050, o) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))  # halfway down the cosine
    assert get_lr(2000, o) == pytest.approx(1e-4)
    assert get_lr(5000, o) == pytest.approx(1e-4)
    lrs = [get_lr(i, o) for i in range(100, 2001)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert get_lr(1234, OptimConfig(learning_rate=3e-5, decay_lr=False)) == 3e-5


@pytest.mark.parametrize("decay_fraction, flat_until", [(0.4, 60), (0.2, 80), (1.0, 0)])
def test_warmup_stable_decay(decay_fraction, flat_until):
    """Warmup as nanoGPT's, learning_rate held until the last decay_fraction of lr_decay_iters, a
    straight line down to min_lr at lr_decay_iters, min_lr after."""
    o = OptimConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10 if flat_until else 0, lr_decay_iters=100,
                    lr_schedule="wsd", decay_fraction=decay_fraction)
    cosine = OptimConfig(**{**o.__dict__, "lr_schedule": "cosine"})
    assert [get_lr(i, o) for i in range(o.warmup_iters)] == [get_lr(i, cosine) for i in range(o.warmup_iters)]
    assert all(get_lr(i, o) == 1e-3 for i in range(o.warmup_iters, flat_until + 1))
    for i in range(flat_until, 101):  # linear: the lr at i is (i - start) / (100 - start) of the way down
        assert get_lr(i, o) == pytest.approx(1e-3 - (i - flat_until) / (100 - flat_until) * 9e-4)
    assert get_lr(100, o) == pytest.approx(1e-4) and get_lr(101, o) == get_lr(10_000, o) == 1e-4


def test_weight_decay_only_on_matrices():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = make_optimizer(model, OptimConfig(weight_decay=0.1), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and [p.dim() for p in decay["params"]] == [2]
    assert no_decay["weight_decay"] == 0.0 and sorted(p.dim() for p in no_decay["params"]) == [1, 1, 1]


def tiny_gpt2(n_layer=2):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_head=2, n_embd=16, vocab_size=50, n_positions=8,
                                      bos_token_id=0, eos_token_id=0))


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = tiny_gpt2()
    opt = make_optimizer(model, OptimConfig(optimizer="muon", muon_lr=0.02, learning_rate=3e-3, weight_decay=0.1), "cpu")
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon, decay, no_decay = ([names[id(p)] for p in g["params"]] for g in opt.param_groups)
    assert sorted(muon) == sorted(f"transformer.h.{i}.{m}.weight" for i in range(2)
                                  for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    assert sorted(decay) == ["transformer.wpe.weight", "transformer.wte.weight"]  # wte is also the tied lm_head
    # 2 LayerNorms and 4 biases per block, and ln_f
    assert all(n.endswith(".bias") or ".ln_" in n for n in no_decay) and len(no_decay) == 8 * 2 + 2
    assert [g["muon"] for g in opt.param_groups] == [True, False, False]
    assert opt.param_groups[0]["weight_decay"] == 0.0 and opt.param_groups[1]["weight_decay"] == 0.1

    o = OptimConfig(optimizer="muon", muon_lr=0.02, learning_rate=4e-3, min_lr=4e-4, warmup_iters=0, lr_decay_iters=10)
    assert set_lr(opt, 10, o) == pytest.approx(4e-4)  # AdamW's lr, the one logged
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-3, 4e-4, 4e-4])  # Muon: muon_lr on the same curve


def test_muon_steps_and_its_state_round_trips():
    """One step changes every trained tensor; the state dict of the one optimizer loads into a fresh one."""
    model = tiny_gpt2(n_layer=1)
    opt = make_optimizer(model, OptimConfig(optimizer="muon"), "cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randint(0, 50, (2, 8))
    model(x, labels=x).loss.backward()
    opt.step()
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    fresh = make_optimizer(model, OptimConfig(optimizer="muon"), "cpu")
    fresh.load_state_dict(opt.state_dict())
    assert fresh.muon.state is fresh.state and fresh.muon.param_groups[0] is fresh.param_groups[0]
    buffer = opt.state[opt.param_groups[0]["params"][0]]["momentum_buffer"]
    assert torch.equal(fresh.state[fresh.param_groups[0]["params"][0]]["momentum_buffer"], buffer)


@pytest.mark.parametrize("strategy", ["FSDP", "DEEPSPEED"])
def test_muon_is_refused_where_matrices_are_split(strategy):
    with pytest.raises(UserError, match=f"optimizer=muon orthogonalizes whole matrices, which {strategy} splits"):
        make_optimizer(tiny_gpt2(1), OptimConfig(optimizer="muon"), "cpu", sharded=strategy)
    make_optimizer(tiny_gpt2(1), OptimConfig(), "cpu", sharded=strategy)  # AdamW is fine


@pytest.mark.parametrize("args, message", [
    (["--optimizer=muon", "--lora_r=8", "--init_from=gpt2"], "optimizer=muon trains the blocks' whole matrices, but lora_r=8"),
    (["--optimizer=sgd"], "optimizer='sgd' is not one of adamw, muon"),
    (["--lr_schedule=wsd", "--decay_fraction=0.95", "--warmup_iters=100", "--lr_decay_iters=1000"],
     "decay_fraction=0.95 starts the decay at iteration 50, before the warmup ends at warmup_iters=100: lower "
     "decay_fraction to at most 0.9"),
    (["--decay_fraction=0"], "decay_fraction=0.0 must be greater than 0 and at most 1"),
])
def test_bad_optimizer_settings_are_one_line_each(capsys, args, message):
    assert train.main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]


def step_ops(optimizer) -> int:
    """ATen ops of one optimizer.step() (the step is taken)."""
    return sum(counted_ops(optimizer.step).values())


def test_muon_is_batched_by_shape_and_steps_as_torchs_muon():
    """hfgpt's Muon dispatches one set of ops per shape of matrix, as many for 6 blocks as for 2
    (torch.optim.Muon: ~28 per matrix), and moves the matrices exactly as torch.optim.Muon does."""
    ops, torch_ops = {}, {}
    for n_layer in (2, 6):
        model = tiny_gpt2(n_layer)
        opt = make_optimizer(model, OptimConfig(optimizer="muon", muon_momentum=0.9), "cpu")
        group = opt.muon.param_groups[0]
        theirs = [p.detach().clone() for p in group["params"]]
        reference = torch.optim.Muon(theirs, **{k: group[k] for k in ("lr", "momentum", "weight_decay", "nesterov",
                                                                      "ns_coefficients", "eps", "ns_steps", "adjust_lr_fn")})
        generator = torch.Generator().manual_seed(n_layer)
        for step in range(3):
            for p, q in zip(group["params"], theirs):
                p.grad = torch.randn(p.shape, generator=generator)
                q.grad = p.grad.clone()
            ops[n_layer] = step_ops(opt.muon)
            reference.step()
        for p, q in zip(group["params"], theirs):
            assert torch.equal(p, q)  # bitwise on the CPU: the same ops, batched
        torch_ops[n_layer] = step_ops(reference)
    assert ops[2] == ops[6]  # one set of ops per shape: GPT-2's blocks have 4 shapes of matrix
    assert torch_ops[6] > 5 * ops[6] and torch_ops[6] > 2.5 * torch_ops[2]
