"""Settings, read once at start-up from ``RATESVC_*`` environment variables and a TOML file.

Two forms:

* **Single account** (environment only): the account is named ``default``; see the README for
  every variable.
* **Multi-account**: ``RATESVC_CONFIG=/path/ratesvc.toml`` with a ``[service]`` table and one
  ``[accounts.<name>]`` table per Cin7 Core organisation. Any string value written as
  ``"env:NAME"`` is read from the environment variable ``NAME``, so secrets need not sit in the
  file. Environment variables for service-wide values (host, port, ...) override the file.

Every problem found is collected and reported together, one line each (:class:`ConfigError`).
Secrets are wrapped in :class:`Secret`, whose ``repr`` and ``str`` never show the value.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
import zoneinfo
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
import orjson

from ratesvc.countries import ISO_3166_ALPHA2
from ratesvc.customs import CONTENTS, NON_DELIVERY, CustomsRules
from ratesvc.models import Address
from ratesvc.sales import Packaging

DEFAULT_SHIPSTATION_URL = "https://ssapi.shipstation.com"
DEFAULT_CIN7_URL = "https://inventory.dearsystems.com/ExternalApi/v2"
DEFAULT_ACCOUNT = "default"
DEFAULT_REDIS_PREFIX = "ratesvc:"
MAX_WORKERS = 64
MIN_TOKEN_LENGTH = 16


class ConfigError(Exception):
    """Configuration is unusable; ``problems`` holds one actionable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Secret:
    """A string that never shows itself in logs, reprs or error messages."""

    __slots__ = ("_digest", "_value")

    def __init__(self, value: str) -> None:
        self._value = value
        self._digest = hashlib.sha256(value.encode()).digest()

    def reveal(self) -> str:
        return self._value

    def digest(self) -> bytes:
        return self._digest

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class MarkupRule(msgspec.Struct, frozen=True, kw_only=True):
    """Added to a quote: ``percent`` of shipment + other cost, plus ``flat``."""

    percent: Decimal = Decimal(0)
    flat: Decimal = Decimal(0)


class MarkupOverride(msgspec.Struct, frozen=True, kw_only=True):
    """A carrier's markup: the fields it sets (``None``: not set, the account's applies)."""

    percent: Decimal | None = None
    flat: Decimal | None = None


class Markup(msgspec.Struct, frozen=True, kw_only=True):
    """The account's markup (``default``) and per-carrier overrides.

    A per-carrier markup overrides only the fields it sets and inherits the others from the
    account's: with ``percent = "5"``, ``flat = "0.50"`` and ``per_carrier.ups = { percent =
    "2.5" }``, UPS quotes get 2.5 % plus 0.50. Setting a field to ``"0"`` is setting it: ``ups =
    { flat = "0" }`` drops the flat fee for UPS and keeps the account's percent; a field left out
    (or given as an empty string) is inherited. A field the account does not set is 0.
    """

    default: MarkupRule = MarkupRule()
    per_carrier: dict[str, MarkupOverride] = {}

    def for_carrier(self, carrier_code: str) -> MarkupRule:
        """The rule for one carrier: its override's fields, the account's for the rest."""
        override = self.per_carrier.get(carrier_code)
        if override is None:
            return self.default
        return MarkupRule(
            percent=self.default.percent if override.percent is None else override.percent,
            flat=self.default.flat if override.flat is None else override.flat,
        )


