/* lmforge: one decoding step of a Llama-style Transformer in C, for CPUs.
 *
 * Part of lmforge (see native.py, which compiles this file with the system's C compiler on first use and calls
 * it through ctypes). At batch 1 a small model's step is bound by reading its weights once and by the per-
 * operation overhead around ~100 small tensor operations; here the whole step (embedding, every layer, head) is
 * one call with one OpenMP parallel region, and every matrix is streamed once for all rows of the batch. The
 * same call takes several new tokens a row (a prompt, or a chunk of one): a batch or a prompt is bound by
 * arithmetic, which the float32 panels (panel_f32) do at close to the CPU's peak.
 *
 * The maths is FastLlamaDecoder's (decode.py):
 *   - RMSNorm (arXiv:1910.07467) folded into the next matrix: float matrices carry gain * sqrt(D) in their
 *     columns; int8 matrices take that gain on the input instead. The result is scaled by
 *     1 / sqrt(|x|^2 + D * eps) per row.
 *   - Rotary embeddings (arXiv:2104.09864) on interleaved pairs (the Q/K rows are permuted to that layout).
 *   - SwiGLU (arXiv:2002.05202): silu(gate) * up, the gate and up matrices fused as one.
 * int8 matrices are per-output-channel symmetric (q * scale[row]); each input row is rounded to 8 bits with its
 * own absmax scale (dynamic quantization, arXiv:1712.05877) and the products are integer (AVX-512 VNNI where the
 * CPU has it). Each row's arithmetic is independent of the other rows of the batch.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

/* int8 matrices: with AVX-512 VNNI, panels of 64 columns (qpanel_i8); elsewhere rows (n, k) with dot_u8s8 */
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define LMF_Q8_PANELS 1
#endif

typedef struct {
    const float *w;        /* float panels (see panel_f32), or NULL for int8 */
    const int8_t *q;       /* int8: panels (qpanel_i8) where LMF_Q8_PANELS, else rows (n, k) */
    const float *scale;    /* int8: (n) */
    const int32_t *rowsum; /* int8: (n), the sum of each row of q */
    const float *gain;     /* int8: (k) input gain, or NULL */
    const float *bias;     /* (n), or NULL */
    int64_t n, k;
} lmf_mat;

typedef struct {
    lmf_mat qkv, o, gu, down;
} lmf_layer;

typedef struct {
    int64_t L, D, H, Hkv, hd, ffn;
    float deps;         /* D * eps */
    const float *emb;   /* (V, D) */
    const float *rope;  /* (positions, hd / 2, 2): cos, sin */
    lmf_mat head;
    const lmf_layer *layers;
} lmf_model;

/* ------------------------------------------------------------------------------------------------ dot products */
static inline float dot_f32(const float *a, const float *w, int64_t k) {
    int64_t i = 0;
    float s = 0.f;
#if defined(__AVX512F__)
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    for (; i + 64 <= k; i += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(w + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(w + i + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(w + i + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(w + i + 48), s3);
    }
    for (; i + 16 <= k; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(w + i), s0);
    s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
#endif
#pragma omp simd reduction(+ : s) /* without AVX-512 (AVX2 laptops): vectorised, the sum reassociated */
    for (int64_t j = i; j < k; j++) s += a[j] * w[j];
    return s;
}

/* sum over i of (a[i] - 128) * w[i], for a = x + 128 in [1, 255] (x in [-127, 127]) */
static inline int32_t dot_u8s8(const uint8_t *a, const int8_t *w, int64_t k, int32_t rowsum) {
    int64_t i = 0;
    int32_t s = 0;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    /* u8 x s8 products summed by fours into int32 (no saturation); the offset comes off with the row's sum */
    __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
    for (; i + 128 <= k; i += 128) {
        s0 = _mm512_dpbusd_epi32(s0, _mm512_loadu_si512(a + i), _mm512_loadu_si512(w + i));
        s1 = _mm512_dpbusd_epi32(s1, _mm512_loadu_si512(a + i + 64), _mm512_loadu_si512(w + i + 64));
    }
    for (; i + 64 <= k; i += 64) s0 = _mm512_dpbusd_epi32(s0, _mm512_loadu_si512(a + i), _mm512_loadu_si512(w + i));
    if (i) { /* rowsum is the whole row's: the tail's share is given back, the tail is summed below */
        s = _mm512_reduce_add_epi32(_mm512_add_epi32(s0, s1)) - 128 * rowsum;
        for (int64_t j = i; j < k; j++) s += 128 * (int32_t)w[j];
    }
#elif defined(__AVX2__)
    /* AVX2 without VNNI: |x| (u8) times w with x's sign (s8), pairs summed into int16: at most 2 * 127 * 127, so
     * never saturated (the same trick as llama.cpp's AVX2 path), then pairs of those into int32 */
    (void)rowsum;
    __m256i acc = _mm256_setzero_si256();
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    for (; i + 32 <= k; i += 32) {
        const __m256i x = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(a + i)), flip);
        const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x),
                                               _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(w + i)), x));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
    }
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
    s = _mm_cvtsi128_si32(h);
