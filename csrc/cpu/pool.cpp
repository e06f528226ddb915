// Max, average and adaptive pooling on CPU, forward and backward.
//
// Every op works on planes: the input is made NCHW-contiguous and viewed as (planes, H, W); threads
// split the work over rows of planes with at::parallel_for. Outputs and gradients are always
// NCHW-contiguous (what the fake kernels in fastconv/_ops.py promise).
//
// Forward kernels build one output row at a time (cpu/pool_kernels.inc): the columns whose window lies
// wholly inside the input go through vectorised loops along W, the edge columns next to the padding
// through checked scalar loops, and every output cell sees its taps in torch's order, so ties, NaNs
// and sums come out exactly as torch's. A channels-last input to max or average pooling is read in
// place instead, vectorised over channels. The row kernels are compiled for AVX-512, AVX2 and baseline
// x86-64 and picked at run time by active_cpu_isa() (FASTCONV_CPU_ISA can force a narrower one).
//
// Backward kernels are deterministic without atomics: each input-gradient element is summed by one
// thread (the owner of its plane for max pooling, of its row for average pooling), which adds its terms
// in ascending output order: the order of torch's sequential scatter, so the sums are bitwise the same.
#include <ATen/Parallel.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cpu_features.h"
#include "common/shapes.h"
#include "cpu/align.h"
#include "cpu/fresh_output.h"

// Per-ISA compilation needs GCC's `#pragma GCC target` on x86-64; the explicit SIMD code uses GCC's
// vector extensions. Other compilers and CPUs build the baseline kernels only.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTCONV_POOL_ISA_VARIANTS 1
#define FASTCONV_POOL_VECTOR_EXTENSIONS 1
#else
#define FASTCONV_POOL_ISA_VARIANTS 0
#define FASTCONV_POOL_VECTOR_EXTENSIONS 0
#endif

namespace fastconv::cpu {
namespace {

// Work items smaller than this many inner-loop steps are not worth a thread of their own.
constexpr int64_t kMinStepsPerTask = 1 << 14;

int64_t grain_for(int64_t steps_per_item) {
  return std::max<int64_t>(1, kMinStepsPerTask / std::max<int64_t>(1, steps_per_item));
}

// ---------------------------------------------------------------------------------------------
// Window geometry along one axis
// ---------------------------------------------------------------------------------------------

// Output columns [lo, hi) whose every tap (0 .. span, span = dilation * (kernel - 1)) reads a real
// input column; the columns outside it touch padding or run past the end (ceil mode).
inline OutputRange interior_outputs(int64_t out, int64_t in, int64_t stride, int64_t pad, int64_t span) {
  const int64_t lo = valid_output_range(out, in, stride, pad, 0).lo;
  const int64_t hi = valid_output_range(out, in, stride, pad, span).hi;
  return {lo, std::max(lo, hi)};
}

// Kernel taps k in [lo, hi) of a window starting at `start` (step `dilation`) that land in [0, in).
inline OutputRange taps_inside(int64_t start, int64_t kernel, int64_t dilation, int64_t in) {
  const int64_t lo = start < 0 ? (-start + dilation - 1) / dilation : 0;
  const int64_t hi = start >= in ? 0 : std::min(kernel, (in - start + dilation - 1) / dilation);
  return {lo, std::max(lo, hi)};
}

// For every input position along one axis, the output positions whose window reads it, in ascending
// order: outputs[offsets[i] .. offsets[i + 1]) for input position i. Built once per call and shared by
// all planes (the average-pooling backward passes use it for rows).
struct AxisReaders {
  std::vector<int64_t> offsets, outputs;

  template <typename ForEachRead>  // for_each_read(o, visit) calls visit(i) for each input i that o reads
  static AxisReaders build(int64_t in, int64_t out, ForEachRead for_each_read) {
    AxisReaders r;
    r.offsets.assign(in + 1, 0);
    for (int64_t o = 0; o < out; ++o) for_each_read(o, [&](int64_t i) { ++r.offsets[i + 1]; });
    for (int64_t i = 0; i < in; ++i) r.offsets[i + 1] += r.offsets[i];
    r.outputs.resize(r.offsets[in]);
    std::vector<int64_t> fill(r.offsets.begin(), r.offsets.end() - 1);
    for (int64_t o = 0; o < out; ++o) for_each_read(o, [&](int64_t i) { r.outputs[fill[i]++] = o; });
    return r;
  }

  static AxisReaders windowed(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
    return build(in, out, [&](int64_t o, auto visit) {
      const int64_t start = o * stride - pad;
      const OutputRange k = taps_inside(start, kernel, dilation, in);
      for (int64_t t = k.lo; t < k.hi; ++t) visit(start + t * dilation);
    });
  }

