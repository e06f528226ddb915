// Direct convolution on CPU: computed straight from the input, with no column buffer.
//
// Forward, dense and wide grouped layers: a register-blocked kernel vectorised over output channels.
// Weights are packed once into blocks of NR output channels; each tile of MR consecutive output pixels
// of one row times NR channels is accumulated in vector registers over (input channel, tap), reading
// the input pixels in place through a table of per-tap offsets. Tiles that touch the padding read
// through a small zero-filled copy instead.
//
// Forward for depthwise and narrow groups, and the backward pass: each output plane (image, output
// channel) is owned by one thread, which adds every input channel's contribution tap by tap; the
// innermost loop runs along an output row, with edge handling hoisted out (valid_output_range), so it
// vectorises. In the backward pass an input-gradient plane or a weight tap is owned by one thread and
// summed in a fixed order, so it is deterministic.
#include <ATen/Parallel.h>
#include <ATen/AccumulateType.h>

#include <algorithm>

#include "cpu/conv_kernels.h"
#include "cpu/gemm.h"

namespace fastconv::cpu {
namespace {

// out_plane (out_h x out_w) += w * input plane shifted by tap (ki, kj).
template <typename scalar_t>
inline void add_tap(const ConvGeometry& g, const scalar_t* in_plane, scalar_t w, int64_t ki, int64_t kj,
                    scalar_t* out_plane) {
  const OutputRange oh_ok = valid_output_range(g.out_h, g.in_h, g.stride_h, g.pad_h, ki * g.dil_h);
  const OutputRange ow_ok = valid_output_range(g.out_w, g.in_w, g.stride_w, g.pad_w, kj * g.dil_w);
  for (int64_t oh = oh_ok.lo; oh < oh_ok.hi; ++oh) {
    const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dil_h;
    const scalar_t* src = in_plane + ih * g.in_w - g.pad_w + kj * g.dil_w;
    scalar_t* dst = out_plane + oh * g.out_w;
    if (g.stride_w == 1) {
      for (int64_t ow = ow_ok.lo; ow < ow_ok.hi; ++ow) dst[ow] += w * src[ow];
    } else {
      for (int64_t ow = ow_ok.lo; ow < ow_ok.hi; ++ow) dst[ow] += w * src[ow * g.stride_w];
    }
  }
}

// grad_in_plane += w * grad_out_plane scattered back through tap (ki, kj): the transpose of add_tap.
template <typename scalar_t>
inline void add_tap_transposed(const ConvGeometry& g, const scalar_t* go_plane, scalar_t w, int64_t ki, int64_t kj,
                               scalar_t* gi_plane) {
  const OutputRange oh_ok = valid_output_range(g.out_h, g.in_h, g.stride_h, g.pad_h, ki * g.dil_h);
  const OutputRange ow_ok = valid_output_range(g.out_w, g.in_w, g.stride_w, g.pad_w, kj * g.dil_w);
  for (int64_t oh = oh_ok.lo; oh < oh_ok.hi; ++oh) {
    const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dil_h;
    scalar_t* dst = gi_plane + ih * g.in_w - g.pad_w + kj * g.dil_w;
    const scalar_t* src = go_plane + oh * g.out_w;
    if (g.stride_w == 1) {
      for (int64_t ow = ow_ok.lo; ow < ow_ok.hi; ++ow) dst[ow] += w * src[ow];
    } else {
      for (int64_t ow = ow_ok.lo; ow < ow_ok.hi; ++ow) dst[ow * g.stride_w] += w * src[ow];
    }
  }
}

// sum over the output plane of grad_out * input shifted by tap (ki, kj), accumulated in acc_t.
template <typename scalar_t, typename acc_t>
inline acc_t tap_correlation(const ConvGeometry& g, const scalar_t* go_plane, const scalar_t* in_plane, int64_t ki,
                             int64_t kj) {
  const OutputRange oh_ok = valid_output_range(g.out_h, g.in_h, g.stride_h, g.pad_h, ki * g.dil_h);
  const OutputRange ow_ok = valid_output_range(g.out_w, g.in_w, g.stride_w, g.pad_w, kj * g.dil_w);
  acc_t acc = 0;
  for (int64_t oh = oh_ok.lo; oh < oh_ok.hi; ++oh) {
    const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dil_h;
    const scalar_t* src = in_plane + ih * g.in_w - g.pad_w + kj * g.dil_w;
    const scalar_t* dy = go_plane + oh * g.out_w;
    acc_t row = 0;
    if (g.stride_w == 1) {
      for (int64_t ow = ow_ok.lo; ow < ow_ok.hi; ++ow) row += acc_t(dy[ow]) * acc_t(src[ow]);
    } else {
      for (int64_t ow = ow_ok.lo; ow < ow_ok.hi; ++ow) row += acc_t(dy[ow]) * acc_t(src[ow * g.stride_w]);
    }
    acc += row;
  }
  return acc;
}

template <typename scalar_t>
void forward_kernel(const ConvGeometry& g, const scalar_t* in, const scalar_t* w, scalar_t* out) {
  const int64_t cin_g = g.in_channels_per_group(), cout_g = g.out_channels_per_group();
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const int64_t taps = g.kernel_h * g.kernel_w;
  at::parallel_for(0, g.batch * g.out_channels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n = p / g.out_channels, oc = p % g.out_channels, grp = oc / cout_g;
      scalar_t* dst = out + p * out_plane;
      std::fill(dst, dst + out_plane, scalar_t(0));
      for (int64_t ic = 0; ic < cin_g; ++ic) {
        const scalar_t* src = in + (n * g.in_channels + grp * cin_g + ic) * in_plane;
        const scalar_t* wk = w + (oc * cin_g + ic) * taps;
        for (int64_t ki = 0; ki < g.kernel_h; ++ki)
          for (int64_t kj = 0; kj < g.kernel_w; ++kj) add_tap(g, src, wk[ki * g.kernel_w + kj], ki, kj, dst);
      }
    }
  });
}

