/* towers.c — the image (ViT) and text towers for training: forward passes
 * that keep every activation the backward pass needs, and the backward
 * passes, each layer's gradient written next to the step that produced it.
 * The maths of every layer is in model/layers.c, forward beside backward;
 * the block forward is model/transformer.c's, the one inference runs, here
 * given a cache that keeps its intermediates.
 *
 * Block forward (transformer.c):              Block backward, in reverse:
 *   ln1   = LN1(x_in)                          d_fc_act = dx W_proj      (+ dW_proj, db_proj)
 *   qkv   = ln1 W_qkv^T + b                    d_fc_pre = d_fc_act act'(fc_pre)
 *   att   = attention(qkv)                     d_ln2    = d_fc_pre W_fc  (+ dW_fc, db_fc)
 *   x_mid = x_in + att W_out^T + b             dx      += LN2'(d_ln2)    (now d x_mid)
 *   ln2   = LN2(x_mid)                         d_att    = dx W_out       (+ dW_out, db_out)
 *   fc_pre = ln2 W_fc^T + b                    d_qkv    = attention'(d_att)
 *   fc_act = act(fc_pre)                       d_ln1    = d_qkv W_qkv    (+ dW_qkv, db_qkv)
 *   x_out = x_mid + fc_act W_proj^T + b        dx      += LN1'(d_ln1)    (now d x_in)
 *
 * Fine-tuning trains only some parameters. With grads NULL no parameter
 * gradient is formed at all (no weight-gradient GEMMs: the frozen towers of
 * LoRA and CoOp only carry dx back); LoRA's A and B (tower_spec.lora) get
 * theirs from the low-rank branch alone:
 *   u = x A^T,  dB += s dy^T u,  du = s dy B,  dA += du^T x,  dx += du A
 */
#include "train.h"
#include "../model/tower.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

void tower_cache_free(tower_cache *c) {
    free(c->mem);
    free(c->blocks);
    free(c->start);
    memset(c, 0, sizeof *c);
}

/* The gradient of the parameter at offset off, or NULL when G is (a frozen tower). */
#define GP(off) (G ? G + (off) : NULL)

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
static int cache_init(tower_cache *c, const clipc_model *m, const tower_spec *t, int n, const int *lens, size_t extra,
                      bump *b, clipc_error *err) {
    int D = t->D, H = t->H, heads = t->heads, layers = t->layers, r = t->lora ? t->lora->rank : 0;
    if (m->precision != CLIPC_FP32)
        return clipc_fail(err, "training runs at fp32: the model is set to %s", clipc_precision_name(m->precision));
    if (t->blocks[0].ls1 != (size_t)-1)
        return clipc_fail(err, "training a model with LayerScale (ls_1/ls_2 gammas) is not supported yet");
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
    size_t per_block = 8 * T * D + 2 * T * (size_t)H + probs + LORA_TARGETS * T * r + 16 * (10 + LORA_TARGETS);
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
        for (int tg = 0; tg < LORA_TARGETS; tg++)
            k->lora_u[tg] = t->lora && t->lora->blocks[l][tg].A ? take(b, T * (size_t)r) : NULL;
    }
    c->x_out = take(b, T * D);
    c->pooled_in = take(b, (size_t)n * D);
    c->pooled = take(b, (size_t)n * D);
    return 0;
}

/* The LoRA branch backward for one adapted weight: dy [n, out] (rows ldy
 * apart) the branch output's gradient, x [n, in] its input, u = x A^T from
 * the forward pass; dx [n, in] += du A; du: n r floats of work. */
static void lora_backward(float *dx, const float *dy, int ldy, const float *x, const float *u, const lora_pair *p,
                          int n, int in, int out, int r, float s, float *du) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, r, n, s, dy, ldy, u, r, 1.0f, p->dB, r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, r, out, s, dy, ldy, p->B, r, 0.0f, du, r);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, in, n, 1.0f, du, r, x, in, 1.0f, p->dA, in);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, r, 1.0f, du, r, p->A, in, 1.0f, dx, in);
}

