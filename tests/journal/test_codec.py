"""The codec: canonical, exact round trips of core values; clear errors on foreign data."""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import typing
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from immutables import Map

from agent.core.actions import Action, Resync, UnitJob
from agent.core.draft import evolve
from agent.core.inputs import Input, Tick, UnitObserved
from agent.core.spec import GoalSet, RestartPolicy
from agent.core.state import ProbeState, ServiceState, State
from agent.core.step import build_index
from agent.errors import JournalCorrupt
from agent.journal import codec


def _maps(alias: Any) -> st.SearchStrategy[Map[Any, Any]]:
    key, value = typing.get_args(alias) or (str, int)
    return st.dictionaries(st.from_type(key), st.from_type(value), max_size=3).map(Map)


st.register_type_strategy(Map, _maps)

STATES = st.builds(
    State,
    services=st.dictionaries(st.text(max_size=8), st.from_type(ServiceState), min_size=1).map(Map),
    probes=st.dictionaries(st.text(max_size=8), st.from_type(ProbeState), min_size=1).map(Map),
    pending=st.dictionaries(
        st.integers(1, 10**6),
        st.from_type(UnitJob) | st.from_type(typing.get_args(Action)[1]),
        min_size=1,
    ).map(Map),
)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def _round_trip(value: object) -> None:
    data = codec.encode(value)
    assert codec.encode(codec.decode(data)) == data
    if b"NaN" not in data:  # a State's index is derived: decoding rebuilds it from its goals
        want = evolve(value, index=build_index(value.goals)) if isinstance(value, State) else value
        assert codec.decode(data) == want
    canonical = json.dumps(json.loads(data), sort_keys=True, separators=(",", ":"))
    assert canonical.encode() == data


@FAST
@given(st.from_type(Input))  # type: ignore[arg-type]
def test_inputs_round_trip(inp: Input) -> None:
    _round_trip(inp)


@FAST
@given(STATES)
def test_states_round_trip(state: State) -> None:
    _round_trip(state)


@FAST
@given(st.from_type(State))
def test_any_state_round_trips(state: State) -> None:
    _round_trip(state)


@FAST
@given(st.lists(st.from_type(Action), max_size=5).map(tuple))  # type: ignore[arg-type]
def test_action_tuples_round_trip(actions: tuple[Action, ...]) -> None:
    _round_trip(actions)


def test_defaults_are_left_out_and_restored() -> None:
    assert codec.encode(ServiceState()) == b'{"_t":"ServiceState"}'
    assert codec.decode(b'{"_t":"ServiceState"}') == ServiceState()
    assert codec.encode(Tick(1.5)) == b'{"_t":"Tick","now":1.5}'


def test_types_survive_where_values_compare_equal() -> None:
    for value in (ServiceState(since=0), ServiceState(since=-0.0), ServiceState(transitions=True)):
        back = codec.decode(codec.encode(value))
        assert type(back.since) is type(value.since)
        assert math.copysign(1, back.since) == math.copysign(1, value.since)
        assert type(back.transitions) is type(value.transitions)


def test_floats_are_exact() -> None:
    for x in (0.1 + 0.2, 5e-324, 1.7976931348623157e308, math.inf, -math.inf, 1 / 3):
        assert codec.decode(codec.encode(Tick(x))).now == x


def test_nested_defaults_compare_by_type() -> None:
    odd = dataclasses.replace(RestartPolicy(), limit=5.0)  # type: ignore[arg-type]
    back = codec.decode(codec.encode(GoalSet(digest="d")))
    assert back == GoalSet(digest="d")
    assert type(codec.decode(codec.encode(odd)).limit) is float


def test_map_keys_sorted_int_and_str() -> None:
    m = Map({3: "c", 1: "a", 2: "b"})
    assert codec.encode(m) == b'{"_m":[[1,"a"],[2,"b"],[3,"c"]]}'
    assert codec.decode(codec.encode(Map({"b": 1, "a": 2}))) == Map({"a": 2, "b": 1})


def test_warm_cache_gives_the_cold_encoding() -> None:
    state = State(services=Map({"web": ServiceState(lifecycle="Running")}))
    first = codec.encode(state)
    changed = dataclasses.replace(state, services=state.services.set("db", ServiceState(since=2.0)))
    warm = codec.encode(changed)
    codec._cache.clear()
    assert warm == codec.encode(changed) != first


