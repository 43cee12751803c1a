// The block runner of the CPU harness (see cuda_shim.h): launches, __syncthreads, warp
// shuffles, and the few runtime calls the launchers make.
//
// A launch runs its blocks on `in_flight` runner threads (std::thread) at once, taking blocks
// from a list in forward, reverse or seeded-random order. A runner runs a block as one fiber
// per GPU thread (own stack, switched with a few instructions of assembly on x86-64, ucontext
// elsewhere): a fiber runs until it reaches __syncthreads, a shuffle or its end, then the
// scheduler picks the next runnable one, in the configured order, reshuffled every round in
// random mode. A barrier releases when every live thread of the block has arrived (a returned
// thread no longer counts, as on sm_70+); a shuffle when every lane its mask names has. If no
// fiber can run and some have not returned (a barrier or shuffle that can never complete), the
// launch fails with cudaErrorLaunchFailure instead of hanging.
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include "cuda_shim.h"

// KMGAN_EMU_TSAN: the kernels are built with -fsanitize=thread. This file itself is not
// instrumented (its bookkeeping is the scheduler's, not the kernels'); it tells TSan which
// fiber runs and what orders what: barriers and shuffles, and the launch's start and end.
#ifdef KMGAN_EMU_TSAN
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}
#endif

#define KMGAN_EMU_EXPORT extern "C" __attribute__((visibility("default")))

