"""The course as a learner meets it: each notebook opened in JupyterLab in a real browser, run
with Run > Run All Cells, and looked at.

    make test-browser      # = .venv/bin/python -m pytest -m browser tests/browser

For each notebook: every code cell ran and none shows an error; every plot is on the page as a
loaded image, and a notebook that draws shows at least one; every widget rendered, and each of
its sliders, drop-downs, toggle buttons and check boxes, moved from the keyboard or clicked,
changes what the widget shows (its figure or its text, so a round trip through the kernel).

A screenshot of each notebook as Run All left it, at its first widget or plot, goes to
out/screenshots/NN_name.png for a person to look at (NN_name-failed.png: the page when its test
failed). docs/jupyterlab.png, the README's, is 11_beyond_data_parallel.png in 256 colours.

JupyterLab and Chromium come from tests/browser/conftest.py. Needs Debian's chromium and the
playwright package: skipped without them, except under CI, where it fails.
"""

import re
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# The Chinese edition runs the same code: its notebooks with widgets are opened too, to see the
# labels the package translates (and 00, where the Chinese course starts).
ZH = [
    path
    for path in sorted((ROOT / "notebooks" / "zh").glob("[0-9][0-9]_*.ipynb"))
    if path.name.startswith("00_") or "widgets." in path.read_text(encoding="utf-8")
]
CJK = re.compile("[\u4e00-\u9fff]")
RUN_TIMEOUT_MS = 300_000  # Run All of one notebook; the 60 s budget is test_binder's to check
DRAWS = re.compile(r"minidp\.plots\.|minidp\.widgets\.|plt\.")  # in a code cell
IMAGE_TYPES = ("image/png", "image/svg+xml", "image/jpeg")

KERNEL_IDLE = """() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]
    .some(e => /\\| Idle/.test(e.textContent))"""
# Done: no cell waits ([*]) and some ran; Run All stops at an error, leaving the rest at [ ].
ALL_RAN = """() => {
    const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')]
        .map(e => e.textContent);
    return !prompts.some(t => t.includes('*')) && prompts.some(t => /\\d/.test(t));
}"""
# Widgets displayed by a cell, not those nested in another widget; numbered for locators.
MARK_WIDGETS = """() => [...document.querySelectorAll('.jp-OutputArea-output > .jupyter-widgets')]
    .filter(e => !e.parentElement.closest('.jupyter-widgets'))
    .map((e, i) => { e.dataset.testWidget = i; return e.offsetWidth > 0 && e.offsetHeight > 0; })"""
# What the kernel changes in a widget: its output areas, HTML and labels, and its images.
VIEW = """e => {
    const hash = s => {
        let h = 7;
        for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) | 0;
        return h;
    };
    const shown = '.widget-output, .widget-html, .widget-htmlmath, .widget-label';
    const texts = [...e.querySelectorAll(shown)].map(o => o.innerText);
    return texts.join('|') + '|' + [...e.querySelectorAll('img')].map(i => hash(i.src)).join(',');
}"""
WIDGETS_SETTLED = """() => !/Error displaying widget|Loading widget\\.\\.\\./.test(
    document.querySelector('.jp-Notebook').innerText)"""
# For the screenshot: the cell of the first widget, else of the first plot, at the top.
SCROLL_TO_SHOWPIECE = """() => {
    const e = document.querySelector('.jp-OutputArea-output > .jupyter-widgets')
        || document.querySelector('.jp-OutputArea-output img');
    if (e) e.closest('.jp-Cell').scrollIntoView({block: 'start'});
}"""
IMAGES_LOADED = """() => [...document.querySelectorAll('.jp-OutputArea-output img')]
    .map(i => i.complete && i.naturalWidth > 0)"""


def shoot(page, path: Path) -> None:
    """A screenshot of the window, the notebook scrolled to its first widget or plot."""
    page.evaluate(SCROLL_TO_SHOWPIECE)
    page.screenshot(path=path)


def menu(page, name: str, command: str) -> None:
    page.click(f".lm-MenuBar-itemLabel:text-is('{name}')")
    page.click(f"li[data-command='{command}']")


def wait_idle(lab, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not lab.kernels_idle():
        assert time.monotonic() < deadline, f"the kernel stayed busy for {timeout_s:.0f} s"
        time.sleep(0.2)


def saved_problems(path: Path) -> tuple[list[str], int, int]:
    """From the notebook as JupyterLab saved it: its errors and unrun cells, its image and widget
    outputs (those in cells, not inside widgets)."""
    nb = nbformat.read(path, as_version=4)
    problems, images, widgets = [], 0, 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        if cell.execution_count is None:
            problems.append(f"cell {index} did not run")
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                problems.append(f"cell {index}: {output.ename}: {output.evalue}")
            data = output.get("data", {})
            images += any(kind in data for kind in IMAGE_TYPES)
            widgets += "application/vnd.jupyter.widget-view+json" in data
    return problems, images, widgets


def move(control, kind: str) -> None:
    """Change a control as a learner would, from the keyboard or with a click."""
    if kind == "slider":
        at_max = control.get_attribute("aria-valuenow") == control.get_attribute("aria-valuemax")
        control.focus()
        control.press("ArrowLeft" if at_max else "ArrowRight")
    elif kind == "toggle buttons":
        control.locator("button:not(.mod-active)").first.click()  # another choice
    elif kind == "drop-down":
        options = control.locator("option").count()
        current = control.evaluate("e => e.selectedIndex")
        control.select_option(index=(current + 1) % options)
    else:
        control.click()


def settle(widget, quiet_s: float = 0.6, timeout_s: float = 30.0) -> None:
    """Wait until the widget has stopped changing: the kernel may be idle before the browser has
    drawn the last of what it sent (a new figure arrives after the label that came with it)."""
    deadline = time.monotonic() + timeout_s
    last, quiet_since = widget.evaluate(VIEW), time.monotonic()
    while time.monotonic() - quiet_since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.15)
        now = widget.evaluate(VIEW)
        if now != last:
            last, quiet_since = now, time.monotonic()


