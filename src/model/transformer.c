/* transformer.c — OpenAI's ResidualAttentionBlock stack, shared by the ViT
 * image tower and the text tower:
 *     x = x + ls_1 * out_proj(attention(ln_1(x)))
 *     x = x + ls_2 * c_proj(act(c_fc(ln_2(x))))
 * (ls_1, ls_2: OpenCLIP's LayerScale gains, where a model has them.)
 * Sequences are packed back to back ([T, D] rows, no padding), so the text
 * tower spends compute only on real tokens.
 *
 * Only one row per sequence is pooled (the class token, the EOT token), so
 * the last block computes its keys and values for every row but its query,
 * out_proj and MLP for the pooled rows alone: identical outputs, about one
 * block's worth of work saved. */
#include "tower.h"

#include <cblas.h>
#include <stdio.h>
#include <string.h>

size_t transformer_scratch(int T, int D, int H, int max_len, int heads, int n_seq) {
    /* ln, qkv (3), att, tmp: 6 T D; hid: T H; the pruned last block: 2 n D + n H;
     * the widest GEMM: in_proj's 3 D outputs or the MLP's H */
    int widest = H > 3 * D ? H : 3 * D;
    return (size_t)T * D * 6 + (size_t)T * H + (size_t)n_seq * (D * 2 + H) + attention_scratch(max_len, D / heads) +
           lowp_scratch(T, widest, widest) + 12 * 16;
}

void model_tap(const clipc_model *m, const char *name, const float *x, int rows, int cols) {
    if (m->tap) m->tap(m->tap_ctx, name, x, rows, cols);
}

tower_spec vision_tower_spec(const clipc_model *m) {
    const clipc_config *c = &m->cfg;
    return (tower_spec){m->L.v_blocks, c->vision_layers, c->vision_width, c->vision_heads, c->vision_mlp_width,
                        c->vision_activation, c->vision_ln_eps, false, "visual.transformer.", NULL};
}

tower_spec text_tower_spec(const clipc_model *m) {
    const clipc_config *c = &m->cfg;
    /* SigLIP's text tower has no causal mask: every position sees the padding too */
    return (tower_spec){m->L.t_blocks, c->text_layers, c->text_width, c->text_heads, c->text_mlp_width,
                        c->activation, c->text_ln_eps, c->family != CLIPC_SIGLIP, "transformer.", NULL};
}

/* x [n, D] += gamma * y (a LayerScale residual branch), rows ldx apart. */
static void add_scaled(float *x, int ldx, const float *y, const float *gamma, int n, int D) {
#pragma omp parallel for if ((size_t)n * D > 65536)
    for (int i = 0; i < n; i++)
        for (int d = 0; d < D; d++) x[(size_t)i * ldx + d] += (gamma ? gamma[d] : 1.0f) * y[(size_t)i * D + d];
}

/* The residual branch x += [ls *] out_proj(att) for n rows. */
static void attention_out(const clipc_model *m, const block_offsets *b, float *x, const float *att, float *tmp, int n,
                          int D, float *ws) {
    const float *P = m->params;
    if (b->ls1 == (size_t)-1) {
        model_gemm(m, x, D, att, D, b->out_w, P + b->out_b, n, D, D, true, -1, ws);
        return;
    }
    model_gemm(m, tmp, D, att, D, b->out_w, P + b->out_b, n, D, D, false, -1, ws);
    add_scaled(x, D, tmp, P + b->ls1, n, D);
}

/* The residual branch x += [ls *] mlp(ln) for n rows. */
static void mlp_out(const clipc_model *m, const tower_spec *t, const block_offsets *b, float *x, const float *ln,
                    float *hid, float *tmp, int n, float *ws) {
    const float *P = m->params;
    int D = t->D;
    if (b->ls2 == (size_t)-1) {
        model_mlp(m, x, ln, b->fc_w, P + b->fc_b, b->proj_w, P + b->proj_b, n, D, t->H, t->act, hid, ws);
        return;
    }
    memset(tmp, 0, (size_t)n * D * sizeof *tmp);
    model_mlp(m, tmp, ln, b->fc_w, P + b->fc_b, b->proj_w, P + b->proj_b, n, D, t->H, t->act, hid, ws);
    add_scaled(x, D, tmp, P + b->ls2, n, D);
}

/* y [n, out] (rows ldy apart) += scale (x A^T) B^T, keeping u = x A^T [n, r]. */
static void lora_forward(float *y, int ldy, const float *x, const lora_pair *p, float *u, int n, int in, int out,
                         int r, float scale) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, r, in, 1.0f, x, in, p->A, in, 0.0f, u, r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, r, scale, u, r, p->B, r, 1.0f, y, ldy);
}

