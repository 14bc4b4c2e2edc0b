"""The package's own messages: every `_("...")` and `N_("...")` of minidp/course, collected
into the catalog that minidp.course.i18n reads (minidp/course/locale/<language>/LC_MESSAGES/
minidp.po, shipped in the wheel), and checked: each translated, none fuzzy, each keeping the
template's `{placeholders}`.

A message is keyed by its English. When a message's English changes, the entry of its old
English becomes obsolete; if it is close to the new one (difflib's ratio >= 0.8), its
translation is carried over, fuzzy, with the old English as `#| msgid`, for review.
"""

import ast
import difflib
import re
import string
from pathlib import Path

import polib

from minidp.course import i18n
from minidp.course.translate.catalog import WRAP, load
from minidp.course.translate.edition import LOCALES
from minidp.course.translate.glossary import Term, usage_problems

PACKAGE = Path(i18n.__file__).resolve().parent  # minidp/course
MARKERS = ("_", "N_")
FIELD = re.compile(r"\{[^{}]*\}")
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def extract(package: Path = PACKAGE) -> dict[str, list[str]]:
    """{message: [files that use it]} for the literal arguments of _() and N_()."""
    found: dict[str, list[str]] = {}
    for path in sorted(package.rglob("*.py")):
        name = path.relative_to(package.parent.parent).as_posix()  # minidp/course/...
        calls = [
            node
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in MARKERS
            and len(node.args) == 1
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ]
        for call in sorted(calls, key=lambda c: (c.lineno, c.col_offset)):  # in reading order
            files = found.setdefault(call.args[0].value, [])
            if name not in files:
                files.append(name)
    return found


def _new(language: str) -> polib.POFile:
    po = polib.POFile(wrapwidth=WRAP, encoding="utf-8")
    po.header = "Messages of minidp's course package: `python -m minidp.course.translate update`."
    po.metadata = {
        "Project-Id-Version": "minidp",
        "Language": LOCALES[language],
        "MIME-Version": "1.0",
        "Content-Type": "text/plain; charset=UTF-8",
        "Content-Transfer-Encoding": "8bit",
    }
    return po


def update_messages(language: str, package: Path = PACKAGE) -> Path:
    """Merge the package's catalog of `language` with the messages the code uses now."""
    path = _catalog_in(package, language)
    old = load(path) if path.exists() else _new(language)
    entries = {e.msgid: e for e in old}
    po = polib.POFile(wrapwidth=WRAP, encoding="utf-8")
    po.header, po.metadata = old.header, old.metadata
    for message, files in extract(package).items():
        entry = entries.pop(message, None)
        if entry is None:
            entry = polib.POEntry(msgid=message, msgstr="")
            _carry_over(entry, entries)
        entry.obsolete = False
        entry.occurrences = [(f, "") for f in files]
        po.append(entry)
    for entry in entries.values():
        if entry.msgstr:
            entry.obsolete, entry.occurrences = True, []
            po.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    po.save(str(path))
    return path


def _carry_over(entry: polib.POEntry, old: dict[str, polib.POEntry]) -> None:
    """Give a new message the translation of a close old one, fuzzy (msgmerge's guess)."""
    translated = [m for m, e in old.items() if e.msgstr and not e.fuzzy]
    close = difflib.get_close_matches(entry.msgid, translated, n=1, cutoff=0.8)
    if close:
        entry.msgstr = old[close[0]].msgstr
        entry.previous_msgid = close[0]
        entry.flags.append("fuzzy")


def _catalog_in(package: Path, language: str) -> Path:
    """Where minidp.course.i18n.catalog_path(language) is, for the package at `package`."""
    return package / "locale" / language / "LC_MESSAGES" / f"{i18n.DOMAIN}.po"


def _fields(template: str) -> list[str]:
    """The template's placeholders with their formats: ["{p}", "{t:g}"]."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:  # not a template: a lone brace
        return []
    return sorted(f"{{{f}{':' + spec if spec else ''}}}" for _, f, spec, _ in parsed if f)


def message_problems(
    language: str, package: Path = PACKAGE, terms: list[Term] | None = None
) -> list[str]:
    """One line per message of the package that lacks a finished, well-formed translation, or
    (given the glossary's `terms`) that translates a term otherwise than the glossary."""
    path = _catalog_in(package, language)
    catalog = {e.msgid: e for e in load(path) if not e.obsolete} if path.exists() else {}
    problems = []
    for message, files in extract(package).items():
        where = f"{files[0]}: message {message!r}"
        entry = catalog.get(message)
        if entry is None:
            problems.append(f"{where} is not in the catalog: run update {language}")
        elif entry.fuzzy:
            problems.append(f"{where} changed since it was translated (fuzzy): revise it")
        elif not entry.msgstr:
            problems.append(f"{where} is not translated yet")
        elif _fields(message) != _fields(entry.msgstr):
            problems.append(f"{where}: the translation must keep {', '.join(_fields(message))}")
        elif "$" in entry.msgstr and CJK.search(entry.msgstr):
            # matplotlib's mathtext has no font fallback: Chinese in a $...$ label shows boxes.
            problems.append(f"{where}: keep Chinese out of a label with $...$ in it")
        elif terms is not None:
            # Placeholders are names, not words: "{hint}" is not the term "hint".
            english, chinese = (FIELD.sub(" ", t) for t in (message, entry.msgstr))
            problems += usage_problems(where, "markdown", english, chinese, terms)
    return problems
