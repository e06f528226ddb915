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
#include <utility>
#include <vector>

#include "cpu/conv_kernels.h"
#include "cpu/fresh_output.h"
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

// Widest B strip a micro-kernel asks for (AVX-512: 2 x 16 floats; 2 x 8 doubles).
constexpr int64_t kMaxStripColumns = 64;

// The column matrix of one group over one or more consecutive images (columns image-major: all output
// pixels of the first image, then of the next), produced strip by strip straight from the input while
// the GEMM packs B (implicit im2col): the forward pass never materialises the column buffer.
template <typename T>
struct ImplicitColumns final : BPacker<T> {
  const ConvGeometry& g;
  const T* in;           // the group's input channels of the first image, each an in_h x in_w plane
  int64_t image_stride;  // elements from one image's input to the next one's
  ImplicitColumns(const ConvGeometry& geometry, const T* input, int64_t image_stride_)
      : g(geometry), in(input), image_stride(image_stride_) {}

  void pack(int64_t p0, int64_t kc, int64_t j0, int64_t cols, int64_t nr, T* out) const override {
    // The strip's columns split into output-row segments once; every row p below reuses the split.
    struct Segment {
      int64_t j, len, image_offset, oh, ow;
    };
    Segment segments[kMaxStripColumns];
    int64_t n_segments = 0;
    const int64_t out_plane = g.out_h * g.out_w;
    TORCH_INTERNAL_ASSERT(cols <= kMaxStripColumns);
    for (int64_t j = 0; j < cols;) {
      const int64_t column = j0 + j, image = column / out_plane, pixel = column % out_plane;
      const int64_t oh = pixel / g.out_w, ow = pixel % g.out_w;
      const int64_t len = std::min(cols - j, g.out_w - ow);
      segments[n_segments++] = Segment{j, len, image * image_stride, oh, ow};
      j += len;
    }
    const int64_t taps = g.kernel_h * g.kernel_w;
    for (int64_t p = p0; p < p0 + kc; ++p) {
      const int64_t c = p / taps, ki = (p % taps) / g.kernel_w, kj = p % g.kernel_w;
      const OutputRange ow_ok = valid_output_range(g.out_w, g.in_w, g.stride_w, g.pad_w, kj * g.dil_w);
      const T* channel = in + c * g.in_h * g.in_w - g.pad_w + kj * g.dil_w;
      T* dst = out + (p - p0) * nr;
      for (int64_t s = 0; s < n_segments; ++s) {
        const Segment& sg = segments[s];
        T* d = dst + sg.j;
        const int64_t ih = sg.oh * g.stride_h - g.pad_h + ki * g.dil_h;
        if (ih < 0 || ih >= g.in_h) {
          std::fill(d, d + sg.len, T(0));
          continue;
        }
        // Output columns [ow, ow + len): zero left of ow_ok.lo, input in range, zero from ow_ok.hi.
        const int64_t lo = std::clamp<int64_t>(ow_ok.lo - sg.ow, 0, sg.len);
        const int64_t hi = std::clamp<int64_t>(ow_ok.hi - sg.ow, lo, sg.len);
        const T* src = channel + sg.image_offset + ih * g.in_w;
        std::fill(d, d + lo, T(0));
        if (g.stride_w == 1) {
          std::memcpy(d + lo, src + sg.ow + lo, (hi - lo) * sizeof(T));
        } else {
          for (int64_t q = lo; q < hi; ++q) d[q] = src[(sg.ow + q) * g.stride_w];
        }
        std::fill(d + hi, d + sg.len, T(0));
      }
      std::fill(dst + cols, dst + nr, T(0));
    }
  }
};

// Images whose columns go into one forward GEMM. A GEMM packs its weight operand once per call, which
// for a small output plane (ResNet's 7x7 layer4) costs as much as the product itself: such images are
// merged until the GEMM has about kMergedColumns columns, its result staged in a buffer bounded by
// kMergedOutputBytes and by the workspace cap.
constexpr int64_t kMergedColumns = 1024;
constexpr int64_t kMergedOutputBytes = int64_t(8) << 20;

