"""`slack`: post staff notifications to Slack (bot token or incoming webhook), threaded per booking.

Event data in `text`, `blocks`, `parent_text` and `parent_blocks` is escaped by the template engine
("slack" escaping: &, <, > become entities), so a customer named `<!channel>` pings nobody.
Threads: the first message with a `thread_key` becomes the parent (its channel id and ts are kept
in the connector store); later messages with that key reply in its thread, whatever order the
events arrive in. Rate limits are raised as TransientError(retry_after=...), never slept on.
Late answers: every message carries the action's key in its `metadata`; when an earlier attempt
may have posted (its answer never came), the channel's history since that attempt is searched for
the key before posting again, and a message found there counts as this action's post.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import re
import time
from collections.abc import Iterator, Mapping
from http.client import HTTPException
from typing import Any, ClassVar, NamedTuple

from pydantic import Field, field_validator, model_validator
from slack_sdk import WebClient, WebhookClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web import SlackResponse

from connectors.base import (
    ActionFields,
    ActionRequest,
    Connector,
    ConnectorError,
    ConnectorStore,
    PermanentError,
    SendResult,
    Settings,
    TransientError,
    excerpt,
    parse_retry_after,
)

log = logging.getLogger("salon_bridge.connectors.slack")

DEFAULT_BASE_URL = "https://slack.com/api/"
CLAIM_TTL = 300  # seconds a parent claim lives if its worker dies mid-post (longer than any timeout)
SENT_TTL = 8 * 86400  # how long a posted message is remembered per event and action (retries, replays)
BUSY_RETRY_AFTER = 5.0  # another worker is posting this thread's parent right now
CHANNEL_TTL = 30 * 86400  # how long a channel name's id is remembered (to search its history)
MARKER_EVENT = "salon_bridge_action"  # the metadata event_type of every message posted with a token
LOOKUP_PAGE = 200  # messages per page when searching for an earlier attempt's message
LOOKUP_PAGES = 5  # at most 1,000 messages around those attempts
CLOCK_MARGIN = 60.0  # seconds searched before the first attempt: Slack's clock and ours may differ a little
# Seconds searched after the last attempt: Slack posts a message while it handles the request, and no
# request is still being handled ten minutes after it was sent.
SEARCH_AFTER = 600.0
PENDING = "pending"
MAX_BLOCKS = 50
TOKEN_ENV = "SLACK_BOT_TOKEN"

# `ok: false` errors worth trying again. Everything else Slack answers is about the request,
# the token or the channel: a person must change something.
TRANSIENT_ERRORS = {
    "ratelimited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
    "team_added_to_org",
}

_CHANNEL = re.compile(r"^#?[^\s#,<>@]{1,80}$")
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")
_EMOJI = re.compile(r"^:[a-z0-9_+'-]+:$")


class SlackSettings(Settings):
    """Either a bot token (Web API: channels, threads, edits) or an incoming-webhook URL (one channel)."""

    token: str | None = None
    webhook_url: str | None = None
    base_url: str = DEFAULT_BASE_URL
    timeout: float = Field(default=10.0, gt=0, le=60)
    thread_memory_days: float = Field(default=90, gt=0, le=3650)

    @field_validator("token")
    @classmethod
    def _looks_like_a_token(cls, token: str | None) -> str | None:
        # Never echo the value: it is a secret.
        if token is None:
            return None
        token = token.strip()
        if token.startswith("xapp-"):
            raise ValueError(
                "this is an app-level token (xapp-…), which cannot post messages: use the Bot User OAuth "
                "Token (xoxb-…) from the app's OAuth & Permissions page"
            )
        if not token.startswith(("xoxb-", "xoxp-", "xoxe.")):
            raise ValueError(
                "this does not look like a Slack token: use the Bot User OAuth Token (it starts with xoxb-) "
                "from the app's OAuth & Permissions page"
            )
        return token

    @field_validator("webhook_url", "base_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (an incoming-webhook URL looks like https://hooks.slack.com/…)")
        return url

    @field_validator("base_url")
    @classmethod
    def _trailing_slash(cls, url: str) -> str:
        return url if url.endswith("/") else url + "/"

    @model_validator(mode="after")
    def _one_route(self) -> SlackSettings:
        if self.token and self.webhook_url:
            raise ValueError("set either token (a bot token) or webhook_url (an incoming webhook), not both")
        if not self.token and not self.webhook_url:
            raise ValueError(
                f'set token: "${{{TOKEN_ENV}}}" (a bot token, xoxb-…) or webhook_url: "${{SLACK_WEBHOOK_URL}}"'
            )
        return self


class PostMessage(ActionFields):
    """One message: `text` always (the notification and screen-reader fallback), `blocks` optionally."""

    template_fields: ClassVar[tuple[str, ...]] = ("text", "blocks", "thread_key", "parent_text", "parent_blocks")
    escaping: ClassVar[dict[str, str]] = {
        "text": "slack",
        "blocks": "slack",
        "parent_text": "slack",
        "parent_blocks": "slack",
    }

    channel: str | None = None
    text: str
    blocks: list[dict[str, Any]] | None = None
    thread_key: str | None = None
    update_parent: bool = False
    parent_text: str | None = None
    parent_blocks: list[dict[str, Any]] | None = None
    reply_broadcast: bool = False
    username: str | None = None
    icon_emoji: str | None = None
    unfurl_links: bool = False
    unfurl_media: bool = False

    @field_validator("channel")
    @classmethod
    def _channel_name(cls, channel: str | None) -> str | None:
        if channel is not None and not _CHANNEL.match(channel):
            raise ValueError(f"expected a channel like #caja or a channel id like C0123ABCD, got {channel!r}")
        return channel

    @field_validator("text")
    @classmethod
    def _non_empty(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text is empty: it is what notifications and screen readers show, always give one")
        return text

    @field_validator("blocks", "parent_blocks")
    @classmethod
    def _blocks(cls, blocks: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if blocks is None:
            return None
        if len(blocks) > MAX_BLOCKS:
            raise ValueError(f"Slack accepts at most {MAX_BLOCKS} blocks, got {len(blocks)}")
        for index, block in enumerate(blocks):
            if not isinstance(block.get("type"), str):
                raise ValueError(f"block {index} has no type (e.g. type: section)")
        return blocks

    @field_validator("icon_emoji")
    @classmethod
    def _emoji(cls, emoji: str | None) -> str | None:
        if emoji is not None and not _EMOJI.match(emoji):
            raise ValueError(f"expected an emoji code like :scissors:, got {emoji!r}")
        return emoji

    @model_validator(mode="after")
    def _parent_rules(self) -> PostMessage:
        if self.update_parent and not self.thread_key:
            raise ValueError("update_parent needs a thread_key: the parent is the first message with that key")
        if self.update_parent and not self.parent_text:
            raise ValueError("update_parent needs parent_text: the new text of the first message")
        if (self.parent_text or self.parent_blocks) and not self.update_parent:
            raise ValueError("parent_text and parent_blocks are used only with update_parent: true")
        return self


class SlackConnector(Connector):
    type = "slack"
    settings_model = SlackSettings
    actions: ClassVar[dict[str, builtins.type[ActionFields]]] = {"post_message": PostMessage}
    secret_fields = ("token", "webhook_url")

    settings: SlackSettings

    def __init__(self, name: str, settings: Settings):
        super().__init__(name, settings)
        s = self.settings
        # slack_sdk hands the timeout to urlopen, which takes fractions of a second too. No retry
        # handlers: retries belong to the job schedule, and the SDK's handlers sleep in-process.
        timeout: Any = s.timeout
        self._web = WebClient(s.token, s.base_url, timeout, retry_handlers=[]) if s.token else None
        self._hook = WebhookClient(s.webhook_url, timeout, retry_handlers=[]) if s.webhook_url else None

    # -- sending ---------------------------------------------------------------------------

    def send(self, request: ActionRequest) -> SendResult:
        fields = request.fields
        text = str(fields.get("text") or "")
        if not text.strip():
            raise PermanentError("the message text rendered empty: give the action a text that is never blank")
        if self._hook is not None:
            return self._send_webhook(fields, text)
        return self._send_web(request, text)

    def _send_web(self, request: ActionRequest, text: str) -> SendResult:
        fields = request.fields
        channel = fields.get("channel")
        if not channel:
            raise PermanentError('this action has no channel: add channel: "#name" to it (a bot token needs one)')
        store = _require_store(request.store)
        thread_key = str(fields.get("thread_key") or "").strip()
        sent_key = f"sent:{request.event_id}:{request.action_id}"

        if not thread_key:
            already = None if request.forced else store.get(sent_key)
            if already:
                return SendResult(detail=f"already posted to {channel} (ts {already.split()[1]})")
            posted = self._post(request, text)
            store.set(sent_key, f"{posted.channel} {posted.ts}", ttl=SENT_TTL)
            return SendResult(
                detail=posted.detail(f"posted to {channel} (ts {posted.ts})"),
                data={"channel": posted.channel, "ts": posted.ts},
            )

        thread_store_key = _thread_store_key(request.tenant_id, channel, thread_key)
        thread_ttl = self.settings.thread_memory_days * 86400
        me = f"{PENDING} {request.event_id} {request.action_id}"
        already = None if request.forced else store.get(sent_key)
        parent = store.get(thread_store_key)
        if already is None and (parent is None or parent == me):
            # No parent yet (or our own claim from an attempt that died midway): this message becomes it.
            if parent is None and not store.set_if_absent(thread_store_key, me, ttl=CLAIM_TTL):
                parent = store.get(thread_store_key)
            else:
                return self._post_parent(request, text, thread_store_key, sent_key, thread_ttl)
        if already is None and (parent is None or parent.startswith(PENDING + " ")):
            raise TransientError(
                f"another message about {thread_key!r} is being posted to {channel} right now; this one "
                "will follow it in its thread",
                retry_after=BUSY_RETRY_AFTER,
            )
        return self._post_reply(request, text, thread_store_key, sent_key, already, parent, thread_ttl)

    def _post_parent(
        self, request: ActionRequest, text: str, thread_store_key: str, sent_key: str, thread_ttl: float
    ) -> SendResult:
        store = _require_store(request.store)
        try:
            posted = self._post(request, text)
        except BaseException:
            # Let the next message about this thread become the parent, unless ours may be in Slack
            # (a late answer): its retry will find it and keep the thread under it.
            if store.get(_attempt_key(request)) is None:
                store.delete(thread_store_key)
            raise
        store.set(thread_store_key, f"{posted.channel} {posted.ts}", ttl=thread_ttl)
        store.set(sent_key, f"{posted.channel} {posted.ts}", ttl=SENT_TTL)
        return SendResult(
            detail=posted.detail(f"posted to {request.fields['channel']} (ts {posted.ts})") + ", first of its thread",
            data={"channel": posted.channel, "ts": posted.ts, "thread_ts": posted.ts},
        )

    def _post_reply(
        self,
        request: ActionRequest,
        text: str,
        thread_store_key: str,
        sent_key: str,
        already: str | None,
        parent: str | None,
        thread_ttl: float,
    ) -> SendResult:
        store = _require_store(request.store)
        fields, channel = request.fields, request.fields["channel"]
        notes: list[str] = []
        if already is not None:
            # An earlier attempt posted; only what came after (the parent edit) is left to do.
            channel_id, ts = already.split()
            notes.append(f"already posted to {channel} (ts {ts})")
        if parent is None or parent.startswith(PENDING + " "):
            # The parent claim expired since our earlier attempt; nothing else can be done safely.
            return SendResult(detail="; ".join(notes))
        parent_channel, parent_ts = parent.split()
        if already is None:
            posted = self._post(request, text, thread_ts=parent_ts)
            channel_id, ts = posted.channel, posted.ts
            store.set(sent_key, f"{channel_id} {ts}", ttl=SENT_TTL)
            store.set(thread_store_key, parent, ttl=thread_ttl)  # an active thread is remembered longer
            notes.append(posted.detail(f"replied in the thread of {parent_ts} in {channel} (ts {ts})"))
        if fields.get("update_parent") and ts != parent_ts:
            notes.append(self._update_parent(parent_channel, parent_ts, fields))
        return SendResult(detail="; ".join(notes), data={"channel": channel_id, "ts": ts, "thread_ts": parent_ts})

    def _post(self, request: ActionRequest, text: str, thread_ts: str | None = None) -> Posted:
        """Post the action's message, unless an earlier attempt of it already did (its answer never came).

        The attempts are written down (first and last time, thread) before posting, and kept when the
        answer may have been lost, so the next attempt knows where and when to search."""
        store = _require_store(request.store)
        channel = str(request.fields["channel"])
        key, attempt_key = _action_key(request), _attempt_key(request)
        earlier = None if request.forced else store.get(attempt_key)
        note = ""
        if earlier is not None:
            found, note = self._find_earlier(store, channel, key, earlier)
            if found is not None:
                return found
        now = time.time()
        first = float(earlier.split()[0]) if earlier else now
        store.set(attempt_key, f"{first:.6f} {now:.6f} {thread_ts or '-'}", ttl=SENT_TTL)
        try:
            channel_id, ts = self._chat_post(channel, text, request.fields, key, thread_ts)
        except ConnectorError as exc:
            if earlier is None and not (isinstance(exc, TransientError) and exc.maybe_delivered):
                store.delete(attempt_key)  # Slack answered: nothing was posted
            raise
        if not _CHANNEL_ID.match(channel):
            store.set(_channel_store_key(channel), channel_id, ttl=CHANNEL_TTL)
        return Posted(channel_id, ts, note)

    def _find_earlier(self, store: ConnectorStore, channel: str, key: str, earlier: str) -> tuple[Posted | None, str]:
        """The message an earlier attempt posted, found by its metadata in the channel (or thread) around
        the earlier attempts; else None and, when Slack would not let us look, a note saying so."""
        first, last, thread_ts = earlier.split()
        window = (float(first) - CLOCK_MARGIN, float(last) + SEARCH_AFTER)
        try:
            channel_id = self._channel_id(store, channel)
            for message in self._messages_within(channel_id, window, thread_ts.strip("-")):
                if _marker_of(message) == key:
                    ts = str(message["ts"])
                    note = f"found the message an earlier attempt posted in {channel} (ts {ts}): not posted again"
                    return Posted(channel_id, ts, note, found=True), ""
        except SlackError as exc:
            log.warning(
                "slack: cannot look for the message an earlier attempt of %s may have posted in %s (%s); "
                "posting it again, it may show twice",
                key,
                channel,
                exc.code,
            )
            return (
                None,
                f"could not check whether an earlier attempt posted it (Slack: {exc.code}): it may show twice",
            )
        return None, ""

    def _channel_id(self, store: ConnectorStore, channel: str) -> str:
        """The id of a channel given as #name (history is read by id): remembered from posts, else listed."""
        if _CHANNEL_ID.match(channel):
            return channel
        known = store.get(_channel_store_key(channel))
        if known:
            return known
        try:
            channels = self._list_channels(private=True)
        except SlackError as exc:
            if exc.code != "missing_scope":
                raise
            channels = self._list_channels(private=False)  # without groups:read, public channels only
        found = channels.get(channel.removeprefix("#"))
        if found is None:
            raise SlackError(f"channel {channel} is not listed", "channel_not_found")
        store.set(_channel_store_key(channel), str(found["id"]), ttl=CHANNEL_TTL)
        return str(found["id"])

    def _messages_within(
        self, channel_id: str, window: tuple[float, float], thread_ts: str
    ) -> Iterator[dict[str, Any]]:
        """Messages (with metadata) of the channel, or of one thread, posted within `window`; a bounded
        number of pages."""
        web = self._web_client
        method = "conversations.replies" if thread_ts else "conversations.history"
        fetch = web.conversations_replies if thread_ts else web.conversations_history
        oldest, latest = (f"{t:.6f}" for t in window)
        args: dict[str, Any] = {"channel": channel_id, "oldest": oldest, "latest": latest, "limit": LOOKUP_PAGE}
        if thread_ts:
            args["ts"] = thread_ts
        cursor = None
        for _ in range(LOOKUP_PAGES):
            page = self._call(lambda c=cursor: fetch(**args, cursor=c, include_all_metadata=True), method, channel_id)
            yield from page.get("messages") or []
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return

    def _chat_post(
        self, channel: str, text: str, fields: Mapping[str, Any], key: str, thread_ts: str | None
    ) -> tuple[str, str]:
        args: dict[str, Any] = {
            "channel": channel,
            "text": text,
            "unfurl_links": bool(fields.get("unfurl_links")),
            "unfurl_media": bool(fields.get("unfurl_media")),
            "link_names": False,  # "@channel" typed as a plain word stays a word
            # The marker a later attempt searches for when this one's answer never comes.
            "metadata": {"event_type": MARKER_EVENT, "event_payload": {"action": key}},
        }
        for name in ("blocks", "username", "icon_emoji"):
            if fields.get(name):
                args[name] = fields[name]
        if thread_ts:
            args["thread_ts"] = thread_ts
            if fields.get("reply_broadcast"):
                args["reply_broadcast"] = True
        web = self._web_client
        response = self._call(lambda: web.chat_postMessage(**args), "chat.postMessage", channel, creates=True)
        return str(response["channel"]), str(response["ts"])

    def _update_parent(self, parent_channel: str, parent_ts: str, fields: Mapping[str, Any]) -> str:
        web = self._web_client
        text = str(fields.get("parent_text") or "")
        if not text.strip():
            raise PermanentError("parent_text rendered empty: give it a text that is never blank")
        # chat.update keeps the old blocks unless given some; [] removes them so the new text shows.
        blocks = fields.get("parent_blocks") or []
        try:
            self._call(
                lambda: web.chat_update(channel=parent_channel, ts=parent_ts, text=text, blocks=blocks),
                "chat.update",
                parent_channel,
            )
        except SlackError as exc:
            if exc.code == "message_not_found":
                return f"the first message of the thread ({parent_ts}) was deleted in Slack; nothing to update"
            raise
        return f"updated the first message of the thread ({parent_ts})"

    @property
    def _web_client(self) -> WebClient:
        if self._web is None:
            raise PermanentError("internal: this slack connector has no token")
        return self._web

    def _call(self, call: Any, method: str, channel: str, creates: bool = False) -> SlackResponse:
        """Run one Web API call; turn every failure into a Transient or Permanent error for the owner.
        `creates`: a repeat of the call would make a second message (chat.postMessage; an edit would not)."""
        try:
            response: SlackResponse = call()
        except SlackApiError as exc:
            raise _api_error(exc.response, method, channel) from None
        except SlackClientError as exc:
            raise PermanentError(f"Slack client refused the request ({method}): {exc}") from None
        except OSError as exc:  # URLError, timeouts, connection refused or reset
            if _timed_out(exc):
                raise TransientError(
                    f"Slack did not answer {method} within {self.settings.timeout:g} s",
                    maybe_delivered=creates and _sent(exc),
                ) from None
            raise TransientError(f"cannot reach Slack ({method}): {_os_reason(exc)}") from None
        except HTTPException as exc:  # the answer was cut off: Slack had the request
            raise TransientError(
                f"Slack's answer to {method} was cut off: {type(exc).__name__}", maybe_delivered=creates
            ) from None
        return response

    def _send_webhook(self, fields: Mapping[str, Any], text: str) -> SendResult:
        assert self._hook is not None
        try:
            response = self._hook.send(
                text=text,
                blocks=fields.get("blocks") or None,
                unfurl_links=bool(fields.get("unfurl_links")),
                unfurl_media=bool(fields.get("unfurl_media")),
            )
        except OSError as exc:
            if _timed_out(exc):
                # An incoming webhook has no history to search: a late answer is a possible duplicate.
                raise TransientError(
                    f"the Slack incoming webhook did not answer within {self.settings.timeout:g} s",
                    maybe_delivered=_sent(exc),
                ) from None
            raise TransientError(f"cannot reach the Slack incoming webhook: {_os_reason(exc)}") from None
        except HTTPException as exc:
            raise TransientError(
                f"the Slack incoming webhook's answer was cut off: {type(exc).__name__}", maybe_delivered=True
            ) from None
        status, body = response.status_code, excerpt(response.body or "", 300).strip()
        if status == 200:
            ignored = [name for name in ("thread_key", "channel", "username", "icon_emoji") if fields.get(name)]
            note = f" ({', '.join(ignored)} ignored: an incoming webhook posts to its own channel, unthreaded)"
            return SendResult(detail="posted through the incoming webhook" + (note if ignored else ""))
        if status == 429:
            retry_after = parse_retry_after(_header(response.headers, "Retry-After"))
            raise TransientError("Slack is rate limiting the incoming webhook (HTTP 429)", retry_after=retry_after)
        if status >= 500:
            raise TransientError(f"the Slack incoming webhook failed (HTTP {status}: {body or 'no details'})")
        raise PermanentError(_webhook_advice(status, body))

    # -- checks ----------------------------------------------------------------------------

    def offline_check(self, actions: Mapping[str, ActionFields] | None = None) -> list[str]:
        """Action fields that do not fit this connector's route (a token needs a channel; a webhook
        has its own channel and no threads). `actions`: action id ("mapping/name") -> fields."""
        problems: list[str] = []
        for action_id, action in (actions or {}).items():
            if not isinstance(action, PostMessage):
                continue
            if self._web is not None and not action.channel:
                problems.append(f'action {action_id} has no channel: add channel: "#name" to it')
            if self._hook is not None:
                names = ("channel", "thread_key", "update_parent", "username", "icon_emoji")
                ignored = [name for name in names if getattr(action, name)]
                if ignored:
                    problems.append(
                        f"action {action_id}: an incoming webhook posts to its own channel without threads or "
                        f"edits, so {', '.join(ignored)} will be ignored; use a bot token for these"
                    )
        return problems

    def online_check(self, actions: Mapping[str, ActionFields] | None = None) -> list[str]:
        """Confirm the token (auth.test) and its scopes and, given the actions (id -> fields), that
        each channel they post to exists and has the app in it. One line per problem, with what to do."""
        if self._hook is not None:
            return self._check_webhook()
        try:
            auth = self._call(self._web_client.auth_test, "auth.test", "")
        except (TransientError, PermanentError) as exc:
            return [exc.reason]
        bot = str(auth.get("user") or "the app")
        scopes = {s.strip() for s in (_header(auth.headers, "X-OAuth-Scopes") or "").split(",") if s.strip()}
        problems: list[str] = []
        if "chat:write" not in scopes:
            problems.append(_scope_advice("chat:write"))
        posts = [a for a in (actions or {}).values() if isinstance(a, PostMessage)]
        if any(a.username or a.icon_emoji for a in posts) and "chat:write.customize" not in scopes:
            problems.append(
                "username/icon_emoji are ignored by Slack without the scope chat:write.customize; "
                "add it (OAuth & Permissions → Bot Token Scopes) and reinstall the app, or remove them"
            )
        channels = sorted({a.channel for a in posts if a.channel})
        if channels:
            problems += self._check_channels(channels, scopes, bot)
        return problems

    def _check_channels(self, channels: list[str], scopes: set[str], bot: str) -> list[str]:
        if "channels:read" not in scopes:
            return [
                f"cannot check {', '.join(channels)}: add the scope channels:read (and groups:read for private "
                f"channels) so this check can see channels, or make sure by hand that @{bot} was invited to each"
            ]
        known = self._list_channels(private="groups:read" in scopes)
        problems = []
        for ref in channels:
            name = ref.removeprefix("#")
            found = known.get(ref) or known.get(name)
            if found is None and re.match(r"^[CG][A-Z0-9]{6,}$", ref):
                found = self._channel_info(ref)
            if found is None:
                problems.append(
                    f"channel {ref} not found: check the name in the mappings; if it is private, invite the app "
                    f"(in the channel, type /invite @{bot})"
                    + ("" if "groups:read" in scopes else " and add the scope groups:read so this check can see it")
                )
            elif found.get("is_archived"):
                problems.append(f"channel {ref} is archived: unarchive it or choose another channel")
            elif not found.get("is_member") and (found.get("is_private") or "chat:write.public" not in scopes):
                problems.append(f"the app is not in {ref}: invite it (in {ref}, type /invite @{bot})")
        return problems

    def _channel_info(self, channel_id: str) -> dict[str, Any] | None:
        """A channel given by id (conversations.list may not show it); None when Slack does not know it."""
        web = self._web_client
        try:
            info = self._call(lambda: web.conversations_info(channel=channel_id), "conversations.info", channel_id)
        except PermanentError:
            return None
        return dict(info["channel"])

    def _list_channels(self, private: bool) -> dict[str, dict[str, Any]]:
        web = self._web_client
        types = "public_channel,private_channel" if private else "public_channel"
        found: dict[str, dict[str, Any]] = {}
        cursor = None
        for _ in range(100):  # 100 pages of 1,000: far beyond any salon's workspace
            page = self._call(
                lambda c=cursor: web.conversations_list(types=types, exclude_archived=False, limit=1000, cursor=c),
                "conversations.list",
                "",
            )
            for channel in page.get("channels") or []:
                found[channel["name"]] = channel
                found[channel["id"]] = channel
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                break
        return found

    def _check_webhook(self) -> list[str]:
        """An empty payload is refused with 400 by a live webhook and posts nothing: it proves the URL."""
        assert self._hook is not None
        try:
            response = self._hook.send_dict({})
        except OSError as exc:
            return [f"cannot reach the Slack incoming webhook: {_os_reason(exc)}"]
        body = excerpt(response.body or "", 300).strip()
        if response.status_code == 400 and body in (
            "no_text",
            "invalid_payload",
            "missing_text_or_fallback_or_attachments",
        ):
            return []
        if response.status_code == 200:
            return []
        return [_webhook_advice(response.status_code, body)]

    def close(self) -> None:
        """slack_sdk opens one connection per call and closes it: nothing is pooled."""


