"""The admin's language (Flask-Babel): Spanish by default, English available, and how times and
money are written for that language, in the salon's time zone with the zone shown.

Catalogs: bridge/admin/translations/<lang>/LC_MESSAGES/messages.po, compiled to .mo by
`make install` (`pybabel compile`). The source texts are English: a text missing from a catalog
is shown in English rather than not at all.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from babel.dates import format_timedelta
from flask import Flask, current_app, request
from flask_babel import Babel, format_currency, format_datetime, get_locale

from mappings.config import AdminModel

log = logging.getLogger("salon_bridge.admin")

LANGUAGES = ("es", "en")
DEFAULT_LANGUAGE = "es"
TRANSLATIONS = Path(__file__).with_name("translations")
LANGUAGE_KEY = "salon_bridge_admin_language"


def install_babel(app: Flask, admin: AdminModel, timezone: str) -> None:
    """Flask-Babel on the app, choosing the configured language or the browser's."""
    translations = TRANSLATIONS
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(translations)
    app.config["BABEL_DEFAULT_LOCALE"] = DEFAULT_LANGUAGE
    app.config["BABEL_DEFAULT_TIMEZONE"] = timezone
    app.extensions[LANGUAGE_KEY] = admin.language
    Babel(app, locale_selector=select_language)
    missing = [
        lang for lang in LANGUAGES if lang != "en" and not (translations / lang / "LC_MESSAGES/messages.mo").exists()
    ]
    if missing:
        log.warning(
            "admin: no compiled catalog for %s in %s: pages show English. Run `make install` (pybabel compile).",
            ", ".join(missing),
            translations,
        )


def select_language() -> str:
    configured: str | None = current_app.extensions.get(LANGUAGE_KEY)
    if configured:
        return configured
    return request.accept_languages.best_match(LANGUAGES) or DEFAULT_LANGUAGE


def language() -> str:
    locale = get_locale()
    return locale.language if locale is not None else DEFAULT_LANGUAGE


def _moment(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def when(timestamp: float | None) -> str:
    """`25 ene 2024, 10:30 CET`: a moment in the salon's zone, the zone shown."""
    if not timestamp:
        return ""
    return format_datetime(_moment(timestamp), "d MMM y, HH:mm z")


def clock(timestamp: float | None) -> str:
    """`10:32`: the time of day only, in the salon's zone (for "retrying at 10:32")."""
    return format_datetime(_moment(timestamp), "HH:mm") if timestamp else ""


def relative(timestamp: float | None) -> str:
    """ "in 3 minutes", "hace 2 horas"."""
    if not timestamp:
        return ""
    return format_timedelta(
        timedelta(seconds=timestamp - time.time()), add_direction=True, threshold=1.1, locale=get_locale()
    )


def span(seconds: float | None) -> str:
    """A length of time, roughly: "40 s", "3 min"."""
    if seconds is None:
        return "–"
    return format_timedelta(timedelta(seconds=seconds), format="narrow", threshold=1.1, locale=get_locale())


def money(amount: Any, currency: str | None = None) -> str:
    """`25,00 €`; a value that is not a number is shown as it came."""
    try:
        return format_currency(float(amount), currency or "EUR")
    except (TypeError, ValueError):
        return str(amount)
