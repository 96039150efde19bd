/* towers.c — the image (ViT) and text towers for training: forward passes
 * that keep every activation the backward pass needs, and the backward
 * passes, each layer's gradient written next to the step that produced it.
 * The maths of every layer is in model/layers.c, forward beside backward.
 *
 * Block forward (as in transformer.c):       Block backward, in reverse:
 *   ln1   = LN1(x_in)                          d_fc_act = dx W_proj      (+ dW_proj, db_proj)
 *   qkv   = ln1 W_qkv^T + b                    d_fc_pre = d_fc_act act'(fc_pre)
 *   att   = attention(qkv)                     d_ln2    = d_fc_pre W_fc  (+ dW_fc, db_fc)
 *   x_mid = x_in + att W_out^T + b             dx      += LN2'(d_ln2)    (now d x_mid)
 *   ln2   = LN2(x_mid)                         d_att    = dx W_out       (+ dW_out, db_out)
 *   fc_pre = ln2 W_fc^T + b                    d_qkv    = attention'(d_att)
 *   fc_act = act(fc_pre)                       d_ln1    = d_qkv W_qkv    (+ dW_qkv, db_qkv)
 *   x_out = x_mid + fc_act W_proj^T + b        dx      += LN1'(d_ln1)    (now d x_in)
 */
#include "train.h"
#include "../model/tower.h"

#include <stdlib.h>
#include <string.h>

void tower_cache_free(tower_cache *c) {
    free(c->mem);
    free(c->blocks);
    free(c->start);
    memset(c, 0, sizeof *c);
}

/* Bump allocation inside the cache's one buffer. */
typedef struct bump {
    float *p;
    size_t left;
} bump;

static float *take(bump *b, size_t n) {
    n = (n + 15) / 16 * 16;
    if (n > b->left) return NULL;
    float *r = b->p;
    b->p += n;
    b->left -= n;
    return r;
}

/* Sets up packing arrays and the activation buffer for n sequences of the
 * given lengths; extra = floats the tower needs beyond the blocks. The
 * buffers of an earlier pass are reused when they are large enough, so a
 * training loop does not fault in fresh pages every step. */
static int cache_init(tower_cache *c, const clipc_model *m, int n, const int *lens, int D, int H, int heads, int layers,
                      size_t extra, bump *b, clipc_error *err) {
    (void)m;
    if (n > c->n_cap) {
        free(c->start);
        c->start = malloc(((size_t)n * 3 + 1) * sizeof(int) + (size_t)n * sizeof(size_t));
        c->n_cap = c->start ? n : 0;
    }
    if (layers > c->layers_cap) {
        free(c->blocks);
        c->blocks = calloc((size_t)layers, sizeof *c->blocks);
        c->layers_cap = c->blocks ? layers : 0;
    }
    if (!c->start || !c->blocks) {
        tower_cache_free(c);
        return clipc_fail(err, "out of memory");
    }
    c->n = n;
    c->D = D;
    c->T = c->max_len = 0;
    c->patches = NULL;
    c->tokens = NULL;
    c->len = c->start + n;
    c->pool_row = c->start + 2 * n;
    c->probs_offset = (size_t *)(c->start + 3 * n + (3 * n) % 2); /* after the ints, 8-byte aligned */
    size_t probs = 0;
    for (int i = 0; i < n; i++) {
        c->start[i] = c->T;
        c->len[i] = lens[i];
        c->T += lens[i];
        c->probs_offset[i] = probs;
        probs += (size_t)heads * lens[i] * lens[i];
        c->max_len = lens[i] > c->max_len ? lens[i] : c->max_len;
    }
    size_t T = (size_t)c->T;
    size_t per_block = 8 * T * D + 2 * T * (size_t)H + probs + 10 * 16; /* see the takes below */
    size_t total = extra + (size_t)layers * per_block + 2 * T * D + 2 * (size_t)n * D + 10 * 16;
    if (total > c->mem_cap) {
        free(c->mem);
        c->mem = malloc(total * sizeof(float));
        c->mem_cap = c->mem ? total : 0;
        if (!c->mem) {
            tower_cache_free(c);
            return clipc_fail(err, "out of memory for %zu MiB of training activations", total * 4 >> 20);
        }
    }
    b->p = c->mem;
    b->left = c->mem_cap;
    c->x0 = take(b, T * D);
    for (int l = 0; l < layers; l++) {
        block_cache *k = &c->blocks[l];
        k->x_in = take(b, T * D);
        k->ln1 = take(b, T * D);
        k->qkv = take(b, 3 * T * D);
        k->probs = take(b, probs);
        k->att = take(b, T * D);
        k->x_mid = take(b, T * D);
        k->ln2 = take(b, T * D);
        k->fc_pre = take(b, T * (size_t)H);
        k->fc_act = take(b, T * (size_t)H);
    }
    c->x_out = take(b, T * D);
    c->pooled_in = take(b, (size_t)n * D);
    c->pooled = take(b, (size_t)n * D);
    return 0;
}

