// One decode step of a pre-norm decoder (Llama / Qwen2: x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)); RoPE on
// q and k; GQA) at batch 1: every layer, the final norm and the lm_head in one call, so that the step costs the read
// of its weights and little else.
//
// Run eagerly, a 100M-parameter decoder's step here spends ~25% of its time outside the weight reads: ~25 small
// ATen ops a layer, each a dispatch, an allocation and a thread hand-off (docs/BENCHMARKS.md, issue 21). Here one
// OpenMP team runs the whole step: the GEMVs split by row blocks over the threads (gemv_rows.h), attention by query
// heads, the small serial pieces (norms, RoPE, residuals) by one thread between barriers.
//
// The numbers follow the eager path's (models/text/decoder.py, nn/attention.py `_decode_one`, nn/norms.py, nn/rope.py
// `rotate`, nn/mlp.py): in bfloat16 every value is rounded to bfloat16 where the eager path stores a bfloat16 tensor
// (each linear's output, bias add, rotation product and sum, attention output, SiLU, product, residual add, the
// norm's scaled input and its product with the weight); sums, norms' statistics and softmax run in float32 as
// ATen's do. The order of float32 sums differs from ATen's, so logits agree to rounding, not bitwise.
// Python side: ocellus/infer/fused_decode.py builds the plan and checks each step may take it.
#include <torch/extension.h>
#include <omp.h>

#include <cmath>
#include <string>
#include <vector>

#include "gemv_rows.h"

using namespace ocellus_gemv;

namespace {

// a layer's tensors, in this order; an absent bias is an empty tensor, and so is a scale of float weights (int8
// weights: codes [out, in] with one float32 scale per output row, nn/quant.py Int8Linear)
enum Slot { IN_NORM, WQ, WK, WV, BQ, BK, BV, WO, BO, POST_NORM, WGATE, WUP, WDOWN, BGATE, BUP, BDOWN,
            SQ, SK, SV, SO, SGATE, SUP, SDOWN, SLOTS };
enum Kind { NORM, WEIGHT, BIAS, SCALE };
constexpr Kind KIND[SLOTS] = {NORM, WEIGHT, WEIGHT, WEIGHT, BIAS, BIAS, BIAS, WEIGHT, BIAS, NORM, WEIGHT, WEIGHT,
                              WEIGHT, BIAS, BIAS, BIAS, SCALE, SCALE, SCALE, SCALE, SCALE, SCALE, SCALE};

template <typename T> inline float rnd(float v) { return v; }                       // the dtype's rounding
template <> inline float rnd<at::BFloat16>(float v) { return static_cast<float>(at::BFloat16(v)); }

// attention over the cache: its rows are short (head_dim), so the AVX2 widening load8 of gemv_rows.h serves
template <typename T>
inline float dot(const T* a, const float* b, int64_t n) {      // sum a[i] b[i], fp32
  __m256 s = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) s = _mm256_fmadd_ps(load8(a + i), _mm256_loadu_ps(b + i), s);
  float r = hsum(s);
  for (; i < n; ++i) r += widen(a[i]) * b[i];
  return r;
}

