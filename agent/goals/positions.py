"""Goals: Map a position inside a scalar's value (a CEL expression) back to its file position.

A scalar's value is rebuilt from its source lines: plain and quoted scalars fold lines into
spaces, `|` keeps them, `>` folds them. We lay the source lines over the value, each as far as
it matches, and place an offset on the line that covers it. Where the text diverges (escapes
in quoted strings) we fall back to the scalar's own start.
"""

from __future__ import annotations

from yaml.nodes import ScalarNode

from agent.goals.yamlsafe import Doc

Segment = tuple[int, int, int, int]  # value offset, source line, source column, length


def offset_of(text: str, line: int, col: int) -> int:
    """The index in `text` of a 1-based line and column."""
    lines = text.split("\n")
    line = max(1, min(line, len(lines)))
    return sum(len(part) + 1 for part in lines[: line - 1]) + max(col - 1, 0)


def locate(doc: Doc, node: ScalarNode, offset: int) -> tuple[int, int]:
    """The 1-based file line and column of `node.value[offset]`."""
    for start, line, col, length in reversed(_segments(doc, node)):
        if start <= offset <= start + length:
            return line + 1, col + offset - start + 1
    return node.start_mark.line + 1, node.start_mark.column + 1


def _segments(doc: Doc, node: ScalarNode) -> list[Segment]:
    value, cursor, found = str(node.value), 0, []
    for line, col, text in _source(doc, node):
        length = _common(text, value, cursor)
        found.append((cursor, line, col, length))
        cursor += length
        if cursor < len(value) and value[cursor] in " \n":
            cursor += 1
    return found


def _common(text: str, value: str, cursor: int) -> int:
    length = 0
    limit = min(len(text), len(value) - cursor)
    while length < limit and text[length] == value[cursor + length]:
        length += 1
    return length


def _source(doc: Doc, node: ScalarNode) -> list[tuple[int, int, str]]:
    """(line, column, text) of each source line holding part of the scalar, 0-based."""
    first, last = node.start_mark.line, node.end_mark.line
    lines = doc.lines
    if node.style in ("|", ">"):
        body = range(first + 1, min(last + (1 if node.end_mark.column else 0), len(lines)))
        indent = next((_indent(lines[n]) for n in body if lines[n].strip()), 0)
        return [(n, indent, lines[n][indent:]) for n in body]
    col = node.start_mark.column + (1 if node.style in ("'", '"') else 0)
    parts = [(first, col, lines[first][col:])]
    for n in range(first + 1, min(last + 1, len(lines))):
        indent = _indent(lines[n])
        parts.append((n, indent, lines[n][indent:]))
    return parts


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))
