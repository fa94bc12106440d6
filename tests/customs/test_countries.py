"""The country table: every ISO 3166-1 country by alpha-3 code and by name, read as alpha-2."""

from __future__ import annotations

import pytest

from ratesvc.countries import ISO_3166_ALPHA2, alpha2_from_alpha3, alpha2_from_name


def test_every_assigned_alpha2_code_is_in_the_table() -> None:
    assert len(ISO_3166_ALPHA2) == 249
    assert {"US", "CA", "GB", "CN", "VN", "KR", "KP", "AQ", "SS", "XK"} - ISO_3166_ALPHA2 == {"XK"}


@pytest.mark.parametrize(
    ("alpha3", "alpha2"),
    [("CHN", "CN"), ("USA", "US"), ("GBR", "GB"), ("VNM", "VN"), ("KOR", "KR"), ("PRK", "KP"),
     ("DEU", "DE"), ("CAN", "CA"), ("SSD", "SS"), ("ALA", "AX"), ("chn", "CN"), (" can ", "CA")],
)  # fmt: skip
def test_alpha3_codes_read_as_alpha2(alpha3: str, alpha2: str) -> None:
    assert alpha2_from_alpha3(alpha3) == alpha2


@pytest.mark.parametrize("code", ["", None, "XXX", "CN", "CHINA", "UK"])
def test_what_is_not_an_assigned_alpha3_code_reads_as_nothing(code: str | None) -> None:
    assert alpha2_from_alpha3(code) is None


@pytest.mark.parametrize(
    ("name", "alpha2"),
    [
        ("China", "CN"), ("united states", "US"), ("United States of America", "US"),
        ("United Kingdom", "GB"), ("  UNITED   KINGDOM ", "GB"), ("Viet Nam", "VN"),
        ("Vietnam", "VN"), ("Korea, Republic of", "KR"), ("South Korea", "KR"),
        ("North Korea", "KP"), ("Côte d'Ivoire", "CI"), ("Cote d’Ivoire", "CI"),
        ("Türkiye", "TR"), ("Turkey", "TR"), ("Taiwan", "TW"), ("Russian Federation", "RU"),
        ("Mexico", "MX"), ("Germany", "DE"), ("Federal Republic of Germany", "DE"),
        ("Bolivia", "BO"), ("Curaçao", "CW"), ("Åland Islands", "AX"), ("Hong Kong", "HK"),
    ],
)  # fmt: skip
def test_names_read_as_alpha2_whatever_their_case_accents_and_spacing(
    name: str, alpha2: str
) -> None:
    assert alpha2_from_name(name) == alpha2


@pytest.mark.parametrize("name", ["", None, "Atlantis", "Korea", "CN"])
def test_unknown_or_ambiguous_names_read_as_nothing(name: str | None) -> None:
    assert alpha2_from_name(name) is None
