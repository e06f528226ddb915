// Direct convolution of one-dimensional layers (a height of 1: conv1d after its reshape), computed along
// the rows of their (N, C, L) tensors, which are contiguous: nothing is transposed.
//
// For output t, the (channel ci, tap k) entry of the weight reads input element t*s + k*d - p of row ci.
// At stride 1 that is a contiguous run of the row shifted by k*d - p. At larger strides the input is first
// copied, zero-padded and split into its stride phases (phase r of a padded row holds its elements r,
// r + s, r + 2s, ...): the entry then reads phase r_k = (k*d) mod s from q_k = (k*d) div s on, again a
// contiguous run.
//
// Forward: a work item is an image's piece of nr outputs; the runs of all entries for it are packed into a
// panel (entries x nr, zeros where a run leaves its row), which every block of mr output channels
// multiplies with its packed weights (the GEMM micro-kernel), straight into the output rows. The bias is
// one more entry, whose run is all ones. The stride-1 input gradient is the same kernel on the output
// gradient with the weights transposed and flipped.
//
// Weight gradient (on the phase copy, at any stride): dW[co][ci][k] = sum over images n and outputs t of
// dY[n][co][t] * P[n][ci][r_k][t + q_k], dot products of output-gradient rows with the entries' runs
// (dot_rows: 4 output channels x 6 entries per call on AVX-512). Threads own blocks of output channels;
// each weight is summed over the slices (groups of images, or pieces of long rows) in their order, so the
// result does not depend on the thread count.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <utility>
#include <vector>

#include "cpu/conv_kernels.h"
#include "cpu/fresh_output.h"
#include "cpu/gemm.h"

namespace fastconv::cpu {
namespace {

// Outputs per row that one dot_rows call sums before closing its sums over the lanes (a slice): long
// enough that closing costs little, short enough that a slice of the input stays in L2.
constexpr int64_t kSliceOutputs = 1024;
// Bytes of input phase rows, and of output-gradient rows, that one pass keeps in L2.
constexpr int64_t kPassBytes = 512 << 10;

// Elements per phase row of the copy: every entry's run, out_w long from its shift q_k, fits.
int64_t phase_row_length(const ConvGeometry& g) { return g.out_w + (g.kernel_w - 1) * g.dil_w / g.stride_w; }

// Elements after the last phase row: the forward's panels copy whole pieces of nr outputs past the end of a
// row (into the next one, or into this slack), for outputs past out_w that are never stored.
constexpr int64_t kPhaseSlack = 64;

int64_t phase_copy_elements(const ConvGeometry& g) {
  return g.batch * g.in_channels * g.stride_w * phase_row_length(g) + kPhaseSlack;
}

// Offsets of a group's (channel, tap) entries, in the weight's order, from the group's first phase row.
std::vector<int64_t> entry_offsets(const ConvGeometry& g) {
  const int64_t s = g.stride_w, taps = g.kernel_w, length = phase_row_length(g);
  std::vector<int64_t> offsets(g.in_channels_per_group() * taps);
  for (int64_t ci = 0; ci < g.in_channels_per_group(); ++ci)
    for (int64_t k = 0; k < taps; ++k) offsets[ci * taps + k] = (ci * s + k * g.dil_w % s) * length + k * g.dil_w / s;
  return offsets;
}

template <typename scalar_t>
void copy_phase_rows(const ConvGeometry& g, const scalar_t* in, scalar_t* out) {
  const int64_t s = g.stride_w, length = phase_row_length(g);
  at::parallel_for(0, g.batch * g.in_channels, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      const scalar_t* src = in + row * g.in_w;
      for (int64_t r = 0; r < s; ++r) {
        scalar_t* dst = out + (row * s + r) * length;
        // Element u of phase r is padded element u*s + r, input element u*s + r - pad: inside [u0, u1).
        const int64_t u0 = std::min(length, std::max<int64_t>(0, (g.pad_w - r + s - 1) / s));
        const int64_t u1 = std::max(u0, std::min(length, (g.in_w + g.pad_w - r + s - 1) / s));
        std::fill(dst, dst + u0, scalar_t(0));
        if (s == 1) {
          std::memcpy(dst + u0, src + u0 - g.pad_w, (u1 - u0) * sizeof(scalar_t));
        } else {
          for (int64_t u = u0; u < u1; ++u) dst[u] = src[u * s + r - g.pad_w];
        }
        std::fill(dst + u1, dst + length, scalar_t(0));
      }
    }
  });
}

