"""The admin's pages: login, the event list with its dashboard strip, an event, a booking, replay."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    g,
    get_flashed_messages,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import NullSession
from flask_babel import gettext as _
from redis.exceptions import RedisError
from werkzeug.wrappers import Response

from bridge import redis_health
from bridge.admin import i18n, labels, previews
from bridge.admin.auth import TOKEN_USER, AdminAuth, is_admin_path, new_csrf_token, same
from bridge.admin.queries import Filters, booking_events, dashboard, find_events, parse_filters
from bridge.logs import hide_secret_fields
from bridge.operations import DATA_LOST, REPLAYABLE, REPLAYABLE_WITH_FORCE, ReplayError, replay
from bridge.runtime import Runtime
from bridge.samples import sample_types
from bridge.state import event_time, memory_fields, subject_of
from bridge.store import ActionState, EventRecord, Status
from connectors.base import Subject
from mappings.templates import EntityView

log = logging.getLogger("salon_bridge.admin")

blueprint = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates", static_folder="static")

LIVE_STATUSES = {Status.PENDING, Status.SENDING, Status.RETRYING}
FAILED_STATUSES = {Status.DEAD, Status.RETRYING, Status.FAILED_AFTER_SENDING}
FALLBACK_SUFFIX = "/fallback"
REPLAY_FLASH = "replay:"  # + tone + ":" + action id: the confirmation is shown inside that action
PUBLIC_STATIC = {"admin.css"}  # the login page's stylesheet
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; connect-src 'self'; "
        "frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
# An e-mail's HTML body, in its sandboxed frame: its own styles and inline images, nothing remote, no script.
EMAIL_FRAME_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; sandbox; "
        "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
    ),
    "X-Frame-Options": "SAMEORIGIN",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
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
        message = _(
            "This form has expired or did not come from this site. Go back, reload the page and try again "
            "(the browser must accept cookies from this site)."
        )
        return render_template("admin/message.html", title=_("Form expired"), message=message), 400
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
    message = _(
        "The database (Redis) does not answer right now, and the event log is kept there. Try again in a minute."
    )
    return render_template("admin/message.html", title=_("Database unavailable"), message=message), 503


def _headers(response: Response) -> Response:
    if is_admin_path(request.path):
        response.headers.update(EMAIL_FRAME_HEADERS if request.endpoint == "admin.email_body" else SECURITY_HEADERS)
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
def colour_name(colour_id: str) -> str:
    return str(previews.GOOGLE_COLOURS.get(colour_id, colour_id))


@blueprint.app_template_global()
def ui_language() -> str:
    return i18n.language()


@blueprint.app_template_global()
def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = new_csrf_token()
    token: str = session["csrf"]
    return token


# ---- presentation helpers -----------------------------------------------------------------------

for _name, _filter in (
    ("when", i18n.when),
    ("clock", i18n.clock),
    ("relative", i18n.relative),
    ("span", i18n.span),
    ("money", i18n.money),
    ("event_type", labels.event_type_name),
    ("status_name", labels.status_name),
    ("delivery_name", labels.delivery_name),
    ("send_status", labels.send_status_name),
    ("kind", labels.kind_name),
):
    blueprint.add_app_template_filter(_filter, _name)


def pretty(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


@dataclass
class ActionView:
    id: str
    state: ActionState
    label: str
    tone: str
    connector_type: str
    destination: str  # "Slack message", "E-mail", ...: what the owner calls it
    reason: str = ""  # a failure as a sentence for the owner; the technical text is state.last_error
    rendered: str | None = None
    preview: previews.Preview | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    delivery: list[dict[str, Any]] = field(default_factory=list)
    fallback: ActionView | None = None  # `<id>/fallback`, shown under this action
    replayable: bool = True  # False when the event's data was lost in Redis

    scope: str = ""  # the event's key on a page that shows several events (ids stay unique)

    @property
    def anchor(self) -> str:
        return "action-" + "".join(c if c.isalnum() else "-" for c in self.scope + self.id)

    @property
    def can_replay(self) -> bool:
        return self.replayable and self.state.status in REPLAYABLE

    @property
    def can_force(self) -> bool:
        return self.replayable and self.state.status in REPLAYABLE_WITH_FORCE - REPLAYABLE

    @property
    def live(self) -> bool:
        return self.state.status in LIVE_STATUSES or (self.fallback is not None and self.fallback.live)

    @property
    def failed(self) -> bool:
        return self.state.status in FAILED_STATUSES


def _delivery(state: ActionState) -> list[dict[str, Any]]:
    """`ActionState.delivery` (status callbacks, bridge/deliveries.py), each time shown only if it is one."""
    entries = state.delivery or []
    shown = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict):
            at = entry.get("at")
            shown.append({**entry, "at": at if isinstance(at, (int, float)) else None})
    return shown


def action_view(rt: Runtime, record: EventRecord, action_id: str, state: ActionState, what: str = "") -> ActionView:
    spec = rt.config.connectors.get(state.connector)
    connector_type = spec.cls.type if spec else ""
    view = ActionView(
        action_id,
        state,
        labels.status_label(state),
        labels.TONES.get(state.status, "muted"),
        connector_type,
        labels.connector_name(connector_type) if spec else _("Not in the config any more"),
    )
    if view.failed and state.last_error:
        view.reason = labels.explain(state.last_error, what or _("this event"))
    if state.rendered is not None:
        # Rendered fields are what the templates produced from the event; connector settings
        # (tokens, passwords) are never part of them, and credential-like keys are hidden anyway.
        view.rendered = pretty(hide_secret_fields(state.rendered))
        booking = ((record.envelope.get("data") or {}).get("booking") or {}) if not record.data_lost else {}
        view.preview = previews.preview_of(
            connector_type,
            state.rendered,
            spec.settings if spec else None,
            state.detail,
            state.last_error,
            booking if isinstance(booking, dict) else {},
            record.envelope,
        )
    view.history = list(reversed(state.history))
    view.delivery = _delivery(state)
    view.replayable = not record.data_lost
    return view


def scoped(actions: list[ActionView], scope: str) -> list[ActionView]:
    """The actions with anchors unique on a page that shows several events (the booking page)."""
    for action in actions:
        action.scope = scope + "-"
        if action.fallback is not None:
            action.fallback.scope = scope + "-"
    return actions


def action_views(rt: Runtime, record: EventRecord, what: str = "") -> list[ActionView]:
    """The event's actions in order, each fallback (`<id>/fallback`) under the action it stands in for."""
    views = {a: action_view(rt, record, a, s, what) for a, s in sorted(record.actions.items())}
    for action_id in list(views):
        first = views.get(action_id.removesuffix(FALLBACK_SUFFIX))
        if action_id.endswith(FALLBACK_SUFFIX) and first is not None:
            first.fallback = views.pop(action_id)
    return list(views.values())


