"""The messaging platforms' callbacks: `/webhooks/whatsapp` (Meta) and `/webhooks/twilio`.

Like the platform's webhooks (bridge/ingest.py): the signature is checked on the raw body before
anything is parsed, and an accepted callback is marked seen, stored and queued in one Redis
script before it is answered, so a redelivery is not processed twice and nothing answered 200
is lost. Workers read it (bridge.jobs.process_callback, bridge/deliveries.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qsl

from flask import Flask, Response, jsonify, request
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from twilio.request_validator import RequestValidator

from bridge.deliveries import callback_key
from bridge.ingest import RETRY_AFTER_SECONDS, STORE_IF_NEW, packed_commands, signature_matches
from bridge.queue import PROCESS_CALLBACK, enqueue, work_queue
from bridge.store import seen_key
from connectors.sms import SmsSettings
from connectors.whatsapp import WhatsAppSettings
from mappings.config import BridgeConfig

log = logging.getLogger("salon_bridge.web")

WHATSAPP_SIGNATURE = "X-Hub-Signature-256"
TWILIO_SIGNATURE = "X-Twilio-Signature"
TWILIO_PATH = "/webhooks/twilio"
# An empty TwiML answer: Twilio sends nothing back to a customer who wrote.
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


class CallbackStore:
    """Marks a callback seen, stores it and queues its job, atomically (the ingest script)."""

    def __init__(self, config: BridgeConfig, redis: Redis, queue: Queue):
        self.config = config
        self.redis = redis
        self.queue = queue
        self._store_if_new = redis.register_script(STORE_IF_NEW)

    def store(self, source: str, connector: str, body: bytes, dedupe_id: bytes) -> bool:
        """False for a duplicate: the same callback was accepted before (within webhook.dedupe_window)."""
        key = "c-" + hashlib.sha256(source.encode() + b"\0" + dedupe_id).hexdigest()[:40]
        now = time.time()
        recorder = self.redis.pipeline(transaction=True)
        recorder.multi()
        fields = {"source": source, "connector": connector, "body": body, "received_at": repr(now)}
        recorder.hset(callback_key(key), mapping=fields)  # type: ignore[arg-type]
        recorder.expire(callback_key(key), int(self.config.model.retention.events))
        enqueue(self.queue, PROCESS_CALLBACK, key, job_id=key, pipeline=recorder)
        window = int(self.config.webhook.dedupe_window)
        return bool(self._store_if_new(keys=[seen_key(key)], args=[now, window, packed_commands(recorder)]))


def whatsapp_connectors(config: BridgeConfig) -> dict[str, WhatsAppSettings]:
    return {n: s.settings for n, s in config.connectors.items() if isinstance(s.settings, WhatsAppSettings)}


def twilio_connectors(config: BridgeConfig) -> dict[str, SmsSettings]:
    return {n: s.settings for n, s in config.connectors.items() if isinstance(s.settings, SmsSettings)}


def whatsapp_sender(config: BridgeConfig, body: bytes, signature: str | None) -> str | None:
    """The whatsapp connector whose app_secret signed `body` (X-Hub-Signature-256), else None."""
    for name, settings in whatsapp_connectors(config).items():
        if signature_matches([settings.app_secret], body, signature):
            return name
    return None


def twilio_sender(config: BridgeConfig, params: dict[str, str], signature: str | None, query: str) -> str | None:
    """The sms connector whose auth_token signed the request (the SDK's RequestValidator, over the
    URL Twilio was given: public_url + /webhooks/twilio, and its query string), else None."""
    if not signature:
        return None
    for name, settings in twilio_connectors(config).items():
        if not settings.public_url:
            continue
        url = settings.public_url.rstrip("/") + TWILIO_PATH + (f"?{query}" if query else "")
        if RequestValidator(settings.auth_token).validate(url, params, signature):
            return name
    return None


def register_callbacks(app: Flask, config: BridgeConfig, redis: Redis) -> None:
    store = CallbackStore(config, redis, work_queue(redis))

    def stored_then(answer: Any, source: str, connector: str, body: bytes, dedupe_id: bytes) -> Any:
        """`answer`, once the callback is stored (or known already); 503 when Redis cannot take it."""
        try:
            new = store.store(source, connector, body, dedupe_id)
        except RedisError as exc:
            log.warning("%s callback: cannot store it (%s): answered 503", source, type(exc).__name__)
            message = f"cannot store the callback right now ({type(exc).__name__}); retry later"
            return jsonify({"error": message}), 503, {"Retry-After": str(RETRY_AFTER_SECONDS)}
        log.info("%s callback connector=%s outcome=%s", source, connector, "accepted" if new else "duplicate")
        return answer

    @app.get("/webhooks/whatsapp")
    def whatsapp_subscription():
        """Meta's subscription check: echo hub.challenge when hub.verify_token is ours."""
        args = request.args
        given = args.get("hub.verify_token", "").encode()
        tokens = [s.verify_token for s in whatsapp_connectors(config).values() if s.verify_token]
        matched = False
        for token in tokens:
            matched |= hmac.compare_digest(token.encode(), given)
        if args.get("hub.mode") != "subscribe" or not matched:
            log.warning("whatsapp subscription check refused: wrong hub.mode or hub.verify_token")
            return jsonify({"error": "hub.verify_token does not match the whatsapp connector's verify_token"}), 403
        challenge = args.get("hub.challenge", "")[:200]
        return Response(challenge, mimetype="text/plain", headers={"X-Content-Type-Options": "nosniff"})

    @app.post("/webhooks/whatsapp")
    def whatsapp_callback():
        body = request.get_data(cache=False)
        signature = request.headers.get(WHATSAPP_SIGNATURE)
        if not whatsapp_connectors(config):
            return jsonify({"error": "no whatsapp connector is configured"}), 404
        connector = whatsapp_sender(config, body, signature)
        if connector is None:
            what = "missing" if not signature else "does not match the body (check the connector's app_secret)"
            log.warning("whatsapp callback refused: %s %s", WHATSAPP_SIGNATURE, what)
            return jsonify({"error": f"{WHATSAPP_SIGNATURE} {what}"}), 401
        try:
            json.loads(body)
        except ValueError as exc:
            return jsonify({"error": f"body is not valid JSON: {exc}"}), 400
        # Meta redelivers the same body.
        return stored_then((jsonify({"received": True}), 200), "whatsapp", connector, body, body)

    @app.post(TWILIO_PATH)
    def twilio_callback():
        body = request.get_data(cache=False)
        signature = request.headers.get(TWILIO_SIGNATURE)
        if not twilio_connectors(config):
            return jsonify({"error": "no sms connector is configured"}), 404
        try:  # Twilio signs the URL and the form's values: they are read first, stored only if it matches
            params = dict(parse_qsl(body.decode(), keep_blank_values=True))
        except UnicodeDecodeError:
            params = {}
        connector = twilio_sender(config, params, signature, request.query_string.decode("latin-1"))
        if connector is None:
            what = "missing" if not signature else "does not match (check auth_token and public_url)"
            log.warning("twilio callback refused: %s %s", TWILIO_SIGNATURE, what)
            return jsonify({"error": f"{TWILIO_SIGNATURE} {what}"}), 403
        sid, status = params.get("MessageSid", ""), params.get("MessageStatus") or params.get("SmsStatus", "")
        dedupe_id = f"{sid}:{status}".encode() if sid and status else body  # stable across redeliveries
        return stored_then(Response(EMPTY_TWIML, mimetype="text/xml"), "twilio", connector, body, dedupe_id)
