"""How carriers are named on a Cin7 Core ship line, and where their tracking pages are."""

from __future__ import annotations

CARRIER_NAMES = {
    "ups": "UPS", "ups_walleted": "UPS", "fedex": "FedEx", "stamps_com": "USPS",
    "endicia": "USPS", "dhl_express_worldwide": "DHL Express",
    "dhl_ecommerce_wallet": "DHL eCommerce", "globalpost": "GlobalPost",
}  # fmt: skip

TRACKING_URLS = {
    "ups": "https://www.ups.com/track?tracknum={}",
    "ups_walleted": "https://www.ups.com/track?tracknum={}",
    "fedex": "https://www.fedex.com/fedextrack/?trknbr={}",
    "stamps_com": "https://tools.usps.com/go/TrackConfirmAction?tLabels={}",
    "endicia": "https://tools.usps.com/go/TrackConfirmAction?tLabels={}",
    "dhl_express_worldwide": "https://www.dhl.com/en/express/tracking.html?AWB={}",
    "dhl_ecommerce_wallet": "https://www.dhl.com/us-en/home/tracking.html?tracking-id={}",
}


def carrier_name(carrier_code: str) -> str:
    return CARRIER_NAMES.get(carrier_code, carrier_code)


def tracking_url(carrier_code: str, tracking_number: str | None) -> str | None:
    template = TRACKING_URLS.get(carrier_code)
    return template.format(tracking_number) if template and tracking_number else None
