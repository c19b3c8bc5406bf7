// The DenseBlock's 3x3 convolution (irrm_jax/cuda_kernels.py, speed option dense_cuda) as an XLA FFI handler: the
// same function as dense_kernels.conv on the same flat arrays (see that module for the layout and the epilogues), the
// kernels and the bias read from the block's weight pack (dense_kernels.WeightPack) at the offsets given: HWIO kernels
// (9, c, cout) for a convolution, or (9, cout, c) ones whose transposed convolution it computes (`transpose`: taps
// reversed, the channel axes swapped; a DenseBlock's input gradients from its forward kernels).
//
// Two kernels. Line tiles (wide rows' 16-output tiles): a block of 4 warps computes 4 image lines x MT * 16 pixels x NT output
// channels. Per step it stages, with cp.async three steps deep, 32 bytes of channels of one input for the tile those
// outputs read (6 lines x MT * 16 + 2 pixels) and the nine taps' weights for them in shared memory, and takes all nine
// taps' matrix products from there (ldmatrix at shifted rows, mma.sync with bf16 or tf32 operands, float32 sums):
// each input element is read from L2 about 1.5 times, against 9 times in the Pallas kernel, whose tap loads bound it
// (benchmarks/NOTES.md). Warpgroup products (rows of up to 96 pixels, the training crops, and wider rows' 32-output
// tiles): Hopper's wgmma on flat ranges of consecutive rows, or on line tiles of wide rows, both operands read from
// shared memory (below, `dense_conv_wgmma_kernel`); a convolution's kernels then come as K-major copies (9, cout, c)
// at `kmajor_offsets`.
// float32 operands must be TF32 values (dense_cuda.cuh); the epilogues that write feature maps or their gradients
// round their float32 outputs to TF32 (only these kernels read them).
#include "dense_cuda.cuh"

