/* methods.c — the four fine-tuning methods: what each trains, what it
 * caches, its step (forward, the class cross-entropy, backward) and how its
 * result enters the model. The loop around them is finetune.c. */
#include "methods.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const TARGET_NAMES[LORA_TARGETS] = {"q", "k", "v", "out", "fc", "proj"};
/* Hugging Face CLIPModel's module names, which PEFT's adapter files use */
static const char *const TARGET_HF[LORA_TARGETS] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                    "self_attn.out_proj", "mlp.fc1", "mlp.fc2"};

int lora_targets_parse(const char *list, char *bad, size_t cap) {
    int mask = 0;
    const char *p = list;
    while (*p) {
        size_t len = strcspn(p, ",");
        int found = -1;
        for (int t = 0; t < LORA_TARGETS; t++)
            if (strlen(TARGET_NAMES[t]) == len && !strncmp(p, TARGET_NAMES[t], len)) found = t;
        if (found < 0) {
            snprintf(bad, cap, "%.*s", (int)len, p);
            return -1;
        }
        mask |= 1 << found;
        p += len + (p[len] == ',');
    }
    return mask;
}

static bool trains(const method_run *r, int tower) { return finetune_trains(r->o, tower); }

/* The rows of the batch's images, features or pixels, gathered. */
static void gather(float *dst, const float *src, size_t width, const int *rows, int B) {
    for (int i = 0; i < B; i++) memcpy(dst + (size_t)i * width, src + (size_t)rows[i] * width, width * sizeof *dst);
}

/* ---- LoRA ------------------------------------------------------------------------------ */

/* A target's input and output widths, and its weight's offset. */
static void lora_shape(const tower_spec *t, int l, int tg, int *in, int *out, size_t *w) {
    const block_offsets *b = &t->blocks[l];
    int D = t->D, H = t->H;
    *in = tg == LORA_PROJ ? H : D;
    *out = tg == LORA_FC ? H : D;
    *w = tg <= LORA_V ? b->qkv_w + (size_t)tg * D * D : tg == LORA_OUT ? b->out_w : tg == LORA_FC ? b->fc_w : b->proj_w;
}

static tower_spec spec_of(const clipc_model *m, int k) { return k == 0 ? vision_tower_spec(m) : text_tower_spec(m); }

/* Lays the A, B of every adapted weight out in theta (A first, then B, per
 * weight) and initialises them as PEFT does: A ~ kaiming_uniform(a=sqrt 5)
 * = U(-1/sqrt(in), 1/sqrt(in)), B = 0, so training starts at the base model. */
static int lora_setup(method_run *r, clipc_error *err) {
    const finetune_options *o = r->o;
    size_t total = 0;
    for (int k = 0; k < 2; k++) {
        if (!(o->towers & (k == 0 ? FT_IMAGE : FT_TEXT))) continue;
        tower_spec t = spec_of(r->m, k); /* finetune_check has bounded the rank by its width */
        for (int l = 0; l < t.layers; l++)
            for (int tg = 0; tg < LORA_TARGETS; tg++)
                if (o->targets & (1 << tg)) {
                    int in, out;
                    size_t w;
                    lora_shape(&t, l, tg, &in, &out, &w);
                    total += (size_t)o->rank * (in + out);
                }
    }
    r->count = total;
    r->theta = r->theta_mem = calloc(total ? total : 1, sizeof *r->theta);
    r->grad = calloc(total ? total : 1, sizeof *r->grad);
    if (!r->theta || !r->grad) return clipc_fail(err, "out of memory");
    rng g;
    rng_seed(&g, o->seed ^ 0x4c6f5241ULL);
    size_t at = 0;
    for (int k = 0; k < 2; k++) {
        if (!(o->towers & (k == 0 ? FT_IMAGE : FT_TEXT))) continue;
        tower_spec t = spec_of(r->m, k);
        r->pairs[k] = calloc((size_t)t.layers * LORA_TARGETS, sizeof *r->pairs[k]);
        if (!r->pairs[k]) return clipc_fail(err, "out of memory");
        r->lora[k] = (lora_tower){(lora_pair(*)[LORA_TARGETS])r->pairs[k], o->rank, o->alpha / (float)o->rank};
        for (int l = 0; l < t.layers; l++)
            for (int tg = 0; tg < LORA_TARGETS; tg++) {
                if (!(o->targets & (1 << tg))) continue;
                int in, out;
                size_t w;
                lora_shape(&t, l, tg, &in, &out, &w);
                lora_pair *p = &r->lora[k].blocks[l][tg];
                p->A = r->theta + at, p->dA = r->grad + at;
                float bound = 1.0f / sqrtf((float)in);
                for (size_t i = 0; i < (size_t)o->rank * in; i++) p->A[i] = bound * (float)(2 * rng_uniform(&g) - 1);
                at += (size_t)o->rank * in;
                p->B = r->theta + at, p->dB = r->grad + at; /* zero */
                at += (size_t)o->rank * out;
            }
    }
    return 0;
}

