"""REST v10: a table of routes, one function per endpoint."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import rules
from .models import MESSAGE_FLAG_EPHEMERAL, Channel, Interaction, Message, Perm

if TYPE_CHECKING:
    from .emulator import Emulator, UploadedFile

log = logging.getLogger(__name__)

API_PREFIX = "/api/v10"
BOT, TOKEN = "bot", "token"  # auth kinds: "Authorization: Bot <token>", or the interaction token in the URL

Handler = Callable[[web.Request], Awaitable[Any]]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON with ``Content-Type`` exactly ``application/json`` (discord.py parses nothing else)."""
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json", **(headers or {})}
    )


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


class RestApi:
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        # (method, path, handler, auth). Literal segments (@me, @original) come before {placeholders}.
        self.routes: list[tuple[str, str, Handler, str]] = [
            ("GET", "/users/@me", self.get_current_user, BOT),
            ("POST", "/users/@me/channels", self.create_dm, BOT),
            ("GET", "/users/{user_id}", self.get_user, BOT),
            ("GET", "/oauth2/applications/@me", self.get_application, BOT),
            ("GET", "/applications/@me", self.get_application, BOT),
            ("GET", "/gateway", self.get_gateway, TOKEN),
            ("GET", "/gateway/bot", self.get_gateway_bot, BOT),
            # application commands
            ("GET", "/applications/{app_id}/commands", self.list_commands, BOT),
            ("PUT", "/applications/{app_id}/commands", self.bulk_commands, BOT),
            ("POST", "/applications/{app_id}/commands", self.upsert_command, BOT),
            ("GET", "/applications/{app_id}/commands/{command_id}", self.get_command, BOT),
            ("PATCH", "/applications/{app_id}/commands/{command_id}", self.edit_command, BOT),
            ("DELETE", "/applications/{app_id}/commands/{command_id}", self.delete_command, BOT),
            ("GET", "/applications/{app_id}/guilds/{guild_id}/commands", self.list_commands, BOT),
            ("PUT", "/applications/{app_id}/guilds/{guild_id}/commands", self.bulk_commands, BOT),
            ("POST", "/applications/{app_id}/guilds/{guild_id}/commands", self.upsert_command, BOT),
            ("GET", "/applications/{app_id}/guilds/{guild_id}/commands/{command_id}", self.get_command, BOT),
            ("PATCH", "/applications/{app_id}/guilds/{guild_id}/commands/{command_id}", self.edit_command, BOT),
            ("DELETE", "/applications/{app_id}/guilds/{guild_id}/commands/{command_id}", self.delete_command, BOT),
            # interactions and their webhooks
            ("POST", "/interactions/{interaction_id}/{token}/callback", self.interaction_callback, TOKEN),
            ("POST", "/webhooks/{app_id}/{token}", self.create_followup, TOKEN),
            ("GET", "/webhooks/{app_id}/{token}/messages/{message_id}", self.get_webhook_message, TOKEN),
            ("PATCH", "/webhooks/{app_id}/{token}/messages/{message_id}", self.edit_webhook_message, TOKEN),
            ("DELETE", "/webhooks/{app_id}/{token}/messages/{message_id}", self.delete_webhook_message, TOKEN),
            # channels and messages
            ("GET", "/channels/{channel_id}", self.get_channel, BOT),
            ("GET", "/channels/{channel_id}/messages", self.list_messages, BOT),
            ("POST", "/channels/{channel_id}/messages", self.create_message, BOT),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self.get_message, BOT),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self.edit_message, BOT),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}", self.delete_message, BOT),
            ("PUT", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me", self.add_own_reaction, BOT),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me", self.remove_own_reaction, BOT),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/{user_id}", self.remove_user_reaction, BOT),
            ("GET", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}", self.list_reaction_users, BOT),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}/reactions", self.clear_reactions, BOT),
            ("POST", "/channels/{channel_id}/typing", self.typing, BOT),
            # guilds
            ("GET", "/guilds/{guild_id}", self.get_guild, BOT),
            ("GET", "/guilds/{guild_id}/channels", self.get_guild_channels, BOT),
            ("GET", "/guilds/{guild_id}/roles", self.get_guild_roles, BOT),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self.get_member, BOT),
        ]

    # -- plumbing ----------------------------------------------------------------------------------------------

    def register(self, app: web.Application) -> None:
        for method, path, handler, auth in self.routes:
            app.router.add_route(method, API_PREFIX + path, self._wrap(handler, auth))

    def _wrap(self, handler: Handler, auth: str) -> Handler:
        async def endpoint(request: web.Request) -> web.StreamResponse:
            if auth == BOT and request.headers.get("Authorization") != f"Bot {self.emu.bot_token}":
                raise rules.unauthorized()
            result = await handler(request)
            if isinstance(result, web.StreamResponse):
                return result
            if result is None:
                return web.Response(status=204)
            if isinstance(result, tuple):
                return json_response(result[0], result[1])
            return json_response(result)

        return endpoint

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX + "/"):
            return await handler(request)
        route = f"{request.method} {request.path[len(API_PREFIX):]}"
        emu = self.emu
        for hook in [h for h in emu.request_hooks if not h.after and h.route_substring in route]:
            if hook.callback(route):
                emu.request_hooks.remove(hook)
        outage = emu._take_error(route)
        if outage is not None:
            emu._log("rest.injected_error", route=route, status=outage.status)
            return json_response({"message": f"{outage.status}: injected by the test", "code": 0}, outage.status)
        injection = emu._take_rate_limit(route)
        if injection is not None:
            emu._log("rest.rate_limited", route=route, retry_after=injection.retry_after, is_global=injection.is_global)
            headers = {
                "Via": "1.1 google",
                "Retry-After": str(max(1, math.ceil(injection.retry_after))),
                "X-RateLimit-Scope": injection.scope,
            }
            if injection.is_global:
                headers["X-RateLimit-Global"] = "true"
            body = {"message": "You are being rate limited.", "retry_after": injection.retry_after, "global": injection.is_global}
            return json_response(body, 429, headers)
        try:
            if (request.content_length or 0) > emu.settings.max_request_size:
                raise rules.entity_too_large()
            response = await handler(request)
        except rules.ApiError as exc:
            emu._failure(exc.status, exc.code, exc.message, route, exc.errors, getattr(exc, "interaction", None), rule=exc.rule)
            response = json_response(exc.body(), exc.status)
        except web.HTTPRequestEntityTooLarge:
            emu._failure(413, 40005, "Request entity too large", route)
            response = json_response({"message": "Request entity too large", "code": 40005}, 413)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            emu._failure(404, 0, "endpoint not implemented by the emulator", route)
            response = json_response({"message": "404: Not Found", "code": 0}, 404)
        except Exception as exc:  # an emulator bug: answer 400, since discord.py retries a 500 for ~25 s
            log.exception("emulator error on %s", route)
            emu._failure(400, 0, f"emulator internal error: {exc!r}", route)
            response = json_response({"message": f"emulator internal error: {exc!r}", "code": 0}, 400)
        emu._log("rest", route=route, status=response.status)
        for hook in [h for h in emu.request_hooks if h.after and h.route_substring in route]:
            if hook.callback(route):
                emu.request_hooks.remove(hook)
        return response

    async def _body(self, request: web.Request) -> tuple[Any, list[UploadedFile]]:
        """JSON body, or multipart ``payload_json`` + ``files[n]``."""
        from .emulator import UploadedFile

        if request.content_type.startswith("multipart/"):
            payload: Any = {}
            files: list[UploadedFile] = []
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                name = part.name or ""
                if name == "payload_json":
                    payload = json.loads(await part.text())  # type: ignore[union-attr]
                elif part.filename is not None:
                    match = re.fullmatch(r"files\[(\d+)\]", name)
                    index = int(match.group(1)) if match else len(files)
                    data = await part.read()  # type: ignore[union-attr]
                    files.append(UploadedFile(index, part.filename, bytes(data), part.headers.get("Content-Type")))
            return payload, files
        text = await request.text()
        if not text:
            return {}, []
        try:
            return json.loads(text), []
        except ValueError:
            raise rules.ApiError(400, 50109, "The request body contains invalid JSON.") from None

    def _channel(self, request: web.Request) -> Channel:
        channel = self.emu._channel_by_id(int(request.match_info["channel_id"]))
        if channel is None:
            raise rules.unknown_channel()
        return channel

    def _require(self, channel: Channel, perms: int) -> None:
        have = self.emu.bot_permissions(channel)
        if not have & Perm.VIEW_CHANNEL:
            raise rules.missing_access()
        if have & perms != perms:
            raise rules.missing_permissions()

    def _message(self, request: web.Request, channel: Channel) -> Message:
        msg = self.emu.messages.get(int(request.match_info["message_id"]))
        if msg is None or msg.channel is not channel or msg.deleted or msg.ephemeral:
            raise rules.unknown_message()
        return msg

    def _payload(self, msg: Message) -> dict[str, Any]:
        return self.emu._message_payload(msg)

    # -- identity ----------------------------------------------------------------------------------------------

    async def get_current_user(self, request: web.Request) -> Any:
        return {**self.emu.bot_user.payload(), "verified": True, "mfa_enabled": False, "flags": 0, "email": None,
                "locale": "en-US"}

    async def get_user(self, request: web.Request) -> Any:
        user = self.emu._user_by_id(int(request.match_info["user_id"]))
        if user is None:
            raise rules.unknown("User", 10013)
        return user.payload()

    async def get_application(self, request: web.Request) -> Any:
        emu = self.emu
        owner = next(iter(emu.guilds.values())).owner if emu.guilds else emu.bot_user
        return {
            "id": str(emu.application_id),
            "name": emu.settings.application_name,
            "icon": None,
            "description": "Emulated application",
            "summary": "",
            "type": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "owner": owner.payload(),
            "team": None,
            "flags": 0,
            "bot": emu.bot_user.payload(),
            "approximate_guild_count": len(emu.bot_guilds()),
            "interactions_endpoint_url": None,
            "redirect_uris": [],
            "tags": [],
        }

    async def get_gateway(self, request: web.Request) -> Any:
        return {"url": self.emu.gateway_url}

    async def get_gateway_bot(self, request: web.Request) -> Any:
        return {
            "url": self.emu.gateway_url,
            "shards": 1,
            "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 86400000, "max_concurrency": 1},
        }

    async def create_dm(self, request: web.Request) -> Any:
        body, _ = await self._body(request)
        user = self.emu._user_by_id(int(body.get("recipient_id", 0)))
        if user is None:
            raise rules.unknown("User", 10013)
        if user.bot:
            raise rules.ApiError(400, 50007, "Cannot send messages to this user")
        return self.emu.dm_channel(user).payload()

    # -- guilds -------------------------------------------------------------------------------------------------

    def _guild(self, request: web.Request):
        guild = self.emu._guild_by_id(int(request.match_info["guild_id"]))
        if guild is None or self.emu.bot_user.id not in guild.members:
            raise rules.unknown("Guild", 10004)
        return guild

    async def get_guild(self, request: web.Request) -> Any:
        data = self.emu._guild_create_payload(self._guild(request), members=False)
        for key in ("members", "channels", "threads", "presences", "voice_states", "joined_at", "member_count"):
            data.pop(key, None)
        return data

    async def get_guild_channels(self, request: web.Request) -> Any:
        return [c.payload() for c in self._guild(request).channels]

    async def get_guild_roles(self, request: web.Request) -> Any:
        return [r.payload() for r in self._guild(request).roles]

    async def get_member(self, request: web.Request) -> Any:
        guild = self._guild(request)
        member = guild.members.get(int(request.match_info["user_id"]))
        if member is None:
            raise rules.unknown("Member", 10007)
        return member.payload()

    # -- application commands ------------------------------------------------------------------------------------

    def _command_scope(self, request: web.Request) -> tuple[int | None, dict[str, dict[str, Any]]]:
        if int(request.match_info["app_id"]) != self.emu.application_id:
            raise rules.ApiError(403, 20012, "You are not authorized to perform this action on this application")
        guild_id = None
        if "guild_id" in request.match_info:
            guild_id = self._guild(request).id
        return guild_id, self.emu.commands.scope(guild_id)

    def _store_command(self, raw: dict[str, Any], guild_id: int | None, old: dict[str, Any] | None) -> dict[str, Any]:
        emu = self.emu
        cmd = {
            "type": 1,
            "description": "",
            "options": [],
            "default_member_permissions": None,
            "nsfw": False,
            "name_localizations": None,
            "description_localizations": None,
            **raw,
            "id": old["id"] if old else str(emu.ids.new()),
            "application_id": str(emu.application_id),
            "version": str(emu.ids.new()),
        }
        if guild_id is not None:
            cmd["guild_id"] = str(guild_id)
        if cmd["type"] != 1:
            cmd["description"] = ""
        return cmd

    async def list_commands(self, request: web.Request) -> Any:
        _, scope = self._command_scope(request)
        return list(scope.values())

    async def bulk_commands(self, request: web.Request) -> Any:
        guild_id, scope = self._command_scope(request)
        body, _ = await self._body(request)
        if not isinstance(body, list):
            raise rules.form_error([], "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType")
        if len(body) > 100:
            raise rules.ApiError(400, 30032, "Maximum number of application commands reached (100)")
        seen: set[tuple[str, int]] = set()
        for i, raw in enumerate(body):
            rules.validate_command(raw, i)
            key = (raw.get("name", ""), raw.get("type", 1))
            if key in seen:
                raise rules.form_error([i, "name"], "APPLICATION_COMMANDS_DUPLICATE_NAME", f"Application command names must be unique: {key[0]}")
            seen.add(key)
        old = {(c["name"], c.get("type", 1)): c for c in scope.values()}
        new = [self._store_command(raw, guild_id, old.get((raw["name"], raw.get("type", 1)))) for raw in body]
        scope.clear()
        for cmd in new:
            scope[cmd["name"] if cmd["type"] == 1 else f"{cmd['name']}#{cmd['type']}"] = cmd
        self.emu._log("commands.sync", guild_id=guild_id, names=[c["name"] for c in new])
        self.emu._notify()
        return new

    async def upsert_command(self, request: web.Request) -> Any:
        guild_id, scope = self._command_scope(request)
        raw, _ = await self._body(request)
        rules.validate_command(raw, 0)
        key = raw["name"] if raw.get("type", 1) == 1 else f"{raw['name']}#{raw['type']}"
        old = scope.get(key)
        scope[key] = self._store_command(raw, guild_id, old)
        self.emu._notify()
        return scope[key], (200 if old else 201)

    def _find_command(self, request: web.Request) -> tuple[str, dict[str, Any], dict[str, dict[str, Any]], int | None]:
        guild_id, scope = self._command_scope(request)
        for key, cmd in scope.items():
            if cmd["id"] == request.match_info["command_id"]:
                return key, cmd, scope, guild_id
        raise rules.unknown("application command", 10063)

    async def get_command(self, request: web.Request) -> Any:
        return self._find_command(request)[1]

    async def edit_command(self, request: web.Request) -> Any:
        key, cmd, scope, guild_id = self._find_command(request)
        raw, _ = await self._body(request)
        merged = {**cmd, **raw}
        rules.validate_command(merged, 0)
        scope[key] = self._store_command(merged, guild_id, cmd)
        self.emu._notify()
        return scope[key]

    async def delete_command(self, request: web.Request) -> Any:
        key, _, scope, _ = self._find_command(request)
        del scope[key]
        return None

    # -- interaction callback -------------------------------------------------------------------------------------

    async def interaction_callback(self, request: web.Request) -> Any:
        emu = self.emu
        it = emu.interactions.get(int(request.match_info["interaction_id"]))
        if it is None or it.token != request.match_info["token"]:
            raise rules.unknown_interaction()
        try:
            return await self._callback(request, it)
        except rules.ApiError as exc:
            exc.interaction = it  # type: ignore[attr-defined]
            raise

    async def _callback(self, request: web.Request, it: Interaction) -> Any:
        emu, s = self.emu, self.emu.settings
        if it.acked:
            raise rules.already_acknowledged()
        if time.monotonic() - it.created_at > s.initial_response_timeout:
            raise rules.unknown_interaction()
        payload, files = await self._body(request)
        ctype = payload.get("type")
        data = payload.get("data") or {}
        allowed = {2: {4, 5, 9}, 3: {4, 5, 6, 7, 9}, 4: {8}, 5: {4, 5, 6, 7} if it.source_message else {4, 5}}[it.type]
        if ctype not in allowed:
            raise rules.form_error(["type"], "INTERACTION_RESPONSE_TYPE_INVALID",
                                   f"Response type {ctype} is not valid for interaction type {it.type} (allowed: {sorted(allowed)})")
        flags = int(data.get("flags") or 0)
        eph_user = it.user if flags & MESSAGE_FLAG_EPHEMERAL else None
        msg: Message | None = None
        if ctype == 4:
            rules.validate_message(data, files, s, prefix=["data"])
            msg = emu._create_message(it.channel, emu.bot_user, data, files, interaction=it, ephemeral_for=eph_user, prefix=["data"])
            it.original_message = msg
        elif ctype == 5:
            if flags & ~MESSAGE_FLAG_EPHEMERAL:
                raise rules.form_error(["data", "flags"], "INTERACTION_DEFERRED_FLAGS_INVALID",
                                       "Only the EPHEMERAL flag (64) can be set on a deferred response")
            if files or data.get("content") or data.get("embeds"):
                raise rules.form_error(["data"], "INTERACTION_DEFERRED_DATA_INVALID",
                                       "A deferred response carries no message: send it as a follow-up or edit @original")
            msg = emu._create_message(it.channel, emu.bot_user, {"flags": flags}, [], interaction=it, loading=True, ephemeral_for=eph_user)
            it.original_message = msg
        elif ctype in (6, 7):
            msg = it.source_message
            assert msg is not None
            if ctype == 7:
                rules.validate_message(data, files, s, prefix=["data"], require_content=False)
                emu._edit_message(msg, data, files, prefix=["data"])
            it.original_message = msg
        elif ctype == 8:
            rules.validate_choices(data.get("choices"), s)
            it.choices = list(data["choices"])
        elif ctype == 9:
            rules.validate_modal(data, s)
            it.modal = data
        it.response_type = ctype
        it.acked_at = time.monotonic()
        it.ephemeral = bool(msg is not None and msg.ephemeral)
        emu._log("interaction.ack", id=it.id, type=ctype, ephemeral=it.ephemeral)
        emu._notify()
        if not _truthy(request.query.get("with_response")):
            return None
        info: dict[str, Any] = {"id": str(it.id), "type": it.type}
        resource: dict[str, Any] = {"type": ctype}
        if msg is not None:
            info.update(response_message_id=str(msg.id), response_message_loading=ctype == 5,
                        response_message_ephemeral=msg.ephemeral)
            if ctype in (4, 5, 7):
                resource["message"] = self._payload(msg)
        return {"interaction": info, "resource": resource}

    # -- interaction webhooks ---------------------------------------------------------------------------------------

    def _webhook_interaction(self, request: web.Request) -> Interaction:
        emu = self.emu
        it = emu._by_token.get(request.match_info["token"])
        if it is None or int(request.match_info["app_id"]) != emu.application_id:
            raise rules.unknown_webhook()
        if time.monotonic() - it.created_at > emu.settings.token_lifetime:
            exc = rules.invalid_webhook_token()
            exc.interaction = it  # type: ignore[attr-defined]
            raise exc
        return it

    def _webhook_message(self, request: web.Request, it: Interaction) -> Message:
        mid = request.match_info["message_id"]
        if mid == "@original":
            msg = it.original_message
        else:
            msg = self.emu.messages.get(int(mid))
            if msg is not None and msg is not it.original_message and msg not in it.followups:
                msg = None
        if msg is None or msg.deleted:
            exc = rules.unknown_message()
            exc.rule = True  # the bot addressed a message its token does not own (or before responding)
            exc.interaction = it  # type: ignore[attr-defined]
            raise exc
        return msg

    async def create_followup(self, request: web.Request) -> Any:
        emu = self.emu
        it = self._webhook_interaction(request)
        try:
            if not it.acked or it.type == 4:
                raise rules.unknown_webhook()
            payload, files = await self._body(request)
            flags = int(payload.get("flags") or 0)
            if flags & ~rules.FOLLOWUP_FLAGS:
                raise rules.form_error(["flags"], "MESSAGE_FLAGS_INVALID", "Invalid message flags for a follow-up")
            rules.validate_message(payload, files, emu.settings)
            original = it.original_message
            if it.response_type == 5 and original is not None and original.loading:
                payload = {k: v for k, v in payload.items() if k != "flags"}  # the deferral decided ephemerality
                msg = emu._edit_message(original, payload, files)
            else:
                eph = it.user if flags & MESSAGE_FLAG_EPHEMERAL else None
                msg = emu._create_message(it.channel, emu.bot_user, payload, files, interaction=it, ephemeral_for=eph)
            it.followups.append(msg)
            emu._notify()
        except rules.ApiError as exc:
            exc.interaction = it  # type: ignore[attr-defined]
            raise
        if _truthy(request.query.get("wait")):
            return self._payload(msg)
        return None

    async def get_webhook_message(self, request: web.Request) -> Any:
        it = self._webhook_interaction(request)
        return self._payload(self._webhook_message(request, it))

    async def edit_webhook_message(self, request: web.Request) -> Any:
        it = self._webhook_interaction(request)
        try:
            msg = self._webhook_message(request, it)
            payload, files = await self._body(request)
            rules.validate_message(payload, files, self.emu.settings, require_content=False)
            self.emu._edit_message(msg, payload, files)
        except rules.ApiError as exc:
            exc.interaction = it  # type: ignore[attr-defined]
            raise
        return self._payload(msg)

    async def delete_webhook_message(self, request: web.Request) -> Any:
        it = self._webhook_interaction(request)
        self.emu._delete_message(self._webhook_message(request, it))
        return None

    # -- channels and messages -------------------------------------------------------------------------------------

    async def get_channel(self, request: web.Request) -> Any:
        channel = self._channel(request)
        if channel.guild is not None:
            self._require(channel, 0)
        return channel.payload()

    async def create_message(self, request: web.Request) -> Any:
        emu = self.emu
        channel = self._channel(request)
        payload, files = await self._body(request)
        self._require(channel, Perm.SEND_MESSAGES | (Perm.ATTACH_FILES if files else 0))
        if channel.recipient is not None and not channel.recipient.dms_open:
            raise rules.ApiError(403, 50007, "Cannot send messages to this user")
        rules.validate_message(payload, files, emu.settings)
        if int(payload.get("flags") or 0) & MESSAGE_FLAG_EPHEMERAL:
            raise rules.form_error(["flags"], "MESSAGE_FLAGS_INVALID", "Channel messages cannot be ephemeral")
        msg = emu._create_message(channel, emu.bot_user, payload, files)
        return self._payload(msg)

    async def get_message(self, request: web.Request) -> Any:
        channel = self._channel(request)
        self._require(channel, Perm.READ_MESSAGE_HISTORY)
        return self._payload(self._message(request, channel))

    async def list_messages(self, request: web.Request) -> Any:
        channel = self._channel(request)
        self._require(channel, Perm.READ_MESSAGE_HISTORY)
        q = request.query
        try:
            limit = int(q.get("limit", 50))
        except ValueError:
            limit = 50
        if not 1 <= limit <= 100:
            raise rules.form_error(["limit"], "NUMBER_TYPE_MAX", "int value should be between 1 and 100")
        msgs = sorted(self.emu.channel_messages(channel), key=lambda m: m.id)
        if "around" in q:
            around = int(q["around"])
            before = [m for m in msgs if m.id < around][-(limit // 2):] if limit > 1 else []
            rest = [m for m in msgs if m.id >= around][: limit - len(before)]
            picked = before + rest
        elif "after" in q:
            picked = [m for m in msgs if m.id > int(q["after"])][:limit]
        else:
            if "before" in q:
                msgs = [m for m in msgs if m.id < int(q["before"])]
            picked = msgs[-limit:]
        return [self._payload(m) for m in sorted(picked, key=lambda m: m.id, reverse=True)]

    async def edit_message(self, request: web.Request) -> Any:
        emu = self.emu
        channel = self._channel(request)
        self._require(channel, 0)
        msg = self._message(request, channel)
        if msg.author is not emu.bot_user:
            raise rules.not_author()
        payload, files = await self._body(request)
        if files:
            self._require(channel, Perm.ATTACH_FILES)
        rules.validate_message(payload, files, emu.settings, require_content=False)
        emu._edit_message(msg, payload, files)
        return self._payload(msg)

    async def delete_message(self, request: web.Request) -> Any:
        emu = self.emu
        channel = self._channel(request)
        msg = self._message(request, channel)
        if msg.author is not emu.bot_user:
            self._require(channel, Perm.MANAGE_MESSAGES)
        emu._delete_message(msg)
        return None

    def _emoji(self, request: web.Request) -> str:
        emoji = request.match_info["emoji"]
        if ":" in emoji:  # custom emoji "name:id": the bot can't have any, the world has none
            raise rules.ApiError(400, 10014, "Unknown Emoji")
        return emoji

    async def add_own_reaction(self, request: web.Request) -> Any:
        emu = self.emu
        channel = self._channel(request)
        msg = self._message(request, channel)
        emoji = self._emoji(request)
        self._require(channel, Perm.READ_MESSAGE_HISTORY | (0 if msg.reactions.get(emoji) else Perm.ADD_REACTIONS))
        emu._add_reaction(msg, emu.bot_user, emoji)
        return None

    async def remove_own_reaction(self, request: web.Request) -> Any:
        channel = self._channel(request)
        msg = self._message(request, channel)
        self.emu._remove_reaction(msg, self.emu.bot_user, self._emoji(request))
        return None

    async def remove_user_reaction(self, request: web.Request) -> Any:
        channel = self._channel(request)
        msg = self._message(request, channel)
        self._require(channel, Perm.MANAGE_MESSAGES)
        user = self.emu._user_by_id(int(request.match_info["user_id"]))
        if user is not None:
            self.emu._remove_reaction(msg, user, self._emoji(request))
        return None

    async def list_reaction_users(self, request: web.Request) -> Any:
        channel = self._channel(request)
        msg = self._message(request, channel)
        return [u.payload() for u in msg.reactions.get(self._emoji(request), [])]

    async def clear_reactions(self, request: web.Request) -> Any:
        channel = self._channel(request)
        msg = self._message(request, channel)
        self._require(channel, Perm.MANAGE_MESSAGES)
        msg.reactions.clear()
        data = {"channel_id": str(channel.id), "message_id": str(msg.id)}
        if channel.guild is not None:
            data["guild_id"] = str(channel.guild.id)
        self.emu.gateway.dispatch("MESSAGE_REACTION_REMOVE_ALL", data, guild_id=channel.guild.id if channel.guild else None)
        self.emu._notify()
        return None

    async def typing(self, request: web.Request) -> Any:
        channel = self._channel(request)
        self._require(channel, Perm.SEND_MESSAGES)
        self.emu._log("typing", channel=channel.name)
        return None

    # -- the CDN (outside /api) ---------------------------------------------------------------------------------------

    async def cdn(self, request: web.Request) -> web.StreamResponse:
        att = self.emu.files.get(int(request.match_info["attachment_id"]))
        if att is None or str(att.channel_id) != request.match_info["channel_id"]:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=att.data, headers={"Content-Type": att.content_type or "application/octet-stream"})
