"""``cxrlabel demo``: a working job on a fresh machine in one command, offline.

Creates the default job, ingests images (a folder you give, or clearly marked synthetic phantom
images generated on the fly), seeds a gold bank from reference labels, creates an admin, an
expert and three annotators plus an invite link, optionally fills the job with a simulated
crowd's work, prints how to log in and starts the server.
"""

from __future__ import annotations

import csv
import json
import secrets
from pathlib import Path

import typer
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cxrlabel.context import AppContext, app_context, console, fail, get_job
from cxrlabel.jobspec import JobSpec
from cxrlabel.storage.models import GoldItem, Job, Role, User, utcnow
from cxrlabel.terminal import plain
from cxrlabel.vocab import NORMAL, PNEUMONIA

DEMO_USERS = [
    ("admin", Role.ADMIN),
    ("expert", Role.EXPERT),
    ("annotator1", Role.ANNOTATOR),
    ("annotator2", Role.ANNOTATOR),
    ("annotator3", Role.ANNOTATOR),
]
PHANTOMS = {NORMAL: 30, PNEUMONIA: 42}  # roughly the source hospital's class balance


def make_phantom_manifest(folder: Path, counts: dict[str, int] = PHANTOMS) -> Path:
    """Write synthetic phantom PNGs and a manifest (path, label, patient_id); idempotent."""
    from cxrlabel.ingest.phantom import make_phantom_xray

    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.csv"
    rows = []
    seed = 0
    for label, n in counts.items():
        for i in range(n):
            seed += 1
            path = folder / f"phantom-{label.lower()}-{i:03d}.png"
            if not path.exists():
                make_phantom_xray(seed, 512, pneumonia=label == PNEUMONIA).save(path)
            rows.append({"path": path.name, "label": label, "patient_id": f"phantom-{seed:03d}"})
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _ingest(app: AppContext, source: Path, job_name: str | None) -> None:
    from cxrlabel.ingest.pipeline import ingest
    from cxrlabel.ingest.sources import SourceError

    with app.db.session() as session:
        job, spec = get_job(session, job_name)
    try:
        summary = ingest(app.db, app.settings.data_dir, job, spec, source, console=console)
    except SourceError as exc:  # an empty folder, a malformed manifest
        fail(str(exc))
    console.print(
        f"Ingested {summary.ingested} new image(s) from {source} "
        f"({len(summary.failed)} failed, {len(summary.near_duplicates)} near duplicates)."
    )
    # A demo of nothing would look like a working job with no work: say so and stop, as
    # `cxrlabel ingest` does.
    problem = summary.nothing_usable()
    if problem:
        for item in summary.failed[:5]:
            console.print(plain(f"  {item.source_path}: {item.reason}"), highlight=False)
        fail(problem, code=1)


def _seed_gold(app: AppContext, job_name: str | None) -> int:
    from cxrlabel.design.goldseed import sample_from_reference

    with app.db.session() as session:
        job, spec = get_job(session, job_name)
        have = (
            session.scalar(
                select(func.count(GoldItem.id)).where(GoldItem.job_id == job.id, GoldItem.active)
            )
            or 0
        )
        # Enough for the quiz plus a gold item on each of several work pages.
        wanted = spec.gold.quiz_length + 12 * max(spec.gold.per_page, 1)
        if have < wanted:
            try:
                sample_from_reference(session, job, spec, wanted - have, seed=0)
            except ValueError as exc:
                console.print(f"[yellow]Could not seed gold from reference labels: {exc}[/]")
        n_gold = (
            session.scalar(
                select(func.count(GoldItem.id)).where(GoldItem.job_id == job.id, GoldItem.active)
            )
            or 0
        )
        _seed_training(session, job, spec)
        return n_gold


def _seed_training(session: Session, job: Job, spec: JobSpec) -> None:
    """With ``[training] enabled``: a training pool from reference labels (after the gold, so
    never a test question), as ``cxrlabel training sample``."""
    from cxrlabel.design.trainingpool import ensure_training

    try:
        ensure_training(session, job, spec, seed=1, now=utcnow())
    except ValueError as exc:
        console.print(f"[yellow]Could not seed the training pool from reference labels: {exc}[/]")


def _accounts(app: AppContext) -> dict[str, str]:
    """Demo accounts with random passwords, kept in <data-dir>/demo-logins.json (mode 600)."""
    from cxrlabel.annotate.accounts import create_user, set_password

    store = app.settings.data_dir / "demo-logins.json"
    passwords: dict[str, str] = json.loads(store.read_text()) if store.exists() else {}
    with app.db.session() as session:
        for username, role in DEMO_USERS:
            password = passwords.get(username) or secrets.token_urlsafe(9)
            user = session.scalar(select(User).where(User.username == username))
            if user is None:
                create_user(session, username, password, role)
            elif username not in passwords:
                set_password(session, user, password)
            passwords[username] = password
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps(passwords, indent=2))
    store.chmod(0o600)
    return passwords


