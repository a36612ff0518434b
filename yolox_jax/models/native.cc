// BatchNorm with batch statistics + activation, forward and backward, for XLA's CPU backend.
//
// Why: XLA CPU hands reductions to a library that needs its operands in memory, so its
// BN + activation makes ~15 passes over an activation for forward + backward; these make 4
// (moments, normalise + act; reductions of the backward, input gradient), on the intra-op
// thread pool. Same arithmetic as yolox_jax/models/kernels.py:_bn_act_train (shifted moments,
// float32 values, block sums added in double). Compiled on first use by native.py.
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Runs body(begin, end) over [0, n) in `parts` chunks on the XLA intra-op pool and the caller.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, int64_t parts, F body) {
  if (parts <= 1) { body(0, n, 0); return; }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto st = std::make_shared<State>();
  // A helper runs chunks until none is left. It holds `st` (shared) and reaches `body` through
  // a pointer: one that starts after the caller returned finds no chunk and never touches it.
  auto run = [st, n, parts, bodyp = &body]() {
    for (;;) {
      int64_t p = st->next.fetch_add(1);
      if (p >= parts) return;
      (*bodyp)(n * p / parts, n * (p + 1) / parts, p);
      st->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t i = 1; i < parts; ++i) pool.Schedule(decltype(run)(run));
  // The caller works too, then waits only for chunks already being run (no deadlock when every
  // pool thread is busy elsewhere).
  run();
  while (st->done.load(std::memory_order_acquire) < parts) std::this_thread::yield();
}


// exp(x) in float32 arithmetic only (Cephes' expf: range reduction and a degree-6 polynomial,
// ~1 ulp), so that the loops below vectorise; libm's expf is a scalar call.
inline float FastExp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  float y = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float s;
  __builtin_memcpy(&s, &bits, 4);
  return y * s;
}

inline float Act(float z, int act) {
  switch (act) {
    case 0: return z / (1.0f + FastExp(-z));
    case 1: return z > 0.0f ? z : 0.0f;
    case 2: return z > 0.0f ? z : 0.1f * z;
    default: return z;
  }
}

inline float ActGrad(float z, int act) {
  switch (act) {
    case 0: { float s = 1.0f / (1.0f + FastExp(-z)); return s * (1.0f + z * (1.0f - s)); }
    case 1: return z > 0.0f ? 1.0f : 0.0f;
    case 2: return z > 0.0f ? 1.0f : 0.1f;
    default: return 1.0f;
  }
}

int64_t Parts(ffi::ThreadPool& pool, int64_t elements) {
  int64_t t = pool.num_threads();
  if (t < 1) t = 1;
  int64_t by_size = elements / (1 << 15);
  if (by_size < 1) by_size = 1;
  return t < by_size ? t : by_size;
}

