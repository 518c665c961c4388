/* lmforge: one decoding step of a Llama-style Transformer in C, for CPUs.
 *
 * Part of lmforge (see native.py, which compiles this file with the system's C compiler on first use and calls
 * it through ctypes). At batch 1 a small model's step is bound by reading its weights once and by the per-
 * operation overhead around ~100 small tensor operations; here the whole step (embedding, every layer, head) is
 * one call with one OpenMP parallel region, and every matrix is streamed once for all rows of the batch.
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

typedef struct {
    const float *w;        /* float rows (n, k), or NULL for int8 */
    const int8_t *q;       /* int8 rows (n, k) */
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

/* ------------------------------------------------------------------------------------------ matrix products */
/* Each thread keeps its own copy of what every output row needs from the inputs (the RMSNorm factors, int8's
 * rounded rows): computed redundantly, it costs less than a barrier, and a step then waits at one barrier per
 * matrix and one after attention (what matters when a thread is descheduled on a busy machine). */
typedef struct {
    float *inv;  /* (B) 1 / sqrt(|x[b]|^2 + D * eps), the folded RMSNorm factor */
    uint8_t *xu; /* (B, kmax) the input rounded to 8 bits, offset by 128 */
    float *xs;   /* (B) the rounding scale of each row */
} lmf_priv;

static float dot_row(const lmf_mat *m, int64_t j, int64_t b, const float *x, int64_t ldx, const lmf_priv *pv) {
    const int64_t k = m->k;
    if (m->q) return (float)dot_u8s8(pv->xu + b * k, m->q + j * k, k, m->rowsum[j]) * (pv->xs[b] * m->scale[j]);
    return dot_f32(x + b * ldx, m->w + j * k, k);
}

/* This thread's inputs for m: the norm factors of x's rows (when `norm`), and int8's rounded rows of x * gain */
static void prepare(const lmf_mat *m, int64_t B, const float *x, int64_t ldx, int norm, float deps, lmf_priv *pv) {
    const int64_t k = m->k;
    for (int64_t b = 0; b < B; b++) {
        const float *xr = x + b * ldx;
        if (norm) {
            float s = 0.f;
            for (int64_t i = 0; i < k; i++) s += xr[i] * xr[i];
            pv->inv[b] = 1.f / sqrtf(s + deps);
        }
        if (!m->q) continue;
        float amax = 0.f;
        for (int64_t i = 0; i < k; i++) amax = fmaxf(amax, fabsf(m->gain ? xr[i] * m->gain[i] : xr[i]));
        const float r = amax > 0.f ? 127.f / amax : 0.f;
        pv->xs[b] = amax / 127.f;
        uint8_t *u = pv->xu + b * k;
        for (int64_t i = 0; i < k; i++)
            u[i] = (uint8_t)((int32_t)lrintf((m->gain ? xr[i] * m->gain[i] : xr[i]) * r) + 128);
    }
}

/* y[b] (=|+=) (x[b] @ W.T) * (norm ? inv[b] : 1) + bias for B rows, inside a parallel region: the rows of W are
 * shared out among the threads, each read once for all B inputs. */
static void matmul(const lmf_mat *m, int64_t B, const float *x, int64_t ldx, float *y, int64_t ldy, int norm,
                   float deps, int accumulate, lmf_priv *pv) {
    prepare(m, B, x, ldx, norm, deps, pv);
#pragma omp for schedule(static)
    for (int64_t j = 0; j < m->n; j++)
        for (int64_t b = 0; b < B; b++) {
            float v = dot_row(m, j, b, x, ldx, pv);
            if (norm) v *= pv->inv[b];
            if (m->bias) v += m->bias[j];
            float *o = y + b * ldy + j;
            *o = accumulate ? *o + v : v;
        }
}

