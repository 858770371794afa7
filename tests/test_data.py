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


def test_labelled_passages(tmp_path):
    """Line i of the labels file is the class of line i of the text; classes numbered in sorted order;
    an empty text line goes with its label."""
    text, labels = tmp_path / "text.txt", tmp_path / "labels.txt"
    rows = [(f"passage number {i}", ["spam", "ham"][i % 2]) for i in range(40)]
    text.write_text("".join(f"{t}\n" for t, _ in rows[:10]) + "\n" + "".join(f"{t}\n" for t, _ in rows[10:]) + "\n")
    labels.write_text("".join(f"{n}\n" for _, n in rows[:10]) + "ham\n" + "".join(f"{n}\n" for _, n in rows[10:]))
    p = edge.labelled_passages(text, labels)
    assert p.label_names == ("ham", "spam") and len(p.texts) == 40
    assert [p.label_names[y] for y in p.labels] == [n for _, n in rows] and p.texts == [t for t, _ in rows]
    assert edge.read_passages(text, labels).labels == p.labels and edge.read_passages(text).labels is None
    labels.write_text("ham\n" * 12)
    with pytest.raises(edge.EdgeError, match="one label per line"):
        edge.labelled_passages(text, labels)
    labels.write_text("ham\n" * 41)
    with pytest.raises(edge.EdgeError, match="at least 2"):
        edge.labelled_passages(text, labels)
    with pytest.raises(edge.EdgeError, match="text file"):
        edge.read_passages(None, labels)


def test_corrupt_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_DATA", str(tmp_path))
    with pytest.raises(edge.EdgeError, match="edge data"):
        edge.austen_passages()
    austen_path().write_text("{trunc")
    with pytest.raises(edge.EdgeError, match="corrupt"):
        edge.austen_passages()


def test_teacher_probe_is_kept_by_what_it_depends_on(tmp_path, monkeypatch):
    """The probe on the original model's outputs is fitted once and read back while the model and
    the probe passages stay the same; any change fits it again, and an unreadable copy is replaced."""
    import torch

    from edge.data import Passages
    from edge.evaluate import LinearProbe, outputs, teacher_probe

    p = edge.austen_passages()
    passages = Passages(p.texts[::40], p.labels[::40], NOVELS, block=1)  # ~60 probe passages
    monkeypatch.setenv("EDGE_DATA", str(tmp_path))
    model, tok = edge.load_pretrained()
    forwards = []
    model.register_forward_hook(lambda *a: forwards.append(1))
    first = teacher_probe(model, tok, passages)
    files = list((tmp_path / "probes").iterdir())
    assert len(files) == 1 and forwards
    fresh = LinearProbe().fit(outputs(model, edge.batches(tok, passages.split("probe").texts, 64))[0],
                              torch.tensor(passages.split("probe").labels))
    forwards.clear()
    again = teacher_probe(model, tok, passages)
    assert not forwards  # read back: the model did not run
    for want in (first, fresh):
        assert all(torch.equal(a, b) for a, b in zip(again.tensors().values(), want.tensors().values()))
    files[0].write_bytes(b"not safetensors")
    assert torch.equal(teacher_probe(model, tok, passages).lin.weight, first.lin.weight) and forwards
    with torch.no_grad():
        model.base_model.encoder.layer[0].output.dense.bias.add_(0.01)
    forwards.clear()
    changed = teacher_probe(model, tok, passages)
    assert forwards and len(list((tmp_path / "probes").iterdir())) == 2
    assert not torch.equal(changed.lin.weight, first.lin.weight)
    teacher_probe(model, tok, Passages(passages.texts[1:], passages.labels[1:], NOVELS, block=1))
    assert len(list((tmp_path / "probes").iterdir())) == 3
