"""Gateway settings: one typed model, every limit with a name, a unit and a default.

Values come from, in rising priority: the defaults below, the ``[wshub]`` table of
``hypercorn.toml``, and ``WSHUB_*`` environment variables. Durations are seconds, sizes bytes,
rates events per second.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    Field,
    FilePath,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "WSHUB_"
# Set by `ws-hub serve` so that every worker process reads the same file.
CONFIG_FILE_ENV = "WSHUB_CONFIG_FILE"


class SettingsError(Exception):
    """A setting is invalid; the message is one line naming it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        env_parse_none_str="",
    )

    # -- identity, reported by system:config and the index page
    app_name: str = "WS-Hub"
    app_version: str = "0.1.0"
    environment: str = "development"

    # -- heartbeat (server-level, on top of Engine.IO's own ping)
    heartbeat_interval: float = Field(30.0, gt=0, le=86_400)
    heartbeat_timeout: float = Field(5.0, gt=0, le=86_400)
    heartbeat_warn_after: int = Field(2, ge=1, le=1_000)
    heartbeat_max_missed: int = Field(5, ge=1, le=1_000)

    # -- typing indicators, stats and the client list
    typing_timeout: float = Field(5.0, gt=0, le=3_600)
    stats_interval: float = Field(5.0, gt=0, le=86_400)
    # system:clients answers a page: this many clients unless the request says `limit`, and at
    # most clients_page_max; one snapshot of the (cluster-wide) list serves every request
    # within clients_snapshot_ttl seconds.
    clients_page_size: int = Field(100, ge=1, le=10_000)
    clients_page_max: int = Field(500, ge=1, le=10_000)
    clients_snapshot_ttl: float = Field(1.0, ge=0, le=60)

    # -- presence backend
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Key and channel prefix: several hubs can share one Redis.
    redis_prefix: str = "wshub:"
    # A process that dies without cleaning up leaves the hub within about 4/3 of this.
    redis_lease_seconds: float = Field(15.0, gt=0, le=3_600)
    # Each node remembers where a username's connections are for at most this long (every
    # change is announced to all nodes at once; this only bounds a lost announcement). 0: every
    # message asks Redis.
    route_cache_seconds: float = Field(30.0, ge=0, le=3_600)
    backplane_probe_interval: float = Field(5.0, gt=0, le=3_600)
    backplane_probe_timeout: float = Field(2.0, gt=0, le=600)

    # -- payload limits (bytes)
    max_message_bytes: int = Field(65_536, ge=256, le=16 * 1024 * 1024)
    max_metadata_bytes: int = Field(10_240, ge=256, le=16 * 1024 * 1024)
    max_notification_bytes: int = Field(8_192, ge=64, le=16 * 1024 * 1024)
    # The hard ceiling for one Engine.IO packet or WebSocket frame (after inflation); above it
    # the connection is closed rather than answered.
    max_frame_bytes: int = Field(1_048_576, ge=1_024, le=64 * 1024 * 1024)
    max_username_length: int = Field(64, ge=1, le=1_024)
    max_following: int = Field(1_000, ge=0, le=1_000_000)
    max_targets: int = Field(100, ge=1, le=100_000)

    # -- rate limits (events per second per connection; burst = bucket size)
    rate_limit: float = Field(20.0, gt=0, le=100_000)
    rate_limit_burst: int = Field(40, ge=1, le=1_000_000)
    rate_limit_cheap: float = Field(50.0, gt=0, le=100_000)
    rate_limit_cheap_burst: int = Field(100, ge=1, le=1_000_000)
    # system:clients, whose answer is a page of the client list
    rate_limit_clients: float = Field(5.0, gt=0, le=100_000)
    rate_limit_clients_burst: int = Field(10, ge=1, le=1_000_000)
    # Refused events a connection may pile up (refilled at rate_limit per second) before it is
    # disconnected for flooding.
    flood_disconnect_after: int = Field(100, ge=1, le=1_000_000)

    # -- connection admission
    max_connections: int = Field(10_000, ge=1, le=10_000_000)
    max_connections_per_ip: int = Field(256, ge=1, le=10_000_000)
    connect_rate_per_ip: float = Field(20.0, gt=0, le=100_000)
    connect_burst_per_ip: int = Field(40, ge=1, le=1_000_000)
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = Field(default_factory=list)

    # -- backpressure: what may wait for one client before it is dropped as a slow consumer
    max_outbound_queue: int = Field(1_000, ge=10, le=1_000_000)
    max_outbound_bytes: int = Field(1_048_576, ge=65_536, le=1024 * 1024 * 1024)
    # JSON nesting accepted in a client packet: deeper payloads are INVALID_FORMAT (and every
    # accepted payload can be encoded again).
    max_payload_depth: int = Field(32, ge=2, le=200)
    # permessage-deflate triples memory per idle connection; declined unless asked for.
    websocket_deflate: bool = False

    # -- authentication (off unless a secret or a public key is set)
    auth_jwt_secret: SecretStr | None = None
    auth_jwt_public_key_file: FilePath | None = None
    auth_jwt_algorithms: Annotated[list[str], NoDecode] = Field(default_factory=list)
    auth_jwt_audience: str | None = None
    auth_jwt_issuer: str | None = None
    auth_jwt_leeway: float = Field(0.0, ge=0, le=3_600)
    auth_username_claim: str = "sub"
    auth_role_claim: str = "roles"
    auth_broadcast_role: str | None = None
    auth_clients_role: str | None = None
    auth_admin_role: str = "admin"
    # With authentication on, what a second connection of the same user does: both stay online
    # (multi), the newest wins (replace), or it is refused while the first answers (reject).
    user_connections: Literal["multi", "replace", "reject"] = "multi"
    # A claim that collides with a holder probes it (an Engine.IO ping); no answer within this
    # many seconds and the holder is taken for dead and displaced.
    holder_probe_timeout: float = Field(1.0, gt=0, le=60)

    # -- TLS certificate reload (see docs/tls-reload.md)
    tls_watch_step_ms: int = Field(30, ge=1, le=60_000)
    tls_watch_debounce_ms: int = Field(1_600, ge=1, le=600_000)
    tls_settle_seconds: float = Field(2.0, ge=0, le=3_600)
    tls_recheck_interval: float = Field(60.0, gt=0, le=86_400)
    tls_expiry_warn_days: float = Field(14.0, ge=0, le=3_650)

    # -- transport
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    engineio_ping_interval: float = Field(25.0, gt=0, le=3_600)
    engineio_ping_timeout: float = Field(20.0, gt=0, le=3_600)
    # An Engine.IO session without a Socket.IO CONNECT after this long is closed (Socket.IO's
    # connectTimeout).
    connect_timeout: float = Field(45.0, gt=0, le=3_600)
    # A connection the server closed that has not gone after this long is cut (TCP abort).
    close_timeout: float = Field(5.0, gt=0, le=600)

    # -- connection state recovery (see docs/recovery.md)
    # A session whose transport died keeps its id, name and the events sent to it for this many
    # seconds, for its client to resume (0 turns recovery off).
    recovery_window: float = Field(120.0, ge=0, le=86_400)
    # Events kept per session until the client proves it read them; a waiting session that
    # would need more ends (its client gets a fresh session).
    recovery_buffer: int = Field(500, ge=1, le=100_000)
    # Offsets as the last argument of replayable events: "auto" sends them to every client but
    # those known to pass a trailing argument to one-argument handlers (Dart, Python), "always"
    # as the reference server does, "never" (recovery then replays what was not proven read).
    recovery_offsets: Literal["auto", "always", "never"] = "auto"

    # -- operations
    # Internal HOST:PORT for /health, /ready and /metrics; when set, the public binds do not
    # serve them, and it stays open while the worker drains.
    ops_bind: str | None = None
    # On SIGTERM, clients are disconnected in batches spread over this many seconds, so they
    # do not all reconnect elsewhere at the same instant.
    drain_window: float = Field(10.0, ge=0, le=3_600)

    # -- logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    # Message bodies stay out of the logs unless this is on (debugging only).
    log_bodies: bool = False

    # -- server API (gateway/api): off unless api_keys is set; see docs/api.md
    # Bearer keys that backends present; several, so that a key can be rotated without a gap.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # Largest request body (a batch counts whole). Quart buffers at most 16 MiB of any body.
    api_max_body_bytes: int = Field(1_048_576, ge=1_024, le=16 * 1024 * 1024)
    # Calls per second per key (a batch costs one per call in it), and the bucket size.
    api_rate_limit: float = Field(100.0, gt=0, le=1_000_000)
    api_rate_limit_burst: int = Field(200, ge=1, le=10_000_000)
    # Seconds an Idempotency-Key is remembered: a retry within it is answered, not repeated.
    api_idempotency_window: float = Field(300.0, ge=1, le=7 * 86_400)
    # sender.username of what the API sends; no client may take this name.
    api_sender_name: str = Field("WS-Hub", min_length=1, max_length=1_024)
    # With ops_bind set the API answers on the ops port only, unless this is true.
    api_public: bool = False

    @field_validator("api_keys", mode="before")
    @classmethod
    def _api_key_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _check_api_keys(self) -> Self:
        # Checked here rather than on the field so that a refusal never echoes a key's value.
        for number, key in enumerate(self.api_keys, 1):
            text = key.get_secret_value()
            if len(text) < 16:
                raise ValueError(
                    f"api_keys: key {number} has {len(text)} characters; at least 16 are needed"
                )
            if not all("!" <= ch <= "~" and ch != "," for ch in text):
                raise ValueError(
                    f"api_keys: key {number} must be printable ASCII without spaces or commas"
                )
        return self

    @field_validator("cors_origins", "trusted_proxies", "auth_jwt_algorithms", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        # Environment variables carry lists as "a,b,c"; the TOML table as real arrays.
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @property
    def auth_enabled(self) -> bool:
        return self.auth_jwt_secret is not None or self.auth_jwt_public_key_file is not None

    @model_validator(mode="after")
    def _check_relations(self) -> Self:
        if self.heartbeat_timeout >= self.heartbeat_interval:
            raise ValueError(
                "heartbeat_timeout must be shorter than heartbeat_interval "
                f"({self.heartbeat_timeout} >= {self.heartbeat_interval})"
            )
        if self.heartbeat_warn_after > self.heartbeat_max_missed:
            raise ValueError(
                "heartbeat_warn_after must not exceed heartbeat_max_missed "
                f"({self.heartbeat_warn_after} > {self.heartbeat_max_missed})"
            )
        if self.auth_jwt_secret is not None and self.auth_jwt_public_key_file is not None:
            raise ValueError(
                "set either auth_jwt_secret (HS256) or auth_jwt_public_key_file (RS256/ES256)"
            )
        if self.max_message_bytes > self.max_frame_bytes:
            raise ValueError("max_message_bytes must not exceed max_frame_bytes")
        if self.max_notification_bytes > self.max_message_bytes:
            raise ValueError("max_notification_bytes must not exceed max_message_bytes")
        if self.clients_page_size > self.clients_page_max:
            raise ValueError("clients_page_size must not exceed clients_page_max")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML table arrives as init kwargs; the environment must win over it.
        return (env_settings, init_settings)

    @classmethod
    def load(cls, config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
        """Read the ``[wshub]`` table of *config_file* (if any), then the environment.

        Raises :class:`SettingsError` with one line naming the offending setting.
        """
        table = dict(read_wshub_table(config_file)) if config_file else {}
        table.update(overrides)
        try:
            return cls(**table)
        except ValidationError as exc:
            raise SettingsError(_one_line(exc)) from None

    @classmethod
    def from_environment(cls) -> Settings:
        """Settings for a worker process: the file named by ``WSHUB_CONFIG_FILE``, then env."""
        return cls.load(os.environ.get(CONFIG_FILE_ENV) or None)


def read_wshub_table(config_file: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(config_file)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
    table = data.get("wshub", {})
    if not isinstance(table, dict):
        raise SettingsError(f"config file {path}: [wshub] must be a table")
    return table


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"]]
    if loc:
        name = f"{ENV_PREFIX}{loc[0].upper()} ([wshub] {loc[0]})"
        got = (
            f" (got {err['input']!r})"
            if "input" in err and not isinstance(err["input"], dict)
            else ""
        )
        return f"invalid setting {name}: {err['msg']}{got}"
    return f"invalid settings: {err['msg'].removeprefix('Value error, ')}"