static void block_forward_train(const clipc_model *m, const tower_spec *t, const block_offsets *bo,
                                const tower_cache *c, block_cache *k, float *x_out, float *scratch) {
    const float *P = m->params;
    int T = c->T, D = c->D, H = t->H;
    layernorm_forward(k->ln1, k->x_in, P + bo->ln1_w, P + bo->ln1_b, T, D, t->eps);
    linear_forward(k->qkv, k->ln1, P + bo->qkv_w, P + bo->qkv_b, T, D, 3 * D, false);
    attention_forward(k->att, k->qkv, c->start, c->len, NULL, c->n, D, t->heads, t->causal, scratch, k->probs,
                      c->probs_offset);
    memcpy(k->x_mid, k->x_in, (size_t)T * D * sizeof(float));
    linear_forward(k->x_mid, k->att, P + bo->out_w, P + bo->out_b, T, D, D, true);
    layernorm_forward(k->ln2, k->x_mid, P + bo->ln2_w, P + bo->ln2_b, T, D, t->eps);
    linear_forward(k->fc_pre, k->ln2, P + bo->fc_w, P + bo->fc_b, T, D, H, false);
    memcpy(k->fc_act, k->fc_pre, (size_t)T * H * sizeof(float));
    activation_forward(k->fc_act, (size_t)T * H, t->act);
    memcpy(x_out, k->x_mid, (size_t)T * D * sizeof(float));
    linear_forward(x_out, k->fc_act, P + bo->proj_w, P + bo->proj_b, T, H, D, true);
}

/* dx: gradient w.r.t. the block's output in, w.r.t. its input out.
 * work: block_backward_work floats. */
static void block_backward(const clipc_model *m, const tower_spec *t, const block_offsets *bo, const tower_cache *c,
                           const block_cache *k, float *dx, float *G, float *work) {
    const float *P = m->params;
    int T = c->T, D = c->D, H = t->H;
    float *d_fc = work, *d_ln = d_fc + (size_t)T * H, *d_qkv = d_ln + (size_t)T * D;
    float *scratch = d_qkv + (size_t)T * 3 * D;
    linear_backward(d_fc, G + bo->proj_w, G + bo->proj_b, dx, k->fc_act, P + bo->proj_w, T, H, D, false);
    activation_backward(d_fc, d_fc, k->fc_pre, (size_t)T * H, t->act);
    linear_backward(d_ln, G + bo->fc_w, G + bo->fc_b, d_fc, k->ln2, P + bo->fc_w, T, D, H, false);
    layernorm_backward(dx, G + bo->ln2_w, G + bo->ln2_b, d_ln, k->x_mid, P + bo->ln2_w, T, D, t->eps, true);
    float *d_att = d_ln;
    linear_backward(d_att, G + bo->out_w, G + bo->out_b, dx, k->att, P + bo->out_w, T, D, D, false);
    attention_backward(d_qkv, d_att, k->qkv, k->probs, c->probs_offset, c->start, c->len, c->n, D, t->heads, scratch);
    linear_backward(d_ln, G + bo->qkv_w, G + bo->qkv_b, d_qkv, k->ln1, P + bo->qkv_w, T, D, 3 * D, false);
    /* The key bias adds q_i . b_k to every score of row i, which softmax
     * ignores: its gradient, sum_i q_i sum_j dS_ij / sqrt(d), is exactly
     * zero. Summed in float it is rounding noise, which Adam's division by
     * sqrt(v) would blow up into real (if harmless) motion that differs
     * with summation order, e.g. between 1 and 2 MPI ranks. */
    memset(G + bo->qkv_b + D, 0, (size_t)D * sizeof *G);
    layernorm_backward(dx, G + bo->ln1_w, G + bo->ln1_b, d_ln, k->x_in, P + bo->ln1_w, T, D, t->eps, true);
}

static size_t block_backward_work(const tower_cache *c, const tower_spec *t) {
    return (size_t)c->T * (4 * (size_t)c->D + (size_t)t->H) + attention_backward_scratch(c->max_len, c->D / t->heads) + 16;
}

