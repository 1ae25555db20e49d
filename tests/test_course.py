"The course (nbs/course/): student versions match their solution notebooks, and nbdev-test runs the solutions, not the student versions."
import json

from conftest import ROOT
from randsae.course import SOLUTION_MARKERS, course_dir, notebook_json, student_notebook

SOLUTIONS = sorted((ROOT/"nbs"/"course"/"solutions").glob("[0-9][0-9]_*.ipynb"))


def test_course_has_lessons():
    assert course_dir() == ROOT/"nbs"/"course"
    assert 5 <= len(SOLUTIONS) <= 8, [p.name for p in SOLUTIONS]
    assert sorted(p.name for p in course_dir().glob("*.ipynb")) == [p.name for p in SOLUTIONS]


def test_student_versions_are_generated_from_the_solutions():
    for sol in SOLUTIONS:
        expected = notebook_json(student_notebook(json.loads(sol.read_text())))
        assert (course_dir()/sol.name).read_text() == expected, \
            f"{sol.name}: the student version is stale; run `python -c 'from randsae.course import write_student_notebooks; write_student_notebooks()'`"


def test_every_exercise_has_a_stub_a_solution_and_a_check():
    for sol in SOLUTIONS:
        cells = json.loads(sol.read_text())["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        begin = SOLUTION_MARKERS["code"][0]
        assert begin in code[0] and "strict()" in code[0], f"{sol.name}: the first code cell must turn on strict() inside a solution block"
        exercises = [i for i, s in enumerate(code) if begin in s and i > 0]
        assert 1 <= len(exercises) <= 3, f"{sol.name}: {len(exercises)} exercises"
        for i in exercises:
            assert " = ...  # your code" in code[i], f"{sol.name}: exercise cell {i} has no `... # your code` stub"
            assert code[i + 1].lstrip().startswith("check_"), f"{sol.name}: exercise cell {i} is not followed by a check cell"
        student = "".join("".join(c["source"]) for c in json.loads((course_dir()/sol.name).read_text())["cells"])
        assert "SOLUTION" not in student and "strict()" not in student, sol.name


def test_nbdev_test_runs_the_solutions_and_skips_the_student_versions():
    from nbdev.doclinks import nbglob
    from nbdev.test import _keep_file
    found = [p for p in nbglob(ROOT/"nbs", as_path=True) if _keep_file(p, ".notest")]
    assert set(SOLUTIONS) <= set(found), "nbdev-test does not discover nbs/course/solutions/"
    assert not [p for p in found if p.parent == course_dir()], "nbdev-test would run the student versions: nbs/course/.notest is missing"
    assert ROOT/"nbs"/"26_course.ipynb" in found


def _names(source: str, ctx) -> set[str]:
    import ast
    return {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name) and isinstance(n.ctx, ctx)}


def test_student_versions_run_like_the_solutions_outside_the_exercises():
    "No cell reads a name that only a solution block assigns: the student version runs every cell the solutions run (checks answer 'not yet')."
    import ast
    from randsae.course import student_source
    for sol in SOLUTIONS:
        solution_only = set()
        for c in json.loads(sol.read_text())["cells"]:
            if c["cell_type"] != "code": continue
            full = "".join(c["source"]); student = student_source(full)
            bad = _names(student, ast.Load) & solution_only
            assert not bad, f"{sol.name}: a cell reads {sorted(bad)}, which only a solution block assigns"
            solution_only = (solution_only | _names(full, ast.Store)) - _names(student, ast.Store)
