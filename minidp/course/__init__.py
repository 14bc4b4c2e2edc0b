"""The course around the engine: what the notebooks and the classroom need, and the trainer not.

    from minidp.course import checks, plots, widgets   # in a notebook
    python -m minidp.course.assignments student|grade  # for an instructor
    python -m minidp.course.translate update|build|check zh   # the Chinese edition

    checks        exercise checkers: correct, incorrect with a hint, or not attempted
    plots         the notebooks' figures (matplotlib)
    widgets       the notebooks' sliders and explorers (ipywidgets)
    assignments   student versions of the notebooks, and the command line
    grading       grade reports of submitted notebooks
    reaper        every process a graded submission started, found and ended
    i18n          set_language("zh") and _(): the course's own messages in the learner's language
    translate     translated editions, generated from the English notebooks and gettext catalogs

The arrow points one way: this package uses the engine (`minidp`) through its public arguments,
and nothing in the engine imports it, so `import minidp` and `python -m minidp.train` load no
matplotlib, ipywidgets or nbformat.
"""