  static AxisReaders adaptive(int64_t in, int64_t out) {
    return build(in, out, [&](int64_t o, auto visit) {
      for (int64_t i = adaptive_start(o, out, in); i < adaptive_end(o, out, in); ++i) visit(i);
    });
  }
};

// A read-only view of AxisReaders as plain pointers (what the ISA-compiled kernels take).
struct ReadersView {
  const int64_t* offsets;
  const int64_t* outputs;
  explicit ReadersView(const AxisReaders& r) : offsets(r.offsets.data()), outputs(r.outputs.data()) {}
  const int64_t* begin(int64_t i) const { return outputs + offsets[i]; }
  const int64_t* end(int64_t i) const { return outputs + offsets[i + 1]; }
};

// Adaptive windows: output cell o covers input [o0[o], o1[o]) along each axis.
struct AdaptiveWindows {
  std::vector<int64_t> h0, h1, w0, w1;
  explicit AdaptiveWindows(const PoolGeometry& g) : h0(g.out_h), h1(g.out_h), w0(g.out_w), w1(g.out_w) {
    for (int64_t o = 0; o < g.out_h; ++o) {
      h0[o] = adaptive_start(o, g.out_h, g.in_h);
      h1[o] = adaptive_end(o, g.out_h, g.in_h);
    }
    for (int64_t o = 0; o < g.out_w; ++o) {
      w0[o] = adaptive_start(o, g.out_w, g.in_w);
      w1[o] = adaptive_end(o, g.out_w, g.in_w);
    }
  }
  // Input cells of the largest window: a measure of the work per output cell.
  int64_t largest_window() const {
    int64_t kh = 0, kw = 0;
    for (size_t o = 0; o < h0.size(); ++o) kh = std::max(kh, h1[o] - h0[o]);
    for (size_t o = 0; o < w0.size(); ++o) kw = std::max(kw, w1[o] - w0[o]);
    return kh * kw;
  }
};

struct AdaptiveWindowView {
  const int64_t *h0, *h1, *w0, *w1;
  explicit AdaptiveWindowView(const AdaptiveWindows& w)
      : h0(w.h0.data()), h1(w.h1.data()), w0(w.w0.data()), w1(w.w1.data()) {}
};

struct AvgOptions {
  bool count_include_pad = true;
  std::optional<int64_t> divisor_override;
};

// Divisor of every output cell (oh, ow), as torch defines it: divisor_override if given; else the
// window size, clipped to the padded input (count_include_pad) or to the input itself. A window with no
// input element gets 1: its sum, and so its output, is 0, as in torch.
template <typename scalar_t>
std::vector<scalar_t> avg_divisors(const PoolGeometry& g, const AvgOptions& opt) {
  struct Extent {
    int64_t padded, real;
  };
  auto extent = [](int64_t o, int64_t in, int64_t kernel, int64_t stride, int64_t pad) {
    const int64_t start = o * stride - pad;
    const int64_t end = std::min(start + kernel, in + pad);
    return Extent{end - start, std::max<int64_t>(0, std::min(end, in) - std::max<int64_t>(start, 0))};
  };
  std::vector<scalar_t> divisors(g.out_h * g.out_w);
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    const Extent h = extent(oh, g.in_h, g.kernel_h, g.stride_h, g.pad_h);
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      const Extent w = extent(ow, g.in_w, g.kernel_w, g.stride_w, g.pad_w);
      int64_t divisor = opt.count_include_pad ? h.padded * w.padded : h.real * w.real;
      if (opt.divisor_override.has_value()) divisor = *opt.divisor_override;
      if (h.real == 0 || w.real == 0) divisor = 1;
      divisors[oh * g.out_w + ow] = static_cast<scalar_t>(divisor);
    }
  }
  return divisors;
}

// Windows of 3 at stride 2, undilated (sequence models' max_pool1d(3, 2, 1)): max_values_interior has a form
// of its own for them, which reads the row in place, so 1-D rows of them go to it rather than to the sweep
// (max_pool_values_kernel).
constexpr bool is_window_of_3_at_2(int64_t kernel, int64_t stride, int64_t dilation) {
  return kernel == 3 && stride == 2 && dilation == 1;
}

// Arguments of the row kernels in cpu/pool_kernels.inc.
template <typename scalar_t>
struct MaxPoolArgs {
  const PoolGeometry* g;
  OutputRange interior;
  const scalar_t* in;
  scalar_t* out;
  int64_t* idx;
};

template <typename scalar_t>
struct AvgPoolArgs {
  const PoolGeometry* g;
  const scalar_t* divisors;  // out_h * out_w
  OutputRange interior;
  const scalar_t* in;
  scalar_t* out;
};

// Arguments of the window sweep (max pooling values and average pooling; see pool_kernels.inc).
constexpr int64_t kSweepMaxSpan = 128;  // input rows that kSweepRows windows may span
constexpr int64_t kSweepRows = 4;  // output rows computed together

template <typename scalar_t>
struct SweepArgs {
  const PoolGeometry* g;
  const scalar_t* divisors;  // average pooling: out_h * out_w; null for max pooling
  const scalar_t* in;
  scalar_t* out;
  int64_t bands;        // each plane's output rows split into this many work items
  bool padded;          // input rows go through a ring of padded copies (else they are read in place)
  int64_t phase_pitch;  // elements per phase of a padded row (stride 2: two phases, even and odd columns), a
                        // multiple of the vector lanes
  int64_t ring_rows;    // padded rows in the ring (a power of two): the input rows of 2 * kSweepRows windows, or all
};

template <typename scalar_t>
struct AdaptiveAvgArgs {
  const PoolGeometry* g;
  AdaptiveWindowView win;
  const scalar_t* in;
  scalar_t* out;
};

template <typename scalar_t>
struct AvgBackwardArgs {
  const PoolGeometry* g;
  ReadersView readers_h;
  OutputRange interior;
  const scalar_t* grad_out;  // grad_output, already divided by each window's divisor unless `divisors` is set
  const scalar_t* divisors;  // non-null: each term is divided here by its cell's divisor (out_h * out_w)
  scalar_t* grad_in;
};

}  // namespace
}  // namespace fastconv::cpu

