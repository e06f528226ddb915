// The block cache behind empty_output (fresh_output.h).
#include "cpu/fresh_output.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/util/accumulate.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sys/mman.h>
#endif

namespace fastconv::cpu {
namespace {

constexpr std::size_t kHugePage = std::size_t(2) << 20;
constexpr int64_t kDefaultReuseBytes = int64_t(512) << 20;

int64_t reuse_limit_from_env() {
  if (const char* env = std::getenv("FASTCONV_REUSE_BYTES")) {
    const long long v = std::atoll(env);
    return v > 0 ? v : 0;
  }
  return kDefaultReuseBytes;
}

// Blocks of 2 MiB multiples, 2 MiB aligned. A released block waits in `free_` for an allocation of its
// exact size while the cached bytes stay within the limit; otherwise it goes back to the system. The
// allocator lives for the whole process (never destroyed), so tensors freed during interpreter shutdown
// still find it.
class ReusedBlocks final : public c10::Allocator {
 public:
  ReusedBlocks() : limit_(reuse_limit_from_env()) {
#if defined(__linux__)
    // A fork while another thread holds the lock would leave it held in the child: take it across fork.
    pthread_atfork([] { instance().mutex_.lock(); }, [] { instance().mutex_.unlock(); },
                   [] { instance().mutex_.unlock(); });
#endif
  }

  static ReusedBlocks& instance() {
    static ReusedBlocks* blocks = new ReusedBlocks();  // never destroyed: see above
    return *blocks;
  }

  c10::DataPtr allocate(std::size_t n) override {
    const std::size_t bytes = std::max(kHugePage, (n + kHugePage - 1) / kHugePage * kHugePage);
    void* block = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(bytes);
      if (it != free_.end() && !it->second.empty()) {
        block = it->second.back();
        it->second.pop_back();
        cached_ -= int64_t(bytes);
      }
    }
    if (!block) {
      TORCH_CHECK(posix_memalign(&block, kHugePage, bytes) == 0 && block, "fastconv: out of memory allocating ",
                  bytes, " bytes");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
      madvise(block, bytes, MADV_HUGEPAGE);  // a hint: where it is refused, nothing changes
#endif
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      sizes_[block] = bytes;
    }
    return {block, block, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  static void release(void* block) {
    ReusedBlocks& self = instance();
    {
      std::lock_guard<std::mutex> lock(self.mutex_);
      auto it = self.sizes_.find(block);
      TORCH_INTERNAL_ASSERT(it != self.sizes_.end());
      const std::size_t bytes = it->second;
      self.sizes_.erase(it);
      if (self.cached_ + int64_t(bytes) <= self.limit_) {
        self.free_[bytes].push_back(block);
        self.cached_ += int64_t(bytes);
        return;
      }
    }
    std::free(block);
  }

  const int64_t limit_;
  std::mutex mutex_;
  int64_t cached_ = 0;
  std::unordered_map<void*, std::size_t> sizes_;                // live blocks
  std::unordered_map<std::size_t, std::vector<void*>> free_;    // released blocks by size
};

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const int64_t bytes = c10::multiply_integers(sizes) * int64_t(options.dtype().itemsize());
  if (bytes < kFreshPagesBytes || options.device().type() != c10::DeviceType::CPU)
    return at::empty(sizes, options);
  return at::detail::empty_generic(sizes, &ReusedBlocks::instance(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), options.memory_format_opt());
}

}  // namespace fastconv::cpu
