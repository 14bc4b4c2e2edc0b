"""The course's own words in the learner's language: checker verdicts and hints, figure titles
and axis labels, widget controls.

    from minidp.course.i18n import set_language
    set_language("zh")        # what the first code cell of every notebooks/zh/ notebook does

English is the default and the source: a message is written in English inside `_()` where it is
shown, and `_()` looks it up in the catalog of the current language, shipped in the package as
`minidp/course/locale/<language>/LC_MESSAGES/minidp.po` (gettext's layout, read with polib). A
message with values is a template, translated first and filled in after:
`_("with {p} ranks ...").format(p=p)`, so that the translation may put the values where Chinese
wants them. A message that must exist before the language is known (a module-level constant, a
default argument) is marked with `N_()` and translated by `_()` where it is shown.
`python -m minidp.course.translate update zh` collects every `_("...")` and `N_("...")` of
minidp/course into the catalog; `check zh` fails on one left untranslated.

The language is one setting of the kernel (like gettext's), inherited by the worker processes
that `minidp.launch` forks, so checks that run on workers speak it too.
"""

import functools
import re
from pathlib import Path

import polib

LANGUAGES = ("en", "zh")
DEFAULT = "en"
LOCALE = Path(__file__).resolve().parent / "locale"
DOMAIN = "minidp"
# Fonts that carry Simplified Chinese, most common first (Linux, then Windows and macOS).
CJK_FONTS = (
    "Noto Sans CJK SC",
    "Source Han Sans SC",
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "Microsoft YaHei",
    "SimHei",
    "PingFang SC",
    "Heiti SC",
    "Hiragino Sans GB",
    "Arial Unicode MS",
)
CJK_FONT_FILES = re.compile(r"wqy|NotoSans(Mono)?CJK|NotoSansSC|SourceHanSans|msyh|simhei", re.I)

# The one mutable setting, read by every _() call (and matplotlib's fonts before Chinese).
_current: dict = {"language": DEFAULT}


def set_language(language: str) -> None:
    """Show the course's messages in `language` ("en" or "zh") from now on, in this kernel."""
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}: choose one of {', '.join(LANGUAGES)}")
    _current["language"] = language
    if language == "zh":
        _use_cjk_font()
    elif "font.family" in _current:  # back to the fonts matplotlib had before
        import matplotlib

        matplotlib.rcParams["font.family"] = _current.pop("font.family")


def get_language() -> str:
    """The language messages are shown in now."""
    return _current["language"]


def catalog_path(language: str) -> Path:
    """Where the package's catalog of `language` lives (inside the installed package)."""
    return LOCALE / language / "LC_MESSAGES" / f"{DOMAIN}.po"


@functools.cache
def _catalog(language: str) -> dict[str, str]:
    """{English message: translation} of the finished entries; fuzzy ones are not used."""
    path = catalog_path(language)
    if not path.exists():
        return {}
    return {e.msgid: e.msgstr for e in polib.pofile(str(path)) if e.translated()}


def _(message: str) -> str:
    """`message` in the current language; the English itself when it has no translation."""
    language = _current["language"]
    if language == DEFAULT:
        return message
    return _catalog(language).get(message, message)


def N_(message: str) -> str:
    """Mark `message` for the catalog without translating it yet (gettext's gettext_noop)."""
    return message


def _use_cjk_font() -> str | None:
    """Let matplotlib draw Chinese: a CJK font after the default one, used glyph by glyph.

    Latin letters and digits keep the course's usual font; only the characters it lacks come
    from the CJK font. Returns the font's name, or None (with one line saying what to install).
    """
    import matplotlib
    from matplotlib import font_manager

    known = {f.name for f in font_manager.fontManager.ttflist}
    if not known.intersection(CJK_FONTS):
        # Installed after matplotlib cached its font list: add the files themselves.
        for path in font_manager.findSystemFonts():
            if CJK_FONT_FILES.search(Path(path).name):
                font_manager.fontManager.addfont(path)
        known = {f.name for f in font_manager.fontManager.ttflist}
    found = [name for name in CJK_FONTS if name in known]
    if not found:
        print(
            "minidp: no Chinese font found, so figures show boxes for Chinese characters; "
            "install one, e.g. `apt-get install fonts-wqy-microhei` (Debian, Ubuntu)"
        )
        return None
    family = matplotlib.rcParams["font.family"]
    _current.setdefault("font.family", family)
    family = [family] if isinstance(family, str) else list(family)
    matplotlib.rcParams["font.family"] = [f for f in family if f not in CJK_FONTS] + found[:1]
    return found[0]
