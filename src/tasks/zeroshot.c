/* zeroshot.c — zero-shot classifiers from class names, as in OpenAI's
 * "Prompt Engineering for ImageNet" notebook: each class name is put into
 * every prompt template, the template embeddings are L2-normalised,
 * averaged, and the mean is normalised again. Images are then classified by
 * softmax(exp(logit_scale) * cosine). */
#include "../internal.h"
#include "../model/tower.h"

#include <cblas.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* OpenAI's 80 ImageNet prompt templates, in their order. */
static const char *const IMAGENET_TEMPLATES[] = {
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
};

const char *const *clipc_imagenet_templates(int *count) {
    *count = (int)(sizeof IMAGENET_TEMPLATES / sizeof *IMAGENET_TEMPLATES);
    return IMAGENET_TEMPLATES;
}

char *template_fill(const char *template, const char *label) {
    const char *hole = strstr(template, "{}");
    if (!hole) return NULL;
    size_t a = (size_t)(hole - template), b = strlen(label), c = strlen(hole + 2);
    char *s = malloc(a + b + c + 1);
    if (!s) return NULL;
    memcpy(s, template, a);
    memcpy(s + a, label, b);
    memcpy(s + a + b, hole + 2, c + 1);
    return s;
}

int prompt_tokens(clipc_tokenizer *tok, const char *label, int n_ctx, int context, int32_t *out, clipc_error *err) {
    size_t len = strlen(label);
    char *text = malloc((size_t)n_ctx * 2 + len + 2);
    if (!text) return clipc_fail(err, "out of memory");
    for (int i = 0; i < n_ctx; i++) memcpy(text + 2 * i, "X ", 2);
    memcpy(text + 2 * (size_t)n_ctx, label, len);
    memcpy(text + 2 * (size_t)n_ctx + len, ".", 2);
    int rc = clipc_tokenize(tok, text, context, 1, out, err);
    if (rc == 0 && out[n_ctx + 1] == CLIPC_EOT) rc = clipc_fail(err, "'%s' leaves no room for the class name", text);
    free(text);
    return rc;
}

int clipc_zeroshot_classifier(clipc_model *m, clipc_tokenizer *tok, const char *const *labels, int n_labels,
                              const char *const *templates, int n_templates, float *weights, clipc_error *err) {
    const clipc_config *c = clipc_model_config(m);
    int E = c->embed_dim, ctx = c->context_length;
    if (n_labels < 1 || n_templates < 1) return clipc_fail(err, "need at least one label and one template");
    if (c->prompt_meta_hidden > 0)
        return clipc_fail(err, "a CoCoOp model's classifier depends on each image: use clipc_zeroshot_classify");
    /* A CoOp model's learned context replaces the templates: one prompt per label. */
    bool learned = c->prompt_ctx > 0;
    text_prompt prompt = {learned ? m->params + m->L.prompt_ctx : NULL, c->prompt_ctx, 0};
    int per_label = learned ? 1 : n_templates;
    for (int t = 0; t < n_templates && !learned; t++)
        if (!strstr(templates[t], "{}")) return clipc_fail(err, "template '%s' has no {} for the class name", templates[t]);
    int32_t *tokens = malloc((size_t)per_label * ctx * sizeof *tokens);
    float *feats = malloc((size_t)per_label * E * sizeof *feats);
    int rc = 0;
    if (!tokens || !feats) rc = clipc_fail(err, "out of memory");
    for (int l = 0; l < n_labels && rc == 0; l++) {
        for (int t = 0; t < per_label && rc == 0; t++) {
            if (learned) {
                rc = prompt_tokens(tok, labels[l], c->prompt_ctx, ctx, tokens, err);
            } else {
                char *text = template_fill(templates[t], labels[l]);
                if (!text) {
                    rc = clipc_fail(err, "out of memory");
                    break;
                }
                /* long prompts are truncated, as clip.tokenize(truncate=True) */
                rc = clipc_tokenize(tok, text, ctx, 1, tokens + (size_t)t * ctx, err);
                free(text);
            }
            if (rc) clipc_fail_prefix(err, labels[l]);
        }
        if (rc == 0 && c->prompt_classes > 0) { /* CoOp's class-specific contexts: this label's own */
            int k = 0;
            while (k < c->prompt_classes && strcmp(m->prompt_labels[k], labels[l])) k++;
            if (k == c->prompt_classes)
                rc = clipc_fail(err, "'%s' is not among the %d classes this model learned contexts for (the first: '%s')",
                                labels[l], c->prompt_classes, m->prompt_labels[0]);
            prompt.ctx = m->params + m->L.prompt_ctx + (size_t)k * c->prompt_ctx * c->text_width;
        }
        if (rc == 0) rc = model_encode_text_prompted(m, tokens, per_label, learned ? &prompt : NULL, feats, err);
        if (rc) break;
        clipc_normalize_rows(feats, per_label, E);
        float *w = weights + (size_t)l * E;
        for (int j = 0; j < E; j++) {
            double s = 0;
            for (int t = 0; t < per_label; t++) s += feats[(size_t)t * E + j];
            w[j] = (float)(s / per_label);
        }
        clipc_normalize_rows(w, 1, E);
    }
    free(tokens);
    free(feats);
    return rc;
}

