// The convolution's CUDA kernel (irrm_jax/dense_conv.cu) alone: each call's time (CUDA events, the mean of 50
// launches, twice), its outputs against a plain reference kernel here (one thread an output, float32 sums; they
// differ in the order of the sums only, so by at most about one step of the output's precision), and its outputs
// written to /tmp/conv_<tag>_<case>.bin so that two versions of the file can be compared byte for byte. IRN x4's
// layers at the 2040x1356 round trip's levels (batch 1), IRRM's 32-channel convolutions, the training crops', the
// backward's transposed convolutions and odd sizes; CASE=<substring> runs the matching cases only. On a GPU machine:
//
//   INC=$(python -c "import jax; print(jax.ffi.include_dir())")
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -diag-suppress 940,2473 -I$INC \
//     benchmarks/conv_harness.cu -o /tmp/conv_harness && /tmp/conv_harness new
//   (with -DSRC='"/old/irrm_jax/dense_conv.cu"' -o /tmp/conv_old, then /tmp/conv_old old, and
//    for f in /tmp/conv_old_*; do cmp $f ${f/old/new}; done)
//
// The operands are random TF32 (float32) or bfloat16 values at the image pixels, zeros at the padding, as the flat
// layout holds them (irrm_jax/dense_kernels.py); a convolution reads K-major copies (9, cout, c) of its HWIO kernels,
// a transposed convolution the kernels themselves.
#ifndef SRC
#define SRC "../irrm_jax/dense_conv.cu"
#endif
#include SRC

#include "harness.cuh"

#include <cmath>
#include <vector>

// The same function as the kernel, one thread an output: zero outside the image pixels, else the epilogue of the
// sum over the inputs, the taps and the channels (a transposed convolution's tap t reads the kernel's 8 - t).
template <typename T>
__global__ void reference_conv(Params p, int epi, bool trans) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.rows * p.cout) return;
  const long long row = i / p.cout, q = row - p.margin;
  const int n = (int)(i % p.cout), x = (int)(q % p.w2), y = (int)(q / p.w2 % p.h2);
  const bool pixel = q >= 0 && q < (long long)p.lines * p.w2 && x >= 1 && x <= p.w2 - 2 && y >= 1 && y <= p.h2 - 2;
  float v = 0.f;
  for (int k = 0; pixel && k < p.n_inputs; ++k) {
    const T* xk = reinterpret_cast<const T*>(p.x[k]);
    const T* wk = reinterpret_cast<const T*>(p.w[k]);
    for (int tap = 0; tap < 9; ++tap) {
      const long long src = row + (tap / 3 - 1) * p.w2 + tap % 3 - 1;
      const T* w = wk + ((long long)(trans ? 8 - tap : tap) * p.cout + n) * p.c[k];
      for (int c = 0; c < p.c[k]; ++c) v += (float)xk[src * p.c[k] + c] * (float)w[c];
    }
  }
  const T* extra = reinterpret_cast<const T*>(p.extra);
  if (epi == kBias || epi == kBiasLeaky || epi == kBiasResidualLeaky) v += (float)extra[n];
  if (epi == kBiasResidualLeaky) v += (float)reinterpret_cast<const T*>(p.residual)[row * p.cout + n];
  if (epi == kBiasLeaky || epi == kBiasResidualLeaky) v = v >= 0.f ? v : kSlope * v;
  if (epi == kLeakyGrad) v = (float)extra[row * p.cout + n] >= 0.f ? v : kSlope * v;
  if (sizeof(T) == 4 && epi != kNone && epi != kBias) v = to_tf32(v);
  reinterpret_cast<T*>(p.out)[i] = (T)(pixel ? v : 0.f);
}

