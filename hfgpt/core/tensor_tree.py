"""Nested state (an optimizer's state dict: dicts, lists and tuples holding tensors) as one
safetensors file of its tensors plus one JSON file of the rest: no pickle, readable anywhere.

    save_tree(optimizer.state_dict(), folder, "optimizer")   # optimizer.safetensors + optimizer.json
    state = load_tree(folder, "optimizer")
    tree = flatten(obj, tensors)                             # tensors -> {"__tensor__": name} in the tree
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def flatten(obj, tensors: dict, path: str = "t"):
    """Replace every tensor in a nested dict/list/tuple by a reference into `tensors`."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().contiguous().cpu()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        return {"__dict__": [[flatten(k, tensors, f"{path}.k{i}"), flatten(v, tensors, f"{path}.{i}")]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    return obj


def unflatten(tree, tensors: dict):
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__dict__" in tree:
            return {unflatten(k, tensors): unflatten(v, tensors) for k, v in tree["__dict__"]}
        if "__tuple__" in tree:
            return tuple(unflatten(v, tensors) for v in tree["__tuple__"])
    if isinstance(tree, list):
        return [unflatten(v, tensors) for v in tree]
    return tree


def tensor_bytes(obj) -> int:
    """Bytes of the tensors in a nested dict/list/tuple (a state dict, an optimizer's state)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save_tree(obj, folder: Path, name: str) -> None:
    tensors: dict = {}
    tree = flatten(obj, tensors)
    save_file(tensors, folder / f"{name}.safetensors")
    (folder / f"{name}.json").write_text(json.dumps(tree))


def load_tree(folder: Path, name: str):
    return unflatten(json.loads((folder / f"{name}.json").read_text()), load_file(folder / f"{name}.safetensors"))
