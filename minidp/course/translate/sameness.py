"""What a translation must leave alone: the program of a code cell, the formulas of Markdown.

A translated code cell may change its prose and nothing else. Prose is: comments, docstrings,
the text of strings given to print() (plain, f-strings, "...".format), and assert messages.
Everything else, every identifier-like string among those too ("00.mean", "cpu", "fc1.weight")
and every value inside an f-string, must give the same syntax tree as the English. A comment
that is a `# BEGIN SOLUTION` or `### BEGIN HIDDEN TESTS` marker, or an IPython magic line, is
not prose: student versions and grading read them, so they stay exactly as written.
"""

import ast
import io
import re
import tokenize
from collections import Counter

MAGIC = re.compile(r"^(\s*)[%!].*$", re.M)  # %matplotlib inline, !pip ..., %%time
MARKER = re.compile(r"^\s*#+\s*(BEGIN|END) (SOLUTION|HIDDEN TESTS)\b")  # as assignments reads
PRAGMA = re.compile(r"^#\s*(noqa|type:|fmt:|pragma)")
IDENTIFIER_LIKE = re.compile(r"[\w.:/\-]*", re.ASCII)  # fullmatch: data, never prose
LETTER = re.compile(r"[^\W\d_]")
PLACEHOLDER = "<prose>"
# The formulas of Markdown: display math first, then inline; code is removed before looking.
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
MATH = re.compile(r"\$\$(.+?)\$\$|(?<![\\$])\$([^$\s](?:[^$]*?[^$\s\\])?)\$", re.S)


def _python(source: str) -> str:
    """The source with IPython magics turned into `pass`, so that ast and tokenize read it."""
    return MAGIC.sub(lambda m: m.group(1) + "pass", source)


def _is_prose(text: str) -> bool:
    return bool(LETTER.search(text)) and not IDENTIFIER_LIKE.fullmatch(text)


class _SetProseAside(ast.NodeTransformer):
    """Replaces each piece of prose by one placeholder and collects the pieces in `prose`."""

    def __init__(self) -> None:
        self.prose: list[str] = []

    def _docstring(self, node):
        first = node.body[0] if node.body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            if isinstance(first.value.value, str):
                self.prose.append(first.value.value)
                first.value = ast.Constant(PLACEHOLDER)
        return self.generic_visit(node)

    visit_Module = visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _docstring

    def visit_Call(self, node: ast.Call) -> ast.Call:
        node = self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id == "print":
            node.args = [self._text(arg) for arg in node.args]
        return node

    def visit_Assert(self, node: ast.Assert) -> ast.Assert:
        node = self.generic_visit(node)
        if node.msg is not None:
            node.msg = self._text(node.msg)
        return node

    def _text(self, node: ast.expr) -> ast.expr:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if not _is_prose(node.value):
                return node  # an identifier-like string is data: it must not change
            self.prose.append(node.value)
            return ast.Constant(PLACEHOLDER)
        if isinstance(node, ast.JoinedStr):
            # The words may move around the values (Chinese orders a sentence differently);
            # the values themselves, with their formats, must all stay.
            parts = [v.value for v in node.values if isinstance(v, ast.Constant)]
            self.prose.extend(str(p) for p in parts)
            values = [v for v in node.values if isinstance(v, ast.FormattedValue)]
            return ast.Tuple([ast.Constant(PLACEHOLDER), *sorted(values, key=ast.dump)], ast.Load())
        func = node.func if isinstance(node, ast.Call) else None
        if isinstance(func, ast.Attribute) and func.attr == "format":
            if isinstance(func.value, ast.Constant) and isinstance(func.value.value, str):
                self.prose.append(func.value.value)
                func.value = ast.Constant(PLACEHOLDER)
        return node


def _comments(source: str) -> list[str]:
    tokens = tokenize.generate_tokens(io.StringIO(_python(source)).readline)
    comments = [t.string for t in tokens if t.type == tokenize.COMMENT]
    return [c for c in comments if not MARKER.match(c) and not PRAGMA.match(c)]


