"""Helpers for the annotator web/engine tests: a small job, synthetic images, users, gold."""

from __future__ import annotations

import hashlib
import io
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image as PILImage
from PIL import ImageDraw
from sqlalchemy import select

from cxrlabel.annotate.accounts import hash_password
from cxrlabel.jobspec import JobSpec, parse_job
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import GoldItem, Image, ImageStatus, Job, User

GOLD_REASON_PREFIX = "EXPERT-REASON-"


def job_toml(
    *,
    name: str = "test-job",
    items_per_page: int = 4,
    gold_per_page: int = 1,
    quiz_length: int = 3,
    min_accuracy: float = 0.6,
    jmin: int = 2,
    jmax: int = 3,
    max_per_annotator: int = 1000,
    reservation_minutes: float = 30.0,
    min_seconds_per_page: float = 0.0,
    retire_after_reveals: int = 3,
    training_items: int = 0,
    training_per_page: int = 2,
) -> str:
    training = (
        f"[training]\nenabled = true\nitems = {training_items}\nper_page = {training_per_page}\n"
        if training_items
        else ""
    )
    return (
        f'''
name = "{name}"
title = "Test job: healthy or pneumonia?"
[question]
prompt = "What do the lungs look like?"
labels = [
  {{ value = "NORMAL", text = "Healthy", key = "n" }},
  {{ value = "PNEUMONIA", text = "Pneumonia", key = "p" }},
]
[certainty]
prompt = "How sure are you?"
options = [
  {{ value = "definitely", text = "Definitely", key = "1", weight = 1.0 }},
  {{ value = "probably", text = "Probably", key = "2", weight = 0.6 }},
  {{ value = "cant_tell", text = "Can't tell", key = "3", weight = 0.0 }},
]
[quality_flag]
prompt = "Is something wrong with the image? (optional)"
options = [
  {{ value = "unreadable", text = "Unreadable" }},
  {{ value = "not_chest_xray", text = "Not a chest X-ray" }},
]
[instructions]
markdown = """
# How to label
Look at **both lungs**. <script>alert('x')</script>
"""
[judgments]
min = {jmin}
max = {jmax}
max_per_annotator = {max_per_annotator}
[gold]
quiz_length = {quiz_length}
min_accuracy = {min_accuracy}
per_page = {gold_per_page}
retire_after_reveals = {retire_after_reveals}
[pages]
items_per_page = {items_per_page}
min_seconds_per_page = {min_seconds_per_page}
reservation_minutes = {reservation_minutes}
'''
        + training
    )


def png_bytes(seed: int, size: int = 96) -> bytes:
    """A synthetic grayscale 'chest' picture, different for every seed."""
    img = PILImage.new("L", (size, size), 20 + seed % 40)
    draw = ImageDraw.Draw(img)
    draw.ellipse((10, 15, 45, 85), fill=60 + (seed * 7) % 120)
    draw.ellipse((51, 15, 86, 85), fill=60 + (seed * 13) % 120)
    draw.rectangle((44, 5, 52, 90), fill=200)
    draw.text((4, 2), str(seed), fill=255)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Seeded:
    job_id: int
    spec: JobSpec
    work_ids: list[int]
    gold_ids: list[int]


def phantom_jpeg(seed: int, pneumonia: bool) -> bytes:
    from cxrlabel.ingest.phantom import make_phantom_xray

    buf = io.BytesIO()
    make_phantom_xray(seed, (384, 320), pneumonia=pneumonia).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def seed_job(
    db: Database,
    data_dir: Path,
    *,
    n_work: int = 12,
    n_gold: int = 6,
    phantom: bool = False,
    **spec_kwargs,
) -> Seeded:
    """A job with synthetic work and gold images (rendition files written under data_dir)."""
    text = job_toml(**spec_kwargs)
    spec = parse_job(text)
    renditions = data_dir / "renditions"
    renditions.mkdir(parents=True, exist_ok=True)
    work_ids, gold_ids = [], []
    with db.session() as s:
        job = Job(
            name=spec.name, spec_toml=text, spec_sha256=hashlib.sha256(text.encode()).hexdigest()
        )
        s.add(job)
        s.flush()
        for i in range(n_work + n_gold):
            is_gold = i >= n_work
            data = phantom_jpeg(i, bool(i % 2)) if phantom else png_bytes(i)
            sha = hashlib.sha256(data + spec.name.encode()).hexdigest()
            rel = f"renditions/{spec.name}-{i}.{'jpg' if phantom else 'png'}"
            (data_dir / rel).write_bytes(data)
            image = Image(
                job_id=job.id,
                source_path=f"/secret/source/person{i}_bacteria.jpeg",
                source_format="png",
                sha256=sha,
                pixel_sha256=sha,
                phash="0" * 16,
                width=96,
                height=96,
                rendition_path=rel,
                thumb_path=rel,
                status=ImageStatus.GOLD if is_gold else ImageStatus.NEEDS_JUDGMENTS,
                judgment_target=0 if is_gold else spec.judgments.min,
            )
            s.add(image)
            s.flush()
            if is_gold:
                answer = "PNEUMONIA" if i % 2 else "NORMAL"
                s.add(
                    GoldItem(
                        job_id=job.id,
                        image_id=image.id,
                        accepted_answers=[answer],
                        reason=f"{GOLD_REASON_PREFIX}{i}: look at the left lower lobe",
                    )
                )
                gold_ids.append(image.id)
            else:
                work_ids.append(image.id)
        job_id = job.id
    return Seeded(job_id, spec, work_ids, gold_ids)