void clipc_zeroshot_probs(const clipc_model *m, const float *image_features, int n_images, const float *weights,
                          int n_labels, float *probs) {
    int E = clipc_model_config(m)->embed_dim;
    float scale = clipc_model_logit_scale(m);
    for (int i = 0; i < n_images; i++) {
        const float *x = image_features + (size_t)i * E;
        float *p = probs + (size_t)i * n_labels;
        double norm = 0;
        for (int j = 0; j < E; j++) norm += (double)x[j] * x[j];
        norm = norm > 0 ? sqrt(norm) : 1.0;
        double max = -INFINITY, sum = 0;
        for (int l = 0; l < n_labels; l++) {
            double dot = 0;
            for (int j = 0; j < E; j++) dot += (double)x[j] * weights[(size_t)l * E + j];
            p[l] = (float)(scale * dot / norm);
            max = p[l] > max ? p[l] : max;
        }
        if (clipc_model_config(m)->family == CLIPC_SIGLIP) { /* SigLIP's eq. 1: a sigmoid per pair, no softmax */
            double bias = clipc_model_logit_bias(m);
            for (int l = 0; l < n_labels; l++) p[l] = (float)(1.0 / (1.0 + exp(-(p[l] + bias))));
            continue;
        }
        for (int l = 0; l < n_labels; l++) sum += exp(p[l] - max);
        for (int l = 0; l < n_labels; l++) p[l] = (float)(exp(p[l] - max) / sum);
    }
}

/* ---- CoCoOp: a classifier per image ------------------------------------------------------- */

void prompt_meta_forward(const clipc_model *m, const float *f, int n, float *hid, float *shift) {
    const clipc_config *c = &m->cfg;
    const float *P = m->params;
    linear_forward(hid, f, P + m->L.meta_w1, P + m->L.meta_b1, n, c->embed_dim, c->prompt_meta_hidden, false);
    relu_forward(hid, (size_t)n * c->prompt_meta_hidden);
    linear_forward(shift, hid, P + m->L.meta_w2, P + m->L.meta_b2, n, c->prompt_meta_hidden, c->text_width, false);
}

void cocoop_contexts(const clipc_model *m, const float *shift, int n, int C, float *ctx) {
    const clipc_config *c = &m->cfg;
    int D = c->text_width, n_ctx = c->prompt_ctx;
    const float *base = m->params + m->L.prompt_ctx;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < C; k++) {
            float *dst = ctx + ((size_t)i * C + k) * n_ctx * D;
            for (int j = 0; j < n_ctx; j++)
                for (int d = 0; d < D; d++) dst[(size_t)j * D + d] = base[(size_t)j * D + d] + shift[(size_t)i * D + d];
        }
}

/* weights [n, C, E]: image i's normalised class embeddings, its prompts' context shifted by the
 * meta-network's output on its normalised features (CoCoOp, Zhou et al. 2022b, eq. 2). */
