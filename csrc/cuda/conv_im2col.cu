// im2col + cuBLAS convolution on CUDA, forward and backward.
//
// The batch is processed in chunks of whole images (or, when one image alone is too big, of output
// rows of one image). For a chunk, the im2col kernel unrolls the input patches of every group into a
// column matrix (groups x channels-per-group*taps x chunk pixels, the chunk's images side by side),
// and one batched GEMM over the groups multiplies it with the weights into a staging matrix
// (out_channels x chunk pixels), copied into the NCHW output. Column matrix and staging matrix share
// one buffer, sized so that it stays under im2col_workspace_limit_bytes() whatever the batch size.
//
// Backward reuses the chunks: grad_weight += dY x columns^T (batched GEMM, summed over chunks in order),
// grad_input: columns = W^T x dY, folded back by the col2im kernel, which gathers, for each input
// element, the column entries that read it (one thread per element, fixed order, no atomics).
// A 1x1, stride-1, unpadded convolution needs no columns for forward and grad_input: the input already
// is the column matrix, and torch's batched matmul does the work.
#include <algorithm>
#include <cstdlib>

#include "cuda/conv_kernels.cuh"
#include "cuda/cuda_utils.cuh"

namespace fastconv::cuda {
namespace {

constexpr int64_t kDefaultWorkspaceLimit = int64_t(64) << 20;  // 64 MiB

// The part of the problem one buffer fill covers: images [image0, image0 + images), output rows
// [row0, row0 + rows) of each (rows < out_h only when images == 1).
struct Chunk {
  int64_t image0, images, row0, rows;
};

// Chunk sizes for a geometry: as many whole images as fit under the cap, else as many output rows.
struct ChunkPlan {
  int64_t images, rows;
};

// Column rows of all groups together: every input channel times every filter tap.
int64_t column_rows(const ConvGeometry& g) { return g.in_channels * g.kernel_h * g.kernel_w; }

// Buffer elements per chunk pixel: its column (all groups) plus its staging column (all output channels).
int64_t buffer_elements_per_pixel(const ConvGeometry& g) { return column_rows(g) + g.out_channels; }

ChunkPlan plan_chunks(const ConvGeometry& g, int64_t element_size) {
  const int64_t row_bytes = buffer_elements_per_pixel(g) * g.out_w * element_size;
  const int64_t rows_that_fit = std::max<int64_t>(1, im2col_workspace_limit_bytes() / row_bytes);
  if (rows_that_fit < g.out_h) return {1, rows_that_fit};
  return {std::clamp<int64_t>(rows_that_fit / g.out_h, 1, g.batch), g.out_h};
}

template <typename Fn>
void for_each_chunk(const ConvGeometry& g, const ChunkPlan& plan, Fn&& fn) {
  for (int64_t n0 = 0; n0 < g.batch; n0 += plan.images) {
    const int64_t images = std::min(plan.images, g.batch - n0);
    for (int64_t oh0 = 0; oh0 < g.out_h; oh0 += plan.rows)
      fn(Chunk{n0, images, oh0, std::min(plan.rows, g.out_h - oh0)});
  }
}

// Pixels (columns of the column matrix) of a chunk.
int64_t chunk_pixels(const ConvGeometry& g, const Chunk& c) { return c.images * c.rows * g.out_w; }

// The chunk's part of an NCHW output-shaped tensor, as (images, channels, rows * out_w).
at::Tensor chunk_of_output(const at::Tensor& t, const ConvGeometry& g, const Chunk& c) {
  return t.narrow(0, c.image0, c.images)
      .view({c.images, g.out_channels, g.out_h * g.out_w})
      .narrow(2, c.row0 * g.out_w, c.rows * g.out_w);
}

// col[ch * taps + tap][j] = input value under tap `tap` of chunk pixel j (zero in the padding), for
// every input channel ch; j runs over (image, output row, output column) of the chunk.
template <typename scalar_t, typename index_t>
__global__ void im2col_kernel(const scalar_t* __restrict__ input, scalar_t* __restrict__ col, ConvGeometry g,
                              Chunk c) {
  const index_t out_w = g.out_w, in_h = g.in_h, in_w = g.in_w;
  const index_t kernel_h = g.kernel_h, kernel_w = g.kernel_w, dil_h = g.dil_h, dil_w = g.dil_w;
  const index_t image_pixels = static_cast<index_t>(c.rows) * out_w;
  const index_t pixels = static_cast<index_t>(c.images) * image_pixels;
  const index_t total = static_cast<index_t>(g.in_channels) * pixels;
  FASTCONV_KERNEL_LOOP(index_t, i, total) {
    const index_t ch = i / pixels, j = i % pixels;
    const index_t n_local = j / image_pixels, r = j % image_pixels;
    const index_t oh = static_cast<index_t>(c.row0) + r / out_w, ow = r % out_w;
    const scalar_t* plane = input + ((c.image0 + n_local) * g.in_channels + ch) * g.in_h * g.in_w;
    scalar_t* dst = col + static_cast<int64_t>(ch) * kernel_h * kernel_w * pixels + j;
    const index_t ih0 = oh * static_cast<index_t>(g.stride_h) - static_cast<index_t>(g.pad_h);
    const index_t iw0 = ow * static_cast<index_t>(g.stride_w) - static_cast<index_t>(g.pad_w);
    for (index_t ki = 0; ki < kernel_h; ++ki) {
      const index_t ih = ih0 + ki * dil_h;
      const bool row_inside = ih >= 0 && ih < in_h;
      for (index_t kj = 0; kj < kernel_w; ++kj, dst += pixels) {
        const index_t iw = iw0 + kj * dil_w;
        *dst = row_inside && iw >= 0 && iw < in_w ? plane[ih * in_w + iw] : static_cast<scalar_t>(0);
      }
    }
  }
}

// Input-gradient rows [ih_begin, ih_end) of the chunk's images: each element sums, tap by tap, the
// column entries computed for it (the transpose of im2col). `accumulate` adds to what grad_input holds
// (row chunks of one image overlap in the input); otherwise the element is overwritten.
template <typename scalar_t, typename index_t>
__global__ void col2im_kernel(const scalar_t* __restrict__ col, scalar_t* __restrict__ grad_input, ConvGeometry g,
                              Chunk c, int64_t ih_begin, int64_t ih_end, bool accumulate) {
  using acc_t = acc_type<scalar_t>;
  const index_t out_w = g.out_w, in_w = g.in_w;
  const index_t kernel_h = g.kernel_h, kernel_w = g.kernel_w, dil_h = g.dil_h, dil_w = g.dil_w;
  const index_t stride_h = g.stride_h, stride_w = g.stride_w, pad_h = g.pad_h, pad_w = g.pad_w;
  const index_t row0 = c.row0, row1 = c.row0 + c.rows;
  const index_t image_pixels = static_cast<index_t>(c.rows) * out_w;
  const index_t pixels = static_cast<index_t>(c.images) * image_pixels;
  const index_t band = static_cast<index_t>(ih_end - ih_begin) * in_w;  // input elements per channel
  const index_t per_image = static_cast<index_t>(g.in_channels) * band;
  const index_t total = static_cast<index_t>(c.images) * per_image;
  FASTCONV_KERNEL_LOOP(index_t, i, total) {
    const index_t n_local = i / per_image, ch = (i % per_image) / band;
    const index_t ih = static_cast<index_t>(ih_begin) + (i % band) / in_w, iw = i % in_w;
    const scalar_t* col_ch = col + static_cast<int64_t>(ch) * kernel_h * kernel_w * pixels + n_local * image_pixels;
    acc_t sum = 0;
    for (index_t ki = 0; ki < kernel_h; ++ki) {
      const index_t oh_scaled = ih + pad_h - ki * dil_h;  // oh * stride_h when tap ki of row oh reads ih
      if (oh_scaled < 0) break;                          // decreases with ki
      if (oh_scaled % stride_h != 0) continue;
      const index_t oh = oh_scaled / stride_h;
      if (oh < row0 || oh >= row1) continue;
      for (index_t kj = 0; kj < kernel_w; ++kj) {
        const index_t ow_scaled = iw + pad_w - kj * dil_w;
        if (ow_scaled < 0) break;
        if (ow_scaled % stride_w != 0) continue;
        const index_t ow = ow_scaled / stride_w;
        if (ow >= out_w) continue;
        sum += static_cast<acc_t>(col_ch[(ki * kernel_w + kj) * pixels + (oh - row0) * out_w + ow]);
      }
    }
    scalar_t* dst = grad_input + ((c.image0 + n_local) * g.in_channels + ch) * g.in_h * g.in_w +
                    static_cast<int64_t>(ih) * in_w + iw;
    *dst = static_cast<scalar_t>(accumulate ? static_cast<acc_t>(*dst) + sum : sum);
  }
}

// Fills col (column_rows x chunk pixels) from the chunk's images.
void launch_im2col(const ConvGeometry& g, const Chunk& c, const at::Tensor& input, at::Tensor& col) {
  const int64_t work = g.in_channels * chunk_pixels(g, c);
  FASTCONV_DISPATCH_FLOAT_TYPES(input.scalar_type(), "im2col_cuda", [&] {
    dispatch_index_type(fits_int32({work, col.numel()}), [&](auto index_tag) {
      using index_t = decltype(index_tag);
      launch_kernel(im2col_kernel<scalar_t, index_t>, grid_for(work), kThreads, 0, input.const_data_ptr<scalar_t>(),
                    col.mutable_data_ptr<scalar_t>(), g, c);
    });
  });
}

// Folds col (column_rows x chunk pixels) back onto the chunk's input-gradient rows it touches.
void launch_col2im(const ConvGeometry& g, const Chunk& c, const at::Tensor& col, at::Tensor& grad_input,
                   bool accumulate) {
  int64_t ih_begin = 0, ih_end = g.in_h;
  if (c.rows < g.out_h) {  // only the input rows under this band of output rows
    ih_begin = std::max<int64_t>(0, c.row0 * g.stride_h - g.pad_h);
    ih_end = std::min<int64_t>(g.in_h, (c.row0 + c.rows - 1) * g.stride_h - g.pad_h + (g.kernel_h - 1) * g.dil_h + 1);
    if (ih_end <= ih_begin) return;
  }
  const int64_t work = c.images * g.in_channels * (ih_end - ih_begin) * g.in_w;
  FASTCONV_DISPATCH_FLOAT_TYPES(col.scalar_type(), "col2im_cuda", [&] {
    dispatch_index_type(fits_int32({work, col.numel()}), [&](auto index_tag) {
      using index_t = decltype(index_tag);
      launch_kernel(col2im_kernel<scalar_t, index_t>, grid_for(work), kThreads, 0, col.const_data_ptr<scalar_t>(),
                    grad_input.mutable_data_ptr<scalar_t>(), g, c, ih_begin, ih_end, accumulate);
    });
  });
}

// The buffer behind the column and staging matrices of the largest chunk.
struct ChunkBuffers {
  at::Tensor storage;
  int64_t column_capacity;  // elements reserved for the column matrix