namespace {

using namespace dense_cuda;

constexpr int kLines = 4;    // image lines a block computes (one a warp)
constexpr int kTileLines = kLines + 2;
constexpr int kRowBytes = 32;  // a staged pixel's channels; its two 16-byte halves swap every 4 rows (swizzled)
constexpr int kStages = 3;

enum Epilogue { kNone = 0, kBias = 1, kBiasLeaky = 2, kLeakyGrad = 3 };

struct Params {
  const char* x[kMaxInputs];  // flat inputs (rows, c[i])
  const char* w[kMaxInputs];  // input i's kernel in the weight pack: (9, c[i], cout), transposed (9, cout, c[i])
  int c[kMaxInputs];
  int n_inputs;
  const char* extra;  // bias (cout,) or the activation (rows, cout) for kLeakyGrad
  char* out;          // (rows, cout)
  long long x_step[kMaxInputs], w_step[kMaxInputs], extra_step, out_step;  // member steps (dense_cuda.cuh)
  long long rows, margin;
  int lines, h2, w2, cout;  // lines = n * (h + 2); h2 = h + 2; w2 = w + 2
  int col_tiles;
  int tiles;                       // blocks computing outputs; kZeroBlocks more zero the margins
  int members;                     // blockIdx.z
  long long zero_head, zero_tail;  // the rows outside the image lines: [0, zero_head) and [zero_tail, rows)
};

constexpr int kZeroBlocks = 8;

// MT m16 tiles a line: MT * 16 pixels a line; the tile has 2 more columns.
template <int NT, int MT>
__host__ __device__ constexpr int stage_bytes() {
  return (kTileLines * (MT * 16 + 2) + 9 * NT) * kRowBytes;
}

// The nine taps' weights of a stage, KC input channels x NT outputs a tap, are staged as the kernel holds them. A
// transposed convolution's kernel (9, cout, c) gives NT rows of KC channels (32 bytes) a tap, read as the mma's B
// fragments by ldmatrix like the input tile. A convolution's HWIO kernel (9, c, cout) gives KC rows of NT outputs
// (kWeightRowBytes) a tap: ldmatrix.trans reads them (bf16); float32 fragments are single 32-bit loads, each lane
// reading its own row and column (m16n8k8: b0 = B[lane % 4][lane / 4], b1 four rows on), swizzled so that the 32
// lanes' words fall in 32 distinct banks.
template <typename T, int NT>
constexpr int kWeightRowBytes = NT * (int)sizeof(T);

template <int RB>
__device__ __forceinline__ uint32_t lds32_swizzled(int row, int seg) {
  return row * RB + ((seg ^ (2 * ((unsigned)row * RB / 128 % (RB / 32)))) << 4);
}

template <typename T, int NT>
__device__ __forceinline__ uint32_t weight_swizzled(int row, int seg) {
  constexpr int RB = kWeightRowBytes<T, NT>;
  if constexpr (sizeof(T) == 2) {
    return ldmatrix_swizzled<RB>(row, seg);
  } else {
    return lds32_swizzled<RB>(row, seg);
  }
}

// The staging copies. A thread copies the same 16-byte half of every (threads / 2)-th 32-byte row of a region, so its
// shared-memory address is one base plus constants (the 32-byte swizzle reads a row's bit 2 only) and its source
// steps by constants.

// A tile of LINES lines x COLS pixels (32 bytes of channels each, flat row width w2) from flat row `first` of x
// (row_bytes a row, `rows` rows; zeros outside them) into shared rows line * COLS + col.
template <int LINES, int COLS, int THREADS>
__device__ __forceinline__ void copy_tile(uint32_t smem, const char* x, int row_bytes, long long first, int w2,
                                          long long rows) {
  constexpr int kStep = THREADS / 2, kRows = LINES * COLS;
  static_assert(kStep % 8 == 0, "the swizzle of a thread's rows is its first row's");
  const int half = threadIdx.x & 1, r0 = threadIdx.x >> 1;
  const char* origin = x + half * 16;
  const char* base = origin + first * row_bytes;
  const int lowest = (int)max(-first, -(long long)INT_MAX), end = (int)min(rows - first, (long long)INT_MAX);
  int line = r0 / COLS, col = r0 % COLS, pixel = line * w2 + col;
#pragma unroll 1
  for (int j = 0; j < (kRows + kStep - 1) / kStep; ++j) {
    if (line < LINES) {
      const bool valid = pixel >= lowest && pixel < end;
      cp_async16(smem + ldmatrix_swizzled<kRowBytes>(r0, half) + j * kStep * kRowBytes,
                 valid ? base + (long long)pixel * row_bytes : origin, valid);
    }
    col += kStep;
    pixel += kStep;
#pragma unroll
    for (int wrap = 0; wrap < (kStep + COLS - 1) / COLS; ++wrap)
      if (col >= COLS) col -= COLS, pixel += w2 - COLS, ++line;
  }
}

// Flat rows [first, first + n) of x (row_bytes a row, `rows` rows; zeros outside them) into shared rows 0 to n - 1.
template <int THREADS>
__device__ __forceinline__ void copy_range(uint32_t smem, const char* x, int row_bytes, long long first, int n,
                                           long long rows) {
  constexpr int kStep = THREADS / 2;
  static_assert(kStep % 8 == 0, "the swizzle of a thread's rows is its first row's");
  const int half = threadIdx.x & 1, r0 = threadIdx.x >> 1;
  const char* origin = x + half * 16;
  const char* base = origin + first * row_bytes;
  const int lowest = (int)max(-first, -(long long)INT_MAX), end = (int)min(rows - first, (long long)INT_MAX);
  const uint32_t dst = smem + ldmatrix_swizzled<kRowBytes>(r0, half) - r0 * kRowBytes;
#pragma unroll 1
  for (int r = r0; r < n; r += kStep) {
    const bool valid = r >= lowest && r < end;
    cp_async16(dst + r * kRowBytes, valid ? base + (long long)r * row_bytes : origin, valid);
  }
}

// The nine taps' K-major weights (9, cout, c) of outputs n0 to n0 + NT - 1, 32 bytes of channels from w (their first
// byte at tap 0, output 0), into shared rows tap * NT + n; tap t is the kernel's 8 - t if REVERSED (a transposed
// convolution).
template <int NT, int THREADS, bool REVERSED>
__device__ __forceinline__ void copy_kmajor_weights(uint32_t smem, const char* w, int cout, int row_bytes, int n0) {
  constexpr int kStep = THREADS / 2, kRows = 9 * NT;
  static_assert(kStep % NT == 0 && kStep % 8 == 0, "a thread's output channel n and swizzle are fixed");
  const int half = threadIdx.x & 1, r0 = threadIdx.x >> 1, tap0 = r0 / NT, n = r0 % NT;
  const long long tap_bytes = (long long)cout * row_bytes * (REVERSED ? -1 : 1);
  const char* src = w + ((long long)((REVERSED ? 8 - tap0 : tap0) * cout + n0 + n) * row_bytes) + half * 16;
#pragma unroll
  for (int j = 0; j < (kRows + kStep - 1) / kStep; ++j)  // rows r0 + j kStep: taps tap0 + j kStep / NT
    if ((j + 1) * kStep <= kRows || r0 + j * kStep < kRows)
      cp_async16(smem + ldmatrix_swizzled<kRowBytes>(r0, half) + j * kStep * kRowBytes,
                 src + j * (kStep / NT) * tap_bytes, true);
}

// Stage `s`'s copies: KC channels (32 bytes) of one input, its tile and its nine taps' NT x KC weights (HWIO rows:
// a thread copies the same 16-byte segment of every R-th row, R = 128 threads / the segments of a row, a multiple of
// KC, so its addresses are bases plus constants as above; the swizzles read a row's bits 0-2 only).
template <typename T, int NT, int MT, bool TRANS>
__device__ __forceinline__ void load_stage(const Params& p, int input, int chunk, uint32_t smem, int line0, int col0,
                                           int n0) {
  constexpr int kThreads = 128, kTileCols = MT * 16 + 2;
  const int c = p.c[input];
  const int row_bytes = c * (int)sizeof(T);
  copy_tile<kTileLines, kTileCols, kThreads>(smem, p.x[input] + blockIdx.z * p.x_step[input] + (size_t)chunk * 32,
                                             row_bytes, p.margin + (long long)(line0 - 1) * p.w2 + col0 - 1, p.w2,
                                             p.rows);
  const char* w = p.w[input] + blockIdx.z * p.w_step[input];
  const uint32_t wsmem = smem + kTileLines * kTileCols * kRowBytes;
  if constexpr (TRANS) {  // rows (tap, n) of KC channels; the transposed convolution's tap t is the kernel's 8 - t
    copy_kmajor_weights<NT, kThreads, true>(wsmem, w + chunk * 32, p.cout, row_bytes, n0);
  } else {  // rows (tap, channel) of NT outputs
    constexpr int kc = 32 / sizeof(T), kSegs = kWeightRowBytes<T, NT> / 16, kStep = kThreads / kSegs, kRows = 9 * kc;
    static_assert(kStep % kc == 0, "a thread's channel k is fixed");
    const int seg = threadIdx.x % kSegs, r0 = threadIdx.x / kSegs, tap0 = r0 / kc, k = r0 % kc;
    const long long tap_bytes = (long long)c * p.cout * sizeof(T);
    const char* src = w + ((long long)(tap0 * c + chunk * kc + k) * p.cout + n0) * sizeof(T) + seg * 16;
#pragma unroll
    for (int j = 0; j < (kRows + kStep - 1) / kStep; ++j)  // rows r0 + j kStep: taps tap0 + j kStep / kc
      if ((j + 1) * kStep <= kRows || r0 + j * kStep < kRows)
        cp_async16(wsmem + weight_swizzled<T, NT>(r0, seg) + j * kStep * kWeightRowBytes<T, NT>,
                   src + j * (kStep / kc) * tap_bytes, true);
  }
}

// The m16 tiles' sums (M tiles x J n8 tiles, mma.sync's four values a thread) set to zero.
template <int M, int J>
__device__ __forceinline__ void zero_accumulators(float (&acc)[M][J][4]) {
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int j = 0; j < J; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[m][j][q] = 0.f;
}

// A margin block's work (blocks p.tiles to p.tiles + kZeroBlocks - 1 of a call): zero its share of the rows outside
// the image lines, [0, zero_head) and [zero_tail, rows).
template <typename T>
__device__ __forceinline__ void zero_margins(const Params& p) {
  const long long row_bytes = (long long)p.cout * sizeof(T);
  const long long head = p.zero_head * row_bytes / 16, tail = (p.rows - p.zero_tail) * row_bytes / 16;
  char* member_out = p.out + blockIdx.z * p.out_step;
  int4* out = reinterpret_cast<int4*>(member_out);
  int4* out_tail = reinterpret_cast<int4*>(member_out + p.zero_tail * row_bytes);
  for (long long i = (blockIdx.x - p.tiles) * blockDim.x + threadIdx.x; i < head + tail;
       i += (long long)kZeroBlocks * blockDim.x)
    (i < head ? out[i] : out_tail[i - head]) = make_int4(0, 0, 0, 0);
}

template <typename T, int NT, int MT, int EPI, bool TRANS>
__global__ void __launch_bounds__(128, 3) dense_conv_kernel(const __grid_constant__ Params p) {
  constexpr int kSeg = MT * 16, kTileCols = kSeg + 2;
  extern __shared__ __align__(128) char smem_raw[];
  const uint32_t smem = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  constexpr int kc = 32 / sizeof(T);
  if ((int)blockIdx.x >= p.tiles) {  // a margin block
    if (blockIdx.y == 0) zero_margins<T>(p);
    return;
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int line0 = (blockIdx.x / p.col_tiles) * kLines, col0 = (blockIdx.x % p.col_tiles) * kSeg;
  const int n0 = blockIdx.y * NT;

  int total = 0;
  for (int i = 0; i < p.n_inputs; ++i) total += p.c[i] / kc;

  // stage order: input 0's chunks, then input 1's, ...
  int load_input = 0, load_chunk = 0;
  auto advance = [&](int& input, int& chunk) {
    if (++chunk == p.c[input] / kc) {
      chunk = 0;
      ++input;
    }
  };
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < total) {
      load_stage<T, NT, MT, TRANS>(p, load_input, load_chunk, smem + s * stage_bytes<NT, MT>(), line0, col0, n0);
      advance(load_input, load_chunk);
    }
    cp_async_commit();
  }

