"""The Chinese edition: catalogs that follow the English, notebooks built from them, and a check
that fails on anything out of step (a changed English cell, a code cell that is not the same
program, a changed formula, a term against the glossary, a hand-edited zh notebook); the
package's messages in Chinese; and the committed edition itself in step.

A small synthetic notebook in tmp_path for the mechanics, the real catalogs for the rest.
"""

import json
import re
import shutil
from pathlib import Path

import nbformat
import polib
import pytest
import torch
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from minidp import data, linear
from minidp.course import assignments, checks, plots, widgets
from minidp.course.i18n import _, get_language, set_language
from minidp.course.translate import Edition, build, check, update
from minidp.course.translate.__main__ import main
from minidp.course.translate.build import select_language
from minidp.course.translate.catalog import load
from minidp.course.translate.glossary import read_glossary
from minidp.course.translate.messages import message_problems, update_messages
from minidp.events import Event

ROOT = Path(__file__).resolve().parent.parent
GLOSSARY = ROOT / "i18n" / "zh" / "glossary.md"

ENGLISH = {
    "d-0": (
        "markdown",
        "# 00 · Demo\n\nData parallelism runs $K$ workers; each computes a gradient.",
    ),
    "d-1": ("code", "import math\n\nx = 2"),
    "d-2": (
        "code",
        'def my_double(x):\n    """Twice x."""\n    # BEGIN SOLUTION\n'
        "    return 2 * x  # the answer\n"
        '    # END SOLUTION\n\n\nprint("00.demo:", f"double of {x} is {my_double(x)}")\n'
        'assert my_double(x) == 4, "twice two is four"',
    ),
    "d-3": ("markdown", "The mean is $\\bar{x} = \\frac{1}{n}\\sum_i x_i$, over all workers."),
}
CHINESE = {
    "d-0": "# 00 · 演示\n\n"
    "数据并行（data parallelism）运行 $K$ 个工作进程（worker），各自计算一个梯度。",
    "d-2": 'def my_double(x):\n    """x 的两倍。"""\n    # BEGIN SOLUTION\n'
    "    return 2 * x  # 答案\n"
    '    # END SOLUTION\n\n\nprint("00.demo:", f"{x} 的两倍是 {my_double(x)}")\n'
    'assert my_double(x) == 4, "二的两倍是四"',
    "d-3": "平均值 $\\bar{x} = \\frac{1}{n}\\sum_i x_i$ 是对所有工作进程求的。",
}


def write_english(root: Path, cells: dict) -> Path:
    nb = nbformat.v4.new_notebook()
    for cell_id, (kind, text) in cells.items():
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        nb.cells.append(make(text, id=cell_id))
    path = root / "notebooks" / "00_demo.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def translate(edition: Edition, translations: dict, finished: bool = True) -> None:
    """Set msgstrs as a translator would: the text, and (finished) no fuzzy flag left."""
    path = edition.catalogs / "00_demo.po"
    po = load(path)
    for entry in po:
        if entry.msgctxt in translations:
            entry.msgstr = translations[entry.msgctxt]
            if finished and entry.fuzzy:
                entry.flags.remove("fuzzy")
                entry.previous_msgid = None
    po.save(str(path))


@pytest.fixture
def edition(tmp_path) -> Edition:
    """A one-notebook course, translated and built: in step."""
    write_english(tmp_path, ENGLISH)
    edition = Edition(tmp_path, "zh")
    edition.glossary.parent.mkdir(parents=True)
    shutil.copy(GLOSSARY, edition.glossary)
    update(edition, ["00"])
    translate(edition, CHINESE)
    build(edition)
    return edition


def problems(edition: Edition) -> list[str]:
    return check(edition, package=None)


def built(edition: Edition) -> dict:
    return json.loads((edition.out / "00_demo.ipynb").read_text(encoding="utf-8"))


# ---- update, build, check


