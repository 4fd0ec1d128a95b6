"""The model card: README.md in every saved model folder, with the Hub's metadata and a readable body.

    write_card(Path("out"), facts={"iter": 2000, "tokens_seen": 1536000, "train_loss": 1.75, "val_loss": 1.88})
    write_card(Path("out"))                                # again, from the files already in the folder
    write_card(Path("snapshot"), model_id="user/name")     # for the Hub: usage code names the repo

The card is rendered from files in the folder, so train, python -m hfgpt.eval and python -m
hfgpt.push all write the same card: training.json (the iteration, losses, tokens and samples of
the saved model: `facts`, written here when given), recipe.yaml, config.json, model.safetensors
(for the parameter count), eval_results.json (whole-split results of python -m hfgpt.eval, used
while they describe the same iteration) and loss.png. The front matter is huggingface_hub's
ModelCardData: library_name, pipeline_tag, tags, datasets and base_model when known, and a
model-index with val loss and perplexity (whole split when evaluated, else the training estimate).
"""

import json
import math
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from hfgpt import __version__
from hfgpt.core.files import atomic_write, read_json
from hfgpt.core.layout import CARD, EVAL_RESULTS, FACTS, PLOT, RECIPE
from hfgpt.core.names import is_hub_id, is_url


def count_parameters(weights: Path) -> int | None:
    """Parameters stored in a safetensors file, read from its header (no tensor is loaded)."""
    if not weights.is_file():
        return None
    with safe_open(str(weights), framework="np") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def current_eval(folder: Path, facts: dict) -> dict:
    """eval_results.json when it was measured on the weights that are in the folder now."""
    results = read_json(folder / EVAL_RESULTS)
    return results if results and results.get("iter") == facts.get("iter") else {}


def hub_dataset(recipe: dict) -> str | None:
    """The Hub dataset the run trained on, when its source is one (user/name that is no local path)."""
    source = recipe.get("source")
    return source if isinstance(source, str) and not is_url(source) and is_hub_id(source) else None


def card_data(name: str, recipe: dict, facts: dict, results: dict, model_type: str | None = None) -> ModelCardData:
    tokenizer = recipe.get("tokenizer")
    tags = ["hfgpt", model_type or "gpt2", "nanogpt", "text-generation"] + (["char-level"] if tokenizer == "char" else []) \
        + (["lora", "peft"] if recipe.get("lora_r") else [])
    init_from = facts.get("init_from") or recipe.get("init_from")
    base_model = init_from if init_from not in (None, "scratch", "resume") and not Path(init_from).exists() else None
    dataset = recipe.get("dataset") or "text"
    metrics = []
    if results:
        unit = results["unit"]
        metrics = [("loss", results["loss"], "Val loss (whole split)"),
                   ("perplexity", results["perplexity"], "Val perplexity (whole split)"),
                   (f"bits_per_{unit}", results[f"bits_per_{unit}"], f"Val bits per {'character' if unit == 'char' else unit}")]
    elif facts.get("val_loss") is not None:
        metrics = [("loss", facts["val_loss"], "Val loss (estimate)"),
                   ("perplexity", math.exp(facts["val_loss"]), "Val perplexity (estimate)")]
    evals = [EvalResult(task_type="text-generation", task_name="Text generation", dataset_type=dataset,
                        dataset_name=dataset, dataset_split=results.get("split", "val"), metric_type=kind,
                        metric_value=round(value, 4), metric_name=label) for kind, value, label in metrics]
    return ModelCardData(library_name="transformers", pipeline_tag="text-generation", tags=tags,
                         datasets=[hub_dataset(recipe)] if hub_dataset(recipe) else None,
                         base_model=base_model.split("@")[0] if base_model else None,
                         model_name=name, eval_results=evals or None)


def fenced(text: str, language: str = "") -> str:
    """A Markdown code block that holds `text` whatever backticks it contains."""
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}{language}\n{text}\n{fence}"


def first_of(config: dict, *keys: str):
    """The first of `keys` that config.json has: GPT-2's names, then the usual transformers ones."""
    return next((config[k] for k in keys if config.get(k) is not None), "?")


def summary(name: str, recipe: dict, facts: dict, config: dict, n_params: int | None) -> str:
    shape = ""
    if config:
        shape = (f" (`{(config.get('architectures') or ['?'])[0]}`: {first_of(config, 'n_layer', 'num_hidden_layers')} "
                 f"layers, {first_of(config, 'n_head', 'num_attention_heads')} heads, "
                 f"{first_of(config, 'n_embd', 'hidden_size')} wide, a context of "
                 f"{first_of(config, 'n_positions', 'max_position_embeddings')} tokens, "
                 f"{first_of(config, 'vocab_size')} token ids)")
    text = f"**{name}** is {f'a {n_params / 1e6:.2f}M-parameter GPT' if n_params else 'a GPT'}{shape}"
    if not recipe and not facts:  # a model folder hfgpt did not train
        return text + "."
    init_from = facts.get("init_from") or recipe.get("init_from") or "scratch"
    text += f", trained {'from scratch' if init_from == 'scratch' else f'starting from `{init_from}`'} with hfgpt"
    if recipe:
        source = f" ({recipe['source']})" if recipe.get("source") else ""
        text += f" on the `{recipe.get('dataset')}` dataset{source}, tokenized with the `{recipe.get('tokenizer')}` tokenizer"
    if facts.get("iter") is not None:
        text += f", for {facts['iter']:,} iterations"
        if facts.get("tokens_seen"):
            text += f" ({facts['tokens_seen']:,} tokens)"
    return text + "." + lora_text(recipe, init_from)


