/* evaluate.c — the trainer's periodic check: zero-shot top-1 on the
 * Fashion-MNIST test set with one prompt template, by the same code as
 * `clipc eval zeroshot` (zeroshot_evaluate in src/eval/metrics.c). */
#include "../eval/eval.h"

#include <stdlib.h>

int fmnist_zeroshot(clipc_model *m, clipc_tokenizer *tok, const fmnist *test, int limit, const char *template,
                    float *top1, clipc_error *err) {
    int n = limit > 0 && limit < test->count ? limit : test->count;
    int *labels = malloc((size_t)n * sizeof *labels);
    if (!labels) return clipc_fail(err, "out of memory");
    for (int i = 0; i < n; i++) labels[i] = test->labels[i];
    /* borrows test's images and the class names */
    image_set set = {.count = n, .n_classes = 10, .class_names = (char **)FMNIST_CLASSES, .labels = labels,
                     .fm = *test};
    const char *templates[1] = {template};
    class_metrics cm;
    int rc = zeroshot_evaluate(m, tok, &set, n, templates, 1, NULL, NULL, &cm, err);
    if (rc == 0) *top1 = (float)cm.acc1;
    class_metrics_free(&cm);
    free(labels);
    return rc;
}
