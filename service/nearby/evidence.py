"""How often each candidate taxon was recorded near a place and season, and the bounded re-ranking it gives.

**Counting.** Records are validated observations (status ``validated``, with a taxon and a place) and imported
occurrences (:mod:`service.nearby.occurrences`). A record counts when it lies within ``radius_km`` of the
photo's place (a bounding box in SQL, then the haversine distance) and within ``season_days`` of the photo's
day of the year, circularly and whatever the year (late December is near early January). A candidate at
genus, family or order rank counts the records of its whole subtree (taxa carry ``path``).

**Re-ranking.** With ``n_t`` the records of candidate ``t``, ``n`` all records nearby (every taxon) and ``K``
the model's classes, the prior is ``p_t = (n_t + alpha) / (n + alpha K)``; relative to the uniform ``1 / K``
it is ``r_t = K p_t``, clipped to ``[clip_low, clip_high]`` and raised to the power ``weight``. Each
suggestion's combined score is ``score_t * r_t^weight``, renormalised so that the listed suggestions keep the
total probability the model gave them. No place nearby with records gives ``r_t = 1`` for every candidate:
the model's order. Nothing is ever removed, the model's calibrated ``score`` is kept beside the combined one,
and the committed answer (the roll-up) is the model's alone. alpha, weight and the clip range were chosen on
the fit half of ``bench/expected_nearby.py`` (docs/benchmarks.md).

Per request: three small queries (candidate taxa, occurrences grouped by taxon and 0.1-degree cell, validated
observations in the box), each on an index.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Integer, and_, cast, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from service.core.errors import InvalidRequest
from service.core.vocabulary import ObservationStatus
from service.inference.results import IdentifyResponse, NearbyPublic, NearbyScore, TaxonScore
from service.settings import Settings
from service.store.tables import Observation, OccurrenceRecord, Taxon, TaxonLabel

EARTH_RADIUS_KM = 6371.0088
SEASON_YEAR = 2001  # days of the year on a common year (see service.nearby.occurrences)
YEAR_DAYS = 365


def _setting(name: str) -> Any:
    """A setting's default: the one place the evidence's defaults are written (service.settings)."""
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class NearbyParams:
    radius_km: float = _setting("nearby_radius_km")
    season_days: int = _setting("nearby_season_days")
    alpha: float = _setting("nearby_alpha")
    weight: float = _setting("nearby_weight")
    clip_low: float = _setting("nearby_clip_low")
    clip_high: float = _setting("nearby_clip_high")

    @classmethod
    def from_settings(cls, settings: Settings) -> NearbyParams:
        return cls(radius_km=settings.nearby_radius_km, season_days=settings.nearby_season_days,
                   alpha=settings.nearby_alpha, weight=settings.nearby_weight,
                   clip_low=settings.nearby_clip_low, clip_high=settings.nearby_clip_high)


@dataclass(frozen=True)
class Place:
    """Where and when a photo was taken."""

    latitude: float
    longitude: float
    on: date

    @property
    def day_of_year(self) -> int:
        return day_of_year(self.on.month, self.on.day)


def day_of_year(month: int, day: int) -> int:
    """1..365 on a common year (29 February counts as 28 February)."""
    return date(SEASON_YEAR, month, min(day, 28) if month == 2 else day).timetuple().tm_yday


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def season_distance(a: int, b: int) -> int:
    """Days between two days of the year, around the year's end."""
    d = abs(a - b) % YEAR_DAYS
    return min(d, YEAR_DAYS - d)


def _box(lat_col: Any, lon_col: Any, place: Place, radius_km: float) -> ColumnElement[bool]:
    """SQL: inside the bounding box of the circle (split at the antimeridian; whole longitudes near a pole)."""
    dlat = math.degrees(radius_km / EARTH_RADIUS_KM)
    lat_lo, lat_hi = place.latitude - dlat, place.latitude + dlat
    lat_cond = lat_col.between(lat_lo, lat_hi)
    if lat_lo <= -90 or lat_hi >= 90:
        return lat_cond
    dlon = math.degrees(radius_km / (EARTH_RADIUS_KM * math.cos(math.radians(place.latitude))))
    if dlon >= 180:
        return lat_cond
    lo, hi = place.longitude - dlon, place.longitude + dlon
    if lo < -180:
        lon_cond = or_(lon_col >= lo + 360, lon_col <= hi)
    elif hi > 180:
        lon_cond = or_(lon_col >= lo, lon_col <= hi - 360)
    else:
        lon_cond = lon_col.between(lo, hi)
    return and_(lat_cond, lon_cond)


