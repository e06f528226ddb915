// Direct convolution on CPU: computed straight from the input, with no column buffer.
//
// Forward, dense and wide grouped layers: a register-blocked kernel vectorised over output channels.
// Weights are packed into blocks of NR output channels; each tile of MR consecutive output pixels (over
// the planes of all images in turn) times NR channels is accumulated in vector registers over (input
// channel, tap), reading the input pixels in place from a zero-padded channels-last copy (for grouped
// layers, one per group: see group_major_applies) through tables of per-pixel and per-tap offsets, then
// transposed into the output planes.
//
// Backward of those layers: the input gradient is the same blocked kernel run on the output gradient
// with flipped, transposed weights (stride 1), or once per stride phase (strided layers, see
// phase_grad_input); the weight gradient is a GEMM over output pixels whose patch operand is read in
// place from the zero-padded channels-last input.
//
// Forward and backward for depthwise and narrow groups (and the remaining strided input gradients), the
// plane kernels (conv_planes.inc): each output plane (image, output channel) is owned by one thread and
// computed as a flat grid over a zero-padded copy of its input planes, split by stride phase, so every
// tap is one contiguous shifted read (the input gradient: over the output gradient upsampled by the
// stride, with the flipped weights). The weight gradient dots output-gradient rows with the same phase
// planes, several output channels or taps per loaded vector. Each input-gradient plane and each weight
// element is one thread's sum in a fixed order, so the backward is deterministic. Paddings or strides
// out of proportion with the plane, and kernels of more than 64 taps, take row-by-row kernels instead
// (edge handling hoisted out by valid_output_range).
//
// Depthwise layers (one channel per group) run in channel blocks instead (conv_depthwise.inc): a vector of
// channels per pixel, a strip of rows at a time, so small planes waste no lanes and pay no per-plane setup.
// Depthwise 3x3 and 5x5 layers with rows of 14 or more pixels take their forward and input gradient on the
// NCHW planes (depthwise_nchw_*), vectorised along the rows, with no transposes; with AVX-512, at stride 1
// with the padding (k - 1) / 2 and rows of at most two vectors, row by row from the planes in place, two
// rows to a vector where they fill less than half of one (depthwise_narrow_rows*, depthwise_row_pairs;
// float 3x3 layers there as runs of whole planes, a vector across row and plane ends: depthwise_plane_run_*); at
// stride 2 with input rows of at most two vectors and output rows of at most one, the forward and input
// gradient (and where those rows fill more than half a vector, the weight gradient) row by row from the
// planes in place (depthwise_stride2_rows*); with wider rows, the input gradient from the output-gradient
// planes in place, each tap's lanes taking its pixels by a permute (depthwise_spread_*), at stride 1
// the forward and input gradient from the source planes in place by masked loads (depthwise_inplace_*),
// and at stride 2 the forward so, each loaded pair of vectors split into its even and odd columns.
//
// One-dimensional layers take some passes along their rows instead (conv_rows.cpp: few input channels
// forward, few entries for the input gradient, dilated or few entries for the weight gradient).
#include <ATen/Parallel.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/conv_kernels.h"
#include "common/cpu_features.h"
#include "cpu/fresh_output.h"
#include "cpu/gemm.h"

namespace fastconv::cpu {
namespace {

// Up to two planes to bring into the caches while another is computed, a share of them per output row: the
// next plane(s) of the depthwise NCHW kernels, which copy a plane, compute on it and go on to the next, so
// that memory stays busy while they compute (the hardware prefetcher did not keep ahead of them).
template <typename scalar_t>
struct PlaneAhead {
  const scalar_t* first = nullptr;  // null: nothing to fetch
  int64_t first_elements = 0;
  const scalar_t* second = nullptr;
  int64_t second_elements = 0;

  // Requests, into L2, the lines of both planes that go with output rows [from, to) of `rows`.
  void fetch(int64_t from, int64_t to, int64_t rows) const {
    if (first == nullptr) return;
    fetch_share(first, first_elements, from, to, rows);
    fetch_share(second, second_elements, from, to, rows);
  }

 private:
  static void fetch_share(const scalar_t* plane, int64_t elements, int64_t from, int64_t to, int64_t rows) {
    const int64_t bytes = elements * int64_t(sizeof(scalar_t));
    const char* at = reinterpret_cast<const char*>(plane);
    for (int64_t b = from * bytes / rows / 64 * 64; b < to * bytes / rows; b += 64) fetch_line(at + b);
  }
  // (GCC deleted loops of nothing but __builtin_prefetch as having no effect: on x86 the instruction itself.)
  static void fetch_line(const char* at) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    asm volatile("prefetcht1 %0" : : "m"(*at));
#else
    __builtin_prefetch(at, 0, 2);
#endif
  }
};

// The plane kernels, once per instruction set.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FASTCONV_ISA_NS planes_avx512
#define FASTCONV_ISA_TARGET \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")))
#define FASTCONV_ISA_AVX512 1
#define FASTCONV_PLANES_VECTOR_BYTES 64
#include "cpu/conv_planes.inc"
#include "cpu/conv_depthwise.inc"
#undef FASTCONV_PLANES_VECTOR_BYTES
#undef FASTCONV_ISA_AVX512
#undef FASTCONV_ISA_NS
#undef FASTCONV_ISA_TARGET
#define FASTCONV_ISA_NS planes_avx2
#define FASTCONV_ISA_TARGET __attribute__((target("avx2,fma")))
#define FASTCONV_PLANES_VECTOR_BYTES 32
#include "cpu/conv_planes.inc"
#include "cpu/conv_depthwise.inc"
#undef FASTCONV_PLANES_VECTOR_BYTES
#undef FASTCONV_ISA_NS
#undef FASTCONV_ISA_TARGET
#define FASTCONV_PLANES_X86 1
#endif
#define FASTCONV_ISA_NS planes_baseline
#define FASTCONV_ISA_TARGET
#define FASTCONV_PLANES_VECTOR_BYTES 16
#include "cpu/conv_planes.inc"
#include "cpu/conv_depthwise.inc"
#undef FASTCONV_PLANES_VECTOR_BYTES
#undef FASTCONV_ISA_NS
#undef FASTCONV_ISA_TARGET

// FASTCONV_CALL_PLANES(f<T>(args)) calls planes_<isa>::f<T>(args) for the instruction set in use.
#ifdef FASTCONV_PLANES_X86
#define FASTCONV_CALL_PLANES(...)                                 \
  do {                                                            \
    switch (active_cpu_isa()) {                                   \
      case CpuIsa::Avx512: planes_avx512::__VA_ARGS__; break;     \
      case CpuIsa::Avx2: planes_avx2::__VA_ARGS__; break;         \
      default: planes_baseline::__VA_ARGS__; break;               \
    }                                                             \
  } while (0)
#else
#define FASTCONV_CALL_PLANES(...) planes_baseline::__VA_ARGS__
#endif

// Outputs from kStreamedOutputBytes up to kFreshPagesBytes are written past the caches (non-temporal
// stores): they would not stay in the 2-4 MiB of L2 anyway, and ordinary stores first read every line they
// overwrite (on the 7x7 stem at batch 8, 26 MB of output, that read cost 2-4 ms of an 11 ms forward).
// Larger outputs come from pages glibc maps afresh for every call (its mmap threshold stops at 32 MiB),
// which the kernel zeroes through the caches: there streaming stores made each line be written twice
// (MobileNetV2's 96-channel 112x112 depthwise input gradient at batch 8, 38.5 MB: 12 -> 18 ms). The
// blocked and the plane kernels both follow this rule (streams_output).
constexpr int64_t kStreamedOutputBytes = 8 << 20;

bool streams_output(int64_t bytes) { return bytes >= kStreamedOutputBytes && bytes < kFreshPagesBytes; }

// The zero-padded plane is at most 4x the plane plus `slack` elements. In doubles: the padded sizes of
// huge paddings (of a transposed geometry too) do not fit int64.
bool padded_plane_in_proportion(const ConvGeometry& g, double slack) {
  const double padded = (double(g.in_h) + 2.0 * double(g.pad_h)) * (double(g.in_w) + 2.0 * double(g.pad_w));
  return padded <= 4.0 * double(g.in_h) * double(g.in_w) + slack;
}

// What the plane kernels' padded copies need: at most 64 taps, a padding in proportion with the plane (a
// huge one keeps the row kernels, which never materialise it) and strides within the padded plane (the
// phase planes then hold at most 4x its pixels; a stride up to 2**63 - 1 would overflow their sizes).
// The forward and the weight gradient on phase planes (planes_*::forward_planes_padded,
// grad_weight_rows_padded) need no more.
bool plane_copies_fit(const ConvGeometry& g) {
  return g.kernel_h * g.kernel_w <= 64 && padded_plane_in_proportion(g, 4096.0) &&
         double(g.stride_h) <= double(g.in_h) + 2.0 * double(g.pad_h) &&
         double(g.stride_w) <= double(g.in_w) + 2.0 * double(g.pad_w);
}

// The input gradient on upsampled output-gradient planes (planes_*::grad_input_planes_padded): also a
// plane no more than 4x the input's.
bool plane_grad_input_uses_padding(const ConvGeometry& g) {
  const double rows = double(g.in_h) + double(g.kernel_h - 1) * double(g.dil_h);
  const double cols = double(g.in_w) + double(g.kernel_w - 1) * double(g.dil_w);
  return plane_copies_fit(g) && rows * cols <= 4.0 * double(g.in_h) * double(g.in_w) + 4096.0;
}

// The most output grids the plane kernels of any instruction set fill at once (kGridOutputs).
constexpr int64_t kMostGridOutputs = 8;
#ifdef FASTCONV_PLANES_X86
static_assert(planes_avx512::kGridOutputs <= kMostGridOutputs && planes_avx2::kGridOutputs <= kMostGridOutputs);
#endif
static_assert(planes_baseline::kGridOutputs <= kMostGridOutputs);

// Elements of one thread's scratch in forward_planes_padded: the group's phase planes and the output
// grids of the channels computed together.
int64_t plane_scratch_elements(const ConvGeometry& g) {
  const planes_baseline::PhasePlanes l = planes_baseline::phase_planes(g);
  return g.in_channels_per_group() * l.elements +
         kMostGridOutputs * (g.out_h * l.cols + planes_baseline::kPaddedChunk);
}

// Elements of one thread's scratch in grad_weight_rows_padded: phase planes of a batch of images, the
// vector sums of 4 output channels' taps (vectors of 64 bytes).
int64_t weight_grad_scratch_elements(const ConvGeometry& g, int64_t element_size) {
  const int64_t lanes = 64 / element_size;
  return planes_baseline::weight_grad_images_per_batch(g, element_size) * planes_baseline::phase_planes(g).elements +
         2 * 4 * g.kernel_h * g.kernel_w * lanes;
}

// Elements of one thread's scratch in grad_input_planes_padded: the group's upsampled output-gradient
// planes and the grids of the channels computed together.
int64_t grad_input_scratch_elements(const ConvGeometry& g) {
  const planes_baseline::UpsampledPlanes u = planes_baseline::upsampled_planes(g);
  return g.out_channels_per_group() * u.elements +
         kMostGridOutputs * (g.in_h * u.cols + planes_baseline::kPaddedChunk);
}

// Extra scratch elements per thread for a plane kernel writing `planes` planes of `plane` elements: where
// it streams them (streams_output), a buffer in which each plane is compacted before it is written.
int64_t streamed_plane_elements(int64_t planes, int64_t plane, int64_t element_size) {
  return streams_output(planes * plane * element_size) ? plane : 0;
}

// Whether the streamed planes of an output (`compact` > 0, see streamed_plane_elements) are written past the
// caches by the kernel itself: rows of whole 64-byte vectors from a 64-byte aligned start (MobileNetV2's
// 112x112 planes), so every store is a whole aligned vector and no staging plane is needed; at batch 8 the
// staging copy was a fifth of the 32-channel 112x112 forward's time.
template <typename scalar_t>
bool streams_whole_rows(int64_t compact, int64_t row_elements, const scalar_t* out) {
  return compact > 0 && (row_elements * int64_t(sizeof(scalar_t))) % 64 == 0 &&
         reinterpret_cast<uintptr_t>(out) % 64 == 0;
}

// The least number of planes of `plane` output elements per task of the depthwise plane drivers: calls of
// fewer than 8192 output elements in all run on one thread, where a parallel region's ~0.75 us outweighed
// the halved work (depthwise 3x3 at batch 1, one thread against two: 16 channels of 14x14 4.0 vs 4.6 us, 32
// of 14x14 4.7 vs 5.0 us, 128 of 7x7 5.5 vs 5.5 us; 16 of 28x28 5.7 vs 5.8 us).
int64_t depthwise_plane_grain(int64_t plane) { return std::max<int64_t>(1, (8192 + plane - 1) / plane); }

// Runs fn(p0, p1, scratch, compact) over ranges of `planes` output planes of `plane` elements, each worker
// with `scratch_elements` of scratch and, where the planes are streamed, a compacting buffer (else null).
template <typename scalar_t, typename Fn>
void for_plane_ranges(int64_t planes, int64_t plane, int64_t scratch_elements, const Fn& fn) {
  const int64_t compact = streamed_plane_elements(planes, plane, sizeof(scalar_t));
  at::parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
    std::vector<scalar_t> scratch(scratch_elements + compact);
    fn(p0, p1, scratch.data(), compact > 0 ? scratch.data() + scratch_elements : nullptr);
  });
}

// ---- Depthwise layers in channel blocks (conv_depthwise.inc) ---------------------------------------------

// A block's channels-last planes are built and used a strip of output rows at a time, the strip's padded
// rows about kDepthwiseStripBytes (64 bytes a pixel): with the strip's outputs they stay in the core's L2.
// Whole 112x112 planes (830 kB each for the padded input and the output) were slower than the plane
// kernels at batch 1 (32 channels: 0.15 -> 0.24 ms).
constexpr int64_t kDepthwiseStripBytes = 128 << 10;

// Whether a depthwise layer (one input and one output channel per group) runs in channel blocks: a
// padding in proportion with the plane (the padded rows are materialised).
bool depthwise_blocks_apply(const ConvGeometry& g) {
  return g.groups == g.in_channels && g.groups == g.out_channels && g.groups > 1 &&
         padded_plane_in_proportion(g, 64.0);
}

// At stride 1 the input gradient reads the output gradient inside a border of dil * (k - 1) - pad pixels,
// which must not be negative (a padding past the kernel's reach); strided ones go by phases, of which
// there are stride_h x stride_w: a stride past the kernel (phases without taps) keeps the plane kernels.
bool depthwise_blocks_grad_input_apply(const ConvGeometry& g) {
  if (!depthwise_blocks_apply(g)) return false;
  if (g.stride_h > 1 || g.stride_w > 1) return g.stride_h <= g.kernel_h && g.stride_w <= g.kernel_w;
  return g.pad_h <= g.dil_h * (g.kernel_h - 1) && g.pad_w <= g.dil_w * (g.kernel_w - 1);
}

// The weight gradient of a block is one thread's sum over the images: it runs in blocks where there are
// as many blocks as threads.
bool depthwise_blocks_grad_weight_apply(const ConvGeometry& g, int64_t element_size) {
  const int64_t lanes = 64 / element_size;
  return depthwise_blocks_apply(g) && (g.in_channels + lanes - 1) / lanes >= at::get_num_threads();
}

constexpr int64_t kDepthwiseRun = planes_baseline::kDepthwiseRun;

// Where a block's source planes (src_h x src_w) land in its channels-last planes, and how a grid of out_h x
// out_w computed pixels reads them. Source pixel (r, s) goes to padded pixel (r * step_h + top,
// s * step_w + left) of rows `cols` pixels long (the forward and the weight gradient: the input inside its
// padding; the input gradient: the output gradient inside a border); grid pixel (oh, ow) reads from padded
// pixel (oh * stride_h, ow * stride_w) on. Strips of strip_out_rows grid rows read strip_rows padded rows
// each. In elements: dst_cols[j], where pixel j of a strip's first source rows goes relative to the first
// one's padded row; bases[q], where grid pixel q of a strip reads from (up to a whole number of
// kDepthwiseRun pixels, the last repeated).
//
// The taps go in phases: phase f computes every grid pixel with the weight taps tap_of[i] (i from
// phase_first[f] to phase_first[f + 1]), tap i reading offsets[i] pixels further, and writes grid pixel q
// to out_pos[f * bases.size() + q] of the strip's output (or to q where out_pos is empty). The output
// is dest_h x dest_w, each grid row dest_rows_per_row rows of it. The forward and the stride-1 input
// gradient are one phase of every tap; a strided input gradient has one phase per stride phase of its
// pixels.
struct DepthwisePlacement {
  int64_t src_h, src_w, step_h, step_w, top, left, cols;
  int64_t out_h, out_w, stride_h, stride_w;
  int64_t dest_h, dest_w, dest_rows_per_row;
  int64_t strip_out_rows = 0, strip_rows = 0;
  std::vector<int64_t> dst_cols, bases, tap_of, phase_first, offsets, out_pos;
};

// Fills the strips and the grid's bases; reach_h: the most padded rows a tap reads past a grid pixel's.
void depthwise_place_strips(DepthwisePlacement& p, int64_t reach_h, int64_t lanes) {
  p.strip_out_rows = std::clamp<int64_t>(kDepthwiseStripBytes / std::max<int64_t>(1, p.cols * 64 * p.stride_h), 1,
                                         p.out_h);
  p.strip_rows = (p.strip_out_rows - 1) * p.stride_h + reach_h + 1;
  const int64_t src_rows = std::min(p.src_h, p.strip_rows / p.step_h + 1);
  p.dst_cols.resize(src_rows * p.src_w);
  for (int64_t r = 0; r < src_rows; ++r)
    for (int64_t s = 0; s < p.src_w; ++s)
      p.dst_cols[r * p.src_w + s] = (r * p.step_h * p.cols + s * p.step_w + p.left) * lanes;
  const int64_t strip_pixels = p.strip_out_rows * p.out_w;
  p.bases.resize((strip_pixels + kDepthwiseRun - 1) / kDepthwiseRun * kDepthwiseRun);
  for (int64_t q = 0; q < int64_t(p.bases.size()); ++q) {
    const int64_t x = std::min(q, strip_pixels - 1);
    p.bases[q] = (x / p.out_w) * p.stride_h * p.cols + (x % p.out_w) * p.stride_w;
  }
}

// Pixels of a strip's output buffer: its grid pixels (rounded up) or, by phases, its rows of the output
// and one more pixel where the grid's columns past the output go.
int64_t depthwise_strip_output_pixels(const DepthwisePlacement& p) {
  return std::max<int64_t>(p.bases.size(), p.strip_out_rows * p.dest_rows_per_row * p.dest_w + 1);
}

// One phase of every tap over an out_h x out_w grid that is the output (flipped: the taps reversed).
DepthwisePlacement depthwise_placement(const ConvGeometry& g, int64_t src_h, int64_t src_w, int64_t step_h,
                                       int64_t step_w, int64_t top, int64_t left, int64_t cols, int64_t out_h,
                                       int64_t out_w, int64_t stride_h, int64_t stride_w, bool flipped,
                                       int64_t lanes) {
  DepthwisePlacement p{src_h, src_w, step_h, step_w, top, left, cols, out_h, out_w, stride_h, stride_w, out_h, out_w, 1};
  depthwise_place_strips(p, g.dil_h * (g.kernel_h - 1), lanes);
  const int64_t taps = g.kernel_h * g.kernel_w;
  p.phase_first = {0, taps};
  for (int64_t t = 0; t < taps; ++t) {
    p.tap_of.push_back(flipped ? taps - 1 - t : t);
    p.offsets.push_back((t / g.kernel_w) * g.dil_h * cols + (t % g.kernel_w) * g.dil_w);
  }
  return p;
}

// Elements of a strip's padded rows.
int64_t depthwise_strip_elements(const DepthwisePlacement& p, int64_t lanes) { return p.strip_rows * p.cols * lanes; }

// The padded rows of the strip of output rows from o0 on (at most strip_out_rows of them), for the block
// whose first channel's source plane is at src (planes plane_stride apart, `lanes` channels): the source
// rows that land there, transposed into place, and zeros in the rows none lands on (the padding and the
// upsampling's gaps; the gaps within rows stay zero from the start, no source pixel landing there).
template <typename scalar_t>
void depthwise_fill_strip(const DepthwisePlacement& p, const MicroKernels<scalar_t>& mk, const scalar_t* src,
                          int64_t plane_stride, int64_t lanes, int64_t o0, scalar_t* strip) {
  constexpr int64_t L = 64 / sizeof(scalar_t);
  const int64_t first_row = o0 * p.stride_h;  // the strip's first padded row
  // Source rows r with first_row <= r * step_h + top < first_row + strip_rows.
  const int64_t lo = first_row - p.top, hi = first_row + p.strip_rows - 1 - p.top;
  const int64_t r0 = lo <= 0 ? 0 : (lo + p.step_h - 1) / p.step_h;
  const int64_t r1 = hi < 0 ? 0 : std::min(p.src_h, hi / p.step_h + 1);
  for (int64_t row = 0; row < p.strip_rows; ++row) {
    const int64_t at = first_row + row - p.top;
    const bool lands = at >= 0 && at % p.step_h == 0 && at / p.step_h >= r0 && at / p.step_h < r1;
    if (!lands) std::fill(strip + row * p.cols * L, strip + (row + 1) * p.cols * L, scalar_t(0));
  }
  if (r0 < r1)
    mk.transpose(lanes, (r1 - r0) * p.src_w, src + r0 * p.src_w, plane_stride,
                 strip + (r0 * p.step_h + p.top - first_row) * p.cols * L, 0, p.dst_cols.data());
}

