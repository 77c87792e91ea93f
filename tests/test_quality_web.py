"""The quality pages and JSON API through the real web app (FastAPI TestClient, real DB)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cxrlabel.annotate.accounts import issue_api_token
from cxrlabel.config import Settings
from cxrlabel.quality import commands
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import User
from cxrlabel.web.app import create_app
from quality_support import make_env, pass_quiz
from web_support import add_user


@pytest.fixture
def web(db_url, tmp_path):
    db = Database(db_url)
    env = make_env(db, jmin=2, jmax=2)
    for name in ("ann", "bob", "cat"):
        env.add_user(name)
        pass_quiz(env, name)
    env.submit("ann", {"w0": "PNEUMONIA", "w1": "NORMAL", "g3": "NORMAL"})
    env.submit("bob", {"w0": "NORMAL", "w1": "NORMAL"})
    env.users["admin"] = add_user(db, "admin", role="admin")
    env.users["doc"] = add_user(db, "doc", role="expert")
    app = create_app(Settings(data_dir=tmp_path, db_url=db_url), db=db)
    with db.session() as s:
        tokens = {n: issue_api_token(s, s.get(User, env.users[n])) for n in ("admin", "doc", "ann")}
    yield TestClient(app), env, tokens
    db.dispose()


def _h(tokens, who):
    return {"Authorization": f"Bearer {tokens[who]}"}


def test_contributors_api_and_page_with_actions(web):
    client, env, tokens = web
    rows = client.get("/api/jobs/q-job/contributors", headers=_h(tokens, "admin")).json()
    ann = next(r for r in rows if r["username"] == "ann")
    assert ann["status"] == "active" and ann["gold_seen"] == 4 and ann["judgments"] == 2
    assert client.get("/api/jobs/q-job/contributors", headers=_h(tokens, "ann")).status_code == 403
    uid = env.users["cat"]
    r = client.post(
        f"/api/jobs/q-job/contributors/{uid}/remove",
        json={"reason": ""},
        headers=_h(tokens, "admin"),
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "reason_required"
    r = client.post(
        f"/api/jobs/q-job/contributors/{uid}/remove",
        json={"reason": "bot"},
        headers=_h(tokens, "admin"),
    )
    assert r.json()["status"] == "removed"
    r = client.post(
        f"/api/jobs/q-job/contributors/{uid}/message",
        json={"text": "Please re-read the instructions"},
        headers=_h(tokens, "admin"),
    )
    assert env.annotator("cat").message == "Please re-read the instructions"
    html = client.get("/admin/jobs/q-job/contributors", headers=_h(tokens, "admin")).text
    row = re.search(r'<tr data-user="cat">.*?</tr>', html, re.S).group(0)
    assert "removed" in row and "admin: bot" in row and "Reinstate" in row
    r = client.post(
        f"/admin/jobs/q-job/contributors/{uid}/reinstate",
        data={"text": "ok"},
        headers=_h(tokens, "admin"),
        follow_redirects=False,
    )
    assert r.status_code == 303 and env.annotator("cat").status == "active"


def test_html_actions_need_the_csrf_token(web):
    client, env, tokens = web
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    r = client.post(
        "/login",
        data={
            "username": "admin",
            "password": "correct horse battery",
            "csrf_token": token,
            "next": "/",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303
    uid = env.users["cat"]
    r = client.post(f"/admin/jobs/q-job/contributors/{uid}/remove", data={"text": "x"})
    assert r.status_code == 403 and env.annotator("cat").status == "active"
    page = client.get("/admin/jobs/q-job/contributors").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = client.post(
        f"/admin/jobs/q-job/contributors/{uid}/remove",
        data={"text": "x", "csrf_token": token},
        follow_redirects=False,
    )
    assert r.status_code == 303 and env.annotator("cat").status == "removed"


def test_contest_queue_and_resolution(web):
    client, env, tokens = web
    env.submit("cat", {"g4": "NORMAL"})
    judgment = next(j for j in env.judgments_of("cat") if j.image_id == env.images["g4"])
    contest = env.call(
        lambda s, job: commands.contest_gold(
            s, job, env.spec, env.user(s, "cat"), judgment.id, "clear lungs", env.tick()
        )
    )
    html = client.get("/admin/jobs/q-job/contests", headers=_h(tokens, "admin")).text
    assert f'data-contest="{contest.id}"' in html and "clear lungs" in html
    listed = client.get("/api/jobs/q-job/contests", headers=_h(tokens, "admin")).json()
    assert [c["contest_id"] for c in listed] == [contest.id]
    r = client.post(
        f"/api/jobs/q-job/contests/{contest.id}/resolve",
        json={
            "action": "change",
            "reply": "You were right",
            "accepted_answers": ["NORMAL", "PNEUMONIA"],
        },
        headers=_h(tokens, "admin"),
    )
    assert r.json()["status"] == "changed"
    assert env.annotator("cat").gold_forgiven == 1
    stats = client.get("/api/jobs/q-job/gold-stats", headers=_h(tokens, "admin")).json()
    g4 = next(g for g in stats if g["image_id"] == env.images["g4"])
    assert g4["accepted_answers"] == ["NORMAL", "PNEUMONIA"] and g4["pct_contested"] == 100.0
    r = client.post(
        f"/api/jobs/q-job/contests/{contest.id}/resolve",
        json={"action": "uphold", "reply": "x"},
        headers=_h(tokens, "admin"),
    )
    assert r.status_code == 409
    assert (
        client.get("/api/jobs/q-job/quality/replay", headers=_h(tokens, "admin")).json()["matched"]
        is True
    )


def test_expert_queue_review_page_and_conflict(web):
    client, env, tokens = web
    queue = client.get("/api/jobs/q-job/review", headers=_h(tokens, "doc")).json()
    w0 = env.image("w0").public_id
    assert [it["public_id"] for it in queue] == [w0]
    assert queue[0]["answers"] == {"PNEUMONIA": {"definitely": 1}, "NORMAL": {"definitely": 1}}
    assert queue[0]["reason"] == "no_consensus"
    assert client.get("/api/jobs/q-job/review", headers=_h(tokens, "ann")).status_code == 403
    page = client.get(f"/review/q-job/{w0}", headers=_h(tokens, "doc")).text
    assert f'src="/img/{w0}"' in page and "viewer.js" in page
    queue_html = client.get("/review/q-job", headers=_h(tokens, "doc")).text
    with env.db.session() as s:  # no identities anywhere on the expert's pages
        for name in ("ann", "bob", "cat"):
            user = s.get(User, env.users[name])
            for ident in (f">{name}<", user.pseudonym, f"user:{user.id}"):
                assert ident not in page and ident not in queue_html
    assert 'data-user="' not in page
    r = client.post(
        f"/api/jobs/q-job/review/{w0}",
        json={
            "label": "PNEUMONIA",
            "reason": "consolidation",
            "promote_to_gold": True,
            "gold_reason": "right lower lobe",
        },
        headers=_h(tokens, "doc"),
    )
    assert r.json() == {
        "image": w0,
        "label": "PNEUMONIA",
        "status": "gold",
        "promoted_to_gold": True,
    }
    r = client.post(
        f"/api/jobs/q-job/review/{w0}", json={"label": "NORMAL"}, headers=_h(tokens, "admin")
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "review_conflict"
    r = client.post(
        f"/api/jobs/q-job/review/{w0}", json={"label": "MAYBE", "x": 1}, headers=_h(tokens, "doc")
    )
    assert r.status_code == 422
    assert client.get(f"/review/q-job/{w0}", headers=_h(tokens, "doc")).status_code == 404
    assert client.get("/api/jobs/q-job/review", headers=_h(tokens, "doc")).json() == []
    with env.db.session() as s:
        assert s.scalar(select(User.id).where(User.username == "doc")) == env.users["doc"]


def test_review_page_shows_a_clearly_labelled_model_opinion(web, tmp_path):
    """With a model installed in <data dir>/model, the expert sees its opinion, labelled as such."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from cxrlabel.ingest.phantom import make_phantom_xray
    from model_support import untrained_model_dir

    client, env, tokens = web
    image = env.image("w0")
    page = client.get(f"/review/q-job/{image.public_id}", headers=_h(tokens, "doc")).text
    assert 'data-role="model-opinion"' not in page  # no model installed yet
    rendition = tmp_path / image.rendition_path
    rendition.parent.mkdir(parents=True, exist_ok=True)
    make_phantom_xray(1, 128, pneumonia=True).save(rendition, format="JPEG")
    untrained_model_dir(tmp_path / "model")
    page = client.get(f"/review/q-job/{image.public_id}", headers=_h(tokens, "doc")).text
    assert 'data-role="model-opinion"' in page
    assert "Model opinion" in page and "not a diagnosis" in page
    assert re.search(r"p\(pneumonia\) = <strong>0\.\d\d</strong>", page)
    assert 'src="data:image/png;base64,' in page  # the heatmap
