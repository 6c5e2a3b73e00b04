"""Phone numbers for the messaging connectors (`whatsapp`, `sms`): E.164, read with the salon's country."""

from __future__ import annotations

import string
import unicodedata
from typing import Annotated

import phonenumbers
from pydantic import AfterValidator

from connectors.base import PermanentError


def check_region(region: str) -> str:
    """A config's `default_region`, upper-cased; ValueError (shown at load) when not a country code."""
    region = region.upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"default_region must be a two-letter country code such as ES or MX, got {region!r}")
    return region


def normalise_phone(raw: str, region: str) -> str:
    """`raw` as E.164 (+34612345678); PermanentError saying why when it is not a valid number."""
    text = (raw or "").strip()
    if not text:
        raise PermanentError("the customer has no phone number to send to")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        raise PermanentError(f"{text!r} is not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise PermanentError(f"{text!r} is not a valid phone number (read with default country {region})")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# A settings field holding a country code (`default_region: ES`), checked at load.
Region = Annotated[str, AfterValidator(check_region)]


# What a customer writes to stop (or restart) messages, compared by `keyword`.
OPT_OUT_WORDS = ["BAJA", "STOP", "CANCELAR SUSCRIPCION"]
OPT_IN_WORDS = ["ALTA", "START"]
_EDGES = string.whitespace + string.punctuation + "¡¿«»“”‘’…"


def keyword(text: str) -> str:
    """A message as a keyword: upper case, without accents, surrounding spaces and punctuation,
    inner spaces single ("  ¡Baja! " and "cancelar   suscripción" read BAJA, CANCELAR SUSCRIPCION)."""
    plain = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    return " ".join(plain.strip(_EDGES).upper().split())


def e164_of(wa_id: str) -> str:
    """A phone as WhatsApp and Twilio name a sender (`34612345678`, `+34612345678`), in E.164."""
    digits = "".join(ch for ch in wa_id if ch.isdigit())
    return "+" + digits if digits else ""