/* y (rows ldy apart) (=|+=) x W^T + b [+ LoRA], W the matrix at w_off. */
static void linear_lora(const clipc_model *m, const tower_spec *t, const block_cache *k, int layer, int tg, float *y,
                        int ldy, const float *x, size_t w_off, const float *bias, int n, int in, int out,
                        bool accumulate, float *ws) {
    model_gemm(m, y, ldy, x, in, w_off, bias, n, in, out, accumulate, -1, ws);
    const lora_pair *p = lora_of(t, layer, tg);
    if (p) lora_forward(y, ldy, x, p, k->lora_u[tg], n, in, out, t->lora->rank, t->lora->scale);
}

void block_forward(const clipc_model *m, const tower_spec *t, int layer, const packing *pk, const block_cache *k,
                   float *x_out, float *tmp, float *scratch, float *ws, bool tap) {
    const block_offsets *b = &t->blocks[layer];
    const float *P = m->params;
    int T = pk->total, D = t->D, H = t->H;
    bool ls1 = b->ls1 != (size_t)-1, ls2 = b->ls2 != (size_t)-1;
    char name[128];
#define TAP(what, x, cols) \
    if (tap) model_tap(m, (snprintf(name, sizeof name, "%sresblocks.%d.%s", t->prefix, layer, what), name), x, T, cols)
    /* x_mid = x_in + [ls_1 *] out_proj(attention(ln_1(x_in))) */
    layernorm_forward(k->ln1, k->x_in, P + b->ln1_w, P + b->ln1_b, T, D, t->eps);
    TAP("ln_1", k->ln1, D);
    if (!lora_of(t, layer, LORA_Q) && !lora_of(t, layer, LORA_K) && !lora_of(t, layer, LORA_V))
        model_gemm(m, k->qkv, 3 * D, k->ln1, D, b->qkv_w, P + b->qkv_b, T, D, 3 * D, false, -1, ws);
    else
        for (int tg = LORA_Q; tg <= LORA_V; tg++) /* q, k, v: the row ranges of in_proj */
            linear_lora(m, t, k, layer, tg, k->qkv + tg * D, 3 * D, k->ln1, b->qkv_w + (size_t)tg * D * D,
                        P + b->qkv_b + tg * D, T, D, D, false, ws);
    attention_forward(k->att, k->qkv, pk->start, pk->len, NULL, pk->n_seq, D, t->heads, t->causal,
                      m->precision != CLIPC_FP32, scratch, k->probs,
                      pk->probs_offset, pk->hidden);
    if (k->x_mid != k->x_in) memcpy(k->x_mid, k->x_in, (size_t)T * D * sizeof *k->x_mid);
    if (ls1 || tap) {
        linear_lora(m, t, k, layer, LORA_OUT, tmp, D, k->att, b->out_w, P + b->out_b, T, D, D, false, ws);
        TAP("attn", tmp, D);
        add_scaled(k->x_mid, D, tmp, ls1 ? P + b->ls1 : NULL, T, D);
    } else {
        linear_lora(m, t, k, layer, LORA_OUT, k->x_mid, D, k->att, b->out_w, P + b->out_b, T, D, D, true, ws);
    }
    /* x_out = x_mid + [ls_2 *] c_proj(act(c_fc(ln_2(x_mid)))) */
    layernorm_forward(k->ln2, k->x_mid, P + b->ln2_w, P + b->ln2_b, T, D, t->eps);
    TAP("ln_2", k->ln2, D);
    if (x_out != k->x_mid) memcpy(x_out, k->x_mid, (size_t)T * D * sizeof *x_out);
    bool fused = k->fc_pre == k->fc_act && !tap && !lora_of(t, layer, LORA_FC) && !lora_of(t, layer, LORA_PROJ);
    if (fused) { /* inference: the activation inside the GEMM, the hidden layer at the GEMMs' precision */
        mlp_out(m, t, b, x_out, k->ln2, k->fc_act, tmp, T, ws);
        return;
    }
    linear_lora(m, t, k, layer, LORA_FC, k->fc_pre, H, k->ln2, b->fc_w, P + b->fc_b, T, D, H, false, ws);
    TAP("mlp.c_fc", k->fc_pre, H); /* the reference taps c_fc before the activation */
    if (k->fc_act != k->fc_pre) memcpy(k->fc_act, k->fc_pre, (size_t)T * H * sizeof *k->fc_act);
    activation_forward(k->fc_act, (size_t)T * H, t->act);
    if (ls2 || tap) {
        linear_lora(m, t, k, layer, LORA_PROJ, tmp, D, k->fc_act, b->proj_w, P + b->proj_b, T, H, D, false, ws);
        TAP("mlp", tmp, D);
        add_scaled(x_out, D, tmp, ls2 ? P + b->ls2 : NULL, T, D);
    } else {
        linear_lora(m, t, k, layer, LORA_PROJ, x_out, D, k->fc_act, b->proj_w, P + b->proj_b, T, H, D, true, ws);
    }
#undef TAP
}