// Elements of one thread's scratch: a strip's padded rows, its output (or output-gradient) pixels, the
// taps' weights or sums and the start values, and 64 bytes for alignment.
int64_t depthwise_scratch_elements(const DepthwisePlacement& p, int64_t taps, int64_t lanes) {
  return depthwise_strip_elements(p, lanes) + (depthwise_strip_output_pixels(p) + taps + 2) * lanes;
}

DepthwisePlacement depthwise_forward_placement(const ConvGeometry& g, int64_t lanes) {
  return depthwise_placement(g, g.in_h, g.in_w, 1, 1, g.pad_h, g.pad_w, g.in_w + 2 * g.pad_w, g.out_h, g.out_w,
                             g.stride_h, g.stride_w, /*flipped=*/false, lanes);
}

// a / b rounded down, for b > 0 and any a.
int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// The input gradient of a strided layer by phases: input pixel (a + s_h i, b + s_w j) receives
// w[ki][kj] * dY[i + (a + pad_h - ki dil_h) / s_h][j + (b + pad_w - kj dil_w) / s_w] from exactly the taps
// whose divisions are exact, so phase (a, b) is a stride-1 correlation of the output gradient (inside a
// border that keeps every shift in the planes) with those taps, over a grid of ceil(in_h / s_h) x
// ceil(in_w / s_w) pixels whose results go to every s-th pixel (the grid's columns past the input to a
// spare pixel). Upsampling the output gradient instead multiplied s_h s_w times as many zeros.
DepthwisePlacement depthwise_phased_grad_input_placement(const ConvGeometry& g, int64_t lanes) {
  const int64_t sh = g.stride_h, sw = g.stride_w;
  const int64_t grid_h = (g.in_h + sh - 1) / sh, grid_w = (g.in_w + sw - 1) / sw;
  // The shift of tap ki (kj) for row (column) phase a (b), where exact: the tap's dY row minus the grid row.
  const auto shift = [](int64_t phase, int64_t pad, int64_t k, int64_t dil, int64_t stride, int64_t* out) {
    const int64_t x = phase + pad - k * dil;
    if (x - floor_div(x, stride) * stride != 0) return false;
    *out = floor_div(x, stride);
    return true;
  };
  int64_t lo_h = 0, hi_h = 0, lo_w = 0, hi_w = 0, v = 0;
  for (int64_t a = 0; a < sh; ++a)
    for (int64_t k = 0; k < g.kernel_h; ++k)
      if (shift(a, g.pad_h, k, g.dil_h, sh, &v)) lo_h = std::min(lo_h, v), hi_h = std::max(hi_h, v);
  for (int64_t b = 0; b < sw; ++b)
    for (int64_t k = 0; k < g.kernel_w; ++k)
      if (shift(b, g.pad_w, k, g.dil_w, sw, &v)) lo_w = std::min(lo_w, v), hi_w = std::max(hi_w, v);
  const int64_t top = -lo_h, left = -lo_w;
  const int64_t cols = std::max(left + g.out_w, grid_w + left + hi_w);
  DepthwisePlacement p{g.out_h, g.out_w, 1, 1, top, left, cols, grid_h, grid_w, 1, 1, g.in_h, g.in_w, sh};
  depthwise_place_strips(p, top + hi_h, lanes);
  const int64_t grid_pixels = p.bases.size(), spare = p.strip_out_rows * sh * g.in_w;
  for (int64_t a = 0; a < sh; ++a)
    for (int64_t b = 0; b < sw; ++b) {
      p.phase_first.push_back(p.tap_of.size());
      int64_t dr = 0, dc = 0;
      for (int64_t ki = 0; ki < g.kernel_h; ++ki)
        for (int64_t kj = 0; kj < g.kernel_w; ++kj)
          if (shift(a, g.pad_h, ki, g.dil_h, sh, &dr) && shift(b, g.pad_w, kj, g.dil_w, sw, &dc)) {
            p.tap_of.push_back(ki * g.kernel_w + kj);
            p.offsets.push_back((top + dr) * cols + left + dc);
          }
      for (int64_t q = 0; q < grid_pixels; ++q) {
        const int64_t x = std::min(q, p.strip_out_rows * grid_w - 1), col = b + sw * (x % grid_w);
        p.out_pos.push_back(col < g.in_w ? (a + sh * (x / grid_w)) * g.in_w + col : spare);
      }
    }
  p.phase_first.push_back(p.tap_of.size());
  return p;
}

// The input gradient at stride 1: the output gradient inside a border of dil * (k - 1) - pad pixels,
// correlated with the flipped taps.
DepthwisePlacement depthwise_grad_input_placement(const ConvGeometry& g, int64_t lanes) {
  if (g.stride_h > 1 || g.stride_w > 1) return depthwise_phased_grad_input_placement(g, lanes);
  const int64_t top = g.dil_h * (g.kernel_h - 1) - g.pad_h, left = g.dil_w * (g.kernel_w - 1) - g.pad_w;
  return depthwise_placement(g, g.out_h, g.out_w, 1, 1, top, left, g.in_w + g.dil_w * (g.kernel_w - 1), g.in_h,
                             g.in_w, 1, 1, /*flipped=*/true, lanes);
}

int64_t depthwise_blocks_scratch_elements(const ConvGeometry& g, int64_t element_size) {
  const int64_t lanes = 64 / element_size, taps = g.kernel_h * g.kernel_w;
  int64_t most = depthwise_scratch_elements(depthwise_forward_placement(g, lanes), taps, lanes);
  if (depthwise_blocks_grad_input_apply(g))
    most = std::max(most, depthwise_scratch_elements(depthwise_grad_input_placement(g, lanes), taps, lanes));
  return most;
}

// The block's weights, one vector for each computed tap i (weight tap tap_of[i]), zero past the last
// channel.
template <typename scalar_t>
void depthwise_block_taps(const scalar_t* w, int64_t c0, int64_t lanes, int64_t taps, const std::vector<int64_t>& tap_of,
                          scalar_t* taps_w) {
  constexpr int64_t L = 64 / sizeof(scalar_t);
  std::fill(taps_w, taps_w + int64_t(tap_of.size()) * L, scalar_t(0));
  for (int64_t c = 0; c < lanes; ++c)
    for (int64_t i = 0; i < int64_t(tap_of.size()); ++i) taps_w[i * L + c] = w[(c0 + c) * taps + tap_of[i]];
}

// out (N, C, dest_h, dest_w) = the correlation of src's planes (N, C, src_h, src_w), placed by `p`, with
// the taps, starting from the bias where given; work items are (image, block, strip).
template <typename scalar_t>
void depthwise_blocks_correlate(const ConvGeometry& g, const DepthwisePlacement& p, const scalar_t* src,
                                const scalar_t* w, const scalar_t* bias, scalar_t* out) {
  constexpr int64_t L = 64 / sizeof(scalar_t);
  const MicroKernels<scalar_t>& mk = micro_kernels<scalar_t>();
  const int64_t channels = g.in_channels, blocks = (channels + L - 1) / L, taps = g.kernel_h * g.kernel_w;
  const int64_t src_plane = p.src_h * p.src_w, out_plane = p.dest_h * p.dest_w;
  const int64_t phases = int64_t(p.phase_first.size()) - 1, grid_pixels = p.bases.size();
  const int64_t strips = (p.out_h + p.strip_out_rows - 1) / p.strip_out_rows;
  at::parallel_for(0, g.batch * blocks * strips, 1, [&](int64_t u0, int64_t u1) {
    std::vector<scalar_t> scratch(depthwise_scratch_elements(p, taps, L));
    scalar_t* strip = align_64(scratch.data());
    scalar_t* pixels = strip + depthwise_strip_elements(p, L);
    scalar_t* taps_w = pixels + depthwise_strip_output_pixels(p) * L;
    scalar_t* start = taps_w + taps * L;
    int64_t block_w = -1;
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t n = u / (blocks * strips), b = u / strips % blocks, c0 = b * L, lanes = std::min(L, channels - c0);
      const int64_t o0 = u % strips * p.strip_out_rows;
      if (b != block_w) {
        depthwise_block_taps(w, c0, lanes, taps, p.tap_of, taps_w);
        std::fill(start, start + L, scalar_t(0));
        if (bias) std::copy(bias + c0, bias + c0 + lanes, start);
        block_w = b;
      }
      const int64_t count = std::min(p.strip_out_rows, p.out_h - o0) * p.out_w;
      depthwise_fill_strip(p, mk, src + (n * channels + c0) * src_plane, src_plane, lanes, o0, strip);
      for (int64_t f = 0; f < phases; ++f) {
        const int64_t first = p.phase_first[f];
        FASTCONV_CALL_PLANES(depthwise_block_correlate<scalar_t>(
            strip, p.bases.data(), count, taps_w + first * L, p.offsets.data() + first, p.phase_first[f + 1] - first,
            bias ? start : nullptr, pixels, p.out_pos.empty() ? nullptr : p.out_pos.data() + f * grid_pixels));
      }
      // The strip's rows of the output, written through the caches: streaming stores measured slower here
      // (MobileNetV2's 32-channel 112x112 layer at batch 8: 1.03 -> 1.18 ms).
      const int64_t d0 = o0 * p.dest_rows_per_row, d1 = std::min(p.dest_h, (o0 + p.strip_out_rows) * p.dest_rows_per_row);
      mk.transpose((d1 - d0) * p.dest_w, lanes, pixels, L, out + (n * channels + c0) * out_plane + d0 * p.dest_w,
                   out_plane, nullptr);
    }
  });
}

template <typename scalar_t>
void depthwise_blocks_forward_kernel(const ConvGeometry& g, const scalar_t* in, const scalar_t* w,
                                     const scalar_t* bias, scalar_t* out) {
  depthwise_blocks_correlate(g, depthwise_forward_placement(g, 64 / sizeof(scalar_t)), in, w, bias, out);
}

template <typename scalar_t>
void depthwise_blocks_grad_input_kernel(const ConvGeometry& g, const scalar_t* go, const scalar_t* w, scalar_t* gi) {
  depthwise_blocks_correlate(g, depthwise_grad_input_placement(g, 64 / sizeof(scalar_t)), go, w,
                             static_cast<const scalar_t*>(nullptr), gi);
}

// The weight gradient: per block, the sums over images and strips in order of output-gradient pixels times
// the input pixels each tap reads (one thread per block: deterministic).
template <typename scalar_t>
void depthwise_blocks_grad_weight_kernel(const ConvGeometry& g, const scalar_t* go, const scalar_t* in, scalar_t* gw) {
  constexpr int64_t L = 64 / sizeof(scalar_t);
  const MicroKernels<scalar_t>& mk = micro_kernels<scalar_t>();
  const DepthwisePlacement p = depthwise_forward_placement(g, L);
  const int64_t channels = g.in_channels, blocks = (channels + L - 1) / L, taps = g.kernel_h * g.kernel_w;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<scalar_t> scratch(depthwise_scratch_elements(p, taps, L));
    scalar_t* strip = align_64(scratch.data());
    scalar_t* dy = strip + depthwise_strip_elements(p, L);
    scalar_t* sums = dy + depthwise_strip_output_pixels(p) * L;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t c0 = b * L, lanes = std::min(L, channels - c0);
      std::fill(sums, sums + taps * L, scalar_t(0));
      for (int64_t n = 0; n < g.batch; ++n)
        for (int64_t o0 = 0; o0 < g.out_h; o0 += p.strip_out_rows) {
          const int64_t rows = std::min(p.strip_out_rows, g.out_h - o0);
          depthwise_fill_strip(p, mk, in + (n * channels + c0) * in_plane, in_plane, lanes, o0, strip);
          mk.transpose(lanes, rows * g.out_w, go + (n * channels + c0) * out_plane + o0 * g.out_w, out_plane, dy, L,
                       nullptr);
          FASTCONV_CALL_PLANES(depthwise_block_weight<scalar_t>(strip, p.cols, dy, p.offsets.data(), taps, rows,
                                                                g.out_w, g.stride_h, g.stride_w, sums));
        }
      for (int64_t c = 0; c < lanes; ++c)
        for (int64_t t = 0; t < taps; ++t) gw[(c0 + c) * taps + t] = sums[t * L + c];
    }
  });
}

// ---- Depthwise layers on NCHW planes (conv_depthwise.inc, depthwise_nchw_*) ------------------------------

// Layers with input or output rows narrower than this stay in channel blocks, where short rows waste no
// lanes (the stride-2 input gradient of 14x14 planes, 7-pixel output-gradient rows: 0.89-0.98x).
constexpr int64_t kDepthwiseNchwMinWidth = 14;

// A depthwise layer (one input and one output channel per group) with a square, undilated 3x3 or 5x5
// kernel: the layers the NCHW and narrow-row kernels are compiled for.
bool square_depthwise_3x3_or_5x5(const ConvGeometry& g) {
  const int64_t k = g.kernel_h;
  return g.groups == g.in_channels && g.groups == g.out_channels && g.groups > 1 && g.kernel_w == k &&
         (k == 3 || k == 5) && g.dil_h == 1 && g.dil_w == 1;
}

// Whether a depthwise layer runs on narrow rows at stride 2 (depthwise_stride2_rows*: the forward and the
// input gradient, and the weight gradient where depthwise_stride2_rows_weight_applies):
// with AVX-512 (its permutes), square 3x3 or 5x5 kernels, undilated, stride 2, a padding within the
// kernel's reach, input rows of at most two vectors and output rows of at most one.
bool depthwise_stride2_rows_apply(const ConvGeometry& g, int64_t element_size) {
  const int64_t k = g.kernel_h, lanes = 64 / element_size;
  if (active_cpu_isa() != CpuIsa::Avx512 || !square_depthwise_3x3_or_5x5(g)) return false;
  if (g.stride_h != 2 || g.stride_w != 2 || g.pad_h > k - 1 || g.pad_w > k - 1) return false;
  return g.in_w <= 2 * lanes && g.out_w <= lanes;
}

// Their weight gradient, where the output rows fill more than half a vector: with fewer lanes in use, the
// channel blocks were faster (MobileNetV2's 576-channel 14x14 -> 7x7 layer at batch 8, 7 of 16 lanes:
// forward and weight gradient 0.34-0.35 ms with the weight gradient in blocks, 0.38-0.39 ms on rows).
bool depthwise_stride2_rows_weight_applies(const ConvGeometry& g, int64_t element_size) {
  return depthwise_stride2_rows_apply(g, element_size) && 2 * g.out_w > 64 / element_size;
}

// Whether a pass of a depthwise layer runs on NCHW planes: square 3x3 or 5x5 kernels, undilated, stride 1
// or 2, a padding within the kernel's reach (so the input gradient's border, k - 1 - pad, is not negative)
// and input and output rows of at least kDepthwiseNchwMinWidth pixels (the same rule for both passes).
bool depthwise_nchw_applies(const ConvGeometry& g) {
  const int64_t k = g.kernel_h;
  if (!square_depthwise_3x3_or_5x5(g)) return false;
  if (g.stride_h != g.stride_w || g.stride_h > 2) return false;
  if (g.pad_h > k - 1 || g.pad_w > k - 1) return false;
  return std::min(g.in_w, g.out_w) >= kDepthwiseNchwMinWidth;
}

// Whether a stride-2 layer on NCHW planes takes its input gradient from the output-gradient planes in place
// (depthwise_spread_grad_input) instead of upsampling them: with AVX-512 (its permutes), rows too wide for
// the narrow-row kernels. MobileNetV2 at batch 8, 2 threads, the input gradient alone: 96x112x112 -> 56x56
// 2.19-2.31 -> 1.02-1.26 ms, 144x56x56 -> 28x28 0.75-0.77 -> 0.58-0.71 ms; both gradients 4.26-4.38 ->
// 2.69-2.84 ms and 1.12-1.25 -> 1.02-1.25 ms (see depthwise_nchw_grad_input_weight_applies).
bool depthwise_spread_grad_input_applies(const ConvGeometry& g, int64_t element_size) {
  return active_cpu_isa() == CpuIsa::Avx512 && depthwise_nchw_applies(g) && g.stride_h == 2 &&
         !depthwise_stride2_rows_apply(g, element_size);
}

// The padded rows of one source plane (src_h x src_w) and the out_h x out_w plane computed from them (see
// depthwise_nchw_fill and depthwise_nchw_correlate): `rows` rows of `pitch` elements, each holding its
// `stride` column phases `phase` elements apart, wide enough for the last vector's reach. With step 2 the
// source lands upsampled (depthwise_nchw_fill_upsampled_from; stride 1).
struct DepthwiseNchwLayout {
  int64_t kernel, stride, src_h, src_w, top, left, out_h, out_w;
  int64_t step = 1;
  int64_t rows = 0, phase = 0, pitch = 0;
  int64_t elements() const { return rows * pitch; }
};

DepthwiseNchwLayout depthwise_nchw_layout(int64_t kernel, int64_t stride, int64_t step, int64_t src_h, int64_t src_w,
                                          int64_t top, int64_t left, int64_t out_h, int64_t out_w, int64_t lanes) {
  DepthwiseNchwLayout l{kernel, stride, src_h, src_w, top, left, out_h, out_w, step};
  l.rows = stride * (out_h - 1) + kernel;
  // Phases start on vector boundaries (aligned loads), reach a vector past the last one computed and hold
  // the fill's overrun.
  const int64_t source_end = (left + step * (src_w - 1) + stride) / stride;
  l.phase = round_up(std::max(source_end + step * lanes + 1, round_up(out_w, lanes) + lanes), lanes);
  l.pitch = round_up(stride * l.phase, lanes);
  return l;
}

// The forward reads the input inside its padding; the stride-1 input gradient the output gradient inside
// a border of k - 1 - pad, with the taps flipped.
DepthwiseNchwLayout depthwise_nchw_forward_layout(const ConvGeometry& g, int64_t lanes) {
  return depthwise_nchw_layout(g.kernel_h, g.stride_h, 1, g.in_h, g.in_w, g.pad_h, g.pad_w, g.out_h, g.out_w, lanes);
}

// The input gradient of a layer of stride 2 reads the output gradient upsampled by 2 (zeros between its
// pixels): 4x the multiply-adds of the taps that reach each pixel, and a copy of the plane, but the kernel
// stays the stride-1 one (without AVX-512; with it, see depthwise_spread_grad_input_applies).
DepthwiseNchwLayout depthwise_nchw_grad_input_layout(const ConvGeometry& g, int64_t lanes) {
  return depthwise_nchw_layout(g.kernel_h, 1, g.stride_h, g.out_h, g.out_w, g.kernel_h - 1 - g.pad_h,
                               g.kernel_w - 1 - g.pad_w, g.in_h, g.in_w, lanes);
}

// Elements of one thread's scratch: the padded rows and 64 bytes for alignment (and, where the output is
// streamed, a staging plane: see depthwise_nchw_planes).
int64_t depthwise_nchw_scratch_elements(const DepthwiseNchwLayout& l, int64_t lanes) { return l.elements() + lanes; }

// Whether the correlation of a layout reads its source plane in place (depthwise_inplace_correlate) instead
// of padded rows: with AVX-512, at stride 1 (the forward and the input gradient of stride-1 layers) and at
// stride 2 (the forward of stride-2 layers).
// MobileNetV2 at batch 8, 2 threads, four rounds on a noisy machine (least to most): 144x56x56 forward
// 0.84-1.25 -> 0.67-0.82 ms, input gradient 0.77-1.57 -> 0.65-0.95 ms; 32x112x112 forward 0.51-0.59 ->
// 0.43-0.55 ms, input gradient 0.50-0.65 -> 0.45-0.56 ms. One thread, planes in the caches: 56x56 forward
// 982-1004 -> 947-1130 ns a plane, 112x112 4042-4880 -> 3648-3898 ns.
//
// At stride 2 (depthwise_inplace_stride2_rows), MobileNetV2's forward, 2 threads, two rounds: 96x112x112
// -> 56x56 1.46-1.62 -> 1.20-1.26 ms at batch 8, 0.135-0.144 -> 0.107-0.111 ms at batch 1; 144x56x56 ->
// 28x28 0.37-0.50 -> 0.29 ms and 0.052-0.054 -> 0.043-0.050 ms.
bool depthwise_inplace_applies(const DepthwiseNchwLayout& l) {
  return active_cpu_isa() == CpuIsa::Avx512 && l.step == 1 && (l.stride == 1 || l.stride == 2);
}

// Elements of the padded rows a correlation uses: none where it reads the source in place.
int64_t depthwise_padded_elements(const DepthwiseNchwLayout& l) {
  return depthwise_inplace_applies(l) ? 0 : l.elements();
}

