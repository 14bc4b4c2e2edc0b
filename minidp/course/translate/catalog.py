"""`update`: each notebook's catalog merged with its English notebook, as gettext's msgmerge does.

One entry per cell with words in it, in the notebook's order: msgctxt the cell's id, msgid the
English source, msgstr the translation. When the English of a cell changes, its translation is
kept but marked fuzzy, with the English it translated as `#| msgid`: the translator sees what
changed, and `check` fails until the translation is revised and the flag removed. An entry whose
cell is gone becomes obsolete (`#~`), so its translation is at hand if the cell comes back.
"""

from pathlib import Path

import polib

from minidp.course.translate.edition import (
    LOCALES,
    Edition,
    read_notebook,
    source,
    translatable,
)

# Catalogs are written without line wrapping: one line of the .po per line of the cell, so that
# a diff of a catalog reads like a diff of the notebook.
WRAP = 0
KINDS = {
    "markdown": "markdown: translate it all; keep every $formula$ as it is",
    "code": "code: translate only comments, docstrings, printed text and assert messages",
}


def load(path: Path) -> polib.POFile:
    """A catalog, read to be written back exactly as `update` writes it."""
    return polib.pofile(str(path), wrapwidth=WRAP, encoding="utf-8")


def new_catalog(edition: Edition, notebook: Path) -> polib.POFile:
    po = polib.POFile(wrapwidth=WRAP, encoding="utf-8")
    po.header = (
        f"Translation of {edition.relative(notebook)}: one entry per cell (msgctxt: the cell's\n"
        f"id). Edit the msgstr lines; then `python -m minidp.course.translate build "
        f"{edition.language}`.\n"
        "When the English changes, `update` marks the entry fuzzy and keeps the English it\n"
        "translated after #|: revise the translation, then delete the fuzzy flag and the #| lines."
    )
    po.metadata = {
        "Project-Id-Version": "minidp",
        "Language": LOCALES[edition.language],
        "MIME-Version": "1.0",
        "Content-Type": "text/plain; charset=UTF-8",
        "Content-Transfer-Encoding": "8bit",
    }
    return po


def _follow(entry: polib.POEntry, english: str) -> None:
    """Bring `entry` up to the English `english`, keeping its translation for review."""
    if entry.msgid == english:
        return
    if (
        entry.fuzzy and entry.previous_msgid == english
    ):  # the English went back to what was translated
        entry.flags.remove("fuzzy")
        entry.previous_msgid = None
    elif entry.msgstr:
        # Keep the English that the translation translated: after two changes, still the first.
        entry.previous_msgid = entry.previous_msgid or entry.msgid
        if not entry.fuzzy:
            entry.flags.append("fuzzy")
    entry.msgid = english


def merged(po: polib.POFile, cells: list[dict]) -> polib.POFile:
    """`po` with one entry per translatable cell of `cells`, in their order; the rest obsolete."""
    old = {e.msgctxt: e for e in po}
    result = polib.POFile(wrapwidth=WRAP, encoding="utf-8")
    result.header, result.metadata = po.header, po.metadata
    for cell in cells:
        if not translatable(cell):
            continue
        entry = old.pop(cell["id"], None)
        if entry is None:
            entry = polib.POEntry(msgctxt=cell["id"], msgid=source(cell), msgstr="")
        entry.obsolete = False
        _follow(entry, source(cell))
        entry.comment = KINDS[cell["cell_type"]]
        result.append(entry)
    for entry in old.values():
        if entry.msgstr:  # an untranslated entry of a removed cell holds nothing worth keeping
            entry.obsolete = True
            result.append(entry)
    return result


def update(edition: Edition, names: list[str] = (), every_notebook: bool = False) -> list[Path]:
    """Merge the existing catalogs with the English, and create the named ones (or all).

    Returns the catalogs written. `names` are notebook stems ("01_loss") or numbers ("01").
    """
    notebooks = edition.notebooks()
    wanted = set(names)
    known = {nb.stem for nb in notebooks} | {nb.name[:2] for nb in notebooks}
    unknown = sorted(wanted - known)
    if unknown:
        raise ValueError(f"no English notebook {', '.join(unknown)} in {edition.english}")
    written = []
    for notebook in notebooks:
        path = edition.catalog(notebook)
        create = every_notebook or notebook.stem in wanted or notebook.name[:2] in wanted
        if not path.exists() and not create:
            continue
        po = load(path) if path.exists() else new_catalog(edition, notebook)
        po = merged(po, read_notebook(notebook)["cells"])
        path.parent.mkdir(parents=True, exist_ok=True)
        po.save(str(path))
        written.append(path)
    return written
