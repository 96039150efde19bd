/* loss.c — the contrastive losses on a batch of B (image, text) pairs, with
 * their gradients w.r.t. the un-normalised features and the temperature.
 *
 * Data-parallel over R ranks (OpenCLIP's gather-with-grad + local loss):
 * each rank holds b = B/R pairs, all-gathers the normalised features of
 * the whole batch, and computes only the rows of the logit matrix that
 * belong to its own pairs (b x B logits, never B x B). Its gradient w.r.t.
 * every gathered feature is summed over the ranks by a reduce-scatter, so
 * each rank ends with the exact gradient of the global loss for its own
 * features. One process is the case R = 1.
 *
 * Both normalise first, u = f / |f|, whose backward is
 *     df = (du - u (u . du)) / |f|.
 * CLIP (Radford et al. 2021, fig. 3): logits = s U T^T with s = exp(logit_scale),
 *     loss = (CE(rows) + CE(columns)) / 2, and with P_r / P_c the row / column softmaxes
 *     dlogits = (P_r - I) / 2B + (P_c - I) / 2B,  dlogit_scale = sum(dlogits * logits).
 * SigLIP (Zhai et al. 2023, alg. 1): logits = t U T^T + b with t = exp(t'),
 *     loss = -(1/B) sum_ij log sigmoid(z_ij logits_ij),  z = 2I - 1,
 *     dlogits_ij = -z_ij sigmoid(-z_ij logits_ij) / B. */
#include "train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* u = f / |f| row by row; norms kept for the backward. */
static void normalise(const float *f, float *u, float *norm, int B, int E) {
    for (int i = 0; i < B; i++) {
        double ss = 0;
        for (int k = 0; k < E; k++) ss += (double)f[(size_t)i * E + k] * f[(size_t)i * E + k];
        norm[i] = (float)sqrt(ss);
        for (int k = 0; k < E; k++) u[(size_t)i * E + k] = f[(size_t)i * E + k] / norm[i];
    }
}

static void normalise_backward(const float *u, const float *norm, float *d, int B, int E) {
    for (int i = 0; i < B; i++) {
        float *di = d + (size_t)i * E;
        const float *ui = u + (size_t)i * E;
        double dot = 0;
        for (int k = 0; k < E; k++) dot += (double)ui[k] * di[k];
        for (int k = 0; k < E; k++) di[k] = (float)((di[k] - ui[k] * dot) / norm[i]);
    }
}

/* The monitoring sums over this rank's rows; divided by B at the end. */
typedef struct metric_sums {
    double loss, pos, hard, i2t, t2i;
} metric_sums;

/* cos[j] = q . k_j for all B keys, in double. */
static void cosine_row(const float *q, const float *keys, int B, int E, double *cos) {
    for (int j = 0; j < B; j++) {
        double s = 0;
        for (int k = 0; k < E; k++) s += (double)q[k] * keys[(size_t)j * E + k];
        cos[j] = s;
    }
}

/* Row i's monitoring: its positive, its hardest negative, whether it ranks
 * its own pair first. */
static void row_metrics(const double *cos, int B, int i, bool image_row, metric_sums *ms) {
    double best_neg = -2.0;
    int arg = 0;
    for (int j = 0; j < B; j++) {
        if (j != i && cos[j] > best_neg) best_neg = cos[j];
        if (cos[j] > cos[arg]) arg = j;
    }
    if (image_row) {
        ms->pos += cos[i];
        ms->hard += B > 1 ? best_neg : 0.0;
        ms->i2t += arg == i;
    } else {
        ms->t2i += arg == i;
    }
}

/* CLIP's InfoNCE, rows r0..r0+b-1 of both logits = s U V^T (image -> text)
 * and s V U^T (text -> image), each a cross-entropy against the diagonal,
 * weighted 1/(2B). du, dv [B, E] receive this part's gradient. */
static void clip_part(const float *u, const float *v, int B, int E, int r0, int b, double s, float *du, float *dv,
                      double *cos, double *d_logit_scale, metric_sums *ms) {
    for (int pass = 0; pass < 2; pass++) {
        const float *queries = pass ? v : u, *keys = pass ? u : v;
        float *dq = pass ? dv : du, *dk = pass ? du : dv;
        for (int i = r0; i < r0 + b; i++) {
            const float *q = queries + (size_t)i * E;
            cosine_row(q, keys, B, E, cos);
            row_metrics(cos, B, i, pass == 0, ms);
            double max = -INFINITY, sum = 0;
            for (int j = 0; j < B; j++) max = s * cos[j] > max ? s * cos[j] : max;
            for (int j = 0; j < B; j++) sum += exp(s * cos[j] - max);
            ms->loss += (log(sum) + max - s * cos[i]) / (2.0 * B);
            for (int j = 0; j < B; j++) {
                double dl = (exp(s * cos[j] - max) / sum - (i == j)) / (2.0 * B); /* d loss / d logit */
                float g = (float)(dl * s);
                *d_logit_scale += dl * s * cos[j];
                for (int k = 0; k < E; k++) {
                    dq[(size_t)i * E + k] += g * keys[(size_t)j * E + k];
                    dk[(size_t)j * E + k] += g * q[k];
                }
            }
        }
    }
}

