"""Goals: Bounded YAML: safe_load-level constructs only, every value and key with its position.

Hostile input is cut off early: a size cap per file, a nesting depth cap, a cap on composed
nodes, and a cap on the nodes aliases expand to (so a "billion laughs" file costs as much as
its text, never its expansion). Events come from libyaml when available; the composer is ours
so that it can count. The result is plain Python data plus indexes from a path (the keys and
list positions leading to a value) to the YAML node of that value and of its key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from agent.errors import ConfigError, Problem

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 50_000
MAX_EXPANDED = 100_000
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MAP, _SEQ = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"

PathKey = tuple[Any, ...]


@dataclass
class Doc:
    """One parsed file: `data` plus the nodes of every value and key, by path."""

    file: str
    text: str
    data: Any
    values: dict[PathKey, Node] = field(default_factory=dict)
    keys: dict[PathKey, Node] = field(default_factory=dict)
    duplicates: list[tuple[PathKey, Node, Node]] = field(default_factory=list)

    @cached_property
    def lines(self) -> list[str]:
        """The source lines, without line ends."""
        return [line.rstrip("\r") for line in self.text.split("\n")]


def problem_at(file: str, node: Node | yaml.Mark | None, message: str) -> Problem:
    """A Problem at a node's (or mark's) start; 1:1 when there is none."""
    mark = node.start_mark if isinstance(node, Node) else node
    if mark is None:
        return Problem(file, 1, 1, message)
    return Problem(file, mark.line + 1, mark.column + 1, message)


def read(path: Path, file: str) -> Doc:
    """Read and parse one file; raise ConfigError with the reason when it cannot be used."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as err:
        raise ConfigError([Problem(file, 1, 1, f"cannot read file: {err.strerror}")]) from None
    if len(raw) > MAX_BYTES:
        message = f"file is larger than 1 MiB ({MAX_BYTES} bytes); refusing to parse it"
        raise ConfigError([Problem(file, 1, 1, message)])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        message = f"file is not valid UTF-8 (byte offset {err.start})"
        raise ConfigError([Problem(file, 1, 1, message)]) from None
    return parse(text, file)


def parse(text: str, file: str) -> Doc:
    """Parse one YAML document from `text`; raise ConfigError on syntax or limit violations."""
    if len(text.encode("utf-8")) > MAX_BYTES:
        raise ConfigError([Problem(file, 1, 1, f"document is larger than {MAX_BYTES} bytes")])
    loader = _LOADER(text)
    try:
        root = _Composer(loader, file).document()
    except _Limit as err:
        raise ConfigError([problem_at(file, err.problem_mark, str(err.problem))]) from None
    except yaml.MarkedYAMLError as err:
        raise ConfigError([problem_at(file, err.problem_mark, _syntax(err))]) from None
    except yaml.YAMLError as err:
        raise ConfigError([Problem(file, 1, 1, f"YAML error: {err}")]) from None
    finally:
        getattr(loader, "dispose", lambda: None)()
    doc = Doc(file, text, None)
    if root is not None:
        doc.data = _Converter(doc).value(root, ())
    return doc


def _syntax(err: yaml.MarkedYAMLError) -> str:
    where, mark = "", err.context_mark
    if err.context and mark is not None and mark is not err.problem_mark:
        where = f" ({err.context} at {mark.line + 1}:{mark.column + 1})"
    elif err.context:
        where = f" ({err.context})"
    return f"YAML syntax error: {err.problem}{where}"


class _Limit(yaml.MarkedYAMLError):
    """A cap was hit; reported like a syntax error, at the node where it happened."""

    def __init__(self, mark: Any, message: str) -> None:
        super().__init__(problem=message, problem_mark=mark)


