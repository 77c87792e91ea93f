"""Admin: enable and disable accounts (issue 18). Disabling ends every session of the account
at once; its API token stops working too."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from sqlalchemy import select
from starlette.responses import Response

from cxrlabel.annotate.accounts import set_active
from cxrlabel.storage.models import Role, User
from cxrlabel.web.deps import csrf_protect, get_db, render, require_role

router = APIRouter()
admin = require_role(Role.ADMIN)


def _apply(request: Request, actor: User, user_id: int, action: str) -> dict:
    if user_id == actor.id and action == "disable":
        raise HTTPException(400, "you cannot disable your own account")
    with get_db(request).session() as s:
        target = s.get(User, user_id)
        if target is None:
            raise HTTPException(404, "no such user")
        ended = set_active(s, target, action == "enable", actor=s.get(User, actor.id))
        return {
            "user_id": target.id,
            "username": target.username,
            "active": target.active,
            "sessions_ended": ended,
        }


def _users(request: Request) -> list[dict]:
    with get_db(request).read_session() as s:
        rows = s.execute(
            select(User.id, User.username, User.role, User.active).order_by(User.id)
        ).all()
    return [{"id": i, "username": n, "role": r, "active": a} for i, n, r, a in rows]


@router.get("/admin/users", include_in_schema=False)
def users_page(request: Request, user: User = Depends(admin)) -> Response:
    return render(request, "admin/users.html", {"users": _users(request)})


@router.post(
    "/admin/users/{user_id}/{action}", include_in_schema=False, dependencies=[Depends(csrf_protect)]
)
def users_action(
    request: Request,
    user_id: int,
    action: Literal["disable", "enable"],
    user: User = Depends(admin),
) -> Response:
    done = _apply(request, user, user_id, action)
    flash = f"{done['username']}: {'enabled' if done['active'] else 'disabled'}"
    return render(request, "admin/users.html", {"users": _users(request), "flash": flash})


@router.post(
    "/api/users/{user_id}/{action}",
    dependencies=[Depends(csrf_protect)],
    summary="Disable or enable an account (admin); disabling ends its sessions",
)
def users_api(
    request: Request,
    user_id: int,
    action: Literal["disable", "enable"],
    user: User = Depends(admin),
) -> dict:
    return _apply(request, user, user_id, action)
