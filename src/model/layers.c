/* layers.c — the kernels of a CLIP forward pass, each written plainly.
 * GEMMs go to BLAS (OpenBLAS); everything else is a loop over rows that
 * OpenMP splits across cores and the compiler vectorises. */
#include "../internal.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* y[n, out] (=|+=) x[n, in] · W[out, in]^T + b, rows of y and x strided by
 * ldy and ldx. The bias is written into y first and the GEMM accumulates
 * onto it (beta = 1): one pass over y instead of BLAS's zeroing pass plus
 * a bias pass. Writing straight into the residual stream (accumulate)
 * saves another pass per layer. */
void gemm_rows(float *y, int ldy, const float *x, int ldx, const float *W, const float *b, int n, int in,
               int out, bool accumulate) {
    if (b) {
#pragma omp parallel for if ((size_t)n * out > 65536)
        for (int i = 0; i < n; i++) {
            float *row = y + (size_t)i * ldy;
            if (accumulate)
                for (int j = 0; j < out; j++) row[j] += b[j];
            else
                memcpy(row, b, (size_t)out * sizeof *row);
        }
    }
    /* A few rows (a caption's token step): sgemm would pack the whole weight matrix
     * for them on every call, which cost a KV-cached decoder step twice its reads;
     * matrix-vector products read W once. */
    if (n <= 4) {
        for (int i = 0; i < n; i++)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.0f, W, in, x + (size_t)i * ldx, 1,
                        (b || accumulate) ? 1.0f : 0.0f, y + (size_t)i * ldy, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, ldx, W, in,
                (b || accumulate) ? 1.0f : 0.0f, y, ldy);
}

void linear_forward(float *y, const float *x, const float *W, const float *b, int n, int in, int out,
                    bool accumulate) {
    gemm_rows(y, out, x, in, W, b, n, in, out, accumulate);
}

/* Backward of linear_forward (y = x W^T + b), accumulating into the grads:
 *   dx (+)= dy W        dW += dy^T x        db += sum over rows of dy
 * dx may be NULL (an input that needs no gradient); accumulate_dx adds to
 * dx instead of overwriting it (a residual branch joining the stream). */
void linear_backward(float *dx, float *dW, float *db, const float *dy, const float *x, const float *W, int n,
                     int in, int out, bool accumulate_dx) {
    if (dx)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out, 1.0f, dy, out, W, in,
                    accumulate_dx ? 1.0f : 0.0f, dx, in);
    if (dW) /* NULL: a frozen weight, whose gradient GEMM is skipped */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, n, 1.0f, dy, out, x, in, 1.0f, dW, in);
    if (db) /* each thread sums a block of columns down all rows */
#pragma omp parallel for if ((size_t)n * out > 65536)
        for (int j0 = 0; j0 < out; j0 += 64) {
            int j1 = j0 + 64 < out ? j0 + 64 : out;
            for (int i = 0; i < n; i++)
                for (int j = j0; j < j1; j++) db[j] += dy[(size_t)i * out + j];
        }
}

/* y[n, out] = x[n, in] · W[in, out] — OpenAI stores proj matrices this way. */
void matmul_forward(float *y, const float *x, const float *W, int n, int in, int out) {
    if (n <= 4) { /* a few rows: y = W^T x reads W once (see gemm_rows) */
        for (int i = 0; i < n; i++)
            cblas_sgemv(CblasRowMajor, CblasTrans, in, out, 1.0f, W, out, x + (size_t)i * in, 1, 0.0f, y + (size_t)i * out, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, out, in, 1.0f, x, in, W, out, 0.0f, y,
                out);
}

/* Backward of matmul_forward: dx = dy W^T, dW += x^T dy. */
void matmul_backward(float *dx, float *dW, const float *dy, const float *x, const float *W, int n, int in, int out) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, in, out, 1.0f, dy, out, W, out, 0.0f, dx, in);
    if (dW) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, in, out, n, 1.0f, x, in, dy, out, 1.0f, dW, out);
}

/* LayerNorm over the last dimension (eps: nn.LayerNorm's default is 1e-5),
 * two-pass mean and variance as PyTorch computes them. */
