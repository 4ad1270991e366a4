"""gateway.forwarding.BodyFraming: where a body ends in a byte stream, however the bytes are split."""

from __future__ import annotations

import pytest

from gateway.forwarding import BodyFraming, _framing

CHUNKED = b"5\r\nhello\r\n10;name=value\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n"


def _feed_in_pieces(framing: BodyFraming, data: bytes, size: int) -> int:
    taken = 0
    for at in range(0, len(data), size):
        piece = data[at : at + size]
        used = framing.feed(piece)
        taken += used
        if used < len(piece):
            break
    return taken


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_chunked_body_ends_after_the_trailers_whatever_the_split(size: int) -> None:
    framing = BodyFraming(None, chunked=True)
    assert _feed_in_pieces(framing, CHUNKED + b"GET / HTTP/1.1\r\n", size) == len(CHUNKED)
    assert framing.done


def test_length_body_takes_exactly_its_length() -> None:
    framing = BodyFraming(5, chunked=False)
    assert (framing.feed(b"abc"), framing.remaining) == (3, 2)
    assert (framing.feed(b"deNEXT"), framing.remaining) == (2, 0)
    assert framing.done
    assert framing.feed(b"more") == 0


def test_no_length_and_not_chunked_reads_until_close() -> None:
    framing = BodyFraming(None, chunked=False)
    assert framing.until_close and framing.feed(b"abc") == 3 and not framing.done


def test_bad_chunk_size_is_refused() -> None:
    with pytest.raises(ValueError):
        BodyFraming(None, chunked=True).feed(b"zz\r\n")


def test_framing_of_headers() -> None:
    assert _framing([(b"content-length", b"12")], no_body=False).remaining == 12  # type: ignore[union-attr]
    assert _framing([(b"transfer-encoding", b"chunked")], no_body=False).chunked  # type: ignore[union-attr]
    assert _framing([(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], no_body=False) is None
    assert _framing([(b"content-length", b"5"), (b"content-length", b"6")], no_body=False) is None
    assert _framing([(b"transfer-encoding", b"gzip, chunked")], no_body=False) is None
    assert _framing([(b"content-length", b"-1")], no_body=False) is None
    assert _framing([(b"content-length", b"5")], no_body=True).done  # type: ignore[union-attr]
