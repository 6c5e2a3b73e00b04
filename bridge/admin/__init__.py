"""The owner's event log at /admin: find an event, see what each action did, send it again.

Off unless the config has an `admin:` section with credentials; then every page but the login
form (and its stylesheet) needs a logged-in session, and every POST a CSRF token. In Spanish by
default, or English (`admin.language`, else the browser's language): bridge/admin/i18n.py.
"""

from __future__ import annotations

from datetime import timedelta

from flask import Flask
from redis import Redis

from bridge.admin import preview as _preview  # noqa: F401 - registers /admin/preview on the blueprint
from bridge.admin.auth import AdminAuth, AdminSessionInterface
from bridge.admin.i18n import install_babel
from bridge.admin.views import blueprint, install_guard
from bridge.runtime import Runtime
from mappings.config import BridgeConfig


def register_admin(app: Flask, config: BridgeConfig, redis: Redis) -> None:
    """Mount /admin on the app when `admin:` is configured; without it there is no /admin at all."""
    admin = config.model.admin
    if admin is None:
        return
    auth = AdminAuth(admin, redis)
    app.session_interface = AdminSessionInterface(auth)
    app.permanent_session_lifetime = timedelta(seconds=admin.session_lifetime)
    app.extensions["salon_bridge_admin"] = {"auth": auth, "runtime": Runtime(config, redis)}
    install_babel(app, admin, config.model.timezone)
    install_guard(app)
    app.register_blueprint(blueprint)
