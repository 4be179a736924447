"""The gateway: plain TEXT JSON frames, HELLO / heartbeat / IDENTIFY / READY / RESUME, dispatches."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from .emulator import Emulator

log = logging.getLogger(__name__)

DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE, VOICE, RESUME, RECONNECT, REQUEST_MEMBERS, INVALID_SESSION, HELLO, ACK = (
    0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11,
)

# Intent bits and the events they gate
GUILDS, GUILD_MEMBERS, GUILD_PRESENCES = 1 << 0, 1 << 1, 1 << 8
GUILD_MESSAGES, GUILD_MESSAGE_REACTIONS, GUILD_MESSAGE_TYPING = 1 << 9, 1 << 10, 1 << 11
DIRECT_MESSAGES, DIRECT_MESSAGE_REACTIONS, DIRECT_MESSAGE_TYPING = 1 << 12, 1 << 13, 1 << 14
MESSAGE_CONTENT = 1 << 15
PRIVILEGED = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT

_EVENT_INTENTS = {
    "GUILD_CREATE": (GUILDS, GUILDS), "GUILD_UPDATE": (GUILDS, GUILDS), "GUILD_DELETE": (GUILDS, GUILDS),
    "CHANNEL_CREATE": (GUILDS, GUILDS), "CHANNEL_UPDATE": (GUILDS, GUILDS), "CHANNEL_DELETE": (GUILDS, GUILDS),
    "GUILD_ROLE_UPDATE": (GUILDS, GUILDS),
    "GUILD_MEMBER_ADD": (GUILD_MEMBERS, GUILD_MEMBERS), "GUILD_MEMBER_UPDATE": (GUILD_MEMBERS, GUILD_MEMBERS),
    "MESSAGE_CREATE": (GUILD_MESSAGES, DIRECT_MESSAGES), "MESSAGE_UPDATE": (GUILD_MESSAGES, DIRECT_MESSAGES),
    "MESSAGE_DELETE": (GUILD_MESSAGES, DIRECT_MESSAGES),
    "MESSAGE_REACTION_ADD": (GUILD_MESSAGE_REACTIONS, DIRECT_MESSAGE_REACTIONS),
    "MESSAGE_REACTION_REMOVE": (GUILD_MESSAGE_REACTIONS, DIRECT_MESSAGE_REACTIONS),
    "MESSAGE_REACTION_REMOVE_ALL": (GUILD_MESSAGE_REACTIONS, DIRECT_MESSAGE_REACTIONS),
    "TYPING_START": (GUILD_MESSAGE_TYPING, DIRECT_MESSAGE_TYPING),
}

NON_RESUMABLE_CLOSE = {1000, 1001, 4004, 4010, 4011, 4012, 4013, 4014}


@dataclass(eq=False)
class Session:
    id: str
    intents: int
    shard: tuple[int, int] = (0, 1)
    seq: int = 0
    conn: Connection | None = None
    backlog: list[tuple[int, str]] = field(default_factory=list)
    resumable: bool = True
    replay_from: int = 0  # the next RESUME replays from this seq, though the client had it (see replay_on_resume)

    def wants(self, event: str, guild_id: int | None) -> bool:
        gate = _EVENT_INTENTS.get(event)
        if gate is not None and not self.intents & (gate[0] if guild_id else gate[1]):
            return False
        if guild_id is not None and self.shard[1] > 1:
            return (guild_id >> 22) % self.shard[1] == self.shard[0]
        return True


class Connection:
    """One websocket: an ordered outgoing queue drained by a writer task."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.session: Session | None = None
        self.server_close_code: int | None = None  # set when the emulator closed the socket
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.writer = asyncio.create_task(self._write())

    def send(self, text: str) -> None:
        self.queue.put_nowait(text)

    def send_op(self, op: int, d: Any) -> None:
        self.send(json.dumps({"op": op, "d": d, "s": None, "t": None}))

    async def _write(self) -> None:
        while True:
            text = await self.queue.get()
            if text is None or self.ws.closed:
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return

    async def close(self, code: int, message: str = "") -> None:
        if self.server_close_code is None:
            self.server_close_code = code
        self.queue.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self.writer, 1.0)
        await self.ws.close(code=code, message=message.encode())