void layernorm_forward(float *y, const float *x, const float *w, const float *b, int n, int dim, float eps) {
#pragma omp parallel for if ((size_t)n * dim > 32768)
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * dim;
        float *yi = y + (size_t)i * dim;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < dim; j++) sum += xi[j];
        float mean = sum / dim, var = 0.0f;
#pragma omp simd reduction(+ : var)
        for (int j = 0; j < dim; j++) var += (xi[j] - mean) * (xi[j] - mean);
        float rstd = 1.0f / sqrtf(var / dim + eps);
        for (int j = 0; j < dim; j++) yi[j] = (xi[j] - mean) * rstd * w[j] + b[j];
    }
}

/* exp(x) for float32 in a form the compiler vectorises (libm's expf is a
 * call per element): x = k ln2 + r with |r| <= ln2/2, exp(r) by its Taylor
 * polynomial to degree 7 (truncation error < 6e-9, so float rounding
 * dominates), 2^k through the exponent
 * bits. Inputs are clamped to [-87, 88], inside float's normal range. */
static inline float fast_expf(float x) {
    bool nan = x != x;
    float y = nan ? 0.0f : x;        /* NaN would make the int conversion below undefined */
    y = y < -87.0f ? -87.0f : y;     /* vectorised with -fno-trapping-math */
    y = y > 88.0f ? 88.0f : y;
    /* k = round(y / ln2) by the 1.5 * 2^23 trick (vectorises; floorf does not) */
    float k = (y * 1.44269504089f + 12582912.0f) - 12582912.0f;
    float r = y - k * 0.693145751953125f - k * 1.428606765330187e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666667f + r * (0.041666668f +
                                   r * (0.008333334f + r * (0.0013888889f + r * 0.0001984127f))))));
    int32_t bits = ((int32_t)k + 127) << 23; /* k in [-126, 127]: a positive shift */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return nan ? x : p * scale;      /* NaN in, NaN out: divergence stays visible */
}

/* Elementwise activations run over 4096-float chunks: the chunk loop is
 * split across threads, the plain inner loop is vectorised. */
#define CHUNK 4096

/* LayerNorm backward from the layer's input x (mean and rstd recomputed):
 *   xhat = (x - mean) rstd,  g = dy w
 *   dx (+)= rstd (g - mean(g) - xhat mean(g xhat)),  dw += dy xhat,  db += dy
 * (dw and db both NULL: only dx). */
void layernorm_backward(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w, int n,
                        int dim, float eps, bool accumulate_dx) {
    bool params = dw != NULL; /* NULL dw and db: frozen gains, only dx is wanted */
    int threads = n * dim > 65536 ? omp_get_max_threads() : 1;
    /* per-thread partial sums of dw and db, added up after */
    float *partial = params && threads > 1 ? calloc((size_t)threads * 2 * dim, sizeof *partial) : NULL;
    if (params && !partial) threads = 1;
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num();
        float *pw = partial ? partial + (size_t)t * 2 * dim : dw, *pb = partial ? pw + dim : db;
#pragma omp for
        for (int i = 0; i < n; i++) {
            const float *xi = x + (size_t)i * dim, *dyi = dy + (size_t)i * dim;
            float *dxi = dx + (size_t)i * dim;
            float sum = 0.0f;
            for (int j = 0; j < dim; j++) sum += xi[j];
            float mean = sum / dim, var = 0.0f;
            for (int j = 0; j < dim; j++) var += (xi[j] - mean) * (xi[j] - mean);
            float rstd = 1.0f / sqrtf(var / dim + eps);
            float g_mean = 0.0f, gx_mean = 0.0f;
            for (int j = 0; j < dim; j++) {
                float xhat = (xi[j] - mean) * rstd, g = dyi[j] * w[j];
                g_mean += g;
                gx_mean += g * xhat;
                if (params) {
                    pw[j] += dyi[j] * xhat;
                    pb[j] += dyi[j];
                }
            }
            g_mean /= dim;
            gx_mean /= dim;
            for (int j = 0; j < dim; j++) {
                float xhat = (xi[j] - mean) * rstd;
                float v = rstd * (dyi[j] * w[j] - g_mean - xhat * gx_mean);
                dxi[j] = accumulate_dx ? dxi[j] + v : v;
            }
        }
    }
    if (partial) {
        for (int t = 0; t < threads; t++)
            for (int j = 0; j < dim; j++) {
                dw[j] += partial[(size_t)t * 2 * dim + j];
                db[j] += partial[(size_t)t * 2 * dim + dim + j];
            }
        free(partial);
    }
}

