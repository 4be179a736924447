"""Bot configuration: `config.toml` + environment overrides, validated into typed sections.

Every key has a default here (the embedded defaults); `config.toml` documents each one.
Unknown sections/keys and values of the wrong type are reported together, as one clear
`ConfigError`, so an operator fixes the file in one go.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from gen_core.geometry import Geometry
from gen_core.hypernetwork import TrainConfig
from gen_core.imagic import PRESETS
from gen_core.safety import MODES as SAFETY_MODES
from storage.image_store import parse_s3_url
from toyworld import MODEL_DIR as TOYWORLD_MODEL


class ConfigError(ValueError):
    """The configuration file or an environment override is invalid."""


@dataclass
class DiscordConfig:
    token: str = ""
    api_base: str = ""  # empty: the real Discord; set to an emulator's http://host:port/api/v10
    gateway_url: str = ""  # empty: the real Discord gateway
    sync_guild: int = 0  # 0: sync commands globally; otherwise only to this guild (instant)
    guild_ready_timeout: float = 2.0


@dataclass
class ModelConfig:
    name: str = "default"  # what members choose in /imagine model: and workers advertise
    path: str = ""  # empty: the toy-world model shipped in toyworld/model
    device: str = "auto"  # auto | cuda | mps | cpu
    dtype: str = "auto"  # auto | fp16 | bf16 | fp32
    attention: str = "sdpa"
    channels_last: bool = True
    compile: bool = False
    clip_skip: int = 2
    max_chunks: int = 3
    inpaint_path: str = ""  # optional dedicated inpainting checkpoint
    family: str = "auto"  # auto | sd1 | sd2 | sdxl (auto: read from the checkpoint)
    vae: str = ""  # optional VAE replacing the checkpoint's (diffusers folder or single file)


@dataclass
class StorageConfig:
    url: str = ""  # empty: sqlite+aiosqlite:///<data_dir>/bot.db
    data_dir: str = "data"
    images: str = ""  # empty: <data_dir>/images; a folder; or s3://bucket/prefix, shared by several machines
    # the s3:// store's connection; each empty one comes from the usual AWS_* environment variables
    s3_endpoint: str = ""  # e.g. http://minio.lan:9000 (S3-compatible servers); empty: AWS
    s3_region: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    keep_images_days: float = 0.0  # pictures (results and uploads) older than this are removed; 0 = kept forever
    sweep_interval_h: float = 6.0  # how often the image store is swept (unreferenced files, then retention)


@dataclass
class WorkerConfig:
    embedded: bool = True  # the bot runs a worker itself (one machine); false: only python -m worker processes run jobs
    model: str = ""  # python -m worker: the name of the model this worker serves (empty: the default model)
    drain_s: float = 300.0  # python -m worker on SIGTERM: finish the running batch for up to this long, then release it
    max_batch: int = 4
    lease_s: float = 10.0
    max_attempts: int = 3
    poll_interval_s: float = 0.5
    progress_interval_s: float = 3.0
    preview_every: int = 5
    announce_retries: int = 6
    announce_backoff_s: float = 5.0
    announce_backoff_max_s: float = 60.0


@dataclass
class GenerationConfig:
    default_model: str = ""  # the model of requests that name none (empty: the first of [[models]], or [model])
    default_steps: int = 28
    default_cfg: float = 7.0
    default_sampler: str = "Euler a"
    default_aspect: str = "portrait"
    max_area: int = 0  # largest bucket area; 0: the model's (512x768 for SD 1.x); raise on big GPUs
    quality_tags: str = "masterpiece, best quality"
    undesired_light: str = "lowres, bad anatomy, bad hands, text, error, worst quality, low quality, jpeg artifacts"
    undesired_heavy: str = (
        "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, "
        "worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry"
    )
    # guidance stops at noise levels below this (A1111's "NGMS"): the last steps follow the prompt alone, at
    # half the UNet work; they no longer decide what the picture shows (0: every step guided)
    guidance_min_sigma: float = 0.0
    img2img_strength: float = 0.7  # default strength of /imagine with an uploaded image (NovelAI's)
    vary_subtle_strength: float = 0.35  # strength of the Vary (Subtle) buttons
    vary_strong_strength: float = 0.7  # strength of the Vary (Strong) and Remix buttons
    upscale_strength: float = 0.35
    outpaint_pixels: int = 0  # default border added by /outpaint; 0: half the model's side (256 for SD 1.x)
    outpaint_strength: float = 1.0  # denoising strength of /outpaint (below 1 starts from the edge-extended fill)
    inpaint_strength: float = 0.75  # default strength of /inpaint
    mask_blur: int = -1  # feather (pixels) of outpaint/inpaint masks into the kept area; -1: side/32 (16 for SD 1.x)

    def fit_to_model(self, geometry: Geometry) -> None:
        """Fill the sizes left to the model (0 / -1) from the loaded model's geometry."""
        self.max_area = self.max_area or geometry.bucket_area
        self.outpaint_pixels = self.outpaint_pixels or geometry.outpaint_pixels
        if self.mask_blur < 0:
            self.mask_blur = max(1, geometry.native // 32)


@dataclass
class LimitsConfig:
    max_steps: int = 50
    max_count: int = 4
    max_queued_per_user: int = 5
    max_permutations: int = 8
    max_attachment_bytes: int = 10 * 1024 * 1024
    max_input_pixels: int = 4096 * 4096
    max_train_images: int = 64
    max_train_pixels: int = 64 * 2**20  # decoded pixels of one training request, all images together
    max_train_steps: int = 2000
    max_mix_prompts: int = 4
    max_job_gpu_s: float = 1800.0  # estimated GPU seconds one job may take (0 = no cap), whatever credits pay for


@dataclass
class ModerationConfig:
    nsfw_terms: str = "nsfw, nude, nudity, naked, explicit, porn, hentai, sex, topless, genitals"
    sfw_negative: str = "nsfw, nude, nudity, naked, explicit, sexual"
    image_check: str = "auto"  # auto | nudenet | diffusers | false (gen_core.safety)


@dataclass
class EditConfig:
    default_eta: float = 0.7
    sampler: str = "DDIM"
    cache_mb: int = 2048
    # the presets' own step counts unless config.toml changes them (gen_core.imagic.PRESETS)
    fast_embed_steps: int = PRESETS["fast"].embed_steps
    fast_tune_steps: int = PRESETS["fast"].tune_steps
    quality_embed_steps: int = PRESETS["quality"].embed_steps
    quality_tune_steps: int = PRESETS["quality"].tune_steps


@dataclass
class HypernetConfig:
    # gen_core's training defaults unless config.toml changes them (gen_core.hypernetwork.TrainConfig)
    train_steps: int = TrainConfig.steps
    lr: float = TrainConfig.lr
    batch_size: int = TrainConfig.batch_size
    shallow_penalty: float = TrainConfig.shallow_penalty
    max_active: int = 4
    max_file_mb: int = 200


@dataclass
class LoraConfig:
    max_active: int = 8
    max_file_mb: int = 512
    cache_mb: int = 2048


@dataclass
class EmbeddingConfig:
    max_file_mb: int = 8


@dataclass
class CreditsConfig:
    start_balance: int = 500
    topup_floor: int = 100
    topup_period_h: float = 24.0


@dataclass
class Config:
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    credits: CreditsConfig = field(default_factory=CreditsConfig)
    edit: EditConfig = field(default_factory=EditConfig)
    hypernet: HypernetConfig = field(default_factory=HypernetConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    moderation: ModerationConfig = field(default_factory=ModerationConfig)
    #: [[models]]: the models on offer, each a [model] table (keys it does not set come from [model]); empty:
    #: the one model of [model]
    model_list: list[ModelConfig] = field(default_factory=list)
    #: [server_weights]: a server's share of the GPUs relative to the others ("<guild id>" = weight; default 1)
    server_weights: dict[int, float] = field(default_factory=dict)

    @property
    def models(self) -> dict[str, ModelConfig]:
        """The models on offer by name, the default first."""
        models = {m.name: m for m in (self.model_list or [self.model])}
        default = self.default_model
        return {default: models[default], **models}

    @property
    def default_model(self) -> str:
        return self.generation.default_model or (self.model_list or [self.model])[0].name

    def model_path_of(self, model: ModelConfig) -> Path:
        return Path(model.path) if model.path else TOYWORLD_MODEL

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir)

    @property
    def images(self) -> str:
        """Where the images live: a folder, or ``s3://bucket/prefix``."""
        return self.storage.images or str(self.data_dir / "images")

    @property
    def database_url(self) -> str:
        return self.storage.url or f"sqlite+aiosqlite:///{self.data_dir / 'bot.db'}"

    @property
    def model_path(self) -> Path:
        """The checkpoint of the default model."""
        return self.model_path_of(self.models[self.default_model])


# Environment variable -> (section, key)
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "DISCORD_TOKEN": ("discord", "token"),
    "DISCORD_API_BASE": ("discord", "api_base"),
    "DISCORD_GATEWAY_URL": ("discord", "gateway_url"),
    "DISCORD_SYNC_GUILD": ("discord", "sync_guild"),
    "BOT_MODEL_PATH": ("model", "path"),
    "BOT_DEVICE": ("model", "device"),
    "BOT_DTYPE": ("model", "dtype"),
    "BOT_DATABASE_URL": ("storage", "url"),
    "BOT_DATA_DIR": ("storage", "data_dir"),
    "BOT_IMAGES": ("storage", "images"),
}

