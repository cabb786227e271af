"""New-place alerts from seeded histories (pure)."""

from __future__ import annotations

import pytest

from dovecot_appauth.audit.alerts import (
    IMPOSSIBLE_TRAVEL,
    NEW_ASN,
    NEW_COUNTRY,
    Sighting,
    detect,
    haversine_km,
    kinds,
)

T0 = 1_780_000_000.0
HOUR = 3600.0
DAY = 86400.0
BERLIN = (52.52, 13.405)
HAMBURG = (53.55, 9.99)
NEW_YORK = (40.71, -74.01)
SYDNEY = (-33.87, 151.21)


def at(hours: float, place=BERLIN, country="DE", asn=3320, radius=20.0) -> Sighting:
    lat, lon = place if place else (None, None)
    return Sighting(T0 + hours * HOUR, country, asn, lat, lon, radius)


def _kinds(current, history, **kw):
    kw.setdefault("max_speed_kmh", 1000)
    kw.setdefault("lookback_seconds", 30 * DAY)
    return kinds(detect(current, history, **kw))


def test_haversine_known_distances():
    assert haversine_km(*BERLIN, *BERLIN) == 0
    assert haversine_km(*BERLIN, *NEW_YORK) == pytest.approx(6385, rel=0.01)
    assert haversine_km(*BERLIN, *HAMBURG) == pytest.approx(255, rel=0.02)


def test_same_place_no_alert():
    history = [at(-48), at(-24), at(-1)]
    assert _kinds(at(0), history) is None


def test_first_login_is_not_new():
    assert _kinds(at(0, NEW_YORK, "US", 7922), []) is None


def test_new_country_and_asn():
    history = [at(-24 * 10), at(-24 * 5, HAMBURG, asn=6805), at(-24 * 2)]
    # a day later in New York: 6400 km in 48 h is plausible by plane
    assert _kinds(at(0, NEW_YORK, "US", 7922), history) == "new-country,new-asn"
    # a known country with a new provider
    assert _kinds(at(0, HAMBURG, "DE", 3209), history) == "new-asn"
    alerts = detect(at(0, NEW_YORK, "US", 7922), history, max_speed_kmh=1000)
    assert alerts[0].detail == "country US (before: DE)"
    assert alerts[1].detail == "AS7922 (before: AS3320, AS6805)"


def test_lookback_window_forgets_old_places():
    history = [at(-24 * 40, NEW_YORK, "US", 7922), at(-24 * 2)]
    assert _kinds(at(0, NEW_YORK, "US", 7922), history) == "new-country,new-asn"
    assert _kinds(at(0, NEW_YORK, "US", 7922), history, lookback_seconds=60 * DAY) is None


def test_impossible_travel():
    history = [at(-24), at(-1)]  # Berlin an hour ago
    alerts = detect(at(0, SYDNEY, "AU", 1221), history, max_speed_kmh=1000)
    assert [a.kind for a in alerts] == [IMPOSSIBLE_TRAVEL, NEW_COUNTRY, NEW_ASN]
    assert alerts[0].detail.startswith("16") and "from the previous login (DE 52.52,13.40) in 1.0 h" in alerts[0].detail
    # the same trip over two days is fine
    assert _kinds(at(47, SYDNEY, "AU", 1221), [at(-1)]) == "new-country,new-asn"


def test_impossible_travel_uses_previous_located_login_only():
    # the latest login has no location: compare with the one before it
    history = [at(-2), Sighting(T0 - HOUR, "DE", 3320)]
    assert _kinds(at(0, NEW_YORK, "DE", 3320), history) == "impossible-travel"


def test_overlapping_accuracy_circles_never_alert():
    # Berlin -> Hamburg (~255 km) in 6 minutes, but each answer is only good to 150 km
    history = [at(-0.1, BERLIN, radius=150)]
    assert _kinds(at(0, HAMBURG, radius=150), history) is None
    # precise answers: 255 km in 6 min is 2550 km/h
    assert _kinds(at(0, HAMBURG, radius=5), [at(-0.1, BERLIN, radius=5)]) == "impossible-travel"


def test_same_instant_elsewhere_is_impossible():
    alerts = detect(at(0, NEW_YORK, "US", 7922), [at(0, BERLIN), at(-1)], max_speed_kmh=1000)
    # the entry at the same instant is not history (it is this login, or concurrent)
    assert [a.kind for a in alerts] == [IMPOSSIBLE_TRAVEL, NEW_COUNTRY, NEW_ASN]
    assert "in 1.0 h" in alerts[0].detail
    assert "in 30 min" in detect(at(0, NEW_YORK, "US"), [at(-0.5)], max_speed_kmh=1000)[0].detail


def test_max_speed_zero_switches_travel_off():
    assert _kinds(at(0, SYDNEY, "DE", 3320), [at(-1)], max_speed_kmh=0) is None


def test_unknown_values_do_not_alert():
    history = [Sighting(T0 - HOUR), at(-2, None, None, None)]
    assert _kinds(at(0, NEW_YORK, "US", 7922), history) is None
    assert _kinds(Sighting(T0), [at(-1)]) is None


def test_future_history_entries_are_ignored():
    assert _kinds(at(0), [at(1, NEW_YORK, "US", 7922)]) is None