namespace kmgan_emu {

thread_local uint3 t_thread_idx, t_block_idx;
thread_local dim3 t_block_dim, t_grid_dim;
thread_local BlockContext* t_block = nullptr;

namespace {

// ------------------------------------------------------------------------------ configuration
enum class Order : int { kForward = 0, kReverse = 1, kRandom = 2 };

struct Config {
  Order order = Order::kForward;
  uint64_t seed = 0;
  int in_flight = 3;  // blocks run at once, each on its own runner thread
  int sms = 2;        // what cudaDevAttrMultiProcessorCount reports (grid sizes)
};

Config& config() {
  static Config c = [] {
    Config c;
    if (const char* v = std::getenv("KMGAN_EMU_ORDER")) {
      const std::string s(v);
      c.order = s == "reverse" ? Order::kReverse : s == "random" ? Order::kRandom : Order::kForward;
    }
    if (const char* v = std::getenv("KMGAN_EMU_SEED")) c.seed = std::strtoull(v, nullptr, 10);
    if (const char* v = std::getenv("KMGAN_EMU_IN_FLIGHT")) c.in_flight = std::atoi(v);
    if (const char* v = std::getenv("KMGAN_EMU_SMS")) c.sms = std::atoi(v);
    c.in_flight = std::clamp(c.in_flight, 1, 8);
    c.sms = std::max(c.sms, 1);
    return c;
  }();
  return c;
}

std::atomic<int> g_last_error{cudaSuccess};
std::atomic<uint64_t> g_launch_count{0};

void set_error(cudaError_t e) {
  int expected = cudaSuccess;
  g_last_error.compare_exchange_strong(expected, e);
}

// ------------------------------------------------------------------------------ context switch
#if defined(__x86_64__)
// switch_stack(&save, next): saves the callee-saved registers, MXCSR and the x87 control word
// on the current stack, stores the stack pointer in *save, and resumes the context whose stack
// pointer is `next` (System V AMD64).
extern "C" void kmgan_emu_switch_stack(void** save, void* next);
asm(R"(
.text
.p2align 4
.type kmgan_emu_switch_stack,@function
kmgan_emu_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size kmgan_emu_switch_stack,.-kmgan_emu_switch_stack
)");
#endif

}  // namespace

// ------------------------------------------------------------------------------ block context
enum class FiberState : int { kRunnable, kAtBarrier, kAtShuffle, kDone };

struct Fiber {
  unsigned tid = 0;
  FiberState state = FiberState::kRunnable;
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
#ifdef KMGAN_EMU_TSAN
  void* tsan_fiber = nullptr;
#endif
};

struct WarpExchange {
  uint64_t slots[2][32] = {};
  unsigned parity[32] = {};  // exchanges done by each lane, mod 2: the slot row it writes
  unsigned arrived = 0;      // lanes waiting in an exchange
  unsigned done = 0;         // lanes that have returned
};

struct BlockContext {
  dim3 grid, block;
  uint3 block_idx{};
  Thunk thunk = nullptr;
  const void* record = nullptr;
  std::vector<Fiber> fibers;
  std::vector<WarpExchange> warps;
  std::vector<unsigned char> dynamic_shared;
  unsigned live = 0;        // fibers not done
  unsigned at_barrier = 0;  // live fibers waiting in __syncthreads
  Fiber* current = nullptr;
#if defined(__x86_64__)
  void* scheduler_sp = nullptr;
#else
  ucontext_t scheduler_ctx;
#endif
  unsigned barrier_generation = 0;
#ifdef KMGAN_EMU_TSAN
  // Addresses TSan orders arrivals on: one per barrier generation and per warp and exchange
  // parity, alternating, so that a thread leaving a barrier is ordered after the arrivals of
  // that barrier only, not after what faster threads did next.
  void* scheduler_tsan = nullptr;
  char barrier_sync[2] = {};
  std::vector<char> warp_sync;  // 2 per warp
  char* launch_start = nullptr;
  char* launch_end = nullptr;
  // The blocks one runner thread runs one after another reuse its fiber stacks and its
  // thread_local __shared__ storage: distinct memory on a GPU. Ordering them (each fiber
  // acquires at its start what the previous blocks' fibers released at their end) keeps TSan
  // from reporting that reuse; blocks on different runners stay unordered, as on a GPU.
  char runner_sync = 0;
#endif
  bool failed = false;
};

namespace {

// Back to the runner's scheduler; returns when this fiber is scheduled again.
void yield_to_scheduler() {
  BlockContext* b = t_block;
  Fiber* f = b->current;
#ifdef KMGAN_EMU_TSAN
  __tsan_switch_to_fiber(b->scheduler_tsan, 1);
#endif
#if defined(__x86_64__)
  kmgan_emu_switch_stack(&f->sp, b->scheduler_sp);
#else
  swapcontext(&f->ctx, &b->scheduler_ctx);
#endif
}

// Releases the barrier when every live thread has arrived.
void check_barrier(BlockContext* b) {
  if (b->at_barrier == 0 || b->at_barrier != b->live) return;
  for (Fiber& f : b->fibers)
    if (f.state == FiberState::kAtBarrier) f.state = FiberState::kRunnable;
  b->at_barrier = 0;
  ++b->barrier_generation;
}

// Releases the lanes of warp w named by `mask` once all of them wait in a shuffle (the lanes
// of one shuffle pass the same mask).
void check_warp(BlockContext* b, unsigned w, unsigned mask) {
  WarpExchange& x = b->warps[w];
  if ((x.arrived & mask) != mask) return;
  for (unsigned lane = 0; lane < 32; ++lane)
    if (mask >> lane & 1u) b->fibers[w * 32 + lane].state = FiberState::kRunnable;
  x.arrived &= ~mask;
}

unsigned linear_thread() {
  return t_thread_idx.x + t_block_dim.x * (t_thread_idx.y + t_block_dim.y * t_thread_idx.z);
}

}  // namespace

void syncthreads() {
  BlockContext* b = t_block;
  b->current->state = FiberState::kAtBarrier;
  ++b->at_barrier;
#ifdef KMGAN_EMU_TSAN
  char* sync = &b->barrier_sync[b->barrier_generation & 1u];
  __tsan_release(sync);
#endif
  check_barrier(b);
  yield_to_scheduler();
#ifdef KMGAN_EMU_TSAN
  __tsan_acquire(sync);
#endif
}

uint64_t shfl_exchange(unsigned mask, uint64_t bits, int src_lane) {
  BlockContext* b = t_block;
  const unsigned me = linear_thread();
  const unsigned lane = me & 31u, w = me >> 5;
  WarpExchange& x = b->warps[w];
  const size_t lanes = std::min<size_t>(32, b->fibers.size() - size_t{w} * 32);
  const unsigned exists = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
  if (!(mask >> lane & 1u) || (mask & ~exists) || (mask & x.done)) {
    // The calling lane is not in its mask, or the mask names a lane that does not exist or has
    // returned: undefined on a GPU (a hang or garbage); here the launch fails.
    b->failed = true;
    return 0;
  }
  const unsigned row = x.parity[lane];
  x.parity[lane] ^= 1u;
  x.slots[row][lane] = bits;
  x.arrived |= 1u << lane;
  b->current->state = FiberState::kAtShuffle;
#ifdef KMGAN_EMU_TSAN
  char* sync = &b->warp_sync[2 * w + row];
  __tsan_release(sync);
#endif
  check_warp(b, w, mask);
  yield_to_scheduler();
#ifdef KMGAN_EMU_TSAN
  __tsan_acquire(sync);
#endif
  // Row `row` of a lane is rewritten two exchanges later, after every lane of the mask has
  // passed the next exchange, hence after this read.
  return x.slots[row][src_lane & 31];
}

void* dynamic_shared() { return t_block->dynamic_shared.data(); }

namespace {

[[noreturn]] void fiber_main() {
  BlockContext* b = t_block;
  Fiber* f = b->current;
#ifdef KMGAN_EMU_TSAN
  __tsan_acquire(b->launch_start);  // the launch's arguments, written before it
  __tsan_acquire(&b->runner_sync);
#endif
  b->thunk(b->record);
#ifdef KMGAN_EMU_TSAN
  __tsan_release(b->launch_end);  // everything the kernel wrote, read after the launch
  __tsan_release(&b->runner_sync);
#endif
  f->state = FiberState::kDone;
  --b->live;
  b->warps[f->tid >> 5].done |= 1u << (f->tid & 31u);
  check_barrier(b);  // a returned thread no longer holds a barrier back
  yield_to_scheduler();
  std::abort();  // a done fiber is never resumed
}

#if !defined(__x86_64__)
void fiber_main_ucontext() { fiber_main(); }
#endif

// Fiber stacks of one runner thread, reused block after block; a guard page under each.
struct StackPool {
  size_t stack_bytes = 0;
  size_t page = 4096;
  std::vector<char*> stacks;
#ifdef KMGAN_EMU_TSAN
  std::vector<void*> tsan_fibers;  // one per stack, reused like the stacks (creating is slow)
  void* tsan_fiber(size_t i) {
    while (tsan_fibers.size() <= i) tsan_fibers.push_back(__tsan_create_fiber(0));
    return tsan_fibers[i];
  }
#endif
  ~StackPool() {
    for (char* s : stacks) munmap(s, stack_bytes + page);
  }
  char* get(size_t i) {
    while (stacks.size() <= i) {
      void* p = mmap(nullptr, stack_bytes + page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) return nullptr;
      mprotect(p, page, PROT_NONE);
      stacks.push_back(static_cast<char*>(p));
    }
    return stacks[i] + page;
  }
};

constexpr size_t kStackBytes =
#ifdef KMGAN_EMU_TSAN
    512 * 1024;
#else
    128 * 1024;
#endif

void run_block(BlockContext& b, Order order, std::mt19937_64& rng, StackPool& pool) {
  const unsigned threads = b.block.x * b.block.y * b.block.z;
  b.fibers.assign(threads, Fiber{});
  b.warps.assign((threads + 31) / 32, WarpExchange{});
  b.live = threads;
  b.at_barrier = 0;
  b.barrier_generation = 0;
#ifdef KMGAN_EMU_TSAN
  b.warp_sync.assign(2 * b.warps.size(), 0);
  b.scheduler_tsan = __tsan_get_current_fiber();
#endif
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = b.fibers[t];
    f.tid = t;
    char* stack = pool.get(t);
    if (stack == nullptr) {
      b.failed = true;
      return;
    }
#if defined(__x86_64__)
    // Initial frame, popped by kmgan_emu_switch_stack: MXCSR / x87 control word, six
    // callee-saved registers, then the "return address" fiber_main. sp % 16 == 8 so that
    // fiber_main starts with the alignment of a called function.
    uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + kStackBytes) & ~uintptr_t{15};
    uint64_t* sp = reinterpret_cast<uint64_t*>(top - 72);
    const uint32_t control[2] = {0x1F80u, 0x037Fu};  // MXCSR and x87 CW defaults
    std::memcpy(&sp[0], control, 8);
    for (int r = 1; r <= 6; ++r) sp[r] = 0;
    sp[7] = reinterpret_cast<uint64_t>(&fiber_main);
    sp[8] = 0;
    f.sp = sp;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = stack;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, &fiber_main_ucontext, 0);
#endif
#ifdef KMGAN_EMU_TSAN
    f.tsan_fiber = pool.tsan_fiber(t);
#endif
  }

