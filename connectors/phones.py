"""Phone numbers for the messaging connectors (`whatsapp`, `sms`): E.164, read with the salon's country."""

from __future__ import annotations

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
