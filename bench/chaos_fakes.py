"""The chaos run's destinations on 127.0.0.1 (an HTTP endpoint, Slack, an SMTP server and Google
Calendar, the last three being the test suite's fakes), the faults injected into them, and the
bridge config that sends every event type to them."""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.fakes.google_server import FakeGoogle, generate_key, key_file_info
from tests.fakes.slack_server import DEFAULT_TOKEN, FakeSlack
from tests.fakes.smtp_server import SmtpServer

SECRET = "chaos-run-secret-not-for-production"
SERVICE_ACCOUNT = "salon-bridge@salon-chaos.iam.gserviceaccount.com"
CALENDARS = {"5": "carlos@example.com", "7": "lucia@example.com"}
DEFAULT_CALENDAR = "salon@example.com"
SLACK_CHANNELS = ("caja", "recepcion", "tienda")


def _quiet_about_killed_clients(server: ThreadingHTTPServer | None) -> None:
    """A worker SIGKILLed with a keep-alive connection open resets it: expected here, not worth a traceback."""
    if server is None:
        return
    report = server.handle_error

    def handle_error(request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            report(request, client_address)

    server.handle_error = handle_error  # type: ignore[method-assign]


def _server_of(fake: Any) -> ThreadingHTTPServer | None:
    """The socket server inside a test fake (its layout is the fakes' own business: None if not found)."""
    inner = getattr(fake, "_http", fake)
    server = getattr(inner, "_server", None)
    return server if isinstance(server, ThreadingHTTPServer) else None


@dataclass
class HttpHit:
    """One request the HTTP destination received, and what it answered."""

    at: float
    path: str
    idempotency_key: str
    body: Any
    status: int


class HttpDestination:
    """Your own system: records every request; answers 503 (Retry-After: 1) to a share of them."""

    def __init__(self, flaky: float, seed: int, latency: float = 0.0):
        self.hits: list[HttpHit] = []
        self.flaky = flaky
        self.latency = latency
        self.injected = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        destination = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with destination._lock:
                    pause = destination._rng.uniform(0, 2 * destination.latency)
                    fail = destination._rng.random() < destination.flaky
                    status = 503 if fail else 200
                    destination.injected += fail
                    destination.hits.append(
                        HttpHit(time.time(), self.path, self.headers.get("Idempotency-Key", ""), body, status)
                    )
                time.sleep(pause)  # a real system takes a while: a killed worker is often mid-request
                answer = b'{"error": "busy"}' if fail else b'{"ok": true}'
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    if fail:
                        self.send_header("Retry-After", "1")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the worker was killed while waiting: the request still counts as received

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        _quiet_about_killed_clients(self._server)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HttpDestination:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class SlowSlack(FakeSlack):
    """The test suite's fake Slack, answering after a random pause (mean `latency`) like the real one."""

    def __init__(self, latency: float, seed: int):
        super().__init__()
        self.latency = latency
        self._pauses = random.Random(seed)
        _quiet_about_killed_clients(_server_of(self))

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        time.sleep(self._pauses.uniform(0, 2 * self.latency))
        super()._handle(request)


class SlowGoogle(FakeGoogle):
    """The test suite's fake Google, answering after a random pause (mean `latency`)."""

    def __init__(self, latency: float, seed: int):
        super().__init__()
        self.latency = latency
        self._pauses = random.Random(seed)
        _quiet_about_killed_clients(_server_of(self))

    def dispatch(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict, bytes]:
        time.sleep(self._pauses.uniform(0, 2 * self.latency))
        return super().dispatch(method, raw_path, headers, body)


class Destinations:
    """Every fake destination, started together and stopped together."""

    def __init__(self, workdir: Path, seed: int, http_flaky: float, latency: float):
        self.http = HttpDestination(http_flaky, seed, latency)
        self.slack = SlowSlack(latency, seed + 2)
        for name in SLACK_CHANNELS:
            self.slack.add_channel(name)
        self.smtp = SmtpServer(mode="plain")
        self.google = SlowGoogle(latency, seed + 3)
        key = generate_key()
        self.google.add_service_account(SERVICE_ACCOUNT, key.public_key())
        for calendar_id in [DEFAULT_CALENDAR, *CALENDARS.values()]:
            self.google.add_calendar(calendar_id, {SERVICE_ACCOUNT: "writer"})
        self.key_file = workdir / "google-key.json"
        self._key = key
        self.injected: dict[str, int] = {"slack 429": 0, "smtp 451": 0, "google 503": 0}
        self._rng = random.Random(seed + 1)
        self._started: list[Any] = []

    def start(self) -> None:
        for fake in (self.http, self.slack, self.smtp, self.google):
            fake.start()
            self._started.append(fake)
        info = key_file_info(self._key, SERVICE_ACCOUNT, self.google.token_uri)
        self.key_file.write_text(json.dumps(info), encoding="utf-8")
        self.key_file.chmod(0o600)

    def stop(self) -> None:
        while self._started:
            fake = self._started.pop()
            try:
                fake.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"chaos: stopping {type(fake).__name__} failed: {exc}")

    def inject_one(self) -> str:
        """One transient fault at a random destination (each must end in a retry, never a dead letter)."""
        kind = self._rng.choice(list(self.injected))
        if kind == "slack 429":
            self.slack.fail("chat.postMessage", "ratelimited", status=429, headers={"Retry-After": "1"})
        elif kind == "smtp 451":
            self.smtp.respond_with("DATA", "451 4.3.0 Try again later")
        else:
            self.google.fail(503, "backendError", "The service is currently unavailable.")
        self.injected[kind] += 1
        return kind

    def config_text(self, redis_url: str, retry_schedule: list[float]) -> str:
        return CONFIG_TEMPLATE.format(
            secret=SECRET,
            redis_url=redis_url,
            schedule=json.dumps(retry_schedule),
            http_url=self.http.url,
            slack_api=self.slack.api_url,
            slack_token=DEFAULT_TOKEN,
            smtp_port=self.smtp.port,
            key_file=self.key_file,
            google_endpoint=self.google.api_endpoint,
            default_calendar=DEFAULT_CALENDAR,
            calendars=json.dumps(CALENDARS),
        )