template <typename scalar_t>
void rows_grad_weight_kernel(const ConvGeometry& g, const scalar_t* go, const scalar_t* phases, scalar_t* gw) {
  const MicroKernels<scalar_t>& mk = micro_kernels<scalar_t>();
  const int64_t tile_rows = mk.dot_rows_max, tile_entries = mk.dot_cols_max;
  const int64_t s = g.stride_w, taps = g.kernel_w, length = phase_row_length(g), out_len = g.out_w;
  const int64_t cin_g = g.in_channels_per_group(), cout_g = g.out_channels_per_group();
  const int64_t entries = cin_g * taps;  // a group's weight columns
  // The entries in the order of their runs: by channel, then phase, then shift (the weight's order when
  // the stride is 1), so that a call's entries share few phase rows (the 80 taps of a stride-16 layer
  // fall on 16 rows, 5 entries per row). The sums then go to a scratch copy of dW in that order.
  const std::vector<int64_t> weight_order_offset = entry_offsets(g);
  std::vector<int64_t> order(entries), entry_offset(entries);
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return std::make_pair(a / taps, a % taps * g.dil_w % s) < std::make_pair(b / taps, b % taps * g.dil_w % s);
  });
  for (int64_t e = 0; e < entries; ++e) entry_offset[e] = weight_order_offset[order[e]];
  const bool reordered = !std::is_sorted(order.begin(), order.end());
  std::vector<scalar_t> scratch(reordered ? g.out_channels * entries : 0);
  scalar_t* sums = reordered ? scratch.data() : gw;

  // Slices: whole rows of several images when rows are short, else kSliceOutputs of one image's row.
  const int64_t slice_len = std::min(out_len, kSliceOutputs);
  const int64_t slice_images = std::clamp<int64_t>(kSliceOutputs / out_len, 1, g.batch);
  const int64_t slice_bytes = slice_images * slice_len * int64_t(sizeof(scalar_t));  // of one row
  // A pass: the output-gradient rows of up to pass_tiles tiles against the phase rows of up to
  // pass_channels input channels, each kept within kPassBytes.
  const int64_t pass_channels = std::clamp<int64_t>(kPassBytes / (s * slice_bytes), 1, cin_g);
  const int64_t pass_tiles = std::max<int64_t>(1, kPassBytes / (tile_rows * slice_bytes));
  const int64_t tiles_per_group = (cout_g + tile_rows - 1) / tile_rows;
  const int64_t image_in = g.in_channels * s * length, image_out = g.out_channels * out_len;

  at::parallel_for(0, g.groups * tiles_per_group, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t n0 = 0; n0 < g.batch; n0 += slice_images) {
      const int64_t images = std::min(slice_images, g.batch - n0);
      for (int64_t t0 = 0; t0 < out_len; t0 += slice_len) {
        const int64_t len = std::min(slice_len, out_len - t0);
        const bool accumulate = n0 > 0 || t0 > 0;
        for (int64_t p0 = b0; p0 < b1; p0 += pass_tiles) {
          const int64_t p1 = std::min(b1, p0 + pass_tiles);
          for (int64_t c0 = 0; c0 < cin_g; c0 += pass_channels) {
            const int64_t e0 = c0 * taps, e1 = std::min(cin_g, c0 + pass_channels) * taps;
            for (int64_t b = p0; b < p1; ++b) {
              const int64_t grp = b / tiles_per_group, co = (b % tiles_per_group) * tile_rows;
              const scalar_t* dy = go + n0 * image_out + (grp * cout_g + co) * out_len + t0;
              const scalar_t* x = phases + n0 * image_in + grp * cin_g * s * length + t0;
              scalar_t* c = sums + (grp * cout_g + co) * entries;
              for (int64_t e = e0; e < e1; e += tile_entries)
                mk.dot_rows(len, images, dy, out_len, image_out, std::min(tile_rows, cout_g - co), x,
                            entry_offset.data() + e, image_in, std::min(tile_entries, e1 - e), c + e, entries,
                            accumulate);
            }
          }
        }
      }
    }
  });
  if (reordered)
    for (int64_t o = 0; o < g.out_channels; ++o)
      for (int64_t e = 0; e < entries; ++e) gw[o * entries + order[e]] = sums[o * entries + e];
}


