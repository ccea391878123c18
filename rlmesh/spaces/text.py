"""Text: strings of a bounded length, from an optional set of characters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from .._bridge import IDENTITY, Bridge
from ._base import Space
from ._checks import _MAX_CHARSET
from ._spec import SpaceSpec, _canonical_charset, _text_details

# Gymnasium's default Text charset, sorted the way gymnasium sorts a set charset,
# so that unrestricted Text spaces sample the characters gymnasium would.
_ALPHANUMERIC = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class Text(Space[str], kind="text"):
    """Strings of ``min_length`` to ``max_length`` characters.

    Args:
        max_length: the longest string, in characters.
        min_length: the shortest string, in characters.
        charset: the allowed characters (a string or a set of characters);
            None or "" means any character. Samples of an unrestricted space use
            Gymnasium's default alphanumeric characters; its Gymnasium twin
            allows ``string.printable`` (see :func:`to_gymnasium_space`).
        bridge: converts samples and values for an array library.

    Raises:
        TypeError: a length is not an int, or the charset is not a string or
            an iterable of characters.
        ValueError: negative or inverted lengths, or a length or charset over the limits.
    """

    def __init__(
        self,
        max_length: int,
        min_length: int = 1,
        charset: str | Iterable[str] | None = None,
        *,
        bridge: Bridge = IDENTITY,
    ) -> None:
        if charset is None:
            chars = ""
        else:
            if not isinstance(charset, (str, Iterable)):
                raise TypeError(
                    f"charset must be a string or a set of characters, got {type(charset).__name__}"
                )
            items = charset if isinstance(charset, str) else list(charset)
            if len(items) > _MAX_CHARSET:
                raise ValueError(f"charset is longer than {_MAX_CHARSET} characters")
            chars = _canonical_charset(items, "charset", False)
        details = _text_details(min_length, max_length, chars, "", False)
        self._setup(SpaceSpec._new("text", (), "str", details), bridge)

    @property
    def max_length(self) -> int:
        """The longest string, in characters."""
        return cast(int, self._spec._get("max_length"))

    @property
    def min_length(self) -> int:
        """The shortest string, in characters."""
        return cast(int, self._spec._get("min_length"))

    @property
    def charset(self) -> str:
        """The allowed characters, sorted; "" when unrestricted."""
        return cast(str, self._spec._get("charset"))

    def _sample_wire(self) -> str:
        chars = self.charset or _ALPHANUMERIC
        rng = self._rng
        length = rng.randint(self.min_length, self.max_length)
        return "".join(chars[rng.randrange(len(chars))] for _ in range(length))

    def _contains_wire(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        if not self.min_length <= len(value) <= self.max_length:
            return False
        charset = self.charset
        return not charset or all(ch in charset for ch in value)

    def __repr__(self) -> str:
        extra = f", charset={self.charset!r}" if self.charset else ""
        return f"Text(max_length={self.max_length}, min_length={self.min_length}{extra})"