/* dx: gradient w.r.t. the block's output in, w.r.t. its input out.
 * G NULL: no parameter gradients. work: block_backward_work floats. */
static void block_backward(const clipc_model *m, const tower_spec *t, int layer, const tower_cache *c,
                           const block_cache *k, float *dx, float *G, float *work) {
    const block_offsets *bo = &t->blocks[layer];
    const float *P = m->params;
    int T = c->T, D = c->D, H = t->H, r = t->lora ? t->lora->rank : 0;
    float s = t->lora ? t->lora->scale : 0;
    float *d_fc = work, *d_ln = d_fc + (size_t)T * H, *d_qkv = d_ln + (size_t)T * D;
    float *du = d_qkv + (size_t)T * 3 * D, *scratch = du + (size_t)T * r;
    const lora_pair *p;
    linear_backward(d_fc, GP(bo->proj_w), GP(bo->proj_b), dx, k->fc_act, P + bo->proj_w, T, H, D, false);
    if ((p = lora_of(t, layer, LORA_PROJ))) lora_backward(d_fc, dx, D, k->fc_act, k->lora_u[LORA_PROJ], p, T, H, D, r, s, du);
    activation_backward(d_fc, d_fc, k->fc_pre, (size_t)T * H, t->act);
    linear_backward(d_ln, GP(bo->fc_w), GP(bo->fc_b), d_fc, k->ln2, P + bo->fc_w, T, D, H, false);
    if ((p = lora_of(t, layer, LORA_FC))) lora_backward(d_ln, d_fc, H, k->ln2, k->lora_u[LORA_FC], p, T, D, H, r, s, du);
    layernorm_backward(dx, GP(bo->ln2_w), GP(bo->ln2_b), d_ln, k->x_mid, P + bo->ln2_w, T, D, t->eps, true);
    float *d_att = d_ln;
    linear_backward(d_att, GP(bo->out_w), GP(bo->out_b), dx, k->att, P + bo->out_w, T, D, D, false);
    if ((p = lora_of(t, layer, LORA_OUT))) lora_backward(d_att, dx, D, k->att, k->lora_u[LORA_OUT], p, T, D, D, r, s, du);
    attention_backward(d_qkv, d_att, k->qkv, k->probs, c->probs_offset, c->start, c->len, c->n, D, t->heads, scratch);
    linear_backward(d_ln, GP(bo->qkv_w), GP(bo->qkv_b), d_qkv, k->ln1, P + bo->qkv_w, T, D, 3 * D, false);
    for (int tg = LORA_Q; tg <= LORA_V; tg++)
        if ((p = lora_of(t, layer, tg))) lora_backward(d_ln, d_qkv + tg * D, 3 * D, k->ln1, k->lora_u[tg], p, T, D, D, r, s, du);
    /* The key bias adds q_i . b_k to every score of row i, which softmax
     * ignores: its gradient, sum_i q_i sum_j dS_ij / sqrt(d), is exactly
     * zero. Summed in float it is rounding noise, which Adam's division by
     * sqrt(v) would blow up into real (if harmless) motion that differs
     * with summation order, e.g. between 1 and 2 MPI ranks. */
    if (G) memset(G + bo->qkv_b + D, 0, (size_t)D * sizeof *G);
    layernorm_backward(dx, GP(bo->ln1_w), GP(bo->ln1_b), d_ln, k->x_in, P + bo->ln1_w, T, D, t->eps, true);
}

static size_t block_backward_work(const tower_cache *c, const tower_spec *t) {
    size_t r = t->lora ? (size_t)t->lora->rank : 0;
    return (size_t)c->T * (4 * (size_t)c->D + (size_t)t->H + r) + attention_backward_scratch(c->max_len, c->D / t->heads) +
           16;
}

