// What the CUDA harnesses (conv_harness.cu, weight_grad_harness.cu) share: error checks, operands as the kernels
// take them, and a launch's mean time.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#define CK(x)                                                            \
  do {                                                                   \
    cudaError_t e_ = (x);                                                \
    if (e_ != cudaSuccess) {                                             \
      printf("CUDA %s at %d\n", cudaGetErrorString(e_), __LINE__);       \
      exit(1);                                                           \
    }                                                                    \
  } while (0)

// float32 rounded to TF32 (nearest, ties away from zero: cuda_kernels.round_to_tf32), or bfloat16.
static float tf32(float v) { uint32_t u; memcpy(&u, &v, 4); u = (u + 0x1000u) & ~0x1FFFu; memcpy(&v, &u, 4); return v; }
template <typename T> T conv(float v);
template <> float conv<float>(float v) { return tf32(v); }
template <> __nv_bfloat16 conv<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

// The mean time of `reps` calls of run() in microseconds (CUDA events), after 5 unmeasured ones.
template <typename F>
float mean_launch_us(F run, int reps) {
  for (int i = 0; i < 5; ++i) run();
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  CK(cudaEventRecord(e0));
  for (int i = 0; i < reps; ++i) run();
  CK(cudaEventRecord(e1));
  CK(cudaEventSynchronize(e1));
  float ms;
  CK(cudaEventElapsedTime(&ms, e0, e1));
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  return ms * 1000.f / reps;
}

// A host array copied into a new device allocation.
template <typename T>
void* upload(const std::vector<T>& v) {
  void* d;
  CK(cudaMalloc(&d, v.size() * sizeof(T)));
  CK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

// A case's outputs written to /tmp/<prefix>_<tag>_<case>.bin (spaces in the case's name as _), so that two builds'
// outputs can be compared byte for byte.
static void write_outputs(const char* prefix, const char* tag, const char* name, const void* data, size_t bytes) {
  std::string file = std::string("/tmp/") + prefix + "_" + tag + "_" + name + ".bin";
  for (char& ch : file) ch = ch == ' ' ? '_' : ch;
  FILE* f = fopen(file.c_str(), "wb");
  fwrite(data, 1, bytes, f);
  fclose(f);
}

// A uniform random value in [-1, 1] (rand(): seeded with srand by the caller, so that runs repeat).
static float uniform() { return (float)rand() / RAND_MAX * 2.f - 1.f; }

// The flat layout of n images of h x w (irrm_jax/dense_kernels.FlatLayout: lines of w + 2 pixels, h + 2 lines an
// image, margins of whole 64-row groups).
struct FlatImages {
  int h2, w2, plane;
  long long n_rows, margin, rows;
  FlatImages(int n, int h, int w) : h2(h + 2), w2(w + 2), plane((h + 2) * (w + 2)) {
    n_rows = (long long)n * plane;
    margin = (long long)((w + 3 + 63) / 64) * 64;
    rows = (n_rows + 63) / 64 * 64 + 64 + 2 * margin;
  }
  // `members` arrays of (rows, c), one after another, on the device: random operand values at the pixels, zeros at
  // the padding and margins.
  template <typename T>
  void* random(int c, int members = 1) const {
    std::vector<T> hx((size_t)rows * c * members, conv<T>(0.f));
    for (int mb = 0; mb < members; ++mb)
      for (long long r = 0; r < rows; ++r) {
        const long long q = r - margin;
        if (q < 0 || q >= n_rows) continue;
        const int y = (int)((q % plane) / w2), x = (int)(q % w2);
        if (y < 1 || y > h2 - 2 || x < 1 || x > w2 - 2) continue;
        for (int k = 0; k < c; ++k) hx[(size_t)mb * rows * c + r * c + k] = conv<T>(uniform());
      }
    return upload(hx);
  }
};