#else
    (void)rowsum;
#endif
#pragma omp simd reduction(+ : s)
    for (int64_t j = i; j < k; j++) s += ((int32_t)a[j] - 128) * (int32_t)w[j];
    return s;
}

/* Float matrices are stored as panels of 64 columns: panel p holds columns 64p .. 64p + 63 of W.T (in, out) as
 * k rows of 64 floats, zero-padded past the last column. A product takes a panel and up to 6 input rows at a time:
 * per k, 4 vector loads of the panel's row, one broadcast of each input's value and 4 fused multiply-adds per
 * input, into 24 accumulators. The panels are streamed in order, so a one-row step reads the weights once as a
 * sequence (bound by memory), while a batch or a prompt reuses each loaded row for 6 inputs (bound by
 * arithmetic), with no horizontal sums. Every output is one chain of multiply-adds over k in order, whatever
 * the batch and wherever its row sits in it: a row's result is bitwise the same alone or in any batch. */
#define LMF_PANEL 64
#define LMF_ROWS 6

/* Where a panel's products go: y[c * ldy + j] (=|+=) out[c][j] * inv[c] + bias[j] for the nb rows and the nj
 * columns (inv, bias: NULL for none). Every element takes these operations in this order. */
typedef struct {
    float *y;
    int64_t ldy, nj;
    const float *inv, *bias;
    int accumulate;
} lmf_out;

#if defined(__AVX512F__)
/* e^x for float32 lanes: x = n ln 2 + r with |r| <= ln 2 / 2, e^r by its Taylor series to r^6 (relative error
 * below 2e-7), times 2^n (scalef). Inputs are clamped to [-87.3, 88.7]. */
static inline __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.7f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x); /* ln 2 in two parts (Cody and Waite) */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 p = _mm512_set1_ps(1.f / 720.f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(p, n);
}

static inline __mmask16 cols(int64_t nj, int v) { /* the lanes of vector v (columns 16v ..) below nj */
    const int64_t left = nj - 16 * v;
    return left >= 16 ? (__mmask16)0xffff : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
}
#endif

static inline __attribute__((always_inline)) void panel_f32(const float *P, int64_t k, const float *x, int64_t ldx,
                                                            const int nb, lmf_out o) {
#if defined(__AVX512F__)
    __m512 acc[LMF_ROWS][4];
    for (int c = 0; c < nb; c++)
        for (int v = 0; v < 4; v++) acc[c][v] = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; i++) {
        const float *r = P + i * LMF_PANEL;
        const __m512 w0 = _mm512_loadu_ps(r), w1 = _mm512_loadu_ps(r + 16), w2 = _mm512_loadu_ps(r + 32),
                     w3 = _mm512_loadu_ps(r + 48);
        for (int c = 0; c < nb; c++) {
            const __m512 xb = _mm512_set1_ps(x[c * ldx + i]);
            acc[c][0] = _mm512_fmadd_ps(xb, w0, acc[c][0]);
            acc[c][1] = _mm512_fmadd_ps(xb, w1, acc[c][1]);
            acc[c][2] = _mm512_fmadd_ps(xb, w2, acc[c][2]);
            acc[c][3] = _mm512_fmadd_ps(xb, w3, acc[c][3]);
        }
    }
    for (int c = 0; c < nb; c++)
        for (int v = 0; v < 4; v++) {
            const __mmask16 m = cols(o.nj, v);
            if (!m) break;
            __m512 a = acc[c][v];
            if (o.inv) a = _mm512_mul_ps(a, _mm512_set1_ps(o.inv[c]));
            if (o.bias) a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(m, o.bias + 16 * v));
            float *y = o.y + c * o.ldy + 16 * v;
            if (o.accumulate) a = _mm512_add_ps(_mm512_maskz_loadu_ps(m, y), a);
            _mm512_mask_storeu_ps(y, m, a);
        }
#else
    float acc[LMF_ROWS][LMF_PANEL];
    for (int c = 0; c < nb; c++)
        for (int v = 0; v < LMF_PANEL; v++) acc[c][v] = 0.f;
    for (int64_t i = 0; i < k; i++) {
        const float *r = P + i * LMF_PANEL;
        for (int c = 0; c < nb; c++) {
            const float xv = x[c * ldx + i];
#pragma omp simd
            for (int v = 0; v < LMF_PANEL; v++) acc[c][v] += xv * r[v];
        }
    }
    for (int c = 0; c < nb; c++)
        for (int64_t j = 0; j < o.nj; j++) {
            float a = acc[c][j];
            if (o.inv) a *= o.inv[c];
            if (o.bias) a += o.bias[j];
            float *y = o.y + c * o.ldy + j;
            *y = o.accumulate ? *y + a : a;
        }