/* h[b, j] = silu(gate) * up, with gate and up rows j and ffn + j of the fused matrix (SwiGLU, arXiv:2002.05202) */
static void swiglu(const lmf_mat *m, int64_t B, const float *x, int64_t D, float *h, int64_t ffn, float deps,
                   lmf_priv *pv) {
    prepare(m, B, x, D, 1, deps, pv);
#pragma omp for schedule(static)
    for (int64_t j = 0; j < ffn; j++)
        for (int64_t b = 0; b < B; b++) {
            float g = dot_row(m, j, b, x, D, pv) * pv->inv[b], u = dot_row(m, ffn + j, b, x, D, pv) * pv->inv[b];
            if (m->bias) {
                g += m->bias[j];
                u += m->bias[ffn + j];
            }
            h[b * ffn + j] = g / (1.f + expf(-g)) * u;
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

/* One unit of work per (row, key/value head): rotate that head's new key and its G query heads, write the key
 * and value into the cache, and attend. No unit reads what another writes, so no barrier until the end. */
static void attention(const lmf_model *m, float *kcache, float *vcache, int64_t B, float *qkv, int64_t ldqkv,
                      const int64_t *pos, int64_t slot, const uint8_t *valid, int64_t vstride, int64_t row_stride,
                      int64_t head_stride, float *att, float *scores, int64_t S) {
    const int64_t H = m->H, Hkv = m->Hkv, hd = m->hd, half = hd / 2, nq = H * hd, nk = Hkv * hd, G = H / Hkv;
    const float scale = 1.f / sqrtf((float)hd);
#pragma omp for schedule(static)
    for (int64_t bg = 0; bg < B * Hkv; bg++) {
        const int64_t b = bg / Hkv, g = bg % Hkv;
        float *r = qkv + b * ldqkv;
        const float *cs = m->rope + pos[b] * half * 2;
        float *kc = kcache + b * row_stride + g * head_stride, *vc = vcache + b * row_stride + g * head_stride;
        rotate(r + nq + g * hd, cs, half);
        memcpy(kc + slot * hd, r + nq + g * hd, hd * sizeof(float));
        memcpy(vc + slot * hd, r + nq + nk + g * hd, hd * sizeof(float));
        const uint8_t *ok = valid ? valid + b * vstride : NULL;
        for (int64_t h = g * G; h < (g + 1) * G; h++) {
            float *q = r + h * hd, *p = scores + (b * H + h) * S, mx = -INFINITY, sum = 0.f;
            rotate(q, cs, half);
            for (int64_t t = 0; t < S; t++) {
                p[t] = (ok && !ok[t]) ? -INFINITY : dot_f32(q, kc + t * hd, hd) * scale;
                mx = fmaxf(mx, p[t]);
            }
            for (int64_t t = 0; t < S; t++) {
                p[t] = p[t] == -INFINITY ? 0.f : expf(p[t] - mx);
                sum += p[t];
            }
            float *o = att + b * nq + h * hd;
            for (int64_t d = 0; d < hd; d++) o[d] = 0.f;
            for (int64_t t = 0; t < S; t++) {
                if (p[t] == 0.f) continue;
                const float w = p[t] / sum, *v = vc + t * hd;
                for (int64_t d = 0; d < hd; d++) o[d] += w * v[d];
            }
        }
    }
}

/* --------------------------------------------------------------------------------------------------- the step */
/* One new token per row: tok, pos (B); the new keys and values go to cache slot `slot`, and row b attends to the
 * slots t <= slot with valid[b * vstride + t] (all of them when valid is NULL). kc[l], vc[l]: layer l's caches,
 * element (b, h, t, d) at b * row_stride + h * head_stride + t * hd + d. Writes the logits (B, V).
 * Returns 0, or -1 when memory for the scratch buffers could not be allocated. */
int lmf_step(const lmf_model *m, int64_t B, const int64_t *tok, const int64_t *pos, int64_t slot,
             const uint8_t *valid, int64_t vstride, float *const *kc, float *const *vc, int64_t row_stride,
             int64_t head_stride, float *logits, int nthreads) {
    const int64_t D = m->D, nq = m->H * m->hd, nqkv = nq + 2 * m->Hkv * m->hd, S = slot + 1;
    const int64_t kmax = D > m->ffn ? (D > nq ? D : nq) : (m->ffn > nq ? m->ffn : nq);
    if (nthreads < 1) nthreads = 1;
    float *buf = malloc(sizeof(float) * (B * (D + nqkv + nq + m->ffn) + B * m->H * S + 2 * B * nthreads));
    uint8_t *xu = malloc((size_t)(B * kmax * nthreads));
    if (!buf || !xu) {
        free(buf);
        free(xu);
        return -1;
    }
    float *x = buf, *qkv = x + B * D, *att = qkv + B * nqkv, *hid = att + B * nq, *scores = hid + B * m->ffn;
    float *priv = scores + B * m->H * S;
#pragma omp parallel num_threads(nthreads)
    {
        const int t = omp_get_thread_num();
        lmf_priv pv = {priv + 2 * B * t, xu + B * kmax * t, priv + 2 * B * t + B};
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) memcpy(x + b * D, m->emb + tok[b] * D, D * sizeof(float));
        for (int64_t l = 0; l < m->L; l++) {
            const lmf_layer *ly = m->layers + l;
            matmul(&ly->qkv, B, x, D, qkv, nqkv, 1, m->deps, 0, &pv);
            attention(m, kc[l], vc[l], B, qkv, nqkv, pos, slot, valid, vstride, row_stride, head_stride, att, scores, S);
            matmul(&ly->o, B, att, nq, x, D, 0, m->deps, 1, &pv);
            swiglu(&ly->gu, B, x, D, hid, m->ffn, m->deps, &pv);
            matmul(&ly->down, B, hid, m->ffn, x, D, 0, m->deps, 1, &pv);
        }
        matmul(&m->head, B, x, D, logits, m->head.n, 1, m->deps, 0, &pv);
    }
    free(buf);
    free(xu);
    return 0;
}
