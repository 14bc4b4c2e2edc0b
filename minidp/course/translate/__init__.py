"""Editions of the course in other languages, generated from the English notebooks and gettext
catalogs, and checked so that they cannot silently fall behind.

    python -m minidp.course.translate update zh [NN_name ...] [--all]  # catalogs follow English
    python -m minidp.course.translate build zh                         # writes notebooks/zh/
    python -m minidp.course.translate check zh [--all]                 # fails when out of step

The English notebooks are the one source. Each notebook translated has a catalog,
`i18n/zh/notebooks/NN_name.po`, with one entry per cell that has words to translate: the cell's
id is the entry's msgctxt, the English source its msgid, the translation its msgstr.

- Markdown cells are translated whole; their `$...$` formulas must stay as they are.
- Code cells with prose in them (comments, docstrings, the text of strings given to print(), and
  assert messages) are translated whole, and must stay the same program: the same syntax tree
  once that prose is set aside. Identifier-like strings (exercise ids such as "00.mean") stay
  even inside printed text; f-string values may move within the sentence but not change;
  `# BEGIN SOLUTION` and `### BEGIN HIDDEN TESTS` lines and IPython magics stay verbatim.
- Code cells without any prose, and raw cells, are copied verbatim and have no entry.

`update` merges the catalogs with the English: a new cell gets an empty entry, a changed cell's
translation is kept but marked fuzzy with the English it translated (`#| msgid`), so that the
translator sees what changed, and a removed cell's entry becomes obsolete (`#~`). It also
collects the package's own messages (`_("...")` in minidp/course) into
minidp/course/locale/zh/LC_MESSAGES/minidp.po. `build` writes `notebooks/zh/NN_name.ipynb`: the
English cells with the same ids in the same order, translated where the catalog has a finished
translation, no outputs, `metadata.minidp.language` set, and a first code cell that starts with
`set_language("zh")`. `check` prints one line per problem and exits 1 when there is one.

Modules: `edition` (where an edition's files are, reading and writing notebooks), `sameness`
(what a translation must not change), `catalog` (update), `build`, `glossary`, `messages` (the
package's catalog), `check`, and `__main__` (the command line).
"""

from minidp.course.translate.build import build, built_notebook
from minidp.course.translate.catalog import update
from minidp.course.translate.check import check
from minidp.course.translate.edition import Edition

__all__ = ["Edition", "build", "built_notebook", "check", "update"]
