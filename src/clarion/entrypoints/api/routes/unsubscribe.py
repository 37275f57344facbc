"""One-click unsubscribe (RFC 8058): the links in every email's ``List-Unsubscribe`` header.

No API key, no user token, no cookie: the signed token in the path is the whole credential.
A POST unsubscribes (mail clients send ``List-Unsubscribe=One-Click`` as a form); a GET only
shows a page with a button that POSTs, because link scanners and previews fetch every URL in a
message and must not unsubscribe anyone by doing so.
"""

from __future__ import annotations

import html
from typing import Annotated

from fastapi import APIRouter, Header, Path
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from clarion.domain import errors
from clarion.entrypoints.api.dependencies import App
from clarion.wire.unsubscribe import MAX_TOKEN_CHARS

router = APIRouter(prefix="/v1/unsubscribe", tags=["unsubscribe"])

Token = Annotated[str, Path(min_length=1, max_length=MAX_TOKEN_CHARS)]

# The token is a credential in the URL: no referrer carries it elsewhere, no cache keeps it.
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
_PAGE_HEADERS = _HEADERS | {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}


def _what(category: str | None) -> str:
    return f"emails about \u201c{category}\u201d" if category is not None else "all emails"


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;"
        "padding:0 1rem;line-height:1.5}button{font-size:1rem;padding:.5rem 1rem}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(document, status_code=status, headers=_PAGE_HEADERS)


def _wants_html(accept: str | None) -> bool:
    return "text/html" in (accept or "")


@router.get("/{token}", response_class=HTMLResponse)
async def confirm_page(
    app: App,
    token: Token,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """A page asking to confirm, with a button that POSTs; the GET itself changes nothing."""
    try:
        target = app.unsubscribing.target(token)
    except errors.UnknownUnsubscribeLink as exc:
        if not _wants_html(accept):
            raise
        return _page("Link not valid", f"<p>{html.escape(exc.message)}.</p>", exc.status)
    # A relative action: the form posts back to this very URL, whatever host served it.
    action = html.escape(token, quote=True)
    form = (
        f"<p>Stop receiving {html.escape(_what(target.category))}?</p>"
        f'<form method="post" action="{action}">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>'
    )
    return _page("Unsubscribe", form)


@router.post("/{token}", response_class=PlainTextResponse)
async def unsubscribe(
    app: App,
    token: Token,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """Unsubscribe as the token says (RFC 8058 one-click). Idempotent: 200 every time.

    The body (``List-Unsubscribe=One-Click``, as a form) is not required: the token alone says
    what to do, and a POST is never sent by a scanner merely reading the message.
    """
    done = await app.unsubscribing.unsubscribe(token)
    message = f"You are unsubscribed from {_what(done.category)}."
    if _wants_html(accept):
        return _page("Unsubscribed", f"<p>{html.escape(message)}</p>")
    return PlainTextResponse(message + "\n", headers=_HEADERS)
