"""The chaos run's event stream: consistent stories of many bookings, orders and customers built from
the platform's 13 sample payloads, then duplicated and shuffled as the platform delivers them.

Each story keeps its entity's lifecycle consistent (a booking is created, maybe moved, paid, then
cancelled, completed or marked no-show) with `created` increasing along it. The stories are laid
on one time line; the send order is that line with every event displaced by up to a window of
seconds (deliveries overtaking each other), plus ~10% duplicates, half of them sent right after
the original (two deliveries racing) and half well after it (a platform retry).
"""

from __future__ import annotations

import copy
import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "bridge" / "samples"
TENANT = "chaos-salon-0001"
# A type the platform may add later: the bridge answers 200 "ignored" (no mapping, nothing to remember).
FUTURE_TYPE = "giftcard.purchased"
TIMELINE_START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
TIMELINE_SPAN = timedelta(days=60)  # the whole run's `created` times spread over two months

PROFESSIONALS = [
    {"id": 5, "nombre": "Carlos García"},
    {"id": 7, "nombre": "Lucía Martín"},
    {"id": 9, "nombre": "Ana Ruiz"},  # no calendar of her own: the salon's default calendar
]
SERVICES = [
    {"id": 15, "nombre": "Corte Clásico", "precio": 25.0, "duracion_minutos": 30},
    {"id": 16, "nombre": "Tinte", "precio": 45.0, "duracion_minutos": 60},
    {"id": 17, "nombre": "Manicura", "precio": 20.0, "duracion_minutos": 45},
    {"id": 18, "nombre": "Barba & Toalla", "precio": 15.0, "duracion_minutos": 20},
]
PRODUCTS = [
    {"producto_id": 12, "nombre": "Shampoo Profesional", "precio_unitario": 15.0},
    {"producto_id": 13, "nombre": "Mascarilla Reparadora", "precio_unitario": 22.5},
    {"producto_id": 14, "nombre": "Secador Iónico", "precio_unitario": 89.0},
]
FIRST_NAMES = ["Juan", "María", "José", "Lucía", "Carmen", "Álvaro", "Núria", "Iñaki", "Begoña", "Zoë"]
LAST_NAMES = ["Pérez", "García", "López", "Martínez", "Sánchez", "Muñoz", "Ibáñez", "Gómez", "O'Neill"]

# The `estado` each booking event type leaves in the booking (booking.updated carries none).
ESTADO_BY_TYPE = {
    "booking.created": "confirmada",
    "booking.cancelled": "cancelada",
    "booking.completed": "completada",
    "booking.no_show": "no_show",
}


def _sample(event_type: str) -> dict[str, Any]:
    envelope: dict[str, Any] = json.loads((SAMPLES_DIR / f"{event_type}.json").read_text(encoding="utf-8"))
    return envelope


@dataclass
class Event:
    """One platform event of the run, and where it sits on the time line (0..1)."""

    envelope: dict[str, Any]
    position: float
    entity: tuple[str, str] | None  # the primary (kind, id) the bridge locks for it

    @property
    def id(self) -> str:
        return str(self.envelope["id"])

    @property
    def type(self) -> str:
        return str(self.envelope["type"])


@dataclass
class Post:
    """One delivery of an event (the original or a duplicate), in send order."""

    event: Event
    duplicate: bool
    key: float
    not_before: float = 0.0  # seconds after the run starts: posted no earlier (else at its place in line)


@dataclass
class Stream:
    events: list[Event]
    posts: list[Post]
    customers: dict[int, dict[str, Any]] = field(default_factory=dict)

    def by_id(self) -> dict[str, Event]:
        return {e.id: e for e in self.events}


