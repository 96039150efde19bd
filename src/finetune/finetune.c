/* finetune.c — the fine-tuning loop shared by every method (finetune.h):
 * few-shot sampling, the class cross-entropy, caching what cannot change,
 * AdamW over the method's parameters (one flat vector), and the finished
 * model. The methods' own parts are in lora.c, prompt.c and adapter.c. */
#include "finetune.h"
#include "methods.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const METHOD_NAMES[] = {"lora", "adapter", "coop", "full", "cocoop"};
enum { N_METHODS = sizeof METHOD_NAMES / sizeof *METHOD_NAMES };

int finetune_method_parse(const char *name) {
    for (int i = 0; i < N_METHODS; i++)
        if (!strcmp(name, METHOD_NAMES[i])) return i;
    return -1;
}

const char *finetune_method_name(int method) { return method >= 0 && method < N_METHODS ? METHOD_NAMES[method] : "?"; }

void finetune_result_free(finetune_result *r) {
    free(r->tensors);
    free(r->names);
    free(r->data);
    memset(r, 0, sizeof *r);
}

int few_shot_rows(const image_set *set, int shots, uint64_t seed, int **rows, int *n, clipc_error *err) {
    int C = set->n_classes;
    int *count = calloc((size_t)C, sizeof *count), *order = malloc((size_t)set->count * sizeof *order);
    *rows = malloc((size_t)C * shots * sizeof **rows);
    if (!count || !order || !*rows) {
        free(count), free(order), free(*rows);
        *rows = NULL;
        return clipc_fail(err, "out of memory");
    }
    shot_order(seed, set->count, order); /* the first K of each class: the linear probe's shots */
    *n = 0;
    for (int i = 0; i < set->count; i++) {
        int c = set->labels[order[i]];
        if (count[c] < shots) count[c]++, (*rows)[(*n)++] = order[i];
    }
    int rc = 0;
    for (int c = 0; c < C && rc == 0; c++)
        if (count[c] < shots)
            rc = clipc_fail(err, "--shots %d: class '%s' has only %d image%s", shots, set->class_names[c], count[c],
                            count[c] == 1 ? "" : "s");
    free(count), free(order);
    if (rc) free(*rows), *rows = NULL;
    return rc;
}

long finetune_warmup(long steps) { return steps / 20 < 50 ? steps / 20 : 50; }

bool finetune_trains(const finetune_options *o, int tower) {
    return (o->method == FT_LORA || o->method == FT_FULL) && (o->towers & tower);
}

int finetune_check(const clipc_model *m, const finetune_options *o, clipc_error *err) {
    const clipc_config *c = &m->cfg;
    if (c->family == CLIPC_SIGLIP) /* its MAP head and bidirectional text tower have no backward pass yet */
        return clipc_fail(err, "SigLIP models run in clipc for inference only: fine-tuning them is not supported yet");
    if (m->precision != CLIPC_FP32)
        return clipc_fail(err, "fine-tuning runs at fp32 (the model is set to %s)", clipc_precision_name(m->precision));
    if (finetune_trains(o, FT_IMAGE) && c->vision_tower != CLIPC_VIT)
        return clipc_fail(err, "--method %s on the image tower needs a ViT; this model's image tower is a ResNet "
                               "(use --tower text, or coop/adapter)", finetune_method_name(o->method));
    for (int k = 0; k < 2 && o->method == FT_LORA; k++) {
        int tower = k == 0 ? FT_IMAGE : FT_TEXT, width = k == 0 ? c->vision_width : c->text_width;
        if ((o->towers & tower) && o->rank > width)
            return clipc_fail(err, "--rank %d is larger than the %s tower's width %d", o->rank, k ? "text" : "image",
                              width);
    }
    return 0;
}

clipc_model *model_extend(const clipc_model *m, const clipc_config *cfg, clipc_error *err) {
    clipc_model *x = model_new(cfg, err);
    if (!x) return NULL;
    /* the extras come last in the table (params.c): m's tensors keep their offsets */
    if (x->table.count < m->table.count || x->table.items[m->table.count - 1].offset !=
                                               m->table.items[m->table.count - 1].offset) {
        clipc_model_free(x);
        clipc_fail(err, "internal: the extended model's tensors moved");
        return NULL;
    }
    memcpy(x->params, m->params, m->table.total * sizeof *x->params);
    memcpy(x->source_dtype, m->source_dtype, sizeof x->source_dtype);
    if (m->prompt_labels && cfg->prompt_classes == m->cfg.prompt_classes &&
        model_set_prompt_labels(x, m->prompt_labels, m->cfg.prompt_classes, err)) {
        clipc_model_free(x);
        return NULL;
    }
    return x;
}

/* ---- the objective ----------------------------------------------------------------- */