/* OpenAI's QuickGELU: x * sigmoid(1.702 x). */
static void quick_gelu_chunk(float *restrict x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + fast_expf(-1.702f * x[i]));
}

void quick_gelu_forward(float *x, size_t n) {
#pragma omp parallel for if (n > 65536)
    for (size_t c = 0; c < n; c += CHUNK) quick_gelu_chunk(x + c, n - c < CHUNK ? n - c : CHUNK);
}

/* The exact (erf) GELU of nn.GELU(): 0.5 x (1 + erf(x / sqrt 2)). */
void gelu_forward(float *x, size_t n) {
#pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

/* GELU's tanh approximation (PyTorch's approximate="tanh", SigLIP's
 * gelu_pytorch_tanh): 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3),
 * computed as x / (1 + exp(-2u)) (the same function: 0.5 (1 + tanh u) is
 * sigmoid(2u)) so that it vectorises like QuickGELU; libm's tanhf is a call
 * per element, and made this activation a third of a SigLIP image pass. */
static void gelu_tanh_chunk(float *restrict x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float u = 0.7978845608028654f * (x[i] + 0.044715f * x[i] * x[i] * x[i]);
        x[i] = x[i] / (1.0f + fast_expf(-2.0f * u));
    }
}

static void gelu_tanh_forward(float *x, size_t n) {
#pragma omp parallel for if (n > 65536)
    for (size_t c = 0; c < n; c += CHUNK) gelu_tanh_chunk(x + c, n - c < CHUNK ? n - c : CHUNK);
}

/* Activation backward from the pre-activation x: dx = dy * act'(x).
 *   QuickGELU: s + 1.702 x s (1 - s), s = sigmoid(1.702 x)
 *   GELU:      Phi(x) + x phi(x)
 *   GELU tanh: 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 0.044715 x^2),
 *              t = tanh(sqrt(2/pi) (x + 0.044715 x^3)) */
static void quick_gelu_backward_chunk(float *restrict dx, const float *restrict dy, const float *restrict x, size_t n) {
    /* libm's correctly rounded expf here, not fast_expf: the derivative
     * amplifies exp's last-bit error, and training is checked against
     * PyTorch's gradients through Adam's noise-sensitive update */
    for (size_t i = 0; i < n; i++) {
        float sg = 1.0f / (1.0f + expf(-1.702f * x[i]));
        dx[i] = dy[i] * (sg + 1.702f * x[i] * sg * (1.0f - sg));
    }
}

void activation_backward(float *dx, const float *dy, const float *x, size_t n, int activation) {
    if (activation == CLIPC_GELU_TANH) {
#pragma omp parallel for if (n > 65536)
        for (size_t i = 0; i < n; i++) {
            float k = 0.7978845608028654f, t = tanhf(k * (x[i] + 0.044715f * x[i] * x[i] * x[i]));
            dx[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * x[i] * (1.0f - t * t) * k * (1.0f + 0.134145f * x[i] * x[i]));
        }
        return;
    }
    if (activation == CLIPC_GELU) {
#pragma omp parallel for if (n > 65536)
        for (size_t i = 0; i < n; i++) {
            float cdf = 0.5f * (1.0f + erff(x[i] * 0.70710678118654752f));
            dx[i] = dy[i] * (cdf + x[i] * 0.3989422804014327f * expf(-0.5f * x[i] * x[i]));
        }
        return;
    }
#pragma omp parallel for if (n > 65536)
    for (size_t c = 0; c < n; c += CHUNK) quick_gelu_backward_chunk(dx + c, dy + c, x + c, n - c < CHUNK ? n - c : CHUNK);
}

void activation_forward(float *x, size_t n, int activation) {
    if (activation == CLIPC_GELU_TANH)
        gelu_tanh_forward(x, n);
    else if (activation == CLIPC_GELU)
        gelu_forward(x, n);
    else
        quick_gelu_forward(x, n);
}