int64_t images_per_forward_gemm(const ConvGeometry& g, int64_t element_size) {
  const int64_t out_plane = g.out_h * g.out_w;
  if (g.batch < 2 || out_plane == 0 || out_plane >= kMergedColumns / 2) return 1;
  const int64_t by_columns = (kMergedColumns + out_plane - 1) / out_plane;
  const int64_t staging_cap = std::min(kMergedOutputBytes, im2col_workspace_limit_bytes());
  const int64_t by_bytes = staging_cap / std::max<int64_t>(1, g.out_channels_per_group() * out_plane * element_size);
  return std::clamp<int64_t>(std::min(by_columns, by_bytes), 1, g.batch);
}

// A strided 1x1 layer's input gradient as a problem over dY (see strided_pointwise_grad_input): the
// picked stride-1 layer with input and output channels swapped.
ConvGeometry pointwise_grad_input_geometry(const ConvGeometry& g) {
  ConvGeometry t = picked_pointwise_geometry(g);
  std::swap(t.in_channels, t.out_channels);
  return t;
}

// The input gradient of a strided 1x1 layer (ConvGeometry::is_strided_pointwise): dX is zero except at
// the pixels the layer reads, which hold W^T dY. Small output planes (ResNet's 14x14 -> 7x7 shortcut)
// merge images into one GEMM as the forward does, its columns packed straight from dY (a 1x1 stride-1
// problem over dY, whose input channels are the layer's outputs), and the result is spread over the
// zeroed gradient.
// One GEMM per image packed the weight 8 times at batch 8 (layer4.0's 256 -> 512 shortcut, input and
// weight gradients together: 1.70 -> 1.37 ms).
at::Tensor strided_pointwise_grad_input(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& weight) {
  const int64_t cin_g = g.in_channels_per_group(), cout_g = g.out_channels_per_group();
  const int64_t out_plane = g.out_h * g.out_w, in_plane = g.in_h * g.in_w;
  const ConvGeometry t = pointwise_grad_input_geometry(g);
  const int64_t merge = images_per_forward_gemm(t, grad_output.element_size());
  at::Tensor grad_input = at::zeros({g.batch, g.in_channels, g.in_h, g.in_w}, grad_output.options());
  at::Tensor staged = at::empty({cin_g * merge * out_plane}, grad_output.options());
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "strided_pointwise_grad_input", [&] {
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
    scalar_t* st = staged.mutable_data_ptr<scalar_t>();
    for (int64_t n0 = 0; n0 < g.batch; n0 += merge) {
      const int64_t images = std::min(merge, g.batch - n0), cols = images * out_plane;
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        // A(ci, co) = W[grp][co][ci]: the group's weight read transposed.
        const ImplicitColumns<scalar_t> columns(t, go + (n0 * g.out_channels + grp * cout_g) * out_plane,
                                                g.out_channels * out_plane);
        gemm_packed_b<scalar_t>(cin_g, cols, cout_g, w + grp * cout_g * cin_g, 1, cin_g, columns, st, cols, false);
        at::parallel_for(0, cin_g * images, 16, [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) {
            const int64_t ci = r / images, image = r % images;
            const scalar_t* src = st + ci * cols + image * out_plane;
            scalar_t* dst = gi + ((n0 + image) * g.in_channels + grp * cin_g + ci) * in_plane;
            for (int64_t oh = 0; oh < g.out_h; ++oh) {
              scalar_t* row = dst + oh * g.stride_h * g.in_w;
              for (int64_t ow = 0; ow < g.out_w; ++ow) row[ow * g.stride_w] = src[oh * g.out_w + ow];
            }
          }
        });
      }
    }
  });
  return grad_input;
}

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