BIG = codec._LINEAGE_MIN + 4
EDITS = st.lists(
    st.tuples(st.sampled_from(["set", "same", "equal", "add", "delete"]), st.integers(0, BIG + 8)),
    min_size=1,
    max_size=12,
)


@FAST
@given(EDITS)
def test_a_big_map_encoded_from_its_previous_version_is_its_fresh_encoding(
    edits: list[tuple[str, int]],
) -> None:
    """A State's big Map follows its previous version (codec._Lineage): after any sequence of
    values changed, kept, replaced by equal ones, keys added and removed, every commit's text
    is the one encoding without any cache gives."""
    names = [f"s{i:03d}" for i in range(BIG)]
    state = State(
        services=Map({n: ServiceState(since=float(i)) for i, n in enumerate(names)}),
        pending=Map({i: UnitJob(i, f"s{i:03d}.service", "start", "") for i in range(BIG)}),
    )
    codec.encode(state)
    for n, (op, i) in enumerate(edits):
        name = f"s{i:03d}"
        services, pending = state.services, state.pending
        if op == "set":
            services = services.set(name, ServiceState(lifecycle="Running", since=float(n)))
            pending = pending.set(i, UnitJob(i, f"{name}.service", "restart", name))
        elif op == "equal" and name in services:
            services = services.set(name, dataclasses.replace(services[name]))
        elif op == "add":
            services = services.set(f"new{n}", ServiceState())
            pending = pending.set(10_000 + n, UnitJob(10_000 + n, "x.service", "stop", ""))
        elif op == "delete" and name in services:
            services, pending = services.delete(name), pending.delete(i)
        state = dataclasses.replace(state, services=services, pending=pending)
        assert codec.encode(state) == codec._enc(state).encode("ascii")  # no cache, no lineage
    assert "services" in codec._lineages


def test_a_big_map_whose_key_turns_into_an_equal_one_of_another_type_is_encoded_afresh() -> None:
    jobs = {i: UnitJob(i, f"s{i:03d}.service", "start", "") for i in range(BIG)}
    state = State(pending=Map(jobs))
    codec.encode(state)
    rekeyed = state.pending.delete(1).set(True, jobs[1])  # 1 == True: the same key, new text
    state = dataclasses.replace(state, pending=rekeyed)
    assert codec.encode(state) == codec._enc(state).encode("ascii")
    assert b"[true," in codec.encode(state)


def test_digest_is_sha256_of_encoding() -> None:
    import hashlib

    assert codec.digest(Resync()) == hashlib.sha256(b'{"_t":"Resync"}').hexdigest()
    assert codec.digest(Tick(1.0)) != codec.digest(Tick(1.0000000000000002))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"_t":"Bogus","x":1}', "unknown type 'Bogus'"),
        (b'{"_t":"Tick","now":1,"extra":2}', "bad Tick"),
        (b'{"_t":"Tick"}', "bad Tick"),
        (b'{"a":1}', "unexpected JSON object"),
        (b'{"_m":[[1]]}', "bad map"),
        (b"\x00\xffgarbage", "undecodable"),
        (b'{"_t":"Tick","now":', "undecodable"),
    ],
)
def test_foreign_data_is_journal_corrupt(data: bytes, message: str) -> None:
    with pytest.raises(JournalCorrupt, match=message):
        codec.decode(data)


def test_only_core_values_encode() -> None:
    @dataclasses.dataclass(frozen=True)
    class Tick:  # same name as a core class, different class
        now: float

    for value in (Tick(1.0), [1], {"a": 1}, {1}, object()):
        with pytest.raises(TypeError):
            codec.encode(value)


def test_registry_covers_the_core() -> None:
    names = codec.registry()
    for cls in (State, ServiceState, UnitJob, UnitObserved, GoalSet, Resync):
        assert names[cls.__name__] is cls


def test_plain_is_json_friendly() -> None:
    state = State(pending=Map({7: UnitJob(7, "web.service", "start", "web")}))
    view = codec.plain(state)
    json.dumps(view)
    assert view["pending"]["7"] == {
        "type": "UnitJob",
        "id": 7,
        "unit": "web.service",
        "op": "start",
        "service": "web",
    }


def test_the_cache_forgets_a_value_once_it_is_gone() -> None:
    codec._cache.clear()
    state = State(services=Map({"web": ServiceState(lifecycle="Running", since=1.5)}))
    codec.encode(state)
    held = len(codec._cache.texts)
    assert held >= 2  # the map and its value at least (the State itself is never kept)
    del state
    gc.collect()
    assert len(codec._cache.texts) == 0
