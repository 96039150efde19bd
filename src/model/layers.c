/* layers.c — the kernels of a CLIP forward pass, each written plainly.
 * GEMMs go to BLAS (OpenBLAS); everything else is a loop over rows that
 * OpenMP splits across cores and the compiler vectorises. */
#include "../internal.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

/* y[n, out] (=|+=) x[n, in] · W[out, in]^T + b. Writing straight into the
 * residual stream (accumulate) saves a pass over memory per layer. */
void linear_forward(float *y, const float *x, const float *W, const float *b, int n, int in,
                    int out, bool accumulate) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, W, in,
                accumulate ? 1.0f : 0.0f, y, out);
    if (b) {
#pragma omp parallel for if ((size_t)n * out > 65536)
        for (int i = 0; i < n; i++)
            for (int j = 0; j < out; j++) y[(size_t)i * out + j] += b[j];
    }
}

/* y[n, out] = x[n, in] · W[in, out] — OpenAI stores proj matrices this way. */
void matmul_forward(float *y, const float *x, const float *W, int n, int in, int out) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, out, in, 1.0f, x, in, W, out, 0.0f, y,
                out);
}

/* LayerNorm over the last dimension, eps 1e-5 (nn.LayerNorm's default),
 * two-pass mean and variance as PyTorch computes them. */
void layernorm_forward(float *y, const float *x, const float *w, const float *b, int n, int dim) {
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
        float rstd = 1.0f / sqrtf(var / dim + 1e-5f);
        for (int j = 0; j < dim; j++) yi[j] = (xi[j] - mean) * rstd * w[j] + b[j];
    }
}

/* OpenAI's QuickGELU: x * sigmoid(1.702 x). */
void quick_gelu_forward(float *x, size_t n) {
#pragma omp parallel for simd if (n > 65536)
    for (size_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
}

/* The exact (erf) GELU of nn.GELU(): 0.5 x (1 + erf(x / sqrt 2)). */
void gelu_forward(float *x, size_t n) {
#pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

void relu_forward(float *x, size_t n) {
#pragma omp parallel for simd if (n > 65536)
    for (size_t i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

size_t attention_scratch(int max_len, int heads) {
    (void)heads;
    return (size_t)(max_len + 16) * (size_t)omp_get_max_threads();
}

/* softmax(q k^T / sqrt(d_head) + mask) v for every (sequence, head) pair, as
 * nn.MultiheadAttention computes it (q is scaled before the product). The
 * causal mask of the text tower is applied by stopping the key loop at the
 * query's own position. */
void attention_forward(float *out, const float *qkv, const int *seq_start, const int *seq_len,
                       int n_seq, int D, int heads, bool causal, float *scratch) {
    int hd = D / heads;
    float scale = 1.0f / sqrtf((float)hd);
    int max_len = 0;
    for (int s = 0; s < n_seq; s++) max_len = seq_len[s] > max_len ? seq_len[s] : max_len;
    size_t stride = 3 * (size_t)D;
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int s = 0; s < n_seq; s++) {
        for (int h = 0; h < heads; h++) {
            float *p = scratch + (size_t)(max_len + 16) * omp_get_thread_num();
            const float *base = qkv + (size_t)seq_start[s] * stride;
            int len = seq_len[s];
            for (int i = 0; i < len; i++) {
                const float *q = base + i * stride + h * hd;
                int keys = causal ? i + 1 : len;
                float maxv = -INFINITY;
                for (int j = 0; j < keys; j++) {
                    const float *k = base + j * stride + D + h * hd;
                    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                    for (int d = 0; d < hd; d++) dot += (q[d] * scale) * k[d];
                    p[j] = dot;
                    maxv = dot > maxv ? dot : maxv;
                }
                float sum = 0.0f;
                for (int j = 0; j < keys; j++) {
                    p[j] = expf(p[j] - maxv);
                    sum += p[j];
                }
                float inv = 1.0f / sum;
                float *o = out + (size_t)(seq_start[s] + i) * D + h * hd;
                for (int d = 0; d < hd; d++) o[d] = 0.0f;
                for (int j = 0; j < keys; j++) {
                    const float *v = base + j * stride + 2 * D + h * hd;
                    float pj = p[j] * inv;
#pragma omp simd
                    for (int d = 0; d < hd; d++) o[d] += pj * v[d];
                }
            }
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
