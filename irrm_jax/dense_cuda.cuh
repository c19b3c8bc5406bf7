// Helpers shared by the CUDA kernels of the DenseBlock (dense_conv.cu, dense_weight_grad.cu): asynchronous copies
// into shared memory, ldmatrix, the tensor cores' mma.sync and Hopper's warpgroup products (wgmma) for bfloat16 and
// TF32, copies by the tensor memory accelerator, element conversions.
#pragma once
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cstdint>
#include <initializer_list>

#include "xla/ffi/api/ffi.h"

namespace dense_cuda {

namespace ffi = xla::ffi;

constexpr int kMaxInputs = 8;  // inputs of one convolution (a DenseBlock layer reads x, x1, ..., x4)
constexpr float kSlope = 0.2f;  // LeakyReLU's negative slope

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  int n = valid ? 16 : 0;  // 0 source bytes: zero fill
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Byte offset of 16-byte segment `seg` of row `row` in shared memory of RB-byte rows (RB = 32 or 64), swizzled for
// ldmatrix: a row's segments are permuted by its place within 128 bytes of rows, so that the eight rows an ldmatrix
// reads at one segment (any eight consecutive rows) fall in distinct banks.
template <int RB>
__device__ __forceinline__ uint32_t ldmatrix_swizzled(int row, int seg) {
  return row * RB + ((seg ^ ((unsigned)row * RB / 128 % (RB / 16))) << 4);  // rows are never negative
}

template <typename T>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma<float>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Hopper's warpgroup products (wgmma, sm_90a): the four warps of a warpgroup issue one 64 x N x K product together,
// both operands read from shared memory through descriptors, the sums accumulated in registers (warp w holds rows
// 16 w to 16 w + 15 in mma.sync's m16n8 layout, one n8 tile after another) while the warps go on. `wgmma_fence`
// before the first product of a sequence, `wgmma_commit` closes a group, `wgmma_wait<N>` waits until at most N of
// the warpgroup's groups are in flight; shared memory written by the threads (cp.async included) is made visible to
// the products by `fence_proxy_async` (then a barrier).
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Descriptor of a K-major operand whose rows are 32 bytes of K (one product's K: 16 bfloat16 or 8 TF32 values), 8-row
// groups 256 bytes apart, with the 32-byte swizzle (`ldmatrix_swizzled<32>`: a row's 16-byte halves swap in rows 4-7
// of every 256 bytes). The hardware applies the swizzle to the absolute shared-memory address, so the operand may
// start at any row of a region laid out from a 256-byte boundary (base offset 0): a convolution tap is a start row.
__device__ __forceinline__ uint64_t wgmma_descriptor_32b(uint32_t smem_addr) {
  return (uint64_t)((smem_addr & 0x3FFFF) >> 4) | (uint64_t)1 << 16 | (uint64_t)(256 >> 4) << 32 | (uint64_t)3 << 62;
}

#define IRRM_ACC16(x)                                                                                              \
  "+f"(x[0][0]), "+f"(x[0][1]), "+f"(x[0][2]), "+f"(x[0][3]), "+f"(x[1][0]), "+f"(x[1][1]), "+f"(x[1][2]),         \
      "+f"(x[1][3]), "+f"(x[2][0]), "+f"(x[2][1]), "+f"(x[2][2]), "+f"(x[2][3]), "+f"(x[3][0]), "+f"(x[3][1]),     \
      "+f"(x[3][2]), "+f"(x[3][3])
#define IRRM_ACC24(x)                                                                                              \
  IRRM_ACC16(x), "+f"(x[4][0]), "+f"(x[4][1]), "+f"(x[4][2]), "+f"(x[4][3]), "+f"(x[5][0]), "+f"(x[5][1]),         \
      "+f"(x[5][2]), "+f"(x[5][3])
#define IRRM_ACC8(x) \
  "+f"(x[0][0]), "+f"(x[0][1]), "+f"(x[0][2]), "+f"(x[0][3]), "+f"(x[1][0]), "+f"(x[1][1]), "+f"(x[1][2]), "+f"(x[1][3])

// acc[j][q] += A (64 rows x one K step) B (one K step x 8 NJ columns), both K-major in shared memory.
template <typename T, int NJ>
__device__ __forceinline__ void wgmma(float (&acc)[NJ][4], uint64_t a, uint64_t b);
template <>
__device__ __forceinline__ void wgmma<__nv_bfloat16, 6>(float (&acc)[6][4], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %26, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n48k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
      "%16,%17,%18,%19,%20,%21,%22,%23}, %24, %25, p, 1, 1, 0, 0;\n}\n"
      : IRRM_ACC24(acc)
      : "l"(a), "l"(b), "r"(1));
}
template <>
__device__ __forceinline__ void wgmma<__nv_bfloat16, 4>(float (&acc)[4][4], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, "
      "%16, %17, p, 1, 1, 0, 0;\n}\n"
      : IRRM_ACC16(acc)
      : "l"(a), "l"(b), "r"(1));
}
template <>
__device__ __forceinline__ void wgmma<__nv_bfloat16, 2>(float (&acc)[2][4], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7}, %8, %9, p, 1, 1, 0, 0;\n}\n"
      : IRRM_ACC8(acc)
      : "l"(a), "l"(b), "r"(1));
}
template <>
__device__ __forceinline__ void wgmma<float, 6>(float (&acc)[6][4], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %26, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n48k8.f32.tf32.tf32 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
      "%16,%17,%18,%19,%20,%21,%22,%23}, %24, %25, p, 1, 1;\n}\n"
      : IRRM_ACC24(acc)
      : "l"(a), "l"(b), "r"(1));
}
template <>
__device__ __forceinline__ void wgmma<float, 4>(float (&acc)[4][4], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k8.f32.tf32.tf32 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, "
      "%16, %17, p, 1, 1;\n}\n"
      : IRRM_ACC16(acc)
      : "l"(a), "l"(b), "r"(1));
}
template <>
__device__ __forceinline__ void wgmma<float, 2>(float (&acc)[2][4], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k8.f32.tf32.tf32 {%0,%1,%2,%3,%4,%5,%6,%7}, %8, %9, p, 1, 1;\n}\n"
      : IRRM_ACC8(acc)
      : "l"(a), "l"(b), "r"(1));
}
#undef IRRM_ACC24
#undef IRRM_ACC16
#undef IRRM_ACC8

