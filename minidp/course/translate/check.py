"""`check`: everything that would let a translated edition fall behind, one line per problem.

For each English notebook that has a catalog (every English notebook with `every_notebook`):
each cell with words in it has a finished translation of its current English (not missing, not
stale, not fuzzy); a code cell's translation is the same program; a Markdown cell's keeps its
formulas; the glossary's terms are used, with the English in parentheses at the first use; and
the committed translated notebook is exactly what `build` writes. Then: no catalog or translated
notebook without an English one, and every message of the package translated.
"""

import json

import polib

from minidp.course.translate.build import build_one
from minidp.course.translate.catalog import load
from minidp.course.translate.edition import Edition, read_notebook, source, translatable
from minidp.course.translate.glossary import (
    Term,
    first_use_problems,
    glossary_problems,
    read_glossary,
    usage_problems,
)
from minidp.course.translate.messages import PACKAGE, message_problems
from minidp.course.translate.sameness import formula_differences, program_differences


def _entry_problems(where: str, cell: dict, entry: polib.POEntry | None, language: str) -> list:
    if entry is None:
        return [f"{where}: not in the catalog: run `update {language}`"]
    if entry.msgid != source(cell):
        return [
            f"{where}: the English changed since the catalog was updated: run `update {language}`"
        ]
    if entry.fuzzy:
        return [
            f"{where}: the English changed since it was translated (fuzzy): revise the msgstr, "
            "then delete the fuzzy flag and the #| lines"
        ]
    if not entry.msgstr:
        return [f"{where}: not translated yet"]
    if cell["cell_type"] == "code":
        differences = program_differences(entry.msgid, entry.msgstr)
    else:
        differences = formula_differences(entry.msgid, entry.msgstr)
    return [f"{where}: {d}" for d in differences]


def catalog_problems(
    name: str, cells: list[dict], po: polib.POFile, language: str, terms: list[Term] | None
) -> tuple[list[str], set[str]]:
    """What is missing, stale or wrong in the catalog `po` of the English notebook `name`, and
    the ids of the cells whose entry is not finished."""
    entries = {e.msgctxt: e for e in po if not e.obsolete}
    problems, translated, ids, unfinished = [], [], set(), set()
    for index, cell in enumerate(cells):
        cell_id = cell.get("id")
        where = f"{name} cell {cell_id}"
        if cell_id is None or cell_id in ids:
            problems.append(f"{name} cell #{index}: no id, or a repeated one: give it a unique id")
            continue
        ids.add(cell_id)
        entry = entries.get(cell_id)
        if not translatable(cell):
            if entry is not None:
                problems.append(f"{where}: nothing to translate, yet an entry: run `update`")
            continue
        found = _entry_problems(where, cell, entry, language)
        problems += found
        if found:
            unfinished.add(cell_id)
        if not found and terms is not None:
            problems += usage_problems(where, cell["cell_type"], entry.msgid, entry.msgstr, terms)
        if entry is not None and entry.msgstr and cell["cell_type"] == "markdown":
            # Stale ones too: where a term is first used should not move while one is revised.
            translated.append((cell_id, entry.msgstr))
    for cell_id in entries.keys() - ids:
        problems.append(f"{name} cell {cell_id}: in the catalog, not in the English: run `update`")
    if terms is not None:
        problems += first_use_problems(name, translated, terms)
    return problems, unfinished


def built_problems(edition: Edition, notebook, known: set[str] = frozenset()) -> list[str]:
    """Whether the committed translated notebook is exactly what `build` writes; cells in
    `known` (whose catalog entry already has a problem to fix first) are not named again."""
    path, lang = edition.translated(notebook), edition.language
    rel = edition.relative(path)
    expected = build_one(edition, notebook)
    if not path.exists():
        return [f"{rel}: missing: run `build {lang}`"]
    committed = path.read_text(encoding="utf-8")
    if committed == expected:
        return []
    hint = (
        f"differs from what `build {lang}` writes (it is generated: edit the catalog, then build)"
    )
    try:
        ours = {c.get("id"): c for c in json.loads(committed)["cells"]}
    except (ValueError, KeyError):
        return [f"{rel}: {hint}"]
    cells = json.loads(expected)["cells"]
    differ = [c["id"] for c in cells if ours.get(c["id"]) != c]
    if differ and set(differ) <= known:
        return []
    return [f"{rel} cell {cell_id}: {hint}" for cell_id in differ] or [f"{rel}: {hint}"]


def check(edition: Edition, every_notebook: bool = False, package=PACKAGE) -> list[str]:
    """Every problem of the edition, one line each ([] when it is in step with the English).

    `package`: the course package whose messages to check, or None to leave them out.
    """
    lang, problems, terms = edition.language, [], None
    if edition.glossary.exists():
        terms = read_glossary(edition.glossary)
        problems += glossary_problems(terms)
    else:
        problems.append(f"{edition.relative(edition.glossary)}: missing: the terms are fixed there")
    english = edition.notebooks()
    for notebook in english:
        catalog = edition.catalog(notebook)
        if not catalog.exists():
            if every_notebook:
                rel = edition.relative(catalog)
                problems.append(f"{notebook.name}: no catalog {rel}: run `update {lang} --all`")
            continue
        cells = read_notebook(notebook)["cells"]
        found, unfinished = catalog_problems(notebook.name, cells, load(catalog), lang, terms)
        problems += found + built_problems(edition, notebook, unfinished)
    stems = {nb.stem for nb in english if edition.catalog(nb).exists()}
    for path in sorted(edition.catalogs.glob("*.po")):
        if path.stem not in stems:
            problems.append(f"{edition.relative(path)}: no English notebook {path.stem}.ipynb")
    for path in sorted(edition.out.glob("*.ipynb")):
        if path.stem not in stems:
            problems.append(f"{edition.relative(path)}: not generated from a catalog: remove it")
    if package is not None:
        problems += message_problems(lang, package, terms)
    return problems
