"""Gold proposals in the browser (issue 17): the expert confirms crowd-proposed gold on a web
page, through the same code as ``cxrlabel quality confirm-gold``.

HTTP level (FastAPI TestClient, real SQLite and PostgreSQL, the real sign-in and CSRF): roles,
the agreeing and the disagreeing answer, double submissions and a second expert, refusals that
record nothing, and ``quality replay`` reproducing every decision. Then real Chromium on real
Kermany X-rays, at desktop and phone size.
"""

from __future__ import annotations

import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from cxrlabel.cli import app as cli_app
from cxrlabel.config import Settings
from cxrlabel.quality.store import EXPERT_LABELED
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import AuditEvent, ExpertReview, GoldItem, Image
from cxrlabel.web.app import create_app
from quality_support import make_env, pass_quiz
from web_support import add_user, csrf_from_html, signed_in_client

REASON = "Dense consolidation of the right lower lobe with air bronchograms."


@pytest.fixture
def web(tmp_path: Path, db_url: str):
    """q-job (SQLite and PostgreSQL: the confirmation takes the job's quality lock): w0/w1
    PNEUMONIA and w2/w3 NORMAL finalised by three annotators (w1 and w3 with one "can't tell":
    less clear), w4/w5 open; two experts, an admin and an annotator who can sign in."""
    url = db_url
    db = Database(url)
    env = make_env(db, work=6)
    for name in ("a", "b", "c"):
        env.add_user(name)
        pass_quiz(env, name)
    env.submit("a", {"w0": "PNEUMONIA", "w1": "PNEUMONIA", "w2": "NORMAL", "w3": "NORMAL"})
    env.submit("b", {"w0": "PNEUMONIA", "w1": "PNEUMONIA", "w2": "NORMAL", "w3": "NORMAL"})
    env.submit(
        "c",
        {
            "w0": "PNEUMONIA",
            "w1": ("PNEUMONIA", "cant_tell"),
            "w2": "NORMAL",
            "w3": ("NORMAL", "cant_tell"),
        },
    )
    rng = random.Random(0)
    with db.session() as s:
        for image in s.scalars(select(Image)):
            image.phash = f"{rng.getrandbits(64):016x}"  # no near-duplicates among them
    for name, role in (
        ("doc", "expert"),
        ("doc2", "expert"),
        ("boss", "admin"),
        ("ann", "annotator"),
    ):
        add_user(db, name, role=role)
    application = create_app(Settings(data_dir=tmp_path, db_url=url), db=db)
    yield application, env, ["--db", url, "--data-dir", str(tmp_path)]
    db.dispose()


def _ids(env) -> dict[str, str]:
    return {name: env.image(name).public_id for name in ("w0", "w1", "w2", "w3", "w4")}


def _post(client, public_id: str, answer: str, reason: str, page: str | None = None):
    csrf = csrf_from_html(page or client.get("/gold-proposals/q-job").text)
    return client.post(
        f"/gold-proposals/q-job/{public_id}",
        data={"answer": answer, "reason": reason, "csrf_token": csrf},
        follow_redirects=False,
    )


def _recorded(env) -> tuple[int, int, int]:
    """Expert reviews, gold items, expert-label audit events."""
    with env.db.session() as s:
        return (
            s.scalar(select(func.count()).select_from(ExpertReview)),
            s.scalar(select(func.count()).select_from(GoldItem)),
            s.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action == EXPERT_LABELED)
            ),
        )


def _cards(html: str) -> list[str]:
    return re.findall(r'<section class="card proposal"[^>]*data-public-id="([^"]+)"', html)


def test_only_experts_and_admins_see_or_answer_proposals(web) -> None:
    application, env, _ = web
    ids = _ids(env)
    anonymous = signed_in_client(application, "ann")
    anonymous.cookies.clear()
    r = anonymous.get("/gold-proposals/q-job", follow_redirects=False)
    assert r.status_code == 303 and "/login" in r.headers["location"]

    annotator = signed_in_client(application, "ann")
    home = annotator.get("/").text
    assert "/gold-proposals/" not in home  # the annotator's navigation has no such link
    r = annotator.get("/gold-proposals/q-job")
    assert r.status_code == 403
    assert ids["w0"] not in r.text and "crowd-answers" not in r.text
    before = _recorded(env)
    r = annotator.post(
        f"/gold-proposals/q-job/{ids['w0']}",
        data={"answer": "PNEUMONIA", "reason": REASON, "csrf_token": csrf_from_html(home)},
        follow_redirects=False,
    )
    assert r.status_code == 403 and _recorded(env) == before
    assert env.image("w0").status == "finalised"

    for who in ("doc", "boss"):
        page = signed_in_client(application, who).get("/gold-proposals/q-job")
        assert page.status_code == 200, page.text
        # The clearer half of each crowd label, balanced: w0 (PNEUMONIA), w2 (NORMAL).
        assert sorted(_cards(page.text)) == sorted([ids["w0"], ids["w2"]])
    expert_home = signed_in_client(application, "doc").get("/").text
    assert 'href="/gold-proposals/q-job"' in expert_home