// The row kernels, once per instruction set (see the top of cpu/pool_kernels.inc), each with vectors of
// its native width. Vectors wider than the baseline's trigger GCC's ABI note (-Wpsabi) on functions
// that pass them; those functions are internal, so the note does not apply.
#if FASTCONV_POOL_ISA_VARIANTS
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#define FASTCONV_POOL_ISA avx512
#define FASTCONV_POOL_VECTOR_BYTES 64
#include "cpu/pool_kernels.inc"
#undef FASTCONV_POOL_VECTOR_BYTES
#undef FASTCONV_POOL_ISA
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define FASTCONV_POOL_ISA avx2
#define FASTCONV_POOL_VECTOR_BYTES 32
#include "cpu/pool_kernels.inc"
#undef FASTCONV_POOL_VECTOR_BYTES
#undef FASTCONV_POOL_ISA
#pragma GCC pop_options
#pragma GCC diagnostic pop
#endif

#define FASTCONV_POOL_ISA baseline
#define FASTCONV_POOL_VECTOR_BYTES 16
#include "cpu/pool_kernels.inc"
#undef FASTCONV_POOL_VECTOR_BYTES
#undef FASTCONV_POOL_ISA

// Calls <isa>::kernel(args...) for the widest instruction set this CPU and build allow.
#if FASTCONV_POOL_ISA_VARIANTS
#define FASTCONV_POOL_RUN(kernel, ...)                                        \
  do {                                                                        \
    switch (active_cpu_isa()) {                                               \
      case CpuIsa::Avx512: avx512::kernel(__VA_ARGS__); break;                \
      case CpuIsa::Avx2: avx2::kernel(__VA_ARGS__); break;                    \
      default: baseline::kernel(__VA_ARGS__); break;                          \
    }                                                                         \
  } while (0)
#else
#define FASTCONV_POOL_RUN(kernel, ...) baseline::kernel(__VA_ARGS__)
#endif

namespace fastconv::cpu {
namespace {

// ---------------------------------------------------------------------------------------------
// Forward drivers
// ---------------------------------------------------------------------------------------------

// The largest index max pooling can report: an input position, or the past-the-end position torch
// reports for a window with no tap inside the input. float values pair with int32 indices when they fit
// (vectors of equal length); double values always pair with int64.
bool indices_fit_int32(const PoolGeometry& g) {
  const int64_t largest_index = (g.in_h + g.dil_h * g.kernel_h) * g.in_w + g.in_w + g.dil_w * g.kernel_w;
  return largest_index <= std::numeric_limits<int32_t>::max();
}

// Lanes of one vector of the widest kernel variant in use (0 without explicit vector kernels).
template <typename scalar_t>
int64_t vector_lanes() {
#if FASTCONV_POOL_VECTOR_EXTENSIONS
  switch (active_cpu_isa()) {
#if FASTCONV_POOL_ISA_VARIANTS
    case CpuIsa::Avx512: return avx512::Vec<scalar_t>::kLanes;
    case CpuIsa::Avx2: return avx2::Vec<scalar_t>::kLanes;
#endif
    default: return baseline::Vec<scalar_t>::kLanes;
  }
#else
  return 0;
#endif
}

// A channels-last input is pooled in place, vectorised over channels, into a channels-last output,
// instead of being copied to NCHW first (that copy costs far more than the pooling). Needs at least one
// vector of channels.
template <typename scalar_t>
bool use_channels_last_kernel(const at::Tensor& input, const PoolGeometry& g) {
  if (!is_channels_last(input)) return false;
  const int64_t lanes = vector_lanes<scalar_t>();
  return lanes > 0 && input.size(1) >= lanes && (!std::is_same_v<scalar_t, float> || indices_fit_int32(g));
}

// use_channels_last_kernel for the input's dtype; the forwards allocate their outputs in the layout the
// kernel they take writes.
bool takes_channels_last_kernel(const at::Tensor& input, const PoolGeometry& g) {
  return AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pool_layout",
                                    [&] { return use_channels_last_kernel<scalar_t>(input, g); });
}

at::TensorOptions pool_output_options(const at::Tensor& input, bool channels_last) {
  return channels_last ? input.options().memory_format(at::MemoryFormat::ChannelsLast) : input.options();
}

template <typename scalar_t>
void max_pool_forward_channels_last(const PoolGeometry& g, int64_t channels, const scalar_t* in, scalar_t* out,
                                    int64_t* idx) {
#if FASTCONV_POOL_VECTOR_EXTENSIONS
  const MaxPoolArgs<scalar_t> args{&g, OutputRange{0, 0}, in, out, idx};
  const int64_t images = g.planes / channels;
  at::parallel_for(0, images * g.out_h, grain_for(g.out_w * channels * g.kernel_h * g.kernel_w),
                   [&](int64_t r0, int64_t r1) {
                     FASTCONV_POOL_RUN(max_pool_rows_channels_last<scalar_t>, args, channels, r0, r1);
                   });
#else
  TORCH_INTERNAL_ASSERT(false, "max_pool2d: no channels-last kernel in this build");
#endif
}

template <typename scalar_t>
void avg_pool_forward_channels_last(const PoolGeometry& g, const AvgOptions& opt, int64_t channels,
                                    const scalar_t* in, scalar_t* out) {
#if FASTCONV_POOL_VECTOR_EXTENSIONS
  const std::vector<scalar_t> divisors = avg_divisors<scalar_t>(g, opt);
  const AvgPoolArgs<scalar_t> args{&g, divisors.data(), OutputRange{0, 0}, in, out};
  const int64_t images = g.planes / channels;
  at::parallel_for(0, images * g.out_h, grain_for(g.out_w * channels * g.kernel_h * g.kernel_w),
                   [&](int64_t r0, int64_t r1) {
                     FASTCONV_POOL_RUN(avg_pool_rows_channels_last<scalar_t>, args, channels, r0, r1);
                   });
#else
  TORCH_INTERNAL_ASSERT(false, "avg_pool2d: no channels-last kernel in this build");
#endif
}

// The row kernels' arguments for an NCHW-contiguous input (idx null: values only).
template <typename scalar_t>
MaxPoolArgs<scalar_t> max_pool_args(const PoolGeometry& g, const scalar_t* in, scalar_t* out, int64_t* idx) {
  return {&g, interior_outputs(g.out_w, g.in_w, g.stride_w, g.pad_w, g.dil_w * (g.kernel_w - 1)), in, out, idx};
}

template <typename scalar_t>
void max_pool_forward_kernel(const PoolGeometry& g, const scalar_t* in, scalar_t* out, int64_t* idx) {
  const MaxPoolArgs<scalar_t> args = max_pool_args(g, in, out, idx);
  const int64_t rows = g.planes * g.out_h, grain = grain_for(g.out_w * g.kernel_h * g.kernel_w);
  if (std::is_same_v<scalar_t, float> && indices_fit_int32(g)) {
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
      std::vector<int32_t> narrow(g.out_w);
      FASTCONV_POOL_RUN(max_pool_rows<scalar_t>, args, r0, r1, narrow.data());
    });
  } else {
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
      FASTCONV_POOL_RUN(max_pool_rows<scalar_t>, args, r0, r1, static_cast<int64_t*>(nullptr));
    });
  }
}