// Whether a depthwise layer's weight gradient runs on NCHW planes, alone or (with_input_gradient) in one
// pass with the input gradient: where its forward could, on input rows of 56 or more pixels (at stride 2, of
// at most 64, or wider in one pass), with a channel per thread at least (one channel is one work item).
// Measured at batch 8 against the channel blocks (MobileNetV2, 2 threads), alone: 112x112 0.61-0.75 ->
// 0.42-0.56 ms, 56x56 0.83-1.02 -> 0.46-0.57 ms, 56x56 at stride 2 0.41-0.53 -> 0.31-0.34 ms; both
// gradients at 112x112, stride 2: 3.56-4.44 -> 3.14-4.06 ms, where alone it lost (1.70-1.99 -> 1.86-2.59
// ms). The others stayed faster in blocks: 28x28 (equal alone; both gradients at stride 1 or 2 equal or
// slower), 28x28 at stride 2 and 14x14, whose 14-pixel output rows leave every vector partial (alone
// 0.09-0.15 -> 0.12-0.19 ms; both gradients 0.18-0.26 -> 0.29-0.46 ms).
bool depthwise_nchw_grad_weight_applies(const ConvGeometry& g, bool with_input_gradient) {
  if (!depthwise_nchw_applies(g) || g.in_channels < at::get_num_threads()) return false;
  return g.in_w >= 56 && (g.stride_w == 1 || g.in_w <= 64 || with_input_gradient);
}

// Whether both gradients go in one pass (depthwise_nchw_grad_input_weight_kernel): where the weight gradient
// could, except where the input gradient reads the output gradient in place (depthwise_spread_grad_input)
// and the weight gradient alone runs on NCHW planes too: two passes were faster there. MobileNetV2 at batch
// 8, 2 threads, both gradients: 144x56x56 -> 28x28 1.21-1.41 ms in one pass, 1.02-1.25 ms in two;
// 96x112x112 -> 56x56, whose weight gradient alone takes channel blocks, 2.69-2.84 ms in one pass, 2.97-3.17
// ms in two.
bool depthwise_nchw_grad_input_weight_applies(const ConvGeometry& g, int64_t element_size) {
  return depthwise_nchw_grad_weight_applies(g, true) &&
         !(depthwise_spread_grad_input_applies(g, element_size) && depthwise_nchw_grad_weight_applies(g, false));
}

// Both gradients in one pass (depthwise_nchw_grad_input_weight_kernel), for a range of `channels`: the
// padded output-gradient rows, the padded input rows, the weight gradient's sums and, where the input
// gradient is streamed, a staging plane.
int64_t depthwise_nchw_grad_input_weight_scratch_elements(const ConvGeometry& g, int64_t channels,
                                                          int64_t element_size) {
  const int64_t lanes = 64 / element_size;
  const DepthwiseNchwLayout gi = depthwise_nchw_grad_input_layout(g, lanes), fw = depthwise_nchw_forward_layout(g, lanes);
  const int64_t padded_go = depthwise_spread_grad_input_applies(g, element_size) ? 0 : depthwise_padded_elements(gi);
  return lanes + padded_go + fw.elements() + channels * fw.kernel * fw.kernel * lanes +
         streamed_plane_elements(g.batch * g.in_channels, g.in_h * g.in_w, element_size);
}

int64_t depthwise_nchw_workspace_elements(const ConvGeometry& g, int64_t element_size) {
  const int64_t lanes = 64 / element_size;
  if (!depthwise_nchw_applies(g)) return 0;
  const int64_t planes = g.batch * g.in_channels, out_plane = g.out_h * g.out_w, in_plane = g.in_h * g.in_w;
  // (The input gradient read in place, depthwise_spread_grad_input, has no padded rows.)
  const DepthwiseNchwLayout forward = depthwise_nchw_forward_layout(g, lanes);
  const DepthwiseNchwLayout grad_input = depthwise_nchw_grad_input_layout(g, lanes);
  const int64_t padded_go =
      lanes + (depthwise_spread_grad_input_applies(g, element_size) ? 0 : depthwise_padded_elements(grad_input));
  const int64_t most = std::max(lanes + depthwise_padded_elements(forward) +
                                    streamed_plane_elements(planes, out_plane, element_size),
                                padded_go + streamed_plane_elements(planes, in_plane, element_size));
  // Where the weight gradient runs on NCHW planes: in one pass with the input gradient, that kernel's scratch
  // for all channels, which covers the weight gradient's alone (its padded rows and sums) too; else that.
  if (depthwise_nchw_grad_input_weight_applies(g, element_size))
    return std::max(most, depthwise_nchw_grad_input_weight_scratch_elements(g, g.in_channels, element_size));
  if (!depthwise_nchw_grad_weight_applies(g, false)) return most;
  const int64_t taps = g.kernel_h * g.kernel_w;
  return std::max(most, depthwise_nchw_scratch_elements(forward, lanes) + g.in_channels * taps * lanes);
}

// The instruction set's kernels for the layout's kernel size and stride.
template <typename scalar_t>
void depthwise_nchw_fill_plane(const DepthwiseNchwLayout& l, const scalar_t* src, scalar_t* padded) {
  if (l.step == 2)
    FASTCONV_CALL_PLANES(depthwise_nchw_fill<0, scalar_t>(src, l.src_h, l.src_w, l.top, l.left, l.rows, l.pitch,
                                                          l.phase, padded));
  else if (l.stride == 1)
    FASTCONV_CALL_PLANES(depthwise_nchw_fill<1, scalar_t>(src, l.src_h, l.src_w, l.top, l.left, l.rows, l.pitch,
                                                          l.phase, padded));
  else
    FASTCONV_CALL_PLANES(depthwise_nchw_fill<2, scalar_t>(src, l.src_h, l.src_w, l.top, l.left, l.rows, l.pitch,
                                                          l.phase, padded));
}

#define FASTCONV_DEPTHWISE_NCHW_CASES(call) \
  call(3, 1) call(3, 2) call(5, 1) call(5, 2)

template <typename scalar_t>
void depthwise_nchw_correlate_plane(const DepthwiseNchwLayout& l, const scalar_t* padded, const scalar_t* w,
                                    scalar_t start, const PlaneAhead<scalar_t>& ahead, bool stream, scalar_t* out) {
#define FASTCONV_CORRELATE(k, s)                                                                              \
  if (l.kernel == k && l.stride == s) {                                                                  \
    if (stream)                                                                                          \
      FASTCONV_CALL_PLANES(depthwise_nchw_correlate<k, s, true, scalar_t>(padded, l.pitch, l.phase, w, start, \
                                                                          l.out_h, l.out_w, ahead, out));     \
    else                                                                                                 \
      FASTCONV_CALL_PLANES(depthwise_nchw_correlate<k, s, false, scalar_t>(padded, l.pitch, l.phase, w, start, \
                                                                           l.out_h, l.out_w, ahead, out));    \
    return;                                                                                              \
  }
  FASTCONV_DEPTHWISE_NCHW_CASES(FASTCONV_CORRELATE)
#undef FASTCONV_CORRELATE
}

#undef FASTCONV_DEPTHWISE_NCHW_CASES

// fn(std::integral_constant<int, K>, std::bool_constant<kStream>) for the kernel size k (3 or 5) and
// `stream`: the template arguments of the in-place and spread kernels.
template <typename Fn>
void for_kernel_and_stream(int64_t k, bool stream, const Fn& fn) {
  if (k == 3 && stream)
    fn(std::integral_constant<int, 3>{}, std::true_type{});
  else if (k == 3)
    fn(std::integral_constant<int, 3>{}, std::false_type{});
  else if (stream)
    fn(std::integral_constant<int, 5>{}, std::true_type{});
  else
    fn(std::integral_constant<int, 5>{}, std::false_type{});
}

// The lane masks of depthwise_inplace_rows for a layout: per vector h of an output row and kernel column
// kj, the lanes whose source column h L + l + kj - left lies inside the source row and whose output column
// inside the output row. At stride 2, those of depthwise_inplace_stride2_rows: per vector h of an output
// row, pair p of source vectors and vector q of it, the lanes whose source column 2 h L - left + 2 p + q L + l
// lies inside the row.
std::vector<uint32_t> depthwise_inplace_lanes(const DepthwiseNchwLayout& l, int64_t lanes) {
  const int64_t vectors = (l.out_w + lanes - 1) / lanes;
  if (l.stride == 2) {
    const int64_t pairs = (l.kernel + 1) / 2;
    std::vector<uint32_t> masks(vectors * pairs * 2, 0);
    for (int64_t h = 0; h < vectors; ++h)
      for (int64_t p = 0; p < pairs; ++p)
        for (int64_t q = 0; q < 2; ++q)
          for (int64_t lane = 0; lane < lanes; ++lane) {
            const int64_t column = 2 * h * lanes - l.left + 2 * p + q * lanes + lane;
            if (column >= 0 && column < l.src_w) masks[(h * pairs + p) * 2 + q] |= 1u << lane;
          }
    return masks;
  }
  std::vector<uint32_t> masks(vectors * l.kernel, 0);
  for (int64_t h = 0; h < vectors; ++h)
    for (int64_t kj = 0; kj < l.kernel; ++kj)
      for (int64_t lane = 0; lane < lanes; ++lane) {
        const int64_t column = h * lanes + lane + kj - l.left;
        if (h * lanes + lane < l.out_w && column >= 0 && column < l.src_w) masks[h * l.kernel + kj] |= 1u << lane;
      }
  return masks;
}

// One plane's correlation: from the source plane in place where `inplace_lanes` are given
// (depthwise_inplace_applies), else from its padded rows (filled into `padded` first).
template <typename scalar_t>
void depthwise_nchw_plane(const DepthwiseNchwLayout& l, const uint32_t* inplace_lanes, const scalar_t* src,
                          scalar_t* padded, const scalar_t* w, scalar_t start, const PlaneAhead<scalar_t>& ahead,
                          bool stream, scalar_t* out) {
  if (inplace_lanes == nullptr) {
    depthwise_nchw_fill_plane(l, src, padded);
    return depthwise_nchw_correlate_plane(l, padded, w, start, ahead, stream, out);
  }
  for_kernel_and_stream(l.kernel, stream, [&](auto k, auto streamed) {
    constexpr int K = decltype(k)::value;
    constexpr bool kStream = decltype(streamed)::value;
    if (l.stride == 2)
      FASTCONV_CALL_PLANES(depthwise_inplace_correlate<K, 2, kStream, scalar_t>(
          src, l.src_h, l.src_w, l.top, l.left, inplace_lanes, w, start, l.out_h, l.out_w, ahead, out));
    else
      FASTCONV_CALL_PLANES(depthwise_inplace_correlate<K, 1, kStream, scalar_t>(
          src, l.src_h, l.src_w, l.top, l.left, inplace_lanes, w, start, l.out_h, l.out_w, ahead, out));
  });
}

// out (N, C, out_h, out_w) = the correlation of each source plane (N, C, src_h, src_w), placed by `l`, with
// its channel's taps w (C, k, k), from the channel's bias (null: zero); one plane per work item.
template <typename scalar_t>
void depthwise_nchw_planes(const ConvGeometry& g, const DepthwiseNchwLayout& l, const scalar_t* src,
                           const scalar_t* w, const scalar_t* bias, scalar_t* out) {
  constexpr int64_t L = 64 / sizeof(scalar_t);
  const int64_t channels = g.in_channels, taps = l.kernel * l.kernel;
  const int64_t src_plane = l.src_h * l.src_w, out_plane = l.out_h * l.out_w;
  // Outputs of 8-32 MiB go past the caches (streams_output): each plane is computed into a staging plane
  // and streamed out, which saved the read of every overwritten line (MobileNetV2's 32-channel 112x112
  // layer at batch 8: forward 0.65 -> 0.57 ms, 144-channel 56x56: 0.80 -> 0.63 ms; their input
  // gradients alike).
  const int64_t compact = streamed_plane_elements(g.batch * channels, out_plane, sizeof(scalar_t));
  // Rows of whole vectors are streamed from the correlation itself (streams_whole_rows).
  const bool stream_rows = streams_whole_rows(compact, l.out_w, out);
  // Source planes of 32 KiB or more are fetched a plane ahead (PlaneAhead). At batch 8, 2 threads: 112x112
  // forward 0.56-0.90 -> 0.43-0.47 ms, input gradient 0.49-0.80 -> 0.40-0.44 ms, at stride 2 the input
  // gradient 1.61-1.72 -> 1.25-1.38 ms; 56x56 planes stayed equal or lost (stride 2 forward 0.26-0.29 ->
  // 0.36-0.42 ms), and so did 28x28.
  const bool fetch_ahead = src_plane * int64_t(sizeof(scalar_t)) >= (32 << 10);
  const std::vector<uint32_t> inplace =
      depthwise_inplace_applies(l) ? depthwise_inplace_lanes(l, L) : std::vector<uint32_t>{};
  const int64_t padded_elements = depthwise_padded_elements(l);
  at::parallel_for(0, g.batch * channels, depthwise_plane_grain(out_plane), [&](int64_t p0, int64_t p1) {
    std::vector<scalar_t> scratch(padded_elements + L + (stream_rows ? 0 : compact));  // zeros
    scalar_t* padded = align_64(scratch.data());  // (its zeros are the padding)
    scalar_t* staged = compact > 0 && !stream_rows ? padded + padded_elements : nullptr;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t c = p % channels;
      const PlaneAhead<scalar_t> ahead{fetch_ahead && p + 1 < p1 ? src + (p + 1) * src_plane : nullptr, src_plane};
      depthwise_nchw_plane(l, inplace.empty() ? nullptr : inplace.data(), src + p * src_plane, padded,
                           w + c * taps, bias ? bias[c] : scalar_t(0), ahead, stream_rows,
                           staged ? staged : out + p * out_plane);
      if (staged) FASTCONV_CALL_PLANES(stream_run<scalar_t>(staged, out + p * out_plane, out_plane));
    }
    if (compact > 0) FASTCONV_CALL_PLANES(finish_streaming());
  });
}

template <typename scalar_t>
void depthwise_nchw_forward_kernel(const ConvGeometry& g, const scalar_t* in, const scalar_t* w, const scalar_t* bias,
                                   scalar_t* out) {
  depthwise_nchw_planes(g, depthwise_nchw_forward_layout(g, 64 / sizeof(scalar_t)), in, w, bias, out);
}

// A depthwise layer's taps (C, k, k) with each channel's k x k taps reversed: the input gradient's.
template <typename scalar_t>
std::vector<scalar_t> flipped_depthwise_taps(const ConvGeometry& g, const scalar_t* w) {
  const int64_t taps = g.kernel_h * g.kernel_w;
  std::vector<scalar_t> flipped(g.in_channels * taps);
  for (int64_t c = 0; c < g.in_channels; ++c)
    for (int64_t t = 0; t < taps; ++t) flipped[c * taps + t] = w[c * taps + taps - 1 - t];
  return flipped;
}

template <typename scalar_t>
void depthwise_nchw_grad_input_kernel(const ConvGeometry& g, const scalar_t* go, const scalar_t* w, scalar_t* gi) {
  depthwise_nchw_planes(g, depthwise_nchw_grad_input_layout(g, 64 / sizeof(scalar_t)), go,
                        flipped_depthwise_taps(g, w).data(), static_cast<const scalar_t*>(nullptr), gi);
}

// ---- Depthwise input gradient at stride 2 on wide rows (conv_depthwise.inc, depthwise_spread_*) ---------

// The lane tables of depthwise_spread_grad_input for a layer: the lowest shift ceil((left - kj) / 2) of the
// kernel columns; per shift c (of (k + 1) / 2, from the lowest on) the dy lane each lane takes (`index`) and,
// per input-gradient vector of a row, the lanes a tap of that shift reaches inside the row and the output
// gradient (`shift_lanes`); per vector the dy lanes inside the row (`load_lanes`); and per shift and lane
// the kernel column whose weight the lane takes, -1 for none (`tap`).
template <typename scalar_t>
struct SpreadLanes {
  int64_t lowest_shift = 0, shifts = 0;
  std::vector<planes_baseline::LaneIndex<scalar_t>> index;
  std::vector<uint32_t> shift_lanes, load_lanes;
  std::vector<int64_t> tap;
};

// ceil(a / 2) for any a.
int64_t ceil_half(int64_t a) { return -floor_div(-a, 2); }

template <typename scalar_t>
SpreadLanes<scalar_t> spread_lanes(const ConvGeometry& g) {
  constexpr int64_t L = 64 / sizeof(scalar_t);
  const int64_t k = g.kernel_w, left = g.pad_w, vectors = (g.in_w + L - 1) / L;
  SpreadLanes<scalar_t> t;
  t.lowest_shift = ceil_half(left - (k - 1));
  t.shifts = (k + 1) / 2;
  TORCH_INTERNAL_ASSERT(ceil_half(left) - t.lowest_shift + 1 == t.shifts);
  t.index.assign(t.shifts * L, 0);
  t.tap.assign(t.shifts * L, -1);
  for (int64_t kj = 0; kj < k; ++kj)
    for (int64_t l = 0; l < L; ++l)
      if ((l + left - kj) % 2 == 0) t.tap[(ceil_half(left - kj) - t.lowest_shift) * L + l] = kj;
  for (int64_t c = 0; c < t.shifts; ++c)
    for (int64_t l = 0; l < L; ++l) t.index[c * L + l] = l / 2 + c;
  t.shift_lanes.assign(vectors * t.shifts, 0);
  t.load_lanes.assign(vectors, 0);
  for (int64_t h = 0; h < vectors; ++h) {
    const int64_t first = h * L / 2 + t.lowest_shift;  // the dy column of loaded lane 0
    for (int64_t l = 0; l < L; ++l) {
      if (first + l >= 0 && first + l < g.out_w) t.load_lanes[h] |= 1u << l;
      for (int64_t c = 0; c < t.shifts; ++c) {
        const int64_t column = first + l / 2 + c;
        if (t.tap[c * L + l] >= 0 && h * L + l < g.in_w && column >= 0 && column < g.out_w)
          t.shift_lanes[h * t.shifts + c] |= 1u << l;
      }
    }
  }
  return t;
}

// Every channel's per-lane weights (C, k, shifts, L): lane l of shift c in kernel row ki holds
// w[ki][tap], zero where the lane takes no tap.
template <typename scalar_t>
std::vector<scalar_t> spread_weights(const ConvGeometry& g, const SpreadLanes<scalar_t>& t, const scalar_t* w) {
  constexpr int64_t L = 64 / sizeof(scalar_t);
  const int64_t k = g.kernel_h, row = t.shifts * L;
  std::vector<scalar_t> weights(g.in_channels * k * row, scalar_t(0));
  for (int64_t c = 0; c < g.in_channels; ++c)
    for (int64_t ki = 0; ki < k; ++ki)
      for (int64_t i = 0; i < row; ++i)
        if (t.tap[i] >= 0) weights[(c * k + ki) * row + i] = w[(c * k + ki) * k + t.tap[i]];
  return weights;
}

// The input-gradient plane p of a layer (see depthwise_spread_grad_input), its channel's weights from
// `weights` (spread_weights); kStream picked by `stream`.
template <typename scalar_t>
void depthwise_spread_plane(const ConvGeometry& g, const SpreadLanes<scalar_t>& t, const scalar_t* weights,
                            const scalar_t* go, int64_t p, const PlaneAhead<scalar_t>& ahead, bool stream,
                            scalar_t* gi_plane) {
  const int64_t k = g.kernel_h, out_plane = g.out_h * g.out_w;
  const scalar_t* w = weights + p % g.in_channels * k * t.shifts * (64 / sizeof(scalar_t));
  for_kernel_and_stream(k, stream, [&](auto kernel, auto streamed) {
    FASTCONV_CALL_PLANES(depthwise_spread_grad_input<decltype(kernel)::value, decltype(streamed)::value, scalar_t>(
        go + p * out_plane, g.out_h, g.out_w, g.pad_h, t.lowest_shift, t.index.data(), t.shift_lanes.data(),
        t.load_lanes.data(), w, g.in_h, g.in_w, ahead, gi_plane));
  });
}

// gi (N, C, H, W) from the output gradient (N, C, out_h, out_w), one plane per work item; outputs of
// 8-32 MiB streamed as in depthwise_nchw_planes.
template <typename scalar_t>
void depthwise_spread_grad_input_kernel(const ConvGeometry& g, const scalar_t* go, const scalar_t* w, scalar_t* gi) {
  constexpr int64_t L = 64 / sizeof(scalar_t);
  const SpreadLanes<scalar_t> t = spread_lanes<scalar_t>(g);
  const std::vector<scalar_t> weights = spread_weights(g, t, w);
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const int64_t compact = streamed_plane_elements(g.batch * g.in_channels, in_plane, sizeof(scalar_t));
  const bool stream_rows = streams_whole_rows(compact, g.in_w, gi);
  const bool fetch_ahead = out_plane * int64_t(sizeof(scalar_t)) >= (8 << 10);
  at::parallel_for(0, g.batch * g.in_channels, depthwise_plane_grain(in_plane), [&](int64_t p0, int64_t p1) {
    std::vector<scalar_t> scratch(compact > 0 && !stream_rows ? compact + L : 0);
    scalar_t* staged = scratch.empty() ? nullptr : align_64(scratch.data());
    for (int64_t p = p0; p < p1; ++p) {
      const PlaneAhead<scalar_t> ahead{fetch_ahead && p + 1 < p1 ? go + (p + 1) * out_plane : nullptr, out_plane};
      depthwise_spread_plane(g, t, weights.data(), go, p, ahead, stream_rows, staged ? staged : gi + p * in_plane);
      if (staged) FASTCONV_CALL_PLANES(stream_run<scalar_t>(staged, gi + p * in_plane, in_plane));
    }
    if (compact > 0) FASTCONV_CALL_PLANES(finish_streaming());
  });
}