// Where pointwise_grad_weight beats the GEMM (2 threads): planes of 512+ pixels (ResNet/MobileNetV2 1x1
// layers at batch 8: 3-5x faster on 56x56 and 112x112, 1.3-1.8x on 28x28), and expanding layers (no more
// input than output channels) on planes of 128+ pixels, whose dot products sum several images per call
// (MobileNetV2's 14x14 64 -> 384 at batch 8: 0.68 -> 0.44 ms, 96 -> 576: 1.23 -> 0.93 ms; at batch 1
// 0.10 -> 0.07 and 0.16 -> 0.135 ms). Reducing 14x14 layers stay with the GEMM (576 -> 96: 0.85 against
// 1.0 ms), and 7x7 planes (160 -> 960: 0.55 against 0.81 ms), where each call's closing sums cost more.
constexpr int64_t kPointwiseDotMinPixels = 512;
constexpr int64_t kPointwiseDotMinPixelsExpanding = 128;

bool pointwise_weight_by_dots(const ConvGeometry& g) {
  const int64_t plane = g.in_h * g.in_w;
  return g.is_pointwise_unit() &&
         (plane >= kPointwiseDotMinPixels ||
          (plane >= kPointwiseDotMinPixelsExpanding && g.in_channels_per_group() <= g.out_channels_per_group()));
}

// The weight gradient of a 1x1 stride-1 layer: dW[grp][co][ci] = sum over images and pixels of
// dY[n][co][p] * X[n][ci][p], both rows contiguous along the pixels: dot products of rows (no column
// matrix, no packing; a GEMM would pack every element for one or two uses when the pixels outnumber
// the channels). Each thread owns a range of blocks of output channels and walks the images and their
// pixels in chunks that stay in L2, every weight summed in the same order whatever the thread count.
template <typename scalar_t>
void pointwise_grad_weight(const ConvGeometry& g, const scalar_t* go, const scalar_t* in, scalar_t* gw,
                           bool accumulate) {
  const MicroKernels<scalar_t>& mk = micro_kernels<scalar_t>();
  const int64_t cin_g = g.in_channels_per_group(), cout_g = g.out_channels_per_group(), plane = g.in_h * g.in_w;
  const int64_t row_block = mk.dot_rows_max, col_block = mk.dot_cols_max;
  const int64_t row_blocks = (cout_g + row_block - 1) / row_block;
  // A chunk: `pixels` pixels of one plane, or whole planes of several images where planes are smaller
  // (each call closes its sums once, whatever the images). Every thread reads the chunk's input rows against
  // each of its output-gradient rows, so they take 256 KiB, which L2 keeps: 512 to 4096 pixels. Few input
  // channels take longer runs of each row, which the hardware prefetcher then follows further (MobileNetV2's
  // 16 -> 96 1x1 on 112x112 at batch 8: 1.85-1.9 -> 1.5 ms, where 2048 pixels for 256 channels took 4.8 ->
  // 6.3 ms).
  constexpr int64_t kChunkInputBytes = 256 << 10, kMinChunkPixels = 512, kMaxChunkPixels = 4096;
  const int64_t pixels = std::clamp<int64_t>(kChunkInputBytes / (cin_g * int64_t(sizeof(scalar_t))), kMinChunkPixels,
                                             kMaxChunkPixels);
  const int64_t chunk_pixels = std::min(plane, pixels);
  const int64_t chunk_images = std::clamp<int64_t>(pixels / plane, 1, g.batch);
  std::vector<int64_t> input_rows(col_block);  // offsets of a block's input-channel planes
  for (int64_t j = 0; j < col_block; ++j) input_rows[j] = j * plane;
  at::parallel_for(0, g.groups * row_blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t n = 0; n < g.batch; n += chunk_images)
      for (int64_t p0 = 0; p0 < plane; p0 += chunk_pixels) {
        const int64_t len = std::min(chunk_pixels, plane - p0), images = std::min(chunk_images, g.batch - n);
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t grp = b / row_blocks, co = (b % row_blocks) * row_block;
          const int64_t rows = std::min(row_block, cout_g - co);
          const scalar_t* dy = go + (n * g.out_channels + grp * cout_g + co) * plane + p0;
          for (int64_t ci = 0; ci < cin_g; ci += col_block)
            mk.dot_rows(len, images, dy, plane, g.out_channels * plane, rows,
                        in + (n * g.in_channels + grp * cin_g + ci) * plane + p0, input_rows.data(),
                        g.in_channels * plane, std::min(col_block, cin_g - ci), gw + (grp * cout_g + co) * cin_g + ci,
                        cin_g, accumulate || n > 0 || p0 > 0);
        }
      }
  });
}