/* All blocks forward from blocks[0].x_in; the pooled rows after. */
static int blocks_forward(const clipc_model *m, const tower_spec *t, tower_cache *c, clipc_error *err) {
    float *scratch = malloc(attention_scratch(c->max_len, c->D / t->heads) * sizeof(float));
    if (!scratch) return clipc_fail(err, "out of memory");
    packing pk = {c->start, c->len, c->n, c->T, c->max_len, c->probs_offset, NULL};
    for (int l = 0; l < t->layers; l++) /* fp32 (cache_init checks): model_gemm needs no workspace */
        block_forward(m, t, l, &pk, &c->blocks[l], l + 1 < t->layers ? c->blocks[l + 1].x_in : c->x_out, NULL, scratch,
                      NULL, false);
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
    matmul_backward(dpool, GP(proj), dfeat, c->pooled, m->params + proj, n, D, E);
    layernorm_backward(dpool + (size_t)n * D, GP(ln_w), GP(ln_b), dpool, c->pooled_in, m->params + ln_w, n, D, t->eps,
                       false);
    for (int i = 0; i < n; i++)
        memcpy(dx + (size_t)c->pool_row[i] * D, dpool + (size_t)(n + i) * D, (size_t)D * sizeof *dx);
    for (int l = t->layers - 1; l >= 0; l--) block_backward(m, t, l, c, &c->blocks[l], dx, G, work);
    free(dpool);
    free(work);
    return dx;
}

/* ---- ViT ------------------------------------------------------------------------ */

/* CoCa's pooler sizes: floats the cache needs for n images of S tokens. */
static size_t coca_pool_floats(const clipc_config *cfg, int n, int S) {
    size_t T = (size_t)n * S, W = (size_t)cfg->vision_width, E = (size_t)cfg->embed_dim, Q = (size_t)cfg->pool_queries;
    return T * W + T * 2 * E + 2 * Q * E + (size_t)n * cfg->pool_heads * Q * S + 3 * (size_t)n * Q * E + (size_t)n * E +
           10 * 16;
}

/* The pooler forward (vit.c's coca_pool, keeping what its backward needs). */
static void coca_pool_train_forward(const clipc_model *m, tower_cache *c, int S, float *features) {
    const clipc_config *cfg = &m->cfg;
    const model_layout *L = &m->L;
    const float *P = m->params;
    int n = c->n, T = c->T, W = cfg->vision_width, E = cfg->embed_dim, Q = cfg->pool_queries, heads = cfg->pool_heads;
    float eps = cfg->vision_ln_eps;
    layernorm_forward(c->cp_lnk, c->x_out, P + L->cp_lnk_w, P + L->cp_lnk_b, T, W, eps);
    gemm_rows(c->cp_kv, 2 * E, c->cp_lnk, W, P + L->cp_k_w, P + L->cp_in_b + E, T, W, E, false);
    gemm_rows(c->cp_kv + E, 2 * E, c->cp_lnk, W, P + L->cp_v_w, P + L->cp_in_b + 2 * E, T, W, E, false);
    layernorm_forward(c->cp_lnq, P + L->cp_query, P + L->cp_lnq_w, P + L->cp_lnq_b, Q, E, eps);
    gemm_rows(c->cp_q, E, c->cp_lnq, E, P + L->cp_q_w, P + L->cp_in_b, Q, E, E, false);
#pragma omp parallel for
    for (int i = 0; i < n; i++) {
        const float *kv = c->cp_kv + (size_t)i * S * 2 * E;
        attention_queries_keep(c->cp_att + (size_t)i * Q * E, E, c->cp_q, E, kv, kv + E, 2 * E, Q, S, E, heads,
                               c->cp_probs + (size_t)i * heads * Q * S, true);
    }
    gemm_rows(c->cp_pre, E, c->cp_att, E, P + L->cp_out_w, P + L->cp_out_b, n * Q, E, E, false);
    layernorm_forward(c->cp_y, c->cp_pre, P + L->v_ln_post_w, P + L->v_ln_post_b, n * Q, E, eps);
    for (int i = 0; i < n; i++) memcpy(c->cp_first + (size_t)i * E, c->cp_y + (size_t)i * Q * E, (size_t)E * sizeof(float));
    matmul_forward(features, c->cp_first, P + L->v_proj, n, E, E);
}