def results_table(facts: dict, results: dict) -> str:
    rows = []
    if results:
        unit = results["unit"]
        rows.append(f"| {results['split']} | {results['loss']:.4f} | {results['perplexity']:.3f} | "
                    f"{results[f'bits_per_{unit}']:.4f} bits per {'character' if unit == 'char' else unit} | "
                    f"the whole split: {results['tokens']:,} tokens (`python -m hfgpt.eval`) |")
    for split in ("val", "train"):
        loss = facts.get(f"{split}_loss")
        if loss is not None:
            rows.append(f"| {split} | {loss:.4f} | {math.exp(loss):.3f} | | estimate at iteration {facts['iter']:,} "
                        "(eval_iters random batches) |")
    if not rows:
        return ""
    return "\n".join(["| split | loss | perplexity | bits | measured on |", "| --- | --- | --- | --- | --- |", *rows])


def lora_text(recipe: dict, init_from: str) -> str:
    """What the card says of a LoRA run: the adapter's settings, and where the adapter is."""
    if not recipe.get("lora_r"):
        return ""
    targets = ", ".join(f"`{t}`" for t in recipe.get("lora_target_modules") or []) or "every linear layer of its blocks"
    return (f" Only LoRA adapters trained (peft: r={recipe['lora_r']}, alpha={recipe.get('lora_alpha')}, dropout "
            f"{recipe.get('lora_dropout')}, on {targets}), `{init_from}` stayed frozen. The model files hold the "
            "adapters merged into the weights (a plain transformers model: no peft needed); the adapter alone is in "
            "`adapter/`, for `PeftModel.from_pretrained(base_model, \"adapter\")`.")


def usage(model_id: str, start: str, block_size: int | None) -> str:
    """A pipeline call that runs as written on any model hfgpt saves: generation_config.json's
    max_length (the context, prompt included) bounds it; max_new_tokens would make generate() warn
    beside it, and crash past the context. The prompt leaves room to generate."""
    if block_size and len(start.encode()) >= block_size // 2:
        start = "\n"
    limit = (f"# generates until <|endoftext|> or the model's context of {block_size} tokens, prompt included;\n"
             "# python -m hfgpt.sample (below) writes longer texts\n") if block_size else ""
    code = (f"from transformers import pipeline\n\ngenerator = pipeline(\"text-generation\", model={json.dumps(model_id)})\n"
            f"{limit}print(generator({json.dumps(start)})[0][\"generated_text\"])")
    prompt = f" --start={json.dumps(start)}" if start.strip() else ""
    commands = (f"python -m hfgpt.sample {model_id}{prompt} --num_samples=3 --max_new_tokens=1000\n"
                f"python -m hfgpt.eval {model_id}")
    return f"{fenced(code, 'python')}\n\nor with hfgpt:\n\n{fenced(commands, 'sh')}"


def adapter_usage(folder: Path) -> str:
    """A LoRA checkpoint holds no model: what it is for."""
    return (f"This checkpoint holds the LoRA adapter (`adapter/`) and the optimizer state, not the base model: "
            f"continue training with `python -m hfgpt.train recipe.yaml --init_from=resume --resume_from={folder}`. "
            "The run's out_dir holds the merged model.")


def render(folder: Path, facts: dict, model_id: str | None = None) -> str:
    """README.md for `folder`: front matter + body."""
    recipe = yaml.safe_load((folder / RECIPE).read_text()) if (folder / RECIPE).is_file() else {}
    config = read_json(folder / "config.json")
    results = current_eval(folder, facts)
    if model_id is None:
        model_id = recipe.get("hub_model_id") if recipe.get("push_to_hub") and recipe.get("hub_model_id") else str(folder)
    name = model_id.rstrip("/").split("/")[-1] or folder.resolve().name
    start = recipe.get("sample_start") or "\n"
    parts = [f"# {name}", summary(name, recipe, facts, config, count_parameters(folder / "model.safetensors"))]
    if table := results_table(facts, results):
        parts += ["## Results", "Loss is the mean next-token cross-entropy in nats; perplexity is exp(loss).", table]
    if (folder / PLOT).is_file():
        parts += ["## Training curve", f"![train and val loss against iterations and tokens]({PLOT})"]
    samples = facts.get("samples") or []
    if samples:
        parts += [f"## A sample (iteration {facts['iter']:,})", fenced(samples[0], "text")]
    # what generation stops at: generation_config.json's max_length (the context trained on), else the model's
    block_size = read_json(folder / "generation_config.json").get("max_length") or config.get("n_positions") \
        or config.get("max_position_embeddings")
    adapter_only = not (folder / "model.safetensors").exists() and (folder / "adapter").is_dir()  # a LoRA checkpoint
    parts += ["## Use it", adapter_usage(folder) if adapter_only else usage(model_id, start, block_size)]
    if recipe:
        parts += ["## Training recipe",
                  "Train it again with `python -m hfgpt.train recipe.yaml` (this folder's `recipe.yaml`); "
                  "`metrics.jsonl` holds every logged loss, learning rate and tokens/s.",
                  "<details><summary>recipe.yaml</summary>\n\n" + fenced(yaml.safe_dump(recipe, sort_keys=False).rstrip(), "yaml")
                  + "\n\n</details>"]
    parts.append(f"Made with hfgpt {__version__}.")
    data = card_data(name, recipe, facts, results, config.get("model_type"))
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(parts) + "\n"


def write_card(folder: Path, facts: dict | None = None, model_id: str | None = None) -> Path:
    """Write folder/README.md (and folder/training.json when facts are given)."""
    folder = Path(folder)
    if facts is not None:
        atomic_write(folder / FACTS, json.dumps(facts, indent=2))
    else:
        facts = read_json(folder / FACTS)
    text = render(folder, facts, model_id)
    ModelCard(text)  # raises if the front matter is not valid YAML
    atomic_write(folder / CARD, text)
    return folder / CARD
