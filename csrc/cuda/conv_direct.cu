// Direct convolution on CUDA: computed straight from the input, tile by tile, with no column buffer.
//
// Forward: a block computes a tile of output pixels (one per thread) for a block of output channels of
// one image. For each stage of input channels it copies the input patch under the tile and the
// matching weights into shared memory; every thread then reads its window from there and keeps one
// accumulator per output channel in registers. Depthwise convolution (groups == channels) runs the same
// kernel with one output channel per block: there is nothing to share across output channels, but
// the patch still turns each input element's many reads into one global load.
//
// grad_input is the transposed problem with the same structure: a block computes a tile of input
// pixels for a block of input channels, staging the grad_output patch that reaches the tile.
// grad_weight: one block per (output channel, input channel, group of taps, slice of the batch*pixels
// sum) reduces its slice in a fixed tree; a second kernel adds the slices in order. No atomics, so the
// whole backward pass is deterministic.
//
// When a tile's patch cannot fit in shared memory (very large or very dilated kernels), simple
// per-element kernels that read global memory take over.
#include <algorithm>

#include "cuda/conv_kernels.cuh"
#include "cuda/cuda_utils.cuh"

namespace fastconv::cuda {
namespace {

// Shared memory one block of the tiled kernels may use; small enough for several blocks per SM.
constexpr int64_t kTileSharedBytes = 24 * 1024;
// Channels per block of the tiled kernels: 8 for dense layers, 1 for depthwise and very narrow groups.
constexpr int kWideChannelBlock = 8;

// How a tiled kernel covers its problem. The "tile" is of the pixels the kernel writes (output pixels
// for forward, input pixels for grad_input); the "patch" is what it reads for a tile, per channel.
struct Tiling {
  int tile_h, tile_w;          // threads per block: tile_w x tile_h
  int patch_h, patch_w;        // patch staged in shared memory, per staged channel
  int stage;                   // channels staged per pass
  int64_t tiles_h, tiles_w;    // tiles over the written plane
  int64_t channel_blocks;      // blocks of written channels per group
};

// Shared-memory bytes of one pass: `stage` patches and the weights of `stage` x `channel_block` taps.
int64_t tile_shared_bytes(int64_t patch_elems, int64_t stage, int64_t channel_block, int64_t taps,
                          int64_t acc_size) {
  return stage * (patch_elems + channel_block * taps) * acc_size;
}

// Picks a tile for a plane of height x width written pixels; patch_extent(tile_h, tile_w) gives the
// patch size. Returns false when not even a one-row, 32-wide tile's patch fits in shared memory.
template <typename PatchExtent>
bool choose_tiling(int64_t height, int64_t width, int64_t channels_to_stage, int64_t channel_block, int64_t taps,
                   int64_t acc_size, PatchExtent patch_extent, Tiling& t) {
  // Up to 256 threads: rows 32 wide (a warp along a row), or 8/16 wide for narrow planes, 256 wide for
  // 1-D problems; as many rows as the plane has, up to 256 threads.
  int tw = height == 1 ? 256 : width > 16 ? 32 : width > 8 ? 16 : 8;
  while (tw > 32 && tw / 2 >= width) tw /= 2;
  int th = 1;
  while (th * tw < 256 && th < height) th *= 2;
  // Smaller tiles until the patch of one channel fits: fewer rows first, then narrower rows.
  while (true) {
    int64_t ph, pw;
    patch_extent(th, tw, ph, pw);
    const int64_t per_channel = tile_shared_bytes(ph * pw, 1, channel_block, taps, acc_size);
    if (per_channel <= kSharedMemoryBytes) {
      t.tile_h = th;
      t.tile_w = tw;
      t.patch_h = static_cast<int>(ph);
      t.patch_w = static_cast<int>(pw);
      t.stage = static_cast<int>(std::clamp<int64_t>(kTileSharedBytes / per_channel, 1, channels_to_stage));
      t.tiles_h = ceil_div<int64_t>(height, th);
      t.tiles_w = ceil_div<int64_t>(width, tw);
      return true;
    }
    if (th > 1) {
      th /= 2;
    } else if (tw > 32) {
      tw /= 2;
    } else {
      return false;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward (kernels read ConvGeometry's fields only: its member functions are host code)
// ---------------------------------------------------------------------------------------------

// Block work item: (image, group, block of CB output channels, output tile), in a block loop.
template <typename scalar_t, int CB>
__global__ void __launch_bounds__(256)
    direct_forward_tiled_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ weight,
                                scalar_t* __restrict__ output, ConvGeometry g, Tiling t) {
  using acc_t = acc_type<scalar_t>;
  FASTCONV_DYNAMIC_SHARED(acc_t, shared);
  const int taps = static_cast<int>(g.kernel_h * g.kernel_w);
  const int patch_elems = t.patch_h * t.patch_w;
  acc_t* patches = shared;                          // [stage][patch_h][patch_w]
  acc_t* weights = shared + t.stage * patch_elems;  // [stage][CB][taps]
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int tid = ty * blockDim.x + tx, threads = blockDim.x * blockDim.y;
  const int stride_h = g.stride_h, stride_w = g.stride_w, dil_h = g.dil_h, dil_w = g.dil_w;
  const int kernel_w = g.kernel_w;
  const int64_t cin_g = g.in_channels / g.groups, cout_g = g.out_channels / g.groups;
  const int64_t in_plane = g.in_h * g.in_w;
  const int64_t tiles = t.tiles_h * t.tiles_w;
  const int64_t work = g.batch * g.groups * t.channel_blocks * tiles;

  for (int64_t b = blockIdx.x; b < work; b += gridDim.x) {
    const int64_t tile = b % tiles, rest = b / tiles;
    const int64_t cblock = rest % (g.groups * t.channel_blocks), n = rest / (g.groups * t.channel_blocks);
    const int64_t grp = cblock / t.channel_blocks;
    const int64_t oc0 = grp * cout_g + (cblock % t.channel_blocks) * CB;
    const int oc_count = static_cast<int>(std::min<int64_t>(CB, (grp + 1) * cout_g - oc0));
    const int64_t oh0 = (tile / t.tiles_w) * t.tile_h, ow0 = (tile % t.tiles_w) * t.tile_w;
    const int64_t oh = oh0 + ty, ow = ow0 + tx;
    const bool active = oh < g.out_h && ow < g.out_w;
    const int64_t ih_origin = oh0 * g.stride_h - g.pad_h, iw_origin = ow0 * g.stride_w - g.pad_w;
    const scalar_t* in_group = input + (n * g.in_channels + grp * cin_g) * in_plane;

    acc_t acc[CB];
#pragma unroll
    for (int k = 0; k < CB; ++k) acc[k] = 0;

    for (int64_t ic0 = 0; ic0 < cin_g; ic0 += t.stage) {
      const int stage = static_cast<int>(std::min<int64_t>(t.stage, cin_g - ic0));
      for (int e = tid; e < stage * patch_elems; e += threads) {
        const int s = e / patch_elems, py = (e % patch_elems) / t.patch_w, px = e % t.patch_w;
        const int64_t ih = ih_origin + py, iw = iw_origin + px;
        const bool inside = ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w;
        patches[e] = inside ? static_cast<acc_t>(in_group[(ic0 + s) * in_plane + ih * g.in_w + iw]) : acc_t(0);
      }
      for (int e = tid; e < stage * CB * taps; e += threads) {
        const int s = e / (CB * taps), k = (e % (CB * taps)) / taps, tap = e % taps;
        weights[e] = k < oc_count ? static_cast<acc_t>(weight[((oc0 + k) * cin_g + ic0 + s) * taps + tap]) : acc_t(0);
      }
      __syncthreads();
      if (active) {
        for (int s = 0; s < stage; ++s) {
          const acc_t* window = patches + s * patch_elems + ty * stride_h * t.patch_w + tx * stride_w;
          const acc_t* w = weights + s * CB * taps;
          for (int ki = 0; ki < g.kernel_h; ++ki) {
            for (int kj = 0; kj < kernel_w; ++kj) {
              const acc_t v = window[ki * dil_h * t.patch_w + kj * dil_w];
              const int tap = ki * kernel_w + kj;
#pragma unroll
              for (int k = 0; k < CB; ++k) acc[k] += v * w[k * taps + tap];
            }
          }
        }
      }
      __syncthreads();
    }
    if (active) {
#pragma unroll  // constant indices keep acc[] in registers
      for (int k = 0; k < CB; ++k)
        if (k < oc_count)
          output[((n * g.out_channels + oc0 + k) * g.out_h + oh) * g.out_w + ow] = static_cast<scalar_t>(acc[k]);
    }
  }
}

// Fallback: one thread per output element, window read from global memory.
template <typename scalar_t>
__global__ void direct_forward_gather_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ weight,
                                             scalar_t* __restrict__ output, ConvGeometry g) {
  using acc_t = acc_type<scalar_t>;
  const int64_t cin_g = g.in_channels / g.groups, cout_g = g.out_channels / g.groups;
  const int64_t taps = g.kernel_h * g.kernel_w, out_plane = g.out_h * g.out_w;
  const int64_t total = g.batch * g.out_channels * out_plane;
  FASTCONV_KERNEL_LOOP(int64_t, i, total) {
    const int64_t ow = i % g.out_w, oh = (i / g.out_w) % g.out_h;
    const int64_t oc = (i / out_plane) % g.out_channels, n = i / (out_plane * g.out_channels);
    const scalar_t* in_group = input + (n * g.in_channels + (oc / cout_g) * cin_g) * g.in_h * g.in_w;
    acc_t acc = 0;
    for (int64_t ic = 0; ic < cin_g; ++ic) {
      const scalar_t* plane = in_group + ic * g.in_h * g.in_w;
      const scalar_t* w = weight + (oc * cin_g + ic) * taps;
      for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
        const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dil_h;
        if (ih < 0 || ih >= g.in_h) continue;
        for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
          const int64_t iw = ow * g.stride_w - g.pad_w + kj * g.dil_w;
          if (iw < 0 || iw >= g.in_w) continue;
          acc += static_cast<acc_t>(plane[ih * g.in_w + iw]) * static_cast<acc_t>(w[ki * g.kernel_w + kj]);
        }
      }
    }
    output[i] = static_cast<scalar_t>(acc);
  }
}

// ---------------------------------------------------------------------------------------------
// grad_input
// ---------------------------------------------------------------------------------------------

// First output row (column) of the grad_output patch for a tile starting at input row i0: the rows
// whose window can reach the tile start at floor((i0 + pad - (k - 1) * dil) / stride).
__device__ __forceinline__ int64_t patch_origin(int64_t i0, int64_t pad, int64_t kernel, int64_t dil,
                                                int64_t stride) {
  return floor_div<int64_t>(i0 + pad - (kernel - 1) * dil, stride);
}

// Block work item: (image, group, block of CB input channels, input tile), in a block loop. A thread
// owns one input pixel and sums w * dY over the output channels of its group and the taps that read it.
template <typename scalar_t, int CB>
__global__ void __launch_bounds__(256)
    direct_grad_input_tiled_kernel(const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ weight,
                                   scalar_t* __restrict__ grad_input, ConvGeometry g, Tiling t) {
  using acc_t = acc_type<scalar_t>;
  FASTCONV_DYNAMIC_SHARED(acc_t, shared);
  const int taps = static_cast<int>(g.kernel_h * g.kernel_w);
  const int patch_elems = t.patch_h * t.patch_w;
  acc_t* patches = shared;                          // [stage][patch_h][patch_w] of grad_output
  acc_t* weights = shared + t.stage * patch_elems;  // [stage][CB][taps]
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int tid = ty * blockDim.x + tx, threads = blockDim.x * blockDim.y;
  const int stride_h = g.stride_h, stride_w = g.stride_w, dil_h = g.dil_h, dil_w = g.dil_w;
  const int pad_h = g.pad_h, pad_w = g.pad_w, kernel_w = g.kernel_w;
  const int64_t cin_g = g.in_channels / g.groups, cout_g = g.out_channels / g.groups;
  const int64_t out_plane = g.out_h * g.out_w;
  const int64_t tiles = t.tiles_h * t.tiles_w;
  const int64_t work = g.batch * g.groups * t.channel_blocks * tiles;

  for (int64_t b = blockIdx.x; b < work; b += gridDim.x) {
    const int64_t tile = b % tiles, rest = b / tiles;
    const int64_t cblock = rest % (g.groups * t.channel_blocks), n = rest / (g.groups * t.channel_blocks);
    const int64_t grp = cblock / t.channel_blocks;
    const int64_t icl0 = (cblock % t.channel_blocks) * CB;  // first input channel of the block, in its group
    const int ic_count = static_cast<int>(std::min<int64_t>(CB, cin_g - icl0));
    const int64_t ih0 = (tile / t.tiles_w) * t.tile_h, iw0 = (tile % t.tiles_w) * t.tile_w;
    const int64_t ih = ih0 + ty, iw = iw0 + tx;
    const bool active = ih < g.in_h && iw < g.in_w;
    const int64_t oh_origin = patch_origin(ih0, g.pad_h, g.kernel_h, g.dil_h, g.stride_h);
    const int64_t ow_origin = patch_origin(iw0, g.pad_w, g.kernel_w, g.dil_w, g.stride_w);
    const scalar_t* go_group = grad_output + (n * g.out_channels + grp * cout_g) * out_plane;

    acc_t acc[CB];
#pragma unroll
    for (int k = 0; k < CB; ++k) acc[k] = 0;

    for (int64_t j0 = 0; j0 < cout_g; j0 += t.stage) {
      const int stage = static_cast<int>(std::min<int64_t>(t.stage, cout_g - j0));
      for (int e = tid; e < stage * patch_elems; e += threads) {
        const int s = e / patch_elems, py = (e % patch_elems) / t.patch_w, px = e % t.patch_w;
        const int64_t oh = oh_origin + py, ow = ow_origin + px;
        const bool inside = oh >= 0 && oh < g.out_h && ow >= 0 && ow < g.out_w;
        patches[e] = inside ? static_cast<acc_t>(go_group[(j0 + s) * out_plane + oh * g.out_w + ow]) : acc_t(0);
      }
      for (int e = tid; e < stage * CB * taps; e += threads) {
        const int s = e / (CB * taps), k = (e % (CB * taps)) / taps, tap = e % taps;
        const int64_t oc = grp * cout_g + j0 + s;
        weights[e] = k < ic_count ? static_cast<acc_t>(weight[(oc * cin_g + icl0 + k) * taps + tap]) : acc_t(0);
      }
      __syncthreads();
      if (active) {
        for (int ki = 0; ki < g.kernel_h; ++ki) {
          const int64_t oh_scaled = ih + pad_h - ki * dil_h;  // oh * stride_h when tap ki of row oh reads ih
          if (oh_scaled < 0) break;
          if (oh_scaled % stride_h != 0) continue;
          const int py = static_cast<int>(oh_scaled / stride_h - oh_origin);
          for (int kj = 0; kj < kernel_w; ++kj) {
            const int64_t ow_scaled = iw + pad_w - kj * dil_w;
            if (ow_scaled < 0) break;
            if (ow_scaled % stride_w != 0) continue;
            const int px = static_cast<int>(ow_scaled / stride_w - ow_origin);
            const int tap = ki * kernel_w + kj;
            for (int s = 0; s < stage; ++s) {
              const acc_t v = patches[s * patch_elems + py * t.patch_w + px];
              const acc_t* w = weights + s * CB * taps + tap;
#pragma unroll
              for (int k = 0; k < CB; ++k) acc[k] += v * w[k * taps];
            }
          }
        }
      }
      __syncthreads();
    }
    if (active) {
#pragma unroll  // constant indices keep acc[] in registers
      for (int k = 0; k < CB; ++k)
        if (k < ic_count)
            grad_input[((n * g.in_channels + grp * cin_g + icl0 + k) * g.in_h + ih) * g.in_w + iw] =
              static_cast<scalar_t>(acc[k]);
    }
  }
}

// Fallback: one thread per input element, grad_output read from global memory.
template <typename scalar_t>
__global__ void direct_grad_input_gather_kernel(const scalar_t* __restrict__ grad_output,
                                                const scalar_t* __restrict__ weight,
                                                scalar_t* __restrict__ grad_input, ConvGeometry g) {
  using acc_t = acc_type<scalar_t>;
  const int64_t cin_g = g.in_channels / g.groups, cout_g = g.out_channels / g.groups;
  const int64_t taps = g.kernel_h * g.kernel_w, in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const int64_t total = g.batch * g.in_channels * in_plane;
  FASTCONV_KERNEL_LOOP(int64_t, i, total) {
    const int64_t iw = i % g.in_w, ih = (i / g.in_w) % g.in_h;
    const int64_t c = (i / in_plane) % g.in_channels, n = i / (in_plane * g.in_channels);
    const int64_t grp = c / cin_g, ic = c % cin_g;
    acc_t acc = 0;
    for (int64_t j = 0; j < cout_g; ++j) {
      const int64_t oc = grp * cout_g + j;
      const scalar_t* go_plane = grad_output + (n * g.out_channels + oc) * out_plane;
      const scalar_t* w = weight + (oc * cin_g + ic) * taps;
      for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
        const int64_t oh_scaled = ih + g.pad_h - ki * g.dil_h;
        if (oh_scaled < 0) break;
        if (oh_scaled % g.stride_h != 0 || oh_scaled / g.stride_h >= g.out_h) continue;
        for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
          const int64_t ow_scaled = iw + g.pad_w - kj * g.dil_w;
          if (ow_scaled < 0) break;
          if (ow_scaled % g.stride_w != 0 || ow_scaled / g.stride_w >= g.out_w) continue;
          acc += static_cast<acc_t>(go_plane[(oh_scaled / g.stride_h) * g.out_w + ow_scaled / g.stride_w]) *
                 static_cast<acc_t>(w[ki * g.kernel_w + kj]);
        }
      }
    }
    grad_input[i] = static_cast<scalar_t>(acc);
  }
}

