"""Ingest end to end: real Kermany images, bad files, duplicates, crash safety, both databases."""

from __future__ import annotations

import csv
import io
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select
from typer.testing import CliRunner

from cxrlabel.cli import app
from cxrlabel.ingest import pipeline
from cxrlabel.ingest.phantom import make_phantom_xray
from cxrlabel.ingest.pipeline import IngestBusy, ingest
from cxrlabel.ingest.sources import SourceError
from cxrlabel.jobspec import resolve_job_path
from cxrlabel.jobstore import ensure_job
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Image as ImageRow
from cxrlabel.storage.models import ImageStatus, IngestIssue, IngestRun
from fixtures_images import (
    corrupt_jpeg,
    jpeg_bytes,
    malformed_dicom,
    png_bytes,
    truncated_png,
    write,
    zero_png,
)

SUBSET_PER_CLASS = 20


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kermany_rows(shared_data: Path) -> list[dict[str, str]]:
    with (shared_data / "kermany" / "manifest.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="session")
def kermany_subset(kermany_rows, shared_data: Path, tmp_path_factory) -> tuple[Path, list[dict]]:
    """~40 real images in the Kaggle layout, chosen to include patients with several images."""
    by_patient: dict[str, list[dict]] = defaultdict(list)
    for row in kermany_rows:
        if row["split"] == "train":
            by_patient[row["patient_id"]].append(row)
    chosen: list[dict] = []
    for label in ("NORMAL", "PNEUMONIA"):
        rows = [r for p in sorted(by_patient) for r in by_patient[p] if r["label"] == label]
        multi = [r for r in rows if len(by_patient[r["patient_id"]]) >= 2][:10]
        single = [r for r in rows if r not in multi][: SUBSET_PER_CLASS - len(multi)]
        chosen += multi + single
    root = tmp_path_factory.mktemp("kermany-subset")
    for row in chosen:
        target = root / row["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / "kermany" / row["file"], target)
    return root, chosen


def _open(url: str, tmp_path: Path):
    db = Database(url)
    with db.session() as s:
        job, spec = ensure_job(s, resolve_job_path(None))
    return db, job, spec


@pytest.fixture
def sqlite_job(tmp_path):
    db, job, spec = _open(f"sqlite:///{tmp_path / 'data' / 'db.sqlite3'}", tmp_path)
    yield db, job, spec, tmp_path / "data"
    db.dispose()


def _files_on_disk(data_dir: Path) -> set[str]:
    return {
        p.relative_to(data_dir).as_posix()
        for p in (data_dir / "renditions").rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def _files_in_db(db: Database) -> set[str]:
    with db.session() as s:
        rows = s.execute(select(ImageRow.rendition_path, ImageRow.thumb_path)).all()
    return {p for row in rows for p in row}


def _count(db: Database, model) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model))


# --- real data ----------------------------------------------------------------------------------


def test_ingest_kermany_subset_and_rerun(db_url, kermany_subset, tmp_path) -> None:
    root, chosen = kermany_subset
    db, job, spec = _open(db_url, tmp_path)
    data_dir = tmp_path / "data"
    summary = ingest(db, data_dir, job, spec, root / "images")
    assert summary.total == len(chosen) == 2 * SUBSET_PER_CLASS
    assert summary.ingested == len(chosen) and summary.issues == []

    expected = {str((root / r["file"]).resolve()): r for r in chosen}
    with db.session() as s:
        images = s.scalars(select(ImageRow)).all()
    assert len(images) == len(chosen)
    for image in images:
        row = expected[image.source_path]
        assert image.reference_label == row["label"]  # from the split/CLASS/file layout
        assert image.patient_id == row["patient_id"]  # from the default file-name pattern
        assert image.status == ImageStatus.NEEDS_JUDGMENTS
        assert image.judgment_target == spec.judgments.min and image.trusted_judgments == 0
        assert image.source_format == "jpeg" and len(image.phash) == 16
        assert (
            image.rendition_path == f"renditions/{job.name}/{image.public_id[:2]}/"
            f"{image.public_id}.jpg"
        )
        assert Path(row["file"]).stem not in image.rendition_path + image.thumb_path
        with Image.open(data_dir / image.rendition_path) as web:
            assert web.format == "JPEG" and web.mode == "L"
            assert max(web.size) <= 1024 and web.size == (image.width, image.height)
            web.load()
        with Image.open(data_dir / image.thumb_path) as thumb:
            assert thumb.format == "JPEG" and max(thumb.size) <= 256
    patients = {i.patient_id for i in images}
    assert len(patients) < len(images)  # several images of one child share the id
    files_before = _files_on_disk(data_dir)
    assert files_before == _files_in_db(db)

    again = ingest(db, data_dir, job, spec, root / "images")  # idempotent
    assert again.ingested == 0 and again.already_present == len(chosen) and again.issues == []
    assert _count(db, ImageRow) == len(chosen) and _count(db, IngestRun) == 2
    assert _files_on_disk(data_dir) == files_before
    with db.session() as s:
        run = s.get(IngestRun, again.run_id)
        assert run.already_present == len(chosen) and run.finished_at is not None
    db.dispose()


def test_manifest_subset_with_bad_rows(sqlite_job, kermany_subset) -> None:
    db, job, spec, data_dir = sqlite_job
    root, chosen = kermany_subset
    manifest = root / "subset.csv"
    rows = chosen[:6]
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "patient_id"])
        for r in rows:
            w.writerow([r["file"], r["label"].lower(), f"P-{r['patient_id']}"])
        w.writerow(["images/missing.jpeg", "NORMAL", ""])
        w.writerow([chosen[7]["file"], "COVID", ""])
        w.writerow(["", "NORMAL", ""])
    summary = ingest(db, data_dir, job, spec, manifest)
    assert summary.ingested == 6
    reasons = sorted(i.reason for i in summary.failed)
    assert len(reasons) == 3
    assert "file not found" in reasons[0] or any("file not found" in r for r in reasons)
    assert any("'COVID' is not one of NORMAL, PNEUMONIA" in r for r in reasons)
    assert any("empty path" in r for r in reasons)
    with db.session() as s:
        got = {i.patient_id: i.reference_label for i in s.scalars(select(ImageRow))}
    assert got == {f"P-{r['patient_id']}": r["label"] for r in rows}


