// The kernel gradients' CUDA kernels (irrm_jax/dense_weight_grad.cu) alone, on IRN x4's shapes at batch 16: each
// call's time (CUDA events, the mean of 100 launches, twice) and its partial sums, written to
// /tmp/wgp_<tag>_<case>.bin so that two versions of the file can be compared byte for byte. On a GPU machine:
//
//   INC=$(python -c "import jax; print(jax.ffi.include_dir())")
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -diag-suppress 940,2473 -I$INC \
//     -DSRC='"/old/irrm_jax/dense_weight_grad.cu"' benchmarks/weight_grad_harness.cu -o /tmp/harness_old
//   (and the same with the new file, -o /tmp/harness_new)
//   /tmp/harness_old old; /tmp/harness_new new; for f in /tmp/wgp_old_*; do cmp $f ${f/old/new}; done
//
// The operands are random TF32 (float32) or bfloat16 values at the image pixels, zeros at the padding, as the flat
// layout holds them (irrm_jax/dense_kernels.py); the groups of rows are cuda_kernels.weight_grad_partials'.
#ifndef SRC
#define SRC "../irrm_jax/dense_weight_grad.cu"
#endif
#include SRC

#include "harness.cuh"

#include <cmath>
#include <vector>

template <typename T, int NT>
static void bench(const char* tag, const char* name, int n, int h, int w, std::vector<int> cs,
                  std::vector<std::vector<int>> layers, int members) {
  const FlatImages images(n, h, w);
  const int h2 = images.h2, w2 = images.w2;
  const long long margin = images.margin, rows = images.rows;
  srand(1);
  auto make = [&](int c) { return images.random<T>(c, members); };
  std::vector<void*> arrays, grads;
  for (int c : cs) arrays.push_back(make(c));
  for (size_t l = 0; l < layers.size(); ++l) grads.push_back(make(NT));
  Params p{};
  int chunks = 0, k = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    bool first = true;
    for (int a : layers[l]) {
      p.x[k] = (const char*)arrays[a];
      p.c[k] = cs[a];
      p.grad_of[k] = (int)l;
      p.x_step[k] = members > 1 ? rows * cs[a] * (long long)sizeof(T) : 0;
      for (int j = 0; j < cs[a]; j += 16, ++chunks) {
        p.chunk_input[chunks] = k;
        p.chunk_channel[chunks] = j;
        p.chunk_bias[chunks] = first && j == 0 ? (int)l : -1;
      }
      first = false;
      ++k;
    }
    p.g[l] = (const char*)grads[l];
    p.g_step[l] = members > 1 ? rows * NT * (long long)sizeof(T) : 0;
  }
  p.chunks = chunks;
  p.total = chunks * 16 + (int)layers.size();
  for (int q = 0; q < chunks; ++q)
    if (p.chunk_bias[q] >= 0) p.chunk_bias[q] += chunks * 16;
  p.members = members;
  p.rows = rows;
  p.cout = NT;
  p.margin = margin;
  p.w2 = w2;
  p.lines = n * h2;
  const int line_tiles = (p.lines + 3) / 4;
  const int s = (sizeof(T) == 4 && NT == 32) ? 48 : least_waste(w2, {80, 64, 48});
  p.col_tiles = (w2 + s - 1) / s;
  p.tiles = line_tiles * p.col_tiles;
  p.groups = std::max(1, std::min(line_tiles, (256 + chunks - 1) / chunks));
  const size_t per = (size_t)9 * p.total * NT, all = per * p.groups * members;
  float* o;
  CK(cudaMalloc(&o, all * 4));
  CK(cudaMemset(o, 0x7f, all * 4));
  p.out = o;
  p.out_step = per * p.groups * 4;
  auto run = [&] {
    if (sizeof(T) == 4 && NT == 32) CK((launch<T, 32, 48>(p, 0)));
    else CK((launch_width<T, NT>(p, s, 0)));
  };
  run();
  CK(cudaDeviceSynchronize());
  std::vector<float> a(all);
  CK(cudaMemcpy(a.data(), o, all * 4, cudaMemcpyDeviceToHost));
  write_outputs("wgp", tag, name, a.data(), all * 4);
  auto timeit = [&] { return mean_launch_us(run, 100); };

  double macs = 0;
  for (auto& l : layers) for (int ai : l) macs += (double)n * h * w * 9 * cs[ai] * NT * members;
  const float t1 = timeit(), t2 = timeit();
  printf("%s %-26s S %d groups %d | %.1f / %.1f us | %.0f TFLOP/s\n", tag, name, s, p.groups, t1, t2,
         2 * macs / std::min(t1, t2) / 1e6);
  for (void* v : arrays) cudaFree(v);
  for (void* v : grads) cudaFree(v);
  cudaFree(o);
}

int main(int argc, char** argv) {
  const char* tag = argc > 1 ? argv[1] : "x";
  const std::vector<std::vector<int>> dense = {{0}, {0, 1}, {0, 1, 2}, {0, 1, 2, 3}};
  const std::vector<std::vector<int>> last = {{0, 1, 2, 3, 4}};
  bench<float, 32>(tag, "f32 72 F", 16, 72, 72, {16, 32, 32, 32}, dense, 1);
  bench<float, 32>(tag, "f32 72 GH x2", 16, 72, 72, {16, 32, 32, 32}, dense, 2);
  bench<float, 32>(tag, "f32 36 F", 16, 36, 36, {48, 32, 32, 32}, dense, 1);
  bench<float, 16>(tag, "f32 72 L5 GH x2", 16, 72, 72, {16, 32, 32, 32, 32}, last, 2);
  bench<float, 16>(tag, "f32 36 L5 F", 16, 36, 36, {48, 32, 32, 32, 32}, last, 1);
  bench<__nv_bfloat16, 32>(tag, "bf16 72 GH x2", 16, 72, 72, {16, 32, 32, 32}, dense, 2);
  bench<__nv_bfloat16, 32>(tag, "bf16 36 F", 16, 36, 36, {48, 32, 32, 32}, dense, 1);
  bench<__nv_bfloat16, 16>(tag, "bf16 72 L5 GH x2", 16, 72, 72, {16, 32, 32, 32, 32}, last, 2);
  bench<float, 16>(tag, "f32 36 L5 GH x2 48out", 16, 36, 36, {16, 32, 32, 32, 32}, last, 2);
  bench<float, 32>(tag, "f32 small", 2, 8, 13, {16, 32}, {{0}, {0, 1}}, 1);
  bench<__nv_bfloat16, 32>(tag, "bf16 small", 2, 8, 13, {16, 32}, {{0}, {0, 1}}, 1);
  return 0;
}