// ---------------------------------------------------------------------------------------------
// grad_weight
// ---------------------------------------------------------------------------------------------

// Taps one grad_weight block reduces at once (a 3x3 kernel in one pass).
constexpr int kTapsPerBlock = 9;

// Block work item: (output channel oc, input channel ic of its group, group of taps, slice of the
// batch * output-pixel sum). Each thread sums its strided share of the slice in order, then the block
// reduces each tap in a fixed tree; partial[(weight element) * slices + slice] receives the result.
template <typename scalar_t, int TAPS>
__global__ void __launch_bounds__(kThreads)
    grad_weight_partial_kernel(const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ input,
                               acc_type<scalar_t>* __restrict__ partial, ConvGeometry g, int64_t tap_groups,
                               int64_t slices) {
  using acc_t = acc_type<scalar_t>;
  __shared__ acc_t scratch[kThreads];
  const int64_t cin_g = g.in_channels / g.groups, cout_g = g.out_channels / g.groups;
  const int64_t taps = g.kernel_h * g.kernel_w, out_plane = g.out_h * g.out_w, in_plane = g.in_h * g.in_w;
  const int64_t items = g.batch * out_plane;
  const int64_t work = g.out_channels * cin_g * tap_groups * slices;

  for (int64_t b = blockIdx.x; b < work; b += gridDim.x) {
    const int64_t slice = b % slices, tap_group = (b / slices) % tap_groups, pair = b / (slices * tap_groups);
    const int64_t oc = pair / cin_g, ic = pair % cin_g;
    const int64_t c = (oc / cout_g) * cin_g + ic;
    const int64_t tap0 = tap_group * TAPS;
    const int tap_count = static_cast<int>(std::min<int64_t>(TAPS, taps - tap0));
    int64_t tap_ki[TAPS], tap_kj[TAPS];
#pragma unroll
    for (int q = 0; q < TAPS; ++q) {
      const int64_t tap = tap0 + (q < tap_count ? q : 0);
      tap_ki[q] = (tap / g.kernel_w) * g.dil_h;
      tap_kj[q] = (tap % g.kernel_w) * g.dil_w;
    }
    acc_t acc[TAPS];
#pragma unroll
    for (int q = 0; q < TAPS; ++q) acc[q] = 0;

    const int64_t m_begin = slice * items / slices, m_end = (slice + 1) * items / slices;
    for (int64_t m = m_begin + threadIdx.x; m < m_end; m += kThreads) {
      const int64_t n = m / out_plane, oh = (m % out_plane) / g.out_w, ow = m % g.out_w;
      const acc_t dy = static_cast<acc_t>(grad_output[(n * g.out_channels + oc) * out_plane + oh * g.out_w + ow]);
      const scalar_t* plane = input + (n * g.in_channels + c) * in_plane;
      const int64_t ih0 = oh * g.stride_h - g.pad_h, iw0 = ow * g.stride_w - g.pad_w;
#pragma unroll
      for (int q = 0; q < TAPS; ++q) {
        const int64_t ih = ih0 + tap_ki[q], iw = iw0 + tap_kj[q];
        if (q < tap_count && ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w)
          acc[q] += dy * static_cast<acc_t>(plane[ih * g.in_w + iw]);
      }
    }
#pragma unroll
    for (int q = 0; q < TAPS; ++q) {
      const acc_t total = block_sum(acc[q], scratch);
      if (threadIdx.x == 0 && q < tap_count) partial[((pair * taps) + tap0 + q) * slices + slice] = total;
    }
  }
}

