"""Gold and PHI leak scan across roles, with DICOMs full of identifying values.

DICOMs with fake PHI in many tags (patient, institution, physicians, dates, UIDs, a sequence,
a private tag, an overlay description) are ingested through ``cxrlabel.ingest``; some become
test questions. Two annotators then work through whole sessions in the browser pages and the
REST API, an expert and an admin visit their pages, and every response (status line, headers,
body, image bytes) is scanned:

- nobody, admin included, ever receives a PHI value from the DICOM headers;
- before submitting a page, an annotator receives no accepted answer, no expert reason and no
  gold marker, and never anything of the other annotator (name, page ids, client ids).
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from sqlalchemy import select

from cxrlabel.config import Settings
from cxrlabel.ingest.phantom import make_phantom_xray
from cxrlabel.ingest.pipeline import ingest
from cxrlabel.jobspec import parse_job
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import GoldItem, Image, ImageStatus, Job
from cxrlabel.web.app import create_app
from fixtures_images import PHI, PHI_STRINGS, dicom_bytes, dicom_dataset
from security_support import login_cookie
from web_support import add_user, job_toml

GOLD_REASON = "LEAKCHECK-REASON-"
# Short all-digit values could occur by chance inside ETags or random ids.
PHI_NEEDLES = sorted({s for s in PHI_STRINGS if len(s) >= 6 or not s.isdigit()}, key=len)


class Recorder:
    """Every response as (label, text): headers + body; image bodies as Latin-1 so that a
    name in a JPEG comment or EXIF block would be found too."""

    def __init__(self, client: TestClient, cookie: str, csrf: str) -> None:
        self.client, self.cookie, self.csrf, self.seen = client, cookie, csrf, []

    def __call__(self, method: str, url: str, **kw):
        self.client.cookies.clear()
        headers = {"Cookie": f"cxrlabel_session={self.cookie}", **kw.pop("headers", {})}
        if method != "GET" and "data" not in kw:
            headers["X-CSRF-Token"] = self.csrf
        r = self.client.request(method, url, headers=headers, **kw)
        head = "\n".join(f"{k}: {v}" for k, v in r.headers.items())
        body = r.content.decode("latin-1")
        self.seen.append((f"{method} {url} -> {r.status_code}", head + "\n" + body))
        return r


def _scan(seen, needles, where: str) -> None:
    for label, text in seen:
        for needle in needles:
            assert needle not in text, f"{needle!r} leaked in {label} ({where})"


@pytest.fixture(scope="module")
def phi_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("phi")
    source, data_dir = root / "source", root / "data"
    for label in ("NORMAL", "PNEUMONIA"):
        (source / label).mkdir(parents=True)
    for i in range(24):
        label = "PNEUMONIA" if i % 2 else "NORMAL"
        pixels = np.asarray(make_phantom_xray(500 + i, (256, 224), pneumonia=bool(i % 2)))
        ds = dicom_dataset(pixels.astype(np.uint8))
        (source / label / f"study-{i:03d}.dcm").write_bytes(dicom_bytes(ds))
    db_url = f"sqlite:///{root / 'db.sqlite3'}"
    db = Database(db_url)
    text = job_toml(
        quiz_length=2, items_per_page=3, gold_per_page=1, jmin=2, jmax=2, min_accuracy=0.5
    )
    spec = parse_job(text)
    with db.session() as s:
        job = Job(
            name=spec.name, spec_toml=text, spec_sha256=hashlib.sha256(text.encode()).hexdigest()
        )
        s.add(job)
        s.flush()
        job_id = job.id
    summary = ingest(db, data_dir, job, spec, source)
    assert summary.ingested == 24, summary
    with db.session() as s:  # the first 8 images (by id) become test questions
        images = s.scalars(
            select(Image).where(Image.job_id == job_id).order_by(Image.id).limit(8)
        ).all()
        for n, image in enumerate(images):
            image.status, image.judgment_target = ImageStatus.GOLD, 0
            s.add(
                GoldItem(
                    job_id=job_id,
                    image_id=image.id,
                    accepted_answers=[image.reference_label or "NORMAL"],
                    reason=f"{GOLD_REASON}{n} consolidation in the right lower lobe",
                )
            )
        gold = {i.public_id: i.reference_label or "NORMAL" for i in images}
        gold_ids = [str(g) for g in s.scalars(select(GoldItem.id))]
    users = {
        "ann-ursula": "annotator",
        "ann-vikram": "annotator",
        "doc-who": "expert",
        "boss": "admin",
    }
    uids = {name: add_user(db, name, role) for name, role in users.items()}
    app = create_app(Settings(data_dir=data_dir, db_url=db_url), db=db)
    aliases = app.state.image_urls.aliases  # annotators see images under their own ids
    shared = dict(gold)
    gold = {
        aliases.image(pid, uids[name]): label
        for pid, label in shared.items()
        for name, role in users.items()
        if role == "annotator"
    }
    app.state.test_shared_gold_ids = list(shared)
    client = TestClient(app, follow_redirects=False)
    sessions = {name: login_cookie(client, name) for name in users}
    yield app, db, gold, gold_ids, sessions
    db.dispose()


def _work_through(
    rec: Recorder, gold: dict[str, str], pages: int, via_api: bool
) -> list[tuple[int, int, str, str]]:
    """Do ``pages`` pages; returns (start, end) indexes of each page's pre-submit responses
    with its page id and client id."""
    marks = []
    for _ in range(pages):
        start = len(rec.seen)
        if via_api:
            page = rec("GET", "/api/jobs/test-job/pages/next").json()["page"]
            if page is None:
                break
            pids = [i["image_public_id"] for i in page["items"]]
            page_id, client_id = page["page_id"], page["client_submission_id"]
        else:
            html = rec("GET", "/jobs/test-job/page").text
            if "work-form" not in html:
                break
            pids = list(dict.fromkeys(re.findall(r'name="answer-([^"]+)"', html)))
            page_id = re.search(r'action="/jobs/test-job/pages/([^"]+)"', html).group(1)
            client_id = re.search(r'name="client_submission_id" value="([^"]+)"', html).group(1)
            if "Quiz" not in html:
                rec("POST", "/jobs/test-job/prefetch", data={"csrf_token": rec.csrf})
        for pid in pids:
            img = rec("GET", f"/img/{pid}")
            assert img.status_code == 200
            with PILImage.open(io.BytesIO(img.content)) as im:
                assert not {"exif", "comment", "icc_profile"} & set(im.info)
        end = len(rec.seen)
        answers = {pid: gold.get(pid, "NORMAL") for pid in pids}
        if via_api:
            rec(
                "POST",
                f"/api/jobs/test-job/pages/{page_id}/submit",
                json={
                    "client_submission_id": client_id,
                    "answers": [
                        {"image_public_id": p, "answer": a, "certainty": "probably"}
                        for p, a in answers.items()
                    ],
                },
            )
        else:
            form = {"csrf_token": rec.csrf, "client_submission_id": client_id}
            for p, a in answers.items():
                form[f"answer-{p}"], form[f"certainty-{p}"] = a, "definitely"
            rec("POST", f"/jobs/test-job/pages/{page_id}", data=form)
            rec("GET", f"/jobs/test-job/pages/{page_id}/feedback")
        marks.append((start, end, page_id, client_id))
    return marks


def test_no_phi_and_no_gold_reach_annotators(phi_env):
    app, _db, gold, _gold_ids, sessions = phi_env
    client = TestClient(app, follow_redirects=False)
    ursula = Recorder(client, *sessions["ann-ursula"])
    vikram = Recorder(client, *sessions["ann-vikram"])
    ursula("GET", "/")
    ursula("GET", "/jobs/test-job")
    ursula("GET", "/jobs/test-job/instructions")
    u_marks = _work_through(ursula, gold, 4, via_api=False)
    v_marks = _work_through(vikram, gold, 4, via_api=True)
    vikram("GET", "/api/jobs/test-job/me")
    assert len(u_marks) >= 3 and len(v_marks) >= 3
    _scan(ursula.seen + vikram.seen, PHI_NEEDLES, "annotator session")
    # The admin-only ``source`` (original file path, DICOM UIDs) never reaches an annotator.
    source_dir = app.state.settings.data_dir.parent / "source"
    _scan(ursula.seen + vikram.seen, [str(source_dir), "study-0", "dicom:"], "source column")
    reasons = [f"{GOLD_REASON}{n}" for n in range(8)]
    for rec, marks, other, other_marks in (
        (ursula, u_marks, "ann-vikram", v_marks),
        (vikram, v_marks, "ann-ursula", u_marks),
    ):
        theirs = [other] + [x for m in other_marks for x in m[2:]]
        for start, end, _page, _client in marks:
            pre = rec.seen[start:end]
            _scan(pre, reasons + ["is_gold", "accepted", "gold_id", "GOLD"], "before submit")
            for pid, answer in gold.items():  # no accepted answer next to its image id
                for label, text in pre:
                    if "/api/" not in label:
                        continue  # HTML offers every answer as a radio button, by design
                    assert not re.search(re.escape(pid) + r'[^<{]{0,80}"' + answer + '"', text)
        _scan(rec.seen, theirs, "other annotator's data")
    # The scan can fail: test-question images were served (their ids are in the pages).
    assert any(pid in text for _l, text in ursula.seen for pid in gold)
    # ... under each annotator's own ids: the shared public ids never reach an annotator.
    _scan(ursula.seen + vikram.seen, app.state.test_shared_gold_ids, "shared image ids")


def test_no_phi_reaches_experts_or_admins(phi_env):
    app, db, _gold, _ids, sessions = phi_env
    client = TestClient(app, follow_redirects=False)
    with db.session() as s:
        some = s.scalars(select(Image).where(Image.status != ImageStatus.GOLD).limit(2)).all()
        some[0].status = ImageStatus.NEEDS_REVIEW
        pids = [i.public_id for i in some]
    doc = Recorder(client, *sessions["doc-who"])
    boss = Recorder(client, *sessions["boss"])
    for url in [
        "/review/test-job",
        f"/review/test-job/{pids[0]}",
        "/api/jobs/test-job/review",
        f"/img/{pids[0]}",
        f"/img/{pids[1]}",
    ]:
        doc("GET", url)
    for url in [
        "/admin",
        "/admin/jobs/test-job/annotators",
        "/admin/jobs/test-job/gold",
        "/admin/jobs/test-job/contributors",
        "/admin/jobs/test-job/dashboard",
        "/admin/jobs/test-job/reports/qa.html",
        "/api/jobs/test-job/status",
        "/api/jobs/test-job/gold",
        "/api/jobs/test-job/annotators",
        "/api/jobs/test-job/contributors",
    ] + [
        f"/admin/jobs/test-job/reports/{k}.{f}"
        for k in ("full", "aggregated", "contributors", "gold")
        for f in ("csv", "json")
    ]:
        r = boss("GET", url)
        assert r.status_code == 200, url
    assert any("PNEUMONIA" in text for _l, text in boss.seen)  # the scan sees real content
    # The admin's full and aggregated reports name each image's source study and instance
    # (the original UIDs, to join labels back to the hospital's records; issue 19), and
    # nothing else from the headers; every other page carries no UID at all.
    uids = {PHI["StudyInstanceUID"], PHI["SOPInstanceUID"]}
    sourced = [
        (label, text)
        for label, text in boss.seen
        if re.search(r"/reports/(full|aggregated)\.", label)
    ]
    assert len(sourced) == 4 and all(
        f"dicom:{PHI['StudyInstanceUID']}/{PHI['SOPInstanceUID']}" in text for _l, text in sourced
    )
    without_uids = [
        (
            label,
            text.replace(
                f"dicom:{PHI['StudyInstanceUID']}/{PHI['SOPInstanceUID']}", "dicom:SOURCE"
            ),
        )
        for label, text in sourced
    ]
    _scan([x for x in boss.seen if x not in sourced] + doc.seen, PHI_NEEDLES, "expert/admin pages")
    _scan(without_uids, [n for n in PHI_NEEDLES if n not in uids], "admin reports")


def test_renditions_on_disk_carry_no_phi(phi_env):
    app, db, *_ = phi_env
    data_dir: Path = app.state.settings.data_dir
    files = [p for p in (data_dir / "renditions").rglob("*") if p.is_file()]
    assert files
    for path in files:
        blob = path.read_bytes().decode("latin-1")
        for needle in PHI_NEEDLES:
            assert needle not in blob, f"{needle!r} in {path}"
    with db.session() as s:
        ids = s.scalars(select(Image.patient_id)).all()
    assert all(pid and "7734215" not in pid for pid in ids)