  ChunkBuffers(const ConvGeometry& g, const ChunkPlan& plan, const at::Tensor& like) {
    const int64_t pixels = plan.images * plan.rows * g.out_w;
    column_capacity = column_rows(g) * pixels;
    storage = at::empty({buffer_elements_per_pixel(g) * pixels}, like.options());
  }
  // (groups, channels per group * taps, pixels)
  at::Tensor columns(const ConvGeometry& g, const Chunk& c) const {
    return storage.narrow(0, 0, column_rows(g) * chunk_pixels(g, c)).view({g.groups, g.col_rows(), chunk_pixels(g, c)});
  }
  // (groups, out channels per group, pixels)
  at::Tensor staging(const ConvGeometry& g, const Chunk& c) const {
    return storage.narrow(0, column_capacity, g.out_channels * chunk_pixels(g, c))
        .view({g.groups, g.out_channels_per_group(), chunk_pixels(g, c)});
  }
};

// staging (out_channels x [image][pixel]) <-> the chunk of an NCHW tensor ([image][out_channels][pixel]).
void copy_staging_to_output(const ConvGeometry& g, const Chunk& c, const at::Tensor& staging, const at::Tensor& out) {
  chunk_of_output(out, g, c).copy_(staging.view({g.out_channels, c.images, c.rows * g.out_w}).transpose(0, 1));
}
void copy_output_to_staging(const ConvGeometry& g, const Chunk& c, const at::Tensor& t, const at::Tensor& staging) {
  staging.view({g.out_channels, c.images, c.rows * g.out_w}).copy_(chunk_of_output(t, g, c).transpose(0, 1));
}

}  // namespace

int64_t im2col_workspace_limit_bytes() {
  // FASTCONV_IM2COL_WORKSPACE_BYTES lowers (or raises) the cap, as on CPU; tests use it to force chunking.
  if (const char* env = std::getenv("FASTCONV_IM2COL_WORKSPACE_BYTES")) {
    const long long v = std::atoll(env);
    if (v > 0) return v;
  }
  return kDefaultWorkspaceLimit;
}

// The chunk buffer (column + staging matrices). A unit 1x1 convolution needs it only for grad_weight;
// it is reported all the same, as the most any pass allocates.
int64_t im2col_workspace_bytes(const ConvGeometry& g, int64_t element_size) {
  const ChunkPlan plan = plan_chunks(g, element_size);
  return buffer_elements_per_pixel(g) * plan.images * plan.rows * g.out_w * element_size;
}

at::Tensor im2col_conv2d_forward(const ConvGeometry& g, const at::Tensor& input, const at::Tensor& weight) {
  const at::Tensor weight_3d = weight.view({g.groups, g.out_channels_per_group(), g.col_rows()});
  if (g.is_pointwise_unit()) {
    // out[n, group] = W[group] x in[n, group]: the input planes are the column matrices.
    const at::Tensor in_4d = input.view({g.batch, g.groups, g.in_channels_per_group(), g.in_h * g.in_w});
    return at::matmul(weight_3d, in_4d).contiguous().view(g.output_sizes());
  }
  at::Tensor out = at::empty(g.output_sizes(), input.options());
  const ChunkPlan plan = plan_chunks(g, input.element_size());
  const ChunkBuffers buffers(g, plan, input);
  for_each_chunk(g, plan, [&](const Chunk& c) {
    at::Tensor col = buffers.columns(g, c);
    at::Tensor staging = buffers.staging(g, c);
    launch_im2col(g, c, input, col);
    at::bmm_out(staging, weight_3d, col);
    copy_staging_to_output(g, c, staging, out);
  });
  return out;
}

ConvGrads im2col_conv2d_backward(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& input,
                                 const at::Tensor& weight, std::array<bool, 3> output_mask) {
  const bool need_input = output_mask[0], need_weight = output_mask[1];
  const int64_t cout_g = g.out_channels_per_group();
  const at::Tensor weight_3d = weight.view({g.groups, cout_g, g.col_rows()});
  at::Tensor grad_input, grad_weight;

  const bool input_through_columns = need_input && !g.is_pointwise_unit();
  if (need_input && !input_through_columns) {
    // grad_in[n, group] = W[group]^T x dY[n, group]
    const at::Tensor go_4d = grad_output.view({g.batch, g.groups, cout_g, g.out_h * g.out_w});
    grad_input = at::matmul(weight_3d.transpose(1, 2), go_4d).contiguous().view(input.sizes());
  }
  if (!need_weight && !input_through_columns) return {grad_input, grad_weight, at::Tensor()};

  const ChunkPlan plan = plan_chunks(g, input.element_size());
  const ChunkBuffers buffers(g, plan, input);
  const bool row_chunks = plan.rows < g.out_h;  // chunks overlap in the input: accumulate into zeros
  if (input_through_columns)
    grad_input = row_chunks ? at::zeros(input.sizes(), input.options()) : at::empty(input.sizes(), input.options());
  // grad_weight is summed over chunks in chunk order; half/bfloat16 sum in float.
  const at::ScalarType acc_dtype = accumulate_dtype(input.scalar_type());
  at::Tensor grad_weight_acc;
  if (need_weight) grad_weight_acc = at::zeros({g.groups, cout_g, g.col_rows()}, input.options().dtype(acc_dtype));

  for_each_chunk(g, plan, [&](const Chunk& c) {
    at::Tensor col = buffers.columns(g, c);
    at::Tensor go_staged = buffers.staging(g, c);  // dY of the chunk, (groups, cout_g, pixels)
    copy_output_to_staging(g, c, grad_output, go_staged);
    if (need_weight) {
      launch_im2col(g, c, input, col);
      if (acc_dtype == input.scalar_type()) {
        grad_weight_acc.baddbmm_(go_staged, col.transpose(1, 2));
      } else {
        grad_weight_acc.add_(at::bmm(go_staged, col.transpose(1, 2)));
      }
    }
    if (input_through_columns) {
      at::bmm_out(col, weight_3d.transpose(1, 2), go_staged);
      launch_col2im(g, c, col, grad_input, /*accumulate=*/row_chunks);
    }
  });
  if (need_weight) grad_weight = grad_weight_acc.to(input.scalar_type()).view(weight.sizes());
  return {grad_input, grad_weight, at::Tensor()};
}

}  // namespace fastconv::cuda
