"""A fake Slack on 127.0.0.1: the Web API methods the connector uses and an incoming webhook.

It speaks Slack's wire protocol as slack_sdk sees it: `POST /api/<method>` with a Bearer token
(JSON or form-encoded body, or a query string), answers `{"ok": true, ...}` or HTTP 200
`{"ok": false, "error": "..."}`, 429 with `Retry-After` when rate limited, and the granted scopes
in `X-OAuth-Scopes`. Messages keep their `metadata`, which `conversations.history` and
`conversations.replies` return only with `include_all_metadata`; message ts are times, as Slack's are.
The incoming webhook answers `ok` or a 4xx/5xx with an error word, as hooks.slack.com does. Tests
script failures with `fail()` / `fail_webhook()`, slow answers with `slow()` and late ones with `late()`.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.http_server import LocalHTTPServer

DEFAULT_TOKEN = "xoxb-1111-2222-fakefakefake"
ALL_SCOPES = (
    "chat:write",
    "chat:write.public",
    "chat:write.customize",
    "channels:read",
    "groups:read",
    "channels:history",
    "groups:history",
)
WEBHOOK_PATH = "/services/T0SALON/B0HOOK/s3cr3tp4th"
BOT_USER_ID = "U0BOT"
BOT_ID = "B0BOT"
BOT_NAME = "salon-bridge"

_BLOCK_TYPES = {"section", "header", "context", "divider", "actions", "image", "rich_text", "markdown"}
_TEXT_TYPES = {"plain_text", "mrkdwn"}


@dataclass
class Channel:
    id: str
    name: str
    is_private: bool = False
    is_member: bool = True
    is_archived: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "is_channel": not self.is_private,
            "is_group": False,
            "is_im": False,
            "is_private": self.is_private,
            "is_archived": self.is_archived,
            "is_member": self.is_member,
            "created": 1700000000,
            "creator": "U0OWNER",
            "name_normalized": self.name,
        }


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None
    username: str | None
    icon_emoji: str | None
    user: str = BOT_USER_ID
    reply_broadcast: bool = False
    edits: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] | None = None

    def as_json(self, with_metadata: bool = False) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "message",
            "user": self.user,
            "bot_id": BOT_ID,
            "app_id": "A0APP",
            "text": self.text,
            "ts": self.ts,
            "team": "T0SALON",
        }
        if self.blocks:
            message["blocks"] = self.blocks
        if self.thread_ts:
            message["thread_ts"] = self.thread_ts
        if self.username:
            message["username"] = self.username
        if self.metadata and with_metadata:
            message["metadata"] = self.metadata
        return message


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    headers: dict[str, str]


@dataclass
class Failure:
    status: int = 200
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    delay: float = 0.0


class FakeSlack:
    """Slack Web API + one incoming webhook, on a threaded local HTTP server."""

    def __init__(self, token: str = DEFAULT_TOKEN, scopes: tuple[str, ...] = ALL_SCOPES):
        self.token = token
        self.scopes = list(scopes)
        self.revoked = False
        self.channels: dict[str, Channel] = {}
        self.messages: list[Message] = []
        self.calls: list[Call] = []
        self.webhook_posts: list[dict[str, Any]] = []
        self._failures: dict[str, list[Failure]] = {}
        self._webhook_failures: list[Failure] = []
        self._slow: dict[str, list[float]] = {}
        self._late: dict[str, list[float]] = {}
        self._last_ts = 0.0
        self.page_size = 1000  # Slack may return fewer channels per page than asked for
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                fake._handle(self)

            do_GET = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = LocalHTTPServer(Handler)

    # -- set-up and inspection --------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._http.url

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    @property
    def webhook_url(self) -> str:
        return self.url + WEBHOOK_PATH

    def start(self) -> FakeSlack:
        self._http.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._http.stop()

    def add_channel(self, name: str, *, member: bool = True, private: bool = False, archived: bool = False) -> Channel:
        prefix = "G" if private else "C"
        channel = Channel(f"{prefix}0{next(self._ids):04d}{name.upper()[:6]}", name, private, member, archived)
        self.channels[channel.id] = channel
        return channel

    def fail(self, method: str, error: str | None = None, *, status: int = 200, times: int = 1, **kwargs: Any) -> None:
        """Make the next `times` calls of `method` fail (an `ok: false` error, or a bare HTTP status)."""
        with self._lock:
            for _ in range(times):
                self._failures.setdefault(method, []).append(Failure(status, error, **kwargs))

    def slow(self, method: str, seconds: float) -> None:
        """Make the next successful call of `method` wait before answering (a race between workers)."""
        with self._lock:
            self._slow.setdefault(method, []).append(seconds)

    def late(self, method: str, seconds: float) -> None:
        """Make the next successful call of `method` do its work, then wait before answering: with
        `seconds` over the client's timeout, the message is posted but the client never hears so."""
        with self._lock:
            self._late.setdefault(method, []).append(seconds)

    def fail_webhook(
        self, status: int, body: str, *, headers: dict[str, str] | None = None, times: int = 1, delay: float = 0.0
    ) -> None:
        with self._lock:
            for _ in range(times):
                self._webhook_failures.append(Failure(status, None, headers or {}, body.encode(), delay=delay))

    def calls_of(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    def top_level(self, channel: Channel | None = None) -> list[Message]:
        return [m for m in self.messages if m.thread_ts is None and (channel is None or m.channel == channel.id)]

    def replies(self, parent: Message) -> list[Message]:
        return [m for m in self.messages if m.thread_ts == parent.ts and m.channel == parent.channel]

    # -- the protocol ---------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        url = urlsplit(request.path)
        if url.path == WEBHOOK_PATH:
            self._webhook(request, body)
            return
        if not url.path.startswith("/api/"):
            self._reply(request, 404, b"<html><body>Not Found</body></html>", {"Content-Type": "text/html"})
            return
        method = url.path.removeprefix("/api/")
        params: dict[str, Any] = dict(parse_qsl(url.query))
        content_type = request.headers.get("Content-Type", "")
        if body and content_type.startswith("application/json"):
            params.update(json.loads(body))
        elif body:
            params.update(parse_qsl(body.decode()))
        headers = dict(request.headers)
        with self._lock:
            self.calls.append(Call(method, params, headers))
            failures = self._failures.get(method)
            failure = failures.pop(0) if failures else None
        if failure is not None:
            if failure.delay and self._stopping.wait(failure.delay):
                return
            if failure.body is not None:
                payload = failure.body
            else:
                payload = json.dumps(
                    {"ok": False, "error": failure.error or "internal_error", **failure.extra}
                ).encode()
            self._reply(request, failure.status, payload, {"Content-Type": "application/json", **failure.headers})
            return
        with self._lock:
            delays = self._slow.get(method)
            delay = delays.pop(0) if delays else 0.0
        if delay and self._stopping.wait(delay):
            return
        with self._lock:
            answer = self._api(method, params, headers.get("Authorization", ""))
            lates = self._late.get(method) if answer["ok"] else None
            late = lates.pop(0) if lates else 0.0
        if late and self._stopping.wait(late):
            return
        extra = {"X-OAuth-Scopes": ",".join(self.scopes), "X-Accepted-OAuth-Scopes": _ACCEPTED.get(method, "")}
        self._reply(request, 200, json.dumps(answer).encode(), {"Content-Type": "application/json", **extra})

    def _api(self, method: str, params: dict[str, Any], authorization: str) -> dict[str, Any]:
        if not authorization.startswith("Bearer "):
            return _error("not_authed")
        if authorization.removeprefix("Bearer ") != self.token:
            return _error("invalid_auth")
        if self.revoked:
            return _error("token_revoked")
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return _error("unknown_method")
        needed = _ACCEPTED.get(method, "")
        if needed and not any(scope in self.scopes for scope in needed.split(",")):
            return _error("missing_scope", needed=needed, provided=",".join(self.scopes))
        result: dict[str, Any] = handler(params)
        return result

    def _find_channel(self, ref: str) -> Channel | None:
        if ref in self.channels:
            return self.channels[ref]
        name = ref.removeprefix("#")
        return next((c for c in self.channels.values() if c.name == name), None)

    def _m_auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://salon-demo.slack.com/",
            "team": "Salón Demo",
            "user": BOT_NAME,
            "team_id": "T0SALON",
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _m_chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._find_channel(str(params.get("channel", "")))
        if channel is None or (channel.is_private and not channel.is_member):
            return _error("channel_not_found")
        if channel.is_archived:
            return _error("is_archived")
        if not channel.is_member and (channel.is_private or "chat:write.public" not in self.scopes):
            return _error("not_in_channel")
        text, blocks = params.get("text"), params.get("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        if not text and not blocks:
            return _error("no_text")
        problem = _block_problem(blocks)
        if problem:
            return _error("invalid_blocks", errors=[problem], response_metadata={"messages": [f"[ERROR] {problem}"]})
        customize = "chat:write.customize" in self.scopes  # without it Slack silently ignores these
        metadata = params.get("metadata")
        if isinstance(metadata, str):
            metadata = json.loads(metadata)
        message = Message(
            channel=channel.id,
            ts=self._next_ts(),
            text=str(text or ""),
            blocks=blocks,
            thread_ts=params.get("thread_ts"),
            username=params.get("username") if customize else None,
            icon_emoji=params.get("icon_emoji") if customize else None,
            reply_broadcast=bool(params.get("reply_broadcast")),
            metadata=metadata,
        )
        self.messages.append(message)
        return {"ok": True, "channel": channel.id, "ts": message.ts, "message": message.as_json()}

    def _m_chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self.channels.get(str(params.get("channel", "")))  # chat.update takes an id, not a name
        if channel is None:
            return _error("channel_not_found")
        message = next((m for m in self.messages if m.channel == channel.id and m.ts == params.get("ts")), None)
        if message is None:
            return _error("message_not_found")
        if message.user != BOT_USER_ID:
            return _error("cant_update_message")
        blocks = params.get("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        problem = _block_problem(blocks)
        if problem:
            return _error("invalid_blocks", errors=[problem])
        message.edits.append({"text": message.text, "blocks": message.blocks})
        if "text" in params:
            message.text = str(params["text"])
        if blocks is not None:  # absent keeps the blocks, [] removes them (chat.update's rule)
            message.blocks = blocks or None
        return {"ok": True, "channel": channel.id, "ts": message.ts, "text": message.text, "message": message.as_json()}

    def _m_conversations_list(self, params: dict[str, Any]) -> dict[str, Any]:
        types = str(params.get("types") or "public_channel").split(",")
        if "private_channel" in types and "groups:read" not in self.scopes:
            return _error("missing_scope", needed="groups:read", provided=",".join(self.scopes))
        exclude_archived = str(params.get("exclude_archived", "0")) in ("1", "true")
        visible = [
            c
            for c in self.channels.values()
            if (("private_channel" in types) if c.is_private else ("public_channel" in types))
            and (c.is_member or not c.is_private)
            and not (exclude_archived and c.is_archived)
        ]
        limit = min(int(params.get("limit") or 100), self.page_size)
        start = int(params.get("cursor") or 0)
        page = visible[start : start + limit]
        cursor = str(start + limit) if start + limit < len(visible) else ""
        return {
            "ok": True,
            "channels": [c.as_json() for c in page],
            "response_metadata": {"next_cursor": cursor},
        }

    def _m_conversations_history(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self.channels.get(str(params.get("channel", "")))  # an id, not a name
        problem = self._history_problem(channel)
        if problem or channel is None:
            return problem or _error("channel_not_found")
        # The channel's own messages, not thread replies (unless broadcast): newest first.
        shown = [m for m in self.messages if m.channel == channel.id and (not m.thread_ts or m.reply_broadcast)]
        return _timeline(list(reversed(shown)), params)

    def _m_conversations_replies(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self.channels.get(str(params.get("channel", "")))
        problem = self._history_problem(channel)
        if problem or channel is None:
            return problem or _error("channel_not_found")
        ts = str(params.get("ts", ""))
        thread = [m for m in self.messages if m.channel == channel.id and ts in (m.ts, m.thread_ts)]
        if not thread:
            return _error("thread_not_found")
        return _timeline(thread, params)  # the parent, then its replies, oldest first

    def _history_problem(self, channel: Channel | None) -> dict[str, Any] | None:
        """Reading a channel needs its *:history scope and the app in the channel."""
        if channel is None or (channel.is_private and not channel.is_member):
            return _error("channel_not_found")
        needed = "groups:history" if channel.is_private else "channels:history"
        if needed not in self.scopes:
            return _error("missing_scope", needed=needed, provided=",".join(self.scopes))
        if not channel.is_member:
            return _error("not_in_channel")
        return None

    def _next_ts(self) -> str:
        """Seconds since the epoch with microseconds, unique per message, as Slack's ts are."""
        self._last_ts = max(time.time(), self._last_ts + 0.000001)
        return f"{self._last_ts:.6f}"

    def _m_conversations_info(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self.channels.get(str(params.get("channel", "")))
        if channel is None or (channel.is_private and not channel.is_member):
            return _error("channel_not_found")
        return {"ok": True, "channel": channel.as_json()}

    def _webhook(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        with self._lock:
            failure = self._webhook_failures.pop(0) if self._webhook_failures else None
        if failure is not None:
            if failure.delay and self._stopping.wait(failure.delay):
                return
            self._reply(request, failure.status, failure.body or b"", {"Content-Type": "text/html", **failure.headers})
            return
        try:
            payload = json.loads(body)
        except ValueError:
            self._reply(request, 400, b"invalid_payload", {"Content-Type": "text/html"})
            return
        if not isinstance(payload, dict):
            self._reply(request, 400, b"invalid_payload", {"Content-Type": "text/html"})
            return
        if not payload.get("text") and not payload.get("blocks"):
            self._reply(request, 400, b"no_text", {"Content-Type": "text/html"})
            return
        problem = _block_problem(payload.get("blocks"))
        if problem:
            self._reply(request, 400, b"invalid_blocks", {"Content-Type": "text/html"})
            return
        with self._lock:
            self.webhook_posts.append(payload)
        self._reply(request, 200, b"ok", {"Content-Type": "text/html"})

    @staticmethod
    def _reply(request: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        try:
            request.send_response(status)
            for name, value in headers.items():
                request.send_header(name, value)
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            request.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing to answer


# Scopes Slack accepts for each method (any one of them), as in its `X-Accepted-OAuth-Scopes`.
_ACCEPTED = {
    "auth.test": "",
    "chat.postMessage": "chat:write",
    "chat.update": "chat:write",
    "conversations.list": "channels:read,groups:read",
    "conversations.info": "channels:read,groups:read",
    "conversations.history": "channels:history,groups:history",
    "conversations.replies": "channels:history,groups:history",
}


def _error(code: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "error": code, **extra}


def _timeline(messages: list[Message], params: dict[str, Any]) -> dict[str, Any]:
    """One page of `messages` between `oldest` and `latest` (exclusive unless `inclusive`)."""
    inclusive = _flag(params.get("inclusive"))
    oldest, latest = float(params.get("oldest") or 0), float(params.get("latest") or "inf")
    within = [
        m
        for m in messages
        if (oldest <= float(m.ts) if inclusive else oldest < float(m.ts))
        and (float(m.ts) <= latest if inclusive else float(m.ts) < latest)
    ]
    limit = min(int(params.get("limit") or 100), 999)
    start = int(params.get("cursor") or 0)
    page = within[start : start + limit]
    more = start + limit < len(within)
    with_metadata = _flag(params.get("include_all_metadata"))
    return {
        "ok": True,
        "messages": [m.as_json(with_metadata) for m in page],
        "has_more": more,
        "response_metadata": {"next_cursor": str(start + limit) if more else ""},
    }


def _flag(value: Any) -> bool:
    """A boolean argument as slack_sdk sends it (1/0 in a query string) or as JSON."""
    return value is True or str(value).lower() in ("1", "true")


def _block_problem(blocks: Any) -> str | None:
    """A shallow version of Slack's Block Kit validation: enough to answer `invalid_blocks`."""
    if blocks is None:
        return None
    if not isinstance(blocks, list) or len(blocks) > 50:
        return "must be an array of at most 50 blocks [json-pointer:/blocks]"
    for index, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") not in _BLOCK_TYPES:
            return f"unsupported type [json-pointer:/blocks/{index}/type]"
        text = block.get("text")
        if block["type"] in ("section", "header") and text is not None:
            if not isinstance(text, dict) or text.get("type") not in _TEXT_TYPES or not text.get("text"):
                return f"must provide a text object [json-pointer:/blocks/{index}/text]"
            if block["type"] == "header" and text["type"] != "plain_text":
                return f"must be a plain_text object [json-pointer:/blocks/{index}/text/type]"
        if block["type"] == "section" and text is None and not block.get("fields"):
            return f"must provide text or fields [json-pointer:/blocks/{index}]"
    return None
