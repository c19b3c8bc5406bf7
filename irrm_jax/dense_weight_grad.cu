// The kernel and bias gradients of the flat layout's convolutions (irrm_jax/cuda_kernels.py, speed option dense_cuda)
// as an XLA FFI handler: the partial sums of dense_kernels.weight_grad from the same flat arrays, for several layers
// of one output width at once (a block's layers, each pairing its inputs with its output's gradient).
//
// A tap's kernel gradient is a product summed over pixels, dW[tap] = sum_p x(p + offset(tap))^T g(p). A block sums
// it for one 16-channel chunk of one layer's inputs and NT output channels over a range of tiles of 4 image lines x S
// pixels: per tile it stages (cp.async, pipelined) the layer's gradient tile and the chunk's input tile with its
// one-pixel halo in shared memory, and each warp (one line of the tile) takes all nine taps' products from there
// (mma.sync, D = G^T X: output channels as rows, pixels summed), the gradient's fragment loaded once for the nine.
// A bias gradient is the same product with a matrix of ones, in the blocks of its layer's first chunk. The four
// warps' sums are added in shared memory; a block writes its partial out[group][tap][row][cout] (rows: every input's
// channels, then one bias row a layer, nonzero at the centre tap only, as dense_kernels.weight_grad), and XLA adds
// the groups: no atomics, deterministic sums. One call for all of a block's layers fills the GPU with fewer groups
// a layer than a call a layer would: fewer partials to write and add, fewer launches.
#include "dense_cuda.cuh"

