"""/admin/preview: `salon-bridge preview` for a config file the server can read (no upload)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from flask import render_template, request

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
            problems.append(f"since: a duration like 7d, 12h or 30m, got {since_text!r}")
        else:
            try:
                new = load_config(path, unused=("admin", "metrics"))
            except ConfigError as exc:
                problems = exc.problems
            else:
                zone = ZoneInfo(rt.config.model.timezone)
                result = preview(rt, new, since, 1000)
                shown = render_text(result, lambda t: datetime.fromtimestamp(t, zone).strftime("%Y-%m-%d %H:%M"))
                text = f"{result.events} stored event(s) compared; nothing was sent.\n\n{shown}"
    return render_template("admin/preview.html", path=path, since=since_text, problems=problems, text=text)