/* Its backward: dfeatures [n, E] and dtokens (cp_y's layout, or NULL) into dx [T, W] (overwritten). */
static int coca_pool_backward(const clipc_model *m, const tower_cache *c, int S, const float *dfeat, const float *dtokens,
                              float *dx, float *G) {
    const clipc_config *cfg = &m->cfg;
    const model_layout *L = &m->L;
    const float *P = m->params;
    int n = c->n, T = c->T, W = cfg->vision_width, E = cfg->embed_dim, Q = cfg->pool_queries, heads = cfg->pool_heads;
    float eps = cfg->vision_ln_eps;
    size_t nQE = (size_t)n * Q * E;
    float *dy = calloc(nQE, sizeof *dy), *dpre = malloc(nQE * sizeof *dpre), *datt = malloc(nQE * sizeof *datt);
    float *dfirst = malloc((size_t)n * E * sizeof *dfirst), *dq = calloc((size_t)Q * E, sizeof *dq);
    float *dq_i = malloc((size_t)Q * E * sizeof *dq_i), *dkv = calloc((size_t)T * 2 * E, sizeof *dkv);
    float *dk = malloc((size_t)T * E * sizeof *dk), *dv = malloc((size_t)T * E * sizeof *dv);
    float *dlnq = malloc((size_t)Q * E * sizeof *dlnq), *dlnk = malloc((size_t)T * W * sizeof *dlnk);
    float *ds = malloc((size_t)Q * S * sizeof *ds);
    int rc = dy && dpre && datt && dfirst && dq && dq_i && dkv && dk && dv && dlnq && dlnk && ds ? 0 : -1;
    if (rc == 0) {
        if (dtokens) memcpy(dy, dtokens, nQE * sizeof *dy);
        /* features = ln_post(y)[i Q] @ proj */
        matmul_backward(dfirst, GP(L->v_proj), dfeat, c->cp_first, P + L->v_proj, n, E, E);
        for (int i = 0; i < n; i++) memcpy(dy + (size_t)i * Q * E, dfirst + (size_t)i * E, (size_t)E * sizeof *dy);
        layernorm_backward(dpre, GP(L->v_ln_post_w), GP(L->v_ln_post_b), dy, c->cp_pre, P + L->v_ln_post_w, n * Q, E, eps,
                           false);
        linear_backward(datt, GP(L->cp_out_w), GP(L->cp_out_b), dpre, c->cp_att, P + L->cp_out_w, n * Q, E, E, false);
        for (int i = 0; i < n; i++) { /* the queries are shared by every image: their gradients add up */
            const float *kv = c->cp_kv + (size_t)i * S * 2 * E;
            float *dkv_i = dkv + (size_t)i * S * 2 * E;
            attention_queries_backward(dq_i, E, dkv_i, dkv_i + E, 2 * E, datt + (size_t)i * Q * E, E, c->cp_q, kv, kv + E,
                                       c->cp_probs + (size_t)i * heads * Q * S, Q, S, E, heads, ds);
            for (size_t j = 0; j < (size_t)Q * E; j++) dq[j] += dq_i[j];
        }
        linear_backward(dlnq, GP(L->cp_q_w), GP(L->cp_in_b), dq, c->cp_lnq, P + L->cp_q_w, Q, E, E, false);
        if (G) /* the query parameter itself, through ln_q */
            layernorm_backward(G + L->cp_query, G + L->cp_lnq_w, G + L->cp_lnq_b, dlnq, P + L->cp_query, P + L->cp_lnq_w, Q,
                               E, eps, true);
        for (int r = 0; r < T; r++) {
            memcpy(dk + (size_t)r * E, dkv + (size_t)r * 2 * E, (size_t)E * sizeof *dk);
            memcpy(dv + (size_t)r * E, dkv + (size_t)r * 2 * E + E, (size_t)E * sizeof *dv);
        }
        linear_backward(dlnk, GP(L->cp_k_w), GP(L->cp_in_b + E), dk, c->cp_lnk, P + L->cp_k_w, T, W, E, false);
        linear_backward(dlnk, GP(L->cp_v_w), GP(L->cp_in_b + 2 * E), dv, c->cp_lnk, P + L->cp_v_w, T, W, E, true);
        /* the key bias shifts every score of a query alike: its gradient is exactly zero (see block_backward) */
        if (G) memset(G + L->cp_in_b + E, 0, (size_t)E * sizeof *G);
        layernorm_backward(dx, GP(L->cp_lnk_w), GP(L->cp_lnk_b), dlnk, c->x_out, P + L->cp_lnk_w, T, W, eps, false);
    }
    free(dy), free(dpre), free(datt), free(dfirst), free(dq), free(dq_i), free(dkv), free(dk), free(dv), free(dlnq);
    free(dlnk), free(ds);
    return rc;
}

