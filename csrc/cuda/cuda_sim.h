// Host emulation of the CUDA execution model, compiled only into the FASTCONV_CUDA_SIM build that
// scripts/cuda_sim.py makes. It lets the CUDA kernels of fastconv run (slowly) on a machine without a
// GPU, so their index math, shared-memory tiling and barriers can be tested against torch there.
//
// A launch runs its blocks one after another. The threads of a block are coroutines (ucontext) on one
// host thread: each runs until it reaches __syncthreads() or returns; a barrier is released once every
// thread of the block waits on it, and a barrier that only some threads of a block reach is reported as
// an error (on a GPU it would hang or corrupt the block). Dynamic shared memory starts filled with 0xFF
// bytes (NaN for every float type), so a read before a write shows up in the results.
#pragma once

#include <ucontext.h>

#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Blocks run one at a time on one host thread, so a function-local static is exactly block-shared.
#define __shared__ static
#define threadIdx (::fastconv::sim::thread_idx())
#define blockIdx (::fastconv::sim::state().block_idx)
#define blockDim (::fastconv::sim::state().block)
#define gridDim (::fastconv::sim::state().grid)
#define __syncthreads() ::fastconv::sim::syncthreads()

namespace fastconv::sim {

struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};

enum class ThreadState { Runnable, AtBarrier, Done };

struct SimState {
  dim3 grid, block, block_idx;
  int current = 0;
  std::vector<dim3> thread_idx;
  std::vector<ThreadState> state;
  std::vector<ucontext_t> contexts;
  std::vector<std::unique_ptr<char[]>> stacks;
  ucontext_t scheduler;
  std::vector<unsigned char> shared;
  const std::function<void()>* body = nullptr;
};

inline SimState& state() {
  static SimState s;
  return s;
}

inline const dim3& thread_idx() { return state().thread_idx[state().current]; }

inline void syncthreads() {
  SimState& s = state();
  s.state[s.current] = ThreadState::AtBarrier;
  swapcontext(&s.contexts[s.current], &s.scheduler);
}

inline void* dynamic_shared_memory() { return state().shared.data(); }

inline void thread_entry() {
  SimState& s = state();
  (*s.body)();
  s.state[s.current] = ThreadState::Done;
  swapcontext(&s.contexts[s.current], &s.scheduler);  // never resumed
}

constexpr size_t kStackBytes = 128 * 1024;

inline void run_block_with_coroutines(SimState& s, int threads) {
  for (int t = 0; t < threads; ++t) {
    s.state[t] = ThreadState::Runnable;
    getcontext(&s.contexts[t]);
    s.contexts[t].uc_stack.ss_sp = s.stacks[t].get();
    s.contexts[t].uc_stack.ss_size = kStackBytes;
    s.contexts[t].uc_link = nullptr;
    makecontext(&s.contexts[t], thread_entry, 0);
  }
  while (true) {
    for (int t = 0; t < threads; ++t) {
      if (s.state[t] != ThreadState::Runnable) continue;
      s.current = t;
      swapcontext(&s.scheduler, &s.contexts[t]);
    }
    int done = 0;
    for (int t = 0; t < threads; ++t) done += s.state[t] == ThreadState::Done;
    if (done == threads) return;
    TORCH_CHECK(done == 0, "cuda_sim: ", threads - done, " of ", threads, " threads of block (", s.block_idx.x, ", ",
                s.block_idx.y, ", ", s.block_idx.z, ") wait at __syncthreads() that the others never reach");
    for (int t = 0; t < threads; ++t) s.state[t] = ThreadState::Runnable;
  }
}

// Runs `body` (the kernel call) for every thread of every block of the grid.
inline void run_grid(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body) {
  SimState& s = state();
  const int threads = static_cast<int>(block.x * block.y * block.z);
  TORCH_CHECK(threads >= 1 && threads <= 1024, "cuda_sim: invalid block of ", threads, " threads");
  TORCH_CHECK(shared_bytes <= 48 * 1024, "cuda_sim: ", shared_bytes, " bytes of dynamic shared memory requested");
  TORCH_CHECK(grid.y <= 65535 && grid.z <= 65535, "cuda_sim: grid.y/grid.z above 65535");
  while (static_cast<int>(s.stacks.size()) < threads) s.stacks.emplace_back(new char[kStackBytes]);
  s.contexts.resize(threads);
  s.state.resize(threads);
  s.thread_idx.resize(threads);
  for (int t = 0; t < threads; ++t)
    s.thread_idx[t] = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
  s.grid = grid;
  s.block = block;
  s.body = &body;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        s.block_idx = dim3(bx, by, bz);
        s.shared.assign(shared_bytes, 0xFF);
        run_block_with_coroutines(s, threads);
      }
}

}  // namespace fastconv::sim