void relu_forward(float *x, size_t n) {
#pragma omp parallel for simd if (n > 65536)
    for (size_t i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

static int longest(const int *seq_len, int n_seq) {
    int max_len = 0;
    for (int s = 0; s < n_seq; s++) max_len = seq_len[s] > max_len ? seq_len[s] : max_len;
    return max_len;
}

/* One thread's room: the scores (fp32: [len, len]; bf16: [len padded to
 * 16, attention_bf16_stride(len)]) and, at bf16, the kernel's buffers. */
static size_t attention_thread_scratch(int max_len, int head_dim, bool bf16) {
    if (!bf16) return (size_t)max_len * max_len + 16;
    return (size_t)(max_len + 15) / 16 * 16 * attention_bf16_stride(max_len) + 16 +
           attention_bf16_scratch(max_len, head_dim);
}

size_t attention_scratch(int max_len, int head_dim) {
    size_t fp32 = attention_thread_scratch(max_len, head_dim, false),
           bf16 = attention_thread_scratch(max_len, head_dim, true);
    return (fp32 > bf16 ? fp32 : bf16) * (size_t)omp_get_max_threads();
}

/* softmax(q k^T / sqrt(d_head)) v for every (sequence, head) pair, as
 * nn.MultiheadAttention computes it. Each pair is two small GEMMs run on
 * the strided q/k/v column blocks in place (BLAS runs single-threaded
 * inside the parallel loop): scores = scale * Q K^T, then out = P V; with
 * bf16 both take bf16 inputs (attention_bf16.c) and the scale is applied
 * in fp32 inside the softmax. The causal mask of the text tower ends each
 * query's softmax at its own position and zeroes the rest. query_row[s] >=
 * 0 restricts sequence s to that one query (the pooled row); -1 computes
 * every row. Training (probs) is fp32. */
void attention_forward(float *out, const float *qkv, const int *seq_start, const int *seq_len,
                       const int *query_row, int n_seq, int D, int heads, bool causal, bool bf16, float *scratch,
                       float *probs, const size_t *probs_offset, const unsigned char *hidden) {
    int hd = D / heads, ld = 3 * D;
    float scale = 1.0f / sqrtf((float)hd);
    int max_len = longest(seq_len, n_seq);
    bf16 = bf16 && !probs;
    size_t per_thread = attention_thread_scratch(max_len, hd, bf16);
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int s = 0; s < n_seq; s++) {
        for (int h = 0; h < heads; h++) {
            int len = seq_len[s], first = 0, nq = len;
            if (query_row && query_row[s] >= 0) first = query_row[s] - seq_start[s], nq = 1;
            /* Training keeps each head's probabilities for the backward pass. */
            float *mine = scratch + per_thread * omp_get_thread_num();
            float *scores = probs ? probs + probs_offset[s] + (size_t)h * len * len : mine;
            /* sequences shorter than 32 (a caption) stay fp32: padded to the
             * tiles they ran slower (ViT-B-32 texts at batch 1: 5-10%) */
            bool tiles = bf16 && len >= 32;
            int lds = tiles ? attention_bf16_stride(len) : len;
            float post = tiles ? scale : 1.0f; /* fp32 scales inside sgemm; the tiles' scores are unscaled */
            float *kernel_scratch = mine + (size_t)(nq + 15) / 16 * 16 * lds + 16;
            const float *base = qkv + (size_t)seq_start[s] * ld + h * hd;
            if (tiles)
                attention_scores_bf16(scores, lds, base + (size_t)first * ld, base + D, ld, nq, len, hd,
                                      kernel_scratch);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, len, hd, scale, base + (size_t)first * ld,
                            ld, base + D, ld, 0.0f, scores, len);
            for (int i = 0; i < nq; i++) {
                float *p = scores + (size_t)i * lds;
                int keys = causal ? first + i + 1 : len;
                if (hidden && first + i == len - 1) /* CoCa's CLS (last) row does not see the rows hidden from it */
                    for (int j = 0; j < keys; j++)
                        if (hidden[seq_start[s] + j]) p[j] = -INFINITY;
                float maxv = -INFINITY, sum = 0.0f;
                /* (a plain loop here compiled to a chain of scalar maxes,
                 * 30% of the attention's time: the reduction vectorises it) */
#pragma omp simd reduction(max : maxv)
                for (int j = 0; j < keys; j++) maxv = p[j] > maxv ? p[j] : maxv;
#pragma omp simd reduction(+ : sum)
                for (int j = 0; j < keys; j++) { /* (scale > 0 keeps the unscaled scores' max) */
                    p[j] = fast_expf((p[j] - maxv) * post);
                    sum += p[j];
                }
                float inv = 1.0f / sum;
                for (int j = 0; j < keys; j++) p[j] *= inv;
                for (int j = keys; j < len; j++) p[j] = 0.0f;
            }
            float *o = out + (size_t)(seq_start[s] + first) * D + h * hd;
            if (tiles)
                attention_values_bf16(o, D, scores, lds, base + 2 * D, ld, nq, len, hd, kernel_scratch);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hd, len, 1.0f, scores, len, base + 2 * D,
                            ld, 0.0f, o, D);
        }
    }
}

