// Batch-1 (and small-batch) GEMV for CPU decoding: y[b, :] = cat(W_i x[b, :]) for row-major weights W_i [out_i, in],
// each read once, where the module holds it (the row kernels: gemv_rows.h).
//
// ATen's GEMV (MKL / oneDNN) reaches about half the streaming read rate on a decoder's shapes here (docs/BENCHMARKS.md,
// issue 21). The rows of all the matrices in one call (q|k|v, gate|up: no stacked copy of them) are split into
// contiguous runs of 4-row blocks, one per thread. This file also binds the whole decode step (decode_step.cpp).
// Built by ocellus/kernels/gemv.py (torch.utils.cpp_extension, -O3 -mavx2 -mfma -fopenmp).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <vector>

#include "gemv_rows.h"

using namespace ocellus_gemv;

void bind_decode_step(pybind11::module& m);   // decode_step.cpp

namespace {

// whether every x[i] is a bf16 value (its low 16 bits zero): bf16 activations handed over as float32
bool holds_bf16(const float* x, int64_t n) {
  uint32_t low = 0;
  for (int64_t i = 0; i < n; ++i) low |= reinterpret_cast<const uint32_t*>(x)[i] & 0xFFFFu;
  return low == 0;
}

template <typename T>
void run(const std::vector<Matrix>& mats, const float* x, int64_t batch, int64_t n, float* y, int64_t ldy,
         bool x_bf16) {
  const std::vector<int64_t> first = block_starts(mats);
  const bool prepared = std::is_same_v<T, at::BFloat16> || (std::is_same_v<T, int8_t> && quantized_x(n));
  std::vector<float> xd(prepared ? batch * n : 0);
  prepare_x<T>(x, batch, n, xd.data(), x_bf16);
  at::parallel_for(0, first.back(), 16, [&](int64_t b0, int64_t b1) {
    gemv_blocks<T>(mats, first, x, xd.data(), batch, n, y, ldy, b0, b1, x_bf16);
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
  // bf16 rows read x as bf16 where that is exact: bf16 activations, or float32 ones holding bf16 values
  const bool x_bf16 = wt == at::kBFloat16 && (x.scalar_type() == at::kBFloat16 || holds_bf16(xp, batch * n));
  if (wt == at::kFloat) run<float>(mats, xp, batch, n, yp, cols, false);
  else if (wt == at::kBFloat16) run<at::BFloat16>(mats, xp, batch, n, yp, cols, x_bf16);
  else run<int8_t>(mats, xp, batch, n, yp, cols, false);
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

// The roofline's read (ocellus bench decode): every byte of each tensor read once, as float32 lanes, the way the
// row kernels read (gemv_rows.h): blocks of ROWS streams of 2 KB each, the next block prefetched; each thread a
// contiguous run of blocks (one stream a thread reads ~10% slower here: the hardware prefetcher alone follows it
// less far). Returns their sum so that the reads cannot be dropped. A decode step cannot read its weights faster.
double read_pass(const std::vector<torch::Tensor>& tensors) {
  constexpr int64_t SPAN = 512;                               // floats a stream reads per block
  double total = 0;
  for (const auto& t : tensors) {
    TORCH_CHECK(t.is_contiguous() && t.device().is_cpu(), "read_pass: contiguous CPU tensors only");
    const float* p = static_cast<const float*>(t.data_ptr());
    const int64_t n = t.numel() * t.element_size() / 4;       // whole float32 lanes (a tail of < 4 bytes is left)
    const int64_t blocks = n / (ROWS * SPAN);
    std::vector<float> parts(at::get_num_threads() + 1, 0.f);
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      __m256 a[ROWS];
      for (int r = 0; r < ROWS; ++r) a[r] = _mm256_setzero_ps();
      for (int64_t b = b0; b < b1; ++b) {
        const float* w = p + b * ROWS * SPAN;
        for (int64_t i = 0; i < SPAN; i += 16)
          for (int r = 0; r < ROWS; ++r) {
            prefetch(w + (ROWS + r) * SPAN + i);
            a[r] = _mm256_add_ps(a[r], _mm256_add_ps(_mm256_loadu_ps(w + r * SPAN + i),
                                                     _mm256_loadu_ps(w + r * SPAN + i + 8)));
          }
      }
      float sum = 0.f;
      for (int r = 0; r < ROWS; ++r) sum += hsum(a[r]);
      parts[at::get_thread_num()] += sum;
    });
    for (int64_t i = blocks * ROWS * SPAN; i < n; ++i) total += p[i];   // what the blocks leave
    for (float v : parts) total += v;
  }
  return total;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gemv", &gemv, "y = cat(W_i x) for row-major weights read once (batch-1 decode)");
  m.def("use_avx512", [](bool on) { const bool was = HAS_AVX512; HAS_AVX512 = on && CPU_AVX512; return was; },
        "bf16 rows through the AVX-512 kernel (where the CPU has it) or the AVX2 one; returns the previous choice");
  m.def("use_vnni", [](bool on) { const bool was = HAS_VNNI; HAS_VNNI = on && CPU_VNNI; return was; },
        "int8 rows against x quantized to int16 (AVX-512 VNNI, where the CPU has it) or fp32 x; returns the previous");
  m.def("use_dpbf16", [](bool on) { const bool was = HAS_DPBF16; HAS_DPBF16 = on && CPU_DPBF16; return was; },
        "bf16 rows with bf16 x through vdpbf16ps (AVX-512 BF16, where the CPU has it) or shift-and-FMA; returns the "
        "previous choice");
  m.def("read_pass", &read_pass, "read every byte of the tensors once (the decode roofline's read)");
  bind_decode_step(m);
}
