"""The README's estimator parameter table is complete and true: every parameter it lists
exists on the estimators it names with the stated default, every parameter of km.KMeans /
km.MiniBatchKMeans (and of scikit-learn's, where installed) is listed."""
import ast
import inspect
import os
import re

import pytest

import kmgan_ext as km

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
CLASSES = {"KMeans": km.KMeans, "MiniBatchKMeans": km.MiniBatchKMeans}


def _table_rows() -> list[list[str]]:
    """The cells of the parameter table of the README's "Estimators for scikit-learn users"."""
    with open(README) as f:
        text = f.read()
    section = text.split("## Estimators for scikit-learn users", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    assert lines and lines[0].startswith("| parameter | default |"), "no parameter table"
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def _split_top(cell: str) -> list[str]:
    """``a, b, (c, d)`` -> its comma-separated values, commas inside brackets kept."""
    parts, depth, cur = [], 0, ""
    for ch in cell:
        depth += 1 if ch in "([" else -1 if ch in ")]" else 0
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p.strip() for p in parts + [cur]]


def _value(text: str):
    return ast.literal_eval(text.strip().strip("`"))


def documented() -> dict[str, dict[str, object]]:
    """{class name: {parameter: documented default}} read from the table.

    A default cell "300 (mini-batch: 100)" gives KMeans 300 and MiniBatchKMeans 100; a
    meaning that starts "`MiniBatchKMeans` only" (or "`KMeans` only") limits the row."""
    out: dict[str, dict[str, object]] = {name: {} for name in CLASSES}
    for names_cell, default_cell, meaning in _table_rows():
        names = re.findall(r"`(\w+)`", names_cell)
        defaults = _split_top(default_cell)
        assert len(names) == len(defaults), (names_cell, default_cell)
        owners = [c for c in CLASSES if meaning.startswith(f"`{c}` only")] or list(CLASSES)
        for name, d in zip(names, defaults):
            m = re.fullmatch(r"(.*?)\s*\(mini-batch: (.*)\)", d)
            for cls in owners:
                out[cls][name] = _value(m.group(2) if m and cls == "MiniBatchKMeans" else m.group(1) if m else d)
    return out


@pytest.mark.parametrize("cls", sorted(CLASSES))
def test_every_listed_parameter_exists_with_its_default(cls):
    sig = inspect.signature(CLASSES[cls]).parameters
    for name, default in documented()[cls].items():
        assert name in sig, f"README lists {name!r} for {cls}, which has no such parameter"
        assert sig[name].default == default and type(sig[name].default) is type(default), (
            f"README says {cls}({name}={default!r}), the signature has {sig[name].default!r}")
        # get_params reads the same values (what clone and grid searches see)
        assert CLASSES[cls]().get_params()[name] == default


@pytest.mark.parametrize("cls", sorted(CLASSES))
def test_every_parameter_is_listed(cls):
    listed = set(documented()[cls])
    ours = set(inspect.signature(CLASSES[cls]).parameters)
    assert ours == listed, f"{cls}: not in the README {ours - listed}, not in {cls} {listed - ours}"


@pytest.mark.parametrize("cls", sorted(CLASSES))
def test_sklearns_parameters_are_ours_with_its_defaults(cls):
    sk = pytest.importorskip("sklearn.cluster")
    theirs = inspect.signature(getattr(sk, cls)).parameters
    ours = inspect.signature(CLASSES[cls]).parameters
    for name, p in theirs.items():
        assert name in ours, f"scikit-learn's {cls} has {name!r}, ours does not"
        assert ours[name].default == p.default, (cls, name, ours[name].default, p.default)
        assert ours[name].kind == p.kind, (cls, name, "keyword-only as scikit-learn's")


def test_quick_start_runs():
    """The README's estimator quick start, run as written on small data (its GPU line only
    where a GPU is)."""
    import numpy as np
    import torch

    with open(README) as f:
        section = f.read().split("## Estimators for scikit-learn users", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    if not torch.cuda.is_available():
        code = "\n".join(ln for ln in code.splitlines() if '"cuda"' not in ln)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)) + 6 * rng.normal(size=(10, 5))[rng.integers(0, 10, 400)]
    ns = {"X": x, "X_new": x[:7], "loader": np.array_split(x, 4)}
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - the README's own code
    assert ns["labels"].shape == (7,) and ns["dists"].shape == (7, 10)
    assert ns["mbk"].cluster_centers_.shape == (10, 5) and ns["score"] < 0
