/* linprobe.c — linear probes on frozen image features, the CLIP paper's
 * protocol (Radford et al. 2021, appendix A.3): L2-regularised multinomial
 * logistic regression fitted with L-BFGS (Debian's liblbfgs), its strength
 * chosen by a sweep on a validation split carved from the training set.
 * Everything runs in double precision: the problem is small (C x (d+1)
 * unknowns) and the sweep compares fits that differ in the last digits. */
#include "eval.h"

#include <cblas.h>
#include <lbfgs.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct problem {
    const double *X; /* n x d */
    const int *y;
    int n, d, C;
    double lambda;
    double *Z;       /* n x C logits, then dJ/dZ */
} problem;

/* J = (1/n) sum_i [logsumexp(z_i) - z_i,y_i] + (lambda/2) |W|^2, with
 * dJ/dz_i = (softmax(z_i) - onehot(y_i)) / n, dJ/dW = G^T X + lambda W and
 * dJ/db = sum_i G_i. */
static lbfgsfloatval_t objective(void *ctx, const lbfgsfloatval_t *w, lbfgsfloatval_t *g, const int count,
                                 const lbfgsfloatval_t step) {
    (void)count, (void)step;
    problem *p = ctx;
    int n = p->n, d = p->d, C = p->C, stride = d + 1;
    double *Z = p->Z, loss = 0;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, C, d, 1.0, p->X, d, w, stride, 0.0, Z, C);
    #pragma omp parallel for reduction(+ : loss) schedule(static)
    for (int i = 0; i < n; i++) {
        double *z = Z + (size_t)i * C, max = -INFINITY, sum = 0;
        for (int c = 0; c < C; c++) {
            z[c] += w[(size_t)c * stride + d];
            if (z[c] > max) max = z[c];
        }
        for (int c = 0; c < C; c++) sum += exp(z[c] - max);
        loss += max + log(sum) - z[p->y[i]];
        for (int c = 0; c < C; c++) z[c] = exp(z[c] - max) / sum / n;
        z[p->y[i]] -= 1.0 / n;
    }
    double penalty = 0;
    for (int c = 0; c < C; c++)
        for (int j = 0; j < d; j++) penalty += w[(size_t)c * stride + j] * w[(size_t)c * stride + j];
    for (int c = 0; c < C; c++) {
        for (int j = 0; j < d; j++) g[(size_t)c * stride + j] = p->lambda * w[(size_t)c * stride + j];
        g[(size_t)c * stride + d] = 0;
    }
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, d, n, 1.0, Z, C, p->X, d, 1.0, g, stride);
    for (int i = 0; i < n; i++)
        for (int c = 0; c < C; c++) g[(size_t)c * stride + d] += Z[(size_t)i * C + c];
    return loss / n + 0.5 * p->lambda * penalty;
}

int logreg_fit(const float *X, const int *y, int n, int d, int C, double lambda, double *W, clipc_error *err) {
    int count = C * (d + 1);
    double *Xd = malloc((size_t)n * d * sizeof *Xd), *Z = malloc((size_t)n * C * sizeof *Z);
    lbfgsfloatval_t *w = lbfgs_malloc(count);
    if (!Xd || !Z || !w) {
        free(Xd), free(Z), lbfgs_free(w);
        return clipc_fail(err, "out of memory");
    }
    for (size_t i = 0; i < (size_t)n * d; i++) Xd[i] = X[i];
    memcpy(w, W, (size_t)count * sizeof *w);
    problem p = {Xd, y, n, d, C, lambda, Z};
    lbfgs_parameter_t param;
    lbfgs_parameter_init(&param);
    param.epsilon = 1e-6;      /* |g| <= 1e-6 max(1, |w|) */
    param.past = 10;           /* or the objective gains < 1e-9 (relative) over 10 iterations */
    param.delta = 1e-9;
    param.max_iterations = 1000;
    double fx;
    int status = lbfgs(count, w, &fx, objective, NULL, &p, &param);
    /* Stopping in a line search or on rounding means we are at the optimum
     * to double precision; only configuration and memory errors are real. */
    int ok = status >= 0 || status == LBFGSERR_ROUNDING_ERROR || status == LBFGSERR_MAXIMUMITERATION ||
             status == LBFGSERR_MAXIMUMLINESEARCH || status == LBFGSERR_MINIMUMSTEP ||
             status == LBFGSERR_MAXIMUMSTEP;
    if (ok) memcpy(W, w, (size_t)count * sizeof *w);
    free(Xd), free(Z), lbfgs_free(w);
    return ok ? 0 : clipc_fail(err, "logistic regression: L-BFGS failed (status %d)", status);
}

