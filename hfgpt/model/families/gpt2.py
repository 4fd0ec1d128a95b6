"""architecture: gpt2 (nanoGPT's model): a transformers GPT2LMHeadModel from nanoGPT's names.

    config = new_config(recipe.model, vocab_size=67, eot_token_id=65)
    config = gpt2_config(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, vocab_size=65)

The one place where nanoGPT's names become GPT-2's: block_size -> n_positions (and n_ctx),
dropout -> the three *_pdrop. bias: false keeps GPT-2's layout with its biases zeroed and frozen
(hfgpt.model.gpt.zero_biases), so the folder is a plain GPT-2.
"""

from transformers import GPT2Config, GPT2LMHeadModel

MODEL = GPT2LMHeadModel


def gpt2_config(*, n_layer: int, n_head: int, n_embd: int, block_size: int, dropout: float, vocab_size: int,
                eot_token_id: int | None = None) -> GPT2Config:
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=block_size,
        n_ctx=block_size,  # GPT2Config ignores it, but llama.cpp's converter reads the context from it
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        embd_pdrop=dropout, attn_pdrop=dropout, resid_pdrop=dropout,
        # nanoGPT's exact GELU: as good as GPT-2's tanh approximation and faster on CPU.
        activation_function="gelu",
        bos_token_id=eot_token_id,
        eos_token_id=eot_token_id,
        # no pad_token_id: with one in the config, every forward without a compile checks the batch
        # for it, a device-to-host read per step (the pad id lives in generation_config instead)
    )


def new_config(m, vocab_size: int, eot_token_id: int | None) -> GPT2Config:
    return gpt2_config(n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size,
                       dropout=m.dropout, vocab_size=vocab_size, eot_token_id=eot_token_id)
