"""Domain errors: what went wrong, with the HTTP status and the stable code it is answered with.

Code outside the HTTP layer raises these (training too: this module imports no web framework);
:mod:`service.api.errors` turns each into a JSON body ``{"error": {"code", "message", "detail"}}``.
"""

from __future__ import annotations

from typing import Any


class PollinidError(Exception):
    """Base of every error the service turns into a 4xx/5xx JSON answer."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class InvalidImage(PollinidError):
    status_code = 422
    code = "invalid_image"


class UnsupportedMediaType(PollinidError):
    status_code = 415
    code = "unsupported_media_type"


class PayloadTooLarge(PollinidError):
    status_code = 413
    code = "payload_too_large"


class InvalidRequest(PollinidError):
    status_code = 422
    code = "invalid_request"


class NotFound(PollinidError):
    status_code = 404
    code = "not_found"


class Conflict(PollinidError):
    status_code = 409
    code = "conflict"


class Unauthorized(PollinidError):
    status_code = 401
    code = "unauthorized"


class Forbidden(PollinidError):
    status_code = 403
    code = "forbidden"


class ModelUnavailable(PollinidError):
    status_code = 503
    code = "model_unavailable"


class InvalidModel(PollinidError):
    """A model folder that cannot be served (corrupt ONNX, card and graph disagree, ...)."""

    status_code = 422
    code = "invalid_model"
