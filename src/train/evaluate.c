/* evaluate.c — zero-shot top-1 accuracy on a labelled image set, the way
 * the CLIP paper measures it: class embeddings from prompts, each image
 * assigned to the class of highest cosine. */
#include "train.h"

#include <stdlib.h>

int fmnist_zeroshot(clipc_model *m, clipc_tokenizer *tok, const fmnist *test, int limit, const char *template,
                    float *top1, clipc_error *err) {
    const clipc_config *c = clipc_model_config(m);
    int E = c->embed_dim, R = c->image_resolution, n = limit > 0 && limit < test->count ? limit : test->count;
    const int chunk = 256;
    float *weights = malloc((size_t)10 * E * sizeof *weights);
    float *pixels = malloc((size_t)chunk * 3 * R * R * sizeof *pixels);
    float *feats = malloc((size_t)chunk * E * sizeof *feats);
    int rc = (!weights || !pixels || !feats) ? clipc_fail(err, "out of memory") : 0;
    const char *templates[1] = {template};
    if (rc == 0) rc = clipc_zeroshot_classifier(m, tok, FMNIST_CLASSES, 10, templates, 1, weights, err);
    long correct = 0;
    for (int done = 0; done < n && rc == 0; done += chunk) {
        int b = n - done < chunk ? n - done : chunk;
        for (int i = 0; i < b && rc == 0; i++) rc = fmnist_pixels(test, done + i, R, pixels + (size_t)i * 3 * R * R, err);
        if (rc == 0) rc = clipc_encode_image(m, pixels, b, feats, err);
        for (int i = 0; i < b && rc == 0; i++) {
            int best = 0;
            float best_s = -1e30f;
            for (int k = 0; k < 10; k++) {
                float s = 0;
                for (int j = 0; j < E; j++) s += feats[(size_t)i * E + j] * weights[(size_t)k * E + j];
                if (s > best_s) best_s = s, best = k;
            }
            correct += best == test->labels[done + i];
        }
    }
    if (rc == 0) *top1 = (float)correct / (float)n;
    free(weights);
    free(pixels);
    free(feats);
    return rc;
}
