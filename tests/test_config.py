"""Settings from the environment and from a TOML file; every problem reported, secrets hidden."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from ratesvc.__main__ import main
from ratesvc.config import (
    DEFAULT_SHIPSTATION_URL,
    ConfigError,
    Secret,
    ShipStationConfig,
    load_settings,
    replicas_problem,
    sqlite_path,
    with_workers,
    workers_problem,
)
from ratesvc.customs import CustomsRules
from ratesvc.legs import Parcel, Route, make_leg
from ratesvc.models import Address, PackageIn

MINIMAL = {
    "RATESVC_API_TOKEN": "token-0123456789abcdef",
    "RATESVC_SHIPSTATION_API_KEY": "ss-key-value",
    "RATESVC_SHIPSTATION_API_SECRET": "ss-secret-value",
}


def problems_of(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    return caught.value.problems


def test_the_environment_form_makes_one_default_account_with_documented_defaults() -> None:
    settings = load_settings(MINIMAL)

    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.data_dir == Path("./var")
    assert settings.max_body_bytes == 1024 * 1024
    (account,) = settings.accounts.values()
    assert account.name == "default"
    assert account.shipstation.url == DEFAULT_SHIPSTATION_URL
    assert (account.shipstation.rate_limit, account.shipstation.window_s) == (40, 60.0)
    assert (account.request_deadline_s, account.quote_ttl_s) == (10.0, 900.0)
    assert account.cin7 is None
    assert settings.account_for_token("token-0123456789abcdef") is account
    assert settings.account_for_token("token-0123456789abcdeX") is None


def test_every_variable_is_read() -> None:
    settings = load_settings(
        {
            **MINIMAL,
            "RATESVC_HOST": "0.0.0.0",
            "RATESVC_PORT": "9000",
            "RATESVC_DATA_DIR": "/srv/ratesvc",
            "RATESVC_SHIPSTATION_URL": "http://127.0.0.1:8090/",
            "RATESVC_CIN7_URL": "http://127.0.0.1:8091",
            "RATESVC_CIN7_ACCOUNT_ID": "cin7-account",
            "RATESVC_CIN7_APPLICATION_KEY": "cin7-key",
            "RATESVC_SHIP_FROM": '{"postal_code": "78703", "country": "us", "city": "Austin"}',
            "RATESVC_QUOTE_TTL_S": "300",
            "RATESVC_REQUEST_DEADLINE_S": "8",
            "RATESVC_LOG_LEVEL": "debug",
            "RATESVC_SHIPSTATION_RATE_LIMIT": "100",
            "RATESVC_SHIPSTATION_WINDOW_S": "60",
            "RATESVC_MAX_BODY_BYTES": "2048",
            "RATESVC_CARRIERS_TTL_S": "3600",
            "RATESVC_QUOTE_MAX_STALE_S": "7200",
            "RATESVC_QUOTE_CACHE": "memory",
            "RATESVC_QUOTE_CACHE_MAX_ENTRIES": "5000",
            "RATESVC_MARKUP_PERCENT": "2.5",
            "RATESVC_MARKUP_FLAT": "0.40",
        }
    )

    account = settings.accounts["default"]
    assert (settings.host, settings.port, settings.log_level) == ("0.0.0.0", 9000, "DEBUG")
    assert settings.data_dir == Path("/srv/ratesvc")
    assert account.shipstation.url == "http://127.0.0.1:8090"
    assert account.shipstation.rate_limit == 100
    assert account.cin7 is not None and account.cin7.url == "http://127.0.0.1:8091"
    assert account.cin7.application_key.reveal() == "cin7-key"
    assert account.ship_from is not None and account.ship_from.country == "US"
    assert (account.quote_ttl_s, account.request_deadline_s) == (300.0, 8.0)
    assert (settings.max_body_bytes, settings.carriers_ttl_s) == (2048, 3600.0)
    assert (settings.quote_max_stale_s, settings.quote_cache) == (7200.0, "memory")
    assert settings.quote_cache_max_entries == 5000
    assert account.markup.for_carrier("ups").percent == Decimal("2.5")
    assert account.markup.for_carrier("ups").flat == Decimal("0.40")


def test_all_problems_are_reported_together_one_line_each() -> None:
    problems = problems_of(
        {
            "RATESVC_PORT": "http",
            "RATESVC_QUOTE_TTL_S": "-5",
            "RATESVC_LOG_LEVEL": "LOUD",
            "RATESVC_SHIP_FROM": '{"postal_code": "1", "country": "Atlantis"}',
            "RATESVC_SHIPSTATION_URL": "ftp://example",
            "RATESVC_QUOTE_CACHE": "redis",
            "RATESVC_MARKUP_PERCENT": "lots",
        }
    )

    joined = "\n".join(problems)
    for name in (
        "RATESVC_API_TOKEN", "RATESVC_SHIPSTATION_API_KEY", "RATESVC_SHIPSTATION_API_SECRET",
        "RATESVC_PORT", "RATESVC_QUOTE_TTL_S", "RATESVC_LOG_LEVEL", "RATESVC_SHIP_FROM",
        "RATESVC_SHIPSTATION_URL", "RATESVC_QUOTE_CACHE", "RATESVC_MARKUP_PERCENT",
    ):  # fmt: skip
        assert sum(line.startswith(name + ":") for line in problems) == 1, (name, joined)
    assert all("\n" not in line for line in problems)


def test_a_short_api_token_is_refused() -> None:
    (problem,) = problems_of({**MINIMAL, "RATESVC_API_TOKEN": "short"})

    assert problem.startswith("RATESVC_API_TOKEN: must be at least 16")


def test_secrets_never_show_in_reprs_or_problems() -> None:
    settings = load_settings(MINIMAL)
    problems = problems_of({**MINIMAL, "RATESVC_API_TOKEN": "tiny-secret"})

    text = repr(settings) + str(settings.accounts) + "\n".join(problems)
    for secret in ("token-0123456789abcdef", "ss-key-value", "ss-secret-value", "tiny-secret"):
        assert secret not in text
    assert "********" in text


TOML = """
[service]
port = 9100
request_deadline_s = 9

