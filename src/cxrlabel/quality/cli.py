"""``cxrlabel quality replay | confirm-gold``, ``cxrlabel annotators ...``,
``cxrlabel contests ...``.

Admin actions from the command line act as an admin account (``--as``, default: the first admin)
so the audit log always names a person.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrlabel.context import app_context, console, fail, get_job
from cxrlabel.quality import audit, commands, store, views
from cxrlabel.storage.models import Role, User, utcnow

JOB_OPTION = typer.Option(None, "--job", help="Job name \\[default: pneumonia-pediatric].")
AS_OPTION = typer.Option(None, "--as", help="Admin username to act as \\[default: first admin].")

quality_app = typer.Typer(
    help="Quality control: replay and check the quality state.", no_args_is_help=True
)
annotators_app = typer.Typer(help="List, remove and reinstate annotators.", no_args_is_help=True)
contests_app = typer.Typer(help="Contested test questions: list and resolve.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(quality_app, name="quality")
    app.add_typer(annotators_app, name="annotators")
    app.add_typer(contests_app, name="contests")


def _admin(session: Session, username: str | None) -> User:
    query = select(User).where(User.role == Role.ADMIN)
    if username:
        query = query.where(User.username == username)
    admin = session.scalars(query.order_by(User.id)).first()
    if admin is None:
        fail(
            f"no admin account {username!r}"
            if username
            else "no admin account exists; create one first"
        )
    return admin


def _user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        fail(f"no user named {username!r}")
    return user


def _guard(action):  # turn refusals into one clean line
    try:
        return action()
    except store.QualityError as exc:
        fail(exc.message)


@quality_app.command("replay")
def replay_command(
    ctx: typer.Context,
    job: str = JOB_OPTION,
    fix: bool = typer.Option(False, "--fix", help="Write the replayed state when it differs."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Recompute trust, taints, finalisations and queues from the event log and compare them
    with the stored state (exit 1 when they differ and --fix was not given)."""
    with app_context(ctx).db.session() as session:
        job_row, spec = get_job(session, job)
        with console.status("Replaying the quality log..."):
            report = audit.verify_replay(session, job_row, spec, fix=fix, now=utcnow())
    summary = {
        "job": job_row.name,
        "matched": report.matched,
        "events": report.events,
        "annotators": report.annotators,
        "images": report.images,
        "judgments": report.judgments,
        "unprocessed_judgments": report.unprocessed_judgments,
        "differences": report.differences,
        "fixed": report.fixed,
    }
    if as_json:
        console.print_json(json.dumps(summary))
    else:
        verdict = "[green]matches[/]" if report.matched else "[red]DIFFERS from[/]"
        console.print(
            f"Replayed {report.events} events ({report.judgments} judgments, "
            f"{report.annotators} annotators, {report.images} images): the stored "
            f"state {verdict} the replay."
        )
        for line in report.differences:
            console.print(f"  {line}", highlight=False)
        if report.unprocessed_judgments:
            console.print(f"  {report.unprocessed_judgments} judgments were never graded.")
        if report.fixed:
            console.print("The replayed state was written back.")
    if not report.matched and not report.fixed:
        raise typer.Exit(1)


@annotators_app.command("list")
def annotators_list(
    ctx: typer.Context, job: str = JOB_OPTION, as_json: bool = typer.Option(False, "--json")
) -> None:
    """Trust, judgments, gold seen/missed/contested/forgiven, speed trips, flags, state."""
    with app_context(ctx).db.session() as session:
        job_row, _ = get_job(session, job)
        rows = views.contributors(session, job_row)
    if as_json:
        console.print_json(
            json.dumps(
                [
                    {
                        **{k: v for k, v in r.__dict__.items() if k != "joined_at"},
                        "joined_at": r.joined_at.isoformat(),
                    }
                    for r in rows
                ]
            )
        )
        return
    table = Table(title=f"Annotators of {job_row.name}")
    for col in (
        "user",
        "status",
        "trust",
        "judgments",
        "gold",
        "missed",
        "contested",
        "forgiven",
        "speed",
        "flags",
        "reason",
    ):
        table.add_column(col)
    for r in rows:
        flags = ", ".join((r.flags.get("distribution") or {}).get("rules", []))
        table.add_row(
            r.username,
            r.status,
            f"{r.trust:.3f}",
            str(r.judgments),
            str(r.gold_seen),
            str(r.gold_missed),
            str(r.gold_contested),
            str(r.gold_forgiven),
            str(r.speed_trips),
            flags,
            r.status_reason or "",
        )
    console.print(table)


