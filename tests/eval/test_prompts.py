"""Captions files and the seeded selection of prompts (dode.eval.prompts)."""
import hashlib
import json

import pytest

from dode.errors import UserError
from dode.eval.prompts import captions_of, read_captions, select_captions

COCO = {"images": [{"id": 1}], "annotations": [
    {"id": 48, "image_id": 1, "caption": " A cat on a mat. "}, {"id": 7, "image_id": 1, "caption": "Two dogs"},
    {"id": 301, "image_id": 2, "caption": "a boat"}, {"id": 12, "image_id": 3, "caption": ""},
    {"id": 99, "image_id": 3, "caption": "a red kite"}]}


def by_hand(pairs, count, seed):
    return sorted(pairs, key=lambda kc: hashlib.sha256(f"dode-captions:{seed}:{kc[0]}".encode()).hexdigest())[:count]


def test_formats_are_read_with_their_keys(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(COCO))
    assert read_captions(tmp_path / "c.json") == [(48, "A cat on a mat."), (7, "Two dogs"), (301, "a boat"),
                                                 (99, "a red kite")]  # empty captions skipped
    (tmp_path / "l.json").write_text(json.dumps(["x y", "z"]))
    assert read_captions(tmp_path / "l.json") == [(0, "x y"), (1, "z")]
    (tmp_path / "c.txt").write_text("first\n\n third \n")
    assert read_captions(tmp_path / "c.txt") == [(0, "first"), (2, "third")]
    (tmp_path / "bad.json").write_text(json.dumps({"captions": 3}))
    with pytest.raises(UserError, match="expected MS-COCO annotations"):
        read_captions(tmp_path / "bad.json")


def test_selection_is_the_documented_hash_order_and_stable(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(COCO))
    pairs = read_captions(tmp_path / "c.json")
    for seed in (0, 1, 5):
        assert select_captions(pairs, 3, seed) == by_hand(pairs, 3, seed)
    assert select_captions(pairs, 4, 0) != select_captions(pairs, 4, 1)  # the seed matters
    # the file's order does not matter, and a caption added later does not move the others' ranks
    assert select_captions(list(reversed(pairs)), 4, 2) == select_captions(pairs, 4, 2)
    sel = captions_of({"path": str(tmp_path / "c.json"), "count": 2, "seed": 1})
    assert list(sel.texts) == [c for _, c in by_hand(pairs, 2, 1)] and sel[1] == sel.texts[1] and len(sel) == 2
    rec = sel.record(5)
    assert [p["key"] for p in rec["prompts"]] == [k for k, _ in by_hand(pairs, 2, 1)]
    assert rec["sha256"] == hashlib.sha256((tmp_path / "c.json").read_bytes()).hexdigest()
    with pytest.raises(UserError, match=r"captions.count must be in \[1, 4\]"):
        select_captions(pairs, 5, 0)


def test_missing_file_names_it_and_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DODE_DATA_DIR", str(tmp_path))
    with pytest.raises(UserError) as e:
        captions_of({"file": "annotations/captions_val2014.json", "source": ["http://example/ann.zip"]})
    msg = str(e.value)
    assert f"captions file not found: {tmp_path / 'annotations/captions_val2014.json'}" in msg
    assert "http://example/ann.zip" in msg and "dataset.captions.path=" in msg
    with pytest.raises(UserError, match="captions.count must be an integer"):
        (tmp_path / "c.txt").write_text("a\nb\n")
        captions_of({"path": str(tmp_path / "c.txt"), "count": "2"})