void logreg_scores(const double *W, const float *X, int n, int d, int C, float *scores) {
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++)
        for (int c = 0; c < C; c++) {
            const double *w = W + (size_t)c * (d + 1);
            double z = w[d];
            for (int j = 0; j < d; j++) z += w[j] * X[(size_t)i * d + j];
            scores[(size_t)i * C + c] = (float)z;
        }
}

/* Gathers rows idx[0..n-1] of X and y. */
static void gather(const float *X, const int *y, int d, const int *idx, int n, float *Xo, int *yo) {
    for (int i = 0; i < n; i++) {
        memcpy(Xo + (size_t)i * d, X + (size_t)idx[i] * d, (size_t)d * sizeof *Xo);
        yo[i] = y[idx[i]];
    }
}

static double top1(const double *W, const float *X, const int *y, int n, int d, int C, float *scores) {
    logreg_scores(W, X, n, d, C, scores);
    long hit = 0;
    for (int i = 0; i < n; i++) hit += rank_of(scores + (size_t)i * C, C, y[i]) == 0;
    return (double)hit / n;
}

void shot_order(uint64_t seed, int n, int *order) { rng_permutation(seed ^ 0x11e4b90beULL, n, order); }

/* The rows to fit and to validate on, in a seeded order (perm, taken:
 * scratch of ntr and C ints). */
static void probe_split(const int *ytr, int ntr, int C, int shots, uint64_t seed, int *perm, int *taken, int *fit_idx,
                        int *n_fit, int *val_idx, int *n_val) {
    shot_order(seed, ntr, perm); /* a seeded shuffle decides the split */
    *n_fit = *n_val = 0;
    memset(taken, 0, (size_t)C * sizeof *taken);
    if (shots > 0) { /* shots per class to fit; a disjoint min(shots, 4) per class to validate (CoOp's rule) */
        int val_shots = shots < 4 ? shots : 4;
        for (int i = 0; i < ntr; i++) {
            int c = ytr[perm[i]];
            if (taken[c] < shots) fit_idx[(*n_fit)++] = perm[i];
            else if (taken[c] < shots + val_shots) val_idx[(*n_val)++] = perm[i];
            taken[c]++;
        }
    } else { /* 20% validation, 80% to fit */
        *n_val = ntr / 5;
        for (int i = 0; i < ntr; i++)
            if (i < *n_val) val_idx[i] = perm[i];
            else fit_idx[(*n_fit)++] = perm[i];
    }
}

static int ascending(const void *a, const void *b) { return (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b); }

int probe_rows(const int *ytr, int ntr, int C, int shots, uint64_t seed, int *rows, int *n_rows, clipc_error *err) {
    int *perm = malloc((size_t)ntr * sizeof *perm), *taken = malloc((size_t)C * sizeof *taken);
    int *val = malloc((size_t)ntr * sizeof *val);
    if (!perm || !taken || !val) {
        free(perm), free(taken), free(val);
        return clipc_fail(err, "out of memory");
    }
    int n_fit, n_val;
    probe_split(ytr, ntr, C, shots, seed, perm, taken, rows, &n_fit, val, &n_val);
    memcpy(rows + n_fit, val, (size_t)n_val * sizeof *rows);
    *n_rows = n_fit + n_val;
    qsort(rows, (size_t)*n_rows, sizeof *rows, ascending); /* the files in their order */
    free(perm), free(taken), free(val);
    return 0;
}