/* The last block, computed for the pooled rows only; writes pooled [n, D]. */
static void last_block_pooled(const clipc_model *m, arena *a, const tower_spec *t, const block_offsets *b,
                              const float *x, const packing *pk, const int *pool_row, float *pooled, float *ln,
                              float *qkv, float *att, float *tmp, float *scratch, float *ws) {
    const float *P = m->params;
    int T = pk->total, n = pk->n_seq, D = t->D;
    float *rows = arena_alloc(a, (size_t)n * D), *q = arena_alloc(a, (size_t)n * D);
    float *hid = arena_alloc(a, (size_t)n * t->H);
    layernorm_forward(ln, x, P + b->ln1_w, P + b->ln1_b, T, D, t->eps);
    /* keys and values of every row: rows D..3D of in_proj */
    model_gemm(m, qkv + D, 3 * D, ln, D, b->qkv_w + (size_t)D * D, P + b->qkv_b + D, T, D, 2 * D, false, -1, ws);
    for (int s = 0; s < n; s++) memcpy(rows + (size_t)s * D, ln + (size_t)pool_row[s] * D, (size_t)D * sizeof *rows);
    model_gemm(m, q, D, rows, D, b->qkv_w, P + b->qkv_b, n, D, D, false, -1, ws);
    for (int s = 0; s < n; s++) memcpy(qkv + (size_t)pool_row[s] * 3 * D, q + (size_t)s * D, (size_t)D * sizeof *q);
    attention_forward(att, qkv, pk->start, pk->len, pool_row, n, D, t->heads, t->causal, m->precision != CLIPC_FP32,
                      scratch, NULL, NULL, pk->hidden);
    for (int s = 0; s < n; s++) {
        memcpy(rows + (size_t)s * D, att + (size_t)pool_row[s] * D, (size_t)D * sizeof *rows);
        memcpy(pooled + (size_t)s * D, x + (size_t)pool_row[s] * D, (size_t)D * sizeof *pooled);
    }
    attention_out(m, b, pooled, rows, tmp, n, D, ws);
    layernorm_forward(rows, pooled, P + b->ln2_w, P + b->ln2_b, n, D, t->eps);
    mlp_out(m, t, b, pooled, rows, hid, tmp, n, ws);
}

void transformer_forward(const clipc_model *m, arena *a, const tower_spec *t, float *x, const packing *pk,
                         const int *pool_row, float *pooled) {
    int T = pk->total, n = pk->n_seq, D = t->D, H = t->H;
    float *ln = arena_alloc(a, (size_t)T * D);
    float *qkv = arena_alloc(a, (size_t)T * 3 * D);
    float *att = arena_alloc(a, (size_t)T * D);
    float *hid = arena_alloc(a, (size_t)T * H);
    float *tmp = arena_alloc(a, (size_t)T * D);
    float *scratch = arena_alloc(a, attention_scratch(pk->max_len, D / t->heads));
    float *ws = arena_alloc(a, lowp_scratch(T, H > D ? H : D, H > D ? H : D));
    /* With a debug tap, or no pool_row (every row is wanted: SigLIP's
     * image tower pools them all), no pruning. */
    int full = m->tap || !pool_row ? t->layers : t->layers - 1;
    char name[128];
    /* in place: the residual stream is x_in, x_mid and x_out; one LayerNorm
     * buffer serves both; fc_pre == fc_act fuses the MLP */
    block_cache k = {.x_in = x, .ln1 = ln, .qkv = qkv, .att = att, .x_mid = x, .ln2 = ln, .fc_pre = hid, .fc_act = hid};
    for (int l = 0; l < full; l++) {
        block_forward(m, t, l, pk, &k, x, tmp, scratch, ws, m->tap && l == 0);
        if (m->tap) model_tap(m, (snprintf(name, sizeof name, "%sresblocks.%d", t->prefix, l), name), x, T, D);
    }
    if (!pool_row) return;
    if (full == t->layers) {
        for (int s = 0; s < n; s++) memcpy(pooled + (size_t)s * D, x + (size_t)pool_row[s] * D, (size_t)D * sizeof *x);
    } else {
        last_block_pooled(m, a, t, &t->blocks[t->layers - 1], x, pk, pool_row, pooled, ln, qkv, att, tmp, scratch, ws);
    }
}