# -- errors --------------------------------------------------------------------------------


class SlackError(PermanentError):
    """A permanent `ok: false` answer, with Slack's error code."""

    def __init__(self, reason: str, code: str):
        super().__init__(reason)
        self.code = code


def _api_error(response: SlackResponse, method: str, channel: str) -> TransientError | PermanentError:
    status = response.status_code
    data = response.data if isinstance(response.data, dict) else {}
    error = str(data.get("error") or "")
    if status == 429 or error == "ratelimited":
        retry_after = parse_retry_after(_header(response.headers, "Retry-After"))
        wait = f"; trying again in {retry_after:g} s" if retry_after is not None else ""
        return TransientError(f"Slack is rate limiting this app ({method}){wait}", retry_after=retry_after)
    if status >= 500 or error in TRANSIENT_ERRORS:
        what = error if error and not error.startswith("Received a response") else f"HTTP {status}"
        return TransientError(f"Slack had a problem on its side ({method}: {what})")
    if status != 200:
        return PermanentError(f"Slack answered HTTP {status} to {method}: check base_url (normally {DEFAULT_BASE_URL})")
    return SlackError(_advice(error, data, method, channel), error)


def _advice(error: str, data: Mapping[str, Any], method: str, channel: str) -> str:
    """What the owner should do about an `ok: false` error."""
    where = channel or "the channel"
    token = f"put the new token in {TOKEN_ENV} and restart salon-bridge"
    advice = {
        "channel_not_found": (
            f"Slack has no channel {where} that the app can see: check the name in the mapping; if the channel "
            "is private, invite the app first (in the channel, type /invite @<app name>)"
        ),
        "not_in_channel": (
            f"the app is not in {where}: invite it (in {where}, type /invite @<app name>), or add the scope "
            "chat:write.public to post in public channels without joining"
        ),
        "is_archived": f"{where} is archived: unarchive it in Slack or choose another channel in the mapping",
        "invalid_auth": (
            f"Slack refused the token: check that {TOKEN_ENV} holds the app's Bot User OAuth Token (xoxb-…) "
            "from OAuth & Permissions"
        ),
        "not_authed": f"no token reached Slack: set {TOKEN_ENV}",
        "account_inactive": (
            "the token belongs to a deactivated user or a deleted app: reinstall the app to the workspace and " + token
        ),
        "token_revoked": "the token was revoked (was the app uninstalled?): reinstall the app and " + token,
        "token_expired": (
            "the token expired (token rotation is on for this app): turn rotation off under OAuth & "
            "Permissions, reinstall, and " + token
        ),
        "missing_scope": _scope_advice(str(data.get("needed") or "chat:write")),
        "invalid_blocks": (
            "Slack refused the blocks of this message"
            + _details(data)
            + ": fix `blocks` in the mapping (paste them into Slack's Block Kit Builder to see the problem)"
        ),
        "invalid_blocks_format": "blocks must be a list of Block Kit blocks: fix `blocks` in the mapping",
        "msg_too_long": "the message is longer than Slack accepts: shorten text in the mapping",
        "no_text": "the message is empty: give the action a text",
        "restricted_action": f"a workspace setting stops the app from posting in {where}: ask a Slack admin",
        "cant_update_message": "Slack does not let the app edit the first message of this thread",
        "edit_window_closed": "the first message of this thread is too old to be edited (workspace setting)",
        "message_not_found": "the first message of this thread no longer exists in Slack",
        "invalid_arguments": "Slack refused the request" + _details(data) + ": check the action's fields",
    }.get(error)
    if advice is None:
        return f"Slack refused {method}: {excerpt(error, 300) or 'unknown error'}" + _details(data)
    return f"{advice} (Slack: {error})"


