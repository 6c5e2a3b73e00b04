"""bridge.compact: the stored form of bodies and action states."""

from __future__ import annotations

import hashlib
import json

from bridge import compact
from tests.harness import encode, sample


def test_the_dictionary_never_changes() -> None:
    """Stored values are read with it for as long as they are kept: a new one needs a new tag."""
    assert hashlib.sha256(compact.DICTIONARY).hexdigest()[:16] == "835537c87b934acf"
    assert compact.TAG == b"\x00z1"


def test_packing_round_trips_any_json_text() -> None:
    for raw in [encode(sample("booking.created")), b"{}", json.dumps({"n": "🙂 ñ \u0000"}).encode()]:
        stored = compact.pack(raw)
        assert compact.is_packed(stored) and compact.unpack(stored) == raw


def test_a_value_that_is_not_packed_is_read_as_it_is() -> None:
    raw = encode(sample("order.shipped"))
    assert not compact.is_packed(raw) and compact.unpack(raw) == raw


def test_a_webhook_body_unlike_the_samples_packs_to_under_two_thirds_of_its_size() -> None:
    event = sample("booking.created")
    event |= {"id": "evt_9f8e7d6c5b4a", "tenant_id": "peluqueria-lola", "created": "2026-11-30T17:45:12Z"}
    event["data"]["booking"] |= {
        "id": 884213, "codigo": "QX7T2MPL", "fecha": "2026-12-09", "hora_inicio": "17:15", "hora_fin": "18:00",
        "servicios": [{"id": 3, "nombre": "Tinte raíz y peinado", "precio": 42.5, "duracion_minutos": 45}],
        "profesional": {"id": 12, "nombre": "Lucía Fernández"},
        "cliente": {"id": 99120, "nombre": "Marta Ruiz", "email": "marta.ruiz@correo.es", "telefono": "+34655012398"},
        "total": 42.5, "notas": "Alergia al amoniaco", "created_at": "2026-11-30T17:45:12Z",
    }  # fmt: skip
    body = encode(event)
    assert len(compact.pack(body)) < len(body) * 2 / 3
