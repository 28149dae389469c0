"""Journal: Canonical JSON for the core's values: frozen dataclasses, tuples, `immutables.Map`,
scalars.

    encode(obj) -> bytes     compact, keys sorted: equal values of equal types, equal bytes
    decode(data) -> value    the inverse; JSON lists come back as tuples
    digest(obj) -> str       sha256 hex of encode(obj)

A dataclass is `{"_t": "ClassName", field: value, ...}`, fields equal to their default (same
type, same value) left out; a Map is `{"_m": [[key, value], ...]}` sorted by key. Only the
dataclasses of agent.core.spec/inputs/actions/state can be encoded, so whatever is written can
be read back. The output equals `json.dumps(..., sort_keys=True, separators=(",", ":"))` of the
same structure.

Core values are immutable, so the encoded text of each dataclass and Map is cached by identity
(holding a reference, so the id cannot be reused): encoding a State that shares most of its
structure with the previous one costs only what changed. A big Map of the State (services at
10,000 units) is new at every commit that changes one of its values; its text is then made
from the previous version's pairs in key order, replacing those whose value changed (see
_Lineage), instead of sorting and joining every pair again.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import itertools
import json
import math
import operator
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from types import ModuleType
from typing import Any

from immutables import Map

from agent.core import actions, inputs, spec, state
from agent.core.draft import evolve
from agent.core.step import build_index
from agent.errors import JournalCorrupt

CORE_MODULES: tuple[ModuleType, ...] = (spec, inputs, actions, state)
_BIG = 256 * 1024
_KEEP = 128
"""Characters from which a nested value's text is kept (see _dataclass)."""
_MISSING = object()
_esc: Callable[[str], str] = json.encoder.encode_basestring_ascii


@cache
def registry() -> dict[str, type]:
    """Every dataclass defined in the core modules, by class name."""
    found: dict[str, type] = {}
    for module in CORE_MODULES:
        for obj in vars(module).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj):
                if obj.__module__ != module.__name__:
                    continue
                if found.setdefault(obj.__name__, obj) is not obj:
                    raise RuntimeError(f"two core dataclasses named {obj.__name__}")
    return found


def encode(obj: Any) -> bytes:
    """Canonical compact JSON of a core value."""
    if type(obj) is not state.State:
        return _enc(obj).encode("ascii")
    with _gc_paused(True):
        _cache.on = True
        try:
            text = _dataclass(obj, lineage=_lineages)
        finally:
            _cache.on = False
    return text.encode("ascii")


def decode(data: bytes | str) -> Any:
    """The value `encode` made; JournalCorrupt if `data` is not such an encoding."""
    try:
        with _gc_paused(len(data) > _BIG):
            return _tup(json.loads(data, object_hook=_hook))
    except (ValueError, RecursionError) as err:
        raise JournalCorrupt(f"undecodable journal value: {err}") from err


def digest(obj: Any) -> str:
    """sha256 hex of encode(obj)."""
    return hashlib.sha256(encode(obj)).hexdigest()