def test_the_expert_sees_the_crowds_answers_as_counts(web) -> None:
    application, env, _ = web
    html = signed_in_client(application, "doc").get("/gold-proposals/q-job?clearest=1").text
    ids = _ids(env)
    assert sorted(_cards(html)) == sorted(ids[n] for n in ("w0", "w1", "w2", "w3"))
    card = re.search(rf'data-public-id="{ids["w1"]}".*?</section>', html, re.S).group(0)
    cells = re.findall(r'<td class="num">(\d+)</td>', card)
    # Rows NORMAL, PNEUMONIA; columns definitely, probably, can't tell.
    assert cells == ["0", "0", "0", "2", "0", "1"], cells
    assert "could not tell" in card and 'src="/img/' in card
    for name in ("a", "b", "c"):  # never who answered
        assert f">{name}<" not in card


def test_agree_makes_easy_gold_and_disagree_corrects_and_replay_reproduces_both(web) -> None:
    application, env, base = web
    ids = _ids(env)
    doc = signed_in_client(application, "doc")
    assert _recorded(env) == (0, 8, 0)  # 8: the quiz's gold
    r = _post(doc, ids["w0"], "PNEUMONIA", REASON)
    assert _recorded(env) == (1, 9, 1)
    assert r.status_code == 303 and r.headers["location"].endswith(f"?done={ids['w0']}")
    shown = doc.get(r.headers["location"]).text
    assert "is now a test question (easy)" in shown and ids["w0"] not in _cards(shown)
    with env.db.session() as s:
        gold = s.scalar(select(GoldItem).where(GoldItem.image_id == env.images["w0"]))
        assert (gold.active, gold.difficulty, gold.accepted_answers, gold.reason) == (
            True,
            "easy",
            ["PNEUMONIA"],
            REASON,
        )
        assert gold.source == "crowd"  # proposed by agreement, confirmed by the expert
    assert env.image("w0").status == "gold"

    # The crowd said NORMAL on w2; the expert sees pneumonia: a correction, not gold.
    r = _post(doc, ids["w2"], "PNEUMONIA", "Subtle retrocardiac opacity.")
    assert r.status_code == 303
    shown = doc.get(r.headers["location"]).text
    assert "Recorded as a correction" in shown
    w2 = env.image("w2")
    assert (w2.status, w2.label) == ("expert", "PNEUMONIA")
    with env.db.session() as s:
        assert s.scalar(select(GoldItem).where(GoldItem.image_id == w2.id)) is None
        review = s.scalar(select(ExpertReview).where(ExpertReview.image_id == w2.id))
        assert (review.promoted_to_gold, review.reason) == (False, "Subtle retrocardiac opacity.")

    # Neither is proposed again, even from every candidate.
    html = doc.get("/gold-proposals/q-job?clearest=1").text
    assert sorted(_cards(html)) == sorted([ids["w1"], ids["w3"]])

    # The rest answered too: nothing finalised is left, and the page says so.
    for name in ("w1", "w3"):
        label = env.image(name).label
        assert _post(doc, ids[name], label, "Clear on the film.").status_code == 303
    html = doc.get("/gold-proposals/q-job?clearest=1").text
    assert _cards(html) == [] and 'data-role="nothing"' in html
    assert "no finalised work image" in html

    assert env.verify().matched
    result = CliRunner().invoke(cli_app, [*base, "quality", "replay", "--job", "q-job", "--json"])
    assert result.exit_code == 0, result.output
    assert '"matched": true' in result.output


def test_a_double_submission_records_once_and_a_second_answer_is_refused(web) -> None:
    application, env, _ = web
    ids = _ids(env)
    doc = signed_in_client(application, "doc")
    page = doc.get("/gold-proposals/q-job").text  # the form, kept as if by the back button
    assert _post(doc, ids["w0"], "PNEUMONIA", REASON, page).status_code == 303
    after_first = _recorded(env)
    again = _post(doc, ids["w0"], "PNEUMONIA", REASON, page)  # double click / resubmit
    assert (
        again.status_code == 303
        and "is now a test question" in doc.get(again.headers["location"]).text
    )
    assert _recorded(env) == after_first

    changed = _post(doc, ids["w0"], "NORMAL", "Second thoughts.", page)
    assert changed.status_code == 409
    assert "You already answered this image" in changed.text
    assert "Second thoughts." in changed.text  # the expert's words are shown back, not lost
    other = _post(signed_in_client(application, "doc2"), ids["w0"], "PNEUMONIA", "Agree.")
    assert other.status_code == 409 and "Another expert already answered" in other.text
    assert _recorded(env) == after_first
    with env.db.session() as s:
        gold = s.scalar(select(GoldItem).where(GoldItem.image_id == env.images["w0"]))
        assert (gold.reason, gold.accepted_answers) == (REASON, ["PNEUMONIA"])
    assert env.verify().matched


