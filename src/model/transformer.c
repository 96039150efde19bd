/* transformer.c — OpenAI's ResidualAttentionBlock stack, shared by the ViT
 * image tower and the text tower:
 *     x = x + out_proj(attention(ln_1(x)))
 *     x = x + c_proj(act(c_fc(ln_2(x))))
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

size_t transformer_scratch(int T, int D, int max_len, int heads, int n_seq) {
    return (size_t)T * D * 9 + (size_t)n_seq * D * 8 + attention_scratch(max_len, D / heads) +
           lowp_scratch(T, 4 * D, 4 * D) + 12 * 16;
}

void model_tap(const clipc_model *m, const char *name, const float *x, int rows, int cols) {
    if (m->tap) m->tap(m->tap_ctx, name, x, rows, cols);
}

/* One full block over all T rows, in place on x. */
static void block_forward(const clipc_model *m, const block_offsets *b, int D, int heads, bool causal, float *x,
                          const packing *pk, float *ln, float *qkv, float *att, float *hid, float *scratch,
                          float *ws, const char *tap_prefix) {
    const float *P = m->params;
    int T = pk->total;
    char name[128];
    layernorm_forward(ln, x, P + b->ln1_w, P + b->ln1_b, T, D);
    model_gemm(m, qkv, 3 * D, ln, D, b->qkv_w, P + b->qkv_b, T, D, 3 * D, false, -1, ws);
    attention_forward(att, qkv, pk->start, pk->len, NULL, pk->n_seq, D, heads, causal, scratch, NULL, NULL);
    if (tap_prefix) { /* block 0's sub-layer outputs, for the reference tests */
        model_tap(m, (snprintf(name, sizeof name, "%sresblocks.0.ln_1", tap_prefix), name), ln, T, D);
        model_gemm(m, ln, D, att, D, b->out_w, P + b->out_b, T, D, D, false, -1, ws);
        model_tap(m, (snprintf(name, sizeof name, "%sresblocks.0.attn", tap_prefix), name), ln, T, D);
    }
    model_gemm(m, x, D, att, D, b->out_w, P + b->out_b, T, D, D, true, -1, ws);
    layernorm_forward(ln, x, P + b->ln2_w, P + b->ln2_b, T, D);
    if (tap_prefix) { /* block 0's MLP in steps: the reference taps c_fc before the activation */
        model_gemm(m, hid, 4 * D, ln, D, b->fc_w, P + b->fc_b, T, D, 4 * D, false, -1, ws);
        model_tap(m, (snprintf(name, sizeof name, "%sresblocks.0.ln_2", tap_prefix), name), ln, T, D);
        model_tap(m, (snprintf(name, sizeof name, "%sresblocks.0.mlp.c_fc", tap_prefix), name), hid, T, 4 * D);
        activation_forward(hid, (size_t)T * 4 * D, m->cfg.activation);
        model_gemm(m, ln, D, hid, 4 * D, b->proj_w, P + b->proj_b, T, 4 * D, D, false, -1, ws);
        model_tap(m, (snprintf(name, sizeof name, "%sresblocks.0.mlp", tap_prefix), name), ln, T, D);
        model_gemm(m, x, D, hid, 4 * D, b->proj_w, P + b->proj_b, T, 4 * D, D, true, -1, ws);
        return;
    }
    model_mlp(m, x, ln, b->fc_w, P + b->fc_b, b->proj_w, P + b->proj_b, T, D, 4 * D, hid, ws);
}

/* The last block, computed for the pooled rows only; writes pooled [n, D]. */
static void last_block_pooled(const clipc_model *m, arena *a, const block_offsets *b, int D, int heads, bool causal,
                              const float *x, const packing *pk, const int *pool_row, float *pooled,
                              float *ln, float *qkv, float *att, float *scratch, float *ws) {
    const float *P = m->params;
    int T = pk->total, n = pk->n_seq;
    float *rows = arena_alloc(a, (size_t)n * D), *q = arena_alloc(a, (size_t)n * D);
    float *hid = arena_alloc(a, (size_t)n * 4 * D);
    layernorm_forward(ln, x, P + b->ln1_w, P + b->ln1_b, T, D);
    /* keys and values of every row: rows D..3D of in_proj */
    model_gemm(m, qkv + D, 3 * D, ln, D, b->qkv_w + (size_t)D * D, P + b->qkv_b + D, T, D, 2 * D, false, -1, ws);
    for (int s = 0; s < n; s++) memcpy(rows + (size_t)s * D, ln + (size_t)pool_row[s] * D, (size_t)D * sizeof *rows);
    model_gemm(m, q, D, rows, D, b->qkv_w, P + b->qkv_b, n, D, D, false, -1, ws);
    for (int s = 0; s < n; s++) memcpy(qkv + (size_t)pool_row[s] * 3 * D, q + (size_t)s * D, (size_t)D * sizeof *q);
    attention_forward(att, qkv, pk->start, pk->len, pool_row, n, D, heads, causal, scratch, NULL, NULL);
    for (int s = 0; s < n; s++) {
        memcpy(rows + (size_t)s * D, att + (size_t)pool_row[s] * D, (size_t)D * sizeof *rows);
        memcpy(pooled + (size_t)s * D, x + (size_t)pool_row[s] * D, (size_t)D * sizeof *pooled);
    }
    model_gemm(m, pooled, D, rows, D, b->out_w, P + b->out_b, n, D, D, true, -1, ws);
    layernorm_forward(rows, pooled, P + b->ln2_w, P + b->ln2_b, n, D);
    model_mlp(m, pooled, rows, b->fc_w, P + b->fc_b, b->proj_w, P + b->proj_b, n, D, 4 * D, hid, ws);
}

void transformer_forward(const clipc_model *m, arena *a, const block_offsets *blocks, int layers, int D, int heads, bool causal,
                         float *x, const packing *pk, const int *pool_row, float *pooled, const char *prefix) {
    int T = pk->total, n = pk->n_seq;
    float *ln = arena_alloc(a, (size_t)T * D);
    float *qkv = arena_alloc(a, (size_t)T * 3 * D);
    float *att = arena_alloc(a, (size_t)T * D);
    float *hid = arena_alloc(a, (size_t)T * 4 * D);
    float *scratch = arena_alloc(a, attention_scratch(pk->max_len, D / heads));
    float *ws = arena_alloc(a, lowp_scratch(T, 4 * D, 4 * D));
    /* With a debug tap every row of every block is wanted: no pruning. */
    int full = m->tap ? layers : layers - 1;
    char name[128];
    for (int l = 0; l < full; l++) {
        block_forward(m, &blocks[l], D, heads, causal, x, pk, ln, qkv, att, hid, scratch, ws,
                      m->tap && l == 0 ? prefix : NULL);
        if (m->tap) model_tap(m, (snprintf(name, sizeof name, "%sresblocks.%d", prefix, l), name), x, T, D);
    }
    if (full == layers) {
        for (int s = 0; s < n; s++) memcpy(pooled + (size_t)s * D, x + (size_t)pool_row[s] * D, (size_t)D * sizeof *x);
    } else {
        last_block_pooled(m, a, &blocks[layers - 1], D, heads, causal, x, pk, pool_row, pooled, ln, qkv, att, scratch, ws);
    }
}
