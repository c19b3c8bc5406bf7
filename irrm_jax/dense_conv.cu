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
#include <type_traits>

#include "dense_cuda.cuh"

namespace {

using namespace dense_cuda;

constexpr int kRowBytes = 32;  // a staged pixel's channels; its two 16-byte halves swap every 4 rows (swizzled)

// kBiasResidualLeaky: LeakyReLU(sum + bias + residual), the residual a flat array like the output; kBiasResidual: the
// same without the LeakyReLU; kBiasLeakyAndSums: kBiasLeaky for the outputs before `split`, the sums alone for the
// others, written to a second array (a DenseBlock's layer and the next one's sums over the same inputs)
enum Epilogue {
  kNone = 0,
  kBias = 1,
  kBiasLeaky = 2,
  kLeakyGrad = 3,
  kBiasResidualLeaky = 4,
  kBiasResidual = 5,
  kBiasLeakyAndSums = 6
};

struct Params {
  const char* x[kMaxInputs];  // flat inputs (rows, c[i])
  const char* w[kMaxInputs];  // input i's K-major kernel (9, cout, c[i]) in the weight pack (transposed: tap 8 - t)
  int c[kMaxInputs];
  int n_inputs;
  const char* extra;     // bias (cout,) or the activation (rows, cout) for kLeakyGrad
  const char* residual;  // kBiasResidualLeaky's and kBiasResidual's (rows, cout)
  const char* unit_bias;  // the residual unit's second bias (conv_b's; conv_a's is extra)
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
  char* sums;  // kBiasLeakyAndSums: the outputs from `split` on (rows, cout - split), out holding those before it
  int split;
  long long sums_step;
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
// the image lines, [0, zero_head) and [zero_tail, rows), of the output and of its TF32 copy if any; with SUMS
// (kBiasLeakyAndSums), of the output's two arrays, one at a time.
template <typename T, bool SUMS = false>
__device__ __forceinline__ void zero_margins(const Params& p) {
  if constexpr (SUMS) {
    Params part = p;
    part.cout = p.split;
    zero_margins<T>(part);
    part.cout = p.cout - p.split;
    part.out = p.sums;
    part.out_step = p.sums_step;
    zero_margins<T>(part);
    return;
  }
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
    if (blockIdx.y == 0 && blockIdx.z == 0) zero_margins<T, EPI == kBiasLeakyAndSums>(p);
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
    T* sums = p.sums == nullptr ? nullptr : reinterpret_cast<T*>(p.sums + member * p.sums_step);
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
    constexpr bool kResidual = EPI == kBiasResidualLeaky || EPI == kBiasResidual;
    constexpr bool kPerElement = EPI == kLeakyGrad || kResidual;  // an operand (rows, cout)
    constexpr bool kFeature =  // a feature map or its gradient (read by these kernels)
        EPI == kBiasLeaky || EPI == kBiasResidualLeaky || EPI == kLeakyGrad || EPI == kBiasLeakyAndSums;
    constexpr int kGroup = !kPerElement || kTiles * NT <= 128 ? kTiles : EPI == kLeakyGrad ? kTiles / 2 : 1;
    float bias[NT / 8][2];  // the residual epilogues' (added before the residual, as XLA adds them); out's part's
    if constexpr (kResidual)
#pragma unroll
      for (int j = 0; j < NT / 8; ++j) load_pair(extra + n0 + j * 8 + 2 * (lane & 3), bias[j][0], bias[j][1]);
    if constexpr (EPI == kBiasLeakyAndSums) {
#pragma unroll
      for (int j = 0; j < NT / 8; ++j) {
        const int n = n0 + j * 8 + 2 * (lane & 3);
        bias[j][0] = bias[j][1] = 0.f;
        if (n < p.split) load_pair(extra + n, bias[j][0], bias[j][1]);
      }
    }
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
            if (kResidual) load_pair(residual + row * p.cout + n, pair[0], pair[1]);
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
            const int n = n0 + j * 8 + 2 * (lane & 3);
            const bool to_sums = EPI == kBiasLeakyAndSums && n >= p.split;  // the sums alone, to the second array
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float o = operand[g][half][j][e];
              if (EPI == kBias || EPI == kBiasLeaky) v[e] += o;
              if constexpr (kResidual) v[e] = v[e] + bias[j][e] + o;
              if (EPI == kBiasLeaky || EPI == kBiasResidualLeaky) v[e] = v[e] >= 0.f ? v[e] : kSlope * v[e];
              if (EPI == kLeakyGrad) v[e] = o >= 0.f ? v[e] : kSlope * v[e];
              if (EPI == kBiasLeakyAndSums && !to_sums) {
                v[e] += bias[j][e];
                v[e] = v[e] >= 0.f ? v[e] : kSlope * v[e];
              }
              if (sizeof(T) == 4 && kFeature && !to_sums) v[e] = to_tf32(v[e]);  // read by kernels
              if (!inside) v[e] = 0.f;
            }
            if constexpr (EPI == kBiasLeakyAndSums) {
              if (to_sums)
                store_pair(sums + row * (p.cout - p.split) + n - p.split, v[0], v[1]);
              else
                store_pair(out + row * p.split + n, v[0], v[1]);
            } else {  // (not `n`: written with it, ptxas compiles 67 of these kernels differently, not re-timed)
              store_pair(out + row * p.cout + n0 + j * 8 + 2 * (lane & 3), v[0], v[1]);
            }
            if (EPI == kBias && sizeof(T) == 4 && out_tf32 != nullptr)
              store_pair(out_tf32 + row * p.cout + n0 + j * 8 + 2 * (lane & 3), to_tf32(v[0]), to_tf32(v[1]));
          }
        }
    }
  }
}

