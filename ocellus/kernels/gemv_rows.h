// The row kernels of the batch-1 GEMV, shared by gemv.cpp (one call: y = cat(W_i x)) and decode_step.cpp (every
// layer of a decode step in one call): y[r] = sum_i W[r, i] x[i] over row-major weights read where they are.
//
// Decoding a token reads every weight matrix once; at batch 1 that read is the whole cost, so a block of ROWS rows
// is read as ROWS streams (x loaded once per step for all of them, two accumulators a row, fp32 sums) and the next
// block is prefetched while this one is summed (without it bf16 read at 60-75% of the streaming rate here).
// Weights in fp32, bf16 or int8 codes with one fp32 scale per output row (applied once to the row's sum).
// bf16 needs no widening shuffle: a 32-bit lane holds two bf16, the even column in its low half and the odd one in
// its high half, so the even one is the lane shifted left 16 and the odd one the lane with its low half cleared;
// x comes de-interleaved to match (prepare_x), made once per call for all rows. With AVX-512 (chosen at run time:
// the file is built for AVX2 + FMA) bf16 rows read 32 columns, one cache line, per load, and int8 rows 32 codes
// per step in 16-wide halves; with AVX-512 VNNI they read 64 codes per step as int16 against x quantized to int16
// (one scale a call: 14 bits and a sign of the largest |x|), summed exactly in int32 (vpdpwssd): a third of the
// instructions of widening every code to fp32, which left the int8 rows compute-bound below the read rate.
#pragma once
#include <torch/extension.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace ocellus_gemv {

constexpr int ROWS = 4;        // rows per block: 4 weight streams + x (in L1) per step

// Whether bf16 and int8 rows take the AVX-512 kernels: where the CPU has it; `use_avx512(False)` (gemv.cpp) makes
// them take the AVX2 ones, so that tests on an AVX-512 machine check both.
inline const bool CPU_AVX512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
inline bool HAS_AVX512 = CPU_AVX512;
// Whether int8 rows read x quantized to int16 (VNNI) or as fp32; `use_vnni(False)` gives the exact-activation rows.
inline const bool CPU_VNNI = CPU_AVX512 && __builtin_cpu_supports("avx512vnni");
inline bool HAS_VNNI = CPU_VNNI;
// Whether bf16 rows whose x holds bf16 values sum column pairs with vdpbf16ps (AVX-512 BF16); `use_dpbf16(False)`
// gives the shift-and-FMA rows, so that tests check both.
inline const bool CPU_DPBF16 = CPU_AVX512 && __builtin_cpu_supports("avx512bf16");
inline bool HAS_DPBF16 = CPU_DPBF16;

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::BFloat16* p) {           // bf16 -> fp32: the 16 bits become the high half
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
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

// Into L2, not L1 (prefetcht1): a prefetch into L1 holds one of L1's few fill buffers until its line arrives, the
// buffers the rows' own loads need too. The 100M bench model's bf16 steps reached 78% of the roofline with T0 and 82%
// with T1 in one A/B (medians of 15 runs each, session 17); fp32 and int8 the same with either.
template <typename T>
inline void prefetch(const T* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T1); }

// fp32 / int8 rows: y[r] = sum_i w[r * ld + i] * x[i] for r < R; n columns.
template <int R, typename T>
inline void dot_rows(const T* w, int64_t ld, const float* x, int64_t n, float* y) {
  __m256 a0[R], a1[R];
  for (int r = 0; r < R; ++r) { a0[r] = _mm256_setzero_ps(); a1[r] = _mm256_setzero_ps(); }
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8);
    for (int r = 0; r < R; ++r) {
      prefetch(w + (R + r) * ld + i);                 // the next block's row: past the matrix's end it is a no-op
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
    for (int64_t j = i; j < n; ++j) s += widen(w[r * ld + j]) * x[j];   // the last n % 8 columns
    y[r] = s;
  }
}

