"""The glossary: each term of the course translated once, and the catalogs held to it.

`i18n/<language>/glossary.md` is a Markdown table, one term a row:

    | English | 中文 | 检查 | 说明 |
    | all-reduce / AllReduce | 全归约 | 附英文 | ... |

English may list variants separated by " / "; matching ignores case, accepts a plural, and
treats "all-reduce", "all reduce" and "allreduce" alike. The 检查 column says what is checked:
- 附英文: a translation whose English uses the term uses the Chinese term, and the first time a
  notebook's Markdown uses the Chinese term, the English follows in parentheses, as Chinese
  technical writing does: 全归约（all-reduce）;
- 译名: only the first rule (an everyday word of the course, no parentheses);
- anything else: the row is a recommendation, not checked (an English word too common to tell).
Prose only: code, `inline code`, formulas, links' addresses and HTML tags are set aside first.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from minidp.course.translate.sameness import CODE, MATH, prose

ROW = re.compile(r"^\|(.+)\|\s*$")
PARENTHESES = re.compile(r"^[*_]*\s*[（(]([^（()）]*)[)）]")
NOT_PROSE = re.compile(r"\]\([^)]*\)|<[^>]+>|https?://\S+")


@dataclass(frozen=True)
class Term:
    english: tuple[str, ...]
    chinese: str
    check: str  # "附英文", "译名", or anything else (not checked)

    @property
    def pattern(self) -> re.Pattern:
        variants = ["[-\\s]?".join(map(re.escape, re.split(r"[-\s]+", e))) for e in self.english]
        return re.compile(rf"\b(?:{'|'.join(variants)})(?:e?s)?\b", re.I)


def read_glossary(path: Path) -> list[Term]:
    """The rows of the glossary's tables (header and separator rows skipped)."""
    terms = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = ROW.match(line.strip())
        if not row:
            continue
        cells = [c.strip() for c in row.group(1).split("|")]
        if len(cells) < 3 or cells[0] in ("English", "") or set(cells[0]) <= set("-: "):
            continue
        english = tuple(e.strip().strip("`") for e in cells[0].split(" / "))
        terms.append(Term(english, cells[1], cells[2]))
    return terms


def glossary_problems(terms: list[Term]) -> list[str]:
    """Terms translated twice, or an English term given two translations."""
    problems, seen_zh, seen_en = [], {}, {}
    for term in terms:
        for english in term.english:
            key = english.lower()
            if key in seen_en:
                problems.append(f"glossary: {english} has two translations")
            seen_en[key] = term.chinese
        if term.chinese in seen_zh:
            problems.append(f"glossary: {term.chinese} translates two terms")
        seen_zh[term.chinese] = term.english
    return problems


def text_of(kind: str, text: str) -> str:
    """The prose of a cell, where terms are looked for."""
    if kind == "code":
        return "\n".join(prose(text))
    return NOT_PROSE.sub(" ", MATH.sub(" ", CODE.sub(" ", text)))


def usage_problems(where: str, kind: str, english: str, chinese: str, terms: list[Term]) -> list:
    """An English term of `english` whose glossary translation `chinese` does not use."""
    english, chinese = text_of(kind, english), text_of(kind, chinese)
    problems = []
    # Longest first, so that "gradient descent" is not also counted as "gradient".
    for term in sorted(terms, key=lambda t: -max(map(len, t.english))):
        if term.check not in ("附英文", "译名"):
            continue
        found = term.pattern.search(english)
        if found is None:
            continue
        english = term.pattern.sub(" ", english)
        if term.chinese not in chinese:
            problems.append(f"{where}: '{found.group(0)}' is {term.chinese} (glossary)")
    return problems


def _first_use(text: str, term: Term, terms: list[Term]) -> int | None:
    """Where `term` is first used in `text` on its own, not inside a longer glossary term."""
    longer = [t.chinese for t in terms if term.chinese in t.chinese and t.chinese != term.chinese]
    covered = [m.span() for c in longer for m in re.finditer(re.escape(c), text)]
    for m in re.finditer(re.escape(term.chinese), text):
        if not any(a <= m.start() and m.end() <= b for a, b in covered):
            return m.end()
    return None


def first_use_problems(notebook: str, cells: list[tuple[str, str]], terms: list[Term]) -> list:
    """Terms whose first use in a notebook's Markdown `cells` [(id, translation)] lacks the
    English in parentheses."""
    problems = []
    for term in (t for t in terms if t.check == "附英文"):
        for cell_id, chinese in cells:
            text = text_of("markdown", chinese)
            end = _first_use(text, term, terms)
            if end is None:
                continue
            inside = PARENTHESES.match(text[end:])
            if inside is None or not term.pattern.search(inside.group(1)):
                problems.append(
                    f"{notebook} cell {cell_id}: the first {term.chinese} needs its English in "
                    f"parentheses: {term.chinese}（{term.english[0]}）"
                )
            break
    return problems