#endif
}

/* panel_f32 with nb a constant in each call, so that its loops unroll */
static void panel_any(const float *P, int64_t k, const float *x, int64_t ldx, int nb, lmf_out o) {
    switch (nb) {
    case 1: panel_f32(P, k, x, ldx, 1, o); break;
    case 2: panel_f32(P, k, x, ldx, 2, o); break;
    case 3: panel_f32(P, k, x, ldx, 3, o); break;
    case 4: panel_f32(P, k, x, ldx, 4, o); break;
    case 5: panel_f32(P, k, x, ldx, 5, o); break;
    default: panel_f32(P, k, x, ldx, 6, o); break;
    }
}

#ifdef LMF_Q8_PANELS
/* int8 panels: panel p holds columns 64p .. 64p + 63 as ceil(k / 4) groups of 64 columns x 4 bytes (zero past the
 * last column and the last k). Per group, 4 vector loads and, per input row, one broadcast of its 4 bytes and 4
 * VNNI products: each int32 lane sums the products of one column. The sums are exact integers, so the result is
 * bitwise the one the rows layout gives: (sum - 128 rowsum) * (xs * scale), then the float epilogue. */
static inline __attribute__((always_inline)) void qpanel_i8(const int8_t *P, int64_t k, const uint8_t *xu,
                                                            int64_t ldu, const int nb, const int32_t *rowsum,
                                                            const float *scale, const float *xs, lmf_out o) {
    __m512i acc[LMF_ROWS][4];
    for (int c = 0; c < nb; c++)
        for (int v = 0; v < 4; v++) acc[c][v] = _mm512_setzero_si512();
    const int64_t kq = (k + 3) / 4;
    for (int64_t i = 0; i < kq; i++) {
        const int8_t *r = P + i * 4 * LMF_PANEL;
        const __m512i w0 = _mm512_loadu_si512(r), w1 = _mm512_loadu_si512(r + 64), w2 = _mm512_loadu_si512(r + 128),
                      w3 = _mm512_loadu_si512(r + 192);
        for (int c = 0; c < nb; c++) {
            int32_t quad;
            memcpy(&quad, xu + c * ldu + 4 * i, 4);
            const __m512i xb = _mm512_set1_epi32(quad);
            acc[c][0] = _mm512_dpbusd_epi32(acc[c][0], xb, w0);
            acc[c][1] = _mm512_dpbusd_epi32(acc[c][1], xb, w1);
            acc[c][2] = _mm512_dpbusd_epi32(acc[c][2], xb, w2);
            acc[c][3] = _mm512_dpbusd_epi32(acc[c][3], xb, w3);
        }
    }
    for (int c = 0; c < nb; c++)
        for (int v = 0; v < 4; v++) {
            const __mmask16 m = cols(o.nj, v);
            if (!m) break;
            const __m512i sum = _mm512_sub_epi32(acc[c][v], _mm512_slli_epi32(_mm512_maskz_loadu_epi32(m, rowsum + 16 * v), 7));
            __m512 a = _mm512_mul_ps(_mm512_cvtepi32_ps(sum),
                                     _mm512_mul_ps(_mm512_set1_ps(xs[c]), _mm512_maskz_loadu_ps(m, scale + 16 * v)));
            if (o.inv) a = _mm512_mul_ps(a, _mm512_set1_ps(o.inv[c]));
            if (o.bias) a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(m, o.bias + 16 * v));
            float *y = o.y + c * o.ldy + 16 * v;
            if (o.accumulate) a = _mm512_add_ps(_mm512_maskz_loadu_ps(m, y), a);
            _mm512_mask_storeu_ps(y, m, a);
        }
}

/* qpanel_i8 with nb a constant in each call */
static void qpanel_any(const int8_t *P, int64_t k, const uint8_t *xu, int64_t ldu, int nb, const int32_t *rowsum,
                       const float *scale, const float *xs, lmf_out o) {
    switch (nb) {
    case 1: qpanel_i8(P, k, xu, ldu, 1, rowsum, scale, xs, o); break;
    case 2: qpanel_i8(P, k, xu, ldu, 2, rowsum, scale, xs, o); break;
    case 3: qpanel_i8(P, k, xu, ldu, 3, rowsum, scale, xs, o); break;
    case 4: qpanel_i8(P, k, xu, ldu, 4, rowsum, scale, xs, o); break;
    case 5: qpanel_i8(P, k, xu, ldu, 5, rowsum, scale, xs, o); break;
    default: qpanel_i8(P, k, xu, ldu, 6, rowsum, scale, xs, o); break;
    }
}
#endif

