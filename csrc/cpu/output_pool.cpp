// empty_output (common.h): large outputs written once in full (the gradients of x) from a
// small cache of huge-page blocks.
//
// Why: a 64 MB gradient from at::empty is a fresh mmap on every call (glibc maps anything
// past 32 MB and unmaps it on free), so each backward faults its pages in and the kernel
// zeroes them before the kernel here writes them again: at N = 65,536, d = 256 that zeroing
// (clear_page) was a third of center_loss's forward + backward (issue 15). A freed output's
// block goes back to this cache instead, and the next output of the same size reuses it,
// mapped and in huge pages. The cache holds at most kCacheBytes of free blocks; a block
// that would exceed it is freed at once. The tensors are ordinary CPU tensors (uninitialised
// as at::empty's, contiguous) whose storage cannot be resized.
#include "common.h"

#include <cstdlib>
#include <mutex>
#include <optional>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace kmgan_ext {
namespace cpu {
namespace {

constexpr size_t kHuge = size_t(1) << 21;          // 2 MB: the block size unit and alignment
constexpr size_t kPooledMin = 4 * kHuge;           // smaller outputs: at::empty
constexpr size_t kCacheBytes = size_t(256) << 20;  // free blocks kept at most

struct Block {
  void* ptr;
  size_t bytes;
};

class OutputPool {
 public:
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = 0; i < free_.size(); ++i) {
        if (free_[i].bytes == bytes) {
          void* p = free_[i].ptr;
          cached_ -= bytes;
          free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
          return p;
        }
      }
    }
    void* p = nullptr;
    if (posix_memalign(&p, kHuge, bytes) != 0) return nullptr;
#if defined(MADV_HUGEPAGE)
    madvise(p, bytes, MADV_HUGEPAGE);  // advice only: where refused, 4 KB pages as before
#endif
    return p;
  }

  void give_back(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + bytes <= kCacheBytes) {
        free_.push_back({p, bytes});
        cached_ += bytes;
        return;
      }
    }
    std::free(p);
  }

 private:
  std::mutex mu_;
  std::vector<Block> free_;
  size_t cached_ = 0;
};

// Never destroyed: a tensor may outlive static destruction at interpreter exit, and its
// deleter must still find the pool.
OutputPool& pool() {
  static OutputPool* p = new OutputPool();
  return *p;
}

}  // namespace

Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  const auto contiguous = opts.memory_format(at::MemoryFormat::Contiguous);
#if defined(__linux__)
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const size_t nbytes = static_cast<size_t>(numel) * c10::elementSize(c10::typeMetaToScalarType(opts.dtype()));
  if (nbytes >= kPooledMin && opts.device().is_cpu()) {
    const size_t bytes = (nbytes + kHuge - 1) / kHuge * kHuge;
    if (void* p = pool().take(bytes)) {
      return at::from_blob(
          p, sizes, [bytes](void* q) { pool().give_back(q, bytes); },
          opts.memory_format(std::nullopt));
    }
  }
#endif
  return at::empty(sizes, contiguous);
}

}  // namespace cpu
}  // namespace kmgan_ext
