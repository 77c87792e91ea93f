"""A live cxrlabel server over a job of *real* Kermany X-rays, for the browser journeys.

The images are ingested by the real pipeline from a Kaggle-layout folder (``train/NORMAL``
listed before ``train/PNEUMONIA``) made of symlinks into the shared data, so the serving
order is tested against the layout that used to put one class first.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from cxrlabel.annotate.assignment import next_page_or_reason
from cxrlabel.annotate.schemas import AnswerIn
from cxrlabel.annotate.submission import submit_page
from cxrlabel.config import Settings
from cxrlabel.jobspec import parse_job
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import GoldItem, Image, Job, User, utcnow
from cxrlabel.web.app import create_app
from live_server import LiveServer, free_port  # noqa: F401 (re-exported)
from web_support import add_user, job_toml

PASSWORD = "correct horse battery"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
JOB = "real-xrays"
REAL_REASONS = {
    "NORMAL": "Both lungs are clear to the edges; the heart and diaphragm borders are sharp.",
    "PNEUMONIA": "Patchy opacity in the right lower zone hides the diaphragm border.",
}


def with_bundled_instructions(text: str) -> str:
    """The job's instructions replaced by the real, long ones of the bundled job (a page
    longer than the screen: autofocus on its last button used to scroll past all of it)."""
    from cxrlabel.config import bundled_jobs_dir

    markdown = (bundled_jobs_dir() / "pneumonia-pediatric.md").read_text(encoding="utf-8")
    start = text.index('markdown = """') + len('markdown = """')
    end = text.index('"""', start)
    text = text[:start] + "\n" + markdown.replace("\\", "\\\\") + text[end:]
    # The bundled job's long option text: on a phone it used to wrap under its radio button.
    return text.replace(
        'text = "Unreadable"', 'text = "Unreadable (too dark, too bright or blurred)"'
    )


def kaggle_folder(kermany: Path, dest: Path, per_class: int) -> None:
    """``dest/train/{NORMAL,PNEUMONIA}/`` with ``per_class`` real images each (one per
    patient), as symlinks: the shared data is never copied."""
    chosen: dict[str, list[str]] = {"NORMAL": [], "PNEUMONIA": []}
    patients: set[str] = set()
    with (kermany / "manifest.csv").open() as fh:
        for row in csv.DictReader(fh):
            group = chosen.get(row["label"])
            if group is None or len(group) >= per_class or row["patient_id"] in patients:
                continue
            patients.add(row["patient_id"])
            group.append(row["file"])
    for label, files in chosen.items():
        folder = dest / "train" / label
        folder.mkdir(parents=True, exist_ok=True)
        for rel in files:
            (folder / Path(rel).name).symlink_to(kermany / rel)


@dataclass
class LiveJob:
    base: str
    db: Database
    data_dir: Path
    job_id: int
    spec: object
    expert_ids: list[str]  # public ids the fixture sent to expert review


def build_real_job(
    tmp: Path, kermany: Path, *, per_class: int = 24, n_gold: int = 16, **spec_kwargs
) -> tuple[Database, int, object]:
    from cxrlabel.design.goldseed import sample_from_reference
    from cxrlabel.ingest.pipeline import ingest

    db = Database(f"sqlite:///{tmp / 'web.sqlite3'}")
    text = with_bundled_instructions(job_toml(name=JOB, **spec_kwargs))
    spec = parse_job(text)
    with db.session() as s:
        import hashlib

        job = Job(name=JOB, spec_toml=text, spec_sha256=hashlib.sha256(text.encode()).hexdigest())
        s.add(job)
    folder = tmp / "kaggle"
    kaggle_folder(kermany, folder, per_class)
    with db.session() as s:
        job = s.scalar(select(Job).where(Job.name == JOB))
    summary = ingest(db, tmp, job, spec, folder, workers=0)
    assert summary.ingested == 2 * per_class, summary
    with db.session() as s:
        job = s.get(Job, job.id)
        sample_from_reference(s, job, spec, n_gold, seed=0)
        for gold in s.scalars(select(GoldItem).where(GoldItem.job_id == job.id)):
            gold.reason = REAL_REASONS[gold.accepted_answers[0]]
            gold.active = True
    return db, job.id, spec


def crowd_work(
    db: Database,
    job_id: int,
    spec,
    names: list[str],
    answers: list[tuple],
    pages: int,
    *,
    by_reference: bool = False,
) -> None:
    """Simulated annotators pass the quiz and submit ``pages`` work pages each, through the
    same engine as the web app; ``answers[k]`` is annotator k's (answer, certainty), or with
    ``by_reference`` each image's reference label at annotator k's certainty."""
    now = utcnow() - timedelta(hours=2)
    for k, name in enumerate(names):
        uid = add_user(db, name)
        for n in range(pages + 1):
            now += timedelta(minutes=3)
            with db.session() as s:
                job, user = s.get(Job, job_id), s.get(User, uid)
                page, _ = next_page_or_reason(s, job, spec, user, now, rng=random.Random(n))
                gold = {
                    g.image_id: g.accepted_answers[0]
                    for g in s.scalars(select(GoldItem).where(GoldItem.job_id == job_id))
                }
                truth = {
                    it.image_id: s.get(Image, it.image_id).reference_label for it in page.items
                }
                given = [
                    AnswerIn(
                        image_public_id=it.image.public_id,
                        answer=gold.get(
                            it.image_id,
                            truth[it.image_id] if by_reference else answers[k][0],
                        ),
                        certainty="definitely" if it.image_id in gold else answers[k][1],
                    )
                    for it in page.items
                ]
                submit_page(
                    s,
                    job,
                    spec,
                    user,
                    page.public_id,
                    f"{name}-{n}",
                    given,
                    now + timedelta(minutes=2),
                )


def serve(db: Database, data_dir: Path) -> LiveServer:
    return LiveServer(create_app(Settings(data_dir=data_dir, db_url=db.url), db=db))


def reference_labels(db: Database, job_id: int) -> dict[str, str]:
    with db.session() as s:
        return dict(
            s.execute(
                select(Image.public_id, Image.reference_label).where(Image.job_id == job_id)
            ).all()
        )


def login(page, base: str, username: str, password: str = PASSWORD) -> None:
    page.goto(f"{base}/login")
    page.fill("#username", username)
    page.fill("#password", password)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "/login" not in page.url, f"{username} could not sign in"


def assert_image_visible(page, selector: str, min_px: int = 150) -> dict:
    """The image is on screen, loaded, and has a real size (not a 0x0 or hidden box)."""
    img = page.locator(selector)
    img.wait_for(state="visible")
    box = img.bounding_box()
    assert box and box["width"] >= min_px and box["height"] >= min_px, box
    loaded = img.evaluate("el => el.complete && el.naturalWidth > 0")
    assert loaded, f"{selector} did not load"
    return box


def assert_choice_texts_beside_buttons(page) -> None:
    """Every visible answer option: its text starts on the radio button's line, to its right
    (a long text wraps within its own column, never under the button)."""
    for choice in page.locator(".item.current label.choice").all():
        button = choice.locator("input").bounding_box()
        text = choice.locator(".text").bounding_box()
        assert text["x"] >= button["x"] + button["width"], (choice.inner_text(), button, text)
        assert text["y"] < button["y"] + button["height"], (choice.inner_text(), button, text)
