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


@pytest.mark.parametrize("m", MUTANTS, ids=[m["name"] for m in MUTANTS])
def test_mutant_snippet_is_in_its_file(m):
    with open(os.path.join(ROOT, m["file"])) as f:
        text = f.read()
    olds = m["old"] if isinstance(m["old"], list) else [m["old"]]
    news = m["new"] if isinstance(m["new"], list) else [m["new"]]
    assert len(olds) == len(news), m["name"]
    # the runner applies the first form found exactly once (tests/mutants/run.py apply)
    assert any(text.count(old) == 1 for old in olds), f"{m['name']} is stale: update tests/mutants/mutants.py"
    assert all(old != new for old, new in zip(olds, news)), m["name"]