def test_round_trip_in_step(edition):
    po = load(edition.catalogs / "00_demo.po")
    # Cells with words get an entry keyed by id, with the English as msgid; d-1 has none.
    assert [(e.msgctxt, e.msgid) for e in po] == [(i, ENGLISH[i][1]) for i in ("d-0", "d-2", "d-3")]
    assert problems(edition) == []
    nb = built(edition)
    nbformat.validate(nbformat.from_dict(nb))
    assert [c["id"] for c in nb["cells"]] == list(ENGLISH)
    sources = ["".join(c["source"]) for c in nb["cells"]]
    # d-1, the first code cell, has no words: verbatim, after the lines that select Chinese.
    first_code = select_language("zh") + ENGLISH["d-1"][1]
    assert sources == [CHINESE["d-0"], first_code, CHINESE["d-2"], CHINESE["d-3"]]
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert nb["metadata"]["minidp"]["language"] == "zh"


def test_update_and_build_are_idempotent(edition):
    catalog, notebook = edition.catalogs / "00_demo.po", edition.out / "00_demo.ipynb"
    before = catalog.read_bytes(), notebook.read_bytes()
    update(edition)
    build(edition)
    assert (catalog.read_bytes(), notebook.read_bytes()) == before


def test_a_changed_english_sentence_fails_until_the_translation_is_revised(edition):
    changed = dict(ENGLISH)
    changed["d-0"] = ("markdown", ENGLISH["d-0"][1].replace("a gradient", "its own gradient"))
    write_english(edition.root, changed)
    assert problems(edition) == [
        "00_demo.ipynb cell d-0: the English changed since the catalog was updated: run `update zh`"
    ]
    update(edition)
    (entry,) = [e for e in load(edition.catalogs / "00_demo.po") if e.msgctxt == "d-0"]
    # Fuzzy, the translation kept, and the English it translated shown to the translator.
    assert entry.fuzzy and entry.msgstr == CHINESE["d-0"]
    assert entry.previous_msgid == ENGLISH["d-0"][1] and entry.msgid == changed["d-0"][1]
    assert "#| msgid" in (edition.catalogs / "00_demo.po").read_text(encoding="utf-8")
    build(edition)
    assert problems(edition) == [
        "00_demo.ipynb cell d-0: the English changed since it was translated (fuzzy): revise the "
        "msgstr, then delete the fuzzy flag and the #| lines"
    ]
    translate(edition, {"d-0": CHINESE["d-0"].replace("一个梯度", "自己的梯度")})
    assert any("cell d-0: differs from what `build zh` writes" in p for p in problems(edition))
    build(edition)
    assert problems(edition) == []


def test_an_english_change_undone_clears_the_fuzzy_flag(edition):
    changed = dict(ENGLISH)
    changed["d-3"] = ("markdown", ENGLISH["d-3"][1] + " Always.")
    write_english(edition.root, changed)
    update(edition)
    write_english(edition.root, ENGLISH)
    update(edition)
    assert not any(e.fuzzy for e in load(edition.catalogs / "00_demo.po"))
    assert problems(edition) == []


def test_a_removed_cell_becomes_obsolete_and_a_new_one_untranslated(edition):
    changed = {k: v for k, v in ENGLISH.items() if k != "d-3"}
    changed["d-4"] = ("markdown", "A new cell about gradients.")
    write_english(edition.root, changed)
    update(edition)
    po = load(edition.catalogs / "00_demo.po")
    assert [e.msgctxt for e in po.obsolete_entries()] == ["d-3"]
    assert [e.msgctxt for e in po.untranslated_entries()] == ["d-4"]
    assert "00_demo.ipynb cell d-4: not translated yet" in problems(edition)


def test_hand_edits_and_missing_notebooks_fail(edition):
    path = edition.out / "00_demo.ipynb"
    nb = built(edition)
    nb["cells"][3]["source"] = ["平均值是对所有工作进程求的。"]
    path.write_text(json.dumps(nb), encoding="utf-8")
    assert problems(edition) == [
        "notebooks/zh/00_demo.ipynb cell d-3: differs from what `build zh` writes (it is "
        "generated: edit the catalog, then build)"
    ]
    path.unlink()
    assert problems(edition) == ["notebooks/zh/00_demo.ipynb: missing: run `build zh`"]


