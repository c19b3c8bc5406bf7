// The DenseBlock's 3x3 convolution (irrm_jax/cuda_kernels.py, speed option dense_cuda) as an XLA FFI handler: the
// same function as dense_kernels.conv on the same flat arrays (see that module for the layout and the epilogues), the
// kernels and the bias read from the block's weight pack (dense_kernels.WeightPack) at the offsets given: K-major
// kernels (9, cout, c), a convolution's copies of its HWIO kernels, or the HWIO kernels (9, c, cout) themselves
// whose transposed convolution it computes (`transpose`: taps reversed, the channel axes swapped; a DenseBlock's
// input gradients from its forward kernels).
//
// One kernel, Hopper's warpgroup products (wgmma, sm_90a) with both operands in shared memory: a block stages 32 bytes
// of channels of one input at a time (a stage), for the pixels its outputs read and the nine taps' weights, and
// takes all nine taps' products from there; each input element is read from L2 1.2 (wide rows: 14 x 66 pixels for
// 12 x 64 outputs) to 1.5 times (flat ranges) an output tile, against 9 times in the Pallas kernel, whose tap loads
// bound it (benchmarks/NOTES.md). Rows of up to 96 pixels (the training crops)
// take flat ranges of consecutive rows, wider rows line tiles whose inputs arrive by the tensor memory accelerator.
// float32 operands must be TF32 values (dense_cuda.cuh); the epilogues that write feature maps or their gradients
// round their float32 outputs to TF32 (only these kernels read them).
#include <cudaTypedefs.h>

#include <algorithm>
#include <optional>

#include "dense_cuda.cuh"