// The driver's cuTensorMapEncodeTiled, looked up once (null where the driver has none).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr;
  if (encode == nullptr) {
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", reinterpret_cast<void**>(&encode), 12000,
                                         cudaEnableDefault, &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      encode = nullptr;
  }
  return encode;
}

// The tensor maps of a wide call's inputs: (members, lines, w2, c) from the first image line, boxes of `box_lines`
// lines x `box_cols` pixels x 32 bytes, the 32-byte swizzle, zeros outside.
template <typename T>
cudaError_t input_maps(const Params& p, InputMaps& maps, int box_cols, int box_lines) {
  const auto encode = tensor_map_encoder();
  if (encode == nullptr) return cudaErrorNotSupported;
  const CUtensorMapDataType type = sizeof(T) == 2 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
  for (int i = 0; i < p.n_inputs; ++i) {
    const cuuint64_t row = (cuuint64_t)p.c[i] * sizeof(T), image = row * p.w2 * p.lines;
    const cuuint64_t dims[4] = {(cuuint64_t)p.c[i], (cuuint64_t)p.w2, (cuuint64_t)p.lines,
                                p.x_step[i] ? (cuuint64_t)p.members : 1};
    const cuuint64_t strides[3] = {row, row * p.w2, p.x_step[i] ? (cuuint64_t)p.x_step[i] : image};
    const cuuint32_t box[4] = {32 / sizeof(T), (cuuint32_t)box_cols, (cuuint32_t)box_lines, 1};
    const cuuint32_t unit[4] = {1, 1, 1, 1};
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
    err = input_maps<T>(p, maps, kWideCols, kWideLines + 2);
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
    case kBiasResidual:  // forward only (the handler refuses transposed calls of these two)
      if constexpr (TRANS) return cudaErrorInvalidValue;
      else return launch<T, NT, kBiasResidual, false, WIDE>(p, stream);
    case kBiasLeakyAndSums:
      if constexpr (TRANS) return cudaErrorInvalidValue;
      else return launch<T, NT, kBiasLeakyAndSums, false, WIDE>(p, stream);
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

// The flat layout's fields of a call's Params (dense_kernels.FlatLayout): n images of h x w, `margin` rows before them.
void set_layout(Params& p, int64_t n, int64_t h, int64_t w, int64_t margin) {
  p.margin = margin;
  p.h2 = (int)h + 2;
  p.w2 = (int)w + 2;
  p.lines = (int)n * p.h2;
  p.zero_head = p.margin;
  p.zero_tail = p.margin + (long long)p.lines * p.w2;
}

// The second result, where there is one: the output's TF32 copy (kBias, float32) or the sums (kBiasLeakyAndSums).
ffi::Error DenseConvImpl(cudaStream_t stream, ffi::RemainingArgs args, ffi::Result<ffi::AnyBuffer> out,
                         std::optional<ffi::Result<ffi::AnyBuffer>> second, int64_t n, int64_t h, int64_t w,
                         int64_t margin, int64_t n_inputs, int64_t epilogue, ffi::Span<const int64_t> kernel_offsets,
                         int64_t bias_offset, bool transpose) {
  if (n_inputs < 1 || n_inputs > kMaxInputs) return ffi::Error::InvalidArgument("dense_conv: 1 to 8 inputs");
  if (epilogue < kNone || epilogue > kBiasLeakyAndSums)
    return ffi::Error::InvalidArgument("dense_conv: unknown epilogue");
  if (transpose && (epilogue == kBiasResidual || epilogue == kBiasLeakyAndSums))
    return ffi::Error::InvalidArgument("dense_conv: this epilogue goes with forward convolutions only");
  if ((int64_t)kernel_offsets.size() != n_inputs)
    return ffi::Error::InvalidArgument("dense_conv: one kernel offset an input");
  const bool with_bias = epilogue != kNone && epilogue != kLeakyGrad;
  const bool with_sums = epilogue == kBiasLeakyAndSums;
  const int with_flat = epilogue == kLeakyGrad || epilogue == kBiasResidualLeaky || epilogue == kBiasResidual;
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
  p.cout = p.split = (int)extent(*out, 2, 1);
  if (second.has_value() && epilogue == kBias) {  // the output's TF32 copy: float32 only, the output's shape
    const ffi::AnyBuffer::Dimensions a = (*second)->dimensions(), b = out->dimensions();
    if (dtype != ffi::DataType::F32 || (*second)->element_type() != dtype ||
        !std::equal(a.begin(), a.end(), b.begin(), b.end()))
      return ffi::Error::InvalidArgument("dense_conv: a TF32 copy goes with float32 outputs of the bias epilogue");
    p.out_tf32 = static_cast<char*>((*second)->untyped_data());
  } else if (second.has_value() && with_sums) {  // outputs split, p.cout in all: the output's part, then the sums'
    const ffi::AnyBuffer& sums = **second;
    if (sums.element_type() != dtype || extent(sums, 2, 0) != p.rows || members_of(sums, 2) != members)
      return ffi::Error::InvalidArgument("dense_conv: the sums must have the output's dtype, rows and members");
    p.cout += (int)extent(sums, 2, 1);
    p.sums = static_cast<char*>(sums.untyped_data());
    p.sums_step = member_step(sums, 2, members);
    if (p.sums_step < 0) return ffi::Error::InvalidArgument("dense_conv: sums batched over one leading axis at most");
  } else if (second.has_value() || with_sums) {
    return ffi::Error::InvalidArgument("dense_conv: a second result goes with the bias (float32) and the "
                                       "bias_leaky_and_sums epilogues, and the latter needs it");
  }
  if (p.cout % 16 != 0 || p.split % 16 != 0)
    return ffi::Error::InvalidArgument("dense_conv: output channels must be a multiple of 16");
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
    if (bias_offset < 0 || bias_offset % 2 != 0 || bias_offset + p.split > pack_size)  // split: cout but with sums
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
  set_layout(p, n, h, w, margin);
  const cudaError_t err = dtype == ffi::DataType::BF16
                              ? launch_conv<__nv_bfloat16>(p, (int)epilogue, transpose, stream)
                              : launch_conv<float>(p, (int)epilogue, transpose, stream);
  if (err != cudaSuccess) return ffi::Error::Internal(cudaGetErrorString(err));
  return ffi::Error::Success();
}

// IRRM's residual unit in one kernel (wide rows, forward; `cuda_kernels.residual_unit`): out = LeakyReLU(h + b_b +
// conv_b(a)) with a = LeakyReLU(conv_a(h) + b_a), both convolutions W -> W (W = 32 or 48), where the two-kernel way
// writes a to memory and reads it back. A block computes an item of kLines lines x 64 pixels of out: it stages h for
// kLines + 4 lines x kUnitCols pixels (the two convolutions' halos) by the tensor memory accelerator, one 32-byte chunk
// of channels a stage, computes a for the kLines + 2 lines x 66 pixels that conv_b reads (as flat rows of the staged
// image, in m64 tiles: about 30-50% more of conv_a's products than its share), keeps a in shared memory (TF32 values
// in float32, zero outside the image as the two-kernel way stores it), and computes conv_b from there. Each output's
// sums are the same products in the same order as the two kernels', so the results are theirs bit for bit. In
// float32 it stages h as it is and rounds each stage to TF32 in place while the stage before it is in the tensor
// cores: the operand the two-kernel way reads from h's TF32 copy, which is then not needed (the residual is h).
// Stages (kUnitBuffers buffers, loaded two ahead): conv_a's W / kc of h and conv_a's weights, then conv_b's weights
// alone, carried on from one item to the next as in the line tiles, all by TMA, issued by thread 0. No block barrier
// orders them: mbarriers do, so that each warpgroup goes on at its own pace (a stage waits for its bytes and, in
// float32, for every thread's share of its rounding; a buffer is loaded again once every thread's products have read
// it; a is written once every thread's conv_b has read the item before's, and read once every thread has written it).
constexpr int kUnitCols = 64 + 4;
constexpr int kUnitBuffers = 3;

template <typename T, int W>
struct Unit {
  static constexpr int kc = 32 / sizeof(T), kChunks = W / kc;
  // lines an item: as many as shared memory holds (3 buffers and a)
  static constexpr int kLines = sizeof(T) == 4 ? (W == 32 ? 9 : 6) : (W == 32 ? 12 : 9);
  static constexpr int kB = kLines / kWarpgroups;                                         // conv_b's tiles a warpgroup
  static constexpr int kA = ((kLines + 2) * kUnitCols - 2 + 64 * kWarpgroups - 1) / (64 * kWarpgroups);  // conv_a's
  static constexpr int kHiddenRows = kWarpgroups * kA * 64;  // a, from the staged image's row kUnitCols + 1 on
  static constexpr int kInputRows = kHiddenRows + 2 * (kUnitCols + 1);  // the rows conv_a's taps read
  static constexpr int kBoxBytes = (kLines + 4) * kUnitCols * kRowBytes;  // of them, those the box copy fills
  static constexpr int kInputBytes = (kInputRows * kRowBytes + 1023) / 1024 * 1024;
  static constexpr int kWeightBoxRows = 9 * W / 2;  // a stage's weights in two boxes (at most 256 rows a box)
  static constexpr int kWeightBytes = 9 * W * kRowBytes;
  static constexpr int kStageBytes = kInputBytes + (kWeightBytes + 1023) / 1024 * 1024;
  static constexpr int kHiddenChunkBytes = kHiddenRows * kRowBytes;
  static constexpr int kSmem = kUnitBuffers * kStageBytes + kChunks * kHiddenChunkBytes + 1024;
  static_assert(kLines % kWarpgroups == 0 && kHiddenChunkBytes % 1024 == 0, "tiles and chunks on 1 KB boundaries");
  static_assert(kWeightBoxRows * kRowBytes % 256 == 0, "the second weight box on the swizzle's 256-byte period");
  static_assert(kSmem <= 227 * 1024, "shared memory of a block");
};

// The tensor maps of a unit call: h's (as a wide call's input) and conv_a's and conv_b's K-major kernels.
struct UnitMaps {
  CUtensorMap h, w[2];
};

// Item i of a unit call: tile i % tiles (kLines lines from line0, 64 pixels from col0) of member i / tiles.
template <int LINES>
__device__ __forceinline__ Item place_unit_item(const Params& p, int item) {
  Item at{};
  const int tile = item % p.tiles;
  at.member = item / p.tiles;
  at.line0 = tile / p.col_tiles * LINES;
  at.col0 = (tile - tile / p.col_tiles * p.col_tiles) * 64;
  return at;
}

// One stage's products of a warpgroup in the residual-unit kernel: its M m64 tiles, STEP staged rows apart from
// tile0, each tap's A operand the same rows from another start (a staged image of row width kUnitCols), against the
// stage's nine taps' weights (9 x W rows); meanwhile() runs while they do, and they are waited for before returning.
template <typename T, int W, int M, int STEP, typename F>
__device__ __forceinline__ void unit_products(float (&acc)[M][W / 8][4], uint32_t tile0, uint32_t weights,
                                              F&& meanwhile) {
  wgmma_fence();
#pragma unroll
  for (int tap = 0; tap < 9; ++tap) {
    const int offset = (tap / 3 - 1) * kUnitCols + (tap % 3 - 1);
    const uint64_t b = wgmma_descriptor_32b(weights + tap * W * kRowBytes);
#pragma unroll
    for (int m = 0; m < M; ++m)
      wgmma<T, W / 8>(acc[m], wgmma_descriptor_32b(tile0 + (m * STEP + offset) * kRowBytes), b);
  }
  wgmma_commit();
  meanwhile();
  wgmma_wait<0>();
}

// The float32 values of shared memory [from, from + bytes) rounded to TF32 in place, by the block's THREADS threads.
template <int THREADS>
__device__ __forceinline__ void round_shared_to_tf32(uint32_t from, int bytes) {
  for (int i = threadIdx.x; i < bytes / 16; i += THREADS) {
    float4 v;
    asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "r"(from + 16 * i)
                 : "memory");
    asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(from + 16 * i), "f"(to_tf32(v.x)),
                 "f"(to_tf32(v.y)), "f"(to_tf32(v.z)), "f"(to_tf32(v.w))
                 : "memory");
  }
}