double softmax_row(float *x, int n) {
    float maxv = -INFINITY, sum = 0.0f;
    for (int j = 0; j < n; j++) maxv = x[j] > maxv ? x[j] : maxv;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < n; j++) {
        x[j] = fast_expf(x[j] - maxv);
        sum += x[j];
    }
    float inv = 1.0f / sum;
    for (int j = 0; j < n; j++) x[j] *= inv;
    return log((double)sum) + maxv;
}

void attention_queries(float *out, int ldo, const float *q, int ldq, const float *k, const float *v, int ldkv, int nq,
                       int nk, int D, int heads, float *scores) {
    attention_queries_keep(out, ldo, q, ldq, k, v, ldkv, nq, nk, D, heads, scores, false);
}

void attention_queries_keep(float *out, int ldo, const float *q, int ldq, const float *k, const float *v, int ldkv,
                            int nq, int nk, int D, int heads, float *probs, bool keep) {
    int hd = D / heads;
    float scale = 1.0f / sqrtf((float)hd);
    if (nq == 1) { /* one query (a decoder step, the MAP head): plain loops beat two tiny sgemm calls per head */
        for (int h = 0; h < heads; h++) {
            float *p = probs + (keep ? (size_t)h * nk : 0), *o = out + h * hd;
            const float *qh = q + h * hd;
            for (int j = 0; j < nk; j++) {
                const float *kj = k + (size_t)j * ldkv + h * hd;
                float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                for (int d = 0; d < hd; d++) dot += qh[d] * kj[d];
                p[j] = dot * scale;
            }
            softmax_row(p, nk);
            for (int d = 0; d < hd; d++) o[d] = 0.0f;
            for (int j = 0; j < nk; j++) {
                const float *vj = v + (size_t)j * ldkv + h * hd;
                float w = p[j];
#pragma omp simd
                for (int d = 0; d < hd; d++) o[d] += w * vj[d];
            }
        }
        return;
    }
    for (int h = 0; h < heads; h++) {
        float *scores = probs + (keep ? (size_t)h * nq * nk : 0);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, hd, scale, q + h * hd, ldq, k + h * hd, ldkv, 0.0f,
                    scores, nk);
        for (int i = 0; i < nq; i++) {
            float *p = scores + (size_t)i * nk, maxv = -INFINITY, sum = 0.0f;
            for (int j = 0; j < nk; j++) maxv = p[j] > maxv ? p[j] : maxv;
            for (int j = 0; j < nk; j++) sum += p[j] = fast_expf(p[j] - maxv);
            float inv = 1.0f / sum;
            for (int j = 0; j < nk; j++) p[j] *= inv;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hd, nk, 1.0f, scores, nk, v + h * hd, ldkv, 0.0f,
                    out + h * hd, ldo);
    }
}

/* Backward of attention_queries from its kept probabilities P (per head [nq, nk]):
 *   dV += P^T dO,  dP = dO V^T,  dS = P (dP - rowsum(dP P)),  dQ = scale dS K,  dK += scale dS^T Q
 * dq (rows ldq apart) is overwritten; dk and dv (rows ldkv apart) are added into;
 * ds: nq * nk floats of work. */