def test_two_experts_answering_at_the_same_instant_record_exactly_one(web) -> None:
    """Both forms submitted at once (two threads released together, each request in its own
    client): one answer is recorded, the other is refused with 409 and records nothing, on
    SQLite and on PostgreSQL (the job's quality lock, then the unique review per image)."""
    application, env, _ = web
    ids = _ids(env)
    clients = {name: signed_in_client(application, name) for name in ("doc", "doc2")}
    pages = {name: client.get("/gold-proposals/q-job").text for name, client in clients.items()}
    answers = {"doc": "NORMAL", "doc2": "PNEUMONIA"}  # w2: the crowd said NORMAL
    before = _recorded(env)
    for image in ("w0", "w2"):
        start = threading.Barrier(2)

        def answer(name: str, image: str = image, start: threading.Barrier = start):
            start.wait(10)
            return name, _post(clients[name], ids[image], answers[name], REASON, pages[name])

        with ThreadPoolExecutor(max_workers=2) as pool:
            replies = dict(pool.map(answer, ("doc", "doc2")))
        codes = sorted(r.status_code for r in replies.values())
        assert codes == [303, 409], codes
        loser = next(name for name, r in replies.items() if r.status_code == 409)
        assert "Another expert already answered" in replies[loser].text
        winner = "doc" if loser == "doc2" else "doc2"
        with env.db.session() as s:
            reviews = s.scalars(
                select(ExpertReview).where(ExpertReview.image_id == env.images[image])
            ).all()
            assert [r.label for r in reviews] == [answers[winner]]
    reviews, _gold, events = _recorded(env)
    assert (reviews, events) == (before[0] + 2, before[2] + 2)  # one per image, not two
    assert env.verify().matched


def test_only_the_experts_start_page_says_the_test_questions_run_low(web) -> None:
    from cxrlabel.design.exposure import bank_exposure
    from cxrlabel.storage.models import Job

    application, env, _ = web
    with env.db.session() as s:
        exposure = bank_exposure(s, s.get_one(Job, env.job_id), env.spec)
    assert exposure.small  # the fixture's bank is at its floor (a quiz + 10 pages)
    home = signed_in_client(application, "doc").get("/").text
    assert 'data-role="bank-low"' in home and f"{exposure.active} active" in home
    assert 'href="/gold-proposals/q-job"' in home
    assert "bank-low" not in signed_in_client(application, "ann").get("/").text


@pytest.mark.parametrize(
    ("answer", "reason", "message"),
    [
        ("PNEUMONIA", "  ", "a reason is required"),
        ("", REASON, "no answer given"),
        ("EFFUSION", REASON, "is not a label"),
    ],
)
def test_a_bad_answer_is_a_clear_error_that_records_nothing(web, answer, reason, message) -> None:
    application, env, _ = web
    ids = _ids(env)
    doc = signed_in_client(application, "doc")
    before = _recorded(env)
    r = _post(doc, ids["w0"], answer, reason)
    assert r.status_code == 400 and message in r.text, r.text
    assert 'role="alert"' in r.text and "Nothing recorded" in r.text
    assert _recorded(env) == before and env.image("w0").status == "finalised"
    assert ids["w0"] in _cards(r.text)  # still proposed, the expert's input kept in its form
    if reason.strip():
        assert reason in r.text


def test_refusals_without_csrf_or_outside_the_proposals_record_nothing(web) -> None:
    application, env, _ = web
    ids = _ids(env)
    doc = signed_in_client(application, "doc")
    before = _recorded(env)
    r = doc.post(
        f"/gold-proposals/q-job/{ids['w0']}",
        data={"answer": "PNEUMONIA", "reason": REASON},
        follow_redirects=False,
    )
    assert r.status_code == 403
    r = _post(doc, ids["w4"], "NORMAL", REASON)  # still being judged by the crowd
    assert r.status_code == 400 and "no longer a finalised work image" in r.text
    assert doc.get("/gold-proposals/q-job/nope").status_code in (404, 405)
    assert _post(doc, "nope", "NORMAL", REASON).status_code == 404
    assert doc.get("/gold-proposals/q-job?n=0").status_code == 400
    assert doc.get("/gold-proposals/no-such-job").status_code == 404
    assert _recorded(env) == before


