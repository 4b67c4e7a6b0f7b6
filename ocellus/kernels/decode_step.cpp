// One decode step of a pre-norm decoder (Llama / Qwen2: x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)); RoPE on
// q and k; GQA) at batch 1: every layer, the final norm and the lm_head in one call, so that the step costs the read
// of its weights and little else.
//
// Run eagerly, a 100M-parameter decoder's step here spends ~25% of its time outside the weight reads: ~25 small
// ATen ops a layer, each a dispatch, an allocation and a thread hand-off (docs/BENCHMARKS.md, issue 21). Here one
// OpenMP team runs the whole step: the GEMVs split by row blocks over the threads (gemv_rows.h), attention by query
// heads, the q / k / v heads' bias, RoPE and cache write by heads, SwiGLU by the rows of each thread's gate and up
// GEMVs; the norms and residual adds every thread computes itself (`run`: why), all 8 floats at a time.
//
// The numbers follow the eager path's (models/text/decoder.py, nn/attention.py `_decode_one`, nn/norms.py, nn/rope.py
// `rotate`, nn/mlp.py): in bfloat16 every value is rounded to bfloat16 where the eager path stores a bfloat16 tensor
// (each linear's output, bias add, rotation product and sum, attention output, SiLU, product, residual add, the
// norm's scaled input and its product with the weight); sums, norms' statistics and softmax run in float32 as
// ATen's do. The order of float32 sums differs from ATen's, so logits agree to rounding, not bitwise.
// Python side: ocellus/infer/fused_decode.py builds the plan and checks each step may take it.
#include <torch/extension.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
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

// -- element-wise pieces, 8 floats at a time (AVX2) -----------------------------------------------------------
// Written once as generic lambdas over float or __m256 (GCC / Clang vector arithmetic: + - * / and a scalar operand
// broadcast), so that the 8-lane body and the n % 8 tail are one expression. Scalar at::BFloat16 rounding and
// std::exp in these loops were most of a layer's time outside the GEMVs (~60 us of ~670 on the 100M bench model).

// the dtype's rounding: to bfloat16 (nearest, ties to even) and back, bit for bit at::BFloat16(float) (NaN: 0x7FC0)
template <typename T> struct Round {
  static float of(float v) { return v; }
  static __m256 of(__m256 v) { return v; }
};
template <> struct Round<at::BFloat16> {
  static float of(float v) { return static_cast<float>(at::BFloat16(v)); }
  static __m256 of(__m256 v) {             // + 0x7FFF + the kept half's lsb, then the low half cleared: ties to even
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_and_si256(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))),
                                       _mm256_set1_epi32(static_cast<int>(0xFFFF0000u)));
    return _mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000)),
                            _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
};
template <typename T, typename V> inline V rnd(V v) { return Round<T>::of(v); }

inline float exp_(float x) { return std::exp(x); }
// e^x of 8 floats (Cephes expf: x = n ln2 + r with ln2 in two parts, e^r by a degree-6 polynomial, 2^n made in the
// exponent bits): within 1.01 ulp of e^x over [-87, 88] (std::exp: 0.5; ATen's Sleef exp, which the eager SiLU
// runs: 1.0); x clamped to [-87.3, 88.3] so 2^n stays a normal float; NaN stays NaN (max / min return it).
inline __m256 exp_(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(88.3f), _mm256_max_ps(_mm256_set1_ps(-87.3f), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);       // x - n ln2, ln2's high part exact
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);           // and its low part
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  for (float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
  const __m256 er = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.f));
  const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(er, _mm256_castsi256_ps(two_n));
}

// y[i] = f(in[i]...) for i < n (y may be one of the inputs; an input: float or T, widened to float)
template <typename F, typename... In>
inline void elementwise(float* y, int64_t n, F f, const In*... in) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, f(load8(in + i)...));
  for (; i < n; ++i) y[i] = f(widen(in[i])...);
}

