// im2col + GEMM convolution on CPU, forward and backward.
//
// For each image and group, the input patches under the filter are unrolled into a column matrix
// (rows: input channel x filter tap, columns: output pixels), so the convolution becomes one matrix
// product with the group's weights, computed by fastconv's own GEMM (gemm.h). The column buffer covers a block of output rows sized so that
// it stays under a fixed cap whatever the batch or image size. A 1x1, stride-1, unpadded convolution
// needs no buffer: the input plane already is the column matrix.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "cpu/conv_kernels.h"
#include "cpu/gemm.h"

namespace fastconv::cpu {
namespace {

constexpr int64_t kDefaultWorkspaceLimit = int64_t(64) << 20;  // 64 MiB

// Output rows per column-buffer block: as many as fit under the workspace cap, at least one.
int64_t rows_per_block(const ConvGeometry& g, int64_t element_size) {
  if (g.is_pointwise_unit()) return g.out_h;  // no buffer: the input is the column matrix
  const int64_t row_bytes = g.col_rows() * g.out_w * element_size;
  return std::clamp<int64_t>(im2col_workspace_limit_bytes() / std::max<int64_t>(1, row_bytes), 1, g.out_h);
}

// Unrolls output rows [oh0, oh1) of one group's input (channels x H x W) into col
// (col_rows x (oh1 - oh0) * out_w). Zero where a tap falls into the padding.
template <typename scalar_t>
void im2col(const ConvGeometry& g, const scalar_t* in, int64_t oh0, int64_t oh1, scalar_t* col) {
  const int64_t cols = (oh1 - oh0) * g.out_w;
  const int64_t taps = g.kernel_h * g.kernel_w;
  at::parallel_for(0, g.col_rows(), 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t c = r / taps, ki = (r % taps) / g.kernel_w, kj = r % g.kernel_w;
      const scalar_t* plane = in + c * g.in_h * g.in_w;
      scalar_t* dst = col + r * cols;
      const OutputRange ow_ok = valid_output_range(g.out_w, g.in_w, g.stride_w, g.pad_w, kj * g.dil_w);
      for (int64_t oh = oh0; oh < oh1; ++oh, dst += g.out_w) {
        const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dil_h;
        if (ih < 0 || ih >= g.in_h) {
          std::fill(dst, dst + g.out_w, scalar_t(0));
          continue;
        }
        const scalar_t* src = plane + ih * g.in_w - g.pad_w + kj * g.dil_w;
        std::fill(dst, dst + ow_ok.lo, scalar_t(0));
        if (g.stride_w == 1) {
          std::memcpy(dst + ow_ok.lo, src + ow_ok.lo, (ow_ok.hi - ow_ok.lo) * sizeof(scalar_t));
        } else {
          for (int64_t ow = ow_ok.lo; ow < ow_ok.hi; ++ow) dst[ow] = src[ow * g.stride_w];
        }
        std::fill(dst + ow_ok.hi, dst + g.out_w, scalar_t(0));
      }
    }
  });
}

// Adds the column matrix of output rows [oh0, oh1) back onto the input gradient of one group.
// Each thread owns whole input channels and visits taps in a fixed order, so the sum is deterministic.
template <typename scalar_t>
void col2im_accumulate(const ConvGeometry& g, const scalar_t* col, int64_t oh0, int64_t oh1, scalar_t* grad_in) {
  const int64_t cols = (oh1 - oh0) * g.out_w;
  const int64_t taps = g.kernel_h * g.kernel_w;
  at::parallel_for(0, g.in_channels_per_group(), 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      scalar_t* plane = grad_in + c * g.in_h * g.in_w;
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t ki = t / g.kernel_w, kj = t % g.kernel_w;
        const scalar_t* src_row = col + (c * taps + t) * cols;
        const OutputRange ow_ok = valid_output_range(g.out_w, g.in_w, g.stride_w, g.pad_w, kj * g.dil_w);
        for (int64_t oh = oh0; oh < oh1; ++oh) {
          const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dil_h;
          if (ih < 0 || ih >= g.in_h) continue;
          const scalar_t* src = src_row + (oh - oh0) * g.out_w;
          scalar_t* dst = plane + ih * g.in_w - g.pad_w + kj * g.dil_w;
          for (int64_t ow = ow_ok.lo; ow < ow_ok.hi; ++ow) dst[ow * g.stride_w] += src[ow];
        }
      }
    }
  });
}