/* W += scale B A for every adapted weight, and the PEFT-named tensors. */
static int lora_finish(method_run *r, finetune_result *res, clipc_error *err) {
    int n = 0;
    for (int k = 0; k < 2; k++)
        if (r->pairs[k]) n += 2 * spec_of(r->m, k).layers * __builtin_popcount((unsigned)r->o->targets);
    res->tensors = calloc((size_t)n + 1, sizeof *res->tensors);
    res->names = calloc((size_t)n + 1, sizeof *res->names);
    res->data = malloc((r->count ? r->count : 1) * sizeof *res->data);
    if (!res->tensors || !res->names || !res->data) return clipc_fail(err, "out of memory");
    memcpy(res->data, r->theta, r->count * sizeof *res->data);
    for (int k = 0; k < 2; k++) {
        if (!r->pairs[k]) continue;
        tower_spec t = spec_of(r->m, k);
        for (int l = 0; l < t.layers; l++)
            for (int tg = 0; tg < LORA_TARGETS; tg++) {
                const lora_pair *p = &r->lora[k].blocks[l][tg];
                if (!p->A) continue;
                int in, out, rk = r->o->rank;
                size_t w;
                lora_shape(&t, l, tg, &in, &out, &w);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, in, rk, r->lora[k].scale, p->B, rk, p->A,
                            in, 1.0f, r->m->params + w, in);
                for (int ab = 0; ab < 2; ab++) {
                    st_out_tensor *s = &res->tensors[res->n_tensors];
                    snprintf(res->names[res->n_tensors], sizeof res->names[0],
                             "base_model.model.%s.encoder.layers.%d.%s.lora_%c.weight",
                             k == 0 ? "vision_model" : "text_model", l, TARGET_HF[tg], ab ? 'B' : 'A');
                    s->name = res->names[res->n_tensors++];
                    s->ndim = 2;
                    s->shape[0] = ab ? out : rk;
                    s->shape[1] = ab ? rk : in;
                    s->data = res->data + ((ab ? p->B : p->A) - r->theta);
                }
            }
    }
    return 0;
}

/* ---- the model's own tensors as the trained vector ------------------------------------------ */

/* CoOp's, CoCoOp's and CLIP-Adapter's parameters are tensors of the model being fine-tuned (params.c
 * puts them last, in this order): theta is their range [first, end) of the model's parameters
 * itself, so training and inference run the same code on the same floats. The range's alignment
 * gaps get no gradient and never move. */
static int own_tensors(method_run *r, size_t first, size_t end, clipc_error *err) {
    r->theta = r->m->params + first;
    r->count = end - first;
    if (!(r->grad = calloc(r->count, sizeof *r->grad))) return clipc_fail(err, "out of memory");
    r->trainable = 0;
    for (int i = 0; i < r->m->table.count; i++) {
        const param_spec *p = &r->m->table.items[i];
        if (p->offset >= first && p->offset < end) r->trainable += p->numel;
    }
    return 0;
}