template <int ACT>
void FwdImpl(const float* x, const float* scale, const float* bias, float eps, int64_t n, int64_t c,
             float* y, float* mean_out, float* var_out, ffi::ThreadPool& pool) {
  int64_t parts = Parts(pool, n * c);
  std::vector<double> s1(parts * c, 0.0), s2(parts * c, 0.0);
  const float* shift = x;  // row 0
  ParallelFor(pool, n, parts, [&](int64_t b, int64_t e, int64_t p) {
    double* a1 = &s1[p * c];
    double* a2 = &s2[p * c];
    std::vector<float> f1(c), f2(c);
    for (int64_t r0 = b; r0 < e; r0 += 64) {
      int64_t r1 = r0 + 64 < e ? r0 + 64 : e;
      for (int64_t j = 0; j < c; ++j) { f1[j] = 0.f; f2[j] = 0.f; }
      for (int64_t r = r0; r < r1; ++r) {
        const float* xr = x + r * c;
        _Pragma("omp simd")
        for (int64_t j = 0; j < c; ++j) { float v = xr[j] - shift[j]; f1[j] += v; f2[j] += v * v; }
      }
      for (int64_t j = 0; j < c; ++j) { a1[j] += f1[j]; a2[j] += f2[j]; }
    }
  });
  std::vector<float> k(c), o(c);
  for (int64_t j = 0; j < c; ++j) {
    double m1 = 0, m2 = 0;
    for (int64_t p = 0; p < parts; ++p) { m1 += s1[p * c + j]; m2 += s2[p * c + j]; }
    m1 /= n; m2 /= n;
    double var = m2 - m1 * m1;
    if (var < 0) var = 0;
    float mean = static_cast<float>(m1 + shift[j]);
    mean_out[j] = mean;
    var_out[j] = static_cast<float>(var);
    float rstd = 1.0f / std::sqrt(static_cast<float>(var) + eps);
    k[j] = rstd * scale[j];
    o[j] = bias[j] - mean * k[j];
  }
  ParallelFor(pool, n, parts, [&](int64_t b, int64_t e, int64_t) {
    for (int64_t r = b; r < e; ++r) {
      const float* xr = x + r * c;
      float* yr = y + r * c;
      _Pragma("omp simd")
      for (int64_t j = 0; j < c; ++j) yr[j] = Act(xr[j] * k[j] + o[j], ACT);
    }
  });
}

template <int ACT>
void BwdImpl(const float* x, const float* mean, const float* var, const float* scale,
             const float* bias, const float* gy, float eps, int64_t n, int64_t c, float* dx,
             float* dscale, float* dbias, ffi::ThreadPool& pool) {
  int64_t parts = Parts(pool, n * c);
  std::vector<float> rstd(c), k(c), o(c);
  for (int64_t j = 0; j < c; ++j) {
    rstd[j] = 1.0f / std::sqrt(var[j] + eps);
    k[j] = rstd[j] * scale[j];
    o[j] = bias[j] - mean[j] * k[j];
  }
  std::vector<double> s1(parts * c, 0.0), s2(parts * c, 0.0);
  ParallelFor(pool, n, parts, [&](int64_t b, int64_t e, int64_t p) {
    double* a1 = &s1[p * c];
    double* a2 = &s2[p * c];
    std::vector<float> f1(c), f2(c);
    for (int64_t r0 = b; r0 < e; r0 += 64) {
      int64_t r1 = r0 + 64 < e ? r0 + 64 : e;
      for (int64_t j = 0; j < c; ++j) { f1[j] = 0.f; f2[j] = 0.f; }
      for (int64_t r = r0; r < r1; ++r) {
        const float* xr = x + r * c;
        const float* gr = gy + r * c;
        _Pragma("omp simd")
        for (int64_t j = 0; j < c; ++j) {
          float xh = (xr[j] - mean[j]) * rstd[j];
          float g = gr[j] * ActGrad(xr[j] * k[j] + o[j], ACT);
          f1[j] += g;
          f2[j] += g * xh;
        }
      }
      for (int64_t j = 0; j < c; ++j) { a1[j] += f1[j]; a2[j] += f2[j]; }
    }
  });
  std::vector<float> mb(c), mg(c);
  for (int64_t j = 0; j < c; ++j) {
    double d1 = 0, d2 = 0;
    for (int64_t p = 0; p < parts; ++p) { d1 += s1[p * c + j]; d2 += s2[p * c + j]; }
    dbias[j] = static_cast<float>(d1);
    dscale[j] = static_cast<float>(d2);
    mb[j] = static_cast<float>(d1 / n);
    mg[j] = static_cast<float>(d2 / n);
  }
  ParallelFor(pool, n, parts, [&](int64_t b, int64_t e, int64_t) {
    for (int64_t r = b; r < e; ++r) {
      const float* xr = x + r * c;
      const float* gr = gy + r * c;
      float* dr = dx + r * c;
      _Pragma("omp simd")
      for (int64_t j = 0; j < c; ++j) {
        float xh = (xr[j] - mean[j]) * rstd[j];
        float g = gr[j] * ActGrad(xr[j] * k[j] + o[j], ACT);
        dr[j] = k[j] * (g - mb[j] - xh * mg[j]);
      }
    }
  });
}

