"""The admin's pages: login, the event list with its dashboard strip, an event, replay."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from flask import (
    Blueprint,
    Flask,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import NullSession
from redis.exceptions import RedisError
from werkzeug.wrappers import Response

from bridge import redis_health
from bridge.admin.auth import TOKEN_USER, AdminAuth, is_admin_path, new_csrf_token, same
from bridge.admin.queries import Filters, dashboard, find_events, parse_filters
from bridge.logs import hide_secret_fields
from bridge.operations import DATA_LOST, REPLAYABLE, REPLAYABLE_WITH_FORCE, ReplayError, replay
from bridge.runtime import Runtime
from bridge.samples import sample_types
from bridge.state import subject_of
from bridge.store import ActionState, EventRecord, Status

log = logging.getLogger("salon_bridge.admin")

blueprint = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates", static_folder="static")

LIVE_STATUSES = {Status.PENDING, Status.SENDING, Status.RETRYING}
# What each status is called on the page, and its colour.
BADGES: dict[str, tuple[str, str]] = {
    Status.PENDING: ("queued", "wait"),
    Status.SENDING: ("sending", "wait"),
    Status.RETRYING: ("retrying", "warn"),
    Status.DONE: ("done", "ok"),
    Status.DEAD: ("dead", "bad"),
    Status.DRY_RUN: ("dry run", "info"),
    Status.SKIPPED: ("skipped", "muted"),
    Status.STALE: ("stale", "muted"),
    Status.SCHEDULED: ("scheduled", "wait"),
    Status.CANCELLED: ("cancelled", "muted"),
    Status.MISSED: ("missed", "warn"),
    Status.FAILED_AFTER_SENDING: ("failed after sending", "bad"),
}
PUBLIC_STATIC = {"admin.css"}  # the login page's stylesheet
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _auth() -> AdminAuth:
    auth: AdminAuth = current_app.extensions["salon_bridge_admin"]["auth"]
    return auth


def _rt() -> Runtime:
    rt: Runtime = current_app.extensions["salon_bridge_admin"]["runtime"]
    return rt


def _zone() -> ZoneInfo:
    return ZoneInfo(_rt().config.model.timezone)


# ---- the guard: login, CSRF, headers ------------------------------------------------------------


def install_guard(app: Flask) -> None:
    """Every request under /admin passes here first, matched to a page or not."""
    app.before_request(_guard)
    app.after_request(_headers)


def _guard() -> Response | tuple[str, int] | None:
    if not is_admin_path(request.path):
        return None
    if isinstance(session, NullSession):
        return _unavailable()
    if request.endpoint == "admin.static" and (request.view_args or {}).get("filename") in PUBLIC_STATIC:
        return None
    try:
        g.admin_user = _auth().session_user(session.get("sid"))
    except RedisError:
        return _unavailable()
    if request.endpoint != "admin.login" and g.admin_user is None:
        session.pop("sid", None)
        target = request.full_path.rstrip("?") if request.method == "GET" else None
        return redirect(url_for("admin.login", next=target), 303)
    if request.method == "POST" and not _csrf_ok():
        message = (
            "This form has expired or did not come from this site. Go back, reload the page and try again "
            "(the browser must accept cookies from this site)."
        )
        return render_template("admin/message.html", title="Form expired", message=message), 400
    return None


def _csrf_ok() -> bool:
    expected = session.get("csrf")
    given = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    return isinstance(expected, str) and bool(given) and same(given, expected)


@blueprint.errorhandler(RedisError)
def _redis_error(exc: RedisError) -> tuple[str, int]:
    log.warning("admin: Redis does not answer (%s)", type(exc).__name__)
    return _unavailable()


def _unavailable() -> tuple[str, int]:
    message = "Redis does not answer right now, and the event log is kept there. Try again in a minute."
    return render_template("admin/message.html", title="Redis unavailable", message=message), 503


def _headers(response: Response) -> Response:
    if is_admin_path(request.path):
        response.headers.update(SECURITY_HEADERS)
        if request.endpoint != "admin.static":
            response.headers["Cache-Control"] = "no-store"  # pages hold customers' details
    return response


@blueprint.app_template_global()
def redis_banner() -> list[str]:
    """What is wrong with Redis (it evicts, keeps nothing on disk, is full), atop every page."""
    try:
        health = redis_health.inspect(_rt().redis, probe=True)
    except RedisError:
        return []  # the page itself says that Redis does not answer
    return [*health.errors(), *filter(None, [health.full()]), *health.warnings()]


@blueprint.app_template_global()
def config_banner() -> list[str]:
    """The errors of a changed config that was rejected (bridge.reload); the old one still runs."""
    source = current_app.extensions["salon_bridge"].get("config_source")
    return list(source.rejected.errors) if source is not None and source.rejected is not None else []


@blueprint.app_template_global()
def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = new_csrf_token()
    token: str = session["csrf"]
    return token


# ---- presentation helpers -----------------------------------------------------------------------


@blueprint.app_template_filter("when")
def when(timestamp: float | None) -> str:
    if not timestamp:
        return ""
    return datetime.fromtimestamp(timestamp, _zone()).strftime("%Y-%m-%d %H:%M:%S")


def span(seconds: float) -> str:
    """A length of time, roughly: "40 s", "3 min", "2 h", "5 d"."""
    size = abs(seconds)
    if size < 60:
        return f"{size:.0f} s"
    if size < 3600:
        return f"{size / 60:.0f} min"
    if size < 86400:
        return f"{size / 3600:.0f} h"
    return f"{size / 86400:.0f} d"


@blueprint.app_template_filter("relative")
def relative(timestamp: float | None) -> str:
    """ "in 3 min", "2 h ago"."""
    if not timestamp:
        return ""
    delta = timestamp - time.time()
    return f"in {span(delta)}" if delta >= 0 else f"{span(delta)} ago"


blueprint.add_app_template_filter(span, "span")


def pretty(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


@dataclass
class ActionView:
    id: str
    state: ActionState
    label: str
    tone: str
    connector_type: str
    rendered: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    replayable: bool = True  # False when the event's data was lost in Redis

    @property
    def anchor(self) -> str:
        return "action-" + "".join(c if c.isalnum() else "-" for c in self.id)

    @property
    def can_replay(self) -> bool:
        return self.replayable and self.state.status in REPLAYABLE

    @property
    def can_force(self) -> bool:
        return self.replayable and self.state.status in REPLAYABLE_WITH_FORCE - REPLAYABLE

    @property
    def live(self) -> bool:
        return self.state.status in LIVE_STATUSES


def action_view(rt: Runtime, action_id: str, state: ActionState) -> ActionView:
    label, tone = BADGES.get(state.status, (state.status, "muted"))
    spec = rt.config.connectors.get(state.connector)
    view = ActionView(action_id, state, label, tone, spec.cls.type if spec else "not in the config")
    if state.rendered is not None:
        # Rendered fields are what the templates produced from the event; connector settings
        # (tokens, passwords) are never part of them, and credential-like keys are hidden anyway.
        view.rendered = pretty(hide_secret_fields(state.rendered))
    view.history = list(reversed(state.history))
    return view


@dataclass
class Row:
    record: EventRecord
    entity: str
    customer: str
    actions: list[ActionView]


def row_of(rt: Runtime, record: EventRecord) -> Row:
    subject = subject_of(record.envelope)
    actions = [action_view(rt, a, s) for a, s in sorted(record.actions.items())]
    return Row(record, subject.name, subject.customer_name, actions)


def _safe_next(target: str | None) -> str:
    """Only a path of this admin: never another site (an open redirect), nor a control character
    (urlsplit drops CR, LF and tab before parsing, and a CR/LF cannot go into a Location header)."""
    if target and target.isprintable():
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and is_admin_path(parts.path) and not target.startswith("//"):
            return target
    return url_for("admin.events")


# ---- pages --------------------------------------------------------------------------------------


@blueprint.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int, dict[str, str]]:
    auth = _auth()
    target = _safe_next(request.values.get("next"))
    if g.admin_user is not None and request.method == "GET":
        return redirect(target, 303)
    if request.method == "GET":
        return render_template("admin/login.html", admin=auth.admin, next=target, error=None)
    username = request.form.get("username", "").strip()[:200]
    password = request.form.get("password", "")[:1000]
    token = request.form.get("token", "").strip()[:1000]
    who = username if not token else TOKEN_USER
    ip = request.remote_addr or "unknown"
    wait = auth.locked_for(ip, who)
    if wait is not None:
        minutes = max(1, round(wait / 60))
        error = f"Too many failed logins. Try again in {minutes} min."
        log.warning("admin login refused ip=%s: too many failures", ip)
        page = render_template("admin/login.html", admin=auth.admin, next=target, error=error, username=username)
        return page, 429, {"Retry-After": str(wait)}
    user = auth.check(username, password, token)
    if user is None:
        auth.record_failure(ip, who)
        known = who == TOKEN_USER or (auth.admin.username is not None and same(username, auth.admin.username))
        log.warning("admin login failed user=%s ip=%s", who if known else "(unknown name)", ip)
        error = "That access token is not right." if token else "Wrong user name or password."
        page = render_template("admin/login.html", admin=auth.admin, next=target, error=error, username=username)
        return page, 401, {}
    auth.clear_failures(ip, who)
    session.clear()
    session["sid"] = auth.start_session(user)
    session["csrf"] = new_csrf_token()  # a new token for the new session
    session["user"] = user
    session.permanent = True
    log.info("admin login user=%s ip=%s", user, ip)
    return redirect(target, 303)


@blueprint.post("/logout")
def logout() -> Response:
    _auth().end_session(session.get("sid"))
    log.info("admin logout user=%s", g.admin_user)
    session.clear()
    flash("You are logged out.", "ok")
    return redirect(url_for("admin.login"), 303)


@blueprint.get("/")
def events() -> str | tuple[str, int]:
    rt = _rt()
    filters, problems = parse_filters(request.args, list(Status))
    page = find_events(rt, filters, _zone())
    types = sorted(set(sample_types()) | ({filters.event_type} if filters.event_type else set()))
    return render_template(
        "admin/events.html",
        rows=[row_of(rt, record) for record in page.records],
        page=page,
        filters=filters,
        newest=Filters(**{**filters.__dict__, "before": None}),
        problems=problems,
        dash=dashboard(rt),
        types=types,
        statuses=list(Status),
        badges=BADGES,
    )


@blueprint.get("/scheduled")
def scheduled() -> str:
    """Upcoming (and recent) scheduled sends: the next 7 days by default, or one booking's."""
    from bridge.schedules import listing

    rt = _rt()
    booking = (request.args.get("booking") or "").strip() or None
    try:
        days = min(max(int(request.args.get("days") or 7), 1), 400)
    except ValueError:
        days = 7
    sends = listing(rt.redis, rt.store, booking, days * 86400)
    return render_template("admin/scheduled.html", sends=sends, booking=booking or "", days=days, zone=_zone())


