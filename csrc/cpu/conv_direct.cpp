// Direct convolution on CPU: computed straight from the input, with no column buffer.
//
// Forward, dense and wide grouped layers: a register-blocked kernel vectorised over output channels.
// Weights are packed once into blocks of NR output channels; each tile of MR consecutive output pixels
// of one row times NR channels is accumulated in vector registers over (input channel, tap), reading
// the input pixels in place through a table of per-tap offsets. Tiles that touch the padding read
// through a small zero-filled copy instead.
//
// Backward of those layers: the input gradient (stride 1) is the same blocked forward kernel run on the
// output gradient with flipped, transposed weights; the weight gradient is a GEMM over output pixels
// whose patch operand is packed straight from the zero-padded channels-last input.
//
// Forward and backward for depthwise and narrow groups (and strided input gradients): each output plane (image, output
// channel) is owned by one thread, which adds every input channel's contribution tap by tap; the
// innermost loop runs along an output row, with edge handling hoisted out (valid_output_range), so it
// vectorises. In the backward pass an input-gradient plane or a weight tap is owned by one thread and
// summed in a fixed order, so it is deterministic.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/conv_kernels.h"
#include "common/cpu_features.h"
#include "cpu/gemm.h"

namespace fastconv::cpu {
namespace {

// The plane kernels, once per instruction set.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FASTCONV_ISA_NS planes_avx512
#define FASTCONV_ISA_TARGET \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")))
#include "cpu/conv_planes.inc"
#undef FASTCONV_ISA_NS
#undef FASTCONV_ISA_TARGET
#define FASTCONV_ISA_NS planes_avx2
#define FASTCONV_ISA_TARGET __attribute__((target("avx2,fma")))
#include "cpu/conv_planes.inc"
#undef FASTCONV_ISA_NS
#undef FASTCONV_ISA_TARGET
#define FASTCONV_PLANES_X86 1
#endif
#define FASTCONV_ISA_NS planes_baseline
#define FASTCONV_ISA_TARGET
#include "cpu/conv_planes.inc"
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

// Whether the plane kernels may work on zero-padded input copies: at most 64 taps, and a padding in
// proportion with the plane (a huge one keeps the row kernels, which never materialise it). The forward (planes_*::forward_planes_padded) also
// needs stride 1; the weight gradient (grad_weight_rows_padded) takes any stride.
// The zero-padded plane is at most 4x the plane plus `slack` elements. In doubles: the padded sizes of
// huge paddings (of a transposed geometry too) do not fit int64.
bool padded_plane_in_proportion(const ConvGeometry& g, double slack) {
  const double padded = (double(g.in_h) + 2.0 * double(g.pad_h)) * (double(g.in_w) + 2.0 * double(g.pad_w));
  return padded <= 4.0 * double(g.in_h) * double(g.in_w) + slack;
}

bool padding_in_proportion(const ConvGeometry& g) {
  return g.kernel_h * g.kernel_w <= 64 && padded_plane_in_proportion(g, 4096.0);
}

bool plane_forward_uses_padding(const ConvGeometry& g) {
  return g.stride_h == 1 && g.stride_w == 1 && padding_in_proportion(g);
}

// Elements of one thread's scratch in forward_planes_padded: the group's padded input planes and one
// output grid.
int64_t plane_scratch_elements(const ConvGeometry& g) {
  return g.in_channels_per_group() * planes_baseline::padded_plane_elements(g) + g.out_h * (g.in_w + 2 * g.pad_w) +
         planes_baseline::kPaddedChunk;
}

// Elements of one thread's scratch in grad_weight_rows_padded: a padded input plane and one gathered window.
int64_t weight_grad_scratch_elements(const ConvGeometry& g) {
  return planes_baseline::padded_plane_elements(g) + g.out_h * g.out_w;
}

template <typename scalar_t>
void forward_kernel(const ConvGeometry& g, const scalar_t* in, const scalar_t* w, scalar_t* out) {
  if (plane_forward_uses_padding(g)) {
    const int64_t scratch_size = plane_scratch_elements(g);
    at::parallel_for(0, g.batch * g.out_channels, 1, [&](int64_t p0, int64_t p1) {
      std::vector<scalar_t> scratch(scratch_size);
      FASTCONV_CALL_PLANES(forward_planes_padded<scalar_t>(g, in, w, out, p0, p1, scratch.data()));
    });
    return;
  }
  at::parallel_for(0, g.batch * g.out_channels, 1, [&](int64_t p0, int64_t p1) {
    FASTCONV_CALL_PLANES(forward_planes<scalar_t>(g, in, w, out, p0, p1));
  });
}

template <typename scalar_t>
void grad_input_kernel(const ConvGeometry& g, const scalar_t* go, const scalar_t* w, scalar_t* gi) {
  at::parallel_for(0, g.batch * g.in_channels, 1, [&](int64_t p0, int64_t p1) {
    FASTCONV_CALL_PLANES(grad_input_planes<scalar_t>(g, go, w, gi, p0, p1));
  });
}

template <typename scalar_t>
void grad_weight_kernel(const ConvGeometry& g, const scalar_t* go, const scalar_t* in, scalar_t* gw) {
  if (padding_in_proportion(g)) {
    const int64_t scratch_size = weight_grad_scratch_elements(g);
    at::parallel_for(0, g.out_channels * g.in_channels_per_group(), 1, [&](int64_t p0, int64_t p1) {
      std::vector<scalar_t> scratch(scratch_size);
      FASTCONV_CALL_PLANES(grad_weight_rows_padded<scalar_t>(g, go, in, gw, p0, p1, scratch.data()));
    });
    return;
  }
  at::parallel_for(0, g.out_channels * g.in_channels_per_group(), 1, [&](int64_t p0, int64_t p1) {
    FASTCONV_CALL_PLANES(grad_weight_rows<scalar_t>(g, go, in, gw, p0, p1));
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

// The zero-padded channels-last copy of an NCHW (or any-layout) input that the blocked kernels read.
at::Tensor padded_channels_last(const at::Tensor& input, int64_t pad_h, int64_t pad_w) {
  const int64_t n = input.size(0), c = input.size(1), h = input.size(2), w = input.size(3);
  at::Tensor padded = (pad_h || pad_w) ? at::zeros({n, h + 2 * pad_h, w + 2 * pad_w, c}, input.options())
                                       : at::empty({n, h, w, c}, input.options());
  padded.narrow(1, pad_h, h).narrow(2, pad_w, w).copy_(input.permute({0, 2, 3, 1}));
  return padded;
}

at::Tensor blocked_forward(const ConvGeometry& g, const at::Tensor& input, const at::Tensor& weight) {
  at::Tensor out = at::empty(g.output_sizes(), input.options());
  const at::Tensor padded = padded_channels_last(input, g.pad_h, g.pad_w);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "blocked_conv2d_forward", [&] {
    blocked_forward_kernel<scalar_t>(g, padded.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                     out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

// B operand of the weight gradient as a GEMM over output pixels: row p = output pixel, column
// j = (tap, input channel) of the group, read from the zero-padded channels-last input, where the
// channels of one tap are contiguous.
template <typename T>
struct PatchRows final : BPacker<T> {
  const ConvGeometry& g;
  const T* image;  // one padded channels-last image, offset to the group's first channel
  std::vector<int64_t> tap_offsets;
  PatchRows(const ConvGeometry& geometry, const T* padded_image) : g(geometry), image(padded_image) {
    const int64_t padded_w = g.in_w + 2 * g.pad_w;
    for (int64_t t = 0; t < g.kernel_h * g.kernel_w; ++t)
      tap_offsets.push_back(((t / g.kernel_w) * g.dil_h * padded_w + (t % g.kernel_w) * g.dil_w) * g.in_channels);
  }
  void pack(int64_t p0, int64_t kc, int64_t j0, int64_t cols, int64_t nr, T* out) const override {
    const int64_t cin_g = g.in_channels_per_group(), padded_w = g.in_w + 2 * g.pad_w;
    for (int64_t r = 0; r < kc; ++r) {
      const int64_t q = p0 + r, oh = q / g.out_w, ow = q % g.out_w;
      const T* pixel = image + (oh * g.stride_h * padded_w + ow * g.stride_w) * g.in_channels;
      T* dst = out + r * nr;
      for (int64_t j = 0; j < cols;) {
        const int64_t t = (j0 + j) / cin_g, c = (j0 + j) % cin_g, run = std::min(cols - j, cin_g - c);
        std::memcpy(dst + j, pixel + tap_offsets[t] + c, run * sizeof(T));
        j += run;
      }
      std::fill(dst + cols, dst + nr, T(0));
    }
  }
};

// dW[grp] (cout_g x (tap, cin_g)) = sum over images of dY[n, grp] (cout_g x pixels) x patches (pixels x ...).
at::Tensor blocked_grad_weight(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& input) {
  const at::Tensor padded = padded_channels_last(input, g.pad_h, g.pad_w);
  const int64_t cin_g = g.in_channels_per_group(), cout_g = g.out_channels_per_group();
  const int64_t taps = g.kernel_h * g.kernel_w, out_plane = g.out_h * g.out_w;
  const int64_t padded_image = (g.in_h + 2 * g.pad_h) * (g.in_w + 2 * g.pad_w) * g.in_channels;
  at::Tensor grad_tap_major = at::empty({g.groups, cout_g, taps, cin_g}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "blocked_grad_weight", [&] {
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* in = padded.const_data_ptr<scalar_t>();
    scalar_t* gw = grad_tap_major.mutable_data_ptr<scalar_t>();
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      for (int64_t n = 0; n < g.batch; ++n) {  // images summed in order: deterministic
        const PatchRows<scalar_t> patches(g, in + n * padded_image + grp * cin_g);
        gemm_packed_b<scalar_t>(cout_g, taps * cin_g, out_plane,
                                go + (n * g.out_channels + grp * cout_g) * out_plane, out_plane, 1, patches,
                                gw + grp * cout_g * taps * cin_g, taps * cin_g, /*accumulate=*/n > 0);
      }
    }
  });
  // (group, out, tap, in) -> the weight's (out, in, kh, kw).
  return grad_tap_major.permute({0, 1, 3, 2}).reshape({g.out_channels, cin_g, g.kernel_h, g.kernel_w}).contiguous();
}

// For stride 1 the input gradient is itself a convolution: dY, padded by dil * (k - 1) - pad, with the
// weights flipped in space and transposed between input and output channels.
ConvGeometry transposed_geometry(const ConvGeometry& g) {
  ConvGeometry t = g;
  t.in_channels = g.out_channels;
  t.out_channels = g.in_channels;
  t.in_h = g.out_h;
  t.in_w = g.out_w;
  t.out_h = g.in_h;
  t.out_w = g.in_w;
  t.pad_h = g.dil_h * (g.kernel_h - 1) - g.pad_h;
  t.pad_w = g.dil_w * (g.kernel_w - 1) - g.pad_w;
  return t;
}

// The weights of the transposed convolution: flipped in space, input and output channels swapped.
at::Tensor flipped_transposed_weight(const ConvGeometry& g, const at::Tensor& weight) {
  const int64_t cin_g = g.in_channels_per_group(), cout_g = g.out_channels_per_group();
  return weight.view({g.groups, cout_g, cin_g, g.kernel_h, g.kernel_w})
      .transpose(1, 2)
      .flip({3, 4})
      .reshape({g.in_channels, cout_g, g.kernel_h, g.kernel_w})
      .contiguous();
}

at::Tensor blocked_grad_input(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& weight) {
  return blocked_forward(transposed_geometry(g), grad_output, flipped_transposed_weight(g, weight));
}

// Depthwise and narrow groups at stride 1: the input gradient through the plane forward kernel on the
// transposed geometry (its padded-grid path) instead of scattering tap by tap.
bool plane_grad_input_as_forward(const ConvGeometry& g) {
  if (g.stride_h != 1 || g.stride_w != 1) return false;
  const ConvGeometry t = transposed_geometry(g);
  return t.pad_h >= 0 && t.pad_w >= 0 && plane_forward_uses_padding(t);
}

at::Tensor plane_grad_input(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& weight) {
  const ConvGeometry t = transposed_geometry(g);
  const at::Tensor flipped = flipped_transposed_weight(g, weight);
  at::Tensor grad_input = at::empty(t.output_sizes(), grad_output.options());
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "plane_grad_input", [&] {
    forward_kernel<scalar_t>(t, grad_output.const_data_ptr<scalar_t>(), flipped.const_data_ptr<scalar_t>(),
                             grad_input.mutable_data_ptr<scalar_t>());
  });
  return grad_input;
}

}  // namespace

bool direct_grad_input_is_blocked(const ConvGeometry& g, int64_t element_size) {
  if (g.stride_h != 1 || g.stride_w != 1) return false;
  const ConvGeometry t = transposed_geometry(g);
  return t.pad_h >= 0 && t.pad_w >= 0 && direct_uses_blocked_kernel(t, element_size);
}

bool direct_uses_blocked_kernel(const ConvGeometry& g, int64_t element_size) {
  // The blocked kernel materialises the zero padding; a padding out of proportion with the input (up
  // to 2**62, which torch accepts) goes to the plane kernels instead.
  if (!padded_plane_in_proportion(g, 65536.0)) return false;
  // Vectorising over output channels pays once a group has a good fraction of a vector of them.
  const int64_t lanes = element_size == 4 ? 16 : 8;
  return g.out_channels_per_group() >= lanes && g.in_channels_per_group() * g.kernel_h * g.kernel_w >= 8;
}

int64_t direct_workspace_bytes(const ConvGeometry& g, int64_t element_size) {
  if (!direct_uses_blocked_kernel(g, element_size)) {
    // The plane kernels' padded copies: one scratch per thread (forward, or the input gradient run as
    // a forward on the transposed geometry).
    int64_t most = plane_forward_uses_padding(g) ? plane_scratch_elements(g) : 0;
    if (padding_in_proportion(g)) most = std::max(most, weight_grad_scratch_elements(g));
    if (plane_grad_input_as_forward(g)) most = std::max(most, plane_scratch_elements(transposed_geometry(g)));
    return most * element_size * at::get_num_threads();
  }
  // The zero-padded channels-last input copy and the packed weights.
  const int64_t nr = element_size == 4 ? micro_kernels<float>().nr : micro_kernels<double>().nr;
  const int64_t blocks = (g.out_channels_per_group() + nr - 1) / nr;
  return (g.batch * (g.in_h + 2 * g.pad_h) * (g.in_w + 2 * g.pad_w) * g.in_channels +
          g.groups * blocks * g.col_rows() * nr) * element_size;
}

at::Tensor direct_conv2d_forward(const ConvGeometry& g, const at::Tensor& input, const at::Tensor& weight) {
  const bool blocked = direct_uses_blocked_kernel(g, input.element_size());
  // The blocked kernel reads a zero-padded channels-last copy of the input (one pass over it).
  if (blocked) return blocked_forward(g, input, weight);
  at::Tensor out = at::empty(g.output_sizes(), input.options());
  const at::Tensor input_nchw = input.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "direct_conv2d_forward", [&] {
    forward_kernel<scalar_t>(g, input_nchw.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                             out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

ConvGrads direct_conv2d_backward(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& input,
                                 const at::Tensor& weight, std::array<bool, 3> output_mask) {
  at::Tensor grad_input, grad_weight;
  const int64_t element_size = input.element_size();
  if (output_mask[0] && direct_grad_input_is_blocked(g, element_size)) {
    grad_input = blocked_grad_input(g, grad_output, weight);
    output_mask[0] = false;
  } else if (output_mask[0] && plane_grad_input_as_forward(g)) {
    grad_input = plane_grad_input(g, grad_output, weight);
    output_mask[0] = false;
  }
  if (output_mask[1] && direct_uses_blocked_kernel(g, element_size)) {
    grad_weight = blocked_grad_weight(g, grad_output, input);
    output_mask[1] = false;
  }
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
