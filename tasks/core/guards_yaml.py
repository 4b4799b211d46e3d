"""Reading an untrusted YAML document (pipelines.yaml, a ``--set`` value) with its cost bounded
before a single Python object is built.

PyYAML's ``safe_load`` keeps an alias as a reference to the anchored object; whatever copies or
serialises the result (json, pydantic) expands it, so 500 bytes of nested aliases become
gigabytes ("billion laughs"), an anchor inside itself becomes a self-referencing list, and
100,000 nested brackets overflow the recursion of the composer. ``load_bounded``:

- refuses nesting deeper than ``MAX_DEPTH`` while it composes (before the composer recurses);
- walks the composed node graph once, memoised, counting every node as it would be once the
  aliases are expanded, and refuses more than ``MAX_NODES`` of them, or an alias whose anchor
  contains it (a recursive alias), naming the line;
- refuses a key given twice in one mapping, naming the key and both lines (PyYAML silently
  keeps the last: a whole pipeline replaced). A key that overrides one merged in with ``<<`` is
  YAML's own override, not a duplicate;
- reads only ``true`` and ``false`` as booleans, as YAML 1.2 does: YAML 1.1's ``yes``, ``no``,
  ``on``, ``off``, ``y`` and ``n`` stay the words they are, so ``flip: off`` is the choice
  ``"off"``, not ``false`` (a setting that wants a boolean says so when it gets one of them).

Every refusal is a ``YamlLimitError`` (a ``yaml.YAMLError``) whose message names the line.
"""

from __future__ import annotations

import re

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_DEPTH = 64  # levels of nesting, aliases expanded; pipelines.yaml needs about 6
MAX_NODES = 100_000  # scalars, lists and mappings once aliases are expanded; a real file: ~1,000
MAX_BYTES = 1 << 20  # the document's size: a real pipelines.yaml is a few KB
_MERGE = "tag:yaml.org,2002:merge"


class YamlLimitError(yaml.YAMLError):
    """A document refused before it was built: too deep, too large once expanded, a recursive
    alias, or a key given twice."""


def _line(node: Node) -> int:
    return node.start_mark.line + 1


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the bounds above (see the module docstring)."""

    def __init__(self, stream, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH):
        super().__init__(stream)
        self.max_nodes, self.max_depth, self._depth = max_nodes, max_depth, 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                mark = self.peek_event().start_mark
                raise YamlLimitError(f"line {mark.line + 1}: nested more than {self.max_depth} levels "
                                     "deep; refused before reading further (a pipelines file needs "
                                     "about 6). Flatten the document.")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node):
        expanded_size(node, self.max_nodes, self.max_depth)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            refuse_duplicate_keys(node)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2's booleans only (see the module docstring): SafeLoader's resolvers less its YAML 1.1
# bool rule, plus true/false in the three spellings the 1.2 core schema allows.
YAML11_BOOL_WORDS = frozenset({"yes", "no", "on", "off", "y", "n"})  # read here as the words they are
_BOOL = "tag:yaml.org,2002:bool"
BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in rules if tag != _BOOL]
    for first, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
BoundedLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def refuse_duplicate_keys(node: MappingNode) -> None:
    """A scalar key given twice in the mapping ``node`` (before ``<<`` merges are flattened)."""
    seen: dict[tuple[str, str], int] = {}
    for key_node, _ in node.value:
        if key_node.tag == _MERGE or not isinstance(key_node, ScalarNode):
            continue
        key = (key_node.tag, key_node.value)
        if key in seen:
            raise YamlLimitError(
                f"line {_line(key_node)}: key {key_node.value!r} is given twice in one mapping (first on "
                f"line {seen[key]}); YAML would silently keep only the last. Remove or rename one.")
        seen[key] = _line(key_node)


def expanded_size(root: Node, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> int:
    """The nodes of ``root`` once every alias is expanded, and its expanded depth, computed
    without expanding (each node's size is worked out once); refuses beyond the bounds and an
    alias inside its own anchor. Iterative: no recursion however the graph is shaped."""
    size: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, depth)
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = _children(node)
            n = 1 + sum(size[id(k)][0] for k in kids)
            depth = 1 + max((size[id(k)][1] for k in kids), default=0)
            on_path.discard(key)
            if n > max_nodes:
                raise YamlLimitError(
                    f"line {_line(node)}: this value expands to more than {max_nodes:,} nodes once its "
                    "aliases (*name) are expanded; refused before building it (nested aliases can turn "
                    "a few hundred bytes into gigabytes). Write the values out, or alias less deeply.")
            if depth > max_depth:
                raise YamlLimitError(f"line {_line(node)}: nested more than {max_depth} levels deep once "
                                     "aliases are expanded; refused. Alias less deeply.")
            size[key] = (n, depth)
            continue
        if key in size:
            continue
        if key in on_path:
            raise YamlLimitError(f"line {_line(node)}: an alias refers to an anchor that contains it (a "
                                 "recursive alias: an endless value); refused. Remove the alias.")
        on_path.add(key)
        stack.append((node, True))
        for kid in _children(node):
            if id(kid) in on_path:
                raise YamlLimitError(
                    f"line {_line(kid)}: an alias refers to an anchor that contains it (a recursive "
                    "alias: an endless value); refused. Remove the alias.")
            if id(kid) not in size:
                stack.append((kid, False))
    return size[id(root)][0]


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_bounded(text: str, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH):
    """``yaml.safe_load(text)`` within the bounds above; raises ``yaml.YAMLError`` (a
    ``YamlLimitError`` for a refusal) with the line."""
    if len(text) > MAX_BYTES:
        raise YamlLimitError(f"{len(text):,} characters: more than the {MAX_BYTES:,} a pipelines file "
                             "may have; refused unread.")
    loader = BoundedLoader(text, max_nodes, max_depth)
    try:
        return loader.get_single_data()
    except RecursionError:  # cannot happen within MAX_DEPTH; a last guard, never a traceback
        raise YamlLimitError(f"nested too deeply to read (more than {max_depth} levels)") from None
    finally:
        loader.dispose()
