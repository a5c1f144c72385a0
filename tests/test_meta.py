"""Meta strings (DESIGN §3): build them for messages, parse them back from callbacks."""

from __future__ import annotations

from datetime import date

import pytest

from providers.meta import Meta, build_meta, parse_meta

SEED_META = "user1@example.com|1568798080|1730714617|20241104|0|wzrk_default|-17005904|"


def test_parse_seed_meta_gives_every_field() -> None:
    meta = parse_meta(SEED_META)

    assert meta == Meta(
        email="user1@example.com",
        account_id="1568798080",
        campaign_id="1730714617",
        yyyymmdd="20241104",
        variant="0",
        category="wzrk_default",
        seq=-17005904,
    )
    assert meta.send_date == date(2024, 11, 4)
    assert str(meta) == SEED_META


def test_build_meta_formats_seven_fields_and_a_trailing_bar() -> None:
    text = build_meta(
        email="a.b+c@shop.example.com",
        account_id="acct-1",
        campaign_id="spring-sale",
        send_date=date(2025, 3, 9),
        seq=42,
    )

    assert text == "a.b+c@shop.example.com|acct-1|spring-sale|20250309|0|default|42|"
    assert parse_meta(text).campaign_id == "spring-sale"


def test_build_meta_takes_yyyymmdd_text_variant_and_category() -> None:
    text = build_meta(
        email="u@example.com",
        account_id="1",
        campaign_id="c",
        send_date="20241231",
        seq=0,
        variant="B",
        category="news",
    )

    assert text == "u@example.com|1|c|20241231|B|news|0|"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("campaign_id", "a|b"),
        ("category", "news|x"),
        ("email", "u|x@example.com"),
        ("variant", ""),
        ("account_id", "1\r\nBcc: x@evil.example"),
        ("email", " u@example.com"),
    ],
)
def test_build_meta_refuses_a_bad_field_and_names_it(field: str, value: str) -> None:
    values: dict[str, str] = {
        "email": "u@example.com",
        "account_id": "1",
        "campaign_id": "c",
        "variant": "0",
        "category": "default",
    }
    values[field] = value

    with pytest.raises(ValueError, match=f"field {field}"):
        build_meta(send_date="20241104", seq=1, **values)


def test_build_meta_refuses_a_date_that_is_not_yyyymmdd() -> None:
    with pytest.raises(ValueError, match="yyyymmdd"):
        build_meta(
            email="u@example.com", account_id="1", campaign_id="c", send_date="2024-11-04", seq=1
        )


@pytest.mark.parametrize(
    ("meta", "problem"),
    [
        (SEED_META[:-1], "must end with '|'"),
        ("user1@example.com|1|2|20241104|0|cat|", "expected 7 fields"),
        (SEED_META + "extra|", "expected 7 fields"),
        ("user1@example.com|1|2|20241104|0||5|", "field category is empty"),
        ("user1.example.com|1|2|20241104|0|cat|5|", "field email"),
        ("user1@example.com|1|2|20241340|0|cat|5|", "field yyyymmdd"),
        ("user1@example.com|1|2|2024110|0|cat|5|", "field yyyymmdd"),
        ("user1@example.com|1|2|20241104|0|cat|five|", "field seq"),
        ("", "must end with '|'"),
        ("|", "expected 7 fields"),
    ],
)
def test_parse_meta_names_the_problem(meta: str, problem: str) -> None:
    with pytest.raises(ValueError, match="invalid meta") as info:
        parse_meta(meta)

    assert problem in str(info.value)


def test_parse_meta_refuses_a_non_string() -> None:
    with pytest.raises(ValueError, match="expected a string"):
        parse_meta(42)  # type: ignore[arg-type]


def test_meta_is_frozen() -> None:
    meta = parse_meta(SEED_META)

    with pytest.raises(ValueError):
        meta.seq = 1