// The window sweep (pool_kernels.inc) takes strides 1 and 2 along W and output rows of at least a
// vector, with a ring of padded rows of at most kSweepMaxRingBytes (bounded workspace; wider rows take
// the row kernels).
constexpr int64_t kSweepMaxRingBytes = 1 << 20;

// Elements of a work item's ring: its padded rows (if any) and one row of the pooling's neutral value.
template <typename scalar_t>
int64_t sweep_ring_size(const SweepArgs<scalar_t>& a) {
  return ((a.padded ? a.ring_rows : 0) + 1) * a.g->stride_w * a.phase_pitch;
}

template <typename scalar_t>
std::optional<SweepArgs<scalar_t>> sweep_args(const PoolGeometry& g, const scalar_t* divisors, const scalar_t* in,
                                              scalar_t* out) {
#if FASTCONV_POOL_VECTOR_EXTENSIONS
  const int64_t lanes = vector_lanes<scalar_t>();
  if ((g.stride_w != 1 && g.stride_w != 2) || g.out_w < lanes ||
      (kSweepRows - 1) * g.stride_h + g.dil_h * (g.kernel_h - 1) + 1 > kSweepMaxSpan)
    return std::nullopt;
  SweepArgs<scalar_t> a{&g, divisors, in, out};
  const int64_t reach = (g.out_w - 1) * g.stride_w + g.dil_w * (g.kernel_w - 1) + 1;  // padded columns read
  a.padded = g.pad_w > 0 || reach > g.in_w;
  const int64_t padded_w = std::max(g.pad_w + g.in_w, reach);  // the left padding, the input, windows past it
  // Whole vectors from every block start below out_w, and the one after, stay inside a phase.
  const int64_t phase_columns = std::max((padded_w + g.stride_w - 1) / g.stride_w, round_up(g.out_w, lanes) + lanes);
  a.phase_pitch = round_up(phase_columns, lanes);
  // (A plane of fewer rows, 1-D pooling's single row for one, fits whole.)
  const int64_t ring_needs = std::min((2 * kSweepRows - 1) * g.stride_h + g.dil_h * (g.kernel_h - 1) + 1, g.in_h);
  a.ring_rows = 1;
  while (a.ring_rows < ring_needs) a.ring_rows *= 2;
  if (sweep_ring_size(a) * int64_t(sizeof(scalar_t)) > kSweepMaxRingBytes) return std::nullopt;
  // Enough work items for every thread to get several (a band restarts the ring: a few rows copied twice).
  const int64_t wanted = 4 * at::get_num_threads();
  a.bands = g.planes >= wanted ? 1 : std::min(g.out_h, (wanted + g.planes - 1) / g.planes);
  return a;
#else
  return std::nullopt;
#endif
}

template <typename scalar_t, bool kMax>
void run_window_sweep(const SweepArgs<scalar_t>& a) {
  const PoolGeometry& g = *a.g;
  const int64_t band_rows = (g.out_h + a.bands - 1) / a.bands;
  at::parallel_for(0, g.planes * a.bands, grain_for(band_rows * g.out_w * g.kernel_h * g.kernel_w),
                   [&](int64_t i0, int64_t i1) {
    // Filled with the pooling's neutral value, which the row past the ring and every padding column of
    // the ring's rows keep: copies write only the input's columns.
    const scalar_t fill = kMax ? -std::numeric_limits<scalar_t>::infinity() : scalar_t(0);
    std::vector<scalar_t> ring_storage(sweep_ring_size(a) + 64 / sizeof(scalar_t), fill);
    scalar_t* ring = align_64(ring_storage.data());
    if constexpr (kMax) FASTCONV_POOL_RUN(max_values_sweep<scalar_t>, a, i0, i1, ring);
    else FASTCONV_POOL_RUN(avg_sweep<scalar_t>, a, i0, i1, ring);
  });
}

// A window one row high that moves a row at a time (kernel_h 1, stride_h 1, no padding along H: 1-D
// pooling of an (N, C, L) input, given to the 2-D op as N planes of C rows) reads each row on its own, so
// the rows can be planes of one row, the shape 1-D pooling has otherwise: for the kernels that track no
// index (an index counts along its plane). The window sweep kept a ring of rows for such planes, which one
// row high planes skip (max_pool1d(3, 2, 1) on 256 x 1024 at batch 8: 0.12 -> 0.11 ms).
PoolGeometry rows_as_planes(const PoolGeometry& g) {
  if (g.kernel_h != 1 || g.stride_h != 1 || g.pad_h != 0 || g.in_h == 1 || g.out_h != g.in_h) return g;
  PoolGeometry rows = g;
  rows.planes = g.planes * g.in_h;
  rows.in_h = rows.out_h = 1;
  return rows;
}

