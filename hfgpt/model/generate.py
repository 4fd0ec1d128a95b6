"""Generating text: transformers' text-generation pipeline with the KV cache while the text fits
in the model's context, then nanoGPT's sliding window past it.

    pipe = load_pipeline("out-shakespeare-char-cpu", device="auto")
    texts = generate(pipe, "ROMEO:", num_samples=3, max_new_tokens=500, temperature=0.8, top_k=200)

Past block_size each new token sees the last block_size tokens, as nanoGPT's sample.py, so any
max_new_tokens works with a model of learned positions.
"""

import torch
from transformers import pipeline

from hfgpt.core.errors import UserError, first_line
from hfgpt.core.names import split_revision
from hfgpt.data.tokenizer import added_around
from hfgpt.model.folder import check_model_folder
from hfgpt.model.gpt import n_positions
from hfgpt.core.device import device_type


def load_pipeline(model: str, device: str = "auto"):
    """A text-generation pipeline for a model folder or Hub id (user/name@revision too), on the requested device."""
    check_model_folder(model)
    dev = device_type(device)
    repo, revision = split_revision(model)
    try:
        return pipeline("text-generation", model=repo, device=dev, **({"revision": revision} if revision else {}))
    except OSError as e:
        raise UserError(f"model '{model}' could not be loaded: not a model folder, and not on the Hub or in its cache "
                        f"({first_line(e)}); train one with python -m hfgpt.train RECIPE, or give its out_dir") from None


def encode_prompt(tokenizer, start: str) -> list[int]:
    """The prompt's ids as the model read text in training: after the tokenizer's own BOS (Llama's,
    Mistral's; none for GPT-2's and hfgpt's tokenizers). An empty prompt starts a new document."""
    before, _ = added_around(tokenizer)
    # verbose=False: a prompt longer than the context (model_max_length) is fine here, the window slides
    ids = tokenizer(start, add_special_tokens=False, verbose=False)["input_ids"]
    if unknown := unknown_characters(tokenizer, start, ids):
        raise UserError(f"--start has characters the model's tokenizer does not know: {unknown!r}; "
                        "leave them out of the prompt")
    if not ids and not before:  # an empty prompt starts a new document: after an end of text
        ids = [tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0]
    return before + ids


def unknown_characters(tokenizer, text: str, ids: list[int] | None = None) -> str:
    """The characters of `text` that the tokenizer can only encode as its unknown token ('' for none)."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] if ids is None else ids
    unk = tokenizer.unk_token_id
    if unk is None or tokenizer.unk_token == tokenizer.eos_token or unk not in ids:
        return ""
    return "".join(sorted({c for c in text if unk in tokenizer(c, add_special_tokens=False)["input_ids"]}))


@torch.no_grad()
def sample_sliding(model, ids: torch.Tensor, steps: int, block_size: int, temperature: float, top_k: int | None,
                   eos: int | None) -> torch.Tensor:
    """nanoGPT's generate: each step conditions on the last block_size tokens (no cache can help
    here, since every position shifts). Rows that generate eos stay finished (an eos in `ids`, as
    OPT's BOS or an empty prompt's, does not end a row)."""
    done = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
    suppress = list(model.generation_config.suppress_tokens or [])  # padded vocabulary ids
    for _ in range(steps):
        logits = model(input_ids=ids[:, -block_size:], logits_to_keep=1, use_cache=False).logits[:, -1, :].float()
        if suppress:
            logits[:, suppress] = -float("inf")
        logits = logits / max(temperature, 1e-5)
        if top_k:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits[logits < v[:, [-1]]] = -float("inf")
        next_id = torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1)
        if eos is not None:
            next_id[done] = eos
            done |= next_id.squeeze(1) == eos
        ids = torch.cat((ids, next_id), dim=1)
        if done.all():
            break
    return ids


def generate(pipe, start: str, num_samples: int = 1, max_new_tokens: int = 500, temperature: float = 0.8,
             top_k: int | None = 200) -> list[str]:
    """num_samples continuations of `start`, each with up to max_new_tokens new tokens."""
    tokenizer, model = pipe.tokenizer, pipe.model
    prompt_ids = encode_prompt(tokenizer, start)
    block_size = n_positions(model) or (len(prompt_ids) + max_new_tokens)
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k or None}
    if temperature <= 0:
        sampling = {"do_sample": False}

    # with the KV cache, as far as the position table goes; bounded by max_length (prompt included),
    # as the model's generation_config.json is: max_new_tokens beside it would make generate() warn
    cached = max(0, min(max_new_tokens, block_size - len(prompt_ids)))
    if cached:  # the pipeline adds the tokenizer's own BOS (prompt_ids[:len(before)]) itself
        before = len(added_around(tokenizer)[0])
        outputs = pipe(tokenizer.decode(prompt_ids[before:]), max_length=len(prompt_ids) + cached,
                       num_return_sequences=num_samples, return_tensors=True, **sampling)
        rows = [o["generated_token_ids"] for o in outputs]
    else:
        rows = [list(prompt_ids)] * num_samples

    # past it, nanoGPT's sliding window, for the rows that have not ended
    rest = max_new_tokens - cached
    open_rows = [i for i, row in enumerate(rows) if eos is None or eos not in row[len(prompt_ids):]]
    if rest > 0 and open_rows:
        ids = torch.tensor([rows[i] for i in open_rows], dtype=torch.long, device=model.device)
        ids = sample_sliding(model, ids, rest, block_size, temperature, top_k, eos)
        for i, row in zip(open_rows, ids.tolist()):
            rows[i] = row
    return [tokenizer.decode(row, skip_special_tokens=True) for row in rows]