// Column matrix of one group of one image for output rows [oh0, oh1), as a (col_rows x cols) tensor:
// a view of the input itself for unit 1x1 convolutions, else unrolled into `buffer`.
at::Tensor columns_of(const ConvGeometry& g, const at::Tensor& input_group, int64_t oh0, int64_t oh1,
                      at::Tensor& buffer) {
  const int64_t cols = (oh1 - oh0) * g.out_w;
  if (g.is_pointwise_unit())
    return input_group.reshape({g.col_rows(), g.in_h * g.in_w}).narrow(1, oh0 * g.out_w, cols);
  at::Tensor col = buffer.narrow(0, 0, g.col_rows() * cols).view({g.col_rows(), cols});
  AT_DISPATCH_FLOATING_TYPES(input_group.scalar_type(), "im2col", [&] {
    im2col<scalar_t>(g, input_group.const_data_ptr<scalar_t>(), oh0, oh1, col.mutable_data_ptr<scalar_t>());
  });
  return col;
}

// The column matrix of one image and group, produced strip by strip straight from the input while the
// GEMM packs B (implicit im2col): the forward pass never materialises the column buffer.
template <typename T>
struct ImplicitColumns final : BPacker<T> {
  const ConvGeometry& g;
  const T* in;  // the group's input channels of one image, each an in_h x in_w plane
  ImplicitColumns(const ConvGeometry& geometry, const T* input) : g(geometry), in(input) {}

  void pack(int64_t p0, int64_t kc, int64_t j0, int64_t cols, int64_t nr, T* out) const override {
    const int64_t taps = g.kernel_h * g.kernel_w;
    for (int64_t p = p0; p < p0 + kc; ++p) {
      const int64_t c = p / taps, ki = (p % taps) / g.kernel_w, kj = p % g.kernel_w;
      const T* plane = in + c * g.in_h * g.in_w;
      const OutputRange ow_ok = valid_output_range(g.out_w, g.in_w, g.stride_w, g.pad_w, kj * g.dil_w);
      T* dst = out + (p - p0) * nr;
      int64_t oh = (j0 / g.out_w), ow = j0 % g.out_w;
      for (int64_t j = 0; j < cols; oh += 1, ow = 0) {
        const int64_t seg = std::min(cols - j, g.out_w - ow);
        const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dil_h;
        if (ih < 0 || ih >= g.in_h) {
          std::fill(dst + j, dst + j + seg, T(0));
        } else {
          // Output columns [ow, ow + seg): zero left of ow_ok.lo, input in range, zero from ow_ok.hi.
          const int64_t lo = std::clamp<int64_t>(ow_ok.lo - ow, 0, seg);
          const int64_t hi = std::clamp<int64_t>(ow_ok.hi - ow, lo, seg);
          const T* src = plane + ih * g.in_w - g.pad_w + kj * g.dil_w;
          std::fill(dst + j, dst + j + lo, T(0));
          if (g.stride_w == 1) {
            std::memcpy(dst + j + lo, src + ow + lo, (hi - lo) * sizeof(T));
          } else {
            for (int64_t q = lo; q < hi; ++q) dst[j + q] = src[(ow + q) * g.stride_w];
          }
          std::fill(dst + j + hi, dst + j + seg, T(0));
        }
        j += seg;
      }
      std::fill(dst + cols, dst + nr, T(0));
    }
  }
};

// out (= or +=) a @ b on 2-D strided views, through fastconv's own GEMM. out's rows must be unit-stride.
void matmul_into(at::Tensor out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  TORCH_INTERNAL_ASSERT(out.stride(1) == 1 && a.size(1) == b.size(0));
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "fastconv_gemm", [&] {
    gemm<scalar_t>(a.size(0), b.size(1), a.size(1), a.const_data_ptr<scalar_t>(), a.stride(0), a.stride(1),
                   b.const_data_ptr<scalar_t>(), b.stride(0), b.stride(1), out.mutable_data_ptr<scalar_t>(),
                   out.stride(0), accumulate);
  });
}

at::Tensor allocate_column_buffer(const ConvGeometry& g, const at::Tensor& like) {
  if (g.is_pointwise_unit()) return at::Tensor();
  const int64_t rows = rows_per_block(g, like.element_size());
  return at::empty({g.col_rows() * rows * g.out_w}, like.options());
}

}  // namespace

int64_t im2col_workspace_limit_bytes() {
  // FASTCONV_IM2COL_WORKSPACE_BYTES lowers (or raises) the cap; tests use it to exercise blocking.
  if (const char* env = std::getenv("FASTCONV_IM2COL_WORKSPACE_BYTES")) {
    const long long v = std::atoll(env);
    if (v > 0) return v;
  }
  return kDefaultWorkspaceLimit;
}

