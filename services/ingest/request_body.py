"""Reading a request body under a size limit, with optional bounded gzip.

Pure (zlib only): the HTTP adapter feeds the body stream chunk by chunk into a
:class:`BodyReader`, which refuses as soon as the *uncompressed* size passes the
limit. So an over-limit body is never read whole, and a gzip bomb (a few KiB that
inflate to gigabytes) costs at most ``limit`` bytes of memory.
"""

from __future__ import annotations

import zlib

GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip header and trailer, not raw deflate


class BodyTooLarge(Exception):
    """The body (uncompressed) is over the limit: answer 413."""


class BodyUnreadable(Exception):
    """The body claims an encoding it does not have (broken gzip): answer 400."""


class BodyReader:
    """Accumulates a request body; :meth:`feed` each chunk, then :meth:`finish`.

    ``gzip``: the chunks are a gzip stream; the limit applies to the inflated bytes.
    """

    def __init__(self, limit: int, *, gzip: bool = False) -> None:
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._inflater = zlib.decompressobj(GZIP_WBITS) if gzip else None

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.limit:
            raise BodyTooLarge(self._too_large())
        if data:
            self._parts.append(data)

    def _too_large(self) -> str:
        kind = "uncompressed body" if self._inflater else "body"
        return (
            f"the {kind} is larger than the limit of {self.limit} bytes ({self.limit // 1024} KiB)"
        )

    def feed(self, chunk: bytes) -> None:
        if self._inflater is None:
            self._keep(chunk)
            return
        try:
            # max_length bounds what one call may inflate; the rest waits in
            # unconsumed_tail, so memory stays within the limit.
            budget = self.limit - self._size + 1
            self._keep(self._inflater.decompress(chunk, budget))
            while self._inflater.unconsumed_tail:
                budget = self.limit - self._size + 1
                self._keep(self._inflater.decompress(self._inflater.unconsumed_tail, budget))
        except zlib.error as exc:
            raise BodyUnreadable(f"the body is not valid gzip: {exc}") from exc

    def finish(self) -> bytes:
        if self._inflater is not None:
            try:
                self._keep(self._inflater.flush())
            except zlib.error as exc:
                raise BodyUnreadable(f"the body is not valid gzip: {exc}") from exc
            if not self._inflater.eof:
                raise BodyUnreadable("the body is not valid gzip: the stream is truncated")
        return b"".join(self._parts)


def read_all(chunks: list[bytes], limit: int, *, gzip: bool = False) -> bytes:
    """Convenience for tests and small callers: the whole body from ``chunks``."""
    reader = BodyReader(limit, gzip=gzip)
    for c in chunks:
        reader.feed(c)
    return reader.finish()