/* ------------------------------------------------------------------------------------------ matrix products */
/* Each thread keeps its own copy of what every output row needs from the inputs (the RMSNorm factors, int8's
 * rounded rows): computed redundantly, it costs less than a barrier, and a step then waits at one barrier per
 * matrix and one after attention (what matters when a thread is descheduled on a busy machine). */
typedef struct {
    float *inv;  /* (B) 1 / sqrt(|x[b]|^2 + D * eps), the folded RMSNorm factor */
    uint8_t *xu; /* (B, kmax) the input rounded to 8 bits, offset by 128 */
    float *xs;   /* (B) the rounding scale of each row */
} lmf_priv;

/* Whether this build takes int8 matrices as panels (native.py packs them to match) */
int lmf_int8_panels(void) {
#ifdef LMF_Q8_PANELS
    return 1;
#else
    return 0;
#endif
}

/* the stride of the rounded input rows: k, rounded up to whole groups of 4 bytes for the panels */
static inline int64_t ustride(int64_t k) {
#ifdef LMF_Q8_PANELS
    return (k + 3) & ~(int64_t)3;
#else
    return k;
#endif
}

static float dot_row(const lmf_mat *m, int64_t j, int64_t b, const lmf_priv *pv) { /* int8 rows */
    const int64_t k = m->k;
    return (float)dot_u8s8(pv->xu + b * ustride(k), m->q + j * k, k, m->rowsum[j]) * (pv->xs[b] * m->scale[j]);
}

/* sum of x[i]^2, 16 lanes at a time (the same order for every row) */
static inline float sumsq(const float *x, int64_t k) {
    int64_t i = 0;
    float s = 0.f;
#if defined(__AVX512F__)
    __m512 acc = _mm512_setzero_ps();
    for (; i < k; i += 16) {
        const __m512 v = _mm512_maskz_loadu_ps(cols(k - i, 0), x + i);
        acc = _mm512_fmadd_ps(v, v, acc);
    }
    s = _mm512_reduce_add_ps(acc);
#endif
    for (; i < k; i++) s += x[i] * x[i];
    return s;
}

/* This thread's inputs for m: the norm factors of x's rows (when `norm`), and int8's rounded rows of x * gain */
static void prepare(const lmf_mat *m, int64_t B, const float *x, int64_t ldx, int norm, float deps, lmf_priv *pv) {
    const int64_t k = m->k;
    for (int64_t b = 0; b < B; b++) {
        const float *xr = x + b * ldx;
        if (norm) pv->inv[b] = 1.f / sqrtf(sumsq(xr, k) + deps);
        if (!m->q) continue;
        float amax = 0.f;
        int64_t i = 0;
        uint8_t *u = pv->xu + b * ustride(k);
#if defined(__AVX512F__)
        /* the same values as the loops below: max is exact, and the rounding is to nearest even in both */
        __m512 vmax = _mm512_setzero_ps();
        for (; i < k; i += 16) {
            const __mmask16 c = cols(k - i, 0);
            __m512 v = _mm512_maskz_loadu_ps(c, xr + i);
            if (m->gain) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(c, m->gain + i));
            vmax = _mm512_max_ps(vmax, _mm512_abs_ps(v));
        }
        amax = _mm512_reduce_max_ps(vmax);
#endif
        for (; i < k; i++) amax = fmaxf(amax, fabsf(m->gain ? xr[i] * m->gain[i] : xr[i]));
        const float r = amax > 0.f ? 127.f / amax : 0.f;
        pv->xs[b] = amax / 127.f;
        i = 0;
#if defined(__AVX512F__)
        const __m512 vr = _mm512_set1_ps(r);
        for (; i < k; i += 16) {
            const __mmask16 c = cols(k - i, 0);
            __m512 v = _mm512_maskz_loadu_ps(c, xr + i);
            if (m->gain) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(c, m->gain + i));
            const __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, vr)), _mm512_set1_epi32(128));
            _mm512_mask_cvtusepi32_storeu_epi8(u + i, c, q);
        }
#endif
        for (; i < k; i++) u[i] = (uint8_t)((int32_t)lrintf((m->gain ? xr[i] * m->gain[i] : xr[i]) * r) + 128);
    }
}

/* y[b] (=|+=) (x[b] @ W.T) * (norm ? inv[b] : 1) + bias for B rows, inside a parallel region: the rows of W are
 * shared out among the threads, each read once for all B inputs. */
/* Panel p's columns (p >= the first part's panel count: the second part's, starting at its column `col`) for the
 * nb input rows from b0: float panels, or int8 ones where this build has them */