/* nn.Linear's default initialisation, U(-1/sqrt(in), 1/sqrt(in)), of n floats. */
static void linear_init(float *x, size_t n, int in, rng *g) {
    float bound = 1.0f / sqrtf((float)in);
    for (size_t i = 0; i < n; i++) x[i] = bound * (float)(2 * rng_uniform(g) - 1);
}

/* ---- CoOp and CoCoOp -------------------------------------------------------------------- */

/* The context: the token embeddings of --ctx-init, or N(0, 0.02) as CoOp's generic context;
 * the class prompts "X X X X name.". CoCoOp adds the meta-network, nn.Linear-initialised. */
static int prompt_setup(method_run *r, clipc_error *err) {
    const finetune_options *o = r->o;
    clipc_model *m = r->m;
    const model_layout *L = &m->L;
    int D = m->cfg.text_width, E = r->E, h = m->cfg.prompt_meta_hidden;
    bool meta = o->method == FT_COCOOP;
    size_t contexts = o->csc ? (size_t)r->C : 1, ctx_floats = contexts * o->n_ctx * D; /* CSC: one per class */
    if (own_tensors(r, L->prompt_ctx, meta ? L->meta_b2 + D : L->prompt_ctx + ctx_floats, err)) return -1;
    float *ctx = m->params + L->prompt_ctx;
    if (o->ctx_init) {
        int32_t *ids = NULL;
        int n_ids = 0;
        if (clipc_tokenizer_encode(r->tok, o->ctx_init, &ids, &n_ids, err)) return -1;
        if (n_ids != o->n_ctx) {
            free(ids);
            return clipc_fail(err, "--ctx-init '%s' is %d tokens, not --ctx %d", o->ctx_init, n_ids, o->n_ctx);
        }
        for (size_t k = 0; k < contexts; k++)
            for (int j = 0; j < n_ids; j++)
                memcpy(ctx + (k * n_ids + j) * D, m->params + L->t_tok + (size_t)ids[j] * D, (size_t)D * sizeof(float));
        free(ids);
    } else {
        rng g;
        rng_seed(&g, o->seed ^ 0x436f4f70ULL);
        for (size_t i = 0; i < ctx_floats; i++) ctx[i] = 0.02f * (float)rng_normal(&g);
    }
    if (meta) {
        rng g;
        rng_seed(&g, o->seed ^ 0x436f436fULL);
        linear_init(m->params + L->meta_w1, (size_t)h * E, E, &g);
        linear_init(m->params + L->meta_b1, (size_t)h, E, &g);
        linear_init(m->params + L->meta_w2, (size_t)D * h, h, &g);
        linear_init(m->params + L->meta_b2, (size_t)D, h, &g);
    }
    int ctx_len = m->cfg.context_length, B = o->batch < r->n ? o->batch : r->n, copies = meta ? B : 1;
    /* CoCoOp runs the C prompts once per image of the batch: the tokens repeat B times */
    r->cls_tokens = malloc((size_t)copies * r->C * ctx_len * sizeof *r->cls_tokens);
    if (!r->cls_tokens) return clipc_fail(err, "out of memory");
    for (int c = 0; c < r->C; c++)
        if (prompt_tokens(r->tok, r->set->class_names[c], o->n_ctx, ctx_len, r->cls_tokens + (size_t)c * ctx_len, err))
            return clipc_fail_prefix(err, r->set->class_names[c]);
    for (int i = 1; i < copies; i++)
        memcpy(r->cls_tokens + (size_t)i * r->C * ctx_len, r->cls_tokens, (size_t)r->C * ctx_len * sizeof *r->cls_tokens);
    if (meta) {
        size_t T = (size_t)B * r->C;
        r->fn = malloc((size_t)B * E * sizeof *r->fn);
        r->hid = malloc((size_t)B * h * sizeof *r->hid);
        r->shift = malloc((size_t)B * D * sizeof *r->shift);
        r->ctxs = malloc(T * o->n_ctx * D * sizeof *r->ctxs);
        r->dshift = malloc((size_t)B * D * sizeof *r->dshift);
        r->dhid = malloc((size_t)B * h * sizeof *r->dhid);
        if (!r->fn || !r->hid || !r->shift || !r->ctxs || !r->dshift || !r->dhid)
            return clipc_fail(err, "out of memory");
    }
    return 0;
}

