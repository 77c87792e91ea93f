"""A job with one account per role, each in a known state, for the security tests.

Roles: anonymous, annotator A (passed the quiz, holds an open work page, has a submitted work
page with a missed test question, and a contest), annotator B (passed the quiz, no work yet),
a removed annotator, a disqualified one (failed the quiz), an expert and an admin. Everything
is set up through the engine functions the web app calls, then the app is served by a
TestClient; every role's session cookie and CSRF token are kept so a request can be sent
"as" any role from one client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from cxrlabel.annotate.accounts import create_invite
from cxrlabel.annotate.assignment import next_page
from cxrlabel.annotate.schemas import AnswerIn
from cxrlabel.annotate.submission import submit_page
from cxrlabel.config import Settings
from cxrlabel.quality import commands
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Image, ImageStatus, Job, Judgment, Page, User, utcnow
from cxrlabel.web.app import create_app
from cxrlabel.web.deps import job_and_spec
from web_support import add_user, gold_answers, remember_app, seed_job

PASSWORD = "correct horse battery"
ANON, A, B, REMOVED, DISQ, EXPERT, ADMIN = (
    "anonymous",
    "annotator_a",
    "annotator_b",
    "removed",
    "disqualified",
    "expert",
    "admin",
)
ROLES = (ANON, A, B, REMOVED, DISQ, EXPERT, ADMIN)
JOB = "test-job"


@dataclass
class Env:
    app: FastAPI
    db: Database
    data_dir: Path
    job_id: int
    user_ids: dict[str, int]
    gold: dict[str, list[str]]
    cookies: dict[str, str] = field(default_factory=dict)
    csrf: dict[str, str] = field(default_factory=dict)
    ids: dict[str, object] = field(default_factory=dict)  # path parameters of A's objects

    def client(self) -> TestClient:
        return TestClient(self.app, follow_redirects=False)

    def request(
        self,
        client: TestClient,
        role: str,
        method: str,
        url: str,
        *,
        form: dict | None = None,
        json: object = None,
        headers: dict | None = None,
        csrf: bool = True,
    ):
        """One request as ``role`` (its cookie and, for writes, its CSRF token)."""
        client.cookies.clear()
        hdrs = dict(headers or {})
        if role in self.cookies:
            hdrs["Cookie"] = f"cxrlabel_session={self.cookies[role]}"
        if method != "GET" and csrf:
            if form is not None:
                form = {"csrf_token": self.csrf[role], **form}
            else:
                hdrs["X-CSRF-Token"] = self.csrf[role]
        return client.request(method, url, data=form, json=json, headers=hdrs)


def _answer(
    db: Database,
    job_id: int,
    user_id: int,
    gold: dict[str, list[str]],
    *,
    miss_gold: int = 0,
    submit: bool = True,
) -> str:
    """Serve the user's next page and (optionally) answer it; ``miss_gold`` test questions
    are answered wrongly. Returns the page public id."""
    with db.session() as s:
        job = s.get(Job, job_id)
        job, spec = job_and_spec(s, job.name)
        user = s.get(User, user_id)
        page = next_page(s, job, spec, user, utcnow())
        assert page is not None
        answers, missed = [], 0
        for item in page.items:
            pid = item.image.public_id
            answer = "NORMAL"
            if pid in gold:
                answer = gold[pid][0]
                if missed < miss_gold:
                    answer = "PNEUMONIA" if answer == "NORMAL" else "NORMAL"
                    missed += 1
            answers.append(AnswerIn(image_public_id=pid, answer=answer, certainty="definitely"))
        page_id = page.public_id
        if submit:
            submit_page(s, job, spec, user, page_id, f"c-{page_id}", answers, utcnow())
    return page_id


def login_cookie(client: TestClient, username: str) -> tuple[str, str]:
    client.cookies.clear()
    html = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    r = client.post(
        "/login",
        data={"username": username, "password": PASSWORD, "csrf_token": token, "next": "/"},
    )
    assert r.status_code == 303, r.text[:300]
    cookie = r.cookies.get("cxrlabel_session") or client.cookies.get("cxrlabel_session")
    client.cookies.clear()
    html = client.get("/account", headers={"Cookie": f"cxrlabel_session={cookie}"}).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    return cookie, csrf


def build_env(db_url: str, data_dir: Path) -> Env:
    db = Database(db_url)
    seeded = seed_job(
        db,
        data_dir,
        n_work=16,
        n_gold=10,
        quiz_length=3,
        items_per_page=4,
        min_accuracy=0.6,
        jmin=2,
        jmax=3,
    )
    gold = gold_answers(db, seeded.job_id)
    names = {
        A: "ann-alice",
        B: "ann-bob",
        REMOVED: "ann-removed",
        DISQ: "ann-disq",
        EXPERT: "doc-expert",
        ADMIN: "boss-admin",
    }
    roles = {EXPERT: "expert", ADMIN: "admin"}
    ids = {role: add_user(db, name, roles.get(role, "annotator")) for role, name in names.items()}
    # Quiz: A passes missing one test question (2/3 >= 0.6), B and the removed one pass,
    # the disqualified one misses all three, on the quiz and on its one retake (issue 17).
    quiz_a = _answer(db, seeded.job_id, ids[A], gold, miss_gold=1)
    _answer(db, seeded.job_id, ids[B], gold)
    _answer(db, seeded.job_id, ids[REMOVED], gold)
    _answer(db, seeded.job_id, ids[DISQ], gold, miss_gold=3)
    _answer(db, seeded.job_id, ids[DISQ], gold, miss_gold=3)
    done_a = _answer(db, seeded.job_id, ids[A], gold, miss_gold=1)  # a work page, gold missed
    open_a = _answer(db, seeded.job_id, ids[A], gold, submit=False)  # held, unsubmitted
    now = utcnow()
    with db.session() as s:
        job, spec = job_and_spec(s, JOB)
        admin = s.get(User, ids[ADMIN])
        commands.remove_annotator(s, job, spec, admin, ids[REMOVED], "security test", now)
        quiz_page = s.scalar(select(Page).where(Page.public_id == quiz_a))
        missed = s.scalars(
            select(Judgment).where(Judgment.page_id == quiz_page.id, Judgment.gold_missed.is_(True))
        ).all()
        contest = commands.contest_gold(
            s, job, spec, s.get(User, ids[A]), missed[0].id, "I think it is the other one", now
        )
        done_page = s.scalar(select(Page).where(Page.public_id == done_a))
        work_missed = s.scalar(
            select(Judgment.id).where(
                Judgment.page_id == done_page.id, Judgment.gold_missed.is_(True)
            )
        )
        open_page = s.scalar(select(Page).where(Page.public_id == open_a))
        a_image = next(i.image.public_id for i in open_page.items if not i.is_gold)
        b_seen = {
            i.image_id
            for p in s.scalars(select(Page).where(Page.user_id != ids[A]))
            for i in p.items
        }
        review = s.scalar(
            select(Image).where(
                Image.job_id == job.id,
                Image.status == ImageStatus.NEEDS_JUDGMENTS,
                Image.id.not_in(b_seen | {i.image_id for i in open_page.items}),
            )
        )
        review.status = ImageStatus.NEEDS_REVIEW
        review_image = review.public_id
        invite, token = create_invite(
            s, role="annotator", max_uses=50, expires_hours=24, job=job, now=now
        )
        contest_id, invite_id = contest.id, invite.id
    app = remember_app(create_app(Settings(data_dir=data_dir, db_url=db_url), db=db))
    aliases = app.state.image_urls.aliases  # annotators name images and answers by their own ids
    env = Env(app=app, db=db, data_dir=data_dir, job_id=seeded.job_id, user_ids=ids, gold=gold)
    client = env.client()
    for role, name in names.items():
        env.cookies[role], env.csrf[role] = login_cookie(client, name)
    client.cookies.clear()
    html = client.get("/login").text
    env.csrf[ANON] = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    env.cookies[ANON] = client.cookies.get("cxrlabel_session")
    env.ids.update(
        job_name=JOB,
        page_id=open_a,
        done_page=done_a,
        public_id=aliases.image(a_image, ids[A]),
        shared_public_id=a_image,
        review_image=review_image,
        contest_id=contest_id,
        invite_id=invite_id,
        token=token,
        user_id=ids[B],
        judgment_id=aliases.answer(work_missed, ids[A]),
        removed_id=ids[REMOVED],
        gold_image=next(iter(gold)),
    )
    return env
