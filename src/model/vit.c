/* vit.c — OpenAI's VisionTransformer image tower:
 *     patches = conv1(image)                      (stride = kernel = patch)
 *     x = [class_embedding; patches] + positional_embedding
 *     x = transformer(ln_pre(x))
 *     features = ln_post(x[class token]) @ proj
 * and SigLIP's (Hugging Face SiglipVisionTransformer):
 *     x = conv1(image) + bias + positional_embedding        (no class token)
 *     x = ln_post(transformer(x))                           (no ln_pre)
 *     features = map_head(x)                                (no proj) */
#include "tower.h"

#include <math.h>
#include <stdlib.h>

/* Tokens per image: the patches, and OpenAI's class token. */
static int vit_tokens(const clipc_config *c) {
    int G = c->image_resolution / c->vision_patch_size;
    return G * G + (c->family == CLIPC_SIGLIP ? 0 : 1);
}

/* conv1 as a GEMM (each patch unrolled in the weight's (c, ky, kx) order
 * into patches [n*G*G, 3*P*P], projected into emb [n*G*G, D]), then
 * x [n*S, D] = [class_embedding; patches] + positional_embedding. Shared
 * with training, which keeps patches for conv1's weight gradient. ws:
 * lowp_scratch(n*G*G, 3*P*P, D) floats (NULL at fp32). */