ffi::Error Fwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
               ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y,
               ffi::ResultBuffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> var, float eps,
               int32_t act) {
  auto dims = x.dimensions();
  int64_t c = dims.back();
  int64_t n = x.element_count() / c;
  switch (act) {
    case 0: FwdImpl<0>(x.typed_data(), scale.typed_data(), bias.typed_data(), eps, n, c, y->typed_data(), mean->typed_data(), var->typed_data(), pool); break;
    case 1: FwdImpl<1>(x.typed_data(), scale.typed_data(), bias.typed_data(), eps, n, c, y->typed_data(), mean->typed_data(), var->typed_data(), pool); break;
    case 2: FwdImpl<2>(x.typed_data(), scale.typed_data(), bias.typed_data(), eps, n, c, y->typed_data(), mean->typed_data(), var->typed_data(), pool); break;
    default: FwdImpl<3>(x.typed_data(), scale.typed_data(), bias.typed_data(), eps, n, c, y->typed_data(), mean->typed_data(), var->typed_data(), pool); break;
  }
  return ffi::Error::Success();
}

ffi::Error Bwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> mean,
               ffi::Buffer<ffi::F32> var, ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> bias,
               ffi::Buffer<ffi::F32> gy, ffi::ResultBuffer<ffi::F32> dx,
               ffi::ResultBuffer<ffi::F32> dscale, ffi::ResultBuffer<ffi::F32> dbias, float eps,
               int32_t act) {
  auto dims = x.dimensions();
  int64_t c = dims.back();
  int64_t n = x.element_count() / c;
#define BWD_CASE(A) BwdImpl<A>(x.typed_data(), mean.typed_data(), var.typed_data(), scale.typed_data(), bias.typed_data(), gy.typed_data(), eps, n, c, dx->typed_data(), dscale->typed_data(), dbias->typed_data(), pool)
  switch (act) {
    case 0: BWD_CASE(0); break;
    case 1: BWD_CASE(1); break;
    case 2: BWD_CASE(2); break;
    default: BWD_CASE(3); break;
  }
#undef BWD_CASE
  return ffi::Error::Success();
}


// ---------------------------------------------------------------------------------------------
// Depthwise k x k convolution, NHWC, padding (k-1)/2, stride s: out[b, y, x, c] =
// sum_ij x[b, s*y + i - p, s*x + j - p, c] * w[i, j, c] (zero outside). XLA CPU runs grouped
// convolutions ~40x slower than this, and the pure-JAX shifted taps pad every operand.

struct DwShape {
  int64_t b, h, w, c, k, s, p, ho, wo;
};

void DwFwdImpl(const float* __restrict x, const float* __restrict w, float* __restrict out,
               const DwShape& d, ffi::ThreadPool& pool) {
  int64_t rows = d.b * d.ho;
  ParallelFor(pool, rows, Parts(pool, rows * d.wo * d.c), [&](int64_t r0, int64_t r1, int64_t) {
    std::vector<float> acc(d.c);
    for (int64_t r = r0; r < r1; ++r) {
      int64_t bi = r / d.ho, y = r % d.ho;
      for (int64_t xo = 0; xo < d.wo; ++xo) {
        float* __restrict a = acc.data();
        for (int64_t ch = 0; ch < d.c; ++ch) a[ch] = 0.f;
        for (int64_t i = 0; i < d.k; ++i) {
          int64_t yi = d.s * y + i - d.p;
          if (yi < 0 || yi >= d.h) continue;
          for (int64_t j = 0; j < d.k; ++j) {
            int64_t xi = d.s * xo + j - d.p;
            if (xi < 0 || xi >= d.w) continue;
            const float* __restrict xv = x + ((bi * d.h + yi) * d.w + xi) * d.c;
            const float* __restrict wv = w + (i * d.k + j) * d.c;
            _Pragma("omp simd")
            for (int64_t ch = 0; ch < d.c; ++ch) a[ch] += xv[ch] * wv[ch];
          }
        }
        float* __restrict o = out + (r * d.wo + xo) * d.c;
        for (int64_t ch = 0; ch < d.c; ++ch) o[ch] = a[ch];
      }
    }
  });
}