namespace {

using namespace dense_cuda;

constexpr int kLines = 4;  // image lines a tile has (one a warp)
constexpr int kThreads = 32 * kLines;
constexpr int kTileLines = kLines + 2;
constexpr int kChunk = 16;  // input channels a block sums for
constexpr int kMaxChunks = 64;
constexpr int kMaxPairs = 16;  // inputs of one call, all layers' (an IRN DenseBlock's first four layers read 10)
constexpr uint32_t kOnesBf16 = 0x3F803F80u;  // two bfloat16 ones
constexpr uint32_t kOneTf32 = 0x3F800000u;

struct Params {
  const char* x[kMaxPairs];  // flat inputs (rows, c[i])
  int c[kMaxPairs];
  int grad_of[kMaxPairs];  // the layer (its output's gradient) that input i belongs to
  int chunk_input[kMaxChunks], chunk_channel[kMaxChunks];  // a chunk's input, and its first channel there
  int chunk_bias[kMaxChunks];  // the bias row a chunk's blocks also sum (its layer's first chunk), else -1
  const char* g[kMaxPairs];    // the layers' output gradients, flat (rows, cout)
  float* out;                  // (groups, 9, total, cout)
  long long x_step[kMaxPairs], g_step[kMaxPairs], out_step;  // member steps (dense_cuda.cuh)
  long long rows, margin;
  int lines, w2, cout, total;  // lines = n * (h + 2); w2 = w + 2; total = all inputs' channels + a bias row a layer
  int chunks, col_tiles, tiles, groups, members;
};

// Byte offset of 16-byte segment `seg` of row `row` in a staged region of RB-byte rows, swizzled against bank
// conflicts: bfloat16 tiles are read by ldmatrix (`ldmatrix_swizzled`), float32 ones by 64-bit loads (a half-warp
// reads four consecutive rows x eight channels; the rows' 32-byte halves swap every two rows).
template <typename T, int RB>
__device__ __forceinline__ uint32_t swizzled(int row, int seg) {
  if constexpr (sizeof(T) == 2) return ldmatrix_swizzled<RB>(row, seg);
  return row * RB + ((seg ^ (2 * ((row >> 1) & 1))) << 4);
}

// A float32 element's byte offset in such a region.
template <int RB>
__device__ __forceinline__ uint32_t element(int row, int e) {
  return swizzled<float, RB>(row, e >> 2) + (e & 3) * 4;
}

// One pipeline stage: the gradient's tile (4 lines x S pixels x NT channels), then the input chunk's tile
// (6 lines x S + 2 pixels x 16 channels).
template <typename T, int NT, int S>
struct Stage {
  static constexpr int kGradRow = NT * sizeof(T);
  static constexpr int kInputRow = kChunk * sizeof(T);
  static constexpr int kCols = S + 2;
  static constexpr int kInput = kLines * S * kGradRow;
  static constexpr int kBytes = kInput + kTileLines * kCols * kInputRow;
};

// Stages one tile. A thread copies the same 16-byte segment of every R-th row of a region (R = kThreads / the
// segments of a row, a multiple of 16), so its shared-memory addresses are one base plus constants (the swizzle reads
// a row's bits 1-2 only), and its source steps R pixels at a time, on to the next image line past the tile's width:
// a few instructions a copy.
template <typename T, int NT, int S>
__device__ __forceinline__ void load_stage(const Params& p, int member, int chunk, int n0, int tile, uint32_t smem) {
  using St = Stage<T, NT, S>;
  const int line0 = (tile / p.col_tiles) * kLines, col0 = (tile % p.col_tiles) * S;
  const int input = p.chunk_input[chunk], layer = p.grad_of[input];
  {  // the gradient: kLines lines x S pixels x NT channels; zeros past the image lines or the row width
    constexpr int kSegs = St::kGradRow / 16, kStep = kThreads / kSegs;
    static_assert(kLines * S * kSegs % kThreads == 0, "whole steps");
    const int seg = threadIdx.x % kSegs, r0 = threadIdx.x / kSegs;
    const char* origin = p.g[layer] + member * p.g_step[layer] + n0 * sizeof(T) + seg * 16;
    const char* g = origin + (p.margin + (long long)line0 * p.w2 + col0) * p.cout * sizeof(T);
    const int pixel_bytes = p.cout * (int)sizeof(T);
    int line = r0 / S, col = r0 % S, pixel = line * p.w2 + col;  // pixel: from the tile's first
#pragma unroll
    for (int j = 0; j < kLines * S * kSegs / kThreads; ++j) {
      const bool valid = line0 + line < p.lines && col0 + col < p.w2;
      cp_async16(smem + swizzled<T, St::kGradRow>(r0, seg) + j * kStep * St::kGradRow,
                 valid ? g + (long long)pixel * pixel_bytes : origin, valid);
      col += kStep;
      pixel += kStep;
#pragma unroll
      for (int wrap = 0; wrap < (kStep + S - 1) / S; ++wrap)
        if (col >= S) col -= S, pixel += p.w2 - S, ++line;
    }
  }
  {  // the input chunk: kTileLines lines x kCols pixels (the one-pixel halo) x 16 channels; zeros outside the array
    constexpr int kSegs = St::kInputRow / 16, kStep = kThreads / kSegs, kRows = kTileLines * St::kCols;
    const int seg = threadIdx.x % kSegs, r0 = threadIdx.x / kSegs;
    const long long row_bytes = (long long)p.c[input] * sizeof(T);
    const char* origin = p.x[input] + member * p.x_step[input] + p.chunk_channel[chunk] * sizeof(T) + seg * 16;
    const long long first = p.margin + (long long)(line0 - 1) * p.w2 + col0 - 1;  // the region's first flat row
    const char* x = origin + first * row_bytes;
    const int lowest = (int)max(-first, -(long long)INT_MAX), end = (int)min(p.rows - first, (long long)INT_MAX);
    int line = r0 / St::kCols, col = r0 % St::kCols, pixel = line * p.w2 + col;
#pragma unroll
    for (int j = 0; j < (kRows * kSegs + kThreads - 1) / kThreads; ++j) {
      if (line < kTileLines) {
        const bool valid = pixel >= lowest && pixel < end;
        cp_async16(smem + St::kInput + swizzled<T, St::kInputRow>(r0, seg) + j * kStep * St::kInputRow,
                   valid ? x + pixel * row_bytes : origin, valid);
      }
      col += kStep;
      pixel += kStep;
#pragma unroll
      for (int wrap = 0; wrap < (kStep + St::kCols - 1) / St::kCols; ++wrap)
        if (col >= St::kCols) col -= St::kCols, pixel += p.w2 - St::kCols, ++line;
    }
  }
}

// The products' fragment order. bfloat16: row R of an m16 tile is output channel R, column C of n8 tile n input
// channel 8 n + C. float32 (TF32): rows R and R + 8 are output channels 2 R and 2 R + 1, and column C of tile n is
// channel 2 C + n, so that a thread's two rows, or its columns of the two tiles, are adjacent channels in shared
// memory (one 64-bit load for two operands).
template <typename T>
__device__ __forceinline__ int cout_of_row(int row) {
  return sizeof(T) == 2 ? row : 2 * (row & 7) + (row >> 3);
}
template <typename T>
__device__ __forceinline__ int row_of_cout(int cout) {
  return sizeof(T) == 2 ? cout : (cout >> 1) + 8 * (cout & 1);
}
template <typename T>
__device__ __forceinline__ int channel_of_column(int n, int column) {
  return sizeof(T) == 2 ? 8 * n + column : 2 * column + n;
}

// One warp's products for one staged tile: its line's S pixels, all nine taps, KM m16 tiles of output channels x
// two n8 tiles of input channels (and the bias's products, with `with_bias`).
template <typename T, int NT, int S>
__device__ __forceinline__ void accumulate(uint32_t grad, uint32_t input, int warp, int lane, bool with_bias,
                                           float (&acc)[9][NT / 16][2][4], float (&bias)[NT / 16][4]) {
  using St = Stage<T, NT, S>;
  constexpr int kM = NT / 16;
  if constexpr (sizeof(T) == 2) {  // m16n8k16: 16 pixels a step, fragments by ldmatrix (transposed)
    // A thread's rows are compile-time offsets from its first ones (the gradient's and the input's), and the swizzle
    // reads only a row's bits 1-2 (64-byte rows) or bit 2 (32-byte rows): the gradient's rows step by multiples of
    // 16, and an input offset's value mod 8 picks one of eight bases. So every address is a base plus a constant.
    const int gr = warp * S + ((lane >> 4) << 3) + (lane & 7);
    const int xr = warp * St::kCols + ((lane >> 3) & 1) * 8 + (lane & 7);
    uint32_t grad_base[kM], input_base[8];
#pragma unroll
    for (int m = 0; m < kM; ++m) grad_base[m] = grad + swizzled<T, St::kGradRow>(gr, 2 * m + ((lane >> 3) & 1));
#pragma unroll
    for (int rho = 0; rho < 8; ++rho)
      input_base[rho] = input + swizzled<T, St::kInputRow>(xr + rho, lane >> 4) - rho * St::kInputRow;
#pragma unroll
    for (int k = 0; k < S; k += 16) {
      uint32_t a[kM][4];
#pragma unroll
      for (int m = 0; m < kM; ++m) ldmatrix_x4_trans(grad_base[m] + k * St::kGradRow, a[m]);
      if (with_bias)
#pragma unroll
        for (int m = 0; m < kM; ++m) mma<T>(bias[m], a[m], kOnesBf16, kOnesBf16);
#pragma unroll
      for (int tap = 0; tap < 9; ++tap) {
        const int offset = (tap / 3) * St::kCols + tap % 3 + k;  // from the thread's first input row
        uint32_t b[4];
        ldmatrix_x4_trans(input_base[offset & 7] + offset * St::kInputRow, b);
#pragma unroll
        for (int m = 0; m < kM; ++m)
#pragma unroll
          for (int n = 0; n < 2; ++n) mma<T>(acc[tap][m][n], a[m], b[2 * n], b[2 * n + 1]);
      }
    }
  } else {  // m16n8k8 TF32: 8 pixels a step, fragments by 64-bit loads of channel pairs (TF32 values already)
    // The swizzle depends on row bit 1 only: the gradient's rows step by multiples of 4, and an input offset's mod 4
    // picks one of four bases.
    const int group = lane >> 2, tid = lane & 3;
    const int gr = warp * S + tid, xr = warp * St::kCols + tid;
    uint32_t grad_base[kM], input_base[4];
#pragma unroll
    for (int m = 0; m < kM; ++m) grad_base[m] = grad + element<St::kGradRow>(gr, 16 * m + 2 * group);
#pragma unroll
    for (int rho = 0; rho < 4; ++rho)
      input_base[rho] = input + element<St::kInputRow>(xr + rho, 2 * group) - rho * St::kInputRow;
#pragma unroll
    for (int k = 0; k < S; k += 8) {
      uint32_t a[kM][4];
#pragma unroll
      for (int m = 0; m < kM; ++m) {  // rows group and group + 8: output channels 2 group and 2 group + 1
        lds64(grad_base[m] + k * St::kGradRow, a[m][0], a[m][1]);
        lds64(grad_base[m] + (k + 4) * St::kGradRow, a[m][2], a[m][3]);
      }
      if (with_bias)
#pragma unroll
        for (int m = 0; m < kM; ++m) mma<T>(bias[m], a[m], kOneTf32, kOneTf32);
#pragma unroll
      for (int tap = 0; tap < 9; ++tap) {
        const int offset = (tap / 3) * St::kCols + tap % 3 + k;  // from the thread's first input row
        uint32_t b0[2], b1[2];  // column group of tiles 0 and 1: channels 2 group and 2 group + 1
        lds64(input_base[offset & 3] + offset * St::kInputRow, b0[0], b0[1]);
        lds64(input_base[offset & 3] + (offset + 4) * St::kInputRow, b1[0], b1[1]);
#pragma unroll
        for (int m = 0; m < kM; ++m)
#pragma unroll
          for (int n = 0; n < 2; ++n) mma<T>(acc[tap][m][n], a[m], b0[n], b1[n]);
      }
    }
  }
}

template <typename T>
constexpr int kStagesOf = sizeof(T) == 2 ? 3 : 2;  // two float32 stages keep two blocks an SM

template <typename T, int NT, int S>
constexpr int shared_bytes() {
  constexpr int staged = kStagesOf<T> * Stage<T, NT, S>::kBytes;
  constexpr int sums = kLines * (9 * NT / 16 * 2 * 4 + NT / 16 * 4) * 32 * 4;  // every warp's sums, at the end
  return staged > sums ? staged : sums;
}

template <typename T, int NT, int S>
__global__ void __launch_bounds__(kThreads, 2) dense_weight_grad_kernel(const __grid_constant__ Params p) {
  using St = Stage<T, NT, S>;
  constexpr int kStages = kStagesOf<T>, kM = NT / 16;
  extern __shared__ __align__(128) char smem_raw[];
  const uint32_t smem = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n_tiles = p.cout / NT, member = blockIdx.z / n_tiles;  // blockIdx.z: member, then output-channel tile
  const int chunk = blockIdx.y, n0 = (blockIdx.z % n_tiles) * NT;
  const int first = (int)((long long)blockIdx.x * p.tiles / p.groups);
  const int steps = (int)((long long)(blockIdx.x + 1) * p.tiles / p.groups) - first;

  for (int s = 0; s < kStages - 1; ++s) {
    if (s < steps) load_stage<T, NT, S>(p, member, chunk, n0, first + s, smem + s * St::kBytes);
    cp_async_commit();
  }
  float acc[9][kM][2][4], bias[kM][4];
#pragma unroll
  for (int tap = 0; tap < 9; ++tap)
#pragma unroll
    for (int m = 0; m < kM; ++m)
#pragma unroll
      for (int q = 0; q < 8; ++q) acc[tap][m][q / 4][q % 4] = 0.f;
#pragma unroll
  for (int m = 0; m < kM; ++m)
#pragma unroll
    for (int q = 0; q < 4; ++q) bias[m][q] = 0.f;

  for (int s = 0; s < steps; ++s) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    if (s + kStages - 1 < steps)
      load_stage<T, NT, S>(p, member, chunk, n0, first + s + kStages - 1,
                           smem + ((s + kStages - 1) % kStages) * St::kBytes);
    cp_async_commit();
    const uint32_t grad = smem + (s % kStages) * St::kBytes;
    accumulate<T, NT, S>(grad, grad + St::kInput, warp, lane, p.chunk_bias[chunk] >= 0, acc, bias);
  }
  cp_async_wait<0>();
  __syncthreads();

