// Output tensors of the CPU kernels.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace fastconv::cpu {

// From this size on, glibc maps every allocation afresh (its mmap threshold stops at 32 MiB), so the
// first write to each page of an output faults and the operating system zeroes the page: MobileNetV2's
// 96-channel 112x112 depthwise input gradient at batch 8 (38.5 MB) spent more time in the kernel's page
// clearing than in the convolution.
constexpr int64_t kFreshPagesBytes = 32 << 20;

// at::empty for an output the caller writes in full. At kFreshPagesBytes and more, the memory comes from
// fastconv's block cache (fresh_output.cpp): a block an earlier output of the same rounded size released is
// handed out again, its pages already mapped; a new block is marked for transparent huge pages (2 MiB per
// fault instead of 4 KiB, where the system grants them on request). FASTCONV_REUSE_BYTES bounds the bytes
// the cache keeps (default 512 MiB; 0 keeps none).
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace fastconv::cpu