def prose(source: str) -> list[str]:
    """The pieces of prose of a code cell; [] for a cell that does not parse as Python."""
    try:
        tree = ast.parse(_python(source))
        comments = [c.lstrip("#").strip() for c in _comments(source)]
    except (SyntaxError, tokenize.TokenError):
        return []
    visitor = _SetProseAside()
    visitor.visit(tree)
    return [p for p in comments + visitor.prose if LETTER.search(p)]


def has_prose(source: str) -> bool:
    """Whether a code cell has anything to translate (else it is copied verbatim)."""
    return bool(prose(source))


def _statements(tree: ast.AST) -> list[ast.stmt]:
    visitor = _SetProseAside()
    return visitor.visit(tree).body


BLOCKS = ("body", "orelse", "finalbody", "handlers")


def _first_difference(english: list[ast.stmt], translated: list[ast.stmt]) -> int | None:
    """The English line of the first statement that differs, looking inside blocks."""
    for a, b in zip(english, translated, strict=False):
        if ast.dump(a) == ast.dump(b):
            continue
        if ast.dump(_without_blocks(a)) == ast.dump(_without_blocks(b)):
            # Same header (def, for, if, with ...): the difference is inside one of its blocks.
            for field in BLOCKS:
                inner = _first_difference(getattr(a, field, []), getattr(b, field, []))
                if inner is not None:
                    return inner
        return a.lineno
    if len(english) > len(translated):
        return english[len(translated)].lineno
    if len(english) < len(translated):
        return (english[-1].end_lineno or 0) + 1 if english else 1
    return None


def _without_blocks(node: ast.stmt) -> ast.stmt:
    """`node` with its nested blocks emptied: to see whether the difference lies inside them."""
    fields = {f: getattr(node, f) for f in node._fields}
    fields.update({f: [] for f in BLOCKS if isinstance(fields.get(f), list)})
    return type(node)(**fields)


def program_differences(english: str, translated: str) -> list[str]:
    """Why `translated` is not the same program as `english` ([] when it is)."""
    problems = []
    magics = [[m.group(0).strip() for m in MAGIC.finditer(s)] for s in (english, translated)]
    if magics[0] != magics[1]:
        problems.append("its IPython magic lines (%, !) must stay exactly as in the English")
    markers = [
        [ln.strip() for ln in s.split("\n") if MARKER.match(ln)] for s in (english, translated)
    ]
    if markers[0] != markers[1]:
        problems.append("its BEGIN/END SOLUTION and HIDDEN TESTS lines must stay as in the English")
    try:
        before = _statements(ast.parse(_python(english)))
    except SyntaxError:
        same = english == translated
        return problems + ([] if same else ["the English is not Python: copy it verbatim"])
    try:
        after = _statements(ast.parse(_python(translated)))
    except SyntaxError as e:
        return problems + [f"line {e.lineno}: the translation is not valid Python ({e.msg})"]
    line = _first_difference(before, after)
    if line is not None:
        problems.append(
            f"line {line}: not the same program as the English (only comments, docstrings, "
            "printed text and assert messages may change; identifier-like strings may not)"
        )
    return problems


def formulas(markdown: str) -> Counter:
    """The `$...$` and `$$...$$` formulas of a Markdown text, whitespace normalised, counted."""
    text = CODE.sub(" ", markdown)
    found = Counter()
    for m in MATH.finditer(text):
        display = m.group(1) is not None
        body = " ".join((m.group(1) if display else m.group(2)).split())
        found["$$" + body + "$$" if display else "$" + body + "$"] += 1
    return found


def formula_differences(english: str, translated: str) -> list[str]:
    """The formulas that the translation lost or changed, or that the English does not have."""
    before, after = formulas(english), formulas(translated)
    lost = [f"formula {f} of the English is missing or changed" for f in before - after]
    return lost + [f"formula {f} is not in the English" for f in after - before]