_CHOICES = {
    ("model", "device"): {"auto", "cuda", "mps", "cpu"},
    ("model", "dtype"): {"auto", "fp16", "bf16", "fp32"},
    ("moderation", "image_check"): set(SAFETY_MODES),
}
#: Settings that were booleans once: ``true`` / ``false`` in an older file still mean what they did.
_FORMER_BOOLS = {("moderation", "image_check"): ("auto", "false")}


def _coerce(value: Any, typ: type, where: str, errors: list[str]) -> Any:
    if typ is bool:
        if isinstance(value, str) and value.lower() in {"1", "true", "yes", "0", "false", "no"}:
            return value.lower() in {"1", "true", "yes"}
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, bool):
            pass
        elif isinstance(value, int):
            return value
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif typ is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
    errors.append(f"{where}: expected {typ.__name__}, got {value!r}")
    return None


_SPECIAL = ("model_list", "server_weights")  # read by _read_models / _read_weights, not as [sections]


def _read_section(section: Any, name: str, values: dict[str, Any], errors: list[str]) -> None:
    hints = get_type_hints(type(section))
    for key, value in values.items():
        if key not in hints:
            errors.append(f"unknown key {name}.{key} (known: {', '.join(hints)})")
            continue
        if isinstance(value, bool) and (name, key) in _FORMER_BOOLS:
            value = _FORMER_BOOLS[name, key][0 if value else 1]
        coerced = _coerce(value, hints[key], f"{name}.{key}", errors)
        if coerced is not None:
            setattr(section, key, coerced)