static inline void panel_product(const lmf_mat *m, int64_t p, int64_t col, int64_t b0, int nb, const float *x,
                                 int64_t ldx, const lmf_priv *pv, lmf_out o) {
    if (!m->q) {
        panel_any(m->w + p * m->k * LMF_PANEL, m->k, x + b0 * ldx, ldx, nb, o);
        return;
    }
#ifdef LMF_Q8_PANELS
    const int64_t lu = ustride(m->k);
    qpanel_any(m->q + p * lu * LMF_PANEL, m->k, pv->xu + b0 * lu, lu, nb, m->rowsum + col, m->scale + col,
               pv->xs + b0, o);
#else
    (void)col;
    (void)pv;
#endif
}

#ifdef LMF_Q8_PANELS
#define LMF_PANELS(m) 1
#else
#define LMF_PANELS(m) (!(m)->q)
#endif

/* y[b] (=|+=) (x[b] @ W.T) * (norm ? inv[b] : 1) + bias for B rows, inside a parallel region: the panels (or rows)
 * of W are shared out among the threads, each read once for every 6 inputs. */
static void matmul(const lmf_mat *m, int64_t B, const float *x, int64_t ldx, float *y, int64_t ldy, int norm,
                   float deps, int accumulate, lmf_priv *pv) {
    prepare(m, B, x, ldx, norm, deps, pv);
    if (LMF_PANELS(m)) {
        const int64_t np = (m->n + LMF_PANEL - 1) / LMF_PANEL, ng = (B + LMF_ROWS - 1) / LMF_ROWS;
#pragma omp for collapse(2) schedule(static)
        for (int64_t p = 0; p < np; p++)
            for (int64_t g = 0; g < ng; g++) {
                const int64_t b0 = g * LMF_ROWS, j0 = p * LMF_PANEL;
                const int nb = B - b0 < LMF_ROWS ? (int)(B - b0) : LMF_ROWS;
                const lmf_out o = {y + b0 * ldy + j0, ldy, m->n - j0 < LMF_PANEL ? m->n - j0 : LMF_PANEL,
                                   norm ? pv->inv + b0 : NULL, m->bias ? m->bias + j0 : NULL, accumulate};
                panel_product(m, p, j0, b0, nb, x, ldx, pv, o);
            }
        return;
    }
#pragma omp for schedule(static)
    for (int64_t j = 0; j < m->n; j++)
        for (int64_t b = 0; b < B; b++) {
            float v = dot_row(m, j, b, pv);
            if (norm) v *= pv->inv[b];
            if (m->bias) v += m->bias[j];
            float *o = y + b * ldy + j;
            *o = accumulate ? *o + v : v;
        }
}

static inline float silu_mul(float g, float u) { return g / (1.f + expf(-g)) * u; }

/* h[j] = silu(g[j]) * u[j] for j < n (n <= 64) */
static void silu_mul_row(const float *g, const float *u, int64_t n, float *h) {
#if defined(__AVX512F__)
    for (int v = 0; v < 4; v++) {
        const __mmask16 m = cols(n, v);
        if (!m) break;
        const __m512 gv = _mm512_maskz_loadu_ps(m, g + 16 * v), uv = _mm512_maskz_loadu_ps(m, u + 16 * v);
        const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        _mm512_mask_storeu_ps(h + 16 * v, m, _mm512_mul_ps(_mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.f), e)), uv));
    }
#else
    for (int64_t j = 0; j < n; j++) h[j] = silu_mul(g[j], u[j]);
#endif
}

/* h[b, j] = silu(gate) * up. Float: the gate's panels, then the up's (ffn columns each); int8: rows j and
 * ffn + j of the fused matrix (SwiGLU, arXiv:2002.05202) */
static void swiglu(const lmf_mat *m, int64_t B, const float *x, int64_t D, float *h, int64_t ffn, float deps,
                   lmf_priv *pv) { /* D: the stride of x's rows */
    prepare(m, B, x, D, 1, deps, pv);
    if (LMF_PANELS(m)) {
        const int64_t np = (ffn + LMF_PANEL - 1) / LMF_PANEL, ng = (B + LMF_ROWS - 1) / LMF_ROWS;
#pragma omp for collapse(2) schedule(static)
        for (int64_t p = 0; p < np; p++)
            for (int64_t g = 0; g < ng; g++) {
                float go[LMF_ROWS * LMF_PANEL], uo[LMF_ROWS * LMF_PANEL];
                const int64_t b0 = g * LMF_ROWS, j0 = p * LMF_PANEL, nj = ffn - j0 < LMF_PANEL ? ffn - j0 : LMF_PANEL;
                const int nb = B - b0 < LMF_ROWS ? (int)(B - b0) : LMF_ROWS;
                const float *inv = pv->inv + b0, *bg = m->bias ? m->bias + j0 : NULL, *bu = m->bias ? m->bias + ffn + j0 : NULL;
                panel_product(m, p, j0, b0, nb, x, D, pv, (lmf_out){go, LMF_PANEL, nj, inv, bg, 0});
                panel_product(m, np + p, ffn + j0, b0, nb, x, D, pv, (lmf_out){uo, LMF_PANEL, nj, inv, bu, 0});
                for (int c = 0; c < nb; c++) silu_mul_row(go + c * LMF_PANEL, uo + c * LMF_PANEL, nj, h + (b0 + c) * ffn + j0);
            }
        return;
    }
#pragma omp for schedule(static)
    for (int64_t j = 0; j < ffn; j++)
        for (int64_t b = 0; b < B; b++) {
            float g = dot_row(m, j, b, pv) * pv->inv[b], u = dot_row(m, ffn + j, b, pv) * pv->inv[b];
            if (m->bias) {
                g += m->bias[j];
                u += m->bias[ffn + j];
            }
            h[b * ffn + j] = silu_mul(g, u);
        }
}