template <typename T>
static void bench(const char* tag, const char* name, int n, int h, int w, std::vector<int> cs, int cout, int epi,
                  bool trans) {
  if (getenv("CASE") && !strstr(name, getenv("CASE"))) return;
  const FlatImages images(n, h, w);
  srand(1);
  Params p{};
  std::vector<void*> bufs;
  p.n_inputs = (int)cs.size();
  for (size_t i = 0; i < cs.size(); ++i) {
    p.x[i] = (const char*)images.random<T>(cs[i]);
    p.c[i] = cs[i];
    std::vector<T> hw((size_t)9 * cs[i] * cout);  // HWIO (9, c, cout); a transposed convolution reads it as (9, cout', c')
    for (auto& v : hw) v = conv<T>(uniform() * 0.1f);
    if (trans) {
      p.w[i] = (const char*)upload(hw);
    } else {  // the K-major copy (9, cout, c)
      std::vector<T> hk(hw.size());
      for (int t = 0; t < 9; ++t)
        for (int k = 0; k < cs[i]; ++k)
          for (int o = 0; o < cout; ++o) hk[((size_t)t * cout + o) * cs[i] + k] = hw[((size_t)t * cs[i] + k) * cout + o];
      p.w[i] = (const char*)upload(hk);
    }
    bufs.push_back((void*)p.x[i]);
    bufs.push_back((void*)p.w[i]);
  }
  if (epi == kLeakyGrad) {
    p.extra = (const char*)images.random<T>(cout);
  } else {
    std::vector<T> hb(cout);
    for (auto& v : hb) v = conv<T>(uniform() * 0.1f);
    p.extra = (const char*)upload(hb);
  }
  bufs.push_back((void*)p.extra);
  if (epi == kBiasResidualLeaky) {
    p.residual = (const char*)images.random<T>(cout);
    bufs.push_back((void*)p.residual);
  }
  const size_t out_elems = (size_t)images.rows * cout;
  T *o, *o_ref;
  CK(cudaMalloc(&o, out_elems * sizeof(T)));
  CK(cudaMalloc(&o_ref, out_elems * sizeof(T)));
  CK(cudaMemset(o, 0x7f, out_elems * sizeof(T)));  // so that an output not written shows
  p.out = (char*)o;
  p.members = 1;
  p.rows = images.rows;
  p.cout = cout;
  p.margin = images.margin;
  p.h2 = images.h2;
  p.w2 = images.w2;
  p.lines = n * images.h2;
  p.zero_head = images.margin;
  p.zero_tail = images.margin + (long long)p.lines * images.w2;
  auto run = [&] { CK(launch_conv<T>(p, epi, trans, 0)); };
  run();
  Params r = p;
  r.out = (char*)o_ref;
  reference_conv<T><<<(unsigned)((out_elems + 255) / 256), 256>>>(r, epi, trans);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  std::vector<T> a(out_elems), b(out_elems);
  CK(cudaMemcpy(a.data(), o, out_elems * sizeof(T), cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(b.data(), o_ref, out_elems * sizeof(T), cudaMemcpyDeviceToHost));
  double max_diff = 0, max_out = 0;
  for (size_t i = 0; i < out_elems; ++i) {
    const double u = (double)(float)a[i], v = (double)(float)b[i];
    max_diff = std::isfinite(u) ? std::max(max_diff, std::fabs(u - v)) : INFINITY;
    max_out = std::max(max_out, std::fabs(v));
  }
  // about one step of the output's precision at its largest values: bfloat16 8 bits, TF32-rounded float32 11
  const bool ok = max_diff <= max_out * (sizeof(T) == 2 ? 0x1p-7 : 0x1p-10);
  write_outputs("conv", tag, name, a.data(), out_elems * sizeof(T));

  double macs = 0;
  for (int c : cs) macs += (double)n * h * w * 9 * c * cout;
  const float t1 = mean_launch_us(run, 50), t2 = mean_launch_us(run, 50);
  printf("%-26s | %.1f / %.1f us (%.0f TFLOP/s) | max diff %.3g of max |out| %.3g: %s\n", name, t1, t2,
         2 * macs / std::min(t1, t2) / 1e6, max_diff, max_out, ok ? "ok" : "MISMATCH");
  for (void* v : bufs) cudaFree(v);
  cudaFree(o);
  cudaFree(o_ref);
}

int main(int argc, char** argv) {
  const char* t = argc > 1 ? argv[1] : "x";
  // IRN x4's layers at the round trip's levels (batch 1): 1020x678 (inputs 16 + 32 k) and 510x339 (48 + 32 k)
  bench<float>(t, "f32 1020 L1 fwd", 1, 678, 1020, {16}, 32, kBiasLeaky, false);
  bench<float>(t, "f32 1020 L2 fwd", 1, 678, 1020, {16, 32}, 32, kBiasLeaky, false);
  bench<float>(t, "f32 1020 L3 fwd", 1, 678, 1020, {16, 32, 32}, 32, kBiasLeaky, false);
  bench<float>(t, "f32 1020 L4 fwd", 1, 678, 1020, {16, 32, 32, 32}, 32, kBiasLeaky, false);
  bench<float>(t, "f32 1020 L5 fwd", 1, 678, 1020, {16, 32, 32, 32, 32}, 16, kBias, false);
  // ... layer 5's sums over x to x3 in layer 4's call (48 outputs), then layer 5 from x4 and those sums alone (a
  // 16-channel residual; benchmarks/NOTES.md, Next 2)
  bench<float>(t, "f32 1020 L4 fwd 48out", 1, 678, 1020, {16, 32, 32, 32}, 48, kBias, false);
  bench<float>(t, "f32 1020 L5 x4 res", 1, 678, 1020, {32}, 16, kBiasResidualLeaky, false);
  bench<float>(t, "f32 510 L1 fwd", 1, 339, 510, {48}, 32, kBiasLeaky, false);
  bench<float>(t, "f32 510 L2 fwd", 1, 339, 510, {48, 32}, 32, kBiasLeaky, false);
  bench<float>(t, "f32 510 L4 fwd", 1, 339, 510, {48, 32, 32, 32}, 32, kBiasLeaky, false);
  bench<float>(t, "f32 510 L5 fwd 48out", 1, 339, 510, {48, 32, 32, 32, 32}, 48, kBias, false);
  bench<float>(t, "f32 510 G L5 fwd 16out", 1, 339, 510, {16, 32, 32, 32, 32}, 16, kBias, false);
  bench<__nv_bfloat16>(t, "bf16 1020 L1 fwd", 1, 678, 1020, {16}, 32, kBiasLeaky, false);
  bench<__nv_bfloat16>(t, "bf16 1020 L2 fwd", 1, 678, 1020, {16, 32}, 32, kBiasLeaky, false);
  bench<__nv_bfloat16>(t, "bf16 1020 L3 fwd", 1, 678, 1020, {16, 32, 32}, 32, kBiasLeaky, false);
  bench<__nv_bfloat16>(t, "bf16 1020 L4 fwd", 1, 678, 1020, {16, 32, 32, 32}, 32, kBiasLeaky, false);
  bench<__nv_bfloat16>(t, "bf16 1020 L5 fwd", 1, 678, 1020, {16, 32, 32, 32, 32}, 16, kBias, false);
  bench<__nv_bfloat16>(t, "bf16 1020 L4 fwd 48out", 1, 678, 1020, {16, 32, 32, 32}, 48, kBias, false);
  bench<__nv_bfloat16>(t, "bf16 1020 L5 x4 res", 1, 678, 1020, {32}, 16, kBiasResidualLeaky, false);
  bench<__nv_bfloat16>(t, "bf16 510 L2 fwd", 1, 339, 510, {48, 32}, 32, kBiasLeaky, false);
  bench<__nv_bfloat16>(t, "bf16 510 L4 fwd", 1, 339, 510, {48, 32, 32, 32}, 32, kBiasLeaky, false);
  bench<__nv_bfloat16>(t, "bf16 510 L5 fwd 48out", 1, 339, 510, {48, 32, 32, 32, 32}, 48, kBias, false);
  // IRRM's Enhanced Block convolutions (32 -> 32, one input)
  bench<float>(t, "f32 irrm 1020 32-32", 1, 678, 1020, {32}, 32, kBiasLeaky, false);
  bench<float>(t, "f32 irrm 510 32-32", 1, 339, 510, {32}, 32, kBiasLeaky, false);
  bench<__nv_bfloat16>(t, "bf16 irrm 1020 32-32", 1, 678, 1020, {32}, 32, kBiasLeaky, false);
  // ... conv_b with the residual sum and conv_out's LeakyReLU in its epilogue (IRRM-L: 48 -> 48)
  bench<float>(t, "f32 irrm 1020 48-48 res", 1, 678, 1020, {48}, 48, kBiasResidualLeaky, false);
  bench<float>(t, "f32 irrm 510 32-32 res", 1, 339, 510, {32}, 32, kBiasResidualLeaky, false);
  bench<__nv_bfloat16>(t, "bf16 irrm 1020 48-48 res", 1, 678, 1020, {48}, 48, kBiasResidualLeaky, false);
  bench<float>(t, "f32 36 48-48 res", 16, 36, 36, {48}, 48, kBiasResidualLeaky, false);
  // the training crops' levels (batch 16 of 144x144: 72x72 and 36x36, flat ranges)
  bench<float>(t, "f32 72 L4 fwd", 16, 72, 72, {16, 32, 32, 32}, 32, kBiasLeaky, false);
  bench<float>(t, "f32 36 L5 fwd 48out", 16, 36, 36, {48, 32, 32, 32, 32}, 48, kBias, false);
  bench<__nv_bfloat16>(t, "bf16 36 grad 48out", 16, 36, 36, {32}, 48, kLeakyGrad, true);
  // the backward's transposed convolutions (leaky_grad) and odd sizes
  bench<float>(t, "f32 1020 grad", 1, 678, 1020, {32, 32, 32}, 32, kLeakyGrad, true);
  bench<__nv_bfloat16>(t, "bf16 1020 grad", 1, 678, 1020, {32, 32, 32}, 32, kLeakyGrad, true);
  bench<float>(t, "f32 w100 fwd", 3, 30, 100, {16, 32, 32}, 32, kBiasLeaky, false);
  bench<__nv_bfloat16>(t, "bf16 w100 grad", 3, 30, 100, {16, 32, 32}, 32, kLeakyGrad, true);
  bench<float>(t, "f32 w126 fwd", 3, 31, 126, {16, 32}, 16, kBias, false);
  bench<float>(t, "f32 w200 fwd 48out", 3, 41, 200, {16, 32}, 48, kNone, false);
  bench<float>(t, "f32 w200 grad 48out", 3, 41, 200, {32, 16}, 48, kLeakyGrad, true);
  bench<float>(t, "f32 w95 fwd", 2, 13, 95, {16, 32}, 32, kBiasLeaky, false);
  bench<float>(t, "f32 w46 fwd", 2, 9, 46, {16, 32}, 32, kBiasLeaky, false);
  bench<float>(t, "f32 w78 grad", 2, 9, 78, {32, 16}, 32, kLeakyGrad, true);
  bench<__nv_bfloat16>(t, "bf16 w46 grad", 2, 9, 46, {32, 16}, 16, kLeakyGrad, true);
  bench<float>(t, "f32 small", 2, 8, 13, {16, 32}, 16, kBias, false);
  bench<float>(t, "f32 small 48out", 2, 8, 13, {16, 32}, 48, kBias, false);
  return 0;
}
