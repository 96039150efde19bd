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
 * A frozen tower (--freeze, as LiT locks the image tower) computes its
 * features once per step with the inference forward and runs no backward.
 *
 * Then: global gradient-norm clipping, AdamW at the scheduled learning rate
 * (logit_scale in its own group at lr_temperature, on the same schedule),
 * and logit_scale clamped to [0, ln 100] (OpenCLIP's convention).
 *
 * Over several ranks (dist.c), each holds a disjoint slice of every
 * micro-batch; the loss all-gathers the features (loss.c), and the
 * parameter gradients are summed over ranks in buckets: the text tower's
 * sums start as soon as its last backward pass is done, while the image
 * tower's backward runs. Every rank then takes the same AdamW step.
 *
 * Within a process, a narrow model (towers at most 256 wide, like the
 * 3.5M-parameter fmnist CLIP) is data-parallel over threads in the same
 * way: each thread runs forward and backward on its contiguous share of
 * every micro-batch with its own activations and gradient buffer, the loss
 * sees all features at once, and the shares' gradients are summed in share
 * order. Its GEMMs are too small to split between threads without the
 * threads waiting on each other at every layer; whole shares never wait. A
 * wide model (ViT-B-32) keeps one share and threads inside each GEMM,
 * where its gradient buffers would cost more memory than sharing saves. */
#include "train.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* OpenCLIP's cosine_lr: linear warm-up to lr over warmup steps, then a
 * cosine decay to zero at total steps. step counts from 0. */
const char *train_freeze_name(int freeze) {
    return freeze == FREEZE_IMAGE ? "image" : freeze == FREEZE_TEXT ? "text" : "none";
}

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
    if (m->cfg.family == CLIPC_SIGLIP) /* its MAP head and bidirectional text tower have no backward pass yet */
        return clipc_fail(err, "SigLIP models run in clipc for inference only: training them is not supported yet "
                               "(clipc trains CLIP models with the SigLIP loss: --loss siglip)");
    if (o->batch % t->d->size)
        return clipc_fail(err, "--batch %d does not split evenly over %d ranks", o->batch, t->d->size);
    bool coca = m->cfg.family == CLIPC_COCA;
    if (coca && o->freeze != FREEZE_NONE)
        return clipc_fail(err, "a CoCa model trains both towers (its decoder reads the image tokens): --freeze is for CLIP models");
    if (coca && o->loss != LOSS_CLIP) return clipc_fail(err, "CoCa trains with its own loss: InfoNCE plus captioning (--loss clip)");
    if (t->o.contrastive_weight <= 0) t->o.contrastive_weight = 1.0f;
    if (t->o.caption_weight <= 0) t->o.caption_weight = 2.0f;
    t->local_batch = o->batch / t->d->size;
    if (t->o.lr_temperature <= 0) t->o.lr_temperature = o->lr;
    bool image = o->freeze != FREEZE_IMAGE, text = o->freeze != FREEZE_TEXT; /* the towers that learn */
    if ((image && m->cfg.vision_layer_scale) || (text && m->cfg.text_layer_scale))
        return clipc_fail(err, "training a model with LayerScale (ls_1/ls_2 gammas) is not supported yet");
    if (image && m->cfg.vision_tower != CLIPC_VIT)
        return clipc_fail(err, "training the image tower needs a ViT; this model's is a ResNet (--freeze image trains "
                               "the text tower alone)");
    if (!(t->pending = dist_pending_new())) return clipc_fail(err, "out of memory");
    if (o->loss == LOSS_SIGLIP && !m->cfg.has_logit_bias)
        return clipc_fail(err, "the SigLIP loss needs a model with a logit_bias (initialise it for SigLIP)");
    int threads = omp_get_max_threads(), narrow = m->cfg.vision_width <= 256 && m->cfg.text_width <= 256;
    t->shares = narrow ? (threads < t->local_batch ? threads : t->local_batch) : 1;
    t->shares = t->shares < 1 ? 1 : t->shares;
    t->grads = calloc(m->table.total, sizeof *t->grads);
    t->image = calloc((size_t)t->shares, sizeof *t->image);
    t->text = calloc((size_t)t->shares, sizeof *t->text);
    t->dtext = calloc((size_t)t->shares, sizeof *t->dtext);
    t->dimage = calloc((size_t)t->shares, sizeof *t->dimage);
    t->dtext_cap = calloc((size_t)t->shares, sizeof *t->dtext_cap);
    t->dimage_cap = calloc((size_t)t->shares, sizeof *t->dimage_cap);
    t->caption_loss = calloc((size_t)t->shares, sizeof *t->caption_loss);
    if (!t->dtext || !t->dimage || !t->dtext_cap || !t->dimage_cap || !t->caption_loss) {
        free(t->dtext), free(t->dimage), free(t->dtext_cap), free(t->dimage_cap), free(t->caption_loss);
        t->dtext = t->dimage = NULL, t->dtext_cap = t->dimage_cap = NULL, t->caption_loss = NULL;
        free(t->grads), t->grads = NULL;
    }
    if (t->shares > 1) t->share_grads = malloc((size_t)(t->shares - 1) * m->table.total * sizeof *t->share_grads);
    if (!t->grads || !t->image || !t->text || (t->shares > 1 && !t->share_grads)) {
        free(t->grads), free(t->image), free(t->text), free(t->share_grads);
        dist_pending_free(t->pending);
        return clipc_fail(err, "out of memory for gradients");
    }
    if (adamw_init(&t->opt, m, o->lr, o->beta1, o->beta2, o->eps, o->weight_decay, err)) {
        free(t->grads), free(t->image), free(t->text), free(t->share_grads);
        dist_pending_free(t->pending);
        return -1;
    }
    /* the temperature group: logit_scale, and logit_bias right after it (params.c) */
    t->opt.group_first = m->L.logit_scale;
    t->opt.group_count = (m->cfg.has_logit_bias ? m->L.logit_bias : m->L.logit_scale) + 1 - m->L.logit_scale;
    /* a frozen tower does not decay either (it has no gradient, so no other motion) */
    if (!image) memset(t->opt.decay, 0, m->L.t_tok);
    if (!text) memset(t->opt.decay + m->L.t_tok, 0, m->L.logit_scale - m->L.t_tok);
    return 0;
}