/* log sigmoid(x) without overflow. */
static double log_sigmoid(double x) { return x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x)); }
static double sigmoid(double x) { return x >= 0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x)); }

/* SigLIP, rows r0..r0+b-1 of logits = t U V^T + bias: every pair appears
 * in exactly one rank's rows. (The text rows are scanned for monitoring
 * only.) */
static void siglip_part(const float *u, const float *v, int B, int E, int r0, int b, double t, double bias, float *du,
                        float *dv, double *cos, double *d_t_prime, double *d_bias, metric_sums *ms) {
    for (int i = r0; i < r0 + b; i++) {
        const float *q = u + (size_t)i * E;
        cosine_row(q, v, B, E, cos);
        row_metrics(cos, B, i, true, ms);
        for (int j = 0; j < B; j++) {
            double z = i == j ? 1.0 : -1.0, l = t * cos[j] + bias;
            ms->loss -= log_sigmoid(z * l) / B;
            double dl = -z * sigmoid(-z * l) / B;
            float g = (float)(dl * t);
            *d_t_prime += dl * t * cos[j];
            *d_bias += dl;
            for (int k = 0; k < E; k++) {
                du[(size_t)i * E + k] += g * v[(size_t)j * E + k];
                dv[(size_t)j * E + k] += g * q[k];
            }
        }
    }
    for (int i = r0; i < r0 + b; i++) {
        cosine_row(v + (size_t)i * E, u, B, E, cos);
        row_metrics(cos, B, i, false, ms);
    }
}

int contrastive_loss(const dist *d, int kind, const float *img, const float *txt, int b, int E, float scale_param,
                     float bias_param, float *d_img, float *d_txt, float *d_scale, float *d_bias, loss_metrics *out) {
    static const dist single = {0, 1, false};
    if (!d) d = &single;
    if (b < 1 || E < 1) return -1;
    int B = b * d->size, r0 = b * d->rank;
    size_t local = (size_t)b * E, all = (size_t)B * E;
    float *buf = calloc(2 * local + 4 * all + 2 * (size_t)b, sizeof *buf);
    double *cos = malloc((size_t)B * sizeof *cos);
    if (!buf || !cos) {
        free(buf), free(cos);
        return -1;
    }
    float *u_loc = buf, *v_loc = u_loc + local, *u = v_loc + local, *v = u + all, *du = v + all, *dv = du + all;
    float *nu = dv + all, *nv = nu + b;
    normalise(img, u_loc, nu, b, E);
    normalise(txt, v_loc, nv, b, E);
    dist_allgather(d, u_loc, (int)local, u);
    dist_allgather(d, v_loc, (int)local, v);
    metric_sums ms = {0};
    double g_scale = 0, g_bias = 0;
    if (kind == LOSS_SIGLIP)
        siglip_part(u, v, B, E, r0, b, exp((double)scale_param), bias_param, du, dv, cos, &g_scale, &g_bias, &ms);
    else
        clip_part(u, v, B, E, r0, b, exp((double)scale_param), du, dv, cos, &g_scale, &ms);
    /* every rank's share of each feature's gradient, summed where the feature lives */
    dist_reduce_scatter(d, du, (int)local, d_img);
    dist_reduce_scatter(d, dv, (int)local, d_txt);
    normalise_backward(u_loc, nu, d_img, b, E);
    normalise_backward(v_loc, nv, d_txt, b, E);
    double sums[5] = {ms.loss, ms.pos, ms.hard, ms.i2t, ms.t2i};
    dist_sum_doubles(d, sums, 5);
    out->loss = (float)sums[0];
    out->pos_sim = (float)(sums[1] / B);
    out->hard_neg_sim = (float)(sums[2] / B);
    out->margin = out->pos_sim - out->hard_neg_sim;
    out->acc_i2t = (float)(sums[3] / B);
    out->acc_t2i = (float)(sums[4] / B);
    /* parameter gradients: this rank's part, summed with the others' by the trainer */
    *d_scale = (float)g_scale;
    if (d_bias) *d_bias = (float)g_bias;
    free(buf), free(cos);
    return 0;
}

int clip_loss(const float *img, const float *txt, int B, int E, float logit_scale, float *d_img, float *d_txt,
              float *d_logit_scale, loss_metrics *out) {
    return contrastive_loss(NULL, LOSS_CLIP, img, txt, B, E, logit_scale, 0, d_img, d_txt, d_logit_scale, NULL, out);
}

int siglip_loss(const float *img, const float *txt, int B, int E, float t_prime, float bias, float *d_img,
                float *d_txt, float *d_t_prime, float *d_bias, loss_metrics *out) {
    return contrastive_loss(NULL, LOSS_SIGLIP, img, txt, B, E, t_prime, bias, d_img, d_txt, d_t_prime, d_bias, out);
}