// Entries per packed panel of the forward: a panel of 64 outputs then takes 64 KiB (floats), in L2 while
// every channel block reads it.
constexpr int64_t kPanelEntries = 256;

// The forward of a one-group layer on src: its input at stride 1, else the input's phase copy. The weight
// of output channel o, input channel c and tap k is weight[o * o_stride + c * c_stride + (flip ? taps - 1 -
// k : k)]: the layer's own weight, or, for the input gradient, its transpose, flipped. The panel is the
// packed B of the GEMM micro-kernel: aligned, where the runs read in place would split most vector loads
// across cache lines (their shifts).
template <typename scalar_t>
void rows_forward_kernel(const ConvGeometry& g, const scalar_t* src, const scalar_t* weight, int64_t o_stride,
                         int64_t c_stride, bool flip, const scalar_t* bias, scalar_t* out) {
  const MicroKernels<scalar_t>& mk = micro_kernels_for_width<scalar_t>(g.out_w);
  const int64_t mr = mk.mr, nr = mk.nr, taps = g.kernel_w, out_len = g.out_w;
  // The bias, where given, is one more entry (the first), whose run is all ones: the sums start from it.
  const int64_t first = bias ? 1 : 0, entries = first + g.in_channels * taps;
  const int64_t blocks = (g.out_channels + mr - 1) / mr;
  // Where each entry's run starts, from the image's first row: at stride 1 in the input itself (src),
  // whose row ends the packing handles (zeros outside the row: shift is where the run starts in it, for
  // the first output); at larger strides in the phase copy (src), padded, so every run lies inside.
  const bool in_place = g.stride_w == 1;
  std::vector<int64_t> offsets(entries, 0), shift(entries, 0);  // entry 0 of a bias: never read
  if (in_place) {
    for (int64_t c = 0; c < g.in_channels; ++c)
      for (int64_t k = 0; k < taps; ++k) {
        shift[first + c * taps + k] = k * g.dil_w - g.pad_w;
        offsets[first + c * taps + k] = c * g.in_w + k * g.dil_w - g.pad_w;
      }
  } else {
    const std::vector<int64_t> phase_offsets = entry_offsets(g);
    std::copy(phase_offsets.begin(), phase_offsets.end(), offsets.begin() + first);
  }
  // Weights packed by block of mr output channels, mr values per entry (zeros past the last channel).
  std::vector<scalar_t> packed(blocks * entries * mr, scalar_t(0));
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t i = 0; i < std::min(mr, g.out_channels - b * mr); ++i) {
        const scalar_t* w = weight + (b * mr + i) * o_stride;
        scalar_t* dst = packed.data() + b * entries * mr + i;
        if (bias) dst[0] = bias[b * mr + i];
        for (int64_t c = 0; c < g.in_channels; ++c)
          for (int64_t k = 0; k < taps; ++k)
            dst[(first + c * taps + k) * mr] = w[c * c_stride + (flip ? taps - 1 - k : k)];
      }
  });
  const int64_t pieces = (out_len + nr - 1) / nr;  // of nr outputs per row
  const int64_t image_in = g.in_channels * (in_place ? g.in_w : g.stride_w * phase_row_length(g));
  const int64_t image_out = g.out_channels * out_len;
  const int64_t panel_entries = std::min(entries, kPanelEntries);
  at::parallel_for(0, g.batch * pieces, 1, [&](int64_t w0, int64_t w1) {
    const int64_t align = 64 / sizeof(scalar_t);
    // The panel, and the tiles of a partial piece or channel block, summed here and then copied out.
    std::unique_ptr<scalar_t[]> buf(new scalar_t[panel_entries * nr + blocks * mr * nr + 2 * align]);
    scalar_t* panel = align_64(buf.get());
    scalar_t* edge = align_64(panel + panel_entries * nr);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t n = w / pieces, t0 = (w % pieces) * nr, cols = std::min(nr, out_len - t0);
      const scalar_t* x = src + n * image_in + t0;
      scalar_t* piece_out = out + n * image_out + t0;
      for (int64_t e0 = 0; e0 < entries; e0 += panel_entries) {
        const int64_t kc = std::min(panel_entries, entries - e0);
        for (int64_t e = 0; e < kc; ++e) {
          scalar_t* dst = panel + e * nr;
          const scalar_t* run = x + offsets[e0 + e];
          const int64_t at = t0 + shift[e0 + e];  // in place: the run's first element in its row
          if (e0 + e < first) {
            std::fill(dst, dst + nr, scalar_t(1));
          } else if (!in_place || (at >= 0 && at + nr <= g.in_w)) {
            mk.pack_b(1, nr, run, 0, 1, dst);
          } else {  // a run past either end of its row: zeros there
            const int64_t lo = std::clamp<int64_t>(-at, 0, nr), hi = std::clamp<int64_t>(g.in_w - at, lo, nr);
            std::fill(dst, dst + lo, scalar_t(0));
            std::copy(run + lo, run + hi, dst + lo);
            std::fill(dst + hi, dst + nr, scalar_t(0));
          }
        }
        for (int64_t b = 0; b < blocks; ++b) {
          const bool full = cols == nr && (b + 1) * mr <= g.out_channels;
          mk.micro(kc, packed.data() + (b * entries + e0) * mr, panel,
                   full ? piece_out + b * mr * out_len : edge + b * mr * nr, full ? out_len : nr, e0 > 0);
        }
      }
      for (int64_t b = 0; b < blocks; ++b) {
        if (cols == nr && (b + 1) * mr <= g.out_channels) continue;
        for (int64_t i = 0; i < std::min(mr, g.out_channels - b * mr); ++i)
          std::copy(edge + (b * mr + i) * nr, edge + (b * mr + i) * nr + cols, piece_out + (b * mr + i) * out_len);
      }
    }
  });
}