def _season(col: Any, doy: int, days: int) -> ColumnElement[bool]:
    lo, hi = doy - days, doy + days
    if days * 2 + 1 >= YEAR_DAYS:
        return col.is_not(None)
    if lo < 1:
        return or_(col >= lo + YEAR_DAYS, col <= hi)
    if hi > YEAR_DAYS:
        return or_(col >= lo, col <= hi - YEAR_DAYS)
    return col.between(lo, hi)


@dataclass
class Counts:
    """Records near a place and season: per taxon path, and in all."""

    by_path: dict[str, int]
    observations: int = 0
    occurrences: int = 0

    @property
    def total(self) -> int:
        return self.observations + self.occurrences

    def of(self, path: str) -> int:
        """The records of the taxon with ``path`` and of its descendants."""
        return sum(n for p, n in self.by_path.items() if p.startswith(path))


def count_records(session: Session, place: Place, params: NearbyParams) -> Counts:
    """Every record within the radius and season window, by taxon path (two queries)."""
    counts = Counts(by_path={})
    doy = place.day_of_year
    cell_lat = cast(OccurrenceRecord.latitude * 10, Integer)
    cell_lon = cast(OccurrenceRecord.longitude * 10, Integer)
    # Grouped by 0.1-degree cell (at most ~11 km): the distance of each cell's mean point is exact enough
    # for a 100 km radius, and the rows sent back stay few however many records the box holds.
    occ = session.execute(
        select(Taxon.path, func.avg(OccurrenceRecord.latitude), func.avg(OccurrenceRecord.longitude),
               func.count())
        .join(Taxon, Taxon.id == OccurrenceRecord.taxon_id)
        .where(_box(OccurrenceRecord.latitude, OccurrenceRecord.longitude, place, params.radius_km),
               _season(OccurrenceRecord.day_of_year, doy, params.season_days))
        .group_by(Taxon.path, cell_lat, cell_lon))
    for path, lat, lon, n in occ:
        if haversine_km(place.latitude, place.longitude, float(lat), float(lon)) <= params.radius_km:
            counts.by_path[path] = counts.by_path.get(path, 0) + int(n)
            counts.occurrences += int(n)
    obs = session.execute(
        select(Taxon.path, Observation.latitude, Observation.longitude, Observation.observed_at)
        .join(Taxon, Taxon.id == Observation.taxon_id)
        .where(Observation.status == ObservationStatus.validated.value,
               _box(Observation.latitude, Observation.longitude, place, params.radius_km)))
    for path, lat, lon, when in obs:
        if lat is None or lon is None or when is None:
            continue
        if season_distance(day_of_year(when.month, when.day), doy) > params.season_days:
            continue
        if haversine_km(place.latitude, place.longitude, lat, lon) <= params.radius_km:
            counts.by_path[path] = counts.by_path.get(path, 0) + 1
            counts.observations += 1
    return counts


def label_paths(session: Session, labels: Iterable[str]) -> dict[str, str]:
    """``{model label: taxon path}`` for the labels that are taxa (one query)."""
    wanted = list(dict.fromkeys(labels))
    if not wanted:
        return {}
    rows = session.execute(select(TaxonLabel.label, Taxon.path).join(Taxon, Taxon.id == TaxonLabel.taxon_id)
                           .where(TaxonLabel.label.in_(wanted)))
    return {label: path for label, path in rows if path}


def factors(counts: Sequence[int], total: int, classes: int, params: NearbyParams) -> list[tuple[float, float]]:
    """``[(prior, factor)]`` for candidates with ``counts`` records among ``total`` records nearby."""
    k = max(1, classes)
    out = []
    for n in counts:
        prior = (n + params.alpha) / (total + params.alpha * k)
        ratio = min(params.clip_high, max(params.clip_low, prior * k))
        out.append((prior, ratio ** params.weight))
    return out