/* CoCoOp's step on the batch's cached features f [B, E]: the meta-network's shift of each image's
 * context, the text tower over B C prompts, the class cross-entropy of each image against its own
 * C class embeddings, and back through the text tower to the context and the meta-network. */
static int cocoop_step(method_run *r, const float *f, int B, float *loss, int *correct, clipc_error *err) {
    clipc_model *m = r->m;
    const model_layout *L = &m->L;
    int E = r->E, C = r->C, D = m->cfg.text_width, h = m->cfg.prompt_meta_hidden, n_ctx = r->o->n_ctx;
    size_t T = (size_t)B * C;
    memcpy(r->fn, f, (size_t)B * E * sizeof *r->fn);
    clipc_normalize_rows(r->fn, B, E);
    prompt_meta_forward(m, r->fn, B, r->hid, r->shift);
    cocoop_contexts(m, r->shift, B, C, r->ctxs);
    text_prompt p = {r->ctxs, n_ctx, (size_t)n_ctx * D};
    if (text_train_forward(m, NULL, &p, r->cls_tokens, (int)T, r->cfeat, &r->tcache, err)) return -1;
    double sum = 0;
    *correct = 0;
    for (int i = 0; i < B; i++) { /* the mean over the batch of each image's cross-entropy */
        int hit = 0;
        sum += class_cross_entropy(f + (size_t)i * E, r->cfeat + (size_t)i * C * E, &r->by[i], 1, C, E, r->scale, NULL,
                                   r->dcls + (size_t)i * C * E, &hit);
        *correct += hit;
    }
    *loss = (float)(sum / B);
    for (size_t k = 0; k < T * E; k++) r->dcls[k] /= (float)B;
    if (!r->dx0 && !(r->dx0 = malloc((size_t)r->tcache.T * D * sizeof *r->dx0))) return clipc_fail(err, "out of memory");
    if (text_train_backward(m, &r->tcache, r->dcls, NULL, r->dx0, err)) return -1;
    /* ctx_t = ctx + shift_i for prompt t of image i: both get the context rows' gradients */
    float *g_ctx = r->grad, *dshift = r->dshift;
    memset(dshift, 0, (size_t)B * D * sizeof *dshift);
    for (size_t t = 0; t < T; t++)
        for (int j = 0; j < n_ctx; j++) {
            const float *g = r->dx0 + (size_t)(r->tcache.start[t] + 1 + j) * D;
            for (int d = 0; d < D; d++) {
                g_ctx[(size_t)j * D + d] += g[d];
                dshift[(t / C) * D + d] += g[d];
            }
        }
    /* shift = W2 relu(W1 fn + b1) + b2 */
    float *G = r->grad - L->prompt_ctx, *dhid = r->dhid; /* gradients indexed by model offset */
    const float *P = m->params;
    linear_backward(dhid, G + L->meta_w2, G + L->meta_b2, dshift, r->hid, P + L->meta_w2, B, h, D, false);
    for (size_t k = 0; k < (size_t)B * h; k++) dhid[k] = r->hid[k] > 0 ? dhid[k] : 0.0f;
    linear_backward(NULL, G + L->meta_w1, G + L->meta_b1, dhid, r->fn, P + L->meta_w1, B, E, h, false);
    return 0;
}

/* ---- CLIP-Adapter ---------------------------------------------------------------------- */