template <typename T, int W>
__global__ void __launch_bounds__(128 * kWarpgroups, 1)
    residual_unit_kernel(const __grid_constant__ Params p, const __grid_constant__ UnitMaps maps) {
  using U = Unit<T, W>;
  extern __shared__ __align__(128) char smem_raw[];
  // mbarriers: a buffer's stage has arrived (filled), every thread has rounded its share of it (rounded, float32)
  // and its products have read it (read); every thread has written its part of a (written) and read a (used)
  __shared__ __align__(8) uint64_t barriers[3 * kUnitBuffers + 2];
  const uint32_t smem = (static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) + 1023) & ~1023u;
  const uint32_t hidden = smem + kUnitBuffers * U::kStageBytes;  // a: kChunks regions of kHiddenRows 32-byte rows
  constexpr int kThreads = 128 * kWarpgroups, kStages = 2 * U::kChunks;
  if ((int)blockIdx.x >= p.blocks) {
    zero_margins<T>(p);
    return;
  }
  const int end = p.tiles * p.members, step = p.blocks;
  const uint32_t filled0 = static_cast<uint32_t>(__cvta_generic_to_shared(barriers));
  const uint32_t rounded0 = filled0 + 8 * kUnitBuffers, read0 = rounded0 + 8 * kUnitBuffers;
  const uint32_t written = read0 + 8 * kUnitBuffers, used = written + 8;
  if (threadIdx.x == 0) {
    for (int b = 0; b < kUnitBuffers; ++b) {
      mbarrier_init(filled0 + 8 * b);
      mbarrier_init(rounded0 + 8 * b, kThreads);
      mbarrier_init(read0 + 8 * b, kThreads);
    }
    mbarrier_init(written, kThreads);
    mbarrier_init(used, kThreads);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  // Thread 0 loads stage s into buffer s % kUnitBuffers once every thread's products have read stage s - kUnitBuffers
  // there; each stage completes one phase of its buffer's mbarriers.
  int load_item = blockIdx.x, loaded = 0;
  Item load_at = place_unit_item<U::kLines>(p, load_item);
  auto load = [&]() {
    if (load_item >= end) return;
    const int buffer = loaded % kUnitBuffers, in_item = loaded % kStages;
    if (loaded >= kUnitBuffers) mbarrier_wait(read0 + 8 * buffer, (loaded / kUnitBuffers - 1) & 1);
    const uint32_t stage = smem + buffer * U::kStageBytes, bar = filled0 + 8 * buffer;
    const bool conv_a = in_item < U::kChunks;
    const int chunk = conv_a ? in_item : in_item - U::kChunks;
    mbarrier_expect_bytes(bar, (conv_a ? U::kBoxBytes : 0) + U::kWeightBytes);
    if (conv_a)
      tma_load_4d(stage, &maps.h, chunk * U::kc, load_at.col0 - 2, load_at.line0 - 2, p.x_step[0] ? load_at.member : 0,
                  bar);
    for (int box = 0; box < 2; ++box)
      tma_load_3d(stage + U::kInputBytes + box * U::kWeightBoxRows * kRowBytes, &maps.w[conv_a ? 0 : 1],
                  chunk * U::kc, box * U::kWeightBoxRows, p.w_step[conv_a ? 0 : 1] ? load_at.member : 0, bar);
    if (++loaded % kStages == 0) {
      load_item += step;
      if (load_item < end) load_at = place_unit_item<U::kLines>(p, load_item);
    }
  };
  if (threadIdx.x == 0) load();  // stage 0; then stage s + 1 while stage s - 1's products run (meanwhile)
  __syncwarp();

  int sg = 0;  // stages consumed: stage sg is in buffer sg % kUnitBuffers
  // waits for the next stage (its bytes, and in float32 every thread's rounding of it); returns its buffer
  auto next_stage = [&]() {
    const int buffer = sg % kUnitBuffers, parity = (sg / kUnitBuffers) & 1;
    mbarrier_wait(filled0 + 8 * buffer, parity);
    if (sizeof(T) == 4 && sg % kStages < U::kChunks) mbarrier_wait(rounded0 + 8 * buffer, parity);
    return smem + buffer * U::kStageBytes;
  };
  // after the stage's products: its buffer read, and the next one
  auto stage_done = [&]() { mbarrier_arrive(read0 + 8 * (sg++ % kUnitBuffers)); };

  const int group = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  using Pair = std::conditional_t<sizeof(T) == 4, float2, __nv_bfloat162>;
  // While a stage's products run: in float32, this thread's share of the next stage rounded to TF32 in place if it is
  // conv_a's (the operand the two-kernel way reads from h's TF32 copy; the block's first stage before its loop), and
  // an arrival on its rounded mbarrier either way; thread 0 loads stage next + 1 (two on: its buffer's stage before
  // is the one whose products this thread read last)
  auto meanwhile = [&](int next) {
    if constexpr (sizeof(T) == 4) {
      if (blockIdx.x + next / kStages * step < end) {
        const int buffer = next % kUnitBuffers;
        if (next % kStages < U::kChunks) {
          mbarrier_wait(filled0 + 8 * buffer, (next / kUnitBuffers) & 1);
          round_shared_to_tf32<kThreads>(smem + buffer * U::kStageBytes, U::kBoxBytes);
          fence_proxy_async();
        }
        mbarrier_arrive(rounded0 + 8 * buffer);
      }
    }
    if (threadIdx.x == 0) load();
    __syncwarp();
  };
  meanwhile(0);
  int items = 0;  // items this block has computed
#pragma unroll 1
  for (int item = blockIdx.x; item < end; item += step, ++items) {
    const Item at = place_unit_item<U::kLines>(p, item);
    {  // conv_a over the staged image's flat rows from kUnitCols + 1, this warpgroup's kA tiles
      float acc[U::kA][W / 8][4];
      zero_accumulators(acc);
#pragma unroll 1
      for (int s = 0; s < U::kChunks; ++s) {
        const uint32_t stage = next_stage(), tile0 = stage + (kUnitCols + 1 + group * U::kA * 64) * kRowBytes;
        unit_products<T, W, U::kA, 64>(acc, tile0, stage + U::kInputBytes, [&]() { meanwhile(sg + 1); });
        stage_done();
      }
      // a = LeakyReLU(sum + b_a) (TF32 in float32), zero outside the image, into the hidden regions once every
      // thread's conv_b has read the item before's: hidden row r is staged pixel kUnitCols + 1 + r, i.e. line line0 - 2
      // + (r + kUnitCols + 1) / kUnitCols, column col0 - 2 + the rest; channel n is byte 4 n (2 n) of row r in region
      // n / kc, swizzled as the products read it
      const T* bias = reinterpret_cast<const T*>(p.extra + at.member * p.extra_step);
      if (items > 0) mbarrier_wait(used, (items - 1) & 1);
#pragma unroll
      for (int m = 0; m < U::kA; ++m)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int r = (group * U::kA + m) * 64 + 16 * warp + (lane >> 2) + 8 * half;
          const int staged = r + kUnitCols + 1, line_in = staged / kUnitCols;
          const int line = at.line0 - 2 + line_in, col = at.col0 - 2 + (staged - line_in * kUnitCols);
          const bool inside =
              line >= 0 && line < p.lines && line % p.h2 >= 1 && line % p.h2 <= p.h2 - 2 && col >= 1 && col <= p.w2 - 2;
#pragma unroll
          for (int j = 0; j < W / 8; ++j) {
            const int n = j * 8 + 2 * (lane & 3);
            float v[2], b[2];
            load_pair(bias + n, b[0], b[1]);
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              v[e] = acc[m][j][2 * half + e] + b[e];
              v[e] = v[e] >= 0.f ? v[e] : kSlope * v[e];
              if (sizeof(T) == 4) v[e] = to_tf32(v[e]);
              if (!inside) v[e] = 0.f;
            }
            const int byte = n * (int)sizeof(T) % 32;  // within the region's 32-byte row
            const uint32_t addr =
                hidden + n / U::kc * U::kHiddenChunkBytes + ldmatrix_swizzled<kRowBytes>(r, byte / 16) + byte % 16;
            if constexpr (sizeof(T) == 4) {
              asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(addr), "f"(v[0]), "f"(v[1]) : "memory");
            } else {
              const __nv_bfloat162 pair = __floats2bfloat162_rn(v[0], v[1]);
              asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(*reinterpret_cast<const uint32_t*>(&pair))
                           : "memory");
            }
          }
        }
      fence_proxy_async();  // a's stores visible to the products
      mbarrier_arrive(written);
    }
    // conv_b's output pixels: line line0 + l (l = group * kB + m), hidden row (l + 1) * kUnitCols + 1 on. The
    // epilogue's operands, the bias and the residual h at each accumulator element (pairs as stored), are loaded
    // before the products in float32, to arrive while they run (from L2: the stages brought h there); in bfloat16
    // after them, as the registers do not hold them beside the products
    // f(m, half, row, written, inside) for each of this thread's pixels (rows of out: a row of zeros if not written)
    auto each_pixel = [&](auto&& f) {
#pragma unroll
      for (int m = 0; m < U::kB; ++m)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int line = at.line0 + group * U::kB + m, col = at.col0 + 16 * warp + (lane >> 2) + 8 * half;
          const int y = line % p.h2;
          const bool written = line < p.lines && col < p.w2;
          const bool inside = col >= 1 && col <= p.w2 - 2 && y >= 1 && y <= p.h2 - 2;
          f(m, half, written ? p.margin + (long long)line * p.w2 + col : p.zero_tail - 1, written, inside);
        }
    };
    T* out = reinterpret_cast<T*>(p.out + at.member * p.out_step);
    const T* residual = reinterpret_cast<const T*>(p.residual + at.member * p.residual_step);
    const T* bias_b = reinterpret_cast<const T*>(p.unit_bias + at.member * p.extra_step);
    Pair operand[U::kB][2][W / 8];
    float bias[W / 8][2];
