"""Walk an SR content tree: every content item with its path, by-reference items resolved.

Paths are the standard's content item identifiers written with dots: the root is
``1``, its third child ``1.3``, and a by-reference item's
Referenced Content Item Identifier ``[1, 3, 2]`` names ``1.3.2``. The walk is
iterative (a deep tree cannot exhaust the stack), keeps document order, and reports
what is wrong with the tree as :class:`Problem` values instead of raising, so that the
valid parts of a broken document still become rows:

- a by-reference item whose target does not exist (``broken_reference``);
- by-reference items that close a cycle with the tree's own edges (``cyclic_reference``);
- an item of a value type that requires a concept name without one
  (``missing_concept_name``; PS3.3 C.17.3: TEXT, NUM, CODE, DATETIME, DATE, TIME,
  UIDREF, PNAME, and the root).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dicomflow.sr.codes import Code, Concept
from dicomflow.sr.items import Item

NAMED_VALUE_TYPES = frozenset(
    {"TEXT", "NUM", "CODE", "DATETIME", "DATE", "TIME", "UIDREF", "PNAME"}
)

# The problems that make a document's extraction incomplete (each document with any
# of them gets one error row); others are noted on their row only.
FAULTS = frozenset({"broken_reference", "cyclic_reference", "missing_concept_name"})


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong at one content item: a short code and the item's path (no values)."""

    code: str
    path: str

    @property
    def is_fault(self) -> bool:
        return self.code in FAULTS


@dataclass(slots=True, eq=False)
class ContentNode:
    """One content item. For a by-reference item, ``item`` is the referencing item and
    ``target`` the path it names; ``resolved`` is the target's node once found."""

    path: str
    parent: ContentNode | None
    relationship: str | None
    item: Item
    target: str | None = None
    resolved: ContentNode | None = None
    children: list[ContentNode] = field(default_factory=list)
    concept: tuple[str, str, str] | None = None  # code value, scheme, meaning

    @property
    def by_reference(self) -> bool:
        return self.target is not None

    @property
    def source(self) -> ContentNode | None:
        """The item that holds this node's content: itself, or its resolved target."""
        return self.resolved if self.by_reference else self

    @property
    def value_type(self) -> str | None:
        source = self.source
        return None if source is None else _text(source.item.get("ValueType"))

    def named(self, names: Concept) -> bool:
        """Whether this item's (resolved) concept name is one of ``names``."""
        source = self.source
        return (
            source is not None
            and source.concept is not None
            and Code(source.concept[0], source.concept[1]) in names
        )

    def child(self, names: Concept, *value_types: str) -> ContentNode | None:
        """The first child named one of ``names`` (of one of ``value_types``, if given)."""
        return next(self.children_named(names, *value_types), None)

    def children_named(self, names: Concept, *value_types: str) -> Iterator[ContentNode]:
        for node in self.children:
            if node.named(names) and (not value_types or node.value_type in value_types):
                yield node


@dataclass(frozen=True)
class ContentTree:
    """A document's content items in document order (the root first), by path."""

    nodes: tuple[ContentNode, ...]
    by_path: dict[str, ContentNode]
    problems: tuple[Problem, ...]

    @property
    def root(self) -> ContentNode:
        return self.nodes[0]

    def descendants(self, node: ContentNode) -> Iterator[ContentNode]:
        """``node``'s subtree in document order, ``node`` excluded (by value only)."""
        stack = list(reversed(node.children))
        while stack:
            current = stack.pop()
            yield current
            stack.extend(reversed(current.children))


def walk(ds: Item) -> ContentTree:
    """The content tree of the SR document ``ds`` (see the module's docstring)."""
    root = ContentNode("1", None, None, ds, concept=concept_name(ds))
    nodes = [root]
    problems: list[Problem] = []
    stack = [root]
    while stack:
        node = stack.pop()
        items = node.item.get("ContentSequence") or ()
        for number, item in enumerate(items, 1):
            child = ContentNode(
                f"{node.path}.{number}",
                node,
                _text(item.get("RelationshipType")),
                item,
                target=_reference(item),
                concept=concept_name(item),
            )
            node.children.append(child)
        stack.extend(reversed(node.children))
        if node is not root:
            nodes.append(node)
    by_path = {node.path: node for node in nodes}
    for node in nodes:
        if node.target is not None:
            node.resolved = by_path.get(node.target)
            if node.resolved is None:
                problems.append(Problem("broken_reference", node.path))
        elif node.concept is None and (
            node is root or _text(node.item.get("ValueType")) in NAMED_VALUE_TYPES
        ):
            problems.append(Problem("missing_concept_name", node.path))
    problems.extend(Problem("cyclic_reference", path) for path in _cycles(nodes))
    problems.sort(key=lambda p: _path_key(p.path))
    return ContentTree(tuple(nodes), by_path, tuple(problems))


def concept_name(item: Item) -> tuple[str, str, str] | None:
    """An item's concept name as (code value, scheme, meaning); None when absent."""
    return first_code(item, "ConceptNameCodeSequence")


def first_code(item: Item, keyword: str) -> tuple[str, str, str] | None:
    """The first code of the code sequence ``keyword`` as (value, scheme, meaning)."""
    sequence = item.get(keyword)
    if not sequence:
        return None
    code = sequence[0]
    value = code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue")
    if not value:
        return None
    return (
        _text(value) or "",
        _text(code.get("CodingSchemeDesignator")) or "",
        _text(code.get("CodeMeaning")) or "",
    )


def _reference(item: Item) -> str | None:
    """The path a by-reference item names; ``""`` when its identifier is unusable."""
    if "ReferencedContentItemIdentifier" not in item:
        return None
    value = item.get("ReferencedContentItemIdentifier")
    numbers = value if isinstance(value, list) else [value]
    try:
        return ".".join(str(int(n)) for n in numbers)
    except (TypeError, ValueError):
        return ""


def _cycles(nodes: list[ContentNode]) -> list[str]:
    """The by-reference items on a cycle of the graph made of the tree's edges (parent
    to child) and the by-reference edges (item to target): an iterative depth-first
    search, each back edge naming the by-reference items of the cycle it closes."""

    def edges(node: ContentNode) -> list[ContentNode]:
        return [node.resolved] if node.resolved is not None else node.children

    done: set[int] = set()
    on_stack: dict[int, int] = {}  # node id -> its position on the search's stack
    closing: dict[str, None] = {}
    for start in nodes:
        if id(start) in done:
            continue
        stack: list[tuple[ContentNode, Iterator[ContentNode]]] = [(start, iter(edges(start)))]
        on_stack[id(start)] = 0
        while stack:
            node, pending = stack[-1]
            following = next(pending, None)
            if following is None:
                done.add(id(node))
                del on_stack[id(node)]
                stack.pop()
            elif id(following) in on_stack:
                for member, _ in stack[on_stack[id(following)] :]:
                    if member.by_reference:
                        closing[member.path] = None
            elif id(following) not in done:
                on_stack[id(following)] = len(stack)
                stack.append((following, iter(edges(following))))
    return list(closing)


def _path_key(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in path.split(".") if part.isdigit())


def _text(value: Any) -> str | None:
    """A string value stripped of padding; None when empty."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None