def _invite(app: AppContext, job_name: str | None, base_url: str) -> str:
    from cxrlabel.annotate.accounts import create_invite, invite_link

    with app.db.session() as session:
        job, _ = get_job(session, job_name)
        admin = session.scalar(select(User).where(User.username == "admin"))
        _, token = create_invite(
            session, role=Role.ANNOTATOR, max_uses=20, expires_hours=72, job=job, created_by=admin
        )
    return invite_link(base_url, token)


def _simulate(app: AppContext, job_name: str | None, seed: int) -> None:
    from datetime import timedelta

    from cxrlabel.sim.run import simulate_into, write_result
    from cxrlabel.storage.models import utcnow

    with app.db.session() as session:
        job, spec = get_job(session, job_name)
    console.print("Filling the job with a simulated crowd's work (same engine as the web app)...")
    # Started three days ago so the dashboards show a timeline. The crowd keeps arriving until
    # every work image is finalised or waiting for an expert; the review queue is left for the
    # demo's expert account.
    result = simulate_into(
        app.db,
        job,
        spec,
        seed=seed,
        n_annotators=None,
        now=utcnow() - timedelta(days=3),
        data_dir=app.settings.data_dir,
        expert_review=False,
        until_settled=True,
    )
    write_result(result, app.settings.data_dir, spec.name)  # the proposal quotes these figures
    keys = (
        "label_accuracy",
        "judgments_per_image",
        "expert_review_fraction",
        "annotators_removed",
        "bad_annotators_removed",
        "cost",
        "hours",
    )
    console.print(
        "Simulated crowd: "
        + ", ".join(
            f"{k}={result[k]:.3g}" if isinstance(result.get(k), float) else f"{k}={result.get(k)}"
            for k in keys
        )
    )
    _print_settled(app, job.id)


def _print_settled(app: AppContext, job_id: int) -> None:
    """How the work images ended; any still open is said plainly (the crowd bound was hit)."""
    from cxrlabel.storage.models import Image, ImageStatus

    with app.db.session() as session:
        counts = dict(
            session.execute(
                select(Image.status, func.count())
                .where(Image.job_id == job_id)
                .group_by(Image.status)
            ).all()
        )
    finalised = counts.get(ImageStatus.FINALISED, 0) + counts.get(ImageStatus.EXPERT, 0)
    review = counts.get(ImageStatus.NEEDS_REVIEW, 0)
    open_ = counts.get(ImageStatus.NEEDS_JUDGMENTS, 0)
    console.print(
        f"Work images: {finalised} finalised, {review} waiting for expert review "
        f"(log in as expert), {open_} still open."
    )
    if open_:
        console.print(
            "[yellow]warning:[/] the simulated crowd stopped before every image "
            "was settled (most annotators reached)"
        )


def _print_logins(
    passwords: dict[str, str], base_url: str | None, invite: str, n_gold: int
) -> None:
    # Without a server there is nothing to open yet: the title says how to start it.
    title = f"open {base_url}" if base_url else "start the server with `cxrlabel serve`"
    table = Table(title=f"cxrlabel demo — {title}")
    table.add_column("user")
    table.add_column("role")
    table.add_column("password")
    for username, role in DEMO_USERS:
        table.add_row(username, role, passwords[username])
    console.print(table)
    when = "" if base_url else " (once the server runs)"
    console.print(f"New annotators can join{when} with this invite link: [bold]{invite}[/]")
    console.print(
        f"Gold bank: {n_gold} test questions. Passwords are kept in demo-logins.json "
        "in the data dir."
    )


def demo_command(
    ctx: typer.Context,
    images: Path = typer.Option(
        None,
        "--images",
        help="Ingest this folder or CSV manifest instead of synthetic phantom images.",
    ),
    job: str = typer.Option(None, "--job", help="Job name or TOML file \\[default: bundled]."),
    simulate: bool = typer.Option(
        False,
        "--simulate",
        help="Fill the job with a simulated "
        "crowd's work (every work image ends finalised or in the "
        "expert review queue) so dashboards, reports and exports "
        "have content.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for the simulated crowd."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Start the server at the end."),
) -> None:
    """Create a ready-to-use demo job (offline) and start the server."""
    app = app_context(ctx, creates_data=True)
    source = images
    if source is None:
        source = make_phantom_manifest(app.settings.data_dir / "demo-phantoms")
        console.print(
            f"Generated synthetic phantom images in {source.parent} "
            "(clearly marked SYNTHETIC PHANTOM; not real X-rays)."
        )
    elif not source.exists():
        fail(f"{source}: no such folder or manifest")
    _ingest(app, source, job)
    n_gold = _seed_gold(app, job)
    passwords = _accounts(app)
    base_url = f"http://{host}:{port}"
    invite = _invite(app, job, base_url)
    if simulate:
        _simulate(app, job, seed)
    _print_logins(passwords, base_url if serve else None, invite, n_gold)
    if serve:
        from cxrlabel.web.app import run_server

        run_server(app.settings, host=host, port=port)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