namespace {

using namespace dense_cuda;

constexpr int kRowBytes = 32;  // a staged pixel's channels; its two 16-byte halves swap every 4 rows (swizzled)

// kBiasResidualLeaky: LeakyReLU(sum + bias + residual), the residual a flat array like the output
enum Epilogue { kNone = 0, kBias = 1, kBiasLeaky = 2, kLeakyGrad = 3, kBiasResidualLeaky = 4 };

struct Params {
  const char* x[kMaxInputs];  // flat inputs (rows, c[i])
  const char* w[kMaxInputs];  // input i's K-major kernel (9, cout, c[i]) in the weight pack (transposed: tap 8 - t)
  int c[kMaxInputs];
  int n_inputs;
  const char* extra;     // bias (cout,) or the activation (rows, cout) for kLeakyGrad
  const char* residual;  // kBiasResidualLeaky's (rows, cout)
  char* out;             // (rows, cout)
  char* out_tf32;        // kBias in float32: a copy of out rounded to TF32 (the next convolution's input), or null
  // member steps (dense_cuda.cuh)
  long long x_step[kMaxInputs], w_step[kMaxInputs], extra_step, residual_step, out_step;
  long long rows, margin;
  int lines, h2, w2, cout;  // lines = n * (h + 2); h2 = h + 2; w2 = w + 2
  int col_tiles;                   // wide rows: 64-pixel tiles a line
  int tiles;                       // output tiles a member (each of all cout / NT output groups)
  int members;                     // convolutions in a call (a vmapped batch)
  int blocks;  // blocks computing items along x (flat ranges: the tiles); kZeroBlocks more after them zero the margins
  long long zero_head, zero_tail;  // the rows outside the image lines: [0, zero_head) and [zero_tail, rows)
};

constexpr int kZeroBlocks = 8;

// The staging copies by cp.async. A thread copies the same 16-byte half of every (threads / 2)-th 32-byte row of a
// region, so its shared-memory address is one base plus constants (the 32-byte swizzle reads a row's bit 2 only) and
// its source steps by constants.

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

// The accumulators (M m64 tiles x J n8 tiles, four values a thread) set to zero.
template <int M, int J>
__device__ __forceinline__ void zero_accumulators(float (&acc)[M][J][4]) {
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int j = 0; j < J; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[m][j][q] = 0.f;
}

// A margin block's work (blocks p.blocks to p.blocks + kZeroBlocks - 1 of a call): zero its share of the rows outside
// the image lines, [0, zero_head) and [zero_tail, rows), of the output and of its TF32 copy if any.
template <typename T>
__device__ __forceinline__ void zero_margins(const Params& p) {
  const long long row_bytes = (long long)p.cout * sizeof(T);
  const long long head = p.zero_head * row_bytes / 16, tail = (p.rows - p.zero_tail) * row_bytes / 16;
  for (int copy = 0; copy < (p.out_tf32 != nullptr ? 2 : 1); ++copy)
    for (int member = 0; member < p.members; ++member) {
      char* member_out = (copy ? p.out_tf32 : p.out) + member * p.out_step;
      int4* out = reinterpret_cast<int4*>(member_out);
      int4* out_tail = reinterpret_cast<int4*>(member_out + p.zero_tail * row_bytes);
      for (long long i = (blockIdx.x - p.blocks) * blockDim.x + threadIdx.x; i < head + tail;
           i += (long long)kZeroBlocks * blockDim.x)
        (i < head ? out[i] : out_tail[i - head]) = make_int4(0, 0, 0, 0);
    }
}

// The kernel. A block of kWarpgroups warpgroups computes NT outputs (16, 32 or 48: one product's N) of a tile:
// - flat ranges (rows of up to kRangeMaxRowWidth pixels): kRangeRows consecutive flat rows, kRangeTiles m64 tiles a
//   warpgroup; a stage holds the rows [r0 - w2 - 1, r0 + kRangeRows + w2 + 1), copied by cp.async;
// - line tiles (wider rows, `WIDE`): kWideLines lines x 64 pixels, kWideTiles lines a warpgroup (one m64 tile a line);
//   a stage holds those lines' 66 pixels and the lines above and below as rows of width kWideCols, one box copy by
//   the tensor memory accelerator (TMA; one thread issues it, an mbarrier a buffer counts its bytes in).
// Either way a stage's input is a flat image of row width W (w2, or kWideCols) in 32-byte rows swizzled as the
// hardware reads them (`wgmma_descriptor_32b`), whose m64 tile t starts at row W + 1 + t * (64, or W), and tap (dy,
// dx) reads the 64 rows (dy - 1) W + dx - 1 further on: a tap's A operand is the same region from another start row.
// The nine taps' K-major weights (9 x NT rows of 32 bytes) follow it. So the products read both operands from shared
// memory and a stage's 9 x tiles products a warpgroup are issued back to back. Stages are loaded kAhead ahead into
// kBuffers buffers; a buffer is loaded again once its products are waited for.
// A block computes one item (flat ranges), or (line tiles) is one of as many blocks as the GPU holds at once and
// computes items in turn: its stages follow on from one item to the next, so the next item's first stages load while
// this one's outputs are stored.
constexpr int kWarpgroups = 3;
constexpr int kBuffers = 4;
constexpr int kAhead = 2;
constexpr int kRangeTiles = 2;  // m64 tiles a warpgroup (flat ranges)
constexpr int kRangeRows = kWarpgroups * kRangeTiles * 64;
constexpr int kRangeMaxRowWidth = 96;  // w2 of flat ranges at most: a halo of 2 (w2 + 1) rows, half a block's again
constexpr int kWideTiles = 4;          // lines a warpgroup (wide rows): more a stage, fewer weight copies an output
constexpr int kWideLines = kWarpgroups * kWideTiles;
constexpr int kWideCols = 64 + 2;

// The tensor maps of a wide call's inputs (cuTensorMapEncodeTiled), a kernel parameter.
struct InputMaps {
  CUtensorMap x[kMaxInputs];  // input i as (members, lines, w2, c): its image lines only (margins left out)
};

// Rows a stage holds for row width w2 (a multiple of 8), and its bytes (1 KB multiples: every stage starts on a
// 256-byte boundary, which the swizzle needs).
template <bool WIDE>
__host__ __device__ constexpr int stage_rows(int w2) {
  return WIDE ? (kWideLines + 2) * kWideCols : (kRangeRows + 2 * (w2 + 1) + 7) / 8 * 8;
}
template <bool WIDE>
__host__ __device__ constexpr int stage_input_bytes(int w2) {
  return (stage_rows<WIDE>(w2) * kRowBytes + 1023) / 1024 * 1024;
}
template <int NT, bool WIDE>
__host__ __device__ constexpr int stage_bytes_for(int w2) {
  return stage_input_bytes<WIDE>(w2) + (9 * NT * kRowBytes + 1023) / 1024 * 1024;
}

// A block's work item: one output tile's NT outputs from n0 of one member. Flat ranges: the block's, its grid
// position (tile, output group, member); wide: items numbered tile first, then the output group, then the member.
// The tile's stage row 0 is flat row r0 - w2 - 1 (flat ranges), or the pixel left of (line0 - 1, col0) (wide).
struct Item {
  int line0, col0, n0, member;
  long long r0;
};
template <int NT, bool WIDE>
__device__ __forceinline__ Item place_item(const Params& p, int item) {
  Item at{};
  if constexpr (WIDE) {
    const int tile = item % p.tiles, rest = item / p.tiles, groups = p.cout / NT;
    at.member = rest / groups;
    at.n0 = (rest - at.member * groups) * NT;
    at.line0 = tile / p.col_tiles * kWideLines;
    at.col0 = (tile - tile / p.col_tiles * p.col_tiles) * 64;
  } else {
    at.member = blockIdx.z;
    at.n0 = blockIdx.y * NT;
    at.r0 = p.zero_head + (long long)blockIdx.x * kRangeRows;
  }
  return at;
}

template <typename T, int NT, int EPI, bool TRANS, bool WIDE>
__global__ void __launch_bounds__(128 * kWarpgroups, 1)
    dense_conv_kernel(const __grid_constant__ Params p, const __grid_constant__ InputMaps maps) {
  extern __shared__ __align__(128) char smem_raw[];
  __shared__ __align__(8) uint64_t filled[kBuffers];  // wide: a buffer's input tile has arrived
  const uint32_t smem = (static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) + 1023) & ~1023u;  // 1 KB aligned
  constexpr int kc = 32 / sizeof(T), kThreads = 128 * kWarpgroups, kTiles = WIDE ? kWideTiles : kRangeTiles;
  if ((int)blockIdx.x >= p.blocks) {  // a margin block
    if (blockIdx.y == 0 && blockIdx.z == 0) zero_margins<T>(p);
    return;
  }
  const int rows = stage_rows<WIDE>(p.w2), width = WIDE ? kWideCols : p.w2;  // the stage's rows and W
  const int input_bytes = stage_input_bytes<WIDE>(p.w2), stage_bytes = stage_bytes_for<NT, WIDE>(p.w2);
  // this block's items: blockIdx.x, + step, ... before end (flat ranges: blockIdx.x alone, known at compile time)
  const int end = WIDE ? p.tiles * (p.cout / NT) * p.members : blockIdx.x + 1, step = WIDE ? p.blocks : 1;
  int total = 0;
  for (int i = 0; i < p.n_inputs; ++i) total += p.c[i] / kc;

