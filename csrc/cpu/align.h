// Sizes and addresses of the CPU kernels' scratch buffers.
#pragma once

#include <cstdint>

namespace fastconv::cpu {

// The first 64-byte boundary at or after p: buffers allocated with 64 bytes to spare are used from here, so
// the kernels' vector loads never split cache lines.
template <typename T>
T* align_64(T* p) {
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
}

// v rounded up to a multiple of `multiple` (> 0), for v >= 0.
inline int64_t round_up(int64_t v, int64_t multiple) { return (v + multiple - 1) / multiple * multiple; }

}  // namespace fastconv::cpu