@pytest.mark.parametrize(
    "english, translation",
    [
        ("return 2 * x", "return 3 * x"),
        ("{my_double(x)}", "{my_double(x) + 1}"),
        ("{my_double(x)}", "{my_double(x)!r}"),
        ('"00.demo:"', '"00.演示:"'),  # an exercise id inside printed text is data
        ("== 4,", "== 5,"),
        ("    # BEGIN SOLUTION\n", "    # 开始作答\n"),
        ('"二的两倍是四"', '"二的两倍是四"\nx = 3'),
        ('print("00.demo:"', 'print(end="", *["00.demo:"]'),
    ],
)
def test_a_translation_that_changes_the_program_fails(edition, english, translation):
    assert english in CHINESE["d-2"]
    translate(edition, {"d-2": CHINESE["d-2"].replace(english, translation)})
    build(edition)
    found = problems(edition)
    assert found and all(p.startswith("00_demo.ipynb cell d-2: ") for p in found), found


@pytest.mark.parametrize(
    "translation, problem",
    [
        ("$\\bar{x} = \\frac{1}{m}\\sum_i x_i$", "missing or changed"),
        (
            "$\\bar{x} = \\frac{1}{n}\\sum_i x_i$，其中 $n$ 是个数",
            "formula $n$ is not in the English",
        ),
    ],
)
def test_a_changed_formula_fails(edition, translation, problem):
    translate(edition, {"d-3": f"平均值 {translation} 是对所有工作进程求的。"})
    build(edition)
    found = problems(edition)  # a changed formula: the English one lost, a new one added
    assert found and all(p.startswith("00_demo.ipynb cell d-3: formula ") for p in found)
    assert any(problem in p for p in found), found


def test_a_formula_rewrapped_is_the_same_formula(edition):
    translate(
        edition, {"d-3": "平均值 $\\bar{x} =\n\\frac{1}{n}\\sum_i  x_i$ 是对所有工作进程求的。"}
    )
    build(edition)
    assert problems(edition) == []


# ---- the glossary


@pytest.mark.parametrize(
    "translation, problem",
    [
        (
            CHINESE["d-0"].replace("数据并行（data parallelism）", "数据平行（data parallelism）"),
            "00_demo.ipynb cell d-0: 'Data parallelism' is 数据并行 (glossary)",
        ),
        (
            CHINESE["d-0"].replace("（data parallelism）", ""),
            "00_demo.ipynb cell d-0: the first 数据并行 needs its English in parentheses: "
            "数据并行（data parallelism）",
        ),
    ],
)
def test_the_glossary_terms_and_the_english_at_first_use(edition, translation, problem):
    translate(edition, {"d-0": translation})
    build(edition)
    assert problems(edition) == [problem]


def test_the_glossary_fixes_the_terms_of_the_issue():
    terms = {e: t.chinese for t in read_glossary(GLOSSARY) for e in t.english}
    assert terms["all-reduce"] == "全归约" and terms["reduce-scatter"] == "归约散射"
    assert terms["all-gather"] == "全收集" and terms["rank"] == "秩"
    assert terms["model FLOPs utilization"] == "模型浮点运算利用率"
    checked = [t for t in read_glossary(GLOSSARY) if t.check in ("附英文", "译名")]
    assert 40 <= len(checked) <= 100


def test_the_committed_edition_is_in_step_with_the_english():
    """What `make check-zh` runs: catalogs, glossary, built notebooks, package messages."""
    assert check(Edition(ROOT, "zh")) == []


# ---- the command line


def test_check_command_prints_one_line_per_problem(edition, capsys):
    assert main(["check", "zh", "--root", str(edition.root)]) == 0
    (edition.out / "00_demo.ipynb").unlink()
    assert main(["check", "zh", "--root", str(edition.root)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == [
        "notebooks/zh/00_demo.ipynb: missing: run `build zh`",
        "zh: 1 notebook(s) checked, 1 problem(s)",
    ]


def test_check_all_wants_a_catalog_for_every_notebook(edition):
    shutil.copy(edition.english / "00_demo.ipynb", edition.english / "01_more.ipynb")
    assert problems(edition) == []
    assert check(edition, every_notebook=True, package=None) == [
        "01_more.ipynb: no catalog i18n/zh/notebooks/01_more.po: run `update zh --all`"
    ]


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["build", "zh", "--root", str(tmp_path)]) == 2
    assert "no notebooks/ folder" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["check", "fr"])
    with pytest.raises(ValueError, match="no English notebook 07"):
        update(Edition(tmp_path, "zh"), ["07"])