#pragma unroll
    for (int j = 0; j < W / 8; ++j) load_pair(bias_b + j * 8 + 2 * (lane & 3), bias[j][0], bias[j][1]);
    auto load_residual = [&]() {
      each_pixel([&](int m, int half, long long row, bool, bool) {
#pragma unroll
        for (int j = 0; j < W / 8; ++j)
          operand[m][half][j] = *reinterpret_cast<const Pair*>(residual + row * W + j * 8 + 2 * (lane & 3));
      });
    };
    constexpr bool kEarly = sizeof(T) == 4;
    if constexpr (kEarly) load_residual();
    float acc[U::kB][W / 8][4];
    zero_accumulators(acc);
    mbarrier_wait(written, items & 1);
#pragma unroll 1
    for (int s = 0; s < U::kChunks; ++s) {
      const uint32_t stage = next_stage();
      const uint32_t tile0 = hidden + s * U::kHiddenChunkBytes + ((group * U::kB + 1) * kUnitCols + 1) * kRowBytes;
      unit_products<T, W, U::kB, kUnitCols>(acc, tile0, stage + U::kInputBytes, [&]() { meanwhile(sg + 1); });
      stage_done();
    }
    mbarrier_arrive(used);
    if constexpr (!kEarly) load_residual();
    // out = LeakyReLU(sum + b_b + h) (TF32 in float32; the bias added before the residual, as XLA adds them), zero
    // outside the image
    each_pixel([&](int m, int half, long long row, bool written, bool inside) {
      if (!written) return;
#pragma unroll
      for (int j = 0; j < W / 8; ++j) {
        float v[2], r[2];
        if constexpr (sizeof(T) == 4) {
          r[0] = operand[m][half][j].x;
          r[1] = operand[m][half][j].y;
        } else {
          const float2 f = __bfloat1622float2(operand[m][half][j]);
          r[0] = f.x;
          r[1] = f.y;
        }
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          v[e] = acc[m][j][2 * half + e] + bias[j][e] + r[e];
          v[e] = v[e] >= 0.f ? v[e] : kSlope * v[e];
          if (sizeof(T) == 4) v[e] = to_tf32(v[e]);
          if (!inside) v[e] = 0.f;
        }
        store_pair(out + row * W + j * 8 + 2 * (lane & 3), v[0], v[1]);
      }
    });
  }
}