// grad_weight[e] = sum over slices, in slice order, of partial[e * slices + slice].
template <typename scalar_t>
__global__ void sum_slices_kernel(const acc_type<scalar_t>* __restrict__ partial, scalar_t* __restrict__ grad_weight,
                                  int64_t elements, int64_t slices) {
  using acc_t = acc_type<scalar_t>;
  FASTCONV_KERNEL_LOOP(int64_t, e, elements) {
    acc_t sum = 0;
    for (int64_t s = 0; s < slices; ++s) sum += partial[e * slices + s];
    grad_weight[e] = static_cast<scalar_t>(sum);
  }
}

// Slices of the batch * pixels sum per weight element: enough blocks for small layers (depthwise),
// none wasted on big ones. Depends on the shape only, so results repeat bitwise on any device.
int64_t grad_weight_slices(const ConvGeometry& g) {
  constexpr int64_t kItemsPerSlice = 8192;
  return std::clamp<int64_t>(ceil_div<int64_t>(g.batch * g.out_h * g.out_w, kItemsPerSlice), 1, 128);
}

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------

// The tiled kernels keep strides, dilations, paddings and kernel sizes in int.
bool fits_tiled_kernels(const ConvGeometry& g) {
  return std::max({g.stride_h, g.stride_w, g.dil_h, g.dil_w, g.pad_h, g.pad_w, g.kernel_h, g.kernel_w}) < (1 << 20);
}