#ifdef KMGAN_EMU_TSAN
  __tsan_release(&b.runner_sync);  // the runner's setup (TLS, dynamic shared memory) comes first
#endif
  std::vector<unsigned> round(threads);
  std::iota(round.begin(), round.end(), 0u);
  if (order == Order::kReverse) std::reverse(round.begin(), round.end());
  while (b.live > 0 && !b.failed) {
    if (order == Order::kRandom) std::shuffle(round.begin(), round.end(), rng);
    bool ran = false;
    for (unsigned t : round) {
      Fiber& f = b.fibers[t];
      if (f.state != FiberState::kRunnable) continue;
      ran = true;
      b.current = &f;
      t_thread_idx = uint3{t % b.block.x, (t / b.block.x) % b.block.y, t / (b.block.x * b.block.y)};
#ifdef KMGAN_EMU_TSAN
      __tsan_switch_to_fiber(f.tsan_fiber, 1);
#endif
#if defined(__x86_64__)
      kmgan_emu_switch_stack(&b.scheduler_sp, f.sp);
#else
      swapcontext(&b.scheduler_ctx, &f.ctx);
#endif
      b.current = nullptr;
      if (b.failed) break;
    }
    if (!ran && b.live > 0) b.failed = true;  // every live thread waits for one that never comes
  }