# ---- the package's own messages


def test_set_language_switches_the_checkers_verdicts_and_figure_labels():
    before = list(checks.RESULTS)
    wrong = lambda x: x.sum()  # noqa: E731  (the sum, not the mean: a known mistake)
    try:
        english = checks.check("00.mean", wrong)
        shown_in_english = str(english)
        set_language("zh")
        chinese = checks.check("00.mean", wrong)
        shown_in_chinese = str(chinese)  # the verdict word is translated where it is shown
        label = plots.neg_log_prob().axes[0].get_xlabel()
    finally:
        set_language("en")
        checks.RESULTS[:] = before
    assert english.status == chinese.status == checks.INCORRECT  # data stays English
    assert (
        shown_in_english
        == "❌ 00.mean: incorrect. that is the sum: divide it by the number of entries"
    )
    assert shown_in_chinese == "❌ 00.mean: 不正确。这是总和：还要除以元素个数"
    assert label == "q（赋给正确的下一个词元的概率）"
    assert get_language() == "en" and _("correct") == "correct"
    with pytest.raises(ValueError, match="unknown language 'fr'"):
        set_language("fr")


def test_the_checkers_and_figures_of_04_to_06_speak_chinese():
    before = list(checks.RESULTS)
    one_phase = lambda n, p, a, b: (p - 1) * a + (p - 1) / p * n * b  # noqa: E731  (half a ring)

    def unclamped(grad, theta0, lr, steps, s):  # reads θ_{t-s} before it exists: an IndexError
        thetas = [theta0]
        for t in range(steps):
            thetas.append(thetas[t] - lr * grad(thetas[t - s], t))
        return torch.stack(thetas)

    try:
        english = checks.check("06.ring_seconds", one_phase)
        set_language("zh")
        chinese = checks.check("06.ring_seconds", one_phase)
        stale = checks.check("05.delayed_sgd", unclamped)
        fig = plots.collective("reduce to rank 0", [torch.ones(2)] * 2, [torch.ones(2), None])
    finally:
        set_language("en")
        checks.RESULTS[:] = before
    assert english.status == chinese.status == checks.INCORRECT
    assert english.hint.startswith("that is one phase: the all-reduce is a reduce-scatter")
    assert chinese.hint == "这只是一个阶段：全归约是一次归约散射加一次全收集，各 p - 1 步"
    # A template around another message: both translated, the learner's error kept as it is.
    assert stale.hint.startswith("t < s 时还没有 θ_{t-s}：读取 θ_0，每个工作进程都从它出发（它")
    assert "IndexError" in stale.hint
    assert fig.get_suptitle() == "归约到秩 0"
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert [fig.axes[0].get_title(), fig.axes[1].get_title(), ticks] == [
        "之前",
        "之后",
        ["秩 0", "秩 1"],
    ]


def test_the_checkers_and_widgets_of_notebooks_02_and_03_speak_chinese():
    before = list(checks.RESULTS)
    no_mean = lambda theta, X, y: X.T @ (X @ theta - y)  # noqa: E731  (forgot the 1/m)

    def summed(theta, X, y, K, lr):  # the K gradients added, never divided by K
        shard = lambda t, k: data.rank_slice(t, k, K)  # noqa: E731
        return theta - lr * sum(linear.mse_grad(theta, shard(X, k), shard(y, k)) for k in range(K))

    X, y = data.linear_data(m=24, theta=(1.0, 2.0), noise=0.5, x_range=(0.0, 3.0))
    try:
        set_language("zh")
        grad, step = checks.check("02.mse_grad", no_mean), checks.check("03.dp_step", summed)
        shown = str(grad), str(step)
        explorer = widgets.LearningRateExplorer(X, y, lr=0.01)
        averaging = widgets.GradientAveraging(X, y, X.new_tensor([1.0, 2.0]), K=4)
    finally:
        set_language("en")
        checks.RESULTS[:] = before
    assert grad.status == step.status == checks.INCORRECT  # data stays English
    assert shown == (
        "❌ 02.mse_grad: 不正确。J 是平均值，所以它的梯度带有系数 1/m",
        "❌ 03.dp_step: 不正确。全归约对 K 个梯度求的是和：还要把和除以 K",
    )
    assert explorer.status == "slow" and explorer.label.value.startswith("<b>太慢</b>: 30 步之内")
    assert explorer.lr.description == "学习率 η"
    assert averaging.label.value.startswith("4 个工作进程，每个 6 个样本；")
    legend = [t.get_text() for t in averaging.fig.axes[0].get_legend().get_texts()]
    assert legend == ["4 个工作进程的梯度", "它们的平均", "全批量梯度"]