int channel_block_for(int64_t channels_per_group) {
  return channels_per_group >= kWideChannelBlock ? kWideChannelBlock : 1;
}

template <typename scalar_t, int CB>
void launch_forward_tiled(const ConvGeometry& g, const at::Tensor& input, const at::Tensor& weight, at::Tensor& out,
                          const Tiling& t) {
  using acc_t = acc_type<scalar_t>;
  const int64_t bytes = tile_shared_bytes(int64_t(t.patch_h) * t.patch_w, t.stage, CB, g.kernel_h * g.kernel_w,
                                          sizeof(acc_t));
  const int64_t work = g.batch * g.groups * t.channel_blocks * t.tiles_h * t.tiles_w;
  launch_kernel(direct_forward_tiled_kernel<scalar_t, CB>, grid_for_blocks(work), dim3(t.tile_w, t.tile_h), bytes,
                input.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                g, t);
}

template <typename scalar_t, int CB>
void launch_grad_input_tiled(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& weight,
                             at::Tensor& grad_input, const Tiling& t) {
  using acc_t = acc_type<scalar_t>;
  const int64_t bytes = tile_shared_bytes(int64_t(t.patch_h) * t.patch_w, t.stage, CB, g.kernel_h * g.kernel_w,
                                          sizeof(acc_t));
  const int64_t work = g.batch * g.groups * t.channel_blocks * t.tiles_h * t.tiles_w;
  launch_kernel(direct_grad_input_tiled_kernel<scalar_t, CB>, grid_for_blocks(work), dim3(t.tile_w, t.tile_h), bytes,
                grad_output.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                grad_input.mutable_data_ptr<scalar_t>(), g, t);
}

