"""Request bodies sent with ``Content-Encoding: gzip`` (RudderStack's SDKs do by default).

:func:`decode_body` inflates at most ``limit`` bytes: a small body that
inflates to gigabytes (a "zip bomb") is refused with 413 after ``limit + 1``
bytes were produced, never held in memory whole.  A body is one compressed
stream: trailing bytes or a second gzip member are refused (400 naming
``header.content-encoding``).

Only the tracking routes take compressed bodies (the SDKs send them); the
other routes refuse a ``Content-Encoding`` with 415 (:func:`refuse_encoding`).
"""

from __future__ import annotations

import zlib

from .problems import problem

__all__ = ["decode_body", "refuse_encoding"]

_CHUNK = 64 * 1024


def decode_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The request body with its content coding removed.

    ``content_encoding`` is the header's value (``None``, ``identity``,
    ``gzip``, ``x-gzip`` or ``deflate``).  Raises a 413 problem when the
    decoded body is larger than ``limit`` bytes, 415 for an unknown coding
    and 400 for a body that is not valid for its coding.
    """
    coding = (content_encoding or "").strip().lower()
    if coding in ("", "identity"):
        if len(body) > limit:
            raise _too_large(limit)
        return body
    if coding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif coding == "deflate":
        wbits = zlib.MAX_WBITS  # zlib-wrapped, as RFC 9110 defines "deflate"
    else:
        raise problem(
            415,
            "unsupported-encoding",
            "Unsupported content encoding",
            f"Content-Encoding {content_encoding!r} is not supported; send identity (none), gzip or deflate",
            errors=[{"field": "header.content-encoding", "problem": "unsupported", "fix": "use gzip or none"}],
        )
    inflater = zlib.decompressobj(wbits)
    out = bytearray()
    data = body
    try:
        while True:
            # max_length bounds what one call may produce; what it did not
            # consume waits in unconsumed_tail for the next round.
            chunk = inflater.decompress(data, min(_CHUNK, limit + 1 - len(out)))
            out += chunk
            if len(out) > limit:
                raise _too_large(limit, decoded=True)
            data = inflater.unconsumed_tail
            if not data and not chunk:
                break
            if not data and inflater.eof:
                break
        out += inflater.flush()
    except zlib.error as exc:
        raise problem(
            400,
            "invalid-encoding",
            "Invalid compressed body",
            f"the body is not valid {coding} data ({exc})",
            errors=[{"field": "body", "problem": f"not valid {coding} data", "fix": "send the compressed bytes as is"}],
        ) from None
    if len(out) > limit:
        raise _too_large(limit, decoded=True)
    if not inflater.eof:
        raise problem(
            400,
            "invalid-encoding",
            "Invalid compressed body",
            f"the {coding} stream is truncated",
            errors=[{"field": "body", "problem": "truncated stream", "fix": "send the whole compressed body"}],
        )
    if inflater.unused_data or data:
        # A second gzip member, or bytes after the stream: what they hold was
        # never checked against the limit, and no SDK sends them.
        raise problem(
            400,
            "invalid-encoding",
            "Invalid compressed body",
            f"Content-Encoding {coding}: the body has data after the end of the compressed stream "
            "(trailing bytes or a second member)",
            errors=[
                {
                    "field": "header.content-encoding",
                    "problem": f"trailing data after the {coding} stream, or more than one member",
                    "fix": "send exactly one compressed stream (one gzip member), nothing after it",
                }
            ],
        )
    return bytes(out)


def _too_large(limit: int, *, decoded: bool = False) -> Exception:
    what = "decompressed body" if decoded else "body"
    return problem(
        413,
        "too-large",
        "Request body too large",
        f"the {what} is larger than {limit} bytes; send smaller requests (split batches)",
        errors=[{"field": "body", "problem": f"{what} larger than {limit} bytes", "fix": "send smaller requests"}],
    )


def refuse_encoding(content_encoding: str | None) -> None:
    """Raise the 415 problem for a request body with a content coding (other
    than ``identity``): the JSON routes read the body as sent, and a gzip body
    read as JSON would be a confusing 400 (or, worse, silently ignored)."""
    coding = (content_encoding or "").strip().lower()
    if coding in ("", "identity"):
        return
    raise problem(
        415,
        "unsupported-encoding",
        "Unsupported content encoding",
        f"Content-Encoding {content_encoding!r} is not supported on this route: send the body uncompressed "
        "(only the tracking routes /v1/* take gzip)",
        errors=[
            {
                "field": "header.content-encoding",
                "problem": "compressed bodies are not taken here",
                "fix": "send the body uncompressed, without Content-Encoding",
            }
        ],
    )