// sums (taps x 64 bytes) += the products of the output-gradient plane dy with the padded input rows, per tap
// (depthwise_nchw_weight for the layout's kernel size and stride).
template <typename scalar_t>
void depthwise_nchw_weight_plane(const DepthwiseNchwLayout& l, const scalar_t* padded, const scalar_t* dy,
                                 const PlaneAhead<scalar_t>& ahead, scalar_t* sums) {
#define FASTCONV_WEIGHT_CASE(k, s)                                                                       \
  if (l.kernel == k && l.stride == s) {                                                                 \
    FASTCONV_CALL_PLANES(depthwise_nchw_weight<k, s, scalar_t>(padded, l.pitch, l.phase, dy, l.out_h, l.out_w, \
                                                               ahead, sums));                           \
    return;                                                                                             \
  }
  FASTCONV_WEIGHT_CASE(3, 1) FASTCONV_WEIGHT_CASE(3, 2) FASTCONV_WEIGHT_CASE(5, 1) FASTCONV_WEIGHT_CASE(5, 2)
#undef FASTCONV_WEIGHT_CASE
}

// fn(p, c, next) for the planes p = n * channels + c of the channels [c0, c1), image by image (so in memory
// order within each image); `next` is the plane after p in that order, or -1 after the last.
template <typename Fn>
void for_planes_by_image(int64_t batch, int64_t channels, int64_t c0, int64_t c1, const Fn& fn) {
  for (int64_t n = 0; n < batch; ++n)
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t p = n * channels + c;
      const bool last = c + 1 == c1 && n + 1 == batch;
      fn(p, c, last ? int64_t(-1) : c + 1 < c1 ? p + 1 : p + 1 + channels - (c1 - c0));
    }
}

// gw[c] (taps values) = the sums over the 64 bytes of lanes of each of channel c's tap vectors in `sums`, in
// lane order, for the channels [c0, c1) whose vectors `sums` holds in turn.
template <typename scalar_t>
void depthwise_sum_lanes(const scalar_t* sums, int64_t c0, int64_t c1, int64_t taps, scalar_t* gw) {
  constexpr int64_t L = 64 / sizeof(scalar_t);
  for (int64_t c = c0; c < c1; ++c)
    for (int64_t t = 0; t < taps; ++t) {
      const scalar_t* lanes = sums + ((c - c0) * taps + t) * L;
      scalar_t total = 0;
      for (int64_t lane = 0; lane < L; ++lane) total += lanes[lane];
      gw[c * taps + t] = total;
    }
}

// gw (C, k, k): per channel, the sums over its images in order of each output-gradient plane times the input
// plane placed as for the forward, then over the lanes in order. Each thread owns a range of channels and
// goes through it image by image, so its planes come in memory order, each fetched while the one before is
// computed (56x56 planes at batch 8: 0.68-1.09 ms channel by channel without fetching ahead, 0.46-0.57 ms);
// each channel's sums still run over its images in order (deterministic).
template <typename scalar_t>
void depthwise_nchw_grad_weight_kernel(const ConvGeometry& g, const scalar_t* go, const scalar_t* in, scalar_t* gw) {
  constexpr int64_t L = 64 / sizeof(scalar_t);
  const DepthwiseNchwLayout l = depthwise_nchw_forward_layout(g, L);
  const int64_t channels = g.in_channels, taps = l.kernel * l.kernel;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  at::parallel_for(0, channels, 1, [&](int64_t c0, int64_t c1) {
    std::vector<scalar_t> scratch(depthwise_nchw_scratch_elements(l, L) + (c1 - c0) * taps * L);  // zeros
    scalar_t* padded = align_64(scratch.data());
    scalar_t* sums = padded + l.elements();  // taps vectors per channel of the range
    for_planes_by_image(g.batch, channels, c0, c1, [&](int64_t p, int64_t c, int64_t next) {
      const PlaneAhead<scalar_t> ahead{next < 0 ? nullptr : in + next * in_plane, in_plane,
                                       next < 0 ? nullptr : go + next * out_plane, out_plane};
      depthwise_nchw_fill_plane(l, in + p * in_plane, padded);
      depthwise_nchw_weight_plane(l, padded, go + p * out_plane, ahead, sums + (c - c0) * taps * L);
    });
    depthwise_sum_lanes(sums, c0, c1, taps, gw);
  });
}

// Both gradients of a layer that takes each on NCHW planes, in one pass: plane by plane, the output-gradient
// plane is placed for the input gradient and correlated with the flipped taps, then, still in the caches,
// multiplied into the weight gradient's sums with the input plane, so the output gradient comes from memory
// once instead of twice. Work is split by channels as in depthwise_nchw_grad_weight_kernel (each channel's
// sums in the same order: the same results), the next planes fetched while one is computed.
template <typename scalar_t>
void depthwise_nchw_grad_input_weight_kernel(const ConvGeometry& g, const scalar_t* go, const scalar_t* in,
                                             const scalar_t* w, scalar_t* gi, scalar_t* gw) {
  constexpr int64_t L = 64 / sizeof(scalar_t);
  const DepthwiseNchwLayout gi_layout = depthwise_nchw_grad_input_layout(g, L);
  const DepthwiseNchwLayout w_layout = depthwise_nchw_forward_layout(g, L);
  const int64_t channels = g.in_channels, taps = w_layout.kernel * w_layout.kernel;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  // At stride 2 with AVX-512 the output gradient is read in place (depthwise_spread_grad_input).
  const bool spread = depthwise_spread_grad_input_applies(g, sizeof(scalar_t));
  const SpreadLanes<scalar_t> lanes = spread ? spread_lanes<scalar_t>(g) : SpreadLanes<scalar_t>{};
  const std::vector<scalar_t> gi_weights = spread ? spread_weights(g, lanes, w) : flipped_depthwise_taps(g, w);
  const int64_t compact = streamed_plane_elements(g.batch * channels, in_plane, sizeof(scalar_t));
  const bool stream_rows = streams_whole_rows(compact, g.in_w, gi);  // (see there)
  // At stride 1 with AVX-512 it is read in place too (depthwise_inplace_correlate).
  const std::vector<uint32_t> inplace =
      depthwise_inplace_applies(gi_layout) ? depthwise_inplace_lanes(gi_layout, L) : std::vector<uint32_t>{};
  at::parallel_for(0, channels, 1, [&](int64_t c0, int64_t c1) {
    std::vector<scalar_t> scratch(
        depthwise_nchw_grad_input_weight_scratch_elements(g, c1 - c0, sizeof(scalar_t)));  // zeros: the padding
    scalar_t* padded_go = align_64(scratch.data());
    scalar_t* padded_in = padded_go + (spread ? 0 : depthwise_padded_elements(gi_layout));
    scalar_t* sums = padded_in + w_layout.elements();  // taps vectors per channel of the range
    scalar_t* staged = compact > 0 && !stream_rows ? sums + (c1 - c0) * taps * L : nullptr;
    for_planes_by_image(g.batch, channels, c0, c1, [&](int64_t p, int64_t c, int64_t next) {
      const PlaneAhead<scalar_t> ahead{next < 0 ? nullptr : go + next * out_plane, out_plane,
                                       next < 0 ? nullptr : in + next * in_plane, in_plane};
      scalar_t* gi_plane = gi + p * in_plane;
      if (spread) {
        depthwise_spread_plane(g, lanes, gi_weights.data(), go, p, ahead, stream_rows, staged ? staged : gi_plane);
      } else {
        depthwise_nchw_plane(gi_layout, inplace.empty() ? nullptr : inplace.data(), go + p * out_plane, padded_go,
                             gi_weights.data() + c * taps, scalar_t(0), ahead, stream_rows,
                             staged ? staged : gi_plane);
      }
      if (staged) FASTCONV_CALL_PLANES(stream_run<scalar_t>(staged, gi_plane, in_plane));
      depthwise_nchw_fill_plane(w_layout, in + p * in_plane, padded_in);
      depthwise_nchw_weight_plane(w_layout, padded_in, go + p * out_plane, PlaneAhead<scalar_t>{},
                                  sums + (c - c0) * taps * L);
    });
    if (compact > 0) FASTCONV_CALL_PLANES(finish_streaming());
    depthwise_sum_lanes(sums, c0, c1, taps, gw);
  });
}

// ---- Depthwise layers on flat planes (conv_depthwise.inc, depthwise_flat_*) ------------------------------

// The depthwise layers whose output, input and gradients all have the same plane shape, which the flat and
// narrow-row kernels take: with AVX-512, square 3x3 or 5x5 kernels, undilated, stride 1, the padding
// (k - 1) / 2, planes of at least a vector. (With AVX2 the flat kernel, a load per tap, took 2-4x as long as
// the row kernel or the channel blocks.)
bool depthwise_same_shape_planes(const ConvGeometry& g, int64_t element_size) {
  const int64_t k = g.kernel_h;
  if (active_cpu_isa() != CpuIsa::Avx512 || !square_depthwise_3x3_or_5x5(g)) return false;
  if (g.stride_h != 1 || g.stride_w != 1 || g.pad_h != (k - 1) / 2 || g.pad_w != (k - 1) / 2) return false;
  return g.in_h * g.in_w >= 64 / element_size;
}

// Whether the forward and input gradient of such a layer run on flat planes: rows longer than a vector
// and of at most kFlatMaxWidth pixels. On rows of two vectors (depthwise_narrow_rows, 7/8 of the lanes in
// use on 28x28 planes, against all of them here) they took 8% longer: 204-212 against 221-232 ns a
// 28x28 plane, one thread. (Their weight gradient: on narrow rows, see there.)
bool depthwise_flat_applies(const ConvGeometry& g, int64_t element_size) {
  return depthwise_same_shape_planes(g, element_size) && g.in_w > 64 / element_size &&
         g.in_w <= planes_baseline::kFlatMaxWidth;
}

// The lane masks of the kernels: all bits set, or none, in an integer of the element's size.
template <typename scalar_t>
using FlatMask = std::conditional_t<sizeof(scalar_t) == 4, int32_t, int64_t>;

// What depthwise_flat_correlate reads for a k x k kernel on planes of n elements in rows of w: for each
// kernel column j, `pitch` bit sets, bit t of set s set where column (s + t) % w plus j - (k - 1) / 2 is
// inside the row (the lanes of a vector from column s that tap j reads from); and the window of
// clear_outside_plane, the plane's n elements set with kFlatReach clear lanes on either side.
template <typename scalar_t>
struct FlatMasks {
  std::vector<uint16_t> lane_bits;
  std::vector<FlatMask<scalar_t>> window;
};

template <typename scalar_t>
FlatMasks<scalar_t> depthwise_flat_masks(int64_t k, int64_t w, int64_t n, int64_t pitch) {
  constexpr int64_t reach = planes_baseline::kFlatReach, lanes = 64 / sizeof(scalar_t);
  FlatMasks<scalar_t> masks;
  masks.lane_bits.assign(k * pitch, 0);
  // For kernel column j: inside[t] is 1 where column t % w + j - (k - 1) / 2 lies inside the row.
  std::vector<uint16_t> inside(pitch + lanes);
  for (int64_t j = 0; j < k; ++j) {
    for (int64_t t = 0, column = 0; t < pitch + lanes; ++t, column = column + 1 == w ? 0 : column + 1) {
      const int64_t read = column + j - (k - 1) / 2;
      inside[t] = read >= 0 && read < w;
    }
    uint16_t bits = 0;  // set s: bits of inside[s .. s + lanes), the next set shifted in by one lane
    for (int64_t t = 0; t < lanes; ++t) bits |= uint16_t(inside[t] << t);
    for (int64_t s = 0; s < pitch; ++s) {
      masks.lane_bits[j * pitch + s] = bits;
      bits = uint16_t(bits >> 1 | inside[s + lanes] << (lanes - 1));
    }
  }
  masks.window.assign(n + 2 * reach, 0);
  std::fill_n(masks.window.begin() + reach, n, FlatMask<scalar_t>(-1));
  return masks;
}

// The elements the flat kernels read before a plane of rows w long (k / 2 rows and columns) and after it
// (as many, and two vectors of `lanes`).
struct FlatReach {
  int64_t before, after;
};

FlatReach depthwise_flat_reach(int64_t k, int64_t w, int64_t lanes) {
  const int64_t before = (k / 2) * (w + 1);
  return {before, before + 2 * lanes};
}

// A copy of one h x w plane with the flat kernels' reach around it.
int64_t depthwise_flat_scratch_elements(int64_t k, int64_t h, int64_t w, int64_t lanes) {
  const FlatReach reach = depthwise_flat_reach(k, w, lanes);
  return reach.before + h * w + reach.after;
}

// Where the flat kernels read plane p of `planes` h x w planes: in place, or where that would reach
// outside the tensor (the first and last planes), a copy in `scratch` (depthwise_flat_scratch_elements of
// it; what it holds around the copy is cleared after loading).
template <typename scalar_t>
const scalar_t* depthwise_flat_source(const scalar_t* src, int64_t p, int64_t planes, int64_t k, int64_t h,
                                      int64_t w, scalar_t* scratch) {
  const FlatReach reach = depthwise_flat_reach(k, w, 64 / sizeof(scalar_t));
  const int64_t n = h * w;
  const scalar_t* plane = src + p * n;
  if (p * n >= reach.before && (planes - p) * n >= n + reach.after) return plane;
  scalar_t* copy = scratch + reach.before;
  std::copy(plane, plane + n, copy);
  return copy;
}

// One thread's scratch: the copy of a plane and, where the output is streamed, a staging plane.
int64_t depthwise_flat_workspace_elements(const ConvGeometry& g, int64_t element_size) {
  if (!depthwise_flat_applies(g, element_size)) return 0;
  const int64_t plane = g.in_h * g.in_w;
  return depthwise_flat_scratch_elements(g.kernel_h, g.in_h, g.in_w, 64 / element_size) +
         streamed_plane_elements(g.batch * g.in_channels, plane, element_size);
}

// out (N, C, h, w) = the correlation of each source plane (N, C, h, w) with its channel's taps w (C, k, k),
// from the channel's bias (null: zero); one plane per work item.
template <typename scalar_t>
void depthwise_flat_planes(const ConvGeometry& g, const scalar_t* src, const scalar_t* w, const scalar_t* bias,
                           scalar_t* out) {
  constexpr int64_t L = 64 / sizeof(scalar_t);
  const int64_t k = g.kernel_h, h = g.in_h, width = g.in_w, n = h * width, taps = k * k;
  const int64_t channels = g.in_channels, planes = g.batch * channels;
  const int64_t pitch = width + planes_baseline::kFlatVectors * L;
  const FlatMasks<scalar_t> masks = depthwise_flat_masks<scalar_t>(k, width, n, pitch);
  const FlatMask<scalar_t>* window = masks.window.data();
  const uint16_t* lane_bits = masks.lane_bits.data();
  // Outputs of 8-32 MiB are staged a plane at a time and streamed out (streams_output).
  const int64_t compact = streamed_plane_elements(planes, n, sizeof(scalar_t));
  const int64_t scratch_elements = depthwise_flat_scratch_elements(k, h, width, L);
  at::parallel_for(0, planes, depthwise_plane_grain(n), [&](int64_t p0, int64_t p1) {
    std::vector<scalar_t> scratch(scratch_elements + compact);
    scalar_t* staged = compact > 0 ? scratch.data() + scratch_elements : nullptr;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t c = p % channels;
      const scalar_t* plane = depthwise_flat_source(src, p, planes, k, h, width, scratch.data());
      const scalar_t start = bias ? bias[c] : scalar_t(0);
      scalar_t* dst = staged ? staged : out + p * n;
      if (k == 3)
        FASTCONV_CALL_PLANES(
            depthwise_flat_correlate<3, scalar_t>(plane, h, width, window, lane_bits, w + c * taps, start, dst));
      else
        FASTCONV_CALL_PLANES(
            depthwise_flat_correlate<5, scalar_t>(plane, h, width, window, lane_bits, w + c * taps, start, dst));
      if (staged) FASTCONV_CALL_PLANES(stream_run<scalar_t>(staged, out + p * n, n));
    }
    if (staged) FASTCONV_CALL_PLANES(finish_streaming());
  });
}

// The input gradient: the output gradient correlated with the flipped taps (the padding k - 1 - pad is pad).
template <typename scalar_t>
void depthwise_flat_grad_input_kernel(const ConvGeometry& g, const scalar_t* go, const scalar_t* w, scalar_t* gi) {
  depthwise_flat_planes(g, go, flipped_depthwise_taps(g, w).data(), static_cast<const scalar_t*>(nullptr), gi);
}

// ---- Depthwise layers at stride 1 on narrow rows (conv_depthwise.inc, depthwise_narrow_rows*) -----------

// Whether the forward and input gradient of a layer of depthwise_same_shape_planes run on narrow rows:
// rows of at most a vector. Against the flat planes, one thread: 14x14 planes 66-68 -> 55-57 ns a plane,
// 7x7 (row pairs) 30 -> 25-26 ns.
bool depthwise_narrow_rows_apply(const ConvGeometry& g, int64_t element_size) {
  return depthwise_same_shape_planes(g, element_size) && g.in_w <= 64 / element_size;
}

// Of those, the layers whose rows go two to a vector (depthwise_row_pairs): 3x3 kernels and rows shorter
// than half a vector, so that each half keeps a lane of zeros past its row.
bool depthwise_row_pairs_apply(const ConvGeometry& g, int64_t element_size) {
  return g.kernel_h == 3 && 2 * (g.in_w + 1) <= 64 / element_size;
}

// Whether its weight gradient runs on narrow rows (depthwise_narrow_rows_weight): rows of at most two
// vectors, but not rows that go two to a vector. Against the channel blocks, MobileNetV2 at batch 8,
// 2 threads: 192x28x28 0.267-0.271 -> 0.187-0.201 ms, 384x14x14 0.156-0.164 -> 0.144-0.157 ms,
// 576x14x14 0.226-0.227 -> 0.202-0.211 ms; 960x7x7 on row pairs took longer (0.126-0.138 -> 0.149-0.171
// ms: a quarter more multiply-adds than the blocks' full lanes) and stays in blocks.
bool depthwise_narrow_rows_weight_applies(const ConvGeometry& g, int64_t element_size) {
  return depthwise_same_shape_planes(g, element_size) && g.in_w <= 2 * (64 / element_size) &&
         !depthwise_row_pairs_apply(g, element_size);
}

// The permutes' lane tables for a layer (see the kernels): per kernel column (and vector of the row), the
// element of the loaded vectors each lane reads (`index`) and the lanes that read one inside the row
// (`inside`); for row pairs, also where each of a vector's 2w output pixels lies in it (`pack`).
template <typename scalar_t>
struct NarrowRowLanes {
  std::vector<planes_baseline::LaneIndex<scalar_t>> index, pack;
  std::vector<uint32_t> inside;
};

template <typename scalar_t>
NarrowRowLanes<scalar_t> narrow_row_lanes(const ConvGeometry& g) {
  constexpr int64_t L = 64 / sizeof(scalar_t);
  const int64_t k = g.kernel_h, w = g.in_w, pad = (k - 1) / 2;
  const bool pairs = depthwise_row_pairs_apply(g, sizeof(scalar_t));
  const int64_t vectors = pairs ? 1 : (w + L - 1) / L, half = L / 2;
  NarrowRowLanes<scalar_t> t;
  t.index.assign(k * vectors * L, 0);
  t.inside.assign(k * vectors, 0);
  for (int64_t kj = 0; kj < k; ++kj)
    for (int64_t v = 0; v < vectors; ++v)
      for (int64_t l = 0; l < L; ++l) {
        // Rows: lane l of vector v is column v L + l. Pairs: row l / half of the pair, column l % half.
        const int64_t column = pairs ? l % half : v * L + l, row_start = pairs ? l / half * w : 0;
        const int64_t read = column + kj - pad;
        if (column >= w || read < 0 || read >= w) continue;
        t.index[(kj * vectors + v) * L + l] = row_start + read;
        t.inside[kj * vectors + v] |= 1u << l;
      }
  if (pairs) {
    t.pack.assign(L, 0);
    for (int64_t i = 0; i < 2 * w; ++i) t.pack[i] = i / w * half + i % w;
  }
  return t;
}

// Of those, the float32 3x3 layers with rows under half a vector (where float rows went two to a vector):
// the layers the kernels on runs of planes take (depthwise_plane_run_3x3*), as the rules below say.
bool depthwise_plane_run_layer(const ConvGeometry& g, int64_t element_size) {
  return depthwise_narrow_rows_apply(g, element_size) && element_size == 4 && g.kernel_h == 3 &&
         depthwise_row_pairs_apply(g, element_size);
}

// Their forward and input gradient run on runs of planes (depthwise_plane_run_3x3) where the output is not
// streamed past the caches (those keep the staged narrow rows). Against row pairs, fastconv.ops.conv2d,
// 960x7x7, 2 threads, two rounds of the best of six 0.1 s blocks alternating: batch 8 0.0934-0.0938 ->
// 0.0801-0.0808 ms, batch 1 0.0193-0.0195 -> 0.0185 ms (one thread, batch 8: 0.1741 -> 0.1451 ms). On
// 14x14 planes they took as long as narrow rows at batch 8 and 8% longer at batch 1, which keep them.
bool depthwise_plane_runs_apply(const ConvGeometry& g, int64_t element_size) {
  return depthwise_plane_run_layer(g, element_size) &&
         !streams_output(g.batch * g.in_channels * g.in_h * g.in_w * element_size);
}