void trainer_free(trainer *t) {
    for (int s = 0; s < t->shares && t->dtext; s++) free(t->dtext[s]), free(t->dimage[s]);
    free(t->dtext), free(t->dimage), free(t->dtext_cap), free(t->dimage_cap), free(t->caption_loss);
    for (int s = 0; s < t->shares && t->image; s++) tower_cache_free(&t->image[s]);
    for (int s = 0; s < t->shares && t->text; s++) tower_cache_free(&t->text[s]);
    free(t->image), free(t->text), free(t->share_grads);
    free(t->grads);
    dist_pending_free(t->pending);
    adamw_free(&t->opt);
    memset(t, 0, sizeof *t);
}

/* What a pass over the shares does. */
enum share_work { SHARE_FORWARD, SHARE_TEXT_BACKWARD, SHARE_IMAGE_BACKWARD };

typedef struct share_job {
    trainer *t;
    enum share_work work;
    int k;                     /* the micro-batch */
    const float *pixels;       /* the step's inputs */
    const int32_t *tokens;
    float *fi, *ft;            /* features, written by forward */
    const float *di, *dt;      /* their gradients, read by backward */
} share_job;

/* The job on share s of micro-batch k (a contiguous range of its pairs),
 * with the share's caches and gradient buffer; run by run_shares. */