class _Builder:
    def __init__(self, rng: random.Random, customers: int):
        self.rng = rng
        self.events: list[Event] = []
        self.customers = {
            6000 + n: {
                "id": 6000 + n,
                "nombre": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
                "email": f"cliente{n}@chaos.example",
                "telefono": f"+3461{n:07d}",
            }
            for n in range(customers)
        }
        # Each customer's name over time (position, name): every event carries the name of its moment.
        self.names: dict[int, list[tuple[float, str]]] = {
            cid: [(0.0, c["nombre"])] for cid, c in self.customers.items()
        }
        self.next_booking = 300000
        self.next_order = 70000
        self.next_payment = 900000

    # -- helpers ------------------------------------------------------------------------------

    def add(self, event_type: str, data: dict[str, Any], position: float, entity: tuple[str, str] | None) -> None:
        envelope = _sample(event_type) if event_type != FUTURE_TYPE else {"type": FUTURE_TYPE}
        created = TIMELINE_START + TIMELINE_SPAN * position
        envelope.update(
            id=f"evt_chaos_{uuid.UUID(int=self.rng.getrandbits(128)).hex[:20]}",
            created=created.replace(microsecond=0).isoformat().replace("+00:00", "Z"),
            tenant_id=TENANT,
            data=data,
        )
        self.events.append(Event(envelope, position, entity))

    def customer_at(self, customer_id: int, position: float) -> dict[str, Any]:
        """The customer as the platform describes them at that moment of the time line."""
        name = [n for p, n in self.names[customer_id] if p <= position][-1]
        return {**self.customers[customer_id], "nombre": name}

    def gap(self) -> float:
        return self.rng.uniform(0.004, 0.05)

    def when(self, position: float) -> str:
        return (TIMELINE_START + TIMELINE_SPAN * position).replace(microsecond=0).isoformat().replace("+00:00", "Z")

    def slot(self) -> tuple[str, str, str, list[dict[str, Any]]]:
        """A date, start and end time and the services of an appointment."""
        rng = self.rng
        services = rng.sample(SERVICES, rng.choice([1, 1, 2]))
        minutes = sum(s["duracion_minutos"] for s in services)
        day = date(2026, 2, 1) + timedelta(days=rng.randrange(90))
        start = datetime.combine(day, time(rng.randrange(9, 19), rng.choice([0, 15, 30, 45])))
        end = start + timedelta(minutes=minutes)
        return day.isoformat(), start.strftime("%H:%M"), end.strftime("%H:%M"), copy.deepcopy(services)

    # -- stories ------------------------------------------------------------------------------

    def booking(self, start: float) -> None:
        rng = self.rng
        booking_id = self.next_booking
        self.next_booking += 1
        entity = ("booking", str(booking_id))
        codigo = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(8))
        customer_id = rng.choice(list(self.customers))
        professional = copy.deepcopy(rng.choice(PROFESSIONALS))
        fecha, inicio, fin, services = self.slot()
        total = sum(s["precio"] for s in services)
        position = start
        full = {
            "id": booking_id,
            "codigo": codigo,
            "fecha": fecha,
            "hora_inicio": inicio,
            "hora_fin": fin,
            "servicios": services,
            "profesional": professional,
            "cliente": self.customer_at(customer_id, position),
            "total": total,
            "estado": "confirmada",
            "notas": rng.choice(["", "Primera visita", "Alergia al tinte <no usar PPD>", "Trae a su hijo & su perro"]),
            "created_at": self.when(position),
        }
        self.add("booking.created", {"booking": full}, position, entity)

        for _ in range(rng.choice([0, 0, 1, 1, 2])):
            position += self.gap()
            new_fecha, new_inicio, new_fin, _services = self.slot()
            booking = {"id": booking_id, "codigo": codigo, "fecha": new_fecha, "hora_inicio": new_inicio}
            booking["hora_fin"] = new_fin
            changes: dict[str, Any] = {
                "fecha": {"old": fecha, "new": new_fecha},
                "hora_inicio": {"old": inicio, "new": new_inicio},
            }
            if rng.random() < 0.3:  # moved to another professional: another calendar
                other = copy.deepcopy(rng.choice([p for p in PROFESSIONALS if p["id"] != professional["id"]]))
                booking["profesional"] = other
                changes["profesional"] = {"old": professional, "new": other}
                professional = other
            fecha, inicio = new_fecha, new_inicio
            self.add("booking.updated", {"booking": booking, "changes": changes}, position, entity)

        paid = False
        roll = rng.random()
        if roll < 0.75:
            position += self.gap()
            if roll >= 0.6:  # a failed payment first, sometimes paid afterwards
                self.payment_failed(booking_id, total, position, entity)
                if rng.random() < 0.5:
                    position += self.gap()
                    paid = self.payment_completed(booking_id, codigo, customer_id, total, position, entity)
            else:
                paid = self.payment_completed(booking_id, codigo, customer_id, total, position, entity)

        roll = rng.random()
        position += self.gap()
        if roll < 0.2:
            data: dict[str, Any] = {
                "booking": {"id": booking_id, "codigo": codigo, "estado": "cancelada"},
                "cancellation": {
                    "cancelled_by": rng.choice(["cliente", "negocio"]),
                    "reason": rng.choice(["Cambio de planes", "Enfermedad", "<b>no puedo</b> & lo siento"]),
                    "cancelled_at": self.when(position),
                },
                "refund": {"applicable": paid, "amount": total if paid else 0.0, "status": "pending"},
            }
            self.add("booking.cancelled", data, position, entity)
            if paid:
                position += self.gap()
                refund = {
                    "refund": {
                        "id": self.next_payment,
                        "amount": total,
                        "currency": "EUR",
                        "reason": "Cancelación por cliente",
                        "stripe_refund_id": f"re_{self.next_payment}",
                    },
                    "original_payment": {"id": self.next_payment - 1, "amount": total},
                    "booking": {"id": booking_id},
                }
                self.next_payment += 1
                self.add("payment.refunded", refund, position, entity)
        elif roll < 0.55:
            booking = {"id": booking_id, "estado": "completada", "completed_at": self.when(position)}
            self.add("booking.completed", {"booking": booking, "points_earned": int(total)}, position, entity)
        elif roll < 0.7:
            booking = {"id": booking_id, "estado": "no_show", "marked_at": self.when(position)}
            self.add("booking.no_show", {"booking": booking}, position, entity)
        if rng.random() < 0.01:
            position += self.gap()
            card = {"id": f"GC-{booking_id}", "importe": 50.0, "comprador": self.customer_at(customer_id, position)}
            self.add(FUTURE_TYPE, {"giftcard": card}, position, None)

    def payment_completed(
        self,
        booking_id: int,
        codigo: str,
        customer_id: int,
        total: float,
        position: float,
        entity: tuple[str, str],
    ) -> bool:
        payment = {
            "id": self.next_payment,
            "amount": total,
            "currency": "EUR",
            "method": "card",
            "stripe_payment_intent_id": f"pi_{self.next_payment}",
            "status": "succeeded",
        }
        self.next_payment += 1
        customer = self.customer_at(customer_id, position)
        cliente = {k: customer[k] for k in ("id", "nombre", "email")}
        data = {"payment": payment, "booking": {"id": booking_id, "codigo": codigo}, "cliente": cliente}
        self.add("payment.completed", data, position, entity)
        return True

    def payment_failed(self, booking_id: int, total: float, position: float, entity: tuple[str, str]) -> None:
        payment = {
            "id": self.next_payment,
            "amount": total,
            "currency": "EUR",
            "status": "failed",
            "error_code": "card_declined",
            "error_message": "Tu tarjeta fue rechazada",
        }
        self.next_payment += 1
        self.add("payment.failed", {"payment": payment, "booking": {"id": booking_id}}, position, entity)

    def order(self, start: float) -> None:
        rng = self.rng
        order_id = self.next_order
        self.next_order += 1
        entity = ("order", str(order_id))
        numero = f"PED-2026-{order_id}"
        customer_id = rng.choice(list(self.customers))
        items = []
        for product in rng.sample(PRODUCTS, rng.choice([1, 1, 2, 3])):
            quantity = rng.choice([1, 1, 2])
            items.append({**product, "cantidad": quantity, "subtotal": product["precio_unitario"] * quantity})
        subtotal = sum(i["subtotal"] for i in items)
        position = start
        order = {
            "id": order_id,
            "numero": numero,
            "cliente": {k: self.customer_at(customer_id, position)[k] for k in ("id", "nombre", "email")},
            "items": items,
            "subtotal": subtotal,
            "envio": 5.0,
            "total": subtotal + 5.0,
            "estado": "pending",
            "created_at": self.when(position),
        }
        self.add("order.created", {"order": order}, position, entity)
        if rng.random() < 0.8:
            position += self.gap()
            tracking = f"1Z{order_id:016d}"
            shipped = {
                "id": order_id,
                "numero": numero,
                "estado": "shipped",
                "tracking_number": tracking,
                "tracking_url": f"https://tracking.example.com/{tracking}",
                "shipped_at": self.when(position),
            }
            self.add("order.shipped", {"order": shipped}, position, entity)
            if rng.random() < 0.75:
                position += self.gap()
                delivered = {"id": order_id, "numero": numero, "estado": "delivered"}
                delivered["delivered_at"] = self.when(position)
                self.add("order.delivered", {"order": delivered}, position, entity)

    def customer(self, customer_id: int, start: float) -> None:
        rng = self.rng
        entity = ("customer", str(customer_id))
        position = start
        customer = self.customer_at(customer_id, position)
        created = {**customer, "source": rng.choice(["widget", "app", "recepcion"]), "created_at": self.when(position)}
        self.add("customer.created", {"customer": created}, position, entity)
        for _ in range(rng.choice([0, 0, 1, 2])):
            position += self.gap()
            old = dict(customer)
            customer = {**customer, "nombre": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"}
            self.names[customer_id].append((position, customer["nombre"]))
            changes = {"nombre": {"old": old["nombre"], "new": customer["nombre"]}}
            self.add("customer.updated", {"customer": dict(customer), "changes": changes}, position, entity)


def build_stream(count: int, seed: int, rate: float, shuffle_seconds: float, duplicates: float) -> Stream:
    """`count` distinct events in stories, plus duplicates, in the order they will be posted."""
    rng = random.Random(seed)
    builder = _Builder(rng, customers=max(8, count // 25))
    for customer_id in builder.customers:
        builder.customer(customer_id, rng.uniform(0, 0.8))
    while len(builder.events) < count:
        if rng.random() < 0.78:
            builder.booking(rng.uniform(0, 0.85))
        else:
            builder.order(rng.uniform(0, 0.85))
    # The time line is cut where the count is reached: the last stories stop midway, as at any moment.
    events = sorted(builder.events, key=lambda e: e.position)[:count]

    window = shuffle_seconds * rate  # in send slots
    posts = [Post(event, False, index + rng.uniform(0, window)) for index, event in enumerate(events)]
    for post in rng.sample(posts, round(len(posts) * duplicates)):
        late = rng.random() < 0.5
        offset = rng.uniform(window, 30 * rate) if late else rng.uniform(0, 1.5)
        posts.append(Post(post.event, True, post.key + offset))
    posts.sort(key=lambda p: p.key)
    return Stream(events, posts, builder.customers)
