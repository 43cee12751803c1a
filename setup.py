"""Build kmgan_ext._C: CPU kernels always, CUDA kernels whenever nvcc and a CUDA build of torch
are present (a GPU is not needed to compile; CI compiles them on a CPU-only machine).

Environment:
    KMGAN_EXT_NO_CUDA=1      skip the CUDA sources even when nvcc is found
    CUDA_HOME                the CUDA toolkit (default: found from nvcc, see _cuda_home)
    TORCH_CUDA_ARCH_LIST     default "8.0;9.0+PTX" (A100, H100/H200 SASS, and PTX that newer
                             GPUs JIT-compile); recorded in _C (kmgan_ext::cuda_archs)
    MAX_JOBS                 parallel compile jobs (ninja)
"""
from __future__ import annotations

import glob
import os
import runpy
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _version() -> str:
    """kmgan_ext/_version.py's __version__, read as text: importing kmgan_ext needs torch and
    the extension this script builds."""
    return runpy.run_path(os.path.join(ROOT, "kmgan_ext", "_version.py"))["__version__"]


def _extras() -> dict[str, list[str]]:
    """The pip extras, from kmgan_ext/_optional.py (standard library only), the same list its
    ``require`` names in its error messages."""
    return runpy.run_path(os.path.join(ROOT, "kmgan_ext", "_optional.py"))["extras_require"]()


def _torch_requirement() -> str:
    """The torch minor release this build compiles kmgan_ext._C against. The extension links
    against torch's C++ ABI, which changes between minor releases, so a wheel (or an sdist
    built with pip's build isolation) asks for that minor; the sources accept torch >= 2.6
    (pyproject.toml's build requirement)."""
    import torch

    major, minor = (int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    return f"torch>={major}.{minor},<{major}.{minor + 1}"


def _cuda_home() -> str | None:
    """The CUDA toolkit root: a directory with bin/nvcc and include/cuda_runtime.h.

    torch guesses CUDA_HOME from `which nvcc`; here /usr/local/bin/nvcc is a wrapper script,
    so the guess (/usr/local) has no CUDA headers. Resolve candidates and keep the first real
    toolkit.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "bin", "nvcc")) and os.path.isfile(
            os.path.join(c, "include", "cuda_runtime.h")
        ):
            return os.path.realpath(c)
    return None


def _want_cuda() -> tuple[bool, str]:
    if os.environ.get("KMGAN_EXT_NO_CUDA", "0") not in ("", "0"):
        return False, "KMGAN_EXT_NO_CUDA is set"
    import torch

    if torch.version.cuda is None:
        return False, "torch is a CPU build"
    home = _cuda_home()
    if home is None:
        return False, "no CUDA toolkit (nvcc + headers) found; set CUDA_HOME"
    os.environ["CUDA_HOME"] = home  # must be set before torch.utils.cpp_extension is imported
    return True, home


def _arch_token() -> str:
    """The architectures torch's -gencode flags will target, as one shell-safe token for the
    KMGAN_EXT_CUDA_ARCHS macro: sm80_sm90_ptx90 = SASS for sm_80 and sm_90, PTX compute_90."""
    import re

    from torch.utils.cpp_extension import _get_cuda_arch_flags

    flags = " ".join(_get_cuda_arch_flags())
    sass = sorted(set(re.findall(r"code=\[?sm_(\d+[a-z]?)", flags)))
    ptx = sorted(set(re.findall(r"code=\[?compute_(\d+[a-z]?)", flags)))
    return "_".join([f"sm{a}" for a in sass] + [f"ptx{a}" for a in ptx]) or "unknown"


def extensions():
    want_cuda, why = _want_cuda()
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    # No -std flag: torch.utils.cpp_extension picks the standard its headers need (C++20 from
    # torch 2.10 on, C++17 before).
    # -g0 overrides Python's -g: debug info of the ATen headers costs ~4 s per file.
    cxx = ["-O3", "-g0", "-fopenmp", "-ffp-contract=off"]
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    # py_limited_api=True makes torch define Py_LIMITED_API itself.
    macros = []
    if want_cuda:
        import torch

        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
        macros.append(("KMGAN_EXT_CUDA_ARCHS", _arch_token()))
        sources += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
        print(
            f"kmgan_ext: compiling CUDA kernels with {why}/bin/nvcc for "
            f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')}",
            file=sys.stderr,
        )
        return [
            CUDAExtension(
                "kmgan_ext._C",
                sources,
                define_macros=macros + [("KMGAN_EXT_WITH_CUDA", None)],
                extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                extra_link_args=["-fopenmp"],
                py_limited_api=True,
            )
        ]
    print(f"kmgan_ext: CPU kernels only ({why})", file=sys.stderr)
    return [
        CppExtension(
            "kmgan_ext._C",
            sources,
            define_macros=macros,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
            py_limited_api=True,
        )
    ]


def main():
    from torch.utils.cpp_extension import BuildExtension

    setup(
        name="kmgan_ext",
        version=_version(),
        description="Fused Triton/CUDA/C++ clustering ops for neural-network training, and a KM-GAN trainer",
        packages=find_packages(include=["kmgan_ext", "kmgan_ext.*"]) + ["kmgan_ext.kernels"],
        package_dir={"kmgan_ext": "kmgan_ext", "kmgan_ext.kernels": "kernels"},
        ext_modules=extensions(),
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
        python_requires=">=3.9",
        install_requires=[_torch_requirement(), "numpy"],
        extras_require=_extras(),
        entry_points={"console_scripts": [
            "kmgan-train=kmgan_ext.train.__main__:main",
            "kmgan-reproduce=kmgan_ext.train.reproduce:main",
        ]},
        options={"bdist_wheel": {"py_limited_api": "cp39"}},
    )


if __name__ == "__main__":
    main()
