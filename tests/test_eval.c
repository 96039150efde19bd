/* test_eval.c — evaluation metrics on hand-computed cases (ties, several
 * captions per image, k larger than the set), retrieval against a brute
 * force on exact integer features, and the linear probe: 100% on separable
 * data and the closed-form optimum of a symmetric two-point problem. */
#include "test.h"
#include "../src/eval/eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void check_rank(void) {
    const float s[4] = {0.5f, 0.9f, 0.5f, 0.9f};
    /* sorted stably: index 1, 3, 0, 2 */
    CHECK(rank_of(s, 4, 1) == 0 && rank_of(s, 4, 3) == 1 && rank_of(s, 4, 0) == 2 && rank_of(s, 4, 2) == 3,
          "rank_of with ties: %d %d %d %d", rank_of(s, 4, 1), rank_of(s, 4, 3), rank_of(s, 4, 0), rank_of(s, 4, 2));
}

static void check_classification(void) {
    /* 4 samples, 3 classes. Sample 1 ties classes 0 and 1: the lower index
     * wins, so its true class 1 ranks second. */
    const float scores[4 * 3] = {0.1f, 0.7f, 0.2f, /* y=1, correct */
                                 0.5f, 0.5f, 0.0f, /* y=1, tie lost to class 0 */
                                 0.3f, 0.3f, 0.3f, /* y=0, three-way tie won */
                                 0.6f, 0.1f, 0.3f /* y=2, second */};
    const int labels[4] = {1, 1, 0, 2};
    class_metrics m;
    clipc_error err;
    CHECK(classification_metrics(scores, 4, 3, labels, &m, &err) == 0, "classification_metrics failed");
    CHECK(m.acc1 == 0.5 && m.acc5 == 1.0, "acc1 %g (want 0.5), acc5 with k = C = 3: %g (want 1)", m.acc1, m.acc5);
    /* recalls: class 0 1/1, class 1 1/2, class 2 0/1 */
    CHECK(fabs(m.mean_per_class_recall - 0.5) < 1e-12, "mean per-class recall %g, want 0.5", m.mean_per_class_recall);
    const long want[9] = {1, 0, 0, /* true 0 */ 1, 1, 0, /* true 1 */ 1, 0, 0 /* true 2 */};
    CHECK(!memcmp(m.confusion, want, sizeof want), "confusion matrix differs");
    class_metrics_free(&m);

    /* top-5 of 7 classes: the true class 5th counts, 6th does not. A class
     * that never occurs is left out of the mean recall. */
    const float s7[2 * 7] = {7, 6, 5, 4, 3, 2, 1, /* y=4: rank 4 */
                             7, 6, 5, 4, 3, 2, 1 /* y=5: rank 5 */};
    const int y7[2] = {4, 5};
    CHECK(classification_metrics(s7, 2, 7, y7, &m, &err) == 0, "classification_metrics failed");
    CHECK(m.acc1 == 0 && m.acc5 == 0.5 && m.mean_per_class_recall == 0, "top-5 of 7: acc1 %g acc5 %g mpcr %g", m.acc1,
          m.acc5, m.mean_per_class_recall);
    class_metrics_free(&m);
}