void attention_queries_backward(float *dq, int ldq, float *dk, float *dv, int ldkv, const float *dout, int ldo,
                                const float *q, const float *k, const float *v, const float *probs, int nq, int nk,
                                int D, int heads, float *ds) {
    int hd = D / heads;
    float scale = 1.0f / sqrtf((float)hd);
    for (int h = 0; h < heads; h++) {
        const float *P = probs + (size_t)h * nq * nk, *dO = dout + h * hd;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, hd, nq, 1.0f, P, nk, dO, ldo, 1.0f, dv + h * hd, ldkv);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, hd, 1.0f, dO, ldo, v + h * hd, ldkv, 0.0f, ds, nk);
        for (int i = 0; i < nq; i++) {
            const float *p = P + (size_t)i * nk;
            float *d = ds + (size_t)i * nk, dot = 0.0f;
            for (int j = 0; j < nk; j++) dot += d[j] * p[j];
            for (int j = 0; j < nk; j++) d[j] = p[j] * (d[j] - dot);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hd, nk, scale, ds, nk, k + h * hd, ldkv, 0.0f,
                    dq + h * hd, ldq);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, hd, nq, scale, ds, nk, q + h * hd, ldq, 1.0f,
                    dk + h * hd, ldkv);
    }
}


size_t attention_backward_scratch(int max_len, int head_dim) {
    (void)head_dim;
    return ((size_t)max_len * max_len + 16) * (size_t)omp_get_max_threads();
}

/* Backward of attention_forward for every row, from the probabilities P it
 * kept. Per (sequence, head), with O = P V and S = scale Q K^T:
 *   dV = P^T dO,  dP = dO V^T,  dS = P (dP - rowsum(dP P)),
 *   dQ = scale dS K,  dK = scale dS^T Q
 * dqkv [T, 3D] is overwritten. */
void attention_backward(float *dqkv, const float *dout, const float *qkv, const float *probs,
                        const size_t *probs_offset, const int *seq_start, const int *seq_len, int n_seq, int D,
                        int heads, float *scratch) {
    int hd = D / heads, ld = 3 * D;
    float scale = 1.0f / sqrtf((float)hd);
    int max_len = longest(seq_len, n_seq);
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int s = 0; s < n_seq; s++) {
        for (int h = 0; h < heads; h++) {
            int len = seq_len[s];
            const float *P = probs + probs_offset[s] + (size_t)h * len * len;
            const float *base = qkv + (size_t)seq_start[s] * ld + h * hd;
            float *dbase = dqkv + (size_t)seq_start[s] * ld + h * hd;
            const float *dO = dout + (size_t)seq_start[s] * D + h * hd;
            float *dS = scratch + ((size_t)max_len * max_len + 16) * omp_get_thread_num();
            /* dV = P^T dO */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, len, hd, len, 1.0f, P, len, dO, D, 0.0f,
                        dbase + 2 * D, ld);
            /* dP = dO V^T, then the softmax Jacobian in place */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, len, len, hd, 1.0f, dO, D, base + 2 * D, ld, 0.0f,
                        dS, len);
            for (int i = 0; i < len; i++) {
                const float *p = P + (size_t)i * len;
                float *d = dS + (size_t)i * len, dot = 0.0f;
                for (int j = 0; j < len; j++) dot += d[j] * p[j];
                for (int j = 0; j < len; j++) d[j] = p[j] * (d[j] - dot); /* masked p = 0 gives 0 */
            }
            /* dQ = scale dS K, dK = scale dS^T Q */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, len, hd, len, scale, dS, len, base + D, ld, 0.0f,
                        dbase, ld);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, len, hd, len, scale, dS, len, base, ld, 0.0f,
                        dbase + D, ld);
        }
    }
}

size_t conv2d_scratch(int C, int H, int W, int k, int stride, int pad) {
    int Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    return (size_t)C * k * k * Ho * Wo;
}

/* Convolution as one GEMM per image: unfold the receptive fields into
 * columns (im2col), then y[Cout, Ho*Wo] = w[Cout, C*k*k] · cols. A 1x1
 * stride-1 convolution needs no unfolding. */