template <typename scalar_t>
void max_pool_values_kernel(const PoolGeometry& plane_geometry, const scalar_t* in, scalar_t* out) {
  const PoolGeometry g = rows_as_planes(plane_geometry);
  // Rows of 1-D pooling with windows of 3 at stride 2 go to the row kernel, which has a form for them
  // that reads the row in place (max_values_interior); the sweep copied each row into its ring first
  // (max_pool1d(3, 2, 1) on 256 x 1024 at batch 8, one thread: 0.29 -> 0.26 ms).
  const bool row_kernel_form = g.in_h == 1 && g.kernel_h == 1 && is_window_of_3_at_2(g.kernel_w, g.stride_w, g.dil_w);
  if (!row_kernel_form)
    if (const auto sweep = sweep_args<scalar_t>(g, nullptr, in, out)) return run_window_sweep<scalar_t, true>(*sweep);
  const MaxPoolArgs<scalar_t> args = max_pool_args(g, in, out, static_cast<int64_t*>(nullptr));
  at::parallel_for(0, g.planes * g.out_h, grain_for(g.out_w * g.kernel_h * g.kernel_w), [&](int64_t r0, int64_t r1) {
    FASTCONV_POOL_RUN(max_pool_rows_values<scalar_t>, args, r0, r1);
  });
}

template <typename scalar_t>
void avg_pool_forward_kernel(const PoolGeometry& plane_geometry, const AvgOptions& opt, const scalar_t* in,
                             scalar_t* out) {
  const PoolGeometry g = rows_as_planes(plane_geometry);
  const std::vector<scalar_t> divisors = avg_divisors<scalar_t>(g, opt);
  if (const auto sweep = sweep_args<scalar_t>(g, divisors.data(), in, out))
    return run_window_sweep<scalar_t, false>(*sweep);
  const AvgPoolArgs<scalar_t> args{&g, divisors.data(),
                                   interior_outputs(g.out_w, g.in_w, g.stride_w, g.pad_w, g.kernel_w - 1), in, out};
  at::parallel_for(0, g.planes * g.out_h, grain_for(g.out_w * g.kernel_h * g.kernel_w), [&](int64_t r0, int64_t r1) {
    FASTCONV_POOL_RUN(avg_pool_rows<scalar_t>, args, r0, r1);
  });
}

// Global average (a 1 x 1 adaptive output, ResNet's last pooling): one mean per contiguous plane, a vector's
// lanes of planes summed together (global_mean_planes): ResNet-18's 512 x 7 x 7 at batch 8, 19.5 -> 14 us
// a call (torch 17 us).
template <typename scalar_t>
void global_avg_forward_kernel(const PoolGeometry& g, const scalar_t* in, scalar_t* out) {
  const int64_t size = g.in_plane();
  at::parallel_for(0, g.planes, grain_for(size), [&](int64_t p0, int64_t p1) {
    FASTCONV_POOL_RUN(global_mean_planes<scalar_t>, in, size, p0, p1, out);
  });
}

template <typename scalar_t>
void adaptive_avg_forward_kernel(const PoolGeometry& g, const scalar_t* in, scalar_t* out) {
  if (g.out_h == 1 && g.out_w == 1) return global_avg_forward_kernel(g, in, out);
  const AdaptiveWindows win(g);
  const AdaptiveAvgArgs<scalar_t> args{&g, AdaptiveWindowView(win), in, out};
  at::parallel_for(0, g.planes * g.out_h, grain_for(g.out_w * win.largest_window()), [&](int64_t r0, int64_t r1) {
    std::vector<scalar_t> column_sums(g.in_w);
    FASTCONV_POOL_RUN(adaptive_avg_rows<scalar_t>, args, r0, r1, column_sums.data());
  });
}

// Each output cell scans its window in torch's order (row by row), keeping the first maximum or the
// last NaN.
template <typename scalar_t>
void adaptive_max_forward_kernel(const PoolGeometry& g, const scalar_t* in, scalar_t* out, int64_t* idx) {
  const AdaptiveWindows win(g);
  at::parallel_for(0, g.planes * g.out_h, grain_for(g.out_w * win.largest_window()), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t p = r / g.out_h, oh = r % g.out_h;
      const scalar_t* plane = in + p * g.in_plane();
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        scalar_t best = -std::numeric_limits<scalar_t>::infinity();
        int64_t best_index = win.h0[oh] * g.in_w + win.w0[ow];
        for (int64_t ih = win.h0[oh]; ih < win.h1[oh]; ++ih) {
          const scalar_t* row = plane + ih * g.in_w;
          for (int64_t iw = win.w0[ow]; iw < win.w1[ow]; ++iw) {
            if (row[iw] > best || row[iw] != row[iw]) {
              best = row[iw];
              best_index = ih * g.in_w + iw;
            }
          }
        }
        out[r * g.out_w + ow] = best;
        idx[r * g.out_w + ow] = best_index;
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward drivers
// ---------------------------------------------------------------------------------------------
// Deterministic without atomics: every input-gradient element is summed by one thread, which adds its
// terms in ascending output order (the order of torch's sequential scatter, so the sums are the same).

// Max pooling (windowed or adaptive): one thread owns a plane's input gradient and adds each output
// cell's gradient, in ascending output order, to the element its index names. The work per output is
// one indexed add, so owning whole planes costs nothing in parallelism for a batch of channels.
// Indices outside the plane (torch's past-the-end index of a window with no tap inside the input)
// are skipped.
template <typename scalar_t>
void max_pool_backward_kernel(const PoolGeometry& g, const scalar_t* grad_out, const int64_t* idx,
                              scalar_t* grad_in) {
  const int64_t in_plane = g.in_plane(), out_plane = g.out_plane();
  at::parallel_for(0, g.planes, grain_for(in_plane + out_plane), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      scalar_t* gi = grad_in + p * in_plane;
      const scalar_t* go = grad_out + p * out_plane;
      const int64_t* ix = idx + p * out_plane;
      std::fill(gi, gi + in_plane, scalar_t(0));
      for (int64_t o = 0; o < out_plane; ++o) {
        // One unsigned compare tests 0 <= ix < in_plane.
        if (static_cast<uint64_t>(ix[o]) < static_cast<uint64_t>(in_plane)) gi[ix[o]] += go[o];
      }
    }
  });
}