static int run_share(void *ctx, int s, clipc_error *err) {
    const share_job *j = ctx;
    trainer *t = j->t;
    const clipc_config *c = &t->m->cfg;
    int E = c->embed_dim, R = c->image_resolution, ctx_len = c->context_length;
    int first = s * t->local_batch / t->shares, count = (s + 1) * t->local_batch / t->shares - first;
    size_t row = (size_t)j->k * t->local_batch + first;
    float *grads = s ? t->share_grads + (size_t)(s - 1) * t->m->table.total : t->grads;
    switch (j->work) {
    case SHARE_FORWARD: /* a frozen tower's features are already there (trainer_compute_grads) */
        if (t->o.freeze != FREEZE_IMAGE &&
            vit_train_forward(t->m, NULL, j->pixels + row * 3 * R * R, count, j->fi + row * E, &t->image[s], err))
            return -1;
        if (t->o.freeze == FREEZE_TEXT) return 0;
        return text_train_forward(t->m, NULL, NULL, j->tokens + row * ctx_len, count, j->ft + row * E, &t->text[s], err);
    case SHARE_TEXT_BACKWARD:
        if (c->family == CLIPC_COCA) { /* the decoder first: its gradients join both towers' */
            size_t nt = (size_t)t->text[s].T * c->text_width, ni = (size_t)count * c->pool_queries * E;
            if (nt > t->dtext_cap[s]) free(t->dtext[s]), t->dtext[s] = malloc(nt * sizeof(float)), t->dtext_cap[s] = nt;
            if (ni > t->dimage_cap[s]) free(t->dimage[s]), t->dimage[s] = malloc(ni * sizeof(float)), t->dimage_cap[s] = ni;
            if (!t->dtext[s] || !t->dimage[s]) {
                t->dtext_cap[s] = t->dimage_cap[s] = 0;
                return clipc_fail(err, "out of memory for the decoder's gradients");
            }
            memset(t->dtext[s], 0, nt * sizeof(float));
            memset(t->dimage[s], 0, ni * sizeof(float));
            double loss;
            long targets;
            if (coca_caption_train(t->m, &t->text[s], &t->image[s], t->caption_scale, grads, t->dtext[s], t->dimage[s], &loss,
                                   &targets, err))
                return -1;
            t->caption_loss[s] += loss;
            return text_train_backward_tokens(t->m, &t->text[s], j->dt + row * E, t->dtext[s], grads, NULL, err);
        }
        return text_train_backward(t->m, &t->text[s], j->dt + row * E, grads, NULL, err);
    case SHARE_IMAGE_BACKWARD:
        if (c->family == CLIPC_COCA)
            return vit_train_backward_tokens(t->m, &t->image[s], j->di + row * E, t->dimage[s], grads, err);
        return vit_train_backward(t->m, &t->image[s], j->di + row * E, grads, err);
    }
    return -1;
}

/* grads[lo, hi) += every other share's gradients there, in share order. */
static void sum_shares(trainer *t, size_t lo, size_t hi) {
    size_t total = t->m->table.total;
#pragma omp parallel for if (t->shares > 1)
    for (size_t i = lo; i < hi; i++)
        for (int s = 1; s < t->shares; s++) t->grads[i] += t->share_grads[(size_t)(s - 1) * total + i];
}