int vit_train_forward(const clipc_model *m, const lora_tower *lora, const float *pixels, int n, float *features,
                      tower_cache *c, clipc_error *err) {
    const clipc_config *cfg = &m->cfg;
    const float *Pm = m->params;
    const model_layout *L = &m->L;
    int R = cfg->image_resolution, P = cfg->vision_patch_size, G = R / P, S = G * G + 1, D = cfg->vision_width;
    int K = 3 * P * P;
    if (cfg->vision_tower != CLIPC_VIT) return clipc_fail(err, "training the image tower needs a ViT (this is a ResNet)");
    int *lens = calloc((size_t)(n > 0 ? n : 1), sizeof *lens);
    if (!lens) return clipc_fail(err, "out of memory");
    for (int i = 0; i < n; i++) lens[i] = S;
    bump b;
    tower_spec t = vision_tower_spec(m);
    t.lora = lora;
    bool coca = cfg->family == CLIPC_COCA;
    size_t extra = (size_t)n * G * G * K + (size_t)n * G * G * D + (coca ? coca_pool_floats(cfg, n, S) : 0);
    int rc = cache_init(c, m, &t, n, lens, extra, &b, err);
    free(lens);
    if (rc) return -1;
    c->lora = lora;
    for (int i = 0; i < n; i++) c->pool_row[i] = c->start[i]; /* the class token */
    c->patches = take(&b, (size_t)n * G * G * K);
    float *emb = take(&b, (size_t)n * G * G * D);
    vit_embed(m, pixels, n, c->patches, emb, c->x0, NULL); /* training runs fp32 */
    layernorm_forward(c->blocks[0].x_in, c->x0, Pm + L->v_ln_pre_w, Pm + L->v_ln_pre_b, c->T, D, t.eps);
    if (blocks_forward(m, &t, c, err)) return -1;
    if (coca) { /* the attentional pooler reads every token */
        size_t Tn = (size_t)c->T, W = (size_t)D, E = (size_t)cfg->embed_dim, Q = (size_t)cfg->pool_queries;
        c->cp_lnk = take(&b, Tn * W), c->cp_kv = take(&b, Tn * 2 * E), c->cp_lnq = take(&b, Q * E);
        c->cp_q = take(&b, Q * E), c->cp_probs = take(&b, (size_t)n * cfg->pool_heads * Q * S);
        c->cp_att = take(&b, (size_t)n * Q * E), c->cp_pre = take(&b, (size_t)n * Q * E);
        c->cp_y = take(&b, (size_t)n * Q * E), c->cp_first = take(&b, (size_t)n * E);
        coca_pool_train_forward(m, c, S, features);
        return 0;
    }
    layernorm_forward(c->pooled, c->pooled_in, Pm + L->v_ln_post_w, Pm + L->v_ln_post_b, n, D, t.eps);
    matmul_forward(features, c->pooled, Pm + L->v_proj, n, D, cfg->embed_dim);
    return 0;
}

int vit_train_backward(const clipc_model *m, const tower_cache *c, const float *dfeatures, float *G,
                       clipc_error *err) {
    return vit_train_backward_tokens(m, c, dfeatures, NULL, G, err);
}

