"""Sandboxed templates: filters, escaping per destination, limits, and the messages of failures."""

from __future__ import annotations

import pytest

from mappings.templates import (
    EntityView,
    MissingDataError,
    RenderError,
    TemplateCompileError,
    TemplateEngine,
    money,
    render_deadline,
)

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


BOMBS = [
    pytest.param("{{ '%0200000000d' % 1 }}", "a %-formatted string would be 200,000,012", id="printf-width"),
    pytest.param("{{ '%.200000000f' % 1.5 }}", "a %-formatted string", id="printf-precision"),
    pytest.param("{{ '%0200000000d' | format(1) }}", "the result of the format filter", id="format-filter"),
    pytest.param("{{ '{:>100000000}'.format(1) }}", "a formatted string would be 100,000,0", id="str-format"),
    pytest.param("{{ ('{:>999999}' * 1000).format(*range(1000)) }}", "a formatted string", id="str-format-many"),
    pytest.param("{{ ('%0999999d' * 2) % (1, 2) }}", "a %-formatted string would be 2,000,016", id="printf-many"),
    pytest.param("{{ '%*d' % (100000000, 1) }}", "a %-formatted string would be 100,000,0", id="printf-star"),
    pytest.param("{{ 'x' | center(100000000) }}", "the result of the center filter would be 100,000,000", id="center"),
    pytest.param("{{ 'x'.center(100000000) }}", "the result of str.center()", id="str-center"),
    pytest.param("{{ 'x'.ljust(100000000) }}", "the result of str.ljust()", id="str-ljust"),
    pytest.param("{{ 'x'.zfill(100000000) }}", "the result of str.zfill()", id="str-zfill"),
    pytest.param("{{ ('\t' * 1000).expandtabs(100000) }}", "the result of str.expandtabs()", id="str-expandtabs"),
    pytest.param("{{ ('a\n' * 1000) | indent(100000) }}", "the result of the indent filter", id="indent"),
    pytest.param("{{ ('a ' * 1000) | wordwrap(1, wrapstring='x' * 10000) }}", "the wordwrap filter", id="wordwrap"),
    pytest.param("{{ range(1000) | join('x' * 100000) }}", "the result of the join filter", id="join"),
    pytest.param("{{ ('x' * 10000).join(['a'] * 1000) }}", "the result of str.join()", id="str-join"),
    pytest.param("{{ ('x' * 10000) | replace('x', 'y' * 1000) }}", "the result of the replace filter", id="replace"),
    pytest.param("{{ ('x' * 10000).replace('x', 'y' * 1000) }}", "the result of str.replace()", id="str-replace"),
    pytest.param("{{ ('x' * 10000).translate({120: 'y' * 1000}) }}", "the result of str.translate()", id="translate"),
    pytest.param("{{ range(3) | slice(1000000000) | list }}", "the result of the slice filter", id="slice"),
    pytest.param("{{ range(3) | batch(1000000000, 'x') | list }}", "the result of the batch filter", id="batch"),
    pytest.param("{{ data | tojson(1000000) }}", "the result of the tojson filter", id="tojson-indent"),
    pytest.param("{{ lipsum(1000000) }}", "the result of lipsum()", id="lipsum"),
    # The same with the arguments named, or all given by position: bound to the parameters by name.
    pytest.param("{{ 'x' | center(width=100000000) }}", "the result of the center filter", id="center-named"),
    pytest.param("{{ range(3) | batch(linecount=1000000000) | list }}", "the batch filter", id="batch-named"),
    pytest.param("{{ range(3) | slice(slices=1000000000) | list }}", "the slice filter", id="slice-named"),
    pytest.param("{{ 'a\nb' | indent(width=10000000) }}", "the result of the indent filter", id="indent-named"),
    pytest.param("{{ ('x' * 10000) | replace(old='x', new='y' * 1000) }}", "the replace filter", id="replace-named"),
    pytest.param("{{ ('a ' * 1000) | wordwrap(1, True, 'x' * 10000, True) }}", "wordwrap filter", id="wordwrap-all"),
    pytest.param("{{ data | tojson(indent=1000000) }}", "the result of the tojson filter", id="tojson-named"),
    pytest.param("{{ lipsum(n=1000000) }}", "the result of lipsum()", id="lipsum-named"),
    pytest.param("{{ [1] * 10000000 }}", "a repeated string or list would be 10,000,000", id="list-repeat"),
    pytest.param(
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "a string joined with ~ would be 1,048,576",
        id="doubling-tilde",
    ),
    pytest.param(
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "a sum of strings or lists would be 1,048,576",
        id="doubling-plus",
    ),
    pytest.param(
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s | replace('x', 'xx') %}{% endfor %}",
        "the result of the replace filter would be 1,048,576",
        id="doubling-filter",
    ),
    pytest.param("{{ ((10 ** 100) ** 100) ** 100 }}", "a power would be a number of about", id="power-chain"),
    pytest.param("{% set n = (10 ** 100) ** 100 %}{{ n * n * n * n }}", "a product would be a number of", id="product"),
    pytest.param("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "a macro calls itself", id="recursion"),
    pytest.param(
        "{% set x %}{% for i in range(100000) %}{% for j in range(100) %}" + "x" * 100 + "{% endfor %}{% endfor %}"
        "{% endset %}",
        "the output of a block (set, macro, call or filter) would be 1,000,100",
        id="block-set",
    ),
    pytest.param(
        "{% macro m() %}{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endmacro %}{{ m() | length }}",
        "the output of a block",
        id="macro-output",
    ),
    pytest.param(
        "{% filter length %}{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endfilter %}",
        "the output of a block",
        id="filter-block",
    ),
    pytest.param(
        "{% macro m() %}{{ caller() | length }}{% endmacro %}"
        "{% call m() %}{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endcall %}",
        "the output of a block",
        id="call-block",
    ),
]


