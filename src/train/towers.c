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
#include <math.h>
#include <stdlib.h>
#include <string.h>

void tower_cache_free(tower_cache *c) {
    free(c->hidden);
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
    packing pk = {c->start, c->len, c->n, c->T, c->max_len, c->probs_offset, c->hidden};
    for (int l = 0; l < t->layers; l++) /* fp32 (cache_init checks): model_gemm needs no workspace */
        block_forward(m, t, l, &pk, &c->blocks[l], l + 1 < t->layers ? c->blocks[l + 1].x_in : c->x_out, NULL, scratch,
                      NULL, false);
    free(scratch);
    for (int i = 0; i < c->n; i++)
        memcpy(c->pooled_in + (size_t)i * c->D, c->x_out + (size_t)c->pool_row[i] * c->D, (size_t)c->D * sizeof(float));
    return 0;
}

/* From d features (and dextra [T, D], NULL: none, on the blocks' output) back to
 * dx0 = d(blocks[0].x_in), returned malloc'd [T, D]. */
static float *head_and_blocks_backward(const clipc_model *m, const tower_spec *t, const tower_cache *c, size_t ln_w,
                                       size_t ln_b, size_t proj, const float *dfeat, const float *dextra, float *G) {
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
    if (dextra)
        for (size_t i = 0; i < (size_t)c->T * D; i++) dx[i] += dextra[i];
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
        dx = head_and_blocks_backward(m, &t, c, L->v_ln_post_w, L->v_ln_post_b, L->v_proj, dfeatures, NULL, G);
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
    bool coca = cfg->family == CLIPC_COCA;
    for (int i = 0; i < n; i++) {
        /* CoCa: the first padding row after EOT and the CLS row too (text.c, OpenCLIP's shifted cls mask) */
        if (coca) lens[i] = (lens[i] + 2 < cfg->context_length ? lens[i] + 2 : cfg->context_length) + 1;
        else lens[i]++;
        if (prompt && lens[i] < prompt->n_ctx + 2) {
            int len = lens[i];
            free(lens);
            return clipc_fail(err, "text %d has %d tokens: too short for %d context vectors", i, len, prompt->n_ctx);
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
    free(c->hidden);
    c->hidden = NULL;
    if (coca) { /* the CLS row does not attend key j when token j - 1 is padding (0), itself included */
        if (!(c->hidden = calloc((size_t)c->T + 1, 1))) return clipc_fail(err, "out of memory");
        for (int i = 0; i < n; i++) {
            const int32_t *row = tokens + (size_t)i * cfg->context_length;
            for (int p = 1; p < c->len[i] - 1; p++) c->hidden[c->start[i] + p] = row[p - 1] == 0;
            c->hidden[c->start[i] + c->len[i] - 1] = row[cfg->context_length - 1] == 0;
        }
    }
    text_embed(m, tokens, n, c->start, c->len, prompt, c->x0);
    memcpy(c->blocks[0].x_in, c->x0, (size_t)c->T * D * sizeof(float));
    if (blocks_forward(m, &t, c, err)) return -1;
    layernorm_forward(c->pooled, c->pooled_in, Pm + L->t_ln_w, Pm + L->t_ln_b, n, D, t.eps);
    matmul_forward(features, c->pooled, Pm + L->t_proj, n, D, cfg->embed_dim);
    return 0;
}

int text_train_backward(const clipc_model *m, const tower_cache *c, const float *dfeatures, float *G, float *dx0,
                        clipc_error *err) {
    return text_train_backward_tokens(m, c, dfeatures, NULL, G, dx0, err);
}

int text_train_backward_tokens(const clipc_model *m, const tower_cache *c, const float *dfeatures, const float *dtokens,
                               float *G, float *dx0, clipc_error *err) {
    const clipc_config *cfg = &m->cfg;
    const model_layout *L = &m->L;
    int D = c->D, ctx = cfg->context_length;
    bool coca = cfg->family == CLIPC_COCA;
    tower_spec t = text_tower_spec(m);
    t.lora = c->lora;
    float *dx = head_and_blocks_backward(m, &t, c, L->t_ln_w, L->t_ln_b, L->t_proj, dfeatures, dtokens, G);
    if (!dx) return clipc_fail(err, "out of memory in the backward pass");
    if (dx0) memcpy(dx0, dx, (size_t)c->T * D * sizeof *dx0);
    /* x0 = token_embedding[token] + positional_embedding[position]; CoCa's CLS row: cls_emb + position ctx */
    for (int i = 0; i < c->n && G; i++)
        for (int p = 0; p < c->len[i]; p++) {
            const float *g = dx + (size_t)(c->start[i] + p) * D;
            bool cls = coca && p == c->len[i] - 1;
            float *gt = cls ? G + L->t_cls : G + L->t_tok + (size_t)c->tokens[(size_t)i * ctx + p] * D;
            float *gp = G + L->t_pos + (size_t)(cls ? ctx : p) * D;
            for (int d = 0; d < D; d++) {
                gt[d] += g[d];
                gp[d] += g[d];
            }
        }
    free(dx);
    return 0;
}

/* ---- CoCa's decoder and captioning loss -------------------------------------------------- */

long coca_caption_targets(const clipc_config *c, const int32_t *tokens, int n) {
    long count = 0;
    for (int i = 0; i < n; i++) {
        const int32_t *row = tokens + (size_t)i * c->context_length;
        int eot = 0;
        for (int p = 0; p < c->context_length; p++)
            if (row[p] > row[eot]) eot = p;
        for (int p = 1; p <= eot; p++) count += row[p] != 0;
    }
    return count;
}

/* What one cross-attention block keeps: its input, ln_1, the queries, ln_1_kv of the image tokens and
 * their keys and values, the probabilities, the attention, x_mid, ln_2 and the MLP's pre/post activation. */
typedef struct cross_cache {
    float *x_in, *ln1, *q, *lnkv, *kv, *probs, *att, *x_mid, *ln2, *fc_pre, *fc_act;
} cross_cache;

/* y_out = cross block l (OpenCLIP's ResidualAttentionBlock with is_cross_attention) of y_in = k->x_in:
 *   x_mid = x_in + out_proj(attention(q = ln_1(x_in), k = v = ln_1_kv(image tokens)))
 *   x_out = x_mid + mlp(ln_2(x_mid))
 * Text i's rows [start[i], start[i] + len[i]) attend image i's Nt tokens (imgtok [n * Nt, D]). */
static void cross_block_train_forward(const clipc_model *m, const block_offsets *b, const cross_cache *k,
                                      const float *imgtok, const int *start, const int *len, const size_t *probs_at, int n,
                                      int Td, int Nt, float *x_out) {
    const clipc_config *cfg = &m->cfg;
    const float *P = m->params;
    int D = cfg->text_width, H = cfg->text_mlp_width, heads = cfg->decoder_heads;
    float eps = cfg->text_ln_eps;
    layernorm_forward(k->ln1, k->x_in, P + b->ln1_w, P + b->ln1_b, Td, D, eps);
    gemm_rows(k->q, D, k->ln1, D, P + b->qkv_w, P + b->qkv_b, Td, D, D, false);
    layernorm_forward(k->lnkv, imgtok, P + b->lnkv_w, P + b->lnkv_b, n * Nt, D, eps);
    gemm_rows(k->kv, 2 * D, k->lnkv, D, P + b->qkv_w + (size_t)D * D, P + b->qkv_b + D, n * Nt, D, 2 * D, false);
#pragma omp parallel for
    for (int i = 0; i < n; i++) {
        const float *kv = k->kv + (size_t)i * Nt * 2 * D;
        attention_queries_keep(k->att + (size_t)start[i] * D, D, k->q + (size_t)start[i] * D, D, kv, kv + D, 2 * D, len[i],
                               Nt, D, heads, k->probs + probs_at[i], true);
    }
    memcpy(k->x_mid, k->x_in, (size_t)Td * D * sizeof *k->x_mid);
    gemm_rows(k->x_mid, D, k->att, D, P + b->out_w, P + b->out_b, Td, D, D, true);
    layernorm_forward(k->ln2, k->x_mid, P + b->ln2_w, P + b->ln2_b, Td, D, eps);
    gemm_rows(k->fc_pre, H, k->ln2, D, P + b->fc_w, P + b->fc_b, Td, D, H, false);
    memcpy(k->fc_act, k->fc_pre, (size_t)Td * H * sizeof *k->fc_act);
    activation_forward(k->fc_act, (size_t)Td * H, cfg->activation);
    memcpy(x_out, k->x_mid, (size_t)Td * D * sizeof *x_out);
    gemm_rows(x_out, D, k->fc_act, H, P + b->proj_w, P + b->proj_b, Td, H, D, true);
}

/* Its backward: dx [Td, D] in (w.r.t. x_out) and out (w.r.t. x_in); dimg [n * Nt, D] added into. */
static int cross_block_backward(const clipc_model *m, const block_offsets *b, const cross_cache *k, const float *imgtok,
                                const int *start, const int *len, const size_t *probs_at, int n, int Td, int Nt,
                                float *dx, float *dimg, float *G) {
    const clipc_config *cfg = &m->cfg;
    const float *P = m->params;
    int D = cfg->text_width, H = cfg->text_mlp_width, heads = cfg->decoder_heads, Ni = n * Nt, maxlen = 0;
    float eps = cfg->text_ln_eps;
    for (int i = 0; i < n; i++) maxlen = len[i] > maxlen ? len[i] : maxlen;
    float *d_fc = malloc((size_t)Td * H * sizeof *d_fc), *d_ln = malloc((size_t)Td * D * sizeof *d_ln);
    float *dq = malloc((size_t)Td * D * sizeof *dq), *dkv = calloc((size_t)Ni * 2 * D, sizeof *dkv);
    float *dk = malloc((size_t)Ni * D * sizeof *dk), *dv = malloc((size_t)Ni * D * sizeof *dv);
    float *dlnkv = malloc((size_t)Ni * D * sizeof *dlnkv), *ds = malloc(((size_t)maxlen * Nt + 1) * sizeof *ds);
    int rc = d_fc && d_ln && dq && dkv && dk && dv && dlnkv && ds ? 0 : -1;
    if (rc == 0) {
        /* the MLP residual branch */
        linear_backward(d_fc, GP(b->proj_w), GP(b->proj_b), dx, k->fc_act, P + b->proj_w, Td, H, D, false);
        activation_backward(d_fc, d_fc, k->fc_pre, (size_t)Td * H, cfg->activation);
        linear_backward(d_ln, GP(b->fc_w), GP(b->fc_b), d_fc, k->ln2, P + b->fc_w, Td, D, H, false);
        layernorm_backward(dx, GP(b->ln2_w), GP(b->ln2_b), d_ln, k->x_mid, P + b->ln2_w, Td, D, eps, true);
        /* the cross-attention residual branch */
        float *d_att = d_ln;
        linear_backward(d_att, GP(b->out_w), GP(b->out_b), dx, k->att, P + b->out_w, Td, D, D, false);
        for (int i = 0; i < n; i++) {
            const float *kv = k->kv + (size_t)i * Nt * 2 * D;
            float *dkv_i = dkv + (size_t)i * Nt * 2 * D;
            attention_queries_backward(dq + (size_t)start[i] * D, D, dkv_i, dkv_i + D, 2 * D, d_att + (size_t)start[i] * D, D,
                                       k->q + (size_t)start[i] * D, kv, kv + D, k->probs + probs_at[i], len[i], Nt, D,
                                       heads, ds);
        }
        linear_backward(d_ln, GP(b->qkv_w), GP(b->qkv_b), dq, k->ln1, P + b->qkv_w, Td, D, D, false);
        layernorm_backward(dx, GP(b->ln1_w), GP(b->ln1_b), d_ln, k->x_in, P + b->ln1_w, Td, D, eps, true);
        for (int r = 0; r < Ni; r++) {
            memcpy(dk + (size_t)r * D, dkv + (size_t)r * 2 * D, (size_t)D * sizeof *dk);
            memcpy(dv + (size_t)r * D, dkv + (size_t)r * 2 * D + D, (size_t)D * sizeof *dv);
        }
        linear_backward(dlnkv, GP(b->qkv_w + (size_t)D * D), GP(b->qkv_b + D), dk, k->lnkv, P + b->qkv_w + (size_t)D * D, Ni,
                        D, D, false);
        linear_backward(dlnkv, GP(b->qkv_w + (size_t)2 * D * D), GP(b->qkv_b + 2 * D), dv, k->lnkv,
                        P + b->qkv_w + (size_t)2 * D * D, Ni, D, D, true);
        if (G) memset(G + b->qkv_b + D, 0, (size_t)D * sizeof *G); /* the key bias: exactly zero (block_backward) */
        layernorm_backward(dimg, GP(b->lnkv_w), GP(b->lnkv_b), dlnkv, imgtok, P + b->lnkv_w, Ni, D, eps, true);
    }
    free(d_fc), free(d_ln), free(dq), free(dkv), free(dk), free(dv), free(dlnkv), free(ds);
    return rc;
}

int coca_caption_train(const clipc_model *m, const tower_cache *text, const tower_cache *image, float weight, float *G,
                       float *dtext, float *dimage, double *loss_sum, long *targets, clipc_error *err) {
    const clipc_config *cfg = &m->cfg;
    const model_layout *L = &m->L;
    const float *P = m->params;
    int n = text->n, D = cfg->text_width, V = cfg->vocab_size, ctx = cfg->context_length, Q = cfg->pool_queries;
    int Nt = Q - 1, layers = cfg->decoder_layers, heads = cfg->decoder_heads, E = cfg->embed_dim;
    *loss_sum = 0, *targets = 0;
    if (image->n != n) return clipc_fail(err, "captioning: %d texts for %d images", n, image->n);
    /* text i's decoder rows: its positions 0 .. eot - 1, which predict tokens 1 .. eot */
    int *lens = malloc((size_t)n * sizeof *lens), *eot = malloc((size_t)n * sizeof *eot);
    if (!lens || !eot) {
        free(lens), free(eot);
        return clipc_fail(err, "out of memory");
    }
    if (text_eot_positions(cfg, text->tokens, n, eot, err)) {
        free(lens), free(eot);
        return -1;
    }
    for (int i = 0; i < n; i++) lens[i] = eot[i] > 0 ? eot[i] : 1;
    tower_spec spec = {L->d_self, layers, D, heads, cfg->text_mlp_width, cfg->activation, cfg->text_ln_eps, true,
                       "text_decoder.", NULL};
    tower_cache dc = {0};
    bump b;
    int rc = 0, Td = 0;
    for (int i = 0; i < n; i++) Td += lens[i];
    size_t Ni = (size_t)n * Nt, H = (size_t)cfg->text_mlp_width, cross_probs = (size_t)heads * Td * Nt;
    size_t per_cross = 6 * (size_t)Td * D + 2 * (size_t)Td * H + Ni * 3 * D + cross_probs + 16 * 12;
    size_t extra = (size_t)layers * per_cross + Ni * D + 3 * (size_t)Td * D + 16 * 4;
    if (cache_init(&dc, m, &spec, n, lens, extra, &b, err)) {
        free(lens), free(eot);
        return -1;
    }
    size_t *probs_at = malloc((size_t)n * sizeof *probs_at);
    cross_cache *cc = calloc((size_t)layers, sizeof *cc);
    if (!probs_at || !cc) rc = clipc_fail(err, "out of memory");
    for (int i = 0, at = 0; rc == 0 && i < n; i++) probs_at[i] = (size_t)heads * at * Nt, at += lens[i];
    float *imgtok = take(&b, Ni * D); /* image i's pooler tokens, gathered */
    for (int i = 0; rc == 0 && i < n; i++)
        memcpy(imgtok + (size_t)i * Nt * D, image->cp_y + ((size_t)i * Q + 1) * E, (size_t)Nt * D * sizeof *imgtok);
    for (int l = 0; rc == 0 && l < layers; l++) {
        cross_cache *k = &cc[l];
        k->x_in = take(&b, (size_t)Td * D), k->ln1 = take(&b, (size_t)Td * D), k->q = take(&b, (size_t)Td * D);
        k->lnkv = take(&b, Ni * D), k->kv = take(&b, Ni * 2 * D), k->probs = take(&b, cross_probs);
        k->att = take(&b, (size_t)Td * D), k->x_mid = take(&b, (size_t)Td * D), k->ln2 = take(&b, (size_t)Td * D);
        k->fc_pre = take(&b, (size_t)Td * H), k->fc_act = take(&b, (size_t)Td * H);
    }
    float *y_last = take(&b, (size_t)Td * D), *yl = take(&b, (size_t)Td * D), *dy = take(&b, (size_t)Td * D);
    /* forward: the unimodal text outputs (before ln_final) into the decoder */
    for (int i = 0; rc == 0 && i < n; i++)
        memcpy(dc.blocks[0].x_in + (size_t)dc.start[i] * D, text->x_out + (size_t)text->start[i] * D,
               (size_t)lens[i] * D * sizeof(float));
    float *scratch = rc == 0 ? malloc(attention_scratch(dc.max_len, D / heads) * sizeof *scratch) : NULL;
    if (rc == 0 && !scratch) rc = clipc_fail(err, "out of memory");
    packing pk = {dc.start, dc.len, n, Td, dc.max_len, dc.probs_offset, NULL};
    for (int l = 0; rc == 0 && l < layers; l++) {
        block_forward(m, &spec, l, &pk, &dc.blocks[l], cc[l].x_in, NULL, scratch, NULL, false);
        cross_block_train_forward(m, &L->d_cross[l], &cc[l], imgtok, dc.start, dc.len, probs_at, n, Td, Nt,
                                  l + 1 < layers ? dc.blocks[l + 1].x_in : y_last);
    }
    free(scratch);
    /* logits = ln_final(y) @ text_projection, a chunk of rows at a time; softmax cross-entropy */
    enum { CHUNK_ROWS = 128 };
    float *logits = rc == 0 ? malloc((size_t)CHUNK_ROWS * V * sizeof *logits) : NULL;
    if (rc == 0 && !logits) rc = clipc_fail(err, "out of memory for the logits");
    if (rc == 0) layernorm_forward(yl, y_last, P + L->d_ln_w, P + L->d_ln_b, Td, D, cfg->text_ln_eps);
    int *target = rc == 0 ? malloc((size_t)Td * sizeof *target) : NULL;
    if (rc == 0 && !target) rc = clipc_fail(err, "out of memory");
    for (int i = 0; rc == 0 && i < n; i++)
        for (int p = 0; p < lens[i]; p++) {
            int32_t t = text->tokens[(size_t)i * ctx + p + 1];
            target[dc.start[i] + p] = p + 1 <= eot[i] ? t : 0; /* OpenCLIP ignores the padding id (0) */
        }
    double loss = 0;
    long count = 0;
    for (int r0 = 0; rc == 0 && r0 < Td; r0 += CHUNK_ROWS) {
        int rows = Td - r0 < CHUNK_ROWS ? Td - r0 : CHUNK_ROWS;
        matmul_forward(logits, yl + (size_t)r0 * D, P + L->d_proj, rows, D, V);
#pragma omp parallel for reduction(+ : loss, count)
        for (int r = 0; r < rows; r++) {
            float *l = logits + (size_t)r * V;
            int t = target[r0 + r];
            if (t == 0) { /* no target: no gradient */
                memset(l, 0, (size_t)V * sizeof *l);
                continue;
            }
            float logit = l[t];
            loss += softmax_row(l, V) - logit; /* -log softmax(l)[t]; l becomes the probabilities */
            count++;
            for (int v = 0; v < V; v++) l[v] *= weight; /* d loss / d logits = weight (p - onehot) */
            l[t] -= weight;
        }
        /* logits = yl W: dW += yl^T dlogits, dyl = dlogits W^T */
        matmul_backward(dy + (size_t)r0 * D, GP(L->d_proj), logits, yl + (size_t)r0 * D, P + L->d_proj, rows, D, V);
    }
    free(logits), free(target);
    *loss_sum = loss, *targets = count;
    /* backward */
    float *dx = rc == 0 ? malloc((size_t)Td * D * sizeof *dx) : NULL, *dimg = rc == 0 ? calloc(Ni * D, sizeof *dimg) : NULL;
    float *work = rc == 0 ? malloc(block_backward_work(&dc, &spec) * sizeof *work) : NULL;
    if (rc == 0 && (!dx || !dimg || !work)) rc = clipc_fail(err, "out of memory in the backward pass");
    if (rc == 0) layernorm_backward(dx, GP(L->d_ln_w), GP(L->d_ln_b), dy, y_last, P + L->d_ln_w, Td, D, cfg->text_ln_eps, false);
    for (int l = layers - 1; rc == 0 && l >= 0; l--) {
        if (cross_block_backward(m, &L->d_cross[l], &cc[l], imgtok, dc.start, dc.len, probs_at, n, Td, Nt, dx, dimg, G))
            rc = clipc_fail(err, "out of memory in the backward pass");
        if (rc == 0) block_backward(m, &spec, l, &dc, &dc.blocks[l], dx, G, work);
    }
    for (int i = 0; rc == 0 && i < n; i++) { /* back to the text tower's rows and the image tokens */
        for (size_t j = 0; j < (size_t)lens[i] * D; j++)
            dtext[(size_t)text->start[i] * D + j] += dx[(size_t)dc.start[i] * D + j];
        for (size_t j = 0; j < (size_t)Nt * D; j++) dimage[((size_t)i * Q + 1) * E + j] += dimg[(size_t)i * Nt * D + j];
    }
    free(dx), free(dimg), free(work), free(probs_at), free(cc), free(lens), free(eot);
    tower_cache_free(&dc);
    return rc;
}