#ifdef KMGAN_EMU_TSAN
  __tsan_acquire(&b.runner_sync);  // the runner reuses what the fibers touched
#endif
}

// Stack pools outlive launches (mapping 256 stacks per block is slow, under TSan very slow):
// a runner borrows one for the launch.
struct StackPools {
  std::mutex m;
  std::vector<std::unique_ptr<StackPool>> free;
};

StackPools& stack_pools() {
  static StackPools* p = new StackPools;  // never destroyed: runners may outlive exit order
  return *p;
}

std::unique_ptr<StackPool> borrow_pool() {
  StackPools& p = stack_pools();
  std::lock_guard<std::mutex> lock(p.m);
  if (p.free.empty()) {
    auto pool = std::make_unique<StackPool>();
    pool->stack_bytes = kStackBytes;
    return pool;
  }
  auto pool = std::move(p.free.back());
  p.free.pop_back();
  return pool;
}

void return_pool(std::unique_ptr<StackPool> pool) {
  StackPools& p = stack_pools();
  std::lock_guard<std::mutex> lock(p.m);
  p.free.push_back(std::move(pool));
}

}  // namespace

cudaError_t launch(dim3 grid, dim3 block, size_t shared_bytes, Thunk thunk, const void* record) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  if (threads == 0 || threads > 1024 || blocks == 0 || grid.y > 65535 || grid.z > 65535 ||
      block.z > 64 || shared_bytes > 48 * 1024) {
    set_error(cudaErrorInvalidConfiguration);
    return cudaErrorInvalidConfiguration;
  }
  const Config cfg = config();
  stack_pools();  // created here, before the runner threads that share it
  const uint64_t launch_id = g_launch_count.fetch_add(1);
  std::vector<uint64_t> order(blocks);
  std::iota(order.begin(), order.end(), uint64_t{0});
  if (cfg.order == Order::kReverse) std::reverse(order.begin(), order.end());
  std::mt19937_64 rng(cfg.seed * 0x9E3779B97F4A7C15ull + launch_id);
  if (cfg.order == Order::kRandom) std::shuffle(order.begin(), order.end(), rng);

  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