// The tensor maps of a unit call: h's as a wide call's input, each kernel k as (members, 9 W rows, W channels) from
// p.w[k], boxes of kc channels x kWeightBoxRows rows, the 32-byte swizzle (as the stages hold them).
template <typename T, int W>
cudaError_t unit_maps(const Params& p, UnitMaps& maps) {
  using U = Unit<T, W>;
  InputMaps inputs{};
  cudaError_t err = input_maps<T>(p, inputs, kUnitCols, U::kLines + 4);
  if (err != cudaSuccess) return err;
  maps.h = inputs.x[0];
  const auto encode = tensor_map_encoder();
  const CUtensorMapDataType type = sizeof(T) == 2 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
  const cuuint64_t row = W * sizeof(T), kernel = 9 * W * row;
  for (int k = 0; k < 2; ++k) {
    const cuuint64_t dims[3] = {W, 9 * W, p.w_step[k] ? (cuuint64_t)p.members : 1};
    const cuuint64_t strides[2] = {row, p.w_step[k] ? (cuuint64_t)p.w_step[k] : kernel};
    const cuuint32_t box[3] = {U::kc, U::kWeightBoxRows, 1}, unit[3] = {1, 1, 1};
    if (encode(&maps.w[k], type, 3, const_cast<char*>(p.w[k]), dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
               CU_TENSOR_MAP_SWIZZLE_32B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) !=
        CUDA_SUCCESS)
      return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

template <typename T, int W>
cudaError_t launch_unit(Params p, cudaStream_t stream) {
  using U = Unit<T, W>;
  constexpr auto kernel = residual_unit_kernel<T, W>;
  cudaError_t err = allow_shared_memory<kernel>(U::kSmem);
  if (err != cudaSuccess) return err;
  p.col_tiles = (p.w2 + 63) / 64;
  p.tiles = (p.lines + U::kLines - 1) / U::kLines * p.col_tiles;
  UnitMaps maps{};
  int device, sms, resident;
  err = unit_maps<T, W>(p, maps);
  if (err == cudaSuccess) err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess)
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, 128 * kWarpgroups, U::kSmem);
  if (err != cudaSuccess) return err;
  p.blocks = min(p.tiles * p.members, sms * resident);
  kernel<<<p.blocks + kZeroBlocks, 128 * kWarpgroups, U::kSmem, stream>>>(p, maps);
  return cudaGetLastError();
}

