/* trainer.c — one optimisation step of contrastive training, and the
 * learning-rate schedule.
 *
 * A step covers accum micro-batches of batch pairs. With accumulation, the
 * loss still sees all accum * batch pairs as negatives of each other, by
 * feature caching (as OpenCLIP's --accum-freq does):
 *   1. forward every micro-batch without keeping activations, collecting
 *      all image and text features;
 *   2. compute the loss over the whole batch and its gradient w.r.t. every
 *      feature;
 *   3. forward each micro-batch again, keeping activations, and back-
 *      propagate its slice of the feature gradient, summing into grads.
 * Then: global gradient-norm clipping, AdamW at the scheduled learning rate,
 * and logit_scale clamped to [0, ln 100] (OpenCLIP's convention).
 *
 * Over several ranks (dist.c), each holds a disjoint slice of every
 * micro-batch; the loss all-gathers the features (loss.c), and the
 * parameter gradients are summed over ranks in buckets: the text tower's
 * sums start as soon as its last backward pass is done, while the image
 * tower's backward runs. Every rank then takes the same AdamW step. */
#include "train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* OpenCLIP's cosine_lr: linear warm-up to lr over warmup steps, then a
 * cosine decay to zero at total steps. step counts from 0. */
float lr_at(float base, long step, long warmup, long total) {
    if (step < warmup) return base * (float)(step + 1) / (float)warmup;
    long e = step - warmup, es = total - warmup;
    if (es <= 0) return base;
    return 0.5f * (1.0f + cosf(3.14159265358979f * (float)e / (float)es)) * base;
}

int trainer_init(trainer *t, clipc_model *m, const train_options *o, const dist *d, clipc_error *err) {
    static const dist single = {0, 1, false};
    memset(t, 0, sizeof *t);
    t->m = m;
    t->o = *o;
    t->d = d ? d : &single;
    if (o->batch % t->d->size)
        return clipc_fail(err, "--batch %d does not split evenly over %d ranks", o->batch, t->d->size);
    t->local_batch = o->batch / t->d->size;
    if (!(t->pending = dist_pending_new())) return clipc_fail(err, "out of memory");
    if (o->loss == LOSS_SIGLIP && !m->cfg.has_logit_bias)
        return clipc_fail(err, "the SigLIP loss needs a model with a logit_bias (initialise it for SigLIP)");
    t->grads = calloc(m->table.total, sizeof *t->grads);
    if (!t->grads) {
        dist_pending_free(t->pending);
        return clipc_fail(err, "out of memory for gradients");
    }
    if (adamw_init(&t->opt, m, o->lr, o->beta1, o->beta2, o->eps, o->weight_decay, err)) {
        free(t->grads);
        dist_pending_free(t->pending);
        return -1;
    }
    return 0;
}

void trainer_free(trainer *t) {
    tower_cache_free(&t->image);
    tower_cache_free(&t->text);
    free(t->grads);
    dist_pending_free(t->pending);
    adamw_free(&t->opt);
    memset(t, 0, sizeof *t);
}

/* Forward both towers on micro-batch k; with caches when asked. */
static int forward_micro(trainer *t, const float *pixels, const int32_t *tokens, int k, float *fi, float *ft,
                         tower_cache *ci, tower_cache *ct, clipc_error *err) {
    const clipc_config *c = &t->m->cfg;
    int B = t->local_batch, E = c->embed_dim, R = c->image_resolution, ctx = c->context_length;
    const float *px = pixels + (size_t)k * B * 3 * R * R;
    const int32_t *tk = tokens + (size_t)k * B * ctx;
    if (vit_train_forward(t->m, px, B, fi + (size_t)k * B * E, ci, err)) return -1;
    return text_train_forward(t->m, tk, B, ft + (size_t)k * B * E, ct, err);
}