void vit_embed(const clipc_model *m, const float *pixels, int n, float *patches, float *emb, float *x, float *ws) {
    const clipc_config *c = &m->cfg;
    const float *Pm = m->params;
    int R = c->image_resolution, P = c->vision_patch_size, G = R / P, S = vit_tokens(c), D = c->vision_width;
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
    if (c->family == CLIPC_SIGLIP) { /* x = patches W^T + bias + positional_embedding, straight into x */
        model_gemm(m, x, D, patches, K, m->L.v_conv, Pm + m->L.v_conv_b, n * G * G, K, D, false, -1, ws);
        model_tap(m, "visual.conv1", x, n * G * G, D);
        const float *pos = Pm + m->L.v_pos;
#pragma omp parallel for
        for (int i = 0; i < n; i++)
            for (size_t j = 0; j < (size_t)S * D; j++) x[(size_t)i * S * D + j] += pos[j];
        return;
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
    size_t G = (size_t)(c->image_resolution / c->vision_patch_size), S = (size_t)vit_tokens(c), D = (size_t)c->vision_width;
    size_t P = (size_t)c->vision_patch_size, T = (size_t)n * S, H = (size_t)c->vision_mlp_width;
    size_t head = c->family == CLIPC_SIGLIP ? T * 2 * D + D + (size_t)n * (3 * D + H) + (size_t)n * c->vision_heads * S +
                                                  lowp_scratch((int)T, (int)(H > 2 * D ? H : 2 * D), (int)(H > 2 * D ? H : 2 * D))
                                            : 0;
    if (c->family == CLIPC_COCA) head = coca_pool_scratch(c, n);
    return (size_t)n * G * G * 3 * P * P + (size_t)n * G * G * D + T * D + 2 * (size_t)n * D +
           transformer_scratch((int)T, (int)D, c->vision_mlp_width, (int)S, c->vision_heads, n) +
           lowp_scratch((int)(n * G * G), (int)(3 * P * P), (int)D) + head + 16 * 16;
}

/* SigLIP's MultiheadAttentionPoolingHead over x [n * S, D] (ln_post's output),
 * Hugging Face's SiglipMultiheadAttentionPoolingHead:
 *     h   = out_proj(attention(q = probe, k = v = x))      one query per image
 *     out = h + mlp(layernorm(h))                          [n, D] */
static void map_head(const clipc_model *m, arena *a, const float *x, int n, int S, float *out) {
    const clipc_config *c = &m->cfg;
    const float *P = m->params;
    const block_offsets *b = &m->L.v_head;
    int D = c->vision_width, heads = c->vision_heads, hd = D / heads, H = c->vision_mlp_width, T = n * S;
    int widest = H > 2 * D ? H : 2 * D;
    float *kv = arena_alloc(a, (size_t)T * 2 * D), *q = arena_alloc(a, (size_t)D);
    float *att = arena_alloc(a, (size_t)n * D), *ln = arena_alloc(a, (size_t)n * D), *hid = arena_alloc(a, (size_t)n * H);
    float *probs = arena_alloc(a, (size_t)n * heads * S), *ws = arena_alloc(a, lowp_scratch(T, widest, widest));
    /* keys and values: rows D..3D of in_proj over every token; the query: the probe's rows 0..D */
    model_gemm(m, kv, 2 * D, x, D, b->qkv_w + (size_t)D * D, P + b->qkv_b + D, T, D, 2 * D, false, -1, ws);
    model_gemm(m, q, D, P + m->L.v_probe, D, b->qkv_w, P + b->qkv_b, 1, D, D, false, -1, ws);
    (void)hd;
#pragma omp parallel for
    for (int i = 0; i < n; i++) {
        const float *keys = kv + (size_t)i * S * 2 * D;
        attention_queries(att + (size_t)i * D, D, q, D, keys, keys + D, 2 * D, 1, S, D, heads,
                          probs + (size_t)i * heads * S);
    }
    model_gemm(m, out, D, att, D, b->out_w, P + b->out_b, n, D, D, false, -1, ws);
    model_tap(m, "visual.head.attn", out, n, D);
    layernorm_forward(ln, out, P + m->L.v_head_ln_w, P + m->L.v_head_ln_b, n, D, c->vision_ln_eps);
    model_mlp(m, out, ln, b->fc_w, P + b->fc_b, b->proj_w, P + b->proj_b, n, D, H, c->vision_activation, hid, ws);
}

static int siglip_vit_forward(const clipc_model *m, arena *a, const float *pixels, int n, float *out) {
    const clipc_config *c = &m->cfg;
    const model_layout *L = &m->L;
    int P = c->vision_patch_size, G = c->image_resolution / P, S = G * G, D = c->vision_width, K = 3 * P * P, T = n * S;
    int *start = malloc(2 * (size_t)n * sizeof *start);
    if (!start) return -1;
    int *len = start + n;
    for (int i = 0; i < n; i++) start[i] = i * S, len[i] = S;
    float *patches = arena_alloc(a, (size_t)T * K), *x = arena_alloc(a, (size_t)T * D);
    vit_embed(m, pixels, n, patches, NULL, x, arena_alloc(a, lowp_scratch(T, K, D)));
    model_tap(m, "visual.embeddings", x, T, D);
    packing pk = {start, len, n, T, S, NULL, NULL};
    tower_spec t = vision_tower_spec(m);
    transformer_forward(m, a, &t, x, &pk, NULL, NULL);
    layernorm_forward(x, x, m->params + L->v_ln_post_w, m->params + L->v_ln_post_b, T, D, c->vision_ln_eps);
    model_tap(m, "visual.ln_post", x, T, D);
    map_head(m, a, x, n, S, out);
    free(start);
    return 0;
}

/* CoCa's AttentionalPooler over x [n * S, W] (OpenCLIP's, "the original CoCa
 * setup"): Q learned queries attend over every token of each image,
 *     y = out_proj(attention(q = ln_q(query), k = v = ln_k(x)))     [n * Q, E]
 * then ln_post; the first query's row, @ proj, is the image embedding, the
 * other Q - 1 rows (tokens, [n, Q - 1, E], or NULL) are what the decoder
 * attends to. */
static void coca_pool(const clipc_model *m, arena *a, const float *x, int n, int S, float *out, float *tokens) {
    const clipc_config *c = &m->cfg;
    const model_layout *L = &m->L;
    const float *P = m->params;
    int W = c->vision_width, E = c->embed_dim, Q = c->pool_queries, T = n * S;
    float *lnk = arena_alloc(a, (size_t)T * W), *kv = arena_alloc(a, (size_t)T * 2 * E);
    float *lnq = arena_alloc(a, (size_t)Q * E), *q = arena_alloc(a, (size_t)Q * E);
    float *att = arena_alloc(a, (size_t)n * Q * E), *y = arena_alloc(a, (size_t)n * Q * E);
    float *scores = arena_alloc(a, (size_t)n * Q * S);
    float *ws = arena_alloc(a, lowp_scratch(T, W > E ? W : E, 2 * E));
    layernorm_forward(lnk, x, P + L->cp_lnk_w, P + L->cp_lnk_b, T, W, c->vision_ln_eps);
    /* k_proj and v_proj are separate [E, W] matrices (kdim = vdim = W), so two GEMMs into one kv buffer */
    model_gemm(m, kv, 2 * E, lnk, W, L->cp_k_w, P + L->cp_in_b + E, T, W, E, false, -1, ws);
    model_gemm(m, kv + E, 2 * E, lnk, W, L->cp_v_w, P + L->cp_in_b + 2 * E, T, W, E, false, -1, ws);
    layernorm_forward(lnq, P + L->cp_query, P + L->cp_lnq_w, P + L->cp_lnq_b, Q, E, c->vision_ln_eps);
    model_gemm(m, q, E, lnq, E, L->cp_q_w, P + L->cp_in_b, Q, E, E, false, -1, ws);
#pragma omp parallel for
    for (int i = 0; i < n; i++) {
        const float *keys = kv + (size_t)i * S * 2 * E;
        attention_queries(att + (size_t)i * Q * E, E, q, E, keys, keys + E, 2 * E, Q, S, E, c->pool_heads,
                          scores + (size_t)i * Q * S);
    }
    model_gemm(m, y, E, att, E, L->cp_out_w, P + L->cp_out_b, n * Q, E, E, false, -1, ws);
    layernorm_forward(y, y, P + L->v_ln_post_w, P + L->v_ln_post_b, n * Q, E, c->vision_ln_eps);
    model_tap(m, "visual.attn_pool", y, n * Q, E);
    for (int i = 0; i < n; i++) {
        matmul_forward(out + (size_t)i * E, y + (size_t)i * Q * E, P + L->v_proj, 1, E, E);
        if (tokens) memcpy(tokens + (size_t)i * (Q - 1) * E, y + ((size_t)i * Q + 1) * E, (size_t)(Q - 1) * E * sizeof *y);
    }
}

size_t coca_pool_scratch(const clipc_config *c, int n) {
    size_t S = (size_t)vit_tokens(c), T = (size_t)n * S, W = (size_t)c->vision_width, E = (size_t)c->embed_dim;
    size_t Q = (size_t)c->pool_queries;
    return T * W + T * 2 * E + 2 * Q * E + 2 * (size_t)n * Q * E + (size_t)n * Q * S +
           lowp_scratch((int)T, (int)(W > E ? W : E), (int)(2 * E)) + 8 * 16;
}

int vit_forward_tokens(const clipc_model *m, arena *a, const float *pixels, int n, float *out, float *tokens) {
    const clipc_config *c = &m->cfg;
    const float *Pm = m->params;
    int R = c->image_resolution, P = c->vision_patch_size, G = R / P, S = G * G + 1, D = c->vision_width;
    int K = 3 * P * P, T = n * S;
    int *start = malloc(2 * (size_t)n * sizeof *start);
    if (!start) return -1;
    int *len = start + n;
    for (int i = 0; i < n; i++) start[i] = i * S, len[i] = S;
    float *patches = arena_alloc(a, (size_t)n * G * G * K), *emb = arena_alloc(a, (size_t)n * G * G * D);
    float *x = arena_alloc(a, (size_t)T * D);
    vit_embed(m, pixels, n, patches, emb, x, arena_alloc(a, lowp_scratch(n * G * G, K, D)));
    layernorm_forward(x, x, Pm + m->L.v_ln_pre_w, Pm + m->L.v_ln_pre_b, T, D, c->vision_ln_eps);
    packing pk = {start, len, n, T, S, NULL, NULL};
    tower_spec t = vision_tower_spec(m);
    transformer_forward(m, a, &t, x, &pk, NULL, NULL); /* the pooler reads every token */
    coca_pool(m, a, x, n, S, out, tokens);
    free(start);
    return 0;
}

int vit_forward(const clipc_model *m, arena *a, const float *pixels, int n, float *out) {
    const clipc_config *c = &m->cfg;
    if (c->family == CLIPC_SIGLIP) return siglip_vit_forward(m, a, pixels, n, out);
    if (c->family == CLIPC_COCA) return vit_forward_tokens(m, a, pixels, n, out, NULL);
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

    packing pk = {start, len, n, T, S, NULL, NULL};
    float *cls_rows = arena_alloc(a, (size_t)n * D);
    tower_spec t = vision_tower_spec(m);
    transformer_forward(m, a, &t, x, &pk, cls_row, cls_rows);
    layernorm_forward(cls_rows, cls_rows, Pm + L->v_ln_post_w, Pm + L->v_ln_post_b, n, D, c->vision_ln_eps);
    model_tap(m, "visual.ln_post", cls_rows, n, D);
    matmul_forward(out, cls_rows, Pm + L->v_proj, n, D, c->embed_dim);
    free(start);
    return 0;
}