  float acc[MT][NT / 8][4];
  zero_accumulators(acc);

  // ldmatrix addresses: A rows (lane % 16) at 16-byte half (lane / 16); B rows n = 8 * (lane / 16) + lane % 8 at half
  // (lane / 8) % 2.
  const int a_row = lane & 15, a_half = lane >> 4;
  const int b_row = ((lane >> 4) << 3) + (lane & 7), b_half = (lane >> 3) & 1;
  // float32 HWIO weights: lane's word of row (tap, lane % 4 + 4 h), column 8 j + lane / 4 is at b_lane plus the
  // row's start plus its swizzled 16-byte segment 2 j ^ b_swizzle (weight_swizzled; even, it leaves lane / 16 alone)
  const int b_lane = (lane & 3) * kWeightRowBytes<T, NT> + (lane >> 4) * 16 + ((lane >> 2) & 3) * 4;
  const int b_swizzle = (weight_swizzled<T, NT>(lane & 3, 0) - (lane & 3) * kWeightRowBytes<T, NT>) / 16;
  // A rows: the swizzle reads a row's bit 2 only, so a row offset's value mod 8 picks one of eight bases.
  uint32_t a_base[8];
#pragma unroll
  for (int rho = 0; rho < 8; ++rho)
    a_base[rho] = ldmatrix_swizzled<kRowBytes>(warp * kTileCols + a_row + rho, a_half) - rho * kRowBytes;

  for (int s = 0; s < total; ++s) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    if (s + kStages - 1 < total) {
      const uint32_t next = smem + ((s + kStages - 1) % kStages) * stage_bytes<NT, MT>();
      load_stage<T, NT, MT, TRANS>(p, load_input, load_chunk, next, line0, col0, n0);
      advance(load_input, load_chunk);
    }
    cp_async_commit();