// Adaptive average pooling (windowed average pooling does the same, vectorised, in pool_kernels.inc):
// one thread owns one input-gradient row (plane p, input row ih). It visits the output rows whose
// windows read row ih (AxisReaders) in ascending order and, within each, the output columns in
// ascending order, adding each cell's divided gradient to its window's elements on the row.
template <typename scalar_t>
void adaptive_avg_backward_kernel(const PoolGeometry& g, const AdaptiveWindows& win, const AxisReaders& readers,
                                  const scalar_t* scaled_grad_out, scalar_t* grad_in) {
  const ReadersView readers_h(readers);
  at::parallel_for(0, g.planes * g.in_h, grain_for(g.in_w * 2), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t p = r / g.in_h, ih = r % g.in_h;
      scalar_t* gi = grad_in + r * g.in_w;
      std::fill(gi, gi + g.in_w, scalar_t(0));
      for (const int64_t* oh = readers_h.begin(ih); oh != readers_h.end(ih); ++oh) {
        const scalar_t* go = scaled_grad_out + p * g.out_plane() + *oh * g.out_w;
        for (int64_t ow = 0; ow < g.out_w; ++ow)
          for (int64_t iw = win.w0[ow]; iw < win.w1[ow]; ++iw) gi[iw] += go[ow];
      }
    }
  });
}

