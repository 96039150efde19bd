/* resnet.c — OpenAI's ModifiedResNet image tower (RN50 and friends):
 *   stem:   three 3x3 convs (the first with stride 2), each BN + ReLU, then
 *           a 2x2 average pool;
 *   stages: Bottlenecks (1x1, 3x3, 1x1 convs) that stride by average pooling
 *           before the last conv, with an avgpool + 1x1 conv + BN shortcut;
 *   head:   attention pooling — the spatial mean queries all positions
 *           through one multi-head attention, then c_proj. */
#include "tower.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t resnet_scratch(const clipc_config *c, int n) {
    size_t w = (size_t)c->vision_width, R = (size_t)c->image_resolution;
    size_t act = (size_t)n * w * R * R / 4;                  /* largest activation */
    size_t cols = 9 * w * R * R / 8;                         /* largest im2col, one image */
    size_t E = w * 32, S = R / 32, tokens = (size_t)n * (S * S + 1);
    return 5 * act + cols + 5 * tokens * E + (size_t)n * E + attention_scratch((int)(S * S + 1), (int)(E / (size_t)c->vision_heads)) +
           lowp_scratch((int)tokens, (int)E, (int)E) + 12 * 16;
}

/* One Bottleneck: y = relu(bn3(conv3(pool(relu(bn2(conv2(relu(bn1(conv1 x))))))) + shortcut(x)) */
static void bottleneck(const clipc_model *m, const bottleneck_offsets *b, const float *x, float *y, int n,
                       int H, int W, float *t1, float *t2, float *t3, float *cols) {
    const float *P = m->params;
    int p = b->planes, s = b->stride, Ho = H / s, Wo = W / s;
    conv2d_forward(t1, x, P + b->conv1, n, b->inplanes, H, W, p, 1, 1, 0, cols);
    batchnorm_forward(t1, P + b->bn1.weight, P + b->bn1.bias, P + b->bn1.mean, P + b->bn1.var, n, p, H * W, true);
    conv2d_forward(t2, t1, P + b->conv2, n, p, H, W, p, 3, 1, 1, cols);
    batchnorm_forward(t2, P + b->bn2.weight, P + b->bn2.bias, P + b->bn2.mean, P + b->bn2.var, n, p, H * W, true);
    const float *pooled = t2;
    if (s > 1) {
        avgpool_forward(t1, t2, n, p, H, W, s);
        pooled = t1;
    }
    conv2d_forward(y, pooled, P + b->conv3, n, p, Ho, Wo, 4 * p, 1, 1, 0, cols);
    batchnorm_forward(y, P + b->bn3.weight, P + b->bn3.bias, P + b->bn3.mean, P + b->bn3.var, n, 4 * p, Ho * Wo, false);
    const float *identity = x;
    if (b->down_conv != (size_t)-1) {
        const float *src = x;
        if (s > 1) {
            avgpool_forward(t2, x, n, b->inplanes, H, W, s);
            src = t2;
        }
        conv2d_forward(t3, src, P + b->down_conv, n, b->inplanes, Ho, Wo, 4 * p, 1, 1, 0, cols);
        batchnorm_forward(t3, P + b->down_bn.weight, P + b->down_bn.bias, P + b->down_bn.mean,
                          P + b->down_bn.var, n, 4 * p, Ho * Wo, false);
        identity = t3;
    }
    size_t count = (size_t)n * 4 * p * Ho * Wo;
#pragma omp parallel for simd if (count > 65536)
    for (size_t i = 0; i < count; i++) {
        float v = y[i] + identity[i];
        y[i] = v > 0.0f ? v : 0.0f;
    }
}

/* AttentionPool2d: tokens = [mean; spatial positions] + positional_embedding;
 * only the mean token queries (attending over all tokens), so its q is the
 * only query projected, and the shared attention kernel runs that one row. */