// The vectors of 16 floats after which the lane masks of runs of h x w planes repeat: lcm(h w, 16) / 16,
// and the planes they hold.
int64_t plane_run_period(int64_t h, int64_t w) { return std::lcm<int64_t>(h * w, 16) / 16; }
int64_t plane_run_period_planes(int64_t h, int64_t w) { return plane_run_period(h, w) * 16 / (h * w); }

// depthwise_plane_run_3x3's lane masks for h x w planes: per vector of a period, the lanes whose pixel has
// a left and a right neighbour, a row above and a row below in its plane.
std::vector<uint16_t> plane_run_masks(int64_t h, int64_t w) {
  using namespace planes_baseline;
  const int64_t period = plane_run_period(h, w);
  std::vector<uint16_t> masks(period * kPlaneRunMasks, 0);
  // Element e of the period lies at (row, column) of its plane: counted along, no division per lane (with
  // one, making the masks took longer than a 16-channel 7x7 layer).
  int64_t row = 0, column = 0;
  for (int64_t e = 0; e < period * 16; ++e) {
    const uint16_t bit = static_cast<uint16_t>(1u << (e % 16));
    uint16_t* m = masks.data() + e / 16 * kPlaneRunMasks;
    if (column > 0) m[kHasLeft] |= bit;
    if (column + 1 < w) m[kHasRight] |= bit;
    if (row > 0) m[kHasAbove] |= bit;
    if (row + 1 < h) m[kHasBelow] |= bit;
    if (++column == w) {
      column = 0;
      if (++row == h) row = 0;
    }
  }
  return masks;
}

// out (N, C, h, w) = the correlation of each source plane with its channel's 3x3 taps w (C, 3, 3), from the
// channel's bias (null: zero), for depthwise_plane_runs_apply layers: each worker takes a run of whole mask
// periods of planes (the last one may be short).
template <typename scalar_t>
void depthwise_plane_runs(const ConvGeometry& g, const scalar_t* src, const scalar_t* w, const scalar_t* bias,
                          scalar_t* out) {
  const int64_t n = g.in_h * g.in_w, channels = g.in_channels, planes = g.batch * channels;
  const int64_t period = plane_run_period(g.in_h, g.in_w), period_planes = plane_run_period_planes(g.in_h, g.in_w);
  const std::vector<uint16_t> masks = plane_run_masks(g.in_h, g.in_w);
  const int64_t units = (planes + period_planes - 1) / period_planes;
  const int64_t grain = std::max<int64_t>(1, depthwise_plane_grain(n) / period_planes);
  at::parallel_for(0, units, grain, [&](int64_t u0, int64_t u1) {
    const int64_t p0 = u0 * period_planes, p1 = std::min(planes, u1 * period_planes);
    FASTCONV_CALL_PLANES(depthwise_plane_run_3x3_rows_of<scalar_t>(g.in_w, src + p0 * n, p1 - p0, g.in_h,
                                                                   p0 % channels, channels, w, bias, masks.data(),
                                                                   period, out + p0 * n));
  });
}

// Whether the weight gradient of such a layer runs on runs of planes too (depthwise_plane_run_3x3_weight):
// batches of 4 or more, where a mask period's planes are whole channels of one image, so that each run's
// channels are summed over the images by one thread (deterministic). Against channel blocks, 960x7x7, 2
// threads, ms, builds alternating: batch 8 0.129-0.133 -> 0.086-0.092, batch 4 0.066 -> 0.062; batch 3
// 0.051 -> 0.050, batch 1 0.024 -> 0.037 (each run's sums stored and summed once per call), which keep
// the blocks.
bool depthwise_plane_runs_weight_apply(const ConvGeometry& g, int64_t element_size) {
  return depthwise_plane_run_layer(g, element_size) && g.batch >= 4 &&
         g.in_channels % plane_run_period_planes(g.in_h, g.in_w) == 0;
}

// One thread's scratch for it: nine rows of a mask period's sums.
int64_t plane_run_weight_scratch_elements(const ConvGeometry& g) {
  return 9 * 16 * plane_run_period(g.in_h, g.in_w) + 16;
}

// gw (C, 3, 3) for depthwise_plane_runs_weight_apply layers: threads take runs of channels (a mask period's
// planes each) and sum each over the images in order.
template <typename scalar_t>
void depthwise_plane_runs_grad_weight_kernel(const ConvGeometry& g, const scalar_t* go, const scalar_t* in,
                                             scalar_t* gw) {
  const int64_t n = g.in_h * g.in_w, channels = g.in_channels;
  const int64_t period = plane_run_period(g.in_h, g.in_w), period_planes = plane_run_period_planes(g.in_h, g.in_w);
  const std::vector<uint16_t> masks = plane_run_masks(g.in_h, g.in_w);
  at::parallel_for(0, channels / period_planes, 1, [&](int64_t r0, int64_t r1) {
    std::vector<scalar_t> scratch(plane_run_weight_scratch_elements(g));
    scalar_t* sums = align_64(scratch.data());
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t first = r * period_planes * n;
      FASTCONV_CALL_PLANES(depthwise_plane_run_3x3_weight_rows_of<scalar_t>(
          g.in_w, in + first, go + first, g.batch, channels * n, g.in_h, masks.data(), period, sums,
          gw + r * period_planes * 9));
    }
  });
}

// One thread's scratch: where the output is streamed, a staging plane; the weight gradient's sums for a
// thread's share of the channels (on runs of planes, a run's).
int64_t depthwise_narrow_rows_workspace_elements(const ConvGeometry& g, int64_t element_size) {
  int64_t most = 0;
  if (depthwise_narrow_rows_apply(g, element_size))
    most = streamed_plane_elements(g.batch * g.in_channels, g.in_h * g.in_w, element_size);
  if (depthwise_narrow_rows_weight_applies(g, element_size)) {
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads()), lanes = 64 / element_size;
    most = std::max(most, (g.in_channels + threads - 1) / threads * g.kernel_h * g.kernel_w * lanes + lanes);
  }
  if (depthwise_plane_runs_weight_apply(g, element_size)) most = std::max(most, plane_run_weight_scratch_elements(g));
  return most;
}

// out (N, C, h, w) = the correlation of each source plane (N, C, h, w) with its channel's taps w (C, k, k),
// from the channel's bias (null: zero); one plane per work item.
template <typename scalar_t>
void depthwise_narrow_planes(const ConvGeometry& g, const scalar_t* src, const scalar_t* w, const scalar_t* bias,
                             scalar_t* out) {
  if (depthwise_plane_runs_apply(g, sizeof(scalar_t))) return depthwise_plane_runs(g, src, w, bias, out);
  const int64_t k = g.kernel_h, h = g.in_h, width = g.in_w, n = h * width, taps = k * k;
  const int64_t channels = g.in_channels, planes = g.batch * channels;
  const NarrowRowLanes<scalar_t> t = narrow_row_lanes<scalar_t>(g);
  const bool pairs = depthwise_row_pairs_apply(g, sizeof(scalar_t));
  // Outputs of 8-32 MiB are staged a plane at a time and streamed out (streams_output).
  const int64_t compact = streamed_plane_elements(planes, n, sizeof(scalar_t));
  at::parallel_for(0, planes, depthwise_plane_grain(n), [&](int64_t p0, int64_t p1) {
    std::vector<scalar_t> staging(compact);
    scalar_t* staged = compact > 0 ? staging.data() : nullptr;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t c = p % channels;
      const scalar_t* plane = src + p * n;
      const scalar_t start = bias ? bias[c] : scalar_t(0);
      scalar_t* dst = staged ? staged : out + p * n;
      const auto* index = t.index.data();
      const uint32_t* inside = t.inside.data();
      if (pairs)
        FASTCONV_CALL_PLANES(depthwise_row_pairs<scalar_t>(plane, h, width, index, inside, t.pack.data(),
                                                           w + c * taps, start, dst));
      else if (k == 3)
        FASTCONV_CALL_PLANES(depthwise_narrow_rows<3, scalar_t>(plane, h, width, index, inside, w + c * taps, start,
                                                                dst));
      else
        FASTCONV_CALL_PLANES(depthwise_narrow_rows<5, scalar_t>(plane, h, width, index, inside, w + c * taps, start,
                                                                dst));
      if (staged) FASTCONV_CALL_PLANES(stream_run<scalar_t>(staged, out + p * n, n));
    }
    if (staged) FASTCONV_CALL_PLANES(finish_streaming());
  });
}

// The input gradient: the output gradient correlated with the flipped taps (the padding k - 1 - pad is pad).
template <typename scalar_t>
void depthwise_narrow_rows_grad_input_kernel(const ConvGeometry& g, const scalar_t* go, const scalar_t* w,
                                             scalar_t* gi) {
  depthwise_narrow_planes(g, go, flipped_depthwise_taps(g, w).data(), static_cast<const scalar_t*>(nullptr), gi);
}

// gw (C, k, k): per channel, the sums over its images in order, then over the lanes in order; threads own
// ranges of channels, each channel's images in one kernel call: deterministic.
template <typename scalar_t>
void depthwise_narrow_rows_grad_weight_kernel(const ConvGeometry& g, const scalar_t* go, const scalar_t* in,
                                              scalar_t* gw) {
  constexpr int64_t L = 64 / sizeof(scalar_t);
  const int64_t k = g.kernel_h, taps = k * k, h = g.in_h, width = g.in_w, n = h * width, channels = g.in_channels;
  const NarrowRowLanes<scalar_t> t = narrow_row_lanes<scalar_t>(g);
  const int64_t stride = channels * n;  // from one image's plane of a channel to the next image's
  at::parallel_for(0, channels, 1, [&](int64_t c0, int64_t c1) {
    std::vector<scalar_t> scratch((c1 - c0) * taps * L + L);
    scalar_t* sums = align_64(scratch.data());  // taps vectors per channel of the range
    for (int64_t c = c0; c < c1; ++c) {
      scalar_t* channel_sums = sums + (c - c0) * taps * L;
      const scalar_t *plane = in + c * n, *dy = go + c * n;
      const int64_t images = g.batch;
      const auto* index = t.index.data();
      const uint32_t* inside = t.inside.data();
      if (k == 3 && width <= L)
        FASTCONV_CALL_PLANES(depthwise_narrow_rows_weight<3, 1, scalar_t>(plane, dy, images, stride, h, width, index,
                                                                          inside, channel_sums));
      else if (k == 3)
        FASTCONV_CALL_PLANES(depthwise_narrow_rows_weight<3, 2, scalar_t>(plane, dy, images, stride, h, width, index,
                                                                          inside, channel_sums));
      else if (width <= L)
        FASTCONV_CALL_PLANES(depthwise_narrow_rows_weight<5, 1, scalar_t>(plane, dy, images, stride, h, width, index,
                                                                          inside, channel_sums));
      else
        FASTCONV_CALL_PLANES(depthwise_narrow_rows_weight<5, 2, scalar_t>(plane, dy, images, stride, h, width, index,
                                                                          inside, channel_sums));
    }
    depthwise_sum_lanes(sums, c0, c1, taps, gw);
  });
}

// ---- Depthwise layers at stride 2 on narrow rows (conv_depthwise.inc, depthwise_stride2_rows*) ----------

// Whether the forward of such a layer goes two output rows to a vector (depthwise_stride2_row_pairs):
// source rows of at most a vector and output rows of at most half of one. Against one output row per
// vector, MobileNetV2's 576x14x14 -> 7x7 layer, 2 threads: 0.121-0.123 -> 0.093-0.094 ms at batch 8,
// 0.020 -> 0.016 ms at batch 1.
bool depthwise_stride2_row_pairs_apply(const ConvGeometry& g, int64_t element_size) {
  const int64_t lanes = 64 / element_size;
  return depthwise_stride2_rows_apply(g, element_size) && g.in_w <= lanes && 2 * g.out_w <= lanes;
}

// The permutes' lane tables for a layer (see the kernels): per kernel column, the source column each
// output lane reads (`columns`), the lanes inside the source row (`inside`, the forward) and of those the
// output pixels (`outputs`, the weight gradient); per kernel column and input-gradient vector, the
// output-gradient column each lane reads (`spread`) and the lanes that read one (`spread_lanes`); for two
// output rows to a vector, per kernel column the lane of the two source rows each lane reads (`pairs`),
// the lanes inside the row and the output row (`pair_inside`), and where the vector's pixels go (`pack`).
template <typename scalar_t>
struct Stride2RowLanes {
  std::vector<planes_baseline::LaneIndex<scalar_t>> columns, spread, pairs, pack;
  std::vector<uint32_t> inside, outputs, spread_lanes, pair_inside;
};

template <typename scalar_t>
Stride2RowLanes<scalar_t> stride2_row_lanes(const ConvGeometry& g) {
  constexpr int64_t L = 64 / sizeof(scalar_t);
  const int64_t k = g.kernel_h;
  Stride2RowLanes<scalar_t> t;
  t.columns.assign(k * L, 0);
  t.spread.assign(2 * k * L, 0);
  t.inside.assign(k, 0);
  t.outputs.assign(k, 0);
  t.spread_lanes.assign(2 * k, 0);
  for (int64_t kj = 0; kj < k; ++kj) {
    for (int64_t l = 0; l < L; ++l) {
      const int64_t column = 2 * l + kj - g.pad_w;
      if (column < 0 || column >= g.in_w) continue;
      t.columns[kj * L + l] = column;
      t.inside[kj] |= 1u << l;
      if (l < g.out_w) t.outputs[kj] |= 1u << l;
    }
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t twice = h * L + l + g.pad_w - kj;  // input-gradient column s = h L + l
        if (h * L + l >= g.in_w || twice < 0 || twice % 2 != 0 || twice / 2 >= g.out_w) continue;
        t.spread[(2 * kj + h) * L + l] = twice / 2;
        t.spread_lanes[2 * kj + h] |= 1u << l;
      }
  }
  if (depthwise_stride2_row_pairs_apply(g, sizeof(scalar_t))) {
    const int64_t half = L / 2;
    t.pairs.assign(k * L, 0);
    t.pair_inside.assign(k, 0);
    t.pack.assign(L, 0);
    for (int64_t kj = 0; kj < k; ++kj)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t out_column = l % half, column = 2 * out_column + kj - g.pad_w;
        if (out_column >= g.out_w || column < 0 || column >= g.in_w) continue;
        t.pairs[kj * L + l] = l / half * L + column;  // the upper half reads the second row
        t.pair_inside[kj] |= 1u << l;
      }
    for (int64_t i = 0; i < 2 * g.out_w; ++i) t.pack[i] = i / g.out_w * half + i % g.out_w;
  }
  return t;
}

// Scratch per thread: the weight gradient's sums for a thread's share of the channels (the other passes
// take none).
int64_t depthwise_stride2_rows_workspace_elements(const ConvGeometry& g, int64_t element_size) {
  if (!depthwise_stride2_rows_weight_applies(g, element_size)) return 0;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  return (g.in_channels + threads - 1) / threads * g.kernel_h * g.kernel_w * (64 / element_size) + 64 / element_size;
}

// out (N, C, out_h, out_w) = each input plane's correlation with its channel's taps, from the channel's
// bias (null: zero); one plane per work item, each thread's planes in one call. Against a call per plane,
// 2 threads, the builds alternating, three rounds: 576x14x14 -> 7x7 0.095-0.097 -> 0.077-0.081 ms at batch 8,
// 0.0166-0.0169 -> 0.0144-0.0153 ms at batch 1; 192x28x28 -> 14x14 0.100-0.104 -> 0.087-0.092 ms at batch 8,
// 0.0178-0.0213 -> 0.0161-0.0164 ms at batch 1.
template <typename scalar_t>
void depthwise_stride2_rows_forward_kernel(const ConvGeometry& g, const scalar_t* in, const scalar_t* w,
                                           const scalar_t* bias, scalar_t* out) {
  const int64_t k = g.kernel_h, channels = g.in_channels, out_plane = g.out_h * g.out_w;
  const Stride2RowLanes<scalar_t> t = stride2_row_lanes<scalar_t>(g);
  const bool pairs = depthwise_stride2_row_pairs_apply(g, sizeof(scalar_t));
  at::parallel_for(0, g.batch * channels, depthwise_plane_grain(out_plane), [&](int64_t p0, int64_t p1) {
    if (pairs && k == 3)
      FASTCONV_CALL_PLANES(depthwise_stride2_row_pairs<3, scalar_t>(in, p0, p1, channels, g.in_h, g.in_w, g.pad_h,
                                                                    t.pairs.data(), t.pair_inside.data(),
                                                                    t.pack.data(), w, bias, g.out_h, g.out_w, out));
    else if (pairs)
      FASTCONV_CALL_PLANES(depthwise_stride2_row_pairs<5, scalar_t>(in, p0, p1, channels, g.in_h, g.in_w, g.pad_h,
                                                                    t.pairs.data(), t.pair_inside.data(),
                                                                    t.pack.data(), w, bias, g.out_h, g.out_w, out));
    else if (k == 3)
      FASTCONV_CALL_PLANES(depthwise_stride2_rows<3, scalar_t>(in, p0, p1, channels, g.in_h, g.in_w, g.pad_h,
                                                               t.columns.data(), t.inside.data(), w, bias, g.out_h,
                                                               g.out_w, out));
    else
      FASTCONV_CALL_PLANES(depthwise_stride2_rows<5, scalar_t>(in, p0, p1, channels, g.in_h, g.in_w, g.pad_h,
                                                               t.columns.data(), t.inside.data(), w, bias, g.out_h,
                                                               g.out_w, out));
  });
}

// gi (N, C, H, W) from the output gradient (N, C, out_h, out_w); one plane per work item.
template <typename scalar_t>
void depthwise_stride2_rows_grad_input_kernel(const ConvGeometry& g, const scalar_t* go, const scalar_t* w,
                                              scalar_t* gi) {
  const int64_t k = g.kernel_h, taps = k * k, channels = g.in_channels;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const Stride2RowLanes<scalar_t> t = stride2_row_lanes<scalar_t>(g);
  at::parallel_for(0, g.batch * channels, depthwise_plane_grain(in_plane), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const scalar_t* taps_c = w + p % channels * taps;
      if (k == 3)
        FASTCONV_CALL_PLANES(depthwise_stride2_rows_grad_input<3, scalar_t>(
            go + p * out_plane, g.out_h, g.out_w, g.pad_h, t.spread.data(), t.spread_lanes.data(), taps_c, g.in_h,
            g.in_w, gi + p * in_plane));
      else
        FASTCONV_CALL_PLANES(depthwise_stride2_rows_grad_input<5, scalar_t>(
            go + p * out_plane, g.out_h, g.out_w, g.pad_h, t.spread.data(), t.spread_lanes.data(), taps_c, g.in_h,
            g.in_w, gi + p * in_plane));
    }
  });
}

// gw (C, k, k): per channel, the sums over its images in order, then over the lanes in order; threads own
// ranges of channels, taken image by image (planes in memory order): deterministic.
template <typename scalar_t>
void depthwise_stride2_rows_grad_weight_kernel(const ConvGeometry& g, const scalar_t* go, const scalar_t* in,
                                               scalar_t* gw) {
  constexpr int64_t L = 64 / sizeof(scalar_t);
  const int64_t k = g.kernel_h, taps = k * k, channels = g.in_channels;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const Stride2RowLanes<scalar_t> t = stride2_row_lanes<scalar_t>(g);
  at::parallel_for(0, channels, 1, [&](int64_t c0, int64_t c1) {
    std::vector<scalar_t> scratch((c1 - c0) * taps * L + L);  // zeros
    scalar_t* sums = align_64(scratch.data());               // taps vectors per channel of the range
    for_planes_by_image(g.batch, channels, c0, c1, [&](int64_t p, int64_t c, int64_t) {
      scalar_t* channel_sums = sums + (c - c0) * taps * L;
      if (k == 3)
        FASTCONV_CALL_PLANES(depthwise_stride2_rows_weight<3, scalar_t>(
            in + p * in_plane, g.in_h, g.in_w, g.pad_h, t.columns.data(), t.outputs.data(), go + p * out_plane,
            g.out_h, g.out_w, channel_sums));
      else
        FASTCONV_CALL_PLANES(depthwise_stride2_rows_weight<5, scalar_t>(
            in + p * in_plane, g.in_h, g.in_w, g.pad_h, t.columns.data(), t.outputs.data(), go + p * out_plane,
            g.out_h, g.out_w, channel_sums));
    });
    depthwise_sum_lanes(sums, c0, c1, taps, gw);
  });
}

