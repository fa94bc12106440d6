"""Which quote a rule buys: cheapest by cost, an allowed list, the sale's carrier, a cost cap."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from ratesvc.automation.rules import choose, mapped_service, rating_filters
from ratesvc.config import ShipRule
from ratesvc.models import Quote

NOW = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)


def quote(carrier: str, service: str, cost: str, markup: str = "0.00") -> Quote:
    total = Decimal(cost) + Decimal(markup)
    return Quote(
        quote_id=f"q-{service}", carrier_code=carrier, service_code=service, service_name=service,
        package_code=None, shipment_cost=cost, other_cost="0.00", markup=markup, total=str(total),
        currency="USD", packages=1, cached=False, quoted_at=NOW, expires_at=NOW,
    )  # fmt: skip


# In rating order (by total): a high markup on fedex puts it last although it costs least.
QUOTES = [
    quote("usps", "usps_priority_mail", "9.10"),
    quote("ups", "ups_ground", "11.25"),
    quote("ups", "ups_2nd_day_air", "24.80"),
    quote("fedex", "fedex_ground", "8.90", markup="20.00"),
]


def test_cheapest_is_what_the_account_pays_not_what_the_customer_is_charged() -> None:
    choice = choose(ShipRule(autoship="cheapest"), QUOTES, mapped=None)

    assert choice.quote is not None
    assert choice.quote.service_code == "fedex_ground"


def test_cheapest_among_an_allowed_list_of_services() -> None:
    rule = ShipRule(autoship="cheapest", services=("ups_ground", "ups_2nd_day_air"))

    choice = choose(rule, QUOTES, mapped=None)

    assert choice.quote is not None
    assert choice.quote.service_code == "ups_ground"
    assert rating_filters(rule, None) == (None, ["ups_ground", "ups_2nd_day_air"])


def test_equal_costs_keep_the_rating_order() -> None:
    tied = [quote("ups", "ups_ground", "10.00"), quote("fedex", "fedex_ground", "10.00")]

    choice = choose(ShipRule(autoship="cheapest"), tied, mapped=None)

    assert choice.quote is not None
    assert choice.quote.carrier_code == "ups"


def test_the_cap_refuses_everything_above_it_and_says_what_was_cheapest() -> None:
    rule = ShipRule(autoship="cheapest", max_cost=Decimal("8.50"))

    choice = choose(rule, QUOTES, mapped=None)

    assert choice.quote is None
    assert choice.reason == (
        "no service under the 8.50 USD cap (cheapest: fedex/fedex_ground at 8.90 USD)"
    )


def test_the_sale_carrier_text_maps_to_a_service_ignoring_case_and_spacing() -> None:
    rule = ShipRule(autoship="sale_carrier", carrier_map={"ups ground": ("ups", "ups_ground")})

    mapped = mapped_service(rule, "  UPS   Ground ")
    choice = choose(rule, QUOTES, mapped=mapped)

    assert mapped == ("ups", "ups_ground")
    assert rating_filters(rule, mapped) == (["ups"], ["ups_ground"])
    assert choice.quote is not None
    assert choice.quote.service_code == "ups_ground"
    assert mapped_service(rule, "FedEx") is None
    assert mapped_service(ShipRule(autoship="cheapest"), "UPS Ground") is None


def test_a_mapped_service_over_the_cap_or_not_quoted_is_explained() -> None:
    rule = ShipRule(
        autoship="sale_carrier", max_cost=Decimal("20"),
        carrier_map={"ups air": ("ups", "ups_2nd_day_air"), "dhl": ("dhl", "dhl_express")},
    )  # fmt: skip

    over = choose(rule, QUOTES, mapped=("ups", "ups_2nd_day_air"))
    missing = choose(rule, QUOTES, mapped=("dhl", "dhl_express"))

    assert over.reason == "ups/ups_2nd_day_air costs 24.80 USD, over the 20.00 USD cap"
    assert missing.reason == "dhl/dhl_express (from the sale's carrier) was not quoted"


def test_nothing_quoted_among_the_allowed_services() -> None:
    choice = choose(ShipRule(autoship="cheapest", services=("dhl_express",)), QUOTES, mapped=None)

    assert choice.reason == "no service among dhl_express was quoted for this sale"
