"""
What every request to the reward server passes before any route sees it: the API key (when the server has one) and
the body size limit. A pure ASGI middleware, so that a request without the key is refused before its body is read.
"""

import hmac
import json
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException


API_KEY_HEADER = "x-api-key"
API_KEY_QUERY = "api_key"


def presented_key(scope, headers: Headers) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>`, `X-API-Key: <key>`, or `?api_key=<key>` (for
    clients that cannot send headers: OpenRLHF posts to the URL it is given as it is)."""
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if headers.get(API_KEY_HEADER):
        return headers[API_KEY_HEADER]
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(API_KEY_QUERY)
    return values[0] if values else None


class RequestGuard:
    """
    Refuses a request with `401` when `api_key` is set and the request does not carry it, and with `413` when its
    body is larger than `max_body_bytes` (declared by `Content-Length`, or counted as it streams in).
    """

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        if self.api_key is not None:
            key = presented_key(scope, headers)
            if key is None:
                return await _refuse(
                    send,
                    401,
                    "Missing API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>` (or `?api_key=<key>` "
                    "in the URL, for OpenRLHF).",
                )
            # Constant time: how far a wrong key matches must not show in the response time.
            if not hmac.compare_digest(key.encode(), self.api_key):
                return await _refuse(send, 401, "Wrong API key.")
        too_large = (
            f"Request body larger than this server's limit of {self.max_body_bytes} bytes (--max_body_bytes); "
            "split the request."
        )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return await _refuse(send, 413, too_large)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:  # a chunked body, with no Content-Length to refuse it by
                    raise HTTPException(413, too_large)
            return message

        await self.app(scope, limited_receive, send)


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