[accounts.acme]
api_tokens = ["env:ACME_TOKEN", "acme-second-token-0123"]
carriers = ["ups", "fedex"]
request_deadline_s = 5
shipstation = { api_key = "env:ACME_SS_KEY", api_secret = "env:ACME_SS_SECRET", rate_limit = 100 }
cin7 = { account_id = "acme-cin7", application_key = "env:ACME_CIN7_KEY" }
ship_from = { postal_code = "78703", country = "US", city = "Austin", state = "TX" }

[accounts.acme.markup]
percent = "5"
flat = "0.50"
per_carrier = { ups = { percent = "2.5" }, dhl_express_worldwide = { percent = "", flat = "0" } }

[accounts.globex]
api_tokens = ["globex-token-0123456789"]
shipstation = { api_key = "globex-key", api_secret = "globex-secret" }
"""

TOML_ENV = {
    "ACME_TOKEN": "acme-token-0123456789",
    "ACME_SS_KEY": "acme-key",
    "ACME_SS_SECRET": "acme-secret",
    "ACME_CIN7_KEY": "acme-cin7-key",
}


def test_the_toml_form_has_one_table_per_account_with_env_references(tmp_path: Path) -> None:
    path = tmp_path / "ratesvc.toml"
    path.write_text(TOML)

    settings = load_settings({"RATESVC_CONFIG": str(path), "RATESVC_PORT": "9200", **TOML_ENV})

    assert settings.port == 9200  # the environment overrides the file
    acme, globex = settings.accounts["acme"], settings.accounts["globex"]
    assert acme.shipstation.api_key.reveal() == "acme-key"
    assert acme.shipstation.rate_limit == 100
    assert acme.carriers == ("ups", "fedex")
    assert acme.request_deadline_s == 5.0
    assert globex.request_deadline_s == 9.0
    assert acme.cin7 is not None and acme.cin7.application_key.reveal() == "acme-cin7-key"
    assert acme.markup.for_carrier("fedex").percent == Decimal("5")
    assert acme.markup.for_carrier("fedex").flat == Decimal("0.50")
    assert acme.markup.for_carrier("ups").percent == Decimal("2.5")
    assert acme.markup.for_carrier("ups").flat == Decimal("0.50")  # inherited from the account
    dhl = acme.markup.for_carrier("dhl_express_worldwide")
    assert (dhl.percent, dhl.flat) == (Decimal("5"), Decimal("0"))  # "" inherits, "0" is set
    assert settings.account_for_token("acme-token-0123456789") is acme
    assert settings.account_for_token("acme-second-token-0123") is acme
    assert settings.account_for_token("globex-token-0123456789") is globex


def test_toml_problems_name_the_account_and_key(tmp_path: Path) -> None:
    path = tmp_path / "ratesvc.toml"
    path.write_text(
        TOML.replace("globex-token-0123456789", "acme-second-token-0123")
        + '\n[accounts.broken]\napi_tokens = []\nshipstatoin = { api_key = "x" }\n'
        + '\n[accounts.typo]\napi_tokens = ["typo-token-0123456789"]\n'
        + 'shipstation = { api_key = "k", api_sekret = "s" }\n'
    )

    problems = problems_of({"RATESVC_CONFIG": str(path), "ACME_TOKEN": "acme-token-0123456789"})

    assert (
        "accounts.acme.shipstation.api_key: environment variable ACME_SS_KEY is not set" in problems
    )
    assert any(
        p.startswith("accounts.globex.api_tokens: a token is also used by account acme")
        for p in problems
    )
    assert "accounts.broken: unknown keys shipstatoin" in problems
    assert "accounts.broken.api_tokens: needs a list of at least one token" in problems
    assert "accounts.typo.shipstation: unknown keys api_sekret" in problems
    assert "accounts.typo.shipstation.api_secret: is required but not set" in problems


def test_an_unreadable_or_invalid_toml_file_is_one_clear_line(tmp_path: Path) -> None:
    missing = problems_of({"RATESVC_CONFIG": str(tmp_path / "nope.toml")})
    bad = tmp_path / "bad.toml"
    bad.write_text("[accounts\n")
    invalid = problems_of({"RATESVC_CONFIG": str(bad)})

    assert missing[0].startswith("RATESVC_CONFIG: cannot read")
    assert invalid[0].startswith("RATESVC_CONFIG:") and "not valid TOML" in invalid[0]


CIN7 = {"RATESVC_CIN7_ACCOUNT_ID": "cin7-account", "RATESVC_CIN7_APPLICATION_KEY": "cin7-key"}


def test_automation_is_off_by_default_and_configured_from_the_environment() -> None:
    off = load_settings(MINIMAL).accounts["default"]
    on = load_settings({
        **MINIMAL, **CIN7, "RATESVC_AUTOSHIP": "sale_carrier",
        "RATESVC_AUTOSHIP_CARRIER_MAP": '{"UPS  Ground": "ups/ups_ground"}',
        "RATESVC_AUTOSHIP_FALLBACK": "attention", "RATESVC_AUTOSHIP_SERVICES": "ups_ground, x",
        "RATESVC_AUTOSHIP_MAX_COST": "25", "RATESVC_AUTOSHIP_TEST_LABELS": "yes",
        "RATESVC_AUTOSHIP_ALLOW_DEFAULT_WEIGHTS": "true", "RATESVC_POLL_INTERVAL_S": "30",
        "RATESVC_CIN7_WEBHOOK_TOKEN": "hook-token-0123456789", "RATESVC_AUTOMATION_RETRY_S": "5",
    })  # fmt: skip

    assert (off.rule.on, off.webhook) == (False, None)
    rule = on.accounts["default"].rule
    assert rule.autoship == "sale_carrier"
    assert rule.carrier_map == {"ups ground": ("ups", "ups_ground")}
    assert (rule.fallback, rule.services, rule.max_cost) == ("attention", ("ups_ground", "x"), 25)
    assert (rule.test_labels, rule.allow_default_weights, rule.poll_interval_s) == (True, True, 30)
    webhook = on.accounts["default"].webhook
    assert webhook is not None
    assert (webhook.kind, webhook.secret.reveal()) == ("bearer", "hook-token-0123456789")
    assert on.automation_retry_s == 5


def test_automation_problems_are_reported_one_line_each() -> None:
    problems = problems_of({
        **MINIMAL, "RATESVC_AUTOSHIP": "fastest", "RATESVC_AUTOSHIP_MAX_COST": "-3",
        "RATESVC_AUTOSHIP_CARRIER_MAP": '{"UPS": "ups"}', "RATESVC_POLL_INTERVAL_S": "soon",
        "RATESVC_CIN7_WEBHOOK_TOKEN": "short",
    })  # fmt: skip

    assert sorted(p.split(":")[0] for p in problems) == [
        "RATESVC_AUTOSHIP", "RATESVC_AUTOSHIP_CARRIER_MAP.UPS", "RATESVC_AUTOSHIP_MAX_COST",
        "RATESVC_CIN7_WEBHOOK_TOKEN", "RATESVC_POLL_INTERVAL_S",
    ]  # fmt: skip
    assert problems_of({**MINIMAL, "RATESVC_AUTOSHIP": "cheapest"}) == [
        "RATESVC_AUTOSHIP: autoship 'cheapest' needs the account's Cin7 Core credentials"
    ]


def test_the_toml_form_takes_basic_and_custom_header_webhook_credentials(tmp_path: Path) -> None:
    config = tmp_path / "ratesvc.toml"
    common = (
        'shipstation = { api_key = "k-123", api_secret = "s-123" }\n'
        'cin7 = { account_id = "a-1", application_key = "k-1" }\n'
    )
    config.write_text(
        '[accounts.one]\napi_tokens = ["token-one-0123456789"]\n' + common +
        '[accounts.one.webhook]\ntype = "basic"\nusername = "cin7"\npassword = "env:HOOK_PASS"\n'
        '[accounts.one.automation]\nautoship = "cheapest"\nservices = ["ups_ground"]\n'
        'max_cost = "25.00"\n'
        '[accounts.two]\napi_tokens = ["token-two-0123456789"]\n' + common +
        '[accounts.two.webhook]\ntype = "header"\nheader = "X-Hook-Key"\n'
        'value = "hook-value-0123456789"\n'
        '[accounts.two.automation]\nautoship = "sale_carrier"\n'
        'carrier_map = { "UPS Ground" = "ups/ups_ground" }\n'
    )  # fmt: skip

    settings = load_settings({"RATESVC_CONFIG": str(config), "HOOK_PASS": "hook-pass-0123456789"})

    one, two = settings.accounts["one"], settings.accounts["two"]
    assert one.webhook is not None
    assert (one.webhook.kind, one.webhook.username) == ("basic", "cin7")
    assert one.webhook.secret.reveal() == "hook-pass-0123456789"
    assert (one.rule.autoship, one.rule.services, one.rule.max_cost) == (
        "cheapest", ("ups_ground",), Decimal("25.00"),
    )  # fmt: skip
    assert two.webhook is not None
    assert (two.webhook.kind, two.webhook.header) == ("header", "X-Hook-Key")
    assert two.rule.carrier_map == {"ups ground": ("ups", "ups_ground")}


def test_toml_automation_problems_name_the_account_and_key(tmp_path: Path) -> None:
    config = tmp_path / "ratesvc.toml"
    config.write_text(
        '[accounts.one]\napi_tokens = ["token-one-0123456789"]\n'
        'shipstation = { api_key = "k-123", api_secret = "s-123" }\n'
        '[accounts.one.webhook]\ntype = "header"\nheader = "X Bad"\nvalue = "v"\n'
        '[accounts.one.automation]\nautoship = "sale_carrier"\nspeed = 3\n'
    )

    problems = problems_of({"RATESVC_CONFIG": str(config)})

    assert problems == [
        "accounts.one.automation: unknown keys speed",
        "accounts.one.automation.carrier_map: the sale_carrier rule needs a mapping",
        "accounts.one.automation.autoship: autoship 'sale_carrier' needs the account's Cin7 Core "
        "credentials",
        "accounts.one.webhook.value: must be at least 16 characters long",
        "accounts.one.webhook.header: must be a header name such as X-Webhook-Key",
    ]


# --- memory budgets ----------------------------------------------------------------------------


def test_memory_budgets_default_to_64_mib_and_take_units() -> None:
    defaults = load_settings(MINIMAL)
    settings = load_settings(
        {
            **MINIMAL,
            "RATESVC_QUOTE_STORE_MAX_BYTES": "32MiB",
            "RATESVC_QUOTE_CACHE_MAX_BYTES": "134217728",
        }
    )

    assert (defaults.quote_store_max_bytes, defaults.quote_cache_max_bytes) == (64 << 20, 64 << 20)
    assert (settings.quote_store_max_bytes, settings.quote_cache_max_bytes) == (32 << 20, 128 << 20)


def test_memory_budgets_are_read_from_the_service_table(tmp_path: Path) -> None:
    path = tmp_path / "ratesvc.toml"
    budgets = 'quote_store_max_bytes = 16777216\nquote_cache_max_bytes = "1 GiB"\n'
    path.write_text(TOML.replace("[service]\n", "[service]\n" + budgets))
    env = {"RATESVC_CONFIG": str(path), **TOML_ENV}

    from_file = load_settings(env)
    overridden = load_settings({**env, "RATESVC_QUOTE_STORE_MAX_BYTES": "2MiB"})

    assert (from_file.quote_store_max_bytes, from_file.quote_cache_max_bytes) == (16 << 20, 1 << 30)
    assert overridden.quote_store_max_bytes == 2 << 20


@pytest.mark.parametrize(
    "value", ["0", "1KiB", "65GiB", "lots", "-5", "1.5MiB", "64 parsecs", "²", "9" * 4400]
)
def test_an_absurd_memory_budget_is_one_clear_line(value: str) -> None:
    (problem,) = problems_of({**MINIMAL, "RATESVC_QUOTE_STORE_MAX_BYTES": value})

    assert problem == (
        "RATESVC_QUOTE_STORE_MAX_BYTES: must be a size from 1MiB to 64GiB, "
        "in bytes or with a unit (e.g. 64MiB or 67108864)"
    )


# --- customs -----------------------------------------------------------------------------------


def test_customs_defaults_are_merchandise_return_to_sender_and_hs_codes_required() -> None:
    customs = load_settings(MINIMAL).accounts["default"].customs

    assert customs == CustomsRules(
        contents="merchandise", non_delivery="return_to_sender", default_origin=None,
        require_hs_code=True,
    )  # fmt: skip


def test_customs_settings_are_read_from_the_environment() -> None:
    customs = load_settings({
        **MINIMAL, "RATESVC_CUSTOMS_CONTENTS": "Gift", "RATESVC_CUSTOMS_NON_DELIVERY":
        "treat_as_abandoned", "RATESVC_CUSTOMS_DEFAULT_ORIGIN": " us ",
        "RATESVC_CUSTOMS_REQUIRE_HS_CODE": "false",
    }).accounts["default"].customs  # fmt: skip

    assert customs == CustomsRules(
        contents="gift", non_delivery="treat_as_abandoned", default_origin="US",
        require_hs_code=False,
    )  # fmt: skip


def test_customs_problems_are_reported_one_line_each() -> None:
    problems = problems_of({
        **MINIMAL, "RATESVC_CUSTOMS_CONTENTS": "goods", "RATESVC_CUSTOMS_NON_DELIVERY": "burn",
        "RATESVC_CUSTOMS_DEFAULT_ORIGIN": "China", "RATESVC_CUSTOMS_REQUIRE_HS_CODE": "maybe",
    })  # fmt: skip

    assert problems == [
        "RATESVC_CUSTOMS_CONTENTS: must be one of merchandise, documents, gift, returned_goods, "
        "sample",
        "RATESVC_CUSTOMS_NON_DELIVERY: must be one of return_to_sender, treat_as_abandoned",
        "RATESVC_CUSTOMS_DEFAULT_ORIGIN: must be an ISO 3166-1 alpha-2 country code such as CN",
        "RATESVC_CUSTOMS_REQUIRE_HS_CODE: must be true or false",
    ]


def test_the_toml_form_has_a_customs_table_per_account(tmp_path: Path) -> None:
    config = tmp_path / "ratesvc.toml"
    common = 'shipstation = { api_key = "k-123", api_secret = "s-123" }\n'
    config.write_text(
        '[accounts.one]\napi_tokens = ["token-one-0123456789"]\n' + common +
        '[accounts.one.customs]\ncontents = "sample"\ndefault_origin = "DE"\n'
        'require_hs_code = false\n'
        '[accounts.two]\napi_tokens = ["token-two-0123456789"]\n' + common
    )  # fmt: skip

    settings = load_settings({"RATESVC_CONFIG": str(config)})

    assert settings.accounts["one"].customs == CustomsRules(
        contents="sample", default_origin="DE", require_hs_code=False
    )
    assert settings.accounts["two"].customs == CustomsRules()


def test_toml_customs_problems_name_the_account_and_key(tmp_path: Path) -> None:
    config = tmp_path / "ratesvc.toml"
    config.write_text(
        '[accounts.one]\napi_tokens = ["token-one-0123456789"]\n'
        'shipstation = { api_key = "k-123", api_secret = "s-123" }\n'
        '[accounts.one.customs]\ncontents = 3\nnon_delivery = "keep"\ndefault_origin = "CHN"\n'
        'require_hs_code = "sometimes"\nincoterm = "DDP"\n'
    )

    assert problems_of({"RATESVC_CONFIG": str(config)}) == [
        "accounts.one.customs: unknown keys incoterm",
        "accounts.one.customs.contents: must be one of merchandise, documents, gift, "
        "returned_goods, sample",
        "accounts.one.customs.non_delivery: must be one of return_to_sender, treat_as_abandoned",
        "accounts.one.customs.default_origin: must be an ISO 3166-1 alpha-2 country code such as "
        "CN",
        "accounts.one.customs.require_hs_code: must be true or false",
    ]


# --- the write-back ----------------------------------------------------------------------------


def test_a_write_back_asks_a_person_after_50_failed_tries_unless_told_otherwise(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ratesvc.toml"
    path.write_text(TOML.replace("[service]\n", "[service]\nwriteback_attention_after = 7\n"))
    env = {"RATESVC_CONFIG": str(path), **TOML_ENV}

    assert load_settings(MINIMAL).writeback_attention_after == 50
    assert load_settings({**MINIMAL, "RATESVC_WRITEBACK_ATTENTION_AFTER": "1"}
                         ).writeback_attention_after == 1  # fmt: skip
    assert load_settings(env).writeback_attention_after == 7
    assert load_settings({**env, "RATESVC_WRITEBACK_ATTENTION_AFTER": "1000"}
                         ).writeback_attention_after == 1000  # fmt: skip


@pytest.mark.parametrize("value", ["0", "1001", "-1", "2.5", "lots", "²", "9" * 4400])
def test_a_bad_write_back_attention_threshold_is_one_clear_line(value: str) -> None:
    (problem,) = problems_of({**MINIMAL, "RATESVC_WRITEBACK_ATTENTION_AFTER": value})

    assert problem.startswith("RATESVC_WRITEBACK_ATTENTION_AFTER: must be a")


def test_the_shipstation_pool_holds_concurrent_quotes_times_carriers_by_default() -> None:
    assert load_settings(MINIMAL).shipstation_connections == 512
    assert load_settings({**MINIMAL, "RATESVC_SHIPSTATION_CONNECTIONS": "64"}
                         ).shipstation_connections == 64  # fmt: skip


@pytest.mark.parametrize("value", ["0", "-1", "2.5", "many", "100001"])
def test_a_bad_shipstation_pool_size_is_one_clear_line(value: str) -> None:
    (problem,) = problems_of({**MINIMAL, "RATESVC_SHIPSTATION_CONNECTIONS": value})

    assert problem.startswith("RATESVC_SHIPSTATION_CONNECTIONS: must be a")


def test_without_backend_urls_the_ledger_is_sqlite_in_the_data_dir_and_nothing_is_shared(
    tmp_path: Path,
) -> None:
    settings = load_settings({**MINIMAL, "RATESVC_DATA_DIR": str(tmp_path)})

    assert settings.database_url is None
    assert settings.redis_url is None
    assert sqlite_path(settings.ledger_url) == tmp_path / "ledger.sqlite3"
    assert sqlite_path(load_settings(MINIMAL).ledger_url) == Path("var/ledger.sqlite3")


def test_backend_urls_come_from_the_environment_or_the_service_table(tmp_path: Path) -> None:
    env = {
        **MINIMAL,
        "RATESVC_DATABASE_URL": "postgresql://ratesvc:pw@db:5432/ratesvc",
        "RATESVC_REDIS_URL": "redis://cache:6379/2",
    }
    config = tmp_path / "ratesvc.toml"
    config.write_text(
        '[service]\ndatabase_url = "sqlite:////srv/ledger.db"\nredis_url = "rediss://c:6380/0"\n'
        '[accounts.a]\napi_tokens = ["a-token-0123456789abcdef"]\n'
        '[accounts.a.shipstation]\napi_key = "k"\napi_secret = "s"\n'
    )

    from_env = load_settings(env)
    from_file = load_settings({"RATESVC_CONFIG": str(config)})

    assert from_env.ledger_url == "postgresql://ratesvc:pw@db:5432/ratesvc"
    assert from_env.redis_url == "redis://cache:6379/2"
    assert sqlite_path(from_file.ledger_url) == Path("/srv/ledger.db")
    assert from_file.redis_url == "rediss://c:6380/0"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RATESVC_DATABASE_URL", "mysql://root:secret@db/x"),
        ("RATESVC_DATABASE_URL", "postgresql:/secret@db"),
        ("RATESVC_DATABASE_URL", "sqlite://secret.db"),
        ("RATESVC_DATABASE_URL", "sqlite:///"),
        ("RATESVC_REDIS_URL", "http://:secret@cache:6379"),
        ("RATESVC_REDIS_URL", "redis://"),
    ],
)
def test_a_bad_backend_url_is_one_line_that_does_not_repeat_it(name: str, value: str) -> None:
    (problem,) = problems_of({**MINIMAL, name: value})

    assert problem.startswith(f"{name}: must be a URL") or "names a file" in problem
    assert "secret" not in problem


SLASHED_SECRET = "Xy7/Qk9+Zz="  # what `openssl rand -base64 8` looks like: '/' '+' '='
SECRET_PARTS = ("Xy7", "Qk9", "Zz")


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("RATESVC_REDIS_URL", f"redis://:{SLASHED_SECRET}@cache:6379/0", "as they are"),
        ("RATESVC_DATABASE_URL", f"postgresql://u:{SLASHED_SECRET}@db:5432/x", "as they are"),
        ("RATESVC_DATABASE_URL", "postgresql://u:Xy7#Qk9Zz@db/x", "as they are"),
        ("RATESVC_DATABASE_URL", "postgresql://u:Xy7?Qk9Zz@db/x", "as they are"),
        ("RATESVC_DATABASE_URL", "postgresql://u:123/Xy7Qk9Zz@db/x", "as they are"),
        ("RATESVC_REDIS_URL", "redis://:Xy7Qk9Zz@cache:notaport/0", "port is not a number"),
        ("RATESVC_REDIS_URL", "redis://:Xy7Qk9Zz@cache:70000/0", "port is not a number"),
        ("RATESVC_DATABASE_URL", "postgresql://u:Xy7Qk9Zz@[::1/db", "IPv6 address in [ ]"),
        ("RATESVC_DATABASE_URL", "postgresql://u:Xy7[Qk9Zz@db/x", "cannot be read"),
        ("RATESVC_REDIS_URL", "redis://:Xy7Qk9Zz@/0", "names no host"),
        ("RATESVC_REDIS_URL", "redis://:Xy7Qk9Zz@a:6379,b:6379/0", "several hosts"),
        ("RATESVC_REDIS_URL", "unix://:Xy7Qk9Zz@cache/", "names the socket"),
    ],
)
def test_a_backend_url_its_client_would_misread_is_refused_without_showing_it(
    name: str, value: str, why: str
) -> None:
    """A generated password often holds '/' (base64) and is pasted unencoded: urlsplit then
    reads ``user:Xy7`` as host and port. Redis failed at start-up with an unhandled ValueError
    traceback showing part of the password ("Port could not be cast to integer value as
    'Xy7'", exit 1), PostgreSQL with "invalid literal for int() with base 10: 'Xy7'" in its
    start-up line (review round 4, ops finding 3). The URL is checked with the settings: one
    line, saying what to percent-encode, never repeating the URL."""
    (problem,) = problems_of({**MINIMAL, name: value})

    assert problem.startswith(f"{name}: ") and why in problem
    assert not [part for part in SECRET_PARTS if part in problem], problem


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RATESVC_DATABASE_URL", "postgresql://u:Xy7%2FQk9%2BZz%3D@db:5432/x"),
        ("RATESVC_DATABASE_URL", "postgresql://u:pw@[::1]:5432/x"),
        (
            "RATESVC_DATABASE_URL",
            "postgresql://u:pw@db1:5432,db2:5433/x?target_session_attrs=read-write",
        ),
        ("RATESVC_DATABASE_URL", "postgresql:///x?host=/run/postgresql"),
        ("RATESVC_DATABASE_URL", "postgres://db/x"),
        ("RATESVC_REDIS_URL", "redis://:Xy7%2FQk9%2BZz%3D@cache:6379/0"),
        ("RATESVC_REDIS_URL", "redis://user:p:w@[::1]:6380/2"),
        ("RATESVC_REDIS_URL", "rediss://cache/0?ssl_cert_reqs=none"),
        ("RATESVC_REDIS_URL", "unix:///run/redis.sock?db=0"),
        ("RATESVC_REDIS_URL", "unix://:pw@/run/redis.sock"),
    ],
)
def test_backend_urls_their_clients_read_are_taken(name: str, value: str) -> None:
    settings = load_settings({**MINIMAL, name: value})

    assert value in (settings.database_url, settings.redis_url)


@pytest.mark.parametrize("name", [":memory:", "file:ledger?mode=memory", "FILE:x.db"])
def test_an_in_memory_sqlite_ledger_is_refused(name: str) -> None:
    """``sqlite:///:memory:`` opened an in-memory database: /readyz said ok, labels were bought
    — and every restart (a deploy, a crash, the OOM killer) forgot every label and every
    Idempotency-Key, so a client's retry after it bought the label again. The ledger is the
    exactly-once record: it must be a file (review round 4, ops finding 7)."""
    (problem,) = problems_of({**MINIMAL, "RATESVC_DATABASE_URL": f"sqlite:///{name}"})

    assert problem.startswith("RATESVC_DATABASE_URL: the ledger must be a file")


def test_the_stop_grace_is_a_number_of_seconds_up_to_ten_minutes() -> None:
    assert load_settings(MINIMAL).stop_grace_s == 30.0
    assert load_settings({**MINIMAL, "RATESVC_STOP_GRACE_S": "12.5"}).stop_grace_s == 12.5
    (problem,) = problems_of({**MINIMAL, "RATESVC_STOP_GRACE_S": "601"})
    assert problem == "RATESVC_STOP_GRACE_S: must be a number from 0 to 600"


BACKENDS = {
    "RATESVC_DATABASE_URL": "postgresql://ratesvc:pw@db:5432/ratesvc",
    "RATESVC_REDIS_URL": "redis://cache:6379/0",
}


def test_one_worker_and_the_ratesvc_prefix_by_default() -> None:
    settings = load_settings(MINIMAL)

    assert settings.workers == 1
    assert settings.redis_prefix == "ratesvc:"


def test_workers_and_the_redis_prefix_come_from_the_environment_or_the_service_table(
    tmp_path: Path,
) -> None:
    config = tmp_path / "ratesvc.toml"
    config.write_text(
        '[service]\nworkers = 3\nredis_prefix = "ratesvc:staging:"\n'
        'database_url = "postgresql://db/ratesvc"\nredis_url = "redis://cache:6379/0"\n'
        '[accounts.a]\napi_tokens = ["a-token-0123456789abcdef"]\n'
        '[accounts.a.shipstation]\napi_key = "k"\napi_secret = "s"\n'
    )

    from_env = load_settings(
        {**MINIMAL, **BACKENDS, "RATESVC_WORKERS": "4", "RATESVC_REDIS_PREFIX": "acme:prod:"}
    )
    from_file = load_settings({"RATESVC_CONFIG": str(config)})
    overridden = load_settings({"RATESVC_CONFIG": str(config), "RATESVC_WORKERS": "2"})

    assert (from_env.workers, from_env.redis_prefix) == (4, "acme:prod:")
    assert (from_file.workers, from_file.redis_prefix) == (3, "ratesvc:staging:")
    assert overridden.workers == 2


@pytest.mark.parametrize("value", ["0", "65", "two", "1.5", "-1"])
def test_workers_are_a_whole_number_from_1_to_64(value: str) -> None:
    (problem,) = problems_of({**MINIMAL, **BACKENDS, "RATESVC_WORKERS": value})

    assert problem.startswith("RATESVC_WORKERS: must be a")


@pytest.mark.parametrize(
    ("backends", "now"),
    [
        ({}, "(now SQLite) and RATESVC_REDIS_URL=redis://... (now unset)"),
        ({"RATESVC_REDIS_URL": "redis://cache:6379/0"}, "(now SQLite) and"),
        ({"RATESVC_DATABASE_URL": "postgresql://db/x"}, "(now PostgreSQL) and"),
        ({"RATESVC_DATABASE_URL": "sqlite:///l.db", "RATESVC_REDIS_URL": "redis://c"}, "SQLite"),
    ],
)
def test_several_workers_need_postgresql_and_redis_said_in_one_line(
    backends: dict[str, str], now: str
) -> None:
    """Checked with the count in effect where processes are forked (``serve``: RATESVC_WORKERS
    or ``--workers``), not by load_settings: ``--workers 1`` overrides RATESVC_WORKERS=2, and
    ``ratesvc check`` forks nothing (review round 4, ops finding 8; tests/test_workers.py)."""
    settings = load_settings({**MINIMAL, **backends, "RATESVC_WORKERS": "2"})
    problem = workers_problem(settings, settings.workers)

    assert problem is not None
    assert problem.startswith("RATESVC_WORKERS: 2 workers need shared backends: set both ")
    assert "RATESVC_DATABASE_URL=postgresql://" in problem
    assert "RATESVC_REDIS_URL=redis://" in problem
    assert now in problem
    assert workers_problem(settings, 1) is None
    assert workers_problem(load_settings({**MINIMAL, **BACKENDS}), 2) is None
    assert workers_problem(load_settings(MINIMAL), 1) is None


@pytest.mark.parametrize("value", ["has space", "ratesvc:{tag}:", "ratesvc*", "a?b", "x" * 65])
def test_a_redis_prefix_is_tame_text(value: str) -> None:
    (problem,) = problems_of({**MINIMAL, "RATESVC_REDIS_PREFIX": value})

    assert problem.startswith("RATESVC_REDIS_PREFIX: must be 1 to 64 letters, digits or")


def test_replicas_sharing_a_budget_default_to_two_and_are_bounded() -> None:
    assert load_settings(MINIMAL).replicas == 2
    assert load_settings({**MINIMAL, "RATESVC_REPLICAS": "6"}).replicas == 6
    (problem,) = problems_of({**MINIMAL, "RATESVC_REPLICAS": "0"})
    assert problem.startswith("RATESVC_REPLICAS: must be a")


def shipstation(key: str, secret: str, url: str = DEFAULT_SHIPSTATION_URL) -> ShipStationConfig:
    return ShipStationConfig(url=url, api_key=Secret(key), api_secret=Secret(secret))


def test_two_shipstation_accounts_never_share_a_leg_key_even_when_their_key_ids_collide() -> None:
    """Leg keys (and so Redis keys ``leg:v1:<leg key>``, one Redis for every organisation an
    integrator hosts) name the ShipStation account. Named by ``key_id()`` — 8 hex digits of the
    SHA-256 of the API key, for metrics and logs — two organisations colliding in 32 bits (about
    1 % at 10 000 accounts; this pair was found in a fraction of a second) would be quoted each
    other's negotiated rates. ``cache_id()`` names URL, key and secret in 128 bits."""
    one = shipstation("ss-key-41588", "secret-of-organisation-1")
    two = shipstation("ss-key-167099", "secret-of-organisation-2")
    assert one.key_id() == two.key_id()  # short names for people: they may collide
    assert hashlib.sha256(b"ss-key-41588").digest() != hashlib.sha256(b"ss-key-167099").digest()
    here = Address(name="W", street1="1 Main", city="Austin", state="TX", postal_code="78703",
                   country="US")  # fmt: skip
    there = msgspec.structs.replace(here, postal_code="10118", state="NY", city="New York")
    route = Route.of(here, there, "none")
    parcel = Parcel.of(msgspec.convert({"weight": {"value": 3, "unit": "lb"}}, PackageIn))

    keys = {
        make_leg(key_prefix=config.cache_id(), carrier_code="ups", service_code=None, route=route,
                 parcel=parcel).key
        for config in (one, two)
    }  # fmt: skip

    assert len(keys) == 2, keys
    assert len(one.cache_id()) == 32 and int(one.cache_id(), 16) >= 0
    assert one.cache_id() == shipstation("ss-key-41588", "secret-of-organisation-1").cache_id()
    assert len({one.cache_id(), shipstation("ss-key-41588", "another secret").cache_id(),
                shipstation("ss-key-41588", "secret-of-organisation-1",
                            "https://ssapi.example").cache_id()}) == 3  # fmt: skip


SHARED = {
    **MINIMAL,
    "RATESVC_DATABASE_URL": "postgresql://ratesvc:pw@db:5432/ratesvc",
    "RATESVC_REDIS_URL": "redis://cache:6379/0",
}


def test_replicas_left_unset_count_at_least_this_replicas_workers() -> None:
    """``RATESVC_WORKERS=4`` on shared backends used to load with ``RATESVC_REPLICAS`` at its
    default of 2: while Redis is unreachable each of the four processes took half a window,
    twice the key's budget. ``replicas`` counts every process sharing the budget, so left
    unset it is the workers (at least 2), and ``serve --workers N`` raises it to N."""
    settings = load_settings({**SHARED, "RATESVC_WORKERS": "4"})

    assert (settings.workers, settings.replicas) == (4, 4)
    assert with_workers(load_settings(SHARED), 6).replicas == 6
    assert with_workers(load_settings(SHARED), 1).replicas == 2
    given = load_settings({**SHARED, "RATESVC_REPLICAS": "8"})
    assert with_workers(given, 6) is given


def test_workers_beyond_the_replicas_setting_are_not_accepted_silently() -> None:
    """Set explicitly below this replica's workers, ``RATESVC_REPLICAS`` would again let the
    processes together take more than the budget while Redis is unreachable: one clear line
    at start, as for the other settings problems (the CLI exits 2; checked where processes are
    forked, with the count in effect)."""
    four = load_settings({**SHARED, "RATESVC_WORKERS": "4", "RATESVC_REPLICAS": "2"})
    problem = replicas_problem(four, four.workers, "RATESVC_WORKERS")
    assert problem is not None

    assert problem.startswith("RATESVC_REPLICAS: 2 is fewer than the 4 workers of RATESVC_WORKERS")
    assert "set at least 4, or leave it unset" in problem
    settings = load_settings({**SHARED, "RATESVC_REPLICAS": "3"})
    assert replicas_problem(settings, 4, "--workers 4") is not None
    assert replicas_problem(settings, 3, "--workers 3") is None


def test_serve_refuses_more_workers_than_the_replicas_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in {**SHARED, "RATESVC_REPLICAS": "2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RATESVC_CONFIG", raising=False)
    monkeypatch.delenv("RATESVC_WORKERS", raising=False)

    with pytest.raises(SystemExit) as exited:
        main(["serve", "--workers", "4"])

    assert exited.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "ratesvc: the configuration has problems:"
    (problem,) = lines[1:]
    assert problem.startswith("  - RATESVC_REPLICAS: 2 is fewer than the 4 workers of --workers 4")