int trainer_compute_grads(trainer *t, const float *pixels, const int32_t *tokens, loss_metrics *lm, clipc_error *err) {
    clipc_model *m = t->m;
    int K = t->o.accum, N = K * t->local_batch, E = m->cfg.embed_dim;
    size_t total = m->table.total;
    memset(t->grads, 0, total * sizeof *t->grads);
    if (t->shares > 1) memset(t->share_grads, 0, (size_t)(t->shares - 1) * total * sizeof *t->share_grads);
    float *buf = malloc((size_t)N * E * 4 * sizeof *buf);
    if (!buf) return clipc_fail(err, "out of memory");
    share_job job = {t, SHARE_FORWARD, 0, pixels, tokens, buf, buf + (size_t)N * E, buf + (size_t)2 * N * E,
                     buf + (size_t)3 * N * E};
    float *di = buf + (size_t)2 * N * E, *dt = buf + (size_t)3 * N * E;
    int rc = 0;
    /* 1. all features (with accumulation, each pass overwrites the
     * caches of the last); a frozen tower's by the inference forward, once */
    if (t->o.freeze == FREEZE_IMAGE) rc = clipc_encode_image(m, pixels, N, job.fi, err);
    if (t->o.freeze == FREEZE_TEXT) rc = clipc_encode_text(m, tokens, N, job.ft, err);
    for (job.k = 0; job.k < K && rc == 0; job.k++) rc = run_shares(t->shares, run_share, &job, err);
    /* 2. the loss over the step's pairs on every rank */
    if (rc == 0) {
        float *P = m->params, *G = t->grads;
        bool siglip = t->o.loss == LOSS_SIGLIP;
        rc = contrastive_loss(t->d, t->o.loss, job.fi, job.ft, N, E, P[m->L.logit_scale],
                              siglip ? P[m->L.logit_bias] : 0, di, dt, &G[m->L.logit_scale],
                              siglip ? &G[m->L.logit_bias] : NULL, lm);
        if (rc) clipc_fail(err, "out of memory in the loss");
    }
    bool coca = m->cfg.family == CLIPC_COCA;
    double caption_targets = 0;
    if (rc == 0 && coca) { /* CoCaLoss: weights on the two terms; the caption term a mean over the step's targets */
        float cw = t->o.contrastive_weight;
        for (size_t i = 0; i < (size_t)N * E; i++) di[i] *= cw, dt[i] *= cw;
        t->grads[m->L.logit_scale] *= cw;
        caption_targets = (double)coca_caption_targets(&m->cfg, tokens, N);
        dist_sum_doubles(t->d, &caption_targets, 1);
        t->caption_scale = caption_targets > 0 ? (float)(t->o.caption_weight / caption_targets) : 0.0f;
        for (int s = 0; s < t->shares; s++) t->caption_loss[s] = 0;
    }
    /* 3. backward, micro-batch by micro-batch (re-running its forward pass
     * first when accumulating: the caches hold only the last one). The
     * parameters are laid out image tower first, then text tower,
     * logit_scale and logit_bias (params.c), so after the last text
     * backward everything from token_embedding on is final: its sum over
     * ranks starts while the image tower's backward runs. */
    size_t text_first = m->L.t_tok;
    for (job.k = 0; job.k < K && rc == 0; job.k++) {
        if (K > 1) job.work = SHARE_FORWARD, rc = run_shares(t->shares, run_share, &job, err);
        if (rc == 0 && t->o.freeze != FREEZE_TEXT)
            job.work = SHARE_TEXT_BACKWARD, rc = run_shares(t->shares, run_share, &job, err);
        if (rc == 0 && job.k == K - 1) {
            sum_shares(t, text_first, total);
            dist_sum_floats_start(t->d, t->grads + text_first, total - text_first, t->pending);
        }
        if (rc == 0 && t->o.freeze != FREEZE_IMAGE)
            job.work = SHARE_IMAGE_BACKWARD, rc = run_shares(t->shares, run_share, &job, err);
    }
    if (rc == 0) {
        sum_shares(t, 0, text_first);
        dist_sum_floats_start(t->d, t->grads, text_first, t->pending);
    }
    dist_sum_floats_finish(t->d, t->pending); /* never leave a sum in flight */
    if (rc == 0 && coca) {
        double caption = 0;
        for (int s = 0; s < t->shares; s++) caption += t->caption_loss[s];
        dist_sum_doubles(t->d, &caption, 1);
        lm->contrastive = lm->loss;
        lm->caption = caption_targets > 0 ? (float)(caption / caption_targets) : 0.0f;
        lm->loss = t->o.contrastive_weight * lm->contrastive + t->o.caption_weight * lm->caption;
    }
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
    t->opt.group_lr = lr_at(t->o.lr_temperature, t->opt.step, t->o.warmup, t->o.total_steps);
    adamw_step(&t->opt, t->m->params, t->grads);
    float *ls = &t->m->params[t->m->L.logit_scale];
    *ls = fminf(fmaxf(*ls, 0.0f), logf(100.0f));
    st->logit_scale = expf(*ls);
    return 0;
}