// The forward, input gradient and weight gradient of the layers the blocked kernel does not take:
// depthwise layers in channel blocks where those apply, the plane kernels otherwise. The forward starts
// each output plane from its channel's bias (null: none), so the bias costs no pass of its own (after
// streamed output planes that pass came back from memory: MobileNetV2's 144-channel depthwise layer at
// batch 8 with a bias 2.2 -> 1.4 ms).
template <typename scalar_t>
void forward_kernel(const ConvGeometry& g, const scalar_t* in, const scalar_t* w, const scalar_t* bias,
                    scalar_t* out) {
  if (depthwise_narrow_rows_apply(g, sizeof(scalar_t))) return depthwise_narrow_planes(g, in, w, bias, out);
  if (depthwise_flat_applies(g, sizeof(scalar_t))) return depthwise_flat_planes(g, in, w, bias, out);
  if (depthwise_stride2_rows_apply(g, sizeof(scalar_t)))
    return depthwise_stride2_rows_forward_kernel(g, in, w, bias, out);
  if (depthwise_nchw_applies(g)) return depthwise_nchw_forward_kernel(g, in, w, bias, out);
  if (depthwise_blocks_apply(g)) return depthwise_blocks_forward_kernel(g, in, w, bias, out);
  if (plane_copies_fit(g)) {
    for_plane_ranges<scalar_t>(g.batch * g.out_channels, g.out_h * g.out_w, plane_scratch_elements(g),
                               [&](int64_t p0, int64_t p1, scalar_t* scratch, scalar_t* compact) {
                                 FASTCONV_CALL_PLANES(forward_planes_padded<scalar_t>(g, in, w, bias, out, p0, p1,
                                                                                      scratch, compact));
                               });
    return;
  }
  at::parallel_for(0, g.batch * g.out_channels, 1, [&](int64_t p0, int64_t p1) {
    FASTCONV_CALL_PLANES(forward_planes<scalar_t>(g, in, w, bias, out, p0, p1));
  });
}

template <typename scalar_t>
void grad_input_kernel(const ConvGeometry& g, const scalar_t* go, const scalar_t* w, scalar_t* gi) {
  if (depthwise_narrow_rows_apply(g, sizeof(scalar_t)))
    return depthwise_narrow_rows_grad_input_kernel(g, go, w, gi);
  if (depthwise_flat_applies(g, sizeof(scalar_t))) return depthwise_flat_grad_input_kernel(g, go, w, gi);
  if (depthwise_stride2_rows_apply(g, sizeof(scalar_t)))
    return depthwise_stride2_rows_grad_input_kernel(g, go, w, gi);
  if (depthwise_spread_grad_input_applies(g, sizeof(scalar_t)))
    return depthwise_spread_grad_input_kernel(g, go, w, gi);
  if (depthwise_nchw_applies(g)) return depthwise_nchw_grad_input_kernel(g, go, w, gi);
  if (depthwise_blocks_grad_input_apply(g)) return depthwise_blocks_grad_input_kernel(g, go, w, gi);
  if (plane_grad_input_uses_padding(g)) {
    for_plane_ranges<scalar_t>(g.batch * g.in_channels, g.in_h * g.in_w, grad_input_scratch_elements(g),
                               [&](int64_t p0, int64_t p1, scalar_t* scratch, scalar_t* compact) {
                                 FASTCONV_CALL_PLANES(
                                     grad_input_planes_padded<scalar_t>(g, go, w, gi, p0, p1, scratch, compact));
                               });
    return;
  }
  at::parallel_for(0, g.batch * g.in_channels, 1, [&](int64_t p0, int64_t p1) {
    FASTCONV_CALL_PLANES(grad_input_planes<scalar_t>(g, go, w, gi, p0, p1));
  });
}

template <typename scalar_t>
void grad_weight_kernel(const ConvGeometry& g, const scalar_t* go, const scalar_t* in, scalar_t* gw) {
  if (depthwise_plane_runs_weight_apply(g, sizeof(scalar_t)))
    return depthwise_plane_runs_grad_weight_kernel(g, go, in, gw);
  if (depthwise_narrow_rows_weight_applies(g, sizeof(scalar_t)))
    return depthwise_narrow_rows_grad_weight_kernel(g, go, in, gw);
  if (depthwise_stride2_rows_weight_applies(g, sizeof(scalar_t)))
    return depthwise_stride2_rows_grad_weight_kernel(g, go, in, gw);
  if (depthwise_nchw_grad_weight_applies(g, false)) return depthwise_nchw_grad_weight_kernel(g, go, in, gw);
  if (depthwise_blocks_grad_weight_apply(g, sizeof(scalar_t))) return depthwise_blocks_grad_weight_kernel(g, go, in, gw);
  if (plane_copies_fit(g)) {
    const int64_t scratch_size = weight_grad_scratch_elements(g, sizeof(scalar_t));
    at::parallel_for(0, g.groups * g.in_channels_per_group(), 1, [&](int64_t p0, int64_t p1) {
      std::vector<scalar_t> scratch(scratch_size);
      FASTCONV_CALL_PLANES(grad_weight_rows_padded<scalar_t>(g, go, in, gw, p0, p1, scratch.data()));
    });
    return;
  }
  at::parallel_for(0, g.out_channels * g.in_channels_per_group(), 1, [&](int64_t p0, int64_t p1) {
    FASTCONV_CALL_PLANES(grad_weight_rows<scalar_t>(g, go, in, gw, p0, p1));
  });
}

// Packed weights up to this size run the blocked forward pixel-major (see there). Set by measurement
// (1.2 MB gained, 2.4 MB lost): twice a core's 1 MiB L2, the rest served from L3.
constexpr int64_t kPixelMajorWeightBytes = 2 << 20;

// The input channels per packed chunk of a blocked-forward weight block whose channels take
// `channel_bytes` each packed: all of them where the block fits kPackedChunkBytes, else equal chunks
// that do.
int64_t packed_chunk_channels(int64_t channels, int64_t channel_bytes) {
  constexpr int64_t kPackedChunkBytes = 640 << 10;
  if (channels * channel_bytes <= kPackedChunkBytes) return channels;
  const int64_t chunks = (channels * channel_bytes + kPackedChunkBytes - 1) / kPackedChunkBytes;
  return (channels + chunks - 1) / chunks;
}

// An input gradient's weight for the blocked forward: the layer's own weight (out, in / groups, kh, kw),
// read in place as the weight of a convolution of dY (input and output channels swapped) whose tap t is
// the layer's tap layer_tap[t] (flipped, and for a stride phase only some of them). Packing reads it so:
// no transposed copy is made.
struct TransposedTaps {
  std::vector<int64_t> layer_tap;  // row-major over the kernel's taps
  int64_t layer_taps;              // kh * kw of the layer
  // The weight passed is the layer's in tap-major order (groups, out / groups, kh * kw, in / groups), as
  // tap_major_weight makes it: each packed row is then one contiguous run.
  bool tap_major = false;
};

// Register-blocked forward (see the top of the file). `in` is the input in channels-last layout with
// the padding materialised as zeros (N, H + 2 pad_h, W + 2 pad_w, C), so every tap of every output pixel
// reads inside it and one kernel serves borders and interior alike; with group_major, each group's
// channels are their own such image (N, groups, H + 2 pad_h, W + 2 pad_w, C / groups).
//
// `w` is the weight (out, in / groups, kh, kw), or, with `transposed`, that of the layer whose input
// gradient this computes (see TransposedTaps).
//
// `bias` (out_channels values, or null) is added to the tiles before they are written out: no second
// pass over the output.
//
// `out` is NCHW, or with channels_last_out (N, H, W, C) in memory: each tile row (a pixel's channels of
// the block) is then copied to its place as it is, with no transpose.
//
// `exact_padding`: the input holds zeros exactly where g's padding lies (a stride phase reads a copy padded
// for all phases, which is not). Tiles of whole rows then skip the taps through which they would read only
// zeros (ResNet's 7x7 planes spend 18% of their multiply-adds on the padding of a 3x3 kernel, 14x14 ones
// 9%): a tap whose kernel row lies in the padding for the tile's row, and a tap's first or last pixel
// reading the padding beside the row (see taps_reading_input). With 7-pixel tiles (micro_kernels_for_conv), at
// batch 8 on 2 threads: layer4's 3x3 forward 8.8-9.5 -> 7.2-7.6 ms, layer3's 8.4-9.0 -> 7.7-8.4 ms. (A
// non-finite weight then meets no padding: the border pixels stay finite, as in oneDNN, where a product
// with every padded zero, as torch's own fallback kernel takes it, gave NaN.)
// Elements from one pixel of the zero-padded channels-last input to the next in a row, and from a group's
// first channel to the next group's: channels-last (N, H', W', C), or with group_major each group its own
// such image (N, groups, H', W', C / groups).
struct PaddedInputSteps {
  int64_t pixel, group;
};

PaddedInputSteps padded_input_steps(const ConvGeometry& g, bool group_major) {
  const int64_t cin_g = g.in_channels_per_group();
  if (!group_major) return {g.in_channels, cin_g};
  return {cin_g, (g.in_h + 2 * g.pad_h) * (g.in_w + 2 * g.pad_w) * cin_g};
}

// The taps that read anything but padding for the tile of `mr` output pixels of one row from (oh, ow0)
// on, written to tap_index (their numbers) and edges (per tap, bit 0: the tile's first pixel reads padding
// there, bit 1: its last one does; see micro_kernel_conv); returns how many. rows[kh] and cols[kw]: the
// output rows and columns whose tap (kh, kw) reads inside the input (valid_output_range).
int64_t taps_reading_input(const std::vector<OutputRange>& rows, const std::vector<OutputRange>& cols, int64_t oh,
                           int64_t ow0, int64_t mr, int64_t* tap_index, uint8_t* edges) {
  const int64_t kernel_w = static_cast<int64_t>(cols.size());
  int64_t count = 0;
  for (int64_t kh = 0; kh < static_cast<int64_t>(rows.size()); ++kh) {
    if (oh < rows[kh].lo || oh >= rows[kh].hi) continue;
    for (int64_t kw = 0; kw < kernel_w; ++kw) {
      // The tile's pixels lo <= i < hi read inside the input through this tap.
      const int64_t lo = std::clamp<int64_t>(cols[kw].lo - ow0, 0, mr), hi = std::clamp<int64_t>(cols[kw].hi - ow0, 0, mr);
      if (lo >= hi) continue;
      tap_index[count] = kh * kernel_w + kw;
      edges[count] = uint8_t((lo == 1 ? 1 : 0) | (hi == mr - 1 ? 2 : 0));
      ++count;
    }
  }
  return count;
}

template <typename scalar_t>
void blocked_forward_kernel(const ConvGeometry& g, const scalar_t* in, bool group_major, const scalar_t* w,
                            scalar_t* out, const TransposedTaps* transposed, const scalar_t* bias,
                            bool channels_last_out, bool exact_padding) {
  // The 7-pixel tile where it lets a padded layer's tiles be whole rows' pieces (see skips_padding below).
  const bool padded = exact_padding && (g.pad_h > 0 || g.pad_w > 0);
  const MicroKernels<scalar_t>& mk = padded ? micro_kernels_for_conv<scalar_t>(g.out_channels_per_group(), g.out_w)
                                            : micro_kernels_for_width<scalar_t>(g.out_channels_per_group());
  const int64_t mr = mk.mr, nr = mk.nr;
  const int64_t cin_g = g.in_channels_per_group(), cout_g = g.out_channels_per_group();
  const int64_t taps = g.kernel_h * g.kernel_w, k = cin_g * taps;
  const int64_t channels = g.in_channels, padded_w = g.in_w + 2 * g.pad_w;
  const int64_t in_image = (g.in_h + 2 * g.pad_h) * padded_w * channels, out_plane = g.out_h * g.out_w;
  const PaddedInputSteps steps = padded_input_steps(g, group_major);
  const int64_t pixel_step = steps.pixel, group_step = steps.group;
  const int64_t blocks = (cout_g + nr - 1) / nr;
  // Tiles run over the pixels of all images in turn, so small planes (7x7: 49 pixels) fill them too.
  const int64_t pixels_total = g.batch * out_plane;
  const int64_t tiles = (pixels_total + mr - 1) / mr;
  const auto store_tile = streams_output(g.batch * g.out_channels * out_plane * int64_t(sizeof(scalar_t)))
                              ? mk.transpose_stream
                              : mk.transpose;

  std::vector<int64_t> tap_offsets(taps);
  for (int64_t t = 0; t < taps; ++t)
    tap_offsets[t] = ((t / g.kernel_w) * g.dil_h * padded_w + (t % g.kernel_w) * g.dil_w) * pixel_step;

  // One work item: a group of up to tiles_per_item runs of mr consecutive output pixels (row-major over
  // the planes of all images) of one channel block. A short last run repeats its last pixel; the extra
  // results are dropped. A block's tiles go in groups of kTilesPerGroup, or split further where there are
  // fewer blocks than an even share per thread needs (each thread working on a block packs it: see the
  // work loop).
  constexpr int64_t kTilesPerGroup = 16;
  const int64_t all_blocks = g.groups * blocks, threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t splits = std::max((tiles + kTilesPerGroup - 1) / kTilesPerGroup,
                                  std::min(std::max<int64_t>(tiles, 1), threads / std::gcd(all_blocks, threads)));
  const int64_t tiles_per_item = std::max<int64_t>(1, (tiles + splits - 1) / splits);
  const int64_t tile_groups = (tiles + tiles_per_item - 1) / tiles_per_item;  // no empty group
  const int64_t items = all_blocks * tile_groups;
  // Weights packed as [group][channel block][tap][input channel][nr], zero past the group's last output
  // channel. A block is the (channel, tap) columns of its weight rows: one transpose, each column sent to
  // its (tap, channel) row of the packed block. (Small outputs once packed chunks of a block that stay in
  // L1 as each item went: whole blocks measured faster, at batch 1 layer4.0 0.59 -> 0.52 ms, MobileNetV2's
  // 576 -> 96 1x1 layer 0.22 -> 0.14 ms, the text CNN's k5 conv1d 0.69 -> 0.60 ms.)
  const auto pack_block = [&](int64_t b, int64_t c0, int64_t cc, scalar_t* dst, int64_t* row_of) {
    const int64_t grp = b / blocks, first = (b % blocks) * nr, cols = std::min(nr, cout_g - first);
    if (cols < nr) std::fill(dst, dst + taps * cc * nr, scalar_t(0));
    if (transposed) {
      // Row c of the layer's weight holds (this kernel's output channel, layer tap) in that order: a
      // cols x layer_taps matrix. Where the kernel uses every layer tap (stride 1, flipped), the matrix is
      // transposed whole, layer tap layer_tap[t] sent to packed row (t, c); a stride phase uses a few of
      // them, which are gathered one by one (a whole transpose measured slower there).
      const int64_t layer_taps = transposed->layer_taps;
      for (int64_t c = c0; c < c0 + cc; ++c) {
        scalar_t* rows = dst + (c - c0) * nr;  // packed row (t, c) is rows + t * cc * nr
        if (transposed->tap_major) {
          for (int64_t t = 0; t < taps; ++t) {
            const scalar_t* src = w + ((grp * cin_g + c) * layer_taps + transposed->layer_tap[t]) * cout_g + first;
            std::copy(src, src + cols, rows + t * cc * nr);
          }
          continue;
        }
        const scalar_t* src = w + ((grp * cin_g + c) * cout_g + first) * layer_taps;
        if (layer_taps == 1) {  // a 1x1 layer: the row is already contiguous
          std::copy(src, src + cols, rows);
          continue;
        }
        if (taps == layer_taps) {
          for (int64_t t = 0; t < taps; ++t) row_of[transposed->layer_tap[t]] = (c - c0 + t * cc) * nr;
          mk.transpose(cols, layer_taps, src, layer_taps, dst, 0, row_of);
          continue;
        }
        for (int64_t t = 0; t < taps; ++t) {
          const scalar_t* tap_src = src + transposed->layer_tap[t];
          scalar_t* row = rows + t * cc * nr;
          for (int64_t j = 0; j < cols; ++j) row[j] = tap_src[j * layer_taps];
        }
      }
      return;
    }
    // The chunk's (channel, tap) columns are contiguous in the weight's rows.
    for (int64_t c = 0; c < cc; ++c)
      for (int64_t t = 0; t < taps; ++t) row_of[c * taps + t] = (t * cc + c) * nr;
    mk.transpose(cols, cc * taps, w + (grp * cout_g + first) * k + c0 * taps, k, dst, 0, row_of);
  };

  // With one group and no horizontal dilation, the (tap, channel) entries of one kernel row lie side by
  // side in a padded channels-last pixel row, and the packed weights are in the same order: the
  // micro-kernel then runs over kernel rows of kernel_w * channels entries each, instead of restarting per
  // tap (the 7x7 stem's 3 channels, a 1-D front end's single one).
  // Tiles skip padding (see above) where they are whole rows' pieces and have channels enough that a tap
  // at a time costs nothing against merged kernel rows.
  const bool skips_padding = padded && g.out_w % mr == 0 && cin_g >= 16;
  const bool merge_rows = g.groups == 1 && g.dil_w == 1 && !skips_padding;
  std::vector<OutputRange> inside_rows, inside_cols;  // per kernel row and column, see taps_reading_input
  if (skips_padding) {
    for (int64_t kh = 0; kh < g.kernel_h; ++kh)
      inside_rows.push_back(valid_output_range(g.out_h, g.in_h, g.stride_h, g.pad_h, kh * g.dil_h));
    for (int64_t kw = 0; kw < g.kernel_w; ++kw)
      inside_cols.push_back(valid_output_range(g.out_w, g.in_w, g.stride_w, g.pad_w, kw * g.dil_w));
  }
  std::vector<int64_t> row_offsets(g.kernel_h);
  for (int64_t kh = 0; kh < g.kernel_h; ++kh) row_offsets[kh] = kh * g.dil_h * padded_w * pixel_step;
  const int64_t* k_offsets = merge_rows ? row_offsets.data() : tap_offsets.data();
  const int64_t k_groups = merge_rows ? g.kernel_h : taps;

  // Items normally run block by block, so with several channel blocks each thread streamed the whole
  // input for its own blocks. When all blocks' packed weights are small (kPixelMajorWeightBytes), items
  // run pixel group by pixel group instead (the blocks of one group in turn, reusing its input from
  // L1/L2) and every thread packs all blocks for itself: the threads split the input. That pays where the
  // input is the larger of the two (each thread packs every block). layer2.0 (2 blocks) at batch 8: 3.5
  // -> 2.7 ms; layer3.0 (1.2 MB of weights) 2.8 -> 2.6 ms; layer3 (2.4 MB) was slower this way, and
  // layer2 at batch 1 (0.5 MB of input, 0.6 MB of weights) too. A group-major input stays block by block:
  // there a block reads only its group's slice of the input, and pixel-major each thread packed every
  // block (ResNeXt-50's layer4, 32 per group, at batch 8: 0.566-0.575 -> 0.530-0.553 ms).
  const int64_t packed_bytes = all_blocks * k * nr * int64_t(sizeof(scalar_t));
  const bool pixel_major = !group_major && all_blocks > 1 && packed_bytes <= kPixelMajorWeightBytes &&
                           g.batch * in_image * int64_t(sizeof(scalar_t)) >= 2 * packed_bytes;
  // Where one item takes all of a block's tiles (few pixels: layer4 at batch 1) and the packed block
  // would crowd L2, the block is packed and used a chunk of input channels at a time, each chunk summed
  // into the item's tiles (in L1) before the next is packed over it: packing then writes to L2 and the
  // tiles read the weights from there, instead of both going through L3 (layer4's 3x3 at batch 1, 1.2 MB
  // blocks: 0.74-0.76 -> 0.69-0.71 ms).
  const int64_t chunk_channels = !pixel_major && tile_groups == 1
                                     ? packed_chunk_channels(cin_g, taps * nr * int64_t(sizeof(scalar_t)))
                                     : cin_g;
  at::parallel_for(0, items, 1, [&](int64_t r0, int64_t r1) {
    std::vector<scalar_t> tile_buf(tiles_per_item * mr * nr + 64 / sizeof(scalar_t));
    scalar_t* tile = align_64(tile_buf.data());
    // The weights this thread packed: the current item's channel block or (pixel-major) every block, each
    // packed when first needed. Block by block, a thread takes a contiguous range of items, so it packs
    // each block it works on once (a block split between two threads is packed by both), just before
    // using it: the block (at most taps x channels x nr, or a chunk of it) is written to and read from
    // this core's caches, where packing all blocks up front sent them through memory (9.4 MB each way on
    // layer4).
    const int64_t packed_elements = (pixel_major ? all_blocks : 1) * taps * chunk_channels * nr;
    std::vector<scalar_t> packed_buf(packed_elements + 64 / sizeof(scalar_t));
    scalar_t* packed_all = align_64(packed_buf.data());
    std::vector<char> have(pixel_major ? all_blocks : 0);
    int64_t packed_block = -1;
    std::vector<int64_t> row_of(k);
    std::vector<scalar_t> bias_buf(bias ? nr + 64 / sizeof(scalar_t) : 0);
    scalar_t* bias_row = bias ? align_64(bias_buf.data()) : nullptr;
    int64_t bias_block = -1;
    std::vector<int64_t> pixel_offsets(tiles_per_item * mr), out_offsets(tiles_per_item * mr);
    std::vector<int64_t> tap_index(skips_padding ? tiles_per_item * taps : 0), tile_taps(tiles_per_item, taps);
    std::vector<uint8_t> edges(tap_index.size());
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = pixel_major ? r % all_blocks : r / tile_groups;
      const int64_t first_tile = (pixel_major ? r / all_blocks : r % tile_groups) * tiles_per_item;
      scalar_t* packed = pixel_major ? packed_all + b * k * nr : packed_all;
      const int64_t grp = b / blocks, first = (b % blocks) * nr, cols = std::min(nr, cout_g - first);
      const int64_t group_tiles = std::min(tiles_per_item, tiles - first_tile);
      // The bias starts the tiles' sums (the micro-kernel's start row: nr values, zero past the block's
      // last channel), instead of a pass over the tiles.
      if (bias && b != bias_block) {
        std::fill(bias_row, bias_row + nr, scalar_t(0));
        std::copy(bias + grp * cout_g + first, bias + grp * cout_g + first + cols, bias_row);
        bias_block = b;
      }
      const int64_t q_first = first_tile * mr, pixels = std::min(group_tiles * mr, pixels_total - q_first);
      // The pixels' (image, row, column) by counting, not dividing (divisions dominated small kernels).
      int64_t n = q_first / out_plane, pq = q_first % out_plane, oh = pq / g.out_w, ow = pq % g.out_w;
      for (int64_t i = 0; i < group_tiles * mr; ++i) {
        if (i >= pixels) {  // past the last pixel: repeat it
          pixel_offsets[i] = pixel_offsets[pixels - 1];
          out_offsets[i] = out_offsets[pixels - 1];
          continue;
        }
        pixel_offsets[i] = n * in_image + (oh * g.stride_h * padded_w + ow * g.stride_w) * pixel_step;
        out_offsets[i] = (n * g.out_channels + grp * cout_g + first) * out_plane + pq;
        ++pq;
        if (++ow == g.out_w) {
          ow = 0;
          if (++oh == g.out_h) oh = 0, pq = 0, ++n;
        }
      }
      if (skips_padding)
        for (int64_t tl = 0; tl < group_tiles; ++tl) {
          const int64_t pq_tile = (q_first + tl * mr) % out_plane;
          tile_taps[tl] = taps_reading_input(inside_rows, inside_cols, pq_tile / g.out_w, pq_tile % g.out_w, mr,
                                             tap_index.data() + tl * taps, edges.data() + tl * taps);
        }
      const auto tile_tap_index = [&](int64_t tl) { return skips_padding ? tap_index.data() + tl * taps : nullptr; };
      const auto tile_edges = [&](int64_t tl) { return skips_padding ? edges.data() + tl * taps : nullptr; };
      if (chunk_channels < cin_g) {
        for (int64_t c0 = 0; c0 < cin_g; c0 += chunk_channels) {
          const int64_t cc = std::min(chunk_channels, cin_g - c0);
          pack_block(b, c0, cc, packed, row_of.data());
          for (int64_t tl = 0; tl < group_tiles; ++tl)
            mk.micro_conv(tile_taps[tl], tile_tap_index(tl), tile_edges(tl), cc, in + grp * group_step + c0,
                          pixel_offsets.data() + tl * mr, tap_offsets.data(), packed, tile + tl * mr * nr, nr,
                          bias ? bias_row : nullptr, c0 > 0);
        }
      } else {
        if (pixel_major ? !have[b] : b != packed_block) pack_block(b, 0, cin_g, packed, row_of.data());
        if (pixel_major) have[b] = 1;
        packed_block = b;
        const int64_t run = merge_rows ? g.kernel_w * cin_g : cin_g;
        for (int64_t tl = 0; tl < group_tiles; ++tl)
          mk.micro_conv(skips_padding ? tile_taps[tl] : k_groups, tile_tap_index(tl), tile_edges(tl), run,
                        in + grp * group_step, pixel_offsets.data() + tl * mr, k_offsets, packed, tile + tl * mr * nr,
                        nr, bias ? bias_row : nullptr, false);
      }
      if (channels_last_out) {
        scalar_t* dst = out + q_first * g.out_channels + grp * cout_g + first;
        for (int64_t i = 0; i < pixels; ++i)
          std::memcpy(dst + i * g.out_channels, tile + i * nr, cols * sizeof(scalar_t));
        continue;
      }
      // The tiles are pixel-major (pixels x channels); the output is channel planes: transposed, one run
      // of pixels of one image at a time.
      for (int64_t i0 = 0; i0 < pixels;) {
        const int64_t run = std::min(pixels - i0, out_plane - out_offsets[i0] % out_plane);
        store_tile(run, cols, tile + i0 * nr, nr, out + out_offsets[i0], out_plane, nullptr);
        i0 += run;
      }
    }
  });
}