#ifdef KMGAN_EMU_TSAN
  char launch_start = 0, launch_end = 0;
  __tsan_release(&launch_start);
#endif
  auto runner = [&](uint64_t runner_seed) {
    std::unique_ptr<StackPool> pool = borrow_pool();
    std::mt19937_64 thread_rng(runner_seed);
    BlockContext ctx;
    t_block = &ctx;
    t_grid_dim = grid;
    t_block_dim = block;
    for (uint64_t i; !failed && (i = next.fetch_add(1)) < blocks;) {
      const uint64_t bid = order[i];
      ctx.grid = grid;
      ctx.block = block;
      ctx.block_idx = uint3{static_cast<unsigned>(bid % grid.x),
                            static_cast<unsigned>((bid / grid.x) % grid.y),
                            static_cast<unsigned>(bid / (uint64_t{grid.x} * grid.y))};
      t_block_idx = ctx.block_idx;
      ctx.thunk = thunk;
      ctx.record = record;
#ifdef KMGAN_EMU_TSAN
      ctx.launch_start = &launch_start;
      ctx.launch_end = &launch_end;
#endif
      // Uninitialised dynamic shared memory reads as NaN / huge values, not zeros.
      ctx.dynamic_shared.assign(shared_bytes + 16, 0xff);
      ctx.failed = false;
      run_block(ctx, cfg.order, thread_rng, *pool);
      if (ctx.failed) failed = true;
    }
    t_block = nullptr;
    return_pool(std::move(pool));
  };
  // The launching thread only waits: blocks run on runner threads (whose thread_local
  // __shared__ storage is theirs alone).
  const uint64_t runners = std::min<uint64_t>(static_cast<uint64_t>(cfg.in_flight), blocks);
  std::vector<std::thread> pool;
  for (uint64_t r = 0; r < runners; ++r) pool.emplace_back(runner, rng());
  for (auto& t : pool) t.join();
#ifdef KMGAN_EMU_TSAN
  __tsan_acquire(&launch_end);
#endif
  if (failed) {
    set_error(cudaErrorLaunchFailure);
    return cudaErrorLaunchFailure;
  }
  return cudaSuccess;
}

}  // namespace kmgan_emu

// ------------------------------------------------------------------------------ runtime API
cudaError_t cudaGetLastError() {
  return static_cast<cudaError_t>(kmgan_emu::g_last_error.exchange(cudaSuccess));
}
cudaError_t cudaPeekAtLastError() {
  return static_cast<cudaError_t>(kmgan_emu::g_last_error.load());
}
const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure (harness: a barrier or shuffle that cannot complete)";
  }
  return "unknown error";
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  if (attr != cudaDevAttrMultiProcessorCount) return cudaErrorInvalidValue;
  *value = kmgan_emu::config().sms;
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t) {
  if (bytes) std::memset(ptr, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, int, cudaStream_t) {
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

// ------------------------------------------------------------------------------ control
// order: 0 forward, 1 reverse, 2 seeded random (blocks, and threads within a block); in_flight:
// blocks at once (1-8), each on its own runner thread; sms: the multiprocessor count grid_for
// sees (small: grid-stride loops take several turns).
KMGAN_EMU_EXPORT void kmgan_emu_configure(int order, uint64_t seed, int in_flight, int sms) {
  auto& c = kmgan_emu::config();
  c.order = static_cast<kmgan_emu::Order>(std::clamp(order, 0, 2));
  c.seed = seed;
  c.in_flight = std::clamp(in_flight, 1, 8);
  c.sms = std::max(sms, 1);
}

KMGAN_EMU_EXPORT uint64_t kmgan_emu_launch_count() { return kmgan_emu::g_launch_count.load(); }