def _scope_advice(needed: str) -> str:
    return (
        f"the Slack app lacks the scope {needed}: add it under OAuth & Permissions → Bot Token Scopes, "
        f"reinstall the app to the workspace, and update {TOKEN_ENV} if the token changed"
    )


def _details(data: Mapping[str, Any]) -> str:
    messages = (data.get("response_metadata") or {}).get("messages") or data.get("errors") or []
    text = "; ".join(str(m) for m in messages)
    return f" ({excerpt(text, 300)})" if text else ""


def _webhook_advice(status: int, body: str) -> str:
    advice = {
        "invalid_payload": "the message is not valid for Slack: check text and blocks in the mapping",
        "no_text": "the message is empty: give the action a text",
        "invalid_blocks": "Slack refused the blocks of this message: fix `blocks` in the mapping",
        "invalid_token": "the incoming-webhook URL is not valid: create a new webhook and update SLACK_WEBHOOK_URL",
        "no_service": (
            "the incoming webhook was removed or the app uninstalled: create a new webhook and update SLACK_WEBHOOK_URL"
        ),
        "no_team": "the Slack workspace of this webhook no longer exists: update SLACK_WEBHOOK_URL",
        "team_disabled": "the Slack workspace of this webhook is disabled: update SLACK_WEBHOOK_URL",
        "channel_not_found": "the webhook's channel no longer exists: create a new webhook for another channel",
        "channel_is_archived": "the webhook's channel is archived: unarchive it, or create a webhook for another one",
        "action_prohibited": "a workspace admin restricted posting in the webhook's channel: ask a Slack admin",
        "posting_to_general_channel_denied": "only admins may post in the webhook's channel: pick another channel",
    }.get(body)
    if advice is None:
        return f"the Slack incoming webhook refused the message (HTTP {status}: {body or 'no details'})"
    return f"{advice} (Slack: HTTP {status} {body})"