void direct_forward(const ConvGeometry& g, const at::Tensor& input, const at::Tensor& weight, at::Tensor& out) {
  const int64_t cin_g = g.in_channels_per_group(), cout_g = g.out_channels_per_group();
  const int cb = channel_block_for(cout_g);
  Tiling t;
  const int64_t acc_bytes = c10::elementSize(accumulate_dtype(input.scalar_type()));
  const bool tiled = fits_tiled_kernels(g) && choose_tiling(
      g.out_h, g.out_w, cin_g, cb, g.kernel_h * g.kernel_w, acc_bytes,
      [&](int th, int tw, int64_t& ph, int64_t& pw) {
        ph = (th - 1) * g.stride_h + (g.kernel_h - 1) * g.dil_h + 1;
        pw = (tw - 1) * g.stride_w + (g.kernel_w - 1) * g.dil_w + 1;
      },
      t);
  FASTCONV_DISPATCH_FLOAT_TYPES(input.scalar_type(), "direct_conv2d_forward_cuda", [&] {
    if (!tiled) {
      launch_kernel(direct_forward_gather_kernel<scalar_t>, grid_for(out.numel()), kThreads, 0,
                    input.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                    out.mutable_data_ptr<scalar_t>(), g);
      return;
    }
    t.channel_blocks = ceil_div<int64_t>(cout_g, cb);
    if (cb == kWideChannelBlock) {
      launch_forward_tiled<scalar_t, kWideChannelBlock>(g, input, weight, out, t);
    } else {
      launch_forward_tiled<scalar_t, 1>(g, input, weight, out, t);
    }
  });
}

