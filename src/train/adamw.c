/* adamw.c — AdamW (Loshchilov & Hutter 2019) exactly as PyTorch's
 * torch.optim.AdamW computes it:
 *     p *= 1 - lr * wd                       (decoupled decay, where it applies)
 *     m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
 *     p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps) */
#include "train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int adamw_init_flat(adamw *opt, size_t count, float lr, float beta1, float beta2, float eps, float weight_decay,
                    clipc_error *err) {
    memset(opt, 0, sizeof *opt);
    opt->lr = lr, opt->beta1 = beta1, opt->beta2 = beta2, opt->eps = eps, opt->weight_decay = weight_decay;
    opt->count = count;
    opt->m = calloc(count ? count : 1, sizeof *opt->m);
    opt->v = calloc(count ? count : 1, sizeof *opt->v);
    opt->decay = malloc(count ? count : 1);
    if (!opt->m || !opt->v || !opt->decay) {
        adamw_free(opt);
        return clipc_fail(err, "out of memory for the optimiser state");
    }
    memset(opt->decay, 1, count);
    return 0;
}

int adamw_init(adamw *opt, const clipc_model *m, float lr, float beta1, float beta2, float eps, float weight_decay,
               clipc_error *err) {
    if (adamw_init_flat(opt, m->table.total, lr, beta1, beta2, eps, weight_decay, err)) return -1;
    memset(opt->decay, 0, opt->count);
    for (int i = 0; i < m->table.count; i++) {
        const param_spec *p = &m->table.items[i];
        /* ndim < 2: gains, biases, class embedding, logit_scale — and the
         * BatchNorm statistics of a ResNet, which are not trained anyway */
        if (p->ndim >= 2) memset(opt->decay + p->offset, 1, p->numel);
    }
    return 0;
}

void adamw_free(adamw *opt) {
    free(opt->m);
    free(opt->v);
    free(opt->decay);
    memset(opt, 0, sizeof *opt);
}

/* Floats [lo, hi) at learning rate lr (opt->step already counted). */
static void step_range(adamw *opt, float *params, const float *grads, size_t lo, size_t hi, float lr) {
    float b1 = opt->beta1, b2 = opt->beta2;
    float bc1 = 1.0f - powf(b1, (float)opt->step), bc2_sqrt = sqrtf(1.0f - powf(b2, (float)opt->step));
    float step_size = lr / bc1, shrink = 1.0f - lr * opt->weight_decay;
#pragma omp parallel for simd if (hi - lo > 65536)
    for (size_t i = lo; i < hi; i++) {
        float g = grads[i];
        if (opt->decay[i]) params[i] *= shrink;
        opt->m[i] = b1 * opt->m[i] + (1.0f - b1) * g;
        opt->v[i] = b2 * opt->v[i] + (1.0f - b2) * g * g;
        params[i] -= step_size * opt->m[i] / (sqrtf(opt->v[i]) / bc2_sqrt + opt->eps);
    }
}

void adamw_step(adamw *opt, float *params, const float *grads) {
    opt->step++;
    size_t g0 = opt->group_first, g1 = opt->group_first + opt->group_count;
    step_range(opt, params, grads, 0, g0 < opt->count ? g0 : opt->count, opt->lr);
    if (opt->group_count) step_range(opt, params, grads, g0, g1, opt->group_lr);
    if (g1 < opt->count) step_range(opt, params, grads, g1, opt->count, opt->lr);
}
