"""The ``cuda_emulated`` backend: the CUDA C++ kernels of csrc/cuda, run on CPU threads.

A test harness, not a fast path (issue 11, section 1). The unchanged kernel sources
``csrc/cuda/*.cu`` are compiled with the host g++ against a small CUDA stand-in
(``csrc/cuda/emulation``: every GPU thread its own fiber, run to its next barrier or shuffle
in forward / reverse / seeded-random order, so warps are not in lockstep; blocks in the same
orders, several in flight on their own threads; see ``cuda_shim.h``) into a shared library, loaded with ctypes. The functions below are the
backend interface (see ``reference.py``) over the raw-pointer launchers of
``csrc/cuda/launchers.h``, doing what the torch bindings ``csrc/cuda/*_binding.cpp`` do
(workspaces, the deterministic mode's sort, the loss block's composition) with CPU tensors.

The library is built from the source tree on first use and cached under
``$KMGAN_EMU_CACHE`` (default ``~/.cache/kmgan_ext/cuda_emulated``) by a hash of the sources
and flags, so editing a ``.cu`` file and re-running ``pytest -m emulated_gpu`` tests the edit
without reinstalling. Nothing is built at import: ``load()`` builds and loads it (the tests
call it); until then ``available_backends()["cuda_emulated"]`` says so, and ``backend="auto"``
never picks it.

Environment: ``KMGAN_EMU_ORDER`` (forward | reverse | random), ``KMGAN_EMU_SEED``,
``KMGAN_EMU_IN_FLIGHT`` (blocks at once, 1-8, default 3), ``KMGAN_EMU_SMS`` (multiprocessor count that
grid sizes see), ``KMGAN_EMU_TSAN=1`` (build with ThreadSanitizer; see tests).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading

import torch
from torch import Tensor

_ROOT = pathlib.Path(__file__).resolve().parent.parent
CUDA_SRC = _ROOT / "csrc" / "cuda"
EMU_SRC = CUDA_SRC / "emulation"

ORDERS = ("forward", "reverse", "random")
_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
_REDUCTIONS = {"fro": 0, "mean": 1, "sq_sum": 2}

_lib: ctypes.CDLL | None = None
_error: str | None = None
_lock = threading.Lock()


# --------------------------------------------------------------------------- build
def _flags(tsan: bool, src: pathlib.Path | None = None) -> list[str]:
    flags = ["-std=c++20", "-fPIC", "-fvisibility=hidden", "-fvisibility-inlines-hidden",
             "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas", f"-I{EMU_SRC / 'include'}"]
    if not tsan:
        return flags + ["-O1", "-g0"]  # -O1: compile time dominates the tests' cost
    flags += ["-O1", "-g", "-DKMGAN_EMU_TSAN=1"]
    # The runtime's own bookkeeping is not instrumented; it annotates what orders the kernels.
    return flags if src is not None and src.name == "runtime.cpp" else flags + ["-fsanitize=thread"]


def sources() -> list[pathlib.Path]:
    """Translation units of the harness: every kernel file plus the runtime."""
    return sorted(CUDA_SRC.glob("*.cu")) + [EMU_SRC / "runtime.cpp", EMU_SRC / "capi.cpp"]


def _hash(tsan: bool) -> str:
    h = hashlib.sha256()
    files = sources() + sorted(CUDA_SRC.glob("*.cuh")) + sorted(CUDA_SRC.glob("*.h"))
    files += sorted(EMU_SRC.glob("*.h")) + sorted((EMU_SRC / "include").glob("*.h"))
    if tsan:
        files.append(EMU_SRC / "tsan_driver.cpp")
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(" ".join(_flags(tsan)).encode() + b"\0" + " ".join(_flags(tsan, EMU_SRC / "runtime.cpp")).encode())
    h.update(subprocess.run(["g++", "-dumpfullversion"], capture_output=True, text=True).stdout.encode())
    return h.hexdigest()[:16]


def cache_dir() -> pathlib.Path:
    default = pathlib.Path.home() / ".cache" / "kmgan_ext" / "cuda_emulated"
    return pathlib.Path(os.environ.get("KMGAN_EMU_CACHE", default))


def build(tsan: bool = False, jobs: int = 2) -> pathlib.Path:
    """Compile (or find in the cache) the harness library; returns its path. With ``tsan``,
    everything is built with ThreadSanitizer and the directory also holds ``tsan_driver``, an
    executable that runs every launcher on small grids (tsan_driver.cpp)."""
    if not CUDA_SRC.is_dir() or not (EMU_SRC / "cuda_shim.h").is_file():
        raise RuntimeError(f"the CUDA sources are not here ({CUDA_SRC}): a source checkout is needed")
    if shutil.which("g++") is None:
        raise RuntimeError("g++ (>= 12, C++20) is needed to build the CUDA-on-CPU harness")
    out_dir = cache_dir() / (("tsan-" if tsan else "") + _hash(tsan))
    lib = out_dir / "libkmgan_cuda_emu.so"
    if lib.is_file():
        return lib
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="build-", dir=out_dir.parent))
    try:
        objs, pending = [], []
        for src in sources() + ([EMU_SRC / "tsan_driver.cpp"] if tsan else []):
            obj = work / (src.name + ".o")
            objs.append(obj)
            cmd = ["g++", *_flags(tsan, src), "-x", "c++", "-c", str(src), "-o", str(obj)]
            pending.append(cmd)
        running: list[subprocess.Popen] = []
        failures = []
        while pending or running:
            while pending and len(running) < jobs:
                running.append(subprocess.Popen(pending.pop(0), stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True))
            p = running.pop(0)
            out, _ = p.communicate()
            if p.returncode != 0:
                failures.append(out)
        if failures:
            raise RuntimeError("building the CUDA-on-CPU harness failed:\n" + "\n".join(failures)[-6000:])
        lib_objs = [o for o in objs if o.name != "tsan_driver.cpp.o"]
        links = [["g++", "-shared", "-Wl,-Bsymbolic", *(["-fsanitize=thread"] if tsan else []),
                  "-o", str(work / lib.name), *map(str, lib_objs), "-lpthread", "-ldl"]]
        if tsan:
            links.append(["g++", "-fsanitize=thread", "-o", str(work / "tsan_driver"),
                          *map(str, objs), "-lpthread"])
        for link in links:
            r = subprocess.run(link, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError("linking the CUDA-on-CPU harness failed:\n" + r.stderr[-4000:])
        try:
            work.rename(out_dir)  # atomic: a concurrent build of the same hash may win
        except OSError:
            pass
        return lib if lib.is_file() else work / lib.name
    finally:
        if work.exists() and not (work / lib.name).is_file():
            shutil.rmtree(work, ignore_errors=True)


def load() -> ctypes.CDLL:
    """Build if needed and load the harness; afterwards the backend is available."""
    global _lib, _error
    with _lock:
        if _lib is not None:
            return _lib
        try:
            lib = ctypes.CDLL(str(build()), mode=os.RTLD_LOCAL | os.RTLD_NOW)
        except Exception as e:
            _error = f"{type(e).__name__}: {e}"
            raise
        lib.kmgan_emu_configure.argtypes = [ctypes.c_int, ctypes.c_uint64, ctypes.c_int,
                                            ctypes.c_int]
        lib.kmgan_emu_launch_count.restype = ctypes.c_uint64
        for name in ("cluster_pieces_elems", "assigned_distance_num_partials", "assign_topk_list_len"):
            getattr(lib, "kmgan_emu_" + name).restype = ctypes.c_int64
        _lib = lib
        _error = None
        configure()
        return lib


def why_not() -> str | None:
    if _lib is not None:
        return None
    if _error is not None:
        return f"the CUDA-on-CPU harness failed to build or load ({_error})"
    return (
        "the CUDA-on-CPU test harness is not loaded (kmgan_ext._cuda_emulated.load() builds it "
        "from csrc/cuda with g++; the tests do this)"
    )


def configure(order: str | None = None, seed: int | None = None, in_flight: int | None = None,
              sms: int | None = None) -> None:
    """Block order (forward, reverse, random), its seed, blocks in flight, the SM count grid
    sizes see; None takes $KMGAN_EMU_ORDER / _SEED / _IN_FLIGHT / _SMS or the defaults
    (forward, 0, 3, 2)."""
    env = os.environ
    order = order or env.get("KMGAN_EMU_ORDER", "forward")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    seed = int(env.get("KMGAN_EMU_SEED", 0)) if seed is None else seed
    in_flight = int(env.get("KMGAN_EMU_IN_FLIGHT", 3)) if in_flight is None else in_flight
    sms = int(env.get("KMGAN_EMU_SMS", 2)) if sms is None else sms
    _require().kmgan_emu_configure(ORDERS.index(order), seed, in_flight, sms)


def launch_count() -> int:
    return int(_require().kmgan_emu_launch_count())


def _require() -> ctypes.CDLL:
    if _lib is None:
        raise RuntimeError(f"backend 'cuda_emulated' is not available: {why_not()}")
    return _lib


# --------------------------------------------------------------------------- calls
def _ptr(t: Tensor | None) -> ctypes.c_void_p:
    """The data pointer; the caller keeps the tensor alive until the call returns."""
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


def _i(v: int):
    return ctypes.c_int64(int(v))


def _int32(labels: Tensor) -> ctypes.c_int:
    """The flag after an entry's arguments that says its labels are int32: they are read as
    they are, by the launcher's int32 instantiation (capi.cpp), never copied to int64
    (docs/ops.md)."""
    return ctypes.c_int(labels.dtype == torch.int32)


def _call(name: str, *args) -> None:
    err = getattr(_require(), "kmgan_emu_" + name)(*args)
    if err != 0:
        raise RuntimeError(f"cuda_emulated: {name} failed with cudaError {err}")


def _acc_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _dt(x: Tensor) -> int:
    return _DTYPES[x.dtype]


def _num(name: str, *args) -> int:
    f = getattr(_require(), "kmgan_emu_" + name)
    return int(f(*args))


# --------------------------------------------------------------------------- backend interface
def assign(x: Tensor, centers: Tensor, cosine: bool = False) -> tuple[Tensor, Tensor]:
    """(N,) outputs, or (B, N) for batched problems x (B, N, d), centers (B, K, d): one launch."""
    (n, d), k = x.shape[-2:], centers.shape[-2]
    batch = x.shape[0] if x.dim() == 3 else 1
    labels = torch.empty(x.shape[:-1], dtype=torch.int64)
    dist2 = torch.empty(x.shape[:-1], dtype=_acc_dtype(x))
    if n and batch and cosine:
        unit = torch.empty(batch * k, d, dtype=torch.float32)  # the launcher's workspace
        _call("assign_cosine_launch", _dt(x), _ptr(x), _ptr(centers), _i(n), _i(k), _i(d),
              _ptr(unit), _ptr(labels), _ptr(dist2), _i(batch))
    elif n and batch:
        _call("assign_launch", _dt(x), _ptr(x), _ptr(centers), _i(n), _i(k), _i(d), _ptr(labels),
              _ptr(dist2), _i(batch))
    return labels, dist2


def assign_backward(grad_dist2, x, centers, labels, centers_grad, cosine=False):
    n, k, d = x.shape[0], centers.shape[0], x.shape[1]
    g = grad_dist2.to(_acc_dtype(x)).contiguous()
    grad_x = torch.empty(n, d, dtype=x.dtype)
    gc = torch.empty(k, d, dtype=torch.float64) if centers_grad else None
    _call("assign_cosine_backward_launch" if cosine else "assign_backward_launch", _dt(x), _ptr(g), _ptr(x), _ptr(centers), _ptr(labels), _i(n),
          _i(k), _i(d), _ptr(grad_x), _ptr(gc))
    if not centers_grad:
        return grad_x, centers.new_empty(0)
    return grad_x, gc.to(centers.dtype)


def assign_topk(x: Tensor, centers: Tensor, k: int, cosine: bool = False) -> tuple[Tensor, Tensor]:
    """(N, k) outputs, or (B, N, k) for batched problems x (B, N, d), centers (B, K, d): one
    launch (two with cosine: the unit centers, then the problems)."""
    (n, d), kc = x.shape[-2:], centers.shape[-2]
    batch = x.shape[0] if x.dim() == 3 else 1
    labels = torch.empty(*x.shape[:-1], k, dtype=torch.int64)
    dist2 = torch.empty(*x.shape[:-1], k, dtype=_acc_dtype(x))
    if n and batch:
        cap = _num("assign_topk_list_len", _i(k), _i(kc))
        list_val = torch.empty(batch * n, cap, dtype=torch.float64)
        list_idx = torch.empty(batch * n, cap, dtype=torch.int64)
        unit = torch.empty(batch * kc, d, dtype=torch.float32) if cosine else None  # the unit centers
        _call("assign_topk_launch", _dt(x), _ptr(x), _ptr(centers), _i(n), _i(kc), _i(d), _i(k),
              _ptr(list_val), _ptr(list_idx), _ptr(labels), _ptr(dist2), _ptr(unit), _i(batch))
    return labels, dist2


def soft_assign(x, centers, kind="student_t", alpha=1.0, temperature=1.0):
    n, kc, d = x.shape[0], centers.shape[0], x.shape[1]
    q = torch.empty(n, kc, dtype=_acc_dtype(x))
    if n:
        _call("soft_assign_launch", _dt(x), _ptr(x), _ptr(centers), _i(n), _i(kc), _i(d),
              ctypes.c_int(kind == "student_t"), ctypes.c_double(alpha),
              ctypes.c_double(temperature), _ptr(q))
    return q


def soft_assign_backward(grad_q, q, x, centers, kind, alpha, temperature, centers_grad):
    n, kc, d = x.shape[0], centers.shape[0], x.shape[1]
    acc = _acc_dtype(x)
    g, qq = grad_q.to(acc).contiguous(), q.to(acc).contiguous()
    grad_x = torch.empty(n, d, dtype=x.dtype)
    r_work = torch.empty(n, dtype=acc)
    row_work = torch.empty(n, d, dtype=torch.float64)
    gc = torch.empty(kc, d, dtype=torch.float64) if centers_grad else None
    _call("soft_assign_backward_launch", _dt(x), _ptr(g), _ptr(qq), _ptr(x), _ptr(centers), _i(n),
          _i(kc), _i(d), ctypes.c_int(kind == "student_t"), ctypes.c_double(alpha),
          ctypes.c_double(temperature), _ptr(r_work), _ptr(row_work), _ptr(grad_x), _ptr(gc))
    if not centers_grad:
        return grad_x, centers.new_empty(0)
    return grad_x, gc.to(centers.dtype)


def _workspace(x: Tensor, labels: Tensor, k: int, deterministic: bool):
    """Double sums, batch counts, and in deterministic mode the stable sort and the pieces."""
    n, d = x.shape
    sums = torch.empty(k, d, dtype=torch.float64)
    batch_counts = torch.empty(k, dtype=torch.int64)
    sorted_labels = perm = pieces = None
    if deterministic and n:
        sorted_labels, perm = torch.sort(labels, stable=True)
        pieces = torch.empty(_num("cluster_pieces_elems", _i(n), _i(d)), dtype=torch.float64)
    return sums, batch_counts, sorted_labels, perm, pieces


def _row_norms(x: Tensor, cosine: bool) -> Tensor | None:
    """metric="cosine": the launchers' workspace for the rows' norms (N doubles; at least one,
    as the launchers read cosine from a non-null pointer and an empty tensor's may be null)."""
    return torch.empty(max(x.shape[0], 1), dtype=torch.float64) if cosine else None


def _weights(sample_weight, k: int):
    """sample_weight as the launchers read it (N doubles) and the K doubles of batch weights."""
    if sample_weight is None:
        return None, None
    return (sample_weight.to(torch.float64).contiguous(),
            torch.empty(k, dtype=torch.float64))


def minibatch_update_(centers, counts, x, labels, deterministic=False, cosine=False,
                      sample_weight=None):
    n, k, d = x.shape[0], centers.shape[0], x.shape[1]
    if n == 0:
        return
    sums, batch_counts, sorted_labels, perm, pieces = _workspace(x, labels, k, deterministic)
    norms = _row_norms(x, cosine)  # held here: the launcher writes it
    w, batch_w = _weights(sample_weight, k)
    _call("minibatch_update_launch", _dt(x), _ptr(centers), _ptr(counts), _ptr(x), _ptr(labels),
          _ptr(sorted_labels), _ptr(perm), _i(n), _i(k), _i(d), _ptr(sums), _ptr(batch_counts),
          _ptr(pieces), _ptr(norms), _ptr(w), _ptr(batch_w), _int32(labels))


def minibatch_step_(centers, counts, x, deterministic=False, cosine=False, sample_weight=None):
    labels, _ = assign(x, centers, cosine)
    minibatch_update_(centers, counts, x, labels, deterministic, cosine, sample_weight)
    return labels


def ema_update_(centers, cluster_size, embed_sum, x, labels, decay, eps, deterministic=False,
                cosine=False, sample_weight=None):
    """One problem, or B problems (centers (B, K, d), x (B, N, d), labels (B, N)) in one
    launch sequence: the workspaces B times one problem's, each problem sorted on its own."""
    (n, d), k = x.shape[-2:], centers.shape[-2]
    b = x.shape[0] if x.dim() == 3 else 1
    if b == 0:
        return
    rows = x.reshape(b * n, d)
    sums, batch_counts, _, _, _ = _workspace(rows, labels.reshape(-1), b * k, False)
    sorted_labels = perm = pieces = None
    if deterministic and n:
        sorted_labels, perm = torch.sort(labels.reshape(b, n), dim=1, stable=True)
        pieces = torch.empty(b * _num("cluster_pieces_elems", _i(n), _i(d)), dtype=torch.float64)
    total = torch.empty(b, dtype=torch.float64)
    norms = _row_norms(rows, cosine)  # held here: the launcher writes it
    w, batch_w = _weights(None if sample_weight is None else sample_weight.reshape(-1), b * k)
    _call("ema_update_launch", _dt(x), _ptr(centers), _ptr(cluster_size), _ptr(embed_sum),
          ctypes.c_double(decay), ctypes.c_double(eps), _ptr(x), _ptr(labels), _ptr(sorted_labels),
          _ptr(perm), _i(n), _i(k), _i(d), _ptr(sums), _ptr(batch_counts), _ptr(pieces), _ptr(total),
          _ptr(norms), _ptr(w), _ptr(batch_w), _i(b), _int32(labels))


def center_loss_forward(x_real, labels_real, centers_real, x_fake, labels_fake, centers_fake):
    acc = _acc_dtype(x_real)
    d = x_real.shape[1]
    loss = torch.empty((), dtype=acc)
    u_diff = torch.empty(d, dtype=acc)
    n_r = torch.empty(centers_real.shape[0], dtype=torch.int64)
    n_f = torch.empty(centers_fake.shape[0], dtype=torch.int64)
    _call("center_loss_launch", _dt(x_real),
          _ptr(x_real), _ptr(labels_real), _ptr(centers_real), _i(x_real.shape[0]),
          _i(centers_real.shape[0]), _ptr(x_fake), _ptr(labels_fake), _ptr(centers_fake),
          _i(x_fake.shape[0]), _i(centers_fake.shape[0]), _i(d), _ptr(loss), _ptr(u_diff),
          _ptr(n_r), _ptr(n_f), _int32(labels_real), _int32(labels_fake))
    return loss, u_diff, n_r, n_f


def center_loss_backward(grad, u_diff, x_real, labels_real, counts_real, x_fake, labels_fake,
                         counts_fake):
    acc = _acc_dtype(x_real)
    g, u = grad.to(acc).contiguous(), u_diff.to(acc).contiguous()
    gr = torch.empty_like(x_real)
    gf = torch.empty_like(x_fake)
    _call("center_loss_backward_launch", _dt(x_real),
          _ptr(g), _ptr(u), _ptr(labels_real), _ptr(counts_real), _i(x_real.shape[0]),
          _i(counts_real.shape[0]), _ptr(labels_fake), _ptr(counts_fake), _i(x_fake.shape[0]),
          _i(counts_fake.shape[0]), _i(x_real.shape[1]), _ptr(gr), _ptr(gf),
          _int32(labels_real), _int32(labels_fake))
    return gr, gf


def assigned_distance(x, labels, centers, reduction="fro"):
    n, k, d = x.shape[0], centers.shape[0], x.shape[1]
    acc = _acc_dtype(x)
    out = torch.empty((), dtype=acc)
    partials = torch.empty(_num("assigned_distance_num_partials", _i(n)), dtype=torch.float64)
    _call("assigned_distance_launch", _dt(x), _REDUCTIONS[reduction], _ptr(x), _ptr(labels),
          _ptr(centers), _i(n), _i(k), _i(d), _ptr(partials), _ptr(out), _int32(labels))
    return out


def assigned_distance_backward(grad, out, x, labels, centers, reduction, centers_grad):
    n, k, d = x.shape[0], centers.shape[0], x.shape[1]
    acc = _acc_dtype(x)
    g, o = grad.to(acc).reshape(()).contiguous(), out.to(acc).reshape(()).contiguous()
    grad_x = torch.empty(n, d, dtype=x.dtype)
    gc = torch.empty(k, d, dtype=torch.float64) if centers_grad else None
    _call("assigned_distance_backward_launch", _dt(x), _REDUCTIONS[reduction], _ptr(g), _ptr(o),
          _ptr(x), _ptr(labels), _ptr(centers), _i(n), _i(k), _i(d), _ptr(grad_x), _ptr(gc),
          _int32(labels))
    if not centers_grad:
        return grad_x, centers.new_empty(0)
    return grad_x, gc.to(centers.dtype)


def _sorted_columns(t: Tensor) -> Tensor:
    return torch.sort(t.t().contiguous(), dim=1).values.contiguous()


def pairwise_l1(a, b=None):
    acc = _acc_dtype(a)
    n_a, d = a.shape
    out = torch.empty((), dtype=acc)
    col_sums = torch.empty(d, dtype=acc)
    if b is None:
        if n_a < 2 or d == 0:
            return torch.zeros((), dtype=acc)
        sorted_a = _sorted_columns(a)  # held: _ptr takes no reference
        _call("pairwise_l1_launch", _dt(a), _ptr(sorted_a), ctypes.c_void_p(0), _i(n_a), _i(0),
              _i(d), _ptr(col_sums), _ptr(out))
        return out
    n_b = b.shape[0]
    if n_a == 0 or n_b == 0 or d == 0:
        return torch.zeros((), dtype=acc)
    both = torch.sort(torch.cat([a, b], 0).t().contiguous(), dim=1)
    values, source = both.values.contiguous(), both.indices.contiguous()
    _call("pairwise_l1_launch", _dt(a), _ptr(values), _ptr(source), _i(n_a), _i(n_b), _i(d),
          _ptr(col_sums), _ptr(out))
    return out


def _rank_grad(grad, factor, values, others):
    n, d = values.shape
    m = others.shape[0]
    if m == 0 or n == 0 or d == 0:
        return torch.zeros(n, d, dtype=values.dtype)
    out = torch.empty(n, d, dtype=values.dtype)
    sorted_others = _sorted_columns(others)
    _call("pairwise_l1_rank_grad_launch", _dt(values), _ptr(grad), ctypes.c_double(factor),
          _ptr(values), _i(n), _i(d), _ptr(sorted_others), _i(m), _ptr(out))
    return out


def pairwise_l1_backward(grad, a, b=None):
    g = grad.to(_acc_dtype(a)).reshape(()).contiguous()
    if b is None:
        return _rank_grad(g, 2.0, a, a), a.new_empty(0)
    return _rank_grad(g, 1.0, a, b), _rank_grad(g, 1.0, b, a)


def kmgan_losses(f_real, f_fake, centers_real, centers_fake, reduction="fro"):
    acc = _acc_dtype(f_real)
    nr, nf = f_real.shape[0], f_fake.shape[0]
    lr, dist_r = assign(f_real, centers_real)
    lf, dist_f = assign(f_fake, centers_real)
    lh, _ = assign(f_fake, centers_fake)
    pulls = torch.empty(2, dtype=acc)
    loss_d, loss_g = torch.empty((), dtype=acc), torch.empty((), dtype=acc)
    _call("kmgan_pulls_launch", _dt(f_real), _REDUCTIONS[reduction], _ptr(f_real), _ptr(lr),
          _ptr(dist_r), _i(nr), _ptr(f_fake), _ptr(lf), _ptr(dist_f), _i(nf), _ptr(centers_real),
          _i(centers_real.shape[0]), _i(f_real.shape[1]), _ptr(pulls), _ptr(loss_d), _ptr(loss_g))
    loss_c, u_diff, n_r, n_h = center_loss_forward(f_real, lr, centers_real, f_fake, lh, centers_fake)
    return loss_d, loss_g, loss_c, lr, lf, lh, pulls, u_diff, n_r, n_h


def kmgan_losses_backward(grad_d, grad_g, grad_center, f_real, f_fake, centers_real, labels_real,
                          labels_fake, labels_fake_hat, pulls, u_diff, counts_real, counts_fake,
                          reduction="fro"):
    acc = _acc_dtype(f_real)

    def up(g):
        return None if g is None else g.to(acc).reshape(()).contiguous()

    gd, gg, gc = up(grad_d), up(grad_g), up(grad_center)
    p, u = pulls.to(acc).contiguous(), u_diff.to(acc).contiguous()
    gr, gf = torch.empty_like(f_real), torch.empty_like(f_fake)
    nr, nf, d = f_real.shape[0], f_fake.shape[0], f_real.shape[1]
    _call("kmgan_losses_backward_launch", _dt(f_real), _REDUCTIONS[reduction], _ptr(gd), _ptr(gg),
          _ptr(gc), _ptr(f_real), _ptr(f_fake), _ptr(centers_real), _i(centers_real.shape[0]),
          _ptr(labels_real), _ptr(labels_fake), _ptr(labels_fake_hat), _ptr(p), _ptr(u),
          _ptr(counts_real), _ptr(counts_fake), _i(counts_fake.shape[0]), _i(nr), _i(nf), _i(d),
          _ptr(gr), _ptr(gf))
    return gr, gf


if __name__ == "__main__":  # python -m kmgan_ext._cuda_emulated [--tsan]: build, print the path
    print(build(tsan="--tsan" in sys.argv))
