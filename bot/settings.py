"""Configuration from the environment and `.env`, validated once at start.

Every key is listed with its default in `.env.example`. A missing or invalid
value is reported as one line naming the variable (see `describe_error`), never
as a traceback.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.adtarget.events import EventType

_TOKEN_SHAPE = re.compile(r"^\d+:[\w-]+$")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# TRUSTED_PROXIES' default. Setting TRUSTED_PROXIES replaces it.
LOOPBACK: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


def parse_trusted_proxies(text: str) -> list[IPNetwork]:
    """Networks from "10.0.0.0/8, 127.0.0.1" (commas or whitespace between entries)."""
    networks: list[IPNetwork] = []
    for entry in re.split(r"[,\s]+", text):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"trusted proxy {entry!r} is not an IP address or network") from None
    return networks


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    bot_token: SecretStr
    telegram_api_url: str = "https://api.telegram.org"
    adtarget_api_key: SecretStr
    adtarget_api_url: str = "https://adtarget.io"
    adtarget_site_id: str | None = None
    database_path: Path = Path("data/joinbridge.db")
    # postgresql://user:password@host/db: PostgreSQL instead of the SQLite file, for
    # several bridge processes sharing one store (docs/several-machines.md). Unset:
    # SQLite at DATABASE_PATH. A SecretStr: the URL may carry the password.
    database_url: SecretStr | None = None
    # With DATABASE_URL: a stalled leader (frozen, its connection open) loses the lead
    # this many seconds after its last heartbeat, and a standby takes over.
    leader_lease: float = Field(default=6.0, ge=1, le=60)
    admin_ids: Annotated[tuple[int, ...], NoDecode] = ()
    default_event_type: Literal["Lead", "Subscribe"] = "Lead"
    send_organic: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # text: one readable line per event; json: one JSON object per line, ids as fields.
    log_format: Literal["text", "json"] = "text"
    # Visits and finished outbox rows lose their IP, User-Agent and click ids after
    # this many days (counts stay); 0 keeps them forever.
    retention_days: int = Field(default=90, ge=0)

    # Invite links the bot mints for visitors.
    invite_ttl: int = Field(default=7 * 24 * 3600, ge=120, description="seconds")
    invite_pool_size: int = Field(default=20, ge=0, le=10000)
    # Seconds between two link creations while refilling a pool (Telegram publishes
    # no limit for createChatInviteLink; 429s are waited out either way).
    invite_mint_interval: float = Field(default=0.05, ge=0)
    # Personal links one client (an IP, an IPv6 /64; a server-side caller: per
    # visitor it names) gets per channel an hour; past it, the channel's fallback link.
    invite_links_per_client_hour: int = Field(default=3, ge=1)
    approve_join_requests: bool = True

    # The tracker: the landing page's side (visits, invite links, health).
    tracker_host: str = "127.0.0.1"
    tracker_port: int = Field(default=8080, ge=0, le=65535)
    # The tracker's address as landing pages reach it (behind your proxy), for the
    # snippet the bot hands out; default http://TRACKER_HOST:TRACKER_PORT.
    tracker_public_url: str | None = None
    # Loopback unless set: a peer on this host is a proxy or the landing page's server.
    trusted_proxies: Annotated[tuple[IPNetwork, ...], NoDecode] = LOOPBACK
    tracker_allowed_origins: Annotated[tuple[str, ...], NoDecode] = ()
    tracker_token: SecretStr | None = None
    tracker_rate_per_minute: float = Field(default=120.0, gt=0)
    tracker_burst: int = Field(default=30, ge=1)
    # Visits one client may record per hour (a server-side caller: per visitor it
    # names). A landing page's visitor makes a handful; a flood writes the disk.
    tracker_visits_per_hour: int = Field(default=120, ge=1)
    # Seconds a client may take to send its body; a slow sender holds a connection.
    tracker_body_timeout: float = Field(default=10.0, gt=0)
    # Below this much free disk (MB) where the database lives, new visits get a 503.
    min_free_disk_mb: int = Field(default=200, ge=0)
    # Minutes without an answer to getUpdates before the admins are alerted.
    poll_alert_minutes: float = Field(default=5.0, gt=0)
    # GET /metrics on the tracker (Prometheus text format).
    metrics_enabled: bool = True

    # Polling.
    poll_timeout: int = Field(default=30, ge=0, le=50)
    poll_limit: int = Field(default=100, ge=1, le=100)
    update_retry_base: float = Field(default=5.0, gt=0)
    poll_head_start: float = Field(default=0.01, ge=0, le=1)

    # Courier: pacing under AdTarget's limit of 300 requests/min, burst 50.
    adtarget_rate_per_minute: float = Field(default=300.0, gt=0)
    adtarget_burst: int = Field(default=50, ge=1)
    adtarget_timeout: float = Field(default=10.0, gt=0)
    # false: rows are recorded and kept queued, nothing is sent (a dry run).
    courier_enabled: bool = True
    courier_concurrency: int = Field(default=4, ge=1, le=64)
    backoff_base: float = Field(default=1.0, gt=0)
    backoff_cap: float = Field(default=60.0, gt=0)
    # Retries stop short of AdTarget's 24 h idempotency window, then the row is parked.
    retry_window: float = Field(default=23 * 3600.0, gt=0)
    idempotency_window: float = Field(default=24 * 3600.0, gt=0)
    auth_probe_interval: float = Field(default=300.0, gt=0)
    billing_probe_interval: float = Field(default=1800.0, gt=0)
    shutdown_grace: float = Field(default=5.0, ge=0)
    # Visit and update-fbp forwards are best effort (conversions never are dropped:
    # they carry their visit's attribution themselves). At most this many wait to be
    # sent; beyond it a new one is dropped. 10,000 is over half an hour of the key's
    # whole 300 requests/min (shared with conversions), ~10 MB of rows: a landing
    # page below ~5 visits/s never queues that many, only a flood or an outage does.
    # 0: visits are never forwarded.
    outbox_forwards_max: int = Field(default=10_000, ge=0)
    # A forward still unsent (or parked) this many seconds after the visit is dropped.
    # AdTarget's visit body has no time field: a forward is recorded when it arrives,
    # so one sent hours late misplaces its visit. 6 h rides out an outage of a few
    # hours; older ones would also spend the rate conversions need after it.
    outbox_forwards_max_age: float = Field(default=6 * 3600.0, gt=0)

    # The stay signal (/stay): getChatMember calls per second at due time,
    # well under Telegram's ~30 requests/s per bot shared with everything else.
    stay_check_rate: float = Field(default=20.0, gt=0, le=30)

    @field_validator("bot_token")
    @classmethod
    def _token_shape(cls, value: SecretStr) -> SecretStr:
        # aiogram refuses other shapes; say so here, without echoing the token.
        if not _TOKEN_SHAPE.match(value.get_secret_value()):
            raise ValueError("must look like 123456789:AA... (the token BotFather gave you)")
        return value

    @field_validator("adtarget_api_key")
    @classmethod
    def _key_present(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        url = value.get_secret_value().strip()
        if not re.match(r"^postgres(ql)?://[^\s]+$", url):
            # The value is not echoed: it may hold a password.
            raise ValueError("must be a postgresql:// URL (or be left unset for SQLite)")
        return SecretStr(url)

    @field_validator("tracker_public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return None if value is None or not value.strip() else cls._url(value.strip())

    @field_validator("telegram_api_url", "adtarget_api_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: object) -> object:
        # One place decides what a proxy entry may be.
        return tuple(parse_trusted_proxies(value)) if isinstance(value, str) else value

    @field_validator("tracker_allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        if isinstance(value, str):
            items = tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
            if "*" in items:
                # Any site could then read a visitor's cookies-backed answers.
                raise ValueError("'*' is not allowed: list the landing pages' origins")
            bad = [o for o in items if not re.match(r"^https?://[^/\s]+$", o)]
            if bad:
                raise ValueError(f"{bad[0]!r} is not an origin like https://example.com")
            return items
        return value

    @field_validator("admin_ids", mode="before")
    @classmethod
    def _admin_ids(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            bad = [p for p in parts if not re.fullmatch(r"-?\d+", p)]
            if bad:
                raise ValueError(f"must be comma-separated Telegram user ids, got {bad[0]!r}")
            return tuple(int(p) for p in parts)
        return value

    @field_validator("admin_ids")
    @classmethod
    def _admin_users(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        # A user's id is positive; a group's or channel's is negative (-100…), and
        # an alert sent there would go to its members, or nowhere.
        wrong = [i for i in value if i <= 0]
        if wrong:
            raise ValueError(
                f"{wrong[0]} is not a user id (groups' and channels' ids are negative);"
                " send /start to the bot from your own account to learn yours"
            )
        return value

    @property
    def public_tracker_url(self) -> str:
        return self.tracker_public_url or f"http://{self.tracker_host}:{self.tracker_port}"

    @property
    def default_event(self) -> EventType:
        return EventType.parse(self.default_event_type)


def describe_error(error: ValidationError) -> str:
    """One line per problem: `VARIABLE: what is wrong`, with no secret values."""
    lines = []
    for item in error.errors():
        name = "_".join(str(part) for part in item["loc"][:1]).upper() or "SETTINGS"
        if item["type"] == "missing":
            why = "is required but not set (put it in the environment or in .env)"
        else:
            why = f"is invalid: {item['msg'].removeprefix('Value error, ')}"
        lines.append(f"{name} {why}")
    return "; ".join(lines)
