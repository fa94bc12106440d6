"""Seed data for the Cin7 Core sandbox: products in mixed units and sales in every state."""

from __future__ import annotations

from typing import Any

ADDRESS_NY = {
    "Line1": "350 5th Ave", "Line2": "Floor 21", "City": "New York", "State": "NY",
    "Postcode": "10118", "Country": "US", "Company": "Empire Goods LLC", "Contact": "Ava Stone",
}  # fmt: skip
ADDRESS_CA = {
    "Line1": "1 Yonge St", "Line2": None, "City": "Toronto", "State": "ON",
    "Postcode": "M5E 1W7", "Country": "CA", "Company": None, "Contact": "Liam Tremblay",
}  # fmt: skip
ADDRESS_TX = {
    "Line1": "600 Congress Ave", "Line2": None, "City": "Austin", "State": "TX",
    "Postcode": "78701-3248", "Country": "US", "Company": "Lone Star Bakers", "Contact": "Mia Diaz",
}  # fmt: skip

ADDRESS_UK = {
    "Line1": "221 Baker St", "Line2": None, "City": "London", "State": None,
    "Postcode": "NW1 6XE", "Country": "GB", "Company": "Thames Tea Rooms", "Contact": "Olivia Hart",
}  # fmt: skip
ADDRESS_DE = {
    "Line1": "Friedrichstr. 68", "Line2": None, "City": "Berlin", "State": None,
    "Postcode": "10117", "Country": "DE", "Company": "Berliner Backhaus GmbH",
    "Contact": "Jonas Weber",
}  # fmt: skip

# Customs facts as Cin7 Core keeps them: HS code, origin by name and by ISO alpha-3 code.
PRODUCTS: dict[str, dict[str, Any]] = {
    "p-bread": {"SKU": "Bread", "Name": "Baked Bread", "Weight": 450, "WeightUnits": "g",
                "Length": 20, "Width": 10, "Height": 8, "DimensionsUnits": "cm",
                "HSCode": "1905.90", "CountryOfOrigin": "United States",
                "CountryOfOriginCode": "USA"},
    "p-flour": {"SKU": "Flour-5", "Name": "Flour 5 lb", "Weight": 5, "WeightUnits": "lb",
                "Length": 10, "Width": 6, "Height": 3, "DimensionsUnits": "in",
                "HSCode": "1101.00", "CountryOfOrigin": "United States",
                "CountryOfOriginCode": "USA"},
    "p-mug": {"SKU": "Mug", "Name": "Stoneware Mug", "Weight": 12, "WeightUnits": "oz",
              "Length": 120, "Width": 90, "Height": 100, "DimensionsUnits": "mm",
              "HSCode": "6912.00", "CountryOfOrigin": "Portugal", "CountryOfOriginCode": "PRT"},
    "p-scale": {"SKU": "Scale", "Name": "Kitchen Scale", "Weight": 1.2, "WeightUnits": "kg",
                "Length": 0.3, "Width": 0.22, "Height": 0.06, "DimensionsUnits": "m",
                "HSCode": "8423.10", "CountryOfOrigin": "China", "CountryOfOriginCode": "CHN"},
    "p-card": {"SKU": "GiftCard", "Name": "Gift Card", "Weight": 0, "WeightUnits": "g",
               "Length": 0, "Width": 0, "Height": 0, "DimensionsUnits": "cm",
               "HSCode": "4911.99", "CountryOfOrigin": "United States",
               "CountryOfOriginCode": "USA"},
    # No HS code yet: a sale of it abroad is refused until someone fills it in.
    "p-tea": {"SKU": "Tea-Oolong", "Name": "Oolong Tea 100 g", "Weight": 150, "WeightUnits": "g",
              "Length": 8, "Width": 8, "Height": 10, "DimensionsUnits": "cm",
              "HSCode": "", "CountryOfOrigin": "Taiwan", "CountryOfOriginCode": "TWN"},
}  # fmt: skip

# (sale id, order number, customer, address, [(product, qty, box)], pack status, ship status)
SALES: list[tuple[str, str, str, dict[str, Any], list[tuple[str, int, str]], str, str]] = [
    ("sale-simple", "SO-1001", "Empire Goods LLC", ADDRESS_NY,
     [("p-bread", 2, "Box 1")], "AUTHORISED", "NOT AVAILABLE"),
    ("sale-multibox", "SO-1002", "Lone Star Bakers", ADDRESS_TX,
     [("p-flour", 2, "Box 1"), ("p-mug", 4, "Box 2"), ("p-card", 1, "Box 2")],
     "AUTHORISED", "NOT AVAILABLE"),
    ("sale-international", "SO-1003", "Liam Tremblay", ADDRESS_CA,
     [("p-scale", 1, "Box 1"), ("p-mug", 2, "Box 2")], "AUTHORISED", "NOT AVAILABLE"),
    ("sale-shipped", "SO-1004", "Empire Goods LLC", ADDRESS_NY,
     [("p-mug", 1, "Box 1")], "AUTHORISED", "AUTHORISED"),
    ("sale-unpacked", "SO-1005", "Lone Star Bakers", ADDRESS_TX,
     [("p-bread", 3, "Box 1")], "DRAFT", "NOT AVAILABLE"),
]  # fmt: skip

# International sales with their own prices (per unit, discount percent) and currencies:
# (sale id, order number, customer, address, items, {product: (price, discount)}, currencies)
FOREIGN_SALES: list[
    tuple[str, str, str, dict[str, Any], list[tuple[str, int, str]],
          dict[str, tuple[float, float]], dict[str, Any]]
] = [
    ("sale-international-nohs", "SO-1007", "Thames Tea Rooms", ADDRESS_UK,
     [("p-mug", 2, "Box 1"), ("p-tea", 3, "Box 1")], {"p-mug": (14.5, 0), "p-tea": (9.95, 0)},
     {"CustomerCurrency": "USD", "BaseCurrency": "USD", "CurrencyRate": 1}),
    ("sale-eur", "SO-1008", "Berliner Backhaus GmbH", ADDRESS_DE,
     [("p-scale", 1, "Box 1"), ("p-mug", 4, "Box 2")], {"p-scale": (39.9, 10), "p-mug": (12.5, 0)},
     {"CustomerCurrency": "EUR", "BaseCurrency": "USD", "CurrencyRate": 1.085}),
]  # fmt: skip

LOCATIONS = [
    {"ID": "loc-main", "Name": "Main Warehouse", "AddressLine1": "2815 Exposition Blvd",
     "AddressLine2": None, "AddressCitySuburb": "Austin", "AddressStateProvince": "TX",
     "AddressZipPostCode": "78703", "AddressCountry": "US"},
]  # fmt: skip