// One pass over the cotangent gives both gradients: dx by scattering g * w back onto the taps'
// inputs (images split across threads, so no two threads write the same dx), dw as per-thread
// sums of x * g (float per output row, double across rows).
void DwBwdImpl(const float* __restrict x, const float* __restrict w, const float* __restrict g,
               float* __restrict dx, float* __restrict dw, const DwShape& d,
               ffi::ThreadPool& pool) {
  int64_t kk = d.k * d.k;
  int64_t parts = Parts(pool, d.b * d.h * d.w * d.c);
  if (parts > d.b) parts = d.b;
  std::vector<double> total(parts * kk * d.c, 0.0);
  ParallelFor(pool, d.b, parts, [&](int64_t b0, int64_t b1, int64_t part) {
    std::vector<float> row(kk * d.c);
    double* __restrict tot = &total[part * kk * d.c];
    for (int64_t i = (b0 * d.h * d.w * d.c); i < b1 * d.h * d.w * d.c; ++i) dx[i] = 0.f;
    for (int64_t bi = b0; bi < b1; ++bi) {
      for (int64_t y = 0; y < d.ho; ++y) {
        float* __restrict rw = row.data();
        for (int64_t t = 0; t < kk * d.c; ++t) rw[t] = 0.f;
        for (int64_t xo = 0; xo < d.wo; ++xo) {
          const float* __restrict gv = g + ((bi * d.ho + y) * d.wo + xo) * d.c;
          for (int64_t i = 0; i < d.k; ++i) {
            int64_t yi = d.s * y + i - d.p;
            if (yi < 0 || yi >= d.h) continue;
            for (int64_t j = 0; j < d.k; ++j) {
              int64_t xi = d.s * xo + j - d.p;
              if (xi < 0 || xi >= d.w) continue;
              int64_t off = ((bi * d.h + yi) * d.w + xi) * d.c;
              const float* __restrict xv = x + off;
              float* __restrict dv = dx + off;
              const float* __restrict wv = w + (i * d.k + j) * d.c;
              float* __restrict rv = rw + (i * d.k + j) * d.c;
              _Pragma("omp simd")
              for (int64_t ch = 0; ch < d.c; ++ch) {
                dv[ch] += gv[ch] * wv[ch];
                rv[ch] += xv[ch] * gv[ch];
              }
            }
          }
        }
        for (int64_t t = 0; t < kk * d.c; ++t) tot[t] += rw[t];
      }
    }
  });
  for (int64_t t = 0; t < kk * d.c; ++t) {
    double v = 0;
    for (int64_t q = 0; q < parts; ++q) v += total[q * kk * d.c + t];
    dw[t] = static_cast<float>(v);
  }
}

DwShape MakeDwShape(ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& w, int64_t stride) {
  auto xd = x.dimensions();
  DwShape d;
  d.b = xd[0]; d.h = xd[1]; d.w = xd[2]; d.c = xd[3];
  d.k = w.dimensions()[0];
  d.s = stride;
  d.p = (d.k - 1) / 2;
  d.ho = (d.h + 2 * d.p - d.k) / d.s + 1;
  d.wo = (d.w + 2 * d.p - d.k) / d.s + 1;
  return d;
}

ffi::Error DwFwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                 ffi::ResultBuffer<ffi::F32> out, int32_t stride) {
  DwShape d = MakeDwShape(x, w, stride);
  DwFwdImpl(x.typed_data(), w.typed_data(), out->typed_data(), d, pool);
  return ffi::Error::Success();
}