def booking_label(subject: Subject) -> str:
    """`Reserva ABC123XY · Juan Pérez`: one label per booking (order, customer) everywhere."""
    if subject.primary is None:
        return ""
    kind, entity_id = subject.primary
    name = f"{labels.kind_name(kind)} {subject.code or entity_id}"
    return f"{name} · {subject.customer_name}" if subject.customer_name else name


def remembered_subjects(rt: Runtime, records: list[EventRecord]) -> list[Subject]:
    """Each event's subject with its code and customer from memory (a no-show carries neither):
    one round trip for the whole page, reading the main entity's memory only."""
    subjects = [subject_of(r.envelope) for r in records]
    pipe = rt.redis.pipeline(transaction=False)
    for subject in subjects:
        if subject.primary is not None:
            rt.memory.read_on(pipe, rt.memory.key(subject.tenant, *subject.primary))
    found = iter(pipe.execute())
    result = []
    for record, subject in zip(records, subjects, strict=True):
        remembered = memory_fields(next(found)) if subject.primary is not None else None
        if subject.primary is None or remembered is None:
            result.append(subject)
            continue
        kind, entity_id = subject.primary
        views: dict[str, EntityView | None] = {kind: EntityView(remembered, kind, entity_id)}
        result.append(subject_of(record.envelope, views))
    return result


@dataclass
class Row:
    record: EventRecord
    subject: Subject
    label: str
    actions: list[ActionView]


def rows_of(rt: Runtime, records: list[EventRecord]) -> list[Row]:
    rows = []
    for record, subject in zip(records, remembered_subjects(rt, records), strict=True):
        label = booking_label(subject)
        rows.append(Row(record, subject, label, action_views(rt, record, label)))
    return rows


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
        error = _("Too many failed logins. Try again in %(minutes)s min.", minutes=minutes)
        log.warning("admin login refused ip=%s: too many failures", ip)
        page = render_template("admin/login.html", admin=auth.admin, next=target, error=error, username=username)
        return page, 429, {"Retry-After": str(wait)}
    user = auth.check(username, password, token)
    if user is None:
        auth.record_failure(ip, who)
        known = who == TOKEN_USER or (auth.admin.username is not None and same(username, auth.admin.username))
        log.warning("admin login failed user=%s ip=%s", who if known else "(unknown name)", ip)
        error = _("That access token is not right.") if token else _("Wrong user name or password.")
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
    flash(_("You are logged out."), "ok")
    return redirect(url_for("admin.login"), 303)


