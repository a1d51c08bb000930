"""Fuzzing the configuration loader: whatever a file holds, only ConfigError comes out.

Two doors, both with every plugin of the installed entry points loaded:
- TOML-ish text written to a file and read by ``config.read_raw`` (tomllib)
  then ``config.validate``;
- nested dicts of real section and option names with random values of every
  kind TOML can produce, through ``testing.build_config``.

Volume (all deterministic): hypothesis examples (``derandomize=True``, no
example database) plus seeded-random cases built from the same vocabulary,
128,000 cases in all (94,000 dicts, 34,000 texts), counted where each is
checked and printed at the end of the file (the fuzz stage's output). Bounded
memory is checked with tracemalloc on a large file.

Two defects this fuzzer found in the core (an OverflowError for sizes written
with hundreds of digits, a RecursionError for deeply nested TOML) are fixed;
regression cases at the end keep them fixed.
"""

from __future__ import annotations

import collections
import datetime
import functools
import math
import os
import random
import string
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoballoon_core import config as configuration
from autoballoon_core.config import ConfigError
from autoballoon_core.options import options_of
from autoballoon_core.plugins import Registry, collect, create_plugin_manager
from autoballoon_core.testing import build_config

HYPOTHESIS_EXAMPLES = 4_000
RANDOM_CASES = 90_000
FUZZ = settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None, database=None,
                derandomize=True, suppress_health_check=list(HealthCheck))
MAX_DIGITS = 400

REGISTRY: Registry = collect(create_plugin_manager())


def _fixed_sections() -> dict[str, list[str]]:
    return {name: [o.name for o in options_of(schema)]
            for name, schema in configuration.SECTIONS.items()}


FIXED = _fixed_sections()
COMPONENTS: dict[str, dict[str, list[str]]] = {
    "sources": {n: ["enabled", *(o.name for o in s.options)]
                for n, s in REGISTRY.sources.items()},
    "backends": {n: ["enabled", *(o.name for o in s.options)]
                 for n, s in REGISTRY.backends.items()},
    "policies": {n: [o.name for o in s.options] for n, s in REGISTRY.policies.items()},
}
GUEST_KEYS = [o.name for o in options_of(configuration.GuestOverride)]
SECTION_NAMES = [*FIXED, *COMPONENTS, "guests", "nonsense", ""]
COMPONENT_NAMES = sorted({n for table in COMPONENTS.values() for n in table})
ALL_KEYS = sorted({k for keys in FIXED.values() for k in keys}
                  | {k for t in COMPONENTS.values() for keys in t.values() for k in keys}
                  | set(GUEST_KEYS))
POLICY_NAMES = sorted(REGISTRY.policies)
SIZE_WORDS = ["16MiB", "1G", "512k", "0", "-1", "1.5GiB", "12 mb", "1e9", "MiB", " 7 t ", ""]
DURATION_WORDS = ["500ms", "2s", "1min", "0", "-3", "1h", "inf", "nan", "10us", "5 m"]
LEVEL_WORDS = ["none", "low", "medium", "critical", "LOW", "Critical", "high", ""]


def check(load: Callable[[], configuration.Config]) -> bool:
    """Run ``load``; True when it gave a Config, False for ConfigError; else fail."""
    try:
        config = load()
    except ConfigError as exc:
        text = str(exc)
        assert text and ": " in text  # file: key: message
        return False
    assert config.policy in REGISTRY.policies
    assert config.backends, "a config without a backend must be refused"
    for name in config.sources:
        assert name in REGISTRY.sources
    return True


# -- values ----------------------------------------------------------------------------


def toml_values(depth: int = 2) -> st.SearchStrategy[Any]:
    """Any value tomllib can produce (scalars, datetimes, arrays, inline tables)."""
    numbers = st.from_regex(rf"\A[0-9]{{1,{MAX_DIGITS}}}(\.[0-9]{{1,6}})?\Z")
    scalars = st.one_of(
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=40),
        st.sampled_from(SIZE_WORDS + DURATION_WORDS + LEVEL_WORDS + POLICY_NAMES),
        st.tuples(numbers, st.sampled_from(["", "MiB", "gib", "k", "ms", "s", "min", "x"])
                  ).map("".join),
        st.datetimes(), st.dates(), st.times(),
    )
    if depth <= 0:
        return scalars
    inner = toml_values(depth - 1)
    return st.one_of(scalars, st.lists(inner, max_size=4),
                     st.dictionaries(st.sampled_from(ALL_KEYS) | st.text(max_size=8), inner,
                                     max_size=4))


VALUES = toml_values()
SHALLOW_VALUES = toml_values(1)
FIXED_TABLES = {section: st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), VALUES,
                                         max_size=5) | VALUES
                for section, keys in FIXED.items()}