template <typename T>
inline void axpy(float p, const T* v, float* y, int64_t n) {   // y += p v
  const __m256 pp = _mm256_set1_ps(p);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(pp, load8(v + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += p * widen(v[i]);
}

template <typename T> inline const T* ptr(const torch::Tensor& t) { return static_cast<const T*>(t.data_ptr()); }

class DecodeStep {
 public:
  // layers: SLOTS tensors each; norm [D] (its dtype is the activations'); lm_head [V, D] (+ its scale [V], int8)
  DecodeStep(std::vector<std::vector<torch::Tensor>> layers, torch::Tensor norm, torch::Tensor lm_head,
             torch::Tensor head_scale, int64_t heads, int64_t kv_heads, int64_t head_dim, double eps)
      : layers_(std::move(layers)), norm_(std::move(norm)), lm_head_(std::move(lm_head)),
        head_scale_(std::move(head_scale)), H_(heads), Hkv_(kv_heads), Dh_(head_dim), eps_(static_cast<float>(eps)) {
    TORCH_CHECK(!layers_.empty() && H_ % Hkv_ == 0, "decode step: no layer, or heads not a multiple of kv heads");
    dtype_ = norm_.scalar_type();
    wtype_ = lm_head_.scalar_type();
    TORCH_CHECK(dtype_ == at::kFloat || dtype_ == at::kBFloat16, "decode step: float32 or bfloat16 activations only");
    TORCH_CHECK(wtype_ == dtype_ || wtype_ == at::kChar, "decode step: weights in the activations' dtype or int8");
    D_ = norm_.numel();
    F_ = layers_[0][WGATE].size(0);
    V_ = lm_head_.size(0);
    for (const auto& l : layers_) {
      TORCH_CHECK(l.size() == SLOTS, "decode step: a layer needs ", int(SLOTS), " tensors, got ", l.size());
      shapes_.emplace_back();
      for (const auto& t : l) shapes_.back().push_back(t.sizes().vec());
    }
    norm_shape_ = norm_.sizes().vec();
    head_shape_ = lm_head_.sizes().vec();
    check();
  }

  // x [1, 1, D] (the token's embedding), cos / sin [R] (this position's rotation, R <= head_dim, even),
  // k / v caches [1, Hkv, max_len, head_dim] per layer, pos: the cached length (the new token's index), start:
  // the first cached key it attends to (0; a slot cache's row: where its tokens begin, padding before them)
  // -> (hidden [1, 1, D] after the final norm, logits [1, 1, V]), both in the weights' dtype.
  std::vector<torch::Tensor> step(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                  const std::vector<torch::Tensor>& kc, const std::vector<torch::Tensor>& vc,
                                  int64_t pos, int64_t start) {
    check();
    const int64_t L = layers_.size();
    TORCH_CHECK(x.scalar_type() == dtype_ && x.numel() == D_ && x.is_contiguous(), "decode step: x must be [1, 1, ",
                D_, "] ", dtype_);
    TORCH_CHECK(cos.scalar_type() == dtype_ && sin.scalar_type() == dtype_ && cos.numel() == sin.numel() &&
                cos.numel() <= Dh_ && cos.numel() % 2 == 0 && cos.is_contiguous() && sin.is_contiguous(),
                "decode step: cos / sin must be [R] ", dtype_, " with R even and <= ", Dh_);
    TORCH_CHECK(int64_t(kc.size()) == L && int64_t(vc.size()) == L, "decode step: one k and one v cache per layer");
    const int64_t max_len = kc[0].size(2);
    for (int64_t l = 0; l < L; ++l)
      for (const auto* c : {&kc[l], &vc[l]})
        TORCH_CHECK(c->scalar_type() == dtype_ && c->is_contiguous() && c->dim() == 4 && c->size(0) == 1 &&
                    c->size(1) == Hkv_ && c->size(2) == max_len && c->size(3) == Dh_,
                    "decode step: layer ", l, "'s cache must be contiguous [1, ", Hkv_, ", T, ", Dh_, "] ", dtype_);
    TORCH_CHECK(pos >= 0 && pos < max_len, "decode step: position ", pos, " outside the cache's ", max_len);
    TORCH_CHECK(start >= 0 && start <= pos, "decode step: first key ", start, " after the position ", pos);
    auto h = torch::empty({1, 1, D_}, x.options());
    auto logits = torch::empty({1, 1, V_}, x.options());
    if (wtype_ == at::kChar && dtype_ == at::kFloat) run<float, int8_t>(x, cos, sin, kc, vc, pos, start, h, logits);
    else if (wtype_ == at::kChar) run<at::BFloat16, int8_t>(x, cos, sin, kc, vc, pos, start, h, logits);
    else if (dtype_ == at::kFloat) run<float, float>(x, cos, sin, kc, vc, pos, start, h, logits);
    else run<at::BFloat16, at::BFloat16>(x, cos, sin, kc, vc, pos, start, h, logits);
    return {h, logits};
  }

 private:
  // the weights are read live each step (an in-place update or a `.data` swap is seen); one whose dtype, shape or
  // layout changed since the plan was made stops it: the caller falls back to the layers (RuntimeError "stale")
  bool ok(const torch::Tensor& t, Kind kind) const {     // the dtype and layout a slot's tensor must have
    const bool int8 = wtype_ == at::kChar;
    if (t.numel() == 0) return kind == BIAS || (kind == SCALE && !int8);
    const auto want = kind == WEIGHT ? wtype_ : kind == SCALE ? at::kFloat : dtype_;
    return (kind != SCALE || int8) && t.scalar_type() == want && t.is_contiguous() && t.device().is_cpu();
  }
  void check() const {
    for (size_t l = 0; l < layers_.size(); ++l)
      for (int s = 0; s < SLOTS; ++s)
        TORCH_CHECK(layers_[l][s].sizes().vec() == shapes_[l][s] && ok(layers_[l][s], KIND[s]),
                    "stale decode step: layer ", l, " tensor ", s, " changed");
    TORCH_CHECK(norm_.sizes().vec() == norm_shape_ && lm_head_.sizes().vec() == head_shape_ && ok(norm_, NORM) &&
                ok(lm_head_, WEIGHT) && ok(head_scale_, SCALE), "stale decode step: final norm or lm_head changed");
  }

  template <typename T>
  void rmsnorm(const float* x, const torch::Tensor& w, float* out) const {   // nn/norms.py RMSNorm._inference
    float ss = 0.f;
    for (int64_t i = 0; i < D_; ++i) ss += x[i] * x[i];
    const float scale = 1.f / std::sqrt(ss / D_ + eps_);
    const T* g = ptr<T>(w);
    for (int64_t i = 0; i < D_; ++i) out[i] = rnd<T>(widen(g[i]) * rnd<T>(x[i] * scale));
  }

  template <typename T>
  void add_bias(float* y, const torch::Tensor& b, int64_t n) const {       // y = round(y) (+ b, rounded)
    if (b.numel() == 0) { for (int64_t i = 0; i < n; ++i) y[i] = rnd<T>(y[i]); return; }
    const T* bp = ptr<T>(b);
    for (int64_t i = 0; i < n; ++i) y[i] = rnd<T>(rnd<T>(y[i]) + widen(bp[i]));
  }

  // nn/rope.py rotate: x cos + roll(x, R/2) sin', sin' = sin with its first half negated; in place, a pair at a time
  template <typename T>
  void rotate(float* v, const T* c, const T* s, int64_t R) const {
    const int64_t half = R / 2;
    for (int64_t i = 0; i < half; ++i) {
      const float a = v[i], b = v[i + half];
      v[i] = rnd<T>(rnd<T>(a * widen(c[i])) + rnd<T>(-b * widen(s[i])));
      v[i + half] = rnd<T>(rnd<T>(b * widen(c[i + half])) + rnd<T>(a * widen(s[i + half])));
    }
  }

  // the row blocks of [b0, b1) this thread takes
  static void share(int64_t blocks, int t, int nt, int64_t& b0, int64_t& b1) {
    b0 = blocks * t / nt;
    b1 = blocks * (t + 1) / nt;
  }

  static const float* scale_of(const torch::Tensor& s) {
    return s.numel() ? static_cast<const float*>(s.data_ptr()) : nullptr;
  }

  // T: the activations' dtype (float, bf16), W: the weights' (T itself, or int8 codes)
  template <typename T, typename W>
  void run(const torch::Tensor& x_in, const torch::Tensor& cos, const torch::Tensor& sin,
           const std::vector<torch::Tensor>& kc, const std::vector<torch::Tensor>& vc, int64_t pos, int64_t start,
           torch::Tensor& h_out, torch::Tensor& logits_out) const {
    const int64_t L = layers_.size(), H = H_, Hkv = Hkv_, Dh = Dh_, D = D_, F = F_, V = V_;
    const int64_t G = H / Hkv, R = cos.numel(), Tk = pos + 1 - start, max_len = kc[0].size(2);
    const int64_t nqkv = (H + 2 * Hkv) * Dh;
    std::vector<float> x(D), h(D), qkv(nqkv), att(H * Dh), o(D), gu(2 * F), m(F), logits(V);
    std::vector<float> xd(std::max({D, H * Dh, F})), scores(H * Tk);
    const T* xp = ptr<T>(x_in);
    for (int64_t i = 0; i < D; ++i) x[i] = widen(xp[i]);
    const T* cp = ptr<T>(cos);
    const T* sp = ptr<T>(sin);
    const float scale = 1.f / std::sqrt(static_cast<float>(Dh));
    // the matrices of each GEMV of each layer, and their block starts
    std::vector<std::vector<Matrix>> mqkv(L), mo(L), mgu(L), mdown(L);
    std::vector<std::vector<int64_t>> fqkv(L), fo(L), fgu(L), fdown(L);
    for (int64_t l = 0; l < L; ++l) {
      const auto& t = layers_[l];
      mqkv[l] = {{t[WQ].data_ptr(), scale_of(t[SQ]), H * Dh, 0}, {t[WK].data_ptr(), scale_of(t[SK]), Hkv * Dh, H * Dh},
                 {t[WV].data_ptr(), scale_of(t[SV]), Hkv * Dh, (H + Hkv) * Dh}};
      mo[l] = {{t[WO].data_ptr(), scale_of(t[SO]), D, 0}};
      mgu[l] = {{t[WGATE].data_ptr(), scale_of(t[SGATE]), F, 0}, {t[WUP].data_ptr(), scale_of(t[SUP]), F, F}};
      mdown[l] = {{t[WDOWN].data_ptr(), scale_of(t[SDOWN]), D, 0}};
      fqkv[l] = block_starts(mqkv[l]); fo[l] = block_starts(mo[l]); fgu[l] = block_starts(mgu[l]);
      fdown[l] = block_starts(mdown[l]);
    }
    const std::vector<Matrix> mhead{{lm_head_.data_ptr(), scale_of(head_scale_), V, 0}};
    const std::vector<int64_t> fhead = block_starts(mhead);

    const int nt = std::max(1, at::get_num_threads());
#pragma omp parallel num_threads(nt)
    {
      const int t = omp_get_thread_num(), n = omp_get_num_threads();
      int64_t b0, b1;
      auto gemv = [&](const std::vector<Matrix>& mats, const std::vector<int64_t>& first, const float* in,
                      int64_t cols, float* y, int64_t ldy) {
        share(first.back(), t, n, b0, b1);
        gemv_blocks<W>(mats, first, in, xd.data(), 1, cols, y, ldy, b0, b1);
      };
      for (int64_t l = 0; l < L; ++l) {
        const auto& w = layers_[l];
        T* kcache = static_cast<T*>(kc[l].data_ptr());
        T* vcache = static_cast<T*>(vc[l].data_ptr());
#pragma omp single
        { rmsnorm<T>(x.data(), w[IN_NORM], h.data()); prepare_x<W>(h.data(), 1, D, xd.data()); }
        gemv(mqkv[l], fqkv[l], h.data(), D, qkv.data(), nqkv);
#pragma omp barrier
#pragma omp single
        {                                                  // q|k|v rounded (+ bias), q and k rotated, k and v cached
          add_bias<T>(qkv.data(), w[BQ], H * Dh);
          add_bias<T>(qkv.data() + H * Dh, w[BK], Hkv * Dh);
          add_bias<T>(qkv.data() + (H + Hkv) * Dh, w[BV], Hkv * Dh);
          for (int64_t j = 0; j < H + Hkv; ++j) rotate<T>(qkv.data() + j * Dh, cp, sp, R);
          for (int64_t j = 0; j < Hkv; ++j)
            for (int64_t d = 0; d < Dh; ++d) {
              kcache[(j * max_len + pos) * Dh + d] = T(qkv[(H + j) * Dh + d]);
              vcache[(j * max_len + pos) * Dh + d] = T(qkv[(H + Hkv + j) * Dh + d]);
            }
        }
        for (int64_t q = H * t / n; q < H * (t + 1) / n; ++q) {      // this thread's query heads
          const int64_t kv = q / G;
          const T* K = kcache + (kv * max_len + start) * Dh;         // keys start..pos
          const T* Vv = vcache + (kv * max_len + start) * Dh;
          const float* qv = qkv.data() + q * Dh;
          float* s = scores.data() + q * Tk;
          float mx = -INFINITY;
          for (int64_t j = 0; j < Tk; ++j) { s[j] = dot(K + j * Dh, qv, Dh) * scale; mx = std::max(mx, s[j]); }
          float sum = 0.f;
          for (int64_t j = 0; j < Tk; ++j) { s[j] = std::exp(s[j] - mx); sum += s[j]; }
          float* y = att.data() + q * Dh;
          std::fill(y, y + Dh, 0.f);
          for (int64_t j = 0; j < Tk; ++j) axpy(s[j], Vv + j * Dh, y, Dh);
          for (int64_t d = 0; d < Dh; ++d) y[d] = rnd<T>(y[d] / sum);
        }
#pragma omp barrier
#pragma omp single
        prepare_x<W>(att.data(), 1, H * Dh, xd.data());
        gemv(mo[l], fo[l], att.data(), H * Dh, o.data(), D);
#pragma omp barrier
#pragma omp single
        {                                                  // x += o; the MLP's norm
          add_bias<T>(o.data(), w[BO], D);
          for (int64_t i = 0; i < D; ++i) x[i] = rnd<T>(x[i] + o[i]);
          rmsnorm<T>(x.data(), w[POST_NORM], h.data());
          prepare_x<W>(h.data(), 1, D, xd.data());
        }
        gemv(mgu[l], fgu[l], h.data(), D, gu.data(), 2 * F);
#pragma omp barrier
#pragma omp single
        {                                                  // silu(gate) * up
          add_bias<T>(gu.data(), w[BGATE], F);
          add_bias<T>(gu.data() + F, w[BUP], F);
          for (int64_t i = 0; i < F; ++i) {
            const float g = gu[i];
            m[i] = rnd<T>(rnd<T>(g / (1.f + std::exp(-g))) * gu[F + i]);
          }
          prepare_x<W>(m.data(), 1, F, xd.data());
        }
        gemv(mdown[l], fdown[l], m.data(), F, o.data(), D);
#pragma omp barrier
#pragma omp single
        {                                                  // x += down
          add_bias<T>(o.data(), w[BDOWN], D);
          for (int64_t i = 0; i < D; ++i) x[i] = rnd<T>(x[i] + o[i]);
        }
      }
#pragma omp single
      { rmsnorm<T>(x.data(), norm_, h.data()); prepare_x<W>(h.data(), 1, D, xd.data()); }
      gemv(mhead, fhead, h.data(), D, logits.data(), V);
    }
    T* ho = static_cast<T*>(h_out.data_ptr());
    T* lo = static_cast<T*>(logits_out.data_ptr());
    for (int64_t i = 0; i < D; ++i) ho[i] = T(h[i]);
    for (int64_t i = 0; i < V; ++i) lo[i] = T(logits[i]);
  }

  std::vector<std::vector<torch::Tensor>> layers_;
  torch::Tensor norm_, lm_head_, head_scale_;
  int64_t H_, Hkv_, Dh_, D_ = 0, F_ = 0, V_ = 0;
  float eps_;
  at::ScalarType dtype_, wtype_;
  std::vector<std::vector<std::vector<int64_t>>> shapes_;
  std::vector<int64_t> norm_shape_, head_shape_;
};

}  // namespace

void bind_decode_step(pybind11::module& m) {
  pybind11::class_<DecodeStep>(m, "DecodeStep")
      .def(pybind11::init<std::vector<std::vector<torch::Tensor>>, torch::Tensor, torch::Tensor, torch::Tensor, int64_t,
                          int64_t, int64_t, double>())
      .def("step", &DecodeStep::step, "one token at batch 1 through every layer -> (hidden, logits)");
}
