"""benchmarks/checks.py: wrong answers no catalog holds are rejected, with advice about their mistake."""

import runpy

import pytest

from .conftest import ROOT

BENCH = runpy.run_path(str(ROOT / "benchmarks" / "checks.py"), run_name="benchmark_under_test")


@pytest.mark.filterwarnings("ignore:The use of `x.T`")  # one held-out answer uses x.T on 4-D tensors
def test_held_out_wrong_answers_are_rejected_with_specific_advice():
    report = BENCH["run"]()
    assert report.n_wrong >= 5 * report.n_exercises, "the held-out set needs >= 5 answers per exercise"
    assert report.rejected_rate >= 0.99, f"rejected {report.rejected}/{report.n_wrong}: {report.misses}"
    assert report.specific_rate >= 0.70, f"specific {report.specific}/{report.n_wrong}: {report.misses}"
    assert not report.false_rejections, report.false_rejections
    assert not report.catalogued, f"held-out answers that a catalog holds: {report.catalogued}"