COMPONENT_TABLES = {
    kind: {name: st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), VALUES,
                                 max_size=5) | VALUES for name, keys in table.items()}
    for kind, table in COMPONENTS.items()
}
UNKNOWN_COMPONENT = st.dictionaries(st.just("enabled") | st.text(max_size=6), VALUES,
                                    max_size=3) | VALUES
COMPONENT_NAME = st.sampled_from(COMPONENT_NAMES) | st.text(max_size=6)
GUEST_TABLES = st.dictionaries(
    st.sampled_from(["*", "qmp:*", "libvirt:vm[0-9]", "["]) | st.text(max_size=8),
    st.dictionaries(st.sampled_from(GUEST_KEYS) | st.text(max_size=5), VALUES, max_size=4)
    | VALUES, max_size=3)


@st.composite
def config_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """Real section and option names (and some wrong ones) with random values."""
    data: dict[str, Any] = {}
    values = VALUES
    for section in draw(st.lists(st.sampled_from(SECTION_NAMES), max_size=6, unique=True)):
        if section in FIXED:
            data[section] = draw(FIXED_TABLES[section])
        elif section in COMPONENTS:
            table: dict[str, Any] = {}
            for name in draw(st.lists(COMPONENT_NAME, max_size=4)):
                table[name] = draw(COMPONENT_TABLES[section].get(name, UNKNOWN_COMPONENT))
            data[section] = table if draw(st.integers(0, 9)) else draw(values)
        elif section == "guests":
            data[section] = draw(GUEST_TABLES)
        else:
            data[section] = draw(values)
    if draw(st.booleans()):  # most inputs should get past "no backend is enabled"
        backends = data.get("backends")
        if isinstance(backends, dict):
            backends.setdefault("qmp", {})
            if isinstance(backends["qmp"], dict):
                backends["qmp"]["enabled"] = True
        else:
            data["backends"] = {"qmp": {"enabled": True}}
    return data


# -- TOML text ----------------------------------------------------------------------------


def toml_literal(value: Any) -> str:
    """A TOML rendering of ``value`` (strings escaped; nan/inf as TOML spells them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_literal(v)}" for k, v in value.items()) \
            + "}"
    text = str(value)
    escaped = "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}"
                      if ord(c) < 0x10000 else f"\\U{ord(c):08x}" for c in text)
    return f'"{escaped}"'


def toml_key(key: str) -> str:
    if key and all(c in string.ascii_letters + string.digits + "_-" for c in key):
        return key
    return toml_literal(key)


HEADER = st.one_of(
        st.sampled_from([*FIXED, "sources", "backends", "policies", "guests"]).map(
            lambda s: f"[{s}]"),
        st.tuples(st.sampled_from(list(COMPONENTS)), st.sampled_from(COMPONENT_NAMES)).map(
            lambda t: f"[{t[0]}.{t[1]}]"),
        st.sampled_from(['[guests."qmp:*"]', "[[engine]]", "[engine", "[]", "[a.b.c]"]),
)
PAIR = st.tuples(st.sampled_from(ALL_KEYS) | st.text(max_size=6), SHALLOW_VALUES).map(
    lambda kv: f"{toml_key(kv[0])} = {toml_literal(kv[1])}")
LINE = st.one_of(HEADER, PAIR, PAIR, st.text(max_size=30))


@st.composite
def toml_texts(draw: st.DrawFn) -> str:
    """Lines of TOML: real headers and keys, random values, and some garbage."""
    lines = draw(st.lists(LINE, max_size=12))
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n", "\\"]))


class MemFile:
    """A file in memory (memfd) with a path the loader can open: no disk I/O per case."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("autoballoon-fuzz.toml")
        self.path = Path(f"/proc/self/fd/{self.fd}")

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "surrogatepass")
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def close(self) -> None:
        os.close(self.fd)


MEMFILE = MemFile()


def load_text(path: Path | MemFile, text: str) -> configuration.Config:
    """Write ``text`` to a file and load it as the daemon does (read_raw, validate)."""
    if isinstance(path, MemFile):
        path.write(text)
        path = path.path
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    raw = configuration.read_raw([path])
    return configuration.validate(raw, REGISTRY, [str(path)])