def _load(key: str) -> EventRecord | None:
    if len(key) > 200:
        return None
    return _rt().store.load(key)


def _not_found(key: str) -> tuple[str, int]:
    message = (
        "This event is not in the event log: it is older than the retention "
        "(retention.events in the config), or the link is wrong."
    )
    return render_template("admin/message.html", title="Event not found", message=message), 404


@blueprint.get("/events/<key>")
def event(key: str) -> str | tuple[str, int]:
    rt = _rt()
    record = _load(key)
    if record is None:
        return _not_found(key)
    subject = subject_of(record.envelope)
    views = {} if record.data_lost else rt.memory.views(subject)
    subject = subject_of(record.envelope, views)
    actions = [action_view(rt, a, s) for a, s in sorted(record.actions.items())]
    for action in actions:
        action.replayable = not record.data_lost
    return render_template(
        "admin/event.html",
        record=record,
        entity=subject.name,
        customer=subject.customer_name,
        payload=pretty(record.envelope),
        memory={kind: pretty(view) for kind, view in views.items() if view is not None},
        actions=actions,
        live=any(a.live for a in actions),
        data_lost=DATA_LOST if record.data_lost else "",
    )


@blueprint.post("/events/<key>/replay")
def replay_action(key: str) -> Response | str | tuple[str, int]:
    rt = _rt()
    record = _load(key)
    if record is None:
        return _not_found(key)
    action_id = request.form.get("action", "")
    force = request.form.get("force") == "1"
    state = record.actions.get(action_id)
    if state is None:
        flash(f"This event has no action {action_id!r}.", "error")
        return redirect(url_for("admin.event", key=key), 303)
    anchor = action_view(rt, action_id, state).anchor
    if force and request.form.get("confirmed") != "1":
        return render_template("admin/confirm.html", record=record, action_id=action_id, state=state)
    try:
        replay(rt, record.id, action_id, force=force)
    except ReplayError as exc:
        flash(str(exc).split("; use --force")[0], "error")
        return redirect(url_for("admin.event", key=key, _anchor=anchor), 303)
    log.info("admin replay event=%s action=%s force=%s user=%s", record.id, action_id, force, g.admin_user)
    flash(f"{action_id} is queued to be sent again; this page shows the result when a worker has run it.", "ok")
    return redirect(url_for("admin.event", key=key, _anchor=anchor), 303)
