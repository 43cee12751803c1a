"""Every curated mutant of `make mutants` (tests/mutants/mutants.py) still finds its snippet
exactly once in its file. `make mutants` is not part of `make test`, so without this a rewrite
of the code leaves a mutant "stale" (never applied) until someone runs it, as three had been
(cpu-assign-tie-to-highest, triton-deterministic-takes-atomic-path, checks-wrong-argument-named)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "mutants"))

from mutants import MUTANTS  # noqa: E402
from run import form_in, forms  # noqa: E402


@pytest.mark.parametrize("m", MUTANTS, ids=[m["name"] for m in MUTANTS])
def test_mutant_snippet_is_in_its_file(m):
    with open(os.path.join(ROOT, m["file"])) as f:
        text = f.read()
    olds, news = forms(m)
    assert len(olds) == len(news), m["name"]
    # the form the runner applies (tests/mutants/run.py apply)
    assert form_in(text, m) is not None, f"{m['name']} is stale: update tests/mutants/mutants.py"
    assert all(old != new for old, new in zip(olds, news)), m["name"]