void direct_grad_input(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& weight,
                       at::Tensor& grad_input) {
  const int64_t cin_g = g.in_channels_per_group(), cout_g = g.out_channels_per_group();
  const int cb = channel_block_for(cin_g);
  Tiling t;
  const int64_t acc_bytes = c10::elementSize(accumulate_dtype(grad_output.scalar_type()));
  const bool tiled = fits_tiled_kernels(g) && choose_tiling(
      g.in_h, g.in_w, cout_g, cb, g.kernel_h * g.kernel_w, acc_bytes,
      [&](int th, int tw, int64_t& ph, int64_t& pw) {
        // Output rows reaching input rows [i0, i0 + th): at most (th - 1 + (k - 1) * dil) / stride + 2.
        ph = (th - 1 + (g.kernel_h - 1) * g.dil_h) / g.stride_h + 2;
        pw = (tw - 1 + (g.kernel_w - 1) * g.dil_w) / g.stride_w + 2;
      },
      t);
  FASTCONV_DISPATCH_FLOAT_TYPES(grad_output.scalar_type(), "direct_conv2d_grad_input_cuda", [&] {
    if (!tiled) {
      launch_kernel(direct_grad_input_gather_kernel<scalar_t>, grid_for(grad_input.numel()), kThreads, 0,
                    grad_output.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                    grad_input.mutable_data_ptr<scalar_t>(), g);
      return;
    }
    t.channel_blocks = ceil_div<int64_t>(cin_g, cb);
    if (cb == kWideChannelBlock) {
      launch_grad_input_tiled<scalar_t, kWideChannelBlock>(g, grad_output, weight, grad_input, t);
    } else {
      launch_grad_input_tiled<scalar_t, 1>(g, grad_output, weight, grad_input, t);
    }
  });
}