int64_t im2col_workspace_bytes(const ConvGeometry& g, int64_t element_size) {
  // GEMM packing buffers, plus the column buffer the backward pass unrolls into (the forward pass
  // packs its columns straight from the input and needs none).
  const int64_t packing = gemm_workspace_bytes(g.out_channels_per_group(), g.out_h * g.out_w, g.col_rows(),
                                               element_size);
  if (g.is_pointwise_unit()) return packing;
  return packing + g.col_rows() * rows_per_block(g, element_size) * g.out_w * element_size;
}

at::Tensor im2col_conv2d_forward(const ConvGeometry& g, const at::Tensor& input, const at::Tensor& weight) {
  at::Tensor out = at::empty(g.output_sizes(), input.options());
  const int64_t cin_g = g.in_channels_per_group(), cout_g = g.out_channels_per_group();
  const int64_t out_plane = g.out_h * g.out_w;
  const at::Tensor weight_2d = weight.view({g.groups, cout_g, g.col_rows()});
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "im2col_conv2d_forward", [&] {
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* w = weight_2d.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    for (int64_t n = 0; n < g.batch; ++n) {
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        const scalar_t* in_group = in + (n * g.in_channels + grp * cin_g) * g.in_h * g.in_w;
        const scalar_t* w_group = w + grp * cout_g * g.col_rows();
        scalar_t* out_group = o + (n * g.out_channels + grp * cout_g) * out_plane;
        if (g.is_pointwise_unit()) {  // the input plane already is the column matrix
          gemm<scalar_t>(cout_g, out_plane, cin_g, w_group, cin_g, 1, in_group, out_plane, 1, out_group, out_plane,
                         false);
        } else {
          const ImplicitColumns<scalar_t> columns(g, in_group);
          gemm_packed_b<scalar_t>(cout_g, out_plane, g.col_rows(), w_group, g.col_rows(), 1, columns, out_group,
                                  out_plane, false);
        }
      }
    }
  });
  return out;
}

ConvGrads im2col_conv2d_backward(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& input,
                                 const at::Tensor& weight, std::array<bool, 3> output_mask) {
  const bool need_input = output_mask[0], need_weight = output_mask[1];
  at::Tensor grad_input = need_input ? at::zeros(input.sizes(), input.options()) : at::Tensor();
  at::Tensor grad_weight = need_weight ? at::zeros(weight.sizes(), weight.options()) : at::Tensor();
  at::Tensor buffer = allocate_column_buffer(g, input);
  const int64_t block = rows_per_block(g, input.element_size());
  const int64_t cin_g = g.in_channels_per_group(), cout_g = g.out_channels_per_group();
  const at::Tensor weight_2d = weight.view({g.groups, cout_g, g.col_rows()});
  at::Tensor grad_weight_2d = need_weight ? grad_weight.view({g.groups, cout_g, g.col_rows()}) : at::Tensor();

  for (int64_t n = 0; n < g.batch; ++n) {
    const at::Tensor go_n = grad_output[n].view({g.groups, cout_g, g.out_h * g.out_w});
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const at::Tensor in_group = input[n].narrow(0, grp * cin_g, cin_g);
      for (int64_t oh0 = 0; oh0 < g.out_h; oh0 += block) {
        const int64_t oh1 = std::min(g.out_h, oh0 + block);
        const int64_t cols = (oh1 - oh0) * g.out_w;
        const at::Tensor go_block = go_n[grp].narrow(1, oh0 * g.out_w, cols);
        if (need_weight) {
          // dW += dY_block x columns(input)^T, summed over images and blocks in a fixed order.
          at::Tensor col = columns_of(g, in_group, oh0, oh1, buffer);
          matmul_into(grad_weight_2d[grp], go_block, col.t(), /*accumulate=*/true);
        }
        if (need_input) {
          // columns(dX) = W^T x dY_block, then folded back onto the input gradient.
          at::Tensor gi_group = grad_input[n].narrow(0, grp * cin_g, cin_g);
          if (g.is_pointwise_unit()) {
            at::Tensor gi_block = gi_group.view({cin_g, g.in_h * g.in_w}).narrow(1, oh0 * g.out_w, cols);
            matmul_into(gi_block, weight_2d[grp].t(), go_block, /*accumulate=*/false);
          } else {
            at::Tensor col = buffer.narrow(0, 0, g.col_rows() * cols).view({g.col_rows(), cols});
            matmul_into(col, weight_2d[grp].t(), go_block, /*accumulate=*/false);
            AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "col2im", [&] {
              col2im_accumulate<scalar_t>(g, col.const_data_ptr<scalar_t>(), oh0, oh1,
                                          gi_group.mutable_data_ptr<scalar_t>());
            });
          }
        }
      }
    }
  }
  return {grad_input, grad_weight, at::Tensor()};
}

}  // namespace fastconv::cpu