class _Composer:
    """Builds yaml nodes from parser events, counting nodes, depth and alias expansion."""

    def __init__(self, loader: Any, file: str) -> None:
        self.loader, self.file = loader, file
        self.anchors: dict[str, tuple[Node, int, int]] = {}
        self.open: set[str] = set()
        self.composed = 0
        self.expanded = 0
        self.deepest = 0

    def document(self) -> Node | None:
        self.loader.get_event()  # StreamStart
        if self.loader.check_event(yaml.StreamEndEvent):
            return None
        self.loader.get_event()  # DocumentStart
        node = self.node(1)
        self.loader.get_event()  # DocumentEnd
        if not self.loader.check_event(yaml.StreamEndEvent):
            mark = self.loader.get_event().start_mark
            raise _Limit(mark, "expected a single YAML document, found another one")
        return node

    def count(self, mark: Any, nodes: int) -> None:
        self.composed += 1
        self.expanded += nodes
        if self.composed > MAX_NODES:
            raise _Limit(mark, f"too many YAML nodes (more than {MAX_NODES})")
        if self.expanded > MAX_EXPANDED:
            message = f"aliases expand to more than {MAX_EXPANDED} nodes; refusing to expand them"
            raise _Limit(mark, message)

    def node(self, depth: int) -> Node:
        event = self.loader.get_event()
        if isinstance(event, yaml.AliasEvent):
            return self.alias(event, depth)
        anchor = event.anchor
        if anchor is None:
            return self.build(event, depth)
        self.open.add(anchor)
        before, outer, self.deepest = self.expanded, self.deepest, depth
        node = self.build(event, depth)
        self.open.discard(anchor)
        self.anchors[anchor] = (node, self.expanded - before, self.deepest - depth)
        self.deepest = max(outer, self.deepest)
        return node

    def alias(self, event: Any, depth: int) -> Node:
        name = str(event.anchor)
        if name in self.open:
            raise _Limit(event.start_mark, f"recursive alias '*{name}' is not allowed")
        if name not in self.anchors:
            raise _Limit(event.start_mark, f"undefined alias '*{name}'")
        node, size, height = self.anchors[name]
        self.count(event.start_mark, size)
        self.nest(event.start_mark, depth + height)
        return node

    def nest(self, mark: Any, depth: int) -> None:
        self.deepest = max(self.deepest, depth)
        if depth > MAX_DEPTH:
            raise _Limit(mark, f"nesting is deeper than {MAX_DEPTH} levels")

    def build(self, event: Any, depth: int) -> Node:
        start: Any = event.start_mark
        self.count(start, 1)
        self.nest(start, depth)
        tag: str | None = event.tag
        if isinstance(event, yaml.ScalarEvent):
            end: Any = event.end_mark
            tag = self._tag(ScalarNode, tag, event.value, event.implicit)
            return ScalarNode(tag, event.value, start, end, event.style or None)
        if isinstance(event, yaml.SequenceStartEvent):
            items: list[Node] = []
            while not self.loader.check_event(yaml.SequenceEndEvent):
                items.append(self.node(depth + 1))
            end = self.loader.get_event().end_mark
            tag = self._tag(SequenceNode, tag, None, event.implicit)
            return SequenceNode(tag, items, start, end, event.flow_style)
        pairs: list[tuple[Node, Node]] = []
        while not self.loader.check_event(yaml.MappingEndEvent):
            key = self.node(depth + 1)
            pairs.append((key, self.node(depth + 1)))
        end = self.loader.get_event().end_mark
        tag = self._tag(MappingNode, tag, None, event.implicit)
        return MappingNode(tag, pairs, start, end, event.flow_style)

    def _tag(self, kind: type[Node], tag: str | None, value: Any, implicit: Any) -> str:
        if tag is None or tag == "!":
            return str(self.loader.resolve(kind, value, implicit))
        return tag


class _Converter:
    """Turns nodes into plain data and fills the doc's path indexes."""

    def __init__(self, doc: Doc) -> None:
        self.doc = doc
        self.scalars = SafeConstructor()

    def value(self, node: Node, path: PathKey) -> Any:
        self.doc.values[path] = node
        if isinstance(node, ScalarNode):
            return self.scalar(node)
        if isinstance(node, SequenceNode):
            self._expect(node, _SEQ)
            return [self.value(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, MappingNode)
        self._expect(node, _MAP)
        return self.mapping(node, path)

    def scalar(self, node: ScalarNode) -> Any:
        try:
            return self.scalars.construct_object(node)
        except ConstructorError as err:
            raise ConfigError([problem_at(self.doc.file, node, str(err.problem))]) from None
        except ValueError as err:
            raise ConfigError([problem_at(self.doc.file, node, f"invalid value: {err}")]) from None

    def mapping(self, node: MappingNode, path: PathKey) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        merges = [value for key, value in node.value if key.tag == _MERGE]
        for source in reversed([s for m in merges for s in self.sources(m)]):
            result.update(self.mapping(source, path))
        own: set[Any] = set()
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.key(key_node)
            if key in own:
                self.doc.duplicates.append(((*path, key), self.doc.keys[(*path, key)], key_node))
                continue
            own.add(key)
            self.doc.keys[(*path, key)] = key_node
            result[key] = self.value(value_node, (*path, key))
        return result

    def sources(self, node: Node) -> list[MappingNode]:
        """The mappings a merge key `<<` names (one, or a list of them)."""
        found = node.value if isinstance(node, SequenceNode) else [node]
        for source in found:
            if not isinstance(source, MappingNode):
                message = "a merge key '<<' takes a mapping or a list of mappings"
                raise ConfigError([problem_at(self.doc.file, source, message)])
        return list(found)

    def key(self, node: Node) -> Any:
        if not isinstance(node, ScalarNode):
            message = "mapping keys must be scalars, not lists or mappings"
            raise ConfigError([problem_at(self.doc.file, node, message)])
        key = self.scalar(node)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise ConfigError([problem_at(self.doc.file, node, "unsupported mapping key")])
        return key

    def _expect(self, node: Node, tag: str) -> None:
        if node.tag != tag:
            message = f"unsupported YAML tag {node.tag!r}"
            raise ConfigError([problem_at(self.doc.file, node, message)])
