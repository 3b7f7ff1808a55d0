"""The specialists' queue: what it answers besides its items, and a specialist's day."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class ValidationStatsPublic(BaseModel):
    """How many observations this specialist identified today (since local midnight in ``tz``)."""

    tz: str = Field(description="the IANA time zone the day is counted in")
    since: datetime = Field(description="local midnight that starts the day (with its UTC offset)")
    until: datetime = Field(description="local midnight that ends it")
    identified_today: int = Field(description="observations identified today (each counted once: a newer "
                                              "identification of the same observation replaces the older one; a "
                                              "withdrawn one does not count)")
    agreed: int = Field(description="of which 'agree'")
    corrected: int = Field(description="of which 'propose' (a taxon other than the one shown, or finer)")
    cannot_tell: int
    not_an_insect: int