@blueprint.get("/")
def events() -> str | tuple[str, int]:
    rt = _rt()
    filters, problems = parse_filters(request.args, list(Status))
    page = find_events(rt, filters, _zone())
    types = sorted(set(sample_types()) | ({filters.event_type} if filters.event_type else set()))
    return render_template(
        "admin/events.html",
        rows=rows_of(rt, page.records),
        page=page,
        filters=filters,
        newest=Filters(**{**filters.__dict__, "before": None}),
        problems=problems,
        dash=dashboard(rt),
        types=types,
        statuses=list(Status),
        zone=_zone(),
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
    message = _(
        "This event is not in the event log: it is older than the retention "
        "(retention.events in the config), or the link is wrong."
    )
    return render_template("admin/message.html", title=_("Event not found"), message=message), 404


def _remembered(rt: Runtime, record: EventRecord) -> tuple[Subject, dict[str, EntityView | None]]:
    subject = subject_of(record.envelope)
    views = {} if record.data_lost else rt.memory.views(subject)
    return subject_of(record.envelope, views), views


@blueprint.get("/events/<key>")
def event(key: str) -> str | tuple[str, int]:
    rt = _rt()
    record = _load(key)
    if record is None:
        return _not_found(key)
    subject, views = _remembered(rt, record)
    label = booking_label(subject)
    actions = action_views(rt, record, label)
    return render_template(
        "admin/event.html",
        record=record,
        subject=subject,
        label=label,
        happened=_happened(record),
        payload=pretty(record.envelope),
        memory={kind: pretty(view) for kind, view in views.items() if view is not None},
        actions=actions,
        live=any(a.live for a in actions),
        data_lost=DATA_LOST if record.data_lost else "",
        zone=_zone(),
    )


def _happened(record: EventRecord) -> float | None:
    """When the platform says the event happened (its `created`), None when unreadable."""
    try:
        return event_time(record.envelope)
    except (KeyError, TypeError, ValueError):
        return None


@blueprint.get("/bookings/<tenant>/<booking_id>")
def booking(tenant: str, booking_id: str) -> str | tuple[str, int]:
    """One booking: every event and action about it in order, scheduled sends, what is remembered."""
    from bridge.schedules import listing

    rt = _rt()
    if len(tenant) > 200 or len(booking_id) > 200:
        abort(404)
    remembered = rt.memory.load(tenant, "booking", booking_id)
    records = booking_events(rt, tenant, booking_id)
    if remembered is None and not records:
        message = _(
            "The bridge knows nothing about this booking: no event about it is in the event log "
            "(older than the retention, or the link is wrong)."
        )
        return render_template("admin/message.html", title=_("Booking not found"), message=message), 404
    views: dict[str, EntityView | None] = {"booking": EntityView(remembered or {}, "booking", booking_id)}
    envelope = {"tenant_id": tenant, "data": {"booking": {"id": booking_id}}}
    subject = subject_of(envelope, views)
    label = booking_label(subject)
    timeline = [(record, _happened(record), scoped(action_views(rt, record, label), record.key)) for record in records]
    sends = [s for s in listing(rt.redis, rt.store, subject.code or booking_id) if s.event in {r.key for r in records}]
    cards = [
        a.preview for _r, _t, actions in timeline for a in actions if isinstance(a.preview, previews.CalendarPreview)
    ]
    calendar = next((card for card in reversed(cards) if card.link), None)  # the newest entry written
    return render_template(
        "admin/booking.html",
        label=label,
        subject=subject,
        booking=remembered or {},
        memory=pretty(remembered) if remembered else "",
        timeline=timeline,
        sends=sends,
        calendar=calendar,
        live=any(a.live for _r, _t, actions in timeline for a in actions),
        zone=_zone(),
    )


@blueprint.get("/events/<key>/actions/<path:action_id>/email.html")
def email_body(key: str, action_id: str) -> Response | tuple[str, int]:
    """An e-mail's HTML body as sent, for the sandboxed frame of the event page (own strict CSP)."""
    record = _load(key)
    state = record.actions.get(action_id) if record is not None else None
    html = previews.email_html(state.rendered) if state is not None and state.rendered else None
    if html is None:
        abort(404)
    return Response(html, mimetype="text/html")


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
        flash(_("This event has no action %(action)s.", action=repr(action_id)), "error")
        return redirect(url_for("admin.event", key=key), 303)
    view = action_view(rt, record, action_id, state)
    # A fallback's form lives inside its first action's panel: land there.
    anchor = view.anchor
    if force and request.form.get("confirmed") != "1":
        return render_template("admin/confirm.html", record=record, action=view)
    try:
        replay(rt, record.id, action_id, force=force)
    except ReplayError as exc:
        flash(str(exc).split("; use --force")[0], f"{REPLAY_FLASH}error:{action_id}")
        return redirect(url_for("admin.event", key=key, _anchor=anchor), 303)
    log.info("admin replay event=%s action=%s force=%s user=%s", record.id, action_id, force, g.admin_user)
    message = _("Queued to be sent again; this page shows the result when a worker has run it.")
    flash(message, f"{REPLAY_FLASH}ok:{action_id}")
    return redirect(url_for("admin.event", key=key, _anchor=anchor), 303)


@blueprint.app_template_global()
def replay_messages(action_id: str) -> list[tuple[str, str]]:
    """The confirmation (or refusal) of a "Send again" of this action, as (tone, text), shown in its panel."""
    wanted = [f"{REPLAY_FLASH}{tone}:{action_id}" for tone in ("ok", "error")]
    flashed: list[tuple[str, str]] = get_flashed_messages(with_categories=True, category_filter=wanted)  # type: ignore[assignment]
    return [(category.split(":")[1], message) for category, message in flashed]