// bf16 rows, AVX2: 16 columns per 32-byte load; xd: x de-interleaved per 16 columns (8 even, then 8 odd).
template <int R>
inline void dot_rows_bf16(const at::BFloat16* w, int64_t ld, const float* x, const float* xd, int64_t n, float* y) {
  const __m256i hi = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m256 a0[R], a1[R];
  for (int r = 0; r < R; ++r) { a0[r] = _mm256_setzero_ps(); a1[r] = _mm256_setzero_ps(); }
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 xe = _mm256_loadu_ps(xd + i), xo = _mm256_loadu_ps(xd + i + 8);
    for (int r = 0; r < R; ++r) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * ld + i));
      prefetch(w + (R + r) * ld + i);
      a0[r] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), xe, a0[r]);
      a1[r] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v, hi)), xo, a1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float s = hsum(_mm256_add_ps(a0[r], a1[r]));
    for (int64_t j = i; j < n; ++j) s += widen(w[r * ld + j]) * x[j];   // the last n % 16 columns
    y[r] = s;
  }
}

// bf16 rows, AVX-512: 32 columns per load; xd: x de-interleaved per 32 columns (16 even, then 16 odd).
template <int R>
__attribute__((target("avx512f,avx512bw")))
void dot_rows_bf16_512(const at::BFloat16* w, int64_t ld, const float* x, const float* xd, int64_t n, float* y) {
  const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m512 a0[R], a1[R];
  for (int r = 0; r < R; ++r) { a0[r] = _mm512_setzero_ps(); a1[r] = _mm512_setzero_ps(); }
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 xe = _mm512_loadu_ps(xd + i), xo = _mm512_loadu_ps(xd + i + 16);
    for (int r = 0; r < R; ++r) {
      const __m512i v = _mm512_loadu_si512(w + r * ld + i);
      prefetch(w + (R + r) * ld + i);
      a0[r] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), xe, a0[r]);
      a1[r] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, hi)), xo, a1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float s = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r]));
    for (int64_t j = i; j < n; ++j) s += widen(w[r * ld + j]) * x[j];   // the last n % 32 columns
    y[r] = s;
  }
}

// bf16 rows against x holding bf16 values, AVX-512 BF16: 32 columns a load, one vdpbf16ps a row (w[2k] x[2k] +
// w[2k+1] x[2k+1] into lane k). A product of two bf16 is exact in fp32, so each lane's sum is the FMA chain's
// arithmetic in a third of the instructions (shift, mask and two FMAs before); it reads denormal inputs as zero, as
// oneDNN's bf16 kernels do. x comes as float32 and is packed to bf16 once per 32 columns for all R rows: exact only
// because every x[i] is already a bf16 value (the caller says so: `x_bf16`).
template <int R>
__attribute__((target("avx512f,avx512bw,avx512bf16")))
void dot_rows_bf16_dp(const at::BFloat16* w, int64_t ld, const float* x, int64_t n, float* y) {
  __m512 a[R];
  for (int r = 0; r < R; ++r) a[r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512bh xb = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
    for (int r = 0; r < R; ++r) {
      prefetch(w + (R + r) * ld + i);
      a[r] = _mm512_dpbf16_ps(a[r], (__m512bh)_mm512_loadu_si512(w + r * ld + i), xb);
    }
  }
  for (int r = 0; r < R; ++r) {
    float s = _mm512_reduce_add_ps(a[r]);
    for (int64_t j = i; j < n; ++j) s += widen(w[r * ld + j]) * x[j];   // the last n % 32 columns
    y[r] = s;
  }
}

