/* text.c — OpenAI's text tower:
 *     x = token_embedding[tokens] + positional_embedding
 *     x = transformer(x)              (causal mask)
 *     features = ln_final(x[eot]) @ text_projection
 * The causal mask makes positions after a sequence's EOT irrelevant to the
 * pooled feature, so each sequence is run only up to its own EOT and the
 * sequences are packed without padding. */
#include "tower.h"

#include <stdlib.h>
#include <string.h>

/* x [T, D] = token_embedding[token] + positional_embedding[position] for
 * each sequence's first len[i] tokens, packed from row start[i]. */
void text_embed(const clipc_model *m, const int32_t *tokens, int n, const int *start, const int *len,
                const text_prompt *prompt, float *x) {
    int D = m->cfg.text_width, ctx = m->cfg.context_length, T = n ? start[n - 1] + len[n - 1] : 0;
    const float *tok = m->params + m->L.t_tok, *pos = m->params + m->L.t_pos;
    bool coca = m->cfg.family == CLIPC_COCA;
#pragma omp parallel for
    for (int i = 0; i < n; i++)
        for (int p = 0; p < len[i] - coca; p++)
            memcpy(x + (size_t)(start[i] + p) * D, tok + (size_t)tokens[(size_t)i * ctx + p] * D, (size_t)D * sizeof *x);
    if (prompt) /* CoOp: the learned vectors instead of the placeholder tokens' embeddings */
        for (int i = 0; i < n; i++)
            for (int p = 1; p <= prompt->n_ctx && p < len[i]; p++)
                memcpy(x + (size_t)(start[i] + p) * D, prompt->ctx + i * prompt->stride + (size_t)(p - 1) * D,
                       (size_t)D * sizeof *x);
    if (coca) /* CoCa: each text's last row is the CLS embedding, at the position after the whole context */
        for (int i = 0; i < n; i++)
            memcpy(x + (size_t)(start[i] + len[i] - 1) * D, m->params + m->L.t_cls, (size_t)D * sizeof *x);
    model_tap(m, "token_embedding", x, T, D);
#pragma omp parallel for
    for (int i = 0; i < n; i++)
        for (int p = 0; p < len[i]; p++) {
            int at = coca && p == len[i] - 1 ? ctx : p;
            for (int d = 0; d < D; d++) x[(size_t)(start[i] + p) * D + d] += pos[(size_t)at * D + d];
        }
    model_tap(m, "text.embeddings", x, T, D);
}

/* Pooling positions: text.argmax(-1), the first position of the largest id
 * (EOT for every tokenized text), or SigLIP's last position; ids outside
 * the vocabulary are refused. */
int text_eot_positions(const clipc_config *c, const int32_t *tokens, int n, int *eot, clipc_error *err) {
    for (int i = 0; i < n; i++) {
        const int32_t *row = tokens + (size_t)i * c->context_length;
        int best = 0;
        for (int p = 0; p < c->context_length; p++) {
            if (row[p] < 0 || row[p] >= c->vocab_size)
                return clipc_fail(err, "text %d: token id %d at position %d is outside the vocabulary (0..%d)", i,
                                  row[p], p, c->vocab_size - 1);
            if (row[p] > row[best]) best = p;
        }
        /* SigLIP pools the last position (its texts are padded to the context) */
        eot[i] = c->family == CLIPC_SIGLIP ? c->context_length - 1 : best;
    }
    return 0;
}

size_t text_scratch(const clipc_config *c, int total_tokens, int n, int max_len) {
    size_t D = (size_t)c->text_width;
    if (c->family == CLIPC_COCA) total_tokens += 2 * n, max_len += 2; /* the first padding row and the CLS row */
    return (size_t)total_tokens * D + 2 * (size_t)n * D +
           transformer_scratch(total_tokens, (int)D, c->text_mlp_width, max_len, c->text_heads, n) + 4 * 16;
}

/* eot[i] is the pooling position of sequence i; it runs over eot[i] + 1 tokens. */
int text_forward(const clipc_model *m, arena *a, const int32_t *tokens, int n, const int *eot, const text_prompt *prompt,
                 float *out) {
    const clipc_config *c = &m->cfg;
    const float *Pm = m->params;
    const model_layout *L = &m->L;
    int D = c->text_width;
    bool coca = c->family == CLIPC_COCA; /* one more row per text: the CLS token, which is pooled */
    int *start = malloc(3 * (size_t)n * sizeof *start);
    if (!start) return -1;
    int *len = start + n, *eot_row = start + 2 * n;
    int T = 0, max_len = 0;
    for (int i = 0; i < n; i++) {
        start[i] = T;
        /* CoCa: OpenCLIP's cls mask is shifted by one (F.pad(mask, (1, 0, ...))): the CLS token sees
         * key j when token j - 1 is not padding, so it sees the first padding row after EOT too */
        len[i] = coca ? (eot[i] + 2 < c->context_length ? eot[i] + 2 : c->context_length) + 1 : eot[i] + 1;
        eot_row[i] = T + len[i] - 1;
        T += len[i];
        max_len = len[i] > max_len ? len[i] : max_len;
    }
    unsigned char *hidden = NULL;
    if (coca) { /* the CLS row does not attend key j when token j - 1 is the padding id (0), itself included */
        hidden = calloc((size_t)T + 1, 1);
        if (!hidden) {
            free(start);
            return -1;
        }
        for (int i = 0; i < n; i++) {
            const int32_t *row = tokens + (size_t)i * c->context_length;
            for (int p = 1; p < len[i] - 1; p++) hidden[start[i] + p] = row[p - 1] == 0;
            hidden[start[i] + len[i] - 1] = row[c->context_length - 1] == 0;
        }
    }
    float *x = arena_alloc(a, (size_t)T * D);
    text_embed(m, tokens, n, start, len, prompt, x);

    packing pk = {start, len, n, T, max_len, NULL, hidden};
    float *pooled = arena_alloc(a, (size_t)n * D);
    tower_spec t = text_tower_spec(m);
    transformer_forward(m, a, &t, x, &pk, eot_row, pooled);
    /* ln_final is per row, so only the pooled rows need it. */
    layernorm_forward(pooled, pooled, Pm + L->t_ln_w, Pm + L->t_ln_b, n, D, c->text_ln_eps);
    model_tap(m, "text.pooled", pooled, n, D);
    if (c->family == CLIPC_SIGLIP) /* SigLIP's head: nn.Linear(width, embed_dim) */
        linear_forward(out, pooled, Pm + L->t_proj, Pm + L->t_head_b, n, D, c->embed_dim, false);
    else
        matmul_forward(out, pooled, Pm + L->t_proj, n, D, c->embed_dim);
    free(hidden);
    free(start);
    return 0;
}
