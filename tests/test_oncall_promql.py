"""A small PromQL evaluator for deploy/prometheus-alerts.yml (promtool is not installed
here), over real /metrics scrapes, and its own tests.

It knows what the rules use: selectors with label matchers, ``[range]`` with
``increase``, ``rate`` and ``delta``, ``sum``/``max``/``min``/``count`` with ``by``,
``time()``, ``absent()``, arithmetic, comparisons (filters), ``and``/``or``/``unless``,
``on(...)`` and ``group_left()``. As Prometheus does, a range function needs two samples
of a series within its range: a series that first appears with its value counts nothing
(the reason every series of dispatch is there at 0 before anything happens). ``for:`` is
not modelled: a rule fires when its expression has a result now.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]
Vector = dict[Labels, float]
Value = Vector | float

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?(?:e[+-]?\d+)?)|(?P<str>\"(?:[^\"\\]|\\.)*\")"
    r"|(?P<dur>\[\d+[smhd]\])|(?P<op>==|!=|=~|!~|>=|<=|[-+*/(){},=<>])"
    r"|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*))"
)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}
_ARITH: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b if b else (math.nan if a == 0 else math.copysign(math.inf, a)),
}
_AGGREGATE: dict[str, Callable[[list[float]], float]] = {
    "sum": sum,
    "max": max,
    "min": min,
    "count": lambda v: float(len(v)),
}
_TARGET = {("job", "dispatch"), ("instance", "api:8000")}  # what Prometheus adds


def parse_scrape(text: str) -> Vector:
    """Every sample of an exposition as ``{labels with __name__: value}``."""
    out: Vector = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[frozenset({("__name__", s.name), *s.labels.items(), *_TARGET})] = s.value
    return out


@dataclass
class Scrapes:
    """Scrapes of /metrics over time: ``add`` one, then ``eval`` at the latest."""

    history: list[tuple[float, Vector]] = field(default_factory=list)

    def add(self, text: str, at: float | None = None) -> None:
        self.history.append((time.time() if at is None else at, parse_scrape(text)))

    def eval(self, expr: str) -> Vector:
        value = _Parser(expr, self).parse()
        if not isinstance(value, dict):
            raise ValueError(f"{expr!r} is a scalar, not a vector")
        return value

    def firing(self, rules: list[dict[str, str]]) -> dict[str, Vector]:
        """Each rule whose expression has a result now."""
        found = {r["alert"]: self.eval(r["expr"]) for r in rules}
        return {name: result for name, result in found.items() if result}


def _name_dropped(labels: Labels) -> Labels:
    return frozenset(kv for kv in labels if kv[0] != "__name__")


def _key(labels: Labels, on: list[str] | None) -> Labels:
    if on is None:
        return _name_dropped(labels)
    return frozenset(kv for kv in labels if kv[0] in on)


class _Parser:
    def __init__(self, expr: str, scrapes: Scrapes) -> None:
        self.tokens = [m for m in _TOKEN.finditer(expr) if m.group().strip()]
        rest = _TOKEN.sub("", expr).strip()
        if rest:
            raise ValueError(f"cannot read {rest!r} in {expr!r}")
        self.pos = 0
        self.scrapes = scrapes

    # -- tokens
    def peek(self) -> str:
        return self.tokens[self.pos].group().strip() if self.pos < len(self.tokens) else ""

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if expected is not None and token != expected:
            raise ValueError(f"expected {expected!r}, found {token!r}")
        self.pos += 1
        return token

    def names(self) -> list[str]:
        self.take("(")
        out = []
        while self.peek() != ")":
            out.append(self.take())
            if self.peek() == ",":
                self.take()
        self.take(")")
        return out

    def matching(self) -> tuple[list[str] | None, bool]:
        on = None
        group_left = False
        if self.peek() == "on":
            self.take()
            on = self.names()
        if self.peek() == "group_left":
            self.take()
            self.names()
            group_left = True
        return on, group_left

    # -- grammar, lowest precedence first
    def parse(self) -> Value:
        value = self.or_()
        if self.pos != len(self.tokens):
            raise ValueError(f"unexpected {self.peek()!r}")
        return value

    def or_(self) -> Value:
        left = self.and_()
        while self.peek() == "or":
            self.take()
            right = self.and_()
            assert isinstance(left, dict) and isinstance(right, dict)
            seen = {_name_dropped(k) for k in left}
            left = {**left, **{k: v for k, v in right.items() if _name_dropped(k) not in seen}}
        return left

    def and_(self) -> Value:
        left = self.compare()
        while self.peek() in ("and", "unless"):
            op = self.take()
            on, _ = self.matching()
            right = self.compare()
            assert isinstance(left, dict) and isinstance(right, dict)
            keys = {_key(k, on) for k in right}
            wanted = op == "and"
            left = {k: v for k, v in left.items() if (_key(k, on) in keys) == wanted}
        return left

    def compare(self) -> Value:
        left = self.additive()
        if self.peek() in _COMPARE:
            op = self.take()
            on, group_left = self.matching()
            right = self.additive()
            test = _COMPARE[op]
            return self.binary(left, right, lambda a, b: a if test(a, b) else None, on, group_left)
        return left

    def additive(self) -> Value:
        left = self.multiplicative()
        while self.peek() in ("+", "-"):
            op = _ARITH[self.take()]
            on, group_left = self.matching()
            left = self.binary(left, self.multiplicative(), op, on, group_left, drop=True)
        return left

    def multiplicative(self) -> Value:
        left = self.unary()
        while self.peek() in ("*", "/"):
            op = _ARITH[self.take()]
            on, group_left = self.matching()
            left = self.binary(left, self.unary(), op, on, group_left, drop=True)
        return left

    def binary(
        self,
        left: Value,
        right: Value,
        op: Callable[[float, float], float | None],
        on: list[str] | None,
        group_left: bool,
        drop: bool = False,
    ) -> Value:
        if not isinstance(left, dict) and not isinstance(right, dict):
            result = op(left, right)
            return math.nan if result is None else float(result)
        if not isinstance(right, dict):
            return self._each(left, lambda v: op(v, right), drop)  # type: ignore[arg-type]
        if not isinstance(left, dict):
            out = self._each(right, lambda v: op(left, v), drop)  # type: ignore[arg-type]
            return out
        by_key: dict[Labels, float] = {}
        for labels, value in right.items():
            k = _key(labels, on)
            if k in by_key and not group_left:
                raise ValueError("many-to-one matching without group_left")
            by_key[k] = value
        out: Vector = {}
        for labels, value in left.items():
            k = _key(labels, on)
            if k in by_key:
                result = op(value, by_key[k])
                if result is not None:
                    out[_name_dropped(labels) if drop else labels] = result
        return out

    @staticmethod
    def _each(vector: Vector, op: Callable[[float], float | None], drop: bool) -> Vector:
        out: Vector = {}
        for labels, value in vector.items():
            result = op(value)
            if result is not None:
                out[_name_dropped(labels) if drop else labels] = result
        return out

    def unary(self) -> Value:
        token = self.peek()
        if token == "(":
            self.take()
            value = self.or_()
            self.take(")")
            return value
        if token == "-":
            self.take()
            value = self.unary()
            return self._each(value, lambda v: -v, True) if isinstance(value, dict) else -value
        match = self.tokens[self.pos]
        if match.group("num"):
            self.take()
            return float(token)
        if token in _AGGREGATE:
            return self.aggregate()
        if token in ("increase", "rate", "delta"):
            return self.range_function()
        if token == "time":
            self.take()
            self.take("(")
            self.take(")")
            return self.scrapes.history[-1][0]
        if token == "absent":
            self.take()
            self.take("(")
            value = self.or_()
            self.take(")")
            return {} if value else {frozenset(): 1.0}
        return self.select(self.scrapes.history[-1][1])

    def aggregate(self) -> Vector:
        func = _AGGREGATE[self.take()]
        by: list[str] = []
        if self.peek() == "by":
            self.take()
            by = self.names()
        self.take("(")
        value = self.or_()
        self.take(")")
        assert isinstance(value, dict)
        groups: dict[Labels, list[float]] = {}
        for labels, v in value.items():
            groups.setdefault(frozenset(kv for kv in labels if kv[0] in by), []).append(v)
        return {k: float(func(vs)) for k, vs in groups.items()}

    def range_function(self) -> Vector:
        func = self.take()
        self.take("(")
        start = self.pos
        self.select({})  # the selector's syntax; its samples come from the range below
        duration = self.take()  # "[15m]"
        seconds = int(duration[1:-2]) * _SECONDS[duration[-2]]
        self.take(")")
        now = self.scrapes.history[-1][0]
        window = [(t, v) for t, v in self.scrapes.history if t >= now - seconds]
        end = self.pos
        series: dict[Labels, list[float]] = {}
        for _, samples in window:
            self.pos = start
            for labels, value in self.select(samples).items():
                series.setdefault(labels, []).append(value)
        self.pos = end
        out: Vector = {}
        for labels, values in series.items():
            if len(values) < 2:
                continue  # one sample: Prometheus has no rate from it
            if func == "delta":
                change = values[-1] - values[0]
            else:  # a counter: a drop is a restart from 0
                change = sum(b - a if b >= a else b for a, b in itertools.pairwise(values))
            out[_name_dropped(labels)] = change / seconds if func == "rate" else change
        return out

    def select(self, samples: Vector) -> Vector:
        name = self.take()
        matchers: list[tuple[str, str, str]] = []
        if self.peek() == "{":
            self.take()
            while self.peek() != "}":
                label, op, text = self.take(), self.take(), self.take()
                matchers.append((label, op, text[1:-1].encode().decode("unicode_escape")))
                if self.peek() == ",":
                    self.take()
            self.take("}")
        out: Vector = {}
        for labels, value in samples.items():
            d = dict(labels)
            if d["__name__"] == name and all(
                _matches(d.get(k, ""), op, v) for k, op, v in matchers
            ):
                out[labels] = value
        return out


def _matches(value: str, op: str, wanted: str) -> bool:
    if op == "=":
        return value == wanted
    if op == "!=":
        return value != wanted
    full = re.fullmatch(wanted, value) is not None
    return full if op == "=~" else not full


# -- the evaluator's own tests ------------------------------------------------------------

_ONE = """# TYPE m_total counter
m_total{p="a",o="sent"} 10
m_total{p="a",o="failed"} 0
m_total{p="b",o="sent"} 5
# TYPE g gauge
g 3
# TYPE h gauge
h 4
"""
_TWO = _ONE.replace('p="a",o="failed"} 0', 'p="a",o="failed"} 8').replace("g 3", "g 9")
_TWO += 'm_total{p="b",o="failed"} 7\n'


@pytest.fixture
def scrapes() -> Scrapes:
    s = Scrapes()
    s.add(_ONE, at=1000.0)
    s.add(_TWO, at=1300.0)
    return s


def _values(vector: Vector) -> dict[str, float]:
    return {dict(k).get("p", ""): v for k, v in vector.items()}


def test_increase_needs_two_samples_of_a_series(scrapes: Scrapes) -> None:
    # b's failed series appeared with 7: Prometheus sees no increase in it.
    assert _values(scrapes.eval('increase(m_total{o="failed"}[10m])')) == {"a": 8.0}
    assert _values(scrapes.eval('increase(m_total{o="failed"}[10m]) > 0')) == {"a": 8.0}
    assert _values(scrapes.eval('rate(m_total{o="failed"}[5m])')) == {"a": 8 / 300}


def test_aggregation_matching_and_set_operators(scrapes: Scrapes) -> None:
    failed = 'sum by (p) (increase(m_total{o="failed"}[10m]))'
    every = 'sum by (p) (increase(m_total{o=~"sent|failed"}[10m]))'
    assert _values(scrapes.eval(f"{failed} > 0.5 * {every}")) == {"a": 8.0}
    assert _values(scrapes.eval(f"{failed} > 1 * {every}")) == {}
    assert scrapes.eval("g > 5 and h > 3") == {frozenset({("__name__", "g"), *_TARGET}): 9.0}
    assert scrapes.eval("g > 5 and h > 4") == {}
    assert list(scrapes.eval("h / g > 0.4 and g > 0").values()) == [4 / 9]
    assert scrapes.eval("absent(nothing)") == {frozenset(): 1.0}
    assert scrapes.eval("absent(g) or g > 100") == {}
    assert _values(scrapes.eval('m_total{o="sent"} unless on(p) m_total{o="failed"} > 7.5')) == {
        "b": 5.0
    }
    assert list(scrapes.eval("time() - g > 1000").values()) == [1300.0 - 9]
    assert list(scrapes.eval("g > on(instance, job) group_left() 2 * h").values()) == [9.0]