def test_a_wrong_answer_to_08_and_the_ddp_timeline_widget_speak_chinese():
    before = list(checks.RESULTS)

    def forward_buckets(sizes, cap):  # walks the parameters in forward order, not in reverse
        buckets, size = [], 0
        for i, nbytes in enumerate(sizes):
            if not buckets or size + nbytes > cap:
                buckets.append([])
                size = 0
            buckets[-1].append(i)
            size += nbytes
        return buckets

    ms = lambda t: t / 1e3  # noqa: E731
    steps = [Event("forward", -1, ms(0)), Event("backward", -1, ms(10))]
    for i in range(3):  # three buckets, each launched as its gradient is ready
        steps += [Event("grad", i, ms(12 + 5 * i)), Event("launch", i, ms(12 + 5 * i))]
        steps.append(Event("done", i, ms(16 + 5 * i)))
    steps += [Event("backward end", -1, ms(30)), Event("step", -1, ms(36))]
    steps.append(Event("end", -1, ms(40)))
    try:
        set_language("zh")
        result = checks.check("08.buckets", forward_buckets)
        shown = str(result)
        explorer = widgets.TimelineExplorer({"bucketed, 4 MB": [steps, steps]})
    finally:
        set_language("en")
        checks.RESULTS[:] = before
    assert result.status == checks.INCORRECT  # the status is data: English
    assert shown == (
        "❌ 08.buckets: 不正确。你的第一个桶装的是最前面的参数，而反向传播最后才算出它们的梯度，"
        "所以这个桶要到最后才能发出：应当倒序遍历参数"
    )
    assert explorer.label == "bucketed, 4 MB"  # the notebook's label, a key, stays as given
    assert explorer.variant.description == "方案"
    assert explorer.label_html.value == "<b>bucketed, 4 MB</b>：这一步用了 40 ms，每个秩 3 次全归约"
    ax = explorer.fig.axes[0]
    assert ax.get_title(loc="left") == "bucketed, 4 MB：一步 40 ms"
    assert [t.get_text() for t in ax.get_yticklabels()][:2] == ["秩 1 通信", "秩 1 计算"]
    legend = [t.get_text() for t in explorer.fig.legends[0].get_texts()]
    assert legend == ["前向传播", "反向传播", "优化器更新", "全归约：桶 0、2、…", "桶 1、3、…"]


def test_the_checkers_widget_and_figures_of_09_and_10_speak_chinese():
    before = list(checks.RESULTS)
    per_micro_batch = lambda counts, rank, j: 1 / counts.shape[1]  # noqa: E731  (the 2024 bug)
    peak_of_one = lambda N, L, d, T, tps, peak, n: (6 * N + 12 * L * T * d) * tps / peak  # noqa: E731
    X, y = data.linear_data(m=256, theta=(1.0, 2.0), noise=0.5, x_range=(0.0, 3.0))
    metrics = {
        "log": [{"step": 0, "loss": 5.5}, {"step": 1, "loss": 5.0}],
        "val": [{"step": 1, "val_loss": 4.9}],
        "params": 1234,
        "world_size": 2,
    }
    try:
        set_language("zh")
        scale = checks.check("09.token_loss_scale", per_micro_batch)
        mfu = checks.check("10.mfu", peak_of_one)
        explorer = widgets.LargeBatchExplorer(X, y)
        explorer.rule.value = "same η"  # the notebook sets the rule by its English name
        curves = plots.training_curves(metrics)
    finally:
        set_language("en")
        checks.RESULTS[:] = before
    assert scale.status == mfu.status == checks.INCORRECT  # data stays English
    assert scale.hint.startswith("这是把每个微批量的平均值除以 M，也就是 2024 年发现的那个 bug")
    assert mfu.hint == "peak_flops 是一块 GPU 的峰值：整个作业的峰值是它的 n_gpus 倍"
    assert explorer.status in ("tracks", "lags", "diverges")
    assert explorer.k.description == "批量 × c"
    assert [label for label, _ in explorer.rule.options] == ["相同的 η", "线性：cη", "平方根：√c η"]
    assert explorer.label.value.startswith("<b>落后</b>: 批量 16，η = 0.02；对照批量 4")
    ax = curves.axes[0]
    assert ax.get_title() == "1,234 个参数，2 个工作进程"
    assert ax.get_xlabel() == "步" and ax.get_ylabel() == "交叉熵（每字节的奈特数）"


