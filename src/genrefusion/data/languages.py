"""Which languages a text encoder was trained for, which writing systems (scripts) those use, and whether a plot is
written in one of them.

A text encoder only understands the scripts its tokenizer and training data covered: an English-only model reads a
Korean plot as a row of unknown tokens and still returns a confident-looking vector, so its prediction is noise that
nothing else would reveal. Encoders declare their languages (ISO 639-1 codes, `encoders.encoder_languages`); this
module maps them to scripts, finds the script a plot is mostly written in, and words the warning a prediction
carries when the two do not meet (`script_warnings`). Plain Python (the `regex` module for Unicode script
properties, which the standard library's `re` lacks), so the CLI and the service can use it without torch.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

ENGLISH = ("en",)

# XLM-RoBERTa's 100 languages (Conneau et al. 2020, Table 6), which multilingual-e5 and xlm-roberta-base were
# pre-trained on (the romanised variants of hi, bn, ta, te, ur, my are Latin-script text in the languages below).
XLMR_LANGUAGES = tuple(
    "af am ar as az be bg bn br bs ca cs cy da de el en eo es et eu fa fi fr fy ga gd gl gu ha he hi hr hu hy id is "
    "it ja jv ka kk km kn ko ku ky la lo lt lv mg mk ml mn mr ms my ne nl no om or pa pl ps pt ro ru sa sd si sk sl "
    "so sq sr su sv sw ta te th tl tr ug uk ur uz vi xh yi zh".split())
# Google's universal-sentence-encoder-multilingual v3 (its model card: 16 languages).
USE_LANGUAGES = ("ar", "de", "en", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt", "ru", "th", "tr", "zh", "zh-TW")
# sentence-transformers' paraphrase-multilingual-*-v2 models (their model card: 50+ languages).
PARAPHRASE_LANGUAGES = tuple(
    "ar bg ca cs da de el en es et fa fi fr fr-ca gl gu he hi hr hu hy id it ja ka ko ku lt lv mk mn mr ms my nb nl "
    "pl pt pt-br ro ru sk sl sq sr sv th tr uk ur vi zh-CN zh-TW".split())

# Script names are the Unicode Script property values the `regex` module knows (\p{Script=...}).
_SCRIPTS_OF: dict[str, tuple[str, ...]] = {
    **{lang: ("Latin",) for lang in (
        "af az br bs ca cs cy da de en eo es et eu fi fr fy ga gd gl ha hr hu id is it jv la lt lv mg ms nb nl no om "
        "pl pt ro sk sl so sq su sv sw tl tr uz vi xh").split()},
    **{lang: ("Cyrillic",) for lang in "be bg kk ky mk mn ru uk".split()},
    "sr": ("Cyrillic", "Latin"), "ku": ("Latin", "Arabic"),
    **{lang: ("Arabic",) for lang in "ar fa ps sd ug ur".split()},
    "he": ("Hebrew",), "yi": ("Hebrew",), "el": ("Greek",), "hy": ("Armenian",), "ka": ("Georgian",),
    **{lang: ("Devanagari",) for lang in "hi mr ne sa".split()},
    "bn": ("Bengali",), "as": ("Bengali",), "pa": ("Gurmukhi",), "gu": ("Gujarati",), "or": ("Oriya",),
    "ta": ("Tamil",), "te": ("Telugu",), "kn": ("Kannada",), "ml": ("Malayalam",), "si": ("Sinhala",),
    "th": ("Thai",), "lo": ("Lao",), "km": ("Khmer",), "my": ("Myanmar",), "am": ("Ethiopic",),
    "ko": ("Hangul", "Han"),  # Korean is written in Hangul, with the occasional Hanja
    "ja": ("Hiragana", "Katakana", "Han"),
    "zh": ("Han",),
}
# Every script some language above is written in: what a plot's letters are sorted into.
KNOWN_SCRIPTS = tuple(dict.fromkeys(s for scripts in _SCRIPTS_OF.values() for s in scripts))

MIN_LETTERS = 8  # a plot with fewer letters than this is not judged (a title, a number, an emoji)
UNREADABLE_SHARE = 0.5  # "mostly": more than half of its letters in scripts the encoder cannot read


def _base(lang: str) -> str:
    return lang.split("-")[0].lower()  # zh-TW, pt-br, fr-ca: the script follows the language


def scripts_of(languages: Iterable[str]) -> list[str]:
    """The scripts `languages` are written in, in a stable order; unknown codes add nothing."""
    return list(dict.fromkeys(s for lang in languages for s in _SCRIPTS_OF.get(_base(lang), ())))


@lru_cache(maxsize=1)
def _letter_pattern():
    import regex

    # One alternative per script, in KNOWN_SCRIPTS order, so a match's group index names its script; any other
    # letter (a script no listed language uses) falls to the last group. Letters shared by every script (Common:
    # the katakana-hiragana prolonged sound mark, Inherited: combining marks' script) belong to none.
    groups = "".join(f"(\\p{{Script={s}}})|" for s in KNOWN_SCRIPTS)
    return regex.compile(f"(?:{groups}([\\p{{L}}--[\\p{{Script=Common}}\\p{{Script=Inherited}}]]))", regex.V1)


def letter_scripts(text: str) -> Counter:
    """How many letters of `text` each script has ("Other" for scripts no listed language uses). Digits,
    punctuation, spaces and symbols are not letters and are not counted."""
    counts: Counter = Counter()
    names = (*KNOWN_SCRIPTS, "Other")
    for m in _letter_pattern().finditer(text):
        counts[names[m.lastindex - 1]] += 1
    return counts


def unreadable_share(text: str, languages: Iterable[str]) -> tuple[float, str | None, int]:
    """(share of the letters of `text` in scripts none of `languages` is written in, the most frequent such script,
    number of letters)."""
    readable = set(scripts_of(languages))
    counts = letter_scripts(text)
    total = sum(counts.values())
    other = Counter({s: n for s, n in counts.items() if s not in readable})
    if not total or not other:
        return 0.0, None, total
    return sum(other.values()) / total, other.most_common(1)[0][0], total


def script_warnings(plot: str | None, languages: Iterable[str] | None, encoder: str,
                    field: str = "plot") -> list[dict[str, str]]:
    """The warnings a prediction from `plot` carries: one when the plot is mostly written in a script that none of
    the languages the text encoder was trained for uses (e.g. a Korean plot into an English-only model). Nothing
    when the plot is absent or very short, or when the encoder declares no languages (a local folder: unknown)."""
    if plot is None or languages is None:
        return []
    languages = list(languages)
    share, script, letters = unreadable_share(plot, languages)
    if letters < MIN_LETTERS or share <= UNREADABLE_SHARE:
        return []
    readable = ", ".join(scripts_of(languages)) or "none"
    langs = ", ".join(languages) if len(languages) <= 6 else f"{len(languages)} languages"
    return [{
        "code": "unreadable_script", "field": field,
        "message": (f"{field}: {share:.0%} of its letters are in the {script} script, which the text encoder "
                    f"{encoder!r} cannot read (trained for {langs}: {readable} script); the genres predicted from "
                    "it are unreliable. Use a model with a multilingual text encoder (e.g. multilingual-e5-small) "
                    "or translate the plot."),
    }]
