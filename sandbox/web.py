"""The sandbox page: a small aiohttp server that shows the emulator the way Discord's client would.

``GET /`` serves the page (plain HTML/CSS/JS from ``static/``, nothing from the internet). A websocket
(``/ws``) sends the member who looks the whole state, then every change as the emulator's event stream
reports it. The page acts for that member through JSON endpoints that call the emulator exactly as a
test does: slash commands (``/api/invoke``), autocomplete, button clicks, modal forms the bot opens
(``/api/modal`` submits one), reactions, plain messages, and uploads for attachment options, which land
on the emulator's CDN like a Discord upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from discord_emulator import Event, InvokeError, User
from discord_emulator.commands import ATTACHMENT, CHANNEL, MENTIONABLE, ROLE, USER
from gen_core.metadata import read_png_parameters

from .session import MEMBERS, Sandbox
from .views import commands_view, message_view, state_view, visible

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
Handler = Callable[[web.Request], Awaitable[Any]]


class PageError(Exception):
    """Something the member asked for that Discord would not do; shown on the page."""


def _action(handler: Handler) -> Handler:
    """A JSON endpoint: the handler's result as JSON, a refusal as 400 with ``{"error": ...}``."""

    async def endpoint(request: web.Request) -> web.StreamResponse:
        try:
            return web.json_response(await handler(request))
        except (PageError, InvokeError, LookupError, ValueError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            return web.json_response({"error": str(message)}, status=400)

    return endpoint


class SandboxPage:
    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.emu = sandbox.emu
        self.viewers: dict[web.WebSocketResponse, User] = {}
        self._runner: web.AppRunner | None = None
        self._pump: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the page on ``host:port`` (0: any free port); returns its URL."""
        app = web.Application(client_max_size=self.emu.settings.attachment_size_limit + 1024 * 1024)
        app.router.add_get("/", self.index)
        app.router.add_static("/static", STATIC)
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/api/commands", _action(self.commands))
        app.router.add_get("/api/attachments/{id}/parameters", _action(self.parameters))
        for name, handler in (("invoke", self.invoke), ("autocomplete", self.autocomplete), ("click", self.click),
                              ("modal", self.modal), ("react", self.react), ("send", self.send), ("upload", self.upload)):
            app.router.add_post(f"/api/{name}", _action(handler))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.url = "http://{}:{}/".format(*self._runner.addresses[0][:2])
        self._pump = asyncio.create_task(self._feed(self.emu.subscribe()), name="sandbox-page-feed")
        return self.url

    async def stop(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        for ws in list(self.viewers):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- the page and its live feed --------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """Messages from the page: ``{"user": name}`` (look as that member: the whole state follows)."""
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        try:
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                name = json.loads(frame.data).get("user")
                user = self.emu.user(name if name in MEMBERS else MEMBERS[0])
                self.viewers[ws] = user
                await ws.send_json(state_view(self.sandbox, user))
        finally:
            self.viewers.pop(ws, None)
        return ws

    async def _feed(self, events: asyncio.Queue[Event]) -> None:
        """Turn the emulator's events into updates for every page, each filtered for its member."""
        try:
            while True:
                event = await events.get()
                if event.kind == "commands.sync":
                    await self._broadcast(lambda user: {"type": "commands"})
                elif event.kind in ("message.create", "message.update", "message.delete"):
                    await self._message_changed(event.data["id"])
                elif event.kind in ("reaction.add", "reaction.remove"):
                    await self._message_changed(event.data["message"])
        finally:
            self.emu.unsubscribe(events)

    async def _message_changed(self, message_id: int) -> None:
        msg = self.emu.messages[message_id]

        def update(user: User) -> dict[str, Any]:
            if visible(msg, user):
                return {"type": "message", "message": message_view(msg, user)}
            return {"type": "delete", "id": str(msg.id)}

        await self._broadcast(update)

    async def _broadcast(self, update: Callable[[User], dict[str, Any]]) -> None:
        for ws, user in list(self.viewers.items()):
            with contextlib.suppress(ConnectionError, RuntimeError):  # a page that just closed
                await ws.send_json(update(user))

    # -- what members do -------------------------------------------------------------------------------------

    def _member(self, data: dict[str, Any]) -> User:
        if data.get("user") not in MEMBERS:
            raise PageError(f"act as one of {', '.join(MEMBERS)}")
        return self.emu.user(data["user"])

    def _channel(self, data: dict[str, Any], user: User):
        channel = next((c for c in self.emu.channels if str(c.id) == str(data.get("channel"))), None)
        if channel is None or (channel.is_dm and channel.recipient is not user):
            raise PageError("no such channel")
        return channel

    def _message(self, data: dict[str, Any], user: User):
        msg = self.emu.messages.get(int(data.get("message") or 0))
        if msg is None or not visible(msg, user):
            raise PageError("that message is gone")
        return msg

    def _options(self, channel, command: str, raw: dict[str, Any]) -> dict[str, Any]:
        """The page's option values (ids for users, channels, roles and uploads) as the emulator takes them."""
        defs = {o["name"]: o for o in self.emu.commands.get(command, channel.guild).get("options") or []}
        values = {}
        for name, value in raw.items():
            kind = defs[name]["type"] if name in defs else None
            if kind in (USER, MENTIONABLE, CHANNEL, ROLE, ATTACHMENT):
                value = self._referenced(kind, str(value), channel)
            values[name] = value
        return values

    def _referenced(self, kind: int, ref: str, channel) -> Any:
        emu = self.emu
        found: list[Any] = []
        if kind in (USER, MENTIONABLE):
            found += [u for u in emu.users.values() if str(u.id) == ref]
        if kind in (ROLE, MENTIONABLE) and channel.guild is not None:
            found += [r for r in channel.guild.roles if str(r.id) == ref]
        if kind == CHANNEL:
            found += [c for c in emu.channels if str(c.id) == ref]
        if kind == ATTACHMENT and ref.isdigit() and int(ref) in emu.files:
            found.append(emu.files[int(ref)])
        if not found:
            raise PageError(f"{ref!r} is gone; pick it again")
        return found[0]

    async def _answered(self, it: Any, failed: str) -> dict[str, Any]:
        """Wait for the bot's first answer, as Discord's client does; ``failed`` if it never comes.
        A modal the bot opened (response type 9) comes with it, for the page to show."""
        try:
            await it.wait_acked(self.emu.settings.initial_response_timeout + 0.5)
        except TimeoutError:
            raise PageError(failed) from None
        return {"interaction": str(it.id), "response_type": it.response_type, "modal": it.modal}

    async def commands(self, request: web.Request) -> dict[str, Any]:
        data = dict(request.query)
        user = self._member(data)
        return commands_view(self.emu, user, self._channel(data, user))

    async def invoke(self, request: web.Request) -> dict[str, Any]:
        data = await request.json()
        user = self._member(data)
        channel = self._channel(data, user)
        command = str(data.get("command", ""))
        it = await self.emu.invoke(user, channel, command, self._options(channel, command, data.get("options") or {}))
        return await self._answered(it, f"{self.emu.bot_user.name} did not respond.")

    async def autocomplete(self, request: web.Request) -> dict[str, Any]:
        data = await request.json()
        user = self._member(data)
        channel = self._channel(data, user)
        command = str(data.get("command", ""))
        options = self._options(channel, command, data.get("options") or {})
        try:
            choices = await self.emu.autocomplete(user, channel, command, options, str(data.get("focused")))
        except (TimeoutError, AssertionError):
            raise PageError("Loading options failed") from None
        return {"choices": choices}

    async def click(self, request: web.Request) -> dict[str, Any]:
        data = await request.json()
        user = self._member(data)
        it = await self.emu.click(user, self._message(data, user), str(data.get("custom_id")))
        return await self._answered(it, "This interaction failed")

    async def modal(self, request: web.Request) -> dict[str, Any]:
        """The member submits the form the bot opened in answer to their interaction ``interaction``."""
        data = await request.json()
        user = self._member(data)
        opened_by = self.emu.interactions.get(int(data.get("interaction") or 0))
        if opened_by is None or opened_by.user is not user or opened_by.modal is None:
            raise PageError("that form is gone")
        values = {str(k): str(v) for k, v in (data.get("values") or {}).items()}
        it = await self.emu.submit_modal(user, opened_by, values)
        return await self._answered(it, "Something went wrong. Try again.")

    async def react(self, request: web.Request) -> dict[str, Any]:
        data = await request.json()
        user = self._member(data)
        msg, emoji = self._message(data, user), str(data.get("emoji") or "").strip()
        if not emoji:
            raise PageError("pick an emoji")
        if data.get("add", True):
            await self.emu.add_reaction(user, msg, emoji)
        else:
            await self.emu.remove_reaction(user, msg, emoji)
        return {"ok": True}

    async def send(self, request: web.Request) -> dict[str, Any]:
        data = await request.json()
        content = str(data.get("content") or "").strip()
        if not content:
            raise PageError("type a message")
        user = self._member(data)
        msg = await self.emu.send_message(user, self._channel(data, user), content[: self.emu.settings.max_content_length])
        return {"message": str(msg.id)}

    async def upload(self, request: web.Request) -> dict[str, Any]:
        """A file for an attachment option, stored on the emulator's CDN (Discord's client uploads first too)."""
        limit = self.emu.settings.attachment_size_limit
        async for part in await request.multipart():
            if getattr(part, "name", None) != "file":
                continue
            data = bytearray()
            while chunk := await part.read_chunk():
                data += chunk
                if len(data) > limit:
                    raise PageError(f"{part.filename} is larger than the upload limit of {limit // (1024 * 1024)} MiB")
            att = self.emu.upload(bytes(data), part.filename or "upload", part.headers.get("Content-Type"))
            return {"id": str(att.id), "filename": att.filename, "size": att.size, "url": att.url}
        raise PageError("no file in the upload")

    async def parameters(self, request: web.Request) -> dict[str, Any]:
        """The A1111 ``parameters`` text of a PNG (shown when an image is enlarged)."""
        att = self.emu.files.get(int(request.match_info["id"]))
        if att is None:
            raise PageError("no such attachment")
        text = await asyncio.to_thread(read_png_parameters, att.data)
        return {"parameters": text}
