// The convolution's two CUDA kernels (irrm_jax/dense_conv.cu) on the same data: the mma.sync line tiles and the
// warpgroup products (flat ranges for rows of up to 96 pixels, line tiles of wide rows), each call's time (CUDA events,
// the mean of 50 launches, twice each, alternating) and how many outputs differ between them. IRN x4's layers at the
// 2040x1356 round trip's levels (batch 1), IRRM's 32-channel convolutions, the backward's transposed convolutions
// and odd sizes; CASE=<substring> runs the matching cases only. On a GPU machine:
//
//   INC=$(python -c "import jax; print(jax.ffi.include_dir())")
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -diag-suppress 940,2473 -I$INC \
//     benchmarks/conv_harness.cu -o /tmp/conv_harness && /tmp/conv_harness
//
// The operands are random TF32 (float32) or bfloat16 values at the image pixels, zeros at the padding, as the flat
// layout holds them (irrm_jax/dense_kernels.py); the warpgroup kernel reads K-major copies of the HWIO kernels.
#ifndef SRC
#define SRC "../irrm_jax/dense_conv.cu"
#endif
#include SRC

#include "harness.cuh"

#include <cmath>
#include <string>
#include <vector>

template <typename T, int NT>
static void bench(const char* name, int n, int h, int w, std::vector<int> cs, int cout, int epi, bool trans) {
  if (getenv("CASE") && !strstr(name, getenv("CASE"))) return;
  const FlatImages images(n, h, w);
  const int h2 = images.h2, w2 = images.w2;
  const long long margin = images.margin, rows = images.rows;
  srand(1);
  auto upload = [](const std::vector<T>& v) {
    void* d;
    CK(cudaMalloc(&d, v.size() * sizeof(T)));
    CK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
  };
  auto image = [&](int c) { return images.random<T>(c); };
  Params p{};
  std::vector<void*> bufs;
  p.n_inputs = (int)cs.size();
  std::vector<const char*> kmajor;  // the warpgroup kernel's kernels: K-major copies (a transposed one's own)
  for (size_t i = 0; i < cs.size(); ++i) {
    p.x[i] = (const char*)image(cs[i]);
    std::vector<T> hw((size_t)9 * cs[i] * cout);
    for (auto& v : hw) v = conv<T>(uniform() * 0.1f);
    p.w[i] = (const char*)upload(hw);
    if (trans) {
      kmajor.push_back(p.w[i]);
    } else {  // K-major copy (9, cout, c) of the HWIO kernel (9, c, cout)
      std::vector<T> hk(hw.size());
      for (int t = 0; t < 9; ++t) for (int k = 0; k < cs[i]; ++k) for (int o = 0; o < cout; ++o)
        hk[((size_t)t * cout + o) * cs[i] + k] = hw[((size_t)t * cs[i] + k) * cout + o];
      kmajor.push_back((const char*)upload(hk));
      bufs.push_back((void*)kmajor.back());
    }
    p.c[i] = cs[i];
    bufs.push_back((void*)p.x[i]);
    bufs.push_back((void*)p.w[i]);
  }
  if (epi == kLeakyGrad) {
    p.extra = (const char*)image(cout);
  } else {
    std::vector<T> hb(cout);
    for (auto& v : hb) v = conv<T>(uniform() * 0.1f);
    p.extra = (const char*)upload(hb);
  }
  bufs.push_back((void*)p.extra);
  const size_t out_elems = (size_t)rows * cout;
  T* o;
  CK(cudaMalloc(&o, out_elems * sizeof(T)));
  CK(cudaMemset(o, 0x7f, out_elems * sizeof(T)));
  p.out = (char*)o;
  p.members = 1;
  p.rows = rows;
  p.cout = cout;
  p.margin = margin;
  p.h2 = h2;
  p.w2 = w2;
  p.lines = n * h2;
  const int mt = tiles_a_line(w2);
  p.col_tiles = (w2 + mt * 16 - 1) / (mt * 16);
  p.tiles = (p.lines + kLines - 1) / kLines * p.col_tiles;
  p.zero_head = margin;
  p.zero_tail = margin + (long long)p.lines * w2;
  Params q = p;  // the warpgroup kernel's call: the same but for the kernels and the output
  for (size_t i = 0; i < cs.size(); ++i) q.w[i] = kmajor[i];
  T* o2;
  CK(cudaMalloc(&o2, out_elems * sizeof(T)));
  CK(cudaMemset(o2, 0x7f, out_elems * sizeof(T)));
  q.out = (char*)o2;
  bool wg = false;
  auto run = [&] { if (wg) CK((launch_wgmma_direction<T, NT>(q, epi, trans, 0))); else CK((launch_width<T, NT>(p, mt, epi, trans, 0))); };
  run();
  wg = true;
  run();
  CK(cudaDeviceSynchronize());
  std::vector<T> a(out_elems), b(out_elems);
  CK(cudaMemcpy(a.data(), o, out_elems * sizeof(T), cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(b.data(), o2, out_elems * sizeof(T), cudaMemcpyDeviceToHost));
  double maxd = 0, maxv = 0; long long nd = 0;
  for (size_t i = 0; i < out_elems; ++i) {
    const double u = (double)(float)a[i], v = (double)(float)b[i];
    if (!(u == v)) ++nd;
    maxd = std::max(maxd, std::fabs(u - v)); maxv = std::max(maxv, std::fabs(u));
  }
  auto timeit = [&] { return mean_launch_us(run, 50); };

  double macs = 0;
  for (int c : cs) macs += (double)n * h * w * 9 * c * cout;
  wg = false; const float l1 = timeit(); wg = true; const float g1 = timeit(); wg = false; const float l2 = timeit(); wg = true; const float g2 = timeit();
  printf("%-24s | lines %.1f / %.1f us (%.0f TFLOP/s) | wgmma %.1f / %.1f us (%.0f TFLOP/s) | x%.2f | differ %lld of %zu, max %.3g (max |out| %.3g)\n", name, l1, l2,
         2 * macs / std::min(l1, l2) / 1e6, g1, g2, 2 * macs / std::min(g1, g2) / 1e6, std::min(l1, l2) / std::min(g1, g2), nd, out_elems, maxd, maxv);
  for (void* v : bufs) cudaFree(v);
  cudaFree(o);
  cudaFree(o2);
}

int main() {
  // IRN x4's layers at the round trip's levels (batch 1): 1020x678 (inputs 16 + 32 k) and 510x339 (48 + 32 k)
  bench<float, 32>("f32 1020 L1 fwd", 1, 678, 1020, {16}, 32, kBiasLeaky, false);
  bench<float, 32>("f32 1020 L2 fwd", 1, 678, 1020, {16, 32}, 32, kBiasLeaky, false);
  bench<float, 32>("f32 1020 L3 fwd", 1, 678, 1020, {16, 32, 32}, 32, kBiasLeaky, false);
  bench<float, 32>("f32 1020 L4 fwd", 1, 678, 1020, {16, 32, 32, 32}, 32, kBiasLeaky, false);
  bench<float, 16>("f32 1020 L5 fwd", 1, 678, 1020, {16, 32, 32, 32, 32}, 16, kBias, false);
  bench<float, 32>("f32 510 L1 fwd", 1, 339, 510, {48}, 32, kBiasLeaky, false);
  bench<float, 32>("f32 510 L2 fwd", 1, 339, 510, {48, 32}, 32, kBiasLeaky, false);
  bench<float, 32>("f32 510 L4 fwd", 1, 339, 510, {48, 32, 32, 32}, 32, kBiasLeaky, false);
  bench<float, 16>("f32 510 L5 fwd 48out", 1, 339, 510, {48, 32, 32, 32, 32}, 48, kBias, false);
  bench<float, 16>("f32 510 G L5 fwd 16out", 1, 339, 510, {16, 32, 32, 32, 32}, 16, kBias, false);
  bench<__nv_bfloat16, 32>("bf16 1020 L1 fwd", 1, 678, 1020, {16}, 32, kBiasLeaky, false);
  bench<__nv_bfloat16, 32>("bf16 1020 L2 fwd", 1, 678, 1020, {16, 32}, 32, kBiasLeaky, false);
  bench<__nv_bfloat16, 32>("bf16 1020 L3 fwd", 1, 678, 1020, {16, 32, 32}, 32, kBiasLeaky, false);
  bench<__nv_bfloat16, 32>("bf16 1020 L4 fwd", 1, 678, 1020, {16, 32, 32, 32}, 32, kBiasLeaky, false);
  bench<__nv_bfloat16, 16>("bf16 1020 L5 fwd", 1, 678, 1020, {16, 32, 32, 32, 32}, 16, kBias, false);
  bench<__nv_bfloat16, 32>("bf16 510 L2 fwd", 1, 339, 510, {48, 32}, 32, kBiasLeaky, false);
  bench<__nv_bfloat16, 32>("bf16 510 L4 fwd", 1, 339, 510, {48, 32, 32, 32}, 32, kBiasLeaky, false);
  // IRRM's Enhanced Block convolutions (32 -> 32, one input)
  bench<float, 32>("f32 irrm 1020 32-32", 1, 678, 1020, {32}, 32, kBiasLeaky, false);
  bench<float, 32>("f32 irrm 510 32-32", 1, 339, 510, {32}, 32, kBiasLeaky, false);
  bench<__nv_bfloat16, 32>("bf16 irrm 1020 32-32", 1, 678, 1020, {32}, 32, kBiasLeaky, false);
  // backward (transposed, leaky_grad) and odd sizes: outputs compared
  bench<float, 32>("f32 1020 grad", 1, 678, 1020, {32, 32, 32}, 32, kLeakyGrad, true);
  bench<__nv_bfloat16, 32>("bf16 1020 grad", 1, 678, 1020, {32, 32, 32}, 32, kLeakyGrad, true);
  bench<float, 32>("f32 w100 fwd", 3, 30, 100, {16, 32, 32}, 32, kBiasLeaky, false);
  bench<__nv_bfloat16, 32>("bf16 w100 grad", 3, 30, 100, {16, 32, 32}, 32, kLeakyGrad, true);
  bench<float, 16>("f32 w126 fwd", 3, 31, 126, {16, 32}, 16, kBias, false);
  bench<float, 16>("f32 w200 fwd", 3, 41, 200, {16, 32}, 48, kNone, false);
  bench<float, 32>("f32 w95 fwd", 2, 13, 95, {16, 32}, 32, kBiasLeaky, false);
  bench<float, 32>("f32 MT3 fwd", 2, 9, 46, {16, 32}, 32, kBiasLeaky, false);
  bench<float, 32>("f32 MT5 grad", 2, 9, 78, {32, 16}, 32, kLeakyGrad, true);
  bench<__nv_bfloat16, 16>("bf16 MT3 grad", 2, 9, 46, {32, 16}, 16, kLeakyGrad, true);
  bench<float, 16>("f32 small", 2, 8, 13, {16, 32}, 16, kBias, false);
  return 0;
}