def rerank(results: list[TaxonScore], paths: dict[str, str], counts: Counts, place: Place,
           params: NearbyParams, classes: int) -> list[TaxonScore]:
    """The suggestions with their ``nearby`` evidence, ordered by the combined score (none removed)."""
    if not results:
        return results
    n_of = [counts.of(paths[r.taxon.label]) if r.taxon.label in paths else None for r in results]
    fs = factors([n or 0 for n in n_of], counts.total, classes, params)
    raw = [r.score * (f if n is not None else 1.0) for r, (_, f), n in zip(results, fs, n_of, strict=True)]
    mass, raw_sum = sum(r.score for r in results), sum(raw)
    scale = mass / raw_sum if raw_sum > 0 else 1.0
    out = []
    for r, (prior, f), n, c in zip(results, fs, n_of, raw, strict=True):
        evidence = None
        if n is not None:
            evidence = NearbyScore(records=n, radius_km=params.radius_km, month=place.on.month,
                                   season_days=params.season_days, score=round(prior, 6), factor=round(f, 6),
                                   combined=round(c * scale, 6))
        out.append(r.model_copy(update={"nearby": evidence}))
    # Stable: equal combined scores keep the model's order; a non-taxon (no_insect) keeps its own score.
    order = sorted(range(len(out)), key=lambda i: -(raw[i] * scale))
    return [out[i] for i in order]


def apply_nearby(session: Session, response: IdentifyResponse, place: Place, params: NearbyParams,
                 classes: int) -> IdentifyResponse:
    """``response`` with every suggestion list (fused and per photo) re-ranked by the records nearby, and the
    top-level ``nearby`` block. The roll-up and every model ``score`` are left as they are."""
    labels = [r.taxon.label for r in response.results] + [
        r.taxon.label for photo in response.images for r in photo.results]
    paths = label_paths(session, [lbl for lbl in labels if lbl])
    counts = count_records(session, place, params)
    results = rerank(response.results, paths, counts, place, params, classes)
    images = [p.model_copy(update={"results": rerank(p.results, paths, counts, place, params, classes)})
              for p in response.images]
    block = NearbyPublic(used=True, latitude=place.latitude, longitude=place.longitude,
                         observed_on=place.on.isoformat(), month=place.on.month, radius_km=params.radius_km,
                         season_days=params.season_days, records=counts.total, observations=counts.observations,
                         occurrences=counts.occurrences)
    return response.model_copy(update={"results": results, "images": images, "nearby": block})


# -- request parameters --------------------------------------------------------------------------------


def parse_place(latitude: str | None, longitude: str | None, observed_at: str | None,
                today: date) -> Place | None:
    """A :class:`Place` from form fields (``None`` when no place is given); ``today`` when no date is.

    Raises:
        InvalidRequest: half a place, a coordinate that is not a number in range, a date that is not ISO 8601.
    """
    lat_text = (latitude or "").strip()
    lon_text = (longitude or "").strip()
    when_text = (observed_at or "").strip()
    if not lat_text and not lon_text:
        if when_text:
            _parse_date(when_text)  # still refused when wrong
        return None
    if not lat_text or not lon_text:
        raise InvalidRequest("send both latitude and longitude, or neither",
                             detail={"field": "longitude" if lat_text else "latitude"})
    lat = _number(lat_text, "latitude", -90.0, 90.0)
    lon = _number(lon_text, "longitude", -180.0, 180.0)
    return Place(latitude=lat, longitude=lon, on=_parse_date(when_text) if when_text else today)


def _number(text: str, field: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidRequest(f"{field} must be a number from {low:g} to {high:g}; got {text[:50]!r}",
                             detail={"field": field, "value": text[:50]})
    return value


def _parse_date(text: str) -> date:
    try:
        if len(text) <= 10:
            return date.fromisoformat(text)
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date()
    except ValueError:
        raise InvalidRequest(f"observed_at must be an ISO 8601 date or date-time (2024-06-01 or "
                             f"2024-06-01T10:00:00Z); got {text[:50]!r}",
                             detail={"field": "observed_at", "value": text[:50]}) from None


def parse_switch(value: str | None) -> bool | None:
    """``nearby=true|false`` (also 1/0, on/off, yes/no); ``None`` when not sent."""
    if value is None or not value.strip():
        return None
    v = value.strip().casefold()
    if v in ("true", "1", "on", "yes"):
        return True
    if v in ("false", "0", "off", "no"):
        return False
    raise InvalidRequest(f"nearby must be true or false; got {value[:20]!r}", detail={"field": "nearby"})