// The phase copy of an (N, C, L) tensor for geometry g.
at::Tensor phase_copy(const ConvGeometry& g, const at::Tensor& input) {
  at::Tensor phases = at::empty({phase_copy_elements(g)}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "phase_copy", [&] {
    scalar_t* p = phases.mutable_data_ptr<scalar_t>();
    copy_phase_rows<scalar_t>(g, input.const_data_ptr<scalar_t>(), p);
    std::fill(p + phases.numel() - kPhaseSlack, p + phases.numel(), scalar_t(0));
  });
  return phases;
}

// A height of 1 throughout, a stride within the kernel's span (the phase copy is then about the size of
// the padded input) and a padding in proportion with the row.
bool rows_geometry(const ConvGeometry& g) {
  return g.in_h == 1 && g.kernel_h == 1 && g.pad_h == 0 && g.out_h == 1 && g.pad_w >= 0 &&
         g.stride_w <= (g.kernel_w - 1) * g.dil_w + 1 && double(g.pad_w) <= 2.0 * double(g.in_w) + 32768.0;
}

int64_t phase_copy_bytes(const ConvGeometry& g, int64_t element_size) { return phase_copy_elements(g) * element_size; }

// The packed weights and, per thread, the panel and the partial tiles of rows_forward_kernel.
int64_t rows_forward_scratch_bytes(const ConvGeometry& g, int64_t element_size) {
  const int64_t mr = element_size == 4 ? micro_kernels_for_width<float>(g.out_w).mr : micro_kernels_for_width<double>(g.out_w).mr;
  const int64_t nr = element_size == 4 ? micro_kernels_for_width<float>(g.out_w).nr : micro_kernels_for_width<double>(g.out_w).nr;
  const int64_t entries = 1 + g.in_channels * g.kernel_w, rows = (g.out_channels + mr - 1) / mr * mr;
  return (rows * entries + at::get_num_threads() * (std::min(entries, kPanelEntries) + rows) * nr) * element_size;
}

}  // namespace