    const uint32_t tile = smem + (s % kStages) * stage_bytes<NT, MT>();
    const uint32_t wts = tile + kTileLines * kTileCols * kRowBytes;
#pragma unroll
    for (int tap = 0; tap < 9; ++tap) {
      const int dy = tap / 3, dx = tap % 3;
      uint32_t b[NT / 8][2];
      if constexpr (TRANS || sizeof(T) == 2) {
#pragma unroll
        for (int j = 0; j < NT / 16; ++j) {
          uint32_t r[4];
          if constexpr (TRANS) {
            ldmatrix_x4(wts + ldmatrix_swizzled<kRowBytes>(tap * NT + j * 16 + b_row, b_half), r);
          } else {  // matrices (k 0-7, n-tile 2j), (k 8-15, 2j), (k 0-7, 2j + 1), (k 8-15, 2j + 1), transposed
            ldmatrix_x4_trans(wts + weight_swizzled<T, NT>(tap * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                                         2 * j + (lane >> 4)),
                              r);
          }
          b[2 * j][0] = r[0];
          b[2 * j][1] = r[1];
          b[2 * j + 1][0] = r[2];
          b[2 * j + 1][1] = r[3];
        }
      } else {  // float32, rows (tap, k) of NT outputs: b0 = B[lane % 4][n], b1 = B[lane % 4 + 4][n], n = 8 j + lane / 4
#pragma unroll
        for (int j = 0; j < NT / 8; ++j)
#pragma unroll
          for (int h = 0; h < 2; ++h)
            lds32(wts + (tap * 8 + 4 * h) * kWeightRowBytes<T, NT> + ((2 * j) ^ b_swizzle) * 16 + b_lane, b[j][h]);
      }
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        const int offset = dy * kTileCols + dx + m * 16;  // from the warp's first tile row for this lane
        uint32_t a[4];
        ldmatrix_x4(tile + a_base[offset & 7] + offset * kRowBytes, a);
#pragma unroll
        for (int j = 0; j < NT / 8; ++j) mma<T>(acc[m][j], a, b[j][0], b[j][1]);
      }
    }
  }
  cp_async_wait<0>();

  // Epilogue: accumulator element q of (m, j) is pixel m * 16 + lane / 4 + 8 * (q / 2), channel j * 8 + 2 * (lane % 4)
  // + q % 2. The epilogue's operand is read ahead of the stores that follow it: as far as the compiler knows a store
  // may alias it, so a load after a store waits for it, and loads between the stores made a chain of memory round
  // trips (the bias's from L1 once read, the activations' from L2 or HBM). The activations of m tile m + 1 are
  // loaded before tile m's stores, so that one tile's round trip overlaps the previous tile's work.
  const int line = line0 + warp;
  if (line >= p.lines) return;
  const int y = line % p.h2;
  const bool line_inside = y >= 1 && y <= p.h2 - 2;
  T* out = reinterpret_cast<T*>(p.out + blockIdx.z * p.out_step);
  const T* extra = reinterpret_cast<const T*>(p.extra + blockIdx.z * p.extra_step);
  float bias[NT / 8][2];
  if (EPI == kBias || EPI == kBiasLeaky) {
#pragma unroll
    for (int j = 0; j < NT / 8; ++j) load_pair(extra + n0 + j * 8 + 2 * (lane & 3), bias[j][0], bias[j][1]);
  }
  float act[2][2][NT / 8][2];  // kLeakyGrad: the layer's activations at two m tiles' outputs (both halves each)
  auto load_activations = [&](int m, float (&a)[2][NT / 8][2]) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int col = col0 + m * 16 + (lane >> 2) + 8 * half;
      const long long row = p.margin + (long long)line * p.w2 + min(col, p.w2 - 1);
#pragma unroll
      for (int j = 0; j < NT / 8; ++j)
        load_pair(extra + row * p.cout + n0 + j * 8 + 2 * (lane & 3), a[half][j][0], a[half][j][1]);
    }
  };
  if (EPI == kLeakyGrad) load_activations(0, act[0]);
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (EPI == kLeakyGrad && m + 1 < MT) load_activations(m + 1, act[(m + 1) % 2]);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int col = col0 + m * 16 + (lane >> 2) + 8 * half;
      if (col >= p.w2) continue;
      const bool inside = line_inside && col >= 1 && col <= p.w2 - 2;
      const long long row = p.margin + (long long)line * p.w2 + col;
#pragma unroll
      for (int j = 0; j < NT / 8; ++j) {
        const int n = n0 + j * 8 + 2 * (lane & 3);
        float v[2] = {acc[m][j][2 * half], acc[m][j][2 * half + 1]};
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          if (EPI == kBias || EPI == kBiasLeaky) v[e] += bias[j][e];
          if (EPI == kBiasLeaky) v[e] = v[e] >= 0.f ? v[e] : kSlope * v[e];
          if (EPI == kLeakyGrad) v[e] = act[m % 2][half][j][e] >= 0.f ? v[e] : kSlope * v[e];
          if (sizeof(T) == 4 && (EPI == kBiasLeaky || EPI == kLeakyGrad)) v[e] = to_tf32(v[e]);  // read by kernels only
          if (!inside) v[e] = 0.f;
        }
        store_pair(out + row * p.cout + n, v[0], v[1]);
      }
    }
  }
}