@pytest.mark.parametrize(("source", "message"), BOMBS)
def test_memory_bombs_stop_before_they_allocate(source: str, message: str) -> None:
    """Each one builds a value of 10 MB to 10 GB in a single step: refused before it runs, by name."""
    with pytest.raises(RenderError, match=r"^mappings\[0\]\.actions\[0\]\.body: the template was stopped: ") as caught:
        ENGINE.compile(source, "mappings[0].actions[0].body").render({"data": {"a": [1, {"b": 2}]}})
    assert message in str(caught.value)


def test_constant_arithmetic_is_not_run_at_compile_time() -> None:
    """Jinja folds constant expressions while compiling; ours must only be evaluated when rendered."""
    template = ENGINE.compile("{{ '%0200000000d' % 1 }}{{ 'x' | center(100000000) }}", "field")
    assert "200000000" in template.source  # compiled, nothing evaluated: the bomb goes off at render
    with pytest.raises(RenderError, match="a %-formatted string would be 200,000,012 characters or items long"):
        template.render({})


def test_a_render_that_runs_too_long_is_stopped_with_the_limit_named() -> None:
    engine = TemplateEngine("UTC", render_timeout=0.05)
    nested = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(RenderError) as caught:
        engine.compile(nested, "mappings[2].actions[0].text").render({})
    assert str(caught.value) == (
        "mappings[2].actions[0].text: the template was stopped: it ran longer than its limit of 0.05 s "
        "(templates.render_timeout); is a loop much larger than intended?"
    )


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(
            "{% for x in items %}{% for y in items %}{% for z in items %}{% endfor %}{% endfor %}{% endfor %}",
            id="nested-loops",
        ),
        pytest.param("{{ items | batch(1) | sum(start=[]) | length }}", id="sum-of-lists"),
        pytest.param("{% for x in items %}{{ items | select('odd') | list | length }}{% endfor %}", id="filters"),
        pytest.param(
            "{% macro f(n) %}{% for i in range(n) %}{{ f(n - 1) }}{% endfor %}{% endmacro %}{{ f(12) }}", id="macro"
        ),
    ],
)
def test_every_kind_of_long_render_meets_the_deadline(source: str) -> None:
    engine = TemplateEngine("UTC", render_timeout=0.05)
    with pytest.raises(RenderError, match=r"ran longer than its limit of 0\.05 s"):
        engine.compile(source, "field").render({"items": list(range(100_000))})