// Where the rows beat the blocked kernels on channels-last copies (conv_direct.cpp; 2 threads, batch 1 and
// 8). Those transpose their input and output, and with a horizontal dilation restart their sums at every
// tap (their kernel rows are no longer contiguous in a pixel row); the rows pay for every entry a packed
// run (forward, input gradient) or a row pass (weight gradient).
// - forward, up to 16 input channels: the blocked kernel's sums per output are too short for its
//   transposes (2 -> 32 channels, 7 taps, 4000 long, batch 8: 0.24 -> 0.17 ms; 8 -> 64: 0.89 -> 0.51 ms;
//   M5's 1-channel k80/16 front end: 0.83 -> 0.60 ms); dilated, up to 256 entries (input channels x taps:
//   WaveNet's 64-channel k2 dilation 16: 2.4 -> 1.9-2.1 ms at batch 8, 0.28 -> 0.22 ms at batch 1). Dense
//   layers of 64 and more channels are as fast or faster blocked (TCN's 128: 2.6 against 2.6 ms, the text
//   CNN's 300 x 5: 4.6 against 4.3, wav2vec2's 512-channel k3/2: 78 against 69).
// - input gradient (stride 1), up to 256 entries (output channels x taps): WaveNet's at batch 8 3.2 ->
//   2.1 ms, undilated 2.5 -> 2.1 ms, batch 1 0.30 -> 0.22-0.24 ms; from 320 entries blocked (64 -> 32
//   channels, 5 taps: 1.24 against 1.46 ms).
// - weight gradient, dilated or up to 32 entries (input channels x taps): the blocked kernel also
//   transposes the whole output gradient, which few entries per output do not repay (WaveNet's at batch 8:
//   3.2 -> 2.3 ms; TCN's k3 dilation 4: 3.2 -> 2.95 ms; wav2vec2's 1-channel k10/5 front end: 2.4 ->
//   1.75-1.95 ms); M5's 80 and dense layers' hundreds of entries stay blocked (M5: 0.6 against 0.85 ms).
constexpr int64_t kRowsForwardMaxChannels = 16;
constexpr int64_t kRowsMaxEntries = 256;
constexpr int64_t kRowsGradWeightMaxEntries = 32;

bool rows_forward_applies(const ConvGeometry& g) {
  return g.groups == 1 && rows_geometry(g) &&
         (g.in_channels <= kRowsForwardMaxChannels || (g.dil_w > 1 && g.in_channels * g.kernel_w <= kRowsMaxEntries));
}

bool rows_grad_input_applies(const ConvGeometry& g) {
  return g.groups == 1 && g.stride_w == 1 && rows_geometry(g) && rows_geometry(transposed_geometry(g)) &&
         g.out_channels * g.kernel_w <= kRowsMaxEntries;
}

bool rows_grad_weight_applies(const ConvGeometry& g) {
  return rows_geometry(g) && (g.dil_w > 1 || g.in_channels_per_group() * g.kernel_w <= kRowsGradWeightMaxEntries);
}

int64_t rows_workspace_bytes(const ConvGeometry& g, int64_t element_size) {
  int64_t most = 0;
  if (rows_forward_applies(g))
    most = (g.stride_w > 1 ? phase_copy_bytes(g, element_size) : 0) + rows_forward_scratch_bytes(g, element_size);
  if (rows_grad_input_applies(g))
    most = std::max(most, rows_forward_scratch_bytes(transposed_geometry(g), element_size));
  if (rows_grad_weight_applies(g))  // the copy, and the sums in run order where it differs from the weight's
    most = std::max(most, phase_copy_bytes(g, element_size) +
                              g.out_channels * g.in_channels_per_group() * g.kernel_w * element_size);
  return most;
}

at::Tensor rows_forward(const ConvGeometry& g, const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias) {
  const at::Tensor src = g.stride_w == 1 ? input : phase_copy(g, input);
  at::Tensor out = empty_output(g.output_sizes(), input.options());
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rows_forward", [&] {
    rows_forward_kernel<scalar_t>(g, src.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                  g.in_channels * g.kernel_w, g.kernel_w, /*flip=*/false,
                                  has_bias ? b.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor rows_grad_input(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& weight) {
  const ConvGeometry t = transposed_geometry(g);  // stride 1: the output gradient read in place
  at::Tensor grad_input = empty_output(t.output_sizes(), grad_output.options());
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "rows_grad_input", [&] {
    rows_forward_kernel<scalar_t>(t, grad_output.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                  g.kernel_w, g.in_channels * g.kernel_w, /*flip=*/true, nullptr,
                                  grad_input.mutable_data_ptr<scalar_t>());
  });
  return grad_input;
}

at::Tensor rows_grad_weight(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& input) {
  const at::Tensor phases = phase_copy(g, input);
  at::Tensor grad_weight = at::empty({g.out_channels, g.in_channels_per_group(), 1, g.kernel_w}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rows_grad_weight", [&] {
    rows_grad_weight_kernel<scalar_t>(g, grad_output.const_data_ptr<scalar_t>(), phases.const_data_ptr<scalar_t>(),
                                      grad_weight.mutable_data_ptr<scalar_t>());
  });
  return grad_weight;
}

}  // namespace fastconv::cpu