  // The four warps' sums through shared memory, [warp][sum][lane]; sum (tap, m, n, q) holds fragment row lane / 4 +
  // 8 (q / 2) of m16 tile m and column 2 (lane % 4) + q % 2 of n8 tile n.
  constexpr int kSums = 9 * kM * 8, kBiasSums = kM * 4;
  float* sums = reinterpret_cast<float*>(smem_raw);
  float* bias_sums = sums + kLines * kSums * 32;
#pragma unroll
  for (int tap = 0; tap < 9; ++tap)
#pragma unroll
    for (int m = 0; m < kM; ++m)
#pragma unroll
      for (int q = 0; q < 8; ++q) sums[(warp * kSums + (tap * kM + m) * 8 + q) * 32 + lane] = acc[tap][m][q / 4][q % 4];
#pragma unroll
  for (int m = 0; m < kM; ++m)
#pragma unroll
    for (int q = 0; q < 4; ++q) bias_sums[(warp * kBiasSums + m * 4 + q) * 32 + lane] = bias[m][q];
  __syncthreads();

  float* out = reinterpret_cast<float*>(reinterpret_cast<char*>(p.out) + member * p.out_step) +
               (long long)blockIdx.x * 9 * p.total * p.cout;
  for (int e = threadIdx.x; e < kSums * 32; e += blockDim.x) {
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < kLines; ++w) v += sums[w * kSums * 32 + e];
    const int sum = e >> 5, l = e & 31, q = sum & 7, m = (sum >> 3) % kM, tap = (sum >> 3) / kM;
    const int cout = n0 + 16 * m + cout_of_row<T>((l >> 2) + 8 * ((q & 3) >> 1));
    const int channel = chunk * kChunk + channel_of_column<T>(q >> 2, 2 * (l & 3) + (q & 1));
    out[((long long)tap * p.total + channel) * p.cout + cout] = v;
  }
  if (p.chunk_bias[chunk] < 0) return;
  for (int e = threadIdx.x; e < 9 * NT; e += blockDim.x) {  // the bias row of every tap: the sums at the centre tap
    const int tap = e / NT, j = e % NT;
    float v = 0.f;
    if (tap == 4) {  // output channel j: m = j / 16; its fragment row R: lane 4 (R % 8), q = 2 (R / 8)
      const int row = row_of_cout<T>(j & 15), idx = (j / 16) * 4 + 2 * (row >> 3), l = 4 * (row & 7);
#pragma unroll
      for (int w = 0; w < kLines; ++w) v += bias_sums[(w * kBiasSums + idx) * 32 + l];
    }
    out[((long long)tap * p.total + p.chunk_bias[chunk]) * p.cout + n0 + j] = v;
  }
}