/* W1 [h, E] and W2 [E, h], nn.Linear-initialised; the ratio is fixed. */
static int adapter_setup(method_run *r, clipc_error *err) {
    const model_layout *L = &r->m->L;
    int E = r->E, h = r->m->cfg.adapter_hidden;
    if (own_tensors(r, L->adapter_fc1, L->adapter_fc2 + (size_t)E * h, err)) return -1;
    rng g;
    rng_seed(&g, r->o->seed ^ 0x41646170ULL);
    linear_init(r->m->params + L->adapter_fc1, (size_t)h * E, E, &g);
    linear_init(r->m->params + L->adapter_fc2, (size_t)E * h, h, &g);
    r->m->params[L->adapter_ratio] = r->o->ratio;
    return 0;
}

/* ---- full ---------------------------------------------------------------------------------- */

/* Which tower a parameter belongs to (FT_IMAGE, FT_TEXT), or 0 (logit_scale and after): the table lays out
 * the image tower first, then the text tower (params.c). */
static int tower_of(const clipc_model *m, const param_spec *p) {
    return p->offset < m->L.t_tok ? FT_IMAGE : p->offset < m->L.logit_scale ? FT_TEXT : 0;
}

/* The model's own parameters; AdamW's decay on the matrices of the trained
 * towers only (the rest has no gradient and must not shrink either). */
static int full_setup(method_run *r, clipc_error *err) {
    clipc_model *m = r->m;
    r->theta = m->params;
    r->count = m->table.total;
    r->grad = calloc(r->count, sizeof *r->grad);
    r->decay = calloc(r->count, 1);
    if (!r->grad || !r->decay) return clipc_fail(err, "out of memory for the gradients");
    r->trainable = 0;
    for (int i = 0; i < m->table.count; i++) {
        const param_spec *p = &m->table.items[i];
        if (!(tower_of(m, p) & r->o->towers)) continue;
        r->trainable += p->numel;
        if (p->ndim >= 2) memset(r->decay + p->offset, 1, p->numel);
    }
    return 0;
}

/* ---- the interface ------------------------------------------------------------------------ */

int method_setup(method_run *r, clipc_model *m0, clipc_error *err) {
    const finetune_options *o = r->o;
    const clipc_config *c = &r->m->cfg;
    int E = r->E, C = r->C, ctx = c->context_length, R = c->image_resolution;
    int rc = o->method == FT_LORA                                ? lora_setup(r, err)
             : o->method == FT_COOP || o->method == FT_COCOOP ? prompt_setup(r, err)
             : o->method == FT_ADAPTER                        ? adapter_setup(r, err)
                                                              : full_setup(r, err);
    if (rc) return -1;
    if (o->method == FT_LORA) r->trainable = r->count; /* the flat vector is all trained */
    int B = o->batch < r->n ? o->batch : r->n;
    r->bfeat = malloc((size_t)B * E * sizeof(float));
    r->dfeat = malloc((size_t)B * E * sizeof(float));
    size_t class_rows = (size_t)C * (o->method == FT_COCOOP ? B : 1); /* CoCoOp: C per image */
    r->cfeat = malloc(class_rows * E * sizeof(float));
    r->dcls = malloc(class_rows * E * sizeof(float));
    r->by = malloc((size_t)B * sizeof *r->by);
    if (!r->bfeat || !r->dfeat || !r->cfeat || !r->dcls || !r->by) return clipc_fail(err, "out of memory");
    /* a frozen image tower runs once per image */
    if (!trains(r, FT_IMAGE)) {
        if (!(r->img_feat = malloc((size_t)r->n * E * sizeof(float)))) return clipc_fail(err, "out of memory");
        if (clipc_encode_image(m0, r->pixels, r->n, r->img_feat, err)) return -1;
    } else if (!(r->bpix = malloc((size_t)B * 3 * R * R * sizeof(float)))) {
        return clipc_fail(err, "out of memory");
    }
    if (o->method == FT_ADAPTER) {
        int h = c->adapter_hidden;
        r->hid = malloc((size_t)B * h * sizeof(float));
        r->act = malloc((size_t)B * E * sizeof(float));
        r->aout = malloc((size_t)B * E * sizeof(float));
        if (!r->hid || !r->act || !r->aout) return clipc_fail(err, "out of memory");
    }
    /* a frozen text tower: the zero-shot classifier of the templates */
    bool prompted = o->method == FT_COOP || o->method == FT_COCOOP;
    if (!prompted && !trains(r, FT_TEXT)) {
        if (!(r->cls_feat = malloc((size_t)C * E * sizeof(float)))) return clipc_fail(err, "out of memory");
        return clipc_zeroshot_classifier(m0, r->tok, (const char *const *)r->set->class_names, C, o->templates,
                                         o->n_templates, r->cls_feat, err);
    }
    if (!prompted) { /* a trained text tower: one prompt per class, the first template */
        if (!(r->cls_tokens = malloc((size_t)C * ctx * sizeof *r->cls_tokens))) return clipc_fail(err, "out of memory");
        for (int k = 0; k < C; k++) {
            char *text = template_fill(o->templates[0], r->set->class_names[k]);
            if (!text) return clipc_fail(err, "template '%s' has no {}", o->templates[0]);
            rc = clipc_tokenize(r->tok, text, ctx, 1, r->cls_tokens + (size_t)k * ctx, err);
            free(text);
            if (rc) return -1;
        }
    }
    return 0;
}