/* ------------------------------------------------------------------------------------------------- attention */
static inline void rotate(float *r, const float *cs, int64_t half) { /* rotary pairs (arXiv:2104.09864) */
    for (int64_t j = 0; j < half; j++) {
        const float a = r[2 * j], c = r[2 * j + 1];
        r[2 * j] = a * cs[2 * j] - c * cs[2 * j + 1];
        r[2 * j + 1] = a * cs[2 * j + 1] + c * cs[2 * j];
    }
}

#if defined(__AVX512F__)
/* The 16 lane sums of a[0..15] as one vector, element i the sum of a[i], each by the same tree of additions:
 * halves of 256 bits, then of 128, then pairs within 128-bit lanes. The tree leaves element 4L + e holding
 * vector 4e + L, hence the transposed order the vectors are taken in. */
static inline __m512 sum16(const __m512 *a) {
    __m512 t[8], u[4], w[2];
    static const int order[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};
    for (int i = 0; i < 8; i++) {
        const __m512 x = a[order[2 * i]], y = a[order[2 * i + 1]];
        t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x44), _mm512_shuffle_f32x4(x, y, 0xEE));
    }
    for (int i = 0; i < 4; i++)
        u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++)
        w[i] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * i], u[2 * i + 1], 0x44), _mm512_shuffle_ps(u[2 * i], u[2 * i + 1], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x88), _mm512_shuffle_ps(w[0], w[1], 0xDD));
}
#endif

/* p[s] = (q . k[s]) * scale for the S slots of one head's keys (k: S rows of hd), -inf where ok[s] is 0 (ok: NULL
 * for none masked); returns their maximum. A slot's score is the same whatever slots are beside it. */
static float scores(const float *q, const float *k, int64_t hd, int64_t S, const uint8_t *ok, float scale, float *p) {
    float mx = -INFINITY;
    int64_t s = 0;
#if defined(__AVX512F__)
    const __m512 sc = _mm512_set1_ps(scale);
    __m512 vmx = _mm512_set1_ps(-INFINITY);
    for (; s < S; s += 16) {
        const int n = S - s < 16 ? (int)(S - s) : 16;
        __mmask16 keep = cols(n, 0);
        if (ok) {
#if defined(__AVX512BW__) && defined(__AVX512VL__)
            keep &= _mm_cmpneq_epi8_mask(_mm_maskz_loadu_epi8(keep, ok + s), _mm_setzero_si128());
#else
            for (int i = 0; i < n; i++)
                if (!ok[s + i]) keep &= (__mmask16) ~(1u << i);
#endif
        }
        __m512 v = _mm512_set1_ps(-INFINITY);
        if (keep) { /* a batch's cache window often holds whole groups of another row's slots: skipped */
            __m512 part[16];
            for (int i = 0; i < 16; i++) part[i] = _mm512_setzero_ps();
            for (int64_t d0 = 0; d0 < hd; d0 += 16) {
                const __mmask16 m = cols(hd - d0, 0);
                const __m512 qv = _mm512_maskz_loadu_ps(m, q + d0);
                for (int i = 0; i < n; i++)
                    part[i] = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k + (s + i) * hd + d0), part[i]);
            }
            v = _mm512_mask_mov_ps(v, keep, _mm512_mul_ps(sum16(part), sc));
        }
        _mm512_mask_storeu_ps(p + s, cols(n, 0), v);
        vmx = _mm512_max_ps(vmx, v);
    }
    mx = _mm512_reduce_max_ps(vmx);
#endif
    for (; s < S; s++) {
        p[s] = (ok && !ok[s]) ? -INFINITY : dot_f32(q, k + s * hd, hd) * scale;
        mx = p[s] > mx ? p[s] : mx;
    }
    return mx;
}