template <typename scalar_t>
void grad_input_kernel(const ConvGeometry& g, const scalar_t* go, const scalar_t* w, scalar_t* gi) {
  const int64_t cin_g = g.in_channels_per_group(), cout_g = g.out_channels_per_group();
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const int64_t taps = g.kernel_h * g.kernel_w;
  at::parallel_for(0, g.batch * g.in_channels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n = p / g.in_channels, c = p % g.in_channels, grp = c / cin_g, ic = c % cin_g;
      scalar_t* dst = gi + p * in_plane;
      std::fill(dst, dst + in_plane, scalar_t(0));
      for (int64_t j = 0; j < cout_g; ++j) {
        const int64_t oc = grp * cout_g + j;
        const scalar_t* src = go + (n * g.out_channels + oc) * out_plane;
        const scalar_t* wk = w + (oc * cin_g + ic) * taps;
        for (int64_t ki = 0; ki < g.kernel_h; ++ki)
          for (int64_t kj = 0; kj < g.kernel_w; ++kj)
            add_tap_transposed(g, src, wk[ki * g.kernel_w + kj], ki, kj, dst);
      }
    }
  });
}

template <typename scalar_t>
void grad_weight_kernel(const ConvGeometry& g, const scalar_t* go, const scalar_t* in, scalar_t* gw) {
  using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
  const int64_t cin_g = g.in_channels_per_group(), cout_g = g.out_channels_per_group();
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const int64_t taps = g.kernel_h * g.kernel_w;
  at::parallel_for(0, g.out_channels * cin_g, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t oc = p / cin_g, ic = p % cin_g, grp = oc / cout_g;
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t ki = t / g.kernel_w, kj = t % g.kernel_w;
        acc_t acc = 0;
        for (int64_t n = 0; n < g.batch; ++n) {
          const scalar_t* dy = go + (n * g.out_channels + oc) * out_plane;
          const scalar_t* src = in + (n * g.in_channels + grp * cin_g + ic) * in_plane;
          acc += tap_correlation<scalar_t, acc_t>(g, dy, src, ki, kj);
        }
        gw[p * taps + t] = static_cast<scalar_t>(acc);
      }
    }
  });
}