  // stage order: input 0's chunks, then input 1's, ..., then the block's next item's; loaded across items, so the
  // next item's first stages arrive while this one's epilogue stores
  int load_item = blockIdx.x, load_input = 0, load_chunk = 0;
  Item load_at = place_item<NT, WIDE>(p, load_item);
  const uint32_t filled0 = static_cast<uint32_t>(__cvta_generic_to_shared(filled));
  if (WIDE && threadIdx.x == 0) {
    for (int b = 0; b < kBuffers; ++b) mbarrier_init(filled0 + 8 * b);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  if (WIDE) __syncthreads();
  auto load_stage = [&](int buffer) {
    const int line0 = load_at.line0, col0 = load_at.col0, n0 = load_at.n0, member = load_at.member;
    const long long r0 = load_at.r0;
    const uint32_t stage = smem + buffer * stage_bytes;
    const int row_bytes = p.c[load_input] * (int)sizeof(T);
    if constexpr (WIDE) {
      if (threadIdx.x == 0) {
        mbarrier_expect_bytes(filled0 + 8 * buffer, rows * kRowBytes);
        tma_load_4d(stage, &maps.x[load_input], load_chunk * kc, col0 - 1, line0 - 1,
                    p.x_step[load_input] ? member : 0, filled0 + 8 * buffer);
      }
    } else {
      const char* x = p.x[load_input] + member * p.x_step[load_input] + (size_t)load_chunk * 32;
      copy_range<kThreads>(stage, x, row_bytes, r0 - p.w2 - 1, rows, p.rows);
    }
    // weights (9, cout, c): a transposed convolution's tap t is the kernel's 8 - t
    const char* w = p.w[load_input] + member * p.w_step[load_input] + (size_t)load_chunk * 32;
    copy_kmajor_weights<NT, kThreads, TRANS>(stage + input_bytes, w, p.cout, row_bytes, n0);
    if (++load_chunk == p.c[load_input] / kc) {
      load_chunk = 0;
      if (++load_input == p.n_inputs) {
        load_input = 0;
        load_item += step;
        if (WIDE && load_item < end) load_at = place_item<NT, WIDE>(p, load_item);
      }
    }
  };
  for (int s = 0; s < kAhead; ++s) {
    if (load_item < end) load_stage(s);
    cp_async_commit();
  }

  const int group = threadIdx.x >> 7;  // warpgroup
  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  int sg = 0;  // stages consumed (all items): stage sg is in buffer sg % kBuffers, its (sg / kBuffers)-th load there
#pragma unroll 1
  for (int item = blockIdx.x; item < end; item += step) {
    const Item at = place_item<NT, WIDE>(p, item);
    const int line0 = at.line0, col0 = at.col0, n0 = at.n0, member = at.member;
    const long long r0 = at.r0;
    T* out = reinterpret_cast<T*>(p.out + member * p.out_step);
    T* out_tf32 = p.out_tf32 == nullptr ? nullptr : reinterpret_cast<T*>(p.out_tf32 + member * p.out_step);
    const T* extra = reinterpret_cast<const T*>(p.extra + member * p.extra_step);
    const T* residual = reinterpret_cast<const T*>(p.residual + member * p.residual_step);
    float acc[kTiles][NT / 8][4];
    zero_accumulators(acc);

    for (int s = 0; s < total; ++s, ++sg) {
      cp_async_wait<kAhead - 1>();
      fence_proxy_async();
      if (WIDE) mbarrier_wait(filled0 + 8 * (sg % kBuffers), (sg / kBuffers) & 1);
      __syncthreads();  // stage sg is in; stage sg - 2's products are done (each warpgroup waited for them below)
      if (load_item < end) load_stage((sg + kAhead) % kBuffers);
      cp_async_commit();
      const uint32_t stage = smem + (sg % kBuffers) * stage_bytes;
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

    // Epilogue: accumulator element q of (m, j) is row 16 * warp + lane / 4 + 8 * (q / 2) of the warpgroup's m64 tile
    // m, channel j * 8 + 2 * (lane % 4) + q % 2. The epilogue's operands are loaded before the stores (a store may
    // alias them as far as the compiler knows, and a load after it would wait for it): all at once, or, where a flat
    // operand beside 4 x 48 sums is more than the registers hold, half the tiles (kLeakyGrad's activations) or one
    // tile (the residual, beside its bias) at a time.
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
    constexpr bool kPerElement = EPI == kLeakyGrad || EPI == kBiasResidualLeaky;  // an operand (rows, cout)
    constexpr int kGroup = !kPerElement || kTiles * NT <= 128 ? kTiles : EPI == kLeakyGrad ? kTiles / 2 : 1;
    float bias[NT / 8][2];  // kBiasResidualLeaky's, added before the residual (as XLA adds them)
    if constexpr (EPI == kBiasResidualLeaky)
#pragma unroll
      for (int j = 0; j < NT / 8; ++j) load_pair(extra + n0 + j * 8 + 2 * (lane & 3), bias[j][0], bias[j][1]);
#pragma unroll
    for (int m0 = 0; m0 < kTiles; m0 += kGroup) {
      // at each accumulator element: the bias, kLeakyGrad's activations or the residual
      float operand[kGroup][2][NT / 8][2];
#pragma unroll
      for (int g = 0; g < kGroup; ++g)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          long long row;
          bool inside;
          if (!place(m0 + g, half, row, inside)) row = p.zero_tail - 1;
#pragma unroll
          for (int j = 0; j < NT / 8; ++j) {
            const int n = n0 + j * 8 + 2 * (lane & 3);
            float(&pair)[2] = operand[g][half][j];
            if (EPI == kBias || EPI == kBiasLeaky) load_pair(extra + n, pair[0], pair[1]);
            if (EPI == kLeakyGrad) load_pair(extra + row * p.cout + n, pair[0], pair[1]);
            if (EPI == kBiasResidualLeaky) load_pair(residual + row * p.cout + n, pair[0], pair[1]);
          }
        }
#pragma unroll
      for (int g = 0; g < kGroup; ++g)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          long long row;
          bool inside;
          if (!place(m0 + g, half, row, inside)) continue;
#pragma unroll
          for (int j = 0; j < NT / 8; ++j) {
            float v[2] = {acc[m0 + g][j][2 * half], acc[m0 + g][j][2 * half + 1]};
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float o = operand[g][half][j][e];
              if (EPI == kBias || EPI == kBiasLeaky) v[e] += o;
              if constexpr (EPI == kBiasResidualLeaky) v[e] = v[e] + bias[j][e] + o;
              if (EPI == kBiasLeaky || EPI == kBiasResidualLeaky) v[e] = v[e] >= 0.f ? v[e] : kSlope * v[e];
              if (EPI == kLeakyGrad) v[e] = o >= 0.f ? v[e] : kSlope * v[e];
              if (sizeof(T) == 4 && EPI != kNone && EPI != kBias) v[e] = to_tf32(v[e]);  // read by kernels
              if (!inside) v[e] = 0.f;
            }
            store_pair(out + row * p.cout + n0 + j * 8 + 2 * (lane & 3), v[0], v[1]);
            if (EPI == kBias && sizeof(T) == 4 && out_tf32 != nullptr)
              store_pair(out_tf32 + row * p.cout + n0 + j * 8 + 2 * (lane & 3), to_tf32(v[0]), to_tf32(v[1]));
          }
        }
    }
  }
}