class ShipStationConfig(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    api_key: Secret
    api_secret: Secret
    rate_limit: int = 40
    window_s: float = 60.0

    def key_id(self) -> str:
        """Names the key pair in metrics and logs without revealing it (short: not an identity,
        see :meth:`cache_id`)."""
        return hashlib.sha256(self.api_key.reveal().encode()).hexdigest()[:8]

    def cache_id(self) -> str:
        """Names the ShipStation account (URL and key pair) in cache keys shared by many
        organisations: 128 bits of SHA-256, so two accounts never read each other's rates."""
        named = orjson.dumps([self.url, self.api_key.reveal(), self.api_secret.reveal()])
        return hashlib.sha256(named).hexdigest()[:32]


class Cin7Config(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    account_id: Secret
    application_key: Secret


WebhookKind = Literal["bearer", "basic", "header"]
AutoShip = Literal["off", "cheapest", "sale_carrier"]
AUTOSHIP_RULES: tuple[str, ...] = ("off", "cheapest", "sale_carrier")


class WebhookCredential(msgspec.Struct, frozen=True, kw_only=True):
    """What Cin7 Core must send with each webhook delivery: a bearer token, basic auth
    (``username`` + ``secret`` as the password) or the header ``header`` with ``secret``."""

    kind: WebhookKind
    secret: Secret
    username: str | None = None
    header: str | None = None


class ShipRule(msgspec.Struct, frozen=True, kw_only=True):
    """How an account ships packed sales automatically (see :mod:`ratesvc.automation`).

    ``autoship``: ``off``; ``cheapest`` (among ``services`` when that list is not empty);
    ``sale_carrier`` (the sale's ``Carrier`` text looked up in ``carrier_map``, else
    ``fallback``). Nothing costing more than ``max_cost`` is bought.
    """

    autoship: AutoShip = "off"
    services: tuple[str, ...] = ()
    carrier_map: dict[str, tuple[str, str]] = {}  # lower-cased sale Carrier text → codes
    fallback: Literal["cheapest", "attention"] = "cheapest"
    max_cost: Decimal | None = None
    test_labels: bool = False
    allow_default_weights: bool = False  # buy although a product weight had to be assumed
    poll_interval_s: float = 120.0  # 0: no polling for this account

    @property
    def on(self) -> bool:
        return self.autoship != "off"


class Account(msgspec.Struct, frozen=True, kw_only=True):
    """One Cin7 Core organisation with its ShipStation key pair and its own rules."""

    name: str
    api_tokens: tuple[Secret, ...]
    shipstation: ShipStationConfig
    cin7: Cin7Config | None = None
    ship_from: Address | None = None
    carriers: tuple[str, ...] | None = None
    markup: Markup = Markup()
    packaging: Packaging = Packaging()
    invoice_shipping: bool = False  # also add the shipping charge to the sale's draft invoice
    request_deadline_s: float = 10.0
    quote_ttl_s: float = 900.0
    webhook: WebhookCredential | None = None
    rule: ShipRule = ShipRule()
    timezone: str | None = None  # IANA name for "today" (default ship date); None: the machine's
    customs: CustomsRules = CustomsRules()


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("./var")
    log_level: str = "INFO"
    max_body_bytes: int = 1024 * 1024
    carriers_ttl_s: float = 6 * 3600.0
    quote_max_stale_s: float = 24 * 3600.0
    quote_cache: str = "memory"
    quote_cache_max_entries: int = 100_000
    quote_cache_max_bytes: int = 64 << 20
    quote_store_max_bytes: int = 64 << 20
    label_settle_s: float = 60.0
    # work claimed by a replica (a purchase, a write-back job, an automation event, an account's
    # poller) is adopted by another this long after the replica stopped renewing its lease
    lease_ttl_s: float = 30.0
    writeback_retry_s: float = 5.0
    writeback_attention_after: int = 50  # failed write-back tries before the label asks a person
    cin7_min_interval_s: float = 1.0
    cin7_throttle_pause_s: float = 20.0
    cin7_window_s: float = 60.0
    customs_product_ttl_s: float = 60.0  # Cin7 Core product records kept for customs
    # connections to ShipStation at once: a cold quote calls every carrier at once, so the pool
    # must hold concurrent quotes x carriers or legs queue for a connection (benchmarks/cold_*)
    shipstation_connections: int = 512
    automation_retry_s: float = 30.0
    retention_days: float = 90.0  # finished events, outbox rows and label PDFs are kept this long
    # after SIGTERM, requests in flight and purchases waiting for ShipStation's answer get this
    # long, counted from the signal (one deadline); the orchestrator's must be longer
    stop_grace_s: float = 30.0
    # the ledger: None is SQLite at <data_dir>/ledger.sqlite3; else sqlite:///path or postgresql://
    database_url: str | None = None
    # None: cache, limiters and stores in this process; redis://...: shared by every replica
    redis_url: str | None = None
    # every Redis key of this deployment starts with it: deployments sharing a Redis differ here
    redis_prefix: str = DEFAULT_REDIS_PREFIX
    # processes ``ratesvc serve`` runs on one port (SO_REUSEPORT); above 1 needs both backends
    workers: int = 1
    # processes sharing each upstream budget through Redis (every replica's workers); while
    # Redis cannot be reached, each takes this share of a window. Unset: this replica's
    # workers, at least 2 (``replicas_given`` False; ``serve --workers N`` raises it to N)
    replicas: int = 2
    replicas_given: bool = False
    accounts: dict[str, Account] = {}

    @property
    def ledger_url(self) -> str:
        """Where the ledger lives (``sqlite:///...`` or ``postgresql://...``)."""
        return self.database_url or f"sqlite:///{self.data_dir / 'ledger.sqlite3'}"

    def account_for_token(self, token: str) -> Account | None:
        """The account a bearer token belongs to (compared by SHA-256 digest)."""
        digest = hashlib.sha256(token.encode()).digest()
        for account in self.accounts.values():
            for candidate in account.api_tokens:
                if candidate.digest() == digest:
                    return account
        return None


def is_postgresql(url: str | None) -> bool:
    """Whether a ``RATESVC_DATABASE_URL`` names PostgreSQL (``postgresql://`` or ``postgres://``)."""
    return url is not None and url.partition("://")[0].lower() in ("postgresql", "postgres")


def workers_problem(settings: Settings, workers: int, where: str = "RATESVC_WORKERS") -> str | None:
    """One line when ``workers`` processes cannot share this configuration's state, else None.

    Several workers (or replicas) act as one service only when the ledger is in PostgreSQL and
    the limiters, quote cache and stores are in Redis; with SQLite and in-process state each
    would spend the full ShipStation budget and resume the others' purchases.
    """
    if workers <= 1:
        return None
    database = "PostgreSQL" if is_postgresql(settings.database_url) else "SQLite"
    redis = "set" if settings.redis_url else "unset"
    if database == "PostgreSQL" and redis == "set":
        return None
    return (
        f"{where}: {workers} workers need shared backends: set both RATESVC_DATABASE_URL="
        f"postgresql://... (now {database}) and RATESVC_REDIS_URL=redis://... (now {redis})"
    )


def replicas_problem(
    settings: Settings, workers: int, where: str = "RATESVC_WORKERS"
) -> str | None:
    """One line when the configured ``replicas`` count fewer processes than this replica's own
    ``workers`` (each would take too big a share of a window while Redis is unreachable)."""
    if not settings.replicas_given or settings.replicas >= workers:
        return None
    return (
        f"RATESVC_REPLICAS: {settings.replicas} is fewer than the {workers} workers of {where}; "
        "it counts every process sharing the upstream budgets (each takes 1/RATESVC_REPLICAS "
        f"of a window while Redis is unreachable): set at least {workers}, or leave it unset"
    )


def with_workers(settings: Settings, workers: int) -> Settings:
    """``settings`` for ``workers`` processes: ``replicas``, when not configured, at least
    ``workers``."""
    if settings.replicas_given or settings.replicas >= workers:
        return settings
    return msgspec.structs.replace(settings, replicas=workers)


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///`` URL, as SQLAlchemy reads them: ``sqlite:///var/l.db`` is
    relative to the working directory, ``sqlite:////srv/l.db`` absolute."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not rest.startswith("/") or len(rest) < 2:
        raise ValueError("not a sqlite:/// URL")
    return Path(rest[1:])


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Redis key prefixes: no spaces, braces (a Redis Cluster hash tag) or glob characters (SCAN MATCH)
_REDIS_PREFIX = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
_SIZE = re.compile(r"([0-9]{1,15}) ?([KMG]iB|B|)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


def _show_size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


class _Reader:
    """Collects problems while reading raw values, so all of them are reported at once."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def text(self, where: str, raw: object, *, required: bool = False) -> str | None:
        if raw is None or raw == "":
            if required:
                self.problems.append(f"{where}: is required but not set")
            return None
        if not isinstance(raw, str):
            self.problems.append(f"{where}: must be a string")
            return None
        if raw.startswith("env:"):
            name = raw[4:]
            value = self.env.get(name)
            if not value:
                self.problems.append(f"{where}: environment variable {name} is not set")
                return None
            return value
        return raw

    def choice(self, where: str, raw: object, choices: tuple[str, ...]) -> str:
        value = str(raw).strip().lower() if raw not in (None, "") else choices[0]
        if value not in choices:
            self.problems.append(f"{where}: must be one of {', '.join(choices)}")
            return choices[0]
        return value

    def secret(self, where: str, raw: object) -> Secret:
        return Secret(self.text(where, raw, required=True) or "")

    def number(
        self, where: str, raw: object, default: float, *, minimum: float, maximum: float
    ) -> float:
        if raw is None or raw == "":
            return default
        try:
            value = float(raw) if isinstance(raw, str | int | float) else float("nan")
        except (ValueError, OverflowError):
            value = float("nan")
        if not minimum <= value <= maximum:
            self.problems.append(f"{where}: must be a number from {minimum:g} to {maximum:g}")
            return default
        return value

    def integer(self, where: str, raw: object, default: int, *, minimum: int, maximum: int) -> int:
        value = self.number(where, raw, default, minimum=minimum, maximum=maximum)
        if value != int(value):
            self.problems.append(f"{where}: must be a whole number")
        return int(value)

    def size(self, where: str, raw: object, default: int, *, minimum: int, maximum: int) -> int:
        """Bytes: a whole number, or one with a unit (``64MiB``, ``512 KiB``, ``1GiB``)."""
        if raw is None or raw == "":
            return default
        value = None
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and (match := _SIZE.fullmatch(raw.strip())):
            value = int(match[1]) * _SIZE_UNITS[match[2].lower()]
        if value is None or not minimum <= value <= maximum:
            self.problems.append(
                f"{where}: must be a size from {_show_size(minimum)} to {_show_size(maximum)}, "
                f"in bytes or with a unit (e.g. {_show_size(default)} or {default})"
            )
            return default
        return value

    def decimal(self, where: str, raw: object) -> Decimal:
        if raw is None or raw == "":
            return Decimal(0)
        try:
            value = Decimal(str(raw))
        except InvalidOperation:
            value = Decimal("NaN")
        if not value.is_finite() or not Decimal(-1000) <= value <= Decimal(1000):
            self.problems.append(f"{where}: must be a decimal number from -1000 to 1000")
            return Decimal(0)
        return value

    def address(self, where: str, raw: object) -> Address | None:
        if raw is None or raw == "":
            return None
        try:
            data = orjson.loads(raw) if isinstance(raw, str) else raw
            return msgspec.convert(data, Address)
        except (orjson.JSONDecodeError, msgspec.ValidationError) as exc:
            self.problems.append(f"{where}: not a valid address ({exc})")
            return None

    def timezone(self, where: str, raw: object) -> str | None:
        """An IANA time zone name (``America/Chicago``), checked against the zone database."""
        name = self.text(where, raw)
        if name is None:
            return None
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory
            self.problems.append(
                f"{where}: {name!r} is not an IANA time zone (e.g. America/Chicago)"
            )
            return None
        return name

    def flag(self, where: str, raw: object) -> bool:
        if raw is None or raw == "":
            return False
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text not in ("0", "false", "no", "off"):
            self.problems.append(f"{where}: must be true or false")
        return False

    def packaging(self, where: str, raw: object) -> Packaging:
        if raw is None:
            return Packaging()
        try:
            return msgspec.convert(raw, Packaging)
        except msgspec.ValidationError as exc:
            self.problems.append(f"{where}: {exc}")
            return Packaging()

    def strings(self, where: str, raw: object) -> tuple[str, ...]:
        """A list of strings (TOML) or a comma-separated string (environment)."""
        if raw is None or raw == "":
            return ()
        if isinstance(raw, str):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if isinstance(raw, list) and all(isinstance(item, str) and item.strip() for item in raw):
            return tuple(item.strip() for item in raw)
        self.problems.append(f"{where}: must be a list of non-empty strings")
        return ()

    def carrier_map(self, where: str, raw: object) -> dict[str, tuple[str, str]]:
        """``{"UPS Ground": "ups/ups_ground"}`` (a TOML table, or JSON in the environment)."""
        if raw is None or raw == "":
            return {}
        if isinstance(raw, str):
            try:
                raw = orjson.loads(raw)
            except orjson.JSONDecodeError:
                self.problems.append(f"{where}: must be a JSON object of text → carrier/service")
                return {}
        if not isinstance(raw, Mapping):
            self.problems.append(f"{where}: must be a table of sale Carrier text → carrier/service")
            return {}
        mapped: dict[str, tuple[str, str]] = {}
        for text, target in raw.items():
            parts = target.split("/") if isinstance(target, str) else []
            if len(parts) != 2 or not all(part.strip() for part in parts):
                self.problems.append(
                    f"{where}.{text}: must be written carrier_code/service_code "
                    "(e.g. ups/ups_ground)"
                )
                continue
            mapped[" ".join(str(text).split()).lower()] = (parts[0].strip(), parts[1].strip())
        return mapped

    def max_cost(self, where: str, raw: object) -> Decimal | None:
        if raw is None or raw == "":
            return None
        try:
            value = Decimal(str(raw))
        except InvalidOperation:
            value = Decimal("NaN")
        if not value.is_finite() or not Decimal(0) < value <= Decimal(100_000):
            self.problems.append(f"{where}: must be an amount above 0 and at most 100000")
            return None
        return value

    def rule(self, values: Mapping[str, object], names: Mapping[str, str]) -> ShipRule:
        autoship = self.choice(names["autoship"], values.get("autoship"), AUTOSHIP_RULES)
        fallback = self.choice(names["fallback"], values.get("fallback"), ("cheapest", "attention"))
        carrier_map = self.carrier_map(names["carrier_map"], values.get("carrier_map"))
        if autoship == "sale_carrier" and not carrier_map:
            self.problems.append(f"{names['carrier_map']}: the sale_carrier rule needs a mapping")
        return ShipRule(
            autoship=autoship,  # type: ignore[arg-type]  # checked by choice()
            services=self.strings(names["services"], values.get("services")),
            carrier_map=carrier_map,
            fallback=fallback,  # type: ignore[arg-type]
            max_cost=self.max_cost(names["max_cost"], values.get("max_cost")),
            test_labels=self.flag(names["test_labels"], values.get("test_labels")),
            allow_default_weights=self.flag(
                names["allow_default_weights"], values.get("allow_default_weights")
            ),
            poll_interval_s=self.number(
                names["poll_interval_s"], values.get("poll_interval_s"), 120.0,
                minimum=0, maximum=86400,
            ),
        )  # fmt: skip

    def webhook(self, values: Mapping[str, object], names: Mapping[str, str]) -> WebhookCredential:
        kind = self.choice(names["type"], values.get("type"), ("bearer", "basic", "header"))
        if kind == "bearer":
            secret = self.text(names["token"], values.get("token"), required=True)
            _check_token(self, names["token"], secret)
            return WebhookCredential(kind="bearer", secret=Secret(secret or ""))
        if kind == "basic":
            username = self.text(names["username"], values.get("username"), required=True)
            password = self.text(names["password"], values.get("password"), required=True)
            _check_token(self, names["password"], password)
            return WebhookCredential(kind="basic", secret=Secret(password or ""), username=username)
        header = self.text(names["header"], values.get("header"), required=True)
        value = self.text(names["value"], values.get("value"), required=True)
        _check_token(self, names["value"], value)
        if header is not None and (not header.isascii() or not header.replace("-", "").isalnum()):
            self.problems.append(f"{names['header']}: must be a header name such as X-Webhook-Key")
        return WebhookCredential(kind="header", secret=Secret(value or ""), header=header)

    def customs(self, values: Mapping[str, object], names: Mapping[str, str]) -> CustomsRules:
        contents = self.choice(names["contents"], values.get("contents"), CONTENTS)
        non_delivery = self.choice(names["non_delivery"], values.get("non_delivery"), NON_DELIVERY)
        origin = self.text(names["default_origin"], values.get("default_origin"))
        if origin is not None:
            origin = origin.strip().upper()
            if origin not in ISO_3166_ALPHA2:
                self.problems.append(
                    f"{names['default_origin']}: must be an ISO 3166-1 alpha-2 country code "
                    "such as CN"
                )
                origin = None
        require = values.get("require_hs_code")
        return CustomsRules(
            contents=contents,  # type: ignore[arg-type]  # checked by choice()
            non_delivery=non_delivery,  # type: ignore[arg-type]
            default_origin=origin,
            require_hs_code=require in (None, "") or self.flag(names["require_hs_code"], require),
        )

    def url(self, where: str, raw: object, default: str) -> str:
        value = self.text(where, raw) or default
        if not value.startswith(("http://", "https://")):
            self.problems.append(f"{where}: must be an http:// or https:// URL")
        return value.rstrip("/")

    def markup(self, where: str, raw: object) -> Markup:
        if raw is None:
            return Markup()
        if not isinstance(raw, Mapping):
            self.problems.append(f"{where}: must be a table")
            return Markup()
        per_carrier = raw.get("per_carrier") or {}
        if not isinstance(per_carrier, Mapping):
            self.problems.append(f"{where}.per_carrier: must be a table of carrier codes")
            per_carrier = {}
        account = self.markup_fields(where, raw, also={"per_carrier"})
        return Markup(
            default=MarkupRule(
                percent=account.percent or Decimal(0), flat=account.flat or Decimal(0)
            ),
            per_carrier={
                str(code): self.markup_fields(f"{where}.per_carrier.{code}", rule)
                for code, rule in per_carrier.items()
            },
        )

    def markup_fields(
        self, where: str, raw: object, *, also: frozenset[str] | set[str] = frozenset()
    ) -> MarkupOverride:
        """The fields a markup table sets; one left out (or empty) stays ``None``."""
        if not isinstance(raw, Mapping):
            self.problems.append(f"{where}: must be a table with percent and/or flat")
            return MarkupOverride()
        unknown = set(raw) - {"percent", "flat", *also}
        if unknown:
            self.problems.append(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        percent, flat = (
            None if raw.get(key) in (None, "") else self.decimal(f"{where}.{key}", raw.get(key))
            for key in ("percent", "flat")
        )
        return MarkupOverride(percent=percent, flat=flat)


def load_settings(env: Mapping[str, str]) -> Settings:
    """Build Settings from an environment mapping (``os.environ`` in production, a dict in tests).

    Raises :class:`ConfigError` listing every problem found.
    """
    reader = _Reader(env)
    file_service: Mapping[str, Any] = {}
    file_accounts: Mapping[str, Any] | None = None
    config_path = env.get("RATESVC_CONFIG")
    if config_path:
        try:
            document = tomllib.loads(Path(config_path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(
                [f"RATESVC_CONFIG: cannot read {config_path}: {exc.strerror}"]
            ) from exc
        except (tomllib.TOMLDecodeError, ValueError) as exc:  # ValueError: a 4300+ digit int
            raise ConfigError([f"RATESVC_CONFIG: {config_path} is not valid TOML: {exc}"]) from exc
        file_service = document.get("service", {})
        file_accounts = document.get("accounts")
        if not isinstance(file_accounts, Mapping) or not file_accounts:
            reader.problems.append(f"{config_path}: needs at least one [accounts.<name>] table")
            file_accounts = {}

    def service_value(env_name: str, key: str) -> object:
        return env.get(env_name) or file_service.get(key)

    def number(name: str, key: str, default: float, lowest: float, highest: float) -> float:
        return reader.number(
            name, service_value(name, key), default, minimum=lowest, maximum=highest
        )

    def whole(name: str, key: str, default: int, lowest: int, highest: int) -> int:
        return reader.integer(
            name, service_value(name, key), default, minimum=lowest, maximum=highest
        )

    def size(name: str, key: str) -> int:
        """A memory budget: at least 1 MiB (a few hundred answers), at most 64 GiB."""
        return reader.size(name, service_value(name, key), 64 << 20, minimum=1 << 20,
                           maximum=64 << 30)  # fmt: skip

    week = 7 * 86400
    deadline = number("RATESVC_REQUEST_DEADLINE_S", "request_deadline_s", 10.0, 0.1, 300)
    quote_ttl = number("RATESVC_QUOTE_TTL_S", "quote_ttl_s", 900.0, 1, week)
    log_level = str(service_value("RATESVC_LOG_LEVEL", "log_level") or "INFO").upper()
    if log_level not in _LOG_LEVELS:
        reader.problems.append(f"RATESVC_LOG_LEVEL: must be one of {', '.join(_LOG_LEVELS)}")
    if file_accounts is None:
        accounts = {DEFAULT_ACCOUNT: _env_account(reader, env, deadline, quote_ttl)}
    else:
        accounts = {
            str(name): _file_account(reader, str(name), raw, deadline, quote_ttl)
            for name, raw in file_accounts.items()
        }
    _check_tokens_unique(reader, accounts)
    workers = whole("RATESVC_WORKERS", "workers", 1, 1, MAX_WORKERS)
    settings = Settings(
        host=str(service_value("RATESVC_HOST", "host") or "127.0.0.1"),
        port=whole("RATESVC_PORT", "port", 8080, 0, 65535),
        data_dir=Path(str(service_value("RATESVC_DATA_DIR", "data_dir") or "./var")),
        log_level=log_level,
        max_body_bytes=whole("RATESVC_MAX_BODY_BYTES", "max_body_bytes", 1 << 20, 1024, 64 << 20),
        carriers_ttl_s=number("RATESVC_CARRIERS_TTL_S", "carriers_ttl_s", 6 * 3600.0, 1, week),
        quote_max_stale_s=number(
            "RATESVC_QUOTE_MAX_STALE_S", "quote_max_stale_s", 86400.0, 0, week
        ),
        quote_cache=reader.choice(
            "RATESVC_QUOTE_CACHE", service_value("RATESVC_QUOTE_CACHE", "quote_cache"), ("memory",)
        ),
        quote_cache_max_entries=whole(
            "RATESVC_QUOTE_CACHE_MAX_ENTRIES", "quote_cache_max_entries", 100_000, 1, 10_000_000
        ),
        quote_cache_max_bytes=size("RATESVC_QUOTE_CACHE_MAX_BYTES", "quote_cache_max_bytes"),
        quote_store_max_bytes=size("RATESVC_QUOTE_STORE_MAX_BYTES", "quote_store_max_bytes"),
        label_settle_s=number("RATESVC_LABEL_SETTLE_S", "label_settle_s", 60.0, 0, 3600),
        lease_ttl_s=number("RATESVC_LEASE_TTL_S", "lease_ttl_s", 30.0, 0.3, 600),
        writeback_retry_s=number("RATESVC_WRITEBACK_RETRY_S", "writeback_retry_s", 5.0, 0.01, 3600),
        writeback_attention_after=whole(
            "RATESVC_WRITEBACK_ATTENTION_AFTER", "writeback_attention_after", 50, 1, 1000
        ),
        cin7_min_interval_s=number(
            "RATESVC_CIN7_MIN_INTERVAL_S", "cin7_min_interval_s", 1.0, 0, 60
        ),
        cin7_throttle_pause_s=number(
            "RATESVC_CIN7_THROTTLE_PAUSE_S", "cin7_throttle_pause_s", 20.0, 0.01, 600
        ),
        cin7_window_s=number("RATESVC_CIN7_WINDOW_S", "cin7_window_s", 60.0, 0.1, 3600),
        shipstation_connections=whole(
            "RATESVC_SHIPSTATION_CONNECTIONS", "shipstation_connections", 512, 1, 100_000
        ),
        customs_product_ttl_s=number(
            "RATESVC_CUSTOMS_PRODUCT_TTL_S", "customs_product_ttl_s", 60.0, 0, 3600
        ),
        automation_retry_s=number(
            "RATESVC_AUTOMATION_RETRY_S", "automation_retry_s", 30.0, 0.01, 3600
        ),
        retention_days=number("RATESVC_RETENTION_DAYS", "retention_days", 90.0, 1, 36500),
        stop_grace_s=number("RATESVC_STOP_GRACE_S", "stop_grace_s", 30.0, 0, 600),
        database_url=_backend_url(
            reader,
            "RATESVC_DATABASE_URL",
            service_value("RATESVC_DATABASE_URL", "database_url"),
            ("sqlite", "postgresql", "postgres"),
        ),
        redis_url=_backend_url(
            reader,
            "RATESVC_REDIS_URL",
            service_value("RATESVC_REDIS_URL", "redis_url"),
            ("redis", "rediss", "unix"),
        ),
        redis_prefix=_redis_prefix(reader, service_value("RATESVC_REDIS_PREFIX", "redis_prefix")),
        workers=workers,
        replicas=whole("RATESVC_REPLICAS", "replicas", max(2, workers), 1, 1024),
        replicas_given=service_value("RATESVC_REPLICAS", "replicas") not in (None, ""),
        accounts=accounts,
    )
    # RATESVC_WORKERS is checked against the backends and RATESVC_REPLICAS where processes are
    # forked, with the count in effect (``serve --workers`` overrides it): __main__.main, by
    # workers_problem and replicas_problem
    if reader.problems:
        raise ConfigError(reader.problems)
    return settings


def _redis_prefix(reader: _Reader, raw: object) -> str:
    text = reader.text("RATESVC_REDIS_PREFIX", raw)
    if text is None:
        return DEFAULT_REDIS_PREFIX
    if not _REDIS_PREFIX.fullmatch(text):
        reader.problems.append(
            "RATESVC_REDIS_PREFIX: must be 1 to 64 letters, digits or . _ : - (e.g. ratesvc:prod:)"
        )
        return DEFAULT_REDIS_PREFIX
    return text


def _backend_url(reader: _Reader, where: str, raw: object, schemes: tuple[str, ...]) -> str | None:
    """A backend's URL (unset: the embedded default); its scheme must be one of ``schemes``, and
    it must read as its client will read it. Problems never repeat the URL, which may carry a
    password."""
    text = reader.text(where, raw)
    if text is None:
        return None
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in schemes or not rest:
        reader.problems.append(
            f"{where}: must be a URL starting with "
            + " or ".join(f"{scheme}://" for scheme in schemes)
        )
        return None
    if scheme == "sqlite":
        problem = _sqlite_url_problem(where, rest)
    else:
        problem = _server_url_problem(where, scheme, rest)
    if problem is not None:
        reader.problems.append(problem)
        return None
    return text


def _sqlite_url_problem(where: str, rest: str) -> str | None:
    """A SQLite URL must name a file: the ledger is the record that makes purchases happen once,
    and an in-memory database (``:memory:``) forgets every label and Idempotency-Key at each
    restart, so a client's retry after a deploy would buy the label again."""
    if not rest.startswith("/") or len(rest) < 2:
        return (
            f"{where}: a SQLite URL names a file: sqlite:///relative/ledger.db or "
            "sqlite:////absolute/ledger.db"
        )
    name = rest[1:]
    if name == ":memory:" or name.lower().startswith("file:"):
        return (
            f"{where}: the ledger must be a file that outlives the process (an in-memory or URI "
            "database forgets every label and Idempotency-Key at each restart): name a file, "
            "e.g. sqlite:////var/lib/ratesvc/ledger.db"
        )
    return None


_ENCODE = "percent-encode / # ? @ % [ ] in the user and password (/ is %2F, @ is %40)"


def _server_url_problem(where: str, scheme: str, rest: str) -> str | None:
    """Why a PostgreSQL or Redis URL would not read as meant, else None. A generated password
    often holds ``/`` (base64): pasted unencoded, the URL's parser reads the user and part of
    the password as host and port, and that part would reach the logs in the client's error.
    Several PostgreSQL hosts (``h1:5432,h2:5432``) and no host (the local socket, or
    ``?host=``) are PostgreSQL's to accept; Redis needs one host, or a socket path (unix://)."""
    cut = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    netloc, after = rest[:cut], rest[cut:]
    if "@" in after:
        return f"{where}: its user or password holds / # ? or @ as they are: {_ENCODE}"
    hosts = netloc.rpartition("@")[2]
    if scheme == "unix":
        if hosts or len(after) < 2 or not after.startswith("/"):
            return f"{where}: a unix:// URL names the socket: unix:///run/redis/redis.sock"
        return None
    if not hosts and scheme.startswith("redis"):
        return f"{where}: names no host (redis://host:6379/0); {_ENCODE}"
    for item in hosts.split(",") if hosts else ():
        problem = _host_problem(item)
        if problem is not None:
            return f"{where}: {problem}; {_ENCODE}"
    if "," in hosts and scheme.startswith("redis"):
        return f"{where}: names several hosts; Redis takes one"
    try:  # what Python's parser (which the clients use) refuses, e.g. a lone [ in a password
        parts = urlsplit(f"{scheme}://{rest}")
        if scheme.startswith("redis"):
            parts.port  # noqa: B018 - raises ValueError when it is no number
    except ValueError:
        return f"{where}: cannot be read as a URL; {_ENCODE}"
    return None


def _host_problem(item: str) -> str | None:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``: why not, else None."""
    if item.startswith("["):
        host, closed, tail = item[1:].partition("]")
        if not closed:
            return "an IPv6 address in [ ] is not closed"
        if tail and not tail.startswith(":"):
            return "something follows an IPv6 address in [ ] other than :port"
        port = tail[1:]
    else:
        host, _, port = item.partition(":")
    if not host:
        return "a host is missing"
    if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return "a port is not a number from 1 to 65535"
    return None


_SHIPSTATION_ENV = {
    "url": "RATESVC_SHIPSTATION_URL",
    "api_key": "RATESVC_SHIPSTATION_API_KEY",
    "api_secret": "RATESVC_SHIPSTATION_API_SECRET",
    "rate_limit": "RATESVC_SHIPSTATION_RATE_LIMIT",
    "window_s": "RATESVC_SHIPSTATION_WINDOW_S",
}
_CIN7_ENV = {
    "url": "RATESVC_CIN7_URL",
    "account_id": "RATESVC_CIN7_ACCOUNT_ID",
    "application_key": "RATESVC_CIN7_APPLICATION_KEY",
}
_RULE_ENV = {
    "autoship": "RATESVC_AUTOSHIP",
    "services": "RATESVC_AUTOSHIP_SERVICES",
    "carrier_map": "RATESVC_AUTOSHIP_CARRIER_MAP",
    "fallback": "RATESVC_AUTOSHIP_FALLBACK",
    "max_cost": "RATESVC_AUTOSHIP_MAX_COST",
    "test_labels": "RATESVC_AUTOSHIP_TEST_LABELS",
    "allow_default_weights": "RATESVC_AUTOSHIP_ALLOW_DEFAULT_WEIGHTS",
    "poll_interval_s": "RATESVC_POLL_INTERVAL_S",
}
_CUSTOMS_ENV = {
    "contents": "RATESVC_CUSTOMS_CONTENTS",
    "non_delivery": "RATESVC_CUSTOMS_NON_DELIVERY",
    "default_origin": "RATESVC_CUSTOMS_DEFAULT_ORIGIN",
    "require_hs_code": "RATESVC_CUSTOMS_REQUIRE_HS_CODE",
}
_WEBHOOK_KEYS = ("type", "token", "username", "password", "header", "value")
_ACCOUNT_KEYS = frozenset(
    {"api_tokens", "shipstation", "cin7", "ship_from", "carriers", "markup", "packaging",
     "invoice_shipping", "request_deadline_s", "quote_ttl_s", "webhook", "automation",
     "timezone", "customs"}
)  # fmt: skip


def _check_rule(reader: _Reader, where: str, rule: ShipRule, cin7: Cin7Config | None) -> None:
    if rule.on and cin7 is None:
        reader.problems.append(
            f"{where}: autoship {rule.autoship!r} needs the account's Cin7 Core credentials"
        )


def _shipstation(
    reader: _Reader, values: Mapping[str, object], names: Mapping[str, str]
) -> ShipStationConfig:
    """One ShipStation table; ``names`` says how each key is called in problem lines."""
    return ShipStationConfig(
        url=reader.url(names["url"], values.get("url"), DEFAULT_SHIPSTATION_URL),
        api_key=reader.secret(names["api_key"], values.get("api_key")),
        api_secret=reader.secret(names["api_secret"], values.get("api_secret")),
        rate_limit=reader.integer(
            names["rate_limit"], values.get("rate_limit"), 40, minimum=1, maximum=10_000
        ),
        window_s=reader.number(
            names["window_s"], values.get("window_s"), 60.0, minimum=0.05, maximum=3600
        ),
    )


def _cin7(reader: _Reader, values: Mapping[str, object], names: Mapping[str, str]) -> Cin7Config:
    return Cin7Config(
        url=reader.url(names["url"], values.get("url"), DEFAULT_CIN7_URL),
        account_id=reader.secret(names["account_id"], values.get("account_id")),
        application_key=reader.secret(names["application_key"], values.get("application_key")),
    )


def _env_account(
    reader: _Reader, env: Mapping[str, str], deadline: float, quote_ttl: float
) -> Account:
    token = reader.text("RATESVC_API_TOKEN", env.get("RATESVC_API_TOKEN"), required=True)
    _check_token(reader, "RATESVC_API_TOKEN", token)
    cin7_values = {key: env.get(name) for key, name in _CIN7_ENV.items()}
    has_cin7 = cin7_values["account_id"] or cin7_values["application_key"]
    cin7 = _cin7(reader, cin7_values, _CIN7_ENV) if has_cin7 else None
    rule = reader.rule({k: env.get(n) for k, n in _RULE_ENV.items()}, _RULE_ENV)
    _check_rule(reader, "RATESVC_AUTOSHIP", rule, cin7)
    webhook = None
    if env.get("RATESVC_CIN7_WEBHOOK_TOKEN"):
        webhook = reader.webhook(
            {"type": "bearer", "token": env["RATESVC_CIN7_WEBHOOK_TOKEN"]},
            {key: "RATESVC_CIN7_WEBHOOK_TOKEN" for key in _WEBHOOK_KEYS},
        )
    return Account(
        name=DEFAULT_ACCOUNT,
        api_tokens=(Secret(token),) if token else (),
        shipstation=_shipstation(
            reader, {key: env.get(name) for key, name in _SHIPSTATION_ENV.items()}, _SHIPSTATION_ENV
        ),
        cin7=cin7,
        ship_from=reader.address("RATESVC_SHIP_FROM", env.get("RATESVC_SHIP_FROM")),
        invoice_shipping=reader.flag(
            "RATESVC_INVOICE_SHIPPING", env.get("RATESVC_INVOICE_SHIPPING")
        ),
        markup=Markup(
            default=MarkupRule(
                percent=reader.decimal("RATESVC_MARKUP_PERCENT", env.get("RATESVC_MARKUP_PERCENT")),
                flat=reader.decimal("RATESVC_MARKUP_FLAT", env.get("RATESVC_MARKUP_FLAT")),
            )
        ),
        request_deadline_s=deadline,
        quote_ttl_s=quote_ttl,
        webhook=webhook,
        rule=rule,
        timezone=reader.timezone("RATESVC_TIMEZONE", env.get("RATESVC_TIMEZONE")),
        customs=reader.customs({k: env.get(n) for k, n in _CUSTOMS_ENV.items()}, _CUSTOMS_ENV),
    )


def _file_table(
    reader: _Reader, where: str, raw: object, keys: Mapping[str, str]
) -> tuple[Mapping[str, object], dict[str, str]]:
    """A sub-table of an account, with its keys checked and named for problem lines."""
    if not isinstance(raw, Mapping):
        reader.problems.append(f"{where}: must be a table with {', '.join(keys)}")
        raw = {}
    unknown = set(raw) - set(keys)
    if unknown:
        reader.problems.append(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    return raw, {key: f"{where}.{key}" for key in keys}


def _file_account(
    reader: _Reader, name: str, raw: object, deadline: float, quote_ttl: float
) -> Account:
    where = f"accounts.{name}"
    if not isinstance(raw, Mapping):
        reader.problems.append(f"{where}: must be a table")
        raw = {}
    unknown = set(raw) - _ACCOUNT_KEYS
    if unknown:
        reader.problems.append(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    tokens_raw = raw.get("api_tokens")
    if not isinstance(tokens_raw, list) or not tokens_raw:
        reader.problems.append(f"{where}.api_tokens: needs a list of at least one token")
        tokens_raw = []
    tokens: list[Secret] = []
    for i, token_raw in enumerate(tokens_raw):
        token = reader.text(f"{where}.api_tokens[{i}]", token_raw, required=True)
        _check_token(reader, f"{where}.api_tokens[{i}]", token)
        if token:
            tokens.append(Secret(token))
    cin7: Cin7Config | None = None
    if raw.get("cin7") is not None:
        cin7 = _cin7(reader, *_file_table(reader, f"{where}.cin7", raw["cin7"], _CIN7_ENV))
    carriers_raw = raw.get("carriers")
    carriers: tuple[str, ...] | None = None
    if carriers_raw is not None:
        if not isinstance(carriers_raw, list) or not all(isinstance(c, str) for c in carriers_raw):
            reader.problems.append(f"{where}.carriers: must be a list of carrier codes")
        else:
            carriers = tuple(carriers_raw)
    rule = ShipRule()
    if raw.get("automation") is not None:
        rule = reader.rule(
            *_file_table(reader, f"{where}.automation", raw["automation"], _RULE_ENV),
        )
        _check_rule(reader, f"{where}.automation.autoship", rule, cin7)
    webhook = None
    if raw.get("webhook") is not None:
        webhook = reader.webhook(
            *_file_table(reader, f"{where}.webhook", raw["webhook"], {k: k for k in _WEBHOOK_KEYS}),
        )
    customs = CustomsRules()
    if raw.get("customs") is not None:
        customs = reader.customs(
            *_file_table(reader, f"{where}.customs", raw["customs"], _CUSTOMS_ENV)
        )
    return Account(
        name=name,
        api_tokens=tuple(tokens),
        webhook=webhook,
        rule=rule,
        shipstation=_shipstation(
            reader,
            *_file_table(reader, f"{where}.shipstation", raw.get("shipstation"), _SHIPSTATION_ENV),
        ),
        cin7=cin7,
        ship_from=reader.address(f"{where}.ship_from", raw.get("ship_from")),
        carriers=carriers,
        markup=reader.markup(f"{where}.markup", raw.get("markup")),
        packaging=reader.packaging(f"{where}.packaging", raw.get("packaging")),
        invoice_shipping=reader.flag(f"{where}.invoice_shipping", raw.get("invoice_shipping")),
        request_deadline_s=reader.number(
            f"{where}.request_deadline_s",
            raw.get("request_deadline_s"),
            deadline,
            minimum=0.1,
            maximum=300,
        ),
        quote_ttl_s=reader.number(
            f"{where}.quote_ttl_s", raw.get("quote_ttl_s"), quote_ttl, minimum=1, maximum=7 * 86400
        ),
        timezone=reader.timezone(f"{where}.timezone", raw.get("timezone")),
        customs=customs,
    )


def _check_token(reader: _Reader, where: str, token: str | None) -> None:
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        reader.problems.append(f"{where}: must be at least {MIN_TOKEN_LENGTH} characters long")


def _check_tokens_unique(reader: _Reader, accounts: Mapping[str, Account]) -> None:
    owners: dict[bytes, str] = {}
    for account in accounts.values():
        for token in account.api_tokens:
            other = owners.setdefault(token.digest(), account.name)
            if other != account.name:
                reader.problems.append(
                    f"accounts.{account.name}.api_tokens: a token is also used by account {other};"
                    " a token must belong to exactly one account"
                )