// The tensor memory accelerator (TMA, sm_90): one thread issues a box copy of a tensor (described by a CUtensorMap,
// cuTensorMapEncodeTiled) into shared memory, and an mbarrier counts the bytes in: `mbarrier_expect_bytes` arms it
// for one phase, `mbarrier_wait` waits for that phase (its parity) to complete. An mbarrier of `count` arrivals
// (`mbarrier_arrive`) also tells threads that others are done with shared memory.
__device__ __forceinline__ void mbarrier_init(uint32_t bar, int count = 1) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbarrier_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbarrier_expect_bytes(uint32_t bar, int bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbarrier_wait(uint32_t bar, int parity) {
  asm volatile(
      "{\n.reg .pred done;\nwait:\nmbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n@!done bra wait;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2,
                                            uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2, int c3,
                                            uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}

// float32 operands reach the tensor cores as TF32 by truncation (the low 13 bits ignored), so they must already be
// TF32 values: rounded to nearest by the caller (`cuda_kernels.tf32_operand`) or by the epilogue that wrote them
// (`to_tf32`). Rounding there, once per element, costs far less than once per fragment load, and truncation's
// one-signed errors would add up over long sums such as the bias gradients'.
__device__ __forceinline__ float to_tf32(float v) {
  uint32_t r = __float_as_uint(v);
  asm("cvt.rna.tf32.f32 %0, %0;\n" : "+r"(r));
  return __uint_as_float(r);
}

__device__ __forceinline__ void load_pair(const __nv_bfloat16* src, float& a, float& b) {
  const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(src));
  a = v.x;
  b = v.y;
}
__device__ __forceinline__ void load_pair(const float* src, float& a, float& b) {
  const float2 v = *reinterpret_cast<const float2*>(src);
  a = v.x;
  b = v.y;
}
__device__ __forceinline__ void store_pair(__nv_bfloat16* dst, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(a, b);
}
// One 64-bit store: written as a float2 store, the compiler split most of the epilogues' pairs into two 32-bit stores.
__device__ __forceinline__ void store_pair(float* dst, float a, float b) {
  asm volatile("st.global.v2.f32 [%0], {%1, %2};\n" ::"l"(dst), "f"(a), "f"(b) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Two adjacent 32-bit words from shared memory (two TF32 operands).
__device__ __forceinline__ void lds64(uint32_t addr, uint32_t& a, uint32_t& b) {
  asm volatile("ld.shared.v2.b32 {%0,%1}, [%2];\n" : "=r"(a), "=r"(b) : "r"(addr));
}

// Raises a kernel's dynamic shared-memory limit on the current device, once a kernel and device.
template <auto kernel>
cudaError_t allow_shared_memory(int bytes) {
  static bool done[64] = {};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess || (device < 64 && done[device])) return err;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess && device < 64) done[device] = true;
  return err;
}

// Calls under jax.vmap (`cuda_kernels`' vmap_method "expand_dims": a coupling's G and H as one call) give every
// buffer a leading member axis: one array a member, or one array (axis of length 1) that all members share. Blocks
// pick their member by blockIdx and offset each buffer by its member step. `rank` is a buffer's rank without it.
inline int64_t members_of(const ffi::AnyBuffer& out, size_t rank) {
  return out.dimensions().size() > rank ? out.dimensions()[0] : 1;
}

// Bytes from one member's array to the next in a buffer (0: shared by all); -1 if its leading axis is neither.
inline long long member_step(const ffi::AnyBuffer& b, size_t rank, int64_t members) {
  const auto d = b.dimensions();
  if (d.size() == rank || (d.size() == rank + 1 && d[0] == 1)) return 0;
  if (d.size() != rank + 1 || d[0] != members) return -1;
  return (long long)(b.size_bytes() / members);
}

// A buffer's extent along axis `axis` (counted without the member axis).
inline int64_t extent(const ffi::AnyBuffer& b, size_t rank, size_t axis) {
  const auto d = b.dimensions();
  return d[d.size() - rank + axis];
}

// Of the candidate tile widths (pixels), the one that wastes the fewest columns of a row width w2 (the first on ties).
inline int least_waste(int w2, std::initializer_list<int> widths) {
  int best = *widths.begin(), waste = 1 << 30;
  for (int s : widths) {
    const int w = (w2 + s - 1) / s * s - w2;
    if (w < waste) best = s, waste = w;
  }
  return best;
}

}  // namespace dense_cuda