template <typename T, int NT, int MT, int EPI, bool TRANS>
cudaError_t launch(const Params& p, cudaStream_t stream) {
  constexpr auto kernel = dense_conv_kernel<T, NT, MT, EPI, TRANS>;
  const int smem = kStages * stage_bytes<NT, MT>();
  cudaError_t err = allow_shared_memory<kernel>(smem);
  if (err != cudaSuccess) return err;
  dim3 grid(p.tiles + kZeroBlocks, p.cout / NT, p.members);
  kernel<<<grid, 128, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, int NT, int MT, bool TRANS>
cudaError_t launch_epilogue(const Params& p, int epilogue, cudaStream_t stream) {
  switch (epilogue) {
    case kNone: return launch<T, NT, MT, kNone, TRANS>(p, stream);
    case kBias: return launch<T, NT, MT, kBias, TRANS>(p, stream);
    case kBiasLeaky: return launch<T, NT, MT, kBiasLeaky, TRANS>(p, stream);
    default: return launch<T, NT, MT, kLeakyGrad, TRANS>(p, stream);
  }
}

template <typename T, int NT, int MT>
cudaError_t launch_direction(const Params& p, int epilogue, bool transpose, cudaStream_t stream) {
  return transpose ? launch_epilogue<T, NT, MT, true>(p, epilogue, stream)
                   : launch_epilogue<T, NT, MT, false>(p, epilogue, stream);
}

// ---------------------------------------------------------------------------------------------------------------
// The same convolution as Hopper warpgroup products (wgmma) on flat-range tiles, for narrow images (the training
// crops; `DenseConvImpl` decides). A block of kWarpgroups warpgroups computes kRangeRows
// consecutive flat rows x NT outputs, each warpgroup kRangeTiles m64 tiles of them. A stage holds 32 bytes of channels
// of one input for the rows [r0 - w2 - 1, r0 + kRangeRows + w2 + 1), 32-byte rows swizzled as the hardware reads
// them (`wgmma_descriptor_32b`), and the nine taps' K-major weights (9 x NT rows of 32 bytes): a tap's A operand is
// the same region from another start row, so the products read both operands from shared memory (no ldmatrix,
// no registers for A) and a stage's 9 x kRangeTiles products a warpgroup are issued back to back. Stages are loaded
// two ahead into four buffers; a buffer is loaded again once its products are waited for.
constexpr int kWarpgroups = 3;
constexpr int kRangeTiles = 2;  // m64 tiles a warpgroup (flat ranges)
constexpr int kRangeRows = kWarpgroups * kRangeTiles * 64;
constexpr int kRangeBuffers = 4;
constexpr int kRangeAhead = 2;
constexpr int kRangeMaxRowWidth = 96;  // w2 of flat ranges at most: a halo of 2 (w2 + 1) rows, half a block's again

// Wide rows (`WIDE`, w2 > kRangeMaxRowWidth) take line tiles instead of flat ranges, whose halo would grow with the
// width: a block computes kWideLines lines x 64 pixels, one m64 tile a line (kWideTiles a warpgroup: more lines a
// stage than flat ranges' rows, fewer weight copies per output), and a stage holds those lines' 66 pixels and the
// lines above and below, as rows of width kWideCols. Either way the stage is a flat image of row width
// W (w2, or kWideCols) whose m64 tile t starts at row W + 1 + t * (64, or W), and tap (dy, dx) reads the 64 rows
// (dy - 1) W + dx - 1 further on.
constexpr int kWideTiles = 4;
constexpr int kWideLines = kWarpgroups * kWideTiles;
constexpr int kWideCols = 64 + 2;

// Rows a stage holds for row width w2 (a multiple of 8), and its bytes (1 KB multiples: every stage starts on a
// 256-byte boundary, which the swizzle needs).
template <bool WIDE>
__host__ __device__ constexpr int range_stage_rows(int w2) {
  return WIDE ? (kWideLines + 2) * kWideCols : (kRangeRows + 2 * (w2 + 1) + 7) / 8 * 8;
}
template <bool WIDE>
__host__ __device__ constexpr int range_input_bytes(int w2) {
  return (range_stage_rows<WIDE>(w2) * kRowBytes + 1023) / 1024 * 1024;
}
template <int NT, bool WIDE>
__host__ __device__ constexpr int range_stage_bytes(int w2) {
  return range_input_bytes<WIDE>(w2) + (9 * NT * kRowBytes + 1023) / 1024 * 1024;
}

template <typename T, int NT, int EPI, bool TRANS, bool WIDE>
__global__ void __launch_bounds__(128 * kWarpgroups, 1) dense_conv_wgmma_kernel(const __grid_constant__ Params p) {
  extern __shared__ __align__(128) char smem_raw[];
  const uint32_t smem = (static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) + 1023) & ~1023u;  // 1 KB aligned
  constexpr int kc = 32 / sizeof(T), kThreads = 128 * kWarpgroups, kTiles = WIDE ? kWideTiles : kRangeTiles;
  if ((int)blockIdx.x >= p.tiles) {  // a margin block
    if (blockIdx.y == 0) zero_margins<T>(p);
    return;
  }
  const int rows = range_stage_rows<WIDE>(p.w2), width = WIDE ? kWideCols : p.w2;  // the stage's rows and W
  const int input_bytes = range_input_bytes<WIDE>(p.w2), stage_bytes = range_stage_bytes<NT, WIDE>(p.w2);
  // the stage's row 0: flat row r0 - w2 - 1 (flat ranges), or the pixel left of (line0 - 1, col0) (wide)
  const int line0 = WIDE ? blockIdx.x / p.col_tiles * kWideLines : 0, col0 = WIDE ? blockIdx.x % p.col_tiles * 64 : 0;
  const long long r0 = p.zero_head + (long long)blockIdx.x * kRangeRows;
  const long long first = WIDE ? p.margin + (long long)(line0 - 1) * p.w2 + col0 - 1 : r0 - p.w2 - 1;
  const int n0 = blockIdx.y * NT;
  int total = 0;
  for (int i = 0; i < p.n_inputs; ++i) total += p.c[i] / kc;

  // stage order: input 0's chunks, then input 1's, ...
  int load_input = 0, load_chunk = 0;
  auto load_stage = [&](uint32_t stage) {
    const int row_bytes = p.c[load_input] * (int)sizeof(T);
    const char* x = p.x[load_input] + blockIdx.z * p.x_step[load_input] + (size_t)load_chunk * 32;
    if constexpr (WIDE)
      copy_tile<kWideLines + 2, kWideCols, kThreads>(stage, x, row_bytes, first, p.w2, p.rows);
    else
      copy_range<kThreads>(stage, x, row_bytes, first, rows, p.rows);
    // weights (9, cout, c): a transposed convolution's tap t is the kernel's 8 - t
    const char* w = p.w[load_input] + blockIdx.z * p.w_step[load_input] + (size_t)load_chunk * 32;
    copy_kmajor_weights<NT, kThreads, TRANS>(stage + input_bytes, w, p.cout, row_bytes, n0);
    if (++load_chunk == p.c[load_input] / kc) {
      load_chunk = 0;
      ++load_input;
    }
  };
  for (int s = 0; s < kRangeAhead; ++s) {
    if (s < total) load_stage(smem + s * stage_bytes);
    cp_async_commit();
  }

  const int group = threadIdx.x >> 7;  // warpgroup
  float acc[kTiles][NT / 8][4];
  zero_accumulators(acc);

  for (int s = 0; s < total; ++s) {
    cp_async_wait<kRangeAhead - 1>();
    fence_proxy_async();
    __syncthreads();  // stage s is in; stage s - 2's products are done (each warpgroup waited for them below)
    if (s + kRangeAhead < total) load_stage(smem + ((s + kRangeAhead) % kRangeBuffers) * stage_bytes);
    cp_async_commit();
    const uint32_t stage = smem + (s % kRangeBuffers) * stage_bytes;
    constexpr int kTileStep = WIDE ? kWideCols : 64;  // stage rows from one m64 tile to the next
    const uint32_t tile0 = stage + (width + 1 + group * kTiles * kTileStep) * kRowBytes;
    wgmma_fence();
#pragma unroll
    for (int tap = 0; tap < 9; ++tap) {
      const int offset = (tap / 3 - 1) * width + (tap % 3 - 1);
      const uint64_t b = wgmma_descriptor_32b(stage + input_bytes + tap * NT * kRowBytes);
#pragma unroll
      for (int m = 0; m < kTiles; ++m)
        wgmma<T, NT / 8>(acc[m], wgmma_descriptor_32b(tile0 + (m * kTileStep + offset) * kRowBytes), b);
    }
    wgmma_commit();
    wgmma_wait<1>();
  }
  wgmma_wait<0>();

  // Epilogue: accumulator element q of (m, j) is row 16 * warp + lane / 4 + 8 * (q / 2) of the warpgroup's m64 tile m,
  // channel j * 8 + 2 * (lane % 4) + q % 2. The epilogue's operands are all loaded before the first store (a store may
  // alias them as far as the compiler knows, and a load after it would wait for it).
  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  // the flat row of the elements (m, half) of this lane, whether it is inside the image, and whether it is written
  // (within the image lines; wide: also within the row)
  auto place = [&](int m, int half, long long& row, bool& inside) {
    const int dr = 16 * warp + (lane >> 2) + 8 * half;
    if constexpr (WIDE) {
      const int line = line0 + group * kTiles + m, col = col0 + dr, y = line % p.h2;
      row = p.margin + (long long)line * p.w2 + col;
      inside = col >= 1 && col <= p.w2 - 2 && y >= 1 && y <= p.h2 - 2;
      return line < p.lines && col < p.w2;
    } else {
      row = r0 + (group * kRangeTiles + m) * 64 + dr;
      const long long q = row - p.zero_head;
      const int x = (int)(q % p.w2), y = (int)(q / p.w2 % p.h2);
      inside = x >= 1 && x <= p.w2 - 2 && y >= 1 && y <= p.h2 - 2;
      return row < p.zero_tail;
    }
  };
  T* out = reinterpret_cast<T*>(p.out + blockIdx.z * p.out_step);
  const T* extra = reinterpret_cast<const T*>(p.extra + blockIdx.z * p.extra_step);
  float operand[kTiles][2][NT / 8][2];  // the bias, or kLeakyGrad's activations, at each accumulator element
#pragma unroll
  for (int m = 0; m < kTiles; ++m)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      long long row;
      bool inside;
      if (!place(m, half, row, inside)) row = p.zero_tail - 1;
#pragma unroll
      for (int j = 0; j < NT / 8; ++j) {
        const int n = n0 + j * 8 + 2 * (lane & 3);
        if (EPI == kBias || EPI == kBiasLeaky) load_pair(extra + n, operand[m][half][j][0], operand[m][half][j][1]);
        if (EPI == kLeakyGrad) load_pair(extra + row * p.cout + n, operand[m][half][j][0], operand[m][half][j][1]);
      }
    }
