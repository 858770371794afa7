"""Every registered config (edge.config.CONFIGS) round-trips through to_dict/from_dict and JSON, and
refuses each value its fields' checks give as bad, with one EdgeError naming the field: a new config
is tested by being registered."""
import dataclasses
import json
from dataclasses import MISSING, dataclass
from pathlib import Path

import pytest

import edge.convert  # noqa: F401  (registers distill)
import edge.transforms  # noqa: F401  (registers acm, exits, skips, head)
import profiler.presets  # registers profile, preset
from edge.config import CONFIGS, Config, config, integer, setting
from edge.errors import EdgeError

NAMES = CONFIGS.names()
PROFILES = Path(__file__).resolve().parent.parent / "profiles"


def minimal(cls) -> dict:
    """The required fields of `cls`, each at the example its check gives."""
    return {f.name: f.metadata["check"].example for f in dataclasses.fields(cls) if f.default is MISSING}


def _fields(numeric_only=False):
    for name in NAMES:
        for f in dataclasses.fields(CONFIGS.get(name)):
            if f.metadata["check"].numeric or not numeric_only:
                yield name, f


def test_every_config_is_registered():
    assert {"acm", "distill", "exits", "skips", "head", "profile", "preset"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_round_trip(name):
    cls = CONFIGS.get(name)
    c = cls(**minimal(cls))
    d = c.to_dict()
    assert json.loads(json.dumps(d)) == d  # JSON as it is: tuples are lists already
    assert cls.from_dict(d) == c and cls.from_dict(json.loads(json.dumps(d))) == c
    assert cls.from_dict(d).to_dict() == d


@pytest.mark.parametrize("name,field,bad", [
    pytest.param(name, f.name, bad, id=f"{name}-{f.name}-{bad!r}")
    for name, f in _fields() for bad in f.metadata["check"].bad_values])
def test_bad_values_are_refused_naming_the_field(name, field, bad):
    cls = CONFIGS.get(name)
    check = dict((f.name, f.metadata["check"]) for f in dataclasses.fields(cls))[field]
    for make in (lambda d: cls(**d), cls.from_dict):
        with pytest.raises(EdgeError) as e:
            make({**minimal(cls), field: bad})
        message = str(e.value)
        assert f"{cls.__name__}.{field} must be {check.describe}, got " in message and repr(bad)[:40] in message
        assert "\n" not in message


@pytest.mark.parametrize("name,field", [pytest.param(n, f.name, id=f"{n}-{f.name}") for n, f in _fields(True)])
@pytest.mark.parametrize("flag", [True, False])
def test_numbers_are_never_bools(name, field, flag):
    cls = CONFIGS.get(name)
    with pytest.raises(EdgeError, match=f"{cls.__name__}.{field} must be"):
        cls(**{**minimal(cls), field: flag})


@pytest.mark.parametrize("name", NAMES)
def test_unknown_missing_and_non_dict_are_refused(name):
    cls = CONFIGS.get(name)
    d = cls(**minimal(cls)).to_dict()
    with pytest.raises(EdgeError, match=rf"unknown {cls.__name__} keys \['colour', 'size'\]; known: "):
        cls.from_dict({**d, "size": 1, "colour": "red"})
    for key in minimal(cls):
        with pytest.raises(EdgeError, match=rf"missing {cls.__name__} keys \['{key}'\]; known: "):
            cls.from_dict({k: v for k, v in d.items() if k != key})
    if not minimal(cls):
        assert cls.from_dict({}) == cls()  # every field has a default
    for not_a_dict in ([], "acm", None, 3):
        with pytest.raises(EdgeError, match=f"{cls.__name__} must be a mapping of its fields"):
            cls.from_dict(not_a_dict)


@pytest.mark.parametrize("make,match", [
    (lambda: edge.AcmConfig(learners=True), "AcmConfig.learners"),
    (lambda: edge.DistillConfig(repr_steps=True), "DistillConfig.repr_steps"),
    (lambda: edge.DistillConfig(gate_ratio="x"), "DistillConfig.gate_ratio must be a number > 1"),
    (lambda: edge.ExitConfig(steps=True), "ExitConfig.steps"),
    (lambda: profiler.presets.Preset(**{**minimal(profiler.presets.Preset), "threads": True}), "Preset.threads"),
    (lambda: edge.ExitConfig(after=[3, 2]), "increasing without repeats"),  # check(): across fields
    (lambda: edge.HeadConfig(3, ("a", "b")), "3 class names"),
])
def test_regressions(make, match):
    with pytest.raises(EdgeError, match=match):
        make()


def test_tuple_fields_take_lists():
    assert edge.ExitConfig(after=[1, 2]).after == (1, 2) and edge.SkipConfig(layers=[2]).layers == (2,)
    assert edge.HeadConfig.from_dict({"classes": 2, "labels": ["no", "yes"]}).labels == ("no", "yes")


@pytest.mark.parametrize("path", sorted(PROFILES.glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_presets_still_load(path):
    preset = profiler.presets.load_preset(path)
    assert profiler.presets.Preset.from_dict(preset.to_dict()) == preset


def test_a_config_must_declare_its_checks():
    @dataclass(frozen=True)
    class Loose(Config):
        n: int = 1

    @dataclass(frozen=True)
    class Own(Config):
        n: int = setting(integer(0), 1)

        def __post_init__(self):
            pass

    with pytest.raises(TypeError, match="declare no check"):
        config("loose")(Loose)
    with pytest.raises(TypeError, match="rules across fields in check"):
        config("own")(Own)
    assert "loose" not in CONFIGS.names() and "own" not in CONFIGS.names()
