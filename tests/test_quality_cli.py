"""``cxrlabel quality replay``, ``cxrlabel annotators ...`` and ``cxrlabel contests ...``."""

from __future__ import annotations

import json

from sqlalchemy import select
from typer.testing import CliRunner

from cxrlabel.cli import app
from cxrlabel.quality import commands
from cxrlabel.storage.db import Database
from cxrlabel.storage.models import Image
from quality_support import make_env, pass_quiz


def test_cli_replay_annotators_and_contests(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    db = Database(url)
    env = make_env(db)
    for name in ("ann", "bob"):
        env.add_user(name)
        pass_quiz(env, name)
    env.submit("ann", {"w0": "PNEUMONIA", "g3": "PNEUMONIA"})
    missed = next(j for j in env.judgments_of("ann") if j.image_id == env.images["g3"])
    contest = env.call(
        lambda s, job: commands.contest_gold(
            s, job, env.spec, env.user(s, "ann"), missed.id, "I see an opacity", env.tick()
        )
    )
    runner = CliRunner()
    base = ["--db", url, "--data-dir", str(tmp_path)]

    result = runner.invoke(app, [*base, "quality", "replay", "--job", "q-job", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["matched"] is True

    result = runner.invoke(
        app, [*base, "annotators", "remove", "bob", "--reason", "spam", "--job", "q-job"]
    )
    assert result.exit_code == 2 and "no admin account" in result.output
    env.add_user("boss", role="admin")
    result = runner.invoke(
        app, [*base, "annotators", "remove", "bob", "--reason", "spam", "--job", "q-job"]
    )
    assert result.exit_code == 0, result.output
    assert env.annotator("bob").status == "removed"
    result = runner.invoke(
        app, [*base, "annotators", "remove", "bob", "--reason", "again", "--job", "q-job"]
    )
    assert result.exit_code == 2 and "already removed" in result.output
    result = runner.invoke(app, [*base, "annotators", "list", "--job", "q-job", "--json"])
    rows = {r["username"]: r for r in json.loads(result.output)}
    assert rows["bob"]["status_reason"] == "admin: spam" and rows["ann"]["gold_missed"] == 1

    result = runner.invoke(app, [*base, "contests", "list", "--job", "q-job", "--json"])
    assert [c["reason"] for c in json.loads(result.output)] == ["I see an opacity"]
    assert runner.invoke(app, [*base, "contests", "list", "--job", "q-job"]).exit_code == 0
    result = runner.invoke(
        app,
        [
            *base,
            "contests",
            "resolve",
            str(contest.id),
            "--action",
            "change",
            "--accept",
            "PNEUMONIA",
            "--accept",
            "NORMAL",
            "--job",
            "q-job",
        ],
    )
    assert result.exit_code == 0 and "changed" in result.output, result.output
    assert env.annotator("ann").gold_forgiven == 1

    with db.session() as s:
        s.get(Image, env.images["w0"]).trusted_judgments = 7
    result = runner.invoke(app, [*base, "quality", "replay", "--job", "q-job"])
    assert result.exit_code == 1 and "DIFFERS" in result.output
    result = runner.invoke(app, [*base, "quality", "replay", "--job", "q-job", "--fix"])
    assert result.exit_code == 0 and "written back" in result.output
    with db.session() as s:
        assert s.scalar(select(Image.trusted_judgments).where(Image.id == env.images["w0"])) == 1
    db.dispose()