// The zero-padded channels-last copy of an input that the blocked kernels read, (N, H + 2 pad_h,
// W + 2 pad_w, C), followed by `slack` zeros: each image's (C, H * W) matrix transposed, its pixels
// (columns) sent to their padded positions. With `slices` > 1 (an NCHW input only), the channels are cut
// into that many equal slices, each image's slices one after the other, each its own padded channels-last
// image (N, slices, H + 2 pad_h, W + 2 pad_w, C / slices): see group_major_applies.
at::Tensor padded_channels_last(const at::Tensor& input, int64_t pad_h, int64_t pad_w, int64_t slack = 0,
                                int64_t slices = 1) {
  // A channels-last input is copied row by row as it is (no transpose).
  const bool from_channels_last = is_channels_last(input);
  TORCH_INTERNAL_ASSERT(slices == 1 || !from_channels_last);
  const at::Tensor x = from_channels_last ? input : input.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), plane = h * w;
  const int64_t padded_h = h + 2 * pad_h, padded_w = w + 2 * pad_w, elements = n * padded_h * padded_w * c;
  const int64_t sc = c / slices, slice_elements = padded_h * padded_w * sc;  // channels and elements of a slice
  // Only the border and the slack are zeroed (the transposes below write the rest): zeroing the whole copy
  // first cost as much as a third of the transposes.
  at::Tensor buffer = empty_output({elements + slack}, x.options());
  if (slack > 0) buffer.narrow(0, elements, slack).zero_();
  std::vector<int64_t> pixel_at(plane);  // row by row: a division per pixel cost 0.1 ms on the stem's 224x224
  for (int64_t row = 0, q = 0; row < h; ++row) {
    const int64_t start = ((row + pad_h) * padded_w + pad_w) * sc;
    for (int64_t col = 0; col < w; ++col, ++q) pixel_at[q] = start + col * sc;
  }
  constexpr int64_t kPixelsPerItem = 256;
  const int64_t pieces = std::max<int64_t>(1, (plane + kPixelsPerItem - 1) / kPixelsPerItem);  // 1 zeroes an empty plane's border
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "padded_channels_last", [&] {
    const MicroKernels<scalar_t>& mk = micro_kernels<scalar_t>();
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = buffer.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n * pieces, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t image = r / pieces, q0 = (r % pieces) * kPixelsPerItem;
        scalar_t* padded_image = dst + image * padded_h * padded_w * c;
        // The border of each of the image's slices: pad_h rows above and below, pad_w columns each side.
        for (int64_t sl = 0; q0 == 0 && (pad_h || pad_w) && sl < slices; ++sl) {
          scalar_t* slice = padded_image + sl * slice_elements;
          const int64_t border_rows = pad_h * padded_w * sc, side = pad_w * sc;
          std::fill(slice, slice + border_rows, scalar_t(0));
          std::fill(slice + (pad_h + h) * padded_w * sc, slice + slice_elements, scalar_t(0));
          for (int64_t row = pad_h; row < pad_h + h; ++row) {
            scalar_t* line = slice + row * padded_w * sc;
            std::fill(line, line + side, scalar_t(0));
            std::fill(line + (pad_w + w) * sc, line + padded_w * sc, scalar_t(0));
          }
        }
        const int64_t count = std::min(kPixelsPerItem, plane - q0);
        if (from_channels_last) {
          for (int64_t q = q0; q < q0 + count;) {
            const int64_t len = std::min(q0 + count - q, w - q % w);
            std::memcpy(padded_image + pixel_at[q], src + (image * plane + q) * c, len * c * sizeof(scalar_t));
            q += len;
          }
          continue;
        }
        if (c <= 4) {
          // Too few channels for the transpose's square blocks (a 1-channel front end, an RGB stem): each
          // row piece's channels interleaved into place (copied, for one channel).
          for (int64_t q = q0; q < q0 + count;) {
            const int64_t len = std::min(q0 + count - q, w - q % w);
            const scalar_t* from = src + image * c * plane + q;
            const scalar_t* rows[4] = {from, from + plane, from + 2 * plane, from + 3 * plane};  // c of them
            scalar_t* to = padded_image + pixel_at[q];
            switch (c) {
              case 1: std::memcpy(to, from, len * sizeof(scalar_t)); break;
              case 2: FASTCONV_CALL_PLANES(interleave_rows<scalar_t, 2>(rows, len, to)); break;
              case 3: FASTCONV_CALL_PLANES(interleave_rows<scalar_t, 3>(rows, len, to)); break;
              default: FASTCONV_CALL_PLANES(interleave_rows<scalar_t, 4>(rows, len, to)); break;
            }
            q += len;
          }
          continue;
        }
        for (int64_t sl = 0; sl < slices; ++sl)
          mk.transpose(sc, count, src + (image * c + sl * sc) * plane + q0, plane,
                       padded_image + sl * slice_elements, 0, pixel_at.data() + q0);
      }
    });
  });
  return buffer;
}

// The blocked forward of an input already copied by padded_channels_last (with g's padding; with
// group_major, in g.groups slices), from `offset` elements into that copy; exact_padding: the copy's
// padding is g's (see blocked_forward_kernel).
at::Tensor blocked_forward_of_padded(const ConvGeometry& g, const at::Tensor& padded, int64_t offset,
                                     bool exact_padding, const at::Tensor& weight, const TransposedTaps* transposed,
                                     const at::Tensor* bias = nullptr, bool channels_last_out = false,
                                     bool group_major = false) {
  at::Tensor out = empty_output(g.output_sizes(), padded.options().memory_format(
                                                   channels_last_out ? at::MemoryFormat::ChannelsLast
                                                                     : at::MemoryFormat::Contiguous));
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(padded.scalar_type(), "blocked_conv2d_forward", [&] {
    blocked_forward_kernel<scalar_t>(g, padded.const_data_ptr<scalar_t>() + offset, group_major,
                                     w.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), transposed,
                                     b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, channels_last_out,
                                     exact_padding);
  });
  return out;
}

// Whether the blocked kernels read a grouped layer's input group-major (padded_channels_last's slices):
// each group's padded pixels then lie side by side, where channels-last puts a group's few channels every
// C elements, so a tile's reads of one group touched a cache line per pixel and tap. ResNeXt-50's 32 per
// group at batch 8, 2 threads: forward 0.67 -> 0.61 ms (layer4) and 2.70 -> 2.57 ms (32 groups of 32 at
// 28x28); layer4's strided 512 -> 1024: 0.52 -> 0.41 ms; weight gradient 1.25 -> 0.99 ms (layer3, 16 per
// group), 1.00 -> 0.87 ms (layer4). For an NCHW input (a channels-last one is copied as it is) with whole
// vectors of channels per group (the transposes' square blocks).
bool group_major_applies(const ConvGeometry& g, const at::Tensor& input) {
  return g.groups > 1 && !is_channels_last(input) && g.in_channels_per_group() % (64 / input.element_size()) == 0;
}

at::Tensor blocked_forward(const ConvGeometry& g, const at::Tensor& input, const at::Tensor& weight,
                           const TransposedTaps* transposed = nullptr, const at::Tensor* bias = nullptr,
                           bool channels_last_out = false) {
  const bool group_major = group_major_applies(g, input);
  return blocked_forward_of_padded(g, padded_channels_last(input, g.pad_h, g.pad_w, 0, group_major ? g.groups : 1),
                                   0, /*exact_padding=*/true, weight, transposed, bias, channels_last_out, group_major);
}

// The weight gradient as a GEMM over output pixels: dW[grp]^T ((tap, cin_g) x cout_g) = sum over images
// and pixels of patches ((tap, cin_g) x pixels) x dY^T (pixels x cout_g). The patch operand is never
// built: in the zero-padded channels-last input the entries of one tap (its cin_g channels), and with one
// group and no horizontal dilation those of a whole kernel row (kernel_w taps x channels), lie side by
// side for every pixel, so the micro-kernel reads MR of them in place per pixel (micro_gather). Only dY
// is packed (transposed), a pass of pixels at a time by the work item that uses it. Each C tile is owned
// by one thread and summed over images and pixels in a fixed order: deterministic, whatever the thread
// count.
struct PatchRows {
  int64_t group;
  int64_t offset;     // of its first entry, from a pixel's first element in the padded input
  int64_t first_row;  // in the group's (tap, channel) order
  int64_t rows;       // <= MR; entries past it are read (from the input or the slack) and dropped
};

// Whether the entries of a whole kernel row lie side by side in a padded channels-last pixel row.
bool weight_grad_rows_contiguous(const ConvGeometry& g) { return g.groups == 1 && g.dil_w == 1; }

// The chunks of every group's patch rows; with group_major, the padded input holds each group's channels
// as its own image (see blocked_forward_kernel).
std::vector<PatchRows> weight_grad_row_chunks(const ConvGeometry& g, int64_t mr, bool group_major) {
  const int64_t cin_g = g.in_channels_per_group(), padded_w = g.in_w + 2 * g.pad_w;
  const PaddedInputSteps steps = padded_input_steps(g, group_major);
  const int64_t pixel_step = steps.pixel, group_step = steps.group;
  std::vector<PatchRows> chunks;
  const auto add_segment = [&](int64_t group, int64_t offset, int64_t first_row, int64_t length) {
    for (int64_t s = 0; s < length; s += mr) chunks.push_back({group, offset + s, first_row + s, std::min(mr, length - s)});
  };
  for (int64_t grp = 0; grp < g.groups; ++grp) {
    for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
      const int64_t row_offset = kh * g.dil_h * padded_w * pixel_step;
      if (weight_grad_rows_contiguous(g)) {
        add_segment(grp, row_offset, kh * g.kernel_w * cin_g, g.kernel_w * cin_g);
        continue;
      }
      for (int64_t kw = 0; kw < g.kernel_w; ++kw)
        add_segment(grp, row_offset + kw * g.dil_w * pixel_step + grp * group_step, (kh * g.kernel_w + kw) * cin_g,
                    cin_g);
    }
  }
  return chunks;
}

template <typename scalar_t>
void blocked_grad_weight_kernel(const ConvGeometry& g, const scalar_t* go, const scalar_t* padded, bool group_major,
                                scalar_t* gw) {
  // The 12 x 32 tile on AVX-512 (measured faster here than the 6 x 64 one at stride 1: half the dY^T
  // bytes per step); the 16 x 16 one for groups of at most 16 output channels (ResNeXt's 16 per group:
  // half the columns of the 12 x 32 tile would be zeros). Strided layers with 16 or more input channels
  // take the widest tile that fits: their patch entries, read in place, are shared by fewer neighbouring
  // pixels, and a 64-channel strip reads each of them for twice the columns (ResNet-18's layer3.0 and
  // layer4.0 at batch 8: 3.9 -> 3.3 ms; wav2vec2's 512-channel k3/2: 115 -> 97 ms). The 3-channel 7x7/2
  // stem measured slower that way (7.5 -> 8.5 ms).
  const MicroKernels<scalar_t>& tall = micro_kernels<scalar_t>();
  const MicroKernels<scalar_t>& fitted = micro_kernels_for_width<scalar_t>(g.out_channels_per_group());
  const bool strided_wide = (g.stride_h > 1 || g.stride_w > 1) && g.in_channels_per_group() >= 16;
  const MicroKernels<scalar_t>& mk = fitted.nr < tall.nr || strided_wide ? fitted : tall;
  const int64_t mr = mk.mr, nr = mk.nr;
  const int64_t cin_g = g.in_channels_per_group(), cout_g = g.out_channels_per_group();
  const int64_t taps = g.kernel_h * g.kernel_w, columns = taps * cin_g, out_plane = g.out_h * g.out_w;
  const int64_t padded_w = g.in_w + 2 * g.pad_w;
  const int64_t padded_image = (g.in_h + 2 * g.pad_h) * padded_w * g.in_channels;
  const int64_t strips = (cout_g + nr - 1) / nr;  // of nr output channels
  const std::vector<PatchRows> chunks = weight_grad_row_chunks(g, mr, group_major);
  const int64_t pixel_step = padded_input_steps(g, group_major).pixel;
  const int64_t chunk_count = static_cast<int64_t>(chunks.size());

  // The tiles of one group's dW^T that hold each of its weights, in the weight's (channel, kh, kw) order:
  // chunk (an index into chunks, group-relative) and the offset of its row from the first tile.
  const int64_t chunks_per_group = chunk_count / g.groups;
  const int64_t tile_elements = mr * nr;
  std::vector<int64_t> chunk_of(columns), tile_offset(columns);
  for (int64_t c = 0; c < chunks_per_group; ++c)
    for (int64_t i = 0; i < chunks[c].rows; ++i) {
      const int64_t r = chunks[c].first_row + i, position = (r % cin_g) * taps + r / cin_g;
      chunk_of[position] = c;
      tile_offset[position] = c * tile_elements + i * nr;
    }

  // Work items: (group, strip) x a range of the group's chunks. One range (each item then writes whole
  // rows of dW, in order) unless there are fewer (group, strip) pairs than threads, or a strip's tiles
  // would pass 1 MiB.
  const int64_t strip_pairs = g.groups * strips;
  const int64_t by_threads = (at::get_num_threads() + strip_pairs - 1) / strip_pairs;
  const int64_t by_memory = (chunks_per_group * tile_elements * int64_t(sizeof(scalar_t)) + (int64_t(1) << 20) - 1) >> 20;
  const int64_t parts = std::min(chunks_per_group, std::max(by_threads, by_memory));
  const int64_t part_chunks = (chunks_per_group + parts - 1) / parts;
  // The reduction runs over the output pixels of all images in passes of kPixelsPerPass: each item
  // transposes the pass's dY strip (kPixelsPerPass x NR) into L1, where it stays while the item's tiles
  // read their patch entries (from L2).
  constexpr int64_t kPixelsPerPass = 256;
  const int64_t pixels = g.batch * out_plane;

  at::parallel_for(0, strip_pairs * parts, 1, [&](int64_t w0, int64_t w1) {
    constexpr int64_t kRun = 16;  // weights moved per transpose (a multiple of every vector width)
    const int64_t align = 64 / sizeof(scalar_t);
    std::unique_ptr<scalar_t[]> buf(new scalar_t[part_chunks * tile_elements + kPixelsPerPass * nr + kRun * nr + 3 * align]);
    scalar_t* tiles = align_64(buf.get());
    scalar_t* b_pass = align_64(tiles + part_chunks * tile_elements);  // the pass's dY^T, kPixelsPerPass x nr
    scalar_t* staging = align_64(b_pass + kPixelsPerPass * nr);        // kRun rows of nr
    std::vector<int64_t> pixel_offsets(kPixelsPerPass);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t pair = w / parts, grp = pair / strips, first = (pair % strips) * nr;
      const int64_t c0 = (w % parts) * part_chunks, c1 = std::min(chunks_per_group, c0 + part_chunks);
      const int64_t cols = std::min(nr, cout_g - first);
      // Lanes past the group's last channel stay zero; the transposes below never write them.
      if (cols < nr) std::fill(b_pass, b_pass + kPixelsPerPass * nr, scalar_t(0));
      for (int64_t p0 = 0; p0 < pixels; p0 += kPixelsPerPass) {
        const int64_t kc = std::min(kPixelsPerPass, pixels - p0);
        // The pass's pixels (image, row, column) by counting; dY^T a run of one image's pixels at a time.
        int64_t n = p0 / out_plane, pq = p0 % out_plane, oh = pq / g.out_w, ow = pq % g.out_w;
        for (int64_t i0 = 0; i0 < kc;) {
          const int64_t run = std::min(kc - i0, out_plane - pq);
          mk.transpose(cols, run, go + (n * g.out_channels + grp * cout_g + first) * out_plane + pq, out_plane,
                       b_pass + i0 * nr, nr, nullptr);
          for (int64_t i = i0; i < i0 + run; ++i) {
            pixel_offsets[i] = n * padded_image + (oh * g.stride_h * padded_w + ow * g.stride_w) * pixel_step;
            if (++ow == g.out_w) ow = 0, ++oh;
          }
          i0 += run;
          pq = 0, oh = 0, ow = 0, ++n;
        }
        for (int64_t c = c0; c < c1; ++c)
          mk.micro_gather(kc, padded + chunks[grp * chunks_per_group + c].offset, pixel_offsets.data(), b_pass,
                          tiles + (c - c0) * tile_elements, p0 > 0);
      }
      // The tiles ((tap, channel) x output channel) into dW, written in its order: with all the chunks,
      // kRun weights at a time, their tile rows gathered and transposed in registers.
      scalar_t* origin = gw + (grp * cout_g + first) * columns;  // dW row of the strip's first channel
      if (parts == 1) {
        for (int64_t q0 = 0; q0 < columns; q0 += kRun) {
          const int64_t run = std::min(kRun, columns - q0);
          for (int64_t i = 0; i < run; ++i)
            std::memcpy(staging + i * nr, tiles + tile_offset[q0 + i], cols * sizeof(scalar_t));
          mk.transpose(run, cols, staging, nr, origin + q0, columns, nullptr);
        }
        continue;
      }
      for (int64_t j = 0; j < cols; ++j)
        for (int64_t q = 0; q < columns; ++q)
          if (chunk_of[q] >= c0 && chunk_of[q] < c1) origin[j * columns + q] = tiles[tile_offset[q] - c0 * tile_elements + j];
    }
  });
}