// grad_output / divisor for every output cell (torch divides before scattering; so do we).
template <typename scalar_t, typename DivideFn>
void scale_grad_output(const PoolGeometry& g, const scalar_t* grad_out, scalar_t* scaled, DivideFn divide) {
  at::parallel_for(0, g.planes * g.out_h, grain_for(g.out_w), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t oh = r % g.out_h;
      for (int64_t ow = 0; ow < g.out_w; ++ow) scaled[r * g.out_w + ow] = divide(grad_out[r * g.out_w + ow], oh, ow);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Op entry points
// ---------------------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> max_pool2d_cpu(const at::Tensor& input, c10::IntArrayRef kernel_size,
                                                  c10::IntArrayRef stride, c10::IntArrayRef padding,
                                                  c10::IntArrayRef dilation, bool ceil_mode) {
  const PoolGeometry g = check_pool2d("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode, true);
  check_float_dtype("max_pool2d", input, /*allow_reduced_precision=*/false);
  const std::vector<int64_t> sizes = pool_output_sizes(input, g);
  const bool channels_last = g.planes > 0 && takes_channels_last_kernel(input, g);
  at::Tensor out = empty_output(sizes, pool_output_options(input, channels_last));
  at::Tensor indices = empty_output(sizes, pool_output_options(input, channels_last).dtype(at::kLong));
  if (g.planes == 0) return {out, indices};
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "max_pool2d", [&] {
    if (channels_last) {
      max_pool_forward_channels_last<scalar_t>(g, input.size(1), input.const_data_ptr<scalar_t>(),
                                               out.mutable_data_ptr<scalar_t>(), indices.mutable_data_ptr<int64_t>());
      return;
    }
    const at::Tensor input_c = input.contiguous();
    max_pool_forward_kernel<scalar_t>(g, input_c.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                      indices.mutable_data_ptr<int64_t>());
  });
  return {out, indices};
}

at::Tensor max_pool2d_values_cpu(const at::Tensor& input, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                 c10::IntArrayRef padding, c10::IntArrayRef dilation, bool ceil_mode) {
  const PoolGeometry g =
      check_pool2d("max_pool2d_values", input, kernel_size, stride, padding, dilation, ceil_mode, true);
  check_float_dtype("max_pool2d_values", input, /*allow_reduced_precision=*/false);
  if (g.planes == 0) return at::empty(pool_output_sizes(input, g), input.options());
  // A channels-last input goes through its own kernel (which also writes indices): no NCHW copy.
  if (takes_channels_last_kernel(input, g)) return std::get<0>(max_pool2d_cpu(input, kernel_size, stride, padding, dilation, ceil_mode));
  at::Tensor out = empty_output(pool_output_sizes(input, g), input.options());
  const at::Tensor input_c = input.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "max_pool2d_values", [&] {
    max_pool_values_kernel<scalar_t>(g, input_c.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& indices,
                                   c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                   c10::IntArrayRef dilation, bool ceil_mode) {
  const PoolGeometry g =
      check_pool2d("max_pool2d_backward", input, kernel_size, stride, padding, dilation, ceil_mode, true);
  check_float_dtype("max_pool2d_backward", input, false);
  check_pool_grad_output("max_pool2d_backward", input, g, grad_output, &indices);
  at::Tensor grad_input = empty_output(input.sizes(), input.options());
  if (g.planes == 0) return grad_input;
  const at::Tensor grad_output_c = grad_output.contiguous();
  const at::Tensor indices_c = indices.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "max_pool2d_backward", [&] {
    max_pool_backward_kernel<scalar_t>(g, grad_output_c.const_data_ptr<scalar_t>(),
                                       indices_c.const_data_ptr<int64_t>(), grad_input.mutable_data_ptr<scalar_t>());
  });
  return grad_input;
}

AvgOptions avg_options(const char* op, bool count_include_pad, std::optional<int64_t> divisor_override) {
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0, op,
              ": divisor_override must be non-zero, but got divisor_override=0");
  return {count_include_pad, divisor_override};
}

at::Tensor avg_pool2d_cpu(const at::Tensor& input, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                          c10::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                          std::optional<int64_t> divisor_override) {
  const PoolGeometry g = check_pool2d("avg_pool2d", input, kernel_size, stride, padding, {1, 1}, ceil_mode, false);
  check_float_dtype("avg_pool2d", input, false);
  const AvgOptions opt = avg_options("avg_pool2d", count_include_pad, divisor_override);
  const bool channels_last = g.planes > 0 && takes_channels_last_kernel(input, g);
  at::Tensor out = empty_output(pool_output_sizes(input, g), pool_output_options(input, channels_last));
  if (g.planes == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "avg_pool2d", [&] {
    if (channels_last) {
      avg_pool_forward_channels_last<scalar_t>(g, opt, input.size(1), input.const_data_ptr<scalar_t>(),
                                               out.mutable_data_ptr<scalar_t>());
      return;
    }
    const at::Tensor input_c = input.contiguous();
    avg_pool_forward_kernel<scalar_t>(g, opt, input_c.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor avg_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                   c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                   bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
  const PoolGeometry g = check_pool2d("avg_pool2d_backward", input, kernel_size, stride, padding, {1, 1}, ceil_mode, false);
  check_float_dtype("avg_pool2d_backward", input, false);
  check_pool_grad_output("avg_pool2d_backward", input, g, grad_output, nullptr);
  const AvgOptions opt = avg_options("avg_pool2d_backward", count_include_pad, divisor_override);
  at::Tensor grad_input = empty_output(input.sizes(), input.options());
  if (g.planes == 0) return grad_input;
  const at::Tensor grad_output_c = grad_output.contiguous();
  // Windows side by side along W (stride = kernel > 1, DenseNet's 2x2/2): an element has at most one term
  // per output row, so the kernel divides each term as it reads it (the quotient torch adds) instead of
  // writing a divided copy of grad_output first and reading it back.
  const bool divide_in_kernel = g.stride_w == g.kernel_w && g.stride_w > 1;
  const at::Tensor terms = divide_in_kernel ? grad_output_c : at::empty(grad_output_c.sizes(), grad_output_c.options());
  const AxisReaders readers_h = AxisReaders::windowed(g.in_h, g.out_h, g.kernel_h, g.stride_h, g.pad_h, 1);
  const OutputRange interior = interior_outputs(g.out_w, g.in_w, g.stride_w, g.pad_w, g.kernel_w - 1);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "avg_pool2d_backward", [&] {
    const std::vector<scalar_t> divisors = avg_divisors<scalar_t>(g, opt);
    if (!divide_in_kernel)
      scale_grad_output<scalar_t>(g, grad_output_c.const_data_ptr<scalar_t>(), terms.mutable_data_ptr<scalar_t>(),
                                  [&](scalar_t go, int64_t oh, int64_t ow) { return go / divisors[oh * g.out_w + ow]; });
    const AvgBackwardArgs<scalar_t> args{&g, ReadersView(readers_h), interior, terms.const_data_ptr<scalar_t>(),
                                         divide_in_kernel ? divisors.data() : nullptr,
                                         grad_input.mutable_data_ptr<scalar_t>()};
    at::parallel_for(0, g.planes * g.in_h, grain_for(g.out_w * g.kernel_w * 2), [&](int64_t r0, int64_t r1) {
      FASTCONV_POOL_RUN(avg_pool_backward_rows<scalar_t>, args, r0, r1);
    });
  });
  return grad_input;
}

at::Tensor adaptive_avg_pool2d_cpu(const at::Tensor& input, c10::IntArrayRef output_size) {
  const PoolGeometry g = is_global_average(output_size)
                             ? check_global_avg_pool2d("adaptive_avg_pool2d", input)
                             : check_adaptive_pool2d("adaptive_avg_pool2d", input, output_size, /*max_pool=*/false);
  check_float_dtype("adaptive_avg_pool2d", input, false);
  at::Tensor out = empty_output(pool_output_sizes(input, g), input.options());
  if (out.numel() == 0) return out;
  const at::Tensor input_c = input.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "adaptive_avg_pool2d", [&] {
    adaptive_avg_forward_kernel<scalar_t>(g, input_c.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

// The output size of an adaptive pooling backward call is the size of grad_output. An empty output
// (output size 0) has a zero input gradient; torch's own backward raises there instead.
PoolGeometry adaptive_backward_geometry(const char* op, const at::Tensor& grad_output, const at::Tensor& input,
                                        bool max_pool) {
  TORCH_CHECK(grad_output.dim() == input.dim(), op, ": expected grad_output with as many dims as input (",
              input.dim(), "), but got grad_output of size ", to_str(grad_output.sizes()));
  const int64_t dims = grad_output.dim();
  if (!max_pool && dims >= 2 && is_global_average({grad_output.size(dims - 2), grad_output.size(dims - 1)}))
    return check_global_avg_pool2d(op, input);
  return check_adaptive_pool2d(op, input, {grad_output.size(dims - 2), grad_output.size(dims - 1)}, max_pool);
}

at::Tensor adaptive_avg_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input) {
  const char* op = "adaptive_avg_pool2d_backward";
  const PoolGeometry g = adaptive_backward_geometry(op, grad_output, input, false);
  check_float_dtype(op, input, false);
  check_pool_grad_output(op, input, g, grad_output, nullptr);
  at::Tensor grad_input = empty_output(input.sizes(), input.options());
  if (grad_input.numel() == 0) return grad_input;
  const at::Tensor grad_output_c = grad_output.contiguous();
  if (g.out_h == 1 && g.out_w == 1) {  // global average: every input element gets its plane's share
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "global_avg_pool2d_backward", [&] {
      const scalar_t* go = grad_output_c.const_data_ptr<scalar_t>();
      scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
      const int64_t size = g.in_plane();
      at::parallel_for(0, g.planes, grain_for(size), [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) std::fill(gi + p * size, gi + (p + 1) * size, go[p] / scalar_t(size));
      });
    });
    return grad_input;
  }
  at::Tensor scaled = at::empty(grad_output_c.sizes(), grad_output_c.options());
  const AdaptiveWindows win(g);
  const AxisReaders readers_h = AxisReaders::adaptive(g.in_h, g.out_h);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "adaptive_avg_pool2d_backward", [&] {
    scale_grad_output<scalar_t>(g, grad_output_c.const_data_ptr<scalar_t>(), scaled.mutable_data_ptr<scalar_t>(),
                                [&](scalar_t go, int64_t oh, int64_t ow) {
                                  return go / (win.h1[oh] - win.h0[oh]) / (win.w1[ow] - win.w0[ow]);
                                });
    adaptive_avg_backward_kernel<scalar_t>(g, win, readers_h, scaled.const_data_ptr<scalar_t>(),
                                           grad_input.mutable_data_ptr<scalar_t>());
  });
  return grad_input;
}

std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d_cpu(const at::Tensor& input, c10::IntArrayRef output_size) {
  const PoolGeometry g = check_adaptive_pool2d("adaptive_max_pool2d", input, output_size, /*max_pool=*/true);
  check_float_dtype("adaptive_max_pool2d", input, false);
  const std::vector<int64_t> sizes = pool_output_sizes(input, g);
  const int64_t elements = c10::multiply_integers(sizes);
  // When the output divides the input, the adaptive windows are those of max pooling with
  // kernel = stride = in / out and no padding, and so are the values, indices, ties and NaNs: use the
  // vectorised kernels.
  const bool uniform = elements > 0 && g.in_h % g.out_h == 0 && g.in_w % g.out_w == 0;
  PoolGeometry windowed = g;
  if (uniform) {
    windowed.kernel_h = windowed.stride_h = g.in_h / g.out_h;
    windowed.kernel_w = windowed.stride_w = g.in_w / g.out_w;
  }
  const bool channels_last = uniform && takes_channels_last_kernel(input, windowed);
  at::Tensor out = empty_output(sizes, pool_output_options(input, channels_last));
  at::Tensor indices = empty_output(sizes, pool_output_options(input, channels_last).dtype(at::kLong));
  if (out.numel() == 0) return {out, indices};
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "adaptive_max_pool2d", [&] {
    if (channels_last) {
      max_pool_forward_channels_last<scalar_t>(windowed, input.size(1), input.const_data_ptr<scalar_t>(),
                                               out.mutable_data_ptr<scalar_t>(), indices.mutable_data_ptr<int64_t>());
      return;
    }
    const at::Tensor input_c = input.contiguous();
    if (uniform) {
      max_pool_forward_kernel<scalar_t>(windowed, input_c.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                        indices.mutable_data_ptr<int64_t>());
    } else {
      adaptive_max_forward_kernel<scalar_t>(g, input_c.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                            indices.mutable_data_ptr<int64_t>());
    }
  });
  return {out, indices};
}

at::Tensor adaptive_max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                            const at::Tensor& indices) {
  const char* op = "adaptive_max_pool2d_backward";
  const PoolGeometry g = adaptive_backward_geometry(op, grad_output, input, true);
  check_float_dtype(op, input, false);
  check_pool_grad_output(op, input, g, grad_output, &indices);
  at::Tensor grad_input = empty_output(input.sizes(), input.options());
  if (grad_input.numel() == 0) return grad_input;
  const at::Tensor grad_output_c = grad_output.contiguous();
  const at::Tensor indices_c = indices.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "adaptive_max_pool2d_backward", [&] {
    max_pool_backward_kernel<scalar_t>(g, grad_output_c.const_data_ptr<scalar_t>(),
                                       indices_c.const_data_ptr<int64_t>(), grad_input.mutable_data_ptr<scalar_t>());
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("max_pool2d", &InInputFormat<0, &max_pool2d_cpu>::call);
  m.impl("max_pool2d_values", &InInputFormat<0, &max_pool2d_values_cpu>::call);
  m.impl("max_pool2d_backward", &InInputFormat<1, &max_pool2d_backward_cpu>::call);
  m.impl("avg_pool2d", &InInputFormat<0, &avg_pool2d_cpu>::call);
  m.impl("avg_pool2d_backward", &InInputFormat<1, &avg_pool2d_backward_cpu>::call);
  m.impl("adaptive_avg_pool2d", &InInputFormat<0, &adaptive_avg_pool2d_cpu>::call);
  m.impl("adaptive_avg_pool2d_backward", &InInputFormat<1, &adaptive_avg_pool2d_backward_cpu>::call);
  m.impl("adaptive_max_pool2d", &InInputFormat<0, &adaptive_max_pool2d_cpu>::call);
  m.impl("adaptive_max_pool2d_backward", &InInputFormat<1, &adaptive_max_pool2d_backward_cpu>::call);
}

}  // namespace fastconv::cpu