/* o = sum over s of (p[s] / sum) v[s] (v: S rows of hd), skipping the zero weights; each 16 lanes of o are
 * summed in a register over s in order. The weights are divided by the sum first (once per slot: the same
 * correctly rounded quotients as one division per use). */
static void weighted_sum(float *p, float sum, int64_t S, const float *v, int64_t hd, float *o) {
    int64_t s = 0;
#if defined(__AVX512F__)
    const __m512 den = _mm512_set1_ps(sum);
    for (; s < S; s += 16) {
        const __mmask16 m = cols(S - s, 0);
        _mm512_mask_storeu_ps(p + s, m, _mm512_div_ps(_mm512_maskz_loadu_ps(m, p + s), den));
    }
    for (int64_t d0 = 0; d0 < hd; d0 += 16) {
        const __mmask16 m = cols(hd - d0, 0);
        __m512 acc = _mm512_setzero_ps();
        for (s = 0; s < S; s++)
            if (p[s] != 0.f) acc = _mm512_fmadd_ps(_mm512_set1_ps(p[s]), _mm512_maskz_loadu_ps(m, v + s * hd + d0), acc);
        _mm512_mask_storeu_ps(o + d0, m, acc);
    }
#else
    for (; s < S; s++) p[s] /= sum;
    for (int64_t d = 0; d < hd; d++) o[d] = 0.f;
    for (s = 0; s < S; s++) {
        if (p[s] == 0.f) continue;
        const float *vs = v + s * hd;
        for (int64_t d = 0; d < hd; d++) o[d] += p[s] * vs[d];
    }
#endif
}

/* p[s] = e^(p[s] - mx), 0 where p[s] is -inf (a masked slot); returns their sum, taken in order of s (so that it
 * does not depend on where a row's tokens sit in its cache: a padded batch's rows are shifted) */
static float exp_shifted(float *p, int64_t S, float mx) {
    int64_t s = 0;
    float sum = 0.f;
#if defined(__AVX512F__)
    const __m512 shift = _mm512_set1_ps(mx), ninf = _mm512_set1_ps(-INFINITY);
    for (; s < S; s += 16) {
        const __mmask16 m = cols(S - s, 0);
        const __m512 v = _mm512_maskz_loadu_ps(m, p + s);
        const __m512 e = _mm512_maskz_mov_ps(m & _mm512_cmp_ps_mask(v, ninf, _CMP_NEQ_OQ), exp512(_mm512_sub_ps(v, shift)));
        _mm512_mask_storeu_ps(p + s, m, e);
    }
#else
    for (; s < S; s++) p[s] = p[s] == -INFINITY ? 0.f : expf(p[s] - mx);
#endif
    for (s = 0; s < S; s++) sum += p[s];
    return sum;
}

/* Rows of T new tokens each: row b's token t sits in cache slot slot + t of cache row at[b] (b when at is NULL)
 * at position pos[b * T + t], and attends to the slots u <= slot + t where valid[at[b] * vstride + u] (all
 * of them when valid is NULL; with mark, each new token's own slot is marked valid first). First every new key is
 * rotated and every new key and value written into the cache (one unit per (row, token, key/value head)); then,
 * after the barrier, one unit per (row, token, query head) rotates its query and attends, for the tokens t >= t0
 * (the others' outputs are not needed). */
static void attention(const lmf_model *m, float *kcache, float *vcache, int64_t B, int64_t T, int64_t t0,
                      float *qkv, int64_t ldqkv, const int64_t *pos, int64_t slot, uint8_t *valid,
                      int64_t vstride, const int64_t *at, int mark, int64_t row_stride, int64_t head_stride,
                      float *att, float *p) {
    const int64_t H = m->H, Hkv = m->Hkv, hd = m->hd, half = hd / 2, nq = H * hd, nk = Hkv * hd, G = H / Hkv;
    const float scale = 1.f / sqrtf((float)hd);
#pragma omp for schedule(static)
    for (int64_t u = 0; u < B * T * Hkv; u++) {
        const int64_t bt = u / Hkv, g = u % Hkv, b = bt / T, t = bt % T, row = at ? at[b] : b;
        float *r = qkv + bt * ldqkv;
        const int64_t off = row * row_stride + g * head_stride + (slot + t) * hd;
        if (mark && valid && g == 0) valid[row * vstride + slot + t] = 1;
        rotate(r + nq + g * hd, m->rope + pos[bt] * half * 2, half);
        memcpy(kcache + off, r + nq + g * hd, hd * sizeof(float));
        memcpy(vcache + off, r + nq + nk + g * hd, hd * sizeof(float));
    }
#pragma omp for schedule(static)
    for (int64_t u = 0; u < B * (T - t0) * H; u++) {
        const int64_t h = u % H, b = u / H / (T - t0), t = t0 + u / H % (T - t0), bt = b * T + t, row = at ? at[b] : b;
        const float *kc = kcache + row * row_stride + (h / G) * head_stride, *vc = vcache + row * row_stride + (h / G) * head_stride;
        const uint8_t *ok = valid ? valid + row * vstride : NULL;
        /* a padding token (its output is never used) attends to every slot, as the PyTorch path's does */
        const int pad = ok && !ok[slot + t];
        const int64_t S = pad ? slot + T : slot + t + 1;
        if (pad) ok = NULL;
        float *q = qkv + bt * ldqkv + h * hd;
        rotate(q, m->rope + pos[bt] * half * 2, half);
        /* the token's own slot is attended (valid, or a padding token's all): the sum is at least 1 */
        const float sum = exp_shifted(p, S, scores(q, kc, hd, S, ok, scale, p));
        weighted_sum(p, sum, S, vc, hd, att + bt * nq + h * hd);
    }
}

