// Device helpers shared by every CUDA kernel of fastconv: dtype dispatch, launch with a launch check on
// the current stream, grid-stride loops, 32/64-bit index selection, a fixed-order block reduction.
//
// Kernels are plain CUDA. Built with FASTCONV_CUDA_SIM (scripts/cuda_sim.py), the same sources
// compile as C++ against cuda_sim.h, which runs each launch on the host, one block at a time; that is
// how the kernels' index math and barriers are checked on a machine without a GPU.
#pragma once

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/NumericUtils.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>

#ifdef FASTCONV_CUDA_SIM
#include "cuda/cuda_sim.h"
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace fastconv::cuda {

// float32, float64, float16, bfloat16.
#define FASTCONV_DISPATCH_FLOAT_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// Accumulation type of a kernel: float for half/bfloat16/float, double for double.
template <typename scalar_t>
using acc_type = at::acc_type<scalar_t, /*is_cuda=*/true>;

// The dtype of acc_type<scalar_t>, for buffers that hold accumulators.
inline at::ScalarType accumulate_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 ? at::kFloat : t;
}

// Threads per block of the element-wise kernels and of the block reductions (a power of two).
constexpr int kThreads = 256;
// Static shared memory a block may use without opting in to more, on every architecture we build for.
constexpr int64_t kSharedMemoryBytes = 48 * 1024;

// Dispatch key the kernels register for: CUDA, or CPU in the host-emulation build (CPU tensors then run
// the CUDA kernels).
#ifdef FASTCONV_CUDA_SIM
#define FASTCONV_CUDA_DISPATCH_KEY CPU
#else
#define FASTCONV_CUDA_DISPATCH_KEY CUDA
#endif

#ifdef FASTCONV_CUDA_SIM
using DeviceGuard = sim::DeviceGuard;
#else
// Makes the input's device current while a kernel or a cuBLAS call is issued.
using DeviceGuard = c10::cuda::CUDAGuard;
#endif

// Launches kernel<<<grid, block, shared_bytes>>> on the current stream and checks the launch. An empty
// grid is not launched at all (CUDA rejects it), so callers need no special case for empty tensors.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, Args&&... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
#ifdef FASTCONV_CUDA_SIM
  sim::run_grid(grid, block, shared_bytes, [&] { kernel(args...); });
#else
  kernel<<<grid, block, shared_bytes, at::cuda::getCurrentCUDAStream()>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

// A kernel's dynamic shared memory (the size is given at launch) as an array of `type`.
#ifdef FASTCONV_CUDA_SIM
#define FASTCONV_DYNAMIC_SHARED(type, name) \
  type* name = reinterpret_cast<type*>(::fastconv::sim::dynamic_shared_memory())
#else
#define FASTCONV_DYNAMIC_SHARED(type, name)                                   \
  extern __shared__ __align__(16) unsigned char fastconv_dynamic_shared_[]; \
  type* name = reinterpret_cast<type*>(fastconv_dynamic_shared_)
#endif

// Blocks for a grid-stride loop over `work` items, kThreads per block. Capped: the loop covers the rest.
inline unsigned grid_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 0, int64_t(1) << 20));
}

// Blocks for a loop over `blocks` units of work, one block each at a time (see the kernels' block loops).
inline unsigned grid_for_blocks(int64_t blocks) {
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 0, int64_t(1) << 20));
}

// True when kernels over tensors of these sizes may use cheaper 32-bit index math: every linear index,
// plus one grid stride (at most kThreads << 20, see grid_for) on top, stays below 2^31.
inline bool fits_int32(std::initializer_list<int64_t> numels) {
  for (int64_t n : numels)
    if (n > (int64_t(1) << 30)) return false;
  return true;
}

// Calls fn with an index_t of int32_t when `small` is true, else int64_t.
template <typename Fn>
void dispatch_index_type(bool small, Fn&& fn) {
  if (small) {
    fn(int32_t{});
  } else {
    fn(int64_t{});
  }
}

// Grid-stride loop over [0, n) in index_t.
#define FASTCONV_KERNEL_LOOP(index_t, i, n)                                                        \
  for (index_t i = static_cast<index_t>(blockIdx.x) * static_cast<index_t>(blockDim.x) + threadIdx.x; \
       i < (n); i += static_cast<index_t>(blockDim.x) * static_cast<index_t>(gridDim.x))

// Integer helpers usable on host and device.
template <typename T>
__host__ __device__ __forceinline__ T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}
// Floor division for a possibly negative numerator and a positive divisor.
template <typename T>
__host__ __device__ __forceinline__ T floor_div(T a, T b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// Sum of `value` over the threads of a block of blockDim.x == kThreads threads (blockDim.y == z == 1),
// in a fixed tree order, so the result is bitwise repeatable. Every thread of the block must call it;
// every thread gets the sum. `scratch` is a shared array of kThreads elements.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t value, acc_t* scratch) {
  const int tid = threadIdx.x;
  scratch[tid] = value;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (tid < half) scratch[tid] += scratch[tid + half];
    __syncthreads();
  }
  const acc_t total = scratch[0];
  __syncthreads();  // scratch may be reused right after
  return total;
}

}  // namespace fastconv::cuda
