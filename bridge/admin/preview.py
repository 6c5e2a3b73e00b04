"""/admin/preview: `salon-bridge preview` for a config file the server can read (no upload)."""

from __future__ import annotations

from flask import render_template, request
from flask_babel import gettext as _

from bridge.admin.i18n import when
from bridge.admin.views import _rt, blueprint
from bridge.preview import preview, render_text
from mappings.config import ConfigError, load_config, parse_duration


@blueprint.get("/preview")
def config_preview() -> str | tuple[str, int]:
    rt = _rt()
    path = request.args.get("path", "").strip() or rt.config.path
    since_text = request.args.get("since", "7d").strip()
    problems: list[str] = []
    text = ""
    if request.args.get("path"):
        try:
            since = float(parse_duration(since_text))
        except (ValueError, TypeError):
            problems.append(_("since: a duration like 7d, 12h or 30m, got %(value)s", value=repr(since_text)))
        else:
            try:
                new = load_config(path, unused=("admin", "metrics"))
            except ConfigError as exc:
                problems = exc.problems
            else:
                result = preview(rt, new, since, 1000)
                shown = render_text(result, when)
                text = _("%(count)s stored event(s) compared; nothing was sent.", count=result.events) + f"\n\n{shown}"
    return render_template("admin/preview.html", path=path, since=since_text, problems=problems, text=text)
