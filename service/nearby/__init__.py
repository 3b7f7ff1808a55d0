"""Where and when as evidence (iNaturalist's "expected nearby").

- :mod:`service.nearby.occurrences`: import, list and delete occurrence downloads (GBIF Darwin Core Archives),
  refused whole when malformed, too large or holding a bad coordinate;
- :mod:`service.nearby.evidence`: for a place and a date, how many records of each candidate taxon lie within
  a radius and a season window, and the bounded re-ranking of the model's suggestions that follows from it.

Imported by :mod:`service.api` and :mod:`service.cli`; imports ``observations`` (taxa), ``inference.results``
(the response models it fills in), ``store`` and ``core``.
"""
