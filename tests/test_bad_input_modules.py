"""The bad-input matrix of issue 16 for the modules and estimators: km.VectorQuantizer,
km.CenterLoss, km.MiniBatchKMeansModule, km.KMeans, km.MiniBatchKMeans.

Constructor arguments (wrong types, out of range), the inputs of forward / fit / partial_fit /
predict / init_ (wrong Python types, dtype, device, shape, 1-D, empty, NaN/Inf, labels out of
range) and state_dict loading with wrong shapes. Each case must end in one of two ways:
  * a clean error: ValueError/TypeError naming the argument (for load_state_dict, PyTorch's
    RuntimeError naming the key), with the object's state (buffers, parameters, fitted
    attributes) bitwise unchanged;
  * the right answer: for the modules, the same call on a copy of the module whose ops run on
    the float64 reference backend (outputs and the new state); for the estimators, the same
    call on the canonical form of the input (a numpy float array) from the same state.
`pytest -s` prints the figures.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import kmgan_ext as km

D, K = 3, 4
CLEAN = (ValueError, TypeError)


def _x(n=6, seed=0):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def _with(t, v):
    t = t.clone()
    t.view(-1)[t.numel() // 2] = v
    return t


# ------------------------------------------------------------------ object state
def _state(obj):
    if isinstance(obj, torch.nn.Module):
        return {k: v.detach().clone() for k, v in obj.state_dict().items()
                if not isinstance(v, torch.nn.parameter.UninitializedBuffer)}
    out = {}
    for k, v in vars(obj).items():
        if isinstance(v, torch.Tensor):
            out[k] = v.detach().clone()
        elif isinstance(v, np.ndarray):
            out[k] = torch.from_numpy(v.copy())
        elif isinstance(v, (int, float, str, bool, type(None))):
            out[k] = v
    return out


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.nan_to_num(), b.nan_to_num()) \
            and torch.equal(a.isnan(), b.isnan())
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _same_state(s1, s2) -> bool:
    return s1.keys() == s2.keys() and all(_equal(s1[k], s2[k]) for k in s1)


def _tensors(res):
    if res is None:
        return []
    if isinstance(res, np.ndarray):
        return [torch.from_numpy(np.asarray(res).copy())]
    if isinstance(res, torch.Tensor):
        return [res.detach()]
    if isinstance(res, (tuple, list)):
        return [t for r in res for t in _tensors(r)]
    if isinstance(res, (int, float)):
        return [torch.tensor(float(res), dtype=torch.float64)]
    return []  # self (fit / partial_fit return the object: its state is compared)


def _close(a, b) -> bool:
    if a.shape != b.shape or a.is_floating_point() != b.is_floating_point():
        return False
    if not a.is_floating_point():
        return torch.equal(a.cpu().long(), b.cpu().long())
    try:
        torch.testing.assert_close(a.cpu().double(), b.cpu().double(), rtol=1e-5, atol=1e-5,
                                   equal_nan=True)
    except AssertionError:
        return False
    return True


_IO_KEYS = ("_torch_io", "_out_device")  # how results are returned (numpy or torch), not state


def _close_state(s1, s2) -> bool:
    s1 = {k: v for k, v in s1.items() if k not in _IO_KEYS}
    s2 = {k: v for k, v in s2.items() if k not in _IO_KEYS}
    if s1.keys() != s2.keys():
        return False
    for k in s1:
        a, b = s1[k], s2[k]
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            if not _close(a, b):
                return False
        elif not _equal(a, b):
            return False
    return True


# ------------------------------------------------------------------ subjects
def _vq(**kw):
    torch.manual_seed(0)
    return km.VectorQuantizer(K, D, **kw)


def _center_loss(**kw):
    torch.manual_seed(0)
    return km.CenterLoss(K, D, **kw)


def _mbk_module(**kw):
    m = km.MiniBatchKMeansModule(K, D, **kw)
    m.init_(_x(12, seed=3))
    return m


def _kmeans(**kw):
    return km.KMeans(3, n_init=1, random_state=0, **kw)


def _mbk(**kw):
    return km.MiniBatchKMeans(3, batch_size=8, random_state=0, max_iter=5, **kw)


def _fitted(make):
    def f(**kw):
        est = make(**kw)
        est.fit(_x(20, seed=4).numpy())
        return est
    return f


def _bad_values(x, fitted=False):
    """(case, value, canonical) for an x-like argument; canonical: the equivalent numpy float
    input the estimators must answer as (None: they must reject it). The modules take torch
    tensors only and are judged against their reference-backend twin instead."""
    xn = x.numpy()
    xi = (x * 10).long()
    return [
        ("python list", x.tolist(), np.asarray(x.tolist())),
        ("numpy", xn, xn),
        ("numpy int", xi.numpy(), xi.numpy().astype(np.float32)),
        ("int tensor", xi, xi.float().numpy()),
        ("float64", x.double(), x.double().numpy()),
        ("float16", x.half(), x.half().float().numpy()),
        ("meta device", x.to("meta"), None),
        ("nan", _with(x, float("nan")), None),
        ("inf", _with(x, float("inf")), None),
        ("huge 3e19", x * 3e19, (x * 3e19).numpy()),
        ("1-D", x[0], None),
        ("0-d", x[0, 0], None),
        ("one column less", x[:, :-1], None if fitted else xn[:, :-1]),
        ("no rows", x[:0], xn[:0] if fitted else None),
        ("3-D", x.reshape(2, -1, D), None),
        ("non-contiguous", x.t().contiguous().t(), xn),
        ("string", "x", None),
        ("None", None, None),
        ("complex", x.to(torch.complex64), None),
    ]


# ------------------------------------------------------------------ the cases
def _ctor_cases():
    """(subject, case, make, names)."""
    out = []
    bad = {
        "VectorQuantizer": (_vq, [("num_codes", 0), ("dim", -1), ("heads", 2.5), ("num_codes", "4"),
                                  ("dim", True), ("decay", 1.5), ("decay", "a"), ("decay", float("nan")),
                                  ("eps", -1.0), ("eps", "a"), ("commitment_weight", "a"),
                                  ("commitment_weight", float("nan")), ("commitment_weight", -1.0),
                                  ("threshold_dead_code", -1.0), ("threshold_dead_code", "a"),
                                  ("update", "sometimes"), ("dtype", torch.int64), ("seed", "x"),
                                  ("seed", 2.5), ("learnable_codebook", "yes"), ("cosine", "no"),
                                  ("deterministic", "yes")]),
        "CenterLoss": (_center_loss, [("num_classes", 0), ("feat_dim", "3"), ("num_classes", 2.0),
                                      ("reduction", "avg"), ("centers", "param"), ("alpha", 2.0),
                                      ("alpha", "a"), ("alpha", float("nan")), ("update", "x"),
                                      ("dtype", torch.int64)]),
        "MiniBatchKMeansModule": (
            lambda **kw: km.MiniBatchKMeansModule(K, D, **kw) if "n_clusters" not in kw and "n_features" not in kw
            else km.MiniBatchKMeansModule(kw.pop("n_clusters", K), kw.pop("n_features", D), **kw),
            [("n_clusters", 0), ("n_clusters", "4"), ("n_clusters", 2.5), ("n_clusters", True),
             ("n_features", 0), ("dtype", torch.int64), ("update", "x"), ("deterministic", "yes"),
             ("reassignment_ratio", -1.0), ("reassignment_ratio", "a"), ("seed", "x"), ("seed", 2.5)]),
    }
    for subject, (make, pairs) in bad.items():
        for name, v in pairs:
            out.append((subject, f"{name}={v!r}", (lambda make=make, name=name, v=v: make(**{name: v})), (name,)))
    est_bad = [("n_clusters", 0), ("n_clusters", "3"), ("n_clusters", 2.5), ("max_iter", 0),
               ("tol", -1.0), ("tol", "a"), ("n_init", 0), ("init", "bad"), ("init", np.zeros((2, D))),
               ("random_state", "x"), ("dtype", torch.int64), ("deterministic", "yes"),
               ("metric", "bad"), ("device", "nope")]
    for subject, make, extra in (("KMeans", km.KMeans, [("algorithm", "x")]),
                                 ("MiniBatchKMeans", km.MiniBatchKMeans,
                                  [("batch_size", 0), ("reassignment_ratio", -1.0),
                                   ("max_no_improvement", -1), ("init_size", "x")])):
        for name, v in est_bad + extra:
            kw = {"n_clusters": 3, "random_state": 0, **{name: v}}
            out.append((subject, f"{name}={v!r} (at fit)",
                        (lambda make=make, kw=kw: make(**kw).fit(_x(20, seed=4).numpy())), (name,)))
    return out


def _call_cases():
    """(subject, case, make, call(obj, value), value, names, canonical or None)."""
    x = _x()
    lab = torch.tensor([0, 1, 2, 3, 0, 1])
    out = []
    for case, v, canon in _bad_values(x):
        out += [
            ("VectorQuantizer", f"forward x {case}", _vq, lambda o, v: o(v), v, ("x",), None),
            ("VectorQuantizer", f"forward(update) x {case}", _vq, lambda o, v: o(v, update=True), v, ("x",), None),
            ("VectorQuantizer", f"init_ data {case}", _vq, lambda o, v: o.init_(v), v, ("data",), None),
            # a shape mismatch of x and labels may name either
            ("CenterLoss", f"forward x {case}", _center_loss, lambda o, v: o(v, lab), v, ("x", "labels"), None),
            ("CenterLoss", f"forward(update) x {case}", lambda: _center_loss(centers="buffer"),
             lambda o, v: o(v, lab, update=True), v, ("x", "labels"), None),
            ("MiniBatchKMeansModule", f"forward x {case}", _mbk_module, lambda o, v: o(v), v, ("x",), None),
            ("MiniBatchKMeansModule", f"predict x {case}", _mbk_module, lambda o, v: o.predict(v), v, ("x",), None),
            ("MiniBatchKMeansModule", f"partial_fit x {case}", _mbk_module, lambda o, v: o.partial_fit(v), v, ("x",), None),
            ("MiniBatchKMeansModule", f"init_ x {case}", _mbk_module, lambda o, v: o.init_(v), v, ("x",), None),
        ]
    x20 = _x(20, seed=5)
    for (case, v, canon), (_, vf, canon_f) in zip(_bad_values(x20), _bad_values(x20, fitted=True)):
        for subject, make in (("KMeans", _kmeans), ("MiniBatchKMeans", _mbk)):
            out += [
                (subject, f"fit X {case}", make, lambda o, v: o.fit(v), v, ("X", "n_clusters"), canon),
                (subject, f"predict X {case}", _fitted(make), lambda o, v: o.predict(v), vf, ("X",), canon_f),
                (subject, f"transform X {case}", _fitted(make), lambda o, v: o.transform(v), vf, ("X",), canon_f),
            ]
        out.append(("MiniBatchKMeans", f"partial_fit X {case}", _fitted(_mbk),
                    lambda o, v: o.partial_fit(v), vf, ("X",), canon_f))
    # labels of CenterLoss
    for case, v in [("float", lab.float()), ("out of range", lab + K), ("negative", lab - 1),
                    ("one less", lab[:-1]), ("2-D", lab[None]), ("python list", lab.tolist()),
                    ("meta device", lab.to("meta")), ("int32", lab.int())]:
        for upd in (False, True):
            out.append(("CenterLoss", f"forward{'(update)' if upd else ''} labels {case}",
                        (lambda: _center_loss(centers="buffer")),
                        (lambda o, v, upd=upd: o(x, v, update=upd)), v, ("labels",), None))
    # sample weights and too few rows
    x20 = _x(20, seed=5).numpy()
    for case, w in [("wrong shape", np.ones(19)), ("negative", -np.ones(20)), ("nan", np.full(20, np.nan)),
                    ("string", "a")]:
        for subject, make in (("KMeans", _kmeans), ("MiniBatchKMeans", _mbk)):
            out.append((subject, f"fit sample_weight {case}", make,
                        lambda o, v: o.fit(x20, sample_weight=v), w, ("sample_weight",), None))
    for subject, make in (("KMeans", _kmeans), ("MiniBatchKMeans", _mbk)):
        out.append((subject, "fit fewer rows than n_clusters", make, lambda o, v: o.fit(v), x20[:2],
                    ("n_clusters",), None))
    out.append(("MiniBatchKMeans", "partial_fit (first) fewer rows than n_clusters", _mbk,
                lambda o, v: o.partial_fit(v), x20[:2], ("n_clusters",), None))
    out.append(("MiniBatchKMeansModule", "init_ fewer rows than n_clusters", _mbk_module,
                lambda o, v: o.init_(v), x[:2], ("n_clusters", "x"), None))
    out.append(("VectorQuantizer", "init_ fewer rows than num_codes", _vq,
                lambda o, v: o.init_(v), x[:2], ("num_codes",), None))
    return out


def _state_dict_cases():
    """(subject, case, make, bad state_dict, keys that may be named)."""
    out = []
    for subject, make in (("VectorQuantizer", _vq), ("CenterLoss", _center_loss),
                          ("MiniBatchKMeansModule", _mbk_module)):
        good = make().state_dict()
        for key, t in good.items():
            if t.dim() == 0:
                continue
            for case, bad in [("one row more", torch.cat([t, t[:1]])), ("one column less", t[..., :-1]),
                              ("flattened", t.reshape(-1))]:
                if bad.shape == t.shape:
                    continue
                sd = {k: (v * 0 + 1 if v.is_floating_point() else v + 1) for k, v in good.items()}
                sd[key] = bad
                out.append((subject, f"load_state_dict {key} {case}", make, sd, (key,)))
    # a lazy module (no n_features) takes its shapes from the state_dict: K must still match
    good = _mbk_module().state_dict()
    for key in ("centers", "counts"):
        sd = dict(good)
        sd[key] = torch.cat([good[key], good[key][:1]])
        out.append(("MiniBatchKMeansModule(lazy)", f"load_state_dict {key} one row more",
                    lambda: km.MiniBatchKMeansModule(K), sd, (key,)))
    sd = dict(good)
    sd["counts"] = good["counts"] - 5
    out.append(("MiniBatchKMeansModule", "load_state_dict counts negative", _mbk_module, sd, ("counts",)))
    return out


# ------------------------------------------------------------------ the runner
def _reference_copy(obj):
    ref = copy.deepcopy(obj)
    ref.backend = "reference"
    return ref


def _named(msg, names):
    return any(n in msg for n in names)


def _call_and_judge_error(obj, call, value, names, before, stats, failures, label):
    """(True, None) after counting an error as rejected (clean, argument named, state
    unchanged) or unclean; (False, result) when the call returned."""
    try:
        return False, call(obj, value)
    except CLEAN as e:
        if _named(str(e), names) and _same_state(_state(obj), before):
            stats["rejected"] += 1
        else:
            stats["unclean"] += 1
            failures.append(f"{label}: {type(e).__name__} {'(state changed) ' if _named(str(e), names) else ''}{str(e)[:100]}")
    except Exception as e:  # noqa: BLE001
        stats["unclean"] += 1
        failures.append(f"{label}: {type(e).__name__} {str(e)[:100]}")
    return True, None


def _run_module_call(obj, call, value, names, stats, failures, label):
    ref = _reference_copy(obj)
    before = _state(obj)
    raised, res = _call_and_judge_error(obj, call, value, names, before, stats, failures, label)
    if raised:
        return
    try:
        want = call(ref, value)
    except Exception as e:  # noqa: BLE001
        stats["silent"] += 1
        failures.append(f"{label}: accepted, but the reference raises {type(e).__name__}: {str(e)[:80]}")
        return
    got_t, want_t = _tensors(res), _tensors(want)
    if (len(got_t) == len(want_t) and all(_close(g, w) for g, w in zip(got_t, want_t))
            and _close_state(_state(obj), _state(ref))):
        stats["answered"] += 1
    else:
        stats["silent"] += 1
        failures.append(f"{label}: accepted with an answer different from the reference's")


def _run_estimator_call(obj, call, value, names, canon, stats, failures, label):
    before = _state(obj)
    twin = copy.deepcopy(obj)
    raised, res = _call_and_judge_error(obj, call, value, names, before, stats, failures, label)
    if raised:
        return
    if canon is None:
        stats["silent"] += 1
        failures.append(f"{label}: accepted (must be rejected)")
        return
    want = call(twin, canon)
    got_t, want_t = _tensors(res), _tensors(want)
    if (len(got_t) == len(want_t) and all(_close(g, w) for g, w in zip(got_t, want_t))
            and _close_state(_state(obj), _state(twin))):
        stats["answered"] += 1
    else:
        stats["silent"] += 1
        failures.append(f"{label}: accepted with an answer different from the canonical input's")


SUBJECTS = ["VectorQuantizer", "CenterLoss", "MiniBatchKMeansModule", "KMeans", "MiniBatchKMeans"]


@pytest.mark.parametrize("subject", SUBJECTS)
def test_bad_input_modules(subject):
    stats = dict(tried=0, rejected=0, answered=0, silent=0, unclean=0)
    failures: list[str] = []
    torch.manual_seed(0)
    for subj, case, make, names in _ctor_cases():
        if subj != subject:
            continue
        stats["tried"] += 1
        label = f"{subj}({case})"
        try:
            make()
        except CLEAN as e:
            if _named(str(e), names):
                stats["rejected"] += 1
            else:
                stats["unclean"] += 1
                failures.append(f"{label}: {type(e).__name__} {str(e)[:100]}")
            continue
        except Exception as e:  # noqa: BLE001
            stats["unclean"] += 1
            failures.append(f"{label}: {type(e).__name__} {str(e)[:100]}")
            continue
        stats["silent"] += 1
        failures.append(f"{label}: accepted")
    for subj, case, make, call, value, names, canon in _call_cases():
        if subj != subject:
            continue
        stats["tried"] += 1
        obj = make()
        label = f"{subj}: {case}"
        if isinstance(obj, torch.nn.Module):
            _run_module_call(obj, call, value, names, stats, failures, label)
        else:
            _run_estimator_call(obj, call, value, names, canon, stats, failures, label)
    for subj, case, make, sd, names in _state_dict_cases():
        if subj.split("(")[0] != subject:
            continue
        stats["tried"] += 1
        obj = make()
        before = _state(obj)
        label = f"{subj}: {case}"
        try:
            obj.load_state_dict(sd)
        except (RuntimeError, ValueError, TypeError) as e:
            if _named(str(e), names) and _same_state(_state(obj), before):
                stats["rejected"] += 1
            else:
                stats["unclean"] += 1
                failures.append(f"{label}: {type(e).__name__} {'(state changed) ' if _named(str(e), names) else ''}{str(e)[:100]}")
            continue
        stats["silent"] += 1
        failures.append(f"{label}: accepted")
    print(f"\nbad-input matrix, {subject}: {stats}")
    assert not failures, f"{len(failures)} of {stats['tried']}:\n" + "\n".join(failures)