def plain(obj: Any) -> Any:
    """A JSON-friendly view for people: dataclass -> dict with "type" and every field."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {"type": type(obj).__name__, **fields}
    if isinstance(obj, tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, Map):
        return {str(k): plain(v) for k, v in _sorted_items(obj)}
    return obj


@contextmanager
def _gc_paused(pause: bool) -> Iterator[None]:
    """Building tens of thousands of objects triggers the cyclic GC over and over (3x slower);
    nothing built here is cyclic, so pause it for big values."""
    if not pause or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# -- encoding -----------------------------------------------------------------------------------


class _Text(weakref.ref[Any]):
    """A weak reference to an encoded value that carries its text and cache key (one object
    per entry: a tuple and a closure each were 40% of the cache at 10,000 services)."""

    __slots__ = ("key", "text")
    key: int
    text: str


class _Cache:
    """id -> text of the values inside a State, for as long as each value lives: a value
    that dies takes its text with it, so the cache holds the texts of what the agent still
    holds and nothing else, without bounds to tune. Used only inside a State (`on`): inputs
    and actions are encoded once, and a new State once per commit."""

    def __init__(self) -> None:
        self.texts: dict[int, _Text] = {}
        self.on = False
        self._drop = self._gone  # one bound method for every reference's callback

    def get(self, obj: object) -> str | None:
        hit = self.texts.get(id(obj)) if self.on else None
        return hit.text if hit is not None and hit() is obj else None

    def put(self, obj: object, text: str) -> None:
        if self.on:
            ref = _Text(obj, self._drop)
            ref.key, ref.text = id(obj), text
            self.texts[ref.key] = ref

    def _gone(self, ref: weakref.ref[Any]) -> None:
        key: int | None = getattr(ref, "key", None)  # not isinstance: safe at interpreter exit
        if key is not None and self.texts.get(key) is ref:
            del self.texts[key]

    def clear(self) -> None:
        self.texts.clear()
        _lineages.clear()


_cache = _Cache()


_REQUIRED, _EXACT, _FLOAT, _DEEP = range(4)
"""How a field is compared with its default to leave it out: never (no default); type and ==;
type, == and sign (-0.0 == 0.0); by encoding (non-empty tuples, dataclasses: equal text is
exactly what decoding needs to restore the default)."""


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    key: str  # '"name":'
    default: object
    kind: int
    text: str  # the default's encoding, for _DEEP


@dataclasses.dataclass(frozen=True)
class _Plan:
    """How to encode one dataclass: its head and its fields sorted by name."""

    head: str
    fields: tuple[_Field, ...]


_PLANS: dict[type, _Plan] = {}


def _plan(cls: type) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = _make_plan(cls)
    return plan


def _make_plan(cls: type) -> _Plan:
    if registry().get(cls.__name__) is not cls:
        raise TypeError(f"{cls.__qualname__} is not a core dataclass; the codec cannot encode it")
    fields = []
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name):
        if f.metadata.get("derived"):
            continue  # rebuilt on decode (see _rebuild)
        default = _default(f)
        kind = _kind(default)
        text = _enc(default) if kind == _DEEP else ""
        fields.append(_Field(f.name, _esc(f.name) + ":", default, kind, text))
    return _Plan('{"_t":' + _esc(cls.__name__), tuple(fields))


def _default(f: dataclasses.Field[Any]) -> object:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _MISSING if f.default is dataclasses.MISSING else f.default


def _kind(default: object) -> int:
    if default is _MISSING:
        return _REQUIRED
    if type(default) is float:
        return _FLOAT
    if type(default) in (str, int, bool, type(None)) or default in ((), Map()):
        return _EXACT
    return _DEEP


def _dataclass(obj: Any, keep: bool = False, lineage: dict[str, _Lineage] | None = None) -> str:
    """`obj`'s text; kept in the cache when `keep` or when long enough to be worth an entry
    (small nested values cost more as entries than they take to encode again). `lineage`
    (for the State): its big Maps' previous versions, by field."""
    text = _cache.get(obj)
    if text is not None:
        return text
    plan = _PLANS.get(type(obj)) or _plan(type(obj))
    values = obj.__dict__
    parts = [plan.head]
    for f in plan.fields:
        value = values[f.name]
        if f.kind == _DEEP:
            text = _enc(value)
            if text != f.text:
                parts.append(f.key + text)
            continue
        if f.kind and type(value) is type(f.default) and value == f.default and _exact(f, value):
            continue
        if lineage is not None and type(value) is Map and len(value) >= _LINEAGE_MIN:
            parts.append(f.key + _big_map(lineage, f.name, value))
            continue
        parts.append(f.key + _ENCODERS.get(type(value), _other)(value))
    text = ",".join(parts) + "}"
    if (keep or len(text) >= _KEEP) and type(obj) is not state.State:
        _cache.put(obj, text)
    return text


def _exact(f: _Field, value: Any) -> bool:
    """Given type and == agree: whether the value is exactly the default (0.0 is not -0.0)."""
    return f.kind == _EXACT or bool(value) or _sign(value) == _sign(f.default)  # type: ignore[arg-type]