static void attention_pool(const clipc_model *m, arena *a, const float *x, int n, int E, int S2, float *out) {
    const clipc_config *c = &m->cfg;
    const float *P = m->params;
    const model_layout *L = &m->L;
    int N = S2 + 1;
    float *tok = arena_alloc(a, (size_t)n * N * E);
    float *qkv = arena_alloc(a, (size_t)n * N * 3 * E);
    float *att = arena_alloc(a, (size_t)n * N * E);
    float *rows = arena_alloc(a, (size_t)n * E);
    float *scratch = arena_alloc(a, attention_scratch(N, E / c->vision_heads));
    float *ws = arena_alloc(a, lowp_scratch(n * N, E, E));
    int *start = malloc(3 * (size_t)n * sizeof *start);
    if (!start) return;
    int *len = start + n;
    const float *pos = P + L->ap_pos;
#pragma omp parallel for
    for (int i = 0; i < n; i++) {
        float *t = tok + (size_t)i * N * E;
        for (int e = 0; e < E; e++) {
            const float *ch = x + ((size_t)i * E + e) * S2;
            float sum = 0.0f;
            for (int p = 0; p < S2; p++) {
                t[(size_t)(p + 1) * E + e] = ch[p] + pos[(size_t)(p + 1) * E + e];
                sum += ch[p];
            }
            t[e] = sum / (float)S2 + pos[e];
        }
        start[i] = i * N;
        len[i] = N;
    }
    int T = n * N;
    model_gemm(m, qkv + E, 3 * E, tok, E, L->ap_k_w, P + L->ap_k_b, T, E, E, false, -1, ws);
    model_gemm(m, qkv + 2 * E, 3 * E, tok, E, L->ap_v_w, P + L->ap_v_b, T, E, E, false, -1, ws);
    model_gemm(m, qkv, 3 * E * N, tok, E * N, L->ap_q_w, P + L->ap_q_b, n, E, E, false, -1, ws);
    attention_forward(att, qkv, start, len, start, n, E, c->vision_heads, false, m->precision != CLIPC_FP32, scratch,
                      NULL, NULL, NULL);
    for (int i = 0; i < n; i++) memcpy(rows + (size_t)i * E, att + (size_t)i * N * E, (size_t)E * sizeof *rows);
    model_gemm(m, out, c->embed_dim, rows, E, L->ap_c_w, P + L->ap_c_b, n, E, c->embed_dim, false, -1, ws);
    free(start);
}

int resnet_forward(const clipc_model *m, arena *a, const float *pixels, int n, float *out) {
    const clipc_config *c = &m->cfg;
    const float *P = m->params;
    const model_layout *L = &m->L;
    int w = c->vision_width, R = c->image_resolution;
    size_t act = (size_t)n * w * R * R / 4;
    float *buf[5];
    for (int i = 0; i < 5; i++) buf[i] = arena_alloc(a, act);
    float *cols = arena_alloc(a, 9 * (size_t)w * R * R / 8);

    int H = R / 2;
    conv2d_forward(buf[0], pixels, P + L->r_conv[0], n, 3, R, R, w / 2, 3, 2, 1, cols);
    batchnorm_forward(buf[0], P + L->r_bn[0].weight, P + L->r_bn[0].bias, P + L->r_bn[0].mean, P + L->r_bn[0].var, n, w / 2, H * H, true);
    conv2d_forward(buf[1], buf[0], P + L->r_conv[1], n, w / 2, H, H, w / 2, 3, 1, 1, cols);
    batchnorm_forward(buf[1], P + L->r_bn[1].weight, P + L->r_bn[1].bias, P + L->r_bn[1].mean, P + L->r_bn[1].var, n, w / 2, H * H, true);
    conv2d_forward(buf[0], buf[1], P + L->r_conv[2], n, w / 2, H, H, w, 3, 1, 1, cols);
    batchnorm_forward(buf[0], P + L->r_bn[2].weight, P + L->r_bn[2].bias, P + L->r_bn[2].mean, P + L->r_bn[2].var, n, w, H * H, true);
    model_tap(m, "visual.stem.relu3", buf[0], n * w, H * H);
    avgpool_forward(buf[1], buf[0], n, w, H, H, 2);
    H /= 2;
    model_tap(m, "visual.stem.avgpool", buf[1], n * w, H * H);

    float *x = buf[1], *y = buf[0];
    int C = w;
    for (int bi = 0, stage = 0, j = 0; bi < L->r_block_count; bi++) {
        const bottleneck_offsets *b = &L->r_blocks[bi];
        bottleneck(m, b, x, y, n, H, H, buf[2], buf[3], buf[4], cols);
        H /= b->stride;
        C = 4 * b->planes;
        while (j >= c->vision_resnet_layers[stage]) {
            stage++;
            j = 0;
        }
        char name[64];
        snprintf(name, sizeof name, "visual.layer%d.%d", stage + 1, j++);
        model_tap(m, name, y, n * C, H * H);
        float *t = x;
        x = y;
        y = t;
    }
    attention_pool(m, a, x, n, C, H * H, out);
    model_tap(m, "visual.attnpool", out, n, c->embed_dim);
    return 0;
}
