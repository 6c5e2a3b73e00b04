"""Which configured actions an event triggers, and their rendered fields. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mappings.config import ActionSpec, BridgeConfig, MappingSpec
from mappings.templates import EntityView, RenderError, render_deadline, render_structure, undefined

DIGEST_TYPE = "schedule.daily"  # the type of a daily digest's record (bridge/digest.py)


@dataclass
class PlannedAction:
    spec: ActionSpec
    skip_reason: str | None = None  # set when the mapping's `when` excluded it


def plan(config: BridgeConfig, envelope: dict[str, Any], context: dict[str, Any]) -> list[PlannedAction]:
    """Every action the event runs now: of every mapping matching it without a `schedule:`, in
    config order (scheduled mappings are planned by bridge.schedules instead)."""
    planned: list[PlannedAction] = []
    for mapping in config.mappings_for(envelope["type"], envelope["tenant_id"]):
        if mapping.schedule is None:
            reason = skip_reason(mapping, context)
            planned.extend(PlannedAction(action, reason) for action in mapping.actions)
    return planned


def skip_reason(mapping: MappingSpec, context: dict[str, Any]) -> str | None:
    """Why the mapping's condition keeps its actions from running, or None when it is true."""
    if mapping.when is None:
        return None
    try:
        if mapping.when.render(context) != "true":
            return f"condition of mapping {mapping.name!r} is false: {mapping.when.source}"
    except RenderError as exc:
        return f"condition of mapping {mapping.name!r} could not be evaluated: {exc}"
    return None


def render_action(spec: ActionSpec, context: dict[str, Any]) -> dict[str, Any]:
    """The action's fields with every template rendered; RenderError names template and field.
    All the action's templates share one time limit (`templates.render_timeout`)."""
    with render_deadline(spec.render_timeout):
        return {name: render_structure(value, context) for name, value in spec.compiled.items()}


def template_context(timezone: str, envelope: dict[str, Any], views: dict[str, EntityView | None]) -> dict[str, Any]:
    """What templates see (connectors get an ActionRequest instead)."""
    return {
        "event": envelope,
        "data": envelope["data"],
        "type": envelope["type"],
        "tenant_id": envelope["tenant_id"],
        "timezone": timezone,
        **views,
    }


def event_context(
    config: BridgeConfig, envelope: dict[str, Any], views: dict[str, EntityView | None]
) -> dict[str, Any]:
    """What templates see for a stored record: a platform event's context, or a digest's."""
    context = template_context(config.model.timezone, envelope, views)
    if envelope.get("type") == DIGEST_TYPE:
        context.update(digest_context(config, envelope["data"]))
    return context


def digest_context(config: BridgeConfig, data: dict[str, Any]) -> dict[str, Any]:
    """A daily digest's context from its record's data (bridge/digest.py): the day's bookings as
    they were when it fired, and the professional's `staff:` entry as the config says now (so an
    e-mail added after a dead send is used by its replay)."""
    professional = data.get("professional")
    bookings = [EntityView(b, "booking", str(b.get("id", ""))) for b in data.get("agenda") or []]
    return {
        "agenda": bookings,
        "staff": _staff(config, professional),
        "professional": professional,
        "date": data.get("date"),
    }


def _staff(config: BridgeConfig, professional: str | None) -> Any:
    """The `staff:` entry as a mapping, each unset part (and a missing entry) an undefined that says what to add."""
    if professional is None:
        return undefined("a salon digest has no `staff:` entry: write the salon's own address in the mapping")
    entry = config.staff_entry(professional)
    if entry is None:
        return undefined(f"no `staff:` entry for professional {professional}: add its email to config.yaml")
    return {
        name: value
        if value is not None
        else undefined(f"the `staff:` entry of professional {professional} has no {name}: add it to config.yaml")
        for name, value in entry.model_dump().items()
    }