static void check_retrieval_hand(void) {
    /* Integer features, so every similarity is exact and ties are real.
     *   images I0=(1,0) I1=(0,1) I2=(1,1)
     *   texts  T0=(1,0)->I0  T1=(2,1)->I0  T2=(0,1)->I1  T3=(1,1)->I2  T4=(1,-1)->I2
     *   similarities   T0 T1 T2 T3 T4
     *              I0   1  2  0  1  1
     *              I1   0  1  1  1 -1
     *              I2   1  3  1  2  0
     * image->text best ranks: I0 0 (T1), I1 1 (T2 ties T1, which comes first),
     *   I2 1 (T3 behind T1): R@1 1/3, R@2 = R@5 = 1.
     * text->image ranks: T0 0, T1 1 (I2 scores 3), T2 0 (ties I2, but I1
     *   comes first), T3 0, T4 1: R@1 3/5, R@2 = 1. */
    const float img[3 * 2] = {1, 0, 0, 1, 1, 1};
    const float txt[5 * 2] = {1, 0, 2, 1, 0, 1, 1, 1, 1, -1};
    const int text_image[5] = {0, 0, 1, 2, 2};
    const int ks[4] = {1, 2, 5, 10};
    double i2t[4], t2i[4];
    clipc_error err;
    CHECK(retrieval_recall(img, 3, txt, 5, 2, text_image, ks, 4, i2t, t2i, &err) == 0, "retrieval_recall failed");
    CHECK(fabs(i2t[0] - 1.0 / 3) < 1e-12 && i2t[1] == 1 && i2t[2] == 1 && i2t[3] == 1,
          "image->text R@1,2,5,10 = %g %g %g %g, want 1/3 1 1 1", i2t[0], i2t[1], i2t[2], i2t[3]);
    CHECK(fabs(t2i[0] - 0.6) < 1e-12 && t2i[1] == 1 && t2i[2] == 1 && t2i[3] == 1,
          "text->image R@1,2,5,10 = %g %g %g %g, want 0.6 1 1 1", t2i[0], t2i[1], t2i[2], t2i[3]);
    const int bad[1] = {3};
    CHECK(retrieval_recall(img, 3, txt, 1, 2, bad, ks, 1, i2t, t2i, &err) != 0 && strstr(err.message, "names no image"),
          "a caption of a missing image is refused");
}

/* Many images (several GEMM blocks), small integer features full of ties,
 * against ranks counted directly. */
static void check_retrieval_brute_force(void) {
    enum { NI = 700, NT = 1500, E = 4 };
    float *img = malloc(sizeof(float) * NI * E), *txt = malloc(sizeof(float) * NT * E);
    int *ti = malloc(sizeof(int) * NT);
    rng r;
    rng_seed(&r, 7);
    for (int i = 0; i < NI * E; i++) img[i] = (float)((int)(rng_next(&r) % 5) - 2);
    for (int i = 0; i < NT * E; i++) txt[i] = (float)((int)(rng_next(&r) % 5) - 2);
    for (int t = 0; t < NT; t++) ti[t] = t < NI ? t : (int)(rng_next(&r) % NI); /* every image has a caption */
    const int ks[3] = {1, 5, 10};
    double i2t[3], t2i[3];
    clipc_error err;
    CHECK(retrieval_recall(img, NI, txt, NT, E, ti, ks, 3, i2t, t2i, &err) == 0, "retrieval_recall failed");
    int *dot = malloc(sizeof(int) * NI * NT);
    for (int i = 0; i < NI; i++)
        for (int t = 0; t < NT; t++) {
            int s = 0;
            for (int e = 0; e < E; e++) s += (int)img[i * E + e] * (int)txt[t * E + e];
            dot[i * NT + t] = s;
        }
    for (int j = 0; j < 3; j++) {
        long hit_t = 0, hit_i = 0;
        for (int t = 0; t < NT; t++) {
            int i = ti[t], rank = 0;
            for (int o = 0; o < NI; o++) rank += dot[o * NT + t] > dot[i * NT + t] || (dot[o * NT + t] == dot[i * NT + t] && o < i);
            hit_t += rank < ks[j];
        }
        for (int i = 0; i < NI; i++) {
            int best = NT;
            for (int t = 0; t < NT; t++) {
                if (ti[t] != i) continue;
                int rank = 0;
                for (int o = 0; o < NT; o++) rank += dot[i * NT + o] > dot[i * NT + t] || (dot[i * NT + o] == dot[i * NT + t] && o < t);
                if (rank < best) best = rank;
            }
            hit_i += best < ks[j];
        }
        CHECK(fabs(t2i[j] - (double)hit_t / NT) < 1e-12 && fabs(i2t[j] - (double)hit_i / NI) < 1e-12,
              "R@%d: text->image %g vs brute force %g, image->text %g vs %g", ks[j], t2i[j], (double)hit_t / NT, i2t[j],
              (double)hit_i / NI);
    }
    free(img), free(txt), free(ti), free(dot);
}