# -- helpers -------------------------------------------------------------------------------


def _require_store(store: ConnectorStore | None) -> ConnectorStore:
    if store is None:
        raise PermanentError("internal: the slack connector needs a connector store")
    return store


def _thread_store_key(tenant_id: str, channel: str, thread_key: str) -> str:
    """Threads are per salon and channel: booking ids of two salons may collide, and one booking
    may have a thread in #caja and another in #recepcion."""
    if len(thread_key) > 200:
        thread_key = "sha1-" + hashlib.sha1(thread_key.encode()).hexdigest()
    return f"thread:{tenant_id}:{channel.removeprefix('#')}:{thread_key}"


def _header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name.lower():
            return str(value[0] if isinstance(value, list) else value)
    return None


def _timed_out(exc: OSError) -> bool:
    # urllib raises TimeoutError while reading, URLError(reason=TimeoutError) while connecting.
    return isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError)


def _sent(exc: OSError) -> bool:
    """A timeout after connecting: the request was (being) sent, only the answer is missing."""
    return isinstance(exc, TimeoutError)


class Posted(NamedTuple):
    """A message of this action in Slack: just posted, or `found` where an earlier attempt posted it."""

    channel: str
    ts: str
    note: str = ""  # what to add to the event log (the message was found; history could not be read)
    found: bool = False

    def detail(self, posted: str) -> str:
        if self.found:
            return self.note
        return f"{posted}; {self.note}" if self.note else posted


def _action_key(request: ActionRequest) -> str:
    """The action's key in its message's metadata: `<event id>/<action id>`."""
    return f"{request.event_id}/{request.action_id}"


def _attempt_key(request: ActionRequest) -> str:
    return f"posting:{request.event_id}:{request.action_id}"


def _channel_store_key(channel: str) -> str:
    return f"channel:{channel.removeprefix('#')}"


def _marker_of(message: Mapping[str, Any]) -> str | None:
    metadata = message.get("metadata") or {}
    if metadata.get("event_type") != MARKER_EVENT:
        return None
    return (metadata.get("event_payload") or {}).get("action")


def _os_reason(exc: OSError) -> str:
    reason = getattr(exc, "reason", None)  # urllib.error.URLError wraps the socket error
    return str(reason or exc) or type(exc).__name__