at::Tensor blocked_grad_weight(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& input) {
  // The last chunk of a segment may read up to MR - 1 entries past the padded input: zeroed slack.
  const bool group_major = group_major_applies(g, input);
  const at::Tensor buffer = padded_channels_last(input, g.pad_h, g.pad_w, /*slack=*/64, group_major ? g.groups : 1);
  at::Tensor grad_weight = at::empty({g.out_channels, g.in_channels_per_group(), g.kernel_h, g.kernel_w}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "blocked_grad_weight", [&] {
    blocked_grad_weight_kernel<scalar_t>(g, grad_output.const_data_ptr<scalar_t>(), buffer.const_data_ptr<scalar_t>(),
                                         group_major, grad_weight.mutable_data_ptr<scalar_t>());
  });
  return grad_weight;
}

at::Tensor blocked_grad_input(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& weight,
                              bool channels_last_out) {
  TransposedTaps flipped{std::vector<int64_t>(g.kernel_h * g.kernel_w), g.kernel_h * g.kernel_w};
  for (int64_t t = 0; t < flipped.layer_taps; ++t) flipped.layer_tap[t] = flipped.layer_taps - 1 - t;  // flipped in both dims
  return blocked_forward(transposed_geometry(g), grad_output, weight, &flipped, nullptr, channels_last_out);
}

// The taps of one phase of a strided input gradient (dilation 1): the input rows ih with
// (ih + pad) mod stride == r receive exactly the taps r, r + stride, ... (see phase_grad_input).
struct Phase {
  int64_t residue, taps;     // r, and how many taps k < kernel have k mod stride == r
  int64_t first, count;      // the phase's input rows ih = stride * u + r - pad for u in [first, first + count)
};

Phase phase_of(int64_t r, int64_t kernel, int64_t stride, int64_t pad, int64_t in_size, int64_t out_size) {
  Phase ph{r, r < kernel ? (kernel - 1 - r) / stride + 1 : 0, 0, 0};
  if (ph.taps == 0) return ph;
  ph.first = pad > r ? (pad - r - 1) / stride + 1 : 0;  // first u with ih >= 0 (rounded up, no overflow)
  const int64_t top = in_size - 1 + pad - r;                  // last u with ih < in_size is top / stride
  // Rows past the last output row plus taps - 1 receive nothing (they stay zero).
  const int64_t end = std::min(top >= 0 ? top / stride + 1 : 0, out_size + ph.taps - 1);
  ph.count = std::max<int64_t>(0, end - ph.first);
  return ph;
}

// The stride-1 geometry that computes one phase: dY convolved with the phase's taps, flipped and
// transposed, padded by taps - 1 on each side; its output row u is the phase's row u.
ConvGeometry phase_geometry(const ConvGeometry& g, const Phase& rows, const Phase& cols) {
  ConvGeometry t = transposed_geometry(g);
  t.kernel_h = rows.taps;
  t.kernel_w = cols.taps;
  t.stride_h = t.stride_w = 1;
  t.pad_h = rows.taps - 1;
  t.pad_w = cols.taps - 1;
  t.out_h = g.out_h + rows.taps - 1;
  t.out_w = g.out_w + cols.taps - 1;
  return t;
}

// The weight (out, in / groups, kh, kw) reordered to (out, kh * kw, in / groups): each output channel's
// (in / groups) x taps matrix transposed. The stride phases of an input gradient each take a few taps of
// every (output, input) pair; from this copy, made once for all phases and threads, their packed rows are
// contiguous runs instead of gathers with a stride of kh * kw (layer4.0 at batch 8: 13% of the pass).
at::Tensor tap_major_weight(const at::Tensor& weight) {
  const at::Tensor w = weight.contiguous();
  const int64_t out = w.size(0), in_g = w.size(1), taps = w.size(2) * w.size(3);
  if (taps == 1) return w;  // already in that order
  at::Tensor result = at::empty({out, taps, in_g}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "tap_major_weight", [&] {
    const MicroKernels<scalar_t>& mk = micro_kernels<scalar_t>();
    const scalar_t* src = w.const_data_ptr<scalar_t>();
    scalar_t* dst = result.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, out, 1, [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) mk.transpose(in_g, taps, src + o * in_g * taps, taps, dst + o * taps * in_g, in_g, nullptr);
    });
  });
  return result;
}

// A strided layer's input gradient, phase by phase: with ih + pad_h = stride_h * u + rh, input row ih
// receives dY rows u - m through taps rh + stride_h * m only, so each (rh, rw) phase is a stride-1
// convolution of dY that the blocked forward kernel computes; its rows and columns are then spread
// over the input gradient with the stride. Every input pixel belongs to one phase: no sums across
// phases, deterministic.
at::Tensor phase_grad_input(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& weight) {
  // A phase pads dY by its taps - 1 (at most ceil(kernel / stride) - 1): one copy padded by the most serves
  // them all, each phase starting as far in as its own padding is short of that.
  const int64_t pad_h = (g.kernel_h + g.stride_h - 1) / g.stride_h - 1, pad_w = (g.kernel_w + g.stride_w - 1) / g.stride_w - 1;
  const at::Tensor padded = padded_channels_last(grad_output, pad_h, pad_w);
  const at::Tensor tap_major = tap_major_weight(weight);
  std::vector<Phase> row_phases, col_phases;
  for (int64_t rh = 0; rh < g.stride_h; ++rh) row_phases.push_back(phase_of(rh, g.kernel_h, g.stride_h, g.pad_h, g.in_h, g.out_h));
  for (int64_t rw = 0; rw < g.stride_w; ++rw) col_phases.push_back(phase_of(rw, g.kernel_w, g.stride_w, g.pad_w, g.in_w, g.out_w));
  std::vector<at::Tensor> parts(g.stride_h * g.stride_w);  // (N, C_in, rows, cols) of phase (rh, rw)
  for (int64_t rh = 0; rh < g.stride_h; ++rh) {
    const Phase& rows = row_phases[rh];
    if (rows.count == 0) continue;
    for (int64_t rw = 0; rw < g.stride_w; ++rw) {
      const Phase& cols = col_phases[rw];
      if (cols.count == 0) continue;
      // The phase's taps, last first (flipped).
      TransposedTaps phase_taps{{}, g.kernel_h * g.kernel_w, /*tap_major=*/true};
      for (int64_t a = rows.taps - 1; a >= 0; --a)
        for (int64_t b = cols.taps - 1; b >= 0; --b)
          phase_taps.layer_tap.push_back((rh + a * g.stride_h) * g.kernel_w + rw + b * g.stride_w);
      ConvGeometry t = phase_geometry(g, rows, cols);
      const int64_t offset = ((pad_h - t.pad_h) * (t.in_w + 2 * pad_w) + pad_w - t.pad_w) * t.in_channels;
      t.pad_h = pad_h;  // the shared copy's layout; the output size stays the phase's
      t.pad_w = pad_w;
      parts[rh * g.stride_w + rw] =
          blocked_forward_of_padded(t, padded, offset, /*exact_padding=*/false, tap_major, &phase_taps);
    }
  }
  // Input row ih is row u = (ih + pad) / stride of phase (ih + pad) mod stride, and the same for columns:
  // each row of the input gradient is written once, in order, from the phases' rows (zero where no phase
  // reaches).
  at::Tensor grad_input = empty_output({g.batch, g.in_channels, g.in_h, g.in_w}, grad_output.options());
  // Per row phase, at stride 2: whether both column phases hold every column of a row, the first at
  // (pad_w + 2 j) / 2 and the second at (pad_w + 1 + 2 j) / 2 for the row's columns 2 j and 2 j + 1.
  std::vector<char> zip_fits(g.stride_h, 0);
  const int64_t first = g.pad_w % 2, v_first = g.pad_w / 2, v_second = (g.pad_w + 1) / 2;
  if (g.stride_w == 2 && g.in_w >= 2) {
    const auto covers = [&](int64_t rw, int64_t v0, int64_t n) {
      const Phase& c = col_phases[rw];
      return c.count > 0 && v0 >= c.first && v0 + n <= c.first + c.count;
    };
    const bool columns_fit = covers(first, v_first, (g.in_w + 1) / 2) && covers(1 - first, v_second, g.in_w / 2);
    for (int64_t rh = 0; rh < g.stride_h; ++rh)
      zip_fits[rh] = columns_fit && parts[rh * 2].defined() && parts[rh * 2 + 1].defined();
  }
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "phase_grad_input", [&] {
    scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.batch * g.in_channels, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p)
        for (int64_t ih = 0; ih < g.in_h; ++ih) {
          scalar_t* row = gi + (p * g.in_h + ih) * g.in_w;
          const int64_t rh = (ih + g.pad_h) % g.stride_h, u = (ih + g.pad_h) / g.stride_h;
          const Phase& rows = row_phases[rh];
          if (u < rows.first || u >= rows.first + rows.count) {
            std::fill(row, row + g.in_w, scalar_t(0));
            continue;
          }
          // Stride 2 with both column phases reaching the whole row (ResNet's 3x3/2 layers): the row is
          // the two phases' rows merged, column ix from phase (ix + pad_w) mod 2 at (ix + pad_w) / 2.
          if (g.stride_w == 2 && zip_fits[rh]) {
            const at::Tensor& a = parts[rh * 2 + first];
            const at::Tensor& b = parts[rh * 2 + 1 - first];
            const scalar_t* halves[2] = {a.const_data_ptr<scalar_t>() + (p * a.size(2) + u) * a.size(3) + v_first,
                                         b.const_data_ptr<scalar_t>() + (p * b.size(2) + u) * b.size(3) + v_second};
            FASTCONV_CALL_PLANES(interleave_rows<scalar_t, 2>(halves, g.in_w / 2, row));
            if (g.in_w % 2) row[g.in_w - 1] = halves[0][g.in_w / 2];
            continue;
          }
          std::fill(row, row + g.in_w, scalar_t(0));
          for (int64_t rw = 0; rw < g.stride_w; ++rw) {
            const at::Tensor& part = parts[rh * g.stride_w + rw];
            if (!part.defined()) continue;
            const Phase& cols = col_phases[rw];
            const int64_t part_w = part.size(3);
            const scalar_t* src = part.const_data_ptr<scalar_t>() + (p * part.size(2) + u) * part_w;
            scalar_t* dst = row + rw - g.pad_w;
            for (int64_t v = cols.first; v < cols.first + cols.count; ++v) dst[v * g.stride_w] = src[v];
          }
        }
    });
  });
  return grad_input;
}

// Output channels per group from which the blocked kernels' channel vectors pay: a vector's lanes.
int64_t blocked_min_channels(int64_t element_size) { return element_size == 4 ? 16 : 8; }

// Whether the strided input gradient runs by phases: every phase's geometry (of the transposed problem,
// whose output channels are the layer's input channels) suits the blocked kernel.
bool direct_grad_input_by_phases(const ConvGeometry& g, int64_t element_size) {
  if ((g.stride_h == 1 && g.stride_w == 1) || g.dil_h != 1 || g.dil_w != 1) return false;
  // A stride past the kernel leaves phases without taps (and the phase loops run stride times); a
  // padding out of proportion would overflow the phase arithmetic.
  if (g.stride_h > g.kernel_h || g.stride_w > g.kernel_w || !padded_plane_in_proportion(g, 65536.0)) return false;
  // Every phase's geometry must suit the blocked kernel; the one with the most taps has the most columns.
  const Phase rows = phase_of(0, g.kernel_h, g.stride_h, g.pad_h, g.in_h, g.out_h);
  const Phase cols = phase_of(0, g.kernel_w, g.stride_w, g.pad_w, g.in_w, g.out_w);
  return g.in_channels_per_group() >= blocked_min_channels(element_size) && g.out_channels_per_group() >= 8 &&
         padded_plane_in_proportion(phase_geometry(g, rows, cols), 65536.0);
}

}  // namespace

// The forward (and the stride-1 input gradient, the same kernel on the transposed problem) of grouped
// layers with at most 16 output channels per group runs on the plane kernels, four channels of a group
// per pass, where the blocked kernel's tile is a single vector of channels (ResNeXt-50's 16-per-group
// layer at batch 8: forward 1.5-1.7 -> 1.2 ms, input gradient 1.7 -> 1.25 ms). Their weight gradient
// stays blocked (the plane one took 4.5 against 2.4 ms).
bool direct_forward_is_blocked(const ConvGeometry& g, int64_t element_size) {
  return direct_uses_blocked_kernel(g, element_size) && !(g.groups > 1 && g.out_channels_per_group() <= 16);
}

bool direct_grad_input_is_blocked(const ConvGeometry& g, int64_t element_size) {
  if (g.stride_h != 1 || g.stride_w != 1) return false;
  const ConvGeometry t = transposed_geometry(g);
  return t.pad_h >= 0 && t.pad_w >= 0 && direct_forward_is_blocked(t, element_size);
}

bool direct_uses_blocked_kernel(const ConvGeometry& g, int64_t element_size) {
  // The blocked kernel materialises the zero padding; a padding out of proportion with the input (up
  // to 2**62, which torch accepts) goes to the plane kernels instead.
  if (!padded_plane_in_proportion(g, 65536.0)) return false;
  // Vectorising over output channels pays once a group has a good fraction of a vector of them.
  return g.out_channels_per_group() >= blocked_min_channels(element_size) &&
         g.in_channels_per_group() * g.kernel_h * g.kernel_w >= 8;
}

// The scratch of the blocked and plane kernels.
static int64_t kernels_workspace_bytes(const ConvGeometry& g, int64_t element_size) {
  // The plane kernels' scratch, one per thread, for each pass they take: the input gradient's upsampled
  // planes (where neither the blocked kernel nor its stride phases take it), the forward's and the weight
  // gradient's phase planes.
  const int64_t out_plane = g.out_h * g.out_w, in_plane = g.in_h * g.in_w;
  const bool blocked_forward = direct_forward_is_blocked(g, element_size);
  const bool blocked_weight = direct_uses_blocked_kernel(g, element_size);
  int64_t planes = 0;
  if (!direct_grad_input_is_blocked(g, element_size) && !direct_grad_input_by_phases(g, element_size) &&
      plane_grad_input_uses_padding(g))
    planes = grad_input_scratch_elements(g) + streamed_plane_elements(g.batch * g.in_channels, in_plane, element_size);
  if (!blocked_forward && plane_copies_fit(g))
    planes = std::max(planes, plane_scratch_elements(g) +
                                  streamed_plane_elements(g.batch * g.out_channels, out_plane, element_size));
  if (!blocked_weight && plane_copies_fit(g)) planes = std::max(planes, weight_grad_scratch_elements(g, element_size));
  // (Layers on narrow stride-2 rows take their forward and input gradient there, and their weight gradient
  // there or in channel blocks; the layers of depthwise_same_shape_planes take their forward and input
  // gradient on flat planes or narrow rows, and their weight gradient on narrow rows or in channel blocks:
  // neither runs on NCHW planes.)
  const bool stride2_rows = depthwise_stride2_rows_apply(g, element_size);
  if (depthwise_blocks_apply(g) && !depthwise_stride2_rows_weight_applies(g, element_size) &&
      !depthwise_narrow_rows_weight_applies(g, element_size) && !depthwise_plane_runs_weight_apply(g, element_size))
    planes = std::max(planes, depthwise_blocks_scratch_elements(g, element_size));
  if (!stride2_rows && !depthwise_same_shape_planes(g, element_size))
    planes = std::max(planes, depthwise_nchw_workspace_elements(g, element_size));
  planes = std::max(planes, depthwise_flat_workspace_elements(g, element_size));
  planes = std::max(planes, depthwise_narrow_rows_workspace_elements(g, element_size));
  planes = std::max(planes, depthwise_stride2_rows_workspace_elements(g, element_size));
  const int64_t plane_bytes = planes * element_size * at::get_num_threads();
  if (!blocked_forward && !blocked_weight) return plane_bytes;
  // The zero-padded channels-last input copy and, per thread, a packed channel block of the weights or,
  // pixel-major, all of them.
  const int64_t nr = element_size == 4 ? micro_kernels_for_width<float>(g.out_channels_per_group()).nr
                                       : micro_kernels_for_width<double>(g.out_channels_per_group()).nr;
  const int64_t block_bytes = g.col_rows() * nr * element_size;
  const int64_t all_bytes = g.groups * ((g.out_channels_per_group() + nr - 1) / nr) * block_bytes;
  const int64_t per_thread = all_bytes <= kPixelMajorWeightBytes ? all_bytes : block_bytes;
  return std::max(g.batch * (g.in_h + 2 * g.pad_h) * (g.in_w + 2 * g.pad_w) * g.in_channels * element_size +
                      at::get_num_threads() * per_thread,
                  plane_bytes);
}

int64_t direct_workspace_bytes(const ConvGeometry& g, int64_t element_size) {
  // Where the rows (conv_rows.cpp) take a pass, they replace that pass's scratch: the larger of the two
  // counts is an upper bound.
  return std::max(rows_workspace_bytes(g, element_size), kernels_workspace_bytes(g, element_size));
}

at::Tensor direct_conv2d_forward(const ConvGeometry& g, const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, bool prefer_channels_last) {
  if (rows_forward_applies(g)) return rows_forward(g, input.contiguous(), weight, bias);
  const bool blocked = direct_forward_is_blocked(g, input.element_size());
  const bool has_bias = bias.has_value() && bias->defined();
  // The blocked kernel reads a zero-padded channels-last copy of the input (one pass over it) and adds
  // the bias itself.
  if (blocked) return blocked_forward(g, input, weight, nullptr, has_bias ? &*bias : nullptr, prefer_channels_last);
  at::Tensor out = empty_output(g.output_sizes(), input.options());
  const at::Tensor input_nchw = input.contiguous();
  const at::Tensor bias_c = has_bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "direct_conv2d_forward", [&] {
    forward_kernel<scalar_t>(g, input_nchw.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                             has_bias ? bias_c.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

ConvGrads direct_conv2d_backward(const ConvGeometry& g, const at::Tensor& grad_output_any,
                                 const at::Tensor& input_any, const at::Tensor& weight,
                                 std::array<bool, 3> output_mask) {
  // grad_output and input may come channels-last: the zero-padded channels-last copies of the blocked
  // kernels and the stride phases read them as they are (a row copy instead of a transpose), and the
  // blocked input gradient is written channels-last where torch wants it so. The other kernels read NCHW
  // copies, made when first needed.
  at::Tensor grad_output_nchw, input_nchw;
  const auto grad_output = [&]() -> const at::Tensor& {
    if (!grad_output_nchw.defined()) grad_output_nchw = grad_output_any.contiguous();
    return grad_output_nchw;
  };
  const auto input = [&]() -> const at::Tensor& {
    if (!input_nchw.defined()) input_nchw = input_any.contiguous();
    return input_nchw;
  };
  at::Tensor grad_input, grad_weight;
  const int64_t element_size = input_any.element_size();
  if (output_mask[0] && rows_grad_input_applies(g)) {
    grad_input = rows_grad_input(g, grad_output(), weight);
    output_mask[0] = false;
  } else if (output_mask[0] && direct_grad_input_is_blocked(g, element_size)) {
    grad_input = blocked_grad_input(g, grad_output_any, weight,
                                    conv2d_memory_format(input_any, weight) == at::MemoryFormat::ChannelsLast);
    output_mask[0] = false;
  } else if (output_mask[0] && direct_grad_input_by_phases(g, element_size)) {
    grad_input = phase_grad_input(g, grad_output_any, weight);
    output_mask[0] = false;
  }
  if (output_mask[1] && rows_grad_weight_applies(g)) {
    grad_weight = rows_grad_weight(g, grad_output(), input());
    output_mask[1] = false;
  } else if (output_mask[1] && direct_uses_blocked_kernel(g, element_size)) {
    grad_weight = blocked_grad_weight(g, grad_output(), input_any);
    output_mask[1] = false;
  }
  AT_DISPATCH_FLOATING_TYPES(input_any.scalar_type(), "direct_conv2d_backward", [&] {
    // Where the weight gradient runs on NCHW planes, so does the input gradient (its rows are too wide
    // for narrow rows): both in one pass when both are asked for, unless the input gradient reads the
    // output gradient in place (see depthwise_nchw_grad_input_weight_applies).
    if (output_mask[0] && output_mask[1] && depthwise_nchw_grad_input_weight_applies(g, element_size)) {
      grad_input = empty_output(input_any.sizes(), input_any.options());
      grad_weight = at::empty(weight.sizes(), weight.options());
      depthwise_nchw_grad_input_weight_kernel<scalar_t>(
          g, grad_output().const_data_ptr<scalar_t>(), input().const_data_ptr<scalar_t>(),
          weight.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(),
          grad_weight.mutable_data_ptr<scalar_t>());
      output_mask[0] = output_mask[1] = false;
    }
    if (output_mask[0]) {
      grad_input = empty_output(input_any.sizes(), input_any.options());
      grad_input_kernel<scalar_t>(g, grad_output().const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                  grad_input.mutable_data_ptr<scalar_t>());
    }
    if (output_mask[1]) {
      grad_weight = at::empty(weight.sizes(), weight.options());
      grad_weight_kernel<scalar_t>(g, grad_output().const_data_ptr<scalar_t>(), input().const_data_ptr<scalar_t>(),
                                   grad_weight.mutable_data_ptr<scalar_t>());
    }
  });
  return {grad_input, grad_weight, at::Tensor()};
}

}  // namespace fastconv::cpu