// dst[i] = T(src[i]): bfloat16 rounded as above, the high halves packed
inline void store(float* dst, const float* src, int64_t n) { std::copy(src, src + n, dst); }
inline void store(at::BFloat16* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i b = _mm256_srli_epi32(_mm256_castps_si256(rnd<at::BFloat16>(_mm256_loadu_ps(src + i))), 16);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)));
  }
  for (; i < n; ++i) dst[i] = at::BFloat16(src[i]);
}

inline float sum_sq(const float* x, int64_t n) {               // sum x[i]^2, fp32
  __m256 s = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) s = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(x + i), s);
  float r = hsum(s);
  for (; i < n; ++i) r += x[i] * x[i];
  return r;
}

// -- attention over the cache (AVX2: its rows are short, head_dim, so the widening load8 of gemv_rows.h serves) --
// One key at a time, a score was a chain of dependent FMAs then a horizontal sum, each value's p v was added into y
// through memory, and e^x was std::exp: latency-bound, ~0.45 of the 0.6 ms outside the GEMVs of the 100M bench
// model's step at position 512 (2 threads). Now KEYS keys a pass share each load of q, sum in independent
// accumulators and are reduced together, and values are summed over all keys with y in registers, both in one key
// at a time's order of float32 operations (scores and y bitwise as before); e^x 8 at a time (exp_, 1 ulp).
// What is left there reads the cache at about the weights' streaming rate. (Reading bf16 keys and values as 32-bit
// lanes, as the bf16 GEMV rows do, saved a further 4% of it: not kept.)
constexpr int KEYS = 8;

template <typename T>
inline float dot(const T* a, const float* b, int64_t n) {      // sum a[i] b[i], fp32
  __m256 s = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) s = _mm256_fmadd_ps(load8(a + i), _mm256_loadu_ps(b + i), s);
  float r = hsum(s);
  for (; i < n; ++i) r += widen(a[i]) * b[i];
  return r;
}