// The residual unit's handler: h (conv_a's input and the residual, float32 values as they are: the kernel rounds
// conv_a's operand), the weight pack with conv_a's and conv_b's K-major kernels and biases at the offsets given.
ffi::Error ResidualUnitImpl(cudaStream_t stream, ffi::AnyBuffer h, ffi::AnyBuffer pack,
                            ffi::Result<ffi::AnyBuffer> out, int64_t n, int64_t height, int64_t w, int64_t margin,
                            ffi::Span<const int64_t> kernel_offsets, ffi::Span<const int64_t> bias_offsets) {
  const auto dtype = out->element_type();
  if (dtype != ffi::DataType::BF16 && dtype != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("residual_unit: bfloat16 or float32 only");
  if (h.element_type() != dtype || pack.element_type() != dtype)
    return ffi::Error::InvalidArgument("residual_unit: h, the pack and the output share one dtype");
  const size_t elem = dtype == ffi::DataType::BF16 ? 2 : 4;
  Params p{};
  const int64_t members = members_of(*out, 2);
  p.members = (int)members;
  p.out_step = member_step(*out, 2, members);
  p.rows = extent(*out, 2, 0);
  p.cout = (int)extent(*out, 2, 1);
  p.n_inputs = 1;
  p.c[0] = p.cout;
  if (p.cout != 32 && p.cout != 48) return ffi::Error::InvalidArgument("residual_unit: 32 or 48 channels");
  if (extent(h, 2, 0) != p.rows || extent(h, 2, 1) != p.cout)
    return ffi::Error::InvalidArgument("residual_unit: h must have the output's shape");
  p.x[0] = p.residual = static_cast<const char*>(h.untyped_data());
  p.x_step[0] = p.residual_step = member_step(h, 2, members);
  const char* weights = static_cast<const char*>(pack.untyped_data());
  const long long pack_step = member_step(pack, 1, members);
  const int64_t pack_size = extent(pack, 1, 0);
  if (kernel_offsets.size() != 2 || bias_offsets.size() != 2)
    return ffi::Error::InvalidArgument("residual_unit: two kernels and two biases");
  for (int k = 0; k < 2; ++k) {
    const int64_t kernel = kernel_offsets[k], bias = bias_offsets[k];
    if (kernel < 0 || kernel * elem % 16 != 0 || kernel + 9LL * p.cout * p.cout > pack_size || bias < 0 ||
        bias % 2 != 0 || bias + p.cout > pack_size)
      return ffi::Error::InvalidArgument("residual_unit: a kernel or bias offset outside the pack or misaligned");
    p.w[k] = weights + kernel * elem;
    p.w_step[k] = pack_step;
  }
  p.extra = weights + bias_offsets[0] * elem;
  p.unit_bias = weights + bias_offsets[1] * elem;
  p.extra_step = pack_step;
  if (pack_step < 0 || p.out_step < 0 || p.x_step[0] < 0 || p.residual_step < 0)
    return ffi::Error::InvalidArgument("residual_unit: operands batched over one leading axis (vmap) at most");
  if (pack_step % 16 != 0)  // the kernels' tensor maps step from one member's to the next
    return ffi::Error::InvalidArgument("residual_unit: a batched pack's members must be multiples of 16 bytes");
  p.out = static_cast<char*>(out->untyped_data());
  set_layout(p, n, height, w, margin);
  if (p.w2 <= kRangeMaxRowWidth) return ffi::Error::InvalidArgument("residual_unit: rows wider than 94 pixels only");
  cudaError_t err;
  if (dtype == ffi::DataType::BF16)
    err = p.cout == 32 ? launch_unit<__nv_bfloat16, 32>(p, stream) : launch_unit<__nv_bfloat16, 48>(p, stream);
  else
    err = p.cout == 32 ? launch_unit<float, 32>(p, stream) : launch_unit<float, 48>(p, stream);
  if (err != cudaSuccess) return ffi::Error::Internal(cudaGetErrorString(err));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(IrrmDenseConv, DenseConvImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .RemainingArgs()
                                  .Ret<ffi::AnyBuffer>()
                                  .OptionalRet<ffi::AnyBuffer>()  // the TF32 copy or the sums
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
XLA_FFI_DEFINE_HANDLER_SYMBOL(IrrmResidualUnit, ResidualUnitImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()  // h
                                  .Arg<ffi::AnyBuffer>()  // the weight pack
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("n")
                                  .Attr<int64_t>("h")
                                  .Attr<int64_t>("w")
                                  .Attr<int64_t>("margin")
                                  .Attr<ffi::Span<const int64_t>>("kernel_offsets")
                                  .Attr<ffi::Span<const int64_t>>("bias_offsets"),
                              {ffi::Traits::kCmdBufferCompatible});