// int8 rows, AVX-512: 32 codes (two 16-wide halves) per step, widened to fp32 in registers; x read as it is.
template <int R>
__attribute__((target("avx512f,avx512bw")))
void dot_rows_i8_512(const int8_t* w, int64_t ld, const float* x, int64_t n, float* y) {
  __m512 a0[R], a1[R];
  for (int r = 0; r < R; ++r) { a0[r] = _mm512_setzero_ps(); a1[r] = _mm512_setzero_ps(); }
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 x0 = _mm512_loadu_ps(x + i), x1 = _mm512_loadu_ps(x + i + 16);
    for (int r = 0; r < R; ++r) {
      const int8_t* p = w + r * ld + i;
      if (i % 64 == 0) prefetch(w + (R + r) * ld + i);        // one prefetch a cache line
      const __m128i* c = reinterpret_cast<const __m128i*>(p);
      const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(c)));
      const __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(c + 1)));
      a0[r] = _mm512_fmadd_ps(w0, x0, a0[r]);
      a1[r] = _mm512_fmadd_ps(w1, x1, a1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float s = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r]));
    for (int64_t j = i; j < n; ++j) s += widen(w[r * ld + j]) * x[j];   // the last n % 32 columns
    y[r] = s;
  }
}

// int8 rows against x in int16, AVX-512 VNNI: y[r] = sx * sum_i w[r * ld + i] * xq[i] for r < R; n columns.
// xq = round(x / sx) with |xq| <= XQ_MAX, so a lane's int32 sum of CHUNK / 32 products of pairs stays below 2^31
// (256 * 2 * 128 * 16383 = 1.07e9); each CHUNK of columns is added into int64 before the next starts.
constexpr int XQ_MAX = 16383;
constexpr int64_t CHUNK = 8192;

template <int R>
__attribute__((target("avx512f,avx512bw,avx512vnni")))
void dot_rows_i8_vnni(const int8_t* w, int64_t ld, const int16_t* xq, float sx, int64_t n, float* y) {
  int64_t total[R] = {};
  for (int64_t c0 = 0; c0 < n; c0 += CHUNK) {
    const int64_t c1 = std::min(n, c0 + CHUNK);
    __m512i a0[R], a1[R];
    for (int r = 0; r < R; ++r) { a0[r] = _mm512_setzero_si512(); a1[r] = _mm512_setzero_si512(); }
    int64_t i = c0;
    for (; i + 64 <= c1; i += 64) {                  // a cache line of codes a row: 2 x 32 codes -> int16
      const __m512i x0 = _mm512_loadu_si512(xq + i), x1 = _mm512_loadu_si512(xq + i + 32);
      for (int r = 0; r < R; ++r) {
        const int8_t* p = w + r * ld + i;
        prefetch(w + (R + r) * ld + i);
        a0[r] = _mm512_dpwssd_epi32(a0[r], _mm512_cvtepi8_epi16(_mm256_loadu_si256(
                                               reinterpret_cast<const __m256i*>(p))), x0);
        a1[r] = _mm512_dpwssd_epi32(a1[r], _mm512_cvtepi8_epi16(_mm256_loadu_si256(
                                               reinterpret_cast<const __m256i*>(p + 32))), x1);
      }
    }
    for (int r = 0; r < R; ++r) {                    // 16 lanes of int32 -> int64 (their sum may pass 2^31)
      const __m512i a = _mm512_add_epi32(a0[r], a1[r]);  // each lane < 2^30 + 2^30 (see CHUNK)
      total[r] += _mm512_reduce_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(a))) +
                  _mm512_reduce_add_epi64(_mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(a, 1)));
      for (int64_t j = i; j < c1; ++j) total[r] += int64_t(w[r * ld + j]) * xq[j];   // the last < 64 columns
    }
  }
  for (int r = 0; r < R; ++r) y[r] = sx * static_cast<float>(total[r]);
}

struct Matrix {
  const void* w;        // [rows, n] row-major
  const float* scale;   // int8: [rows] fp32, else null
  int64_t rows;
  int64_t col;          // its first output column in y
};

// Blocks of ROWS rows numbered across the matrices: first[k] is matrix k's first block, first.back() the count.
inline std::vector<int64_t> block_starts(const std::vector<Matrix>& mats) {
  std::vector<int64_t> first{0};
  for (const auto& m : mats) first.push_back(first.back() + (m.rows + ROWS - 1) / ROWS);
  return first;
}

