"""typed job parameters: jobs.params_version; rows converted to the typed layout; price multipliers per job kind

Revision ID: 0002
Revises: 0001
Create Date: 2027-01-10

Existing job rows are rewritten to the layout of ``worker.jobs`` (version 1): the kind
``hypernet-train`` becomes ``hypernet_train``; ``modules`` becomes ``hypernets`` and a mix's
``unet_passes`` becomes ``passes``; keys a kind does not have are dropped and missing optional ones
get their defaults.  Guild price overrides of multipliers that never applied to any job are carried
to the kind they were meant for (``hypernet`` → ``hypernet_train``, ``imagic`` → ``edit``) or, for
``reroll`` and ``variation`` (modes of /imagine, priced as /imagine), dropped; either way an audit
entry says so.

Self-contained on purpose: migrations must not import the application's code, which moves on.
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COMMON = ("prompt", "user_prompt", "negative", "width", "height", "steps", "cfg", "sampler", "seed", "count", "clip_skip", "screen")
FIELDS = {
    "imagine": ("mode", "init_image", "strength", "source_job", "source_index", "hypernets"),
    "edit": ("init_image", "eta", "preset", "embed_steps", "tune_steps", "work_steps"),
    "edit_remix": ("source_job", "eta"),
    "outpaint": ("init_image", "box", "direction", "pixels", "strength", "mask_blur", "source_job", "source_index"),
    "inpaint": ("init_image", "mask", "strength", "fill", "mask_blur", "source_job", "source_index"),
    "mix": ("parts", "mix_mode", "normalize", "sweep", "passes"),
    "hypernet_train": (
        "train_images", "captions", "train_steps", "train_area", "lr", "batch_size", "shallow_penalty",
        "module_name", "module_path", "work_steps",
    ),
}  # fmt: skip
KINDS = {"hypernet-train": "hypernet_train"}
KEYS = {"modules": "hypernets", "unet_passes": "passes"}
CARRIED = {"hypernet": "hypernet_train", "imagic": "edit"}
DROPPED = ("reroll", "variation")

jobs = sa.table("jobs", sa.column("id"), sa.column("kind"), sa.column("params", sa.JSON), sa.column("params_version"))
guild_settings = sa.table("guild_settings", sa.column("guild_id"), sa.column("settings", sa.JSON))
audit_log = sa.table(
    "audit_log", sa.column("guild_id"), sa.column("actor_id"), sa.column("action"), sa.column("details", sa.JSON),
    sa.column("created_at", sa.DateTime(timezone=True)),
)  # fmt: skip


def typed(kind: str, old: dict[str, Any]) -> dict[str, Any]:
    """Version-1 parameters of a job of ``kind`` (already renamed) from the untyped dict."""
    p = {KEYS.get(k, k): v for k, v in old.items()}
    p.setdefault("user_prompt", p.get("prompt", ""))
    if kind == "imagine":
        p["mode"] = p.get("mode") or "txt2img"
        p["hypernets"] = [
            {"name": h["name"], "path": h.get("path", ""), "strength": h["strength"]} for h in p.get("hypernets") or ()
        ]
    if kind == "inpaint":
        p.setdefault("fill", "original")
    return {k: v for k, v in p.items() if k in COMMON or k in FIELDS[kind]}


def untyped(kind: str, new: dict[str, Any]) -> dict[str, Any]:
    """The inverse, for a downgrade: the old key names; an empty module chain is left out."""
    back = {v: k for k, v in KEYS.items()}
    p = {back.get(k, k): v for k, v in new.items() if v is not None}
    if not p.get("modules"):
        p.pop("modules", None)
    if p.get("mode") == "txt2img":
        del p["mode"]
    return p


def _rewrite_jobs(convert: Any, kinds: dict[str, str], version: int | None) -> None:
    bind = op.get_bind()
    for job_id, kind, params in bind.execute(sa.select(jobs.c.id, jobs.c.kind, jobs.c.params)).all():
        kind = kinds.get(kind, kind)
        values: dict[str, Any] = {"kind": kind, "params": convert(kind, params or {})}
        if version is not None:
            values["params_version"] = version
        bind.execute(jobs.update().where(jobs.c.id == job_id).values(**values))


def _move_multipliers() -> None:
    bind = op.get_bind()
    now = datetime.now(UTC)
    for guild_id, blob in bind.execute(sa.select(guild_settings.c.guild_id, guild_settings.c.settings)).all():
        multipliers = dict(((blob or {}).get("cost_policy") or {}).get("multipliers") or {})
        stale = {k: v for k, v in multipliers.items() if k in CARRIED or k in DROPPED}
        if not stale:
            continue
        carried, dropped = {}, {}
        for key, value in stale.items():
            del multipliers[key]
            target = CARRIED.get(key)
            if target is not None and target not in multipliers:
                multipliers[target] = value
                carried[f"{key} -> {target}"] = value
            else:
                dropped[key] = value
        blob = {**blob, "cost_policy": {**blob["cost_policy"], "multipliers": multipliers}}
        bind.execute(guild_settings.update().where(guild_settings.c.guild_id == guild_id).values(settings=blob))
        bind.execute(
            audit_log.insert().values(
                guild_id=guild_id, actor_id=0, action="credits.policy.migrated", created_at=now,
                details={"carried": carried, "dropped": dropped,
                         "why": "price multipliers now exist exactly for the job kinds; these never applied to a job"},
            )
        )  # fmt: skip


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("params_version", sa.Integer(), server_default="1", nullable=False))
    _rewrite_jobs(typed, KINDS, 1)
    _move_multipliers()


def downgrade() -> None:
    _rewrite_jobs(untyped, {v: k for k, v in KINDS.items()}, None)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("params_version")