// the horizontal sums of a[0..7] as hsum adds each: (l0 + l4 + (l2 + l6)) + (l1 + l5 + (l3 + l7))
inline __m256 hsum8(const __m256* a) {
  __m256 m[4], v[2];
  for (int k = 0; k < 4; ++k)          // keys 2k | 2k+1: lo + hi halves, [m0 m1 m2 m3 | m0 m1 m2 m3]
    m[k] = _mm256_add_ps(_mm256_permute2f128_ps(a[2 * k], a[2 * k + 1], 0x20),
                         _mm256_permute2f128_ps(a[2 * k], a[2 * k + 1], 0x31));
  for (int k = 0; k < 2; ++k)          // keys 4k, 4k+2 | 4k+1, 4k+3: [m0+m2, m1+m3] each
    v[k] = _mm256_add_ps(_mm256_shuffle_ps(m[2 * k], m[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm256_shuffle_ps(m[2 * k], m[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m256 r = _mm256_hadd_ps(v[0], v[1]);                   // keys 0 2 4 6 | 1 3 5 7
  return _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// s[j] = scale * K[j] . q for the keys K [Tk, Dh] -> max_j s[j] (a NaN score passed over, as std::max does)
template <typename T>
inline float key_scores(const T* K, const float* q, int64_t Tk, int64_t Dh, float scale, float* s) {
  const int64_t d8 = Dh / 8 * 8;
  __m256 mv = _mm256_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + KEYS <= Tk; j += KEYS) {
    const T* k = K + j * Dh;
    __m256 a[KEYS];
    for (int r = 0; r < KEYS; ++r) a[r] = _mm256_setzero_ps();
    for (int64_t d = 0; d < d8; d += 8) {
      const __m256 qd = _mm256_loadu_ps(q + d);
      for (int r = 0; r < KEYS; ++r) a[r] = _mm256_fmadd_ps(load8(k + r * Dh + d), qd, a[r]);
    }
    _mm256_storeu_ps(s + j, hsum8(a));
    for (int r = 0; r < KEYS; ++r)                                 // the last Dh % 8 dims, as dot adds them
      for (int64_t d = d8; d < Dh; ++d) s[j + r] += widen(k[r * Dh + d]) * q[d];
    const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(s + j), _mm256_set1_ps(scale));
    _mm256_storeu_ps(s + j, v);
    mv = _mm256_max_ps(v, mv);                                     // mv where v is NaN
  }
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  float mx = std::max(_mm_cvtss_f32(m4), _mm_cvtss_f32(_mm_movehdup_ps(m4)));
  for (; j < Tk; ++j) { s[j] = dot(K + j * Dh, q, Dh) * scale; mx = std::max(mx, s[j]); }
  return mx;
}

// y[d] = sum_j p[j] V[j, d] for 8 NV columns d (V [Tk, ld]): key by key with FMAs, y held in NV registers
template <int NV, typename T>
inline void weighted_cols(const T* V, int64_t ld, const float* p, int64_t Tk, float* y) {
  __m256 a[NV];
  for (int k = 0; k < NV; ++k) a[k] = _mm256_setzero_ps();
  for (int64_t j = 0; j < Tk; ++j) {
    const __m256 pj = _mm256_set1_ps(p[j]);
    for (int k = 0; k < NV; ++k) a[k] = _mm256_fmadd_ps(pj, load8(V + j * ld + 8 * k), a[k]);
  }
  for (int k = 0; k < NV; ++k) _mm256_storeu_ps(y + 8 * k, a[k]);
}

template <int NV = 7, typename T>                                  // weighted_cols<nv> for nv < 8
inline void weighted_cols_n(int nv, const T* V, int64_t ld, const float* p, int64_t Tk, float* y) {
  if constexpr (NV > 0) {
    if (nv == NV) weighted_cols<NV>(V, ld, p, Tk, y);
    else weighted_cols_n<NV - 1>(nv, V, ld, p, Tk, y);
  }
}

// y = sum_j p[j] V[j] for the values V [Tk, Dh]: 64 columns a pass over the keys, then the rest
template <typename T>
inline void weighted_sum(const T* V, const float* p, int64_t Tk, int64_t Dh, float* y) {
  int64_t d = 0;
  for (; d + 64 <= Dh; d += 64) weighted_cols<8>(V + d, Dh, p, Tk, y + d);
  weighted_cols_n(int((Dh - d) / 8), V + d, Dh, p, Tk, y + d);
  for (d = Dh / 8 * 8; d < Dh; ++d) {                              // the last Dh % 8 columns
    float a = 0.f;
    for (int64_t j = 0; j < Tk; ++j) a += p[j] * widen(V[j * Dh + d]);
    y[d] = a;
  }
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
    const float scale = 1.f / std::sqrt(sum_sq(x, D_) / D_ + eps_);
    elementwise(out, D_, [scale](auto v, auto g) { return rnd<T>(g * rnd<T>(v * scale)); }, x, ptr<T>(w));
  }

  template <typename T>                                  // a bias from `offset` on, or null for none
  static const T* bias(const torch::Tensor& b, int64_t offset = 0) { return b.numel() ? ptr<T>(b) + offset : nullptr; }

  template <typename T>
  static void add_bias(float* y, const T* b, int64_t n) {     // y = round(y) (+ b, rounded)
    if (b) elementwise(y, n, [](auto v, auto c) { return rnd<T>(rnd<T>(v) + c); }, y, b);
    else elementwise(y, n, [](auto v) { return rnd<T>(v); }, y);
  }

  // x += round(y) (+ b, rounded): y only read, so that every thread can add it into its own x
  template <typename T>
  static void residual(float* x, const float* y, const T* b, int64_t n) {
    if (b) elementwise(x, n, [](auto a, auto v, auto c) { return rnd<T>(a + rnd<T>(rnd<T>(v) + c)); }, x, y, b);
    else elementwise(x, n, [](auto a, auto v) { return rnd<T>(a + rnd<T>(v)); }, x, y);
  }

  // nn/rope.py rotate: x cos + roll(x, R/2) sin', sin' = sin with its first half negated; in place, pairs (i, i + R/2)
  template <typename T>
  static void rotate(float* v, const T* c, const T* s, int64_t R) {
    const int64_t half = R / 2;
    auto rot = [](auto a, auto b, auto ci, auto si) { return rnd<T>(rnd<T>(a * ci) + rnd<T>(b * si)); };
    int64_t i = 0;
    for (; i + 8 <= half; i += 8) {
      const __m256 a = _mm256_loadu_ps(v + i), b = _mm256_loadu_ps(v + i + half);
      _mm256_storeu_ps(v + i, rot(a, -b, load8(c + i), load8(s + i)));
      _mm256_storeu_ps(v + i + half, rot(b, a, load8(c + i + half), load8(s + i + half)));
    }
    for (; i < half; ++i) {
      const float a = v[i], b = v[i + half];
      v[i] = rot(a, -b, widen(c[i]), widen(s[i]));
      v[i + half] = rot(b, a, widen(c[i + half]), widen(s[i + half]));
    }
  }

  template <typename T>
  struct Position {          // this step's: its rotation [R], the cache row its key and value go to
    const T *cos, *sin;
    int64_t R, pos, max_len;
  };

  // head j of q|k|v (H q heads, then Hkv k heads, then Hkv v heads): rounded (+ its bias); q and k rotated; k and v
  // written to the cache at this position (each head by one thread, before the barrier that attention waits for)
  template <typename T>
  void finish_head(const std::vector<torch::Tensor>& w, float* qkv, int64_t j, const Position<T>& where, T* kcache,
                   T* vcache) const {
    const int slot = j < H_ ? BQ : j < H_ + Hkv_ ? BK : BV;
    const int64_t head = j < H_ ? j : j < H_ + Hkv_ ? j - H_ : j - H_ - Hkv_;       // within its slot
    float* y = qkv + j * Dh_;
    add_bias<T>(y, bias<T>(w[slot], head * Dh_), Dh_);
    if (slot != BV) rotate<T>(y, where.cos, where.sin, where.R);
    if (slot != BQ) store((slot == BK ? kcache : vcache) + (head * where.max_len + where.pos) * Dh_, y, Dh_);
  }

  // query head q [Dh] over keys / values K, V [Tk, Dh]: softmax(q K' / sqrt(Dh)) V, rounded -> y [Dh]; s: [Tk] scratch
  template <typename T>
  void attend(const float* qv, const T* K, const T* Vv, int64_t Tk, float* s, float* y) const {
    const int64_t Dh = Dh_;
    const float scale = 1.f / std::sqrt(static_cast<float>(Dh));
    const float mx = key_scores(K, qv, Tk, Dh, scale, s);
    __m256 sv = _mm256_setzero_ps();                 // softmax's e^(s - max) 8 at a time (exp_), summed in fp32
    int64_t j = 0;
    for (; j + 8 <= Tk; j += 8) {
      const __m256 e = exp_(_mm256_sub_ps(_mm256_loadu_ps(s + j), _mm256_set1_ps(mx)));
      _mm256_storeu_ps(s + j, e);
      sv = _mm256_add_ps(sv, e);
    }
    float sum = hsum(sv);
    for (; j < Tk; ++j) { s[j] = exp_(s[j] - mx); sum += s[j]; }
    weighted_sum(Vv, s, Tk, Dh, y);
    elementwise(y, Dh, [sum](auto v) { return rnd<T>(v / sum); }, y);
  }

  // nn/mlp.py SwiGLU over rows [r0, r1): gate and up rounded (+ bias), m = silu(gate) * up, each product rounded
  template <typename T>
  static void swiglu(float* gate, float* up, const T* bg, const T* bu, float* m, int64_t r0, int64_t r1) {
    add_bias<T>(gate + r0, bg ? bg + r0 : nullptr, r1 - r0);
    add_bias<T>(up + r0, bu ? bu + r0 : nullptr, r1 - r0);
    elementwise(m + r0, r1 - r0, [](auto g, auto u) { return rnd<T>(rnd<T>(g / (1.f + exp_(-g))) * u); },
                gate + r0, up + r0);
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
  //
  // Barriers: only after a phase whose output is split over the threads (q|k|v, its heads, attention, o, SwiGLU,
  // down), 6 a layer. What every thread needs whole and is cheap (the residual stream x, a norm's output h, the
  // GEMV's prepared input xd) each thread computes itself, into its own buffers: the same code on the same input
  // gives each the same bits, and no thread waits for one thread to make it. SwiGLU needs no barrier before it: the
  // gate and up GEMVs split their (equal) block counts alike, so each thread has made both halves of its rows.
  template <typename T, typename W>
  void run(const torch::Tensor& x_in, const torch::Tensor& cos, const torch::Tensor& sin,
           const std::vector<torch::Tensor>& kc, const std::vector<torch::Tensor>& vc, int64_t pos, int64_t start,
           torch::Tensor& h_out, torch::Tensor& logits_out) const {
    const int64_t L = layers_.size(), H = H_, Hkv = Hkv_, Dh = Dh_, D = D_, F = F_, V = V_;
    constexpr bool X_BF16 = std::is_same_v<T, at::BFloat16>;   // every GEMV input rounded to bf16 (see the top)
    const int64_t G = H / Hkv, Tk = pos + 1 - start, max_len = kc[0].size(2), heads = H + 2 * Hkv;
    const Position<T> where{ptr<T>(cos), ptr<T>(sin), cos.numel(), pos, max_len};
    // shared, each written in parts (rows, heads) between barriers
    std::vector<float> qkv(heads * Dh), att(H * Dh), o(D), dn(D), gu(2 * F), logits(V), scores(H * Tk);
    std::vector<float> m(F);
    // each thread's own x, h [D] and xd (64-byte apart)
    const int nt = std::max(1, at::get_num_threads());
    const int64_t own_size = (2 * D + std::max({D, H * Dh, F}) + 15) / 16 * 16;
    std::vector<float> own(nt * own_size);
    // the matrices of each GEMV of each layer, and their block starts
    std::vector<std::vector<Matrix>> mqkv(L), mo(L), mgate(L), mup(L), mdown(L);
    std::vector<std::vector<int64_t>> fqkv(L), fo(L), fmlp(L), fdown(L);
    for (int64_t l = 0; l < L; ++l) {
      const auto& t = layers_[l];
      mqkv[l] = {{t[WQ].data_ptr(), scale_of(t[SQ]), H * Dh, 0}, {t[WK].data_ptr(), scale_of(t[SK]), Hkv * Dh, H * Dh},
                 {t[WV].data_ptr(), scale_of(t[SV]), Hkv * Dh, (H + Hkv) * Dh}};
      mo[l] = {{t[WO].data_ptr(), scale_of(t[SO]), D, 0}};
      mgate[l] = {{t[WGATE].data_ptr(), scale_of(t[SGATE]), F, 0}};
      mup[l] = {{t[WUP].data_ptr(), scale_of(t[SUP]), F, F}};
      mdown[l] = {{t[WDOWN].data_ptr(), scale_of(t[SDOWN]), D, 0}};
      fqkv[l] = block_starts(mqkv[l]); fo[l] = block_starts(mo[l]); fmlp[l] = block_starts(mgate[l]);
      fdown[l] = block_starts(mdown[l]);
    }
    const std::vector<Matrix> mhead{{lm_head_.data_ptr(), scale_of(head_scale_), V, 0}};
    const std::vector<int64_t> fhead = block_starts(mhead);
    T* ho = static_cast<T*>(h_out.data_ptr());
    T* lo = static_cast<T*>(logits_out.data_ptr());

#pragma omp parallel num_threads(nt)
    {
      const int t = omp_get_thread_num(), n = omp_get_num_threads();
      float* x = own.data() + t * own_size;
      float* h = x + D;
      float* xd = h + D;
      elementwise(x, D, [](auto v) { return v; }, ptr<T>(x_in));
      // this thread's row blocks of `mats` against in [cols] (xd: its prepare_x) into y -> its rows [r0, r1) of
      // the first matrix (a one-matrix list: all its rows)
      auto gemv = [&](const std::vector<Matrix>& mats, const std::vector<int64_t>& first, const float* in,
                      int64_t cols, float* y) {
        int64_t b0, b1;
        share(first.back(), t, n, b0, b1);
        gemv_blocks<W>(mats, first, in, xd, 1, cols, y, 0, b0, b1, X_BF16);
        const int64_t rows = mats[0].rows;
        return std::make_pair(std::min(rows, b0 * ROWS), std::min(rows, b1 * ROWS));
      };
      for (int64_t l = 0; l < L; ++l) {
        const auto& w = layers_[l];
        T* kcache = static_cast<T*>(kc[l].data_ptr());
        T* vcache = static_cast<T*>(vc[l].data_ptr());
        rmsnorm<T>(x, w[IN_NORM], h);
        prepare_x<W>(h, 1, D, xd, X_BF16);
        gemv(mqkv[l], fqkv[l], h, D, qkv.data());
#pragma omp barrier
        for (int64_t j = heads * t / n; j < heads * (t + 1) / n; ++j)          // this thread's q|k|v heads
          finish_head(w, qkv.data(), j, where, kcache, vcache);
#pragma omp barrier
        for (int64_t q = H * t / n; q < H * (t + 1) / n; ++q) {      // this thread's query heads
          const int64_t kv = q / G;
          const T* K = kcache + (kv * max_len + start) * Dh;         // keys start..pos
          const T* Vv = vcache + (kv * max_len + start) * Dh;
          attend(qkv.data() + q * Dh, K, Vv, Tk, scores.data() + q * Tk, att.data() + q * Dh);
        }
#pragma omp barrier
        prepare_x<W>(att.data(), 1, H * Dh, xd, X_BF16);
        gemv(mo[l], fo[l], att.data(), H * Dh, o.data());
#pragma omp barrier
        residual<T>(x, o.data(), bias<T>(w[BO]), D);               // x += o; the MLP's norm
        rmsnorm<T>(x, w[POST_NORM], h);
        prepare_x<W>(h, 1, D, xd, X_BF16);
        gemv(mgate[l], fmlp[l], h, D, gu.data());                  // gate and up: the same rows [r0, r1)
        const auto [r0, r1] = gemv(mup[l], fmlp[l], h, D, gu.data());
        swiglu<T>(gu.data(), gu.data() + F, bias<T>(w[BGATE]), bias<T>(w[BUP]), m.data(), r0, r1);
#pragma omp barrier
        prepare_x<W>(m.data(), 1, F, xd, X_BF16);
        gemv(mdown[l], fdown[l], m.data(), F, dn.data());
#pragma omp barrier
        residual<T>(x, dn.data(), bias<T>(w[BDOWN]), D);           // x += down
      }
      rmsnorm<T>(x, norm_, h);
      prepare_x<W>(h, 1, D, xd, X_BF16);
      const auto [r0, r1] = gemv(mhead, fhead, h, D, logits.data());
      store(lo + r0, logits.data() + r0, r1 - r0);                 // this thread's logits
      if (t == 0) store(ho, h, D);
    }
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