def test_conditions_have_the_same_limits() -> None:
    engine = TemplateEngine("UTC", render_timeout=0.001)
    with pytest.raises(RenderError, match=r"mappings\[0\]\.when: the template was stopped: the result of the center"):
        engine.compile_condition("'x' | center(100000000) == 'x'", "mappings[0].when").render({})
    slow = engine.compile_condition("items | map('center', 3) | map('trim') | list | length > 0", "mappings[0].when")
    with pytest.raises(RenderError, match=r"mappings\[0\]\.when: .* ran longer than its limit of 0\.001 s"):
        slow.render({"items": list(range(100_000))})


def test_one_deadline_for_all_of_an_actions_templates() -> None:
    engine = TemplateEngine("UTC", render_timeout=10)
    slow = engine.compile("{% for i in range(100000) %}{% for j in range(100) %}{% endfor %}{% endfor %}", "f")
    with pytest.raises(RenderError, match="limit of 0.05 s"), render_deadline(0.05):
        slow.render({})  # its own 10 s do not extend the action's deadline


def test_normal_templates_are_unaffected_by_the_limits() -> None:
    note = "x" * 500_000  # a long field of an event is still usable
    assert render("{{ note | trim | truncate(10) }}", note=note) == "xxxxxxx..."
    assert render("{{ '%05.1f' % 3.14159 }} {{ '{:>6}'.format('ab') }} {{ 'ab' | center(6) }}") == "003.1     ab   ab  "
    assert (
        render("{{ items | join(', ') }} {{ [1, 2] + [3] }} {{ 2 ** 10 }}", items=["a", "b"]) == "a, b [1, 2, 3] 1024"
    )
    assert render("{{ [[1], [2]] | sum(start=[]) }} {{ [1, 2] | sum }}") == "[1, 2] 3"
    assert render("{{ '{name}'.format_map({'name': 'Ana'}) }} {{ 'a' ~ 1 }}") == "Ana a1"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        pytest.param(
            "{{ 25 | money(data.currency) }}", "money: the currency 5 is not a currency code like EUR", id="int"
        ),
        pytest.param("{{ data.amount | money }}", "money: inf is not an amount of money", id="infinite"),
        pytest.param("{{ 1e308 | money }}", "money: 1e+308 is not an amount of money", id="huge"),
        pytest.param("{{ 'ayer' | date }}", "date: 'ayer' is not a date or time (expected 2024-01-25", id="date"),
        pytest.param("{{ data | longdate }}", "longdate: {'currency': 5, 'amount': inf} is not a date", id="dict"),
        pytest.param(
            "{{ '9999-12-31T23:30:00-05:00' | datetime }}",
            "datetime: '9999-12-31T23:30:00-05:00' is outside the dates that can be shown",
            id="out-of-range",
        ),
        pytest.param("{{ data.currency | dictsort }}", "the template failed: ", id="int-through-a-jinja-filter"),
    ],
)
def test_bad_event_data_in_a_filter_is_a_render_error_naming_the_template(source: str, message: str) -> None:
    """RenderError is permanent: the action is dead at once with this reason, not retried as unexpected."""
    with pytest.raises(RenderError) as caught:
        ENGINE.compile(source, "mappings[1].actions[0].text").render({"data": {"currency": 5, "amount": float("inf")}})
    assert str(caught.value).startswith("mappings[1].actions[0].text: ")
    assert message in str(caught.value)


def test_a_local_time_the_clocks_skip_is_shown_as_the_calendar_would() -> None:
    """The shared rule (connectors.base.wall_clock): skipped -> forward by the gap; repeated -> the first."""
    assert render("{{ '2024-03-31T02:30:00' | datetime('%H:%M %Z') }}") == "03:30 CEST"
    assert render("{{ '2024-10-27T02:30:00' | datetime('%H:%M %Z') }}") == "02:30 CEST"
