// kmgan_ext::cuda_archs() -> str: the GPU architectures the CUDA kernels of this _C were
// compiled for, as setup.py passed them (KMGAN_EXT_CUDA_ARCHS, e.g. sm80_sm90_ptx90: SASS for
// sm_80 and sm_90, PTX for compute_90). kmgan_ext/_dispatch.py compares them with the GPU's
// capability, so `cuda` is reported unusable (and `auto` falls back to triton) on a GPU no
// kernel image runs on, instead of failing every op with "no kernel image is available".
#include <torch/library.h>

#include <string>

#ifndef KMGAN_EXT_CUDA_ARCHS
#define KMGAN_EXT_CUDA_ARCHS unknown
#endif
#define KMGAN_EXT_STR2(x) #x
#define KMGAN_EXT_STR(x) KMGAN_EXT_STR2(x)

TORCH_LIBRARY_FRAGMENT(kmgan_ext, m) {
  m.def("cuda_archs() -> str", [] { return std::string(KMGAN_EXT_STR(KMGAN_EXT_CUDA_ARCHS)); });
}