# --- real Chromium, real X-rays ---------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory, shared_data):
    """Real Kermany X-rays ingested by the real pipeline; three simulated annotators give each
    work image its reference label, "definitely": the crowd finalises clear images."""
    from browser_support import build_real_job, crowd_work, serve

    tmp = tmp_path_factory.mktemp("goldweb")
    db, job_id, spec = build_real_job(
        tmp,
        shared_data / "kermany",
        per_class=16,
        n_gold=10,
        quiz_length=3,
        items_per_page=6,
        jmin=3,
        jmax=3,
        min_accuracy=0.6,
        min_seconds_per_page=1.0,
    )
    names = ["sim-a", "sim-b", "sim-c"]
    crowd_work(db, job_id, spec, names, [("", "definitely")] * 3, pages=3, by_reference=True)
    add_user(db, "expert", role="expert")
    with serve(db, tmp) as base:
        yield base, db
    db.dispose()


@pytest.mark.browser
@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_an_expert_confirms_a_proposal_in_chromium(browser, live, artifacts_dir, size) -> None:
    """Signed in as an expert: the proposals show real-size X-rays with the crowd's answers,
    the viewer zooms, and one answer is recorded and confirmed (agreeing on a desktop: gold;
    disagreeing on a phone: a correction)."""
    from browser_support import DESKTOP, JOB, PHONE, assert_image_visible, login

    base, db = live
    viewport = DESKTOP if size == "desktop" else PHONE
    context = browser.new_context(viewport=viewport, is_mobile=size == "phone")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, base, "expert")
    # 10-11 gold (the desktop run adds one) against a floor of a quiz + 10 pages: the start
    # page says the bank runs low.
    low = page.locator("[data-role=bank-low]")
    assert low.is_visible() and re.search(r"\b1[01] active", low.inner_text()), page.content()
    low_box = low.bounding_box()
    assert low_box["height"] > 10 and low_box["x"] + low_box["width"] <= viewport["width"] + 1
    page.screenshot(path=str(artifacts_dir / f"expert-home-bank-low-{size}.png"))
    page.get_by_role("link", name=re.compile("Gold proposals")).click()
    page.wait_for_url(f"**/gold-proposals/{JOB}")
    cards = page.locator("section.proposal")
    assert cards.count() >= 2, page.content()
    card = cards.first
    box = assert_image_visible(page, "section.proposal >> nth=0 >> .viewport img", min_px=300)
    assert box["width"] <= viewport["width"]
    votes = card.locator("[data-role=crowd-answers]")
    assert votes.is_visible() and "Definitely" in votes.inner_text()
    crowd_label = card.get_attribute("data-crowd-label")
    card.get_by_role("button", name="Zoom in").click()
    assert "scale(1.25)" in card.locator(".viewport img").get_attribute("style")
    if size == "phone":
        wide = page.evaluate(
            # (the zoomed X-ray is clipped by its viewport by design)
            "[...document.querySelectorAll('main *')].filter(e => !e.closest('.viewport')"
            " && e.getBoundingClientRect().right > 391)"
            ".map(e => e.tagName + '.' + e.className).slice(0, 8)"
        )
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"] + 1, wide
        # Nothing drawn past the screen's edge either (an ancestor's overflow would clip it
        # without widening the page: the vote table's last column was cut that way).
        assert wide == []
    page.screenshot(path=str(artifacts_dir / f"gold-proposals-{size}.png"), full_page=False)

    public_id = card.get_attribute("data-public-id")
    agree = size == "desktop"
    answer = crowd_label if agree else ({"NORMAL", "PNEUMONIA"} - {crowd_label}).pop()
    card.locator(f"input[name=answer][value={answer}]").check()
    card.locator("textarea[name=reason]").fill(f"Checked on a {size}: clear case.")
    card.get_by_role("button", name="Record answer").click()
    page.wait_for_url(f"**/gold-proposals/{JOB}?done={public_id}")
    outcome = page.locator("[data-role=outcome]")
    expected = "is now a test question" if agree else "Recorded as a correction"
    assert expected in outcome.inner_text()
    assert page.locator(f'section.proposal[data-public-id="{public_id}"]').count() == 0
    page.screenshot(path=str(artifacts_dir / f"gold-proposals-done-{size}.png"), full_page=False)
    with db.session() as s:
        image = s.scalar(select(Image).where(Image.public_id == public_id))
        gold = s.scalar(select(GoldItem).where(GoldItem.image_id == image.id))
        assert image.status == ("gold" if agree else "expert")
        assert (gold is not None) == agree
        if gold is not None:
            assert (gold.difficulty, gold.reason) == ("easy", f"Checked on a {size}: clear case.")
    assert not errors, errors
    context.close()
