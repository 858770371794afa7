"""One base for every config: a frozen dataclass whose fields each declare their check.

    @config("acm")
    @dataclass(frozen=True)
    class AcmConfig(Config):
        budget: float = setting(real(0, 1, low_open=True), 0.5)

Constructing one runs every field's check, then the class's `check()` hook (rules across fields);
a bad value raises EdgeError naming `Class.field`, the value and what is allowed. `to_dict` gives
JSON (tuples as lists) and `from_dict` reads it back, refusing unknown and missing keys. CONFIGS
lists every config by a short name (the tests go over it). A leaf: it imports only the stdlib,
edge.errors and edge.registry, so that any module may import it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING, dataclass
from typing import Any, Callable

from edge.errors import EdgeError
from edge.registry import Registry


class _Refused(Exception):
    """A check's answer to a value it does not take (the base turns it into one EdgeError line)."""


@dataclass(frozen=True)
class Check:
    """One field's rule. `convert` returns the value as stored (lists become tuples) or raises
    _Refused; `describe` is what the message says is allowed ("an integer >= 1"), `plural` the same
    of several, for containers ("integers >= 1"); `example` is a value it takes and `bad_values`
    values it refuses (tests/test_config.py tries each on every field)."""

    describe: str
    plural: str
    convert: Callable[[Any], Any]
    example: Any
    bad_values: tuple
    numeric: bool = False  # an integer or a real: True and False are refused


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bounds(low, high, low_open: bool, high_open: bool) -> str:
    """'>= 1', '> 0', '<= 5', 'in (0, 1]' or '' (no bound)."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return ""


def _within(v, low, high, low_open: bool, high_open: bool) -> bool:
    return ((low is None or (v > low if low_open else v >= low))
            and (high is None or (v < high if high_open else v <= high)))


def integer(low: int | None = None, high: int | None = None) -> Check:
    """An int (not a bool) in [low, high]; a missing bound is no bound."""
    def convert(v):
        if not (isinstance(v, int) and not isinstance(v, bool) and _within(v, low, high, False, False)):
            raise _Refused
        return v

    rule = _bounds(low, high, False, False)
    below = [low - 1] if low is not None else []
    above = [high + 1] if high is not None else []
    example = low if low is not None else high if high is not None else 0
    return Check(f"an integer {rule}".strip(), f"integers {rule}".strip(), convert, example,
                 (True, False, 1.5, "1", None, *below, *above), numeric=True)


def real(low: float | None = None, high: float | None = None, low_open: bool = False,
         high_open: bool = False) -> Check:
    """A finite int or float (not a bool, never NaN or inf) between low and high, each bound closed
    unless said open."""
    def convert(v):
        if not (_is_number(v) and math.isfinite(v) and _within(v, low, high, low_open, high_open)):
            raise _Refused
        return v

    rule = _bounds(low, high, low_open, high_open)
    below = [low if low_open else low - 1] if low is not None else []
    above = [high if high_open else high + 1] if high is not None else []
    example = ((low + high) / 2 if low is not None and high is not None else low + 1 if low is not None
               else high - 1 if high is not None else 0.0)
    return Check(f"a number {rule}" if rule else "a finite number", f"numbers {rule}" if rule else "finite numbers",
                 convert, float(example), (True, False, math.nan, math.inf, -math.inf, "1", None, *below, *above),
                 numeric=True)


def one_of(*choices) -> Check:
    """Exactly one of `choices`, of the same type (True is not taken for 1)."""
    def convert(v):
        if not any(type(v) is type(c) and v == c for c in choices):
            raise _Refused
        return v

    listed = ", ".join(map(str, choices))
    return Check(f"one of {listed}", f"values among {listed}", convert, choices[0], ("no such choice", None, 1))


def boolean() -> Check:
    def convert(v):
        if not isinstance(v, bool):
            raise _Refused
        return v

    return Check("true or false", "booleans", convert, True, ("yes", 1, 0, None))


def text() -> Check:
    """A non-empty string."""
    def convert(v):
        if not (isinstance(v, str) and v):
            raise _Refused
        return v

    return Check("a non-empty string", "non-empty strings", convert, "x", ("", 1, None, ["x"]))


def optional(check: Check) -> Check:
    """None, or what `check` takes."""
    return Check(f"None or {check.describe}", f"None or {check.plural}",
                 lambda v: None if v is None else check.convert(v), check.example,
                 tuple(b for b in check.bad_values if b is not None), check.numeric)


def sequence_of(check: Check, nonempty: bool = False) -> Check:
    """A list or tuple (not a string) whose items `check` takes; stored as a tuple."""
    def convert(v):
        if not isinstance(v, (list, tuple)) or (nonempty and not v):
            raise _Refused
        return tuple(check.convert(x) for x in v)

    some = "non-empty " if nonempty else ""
    bad = (*([()] if nonempty else []), "ab", 5, None, *((b,) for b in check.bad_values))
    return Check(f"a {some}list of {check.plural}", f"{some}lists of {check.plural}", convert, (check.example,), bad)


def mapping_of(key: Check, value: Check) -> Check:
    """A dict whose keys `key` takes and whose values `value` takes."""
    def convert(v):
        if not isinstance(v, dict):
            raise _Refused
        return {key.convert(k): value.convert(x) for k, x in v.items()}

    bad = ([key.example], None, *({k: value.example} for k in key.bad_values if _hashable(k)),
           *({key.example: b} for b in value.bad_values))
    return Check(f"a mapping from {key.plural} to {value.plural}", f"mappings from {key.plural} to {value.plural}",
                 convert, {key.example: value.example}, bad)


def _hashable(v) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True


def setting(check: Check, default=MISSING) -> Any:
    """A config field checked by `check`; without a default, the field is required."""
    return dataclasses.field(default=default, metadata={"check": check})


def _show(v) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _plain(v):
    """v as JSON: tuples become lists, inside containers too."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


