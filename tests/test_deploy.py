"""``compose.yaml``, ``deploy/haproxy.cfg`` and the README's configuration table agree with the
code: the replicas' environment is a valid configuration made only of real settings, both
replicas share one PostgreSQL and one Redis with the passwords those are given, the proxy
balances exactly the replicas and checks ``/readyz``, and every setting is documented.
(Docker is not run here: what can be checked without it is.)"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from ratesvc import event_loop
from ratesvc.config import is_postgresql, load_settings, workers_problem
from ratesvc.supervisor import TEARDOWN_S

ROOT = Path(__file__).parents[1]
SECRETS = {
    "POSTGRES_PASSWORD": "pg0pass1word", "REDIS_PASSWORD": "redis0pass1word",
    "RATESVC_API_TOKEN": "compose-token-0123456789", "RATESVC_SHIPSTATION_API_KEY": "ss-key",
    "RATESVC_SHIPSTATION_API_SECRET": "ss-secret",
}  # fmt: skip
_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:\?|:-)(?P<arg>[^}]*))?\}")


class Recording(Mapping[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        return self.values[name]

    def __contains__(self, name: object) -> bool:
        self.asked.add(str(name))
        return name in self.values

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Compose's ``${NAME}``, ``${NAME:-default}``, ``${NAME:?error}`` and ``$$``."""

    def one(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        value = variables.get(match["name"], "")
        if match["op"] == ":?" and not value:
            raise AssertionError(f"compose would refuse to start: {match['arg']}")
        return value or (match["arg"] or "" if match["op"] == ":-" else "")

    return _VARIABLE.sub(one, text)


def dockerfile_env() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("ENV ")]
    return dict(pair.split("=", 1) for pair in line[4:].split())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return document


def replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if s.get("build") == "."}


def environment(service: dict[str, Any], variables: Mapping[str, str]) -> dict[str, str]:
    return {k: interpolate(str(v), variables) for k, v in service["environment"].items()}


def test_two_replicas_of_the_image_behind_a_proxy_with_postgresql_15_and_redis_7(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]

    assert sorted(replicas(compose)) == ["ratesvc-1", "ratesvc-2"]
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["proxy"]["volumes"] == [
        "./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"
    ]
    for service in replicas(compose).values():
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
        assert set(service["depends_on"]) == {"postgres", "redis"}


def test_the_replicas_environment_is_a_valid_configuration_of_real_settings(
    compose: dict[str, Any],
) -> None:
    for name, service in replicas(compose).items():
        env = Recording({**dockerfile_env(), **environment(service, SECRETS)})

        settings = load_settings(env)
        event_loop.choose(env)

        unknown = {k for k in env if k.startswith("RATESVC_")} - env.asked
        assert not unknown, f"{name} sets what ratesvc never reads: {sorted(unknown)}"
        assert is_postgresql(settings.database_url)
        assert settings.redis_url is not None
        assert workers_problem(settings, 2) is None  # fit for --workers too
        assert (settings.host, settings.port) == ("0.0.0.0", 8080)


def test_a_replicas_graceful_stop_fits_compose_stop_grace_period(compose: dict[str, Any]) -> None:
    """A replica's stop takes RATESVC_STOP_GRACE_S (requests and purchases, one deadline from
    SIGTERM) and then its closing, which the supervisor bounds by TEARDOWN_S: Docker must not
    SIGKILL it before (review round 4, ops finding 6)."""
    for service in replicas(compose).values():
        settings = load_settings({**dockerfile_env(), **environment(service, SECRETS)})
        period = re.fullmatch(r"(\d+)s", service["stop_grace_period"])

        assert period is not None
        assert int(period[1]) >= settings.stop_grace_s + TEARDOWN_S


def test_a_missing_secret_stops_compose_before_anything_starts(compose: dict[str, Any]) -> None:
    service = replicas(compose)["ratesvc-1"]
    without = {k: v for k, v in SECRETS.items() if k != "RATESVC_SHIPSTATION_API_KEY"}

    with pytest.raises(AssertionError, match="set RATESVC_SHIPSTATION_API_KEY"):
        environment(service, without)


def test_both_replicas_share_the_database_and_redis_with_their_passwords(
    compose: dict[str, Any],
) -> None:
    postgres = environment(compose["services"]["postgres"], SECRETS)
    redis = compose["services"]["redis"]
    redis_password = environment(redis, SECRETS)["REDIS_PASSWORD"]

    urls = {
        (env["RATESVC_DATABASE_URL"], env["RATESVC_REDIS_URL"], env["RATESVC_REDIS_PREFIX"])
        for env in (environment(s, SECRETS) for s in replicas(compose).values())
    }

    ((database_url, redis_url, _),) = urls  # one of each, shared
    database, cache = urlsplit(database_url), urlsplit(redis_url)
    where = (database.hostname, database.port, database.path)
    assert where == ("postgres", 5432, f"/{postgres['POSTGRES_DB']}")
    assert (database.username, database.password) == (
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"]
    )  # fmt: skip
    assert (cache.hostname, cache.port, cache.password) == ("redis", 6379, redis_password)
    assert redis_password == SECRETS["REDIS_PASSWORD"]
    assert '--requirepass "$REDIS_PASSWORD"' in interpolate(redis["command"][-1], SECRETS)


def test_the_proxy_balances_exactly_the_replicas_and_checks_readyz(
    compose: dict[str, Any],
) -> None:
    config = (ROOT / "deploy" / "haproxy.cfg").read_text()
    port = dockerfile_env()["RATESVC_PORT"]
    servers = re.findall(r"^\s*server (\S+) (\S+)(.*)$", config, re.M)

    checked = {address for _, address, rest in servers if " check" in rest}
    backups = {address for _, address, rest in servers if " backup" in rest}
    assert checked == {f"{name}:{port}" for name in replicas(compose)}
    assert backups == checked  # when no replica is ready, all that live still answer
    assert re.search(r"^\s*option httpchk GET /readyz$", config, re.M)
    assert re.search(r"^\s*balance roundrobin$", config, re.M)
    assert re.search(r"^\s*bind :8080$", config, re.M)
    assert compose["services"]["proxy"]["ports"] == ["127.0.0.1:8080:8080"]


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    env = Recording({**SECRETS, "RATESVC_SHIPSTATION_URL": "http://127.0.0.1:9"})
    load_settings(env)
    event_loop.choose(env)
    readme = (ROOT / "README.md").read_text()

    documented = set(re.findall(r"^\| `(RATESVC_\w+)` \|", readme, re.M))

    read = {name for name in env.asked if name.startswith("RATESVC_")}
    assert len(read) > 40
    assert read - documented == set()
