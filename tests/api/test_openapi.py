"""The served OpenAPI document declares what the service does: parameters, credentials, rules,
codes, statuses, formats and examples (``.ci/run`` fuzzes it with schemathesis too)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from aiohttp.test_utils import TestClient

from ratesvc import errors
from ratesvc.api.params import LIMIT_MAX, PACKAGE_MAX
from ratesvc.api.problems import decode_json
from ratesvc.errors import PROBLEM_CODES, RatesvcError
from ratesvc.labels import LabelsRequest
from ratesvc.models import RatesRequest
from tests.conftest import HOOK, WEBHOOK_URL, MakeService

# The contract lives in shared/ beside the repository (beside its worktrees' parent, here).
_REPO = Path(__file__).parents[2]
API_MD = next((p / "shared" / "API.md" for p in (_REPO.parent, _REPO.parent.parent)
               if (p / "shared" / "API.md").exists()), None)  # fmt: skip


@pytest.fixture
async def document(service: TestClient) -> dict[str, Any]:
    response = await service.get("/openapi.json")
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in document["paths"].items()
            for method, op in item.items()]  # fmt: skip


def validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


def component(document: dict[str, Any], name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


async def test_every_path_parameter_is_declared(document: dict[str, Any]) -> None:
    for path, _, operation in operations(document):
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"{(\w+)}", path)), path
    pdf = document["paths"]["/v1/labels/{label_id}/packages/{n}/label.pdf"]["get"]
    (n,) = [p for p in pdf["parameters"] if p["name"] == "n"]
    assert n["required"] is True
    assert n["schema"] == {"type": "integer", "minimum": 1, "maximum": PACKAGE_MAX}


@pytest.mark.parametrize(
    ("path", "prefix"), [("/v1/labels", "lb_"), ("/v1/automation/events", "ev_")]
)
async def test_list_routes_declare_their_query(
    document: dict[str, Any], path: str, prefix: str
) -> None:
    params = {p["name"]: p for p in document["paths"][path]["get"]["parameters"]}

    searchable = {"search"} if path == "/v1/labels" else set()
    assert set(params) == {"status", "sale_id", "limit", "cursor", *searchable}
    assert all(p["in"] == "query" and not p["required"] for p in params.values())
    assert params["limit"]["schema"]["maximum"] == LIMIT_MAX
    assert params["limit"]["schema"]["minimum"] == 1
    assert params["status"]["schema"]["enum"]
    assert params["cursor"]["schema"]["pattern"].startswith("^" + prefix)


async def test_buying_declares_the_idempotency_key_and_its_replay(document: dict[str, Any]) -> None:
    buy = document["paths"]["/v1/labels"]["post"]
    (key,) = buy["parameters"]

    assert (key["name"], key["in"], key["required"]) == ("Idempotency-Key", "header", False)
    assert key["schema"]["maxLength"] == 255
    assert {"200", "201", "409", "422"} <= set(buy["responses"])
    assert buy["responses"]["201"]["content"] == buy["responses"]["200"]["content"]


async def test_statuses_the_service_answers_are_declared(document: dict[str, Any]) -> None:
    for path, method, operation in operations(document):
        assert {"405", "413"} <= set(operation["responses"]), (method, path)
        if path.startswith("/v1/"):
            assert "401" in operation["responses"], (method, path)
    paths = document["paths"]
    assert "422" in paths["/v1/labels/{label_id}/packages/{n}/label.pdf"]["get"]["responses"]
    assert "409" in paths["/v1/labels/{label_id}/void"]["post"]["responses"]
    readyz = paths["/readyz"]["get"]["responses"]
    assert readyz["503"]["content"] == readyz["200"]["content"]  # the same Readiness body
    throttled = paths["/v1/rates"]["post"]["responses"]["503"]
    assert throttled["headers"]["Retry-After"]["schema"]["type"] == "integer"


async def test_security_schemes_cover_the_api_token_and_the_webhook(
    document: dict[str, Any],
) -> None:
    schemes = document["components"]["securitySchemes"]

    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["webhookBasic"]["scheme"] == "basic"
    assert schemes["webhookHeader"]["type"] == "apiKey"
    assert document["security"] == [{"bearer": []}]
    webhook = document["paths"]["/v1/webhooks/cin7/{account}"]["post"]
    body = webhook["requestBody"]["content"]["application/json"]
    validator(document, body["schema"]).validate(body["example"])


async def test_problem_codes_are_an_enum_of_every_contract_code(document: dict[str, Any]) -> None:
    code = document["components"]["schemas"]["Problem"]["properties"]["code"]

    assert set(code["enum"]) == set(PROBLEM_CODES)
    if API_MD is not None:
        text = API_MD.read_text()
        contract = set(re.findall(r"^\| \d{3} \| `(\w+)`", text, re.M))
        contract |= set(re.findall(r"`(\w+)` / `(\w+)`", text)[0])
        assert len(contract) > 15
        assert contract <= set(code["enum"])
    assert {"already_labelled", "sale_changed", "reconciling", "customs_required",
            "customs_incomplete"} <= set(code["enum"])  # fmt: skip


def _error_classes(base: type[RatesvcError]) -> list[type[RatesvcError]]:
    return [base] + [c for sub in base.__subclasses__() for c in _error_classes(sub)]


def test_every_error_class_code_is_in_the_enum() -> None:
    answered = [c for c in _error_classes(RatesvcError)  # what can reach a client
                if c.__module__ == "ratesvc.errors"
                or issubclass(c, (errors.RequestError, errors.UpstreamFailure))]  # fmt: skip

    assert errors.UpstreamThrottled in answered
    assert {c.code for c in answered} <= set(PROBLEM_CODES)


async def test_states_timestamps_and_dates_are_typed(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    label = schemas["Label"]["properties"]

    assert label["status"]["enum"] == [
        "purchasing",
        "purchased",
        "completed",
        "write_back_failed",
        "voided",
        "attention",
        "failed",
    ]
    assert schemas["LabelPackage"]["properties"]["state"]["enum"] == [
        "pending", "bought", "unknown", "voided", "failed"]  # fmt: skip
    assert label["created_at"]["format"] == "date-time"
    assert label["voided_at"]["anyOf"][0]["format"] == "date-time"
    assert label["ship_date"]["format"] == "date"
    assert schemas["Quote"]["properties"]["expires_at"]["format"] == "date-time"
    event = schemas["AutomationEvent"]["properties"]
    assert event["received_at"]["format"] == "date-time"


ACCEPTED_BY_RATES = [
    {"sale_id": "s-1"}, {"sale_id": "s-1", "task_id": "t-1", "shipment": None},
    {"shipment": {"ship_to": {"country": "US", "postal_code": "10118"},
                  "packages": [{"weight": {"value": 1, "unit": "lb"}}]}, "sale_id": None},
]  # fmt: skip
REFUSED_BY_RATES = [{}, {"sale_id": None}, {**ACCEPTED_BY_RATES[2], "sale_id": "s"},
                    {**ACCEPTED_BY_RATES[2], "task_id": "t"}]  # fmt: skip
_SHIPMENT = ACCEPTED_BY_RATES[2]["shipment"]
_CODES = {"carrier_code": "ups", "service_code": "ups_ground"}
ACCEPTED_BY_LABELS = [
    {"quote_id": "qt_1"}, {"quote_id": "qt_1", "carrier_code": None, "ship_date": "2030-01-01"},
    {**_CODES, "sale_id": "s-1", "task_id": "t-1"}, {**_CODES, "shipment": _SHIPMENT},
]  # fmt: skip
REFUSED_BY_LABELS = [
    {}, {"quote_id": "qt_1", "carrier_code": "ups"}, {"carrier_code": "ups", "sale_id": "s"},
    {**_CODES}, {**_CODES, "sale_id": "s", "shipment": _SHIPMENT},
    {**_CODES, "shipment": _SHIPMENT, "task_id": "t"},
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "bodies", "valid"),
    [(RatesRequest, ACCEPTED_BY_RATES, True), (RatesRequest, REFUSED_BY_RATES, False),
     (LabelsRequest, ACCEPTED_BY_LABELS, True), (LabelsRequest, REFUSED_BY_LABELS, False)],
)  # fmt: skip
async def test_cross_field_rules_match_what_the_service_decodes(
    document: dict[str, Any], kind: type[Any], bodies: list[dict[str, Any]], valid: bool
) -> None:
    check = validator(document, component(document, kind.__name__))
    for body in bodies:
        assert check.is_valid(body) is valid, body
        raw = msgspec.json.encode(body)
        if valid:
            decode_json(raw, kind)
        else:
            with pytest.raises(errors.InvalidRequest):
                decode_json(raw, kind)


async def test_request_examples_are_valid(document: dict[str, Any]) -> None:
    for path, method, operation in operations(document):
        content = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if content is not None:
            assert "example" in content, (method, path)
            validator(document, content["schema"]).validate(content["example"])


async def test_what_the_webhook_accepts_is_valid_by_the_document(
    make_automated: MakeService,
) -> None:
    """schemathesis found it: a second spelling of a key (SaleTaskID after TaskID) is not read,
    so the document must not promise a type for it."""
    client = await make_automated(RATESVC_AUTOSHIP="off")
    document = await (await client.get("/openapi.json")).json()
    webhook = document["paths"]["/v1/webhooks/cin7/{account}"]["post"]
    schema = webhook["requestBody"]["content"]["application/json"]["schema"]
    body = {"EventType": "Sale/PackAuthorised", "SaleID": "s-1", "TaskID": "t-1",
            "SaleTaskID": {}}  # fmt: skip

    response = await client.post(WEBHOOK_URL, json=body, headers=HOOK)

    assert response.status == 202
    assert (await response.json())["status"] == "ignored"
    assert validator(document, schema).is_valid(body)
    assert not validator(document, schema).is_valid({**body, "SaleID": {}})
    refused = await client.post(WEBHOOK_URL, json={**body, "SaleID": {}}, headers=HOOK)
    assert refused.status == 400


async def test_the_operator_routes_are_declared(document: dict[str, Any]) -> None:
    paths = document["paths"]
    sales = paths["/v1/sales"]["get"]
    params = {p["name"]: p for p in sales["parameters"]}
    printed = paths["/v1/labels/{label_id}/label.pdf"]["get"]
    status = paths["/v1/status"]["get"]

    assert set(params) == {"ready", "search", "limit", "cursor"}
    assert (params["ready"]["required"], params["ready"]["schema"]["enum"]) == (True, ["true"])
    assert params["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 100,
                                         "default": 25}  # fmt: skip
    assert params["search"]["schema"]["maxLength"] == 100
    assert {"200", "401", "422", "503"} <= set(sales["responses"])
    assert "application/pdf" in printed["responses"]["200"]["content"]
    assert {"404", "409"} <= set(printed["responses"])
    # never an upstream's 5xx: a 503 only while the ledger is out of reach
    assert set(status["responses"]) == {"200", "401", "405", "413", "503"}
    assert ledger_only(status["responses"]["503"])
    schemas = document["components"]["schemas"]
    assert schemas["ReadySale"]["properties"]["details"]["enum"] == [
        "pending", "ready", "unavailable"
    ]  # fmt: skip
    assert schemas["WebhookState"]["properties"]["state"]["enum"] == [
        "active", "inactive", "unknown"
    ]  # fmt: skip
    for budget in ("ShipStationBudget", "Cin7Budget"):  # where each limiter's window is kept
        sharing = schemas[budget]["properties"]["sharing"]["enum"]
        assert sorted(sharing) == ["degraded", "local", "shared"]


async def test_retrying_a_write_back_is_declared(document: dict[str, Any]) -> None:
    retry = document["paths"]["/v1/labels/{label_id}/write-back/retry"]["post"]
    ok = retry["responses"]["200"]["content"]["application/json"]["schema"]

    assert ok == component(document, "Label")
    assert {"200", "401", "404"} <= set(retry["responses"])
    assert not {"409", "422", "5XX", "502"} & set(retry["responses"])
    assert ledger_only(retry["responses"]["503"])  # no upstream call: only the ledger's 503
    assert [p["name"] for p in retry["parameters"]] == ["label_id"]


def ledger_only(response: dict[str, Any]) -> bool:
    """A 503 declared for the ledger alone: storage_unavailable with Retry-After."""
    return (
        "`storage_unavailable`" in response["description"]
        and "upstream_unavailable" not in response["description"]
        and "Retry-After" in response["headers"]
    )


async def test_every_route_that_needs_the_ledger_declares_its_503(
    document: dict[str, Any],
) -> None:
    """A PostgreSQL out of reach answers 503 storage_unavailable (with Retry-After) wherever
    the ledger is read or written."""
    paths = document["paths"]
    needs_ledger = [
        (path, method) for path, operations in paths.items() for method in operations
        if path.startswith(("/v1/labels", "/v1/automation", "/v1/webhooks", "/v1/sales",
                            "/v1/status"))
    ]  # fmt: skip
    assert len(needs_ledger) == 13
    for path, method in needs_ledger:
        declared = paths[path][method]["responses"]["503"]
        assert "`storage_unavailable`" in declared["description"], (path, method)
        assert "Retry-After" in declared["headers"]
