"""The command line of minidp.course.translate (see its docstring):

    python -m minidp.course.translate update zh [NN_name ...] [--all]
    python -m minidp.course.translate build zh
    python -m minidp.course.translate check zh [--all]

Run from the repository root, or give --root. Exit status 1 on any problem, each on one line.
"""

import argparse
import sys
from pathlib import Path

from minidp.course.translate.build import build
from minidp.course.translate.catalog import update
from minidp.course.translate.check import check
from minidp.course.translate.edition import LOCALES, Edition
from minidp.course.translate.messages import update_messages


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minidp.course.translate",
        description="Translated editions of the course: catalogs, notebooks, and their check.",
    )
    p.add_argument("command", choices=["update", "build", "check"])
    p.add_argument("language", choices=sorted(LOCALES))
    p.add_argument(
        "notebooks",
        nargs="*",
        help="update: also create the catalogs of these notebooks (01_loss, or 01)",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="update: a catalog for every English notebook; check: require one for every notebook",
    )
    p.add_argument("--root", type=Path, default=Path.cwd(), help="the repository (default: .)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    edition = Edition(args.root.resolve(), args.language)
    if not edition.english.is_dir():
        print(f"no notebooks/ folder in {edition.root}: run from the repository, or give --root")
        return 2
    if args.notebooks and args.command != "update":
        print(f"{args.command} takes no notebook names: it works on every catalog")
        return 2
    if args.command == "update":
        try:
            written = update(edition, args.notebooks, every_notebook=args.all)
        except ValueError as e:
            print(e)
            return 2
        written.append(update_messages(args.language))
        print("\n".join(f"updated {edition.relative(p)}" for p in written))
    elif args.command == "build":
        written = build(edition)
        print("\n".join(f"wrote {edition.relative(p)}" for p in written) or "no catalogs")
    else:
        problems = check(edition, every_notebook=args.all)
        for problem in problems:
            print(problem)
        translated = [nb.name for nb in edition.notebooks() if edition.catalog(nb).exists()]
        verdict = f"{len(problems)} problem(s)" if problems else "in step with the English"
        print(f"{args.language}: {len(translated)} notebook(s) checked, {verdict}")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