/* Back through n = x / |x| for rows of x: dx = (dn - n (n . dn)) / |x|, in place on dn. */
static void normalize_backward(float *dn, const float *x, int rows, int E) {
    for (int i = 0; i < rows; i++) {
        const float *xi = x + (size_t)i * E;
        float *g = dn + (size_t)i * E;
        double ss = 0, dot = 0;
        for (int j = 0; j < E; j++) ss += (double)xi[j] * xi[j];
        double norm = sqrt(ss) > 1e-30 ? sqrt(ss) : 1e-30;
        for (int j = 0; j < E; j++) dot += (double)xi[j] / norm * g[j];
        for (int j = 0; j < E; j++) g[j] = (float)((g[j] - xi[j] / norm * dot) / norm);
    }
}

float class_cross_entropy(const float *img, const float *cls, const int *y, int B, int C, int E, float scale,
                          float *d_img, float *d_cls, int *correct) {
    float *ni = malloc(((size_t)B * E + (size_t)C * E + (size_t)B * C) * sizeof *ni);
    if (!ni) return NAN;
    float *nc = ni + (size_t)B * E, *z = nc + (size_t)C * E;
    memcpy(ni, img, (size_t)B * E * sizeof *ni);
    memcpy(nc, cls, (size_t)C * E * sizeof *nc);
    clipc_normalize_rows(ni, B, E);
    clipc_normalize_rows(nc, C, E);
    double loss = 0;
    int hits = 0;
    for (int i = 0; i < B; i++) {
        float *zi = z + (size_t)i * C, max = -INFINITY;
        for (int c = 0; c < C; c++) {
            double dot = 0;
            for (int j = 0; j < E; j++) dot += (double)ni[(size_t)i * E + j] * nc[(size_t)c * E + j];
            zi[c] = scale * (float)dot;
            max = zi[c] > max ? zi[c] : max;
        }
        hits += rank_of(zi, C, y[i]) == 0;
        double sum = 0;
        for (int c = 0; c < C; c++) sum += exp(zi[c] - max);
        loss += log(sum) + max - zi[y[i]];
        for (int c = 0; c < C; c++) /* dz = (softmax - onehot) / B */
            zi[c] = (float)((exp(zi[c] - max) / sum - (c == y[i])) / B);
    }
    if (d_img) { /* d ni = scale dz nc */
        for (int i = 0; i < B; i++)
            for (int j = 0; j < E; j++) {
                double s = 0;
                for (int c = 0; c < C; c++) s += (double)z[(size_t)i * C + c] * nc[(size_t)c * E + j];
                d_img[(size_t)i * E + j] = scale * (float)s;
            }
        normalize_backward(d_img, img, B, E);
    }
    if (d_cls) { /* d nc = scale dz^T ni */
        for (int c = 0; c < C; c++)
            for (int j = 0; j < E; j++) {
                double s = 0;
                for (int i = 0; i < B; i++) s += (double)z[(size_t)i * C + c] * ni[(size_t)i * E + j];
                d_cls[(size_t)c * E + j] = scale * (float)s;
            }
        normalize_backward(d_cls, cls, C, E);
    }
    free(ni);
    if (correct) *correct = hits;
    return (float)(loss / B);
}

/* ---- the loop ---------------------------------------------------------------------- */

/* The training images rows[0..n) as the model's input, all in memory (a
 * few-shot set is small; a large one is refused before allocating). */
static int load_pixels(const clipc_model *m, const image_set *set, const int *rows, int n, float **pixels,
                       clipc_error *err) {
    int R = m->cfg.image_resolution;
    size_t per = (size_t)3 * R * R;
    if ((double)n * per * sizeof(float) > 8.0 * (1 << 30))
        return clipc_fail(err, "%d training images at %dx%d need %.1f GiB: use --shots, or fewer images", n, R, R,
                          (double)n * per * 4 / (1 << 30));
    if (!(*pixels = malloc((size_t)n * per * sizeof **pixels)))
        return clipc_fail(err, "out of memory for the training images");
    if (image_set_pixels_batch(set, rows, 0, n, m, *pixels, err)) {
        free(*pixels);
        *pixels = NULL;
        return -1;
    }
    return 0;
}

int finetune_prepare(method_run *run, clipc_model *m0, clipc_tokenizer *tok, const image_set *set, const int *rows,
                     int n, const finetune_options *o, clipc_error *err) {
    memset(run, 0, sizeof *run);
    const clipc_config *c0 = &m0->cfg;
    int E = c0->embed_dim;
    if (n < 1) return clipc_fail(err, "no training images");
    if (finetune_check(m0, o, err)) return -1;
    run->o = o;
    run->tok = tok;
    run->set = set;
    run->C = set->n_classes;
    run->E = E;
    run->n = n;
    /* the model being trained: a copy, with the method's tensors when it has them */
    clipc_config cfg = *c0;
    if (o->method == FT_COOP || o->method == FT_COCOOP) cfg.prompt_ctx = o->n_ctx;
    if (o->method == FT_COOP && o->csc) cfg.prompt_classes = run->C;
    if (o->method == FT_COCOOP) cfg.prompt_meta_hidden = E / 16 > 0 ? E / 16 : 1; /* CoCoOp's vis_dim // 16 */
    if (o->method == FT_ADAPTER) cfg.adapter_hidden = E / 4 > 0 ? E / 4 : 1; /* the paper's reduction of 4 */
    if (!(run->m = model_extend(m0, &cfg, err))) return -1;
    int rc = cfg.prompt_classes ? model_set_prompt_labels(run->m, set->class_names, run->C, err) : 0;
    run->scale = clipc_model_logit_scale(run->m); /* fixed: the pretrained temperature */
    run->labels = malloc((size_t)n * sizeof *run->labels);
    if (rc == 0 && !run->labels) rc = clipc_fail(err, "out of memory");
    for (int i = 0; i < n && rc == 0; i++) run->labels[i] = set->labels[rows[i]];
    if (rc == 0) rc = load_pixels(run->m, set, rows, n, &run->pixels, err);
    if (rc == 0) rc = method_setup(run, m0, err);
    if (rc) finetune_release(run, true);
    return rc;
}