/* All blocks forward from blocks[0].x_in; the pooled rows after. */
static int blocks_forward(const clipc_model *m, const tower_spec *t, tower_cache *c, clipc_error *err) {
    float *scratch = malloc(attention_scratch(c->max_len, c->D / t->heads) * sizeof(float));
    if (!scratch) return clipc_fail(err, "out of memory");
    for (int l = 0; l < t->layers; l++)
        block_forward_train(m, t, &t->blocks[l], c, &c->blocks[l], l + 1 < t->layers ? c->blocks[l + 1].x_in : c->x_out,
                            scratch);
    free(scratch);
    for (int i = 0; i < c->n; i++)
        memcpy(c->pooled_in + (size_t)i * c->D, c->x_out + (size_t)c->pool_row[i] * c->D, (size_t)c->D * sizeof(float));
    return 0;
}

/* From d features back to dx0 = d(blocks[0].x_in), returned malloc'd [T, D]. */
static float *head_and_blocks_backward(const clipc_model *m, const tower_spec *t, const tower_cache *c, size_t ln_w,
                                       size_t ln_b, size_t proj, const float *dfeat, float *G) {
    int D = c->D, n = c->n, E = m->cfg.embed_dim;
    float *dx = calloc((size_t)c->T * D, sizeof *dx);
    float *dpool = malloc((size_t)n * D * 2 * sizeof *dpool);
    float *work = malloc(block_backward_work(c, t) * sizeof *work);
    if (!dx || !dpool || !work) {
        free(dx);
        free(dpool);
        free(work);
        return NULL;
    }
    /* features = LN(pooled_in) @ proj */
    matmul_backward(dpool, G + proj, dfeat, c->pooled, m->params + proj, n, D, E);
    layernorm_backward(dpool + (size_t)n * D, G + ln_w, G + ln_b, dpool, c->pooled_in, m->params + ln_w, n, D, t->eps,
                       false);
    for (int i = 0; i < n; i++)
        memcpy(dx + (size_t)c->pool_row[i] * D, dpool + (size_t)(n + i) * D, (size_t)D * sizeof *dx);
    for (int l = t->layers - 1; l >= 0; l--) block_backward(m, t, &t->blocks[l], c, &c->blocks[l], dx, G, work);
    free(dpool);
    free(work);
    return dx;
}

/* ---- ViT ------------------------------------------------------------------------ */

int vit_train_forward(const clipc_model *m, const float *pixels, int n, float *features, tower_cache *c,
                      clipc_error *err) {
    const clipc_config *cfg = &m->cfg;
    const float *Pm = m->params;
    const model_layout *L = &m->L;
    int R = cfg->image_resolution, P = cfg->vision_patch_size, G = R / P, S = G * G + 1, D = cfg->vision_width;
    int K = 3 * P * P;
    int *lens = calloc((size_t)(n > 0 ? n : 1), sizeof *lens);
    if (!lens) return clipc_fail(err, "out of memory");
    for (int i = 0; i < n; i++) lens[i] = S;
    bump b;
    size_t extra = (size_t)n * G * G * K + (size_t)n * G * G * D;
    int rc = cache_init(c, m, n, lens, D, cfg->vision_mlp_width, cfg->vision_heads, cfg->vision_layers, extra, &b, err);
    free(lens);
    if (rc) return -1;
    for (int i = 0; i < n; i++) c->pool_row[i] = c->start[i]; /* the class token */
    c->patches = take(&b, (size_t)n * G * G * K);
    float *emb = take(&b, (size_t)n * G * G * D);
    vit_embed(m, pixels, n, c->patches, emb, c->x0, NULL); /* training runs fp32 */
    tower_spec t = vision_tower_spec(m);
    layernorm_forward(c->blocks[0].x_in, c->x0, Pm + L->v_ln_pre_w, Pm + L->v_ln_pre_b, c->T, D, t.eps);
    if (blocks_forward(m, &t, c, err)) return -1;
    layernorm_forward(c->pooled, c->pooled_in, Pm + L->v_ln_post_w, Pm + L->v_ln_post_b, n, D, t.eps);
    matmul_forward(features, c->pooled, Pm + L->v_proj, n, D, cfg->embed_dim);
    return 0;
}