// Whether int8 rows of n columns read x as int16 (VNNI): the int16 row and its scale fill n floats from n = 64 on.
inline bool quantized_x(int64_t n) { return HAS_AVX512 && HAS_VNNI && n >= 64; }

// x's int16 codes for the VNNI rows: q[i] = int16(lrintf(x[i] * inv)) bit for bit, 16 at a time: cvtps_epi32 rounds
// to nearest even under the default MXCSR as lrintf does, and vpmovdw keeps the low 16 bits as the cast does (both
// give 0 where inv is inf: max|x| below ~2^-114)
__attribute__((target("avx512f,avx512bw")))
inline void quantize_512(const float* x, int64_t n, float inv, int16_t* q) {
  const __m512 s = _mm512_set1_ps(inv);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i),
                        _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), s))));
  for (; i < n; ++i) q[i] = static_cast<int16_t>(std::lrintf(x[i] * inv));
}

// max |x[i]| (exact in any order), and whether every x[i] is finite
__attribute__((target("avx512f,avx512bw")))
inline float max_abs_512(const float* x, int64_t n, bool& finite) {
  __m512 m = _mm512_setzero_ps();
  __mmask16 bad = 0;
  const __m512 inf = _mm512_set1_ps(INFINITY);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 a = _mm512_abs_ps(_mm512_loadu_ps(x + i));
    bad |= _mm512_cmp_ps_mask(a, inf, _CMP_NLT_UQ);        // |x| >= inf or NaN
    m = _mm512_max_ps(m, a);
  }
  float r = _mm512_reduce_max_ps(m);
  finite = bad == 0;
  for (; i < n; ++i) { r = std::max(r, std::fabs(x[i])); finite &= std::isfinite(x[i]); }
  return r;
}

// What the rows read as x: for bf16 weights x de-interleaved per 16 (AVX2) or 32 (AVX-512) columns into xd
// [batch, n]; for int8 weights read through VNNI (quantized_x), each row of xd holds the scale sx then n int16
// codes round(x / sx), sx = max|x| / XQ_MAX (NaN where x is not finite: those rows read x as fp32); other weights
// read x itself (xd untouched). Every thread of the decode step makes its own (on its critical path): the int8
// scale and codes 16 at a time (AVX-512; scalar they took 1.24 us at n = 768 here, vectorised 0.1 us).
// Whether bf16 rows read x as bf16 pairs (dot_rows_bf16_dp): x holds bf16 values and the CPU has AVX-512 BF16.
inline bool bf16_pairs(bool x_bf16) { return x_bf16 && HAS_DPBF16 && HAS_AVX512; }

// x_bf16: as gemv_blocks' (bf16 rows reading x as bf16 pairs need no de-interleaved copy).
template <typename T>
inline void prepare_x(const float* x, int64_t batch, int64_t n, float* xd, bool x_bf16 = false) {
  if constexpr (std::is_same_v<T, int8_t>) {
    if (!quantized_x(n)) return;                   // (AVX-512 from here on)
    for (int64_t s = 0; s < batch; ++s) {
      const float* xs = x + s * n;
      bool finite;
      const float m = max_abs_512(xs, n, finite);
      float* head = xd + s * n;
      head[0] = finite ? m / XQ_MAX : NAN;
      if (!finite) continue;
      quantize_512(xs, n, m > 0.f ? XQ_MAX / m : 0.f, reinterpret_cast<int16_t*>(head + 1));
    }
  } else if constexpr (std::is_same_v<T, at::BFloat16>) {   // GCC vectorises this copy: 58 ns at n = 768 here
    if (bf16_pairs(x_bf16)) return;
    const int block = HAS_AVX512 ? 32 : 16, half = block / 2;
    for (int64_t s = 0; s < batch; ++s)
      for (int64_t i = 0; i + block <= n; i += block)
        for (int k = 0; k < half; ++k) {
          xd[s * n + i + k] = x[s * n + i + 2 * k];
          xd[s * n + i + half + k] = x[s * n + i + 2 * k + 1];
        }
  }
}

