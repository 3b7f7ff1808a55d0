"""The language of an answer: ``Accept-Language`` → one of the service's languages (English when nothing fits).

Routes whose answers carry taxa take :data:`LanguageDep`; the language they used is then announced by
:class:`LanguageHeadersMiddleware` (``Content-Language``, and ``Vary: Accept-Language`` for caches). A header
that cannot be read is English, never an error.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.languages import pick_language

STATE_KEY = "pollinid_language"


def answer_language(request: Request) -> str:
    """The best of the service's languages for this request's ``Accept-Language`` (recorded for the headers)."""
    language = pick_language(request.headers.get("accept-language"))
    request.scope.setdefault("state", {})[STATE_KEY] = language
    return language


LanguageDep = Annotated[str, Depends(answer_language)]


class LanguageHeadersMiddleware:
    """``Content-Language`` and ``Vary: Accept-Language`` on the answers whose route chose a language."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_language(message: Message) -> None:
            if message["type"] == "http.response.start":
                state = scope.get("state") or {}
                language = state.get(STATE_KEY) if isinstance(state, dict) else None
                if language:
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-language"]
                    vary = [v for k, v in headers if k.lower() == b"vary"]
                    if not any(b"accept-language" in v.lower() for v in vary):
                        headers.append((b"vary", b"Accept-Language"))
                    headers.append((b"content-language", language.encode("ascii")))
                    message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_language)
