"""YAML as recipes read it: yaml.safe_load, refusing what safe_load lets through silently.

    values = load_yaml(text, "recipes/my.yaml")   # UserError for a key given twice or an alias bomb

- A key given twice in one mapping (safe_load keeps the last): refused with both line numbers.
- Aliases that expand past MAX_NODES nodes (`a: &a [x, x]`, `b: &b [*a, *a]`, ... doubles at each
  level: nine levels made 2.8 GB in two minutes when a message quoted the value): refused before
  anything is built from them. The count is of the tree as it would be expanded, computed on the
  shared node graph, so it costs one visit per node however large the expansion.
"""

import yaml

from hfgpt.core.errors import UserError

MAX_NODES = 100_000  # values, keys, lists and mappings of one document once aliases are expanded


class _Loader(yaml.SafeLoader):
    """safe_load's loader, refusing duplicate keys."""

    where = "recipe"

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: safe_load's own error follows
                continue
            if first != key_node.start_mark.line + 1:
                raise UserError(f"{self.where}: key '{key}' is given twice (lines {first} and "
                                f"{key_node.start_mark.line + 1}): keep one of them")
        return super().construct_mapping(node, deep=deep)


def expanded_size(node, sizes: dict | None = None, open_: set | None = None) -> int:
    """Nodes of the tree under `node` with every alias expanded, counted once per shared node."""
    sizes = {} if sizes is None else sizes
    open_ = set() if open_ is None else open_
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise UserError("an alias refers to a value that contains it (a recursive YAML structure): write the value out")
    open_.add(key)
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(expanded_size(child, sizes, open_) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(expanded_size(k, sizes, open_) + expanded_size(v, sizes, open_) for k, v in node.value)
    else:
        size = 1
    open_.discard(key)
    sizes[key] = min(size, MAX_NODES + 1)  # capped: the sums stay small integers
    return sizes[key]


def load_yaml(text: str, where: str = "recipe"):
    """The document in `text` as yaml.safe_load reads it, or a UserError naming `where` for a key
    given twice or aliases that expand past MAX_NODES; yaml.YAMLError for text that is not YAML."""
    loader = _Loader(text)
    loader.where = where
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            size = expanded_size(node)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        if size > MAX_NODES:
            raise UserError(f"{where}: its aliases (*name) expand to more than {MAX_NODES:,} values: write the values "
                            "out, or use fewer levels of aliases")
        return loader.construct_document(node)
    finally:
        loader.dispose()