void finetune_release(method_run *run, bool with_model) {
    if (run->m) method_free(run);
    free(run->labels);
    free(run->pixels);
    if (with_model) clipc_model_free(run->m);
    memset(run, 0, sizeof *run);
}

int finetune_run(clipc_model *m0, clipc_tokenizer *tok, const image_set *set, const int *rows, int n,
                 const finetune_options *o, finetune_progress progress, void *pctx, clipc_model **out,
                 finetune_result *res, clipc_error *err) {
    memset(res, 0, sizeof *res);
    *out = NULL;
    method_run run;
    if (finetune_prepare(&run, m0, tok, set, rows, n, o, err)) return -1;
    int B = o->batch < n ? o->batch : n;
    adamw opt = {0};
    int rc = adamw_init_flat(&opt, run.count, o->lr, 0.9f, 0.999f, 1e-8f, o->wd, err);
    if (rc == 0 && run.decay) /* full: the trained towers' matrices only */
        memcpy(opt.decay, run.decay, run.count);
    int *batch_rows = malloc((size_t)B * sizeof *batch_rows), *perm = malloc((size_t)n * sizeof *perm);
    if (rc == 0 && (!batch_rows || !perm)) rc = clipc_fail(err, "out of memory");
    long cached_epoch = -1;
    long warmup = finetune_warmup(o->steps);
    long step = 0;
    for (; step < o->steps && rc == 0; step++) {
        if (o->stop && o->stop(pctx)) break; /* the model so far is the result */
        for (int i = 0; i < B; i++) { /* each epoch a new seeded order */
            long k = step * B + i;
            batch_rows[i] = data_order_index(o->seed, k / n, n, (int)(k % n), perm, &cached_epoch);
        }
        memset(run.grad, 0, run.count * sizeof *run.grad);
        float loss;
        int correct = 0;
        if ((rc = method_step(&run, batch_rows, B, &loss, &correct, err))) break;
        double ss = 0;
        for (size_t i = 0; i < run.count; i++) ss += (double)run.grad[i] * run.grad[i];
        if (!isfinite(loss) || !isfinite(ss)) {
            rc = clipc_fail(err, "fine-tuning diverged at step %ld: loss %g (try a smaller --lr)", step + 1, loss);
            break;
        }
        opt.lr = lr_at(o->lr, step, warmup, o->steps);
        adamw_step(&opt, run.theta, run.grad); /* every method's forward reads theta itself */
        if (progress) progress(pctx, step + 1, o->steps, loss, (float)correct / B, opt.lr);
    }
    free(batch_rows), free(perm);
    adamw_free(&opt);
    if (rc == 0) rc = method_finish(&run, res, err);
    res->trainable = run.trainable;
    res->steps_done = step;
    clipc_model *trained = run.m;
    finetune_release(&run, rc != 0);
    if (rc) {
        finetune_result_free(res);
        return -1;
    }
    *out = trained;
    return 0;
}

clipc_model *wise_interpolate(const clipc_model *z, const clipc_model *f, float alpha, clipc_error *err) {
    const clipc_config *b = &f->cfg;
    /* the same tensors apart from what fine-tuning adds */
    bool same = z->table.count <= f->table.count && z->cfg.vision_tower == b->vision_tower;
    for (int i = 0; same && i < z->table.count; i++) {
        const param_spec *p = &z->table.items[i], *q = &f->table.items[i];
        same = !strcmp(p->name, q->name) && p->numel == q->numel && p->offset == q->offset;
    }
    if (!same) {
        clipc_fail(err, "the two models differ in architecture (WiSE-FT interpolates a model and its own fine-tuning)");
        return NULL;
    }
    if (!(alpha >= 0 && alpha <= 1)) {
        clipc_fail(err, "--alpha %g is not in 0..1", alpha);
        return NULL;
    }
    clipc_model *w = model_extend(f, b, err);
    if (!w) return NULL;
    for (int i = 0; i < z->table.count; i++) {
        const param_spec *p = &z->table.items[i];
        const float *x = z->params + p->offset, *y = f->params + p->offset;
        float *o = w->params + p->offset;
        for (size_t k = 0; k < p->numel; k++) /* endpoints exact: alpha 0 and 1 copy */
            o[k] = alpha == 0 ? x[k] : alpha == 1 ? y[k] : (1 - alpha) * x[k] + alpha * y[k];
    }
    return w;
}
