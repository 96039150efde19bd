/* evaluate.c — the trainer's periodic check: zero-shot top-1 on the
 * Fashion-MNIST test set with one prompt template, scored by the same
 * metric code as `clipc eval zeroshot` (src/eval/metrics.c). */
#include "../eval/eval.h"

#include <cblas.h>
#include <stdlib.h>

int fmnist_zeroshot(clipc_model *m, clipc_tokenizer *tok, const fmnist *test, int limit, const char *template,
                    float *top1, clipc_error *err) {
    const clipc_config *c = clipc_model_config(m);
    int E = c->embed_dim, n = limit > 0 && limit < test->count ? limit : test->count;
    image_set set = {.count = n, .n_classes = 10, .fm = *test}; /* borrows test's images */
    float *weights = malloc((size_t)10 * E * sizeof *weights);
    float *feats = malloc((size_t)n * E * sizeof *feats), *scores = malloc((size_t)n * 10 * sizeof *scores);
    int *labels = malloc((size_t)n * sizeof *labels);
    int rc = (!weights || !feats || !scores || !labels) ? clipc_fail(err, "out of memory") : 0;
    const char *templates[1] = {template};
    if (rc == 0) rc = clipc_zeroshot_classifier(m, tok, FMNIST_CLASSES, 10, templates, 1, weights, err);
    if (rc == 0) rc = image_set_features(m, &set, 0, n, feats, NULL, NULL, err);
    class_metrics cm = {0};
    if (rc == 0) {
        for (int i = 0; i < n; i++) labels[i] = test->labels[i];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, 10, E, 1.0f, feats, E, weights, E, 0.0f, scores, 10);
        rc = classification_metrics(scores, n, 10, labels, &cm, err);
    }
    if (rc == 0) *top1 = (float)cm.acc1;
    class_metrics_free(&cm);
    free(weights), free(feats), free(scores), free(labels);
    return rc;
}