def _sign(x: float) -> float:
    return math.copysign(1.0, x)


def _sorted_items(m: Map[Any, Any]) -> list[tuple[Any, Any]]:
    try:
        return sorted(m.items())  # keys are unique: values are never compared
    except TypeError:  # mixed key types
        return sorted(m.items(), key=lambda kv: _mixed(kv[0]))


def _mixed(key: Any) -> tuple[bool, Any]:
    """A Map key's place when the keys' types cannot be compared: other types before str."""
    return type(key) is str, key


def _map(m: Map[Any, Any]) -> str:
    text = _cache.get(m)
    if text is None:
        text = _map_text([_pair(k, v) for k, v in _sorted_items(m)])
        _cache.put(m, text)
    return text


def _map_text(pairs: list[str]) -> str:
    return '{"_m":[' + ",".join(pairs) + "]}"


_LINEAGE_MIN = 256
"""Entries from which a State's Map is encoded from its previous version (see _Lineage)."""


class _Lineage:
    """The last encoded version of one of the State's big Maps: its keys and values in the
    Map's own order (a HAMT's: the same for the same keys), and the pairs' texts in key order.
    The next version with the same keys is compared value by value, by identity and in C, and
    only the pairs whose value changed get a new text; one whose keys differ is encoded afresh
    and becomes the lineage."""

    __slots__ = ("keys", "pairs", "slot", "values")

    def __init__(self, m: Map[Any, Any]) -> None:
        self.keys = keys = list(m.keys())
        self.values = values = list(m.values())
        try:  # positions in key order (sorting the keys alone: items compare as tuples, 3x slower)
            order = sorted(range(len(keys)), key=keys.__getitem__)
        except TypeError:  # mixed key types
            order = sorted(range(len(keys)), key=lambda i: _mixed(keys[i]))
        self.slot = dict(zip(order, range(len(order)), strict=True))
        self.pairs = [_pair(keys[i], values[i]) for i in order]

    def follow(self, m: Map[Any, Any]) -> bool:
        """Update to `m`; False (and unusable) when its keys are not the same objects."""
        keys = list(m.keys())  # the very same key objects: 1 and True are one key, two texts
        if len(keys) != len(self.keys) or not all(map(operator.is_, keys, self.keys)):
            return False
        values = list(m.values())
        for i in itertools.compress(range(len(keys)), map(operator.is_not, values, self.values)):
            self.pairs[self.slot[i]] = _pair(keys[i], values[i])
        self.values = values
        return True


_lineages: dict[str, _Lineage] = {}
"""By State field: the last version encoded (it holds that version's values, as the State does)."""


def _big_map(lineages: dict[str, _Lineage], name: str, m: Map[Any, Any]) -> str:
    text = _cache.get(m)
    if text is None:
        line = lineages.get(name)
        if line is None or not line.follow(m):
            line = lineages[name] = _Lineage(m)
        text = _map_text(line.pairs)
        _cache.put(m, text)
    return text


def _pair(k: Any, v: Any) -> str:
    return "[" + _enc(k) + "," + _value(v) + "]"


def _value(v: Any) -> str:
    """A Map value's text, kept whatever its size: a map's values are what changes between
    commits, one at a time."""
    encoder = _ENCODERS.get(type(v), _other)
    return _dataclass(v, True) if encoder is _dataclass else encoder(v)


def _float(x: float) -> str:
    if math.isfinite(x):
        return float.__repr__(x)
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def _tuple(t: tuple[Any, ...]) -> str:
    return "[" + ",".join(map(_enc, t)) + "]"


def _other(obj: Any) -> str:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        _ENCODERS[type(obj)] = _dataclass
        return _dataclass(obj)
    raise TypeError(f"cannot encode {type(obj).__qualname__} (not a core value)")