class Config:
    """Base of every config (a frozen dataclass registered with @config): validation, to/from dict.

    >>> from edge.exits import ExitConfig
    >>> ExitConfig.from_dict({"after": [1, 2], "threshold": 0.5}).to_dict()["after"]
    [1, 2]
    >>> ExitConfig(steps=True)
    Traceback (most recent call last):
    edge.errors.EdgeError: ExitConfig.steps must be an integer >= 0, got True
    """

    def __post_init__(self):
        for f in dataclasses.fields(self):
            check: Check = f.metadata["check"]
            v = getattr(self, f.name)
            try:
                stored = check.convert(v)
            except _Refused:
                raise EdgeError(f"{type(self).__name__}.{f.name} must be {check.describe}, got {_show(v)}") from None
            if stored is not v:
                object.__setattr__(self, f.name, stored)  # (frozen: the one place a value is normalized)
        self.check()

    def check(self) -> None:
        """Rules across fields, run after every field passed its own; raise EdgeError naming them."""

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d):
        name = cls.__name__
        if not isinstance(d, dict):
            raise EdgeError(f"{name} must be a mapping of its fields, got {type(d).__name__} {_show(d)}")
        fields = dataclasses.fields(cls)
        known = [f.name for f in fields]
        unknown = sorted((k for k in d if k not in known), key=str)
        missing = [f.name for f in fields if f.name not in d and f.default is MISSING and f.default_factory is MISSING]
        if unknown or missing:
            problems = ([f"unknown {name} keys {unknown}"] if unknown else []) + (
                [f"missing {name} keys {missing}"] if missing else [])
            raise EdgeError(f"{'; '.join(problems)}; known: {', '.join(known)}")
        return cls(**d)


CONFIGS: Registry[type] = Registry("config")


def config(name: str):
    """Register a Config under `name` in CONFIGS, after checking that it is a frozen dataclass whose
    every field declares a check (with setting) and that it leaves __post_init__ to the base."""
    def deco(cls: type) -> type:
        if not (issubclass(cls, Config) and dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):
            raise TypeError(f"{cls.__name__} must be a frozen dataclass subclassing edge.config.Config")
        if "__post_init__" in vars(cls):
            raise TypeError(f"{cls.__name__} defines __post_init__; put its rules across fields in check()")
        unchecked = [f.name for f in dataclasses.fields(cls) if not isinstance(f.metadata.get("check"), Check)]
        if unchecked:
            raise TypeError(f"{cls.__name__} fields {unchecked} declare no check; declare them with setting(check)")
        return CONFIGS.register(name)(cls)

    return deco