int vit_train_backward_tokens(const clipc_model *m, const tower_cache *c, const float *dfeatures, const float *dtokens,
                              float *G, clipc_error *err) {
    const clipc_config *cfg = &m->cfg;
    const model_layout *L = &m->L;
    int P = cfg->vision_patch_size, Gs = cfg->image_resolution / P, S = Gs * Gs + 1, D = c->D, n = c->n;
    int K = 3 * P * P;
    tower_spec t = vision_tower_spec(m);
    t.lora = c->lora;
    float *dx;
    if (cfg->family == CLIPC_COCA) { /* the pooler, then every block with the gradient of every token */
        dx = malloc((size_t)c->T * D * sizeof *dx);
        float *work = malloc(block_backward_work(c, &t) * sizeof *work);
        if (!dx || !work || coca_pool_backward(m, c, S, dfeatures, dtokens, dx, G)) {
            free(dx), free(work);
            return clipc_fail(err, "out of memory in the backward pass");
        }
        for (int l = t.layers - 1; l >= 0; l--) block_backward(m, &t, l, c, &c->blocks[l], dx, G, work);
        free(work);
    } else {
        dx = head_and_blocks_backward(m, &t, c, L->v_ln_post_w, L->v_ln_post_b, L->v_proj, dfeatures, G);
    }
    if (!dx) return clipc_fail(err, "out of memory in the backward pass");
    if (!G) { /* a frozen tower: nothing below the blocks learns */
        free(dx);
        return 0;
    }
    float *dx0 = malloc((size_t)c->T * D * sizeof *dx0);
    float *demb = malloc((size_t)n * Gs * Gs * D * sizeof *demb);
    if (!dx0 || !demb) {
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

int text_train_forward(const clipc_model *m, const lora_tower *lora, const text_prompt *prompt, const int32_t *tokens,
                       int n, float *features, tower_cache *c, clipc_error *err) {
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
    for (int i = 0; i < n; i++) {
        lens[i]++;
        if (prompt && lens[i] < prompt->n_ctx + 2) {
            free(lens);
            return clipc_fail(err, "text %d has %d tokens: too short for %d context vectors", i, lens[i], prompt->n_ctx);
        }
    }
    bump b;
    tower_spec t = text_tower_spec(m);
    t.lora = lora;
    int rc = cache_init(c, m, &t, n, lens, 0, &b, err);
    free(lens);
    if (rc) return -1;
    c->lora = lora;
    c->tokens = tokens;
    for (int i = 0; i < n; i++) c->pool_row[i] = c->start[i] + c->len[i] - 1;
    text_embed(m, tokens, n, c->start, c->len, prompt, c->x0);
    memcpy(c->blocks[0].x_in, c->x0, (size_t)c->T * D * sizeof(float));
    if (blocks_forward(m, &t, c, err)) return -1;
    layernorm_forward(c->pooled, c->pooled_in, Pm + L->t_ln_w, Pm + L->t_ln_b, n, D, t.eps);
    matmul_forward(features, c->pooled, Pm + L->t_proj, n, D, cfg->embed_dim);
    return 0;
}

int text_train_backward(const clipc_model *m, const tower_cache *c, const float *dfeatures, float *G, float *dx0,
                        clipc_error *err) {
    const clipc_config *cfg = &m->cfg;
    const model_layout *L = &m->L;
    int D = c->D, ctx = cfg->context_length;
    tower_spec t = text_tower_spec(m);
    t.lora = c->lora;
    float *dx = head_and_blocks_backward(m, &t, c, L->t_ln_w, L->t_ln_b, L->t_proj, dfeatures, G);
    if (!dx) return clipc_fail(err, "out of memory in the backward pass");
    if (dx0) memcpy(dx0, dx, (size_t)c->T * D * sizeof *dx0);
    /* x0 = token_embedding[token] + positional_embedding[position] */
    for (int i = 0; i < c->n && G; i++)
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