_HASHES: dict[str, str] = {}


def web_app_with_small_job(db: Database, data_dir: Path, db_url: str):
    """The web app over ``db`` with the web tests' usual job: 12 work and 8 gold images, a quiz
    of 3, pages of 4, minimum accuracy 0.6. Returns ``(app, seeded)``."""
    from cxrlabel.config import Settings
    from cxrlabel.web.app import create_app

    seeded = seed_job(
        db, data_dir, n_work=12, n_gold=8, quiz_length=3, items_per_page=4, min_accuracy=0.6
    )
    return remember_app(create_app(Settings(data_dir=data_dir, db_url=db_url), db=db)), seeded


def csrf_from_html(html: str) -> str:
    """The CSRF token of a rendered form."""
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


PASSWORD = "correct horse battery"  # every test user's, unless a test says otherwise


def add_user(db: Database, username: str, role: str = "annotator", password: str = PASSWORD) -> int:
    """A user; argon2 is slow on purpose, so the hash of a password is computed once per run."""
    if password not in _HASHES:
        _HASHES[password] = hash_password(password)
    with db.session() as s:
        user = User(username=username, password_hash=_HASHES[password], role=role)
        s.add(user)
        s.flush()
        return user.id


def signed_in_client(app, username: str, password: str = PASSWORD) -> TestClient:
    """A test browser signed in as ``username`` through the sign-in form (its CSRF token)."""
    client = TestClient(app)
    csrf = csrf_from_html(client.get("/login").text)
    r = client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": csrf, "next": "/"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return client


_APP_ALIASES: list = []  # the Aliases of every app these helpers built (see remember_app)


def remember_app(app):
    """Let ``gold_answers`` resolve the annotator aliases this app hands out."""
    _APP_ALIASES.append(app.state.image_urls.aliases)
    return app


class GoldAnswers(dict):
    """public id -> accepted answers of every gold image (what must never leak). An annotator
    sees images under their own aliases (annotate/aliases.py): looking one up resolves it, as an
    oracle that knows the app's secret would (a test's stand-in for a perfect annotator)."""

    def __init__(self, rows: dict[str, list[str]], db: Database, data_dir: Path | None) -> None:
        super().__init__(rows)
        self._db, self._data_dir = db, data_dir

    def _aliases(self) -> list:
        from cxrlabel.annotate.aliases import Aliases
        from cxrlabel.web.security import load_secret_key

        found = list(_APP_ALIASES)
        dirs = [self._data_dir] if self._data_dir else []
        if self._db.url.startswith("sqlite:///"):
            dirs.append(Path(self._db.url.removeprefix("sqlite:///")).parent)
        found += [Aliases(load_secret_key(d)) for d in dirs if (d / "secret_key").exists()]
        return found

    def public_id(self, alias: str) -> str:
        """The public id of the gold image an annotator sees as ``alias`` (KeyError if none)."""
        if dict.__contains__(self, alias):
            return alias
        found = resolve_alias(self._db, alias, list(self), self._aliases())
        if found is None:
            raise KeyError(alias)
        return found

    def __missing__(self, alias: str) -> list[str]:
        return dict.__getitem__(self, self.public_id(alias))

    def __contains__(self, key: object) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default


def resolve_alias(
    db: Database, alias: str, public_ids: list[str] | None = None, aliases: list | None = None
) -> str | None:
    """The public id behind an annotator's image alias (any user, any app built here)."""
    with db.read_session() as s:  # may run inside a test's open write session
        users = list(s.scalars(select(User.id)))
        if public_ids is None:
            public_ids = list(s.scalars(select(Image.public_id)))
    for alias_maker in aliases if aliases is not None else _APP_ALIASES:
        for uid in users:
            for pid in public_ids:
                if alias_maker.image(pid, uid) == alias:
                    return pid
    return None


def gold_answers(db: Database, job_id: int, data_dir: Path | None = None) -> GoldAnswers:
    with db.session() as s:
        rows = s.execute(
            GoldItem.__table__.join(Image.__table__)
            .select()
            .with_only_columns(Image.public_id, GoldItem.accepted_answers)
            .where(GoldItem.job_id == job_id)
        ).all()
        return GoldAnswers({pid: list(acc) for pid, acc in rows}, db, data_dir)


def load(db: Database, model, ident):
    with db.session() as s:
        return s.get(model, ident)


def get_user(s, user_id: int) -> User:
    user = s.get(User, user_id)
    assert user is not None
    return user


def together(n: int, work: Callable[[int], object]) -> list[object]:
    """Run ``work(i)`` in ``n`` threads released at the same instant; exceptions are returned
    (they are the outcome under test in the race tests)."""
    barrier = threading.Barrier(n)

    def call(i: int) -> object:
        barrier.wait()
        try:
            return work(i)
        except Exception as exc:  # the outcome under test
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(call, range(n)))
