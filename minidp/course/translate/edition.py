"""Where the files of a translated edition live, and notebooks read and written as nbformat does.

An edition is a language and the repository root it lives under:

    notebooks/NN_name.ipynb                the English source
    i18n/<language>/notebooks/NN_name.po   its catalog, one entry per cell with words in it
    i18n/<language>/glossary.md            the terms, each fixed once
    notebooks/<language>/NN_name.ipynb     what `build` writes from the two
"""

import json
from dataclasses import dataclass
from pathlib import Path

from minidp.course.i18n import LANGUAGES
from minidp.course.translate.sameness import has_prose

# gettext's names of the languages an edition is written in (its catalogs' Language header).
LOCALES = {"zh": "zh_CN"}
assert set(LOCALES) == set(LANGUAGES) - {"en"}, "every language of minidp.course.i18n"


@dataclass(frozen=True)
class Edition:
    """The course in `language`, under the repository `root`."""

    root: Path
    language: str

    def __post_init__(self) -> None:
        if self.language not in LOCALES:
            known = ", ".join(LOCALES)
            raise ValueError(
                f"no edition in {self.language!r}: the course is translated to {known}"
            )

    @property
    def english(self) -> Path:
        return self.root / "notebooks"

    @property
    def catalogs(self) -> Path:
        return self.root / "i18n" / self.language / "notebooks"

    @property
    def out(self) -> Path:
        return self.root / "notebooks" / self.language

    @property
    def glossary(self) -> Path:
        return self.root / "i18n" / self.language / "glossary.md"

    def notebooks(self) -> list[Path]:
        """The English notebooks, in course order."""
        return sorted(self.english.glob("[0-9][0-9]_*.ipynb"))

    def catalog(self, notebook: Path) -> Path:
        return self.catalogs / f"{notebook.stem}.po"

    def translated(self, notebook: Path) -> Path:
        return self.out / notebook.name

    def relative(self, path: Path) -> str:
        """`path` as the messages show it: relative to the root."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


def read_notebook(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def notebook_text(nb: dict) -> str:
    """The file nbformat (and JupyterLab) would write: the committed notebooks are exactly this."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def source(cell: dict) -> str:
    """A cell's source as one string (files store it as a list of lines)."""
    text = cell.get("source", "")
    return text if isinstance(text, str) else "".join(text)


def source_lines(text: str) -> list[str]:
    """A source string as nbformat stores it: lines that keep their newline, the last one not."""
    return text.splitlines(keepends=True)


def translatable(cell: dict) -> bool:
    """Whether a cell gets a catalog entry: Markdown with text, or code with prose in it."""
    text = source(cell)
    if cell["cell_type"] == "markdown":
        return bool(text.strip())
    return cell["cell_type"] == "code" and has_prose(text)