void direct_grad_weight(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& input,
                        at::Tensor& grad_weight) {
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t slices = grad_weight_slices(g);
  at::Tensor partial =
      at::empty({grad_weight.numel() * slices}, input.options().dtype(accumulate_dtype(input.scalar_type())));
  FASTCONV_DISPATCH_FLOAT_TYPES(input.scalar_type(), "direct_conv2d_grad_weight_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    const int64_t pairs = g.out_channels * g.in_channels_per_group();
    if (taps == 1) {
      launch_kernel(grad_weight_partial_kernel<scalar_t, 1>, grid_for_blocks(pairs * slices), kThreads, 0,
                    grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
                    partial.mutable_data_ptr<acc_t>(), g, int64_t(1), slices);
    } else {
      const int64_t tap_groups = ceil_div<int64_t>(taps, kTapsPerBlock);
      launch_kernel(grad_weight_partial_kernel<scalar_t, kTapsPerBlock>, grid_for_blocks(pairs * tap_groups * slices),
                    kThreads, 0, grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
                    partial.mutable_data_ptr<acc_t>(), g, tap_groups, slices);
    }
    launch_kernel(sum_slices_kernel<scalar_t>, grid_for(grad_weight.numel()), kThreads, 0,
                  partial.const_data_ptr<acc_t>(), grad_weight.mutable_data_ptr<scalar_t>(), grad_weight.numel(),
                  slices);
  });
}

}  // namespace