void conv2d_forward(float *y, const float *x, const float *w, int N, int C, int H, int W, int Cout,
                    int k, int stride, int pad, float *scratch) {
    int Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    int K = C * k * k, P = Ho * Wo;
    for (int n = 0; n < N; n++) {
        const float *xn = x + (size_t)n * C * H * W;
        const float *cols = xn;
        if (!(k == 1 && stride == 1 && pad == 0)) {
#pragma omp parallel for if ((size_t)K * P > 65536)
            for (int r = 0; r < K; r++) {
                int c = r / (k * k), ky = r / k % k, kx = r % k;
                float *dst = scratch + (size_t)r * P;
                for (int oy = 0; oy < Ho; oy++) {
                    int iy = oy * stride - pad + ky;
                    for (int ox = 0; ox < Wo; ox++) {
                        int ix = ox * stride - pad + kx;
                        dst[oy * Wo + ox] = (iy >= 0 && iy < H && ix >= 0 && ix < W)
                                                ? xn[((size_t)c * H + iy) * W + ix]
                                                : 0.0f;
                    }
                }
            }
            cols = scratch;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Cout, P, K, 1.0f, w, K, cols, P, 0.0f,
                    y + (size_t)n * Cout * P, P);
    }
}

/* Eval-mode BatchNorm2d: (x - mean) / sqrt(var + eps) * w + b. */
void batchnorm_forward(float *x, const float *w, const float *b, const float *mean,
                       const float *var, int N, int C, int HW, bool relu) {
#pragma omp parallel for collapse(2) if ((size_t)N * C * HW > 65536)
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            float s = w[c] / sqrtf(var[c] + 1e-5f), t = b[c] - mean[c] * s;
            float *p = x + ((size_t)n * C + c) * HW;
            for (int i = 0; i < HW; i++) {
                float v = p[i] * s + t;
                p[i] = relu && v < 0.0f ? 0.0f : v;
            }
        }
}

void avgpool_forward(float *y, const float *x, int N, int C, int H, int W, int k) {
    int Ho = H / k, Wo = W / k;
    float inv = 1.0f / (float)(k * k);
#pragma omp parallel for collapse(2) if ((size_t)N * C * H * W > 65536)
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            const float *src = x + ((size_t)n * C + c) * H * W;
            float *dst = y + ((size_t)n * C + c) * Ho * Wo;
            for (int oy = 0; oy < Ho; oy++)
                for (int ox = 0; ox < Wo; ox++) {
                    float s = 0.0f;
                    for (int dy = 0; dy < k; dy++)
                        for (int dx = 0; dx < k; dx++) s += src[(oy * k + dy) * W + ox * k + dx];
                    dst[oy * Wo + ox] = s * inv;
                }
        }
}

void adapter_forward(float *out, float *hid, float *a, const float *f, const float *W1, const float *W2, float ratio,
                     int n, int E, int h) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, h, E, 1.0f, f, E, W1, E, 0.0f, hid, h);
    relu_forward(hid, (size_t)n * h);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, E, h, 1.0f, hid, h, W2, h, 0.0f, a, E);
    relu_forward(a, (size_t)n * E);
    for (size_t i = 0; i < (size_t)n * E; i++) out[i] = ratio * a[i] + (1.0f - ratio) * f[i];
}

/* d a = ratio dout, masked by a > 0; dW2 += d^T hid; d hid = d W2, masked
 * by hid > 0; dW1 += d hid^T f; df = (1 - ratio) dout + d hid W1. */
void adapter_backward(float *df, float *dW1, float *dW2, const float *dout, const float *f, const float *hid,
                      const float *a, const float *W1, const float *W2, float ratio, int n, int E, int h) {
    float *da = malloc(((size_t)n * E + (size_t)n * h) * sizeof *da), *dh = da ? da + (size_t)n * E : NULL;
    if (!da) return; /* callers check finite gradients; an empty step is caught there */
    for (size_t i = 0; i < (size_t)n * E; i++) da[i] = a[i] > 0 ? ratio * dout[i] : 0.0f;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, E, h, n, 1.0f, da, E, hid, h, 1.0f, dW2, h);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, h, E, 1.0f, da, E, W2, h, 0.0f, dh, h);
    for (size_t i = 0; i < (size_t)n * h; i++) dh[i] = hid[i] > 0 ? dh[i] : 0.0f;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, h, E, n, 1.0f, dh, h, f, E, 1.0f, dW1, E);
    if (df) {
        for (size_t i = 0; i < (size_t)n * E; i++) df[i] = (1.0f - ratio) * dout[i];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, E, h, 1.0f, dh, h, W1, E, 1.0f, df, E);
    }
    free(da);
}
