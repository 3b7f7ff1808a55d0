"""Request and response classes (pydantic), one module per resource family.

ORM classes live in :mod:`service.store.tables`; "model" always means the ML model.
"""
