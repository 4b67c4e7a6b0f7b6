// Batch-1 (and small-batch) GEMV for CPU decoding: y[b, :] = W x[b, :] for row-major W [out, in], read once.
//
// Decoding a token reads every weight matrix once; at batch 1 that read is the whole cost. ATen's GEMV (MKL /
// oneDNN) reaches about half the streaming read rate on this model's shapes (docs/BENCHMARKS.md, issue 21), so
// this file reads W straight from the module's own tensor: ROWS rows at a time (ROWS independent streams the
// hardware prefetcher follows, x loaded once per 8 columns for all of them), two 8-wide FMA accumulators per row,
// fp32 sums. Weights in fp32, bf16 (widened to fp32 in registers: a 16-bit shift) or int8 codes with one fp32
// scale per output row (widened in registers, the scale applied once to the row's sum). The rows of all the
// matrices in one call (q|k|v, gate|up: no stacked copy of them) are split into contiguous runs, one per thread.
// Built by ocellus/kernels/gemv.py (torch.utils.cpp_extension, -O3 -mavx2 -mfma -fopenmp).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cstdint>
#include <vector>

namespace {

constexpr int ROWS = 4;        // rows per block: 4 weight streams + x (in L1) per step

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::BFloat16* p) {          // bf16 -> fp32: the 16 bits become the high half
  __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
inline __m256 load8(const int8_t* p) {                 // int8 codes -> fp32 (exact)
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline float widen(float v) { return v; }
inline float widen(at::BFloat16 v) { return static_cast<float>(v); }
inline float widen(int8_t v) { return static_cast<float>(v); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// y[r] = sum_i w[r * ld + i] * x[i] for r < R; n columns.
template <int R, typename T>
inline void dot_rows(const T* w, int64_t ld, const float* x, int64_t n, float* y) {
  __m256 a0[R], a1[R];
  for (int r = 0; r < R; ++r) { a0[r] = _mm256_setzero_ps(); a1[r] = _mm256_setzero_ps(); }
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8);
    for (int r = 0; r < R; ++r) {
      a0[r] = _mm256_fmadd_ps(load8(w + r * ld + i), x0, a0[r]);
      a1[r] = _mm256_fmadd_ps(load8(w + r * ld + i + 8), x1, a1[r]);
    }
  }
  if (i + 8 <= n) {
    const __m256 x0 = _mm256_loadu_ps(x + i);
    for (int r = 0; r < R; ++r) a0[r] = _mm256_fmadd_ps(load8(w + r * ld + i), x0, a0[r]);
    i += 8;
  }
  for (int r = 0; r < R; ++r) {
    float s = hsum(_mm256_add_ps(a0[r], a1[r]));
    for (int64_t j = i; j < n; ++j) s += widen(w[r * ld + j]) * x[j];   // the last in % 8 columns
    y[r] = s;
  }
}

struct Matrix {
  const void* w;        // [rows, n] row-major
  const float* scale;   // int8: [rows] fp32, else null
  int64_t rows;
  int64_t col;          // its first output column in y
};

template <typename T>
void run(const std::vector<Matrix>& mats, const float* x, int64_t batch, int64_t n, float* y, int64_t ldy) {
  // blocks of ROWS rows, numbered across the matrices: a thread takes one contiguous run of them
  std::vector<int64_t> first{0};
  for (const auto& m : mats) first.push_back(first.back() + (m.rows + ROWS - 1) / ROWS);
  const int64_t blocks = first.back();
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    size_t k = 0;
    for (int64_t b = b0; b < b1; ++b) {
      while (b >= first[k + 1]) ++k;
      const Matrix& m = mats[k];
      const int64_t r0 = (b - first[k]) * ROWS;
      const int64_t rows = std::min<int64_t>(ROWS, m.rows - r0);
      const T* w = static_cast<const T*>(m.w) + r0 * n;
      for (int64_t s = 0; s < batch; ++s) {          // batch > 1: the block's rows are in cache after the first
        float acc[ROWS];
        if (rows == ROWS) {
          dot_rows<ROWS>(w, n, x + s * n, n, acc);
        } else {
          for (int64_t r = 0; r < rows; ++r) dot_rows<1>(w + r * n, n, x + s * n, n, acc + r);
        }
        float* out = y + s * ldy + m.col + r0;
        for (int64_t r = 0; r < rows; ++r) out[r] = m.scale ? acc[r] * m.scale[r0 + r] : acc[r];
      }
    }
  });
}

}  // namespace

// x [B, n] (float32 or bfloat16), weights: [out_i, n] all one dtype (float32, bfloat16 or int8), scales: [out_i]
// float32 per int8 matrix (empty otherwise) -> y [B, sum out_i] in x's dtype, float32 sums.
torch::Tensor gemv(const torch::Tensor& x, const std::vector<torch::Tensor>& weights,
                   const std::vector<torch::Tensor>& scales) {
  TORCH_CHECK(x.dim() == 2 && x.device().is_cpu(), "gemv: x must be a 2-D CPU tensor, got ", x.sizes());
  TORCH_CHECK(!weights.empty(), "gemv: no weight");
  const auto wt = weights[0].scalar_type();
  const bool int8 = wt == at::kChar;
  TORCH_CHECK(wt == at::kFloat || wt == at::kBFloat16 || int8, "gemv: weights must be float32, bfloat16 or int8");
  TORCH_CHECK(int8 ? scales.size() == weights.size() : scales.empty(),
              "gemv: one float32 scale vector per int8 weight, none for float weights");
  const int64_t n = x.size(1), batch = x.size(0);
  std::vector<Matrix> mats;
  int64_t cols = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    const auto& w = weights[i];
    TORCH_CHECK(w.scalar_type() == wt && w.dim() == 2 && w.size(1) == n && w.is_contiguous() && w.device().is_cpu(),
                "gemv: weight ", i, " must be a contiguous CPU [out, ", n, "] ", wt, " tensor, got ", w.sizes());
    const float* s = nullptr;
    if (int8) {
      TORCH_CHECK(scales[i].scalar_type() == at::kFloat && scales[i].is_contiguous() && scales[i].numel() == w.size(0),
                  "gemv: scale ", i, " must be a contiguous float32 [", w.size(0), "] tensor");
      s = scales[i].data_ptr<float>();
    }
    mats.push_back({w.data_ptr(), s, w.size(0), cols});
    cols += w.size(0);
  }
  const torch::Tensor xf = x.to(at::kFloat).contiguous();
  torch::Tensor y = torch::empty({batch, cols}, x.options().dtype(at::kFloat));
  const float* xp = xf.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  if (wt == at::kFloat) run<float>(mats, xp, batch, n, yp, cols);
  else if (wt == at::kBFloat16) run<at::BFloat16>(mats, xp, batch, n, yp, cols);
  else run<int8_t>(mats, xp, batch, n, yp, cols);
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gemv", &gemv, "y = cat(W_i x) for row-major weights read once (batch-1 decode)");
}