CONTROLS = {  # what a learner moves; never a plain button, which may start a long action
    "slider": ".noUi-handle",
    "drop-down": "select",
    "toggle buttons": ".widget-toggle-buttons",
    "check box": "input[type=checkbox]",
}


def exercise_widgets(page, lab) -> list[str]:
    """Move every control of every widget and see the widget change; what was moved."""
    rendered = page.evaluate(MARK_WIDGETS)
    assert all(rendered), f"widgets with no size on the page: {rendered}"
    moved = []
    for index in range(len(rendered)):
        widget = page.locator(f"[data-test-widget='{index}']")
        for kind, selector in CONTROLS.items():
            controls = widget.locator(selector)
            for c in range(controls.count()):
                control = controls.nth(c)
                if kind == "drop-down" and control.locator("option").count() < 2:
                    continue
                control.scroll_into_view_if_needed()
                before = widget.evaluate(VIEW)
                move(control, kind)
                changed = f"([e, before]) => ({VIEW})(e) !== before"
                try:
                    page.wait_for_function(changed, arg=[widget.element_handle(), before])
                except Exception:
                    pytest.fail(f"widget {index} did not respond to its {kind} {c}")
                wait_idle(lab)
                settle(widget)
                moved.append(kind)
    return moved


def name(path: Path) -> str:
    """01_loss, or zh-01_loss for the Chinese edition's."""
    return f"{path.parent.name}-{path.stem}" if path.parent.name != "notebooks" else path.stem


@pytest.mark.parametrize("path", NOTEBOOKS + ZH, ids=[name(p) for p in NOTEBOOKS + ZH])
def test_notebook_in_jupyterlab(path, lab, browser, browser_rows):
    page = browser.new_page()
    relative = path.relative_to(ROOT).as_posix()
    passed = False
    try:
        page.goto(f"{lab.url}/lab/tree/{relative}?reset&token={lab.token}")
        page.wait_for_selector(".jp-Notebook .jp-CodeCell")
        page.wait_for_function(KERNEL_IDLE, timeout=120_000)

        started = time.perf_counter()
        menu(page, "Run", "runmenu:run-all")
        page.wait_for_function(ALL_RAN, timeout=RUN_TIMEOUT_MS, polling=250)
        wait_idle(lab)
        seconds = time.perf_counter() - started
        menu(page, "File", "docmanager:save")
        page.wait_for_selector(".lm-TabBar-tab.jp-mod-current:not(.jp-mod-dirty)")

        problems, image_outputs, widget_outputs = saved_problems(lab.folder / relative)
        assert not problems, f"{path.name} in JupyterLab:\n" + "\n".join(problems)
        try:  # widgets render after their cell has run, once their models have arrived
            page.wait_for_function(WIDGETS_SETTLED, timeout=30_000)
        except Exception:
            pytest.fail(f"{path.name}: a widget shows 'Loading widget...' or an error")

        loaded = page.evaluate(IMAGES_LOADED)
        assert all(loaded), f"{path.name}: {loaded.count(False)} images did not load"
        assert len(loaded) >= image_outputs, f"{path.name}: images missing from the page"
        code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        if DRAWS.search("\n".join(code)):
            assert loaded, f"{path.name} draws, but no plot is on the page"

        shoot(page, lab.screenshots / f"{name(path)}.png")  # as Run All left it
        moved = exercise_widgets(page, lab)
        widgets = page.locator("[data-test-widget]").count()
        assert widgets >= widget_outputs, f"{path.name}: {widget_outputs - widgets} not rendered"
        if path in ZH and widgets:
            shown = " ".join(page.locator("[data-test-widget]").all_inner_texts())
            assert CJK.search(shown), f"{path.name}: its widgets speak no Chinese: {shown[:200]!r}"
        summary = f"{widgets} ({len(moved)} controls moved)" if widgets else "-"
        browser_rows.append((name(path), seconds, len(loaded), summary))
        passed = True
    finally:
        if not passed:  # what the page showed when the test failed
            shoot(page, lab.screenshots / f"{name(path)}-failed.png")
        page.close()
        left = lab.end_sessions()
    assert not left, f"{path.name}: processes outlived their kernel (now killed): {left}"