int method_step(method_run *r, const int *rows, int B, float *loss, int *correct, clipc_error *err) {
    const finetune_options *o = r->o;
    clipc_model *m = r->m;
    int E = r->E, C = r->C, R = m->cfg.image_resolution, D = m->cfg.text_width, h = m->cfg.adapter_hidden;
    for (int i = 0; i < B; i++) r->by[i] = r->labels[rows[i]];
    bool image = trains(r, FT_IMAGE), text = o->method == FT_COOP || trains(r, FT_TEXT);
    bool adapter = o->method == FT_ADAPTER;
    float *G = o->method == FT_FULL ? r->grad : NULL; /* full: the model's gradients; else frozen towers */
    const lora_tower *li = o->method == FT_LORA && r->pairs[0] ? &r->lora[0] : NULL;
    const lora_tower *lt = o->method == FT_LORA && r->pairs[1] ? &r->lora[1] : NULL;
    int rc = 0;
    /* image features of the batch: the trained tower's, or the cache's; the adapter's on top */
    if (image) {
        gather(r->bpix, r->pixels, (size_t)3 * R * R, rows, B);
        rc = vit_train_forward(m, li, r->bpix, B, r->bfeat, &r->icache, err);
    } else {
        gather(r->bfeat, r->img_feat, (size_t)E, rows, B);
    }
    if (o->method == FT_COCOOP) return cocoop_step(r, r->bfeat, B, loss, correct, err);
    size_t w2 = m->L.adapter_fc2 - m->L.adapter_fc1; /* W2's place in theta (and grad) */
    const float *img = r->bfeat, *W1 = r->theta, *W2 = r->theta + w2;
    float ratio = adapter ? m->params[m->L.adapter_ratio] : 0;
    if (adapter) {
        adapter_forward(r->aout, r->hid, r->act, r->bfeat, W1, W2, ratio, B, E, h);
        img = r->aout;
    }
    /* class embeddings: the trained text tower's, or the cache's */
    const float *cls = r->cls_feat;
    text_prompt prompt = {r->theta, o->n_ctx, o->csc ? (size_t)o->n_ctx * D : 0}; /* CSC: class k's own */
    if (rc == 0 && text) {
        const text_prompt *p = o->method == FT_COOP ? &prompt : NULL;
        rc = text_train_forward(m, lt, p, r->cls_tokens, C, r->cfeat, &r->tcache, err);
        cls = r->cfeat;
    }
    if (rc) return -1;
    float *dimg = image || adapter ? r->dfeat : NULL;
    *loss = class_cross_entropy(img, cls, r->by, B, C, E, r->scale, dimg, text ? r->dcls : NULL, correct);
    if (adapter)
        adapter_backward(NULL, r->grad, r->grad + w2, dimg, r->bfeat, r->hid, r->act, W1, W2, ratio, B, E, h);
    if (image && vit_train_backward(m, &r->icache, dimg, G, err)) return -1;
    if (!text) return 0;
    if (o->method == FT_COOP && !r->dx0 && !(r->dx0 = malloc((size_t)r->tcache.T * D * sizeof *r->dx0)))
        return clipc_fail(err, "out of memory"); /* the class prompts do not change: T neither */
    if (text_train_backward(m, &r->tcache, r->dcls, G, o->method == FT_COOP ? r->dx0 : NULL, err)) return -1;
    if (o->method == FT_COOP) /* the context's gradient: summed over the class prompts */
        for (int k = 0; k < C; k++)
            for (int j = 0; j < o->n_ctx; j++) {
                const float *g = r->dx0 + (size_t)(r->tcache.start[k] + 1 + j) * D;
                float *dctx = r->grad + ((o->csc ? (size_t)k * o->n_ctx : 0) + j) * D;
                for (int d = 0; d < D; d++) dctx[d] += g[d];
            }
    return 0;
}