def _read_models(config: Config, models: Any, errors: list[str]) -> None:
    """``[[models]]``: tables of [model]'s keys, each a copy of [model] with its own values."""
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        errors.append("[[models]] must be an array of tables")
        return
    for i, values in enumerate(models):
        if "name" not in values or "path" not in values:
            errors.append(f"[[models]] #{i + 1}: give it a name and a path")
        model = dataclasses.replace(config.model)
        _read_section(model, f"models[{i + 1}]", values, errors)
        config.model_list.append(model)
    names = [m.name for m in config.model_list]
    if len(set(names)) != len(names):
        errors.append(f"[[models]]: names must differ, got {', '.join(names)}")
    known = [m.name for m in (config.model_list or [config.model])]
    for what, name in (("generation.default_model", config.generation.default_model), ("worker.model", config.worker.model)):
        if name and name not in known:
            errors.append(f"{what} = {name!r} is not a model of the configuration (known: {', '.join(known)})")


def _read_weights(config: Config, weights: Any, errors: list[str]) -> None:
    if not isinstance(weights, dict):
        errors.append("[server_weights] must be a table of \"<server id>\" = weight")
        return
    for key, value in weights.items():
        weight = _coerce(value, float, f"server_weights.{key}", errors)
        if not str(key).isdigit():
            errors.append(f"server_weights.{key}: the key must be a server (guild) id")
        elif weight is not None and weight <= 0:
            errors.append(f"server_weights.{key} must be above 0")
        elif weight is not None:
            config.server_weights[int(key)] = weight


def build_config(data: dict[str, Any], env: dict[str, str] | None = None) -> Config:
    """Validate a parsed TOML mapping (+ environment) into a `Config`; raise `ConfigError` listing all problems."""
    errors: list[str] = []
    config = Config()
    sections = {f.name: f for f in dataclasses.fields(Config) if f.name not in _SPECIAL}
    data = dict(data)
    models, weights = data.pop("models", []), data.pop("server_weights", {})
    for section_name, values in data.items():
        if section_name not in sections:
            errors.append(f"unknown section [{section_name}] (known: {', '.join(sections)})")
            continue
        if not isinstance(values, dict):
            errors.append(f"[{section_name}] must be a table")
            continue
        _read_section(getattr(config, section_name), section_name, values, errors)
    for var, (section_name, key) in ENV_OVERRIDES.items():
        if env and env.get(var):
            section = getattr(config, section_name)
            coerced = _coerce(env[var], get_type_hints(type(section))[key], f"${var}", errors)
            if coerced is not None:
                setattr(section, key, coerced)
    _read_models(config, models, errors)
    _read_weights(config, weights, errors)
    for (section_name, key), allowed in _CHOICES.items():
        value = getattr(getattr(config, section_name), key)
        if value not in allowed:
            errors.append(f"{section_name}.{key} = {value!r}: choose one of {', '.join(sorted(allowed))}")
    for section_name, key, low in (
        ("worker", "max_batch", 1),
        ("limits", "max_steps", 1),
        ("limits", "max_count", 1),
        ("model", "clip_skip", 1),
        ("model", "max_chunks", 1),
        ("generation", "max_area", 0),
        ("generation", "outpaint_pixels", 0),
        ("generation", "mask_blur", -1),
        ("generation", "guidance_min_sigma", 0),
        ("storage", "keep_images_days", 0),
        ("storage", "sweep_interval_h", 0.0001),
    ):
        if getattr(getattr(config, section_name), key) < low:
            errors.append(f"{section_name}.{key} must be at least {low}")
    if "://" in config.storage.images:
        try:
            parse_s3_url(config.storage.images)
        except ValueError as e:
            errors.append(f"storage.images: {e}")
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))
    return config


def load_config(path: str | Path | None, env: dict[str, str] | None = None) -> Config:
    """Read `path` (missing file = embedded defaults) and apply environment overrides."""
    env = dict(os.environ) if env is None else env
    data: dict[str, Any] = {}
    if path is not None and Path(path).exists():
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    elif path is not None and str(path) != "config.toml":
        raise ConfigError(f"config file {path} does not exist")
    return build_config(data, env)
