/* loss.c — the contrastive losses on a batch of B (image, text) pairs, with
 * their gradients w.r.t. the un-normalised features and the temperature.
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

/* cos[i][j] = u_i . v_j, plus the monitoring metrics from it. */
static void cosines(const float *u, const float *v, int B, int E, float *cos, loss_metrics *out) {
    for (int i = 0; i < B; i++)
        for (int j = 0; j < B; j++) {
            double s = 0;
            for (int k = 0; k < E; k++) s += (double)u[(size_t)i * E + k] * v[(size_t)j * E + k];
            cos[(size_t)i * B + j] = (float)s;
        }
    double pos = 0, hard = 0;
    int i2t = 0, t2i = 0;
    for (int i = 0; i < B; i++) {
        float best_neg = -2.0f;
        int arg_row = 0, arg_col = 0;
        for (int j = 0; j < B; j++) {
            if (j != i && cos[(size_t)i * B + j] > best_neg) best_neg = cos[(size_t)i * B + j];
            if (cos[(size_t)i * B + j] > cos[(size_t)i * B + arg_row]) arg_row = j;
            if (cos[(size_t)j * B + i] > cos[(size_t)arg_col * B + i]) arg_col = j;
        }
        pos += cos[(size_t)i * B + i];
        hard += B > 1 ? best_neg : 0.0f;
        i2t += arg_row == i;
        t2i += arg_col == i;
    }
    out->pos_sim = (float)(pos / B);
    out->hard_neg_sim = (float)(hard / B);
    out->margin = out->pos_sim - out->hard_neg_sim;
    out->acc_i2t = (float)i2t / B;
    out->acc_t2i = (float)t2i / B;
}

/* Shared by both losses: with dcos = dL/dcos, the feature gradients. */
static void features_backward(const float *u, const float *v, const float *nu, const float *nv, const float *dcos,
                              int B, int E, float *d_img, float *d_txt) {
    memset(d_img, 0, (size_t)B * E * sizeof *d_img);
    memset(d_txt, 0, (size_t)B * E * sizeof *d_txt);
    for (int i = 0; i < B; i++)
        for (int j = 0; j < B; j++) {
            float g = dcos[(size_t)i * B + j];
            for (int k = 0; k < E; k++) {
                d_img[(size_t)i * E + k] += g * v[(size_t)j * E + k];
                d_txt[(size_t)j * E + k] += g * u[(size_t)i * E + k];
            }
        }
    normalise_backward(u, nu, d_img, B, E);
    normalise_backward(v, nv, d_txt, B, E);
}

/* What both losses start from: normalised features, their norms, the
 * cosine matrix (and the metrics on it), and room for its gradient. */
typedef struct pairs {
    float *buf, *u, *v, *cos, *dcos, *nu, *nv;
} pairs;

static int pairs_begin(pairs *p, const float *img, const float *txt, int B, int E, loss_metrics *out) {
    if (B < 1 || E < 1) return -1;
    p->buf = malloc(((size_t)B * E * 2 + (size_t)B * B * 2 + (size_t)B * 2) * sizeof *p->buf);
    if (!p->buf) return -1;
    p->u = p->buf, p->v = p->u + (size_t)B * E, p->cos = p->v + (size_t)B * E, p->dcos = p->cos + (size_t)B * B;
    p->nu = p->dcos + (size_t)B * B, p->nv = p->nu + B;
    normalise(img, p->u, p->nu, B, E);
    normalise(txt, p->v, p->nv, B, E);
    cosines(p->u, p->v, B, E, p->cos, out);
    return 0;
}

int clip_loss(const float *img, const float *txt, int B, int E, float logit_scale, float *d_img, float *d_txt,
               float *d_logit_scale, loss_metrics *out) {
    pairs p;
    if (pairs_begin(&p, img, txt, B, E, out)) return -1;
    float *u = p.u, *v = p.v, *cos = p.cos, *dcos = p.dcos, *nu = p.nu, *nv = p.nv;
    double s = exp((double)logit_scale), loss = 0, dscale = 0;
    memset(dcos, 0, (size_t)B * B * sizeof *dcos);
    for (int pass = 0; pass < 2; pass++) { /* rows: image -> text; columns: text -> image */
        for (int i = 0; i < B; i++) {
            double max = -INFINITY, sum = 0;
            for (int j = 0; j < B; j++) {
                double l = s * (pass ? cos[(size_t)j * B + i] : cos[(size_t)i * B + j]);
                max = l > max ? l : max;
            }
            for (int j = 0; j < B; j++) sum += exp(s * (pass ? cos[(size_t)j * B + i] : cos[(size_t)i * B + j]) - max);
            loss += (log(sum) + max - s * cos[(size_t)i * B + i]) / (2.0 * B);
            for (int j = 0; j < B; j++) {
                size_t at = pass ? (size_t)j * B + i : (size_t)i * B + j;
                double p = exp(s * cos[at] - max) / sum;
                double dl = (p - (i == j)) / (2.0 * B); /* d loss / d logits[at] */
                dcos[at] += (float)(dl * s);
                dscale += dl * s * cos[at];
            }
        }
    }
    out->loss = (float)loss;
    *d_logit_scale = (float)dscale;
    features_backward(u, v, nu, nv, dcos, B, E, d_img, d_txt);
    free(p.buf);
    return 0;
}

/* log sigmoid(x) without overflow. */
static double log_sigmoid(double x) { return x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x)); }
static double sigmoid(double x) { return x >= 0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x)); }

int siglip_loss(const float *img, const float *txt, int B, int E, float t_prime, float bias, float *d_img,
                 float *d_txt, float *d_t_prime, float *d_bias, loss_metrics *out) {
    pairs p;
    if (pairs_begin(&p, img, txt, B, E, out)) return -1;
    float *u = p.u, *v = p.v, *cos = p.cos, *dcos = p.dcos, *nu = p.nu, *nv = p.nv;
    double t = exp((double)t_prime), loss = 0, dt = 0, db = 0;
    for (int i = 0; i < B; i++)
        for (int j = 0; j < B; j++) {
            size_t at = (size_t)i * B + j;
            double z = i == j ? 1.0 : -1.0, l = t * cos[at] + bias;
            loss -= log_sigmoid(z * l) / B;
            double dl = -z * sigmoid(-z * l) / B;
            dcos[at] = (float)(dl * t);
            dt += dl * t * cos[at];
            db += dl;
        }
    out->loss = (float)loss;
    *d_t_prime = (float)dt;
    *d_bias = (float)db;
    features_backward(u, v, nu, nv, dcos, B, E, d_img, d_txt);
    free(p.buf);
    return 0;
}