int trainer_compute_grads(trainer *t, const float *pixels, const int32_t *tokens, loss_metrics *lm, clipc_error *err) {
    clipc_model *m = t->m;
    int K = t->o.accum, B = t->local_batch, N = K * B, E = m->cfg.embed_dim;
    memset(t->grads, 0, m->table.total * sizeof *t->grads);
    float *buf = malloc((size_t)N * E * 4 * sizeof *buf);
    if (!buf) return clipc_fail(err, "out of memory");
    float *fi = buf, *ft = fi + (size_t)N * E, *di = ft + (size_t)N * E, *dt = di + (size_t)N * E;
    /* The caches hold one micro-batch's activations; their buffers are
     * reused from pass to pass and step to step. */
    tower_cache *ci = &t->image, *ct = &t->text;
    int rc = 0;
    /* 1. all features (with accumulation, each pass overwrites the last) */
    for (int k = 0; k < (K > 1 ? K : 1) && rc == 0; k++) rc = forward_micro(t, pixels, tokens, k, fi, ft, ci, ct, err);
    /* 2. the loss over the step's pairs on every rank */
    if (rc == 0) {
        float *P = m->params, *G = t->grads;
        bool siglip = t->o.loss == LOSS_SIGLIP;
        rc = contrastive_loss(t->d, t->o.loss, fi, ft, N, E, P[m->L.logit_scale], siglip ? P[m->L.logit_bias] : 0, di,
                              dt, &G[m->L.logit_scale], siglip ? &G[m->L.logit_bias] : NULL, lm);
        if (rc) clipc_fail(err, "out of memory in the loss");
    }
    /* 3. backward, micro-batch by micro-batch. The parameters are laid out
     * image tower first, then text tower, logit_scale and logit_bias
     * (params.c), so after the last text backward everything from
     * token_embedding on is final and its sum over ranks can start. */
    size_t text_first = m->L.t_tok, total = m->table.total;
    for (int k = 0; k < K && rc == 0; k++) {
        if (K > 1 && forward_micro(t, pixels, tokens, k, fi, ft, ci, ct, err)) {
            rc = -1;
            break;
        }
        rc = text_train_backward(m, ct, dt + (size_t)k * B * E, t->grads, err);
        if (rc == 0 && k == K - 1) dist_sum_floats_start(t->d, t->grads + text_first, total - text_first, t->pending);
        if (rc == 0) rc = vit_train_backward(m, ci, di + (size_t)k * B * E, t->grads, err);
    }
    if (rc == 0) dist_sum_floats_start(t->d, t->grads, text_first, t->pending);
    dist_sum_floats_finish(t->d, t->pending); /* never leave a sum in flight */
    free(buf);
    return rc;
}

int trainer_step(trainer *t, const float *pixels, const int32_t *tokens, step_stats *st, clipc_error *err) {
    memset(st, 0, sizeof *st);
    if (trainer_compute_grads(t, pixels, tokens, &st->metrics, err)) return -1;
    double ss = 0;
    for (size_t i = 0; i < t->m->table.total; i++) ss += (double)t->grads[i] * t->grads[i];
    st->grad_norm = (float)sqrt(ss);
    /* A diverging run stops before the bad step touches the weights. */
    if (!isfinite(st->metrics.loss) || !isfinite(st->grad_norm))
        return clipc_fail(err, "training diverged at step %ld: loss %g, gradient norm %g", t->opt.step + 1,
                          st->metrics.loss, st->grad_norm);
    if (t->o.grad_clip > 0 && st->grad_norm > t->o.grad_clip) {
        float s = t->o.grad_clip / st->grad_norm;
        for (size_t i = 0; i < t->m->table.total; i++) t->grads[i] *= s;
    }
    st->lr = t->opt.lr = lr_at(t->o.lr, t->opt.step, t->o.warmup, t->o.total_steps);
    adamw_step(&t->opt, t->m->params, t->grads);
    float *ls = &t->m->params[t->m->L.logit_scale];
    *ls = fminf(fmaxf(*ls, 0.0f), logf(100.0f));
    st->logit_scale = expf(*ls);
    return 0;
}
