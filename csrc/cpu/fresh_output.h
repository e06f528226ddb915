// Output tensors of the CPU kernels.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastconv::cpu {

// From this size on, glibc maps every allocation afresh (its mmap threshold stops at 32 MiB), so the
// first write to each 4 KiB page of an output faults and the kernel zeroes the page: MobileNetV2's
// 96-channel 112x112 depthwise input gradient at batch 8 (38.5 MB, 9400 pages) spent most of its time
// there.
constexpr int64_t kFreshPagesBytes = 32 << 20;

// at::empty for an output the caller writes in full: at kFreshPagesBytes and more, its memory is marked
// for transparent huge pages (where the system enables them on request), 2 MiB per fault instead of
// 4 KiB. A hint: where it is refused, nothing changes.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const int64_t bytes = t.numel() * int64_t(t.element_size());
  if (bytes >= kFreshPagesBytes) {
    constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
    const uintptr_t start = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t begin = (start + kHugePage - 1) & ~(kHugePage - 1), end = (start + bytes) & ~(kHugePage - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#endif
  return t;
}

}  // namespace fastconv::cpu
