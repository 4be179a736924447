"""Discord's platform rules: the errors Discord answers with, and validation of what the bot sends."""

from __future__ import annotations

import re
from typing import Any

from .models import MESSAGE_FLAG_EPHEMERAL, walk_components
from .settings import EmulatorSettings


class ApiError(Exception):
    """An error reply in Discord's shape: ``{"code": ..., "message": ..., "errors": ...}``.

    ``rule`` marks errors caused by the bot breaking a platform rule; they are recorded in
    ``emu.failures``. Every error reply is recorded in ``emu.errors``.
    """

    def __init__(
        self, status: int, code: int, message: str, errors: dict[str, Any] | None = None, *, rule: bool = True
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.rule = rule

    def body(self) -> dict[str, Any]:
        data: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors:
            data["errors"] = self.errors
        return data


# -- the errors ----------------------------------------------------------------------------------------


def unauthorized() -> ApiError:
    return ApiError(401, 0, "401: Unauthorized")


def unknown(what: str, code: int) -> ApiError:
    return ApiError(404, code, f"Unknown {what}", rule=False)


def unknown_channel() -> ApiError:
    return unknown("Channel", 10003)


def unknown_message() -> ApiError:
    return unknown("Message", 10008)


def unknown_interaction() -> ApiError:
    return ApiError(404, 10062, "Unknown interaction")


def unknown_webhook() -> ApiError:
    return ApiError(404, 10015, "Unknown Webhook")


def invalid_webhook_token() -> ApiError:
    return ApiError(401, 50027, "Invalid Webhook Token")


def already_acknowledged() -> ApiError:
    return ApiError(400, 40060, "Interaction has already been acknowledged.")


def missing_permissions() -> ApiError:
    return ApiError(403, 50013, "Missing Permissions")


def missing_access() -> ApiError:
    return ApiError(403, 50001, "Missing Access")


def too_many_attachments(limit: int) -> ApiError:
    return ApiError(400, 30015, f"Maximum number of attachments in a message reached ({limit})")


def entity_too_large() -> ApiError:
    return ApiError(413, 40005, "Request entity too large")


def empty_message() -> ApiError:
    return ApiError(400, 50006, "Cannot send an empty message")


def not_author() -> ApiError:
    return ApiError(403, 50005, "Cannot edit a message authored by another user")


def error_item(code: str, message: str) -> dict[str, Any]:
    return {"_errors": [{"code": code, "message": message}]}


def form_error(path: list[str | int], code: str, message: str) -> ApiError:
    """50035 Invalid Form Body with Discord's nested ``errors`` object at ``path``."""
    errors: dict[str, Any] = error_item(code, message)
    for key in reversed(path):
        errors = {str(key): errors}
    return ApiError(400, 50035, "Invalid Form Body", errors)


# -- message validation ----------------------------------------------------------------------------------


def _check_len(value: Any, path: list[str | int], low: int, high: int) -> None:
    if value is None:
        return
    n = len(value)
    if n > high:
        raise form_error(path, "BASE_TYPE_MAX_LENGTH", f"Must be {high} or fewer in length.")
    if n < low:
        raise form_error(path, "BASE_TYPE_BAD_LENGTH", f"Must be between {low} and {high} in length.")


EMBED_LIMITS = {"title": 256, "description": 4096}


def embed_chars(embed: dict[str, Any]) -> int:
    total = len(embed.get("title") or "") + len(embed.get("description") or "")
    total += len((embed.get("footer") or {}).get("text") or "") + len((embed.get("author") or {}).get("name") or "")
    for f in embed.get("fields") or []:
        total += len(f.get("name") or "") + len(f.get("value") or "")
    return total


def validate_embeds(embeds: list[dict[str, Any]], s: EmulatorSettings, prefix: list[str | int]) -> None:
    if len(embeds) > s.max_embeds:
        raise form_error(prefix + ["embeds"], "BASE_TYPE_MAX_LENGTH", f"Must be {s.max_embeds} or fewer in length.")
    total = 0
    for i, embed in enumerate(embeds):
        path = prefix + ["embeds", i]
        for key, limit in EMBED_LIMITS.items():
            _check_len(embed.get(key), path + [key], 0, limit)
        fields = embed.get("fields") or []
        if len(fields) > 25:
            raise form_error(path + ["fields"], "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        for j, f in enumerate(fields):
            _check_len(f.get("name"), path + ["fields", j, "name"], 1, 256)
            _check_len(f.get("value"), path + ["fields", j, "value"], 1, 1024)
        _check_len((embed.get("footer") or {}).get("text"), path + ["footer", "text"], 0, 2048)
        _check_len((embed.get("author") or {}).get("name"), path + ["author", "name"], 0, 256)
        total += embed_chars(embed)
    if total > s.max_embed_chars:
        raise form_error(
            prefix + ["embeds"], "MAX_EMBED_SIZE_EXCEEDED", f"Embed size exceeds maximum size of {s.max_embed_chars}"
        )


def validate_custom_id(value: Any, path: list[str | int], s: EmulatorSettings) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= s.max_custom_id_length:
        raise form_error(
            path, "BASE_TYPE_BAD_LENGTH", f"Must be between 1 and {s.max_custom_id_length} in length."
        )


def validate_components(rows: list[dict[str, Any]], s: EmulatorSettings, prefix: list[str | int], v2: bool) -> None:
    if not v2 and len(rows) > 5:
        raise form_error(prefix + ["components"], "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.")
    seen: set[str] = set()
    for i, row in enumerate(rows):
        path = prefix + ["components", i]
        if not v2 and row.get("type") != 1:
            raise form_error(path + ["type"], "UNION_TYPE_CHOICES", "Value of field \"type\" must be one of (1,).")
        if row.get("type") == 1:
            children = row.get("components") or []
            if not 1 <= len(children) <= 5:
                raise form_error(path + ["components"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length.")
            if any(c.get("type") != 2 for c in children) and len(children) > 1:
                raise form_error(path + ["components"], "COMPONENT_LAYOUT_WIDTH_EXCEEDED", "The specified component exceeds the maximum width")
        for j, comp in enumerate(c for c in walk_components([row]) if c.get("type") in (2, 3, 5, 6, 7, 8)):
            cpath = path + ["components", j]
            if comp["type"] == 2 and comp.get("style") in (5, 6):  # link / premium buttons have no custom_id
                if comp.get("style") == 5 and not comp.get("url"):
                    raise form_error(cpath + ["url"], "BASE_TYPE_REQUIRED", "This field is required")
                continue
            validate_custom_id(comp.get("custom_id"), cpath + ["custom_id"], s)
            if comp["custom_id"] in seen:
                raise form_error(cpath + ["custom_id"], "COMPONENT_CUSTOM_ID_DUPLICATED", "Component custom id cannot be duplicated")
            seen.add(comp["custom_id"])
            if comp["type"] == 2:
                _check_len(comp.get("label"), cpath + ["label"], 0, 80)
            if comp["type"] == 3:
                options = comp.get("options") or []
                if not 1 <= len(options) <= 25:
                    raise form_error(cpath + ["options"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 25 in length.")


FOLLOWUP_FLAGS = MESSAGE_FLAG_EPHEMERAL | (1 << 2) | (1 << 12) | (1 << 15)  # ephemeral, suppress embeds/notifications, v2


def validate_message(
    data: dict[str, Any],
    files: list[Any],
    s: EmulatorSettings,
    *,
    prefix: list[str | int] | None = None,
    require_content: bool = True,
) -> None:
    """Content, embeds, components and file rules for a message the bot creates or edits."""
    prefix = prefix or []
    if len(files) > s.max_files:
        raise too_many_attachments(s.max_files)
    for f in files:
        if f.size > s.attachment_size_limit:
            raise entity_too_large()
    content = data.get("content")
    if content is not None:
        _check_len(content, prefix + ["content"], 0, s.max_content_length)
    validate_embeds(data.get("embeds") or [], s, prefix)
    v2 = bool((data.get("flags") or 0) & (1 << 15))
    validate_components(data.get("components") or [], s, prefix, v2)
    if require_content and not (content or data.get("embeds") or files or data.get("components") or data.get("poll")
                                or data.get("sticker_ids")):
        raise empty_message()


def validate_choices(choices: Any, s: EmulatorSettings) -> None:
    prefix: list[str | int] = ["data", "choices"]
    if not isinstance(choices, list):
        raise form_error(prefix, "BASE_TYPE_REQUIRED", "This field is required")
    if len(choices) > s.max_autocomplete_choices:
        raise form_error(prefix, "BASE_TYPE_MAX_LENGTH", f"Must be {s.max_autocomplete_choices} or fewer in length.")
    for i, choice in enumerate(choices):
        _check_len(choice.get("name"), prefix + [i, "name"], 1, 100)
        if isinstance(choice.get("value"), str):
            _check_len(choice["value"], prefix + [i, "value"], 0, 100)


def validate_modal(data: dict[str, Any], s: EmulatorSettings) -> None:
    validate_custom_id(data.get("custom_id"), ["data", "custom_id"], s)
    _check_len(data.get("title"), ["data", "title"], 1, 45)
    comps = data.get("components") or []
    if not 1 <= len(comps) <= 5:
        raise form_error(["data", "components"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length.")


# -- application commands ----------------------------------------------------------------------------------

NAME_RE = re.compile(r"^[-_\w]{1,32}$")


def validate_command(cmd: dict[str, Any], index: int) -> None:
    """The rules Discord checks when commands are synced (the ones that bite discord.py users)."""
    path: list[str | int] = [index]
    ctype = cmd.get("type", 1)
    name = cmd.get("name", "")
    if not isinstance(name, str) or not NAME_RE.match(name) or (ctype == 1 and name != name.lower()):
        if ctype == 1:
            raise form_error(path + ["name"], "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")
    if ctype == 1:
        _check_len(cmd.get("description"), path + ["description"], 1, 100)
    _validate_options(cmd.get("options") or [], path, depth=0)


def _validate_options(options: list[dict[str, Any]], path: list[str | int], depth: int) -> None:
    if len(options) > 25:
        raise form_error(path + ["options"], "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    seen_optional = False
    names: set[str] = set()
    for i, opt in enumerate(options):
        opath = path + ["options", i]
        name = opt.get("name", "")
        if not NAME_RE.match(name) or name != name.lower():
            raise form_error(opath + ["name"], "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")
        if name in names:
            raise form_error(opath + ["name"], "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS", "Option name already exists")
        names.add(name)
        _check_len(opt.get("description"), opath + ["description"], 1, 100)
        otype = opt.get("type")
        if otype in (1, 2):
            if depth >= (1 if otype == 2 else 2):
                raise form_error(opath + ["type"], "APPLICATION_COMMAND_SUBCOMMAND_GROUP_DEPTH_EXCEEDED", "Subcommand groups nested too deeply")
            _validate_options(opt.get("options") or [], opath, depth + 1)
            continue
        if opt.get("required"):
            if seen_optional:
                raise form_error(
                    opath + ["required"], "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options",
                )
        else:
            seen_optional = True
        choices = opt.get("choices") or []
        if len(choices) > 25:
            raise form_error(opath + ["choices"], "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        if choices and opt.get("autocomplete"):
            raise form_error(opath + ["autocomplete"], "APPLICATION_COMMAND_AUTOCOMPLETE_INVALID",
                             "Autocomplete cannot be set on options with choices")
