"""Which configured actions an event triggers, and their rendered fields. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mappings.config import ActionSpec, BridgeConfig, MappingSpec
from mappings.templates import EntityView, RenderError, render_deadline, render_structure


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
