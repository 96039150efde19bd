/* vit.c — OpenAI's VisionTransformer image tower:
 *     patches = conv1(image)                      (stride = kernel = patch)
 *     x = [class_embedding; patches] + positional_embedding
 *     x = transformer(ln_pre(x))
 *     features = ln_post(x[class token]) @ proj */
#include "tower.h"

#include <stdlib.h>

/* conv1 as a GEMM (each patch unrolled in the weight's (c, ky, kx) order
 * into patches [n*G*G, 3*P*P], projected into emb [n*G*G, D]), then
 * x [n*S, D] = [class_embedding; patches] + positional_embedding. Shared
 * with training, which keeps patches for conv1's weight gradient. ws:
 * lowp_scratch(n*G*G, 3*P*P, D) floats (NULL at fp32). */
void vit_embed(const clipc_model *m, const float *pixels, int n, float *patches, float *emb, float *x, float *ws) {
    const clipc_config *c = &m->cfg;
    const float *Pm = m->params;
    int R = c->image_resolution, P = c->vision_patch_size, G = R / P, S = G * G + 1, D = c->vision_width;
    int K = 3 * P * P;
#pragma omp parallel for collapse(2)
    for (int i = 0; i < n; i++)
        for (int p = 0; p < G * G; p++) {
            int py = p / G, px = p % G;
            float *dst = patches + ((size_t)i * G * G + p) * K;
            for (int ch = 0; ch < 3; ch++)
                for (int ky = 0; ky < P; ky++)
                    for (int kx = 0; kx < P; kx++)
                        *dst++ = pixels[(((size_t)i * 3 + ch) * R + py * P + ky) * R + px * P + kx];
        }
    model_gemm(m, emb, D, patches, K, m->L.v_conv, NULL, n * G * G, K, D, false, -1, ws);
    model_tap(m, "visual.conv1", emb, n * G * G, D);
    const float *cls = Pm + m->L.v_class, *pos = Pm + m->L.v_pos;
#pragma omp parallel for
    for (int i = 0; i < n; i++) {
        float *row = x + (size_t)i * S * D;
        for (int d = 0; d < D; d++) row[d] = cls[d] + pos[d];
        for (int p = 0; p < G * G; p++)
            for (int d = 0; d < D; d++)
                row[(size_t)(p + 1) * D + d] = emb[((size_t)i * G * G + p) * D + d] + pos[(size_t)(p + 1) * D + d];
    }
}

size_t vit_scratch(const clipc_config *c, int n) {
    size_t G = (size_t)(c->image_resolution / c->vision_patch_size), S = G * G + 1, D = (size_t)c->vision_width;
    size_t P = (size_t)c->vision_patch_size, T = (size_t)n * S;
    return (size_t)n * G * G * 3 * P * P + (size_t)n * G * G * D + T * D + 2 * (size_t)n * D +
           transformer_scratch((int)T, (int)D, c->vision_mlp_width, (int)S, c->vision_heads, n) +
           lowp_scratch((int)(n * G * G), (int)(3 * P * P), (int)D) + 8 * 16;
}

int vit_forward(const clipc_model *m, arena *a, const float *pixels, int n, float *out) {
    const clipc_config *c = &m->cfg;
    const float *Pm = m->params;
    const model_layout *L = &m->L;
    int R = c->image_resolution, P = c->vision_patch_size, G = R / P, S = G * G + 1, D = c->vision_width;
    int K = 3 * P * P, T = n * S;
    int *start = malloc(3 * (size_t)n * sizeof *start);
    if (!start) return -1;
    int *len = start + n, *cls_row = start + 2 * n;
    for (int i = 0; i < n; i++) {
        start[i] = cls_row[i] = i * S; /* the class token leads each sequence */
        len[i] = S;
    }

    float *patches = arena_alloc(a, (size_t)n * G * G * K);
    float *emb = arena_alloc(a, (size_t)n * G * G * D);
    float *x = arena_alloc(a, (size_t)T * D);
    vit_embed(m, pixels, n, patches, emb, x, arena_alloc(a, lowp_scratch(n * G * G, K, D)));
    model_tap(m, "visual.embeddings", x, T, D);
    layernorm_forward(x, x, Pm + L->v_ln_pre_w, Pm + L->v_ln_pre_b, T, D, c->vision_ln_eps);
    model_tap(m, "visual.ln_pre", x, T, D);

    packing pk = {start, len, n, T, S, NULL};
    float *cls_rows = arena_alloc(a, (size_t)n * D);
    tower_spec t = vision_tower_spec(m);
    transformer_forward(m, a, &t, x, &pk, cls_row, cls_rows);
    layernorm_forward(cls_rows, cls_rows, Pm + L->v_ln_post_w, Pm + L->v_ln_post_b, n, D, c->vision_ln_eps);
    model_tap(m, "visual.ln_post", cls_rows, n, D);
    matmul_forward(out, cls_rows, Pm + L->v_proj, n, D, c->embed_dim);
    free(start);
    return 0;
}