template <typename T, int NT, int S>
cudaError_t launch(const Params& p, cudaStream_t stream) {
  constexpr auto kernel = dense_weight_grad_kernel<T, NT, S>;
  constexpr int smem = shared_bytes<T, NT, S>();
  cudaError_t err = allow_shared_memory<kernel>(smem);
  if (err != cudaSuccess) return err;
  kernel<<<dim3(p.groups, p.chunks, p.cout / NT * p.members), kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}


template <typename T, int NT>
cudaError_t launch_width(const Params& p, int s, cudaStream_t stream) {
  switch (s) {
    case 48: return launch<T, NT, 48>(p, stream);
    case 64: return launch<T, NT, 64>(p, stream);
    default: return launch<T, NT, 80>(p, stream);
  }
}

ffi::Error DenseWeightGradImpl(cudaStream_t stream, ffi::RemainingArgs args, ffi::Result<ffi::AnyBuffer> out, int64_t n,
                               int64_t h, int64_t w, int64_t margin, ffi::Span<const int64_t> grad_of) {
  const int n_inputs = (int)grad_of.size(), n_grads = (int)args.size() - n_inputs;  // the inputs, then the gradients
  if (n_inputs < 1 || n_inputs > kMaxPairs) return ffi::Error::InvalidArgument("dense_weight_grad: 1 to 16 inputs");
  if (n_grads < 1 || n_grads > n_inputs)
    return ffi::Error::InvalidArgument("dense_weight_grad: one output gradient a layer, each read by an input");
  if (out->element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("dense_weight_grad: float32 sums");
  Params p{};
  const int64_t members = members_of(*out, 4);
  p.members = (int)members;
  p.out_step = member_step(*out, 4, members);
  bool steps_ok = p.out_step >= 0;
  ffi::DataType dtype = ffi::DataType::INVALID;
  for (int j = 0; j < n_grads; ++j) {
    auto g = args.get<ffi::AnyBuffer>(n_inputs + j);
    if (g.has_error()) return g.error();
    if (j == 0) {
      dtype = g->element_type();
      p.rows = extent(*g, 2, 0);
      p.cout = (int)extent(*g, 2, 1);
    }
    if (g->element_type() != dtype || extent(*g, 2, 0) != p.rows || extent(*g, 2, 1) != p.cout)
      return ffi::Error::InvalidArgument("dense_weight_grad: the output gradients must have one dtype and shape");
    p.g[j] = static_cast<const char*>(g->untyped_data());
    p.g_step[j] = member_step(*g, 2, members);
    steps_ok = steps_ok && p.g_step[j] >= 0;
  }
  if (dtype != ffi::DataType::BF16 && dtype != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("dense_weight_grad: bfloat16 or float32 only");
  const int elem = dtype == ffi::DataType::BF16 ? 2 : 4;
  if (p.cout % 16 != 0) return ffi::Error::InvalidArgument("dense_weight_grad: output channels: a multiple of 16");
  int chunks = 0, layers_seen = 0;
  for (int i = 0; i < n_inputs; ++i) {
    auto x = args.get<ffi::AnyBuffer>(i);
    if (x.has_error()) return x.error();
    if (x->element_type() != dtype) return ffi::Error::InvalidArgument("dense_weight_grad: one dtype for all");
    // the layers in order, each one run of inputs: layer j's bias row is summed by its first chunk's blocks
    const int layer = (int)grad_of[i];
    if (layer < 0 || (layer != layers_seen - 1 && layer != layers_seen))
      return ffi::Error::InvalidArgument("dense_weight_grad: grad_of must run 0, 0, ..., 1, ... (layers in order)");
    const bool first = layer == layers_seen;
    layers_seen += first;
    p.grad_of[i] = layer;
    p.x[i] = static_cast<const char*>(x->untyped_data());
    p.x_step[i] = member_step(*x, 2, members);
    steps_ok = steps_ok && p.x_step[i] >= 0;
    p.c[i] = (int)extent(*x, 2, 1);
    if (p.c[i] % kChunk != 0) return ffi::Error::InvalidArgument("dense_weight_grad: channels: a multiple of 16");
    for (int j = 0; j < p.c[i]; j += kChunk, ++chunks) {
      if (chunks == kMaxChunks) return ffi::Error::InvalidArgument("dense_weight_grad: at most 1024 channels");
      p.chunk_input[chunks] = i;
      p.chunk_channel[chunks] = j;
      p.chunk_bias[chunks] = first && j == 0 ? layer : -1;  // the layer index for now, a row below
    }
  }
  if (layers_seen != n_grads)
    return ffi::Error::InvalidArgument("dense_weight_grad: every output gradient needs an input (grad_of)");
  if (!steps_ok)
    return ffi::Error::InvalidArgument("dense_weight_grad: operands batched over one leading axis (vmap) at most");
  p.chunks = chunks;
  p.total = chunks * kChunk + n_grads;
  for (int k = 0; k < chunks; ++k)
    if (p.chunk_bias[k] >= 0) p.chunk_bias[k] += chunks * kChunk;
  if (out->dimensions().size() < 4 || extent(*out, 4, 1) != 9 || extent(*out, 4, 2) != p.total ||
      extent(*out, 4, 3) != p.cout)
    return ffi::Error::InvalidArgument("dense_weight_grad: the output is (groups, 9, channels + layers, cout)");
  p.groups = (int)extent(*out, 4, 0);
  p.out = static_cast<float*>(out->untyped_data());
  p.margin = margin;
  p.w2 = (int)w + 2;
  p.lines = (int)n * ((int)h + 2);
  // Blocks of 32 output channels where there are 32; float32 ones in 48-pixel tiles (two 87 KB blocks an SM), which
  // took the IRN x4 step less time than 16 channels a block or the least-waste widths (benchmarks/NOTES.md).
  const bool nt32 = p.cout % 32 == 0, float32_nt32 = elem == 4 && nt32;
  const int s = float32_nt32 ? 48 : least_waste(p.w2, {80, 64, 48});  // pixels a tile line
  p.col_tiles = (p.w2 + s - 1) / s;
  p.tiles = (p.lines + kLines - 1) / kLines * p.col_tiles;
  cudaError_t err;
  if (elem == 2)
    err = nt32 ? launch_width<__nv_bfloat16, 32>(p, s, stream) : launch_width<__nv_bfloat16, 16>(p, s, stream);
  else
    err = float32_nt32 ? launch<float, 32, 48>(p, stream) : launch_width<float, 16>(p, s, stream);
  if (err != cudaSuccess) return ffi::Error::Internal(cudaGetErrorString(err));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(IrrmDenseWeightGrad, DenseWeightGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .RemainingArgs()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("n")
                                  .Attr<int64_t>("h")
                                  .Attr<int64_t>("w")
                                  .Attr<int64_t>("margin")
                                  .Attr<ffi::Span<const int64_t>>("grad_of"),
                              {ffi::Traits::kCmdBufferCompatible});
