"""Sandboxed templates: filters, escaping per destination, limits, and the messages of failures."""

from __future__ import annotations

import pytest

from mappings.templates import EntityView, MissingDataError, RenderError, TemplateCompileError, TemplateEngine, money

ENGINE = TemplateEngine("Europe/Madrid")


def render(source: str, escaping: str = "none", **context: object) -> str:
    return ENGINE.compile(source, "field", escaping).render(context)


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        (25, "EUR", "25,00 €"),
        (25.5, None, "25,50 €"),
        (1234567.891, "EUR", "1.234.567,89 €"),
        (-3.005, "EUR", "-3,01 €"),
        ("19.99", "USD", "19,99 US$"),
        (7, "CHF", "7,00 CHF"),
    ],
)
def test_money(amount: object, currency: str | None, expected: str) -> None:
    assert money(amount, currency) == expected


def test_money_refuses_what_is_not_a_number() -> None:
    with pytest.raises(RenderError, match="money: 'mucho' is not a number"):
        render("{{ x | money }}", x="mucho")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ '2024-01-25' | date }}", "25/01/2024"),
        ("{{ '2024-01-25' | longdate }}", "jueves, 25 de enero de 2024"),
        ("{{ '10:30' | time }}", "10:30"),
        # ISO timestamps are converted to the salon's zone: 10:30 UTC is 11:30 in Madrid in winter...
        ("{{ '2024-01-20T10:30:00Z' | datetime }}", "20/01/2024 11:30"),
        # ...and 12:30 in summer.
        ("{{ '2024-07-20T10:30:00Z' | time }}", "12:30"),
        ("{{ '2024-03-31T00:59:00+00:00' | datetime('%H:%M %Z') }}", "01:59 CET"),
        ("{{ '2024-03-31T01:00:00+00:00' | datetime('%H:%M %Z') }}", "03:00 CEST"),
    ],
)
def test_dates_and_times_in_the_salon_zone(source: str, expected: str) -> None:
    assert render(source) == expected


def test_slack_escaping_applies_to_event_values_only() -> None:
    name = "<!channel> & <https://evil.example|click>"
    out = render("*Cliente:* {{ name }} <@U123>", "slack", name=name)
    assert out == "*Cliente:* &lt;!channel&gt; &amp; &lt;https://evil.example|click&gt; <@U123>"
    assert render("{{ link | raw }}", "slack", link="<https://ok.example|ok>") == "<https://ok.example|ok>"


def test_html_escaping_and_raw() -> None:
    assert render("<b>{{ n }}</b>", "html", n="<script>alert(1)</script>") == (
        "<b>&lt;script&gt;alert(1)&lt;/script&gt;</b>"
    )
    assert render("{{ n | raw }}", "html", n="<i>ok</i>") == "<i>ok</i>"


def test_plain_templates_do_not_escape() -> None:
    assert render("{{ n }}", n="a & <b>") == "a & <b>"


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("{{ ''.__class__.__mro__ }}", id="mro"),
        pytest.param("{{ data.__class__.__subclasses__() }}", id="subclasses"),
        pytest.param("{{ data.update({'x': 1}) }}", id="mutation"),
        pytest.param("{{ 'a' * 10000000 }}", id="huge-repeat"),
        pytest.param("{{ 10 ** 10000 }}", id="huge-power"),
        pytest.param("{% for i in range(100000) %}{{ 'xxxxxxxxxx' }}{% endfor %}", id="huge-loop"),
    ],
)
def test_the_sandbox_stops_escapes_and_unbounded_output(source: str) -> None:
    with pytest.raises(RenderError):
        render(source, data={"a": 1})


def test_output_cap_message() -> None:
    with pytest.raises(RenderError, match="output longer than 100000 characters"):
        render("{% for i in range(20000) %}abcdefghij{% endfor %}")


def test_a_missing_field_names_the_template_and_the_field() -> None:
    with pytest.raises(RenderError) as caught:
        render("{{ data.booking.cliente.nombre }}", data={"booking": {"id": 1}})
    assert (
        str(caught.value)
        == "field: the template reads a field the event does not have ('dict object' has no attribute 'cliente')"
    )


def test_a_field_missing_from_memory_names_the_entity_and_the_event() -> None:
    order = EntityView({"id": 789, "numero": "PED-1", "cliente": {"id": 4}}, "order", "789")
    with pytest.raises(MissingDataError) as caught:
        render("{{ order.cliente.email }}", order=order)
    assert str(caught.value) == "field: order 789: cliente.email unknown (order.created not received)"
    assert render("{{ order.cliente.email | default('sin e-mail') }}", order=order) == "sin e-mail"
    assert render("{{ order.tracking is defined }}", order=order) == "False"


def test_dict_keys_come_before_dict_methods() -> None:
    order = {"items": [{"nombre": "Champú"}], "values": 3}
    assert render("{{ order.items[0].nombre }} {{ order.values }}", order=order) == "Champú 3"
    assert render("{{ order.get('missing', 'x') }}", order=order) == "x"


def test_conditions() -> None:
    condition = ENGINE.compile_condition("data.total > 20 and type == 'booking.created'", "when")
    assert condition.render({"data": {"total": 25}, "type": "booking.created"}) == "true"
    assert condition.render({"data": {"total": 5}, "type": "booking.created"}) == "false"
    with pytest.raises(TemplateCompileError):
        ENGINE.compile_condition("data.total >", "when")