def test_near_duplicates_caught_but_same_patient_kept(
    sqlite_job, kermany_rows, shared_data
) -> None:
    db, job, spec, data_dir = sqlite_job
    by_patient: dict[str, list[dict]] = defaultdict(list)
    for r in kermany_rows:
        by_patient[r["patient_id"]].append(r)
    first, second = next(
        rows
        for p, rows in sorted(by_patient.items())
        if len(rows) >= 2 and rows[0]["upstream_resized"] == "false"
    )[:2]
    src = data_dir.parent / "incoming" / "PNEUMONIA"
    original = Image.open(shared_data / "kermany" / first["file"])
    write(src / Path(first["file"]).name, (shared_data / "kermany" / first["file"]).read_bytes())
    write(src / Path(second["file"]).name, (shared_data / "kermany" / second["file"]).read_bytes())
    small = original.resize(
        (original.width * 3 // 5, original.height * 3 // 5), Image.Resampling.BICUBIC
    )
    write(src / "copy_q60_small.jpg", jpeg_bytes(small, quality=60))
    write(src / "copy_lossless.png", png_bytes(original))
    summary = ingest(db, data_dir, job, spec, src.parent)
    assert summary.ingested == 2  # the two different images of the same patient
    assert [Path(i.source_path).name for i in summary.near_duplicates] == ["copy_q60_small.jpg"]
    assert [Path(i.source_path).name for i in summary.exact_duplicates] == ["copy_lossless.png"]
    assert summary.near_duplicates[0].duplicate_of_path.endswith(Path(first["file"]).name)
    with db.session() as s:
        issue = s.scalar(select(IngestIssue).where(IngestIssue.kind == "near_duplicate"))
        target = s.get(ImageRow, issue.duplicate_of)
        assert target.source_path.endswith(Path(first["file"]).name)
        assert issue.distance is not None and issue.distance <= pipeline.NEAR_DUP_MAX_PHASH

    # A later run still catches a copy of an image from an earlier run (via its thumbnail).
    later = data_dir.parent / "later"
    write(
        later / "copy_q75.jpg",
        jpeg_bytes(original.resize((original.width // 2, original.height // 2)), quality=75),
    )
    summary = ingest(db, data_dir, job, spec, later)
    assert summary.ingested == 0 and len(summary.near_duplicates) == 1


def test_near_duplicate_thresholds_hold_on_real_data(kermany_rows, shared_data) -> None:
    """The measured gap (docs/ingest.md) on a fresh sample: copies match, same patient doesn't."""
    from cxrlabel.ingest.decode import decode_image
    from cxrlabel.ingest.phash import hamming, phash
    from cxrlabel.ingest.worker import mean_abs_diff, signature

    by_patient: dict[str, list[dict]] = defaultdict(list)
    for r in kermany_rows:
        by_patient[r["patient_id"]].append(r)
    groups = [rows[:3] for p, rows in sorted(by_patient.items()) if len(rows) >= 2][::25][:25]
    copy_mad, copy_dist, patient_mad = [], [], []
    for rows in groups:
        ims = [decode_image(shared_data / "kermany" / r["file"]).to_pil() for r in rows]
        buf = io.BytesIO()
        ims[0].resize((ims[0].width // 2, ims[0].height // 2)).save(buf, "JPEG", quality=50)
        copy = Image.open(buf)
        copy_mad.append(mean_abs_diff(signature(ims[0]), signature(copy)))
        copy_dist.append(hamming(phash(ims[0]), phash(copy)))
        patient_mad += [
            mean_abs_diff(signature(a), signature(b))
            for i, a in enumerate(ims)
            for b in ims[i + 1 :]
        ]
    assert len(groups) >= 20
    assert max(copy_dist) <= pipeline.NEAR_DUP_MAX_PHASH
    assert max(copy_mad) <= pipeline.NEAR_DUP_MAX_MAD
    assert min(patient_mad) > pipeline.NEAR_DUP_MAX_MAD


# --- bad input, CLI -----------------------------------------------------------------------------


def _bad_folder(root: Path) -> Path:
    write(root / "NORMAL" / "good1.png", png_bytes(make_phantom_xray(1, 200)))
    write(root / "PNEUMONIA" / "good2.jpg", jpeg_bytes(make_phantom_xray(2, 200, pneumonia=True)))
    write(root / "NORMAL" / "corrupt.jpeg", corrupt_jpeg())
    write(root / "NORMAL" / "truncated.png", truncated_png())
    write(root / "NORMAL" / "empty.jpeg", b"")
    write(root / "NORMAL" / "notes.jpeg", b"this is text, not an image\n")
    write(root / "NORMAL" / "bomb.png", zero_png(10_000, 10_000))
    write(root / "NORMAL" / "scan.dcm", malformed_dicom())
    write(root / "README.txt", b"read me")
    write(root / ".DS_Store", b"hidden: ignored")
    return root


def test_cli_reports_bad_files_and_exits_0_then_reruns(tmp_path) -> None:
    src = _bad_folder(tmp_path / "in")
    runner = CliRunner()
    args = ["--data-dir", str(tmp_path / "data"), "ingest", str(src), "--workers", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for text in (
        "ingested",
        "corrupt",
        "truncated",
        "empty file",
        "not an image",
        "decompression bomb",
        "malformed DICOM",
        "extension .txt",
    ):
        assert text in result.output
    db = Database(f"sqlite:///{tmp_path / 'data' / 'cxrlabel.sqlite3'}")
    assert _count(db, ImageRow) == 2 and _count(db, IngestIssue) == 7
    with db.session() as s:
        labels = sorted(s.scalars(select(ImageRow.reference_label)))
    assert labels == ["NORMAL", "PNEUMONIA"]
    result = runner.invoke(app, args)  # re-run: issues updated, not duplicated
    assert result.exit_code == 0
    assert _count(db, ImageRow) == 2 and _count(db, IngestIssue) == 7
    db.dispose()


@pytest.mark.parametrize("kind", ["missing", "no-path-column", "not-utf8", "empty-folder"])
def test_cli_bad_path_or_manifest_exits_2(tmp_path, kind) -> None:
    target = tmp_path / "x.csv"
    if kind == "no-path-column":
        target.write_text("label,patient_id\nNORMAL,p1\n")
    elif kind == "not-utf8":
        target.write_bytes(b"path\n\xff\xfe\x00bad\n")
    elif kind == "empty-folder":
        target = tmp_path / "empty"
        target.mkdir()
    result = CliRunner().invoke(app, ["--data-dir", str(tmp_path / "d"), "ingest", str(target)])
    assert result.exit_code == 2
    assert "error:" in result.output and "Traceback" not in result.output


def test_source_error_names_the_manifest_problem(tmp_path) -> None:
    from cxrlabel.ingest.sources import read_manifest

    (tmp_path / "m.csv").write_text("label\nNORMAL\n")
    with pytest.raises(SourceError, match="needs a column named one of path, file"):
        read_manifest(tmp_path / "m.csv", ["NORMAL", "PNEUMONIA"])


# --- crash safety -------------------------------------------------------------------------------


def _phantom_folder(root: Path, n: int) -> Path:
    for i in range(n):
        write(root / "NORMAL" / f"ph{i:02d}.png", png_bytes(make_phantom_xray(100 + i, 160)))
    return root


def test_write_failure_mid_image_leaves_no_row_and_no_files(sqlite_job, monkeypatch) -> None:
    db, job, spec, data_dir = sqlite_job
    src = _phantom_folder(data_dir.parent / "in", 4)
    real_write = pipeline.write_atomic
    calls = []

    def failing_write(path: Path, data: bytes, **kwargs: bool) -> None:
        calls.append(path)
        if len(calls) == 4:  # the 2nd image's thumbnail, after its rendition was written
            raise OSError(28, "No space left on device")
        real_write(path, data, **kwargs)

    monkeypatch.setattr(pipeline, "write_atomic", failing_write)
    summary = ingest(db, data_dir, job, spec, src)
    assert summary.ingested == 3 and len(summary.failed) == 1
    assert summary.failed[0].source_path.endswith("ph01.png")
    assert "could not write rendition" in summary.failed[0].reason
    assert "No space left" in summary.failed[0].reason
    assert not calls[2].exists()  # its rendition, written before the failure, is gone
    assert _files_on_disk(data_dir) == _files_in_db(db) and len(_files_in_db(db)) == 6
    monkeypatch.setattr(pipeline, "write_atomic", real_write)
    fixed = ingest(db, data_dir, job, spec, src)  # the fixed disk: the failed file goes in
    assert fixed.ingested == 1 and fixed.already_present == 3
    assert _count(db, IngestIssue) == 0  # its old failure was resolved


def test_crash_at_commit_then_kill_leftovers_are_cleaned(sqlite_job, monkeypatch) -> None:
    db, job, spec, data_dir = sqlite_job
    src = _phantom_folder(data_dir.parent / "in", 7)
    real_update = pipeline._Ingestor._update_run
    commits = []

    def crash_on_second_batch(self, s, finished):
        commits.append(1)
        if len(commits) == 2:
            raise RuntimeError("simulated crash during commit")
        real_update(self, s, finished)

    monkeypatch.setattr(pipeline._Ingestor, "_update_run", crash_on_second_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ingest(db, data_dir, job, spec, src, batch_size=3)
    assert _count(db, ImageRow) == 3  # the first batch only; the second rolled back
    assert _files_on_disk(data_dir) == _files_in_db(db)  # its files were removed

    # A hard kill cannot clean up: leave files as it would (renamed files, a temp file).
    folder = data_dir / "renditions" / job.name / "zz"
    write(folder / "zzOrphanPublicId000000.jpg", b"x")
    write(folder / "zzOrphanPublicId000000_thumb.jpg", b"x")
    write(folder / "zzOtherPublicId0000000.jpg.tmp123", b"x")
    write(folder / "notes-by-admin.txt", b"not ours: must stay")
    monkeypatch.setattr(pipeline._Ingestor, "_update_run", real_update)
    summary = ingest(db, data_dir, job, spec, src, batch_size=3)
    assert summary.swept_orphans == 3
    assert summary.ingested == 4 and summary.already_present == 3
    assert _files_on_disk(data_dir) - {
        "renditions/pneumonia-pediatric/zz/notes-by-admin.txt"
    } == _files_in_db(db)
    assert len(_files_in_db(db)) == 14


def test_second_concurrent_ingest_is_refused(sqlite_job) -> None:
    db, job, spec, data_dir = sqlite_job
    src = _phantom_folder(data_dir.parent / "in", 1)
    with pipeline._job_lock(data_dir, job.name), pytest.raises(IngestBusy):
        ingest(db, data_dir, job, spec, src)


def test_worker_processes_give_the_same_result(sqlite_job, tmp_path) -> None:
    db, job, spec, data_dir = sqlite_job
    src = _phantom_folder(tmp_path / "in", 6)
    write(src / "NORMAL" / "bad.png", truncated_png())
    summary = ingest(db, data_dir, job, spec, src, workers=2)
    assert summary.ingested == 6 and len(summary.failed) == 1
    with db.session() as s:
        pooled = {
            Path(r.source_path).name: (r.pixel_sha256, r.phash) for r in s.scalars(select(ImageRow))
        }
    db2, job2, spec2 = _open(f"sqlite:///{tmp_path / 'inline' / 'db.sqlite3'}", tmp_path)
    ingest(db2, tmp_path / "inline", job2, spec2, src, workers=0)
    with db2.session() as s:
        inline = {
            Path(r.source_path).name: (r.pixel_sha256, r.phash) for r in s.scalars(select(ImageRow))
        }
    assert pooled == inline and len(pooled) == 6
    db2.dispose()


def test_rendition_is_downscaled_and_metadata_free(sqlite_job) -> None:
    db, job, spec, data_dir = sqlite_job
    src = data_dir.parent / "in"
    big = make_phantom_xray(42, (2400, 1800))
    write(src / "big.jpg", jpeg_bytes(big, quality=85, comment="source comment"))
    ingest(db, data_dir, job, spec, src)
    with db.session() as s:
        image = s.scalars(select(ImageRow)).one()
    assert (image.width, image.height) == (2400, 1800)
    with Image.open(data_dir / image.rendition_path) as web:
        assert web.size == (1024, 768)
        assert "comment" not in web.info and not web.getexif()
        pixels = np.asarray(web, dtype=float)
    expected = np.asarray(big.resize((1024, 768), Image.Resampling.LANCZOS), dtype=float)
    assert np.abs(pixels - expected).mean() < 3.0