/* The result: the named tensors of the fine-tuned model, copied. */
static int copy_tensors(method_run *r, finetune_result *res, const char *const *names, int n, clipc_error *err) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += params_find(&r->m->table, names[i])->numel;
    res->tensors = calloc((size_t)n, sizeof *res->tensors);
    res->names = calloc((size_t)n, sizeof *res->names);
    res->data = malloc(total * sizeof *res->data);
    if (!res->tensors || !res->names || !res->data) return clipc_fail(err, "out of memory");
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        const param_spec *p = params_find(&r->m->table, names[i]);
        memcpy(res->data + at, r->m->params + p->offset, p->numel * sizeof *res->data);
        snprintf(res->names[i], sizeof res->names[i], "%s", names[i]);
        res->tensors[i] = (st_out_tensor){res->names[i], p->ndim, {0}, res->data + at, ST_F32};
        memcpy(res->tensors[i].shape, p->shape, sizeof p->shape);
        at += p->numel;
    }
    res->n_tensors = n;
    return 0;
}

int method_finish(method_run *r, finetune_result *res, clipc_error *err) {
    /* coop, cocoop and adapter trained the model's own tensors; full, all of it */
    static const char *const coop[] = {"prompt_learner.ctx", "prompt_learner.meta_net.linear1.weight",
                                       "prompt_learner.meta_net.linear1.bias", "prompt_learner.meta_net.linear2.weight",
                                       "prompt_learner.meta_net.linear2.bias"};
    static const char *const adapter[] = {"adapter.visual.fc1.weight", "adapter.visual.fc2.weight"};
    switch (r->o->method) {
    case FT_LORA: return lora_finish(r, res, err);
    case FT_COOP: return copy_tensors(r, res, coop, 1, err);
    case FT_COCOOP: return copy_tensors(r, res, coop, 5, err);
    case FT_ADAPTER: return copy_tensors(r, res, adapter, 2, err);
    default: return 0;
    }
}

void method_free(method_run *r) {
    free(r->theta_mem);
    free(r->grad), free(r->decay);
    free(r->img_feat), free(r->cls_feat), free(r->cls_tokens);
    tower_cache_free(&r->icache);
    tower_cache_free(&r->tcache);
    free(r->bpix), free(r->bfeat), free(r->dfeat), free(r->cfeat), free(r->dcls), free(r->hid), free(r->act);
    free(r->aout), free(r->dx0), free(r->by);
    free(r->fn), free(r->shift), free(r->ctxs), free(r->dshift), free(r->dhid);
    free(r->pairs[0]), free(r->pairs[1]);
}