ffi::Error DwBwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                 ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> dx,
                 ffi::ResultBuffer<ffi::F32> dw, int32_t stride) {
  DwShape d = MakeDwShape(x, w, stride);
  DwBwdImpl(x.typed_data(), w.typed_data(), g.typed_data(), dx->typed_data(), dw->typed_data(),
            d, pool);
  return ffi::Error::Success();
}


// ---------------------------------------------------------------------------------------------
// Weight gradient of a dense k x k convolution, NHWC / HWIO, padding (k-1)/2, stride s:
// dw[i, j, c, o] = sum_{b, y, x} x[b, s*y + i - p, s*x + j - p, c] * g[b, y, x, o]. XLA CPU runs
// it as a convolution whose window is the whole image, on one thread, 2-4x slower than the
// forward; here it is a blocked outer-product sum on all threads.

typedef float V16 __attribute__((vector_size(64)));
typedef float V16u __attribute__((vector_size(64), aligned(4)));  // unaligned loads / stores

inline V16 Load16(const float* p) { return *reinterpret_cast<const V16u*>(p); }

struct WgShape {
  int64_t b, h, w, c, o, k, s, p, ho, wo;
};

// Adds to acc [CT][16 * OV] the sums over output rows [y0, y1) of image bi for tap (i, j),
// input channels [c0, c0 + CT), output channels [o0, o0 + 16 * OV).
template <int CT, int OV>
void WgTile(const float* __restrict x, const float* __restrict g, const WgShape& d, int64_t bi,
            int64_t y0, int64_t y1, int64_t i, int64_t j, int64_t c0, int64_t o0,
            double* __restrict acc) {
  V16 a[CT][OV];
  for (int ci = 0; ci < CT; ++ci)
    for (int v = 0; v < OV; ++v) a[ci][v] = V16{};
  // Output columns whose input column s*x + j - p lies inside the image.
  int64_t x0 = j >= d.p ? 0 : (d.p - j + d.s - 1) / d.s;
  int64_t last = d.w - 1 + d.p - j;  // negative: every column of this tap is padding
  int64_t x1 = last < 0 ? 0 : last / d.s + 1;
  if (x1 > d.wo) x1 = d.wo;
  for (int64_t y = y0; y < y1; ++y) {
    int64_t yi = d.s * y + i - d.p;
    if (yi < 0 || yi >= d.h) continue;
    const float* xr = x + ((bi * d.h + yi) * d.w + (d.s * x0 + j - d.p)) * d.c + c0;
    const float* gr = g + ((bi * d.ho + y) * d.wo + x0) * d.o + o0;
    for (int64_t xo = x0; xo < x1; ++xo, xr += d.s * d.c, gr += d.o) {
      V16 gv[OV];
      for (int v = 0; v < OV; ++v) gv[v] = Load16(gr + 16 * v);
      for (int ci = 0; ci < CT; ++ci) {
        V16 xb = V16{} + xr[ci];
        for (int v = 0; v < OV; ++v) a[ci][v] += xb * gv[v];
      }
    }
  }
  for (int ci = 0; ci < CT; ++ci)
    for (int v = 0; v < OV; ++v)
      for (int l = 0; l < 16; ++l) acc[ci * d.o + 16 * v + l] += a[ci][v][l];
}