@annotators_app.command("remove")
def annotators_remove(
    ctx: typer.Context,
    username: str,
    reason: str = typer.Option(..., "--reason", help="Why (audited)."),
    job: str = JOB_OPTION,
    admin: str = AS_OPTION,
) -> None:
    """Remove an annotator: their judgments are tainted and their images re-opened."""
    with app_context(ctx).db.session() as session:
        job_row, spec = get_job(session, job)
        user = _user(session, username)
        _guard(
            lambda: commands.remove_annotator(
                session, job_row, spec, _admin(session, admin), user.id, reason, utcnow()
            )
        )
    console.print(f"Removed {username} from {job_row.name}.")


@annotators_app.command("reinstate")
def annotators_reinstate(
    ctx: typer.Context,
    username: str,
    reason: str = typer.Option("", "--reason"),
    job: str = JOB_OPTION,
    admin: str = AS_OPTION,
) -> None:
    """Reinstate a removed annotator: their judgments count again."""
    with app_context(ctx).db.session() as session:
        job_row, spec = get_job(session, job)
        user = _user(session, username)
        _guard(
            lambda: commands.reinstate_annotator(
                session, job_row, spec, _admin(session, admin), user.id, reason, utcnow()
            )
        )
    console.print(f"Reinstated {username} in {job_row.name}.")


@contests_app.command("list")
def contests_list(
    ctx: typer.Context,
    job: str = JOB_OPTION,
    status: str = typer.Option("open", help="open|upheld|changed|all"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Contests with the gold item, the annotator's answer and reason, and any reply."""
    with app_context(ctx).db.session() as session:
        job_row, _ = get_job(session, job)
        rows = views.list_contests(session, job_row, None if status == "all" else status)
    if as_json:
        console.print_json(
            json.dumps(
                [
                    {
                        **{k: v for k, v in c.__dict__.items() if not k.endswith("_at")},
                        "created_at": c.created_at.isoformat(),
                    }
                    for c in rows
                ]
            )
        )
        return
    table = Table(title=f"Contests ({status}) in {job_row.name}")
    for col in ("id", "status", "image", "accepted", "given", "annotator", "reason", "reply"):
        table.add_column(col)
    for c in rows:
        table.add_row(
            str(c.contest_id),
            c.status,
            c.public_id,
            ", ".join(c.accepted_answers),
            c.given_answer,
            c.pseudonym,
            c.reason,
            c.reply or "",
        )
    console.print(table)


@contests_app.command("resolve")
def contests_resolve(
    ctx: typer.Context,
    contest_id: int,
    action: str = typer.Option(..., "--action", help="uphold | change"),
    reply: str = typer.Option("", "--reply", help="Shown to the annotator."),
    accept: list[str] = typer.Option(None, "--accept", help="New accepted answer (repeatable)."),
    job: str = JOB_OPTION,
    admin: str = AS_OPTION,
) -> None:
    """Uphold a test question's answer, or change its accepted answers (regrades everyone)."""
    with app_context(ctx).db.session() as session:
        job_row, spec = get_job(session, job)
        contest = _guard(
            lambda: commands.resolve_contest(
                session,
                job_row,
                spec,
                _admin(session, admin),
                contest_id,
                action,
                reply,
                accept,
                utcnow(),
            )
        )
        status = contest.status
    console.print(f"Contest {contest_id}: {status}.")


@quality_app.command("confirm-gold")
def confirm_gold(
    ctx: typer.Context,
    file: Path = typer.Argument(
        ..., help="The proposals CSV of `gold sample --from-crowd`, answer and reason filled in."
    ),
    job: str = JOB_OPTION,
    expert: str = typer.Option(
        None, "--as", help="Expert (or admin) username answering \\[default: first admin]."
    ),
) -> None:
    """Record an expert's answers to gold proposed from the crowd's agreement: an answer
    that agrees with the crowd makes the image an (easy) test question with the expert's
    reason; one that does not corrects the image's label instead. Rows left without an
    answer are skipped; one bad row records nothing."""
    from cxrlabel.design.crowdgold import read_answers
    from cxrlabel.design.goldbank import GoldImportError
    from cxrlabel.quality.crowdconfirm import confirm_answers

    with app_context(ctx).db.session() as session:
        job_row, spec = get_job(session, job)
        person = _expert(session, expert)
        try:
            answered, skipped = read_answers(file)
            if not answered:
                fail(f"{file}: no row has an answer: nothing to confirm")
            confirmed = _guard(
                lambda: confirm_answers(
                    session, job_row, spec, person, answered, str(file), utcnow()
                )
            )
        except GoldImportError as exc:
            fail(str(exc))
        promoted, corrected = confirmed.promoted, confirmed.corrected
    console.print(
        f"{len(promoted)} made gold (active now), {len(corrected)} corrected by the expert "
        f"(the crowd's label was wrong: not gold), {skipped} left without an answer."
    )


def _expert(session: Session, username: str | None) -> User:
    """The person confirming: an expert or admin by name, else the first admin."""
    if username is None:
        return _admin(session, None)
    user = _user(session, username)
    if user.role not in (Role.EXPERT, Role.ADMIN):
        fail(f"{username!r} is not an expert or admin")
    return user
