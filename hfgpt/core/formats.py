"""The numbered formats of the JSON hfgpt writes and reads back, and the one place older ones are read.

    state = upgrade_state(json.loads(text))     # a checkpoint's state.json, in this hfgpt's format
    rng = upgrade_rng(load_file(path), state)   # its rng-<rank>.safetensors tensors, with today's names
    problem = too_new(meta, META_FORMAT)        # None, or why not: "is format 2, written by a newer hfgpt ..."

A checkpoint's state.json carries "format": STATE_FORMAT and a dataset's meta.json "format":
META_FORMAT. A number goes up when a field is renamed, removed or changes meaning (a new field
that older readers may ignore needs none); each upgrade step here turns format n into n + 1, so an
old file is read through every step since. Files without a number are format 0 (hfgpt 0.1). A
file of a newer format than this hfgpt knows is not guessed at: its reader says so in one line.
"""

STATE_FORMAT = 2
META_FORMAT = 1


def format_of(record: dict) -> int:
    value = record.get("format", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def too_new(record: dict, known: int) -> str | None:
    """Why `record` cannot be read by this hfgpt (a newer format, or a format that is no number),
    said of the file ("meta.json " + it); None when it can."""
    found = format_of(record)
    if found < 0:
        return f"gives format {record.get('format')!r}, not a number"
    if found > known:
        from hfgpt import __version__

        return (f"is format {found}, written by a newer hfgpt ({record.get('hfgpt_version', '?')}); "
                f"hfgpt {__version__} reads formats up to {known}: upgrade hfgpt (pip install -U hfgpt)")
    return None


def upgrade_state(state: dict) -> dict:
    """A checkpoint's state.json as this hfgpt writes it (a new dict; `state` is left as read)."""
    state = dict(state)
    if format_of(state) == 0:
        # 0 -> 1: no eval_iter yet; a checkpoint's losses were those of its own iteration
        if state.get("eval_iter") is None and state.get("val_loss") is not None:
            state["eval_iter"] = state.get("iter")
        state["format"] = 1
    if format_of(state) == 1:
        # 1 -> 2: each process's batches' state moved from rng-<rank>.safetensors (a generator tensor,
        # "batches") to batches-<rank>.json; hfgpt.training.resume.saved_batches_state reads both
        state["format"] = 2
    return state


def upgrade_rng(tensors: dict, state: dict) -> dict:
    """A process's rng-<rank>.safetensors tensors with today's names, for the checkpoint whose
    state.json (as read, before upgrade_state) is `state`."""
    tensors = dict(tensors)
    if format_of(state) == 0 and "sampler" in tensors and "batches" not in tensors:
        tensors["batches"] = tensors.pop("sampler")  # 0 -> 1: the batches' generator was "sampler"
    return tensors