static void check_logreg_closed_form(void) {
    /* x = +1 in class 1, x = -1 in class 0. By symmetry the optimum is
     * W = [[-a], [a]], equal biases, and J = log(1 + e^{-2a}) + lambda a^2,
     * so dJ/da = 0 gives lambda = 1 / (a (1 + e^{2a})). For a = 1: */
    const float X[2] = {1.0f, -1.0f};
    const int y[2] = {1, 0};
    double lambda = 1.0 / (1.0 + exp(2.0)), W[4] = {0};
    clipc_error err;
    CHECK(logreg_fit(X, y, 2, 1, 2, lambda, W, &err) == 0, "logreg_fit failed");
    /* W rows are [weight, bias] per class */
    CHECK(fabs(W[0] + 1) < 1e-5 && fabs(W[2] - 1) < 1e-5 && fabs(W[1] - W[3]) < 1e-6,
          "two-point optimum: W = [%.7f, %.7f], biases %.3g %.3g; want [-1, 1], equal biases", W[0], W[2], W[1], W[3]);
}

static void check_probe_separable(void) {
    /* 4 classes, 8-d features: a class-specific direction plus noise. */
    enum { NTR = 400, NTE = 200, D = 8, C = 4 };
    float *Xtr = malloc(sizeof(float) * NTR * D), *Xte = malloc(sizeof(float) * NTE * D);
    int ytr[NTR], yte[NTE];
    rng r;
    rng_seed(&r, 3);
    for (int i = 0; i < NTR + NTE; i++) {
        float *x = i < NTR ? Xtr + i * D : Xte + (i - NTR) * D;
        int c = i % C;
        for (int j = 0; j < D; j++) x[j] = (float)(rng_uniform(&r) - 0.5) * 0.6f + (j == c ? 1.0f : 0.0f);
        if (i < NTR) ytr[i] = c;
        else yte[i - NTR] = c;
    }
    probe_result pr;
    clipc_error err;
    CHECK(linear_probe(Xtr, ytr, NTR, Xte, yte, NTE, D, C, 0, 1, &pr, &err) == 0, "linear_probe: %s", err.message);
    CHECK(pr.test.acc1 == 1.0 && pr.val_acc1 == 1.0 && pr.n_val == NTR / 5 && pr.n_train == NTR - NTR / 5,
          "separable data: test top-1 %g, validation %g (%d/%d split)", pr.test.acc1, pr.val_acc1, pr.n_train, pr.n_val);
    class_metrics_free(&pr.test);
    /* 5-shot: 5 per class to fit, a disjoint 4 per class to validate */
    CHECK(linear_probe(Xtr, ytr, NTR, Xte, yte, NTE, D, C, 5, 1, &pr, &err) == 0, "5-shot probe: %s", err.message);
    CHECK(pr.n_train == 5 * C && pr.n_val == 4 * C && pr.test.acc1 == 1.0, "5-shot: %d fit, %d validate, top-1 %g",
          pr.n_train, pr.n_val, pr.test.acc1);
    /* probe_rows names every row a 5-shot probe reads (so eval embeds only
     * those): with all other rows NaN, the result is the same */
    int rows[NTR], n_rows = 0;
    CHECK(probe_rows(ytr, NTR, C, 5, 1, rows, &n_rows, &err) == 0 && n_rows == 9 * C, "probe_rows: %d rows", n_rows);
    float *poisoned = malloc(sizeof(float) * NTR * D);
    for (int i = 0; i < NTR * D; i++) poisoned[i] = NAN;
    for (int k = 0; k < n_rows; k++) {
        CHECK(k == 0 || rows[k] > rows[k - 1], "probe_rows ascending");
        memcpy(poisoned + rows[k] * D, Xtr + rows[k] * D, sizeof(float) * D);
    }
    probe_result pp;
    CHECK(linear_probe(poisoned, ytr, NTR, Xte, yte, NTE, D, C, 5, 1, &pp, &err) == 0, "5-shot probe on rows: %s",
          err.message);
    CHECK(pp.lambda == pr.lambda && pp.val_acc1 == pr.val_acc1 && pp.test.acc1 == pr.test.acc1 &&
              pp.test.mean_per_class_recall == pr.test.mean_per_class_recall,
          "5-shot probe on probe_rows only: lambda %g vs %g, top-1 %g vs %g", pp.lambda, pr.lambda, pp.test.acc1,
          pr.test.acc1);
    class_metrics_free(&pp.test);
    free(poisoned);
    class_metrics_free(&pr.test);
    free(Xtr), free(Xte);
}

void test_eval(void) {
    check_rank();
    check_classification();
    check_retrieval_hand();
    check_retrieval_brute_force();
    check_logreg_closed_form();
    check_probe_separable();
}
