"""Which quote an account's :class:`~ratesvc.config.ShipRule` buys for a sale (pure functions).

* ``cheapest``: the quote with the lowest *cost* (shipment + other cost, what the account pays to
  ShipStation; markup is what the customer pays and does not decide), among ``services`` when the
  rule lists some. Ties keep the rating order (total, carrier, service).
* ``sale_carrier``: the sale's ``Carrier`` text (trimmed, case and spacing ignored) is looked up
  in ``carrier_map``; the mapped carrier/service is bought. Text not in the map, or a mapped
  service that was not quoted, goes to ``fallback``: ``cheapest`` (as above) or ``attention``.
* ``max_cost``: nothing costing more is bought; the sale goes to ``attention`` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from ratesvc.config import ShipRule
from ratesvc.models import Quote
from ratesvc.units import money_str


@dataclass(frozen=True)
class Choice:
    """The quote to buy, or why nothing may be bought (``reason``, for a person)."""

    quote: Quote | None
    reason: str | None = None


def cost(quote: Quote) -> Decimal:
    return Decimal(quote.shipment_cost) + Decimal(quote.other_cost)


def mapped_service(rule: ShipRule, sale_carrier: str | None) -> tuple[str, str] | None:
    """The (carrier, service) the sale's Carrier text maps to under a ``sale_carrier`` rule."""
    if rule.autoship != "sale_carrier" or not sale_carrier:
        return None
    return rule.carrier_map.get(" ".join(sale_carrier.split()).lower())


def rating_filters(
    rule: ShipRule, mapped: tuple[str, str] | None
) -> tuple[list[str] | None, list[str] | None]:
    """(carriers, services) to ask ShipStation for: only what the rule could buy."""
    if mapped is not None:
        return [mapped[0]], [mapped[1]]
    return None, list(rule.services) or None


def choose(
    rule: ShipRule, quotes: list[Quote], *, mapped: tuple[str, str] | None, currency: str = "USD"
) -> Choice:
    """Pick by the rule among ``quotes`` (already filtered by :func:`rating_filters`)."""
    if mapped is not None:
        carrier, service = mapped
        wanted = [q for q in quotes if (q.carrier_code, q.service_code) == mapped]
        if not wanted:
            return Choice(None, f"{carrier}/{service} (from the sale's carrier) was not quoted")
        pick = min(wanted, key=cost)
        if rule.max_cost is not None and cost(pick) > rule.max_cost:
            return Choice(
                None,
                f"{carrier}/{service} costs {money_str(cost(pick))} {currency}, over the "
                f"{money_str(rule.max_cost)} {currency} cap",
            )
        return Choice(pick)
    allowed = set(rule.services)
    candidates = [q for q in quotes if not allowed or q.service_code in allowed]
    if not candidates:
        among = f" among {', '.join(rule.services)}" if rule.services else ""
        return Choice(None, f"no service{among} was quoted for this sale")
    pick = min(candidates, key=cost)  # min keeps the first of equals: the rating order
    if rule.max_cost is not None and cost(pick) > rule.max_cost:
        return Choice(
            None,
            f"no service under the {money_str(rule.max_cost)} {currency} cap (cheapest: "
            f"{pick.carrier_code}/{pick.service_code} at {money_str(cost(pick))} {currency})",
        )
    return Choice(pick)