template <int OV>
void WgTileC(int ct, const float* x, const float* g, const WgShape& d, int64_t bi, int64_t y0,
             int64_t y1, int64_t i, int64_t j, int64_t c0, int64_t o0, double* acc) {
  switch (ct) {
#define YOLOX_WG_CASE(n) \
    case n: WgTile<n, OV>(x, g, d, bi, y0, y1, i, j, c0, o0, acc); break;
    YOLOX_WG_CASE(1) YOLOX_WG_CASE(2) YOLOX_WG_CASE(3) YOLOX_WG_CASE(4) YOLOX_WG_CASE(5)
    YOLOX_WG_CASE(6) YOLOX_WG_CASE(7) YOLOX_WG_CASE(8) YOLOX_WG_CASE(9) YOLOX_WG_CASE(10)
    YOLOX_WG_CASE(11) YOLOX_WG_CASE(12)
#undef YOLOX_WG_CASE
    default: break;
  }
}

constexpr int kWgCt = 12;  // input channels per tile: 12 x 2 accumulators + 2 loads of 32 zmm

void WgImpl(const float* x, const float* g, float* dw, const WgShape& d, ffi::ThreadPool& pool) {
  // Tasks: (tap, input-channel tile); each owns its part of dw, so threads never share a
  // write. Rows are walked in blocks (outer) so that a block's x and g stay in cache while
  // every task of the thread uses them.
  int64_t ctiles = (d.c + kWgCt - 1) / kWgCt;
  int64_t tasks = d.k * d.k * ctiles;
  int64_t t = pool.num_threads() < 1 ? 1 : pool.num_threads();
  int64_t parts = tasks < t ? tasks : t;
  int64_t per_pos = (d.s * d.c + d.o) * 4;  // bytes of x and g per output position
  int64_t rows = (256 * 1024) / (per_pos * d.wo + 1);
  if (rows < 1) rows = 1;
  std::vector<double> acc(d.k * d.k * d.c * d.o, 0.0);
  ParallelFor(pool, tasks, parts, [&](int64_t t0, int64_t t1, int64_t) {
    for (int64_t bi = 0; bi < d.b; ++bi) {
      for (int64_t y0 = 0; y0 < d.ho; y0 += rows) {
        int64_t y1 = y0 + rows < d.ho ? y0 + rows : d.ho;
        for (int64_t task = t0; task < t1; ++task) {
          int64_t tap = task / ctiles, c0 = (task % ctiles) * kWgCt;
          int ct = static_cast<int>(d.c - c0 < kWgCt ? d.c - c0 : kWgCt);
          int64_t i = tap / d.k, j = tap % d.k;
          double* a = &acc[(tap * d.c + c0) * d.o];
          int64_t o0 = 0;
          for (; o0 + 32 <= d.o; o0 += 32) WgTileC<2>(ct, x, g, d, bi, y0, y1, i, j, c0, o0, a + o0);
          for (; o0 + 16 <= d.o; o0 += 16) WgTileC<1>(ct, x, g, d, bi, y0, y1, i, j, c0, o0, a + o0);
        }
      }
    }
  });
  for (size_t q = 0; q < acc.size(); ++q) dw[q] = static_cast<float>(acc[q]);
}

ffi::Error ConvWgrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                     ffi::ResultBuffer<ffi::F32> dw, int32_t stride) {
  auto xd = x.dimensions();
  auto gd = g.dimensions();
  auto wd = dw->dimensions();
  WgShape d;
  d.b = xd[0]; d.h = xd[1]; d.w = xd[2]; d.c = xd[3];
  d.ho = gd[1]; d.wo = gd[2]; d.o = gd[3];
  d.k = wd[0]; d.s = stride; d.p = (d.k - 1) / 2;
  if (d.o % 16 != 0 || wd[2] != d.c || wd[3] != d.o)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "yolox_jax_conv_wgrad: output channels must be a multiple of 16");
  WgImpl(x.typed_data(), g.typed_data(), dw->typed_data(), d, pool);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(YoloxBnActFwd, Fwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps")
                                  .Attr<int32_t>("act"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(YoloxBnActBwd, Bwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps")
                                  .Attr<int32_t>("act"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(YoloxDwFwd, DwFwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("stride"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(YoloxDwBwd, DwBwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("stride"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(YoloxConvWgrad, ConvWgrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("stride"));