class Gateway:
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.sessions: dict[str, Session] = {}
        self.connections: set[Connection] = set()

    # -- state for tests ---------------------------------------------------------------------------------

    def live_sessions(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.conn is not None and not s.conn.ws.closed]

    # -- dispatching ---------------------------------------------------------------------------------------

    def dispatch(
        self,
        event: str,
        data: dict[str, Any],
        *,
        guild_id: int | None = None,
        redacted: dict[str, Any] | None = None,
        only: Session | None = None,
    ) -> int:
        """Send a DISPATCH to every session that subscribed to it (buffered for RESUME); returns receivers."""
        sent = 0
        for session in [only] if only else list(self.sessions.values()):
            if not session.resumable or not session.wants(event, guild_id):
                continue
            payload = redacted if redacted is not None and not session.intents & MESSAGE_CONTENT else data
            self._send_dispatch(session, event, payload)
            sent += 1
        self.emu._log("gateway.dispatch", t=event, receivers=sent)
        return sent

    def _send_dispatch(self, session: Session, event: str, data: dict[str, Any]) -> None:
        session.seq += 1
        text = json.dumps({"op": DISPATCH, "t": event, "s": session.seq, "d": data})
        session.backlog.append((session.seq, text))
        if len(session.backlog) > 5000:
            del session.backlog[:1000]
        if session.conn is not None:
            session.conn.send(text)

    def replay_on_resume(self, event: str) -> None:
        """At the next RESUME, replay the latest ``event`` and everything after it although the client had them:
        Discord delivers at least once, and an event can arrive twice across a resume."""
        for session in self.sessions.values():
            for seq, text in reversed(session.backlog):
                if json.loads(text)["t"] == event:
                    session.replay_from = seq
                    break

    # -- the websocket -------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("encoding", "json") != "json":
            raise web.HTTPBadRequest(text="the emulator speaks encoding=json only")
        ws = web.WebSocketResponse(autoping=True, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        conn = Connection(ws)
        self.connections.add(conn)
        conn.send_op(HELLO, {"heartbeat_interval": self.emu.settings.heartbeat_interval_ms})
        self.emu._log("gateway.connect", query=dict(request.query))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        frame = json.loads(msg.data)
                    except ValueError:
                        await conn.close(4002, "Decode error")
                        break
                    await self._on_frame(conn, frame)
                elif msg.type == WSMsgType.BINARY:
                    await conn.close(4002, "Decode error")
                    break
                else:
                    break
        finally:
            self.connections.discard(conn)
            conn.queue.put_nowait(None)
            session = conn.session
            code = conn.server_close_code or ws.close_code
            if session is not None and session.conn is conn:
                session.conn = None
                if code in NON_RESUMABLE_CLOSE:
                    session.resumable = False
                    self.sessions.pop(session.id, None)
            self.emu._log("gateway.disconnect", code=code, by_emulator=conn.server_close_code is not None)
            self.emu._notify()
        return ws

    async def _on_frame(self, conn: Connection, frame: dict[str, Any]) -> None:
        op, d = frame.get("op"), frame.get("d")
        if op == HEARTBEAT:
            conn.send_op(ACK, None)
        elif op == IDENTIFY:
            await self._identify(conn, d or {})
        elif op == RESUME:
            await self._resume(conn, d or {})
        elif op == REQUEST_MEMBERS:
            self._request_members(conn, d or {})
        elif op in (PRESENCE, VOICE):
            self.emu._log("gateway.recv", op=op)
        else:
            await conn.close(4001, "Unknown opcode")

    def _token_ok(self, token: Any) -> bool:
        if not isinstance(token, str):
            return False
        return token.removeprefix("Bot ") == self.emu.settings.bot_token

    async def _identify(self, conn: Connection, d: dict[str, Any]) -> None:
        if conn.session is not None:
            await conn.close(4005, "Already authenticated.")
            return
        if not self._token_ok(d.get("token")):
            self.emu._failure(4004, 4004, "Authentication failed (gateway IDENTIFY with a wrong token)", "GATEWAY IDENTIFY")
            await conn.close(4004, "Authentication failed.")
            return
        intents = d.get("intents")
        if not isinstance(intents, int):
            await conn.close(4013, "Invalid intent(s).")
            return
        if intents & PRIVILEGED and not self.emu.settings.allow_privileged_intents:
            self.emu._failure(4014, 4014, "Disallowed intent(s): privileged intents are not enabled", "GATEWAY IDENTIFY")
            await conn.close(4014, "Disallowed intent(s).")
            return
        shard = tuple(d.get("shard") or (0, 1))
        session = Session(id=uuid.uuid4().hex, intents=intents, shard=(int(shard[0]), int(shard[1])))
        self.sessions[session.id] = session
        session.conn = conn
        conn.session = session
        emu = self.emu
        guilds = [g for g in emu.bot_guilds() if session.shard[1] == 1 or (g.id >> 22) % session.shard[1] == session.shard[0]]
        ready = {
            "v": 10,
            "user": {**emu.bot_user.payload(), "verified": True, "mfa_enabled": False, "flags": 0, "email": None},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": emu.gateway_url,
            "application": {"id": str(emu.application_id), "flags": 0},
            "shard": list(session.shard),
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
        }
        self._send_dispatch(session, "READY", ready)
        for guild in guilds:
            self._send_dispatch(session, "GUILD_CREATE", emu._guild_create_payload(guild, members=bool(intents & GUILD_MEMBERS)))
        emu._log("gateway.identify", session=session.id, intents=intents, guilds=len(guilds))
        emu._notify()

    async def _resume(self, conn: Connection, d: dict[str, Any]) -> None:
        session = self.sessions.get(str(d.get("session_id")))
        if session is None or not session.resumable or not self._token_ok(d.get("token")):
            self.emu._log("gateway.resume", ok=False)
            conn.send_op(INVALID_SESSION, False)
            return
        old = session.conn
        if old is not None and old is not conn:
            old.session = None
            asyncio.create_task(old.close(4009, "Session superseded"))
        session.conn = conn
        conn.session = session
        last = d.get("seq") or 0
        if session.replay_from:
            last, session.replay_from = min(last, session.replay_from - 1), 0
        for seq, text in session.backlog:
            if seq > last:
                conn.send(text)
        self._send_dispatch(session, "RESUMED", {})
        self.emu._log("gateway.resume", ok=True, session=session.id, replayed=session.seq - last - 1)
        self.emu._notify()

    def _request_members(self, conn: Connection, d: dict[str, Any]) -> None:
        if conn.session is None:
            return
        ids = d.get("guild_id")
        for gid in ids if isinstance(ids, list) else [ids]:
            guild = self.emu._guild_by_id(int(gid))
            if guild is None:
                continue
            query = (d.get("query") or "").lower()
            wanted = {int(u) for u in d.get("user_ids") or []}
            members = [
                m.payload() for m in guild.members.values()
                if (not wanted or m.user.id in wanted) and m.user.name.lower().startswith(query)
            ]
            limit = d.get("limit") or 0
            if limit:
                members = members[:limit]
            chunk = {"guild_id": str(guild.id), "members": members, "chunk_index": 0, "chunk_count": 1, "not_found": []}
            if d.get("nonce"):
                chunk["nonce"] = d["nonce"]
            self._send_dispatch(conn.session, "GUILD_MEMBERS_CHUNK", chunk)

    # -- test controls -------------------------------------------------------------------------------------

    async def drop(self, code: int = 4000) -> None:
        """Close every live websocket with ``code`` (4000: the client resumes)."""
        for conn in list(self.connections):
            if code in NON_RESUMABLE_CLOSE and conn.session is not None:
                conn.session.resumable = False
                self.sessions.pop(conn.session.id, None)
            await conn.close(code)

    def request_reconnect(self) -> None:
        for conn in list(self.connections):
            conn.send_op(RECONNECT, None)

    def invalidate_sessions(self) -> None:
        for session in list(self.sessions.values()):
            session.resumable = False
            if session.conn is not None:
                session.conn.send_op(INVALID_SESSION, False)
        self.sessions.clear()

    async def close_all(self) -> None:
        for conn in list(self.connections):
            with contextlib.suppress(Exception):
                await conn.close(1001, "emulator stopping")
        self.sessions.clear()
