"""What counts as no text at all: a plot (or title) with no visible character is empty, however long it is.

`"   "` was always empty; so is a plot made only of invisible characters, such as U+200B ZERO WIDTH SPACE,
U+2060 WORD JOINER, a byte-order mark or control characters, which an encoder would otherwise read as a confident
"plot". A character is invisible when it is whitespace (`str.isspace`), a control or format character (Unicode
categories Cc and Cf: zero-width spaces and joiners, bidi marks, soft hyphen, the tag characters U+E0000-E007F),
a separator (Zs, Zl, Zp), or one of the other default-ignorable or blank-looking characters listed in `_EXTRA`
(variation selectors, the Hangul fillers, U+2800 BRAILLE PATTERN BLANK). Unpaired surrogates are not invisible
here: they are refused as "not valid Unicode text" by the checks that read them.

Used by the data readers (records.py: such a plot is a missing plot) and by the checks on a prediction's input
(inference/inputs.py: such a plot is refused as empty, like "   "). Standard library only.
"""
from __future__ import annotations

import unicodedata
from functools import cache

_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
# Default_Ignorable_Code_Point characters outside Cf, and characters that render as nothing at all.
_EXTRA_RANGES = ((0x034F, 0x034F),  # COMBINING GRAPHEME JOINER
                 (0x115F, 0x1160),  # HANGUL CHOSEONG / JUNGSEONG FILLER
                 (0x17B4, 0x17B5),  # KHMER VOWEL INHERENT AQ / AA
                 (0x180B, 0x180F),  # MONGOLIAN FREE VARIATION SELECTORS (and the vowel separator)
                 (0x2800, 0x2800),  # BRAILLE PATTERN BLANK
                 (0x3164, 0x3164),  # HANGUL FILLER
                 (0xFE00, 0xFE0F),  # VARIATION SELECTORS
                 (0xFFA0, 0xFFA0),  # HALFWIDTH HANGUL FILLER
                 (0xE0000, 0xE0FFF))  # tags, variation selectors supplement, and the rest of that default-ignorable block
_EXTRA = frozenset(chr(c) for lo, hi in _EXTRA_RANGES if hi < 0x10000 for c in range(lo, hi + 1))


def is_invisible(c: str) -> bool:
    """Whether the one character `c` shows nothing (see the module docstring)."""
    return (c.isspace() or unicodedata.category(c) in _CATEGORIES or c in _EXTRA
            or "\U000e0000" <= c <= "\U000e0fff")


def is_blank(text: str) -> bool:
    """Whether `text` has no visible character: empty, whitespace, or only invisible characters. Stops at the
    first visible character, so it costs next to nothing on real text."""
    return all(map(is_invisible, text))


@cache
def not_blank_pattern() -> str:
    """A regular expression that finds a visible character: a character class of every invisible character of
    the Basic Multilingual Plane, spelled as \\uXXXX escapes (ranges where they are consecutive), so that Python's
    `re`, the Rust `regex` crate (pydantic) and ECMA-262 (JSON Schema readers) all read it the same way.

    Invisible characters above U+FFFF (the tag characters) cannot be written so that an ECMA-262 engine without
    the `u` flag reads them (it sees surrogate pairs), so the pattern accepts a text made only of those; the
    server's check (is_blank) still refuses it, with the same status (422)."""
    codes = [c for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF and is_invisible(chr(c))]
    parts, start = [], None
    for i, c in enumerate(codes):
        if start is None:
            start = c
        if i + 1 == len(codes) or codes[i + 1] != c + 1:
            parts.append(f"\\u{start:04x}" if start == c else f"\\u{start:04x}-\\u{c:04x}")
            start = None
    return f"[^{''.join(parts)}]"