/* --------------------------------------------------------------------------------------------------- the step */
/* T new tokens for each of B rows (T = 1: a decoding step; T > 1: a prompt, or a chunk of one): tok, pos (B, T);
 * row b's keys and values go to slots slot .. slot + T - 1 of cache row at[b] (b when at is NULL: the rows of a
 * batch need not be the first B rows of the cache, nor in order), and its token t attends to the slots
 * u <= slot + t with valid[at[b] * vstride + u] (all of them when valid is NULL; with mark, the new tokens' slots
 * are marked valid first). kc[l], vc[l]: layer l's caches, element (r, h, u, d) at r * row_stride +
 * h * head_stride + u * hd + d. Writes the logits of each row's last token (B, V). Returns 0, or -1 when memory for
 * the scratch buffers could not be allocated. */
int lmf_step(const lmf_model *m, int64_t B, int64_t T, const int64_t *tok, const int64_t *pos, int64_t slot,
             uint8_t *valid, int64_t vstride, const int64_t *at, int mark, float *const *kc, float *const *vc,
             int64_t row_stride, int64_t head_stride, float *logits, int nthreads) {
    const int64_t D = m->D, nq = m->H * m->hd, nqkv = nq + 2 * m->Hkv * m->hd, S = slot + T, R = B * T;
    const int64_t kmax = ustride(D > m->ffn ? (D > nq ? D : nq) : (m->ffn > nq ? m->ffn : nq));
    if (nthreads < 1) nthreads = 1;
    float *buf = malloc(sizeof(float) * (R * (D + nqkv + nq + m->ffn) + (S + 2 * R) * nthreads));
    uint8_t *xu = malloc((size_t)(R * kmax * nthreads));
    if (!buf || !xu) {
        free(buf);
        free(xu);
        return -1;
    }
    float *x = buf, *qkv = x + R * D, *att = qkv + R * nqkv, *hid = att + R * nq, *priv = hid + R * m->ffn;
#pragma omp parallel num_threads(nthreads)
    {
        const int th = omp_get_thread_num();
        float *mine = priv + (S + 2 * R) * th;
        lmf_priv pv = {mine, xu + R * kmax * th, mine + R};
        float *scores = mine + 2 * R;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < R; r++) memcpy(x + r * D, m->emb + tok[r] * D, D * sizeof(float));
        for (int64_t l = 0; l < m->L; l++) {
            const lmf_layer *ly = m->layers + l;
            /* the last layer needs every token's keys and values, but the rest only for each row's last token
             * (the one the head reads): its rows T - 1, 2T - 1, ... of x and att */
            const int last = l == m->L - 1;
            const int64_t t0 = last ? T - 1 : 0, rows = last ? B : R, ldx = last ? T * D : D, lda = last ? T * nq : nq;
            float *xl = x + t0 * D;
            matmul(&ly->qkv, R, x, D, qkv, nqkv, 1, m->deps, 0, &pv);
            attention(m, kc[l], vc[l], B, T, t0, qkv, nqkv, pos, slot, valid, vstride, at, mark && l == 0, row_stride,
                      head_stride, att, scores);
            matmul(&ly->o, rows, att + t0 * nq, lda, xl, ldx, 0, m->deps, 1, &pv);
            swiglu(&ly->gu, rows, xl, ldx, hid, m->ffn, m->deps, &pv);
            matmul(&ly->down, rows, hid, m->ffn, xl, ldx, 0, m->deps, 1, &pv);
        }
        /* the head reads each row's last token: rows T - 1, 2T - 1, ... of x */
        matmul(&m->head, B, x + (T - 1) * D, T * D, logits, m->head.n, 1, m->deps, 0, &pv);
    }
    free(buf);
    free(xu);
    return 0;
}