// Images per compact copy of a strided 1x1 layer's input pixels: as many as the workspace cap holds.
int64_t images_per_picked_copy(const ConvGeometry& g, int64_t element_size) {
  const int64_t image_bytes = g.in_channels * g.out_h * g.out_w * element_size;
  return std::clamp<int64_t>(im2col_workspace_limit_bytes() / std::max<int64_t>(1, image_bytes), 1, g.batch);
}

// The weight gradient by dot products (pointwise_grad_weight) where it beats the GEMM: on the layer's own
// input at stride 1, or on a compact copy of the pixels a strided layer reads, made for as many images at
// a time as the workspace cap allows (one pass over a quarter of a stride-2 input, where the GEMM packed
// an unrolled copy of them per image: layer2.0's 64 -> 128 shortcut at batch 8, 1.42 -> 0.82 ms).
at::Tensor pointwise_grad_weight_by_dots(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& input,
                                         const at::Tensor& weight) {
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options());
  const bool strided = !g.is_pointwise_unit();
  ConvGeometry p = strided ? picked_pointwise_geometry(g) : g;
  const int64_t chunk = strided ? images_per_picked_copy(g, input.element_size()) : g.batch;
  for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
    p.batch = std::min(chunk, g.batch - n0);
    const at::Tensor images = input.narrow(0, n0, p.batch);
    const at::Tensor picked = strided ? picked_pointwise_pixels(g, images) : images;
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pointwise_grad_weight", [&] {
      pointwise_grad_weight<scalar_t>(p, grad_output.const_data_ptr<scalar_t>() + n0 * g.out_channels * g.out_h * g.out_w,
                                      picked.const_data_ptr<scalar_t>(), grad_weight.mutable_data_ptr<scalar_t>(),
                                      /*accumulate=*/n0 > 0);
    });
  }
  return grad_weight;
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
  // The larger of the two passes. Forward: GEMM packing buffers, plus the staging buffer of merged small
  // images (its columns are packed straight from the input). Backward: packing buffers plus the column
  // buffer it unrolls into.
  const int64_t cout_g = g.out_channels_per_group(), out_plane = g.out_h * g.out_w;
  const int64_t merge = images_per_forward_gemm(g, element_size);
  const int64_t forward = gemm_workspace_bytes(cout_g, merge * out_plane, g.col_rows(), element_size) +
                          (merge > 1 ? cout_g * merge * out_plane * element_size : 0);
  int64_t backward = gemm_workspace_bytes(cout_g, out_plane, g.col_rows(), element_size);
  if (!g.is_pointwise_unit()) backward += g.col_rows() * rows_per_block(g, element_size) * g.out_w * element_size;
  // A strided 1x1 layer's weight gradient by dot products reads a compact copy of the pixels it uses; its
  // input gradient stages the merged images' products (strided_pointwise_grad_input).
  if (g.is_strided_pointwise()) {
    if (pointwise_weight_by_dots(picked_pointwise_geometry(g)))
      backward = std::max(backward, images_per_picked_copy(g, element_size) * g.in_channels * out_plane * element_size);
    const int64_t cin_g = g.in_channels_per_group();
    const int64_t images = images_per_forward_gemm(pointwise_grad_input_geometry(g), element_size);
    backward = std::max(backward, gemm_workspace_bytes(cin_g, images * out_plane, cout_g, element_size) +
                                      cin_g * images * out_plane * element_size);
  }
  return std::max(forward, backward);
}