// Blocks [b0, b1) of `mats` against x [batch, n] (xd: prepare_x's), into y [batch, ldy] fp32 (scaled for int8).
// x_bf16: every x[i] is a bf16 value (bf16 activations), so bf16 rows may read x as bf16 (dot_rows_bf16_dp).
template <typename T>
void gemv_blocks(const std::vector<Matrix>& mats, const std::vector<int64_t>& first, const float* x, const float* xd,
                 int64_t batch, int64_t n, float* y, int64_t ldy, int64_t b0, int64_t b1, bool x_bf16 = false) {
  if (b0 >= b1) return;
  const bool dp = bf16_pairs(x_bf16);
  size_t k = 0;
  for (int64_t b = b0; b < b1; ++b) {
    while (b >= first[k + 1]) ++k;
    const Matrix& m = mats[k];
    const int64_t r0 = (b - first[k]) * ROWS;
    const int64_t rows = std::min<int64_t>(ROWS, m.rows - r0);
    const T* w = static_cast<const T*>(m.w) + r0 * n;
    for (int64_t s = 0; s < batch; ++s) {          // batch > 1: the block's rows are in cache after the first
      float acc[ROWS];
      const float* xs = x + s * n;
      if constexpr (std::is_same_v<T, at::BFloat16>) {
        const float* xds = xd + s * n;
        if (dp && rows == ROWS) {
          dot_rows_bf16_dp<ROWS>(w, n, xs, n, acc);
        } else if (dp) {
          for (int64_t r = 0; r < rows; ++r) dot_rows_bf16_dp<1>(w + r * n, n, xs, n, acc + r);
        } else if (HAS_AVX512 && rows == ROWS) {
          dot_rows_bf16_512<ROWS>(w, n, xs, xds, n, acc);
        } else if (HAS_AVX512) {
          for (int64_t r = 0; r < rows; ++r) dot_rows_bf16_512<1>(w + r * n, n, xs, xds, n, acc + r);
        } else if (rows == ROWS) {
          dot_rows_bf16<ROWS>(w, n, xs, xds, n, acc);
        } else {
          for (int64_t r = 0; r < rows; ++r) dot_rows_bf16<1>(w + r * n, n, xs, xds, n, acc + r);
        }
      } else if (std::is_same_v<T, int8_t> && quantized_x(n) && std::isfinite(xd[s * n])) {
        const int8_t* w8 = reinterpret_cast<const int8_t*>(w);
        const float sx = xd[s * n];
        const int16_t* xq = reinterpret_cast<const int16_t*>(xd + s * n + 1);
        if (rows == ROWS) {
          dot_rows_i8_vnni<ROWS>(w8, n, xq, sx, n, acc);
        } else {
          for (int64_t r = 0; r < rows; ++r) dot_rows_i8_vnni<1>(w8 + r * n, n, xq, sx, n, acc + r);
        }
      } else if (std::is_same_v<T, int8_t> && HAS_AVX512) {
        if (rows == ROWS) {
          dot_rows_i8_512<ROWS>(reinterpret_cast<const int8_t*>(w), n, xs, n, acc);
        } else {
          for (int64_t r = 0; r < rows; ++r)
            dot_rows_i8_512<1>(reinterpret_cast<const int8_t*>(w) + r * n, n, xs, n, acc + r);
        }
      } else if (rows == ROWS) {
        dot_rows<ROWS>(w, n, xs, n, acc);
      } else {
        for (int64_t r = 0; r < rows; ++r) dot_rows<1>(w + r * n, n, xs, n, acc + r);
      }
      float* out = y + s * ldy + m.col + r0;
      for (int64_t r = 0; r < rows; ++r) out[r] = m.scale ? acc[r] * m.scale[r0 + r] : acc[r];
    }
  }
}

}  // namespace ocellus_gemv