// The tensor maps of a wide call's inputs: (members, lines, w2, c) from the first image line, boxes of kWideLines + 2
// lines x kWideCols pixels x 32 bytes, the 32-byte swizzle, zeros outside (cuTensorMapEncodeTiled, from the driver).
template <typename T>
cudaError_t input_maps(const Params& p, InputMaps& maps) {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr;
  if (encode == nullptr) {
    cudaDriverEntryPointQueryResult found;
    cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", reinterpret_cast<void**>(&encode),
                                                       12000, cudaEnableDefault, &found);
    if (err != cudaSuccess || found != cudaDriverEntryPointSuccess) {
      encode = nullptr;
      return err != cudaSuccess ? err : cudaErrorNotSupported;
    }
  }
  const CUtensorMapDataType type = sizeof(T) == 2 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
  for (int i = 0; i < p.n_inputs; ++i) {
    const cuuint64_t row = (cuuint64_t)p.c[i] * sizeof(T), image = row * p.w2 * p.lines;
    const cuuint64_t dims[4] = {(cuuint64_t)p.c[i], (cuuint64_t)p.w2, (cuuint64_t)p.lines,
                                p.x_step[i] ? (cuuint64_t)p.members : 1};
    const cuuint64_t strides[3] = {row, row * p.w2, p.x_step[i] ? (cuuint64_t)p.x_step[i] : image};
    const cuuint32_t box[4] = {32 / sizeof(T), kWideCols, kWideLines + 2, 1}, unit[4] = {1, 1, 1, 1};
    void* origin = const_cast<char*>(p.x[i] + p.margin * row);
    if (encode(&maps.x[i], type, 4, origin, dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
               CU_TENSOR_MAP_SWIZZLE_32B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) !=
        CUDA_SUCCESS)
      return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

template <typename T, int NT, int EPI, bool TRANS, bool WIDE>
cudaError_t launch(Params p, cudaStream_t stream) {
  constexpr auto kernel = dense_conv_kernel<T, NT, EPI, TRANS, WIDE>;
  const int smem = kBuffers * stage_bytes_for<NT, WIDE>(p.w2) + 1024;  // + the alignment to 1 KB
  cudaError_t err = allow_shared_memory<kernel>(kBuffers * stage_bytes_for<NT, WIDE>(kRangeMaxRowWidth) + 1024);
  if (err != cudaSuccess) return err;
  InputMaps maps{};
  dim3 grid;
  if (WIDE) {  // as many blocks as run at once, each taking items in turn
    p.col_tiles = (p.w2 + 63) / 64;
    p.tiles = (p.lines + kWideLines - 1) / kWideLines * p.col_tiles;
    int device, sms, resident;
    err = input_maps<T>(p, maps);
    if (err == cudaSuccess) err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err == cudaSuccess)
      err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, 128 * kWarpgroups, smem);
    if (err != cudaSuccess) return err;
    p.blocks = min(p.tiles * (p.cout / NT) * p.members, sms * resident);
    grid = dim3(p.blocks + kZeroBlocks);
  } else {  // an item a block
    p.tiles = (int)((p.zero_tail - p.zero_head + kRangeRows - 1) / kRangeRows);
    p.blocks = p.tiles;
    grid = dim3(p.tiles + kZeroBlocks, p.cout / NT, p.members);
  }
  kernel<<<grid, 128 * kWarpgroups, smem, stream>>>(p, maps);
  return cudaGetLastError();
}