int linear_probe(const float *Xtr, const int *ytr, int ntr, const float *Xte, const int *yte, int nte, int d, int C,
                 int shots, uint64_t seed, probe_result *out, clipc_error *err) {
    memset(out, 0, sizeof *out);
    int stride = d + 1, count = C * stride;
    int *perm = malloc((size_t)ntr * sizeof *perm), *fit_idx = malloc((size_t)ntr * sizeof *fit_idx);
    int *val_idx = malloc((size_t)ntr * sizeof *val_idx), *taken = calloc((size_t)C, sizeof *taken);
    int *yf = malloc((size_t)ntr * sizeof *yf), *yv = malloc((size_t)ntr * sizeof *yv);
    float *Xf = malloc((size_t)ntr * d * sizeof *Xf), *Xv = malloc((size_t)ntr * d * sizeof *Xv);
    size_t score_rows = (size_t)(ntr > nte ? ntr : nte);
    float *scores = malloc(score_rows * C * sizeof *scores);
    double *W = calloc((size_t)count, sizeof *W), *best_W = calloc((size_t)count, sizeof *best_W);
    int rc = 0;
    if (!perm || !fit_idx || !val_idx || !taken || !yf || !yv || !Xf || !Xv || !scores || !W || !best_W) {
        rc = clipc_fail(err, "out of memory");
        goto done;
    }
    int n_fit, n_val;
    probe_split(ytr, ntr, C, shots, seed, perm, taken, fit_idx, &n_fit, val_idx, &n_val);
    if (n_fit == 0 || n_val == 0) {
        rc = clipc_fail(err, "linear probe: too few training samples for a validation split (%d to fit, %d to validate)",
                        n_fit, n_val);
        goto done;
    }
    out->n_train = n_fit, out->n_val = n_val;
    gather(Xtr, ytr, d, fit_idx, n_fit, Xf, yf);
    gather(Xtr, ytr, d, val_idx, n_val, Xv, yv);

    /* Decades from strong to weak regularisation, each fit warm-started from
     * the previous one; ties keep the stronger penalty. Then two rounds of
     * bisection in log space around the best. */
    double best_lambda = 0, best_acc = -1;
    for (int e = 2; e >= -6 && rc == 0; e--) {
        double lambda = pow(10.0, e);
        rc = logreg_fit(Xf, yf, n_fit, d, C, lambda, W, err);
        double acc = rc ? 0 : top1(W, Xv, yv, n_val, d, C, scores);
        if (rc == 0 && acc > best_acc) {
            best_acc = acc, best_lambda = lambda;
            memcpy(best_W, W, (size_t)count * sizeof *W);
        }
    }
    for (double step = 0.5; step >= 0.25 && rc == 0; step /= 2) {
        double centre = best_lambda;
        double *start = malloc((size_t)count * sizeof *start);
        if (!start) {
            rc = clipc_fail(err, "out of memory");
            break;
        }
        memcpy(start, best_W, (size_t)count * sizeof *W);
        for (int side = 1; side >= -1 && rc == 0; side -= 2) {
            double lambda = centre * pow(10.0, side * step);
            memcpy(W, start, (size_t)count * sizeof *W);
            rc = logreg_fit(Xf, yf, n_fit, d, C, lambda, W, err);
            double acc = rc ? 0 : top1(W, Xv, yv, n_val, d, C, scores);
            if (rc == 0 && (acc > best_acc || (acc == best_acc && lambda > best_lambda))) {
                best_acc = acc, best_lambda = lambda;
                memcpy(best_W, W, (size_t)count * sizeof *W);
            }
        }
        free(start);
    }
    if (rc) goto done;
    out->lambda = best_lambda, out->val_acc1 = best_acc;
    /* The final fit: all training rows (k-shot: the k-shot rows only). */
    if (shots > 0) rc = logreg_fit(Xf, yf, n_fit, d, C, best_lambda, best_W, err);
    else rc = logreg_fit(Xtr, ytr, ntr, d, C, best_lambda, best_W, err);
    if (rc == 0) {
        logreg_scores(best_W, Xte, nte, d, C, scores);
        rc = classification_metrics(scores, nte, C, yte, &out->test, err);
    }
done:
    free(perm), free(fit_idx), free(val_idx), free(taken), free(yf), free(yv), free(Xf), free(Xv), free(scores);
    free(W), free(best_W);
    return rc;
}