// The grad_weight partial sums: one per weight element and slice, in the accumulation type.
int64_t direct_backward_workspace_bytes(const ConvGeometry& g, at::ScalarType dtype) {
  const int64_t weight_elements = g.out_channels * g.in_channels_per_group() * g.kernel_h * g.kernel_w;
  return weight_elements * grad_weight_slices(g) * c10::elementSize(accumulate_dtype(dtype));
}

at::Tensor direct_conv2d_forward(const ConvGeometry& g, const at::Tensor& input, const at::Tensor& weight) {
  at::Tensor out = at::empty(g.output_sizes(), input.options());
  direct_forward(g, input, weight, out);
  return out;
}

ConvGrads direct_conv2d_backward(const ConvGeometry& g, const at::Tensor& grad_output, const at::Tensor& input,
                                 const at::Tensor& weight, std::array<bool, 3> output_mask) {
  at::Tensor grad_input, grad_weight;
  if (output_mask[0]) {
    grad_input = at::empty(input.sizes(), input.options());
    direct_grad_input(g, grad_output, weight, grad_input);
  }
  if (output_mask[1]) {
    grad_weight = at::empty(weight.sizes(), weight.options());
    direct_grad_weight(g, grad_output, input, grad_weight);
  }
  return {grad_input, grad_weight, at::Tensor()};
}

}  // namespace fastconv::cuda