// Register-blocked forward (see the top of the file). `in` is the input in channels-last layout with
// the padding materialised as zeros (N, H + 2 pad_h, W + 2 pad_w, C), so every tap of every output pixel
// reads inside it and one kernel serves borders and interior alike.
template <typename scalar_t>
void blocked_forward_kernel(const ConvGeometry& g, const scalar_t* in, const scalar_t* w, scalar_t* out) {
  const MicroKernels<scalar_t>& mk = micro_kernels<scalar_t>();
  const int64_t mr = mk.mr, nr = mk.nr;
  const int64_t cin_g = g.in_channels_per_group(), cout_g = g.out_channels_per_group();
  const int64_t taps = g.kernel_h * g.kernel_w, k = cin_g * taps;
  const int64_t channels = g.in_channels, padded_w = g.in_w + 2 * g.pad_w;
  const int64_t in_image = (g.in_h + 2 * g.pad_h) * padded_w * channels, out_plane = g.out_h * g.out_w;
  const int64_t blocks = (cout_g + nr - 1) / nr;
  const int64_t tiles = (out_plane + mr - 1) / mr;

  std::vector<int64_t> tap_offsets(taps);
  for (int64_t t = 0; t < taps; ++t)
    tap_offsets[t] = ((t / g.kernel_w) * g.dil_h * padded_w + (t % g.kernel_w) * g.dil_w) * channels;

  // Weights packed as [group][channel block][tap][input channel][nr], zero past the group's last channel.
  std::vector<scalar_t> packed(g.groups * blocks * k * nr + 64 / sizeof(scalar_t), scalar_t(0));
  scalar_t* wp = reinterpret_cast<scalar_t*>((reinterpret_cast<uintptr_t>(packed.data()) + 63) & ~uintptr_t(63));
  at::parallel_for(0, g.groups * blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t grp = b / blocks, first = (b % blocks) * nr, cols = std::min(nr, cout_g - first);
      scalar_t* dst = wp + b * k * nr;
      for (int64_t j = 0; j < cols; ++j) {
        const scalar_t* src = w + (grp * cout_g + first + j) * k;  // (channel, tap) order in the weight tensor
        for (int64_t c = 0; c < cin_g; ++c)
          for (int64_t t = 0; t < taps; ++t) dst[(t * cin_g + c) * nr + j] = src[c * taps + t];
      }
    }
  });

  // One work item: a run of mr consecutive output pixels (row-major over the plane) of one channel
  // block of one image. A short last run repeats its last pixel; the extra results are dropped.
  const int64_t items = g.batch * g.groups * blocks * tiles;
  at::parallel_for(0, items, 1, [&](int64_t r0, int64_t r1) {
    std::vector<scalar_t> tile_buf(mr * nr + 64 / sizeof(scalar_t));
    scalar_t* tile = reinterpret_cast<scalar_t*>((reinterpret_cast<uintptr_t>(tile_buf.data()) + 63) & ~uintptr_t(63));
    int64_t pixel_offsets[64];
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t q0 = (r % tiles) * mr, b = (r / tiles) % (g.groups * blocks), n = r / (tiles * g.groups * blocks);
      const int64_t grp = b / blocks, first = (b % blocks) * nr, cols = std::min(nr, cout_g - first);
      const int64_t pixels = std::min(mr, out_plane - q0);
      for (int64_t i = 0; i < mr; ++i) {
        const int64_t q = q0 + std::min(i, pixels - 1), oh = q / g.out_w, ow = q % g.out_w;
        pixel_offsets[i] = (oh * g.stride_h * padded_w + ow * g.stride_w) * channels;
      }
      mk.micro_conv(taps, cin_g, in + n * in_image + grp * cin_g, pixel_offsets, tap_offsets.data(),
                    wp + b * k * nr, tile, nr);
      // The tile is pixel-major (pixels x channels); the output is channel planes.
      scalar_t* out_block = out + (n * g.out_channels + grp * cout_g + first) * out_plane + q0;
      for (int64_t j = 0; j < cols; ++j)
        for (int64_t i = 0; i < pixels; ++i) out_block[j * out_plane + i] = tile[i * nr + j];
    }
  });
}

}  // namespace

bool direct_uses_blocked_kernel(const ConvGeometry& g, int64_t element_size) {
  // Vectorising over output channels pays once a group has a good fraction of a vector of them.
  const int64_t lanes = element_size == 4 ? 16 : 8;
  return g.out_channels_per_group() >= lanes && g.in_channels_per_group() * g.kernel_h * g.kernel_w >= 8;
}

int64_t direct_workspace_bytes(const ConvGeometry& g, int64_t element_size) {
  if (!direct_uses_blocked_kernel(g, element_size)) return 0;
  // The zero-padded channels-last input copy and the packed weights.
  const int64_t nr = element_size == 4 ? micro_kernels<float>().nr : micro_kernels<double>().nr;
  const int64_t blocks = (g.out_channels_per_group() + nr - 1) / nr;
  return (g.batch * (g.in_h + 2 * g.pad_h) * (g.in_w + 2 * g.pad_w) * g.in_channels +
          g.groups * blocks * g.col_rows() * nr) * element_size;
}

at::Tensor direct_conv2d_forward(const ConvGeometry& g, const at::Tensor& input, const at::Tensor& weight) {
  at::Tensor out = at::empty(g.output_sizes(), input.options());
  const bool blocked = direct_uses_blocked_kernel(g, input.element_size());
  // The blocked kernel reads a zero-padded channels-last copy of the input (one pass over it).
  at::Tensor input_nhwc;
  if (blocked) {
    input_nhwc = at::zeros({g.batch, g.in_h + 2 * g.pad_h, g.in_w + 2 * g.pad_w, g.in_channels}, input.options());
    input_nhwc.narrow(1, g.pad_h, g.in_h).narrow(2, g.pad_w, g.in_w).copy_(input.permute({0, 2, 3, 1}));
  }
  const at::Tensor input_nchw = blocked ? at::Tensor() : input.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "direct_conv2d_forward", [&] {
    if (blocked) {
      blocked_forward_kernel<scalar_t>(g, input_nhwc.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                       out.mutable_data_ptr<scalar_t>());
    } else {
      forward_kernel<scalar_t>(g, input_nchw.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                               out.mutable_data_ptr<scalar_t>());
    }
  });
  return out;
}

ConvGrads direct_conv2d_backward(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& input,
                                 const at::Tensor& weight, std::array<bool, 3> output_mask) {
  at::Tensor grad_input, grad_weight;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "direct_conv2d_backward", [&] {
    if (output_mask[0]) {
      grad_input = at::empty(input.sizes(), input.options());
      grad_input_kernel<scalar_t>(g, grad_output.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                  grad_input.mutable_data_ptr<scalar_t>());
    }
    if (output_mask[1]) {
      grad_weight = at::empty(weight.sizes(), weight.options());
      grad_weight_kernel<scalar_t>(g, grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
                                   grad_weight.mutable_data_ptr<scalar_t>());
    }
  });
  return {grad_input, grad_weight, at::Tensor()};
}

}  // namespace fastconv::cpu
