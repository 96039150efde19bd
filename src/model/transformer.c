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

#include <stdio.h>
#include <string.h>

size_t transformer_scratch(int T, int D, int H, int max_len, int heads, int n_seq) {
    /* ln, qkv (3), att, tmp: 6 T D; hid: T H; the pruned last block: 2 n D + n H */
    return (size_t)T * D * 6 + (size_t)T * H + (size_t)n_seq * (D * 2 + H) + attention_scratch(max_len, D / heads) +
           lowp_scratch(T, H > D ? H : D, H > D ? H : D) + 12 * 16;
}

void model_tap(const clipc_model *m, const char *name, const float *x, int rows, int cols) {
    if (m->tap) m->tap(m->tap_ctx, name, x, rows, cols);
}

tower_spec vision_tower_spec(const clipc_model *m) {
    const clipc_config *c = &m->cfg;
    return (tower_spec){m->L.v_blocks, c->vision_layers, c->vision_width, c->vision_heads, c->vision_mlp_width,
                        c->vision_activation, c->vision_ln_eps, false, "visual.transformer."};
}

tower_spec text_tower_spec(const clipc_model *m) {
    const clipc_config *c = &m->cfg;
    return (tower_spec){m->L.t_blocks, c->text_layers, c->text_width, c->text_heads, c->text_mlp_width,
                        c->activation, c->text_ln_eps, true, "transformer."};
}

/* x [n, D] += gamma * y (a LayerScale residual branch), rows ldx apart. */
static void add_scaled(float *x, int ldx, const float *y, const float *gamma, int n, int D) {
#pragma omp parallel for if ((size_t)n * D > 65536)
    for (int i = 0; i < n; i++)
        for (int d = 0; d < D; d++) x[(size_t)i * ldx + d] += gamma[d] * y[(size_t)i * D + d];
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

/* One full block over all T rows, in place on x. */
static void block_forward(const clipc_model *m, const tower_spec *t, const block_offsets *b, float *x,
                          const packing *pk, float *ln, float *qkv, float *att, float *hid, float *tmp, float *scratch,
                          float *ws, bool tap_sublayers) {
    const float *P = m->params;
    int T = pk->total, D = t->D, H = t->H;
    char name[128];
    layernorm_forward(ln, x, P + b->ln1_w, P + b->ln1_b, T, D, t->eps);
    model_gemm(m, qkv, 3 * D, ln, D, b->qkv_w, P + b->qkv_b, T, D, 3 * D, false, -1, ws);
    attention_forward(att, qkv, pk->start, pk->len, NULL, pk->n_seq, D, t->heads, t->causal, scratch, NULL, NULL);
    if (tap_sublayers) { /* block 0's sub-layer outputs, for the reference tests */
        model_tap(m, (snprintf(name, sizeof name, "%sresblocks.0.ln_1", t->prefix), name), ln, T, D);
        model_gemm(m, ln, D, att, D, b->out_w, P + b->out_b, T, D, D, false, -1, ws);
        model_tap(m, (snprintf(name, sizeof name, "%sresblocks.0.attn", t->prefix), name), ln, T, D);
    }
    attention_out(m, b, x, att, tmp, T, D, ws);
    layernorm_forward(ln, x, P + b->ln2_w, P + b->ln2_b, T, D, t->eps);
    if (tap_sublayers) { /* block 0's MLP in steps: the reference taps c_fc before the activation */
        model_gemm(m, hid, H, ln, D, b->fc_w, P + b->fc_b, T, D, H, false, -1, ws);
        model_tap(m, (snprintf(name, sizeof name, "%sresblocks.0.ln_2", t->prefix), name), ln, T, D);
        model_tap(m, (snprintf(name, sizeof name, "%sresblocks.0.mlp.c_fc", t->prefix), name), hid, T, H);
        activation_forward(hid, (size_t)T * H, t->act);
        model_gemm(m, tmp, D, hid, H, b->proj_w, P + b->proj_b, T, H, D, false, -1, ws);
        model_tap(m, (snprintf(name, sizeof name, "%sresblocks.0.mlp", t->prefix), name), tmp, T, D);
        if (b->ls2 == (size_t)-1)
            model_gemm(m, x, D, hid, H, b->proj_w, P + b->proj_b, T, H, D, true, -1, ws);
        else
            add_scaled(x, D, tmp, P + b->ls2, T, D);
        return;
    }
    mlp_out(m, t, b, x, ln, hid, tmp, T, ws);
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
    attention_forward(att, qkv, pk->start, pk->len, pool_row, n, D, t->heads, t->causal, scratch, NULL, NULL);
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
    /* With a debug tap every row of every block is wanted: no pruning. */
    int full = m->tap ? t->layers : t->layers - 1;
    char name[128];
    for (int l = 0; l < full; l++) {
        block_forward(m, t, &t->blocks[l], x, pk, ln, qkv, att, hid, tmp, scratch, ws, m->tap && l == 0);
        if (m->tap) model_tap(m, (snprintf(name, sizeof name, "%sresblocks.%d", t->prefix, l), name), x, T, D);
    }
    if (full == t->layers) {
        for (int s = 0; s < n; s++) memcpy(pooled + (size_t)s * D, x + (size_t)pool_row[s] * D, (size_t)D * sizeof *x);
    } else {
        last_block_pooled(m, a, t, &t->blocks[t->layers - 1], x, pk, pool_row, pooled, ln, qkv, att, tmp, scratch, ws);
    }
}