static int cocoop_classifiers(clipc_model *m, clipc_tokenizer *tok, const char *const *labels, int C,
                              const float *features, int n, float *weights, clipc_error *err) {
    const clipc_config *c = &m->cfg;
    int E = c->embed_dim, D = c->text_width, ctx = c->context_length, n_ctx = c->prompt_ctx;
    int h = c->prompt_meta_hidden;
    size_t T = (size_t)n * C;
    int32_t *tokens = malloc(T * ctx * sizeof *tokens);
    float *fn = malloc((size_t)n * E * sizeof *fn), *hid = malloc((size_t)n * h * sizeof *hid);
    float *shift = malloc((size_t)n * D * sizeof *shift), *ctxs = malloc(T * n_ctx * D * sizeof *ctxs);
    int rc = tokens && fn && hid && shift && ctxs ? 0 : clipc_fail(err, "out of memory");
    for (int k = 0; k < C && rc == 0; k++)
        if ((rc = prompt_tokens(tok, labels[k], n_ctx, ctx, tokens + (size_t)k * ctx, err))) clipc_fail_prefix(err, labels[k]);
    for (int i = 1; i < n && rc == 0; i++) memcpy(tokens + (size_t)i * C * ctx, tokens, (size_t)C * ctx * sizeof *tokens);
    if (rc == 0) {
        memcpy(fn, features, (size_t)n * E * sizeof *fn);
        clipc_normalize_rows(fn, n, E);
        prompt_meta_forward(m, fn, n, hid, shift);
        cocoop_contexts(m, shift, n, C, ctxs);
        text_prompt p = {ctxs, n_ctx, (size_t)n_ctx * D};
        rc = model_encode_text_prompted(m, tokens, (int)T, &p, weights, err);
    }
    if (rc == 0) clipc_normalize_rows(weights, (int)T, E);
    free(tokens), free(fn), free(hid), free(shift), free(ctxs);
    return rc;
}

enum { COCOOP_CHUNK = 64 }; /* images per batch of per-image classifiers */

int zeroshot_cosines(clipc_model *m, clipc_tokenizer *tok, const char *const *labels, int C,
                     const char *const *templates, int n_templates, const float *features, int n, float *scores,
                     clipc_error *err) {
    int E = clipc_model_config(m)->embed_dim;
    bool per_image = clipc_model_config(m)->prompt_meta_hidden > 0;
    int chunk = per_image ? COCOOP_CHUNK : 1;
    float *weights = malloc((size_t)chunk * C * E * sizeof *weights);
    if (!weights) return clipc_fail(err, "out of memory");
    int rc = 0;
    if (!per_image) {
        rc = clipc_zeroshot_classifier(m, tok, labels, C, templates, n_templates, weights, err);
        if (rc == 0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, C, E, 1.0f, features, E, weights, E, 0.0f, scores, C);
    }
    for (int i0 = 0; per_image && i0 < n && rc == 0; i0 += chunk) {
        int b = n - i0 < chunk ? n - i0 : chunk;
        rc = cocoop_classifiers(m, tok, labels, C, features + (size_t)i0 * E, b, weights, err);
        for (int i = 0; i < b && rc == 0; i++) /* image i against its own C class embeddings */
            cblas_sgemv(CblasRowMajor, CblasNoTrans, C, E, 1.0f, weights + (size_t)i * C * E, E,
                        features + (size_t)(i0 + i) * E, 1, 0.0f, scores + (size_t)(i0 + i) * C, 1);
    }
    free(weights);
    return rc;
}

int clipc_zeroshot_classify(clipc_model *m, clipc_tokenizer *tok, const char *const *labels, int n_labels,
                            const char *const *templates, int n_templates, const float *image_features, int n_images,
                            float *probs, clipc_error *err) {
    int E = clipc_model_config(m)->embed_dim;
    bool per_image = clipc_model_config(m)->prompt_meta_hidden > 0;
    int chunk = per_image ? COCOOP_CHUNK : 1;
    float *weights = malloc((size_t)chunk * n_labels * E * sizeof *weights);
    if (!weights) return clipc_fail(err, "out of memory");
    int rc = 0;
    if (!per_image) {
        rc = clipc_zeroshot_classifier(m, tok, labels, n_labels, templates, n_templates, weights, err);
        if (rc == 0) clipc_zeroshot_probs(m, image_features, n_images, weights, n_labels, probs);
    }
    for (int i0 = 0; per_image && i0 < n_images && rc == 0; i0 += chunk) {
        int b = n_images - i0 < chunk ? n_images - i0 : chunk;
        rc = cocoop_classifiers(m, tok, labels, n_labels, image_features + (size_t)i0 * E, b, weights, err);
        for (int i = 0; i < b && rc == 0; i++)
            clipc_zeroshot_probs(m, image_features + (size_t)(i0 + i) * E, 1, weights + (size_t)i * n_labels * E,
                                 n_labels, probs + (size_t)(i0 + i) * n_labels);
    }
    free(weights);
    return rc;
}