# -- seeded random cases (volume) --------------------------------------------------------------


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(12 if depth < 2 else 9)
    if kind == 0:
        return rng.random() < 0.5
    if kind == 1:
        return rng.choice([0, 1, -1, 2**31, 2**63 - 1, -(2**63), rng.randrange(-10**6, 10**6)])
    if kind == 2:
        return rng.choice([0.0, -0.0, 0.5, 1e308, -1e-308, math.inf, -math.inf, math.nan,
                           rng.uniform(-1e4, 1e4)])
    if kind == 3:
        return rng.choice(SIZE_WORDS + DURATION_WORDS + LEVEL_WORDS + POLICY_NAMES)
    if kind == 4:
        digits = "".join(rng.choices(string.digits, k=rng.randrange(1, MAX_DIGITS)))
        return digits + rng.choice(["", "MiB", "s", "ms", "k", "GiB"])
    if kind == 5:
        return "".join(rng.choices(string.printable + "\u00e9\u2028\x00", k=rng.randrange(20)))
    if kind == 6:
        return datetime.datetime(2000 + rng.randrange(50), 1 + rng.randrange(12), 1)
    if kind == 7:
        return datetime.time(rng.randrange(24), rng.randrange(60))
    if kind == 8:
        return rng.choice(ALL_KEYS)
    if kind in (9, 10):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(ALL_KEYS): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def random_config(rng: random.Random) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for section in rng.sample(SECTION_NAMES, rng.randrange(len(SECTION_NAMES))):
        if section in FIXED:
            keys = FIXED[section] + ["bogus"]
            data[section] = {rng.choice(keys): random_value(rng) for _ in range(rng.randrange(5))}
        elif section in COMPONENTS:
            table = {}
            for name in rng.sample(COMPONENT_NAMES, rng.randrange(3)) + (
                    ["bogus"] if rng.random() < 0.05 else []):
                keys = [*COMPONENTS[section].get(name, ["enabled"]), "bogus"]
                table[name] = {rng.choice(keys): random_value(rng)
                               for _ in range(rng.randrange(4))}
            data[section] = table
        elif section == "guests":
            data[section] = {rng.choice(["*", "qmp:*", "[", "x"]): {
                rng.choice([*GUEST_KEYS, "bogus"]): random_value(rng)}}
        else:
            data[section] = random_value(rng)
    if rng.random() < 0.7:
        backends = data.setdefault("backends", {})
        if isinstance(backends, dict):
            entry = backends.setdefault(rng.choice(sorted(COMPONENTS["backends"])), {})
            if isinstance(entry, dict):
                entry["enabled"] = True
    return data


def random_cases(seed: int, count: int) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    for _ in range(count):
        yield random_config(rng)


# -- tests -------------------------------------------------------------------------------------

FUZZ_CASES: collections.Counter[str] = collections.Counter()
"""Cases really checked, by door; printed when the file ends (tests/unit/conftest.py)."""


@FUZZ
@given(config_dicts())
def test_hypothesis_dicts_give_config_or_config_error(data: dict[str, Any]) -> None:
    FUZZ_CASES["dict"] += 1
    check(lambda: build_config(data, REGISTRY))


@FUZZ
@given(toml_texts())
def test_hypothesis_toml_text_gives_config_or_config_error(text: str) -> None:
    FUZZ_CASES["text"] += 1
    check(lambda: load_text(MEMFILE, text))


def test_seeded_random_dicts_and_their_toml_text() -> None:
    """90,000 dicts: each validated as a dict, and one in three also as TOML text."""
    accepted = 0
    path = MEMFILE
    for index, data in enumerate(random_cases(seed=20261126, count=RANDOM_CASES)):
        accepted += check(functools.partial(build_config, data, REGISTRY))
        FUZZ_CASES["dict"] += 1
        if index % 3 == 0:
            text = "\n".join(f"{toml_key(k)} = {toml_literal(v)}" for k, v in data.items())
            check(functools.partial(load_text, path, text))
            FUZZ_CASES["text"] += 1
    assert accepted > RANDOM_CASES // 100, "the generator should also make valid configs"


def test_large_config_memory_is_bounded(tmp_path: Path) -> None:
    """A 2 MB file (a long value, 5,000 guest tables): refused or taken within ~20x its size."""
    path = tmp_path / "big.toml"
    lines = ["[backends.qmp]", "enabled = true", "[daemon]",
             f'audit_log = "{"x" * 2_000_000}"']
    lines += [f'[guests."vm-{i}"]\nfloor = "{256 + i}MiB"' for i in range(5_000)]
    text = "\n".join(lines)
    path.write_text(text)
    tracemalloc.start()
    try:
        config = load_text(path, text)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(config.guests) == 5_000
    assert peak < 20 * len(text), f"peak {peak} bytes for a {len(text)}-byte file"


# -- defects this fuzzing found (fixed in the core; kept as regression tests) ---------------


@pytest.mark.parametrize("size", ["1" * 400, "1" * 300 + "TiB", "9" * 20 + ".5GiB"])
def test_a_huge_size_number_is_a_config_error(size: str) -> None:
    """Once an OverflowError out of parse_size (int(float(...)) of a 400-digit size)."""
    with pytest.raises(ConfigError, match=r"guard\.floor"):
        build_config({"backends": {"qmp": {"enabled": True}}, "guard": {"floor": size}},
                     REGISTRY)


@pytest.mark.parametrize("text", [
    "x = " + "[" * 5000 + "]" * 5000,
    "x = " + "{a = " * 2000 + "1" + "}" * 2000,
    ".".join(["a"] * 3000) + " = 1",
])
def test_deeply_nested_toml_is_a_config_error(text: str) -> None:
    """Once a RecursionError out of tomllib or the config merge."""
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_text(MEMFILE, text)