_ENCODERS: dict[type, Callable[[Any], str]] = {
    str: _esc,
    int: int.__repr__,
    float: _float,
    bool: lambda b: "true" if b else "false",
    type(None): lambda _: "null",
    tuple: _tuple,
    Map: _map,
}


def _enc(obj: Any) -> str:
    return _ENCODERS.get(type(obj), _other)(obj)


# -- decoding -----------------------------------------------------------------------------------


def _tup(value: Any) -> Any:
    return tuple(map(_tup, value)) if type(value) is list else value


def _hook(obj: dict[str, Any]) -> Any:
    name = obj.pop("_t", None)
    if name is not None:
        return _build(name, obj)
    if obj.keys() == {"_m"}:
        return _build_map(obj["_m"])
    raise JournalCorrupt(f"unexpected JSON object in journal data: keys {sorted(obj)[:5]}")


@dataclasses.dataclass(frozen=True)
class _Shape:
    """How to build one dataclass from decoded fields."""

    cls: type
    defaults: dict[str, object]
    names: frozenset[str]
    required: frozenset[str]
    direct: bool  # no __post_init__: fill __dict__ directly, as agent.core.draft.evolve does


_SHAPES: dict[str, _Shape] = {}


def _shape(name: str) -> _Shape | None:
    shape = _SHAPES.get(name)
    cls = registry().get(name) if shape is None else None
    if cls is not None:
        fields = dataclasses.fields(cls)
        defaults = {f.name: _default(f) for f in fields}
        shape = _SHAPES[name] = _Shape(
            cls,
            {k: v for k, v in defaults.items() if v is not _MISSING},
            frozenset(defaults),
            frozenset(k for k, v in defaults.items() if v is _MISSING),
            not hasattr(cls, "__post_init__") and all(f.init for f in fields),
        )
    return shape


def _build(name: Any, fields: dict[str, Any]) -> Any:
    shape = _shape(name) if isinstance(name, str) else None
    if shape is None:
        raise JournalCorrupt(f"unknown type {name!r} in journal data (from a newer setpoint?)")
    if name in _UPGRADES:
        _UPGRADES[name](fields)
    obj = _construct(name, shape, fields)
    return _rebuild(obj) if name == "State" else obj


def _upgrade_run_effect(fields: dict[str, Any]) -> None:
    """Journals before logic 4 stored a RunEffect's owner as "domain:<name>" / "group:<name>"."""
    owner = fields.get("owner")
    if isinstance(owner, str):
        kind, _, name = owner.partition(":")
        fields["owner"] = actions.Owner("group" if kind == "group" else "domain", name)


def _upgrade_state(fields: dict[str, Any]) -> None:
    """Journals before logic 4 stored derived data in a State (index) and a counter nobody read."""
    fields.pop("index", None)
    fields.pop("completed", None)


_UPGRADES: dict[str, Callable[[dict[str, Any]], None]] = {
    "RunEffect": _upgrade_run_effect,
    "State": _upgrade_state,
}


def _rebuild(obj: Any) -> Any:
    """A decoded State with its derived fields rebuilt: the index from its goals, and every
    service busy (the first Tick finds out which are idle)."""
    if not isinstance(obj, state.State):
        return obj
    busy = Map((name, True) for name in obj.services)
    return evolve(obj, index=build_index(obj.goals), busy=busy)


def _construct(name: str, shape: _Shape, fields: dict[str, Any]) -> Any:
    for key, value in fields.items():
        if type(value) is list:
            fields[key] = _tup(value)
    if shape.direct and fields.keys() <= shape.names and shape.required <= fields.keys():
        obj: Any = object.__new__(shape.cls)
        obj.__dict__.update(shape.defaults)
        obj.__dict__.update(fields)
        return obj
    try:
        return shape.cls(**fields)
    except TypeError as err:
        raise JournalCorrupt(f"bad {name} in journal data: {err}") from err


def _build_map(pairs: Any) -> Map[Any, Any]:
    try:
        return Map((k, _tup(v)) for k, v in pairs)
    except (TypeError, ValueError) as err:
        raise JournalCorrupt(f"bad map in journal data: {err}") from err
