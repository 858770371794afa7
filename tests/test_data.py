"""The real text data: fetched by setup from Debian, split so that held-out passages stay held out."""
import json

import pytest

import edge
from edge.data import NOVELS, SPLITS, austen_path


def test_austen_has_six_novels_and_disjoint_splits():
    p = edge.austen_passages()
    assert len(p.texts) > 15000 and set(p.labels) == set(range(len(NOVELS)))
    parts = {name: p.split(name) for name in SPLITS}
    assert sum(len(s.texts) for s in parts.values()) == len(p.texts)
    seen = set()
    for s in parts.values():
        ids = {t for t in s.texts}
        assert not (ids & seen), "a passage is in two splits"
        seen |= ids
        assert set(s.labels) == set(range(len(NOVELS))), "every split holds every novel"
    assert edge.austen_passages().split("test").texts == parts["test"].texts  # deterministic


def test_sample_spreads_over_the_split_unlike_head():
    calib = edge.austen_passages().split("calib")
    sample = calib.sample(600)
    assert len(sample.texts) == 600 and set(sample.texts) <= set(calib.texts)
    assert set(sample.labels) == set(range(len(NOVELS)))  # every novel, where head(600) has only some
    assert len(set(calib.head(600).labels)) < len(NOVELS)
    assert sample.texts == calib.sample(600).texts and sample.texts != calib.sample(600, seed=1).texts
    assert calib.sample(None) is calib


def test_text_file_passages(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("\n".join(f"passage number {i}" for i in range(40)) + "\n\n")
    p = edge.text_file_passages(f)
    assert len(p.texts) == 40 and p.labels is None
    assert len(p.split("train").texts) + len(p.split("test").texts) < 40
    f.write_text("too short\n")
    with pytest.raises(edge.EdgeError, match="at least 20"):
        edge.text_file_passages(f)
    f.write_bytes(b"\xff\xfe\x00bad" * 30)
    with pytest.raises(edge.EdgeError, match="UTF-8"):
        edge.text_file_passages(f)


def test_corrupt_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_DATA", str(tmp_path))
    with pytest.raises(edge.EdgeError, match="edge data"):
        edge.austen_passages()
    austen_path().write_text("{trunc")
    with pytest.raises(edge.EdgeError, match="corrupt"):
        edge.austen_passages()