int vit_train_backward(const clipc_model *m, const tower_cache *c, const float *dfeatures, float *G,
                       clipc_error *err) {
    const clipc_config *cfg = &m->cfg;
    const model_layout *L = &m->L;
    int P = cfg->vision_patch_size, Gs = cfg->image_resolution / P, S = Gs * Gs + 1, D = c->D, n = c->n;
    int K = 3 * P * P;
    tower_spec t = vision_tower_spec(m);
    float *dx = head_and_blocks_backward(m, &t, c, L->v_ln_post_w,
                                         L->v_ln_post_b, L->v_proj, dfeatures, G);
    float *dx0 = malloc((size_t)c->T * D * sizeof *dx0);
    float *demb = malloc((size_t)n * Gs * Gs * D * sizeof *demb);
    if (!dx || !dx0 || !demb) {
        free(dx);
        free(dx0);
        free(demb);
        return clipc_fail(err, "out of memory in the backward pass");
    }
    layernorm_backward(dx0, G + L->v_ln_pre_w, G + L->v_ln_pre_b, dx, c->x0, m->params + L->v_ln_pre_w, c->T, D, t.eps,
                       false);
    for (int i = 0; i < n; i++) {
        const float *row = dx0 + (size_t)i * S * D;
        for (int d = 0; d < D; d++) G[L->v_class + d] += row[d];
        for (int p = 0; p < S; p++)
            for (int d = 0; d < D; d++) G[L->v_pos + (size_t)p * D + d] += row[(size_t)p * D + d];
        memcpy(demb + (size_t)i * Gs * Gs * D, row + D, (size_t)Gs * Gs * D * sizeof *demb);
    }
    linear_backward(NULL, G + L->v_conv, NULL, demb, c->patches, m->params + L->v_conv, n * Gs * Gs, K, D, false);
    free(dx);
    free(dx0);
    free(demb);
    return 0;
}

/* ---- text ---------------------------------------------------------------------- */

int text_train_forward(const clipc_model *m, const int32_t *tokens, int n, float *features, tower_cache *c,
                       clipc_error *err) {
    const clipc_config *cfg = &m->cfg;
    const float *Pm = m->params;
    const model_layout *L = &m->L;
    int D = cfg->text_width;
    int *lens = calloc((size_t)(n > 0 ? n : 1), sizeof *lens);
    if (!lens) return clipc_fail(err, "out of memory");
    if (text_eot_positions(cfg, tokens, n, lens, err)) { /* run up to each text's EOT */
        free(lens);
        return -1;
    }
    for (int i = 0; i < n; i++) lens[i]++;
    bump b;
    int rc = cache_init(c, m, n, lens, D, cfg->text_mlp_width, cfg->text_heads, cfg->text_layers, 0, &b, err);
    free(lens);
    if (rc) return -1;
    c->tokens = tokens;
    for (int i = 0; i < n; i++) c->pool_row[i] = c->start[i] + c->len[i] - 1;
    text_embed(m, tokens, n, c->start, c->len, c->x0);
    memcpy(c->blocks[0].x_in, c->x0, (size_t)c->T * D * sizeof(float));
    tower_spec t = text_tower_spec(m);
    if (blocks_forward(m, &t, c, err)) return -1;
    layernorm_forward(c->pooled, c->pooled_in, Pm + L->t_ln_w, Pm + L->t_ln_b, n, D, t.eps);
    matmul_forward(features, c->pooled, Pm + L->t_proj, n, D, cfg->embed_dim);
    return 0;
}

int text_train_backward(const clipc_model *m, const tower_cache *c, const float *dfeatures, float *G,
                        clipc_error *err) {
    const clipc_config *cfg = &m->cfg;
    const model_layout *L = &m->L;
    int D = c->D, ctx = cfg->context_length;
    tower_spec t = text_tower_spec(m);
    float *dx = head_and_blocks_backward(m, &t, c, L->t_ln_w, L->t_ln_b,
                                         L->t_proj, dfeatures, G);
    if (!dx) return clipc_fail(err, "out of memory in the backward pass");
    /* x0 = token_embedding[token] + positional_embedding[position] */
    for (int i = 0; i < c->n; i++)
        for (int p = 0; p < c->len[i]; p++) {
            const float *g = dx + (size_t)(c->start[i] + p) * D;
            float *gt = G + L->t_tok + (size_t)c->tokens[(size_t)i * ctx + p] * D, *gp = G + L->t_pos + (size_t)p * D;
            for (int d = 0; d < D; d++) {
                gt[d] += g[d];
                gp[d] += g[d];
            }
        }
    free(dx);
    return 0;
}
