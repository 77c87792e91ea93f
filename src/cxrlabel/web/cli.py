"""CLI: ``cxrlabel serve``, ``cxrlabel user add|token|passwd|disable|enable|unthrottle``,
``cxrlabel invite create``."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrlabel.context import app_context, console, fail

SERVED_URL_FILE = "server-url.txt"
DEFAULT_URL = "http://127.0.0.1:8000"


def remember_served_url(data_dir: Path, host: str, port: int) -> None:
    """So ``invite create`` prints links to the port people will actually open."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / SERVED_URL_FILE).write_text(f"http://{shown}:{port}\n", encoding="utf-8")
    except OSError:
        pass  # a read-only data dir still serves; links then need --base-url


def served_url(data_dir: Path) -> str:
    try:
        url = (data_dir / SERVED_URL_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return DEFAULT_URL
    return url or DEFAULT_URL


user_app = typer.Typer(help="Manage accounts.", no_args_is_help=True)
invite_app = typer.Typer(help="Invite links for new annotators.", no_args_is_help=True)


def serve(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    workers: int = typer.Option(1, min=1, help="Worker processes (more than 1 needs PostgreSQL)."),
    access_log: bool = typer.Option(True, help="Log every request (off: less CPU per request)."),
    keep_alive: float = typer.Option(30.0, min=1, help="Seconds an idle connection stays open."),
) -> None:
    """Serve the annotator web app (admin pages, annotator pages, REST API at /api/docs)."""
    from cxrlabel.web.app import run_server

    app = app_context(ctx)
    app.require_existing_data()  # serving a typo'd data dir would show an empty, new database
    settings = app.settings
    remember_served_url(settings.data_dir, host, port)
    try:
        run_server(
            settings,
            host=host,
            port=port,
            workers=workers,
            access_log=access_log,
            keep_alive_s=keep_alive,
        )
    except ValueError as exc:
        fail(str(exc))


@user_app.command("add")
def user_add(
    ctx: typer.Context,
    username: str = typer.Argument(..., help="Login name."),
    role: str = typer.Option("annotator", help="admin | annotator | expert"),
    password: str = typer.Option(None, help="Password (asked for, hidden, when not given)."),
) -> None:
    """Create an account."""
    from cxrlabel.annotate.accounts import AccountError, check_new_account, create_user

    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:  # before the data dir is opened: a refused account must not start an installation
        check_new_account(username, password, role)
    except AccountError as exc:
        fail(exc.message)
    db = app_context(ctx, creates_data=True).db  # the first admin may start an installation
    try:
        with db.session() as s:
            user = create_user(s, username, password, role)
            name, user_role = user.username, user.role
    except AccountError as exc:
        fail(exc.message)
    console.print(f"created {user_role} [bold]{name}[/]")


@user_app.command("token")
def user_token(ctx: typer.Context, username: str = typer.Argument(...)) -> None:
    """Print a new API token for USERNAME (replaces the previous one)."""
    from sqlalchemy import select

    from cxrlabel.annotate.accounts import issue_api_token
    from cxrlabel.storage.models import User

    with app_context(ctx).db.session() as s:
        user = s.scalar(select(User).where(User.username == username))
        if user is None:
            fail(f"no user named {username!r}")
        token = issue_api_token(s, user)
    typer.echo(token)


@user_app.command("passwd")
def user_passwd(
    ctx: typer.Context,
    username: str = typer.Argument(...),
    password: str = typer.Option(None, help="New password (asked for, hidden, when not given)."),
) -> None:
    """Set USERNAME's password (policy checked) and sign them out everywhere."""
    from cxrlabel.annotate.accounts import AccountError, find_user, set_password

    if password is None:
        password = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    try:
        with app_context(ctx).db.session() as s:
            ended = set_password(s, find_user(s, username), password)
    except AccountError as exc:
        fail(exc.message)
    console.print(f"password changed; {ended} session(s) ended", markup=False)


def _set_active(ctx: typer.Context, username: str, active: bool) -> None:
    from cxrlabel.annotate.accounts import AccountError, find_user, set_active

    try:
        with app_context(ctx).db.session() as s:
            ended = set_active(s, find_user(s, username), active)
    except AccountError as exc:
        fail(exc.message)
    state = "enabled" if active else f"disabled; {ended} session(s) ended"
    console.print(f"{username}: {state}", markup=False, highlight=False)


@user_app.command("disable")
def user_disable(ctx: typer.Context, username: str = typer.Argument(...)) -> None:
    """Disable USERNAME: their sessions end now and sign-in and API tokens stop working."""
    _set_active(ctx, username, False)


@user_app.command("enable")
def user_enable(ctx: typer.Context, username: str = typer.Argument(...)) -> None:
    """Enable USERNAME again (they sign in anew)."""
    _set_active(ctx, username, True)


@user_app.command("unthrottle")
def user_unthrottle(
    ctx: typer.Context,
    address: str = typer.Option(
        None,
        "--address",
        help="Client address whose sign-in budget to reset (as the server sees it).",
    ),
    username: str = typer.Option(
        None, "--username", help="With --address: also that account's budget from the address."
    ),
    everything: bool = typer.Option(False, "--all", help="Reset every sign-in and sign-up budget."),
) -> None:
    """Lift a sign-in lock-out (429 "Too many attempts") before its 15-minute window ends."""
    from cxrlabel.web.throttle import LoginRateLimiter

    if username is not None and address is None:
        fail("--username needs --address: budgets are kept per address and username, hashed")
    if everything == (address is not None):
        fail("give --address ADDRESS (optionally with --username NAME) or --all")
    limiter = LoginRateLimiter(app_context(ctx).db)
    if everything:
        removed = limiter.clear()
        what = "every address"
    else:
        removed = limiter.lift(limiter.address_keys(address, username))
        what = address + (f" / {username}" if username else "")
    console.print(f"{what}: {removed} counted attempt(s) forgotten", markup=False, highlight=False)


@invite_app.command("create")
def invite_create(
    ctx: typer.Context,
    uses: int = typer.Option(1, "--uses", min=1, help="How many people may use the link."),
    expires_hours: float = typer.Option(72.0, "--expires-hours", help="Hours until it expires."),
    role: str = typer.Option("annotator", help="Role of the accounts it creates."),
    job: str = typer.Option(None, help="Send new accounts straight to this job."),
    base_url: str = typer.Option(
        None,
        "--base-url",
        envvar="CXRLABEL_BASE_URL",
        help="Public address of the server, used to build the link \\[default: the address "
        "`cxrlabel serve` last listened on for this data dir, else http://127.0.0.1:8000].",
    ),
) -> None:
    """Create an invite link and print it (the link is shown only once)."""
    from sqlalchemy import select

    from cxrlabel.annotate.accounts import AccountError, create_invite, invite_link
    from cxrlabel.storage.models import Job

    with app_context(ctx).db.session() as s:
        job_row = None
        if job:
            job_row = s.scalar(select(Job).where(Job.name == job))
            if job_row is None:
                fail(f"no job named {job!r}")
        try:
            _invite, token = create_invite(
                s, role=role, max_uses=uses, expires_hours=expires_hours, job=job_row
            )
        except AccountError as exc:
            fail(exc.message)
    typer.echo(invite_link(base_url or served_url(app_context(ctx).settings.data_dir), token))


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.add_typer(user_app, name="user")
    app.add_typer(invite_app, name="invite")


@invite_app.command("signals")
def invite_signals(
    ctx: typer.Context,
    job_name: str = typer.Option(None, "--job", help="Compare answers in this job only."),
) -> None:
    """Possible duplicate accounts: same browser, same network, near-identical answers."""
    from rich.markup import escape
    from sqlalchemy import select

    from cxrlabel.annotate.signups import duplicate_signals
    from cxrlabel.storage.models import Job

    with app_context(ctx).db.session() as s:
        job = None
        if job_name:
            job = s.scalar(select(Job).where(Job.name == job_name))
            if job is None:
                fail(f"no job named {job_name!r}")
        signals = duplicate_signals(s, job)
    if not signals:
        console.print("no duplicate-account signals")
        return
    for sig in signals:
        console.print(
            f"[yellow]{sig.kind}[/] {escape(', '.join(sig.usernames))}: {escape(sig.detail)}",
            highlight=False,
        )
