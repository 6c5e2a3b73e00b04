"""The admin's language (bridge/admin/i18n.py): Spanish by default, English on request, the config
over the browser; the gettext catalog complete and compiled; a missing translation shows the
English source; times in the salon's zone with the zone shown, money for the locale."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from babel.messages.catalog import Message
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po

from bridge.admin import i18n, labels
from tests.fakes.http_server import CapturingServer
from tests.harness import Bridge, sample
from tests.test_admin import PASSWORD_HASH, admin_config, login

ADMIN = Path(i18n.__file__).parent
CATALOG = ADMIN / "translations" / "es" / "LC_MESSAGES" / "messages.po"
# Keywords as `make messages` extracts them (Makefile).
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "_l": None, "_e": (2,)}
METHODS = [("**.py", "python"), ("**/templates/**.html", "jinja2")]


def spanish_config(url: str, **fields: str) -> str:
    """An admin without `language` (the tests' admin_config sets English), or with the one given."""
    text = admin_config(url, username="owner", password_hash=PASSWORD_HASH, **fields)
    return text if fields else text.replace('  language: "en"\n', "")


def _plain(value: object) -> object:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def texts(messages: Iterable[Message]) -> dict[object, object]:
    """msgid -> msgstr of a catalog (plural ones as tuples)."""
    return {_plain(m.id): _plain(m.string) for m in messages if m.id}


@pytest.mark.parametrize(
    ("fields", "accept", "lang", "text"),
    [
        pytest.param({}, None, "es", "Entrar", id="spanish-by-default"),
        pytest.param({}, "en-GB,en;q=0.9", "en", "Log in", id="the-browser-asks-english"),
        pytest.param({}, "fr-FR,es;q=0.5,en;q=0.4", "es", "Entrar", id="the-browser-prefers-spanish-over-english"),
        pytest.param({}, "de-DE", "es", "Entrar", id="no-known-language-is-spanish"),
        pytest.param({"language": "es"}, "en", "es", "Entrar", id="the-config-over-the-browser"),
        pytest.param({"language": "en"}, "es", "en", "Log in", id="english-in-the-config"),
    ],
)
def test_the_language(
    make_bridge: Callable[[str], Bridge],
    destination: CapturingServer,
    fields: dict[str, str],
    accept: str | None,
    lang: str,
    text: str,
) -> None:
    bridge = make_bridge(spanish_config(destination.url, **fields))
    headers = {"Accept-Language": accept} if accept else {}
    page = bridge.app.test_client().get("/admin/login", headers=headers).text
    assert f'<html lang="{lang}">' in page and f'<button type="submit" class="primary">{text}</button>' in page


def test_a_bad_language_in_the_config_is_refused_with_its_place(destination: CapturingServer) -> None:
    from mappings.config import ConfigError, load_config_text

    with pytest.raises(ConfigError) as caught:
        load_config_text(spanish_config(destination.url, language="fr"), "config.yaml", environ={})
    assert "admin.language" in str(caught.value) and "'es'" in str(caught.value)


def test_every_text_of_the_admin_is_in_the_spanish_catalog_and_compiled() -> None:
    """`make messages` was run after the last change of a text, every one is translated, and the
    .mo that `make install` compiled is the .po of the repository."""
    extracted = {
        (m[2][0] if isinstance(m[2], (tuple, list)) else m[2])
        for m in extract_from_dir(ADMIN, METHODS, keywords=KEYWORDS)  # type: ignore[arg-type]
    }
    with CATALOG.open("rb") as source:
        catalog = read_po(source)
    entries = {(m.id[0] if isinstance(m.id, tuple) else m.id): m for m in catalog if m.id}
    assert sorted(extracted - set(entries)) == [], "run `make messages` and translate the new texts"
    untranslated = [
        key for key, m in entries.items() if not (all(m.string) if isinstance(m.string, tuple) else m.string)
    ]
    assert untranslated == [] and not any(m.fuzzy for m in entries.values())
    with CATALOG.with_suffix(".mo").open("rb") as compiled:
        mo = read_mo(compiled)
    assert texts(mo) == texts(catalog), "run `make install`"


def test_a_missing_translation_shows_the_english_text(
    make_bridge: Callable[[str], Bridge], destination: CapturingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with CATALOG.open("rb") as source:
        catalog = read_po(source)
    catalog.delete("Password")
    folder = tmp_path / "translations" / "es" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    with (folder / "messages.mo").open("wb") as target:
        write_mo(target, catalog)
    monkeypatch.setattr(i18n, "TRANSLATIONS", tmp_path / "translations")
    page = make_bridge(spanish_config(destination.url)).app.test_client().get("/admin/login").text
    assert "Usuario" in page and "Contraseña" not in page and "Password" in page


def test_times_money_and_unknown_types_in_each_language(
    make_bridge: Callable[[str], Bridge], destination: CapturingServer
) -> None:
    bridge = make_bridge(spanish_config(destination.url))
    moment = 1706175000.0  # 2024-01-25 09:30 UTC, 10:30 in Madrid
    for accept, expected in (
        ("es", ("25 ene 2024, 10:30 CET", "10:30", "25,00\xa0€", "Evento schedule.daily", "Reserva creada")),
        ("en", ("25 Jan 2024, 10:30 +0100", "10:30", "€25.00", "Event schedule.daily", "Booking created")),
    ):
        with bridge.app.test_request_context("/admin/", headers={"Accept-Language": accept}):
            shown = (
                i18n.when(moment),
                i18n.clock(moment),
                i18n.money(25),
                labels.event_type_name("schedule.daily"),
                labels.event_type_name("booking.created"),
            )
        assert shown == expected


def test_the_list_in_spanish(make_bridge: Callable[[str], Bridge], destination: CapturingServer) -> None:
    bridge = make_bridge(spanish_config(destination.url))
    destination.respond_with(400, "no")
    for event_type in ("booking.created", "payment.failed"):
        bridge.post(sample(event_type))
        bridge.drain()
    client = bridge.app.test_client()
    assert login(client).status_code == 303
    page = client.get("/admin/").text
    assert '<span class="type">Reserva creada</span>' in page and '<span class="type">Pago fallido</span>' in page
    assert 'data-status="dead">Fallido</span> <span class="reason">El destino lo rechazó.</span>' in page
    assert 'data-status="done">Enviado</span>' in page and "horas en Europe/Madrid" in page
