"""Small pure parts of ingest: patient ids from names, pHash and its index, folder walking."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cxrlabel.ingest.patient import choose_patient_id, patient_id_from_name
from cxrlabel.ingest.phantom import make_phantom_xray
from cxrlabel.ingest.phash import PhashIndex, from_hex, hamming, phash, to_hex
from cxrlabel.ingest.renditions import OUR_FILE, relative_paths
from cxrlabel.ingest.sources import discover
from cxrlabel.jobspec import KERMANY_PATIENT_PATTERN
from fixtures_images import write


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("person123_bacteria_456.jpeg", "person123"),
        ("person1_virus_6.jpeg", "person1"),
        ("IM-0001-0001.jpeg", "IM-0001"),
        ("IM-0551-0001-0002.jpeg", "IM-0551"),
        ("NORMAL2-IM-0123-0001.jpeg", "NORMAL2-IM-0123"),
        ("NORMAL2-IM-0587-0001-0002.jpeg", "NORMAL2-IM-0587"),
        ("/data/train/PNEUMONIA/person9_bacteria_40.jpeg", "person9"),
        ("scan_0001.dcm", None),
    ],
)
def test_kermany_patient_ids(name: str, expected: str | None) -> None:
    assert patient_id_from_name(name, KERMANY_PATIENT_PATTERN) == expected


def test_custom_pattern_and_precedence() -> None:
    assert patient_id_from_name("site3-pat0042-img7.png", r"pat(?P<pid>\d+)") == "0042"
    assert choose_patient_id(manifest_id="M1", dicom_pseudonym="dcm-x", name_id="n") == "M1"
    assert choose_patient_id(manifest_id=" ", dicom_pseudonym="dcm-x", name_id="n") == "dcm-x"
    assert choose_patient_id(manifest_id=None, dicom_pseudonym=None, name_id="n") == "n"


def test_phash_is_stable_under_resize_and_differs_between_images() -> None:
    a = make_phantom_xray(1, 400)
    small = a.resize((200, 200), Image.Resampling.BICUBIC)
    assert hamming(phash(a), phash(small)) <= 4
    assert hamming(phash(a), phash(make_phantom_xray(2, 400, pneumonia=True))) > 4
    assert from_hex(to_hex(phash(a))) == phash(a) and len(to_hex(phash(a))) == 16


def test_phash_index_finds_all_within_distance_nearest_first() -> None:
    index = PhashIndex()
    base = 0b1011 << 40
    for i, value in enumerate([base, base ^ 0b1, base ^ 0b111, ~base & (2**64 - 1)]):
        index.add(i + 10, value)
    for i in range(2000):  # grow past the initial capacity
        index.add(1000 + i, (2**64 - 1) ^ i)
    assert index.within(base, 3) == [(10, 0), (11, 1), (12, 3)]
    assert index.within(base, 0) == [(10, 0)]
    assert len(index) == 2004 and PhashIndex().within(base, 64) == []


def test_rendition_names_are_opaque_and_recognised() -> None:
    web, thumb = relative_paths("job-a", "AbCdEfGhIjKlMnOpQrStUv")
    assert web == "renditions/job-a/Ab/AbCdEfGhIjKlMnOpQrStUv.jpg"
    assert thumb == "renditions/job-a/Ab/AbCdEfGhIjKlMnOpQrStUv_thumb.jpg"
    assert OUR_FILE.match("AbCdEfGhIjKlMnOpQrStUv_thumb.jpg")["pid"] == "AbCdEfGhIjKlMnOpQrStUv"
    assert OUR_FILE.match("AbCdEfGhIjKlMnOpQrStUv.jpg.tmp77")
    assert OUR_FILE.match("readme.txt") is None


def test_walk_labels_from_parent_folder(tmp_path) -> None:
    for rel in (
        "train/NORMAL/a.jpeg",
        "train/pneumonia/b.png",
        "train/other/c.jpg",
        "NORMAL/.hidden.jpg",
        "x/notes.txt",
        "x/noext",
    ):
        write(tmp_path / rel, b"x")
    found = discover(tmp_path, ["NORMAL", "PNEUMONIA"])
    rel = {Path(i.path).relative_to(tmp_path.resolve()).as_posix(): i for i in found}
    assert rel["train/NORMAL/a.jpeg"].label == "NORMAL"
    assert rel["train/pneumonia/b.png"].label == "PNEUMONIA"
    assert rel["train/other/c.jpg"].label is None
    assert "NORMAL/.hidden.jpg" not in rel
    assert rel["x/notes.txt"].problem == "not an image file (extension .txt)"
    assert rel["x/noext"].problem is None