# What each event type must do, by action id ("mapping/action"); the config below must agree.
EXPECTED_ACTIONS: dict[str, list[str]] = {
    "booking.created": ["crm-bookings/booking", "agenda/sync", "booking-confirmed-email/customer"],
    "booking.updated": ["crm-bookings/booking", "agenda/sync"],
    "booking.cancelled": [
        "crm-bookings/booking",
        "agenda/sync",
        "slack-booking-cancelled/recepcion",
        "booking-cancelled-email/customer",
    ],
    "booking.completed": ["crm-bookings/booking", "agenda/sync"],
    "booking.no_show": ["crm-bookings/booking", "agenda/sync", "slack-no-show/recepcion"],
    "payment.completed": ["ledger-payments/payment"],
    "payment.failed": ["ledger-payments/payment", "slack-payment-failed/caja"],
    "payment.refunded": ["ledger-payments/payment", "slack-payment-refunded/caja"],
    "customer.created": ["crm-customers/customer"],
    "customer.updated": ["crm-customers/customer"],
    "order.created": ["crm-big-orders/order", "slack-new-order/tienda"],
    "order.shipped": ["order-shipped-email/customer"],
    "order.delivered": ["order-delivered-email/customer"],
}
CONNECTOR_OF = {"crm": "http", "ledger": "http", "staff": "slack", "mailer": "email", "agenda": "google_calendar"}
BIG_ORDER = 100.0  # crm-big-orders runs only for orders of at least this total (else: skipped)