template <typename T, int NT, bool TRANS, bool WIDE>
cudaError_t launch_epilogue(const Params& p, int epilogue, cudaStream_t stream) {
  switch (epilogue) {
    case kNone: return launch<T, NT, kNone, TRANS, WIDE>(p, stream);
    case kBias: return launch<T, NT, kBias, TRANS, WIDE>(p, stream);
    case kBiasLeaky: return launch<T, NT, kBiasLeaky, TRANS, WIDE>(p, stream);
    case kBiasResidualLeaky: return launch<T, NT, kBiasResidualLeaky, TRANS, WIDE>(p, stream);
    default: return launch<T, NT, kLeakyGrad, TRANS, WIDE>(p, stream);
  }
}

template <typename T, int NT>
cudaError_t launch_direction(const Params& p, int epilogue, bool transpose, cudaStream_t stream) {
  const bool wide = p.w2 > kRangeMaxRowWidth;
  if (wide)
    return transpose ? launch_epilogue<T, NT, true, true>(p, epilogue, stream)
                     : launch_epilogue<T, NT, false, true>(p, epilogue, stream);
  return transpose ? launch_epilogue<T, NT, true, false>(p, epilogue, stream)
                   : launch_epilogue<T, NT, false, false>(p, epilogue, stream);
}

