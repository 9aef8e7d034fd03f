"""pgfeed's Python client.

    async with pgfeed.connect("ws://localhost:8000/ws", tables=["studies"]) as feed:
        studies = await feed.live_table("studies")
        async for event in feed:
            ...

The feed reconnects by itself and resumes from where the delivered stream
stands, with one ``subscribe {..., after}`` naming its checked position: every
event once, in commit order, none missed. When the server says that position
cannot be continued (``refresh_needed``), the feed yields that message,
re-reads its live tables and yields ``{"type": "reset", ...}``. The same
protocol and the same rules as the server's /client.js.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import urlencode, urlsplit, urlunsplit

import websockets

__all__ = ["connect", "Feed", "LiveTable"]

BACKOFF = (1, 2, 4, 8, 16, 30)
_CLOSED = object()


def connect(
    url: str,
    *,
    tables: Optional[List[str]] = None,
    types: Optional[List[str]] = None,
    where: Optional[Dict[str, Any]] = None,
    token: Optional[str] = None,
    after: Optional[str] = None,
) -> "Feed":
    """A feed of the server at ``url`` (``ws://host:port/ws``; ``http`` works too)."""
    return Feed(url, tables=tables, types=types, where=where, token=token, after=after)


class LiveTable:
    """A tracked table's rows, from an exact snapshot, then every event applied in order."""

    def __init__(self, feed: "Feed", table: str, key: str) -> None:
        self.table = table
        self.key = key
        self.seq: Optional[int] = None
        self._feed = feed
        self._rows: Dict[Any, Dict[str, Any]] = {}
        self._handlers: List[Callable[["LiveTable"], None]] = []
        self._loaded = asyncio.get_running_loop().create_future()

    @property
    def rows(self) -> List[Dict[str, Any]]:
        """The current rows, ordered by key."""
        return [self._rows[k] for k in sorted(self._rows, key=_sort_key)]

    def get(self, key: Any) -> Optional[Dict[str, Any]]:
        return self._rows.get(key)

    def on_change(self, fn: Callable[["LiveTable"], None]) -> Callable[[], None]:
        """Calls ``fn(table)`` after every change; returns a function that stops it."""
        self._handlers.append(fn)
        return lambda: self._handlers.remove(fn)

    def close(self) -> None:
        """Stops following the table."""
        self._feed._forget(self)

    def _load(self, rows: List[Dict[str, Any]], seq: int) -> None:
        self._rows = {row[self.key]: row for row in rows}
        self.seq = seq
        if not self._loaded.done():
            self._loaded.set_result(self)
        self._changed()

    def _apply(self, event: Dict[str, Any]) -> None:
        if event.get("derived") or event.get("table") != self.table:
            return
        op = event.get("op")
        if op == "TRUNCATE":
            self._rows.clear()
        elif op == "DELETE":
            self._rows.pop((event.get("data") or {}).get(self.key), None)
        elif op in ("INSERT", "UPDATE"):
            row = event.get("data") or {}
            self._rows[row.get(self.key)] = row
        elif op == "SCHEMA":
            # The columns changed: the rows are read again in their new shape.
            self._feed._request_snapshot(self)
            return
        else:
            return
        self._changed()

    def _changed(self) -> None:
        for fn in list(self._handlers):
            try:
                fn(self)
            except Exception:  # an application's handler never stops the feed
                pass


def _sort_key(value: Any) -> Any:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


class Feed:
    """One connection's feed. Use ``async with``; iterate for events."""

    def __init__(self, url: str, *, tables=None, types=None, where=None, token=None, after=None) -> None:
        parts = urlsplit(url)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        path = parts.path if parts.path not in ("", "/") else "/ws"
        query = parts.query
        if token:
            query = (query + "&" if query else "") + urlencode({"token": token})
        self.url = urlunsplit((scheme, parts.netloc, path, query, ""))
        self.options = {"tables": tables, "types": types, "where": where}
        self.state = "connecting"
        # Where the delivered stream stands (as in /client.js): `whole`, the
        # checked position after which nothing is missing; `open`, the
        # transaction being delivered; `skip`, how many of its events a
        # resume brings again.
        self._position: Dict[str, Any] = {"whole": after, "open": None, "skip": 0}
        self._events: asyncio.Queue = asyncio.Queue()
        self._iterating = False
        self._tables: Dict[str, List[LiveTable]] = {}
        self._pending: Dict[str, List[LiveTable]] = {}
        self._socket = None
        self._closed = False
        self._task: Optional[asyncio.Task] = None
        self._subscribed: Optional[asyncio.Future] = None

    async def __aenter__(self) -> "Feed":
        await self.start()
        return self

    async def __aexit__(self, *_exc) -> None:
        await self.close()

    async def start(self) -> None:
        """Connects; returns once the first subscription is in force."""
        self._subscribed = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run())
        await self._subscribed

    async def close(self) -> None:
        self._closed = True
        if self._socket is not None:
            await self._socket.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._events.put_nowait(_CLOSED)

    @property
    def resume_position(self) -> Optional[str]:
        """The checked position after which every event was delivered."""
        return self._position["whole"]

    async def drop(self) -> None:
        """Drops the connection as a network failure would; the feed reconnects and resumes."""
        if self._socket is not None:
            await self._socket.close(code=4000, reason="dropped by the client")

    async def live_table(self, table: str, *, key: str = "id") -> LiveTable:
        """The rows of ``table`` kept current: an exact snapshot, then every event after it."""
        live = LiveTable(self, table, key)
        self._tables.setdefault(table, []).append(live)
        self._request_snapshot(live)
        return await live._loaded

    def __aiter__(self) -> "Feed":
        self._iterating = True
        return self

    async def __anext__(self) -> Dict[str, Any]:
        item = await self._events.get()
        if item is _CLOSED:
            raise StopAsyncIteration
        return item

    # -- the connection -------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while not self._closed:
            try:
                async with websockets.connect(self.url, max_size=None, ping_interval=None) as socket:
                    self._socket = socket
                    async for raw in socket:
                        if self._on_message(json.loads(raw)):
                            failures = 0
                            self.state = "connected"
            except asyncio.CancelledError:
                raise
            except Exception:
                pass  # a lost or refused connection: retried below
            self._socket = None
            if self._closed:
                return
            failures += 1
            self.state = "offline" if failures > 3 else "reconnecting"
            base = BACKOFF[min(failures - 1, len(BACKOFF) - 1)]
            await asyncio.sleep(base * (1 + random.random() * 0.2))

    def _send(self, message: Dict[str, Any]) -> None:
        socket = self._socket
        if socket is not None:
            asyncio.ensure_future(self._send_now(socket, json.dumps(message)))

    @staticmethod
    async def _send_now(socket, text: str) -> None:
        try:
            await socket.send(text)
        except Exception:
            pass  # the connection is going; the next one resubscribes

    def _on_message(self, message: Dict[str, Any]) -> bool:
        """Handles one server message; true once a subscription is in force."""
        kind = message.get("type")
        if kind == "connected":
            # Subscribe and resume in one message: no live event comes before the replay.
            subscription = {"action": "subscribe"}
            for key, value in self.options.items():
                if value:
                    subscription[key] = value
            position = self._position
            if position["whole"] is not None:
                subscription["after"] = position["whole"]
            # What of the open transaction was delivered comes again: dropped.
            position["skip"] = position["open"]["delivered"] if position["open"] else 0
            self._send(subscription)
            # Snapshots asked for and not answered on the lost connection.
            for waiting in list(self._pending.values()):
                for live in waiting:
                    self._send({"action": "snapshot", "table": live.table})
            return False
        if kind == "subscribed":
            if self._position["whole"] is None:
                self._position["whole"] = message.get("position") or str(message.get("seq"))
            if self._subscribed is not None and not self._subscribed.done():
                self._subscribed.set_result(None)
            return True
        if kind == "snapshot":
            for live in self._pending.pop(message.get("table"), []):
                live._load(message.get("rows") or [], message.get("seq"))
            return False
        if kind == "refresh_needed":
            self._recover(message)
            return False
        if kind == "error":
            if message.get("code") == "unavailable" and self._pending:
                # The database is not answering (a reinstall under way): ask again in a second.
                asyncio.get_running_loop().call_later(1, self._ask_again)
                return False
            if message.get("code") in ("not_found", "forbidden"):
                for waiting in self._pending.values():
                    for live in waiting:
                        if not live._loaded.done():
                            live._loaded.set_exception(LookupError(message.get("message")))
                self._pending.clear()
            return False
        if "seq" not in message or "table" not in message:
            return False  # pong, heartbeat, resumed, ...
        if self._seen(message):
            return False
        for live in list(self._tables.get(message["table"], [])):
            if live._loaded.done():
                live._apply(message)
        self._deliver(message)
        return False

    def _seen(self, event: Dict[str, Any]) -> bool:
        """Notes an event in the delivered stream; true when it was delivered already."""
        position = self._position
        open_tx = position["open"]
        if open_tx is not None and open_tx["seq"] == event["seq"]:
            if position["skip"] > 0:
                position["skip"] -= 1
                return True
            open_tx["delivered"] += 1
        else:
            # A new transaction: the one before it is done (what is missing was filtered out).
            if open_tx is not None:
                position["whole"] = open_tx["position"]
            position["open"] = {
                "seq": event["seq"],
                "position": event.get("position") or str(event["seq"]),
                "delivered": 1,
            }
            position["skip"] = 0
        if event.get("tx_index", 0) + 1 == event.get("tx_size", 1):
            position["whole"] = event.get("position") or str(event["seq"])
            position["open"] = None
        return False

    def _deliver(self, item: Dict[str, Any]) -> None:
        if self._iterating:
            self._events.put_nowait(item)

    def _recover(self, message: Dict[str, Any]) -> None:
        """The server cannot continue from where the stream stood: it goes on
        after ``message["position"]``; every live table is read again."""
        self._deliver(message)
        self._position = {"whole": message.get("position") or str(message.get("seq")), "open": None, "skip": 0}
        for tables in self._tables.values():
            for live in tables:
                self._request_snapshot(live)
        self._deliver({"type": "reset", "reason": message.get("reason"), "position": self._position["whole"]})

    def _request_snapshot(self, live: LiveTable) -> None:
        waiting = self._pending.setdefault(live.table, [])
        if live not in waiting:
            waiting.append(live)
        self._send({"action": "snapshot", "table": live.table})

    def _ask_again(self) -> None:
        for waiting in list(self._pending.values()):
            for live in waiting:
                self._send({"action": "snapshot", "table": live.table})

    def _forget(self, live: LiveTable) -> None:
        if live in self._tables.get(live.table, []):
            self._tables[live.table].remove(live)
        if live in self._pending.get(live.table, []):
            self._pending[live.table].remove(live)