# The shipped examples (config.example.yaml, docs/examples/google_calendar.yaml) with every connector
# pointed at a fake, booking e-mails switched on, and " · ref <event id>" at the end of each Slack text
# so that a message can be traced back to its event.
CONFIG_TEMPLATE = """\
version: 1
timezone: Europe/Madrid
webhook:
  secrets: ["{secret}"]
redis_url: "{redis_url}"
retry:
  schedule: {schedule}
  jitter: 0.1

connectors:
  crm:
    type: http
    url: "{http_url}/crm"
    headers: {{Authorization: "Bearer chaos-token"}}
    timeout: 10
  ledger:
    type: http
    url: "{http_url}/ledger"
    timeout: 10
  staff:
    type: slack
    token: "{slack_token}"
    base_url: "{slack_api}"
  mailer:
    type: email
    host: "127.0.0.1"
    port: {smtp_port}
    security: none
    from: "Salón Caos <reservas@salon.example>"
    reply_to: "hola@salon.example"
    timeout: 10
  agenda:
    type: google_calendar
    credentials_file: "{key_file}"
    api_endpoint: "{google_endpoint}"
    timezone: Europe/Madrid
    calendars:
      default: "{default_calendar}"
      by_professional: {calendars}

mappings:
  - name: crm-bookings
    on: ["booking.*"]
    actions:
      - connector: crm
        name: booking
        action: sync
        body:
          event: "{{{{ event.id }}}}"
          type: "{{{{ type }}}}"
          booking_id: "{{{{ booking.id }}}}"
          estado: "{{{{ booking.estado }}}}"
          fecha: "{{{{ booking.fecha }}}}"
          hora_inicio: "{{{{ booking.hora_inicio }}}}"
          profesional: "{{{{ booking.profesional.id }}}}"

  - name: crm-customers
    on: ["customer.*"]
    actions:
      - connector: crm
        name: customer
        action: sync
        body:
          event: "{{{{ event.id }}}}"
          customer_id: "{{{{ customer.id }}}}"
          nombre: "{{{{ customer.nombre }}}}"
          email: "{{{{ customer.email }}}}"

  - name: crm-big-orders
    on: ["order.created"]
    when: "data.order.total >= 100"
    actions:
      - connector: crm
        name: order
        body:
          order: "{{{{ order.numero }}}}"
          customer: "{{{{ order.cliente.nombre }}}}"
          total: "{{{{ order.total | money }}}}"

  - name: ledger-payments
    on: ["payment.*"]
    actions:
      - connector: ledger
        name: payment
        body:
          event: "{{{{ event.id }}}}"
          type: "{{{{ type }}}}"
          booking_id: "{{{{ data.booking.id }}}}"
          amount: "{{{{ data.payment.amount if data.payment is defined else data.refund.amount }}}}"

  - name: slack-payment-failed
    on: ["payment.failed"]
    actions:
      - connector: staff
        name: caja
        action: post_message
        channel: "#caja"
        thread_key: "booking-{{{{ data.booking.id }}}}"
        text: >-
          :x: *Pago fallido* de {{{{ data.payment.amount | money(data.payment.currency) }}}}
          {{%- if booking.codigo is defined %}} · reserva {{{{ booking.codigo }}}}{{% endif %}}
          {{%- if booking.cliente is defined %}} · {{{{ booking.cliente.nombre }}}}{{% endif %}}
          {{%- if booking.fecha is defined %}} · cita del {{{{ booking.fecha | date }}}}{{% endif %}}
          · {{{{ data.payment.error_message }}}} ({{{{ data.payment.error_code }}}}) · ref {{{{ event.id }}}}

  - name: slack-payment-refunded
    on: ["payment.refunded"]
    actions:
      - connector: staff
        name: caja
        action: post_message
        channel: "#caja"
        thread_key: "booking-{{{{ data.booking.id }}}}"
        text: >-
          :leftwards_arrow_with_hook: *Reembolso* de {{{{ data.refund.amount | money(data.refund.currency) }}}}
          {{%- if booking.codigo is defined %}} · reserva {{{{ booking.codigo }}}}{{% endif %}}
          {{%- if booking.cliente is defined %}} · {{{{ booking.cliente.nombre }}}}{{% endif %}}
          · Motivo: {{{{ data.refund.reason }}}} · ref {{{{ event.id }}}}

  - name: slack-no-show
    on: ["booking.no_show"]
    actions:
      - connector: staff
        name: recepcion
        action: post_message
        channel: "#recepcion"
        thread_key: "booking-{{{{ data.booking.id }}}}"
        text: >-
          :no_entry_sign: *No se presentó:*
          {{% if booking.cliente is defined %}}{{{{ booking.cliente.nombre }}}}{{% else %}}sin datos{{% endif %}}
          {{%- if booking.fecha is defined %}} · {{{{ booking.fecha | longdate }}}}{{% endif %}}
          {{%- if booking.hora_inicio is defined %}} a las {{{{ booking.hora_inicio | time }}}}{{% endif %}}
          {{%- if booking.profesional is defined %}} · con {{{{ booking.profesional.nombre }}}}{{% endif %}}
          {{%- if booking.codigo is defined %}} · reserva {{{{ booking.codigo }}}}{{% endif %}}
          {{%- if booking.notas is defined and booking.notas %}} · Notas: {{{{ booking.notas }}}}{{% endif %}}
          · ref {{{{ event.id }}}}

  - name: slack-booking-cancelled
    on: ["booking.cancelled"]
    actions:
      - connector: staff
        name: recepcion
        action: post_message
        channel: "#recepcion"
        thread_key: "booking-{{{{ data.booking.id }}}}"
        text: >-
          :wastebasket: *Reserva cancelada*:
          {{% if booking.cliente is defined %}}{{{{ booking.cliente.nombre }}}}{{% else %}}sin datos{{% endif %}}
          {{%- if booking.fecha is defined %}} · {{{{ booking.fecha | longdate }}}}{{% endif %}}
          {{%- if booking.codigo is defined %}} · reserva {{{{ booking.codigo }}}}{{% endif %}}
          {{%- if data.cancellation.reason %}} · Motivo: {{{{ data.cancellation.reason }}}}{{% endif %}}
          · ref {{{{ event.id }}}}
        update_parent: true
        parent_text: >-
          ~{{% if booking.cliente is defined %}}{{{{ booking.cliente.nombre }}}}{{% else %}}Reserva{{% endif %}}
          {{%- if booking.codigo is defined %}} · {{{{ booking.codigo }}}}{{% endif %}}~ · cancelada (ver hilo)

  - name: slack-new-order
    on: ["order.created"]
    actions:
      - connector: staff
        name: tienda
        action: post_message
        channel: "#tienda"
        text: >-
          :shopping_bags: Nuevo pedido {{{{ data.order.numero }}}} de {{{{ data.order.cliente.nombre }}}}
          · {{{{ data.order.total | money }}}} · ref {{{{ event.id }}}}

  - name: order-shipped-email
    on: ["order.shipped"]
    actions:
      - connector: mailer
        name: customer
        to: "{{{{ order.cliente.email }}}}"
        subject: "Tu pedido {{{{ order.numero }}}} va de camino"
        text_template: emails/order_shipped.txt
        html_template: emails/order_shipped.html

  - name: order-delivered-email
    on: ["order.delivered"]
    actions:
      - connector: mailer
        name: customer
        to: "{{{{ order.cliente.email }}}}"
        subject: "Tu pedido {{{{ order.numero }}}} ha sido entregado"
        text_template: emails/order_delivered.txt
        html_template: emails/order_delivered.html

  - name: booking-confirmed-email
    on: ["booking.created"]
    actions:
      - connector: mailer
        name: customer
        to: "{{{{ booking.cliente.email }}}}"
        subject: "Reserva confirmada: {{{{ booking.fecha | date }}}} a las {{{{ booking.hora_inicio }}}}"
        text_template: emails/booking_created.txt
        html_template: emails/booking_created.html

  - name: booking-cancelled-email
    on: ["booking.cancelled"]
    actions:
      - connector: mailer
        name: customer
        to: "{{{{ booking.cliente.email }}}}"
        subject: "Tu cita {{{{ booking.codigo }}}} ha sido cancelada"
        text_template: emails/booking_cancelled.txt
        html_template: emails/booking_cancelled.html

  - name: agenda
    on: ["booking.created", "booking.updated", "booking.cancelled", "booking.completed", "booking.no_show"]
    actions:
      - connector: agenda
        name: sync
        action: sync_booking
        summary: "{{{{ booking.servicios | map(attribute='nombre') | join(', ') }}}} · {{{{ booking.cliente.nombre }}}}"
        on_cancel: delete
"""