// One product's N: 32 or 48 outputs where they divide cout (fewer tiles, each staging the inputs once), else 16.
template <typename T>
cudaError_t launch_conv(const Params& p, int epilogue, bool transpose, cudaStream_t stream) {
  if (p.cout % 32 == 0) return launch_direction<T, 32>(p, epilogue, transpose, stream);
  if (p.cout % 48 == 0) return launch_direction<T, 48>(p, epilogue, transpose, stream);
  return launch_direction<T, 16>(p, epilogue, transpose, stream);
}

ffi::Error DenseConvImpl(cudaStream_t stream, ffi::RemainingArgs args, ffi::Result<ffi::AnyBuffer> out,
                         std::optional<ffi::Result<ffi::AnyBuffer>> out_tf32, int64_t n, int64_t h, int64_t w,
                         int64_t margin, int64_t n_inputs, int64_t epilogue, ffi::Span<const int64_t> kernel_offsets,
                         int64_t bias_offset, bool transpose) {
  if (n_inputs < 1 || n_inputs > kMaxInputs) return ffi::Error::InvalidArgument("dense_conv: 1 to 8 inputs");
  if (epilogue < kNone || epilogue > kBiasResidualLeaky)
    return ffi::Error::InvalidArgument("dense_conv: unknown epilogue");
  if ((int64_t)kernel_offsets.size() != n_inputs)
    return ffi::Error::InvalidArgument("dense_conv: one kernel offset an input");
  const bool with_bias = epilogue == kBias || epilogue == kBiasLeaky || epilogue == kBiasResidualLeaky;
  const int with_flat = epilogue == kLeakyGrad || epilogue == kBiasResidualLeaky ? 1 : 0;  // activation or residual
  if ((int64_t)args.size() != n_inputs + 1 + with_flat)
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
    const int64_t offset = kernel_offsets[i];
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
  if (with_flat) {  // kLeakyGrad's activation (in extra) or the residual
    auto e = args.get<ffi::AnyBuffer>(n_inputs + 1);
    if (e.has_error()) return e.error();
    if (extent(*e, 2, 0) != p.rows || extent(*e, 2, 1) != p.cout)
      return ffi::Error::InvalidArgument("dense_conv: the epilogue's flat operand must have the output's shape");
    const char* data = static_cast<const char*>(e->untyped_data());
    const long long step = member_step(*e, 2, members);
    if (epilogue == kLeakyGrad) {
      p.extra = data;
      p.extra_step = step;
    } else {
      p.residual = data;
      p.residual_step = step;
    }
    steps_ok = steps_ok && step >= 0;
  }
  if (!steps_ok || p.out_step < 0)
    return ffi::Error::InvalidArgument("dense_conv: operands batched over one leading axis (vmap) at most");
  p.n_inputs = (int)n_inputs;
  p.out = static_cast<char*>(out->untyped_data());
  if (out_tf32.has_value()) {  // the output's TF32 copy: kBias in float32 only, the output's shape
    const ffi::AnyBuffer::Dimensions a = (*out_tf32)->dimensions(), b = out->dimensions();
    if (epilogue != kBias || dtype != ffi::DataType::F32 || (*out_tf32)->element_type() != dtype ||
        !std::equal(a.begin(), a.end(), b.begin(), b.end()))
      return ffi::Error::InvalidArgument("dense_conv: a TF32 copy goes with float32 outputs of the bias epilogue");
    p.out_tf32 = static_cast<char*>((*out_tf32)->untyped_data());
  }
  p.margin = margin;
  p.h2 = (int)h + 2;
  p.w2 = (int)w + 2;
  p.lines = (int)n * p.h2;
  p.zero_head = p.margin;
  p.zero_tail = p.margin + (long long)p.lines * p.w2;
  const cudaError_t err = dtype == ffi::DataType::BF16
                              ? launch_conv<__nv_bfloat16>(p, (int)epilogue, transpose, stream)
                              : launch_conv<float>(p, (int)epilogue, transpose, stream);
  if (err != cudaSuccess) return ffi::Error::Internal(cudaGetErrorString(err));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(IrrmDenseConv, DenseConvImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .RemainingArgs()
                                  .Ret<ffi::AnyBuffer>()
                                  .OptionalRet<ffi::AnyBuffer>()  // the output's TF32 copy (kBias, float32)
                                  .Attr<int64_t>("n")
                                  .Attr<int64_t>("h")
                                  .Attr<int64_t>("w")
                                  .Attr<int64_t>("margin")
                                  .Attr<int64_t>("n_inputs")
                                  .Attr<int64_t>("epilogue")
                                  .Attr<ffi::Span<const int64_t>>("kernel_offsets")
                                  .Attr<int64_t>("bias_offset")
                                  .Attr<bool>("transpose"),
                              {ffi::Traits::kCmdBufferCompatible});