at::Tensor im2col_conv2d_forward(const ConvGeometry& g, const at::Tensor& input, const at::Tensor& weight) {
  at::Tensor out = empty_output(g.output_sizes(), input.options());
  const int64_t cin_g = g.in_channels_per_group(), cout_g = g.out_channels_per_group();
  const int64_t out_plane = g.out_h * g.out_w, image_size = g.in_channels * g.in_h * g.in_w;
  const int64_t merge = images_per_forward_gemm(g, input.element_size());
  const at::Tensor weight_2d = weight.view({g.groups, cout_g, g.col_rows()});
  at::Tensor staged = merge > 1 ? at::empty({cout_g * merge * out_plane}, input.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "im2col_conv2d_forward", [&] {
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* w = weight_2d.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    for (int64_t n0 = 0; n0 < g.batch; n0 += merge) {
      const int64_t images = std::min(merge, g.batch - n0);
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        const scalar_t* in_group = in + n0 * image_size + grp * cin_g * g.in_h * g.in_w;
        const scalar_t* w_group = w + grp * cout_g * g.col_rows();
        scalar_t* out_group = o + (n0 * g.out_channels + grp * cout_g) * out_plane;
        if (merge > 1) {
          // One GEMM over `images` images into the staging buffer, then each image's rows to its place.
          const int64_t cols = images * out_plane;
          scalar_t* st = staged.mutable_data_ptr<scalar_t>();
          const ImplicitColumns<scalar_t> columns(g, in_group, image_size);
          gemm_packed_b<scalar_t>(cout_g, cols, g.col_rows(), w_group, g.col_rows(), 1, columns, st, cols, false);
          at::parallel_for(0, cout_g * images, 64, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) {
              const int64_t co = r / images, image = r % images;
              std::memcpy(out_group + (image * g.out_channels + co) * out_plane, st + co * cols + image * out_plane,
                          out_plane * sizeof(scalar_t));
            }
          });
        } else if (g.is_pointwise_unit()) {  // the input plane already is the column matrix
          gemm<scalar_t>(cout_g, out_plane, cin_g, w_group, cin_g, 1, in_group, out_plane, 1, out_group, out_plane,
                         false);
        } else {
          const ImplicitColumns<scalar_t> columns(g, in_group, image_size);
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
  const bool need_input = output_mask[0];
  const bool weight_by_dots =
      output_mask[1] && (g.is_pointwise_unit() || g.is_strided_pointwise()) &&
      pointwise_weight_by_dots(picked_pointwise_geometry(g));
  const bool need_weight = output_mask[1] && !weight_by_dots;  // by the GEMMs below
  const bool input_merged = need_input && g.is_strided_pointwise();
  const bool need_input_here = need_input && !input_merged;  // by the GEMMs below
  // A 1x1 stride-1 layer's input gradient is written whole by its products; col2im adds into zeros.
  at::Tensor grad_input = !need_input             ? at::Tensor()
                          : input_merged          ? strided_pointwise_grad_input(g, grad_output, weight)
                          : g.is_pointwise_unit() ? at::empty(input.sizes(), input.options())
                                                  : at::zeros(input.sizes(), input.options());
  at::Tensor grad_weight = weight_by_dots ? pointwise_grad_weight_by_dots(g, grad_output, input, weight)
                           : need_weight  ? at::zeros(weight.sizes(), weight.options())
                                          : at::Tensor();
  if (!need_weight && !need_input_here) return {grad_input, grad_weight, at::Tensor()};
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
        if (need_input_here) {
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