def test_package_messages_must_be_translated_and_keep_their_placeholders(tmp_path):
    package = tmp_path / "pkg" / "course"
    package.mkdir(parents=True)
    module = package / "hints.py"
    module.write_text('from x import N_, _\n\nA = N_("bye")\n_("with {p} ranks").format(p=2)\n')
    catalog = update_messages("zh", package)
    assert message_problems("zh", package) == [
        "pkg/course/hints.py: message 'bye' is not translated yet",
        "pkg/course/hints.py: message 'with {p} ranks' is not translated yet",
    ]
    po = polib.pofile(str(catalog))
    po.find("bye").msgstr, po.find("with {p} ranks").msgstr = "再见", "用几个秩"
    po.save()
    assert message_problems("zh", package) == [
        "pkg/course/hints.py: message 'with {p} ranks': the translation must keep {p}"
    ]
    po.find("with {p} ranks").msgstr = "用 {p} 个秩"
    po.save()
    assert message_problems("zh", package) == []
    module.write_text('from x import _\n\n_("with {p} ranks!").format(p=2)\n')
    update_messages("zh", package)
    entry = polib.pofile(str(catalog)).find("with {p} ranks!")
    assert (
        entry.fuzzy and entry.msgstr == "用 {p} 个秩" and entry.previous_msgid == "with {p} ranks"
    )
    assert message_problems("zh", package) == [
        "pkg/course/hints.py: message 'with {p} ranks!' changed since it was translated (fuzzy): "
        "revise it"
    ]


# ---- student versions


def test_the_student_version_of_a_zh_notebook_runs_in_chinese_with_nothing_attempted(tmp_path):
    assignments.main(["student", str(ROOT / "notebooks" / "zh"), str(tmp_path)])
    path = tmp_path / "00_welcome.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert 'set_language("zh")' in next(c for c in nb.cells if c.cell_type == "code").source
    report = tmp_path / "report.json"
    write = (
        "import json\nfrom minidp.course import checks\n"
        f"open({str(report)!r}, 'w').write(json.dumps([checks.report(), str(checks.RESULTS[-1])]))"
    )
    nb.cells.append(new_code_cell(write))
    NotebookClient(nb, timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    status, last = json.loads(report.read_text())
    assert status == {"00.mean": checks.NOT_ATTEMPTED}
    assert last == "⏳ 00.mean: 未作答。把 `raise NotImplementedError` 换成你的代码"


# ---- for the reader


def test_the_readmes_open_the_chinese_edition_and_its_links_resolve():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    course = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Course"]
    repository = course.removeprefix("https://github.com/").removesuffix(".git").strip("/")
    zh = f"https://mybinder.org/v2/gh/{repository}/HEAD?urlpath=lab/tree/notebooks/zh/00_welcome.ipynb"
    english, chinese = ((ROOT / name).read_text() for name in ("README.md", "README.zh-CN.md"))
    assert zh in english and zh in chinese and "(README.zh-CN.md)" in english
    links = re.findall(r"\]\(((?:notebooks|README)[^)#]*)", chinese)
    assert "notebooks/zh/00_welcome.ipynb" in links
    assert [link for link in links if not (ROOT / link).exists()] == []
