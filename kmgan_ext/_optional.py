"""Optional dependencies, grouped by the pip extra that installs them.

``EXTRAS`` is the one list: setup.py builds ``extras_require`` from it (reading this file with
runpy, so it must import nothing but the standard library), and ``require`` imports a module
where it is used, failing with an ImportError that names the extra to install.
"""
from __future__ import annotations

import importlib

# extra -> {pip requirement: the module it provides}. Lower bounds only where a feature needs
# them; requirements.txt pins the versions the tests ran with.
EXTRAS: dict[str, dict[str, str]] = {
    "faiss": {"faiss-cpu>=1.14": "faiss"},
    "triton": {"triton": "triton"},
    # everything `kmgan-train` / `make demo` imports: data loaders and inception (torchvision,
    # pillow), metrics (scipy, scikit-learn), figures (matplotlib), logs (tensorboard),
    # progress bars on a terminal (tqdm) and CPU thread limits (threadpoolctl).
    "train": {
        "torchvision": "torchvision",
        "pillow": "PIL",
        "scipy": "scipy",
        "scikit-learn": "sklearn",
        "matplotlib": "matplotlib",
        "tensorboard": "tensorboard",
        "tqdm": "tqdm",
        "threadpoolctl": "threadpoolctl",
    },
    # bench/run_all.py: the comparison providers (scikit-learn, FAISS, the PyTorch k-means and
    # VQ libraries; fast-pytorch-kmeans imports psutil without declaring it), thread limits
    # and the plots.
    "bench": {
        "scikit-learn": "sklearn",
        "faiss-cpu>=1.14": "faiss",
        "matplotlib": "matplotlib",
        "threadpoolctl": "threadpoolctl",
        "vector-quantize-pytorch": "vector_quantize_pytorch",
        "fast-pytorch-kmeans": "fast_pytorch_kmeans",
        "psutil": "psutil",
        "kmeans-pytorch": "kmeans_pytorch",
    },
    # the VQ layer is tested against vector-quantize-pytorch (in [bench] too); greenlet runs the
    # Triton interpreter's programs interleaved (tests/triton_emulation.py).
    "test": {
        "pytest": "pytest",
        "pytest-timeout": "pytest_timeout",
        "expecttest": "expecttest",
        "greenlet": "greenlet",
    },
}


def extras_require() -> dict[str, list[str]]:
    """setup.py's extras_require: the groups above, [test] with everything the tests touch,
    and [all] as the union."""
    out = {name: sorted(reqs) for name, reqs in EXTRAS.items()}
    union = set()
    for name in ("train", "bench", "faiss", "triton"):
        union |= set(EXTRAS[name])
    out["test"] = sorted(set(EXTRAS["test"]) | union)
    out["all"] = sorted(union | set(EXTRAS["test"]))
    return out


def _pip_name(module: str) -> str:
    top = module.split(".")[0]
    for reqs in EXTRAS.values():
        for req, mod in reqs.items():
            if mod == top:
                return req.split(">")[0].split("=")[0]
    return top


def missing(extra: str, ignore: tuple[str, ...] = ()) -> list[str]:
    """The pip names of ``extra``'s packages that cannot be imported here (but ``ignore``)."""
    out = []
    for req, mod in EXTRAS[extra].items():
        if mod in ignore:
            continue
        try:
            importlib.import_module(mod)
        except ImportError:
            out.append(req.split(">")[0].split("=")[0])
    return out


def hint(extra: str, pip: str | None = None) -> str:
    alone = f" (or just pip install {pip})" if pip else ""
    return f"pip install 'kmgan_ext[{extra}]'{alone}"


class MissingDependency(ImportError):
    """An optional dependency is not installed (or fails to import); the message names the
    pip extra that installs it."""


def require(module: str, extra: str, purpose: str | None = None, pip: str | None = None):
    """``importlib.import_module(module)``, or a MissingDependency naming ``extra``.

    ``pip`` is the distribution to name when it is not the module's (e.g. torch.utils.tensorboard
    needs ``tensorboard``); by default it is looked up in EXTRAS.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pip = pip or _pip_name(module)
        need = f"{module} ({purpose})" if purpose else module
        if isinstance(e, ModuleNotFoundError) and e.name and e.name.split(".")[0] in (
            module.split(".")[0],
            pip,
        ):
            why = "is not installed"
        else:
            why = f"failed to import ({type(e).__name__}: {e})"
        raise MissingDependency(f"{need} needs {pip}, which {why}: {hint(extra, pip)}", name=module) from e


def require_extra(extra: str, purpose: str, ignore: tuple[str, ...] = ()) -> None:
    """Every package of ``extra`` (but the modules in ``ignore``) importable, or one
    MissingDependency naming all that are not (checked before long work starts, rather than
    failing at its end)."""
    gone = missing(extra, ignore)
    if gone:
        raise MissingDependency(
            f"{purpose} needs the '{extra}' extra; not importable here: {', '.join(gone)}. "
            f"{hint(extra)}"
        )
