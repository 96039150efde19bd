/* transformer.c — OpenAI's ResidualAttentionBlock stack, shared by the ViT
 * image tower and the text tower:
 *     x = x + out_proj(attention(ln_1(x)))
 *     x = x + c_proj(act(c_fc(ln_2(x))))
 * Sequences are packed back to back ([T, D] rows, no padding), so the text
 * tower spends compute only on real tokens. */
#include "tower.h"

#include <stdio.h>

size_t transformer_scratch(int T, int D, int max_len, int heads) {
    return (size_t)T * D * 9 + attention_scratch(max_len, heads) + 5 * 16;
}

void model_tap(const clipc_model *m, const char *name, const float *x, int rows, int cols) {
    if (m->tap) m->tap(m->tap_ctx, name, x, rows, cols);
}

void transformer_forward(clipc_model *m, const block_offsets *blocks, int layers, int D, int heads,
                         bool causal, float *x, const packing *pk, const char *prefix) {
    const float *P = m->params;
    int T = pk->total;
    arena *a = &m->scratch;
    float *ln = arena_alloc(a, (size_t)T * D);
    float *qkv = arena_alloc(a, (size_t)T * 3 * D);
    float *att = arena_alloc(a, (size_t)T * D);
    float *hid = arena_alloc(a, (size_t)T * 4 * D);
    float *scratch = arena_alloc(a, attention_scratch(pk->max_len, heads));
    char name[128];
    for (int l = 0; l < layers; l++) {
        const block_offsets *b = &blocks[l];
        layernorm_forward(ln, x, P + b->ln1_w, P + b->ln1_b, T, D);
        linear_forward(qkv, ln, P + b->qkv_w, P + b->qkv_b, T, D, 3 * D, false);
        attention_forward(att, qkv, pk->start, pk->len, pk->n_seq, D, heads, causal, scratch);
        if (m->tap && l == 0) {
            model_tap(m, (snprintf(name, sizeof name, "%sresblocks.0.ln_1", prefix), name), ln, T, D);
            linear_forward(ln, att, P + b->out_w, P + b->out_b, T, D, D, false);
            model_tap(m, (snprintf(name, sizeof name, "%sresblocks.0.attn", prefix), name), ln, T, D);
        }
        linear_forward(x, att, P + b->out_w, P + b->out_b, T, D, D, true);
        layernorm_forward(ln, x, P + b->ln2_w, P + b->ln2_b, T, D);
        linear_forward(hid, ln, P + b->fc_w, P + b->fc_b, T, D, 4 * D, false);
        if (m->tap && l == 0) {
            model_tap(m, (snprintf(name, sizeof name, "%sresblocks.0.ln_2", prefix), name), ln, T, D);
            model_tap(m, (snprintf(name, sizeof name, "%sresblocks.0.mlp.c_fc", prefix), name), hid, T, 4 * D);
        }
        if (m->cfg.activation == CLIPC_GELU)
            gelu_forward(hid, (size_t)T * 4 * D);
        else
            quick_gelu_forward(hid, (size_t)T * 4 * D);
        if (m->tap && l == 0) {
            linear_forward(ln, hid, P + b->proj_w, P + b->proj_b, T, 4 * D, D, false);
            model_tap(m, (snprintf(name, sizeof name, "%sresblocks.0.mlp", prefix), name), ln, T, D);
        }
        linear_forward(x, hid, P + b->proj_w, P + b->proj_b, T, 4 * D, D, true);
        if (m->tap) model_tap(m, (snprintf(name, sizeof name, "%sresblocks.%d", prefix, l), name), x, T, D);
    }
}