#pragma unroll
  for (int m = 0; m < kTiles; ++m)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      long long row;
      bool inside;
      if (!place(m, half, row, inside)) continue;
#pragma unroll
      for (int j = 0; j < NT / 8; ++j) {
        float v[2] = {acc[m][j][2 * half], acc[m][j][2 * half + 1]};
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float o = operand[m][half][j][e];
          if (EPI == kBias || EPI == kBiasLeaky) v[e] += o;
          if (EPI == kBiasLeaky) v[e] = v[e] >= 0.f ? v[e] : kSlope * v[e];
          if (EPI == kLeakyGrad) v[e] = o >= 0.f ? v[e] : kSlope * v[e];
          if (sizeof(T) == 4 && (EPI == kBiasLeaky || EPI == kLeakyGrad)) v[e] = to_tf32(v[e]);  // read by kernels only
          if (!inside) v[e] = 0.f;
        }
        store_pair(out + row * p.cout + n0 + j * 8 + 2 * (lane & 3), v[0], v[1]);
      }
    }
}

template <typename T, int NT, int EPI, bool TRANS, bool WIDE>
cudaError_t launch_wgmma(Params p, cudaStream_t stream) {
  constexpr auto kernel = dense_conv_wgmma_kernel<T, NT, EPI, TRANS, WIDE>;
  const int smem = kRangeBuffers * range_stage_bytes<NT, WIDE>(p.w2) + 1024;  // + the alignment to 1 KB
  cudaError_t err = allow_shared_memory<kernel>(kRangeBuffers * range_stage_bytes<NT, WIDE>(kRangeMaxRowWidth) + 1024);
  if (err != cudaSuccess) return err;
  if (WIDE) {
    p.col_tiles = (p.w2 + 63) / 64;
    p.tiles = (p.lines + kWideLines - 1) / kWideLines * p.col_tiles;
  } else {
    p.tiles = (int)((p.zero_tail - p.zero_head + kRangeRows - 1) / kRangeRows);
  }
  dim3 grid(p.tiles + kZeroBlocks, p.cout / NT, p.members);
  kernel<<<grid, 128 * kWarpgroups, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, int NT, bool TRANS, bool WIDE>
cudaError_t launch_wgmma_epilogue(const Params& p, int epilogue, cudaStream_t stream) {
  switch (epilogue) {
    case kNone: return launch_wgmma<T, NT, kNone, TRANS, WIDE>(p, stream);
    case kBias: return launch_wgmma<T, NT, kBias, TRANS, WIDE>(p, stream);
    case kBiasLeaky: return launch_wgmma<T, NT, kBiasLeaky, TRANS, WIDE>(p, stream);
    default: return launch_wgmma<T, NT, kLeakyGrad, TRANS, WIDE>(p, stream);
  }
}

template <typename T, int NT>
cudaError_t launch_wgmma_direction(const Params& p, int epilogue, bool transpose, cudaStream_t stream) {
  const bool wide = p.w2 > kRangeMaxRowWidth;
  if (wide)
    return transpose ? launch_wgmma_epilogue<T, NT, true, true>(p, epilogue, stream)
                     : launch_wgmma_epilogue<T, NT, false, true>(p, epilogue, stream);
  return transpose ? launch_wgmma_epilogue<T, NT, true, false>(p, epilogue, stream)
                   : launch_wgmma_epilogue<T, NT, false, false>(p, epilogue, stream);
}

// The line width in m16 tiles: of 4, 3 and 5, the least wasteful for a row width w2 (4 on ties). Narrower blocks
// were slower in every layer measured (benchmarks/NOTES.md).
int tiles_a_line(int w2) { return least_waste(w2, {64, 48, 80}) / 16; }

template <typename T, int NT>
cudaError_t launch_width(const Params& p, int mt, int epilogue, bool transpose, cudaStream_t stream) {
  switch (mt) {
    case 3: return launch_direction<T, NT, 3>(p, epilogue, transpose, stream);
    case 5: return launch_direction<T, NT, 5>(p, epilogue, transpose, stream);
    default: return launch_direction<T, NT, 4>(p, epilogue, transpose, stream);
  }
}

ffi::Error DenseConvImpl(cudaStream_t stream, ffi::RemainingArgs args, ffi::Result<ffi::AnyBuffer> out, int64_t n,
                         int64_t h, int64_t w, int64_t margin, int64_t n_inputs, int64_t epilogue,
                         ffi::Span<const int64_t> kernel_offsets, ffi::Span<const int64_t> kmajor_offsets,
                         int64_t bias_offset, bool transpose) {
  if (n_inputs < 1 || n_inputs > kMaxInputs) return ffi::Error::InvalidArgument("dense_conv: 1 to 8 inputs");
  if (epilogue < kNone || epilogue > kLeakyGrad) return ffi::Error::InvalidArgument("dense_conv: unknown epilogue");
  if ((int64_t)kernel_offsets.size() != n_inputs || (int64_t)kmajor_offsets.size() != n_inputs)
    return ffi::Error::InvalidArgument("dense_conv: one kernel offset and one K-major kernel offset an input");
  const bool with_bias = epilogue == kBias || epilogue == kBiasLeaky;
  const int with_activation = epilogue == kLeakyGrad ? 1 : 0;
  if ((int64_t)args.size() != n_inputs + 1 + with_activation)
    return ffi::Error::InvalidArgument("dense_conv: expected the inputs, the weight pack and the epilogue's operand");
  Params p{};
  const auto dtype = out->element_type();
  const size_t elem = dtype == ffi::DataType::BF16 ? 2 : 4;
  if (dtype != ffi::DataType::BF16 && dtype != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("dense_conv: bfloat16 or float32 only");
  const int64_t members = members_of(*out, 2);
  p.members = (int)members;
  p.out_step = member_step(*out, 2, members);
  p.rows = extent(*out, 2, 0);
  p.cout = (int)extent(*out, 2, 1);
  if (p.cout % 16 != 0) return ffi::Error::InvalidArgument("dense_conv: output channels must be a multiple of 16");
  // Warpgroup products for rows of up to kRangeMaxRowWidth pixels (flat ranges) and for 32-output tiles of wider
  // rows (line tiles); mma.sync line tiles for wider rows' 16-output tiles, which they computed faster on an H100
  // (benchmarks/NOTES.md). The warpgroup kernel reads K-major kernels (9, cout, c): a transposed convolution's own,
  // a convolution's copies.
  const bool nt32 = p.cout % 32 == 0, warpgroup = w + 2 <= kRangeMaxRowWidth || nt32;
  const bool kmajor = warpgroup && !transpose;
  auto pack = args.get<ffi::AnyBuffer>(n_inputs);
  if (pack.has_error()) return pack.error();
  const char* weights = static_cast<const char*>(pack->untyped_data());
  const long long pack_step = member_step(*pack, 1, members);
  const int64_t pack_size = extent(*pack, 1, 0);
  const int kc = 32 / (int)elem;
  bool steps_ok = pack_step >= 0;
  for (int i = 0; i < n_inputs; ++i) {
    auto x = args.get<ffi::AnyBuffer>(i);
    if (x.has_error()) return x.error();
    p.x[i] = static_cast<const char*>(x->untyped_data());
    p.x_step[i] = member_step(*x, 2, members);
    steps_ok = steps_ok && p.x_step[i] >= 0;
    p.c[i] = (int)extent(*x, 2, 1);
    if (p.c[i] % kc != 0) return ffi::Error::InvalidArgument("dense_conv: channels must be a multiple of 32 bytes");
    // each kernel (9, cout, c) inside the pack, at a 16-byte boundary (the staging copies 16 bytes at a time)
    const int64_t offset = kmajor ? kmajor_offsets[i] : kernel_offsets[i];
    if (offset < 0 || offset * elem % 16 != 0 || offset + 9LL * p.cout * p.c[i] > pack_size)
      return ffi::Error::InvalidArgument("dense_conv: a kernel offset outside the pack or not at 16 bytes");
    p.w[i] = weights + offset * elem;
    p.w_step[i] = pack_step;
  }
  if (with_bias) {
    if (bias_offset < 0 || bias_offset % 2 != 0 || bias_offset + p.cout > pack_size)
      return ffi::Error::InvalidArgument("dense_conv: the bias offset is outside the pack or odd");
    p.extra = weights + bias_offset * elem;
    p.extra_step = pack_step;
  }
  if (with_activation) {
    auto e = args.get<ffi::AnyBuffer>(n_inputs + 1);
    if (e.has_error()) return e.error();
    p.extra = static_cast<const char*>(e->untyped_data());
    p.extra_step = member_step(*e, 2, members);
    steps_ok = steps_ok && p.extra_step >= 0;
  }
  if (!steps_ok || p.out_step < 0)
    return ffi::Error::InvalidArgument("dense_conv: operands batched over one leading axis (vmap) at most");
  p.n_inputs = (int)n_inputs;
  p.out = static_cast<char*>(out->untyped_data());
  p.margin = margin;
  p.h2 = (int)h + 2;
  p.w2 = (int)w + 2;
  p.lines = (int)n * p.h2;
  const int mt = tiles_a_line(p.w2);
  p.col_tiles = (p.w2 + mt * 16 - 1) / (mt * 16);
  p.tiles = (p.lines + kLines - 1) / kLines * p.col_tiles;
  p.zero_head = p.margin;
  p.zero_tail = p.margin + (long long)p.lines * p.w2;
  cudaError_t err;
  if (warpgroup && dtype == ffi::DataType::BF16)
    err = nt32 ? launch_wgmma_direction<__nv_bfloat16, 32>(p, (int)epilogue, transpose, stream)
               : launch_wgmma_direction<__nv_bfloat16, 16>(p, (int)epilogue, transpose, stream);
  else if (warpgroup)
    err = nt32 ? launch_wgmma_direction<float, 32>(p, (int)epilogue, transpose, stream)
               : launch_wgmma_direction<float, 16>(p, (int)epilogue, transpose, stream);
  else if (dtype == ffi::DataType::BF16)  // line tiles: 16-output tiles of wide rows only
    err = launch_width<__nv_bfloat16, 16>(p, mt, (int)epilogue, transpose, stream);
  else
    err = launch_width<float, 16>(p, mt, (int)epilogue, transpose, stream);
  if (err != cudaSuccess) return ffi::Error::Internal(cudaGetErrorString(err));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(IrrmDenseConv, DenseConvImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .RemainingArgs()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("n")
                                  .Attr<int64_t>("h")
                                  .Attr<int64_t>("w")
                                  .Attr<int64_t>("margin")
                                  .Attr<int64_t>("n_inputs")
                                  .Attr<int64_t>("epilogue")
                                  .Attr<ffi::Span<const int64_t>>("kernel_offsets")
                                  .Attr<ffi::Span<const int64_t>>("kmajor_offsets")
                                  .Attr<int64_t>("bias_offset")
                                  .Attr<bool>("transpose"),
                              {ffi::Traits::kCmdBufferCompatible});
