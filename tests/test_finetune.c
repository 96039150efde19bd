/* test_finetune.c — fine-tuning: each method's gradients against central
 * finite differences on `tiny`, the identities every method starts from
 * (LoRA with B = 0, CoOp initialised from "a photo of a", CLIP-Adapter at
 * ratio 0), merged LoRA against unmerged, WiSE-FT's endpoints, and the
 * command end to end with its bad-input contract. */
#include "test.h"
#include "../src/finetune/methods.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void random_fill(float *x, size_t n, uint64_t seed, float scale) {
    rng r;
    rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = scale * (float)rng_normal(&r);
}

/* A LoRA on every target of every block of tower k (0 image, 1 text), with
 * A and B random (B zero when zero_b); storage in *mem. */
static lora_tower make_lora(const clipc_model *m, int k, int rank, bool zero_b, float **mem, float **gmem,
                            lora_pair **pairs) {
    tower_spec t = k == 0 ? vision_tower_spec(m) : text_tower_spec(m);
    size_t per = 0;
    for (int tg = 0; tg < LORA_TARGETS; tg++) {
        int in = tg == LORA_PROJ ? t.H : t.D, out = tg == LORA_FC ? t.H : t.D;
        per += (size_t)rank * (in + out);
    }
    *mem = calloc(per * t.layers, sizeof **mem);
    *gmem = calloc(per * t.layers, sizeof **gmem);
    *pairs = calloc((size_t)t.layers * LORA_TARGETS, sizeof **pairs);
    lora_tower lt = {(lora_pair(*)[LORA_TARGETS]) * pairs, rank, 2.0f / rank};
    size_t at = 0;
    for (int l = 0; l < t.layers; l++)
        for (int tg = 0; tg < LORA_TARGETS; tg++) {
            int in = tg == LORA_PROJ ? t.H : t.D, out = tg == LORA_FC ? t.H : t.D;
            lora_pair *p = &lt.blocks[l][tg];
            p->A = *mem + at, p->dA = *gmem + at;
            random_fill(p->A, (size_t)rank * in, 100 + at, 0.2f);
            at += (size_t)rank * in;
            p->B = *mem + at, p->dB = *gmem + at;
            if (!zero_b) random_fill(p->B, (size_t)rank * out, 200 + at, 0.2f);
            at += (size_t)rank * out;
        }
    return lt;
}

/* L = sum(w * features) of the image (k 0) or text (k 1) tower, with lora and prompt. */
static double tower_loss(const clipc_model *m, int k, const lora_tower *lt, const text_prompt *pr, const float *pixels,
                         const int32_t *tokens, int n, const float *w) {
    clipc_error err;
    int E = m->cfg.embed_dim;
    float *f = malloc((size_t)n * E * sizeof *f);
    tower_cache c = {0};
    int rc = k == 0 ? vit_train_forward(m, lt, pixels, n, f, &c, &err)
                    : text_train_forward(m, lt, pr, tokens, n, f, &c, &err);
    double L = 0;
    for (size_t i = 0; rc == 0 && i < (size_t)n * E; i++) L += (double)w[i] * f[i];
    tower_cache_free(&c);
    free(f);
    return rc ? NAN : L;
}

static void make_inputs(const clipc_model *m, clipc_tokenizer *tok, float **pixels, int32_t **tokens, int n) {
    int R = m->cfg.image_resolution, ctx = m->cfg.context_length;
    *pixels = malloc((size_t)n * 3 * R * R * sizeof **pixels);
    random_fill(*pixels, (size_t)n * 3 * R * R, 5, 1.0f);
    *tokens = calloc((size_t)n * ctx, sizeof **tokens);
    static const char *const texts[] = {"a photo of a dog.", "a red shirt", "X X X X sneaker."};
    clipc_error err;
    for (int i = 0; i < n; i++) clipc_tokenize(tok, texts[i % 3], ctx, 1, *tokens + (size_t)i * ctx, &err);
}

/* dA, dB of a LoRA on both towers against central differences. */
static void check_lora_gradients(clipc_model *m, clipc_tokenizer *tok) {
    int n = 3, E = m->cfg.embed_dim;
    float *pixels, *w = malloc((size_t)n * E * sizeof *w);
    int32_t *tokens;
    make_inputs(m, tok, &pixels, &tokens, n);
    random_fill(w, (size_t)n * E, 9, 1.0f);
    for (int k = 0; k < 2; k++) {
        float *mem, *gmem;
        lora_pair *pairs;
        lora_tower lt = make_lora(m, k, 2, false, &mem, &gmem, &pairs);
        clipc_error err;
        float *f = malloc((size_t)n * E * sizeof *f);
        tower_cache c = {0};
        int rc = k == 0 ? vit_train_forward(m, &lt, pixels, n, f, &c, &err)
                        : text_train_forward(m, &lt, NULL, tokens, n, f, &c, &err);
        CHECK(rc == 0, "%s", err.message);
        rc = k == 0 ? vit_train_backward(m, &c, w, NULL, &err) : text_train_backward(m, &c, w, NULL, NULL, &err);
        CHECK(rc == 0, "%s", err.message);
        double worst = 0;
        int tested = 0;
        tower_spec t = k == 0 ? vision_tower_spec(m) : text_tower_spec(m);
        for (int l = 0; l < t.layers; l++)
            for (int tg = 0; tg < LORA_TARGETS; tg++)
                for (int ab = 0; ab < 2; ab++)
                    for (int probe = 0; probe < 2; probe++) {
                        lora_pair *p = &lt.blocks[l][tg];
                        float *x = ab ? p->B : p->A, *g = ab ? p->dB : p->dA;
                        size_t at = (size_t)(probe * 37 + l * 5 + tg) % 16;
                        float keep = x[at], h = 1e-2f;
                        x[at] = keep + h;
                        double up = tower_loss(m, k, &lt, NULL, pixels, tokens, n, w);
                        x[at] = keep - h;
                        double down = tower_loss(m, k, &lt, NULL, pixels, tokens, n, w);
                        x[at] = keep;
                        double fd = (up - down) / (2 * h), rel = fabs(fd - g[at]) / fmax(1e-2, fabs(fd));
                        worst = fmax(worst, rel);
                        tested++;
                    }
        CHECK(worst < 2e-2, "%s-tower LoRA gradients: worst relative error %.3g over %d entries",
              k ? "text" : "image", worst, tested);
        printf("  LoRA %s tower: %d A/B entries, worst relative error vs central differences %.2g\n",
               k ? "text" : "image", tested, worst);
        tower_cache_free(&c);
        free(f), free(mem), free(gmem), free(pairs);
    }
    free(pixels), free(tokens), free(w);
}

/* B = 0 is the base model exactly; merged equals unmerged. */
static void check_lora_identities(clipc_model *m, clipc_tokenizer *tok) {
    int n = 3, E = m->cfg.embed_dim;
    float *pixels;
    int32_t *tokens;
    make_inputs(m, tok, &pixels, &tokens, n);
    float *base = malloc((size_t)n * E * sizeof *base), *ours = malloc((size_t)n * E * sizeof *ours);
    clipc_error err;
    for (int k = 0; k < 2; k++) {
        float *mem, *gmem;
        lora_pair *pairs;
        lora_tower zero = make_lora(m, k, 3, true, &mem, &gmem, &pairs);
        tower_cache c = {0};
        CHECK((k == 0 ? clipc_encode_image(m, pixels, n, base, &err) : clipc_encode_text(m, tokens, n, base, &err)) == 0,
              "%s", err.message);
        CHECK((k == 0 ? vit_train_forward(m, &zero, pixels, n, ours, &c, &err)
                      : text_train_forward(m, &zero, NULL, tokens, n, ours, &c, &err)) == 0,
              "%s", err.message);
        double d = max_abs_diff(base, ours, (size_t)n * E);
        CHECK(d < 1e-5, "%s tower: LoRA with B = 0 differs from the base model by %g", k ? "text" : "image", d);
        free(mem), free(gmem), free(pairs);
        /* merged: W + scale B A, run by inference */
        lora_tower lt = make_lora(m, k, 3, false, &mem, &gmem, &pairs);
        CHECK((k == 0 ? vit_train_forward(m, &lt, pixels, n, ours, &c, &err)
                      : text_train_forward(m, &lt, NULL, tokens, n, ours, &c, &err)) == 0,
              "%s", err.message);
        clipc_model *merged = model_extend(m, &m->cfg, &err);
        tower_spec t = k == 0 ? vision_tower_spec(m) : text_tower_spec(m);
        for (int l = 0; l < t.layers; l++)
            for (int tg = 0; tg < LORA_TARGETS; tg++) {
                const block_offsets *b = &t.blocks[l];
                int in = tg == LORA_PROJ ? t.H : t.D, out = tg == LORA_FC ? t.H : t.D;
                size_t wo = tg <= LORA_V ? b->qkv_w + (size_t)tg * t.D * t.D
                            : tg == LORA_OUT ? b->out_w : tg == LORA_FC ? b->fc_w : b->proj_w;
                const lora_pair *p = &lt.blocks[l][tg];
                for (int i = 0; i < out; i++)
                    for (int j = 0; j < in; j++) {
                        double s = 0;
                        for (int r = 0; r < 3; r++) s += (double)p->B[i * 3 + r] * p->A[(size_t)r * in + j];
                        merged->params[wo + (size_t)i * in + j] += lt.scale * (float)s;
                    }
            }
        CHECK((k == 0 ? clipc_encode_image(merged, pixels, n, base, &err)
                      : clipc_encode_text(merged, tokens, n, base, &err)) == 0,
              "%s", err.message);
        double scale = 0;
        for (size_t i = 0; i < (size_t)n * E; i++) scale = fmax(scale, fabs(base[i]));
        d = max_abs_diff(base, ours, (size_t)n * E);
        CHECK(d <= 1e-5 * fmax(1, scale), "%s tower: merged LoRA differs from unmerged by %g (scale %g)",
              k ? "text" : "image", d, scale);
        d = max_abs_diff(base, ours, (size_t)n * E);
        tower_cache_free(&c);
        clipc_model_free(merged);
        free(mem), free(gmem), free(pairs);
    }
    free(pixels), free(tokens), free(base), free(ours);
}

/* CoOp: the context's gradient, and the "a photo of a" start. */
static void check_coop(clipc_model *m, clipc_tokenizer *tok) {
    int n = 3, E = m->cfg.embed_dim, D = m->cfg.text_width, ctx = m->cfg.context_length, n_ctx = 4;
    clipc_error err;
    static const char *const labels[] = {"dog", "t-shirt", "ankle boot"};
    int32_t *tokens = calloc((size_t)n * ctx, sizeof *tokens);
    for (int i = 0; i < n; i++)
        CHECK(prompt_tokens(tok, labels[i], n_ctx, ctx, tokens + (size_t)i * ctx, &err) == 0, "%s", err.message);
    float *v = malloc((size_t)n_ctx * D * sizeof *v), *w = malloc((size_t)n * E * sizeof *w);
    random_fill(v, (size_t)n_ctx * D, 3, 0.05f);
    random_fill(w, (size_t)n * E, 4, 1.0f);
    text_prompt p = {v, n_ctx, 0};
    float *f = malloc((size_t)n * E * sizeof *f);
    tower_cache c = {0};
    CHECK(text_train_forward(m, NULL, &p, tokens, n, f, &c, &err) == 0, "%s", err.message);
    float *dx0 = malloc((size_t)c.T * D * sizeof *dx0), *g = calloc((size_t)n_ctx * D, sizeof *g);
    CHECK(text_train_backward(m, &c, w, NULL, dx0, &err) == 0, "%s", err.message);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n_ctx; j++)
            for (int d = 0; d < D; d++) g[(size_t)j * D + d] += dx0[(size_t)(c.start[i] + 1 + j) * D + d];
    double worst = 0;
    for (int probe = 0; probe < 12; probe++) {
        size_t at = (size_t)probe * 23 % ((size_t)n_ctx * D);
        float keep = v[at], h = 1e-2f;
        v[at] = keep + h;
        double up = tower_loss(m, 1, NULL, &p, NULL, tokens, n, w);
        v[at] = keep - h;
        double down = tower_loss(m, 1, NULL, &p, NULL, tokens, n, w);
        v[at] = keep;
        double fd = (up - down) / (2 * h);
        worst = fmax(worst, fabs(fd - g[at]) / fmax(1e-2, fabs(fd)));
    }
    CHECK(worst < 2e-2, "CoOp context gradient: worst relative error %.3g", worst);
    printf("  CoOp context: 12 entries, worst relative error vs central differences %.2g\n", worst);
    tower_cache_free(&c);
    /* initialised from "a photo of a": exactly the zero-shot classifier of "a photo of a {}." */
    clipc_config cfg = m->cfg;
    cfg.prompt_ctx = n_ctx;
    clipc_model *coop = model_extend(m, &cfg, &err);
    int32_t *ids = NULL;
    int n_ids = 0;
    CHECK(coop && clipc_tokenizer_encode(tok, "a photo of a", &ids, &n_ids, &err) == 0 && n_ids == n_ctx, "init");
    for (int j = 0; coop && j < n_ids; j++)
        memcpy(coop->params + coop->L.prompt_ctx + (size_t)j * D, m->params + m->L.t_tok + (size_t)ids[j] * D,
               (size_t)D * sizeof(float));
    const char *tmpl[] = {"a photo of a {}."};
    float *zs = malloc((size_t)n * E * sizeof *zs), *learned = malloc((size_t)n * E * sizeof *learned);
    CHECK(clipc_zeroshot_classifier(m, tok, labels, n, tmpl, 1, zs, &err) == 0, "%s", err.message);
    CHECK(coop && clipc_zeroshot_classifier(coop, tok, labels, n, tmpl, 1, learned, &err) == 0, "%s", err.message);
    CHECK(max_abs_diff(zs, learned, (size_t)n * E) == 0, "CoOp from 'a photo of a' differs from zero-shot by %g",
          max_abs_diff(zs, learned, (size_t)n * E));
    /* and it survives a save and load */
    char path[] = "/tmp/clipc_coop_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    CHECK(coop && clipc_model_save(coop, path, &err) == 0, "%s", err.message);
    clipc_model *back = clipc_model_load(path, &err);
    CHECK(back && clipc_model_config(back)->prompt_ctx == n_ctx, "the learned prompt is lost on load: %s",
          back ? "" : err.message);
    if (back) {
        CHECK(clipc_zeroshot_classifier(back, tok, labels, n, tmpl, 1, zs, &err) == 0, "%s", err.message);
        CHECK(max_abs_diff(zs, learned, (size_t)n * E) == 0, "reloaded CoOp classifier differs");
    }
    remove(path);
    clipc_model_free(back);
    clipc_model_free(coop);
    free(ids), free(zs), free(learned), free(tokens), free(v), free(w), free(f), free(dx0), free(g);
}

/* CoCoOp with a meta-network that outputs zero and the context of "a photo of a" is that template's
 * zero-shot classifier for every image; its per-image classifiers survive a save and load. */
static void check_cocoop_identity(clipc_model *m, clipc_tokenizer *tok) {
    clipc_error err;
    int n = 5, E = m->cfg.embed_dim, D = m->cfg.text_width, C = 3;
    static const char *const labels[] = {"dog", "t-shirt", "ankle boot"};
    clipc_config cfg = m->cfg;
    cfg.prompt_ctx = 4, cfg.prompt_meta_hidden = 2;
    clipc_model *cc = model_extend(m, &cfg, &err);
    int32_t *ids = NULL;
    int n_ids = 0;
    CHECK(cc && clipc_tokenizer_encode(tok, "a photo of a", &ids, &n_ids, &err) == 0 && n_ids == 4, "init");
    if (!cc) return;
    for (int j = 0; j < n_ids; j++)
        memcpy(cc->params + cc->L.prompt_ctx + (size_t)j * D, m->params + m->L.t_tok + (size_t)ids[j] * D,
               (size_t)D * sizeof(float));
    random_fill(cc->params + cc->L.meta_w1, (size_t)2 * E, 5, 0.3f); /* W2 and b2 zero: no shift */
    float *f = malloc((size_t)n * E * sizeof *f), *zs = malloc((size_t)n * C * sizeof *zs);
    float *ours = malloc((size_t)n * C * sizeof *ours);
    random_fill(f, (size_t)n * E, 6, 1.0f);
    clipc_normalize_rows(f, n, E);
    const char *tmpl[] = {"a photo of a {}."};
    CHECK(zeroshot_cosines(m, tok, labels, C, tmpl, 1, f, n, zs, &err) == 0, "%s", err.message);
    CHECK(zeroshot_cosines(cc, tok, labels, C, tmpl, 1, f, n, ours, &err) == 0, "%s", err.message);
    double d = max_abs_diff(zs, ours, (size_t)n * C);
    CHECK(d < 1e-6, "CoCoOp with no shift differs from the zero-shot classifier by %g", d);
    /* with a shift, the classifier changes per image, and the file keeps it */
    random_fill(cc->params + cc->L.meta_w2, (size_t)D * 2, 7, 0.3f);
    CHECK(zeroshot_cosines(cc, tok, labels, C, tmpl, 1, f, n, ours, &err) == 0, "%s", err.message);
    CHECK(max_abs_diff(zs, ours, (size_t)n * C) > 1e-3, "the meta-network's shift changes nothing");
    char path[] = "/tmp/clipc_cocoop_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    CHECK(clipc_model_save(cc, path, &err) == 0, "%s", err.message);
    clipc_model *back = clipc_model_load(path, &err);
    CHECK(back && clipc_model_config(back)->prompt_meta_hidden == 2, "the meta-network is lost on load");
    if (back) {
        CHECK(zeroshot_cosines(back, tok, labels, C, tmpl, 1, f, n, zs, &err) == 0, "%s", err.message);
        /* equal up to rounding: a batch of texts is split between threads by the machine's load */
        CHECK(max_abs_diff(zs, ours, (size_t)n * C) < 1e-6, "reloaded CoCoOp classifiers differ by %g",
              max_abs_diff(zs, ours, (size_t)n * C));
        float *w = malloc((size_t)C * E * sizeof *w);
        CHECK(clipc_zeroshot_classifier(back, tok, labels, C, tmpl, 1, w, &err) != 0 && strstr(err.message, "each image"),
              "one classifier for a CoCoOp model: %s", err.message);
        free(w);
    }
    remove(path);
    clipc_model_free(back), clipc_model_free(cc);
    free(ids), free(f), free(zs), free(ours);
}

/* CoOp's class-specific contexts: each class's own, found by name whatever the order of the labels. */
static void check_csc(clipc_model *m, clipc_tokenizer *tok) {
    clipc_error err;
    int E = m->cfg.embed_dim, D = m->cfg.text_width, C = 3;
    static const char *const classes[] = {"dog", "t-shirt", "ankle boot"};
    static const char *const swapped[] = {"ankle boot", "dog"};
    clipc_config cfg = m->cfg;
    cfg.prompt_ctx = 4, cfg.prompt_classes = C;
    clipc_model *csc = model_extend(m, &cfg, &err);
    int32_t *ids = NULL;
    int n_ids = 0;
    CHECK(csc && model_set_prompt_labels(csc, (char *const *)classes, C, &err) == 0 &&
              clipc_tokenizer_encode(tok, "a photo of a", &ids, &n_ids, &err) == 0 && n_ids == 4,
          "init: %s", err.message);
    if (!csc) return;
    for (int k = 0; k < C; k++) /* every class starts from "a photo of a" */
        for (int j = 0; j < n_ids; j++)
            memcpy(csc->params + csc->L.prompt_ctx + ((size_t)k * 4 + j) * D, m->params + m->L.t_tok + (size_t)ids[j] * D,
                   (size_t)D * sizeof(float));
    const char *tmpl[] = {"a photo of a {}."};
    float *zs = malloc((size_t)C * E * sizeof *zs), *w = malloc((size_t)C * E * sizeof *w);
    CHECK(clipc_zeroshot_classifier(m, tok, classes, C, tmpl, 1, zs, &err) == 0, "%s", err.message);
    CHECK(clipc_zeroshot_classifier(csc, tok, classes, C, tmpl, 1, w, &err) == 0, "%s", err.message);
    CHECK(max_abs_diff(zs, w, (size_t)C * E) == 0, "class-specific contexts of 'a photo of a' differ from zero-shot");
    /* a different context for "dog" changes its row only; labels in another order find their own */
    csc->params[csc->L.prompt_ctx] += 0.5f;
    CHECK(clipc_zeroshot_classifier(csc, tok, classes, C, tmpl, 1, w, &err) == 0, "%s", err.message);
    CHECK(max_abs_diff(zs, w, E) > 1e-4 && max_abs_diff(zs + E, w + E, (size_t)2 * E) == 0,
          "changing dog's context must change dog's embedding alone");
    float *w2 = malloc((size_t)2 * E * sizeof *w2);
    CHECK(clipc_zeroshot_classifier(csc, tok, swapped, 2, tmpl, 1, w2, &err) == 0 &&
              max_abs_diff(w2, w + 2 * E, E) == 0 && max_abs_diff(w2 + E, w, E) == 0,
          "labels in another order do not find their own contexts");
    static const char *const unknown[] = {"dog", "cat"};
    CHECK(clipc_zeroshot_classifier(csc, tok, unknown, 2, tmpl, 1, w2, &err) != 0 && strstr(err.message, "'cat' is not among"),
          "an unknown label: %s", err.message);
    /* the classes survive a save and load */
    char path[] = "/tmp/clipc_csc_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    CHECK(clipc_model_save(csc, path, &err) == 0, "%s", err.message);
    clipc_model *back = clipc_model_load(path, &err);
    CHECK(back && clipc_model_config(back)->prompt_classes == C && !strcmp(back->prompt_labels[2], "ankle boot"),
          "class-specific contexts lost on load: %s", back ? "" : err.message);
    if (back) {
        CHECK(clipc_zeroshot_classifier(back, tok, swapped, 2, tmpl, 1, w2, &err) == 0 &&
                  max_abs_diff(w2, w + 2 * E, E) == 0 && max_abs_diff(w2 + E, w, E) == 0,
              "reloaded class-specific contexts differ");
    }
    remove(path);
    clipc_model_free(back), clipc_model_free(csc);
    free(ids), free(zs), free(w), free(w2);
}

/* CLIP-Adapter: ratio 0 is the identity; its gradients; the class CE's. */
static void check_adapter_and_loss(clipc_model *m) {
    int n = 4, E = m->cfg.embed_dim, h = E / 4, C = 3;
    float *f = malloc((size_t)n * E * sizeof *f), *W = malloc((size_t)2 * h * E * sizeof *W);
    float *out = malloc((size_t)n * E * sizeof *out), *hid = malloc((size_t)n * h * sizeof *hid);
    float *a = malloc((size_t)n * E * sizeof *a), *cls = malloc((size_t)C * E * sizeof *cls);
    float *gW = calloc((size_t)2 * h * E, sizeof *gW), *df = malloc((size_t)n * E * sizeof *df);
    float *dcls = malloc((size_t)C * E * sizeof *dcls);
    random_fill(f, (size_t)n * E, 11, 1.0f);
    random_fill(W, (size_t)2 * h * E, 12, 0.3f);
    random_fill(cls, (size_t)C * E, 13, 1.0f);
    int y[] = {0, 2, 1, 2};
    adapter_forward(out, hid, a, f, W, W + (size_t)h * E, 0.0f, n, E, h);
    CHECK(max_abs_diff(out, f, (size_t)n * E) == 0, "CLIP-Adapter at ratio 0 is not the identity");
    /* L = CE(adapter(f)); dW and df against central differences */
    float ratio = 0.4f;
    adapter_forward(out, hid, a, f, W, W + (size_t)h * E, ratio, n, E, h);
    float *dout = malloc((size_t)n * E * sizeof *dout);
    int hits;
    class_cross_entropy(out, cls, y, n, C, E, 20.0f, dout, dcls, &hits);
    adapter_backward(df, gW, gW + (size_t)h * E, dout, f, hid, a, W, W + (size_t)h * E, ratio, n, E, h);
    double worst = 0, worst_cls = 0;
    for (int probe = 0; probe < 24; probe++) {
        float *x = probe < 12 ? W : probe < 18 ? f : cls;
        size_t at = (size_t)probe * 31 % (probe < 18 && probe >= 12 ? (size_t)n * E : probe < 12 ? (size_t)2 * h * E
                                                                                                : (size_t)C * E);
        float keep = x[at], eps = 1e-3f;
        double L[2];
        for (int s = 0; s < 2; s++) {
            x[at] = keep + (s ? -eps : eps);
            adapter_forward(out, hid, a, f, W, W + (size_t)h * E, ratio, n, E, h);
            L[s] = class_cross_entropy(out, cls, y, n, C, E, 20.0f, NULL, NULL, NULL);
        }
        x[at] = keep;
        double fd = (L[0] - L[1]) / (2 * eps);
        double ours = probe < 12 ? gW[at] : probe < 18 ? df[at] : dcls[at];
        double rel = fabs(fd - ours) / fmax(1e-2, fabs(fd));
        if (probe < 18) worst = fmax(worst, rel);
        else worst_cls = fmax(worst_cls, rel);
    }
    CHECK(worst < 2e-2, "CLIP-Adapter gradients: worst relative error %.3g", worst);
    CHECK(worst_cls < 2e-2, "class cross-entropy gradient w.r.t. the class embeddings: worst relative error %.3g",
          worst_cls);
    printf("  CLIP-Adapter + class cross-entropy: worst relative error vs central differences %.2g, %.2g\n", worst,
           worst_cls);
    free(f), free(W), free(out), free(hid), free(a), free(cls), free(gW), free(df), free(dcls), free(dout);
}

static void check_wise(clipc_model *m) {
    clipc_error err;
    clipc_config cfg = m->cfg;
    cfg.adapter_hidden = 4; /* the fine-tuned one has a tensor the zero-shot one lacks */
    clipc_model *ft = model_extend(m, &cfg, &err);
    random_fill(ft->params, ft->table.total, 21, 0.1f);
    clipc_model *w0 = wise_interpolate(m, ft, 0, &err), *w1 = wise_interpolate(m, ft, 1, &err);
    clipc_model *wh = wise_interpolate(m, ft, 0.5f, &err);
    CHECK(w0 && w1 && wh, "%s", err.message);
    if (w0 && w1 && wh) {
        bool same0 = true, same1 = true;
        double worst = 0;
        for (int t = 0; t < ft->table.count; t++) { /* tensor by tensor (the array has alignment gaps) */
            const param_spec *p = &ft->table.items[t];
            const float *z = m->params + p->offset, *f = ft->params + p->offset;
            bool shared = t < m->table.count;
            same0 &= !memcmp(w0->params + p->offset, shared ? z : f, p->numel * sizeof(float));
            same1 &= !memcmp(w1->params + p->offset, f, p->numel * sizeof(float));
            for (size_t i = 0; shared && i < p->numel; i++)
                worst = fmax(worst, fabs(wh->params[p->offset + i] - 0.5 * (z[i] + f[i])));
        }
        CHECK(same0, "WiSE-FT alpha 0 is not the zero-shot model");
        CHECK(same1, "WiSE-FT alpha 1 is not the fine-tuned model");
        CHECK(worst < 1e-6, "WiSE-FT alpha 0.5 is not the midpoint (%g)", worst);
    }
    clipc_model *other = clipc_model_init("fmnist", 1, &err);
    clipc_model *bad = other ? wise_interpolate(other, ft, 0.5f, &err) : NULL;
    CHECK(other && !bad && strstr(err.message, "differ in architecture"), "WiSE-FT of two architectures: %s",
          err.message);
    clipc_model_free(other), clipc_model_free(bad);
    clipc_model_free(w0), clipc_model_free(w1), clipc_model_free(wh), clipc_model_free(ft);
}

static void check_shots(void) {
    image_set s = {0};
    clipc_error err;
    if (image_set_open("fashion-mnist", "train", "filepath", "label", &s, &err)) {
        CHECK(0, "%s", err.message);
        return;
    }
    int *rows = NULL, n = 0, *again = NULL, n2 = 0;
    CHECK(few_shot_rows(&s, 4, 7, &rows, &n, &err) == 0 && n == 40, "4 shots of 10 classes: %d rows", n);
    CHECK(few_shot_rows(&s, 4, 7, &again, &n2, &err) == 0 && n2 == n && !memcmp(rows, again, (size_t)n * sizeof *rows),
          "the same seed draws other shots");
    int per[10] = {0};
    for (int i = 0; i < n; i++) per[s.labels[rows[i]]]++;
    bool even = true;
    for (int c = 0; c < 10; c++) even &= per[c] == 4;
    CHECK(even, "shots are not 4 per class");
    free(rows), free(again);
    CHECK(few_shot_rows(&s, 7000, 7, &rows, &n, &err) != 0 && strstr(err.message, "has only 6000"),
          "more shots than a class has: %s", err.message);
    image_set_free(&s);
}

/* ---- every method's step against central differences, through finetune_prepare -------------- */

static void check_method_gradients(clipc_model *m, clipc_tokenizer *tok) {
    clipc_error err;
    image_set set;
    if (image_set_open("fashion-mnist", "train", "filepath", "label", &set, &err)) {
        CHECK(0, "%s", err.message);
        return;
    }
    int *rows = NULL, n = 0;
    CHECK(few_shot_rows(&set, 1, 3, &rows, &n, &err) == 0, "%s", err.message);
    static const char *const simple[] = {"a photo of a {}."};
    for (int variant = FT_LORA; variant <= FT_COCOOP + 1 && rows; variant++) {
        int method = variant <= FT_COCOOP ? variant : FT_COOP; /* the last: CoOp with class-specific contexts */
        finetune_options o = {.method = method, .steps = 1, .batch = 4, .lr = 1e-3f, .towers = FT_IMAGE | FT_TEXT,
                              .rank = 2, .alpha = 4, .targets = (1 << LORA_TARGETS) - 1, .n_ctx = 4,
                              .ctx_init = NULL, .ratio = 0.5f, .templates = simple, .n_templates = 1,
                              .csc = variant > FT_COCOOP};
        if (method == FT_FULL) o.towers = FT_IMAGE;
        method_run r;
        if (finetune_prepare(&r, m, tok, &set, rows, n, &o, &err)) {
            CHECK(0, "%s: %s", finetune_method_name(method), err.message);
            continue;
        }
        /* away from the starting point (LoRA's B = 0 would make every dA zero) */
        rng g;
        rng_seed(&g, 40 + variant);
        size_t lo = method == FT_FULL ? r.m->L.v_blocks[0].qkv_w : 0, span = method == FT_FULL ? 4096 : r.count;
        for (size_t i = 0; i < span; i++) r.theta[lo + i] += 0.05f * (float)rng_normal(&g);
        int batch[4] = {0, 3, 5, 8}, hits;
        float loss;
        memset(r.grad, 0, r.count * sizeof *r.grad);
        CHECK(method_step(&r, batch, 4, &loss, &hits, &err) == 0, "%s: %s", finetune_method_name(method), err.message);
        float *grad = malloc(r.count * sizeof *grad);
        memcpy(grad, r.grad, r.count * sizeof *grad);
        double worst = 0;
        int tested = 0;
        for (int probe = 0; probe < 40 && tested < 16; probe++) {
            size_t at = lo + (size_t)(rng_next(&g) % span);
            if (method != FT_FULL && fabs(grad[at]) < 1e-4) continue; /* an alignment gap, or a dead unit */
            /* the five-point stencil: float32 towers give the loss ~1e-6 of noise, which a step small
             * enough for the two-point rule's truncation error would amplify */
            float keep = r.theta[at], h = 5e-3f, L[4];
            static const float at_h[4] = {1, -1, 2, -2};
            for (int k = 0; k < 4; k++) {
                r.theta[at] = keep + at_h[k] * h;
                memset(r.grad, 0, r.count * sizeof *r.grad);
                method_step(&r, batch, 4, &L[k], &hits, &err);
            }
            r.theta[at] = keep;
            double fd = (8.0 * (L[0] - L[1]) - (L[2] - L[3])) / (12.0 * h);
            worst = fmax(worst, fabs(fd - grad[at]) / fmax(1e-2, fabs(fd)));
            tested++;
        }
        CHECK(tested >= 8 && worst < 2e-2, "%s%s step: worst relative error %.3g over %d parameters",
              finetune_method_name(method), o.csc ? " --csc" : "", worst, tested);
        printf("  %s%s step: %d parameters, worst relative error vs central differences %.2g\n",
               finetune_method_name(method), o.csc ? " --csc" : "", tested, worst);
        free(grad);
        finetune_release(&r, true);
    }
    free(rows);
    image_set_free(&set);
}

/* On a ModifiedResNet (RN50 is CoOp's model): CoOp, CoCoOp, CLIP-Adapter and text-tower LoRA run,
 * and the methods that would train the ResNet are refused with the reason. */
static int stop_after_three(void *ctx) {
    int *calls = ctx;
    return ++*calls > 3;
}
static void count_steps(void *ctx, long step, long total, float loss, float acc, float lr) {
    (void)ctx, (void)step, (void)total, (void)loss, (void)acc, (void)lr;
}

static void check_resnet_methods(clipc_tokenizer *tok) {
    clipc_error err;
    clipc_model *rn = clipc_model_init("tiny-rn", 4, &err);
    image_set set;
    if (!rn || image_set_open("fashion-mnist", "train", "filepath", "label", &set, &err)) {
        CHECK(0, "%s", err.message);
        clipc_model_free(rn);
        return;
    }
    int *rows = NULL, n = 0;
    CHECK(few_shot_rows(&set, 1, 3, &rows, &n, &err) == 0, "%s", err.message);
    static const char *const simple[] = {"a photo of a {}."};
    static const struct { int method, towers; bool ok; } cases[] = {
        {FT_COOP, 0, true}, {FT_COCOOP, 0, true}, {FT_ADAPTER, 0, true}, {FT_LORA, FT_TEXT, true},
        {FT_LORA, FT_IMAGE | FT_TEXT, false}, {FT_FULL, FT_IMAGE, false}, {FT_FULL, FT_TEXT, true}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases && rows; i++) {
        finetune_options o = {.method = cases[i].method, .steps = 2, .batch = 4, .lr = 1e-3f, .towers = cases[i].towers,
                              .rank = 2, .alpha = 4, .targets = 7, .n_ctx = 4, .ctx_init = "a photo of a",
                              .ratio = 0.2f, .templates = simple, .n_templates = 1};
        clipc_model *out = NULL;
        finetune_result res;
        int rc = finetune_run(rn, tok, &set, rows, n, &o, NULL, NULL, &out, &res, &err);
        CHECK(cases[i].ok ? rc == 0 : rc != 0 && strstr(err.message, "needs a ViT"), "ResNet, %s (towers %d): %s",
              finetune_method_name(cases[i].method), cases[i].towers, rc ? err.message : "ran");
        if (rc == 0) finetune_result_free(&res);
        clipc_model_free(out);
    }
    /* a stop request (Ctrl-C in the command) ends the run after the steps taken, with that model */
    int calls = 0;
    finetune_options o = {.method = FT_COOP, .steps = 50, .batch = 4, .lr = 1e-2f, .n_ctx = 4, .ctx_init = "a photo of a",
                          .templates = simple, .n_templates = 1, .stop = stop_after_three};
    clipc_model *out = NULL;
    finetune_result res;
    CHECK(rows && finetune_run(rn, tok, &set, rows, n, &o, count_steps, &calls, &out, &res, &err) == 0 &&
              res.steps_done == 3 && out && res.n_tensors == 1,
          "a run stopped after 3 steps: %s", err.message);
    if (out) { /* three steps moved the context away from the embeddings of "a photo of a" */
        int32_t *ids = NULL, n_ids = 0, D = rn->cfg.text_width;
        bool moved = false;
        if (clipc_tokenizer_encode(tok, "a photo of a", &ids, &n_ids, &err) == 0)
            for (int j = 0; j < n_ids; j++)
                moved |= memcmp(out->params + out->L.prompt_ctx + (size_t)j * D,
                                rn->params + rn->L.t_tok + (size_t)ids[j] * D, (size_t)D * sizeof(float)) != 0;
        CHECK(moved, "the stopped run's context is still its initialisation");
        free(ids);
        finetune_result_free(&res);
    }
    clipc_model_free(out);
    free(rows);
    image_set_free(&set);
    clipc_model_free(rn);
}

/* ---- against OpenAI's model code (tests/data/finetune, tools/ref/gen_finetune_refs.py) ----------
 * The shared reference `tiny` run by clip/model.py on python3-torch, with LoRA on every target of both
 * towers and CoOp's context: the class cross-entropy and its trainable gradients within 1e-4. */

/* A fixture tensor as floats (malloc'd), or NULL after a failed check. */
static float *fixture(const st_file *f, const char *name, size_t *n) {
    const st_tensor *t = st_find(f, name);
    CHECK(t != NULL, "fixture lacks %s", name);
    if (n) *n = 0;
    if (!t) return NULL;
    size_t count = t->nbytes / 4;
    float *x = malloc(count * sizeof *x);
    st_to_f32(t, x);
    if (n) *n = count;
    return x;
}

/* max |ours - ref| / max |ref|: the relative error of a whole tensor. */
static double rel_error(const float *ours, const float *ref, size_t n) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)ours[i] - ref[i])), s = fmax(s, fabs((double)ref[i]));
    return d / (s > 0 ? s : 1);
}

static int32_t *fixture_tokens(const st_file *f, const char *name, int *rows, int ctx) {
    size_t n = 0;
    float *x = fixture(f, name, &n);
    int32_t *t = malloc(n * sizeof *t);
    for (size_t i = 0; x && i < n; i++) t[i] = (int32_t)x[i];
    free(x);
    *rows = (int)(n / (size_t)ctx);
    return t;
}

static void check_against_pytorch(void) {
    clipc_error err;
    st_file f;
    clipc_model *m = clipc_model_load(ref_path("tiny/model.safetensors"), &err);
    if (!m || st_open("tests/data/finetune/reference.safetensors", &f, &err)) {
        CHECK(0, "%s", err.message);
        clipc_model_free(m);
        return;
    }
    const clipc_config *c = &m->cfg;
    int E = c->embed_dim, ctx = c->context_length, C, n_labels;
    size_t nl = 0;
    float *labels_f = fixture(&f, "labels", &nl);
    n_labels = (int)nl;
    int *labels = malloc(nl * sizeof *labels);
    for (size_t i = 0; i < nl; i++) labels[i] = (int)labels_f[i];
    npy_array imgs;
    if (load_npy("tiny/images.npy", &imgs)) {
        clipc_model_free(m);
        st_close(&f);
        return;
    }
    const float *pixels = (const float *)imgs.data; /* the first n_labels images, as the script takes them */
    int32_t *class_tokens = fixture_tokens(&f, "class_tokens", &C, ctx);
    int32_t *prompt_tokens = fixture_tokens(&f, "prompt_tokens", &C, ctx);
    float scale = clipc_model_logit_scale(m);
    float *fi = malloc((size_t)n_labels * E * sizeof *fi), *ft = malloc((size_t)C * E * sizeof *ft);
    float *di = malloc((size_t)n_labels * E * sizeof *di), *dt = malloc((size_t)C * E * sizeof *dt);

    /* LoRA on q, k, v, out, fc, proj of both towers */
    static const char *const names[LORA_TARGETS] = {"q", "k", "v", "out", "fc", "proj"};
    lora_pair *pairs[2];
    lora_tower lt[2];
    for (int k = 0; k < 2; k++) {
        tower_spec t = k == 0 ? vision_tower_spec(m) : text_tower_spec(m);
        pairs[k] = calloc((size_t)t.layers * LORA_TARGETS, sizeof *pairs[k]);
        lt[k] = (lora_tower){(lora_pair(*)[LORA_TARGETS])pairs[k], 2, 4.0f / 2};
        for (int l = 0; l < t.layers; l++)
            for (int tg = 0; tg < LORA_TARGETS; tg++) {
                char name[96];
                size_t na = 0, nb = 0;
                lora_pair *p = &lt[k].blocks[l][tg];
                snprintf(name, sizeof name, "lora.%s.%d.%s.A", k ? "text" : "visual", l, names[tg]);
                p->A = fixture(&f, name, &na);
                snprintf(name, sizeof name, "lora.%s.%d.%s.B", k ? "text" : "visual", l, names[tg]);
                p->B = fixture(&f, name, &nb);
                p->dA = calloc(na + 1, sizeof(float));
                p->dB = calloc(nb + 1, sizeof(float));
            }
    }
    tower_cache ci = {0}, ct = {0};
    CHECK(vit_train_forward(m, &lt[0], pixels, n_labels, fi, &ci, &err) == 0, "%s", err.message);
    CHECK(text_train_forward(m, &lt[1], NULL, class_tokens, C, ft, &ct, &err) == 0, "%s", err.message);
    float loss = class_cross_entropy(fi, ft, labels, n_labels, C, E, scale, di, dt, NULL);
    CHECK(vit_train_backward(m, &ci, di, NULL, &err) == 0 && text_train_backward(m, &ct, dt, NULL, NULL, &err) == 0,
          "%s", err.message);
    float *ref_loss = fixture(&f, "lora_loss", NULL);
    double loss_err = ref_loss ? fabs(loss - ref_loss[0]) / fabs(ref_loss[0]) : 1, worst = 0;
    for (int k = 0; k < 2; k++) {
        tower_spec t = k == 0 ? vision_tower_spec(m) : text_tower_spec(m);
        for (int l = 0; l < t.layers; l++)
            for (int tg = 0; tg < LORA_TARGETS; tg++)
                for (int ab = 0; ab < 2; ab++) {
                    char name[96];
                    size_t n;
                    snprintf(name, sizeof name, "lora_grad.%s.%d.%s.%c", k ? "text" : "visual", l, names[tg], ab ? 'B' : 'A');
                    float *ref = fixture(&f, name, &n);
                    const lora_pair *p = &lt[k].blocks[l][tg];
                    if (ref) worst = fmax(worst, rel_error(ab ? p->dB : p->dA, ref, n));
                    free(ref);
                }
    }
    CHECK(loss_err < 1e-4, "LoRA loss %.7g, OpenAI's code %.7g", loss, ref_loss ? ref_loss[0] : 0);
    CHECK(worst < 1e-4, "LoRA gradients: worst tensor's relative error %.3g against OpenAI's code", worst);
    printf("  LoRA vs OpenAI's model code (PyTorch): loss relative error %.2g, worst A/B gradient %.2g\n", loss_err, worst);
    free(ref_loss);

    /* CoOp: 4 context vectors, the image tower frozen */
    size_t nctx = 0;
    float *ctx_v = fixture(&f, "coop.ctx", &nctx), *ref_g = fixture(&f, "coop_grad.ctx", NULL);
    int n_ctx = (int)(nctx / (size_t)c->text_width), D = c->text_width;
    text_prompt pr = {ctx_v, n_ctx, 0};
    CHECK(clipc_encode_image(m, pixels, n_labels, fi, &err) == 0, "%s", err.message);
    CHECK(text_train_forward(m, NULL, &pr, prompt_tokens, C, ft, &ct, &err) == 0, "%s", err.message);
    loss = class_cross_entropy(fi, ft, labels, n_labels, C, E, scale, NULL, dt, NULL);
    float *dx0 = malloc((size_t)ct.T * D * sizeof *dx0), *g = calloc(nctx, sizeof *g);
    CHECK(text_train_backward(m, &ct, dt, NULL, dx0, &err) == 0, "%s", err.message);
    for (int k = 0; k < C; k++)
        for (int j = 0; j < n_ctx; j++)
            for (int d = 0; d < D; d++) g[(size_t)j * D + d] += dx0[(size_t)(ct.start[k] + 1 + j) * D + d];
    ref_loss = fixture(&f, "coop_loss", NULL);
    loss_err = ref_loss ? fabs(loss - ref_loss[0]) / fabs(ref_loss[0]) : 1;
    double gerr = ref_g ? rel_error(g, ref_g, nctx) : 1;
    CHECK(loss_err < 1e-4, "CoOp loss %.7g, OpenAI's code %.7g", loss, ref_loss ? ref_loss[0] : 0);
    CHECK(gerr < 1e-4, "CoOp context gradient: relative error %.3g against OpenAI's code", gerr);
    printf("  CoOp vs OpenAI's model code (PyTorch): loss relative error %.2g, context gradient %.2g\n", loss_err, gerr);

    for (int k = 0; k < 2; k++) {
        int layers = k == 0 ? c->vision_layers : c->text_layers;
        for (int i = 0; i < layers * LORA_TARGETS; i++)
            free(pairs[k][i].A), free(pairs[k][i].B), free(pairs[k][i].dA), free(pairs[k][i].dB);
        free(pairs[k]);
    }
    tower_cache_free(&ci), tower_cache_free(&ct);
    free(ref_loss), free(ctx_v), free(ref_g), free(dx0), free(g);
    free(fi), free(ft), free(di), free(dt), free(labels), free(labels_f), free(class_tokens), free(prompt_tokens);
    npy_free(&imgs);
    st_close(&f);
    clipc_model_free(m);
}

/* ---- contrastive fine-tuning from a checkpoint (clipc train --init) ---------------------------- */

/* Bit-identical floats in [lo, hi) of two parameter arrays. */
static bool same_range(const float *a, const float *b, size_t lo, size_t hi) {
    return !memcmp(a + lo, b + lo, (hi - lo) * sizeof *a);
}

/* steps of the trainer on fixed random pairs; returns 0 or -1 with err set. */
static int train_steps(clipc_model *m, clipc_tokenizer *tok, int freeze, float lr, float lr_t, int steps,
                       clipc_error *err) {
    int B = 4;
    float *pixels;
    int32_t *tokens;
    make_inputs(m, tok, &pixels, &tokens, B);
    train_options o = {.batch = B, .accum = 1, .lr = lr, .beta1 = 0.9f, .beta2 = 0.98f, .eps = 1e-6f,
                       .weight_decay = 0.2f, .grad_clip = 0, .warmup = 1, .total_steps = 100,
                       .lr_temperature = lr_t, .freeze = freeze};
    trainer t;
    int rc = trainer_init(&t, m, &o, NULL, err);
    step_stats st;
    for (int s = 0; s < steps && rc == 0; s++) rc = trainer_step(&t, pixels, tokens, &st, err);
    if (t.grads) trainer_free(&t);
    free(pixels), free(tokens);
    return rc;
}

static void check_train_init(clipc_model *base, clipc_tokenizer *tok) {
    clipc_error err;
    size_t text_first = base->L.t_tok, text_end = base->L.logit_scale, total = base->table.total;
    /* --freeze image (LiT) and --freeze text: the frozen tower bit-identical, the other moved */
    for (int fz = FREEZE_IMAGE; fz <= FREEZE_TEXT; fz++) {
        clipc_model *m = model_extend(base, &base->cfg, &err);
        CHECK(m && train_steps(m, tok, fz, 1e-3f, 1e-2f, 3, &err) == 0, "training with --freeze %s: %s",
              train_freeze_name(fz), err.message);
        if (!m) continue;
        bool image_same = same_range(m->params, base->params, 0, text_first);
        bool text_same = same_range(m->params, base->params, text_first, text_end);
        CHECK(fz == FREEZE_IMAGE ? image_same && !text_same : text_same && !image_same,
              "--freeze %s: image tower %s, text tower %s", train_freeze_name(fz), image_same ? "unchanged" : "moved",
              text_same ? "unchanged" : "moved");
        clipc_model_free(m);
    }
    /* logit_scale's own learning rate: Adam's first step moves a parameter by about its lr, so 10x the
     * temperature lr moves logit_scale 10x as far, and nothing else differs */
    clipc_model *a = model_extend(base, &base->cfg, &err), *b = model_extend(base, &base->cfg, &err);
    CHECK(a && b && train_steps(a, tok, FREEZE_NONE, 1e-3f, 1e-3f, 1, &err) == 0 &&
              train_steps(b, tok, FREEZE_NONE, 1e-3f, 1e-2f, 1, &err) == 0,
          "%s", err.message);
    if (a && b) {
        size_t ls = base->L.logit_scale;
        double da = a->params[ls] - base->params[ls], db = b->params[ls] - base->params[ls];
        CHECK(fabs(db / da - 10) < 1e-2, "logit_scale moved %g at lr_temperature = lr and %g at 10 lr", da, db);
        CHECK(same_range(a->params, b->params, 0, ls) && same_range(a->params, b->params, ls + 1, total),
              "lr_temperature changed parameters other than logit_scale");
    }
    clipc_model_free(a), clipc_model_free(b);
    /* a ResNet image tower trains only frozen */
    clipc_model *rn = clipc_model_init("tiny-rn", 2, &err);
    CHECK(rn && train_steps(rn, tok, FREEZE_NONE, 1e-3f, 1e-3f, 1, &err) != 0 && strstr(err.message, "needs a ViT"),
          "training a ResNet image tower: %s", err.message);
    clipc_model *rn0 = rn ? model_extend(rn, &rn->cfg, &err) : NULL;
    CHECK(rn && train_steps(rn, tok, FREEZE_IMAGE, 1e-3f, 1e-3f, 2, &err) == 0, "LiT on a ResNet: %s", err.message);
    if (rn && rn0)
        CHECK(same_range(rn->params, rn0->params, 0, rn->L.t_tok) &&
                  !same_range(rn->params, rn0->params, rn->L.t_tok, rn->L.logit_scale),
              "LiT on a ResNet: the image tower moved or the text tower did not");
    clipc_model_free(rn), clipc_model_free(rn0);
}

/* ---- the command ------------------------------------------------------------------------------ */

static int sh(const char *fmt, const char *a, const char *b) {
    char cmd[4096];
    char inner[3000];
    snprintf(inner, sizeof inner, fmt, a, b);
    snprintf(cmd, sizeof cmd, "%s %s >/tmp/clipc_ft_out.txt 2>/tmp/clipc_ft_err.txt", clipc_binary, inner);
    return run_cmd(cmd);
}

static bool file_has(const char *path, const char *what) {
    unsigned char *d;
    size_t len;
    clipc_error err;
    if (read_file(path, &d, &len, &err)) return false;
    bool yes = memmem(d, len, what, strlen(what)) != NULL; /* binary files too */
    free(d);
    return yes;
}

static void check_command(void) {
    char dir[] = "/tmp/clipc_ft_XXXXXX";
    if (!mkdtemp(dir)) return;
    static const char *const methods[] = {"lora", "adapter", "coop", "full", "cocoop"};
    CHECK(sh("export-images --limit 3 --out %s/img%s", dir, "") == 0, "export-images for the command checks");
    char out[256], path[400];
    for (int k = 0; k < 5; k++) {
        snprintf(out, sizeof out, "%s/%s", dir, methods[k]);
        int rc = sh("finetune --method %s --dataset fashion-mnist --shots 2 --steps 3 --eval-limit 50 --out %s",
                    methods[k], out);
        CHECK(rc == 0, "finetune --method %s exits %d", methods[k], rc);
        snprintf(path, sizeof path, "%s/finetune.json", out);
        CHECK(file_has(path, "\"zeroshot_top1_after\"") && file_has(path, "\"trainable_parameters\""),
              "%s: finetune.json lacks its numbers", methods[k]);
        snprintf(path, sizeof path, "%s/adapter.safetensors", out);
        bool full = !strcmp(methods[k], "full");
        CHECK((access(path, F_OK) == 0) == !full, "%s: adapter.safetensors %s", methods[k], full ? "written" : "missing");
        /* the fine-tuned model loads in the other commands */
        snprintf(path, sizeof path, "%s/model.safetensors", out);
        CHECK(sh("eval zeroshot -m %s --dataset fashion-mnist --json --out %s/eval", path, dir) == 0 &&
                  file_has("/tmp/clipc_ft_out.txt", "\"acc1\""),
              "%s: the fine-tuned model does not evaluate", methods[k]);
        char args[1200];
        snprintf(args, sizeof args, "--labels 'sneaker,ankle boot,bag' %s/img", dir);
        CHECK(sh("classify -m %s %s/*/*.png", path, args) == 0 && file_has("/tmp/clipc_ft_out.txt", "sneaker"),
              "%s: the fine-tuned model does not classify", methods[k]);
        snprintf(args, sizeof args, "%s/img/*/*.png -o %s/e.npy", dir, dir);
        CHECK(sh("embed -m %s --image %s", path, args) == 0, "%s: the fine-tuned model does not embed", methods[k]);
        snprintf(args, sizeof args, "--db %s/%s.db %s/img", dir, methods[k], dir);
        CHECK(sh("index -m %s %s", path, args) == 0, "%s: the fine-tuned model does not index", methods[k]);
        /* search and serve without -m use the model the index recorded (the default model would not match it) */
        snprintf(args, sizeof args, "--db %s/%s.db -k 1 'a photo of a bag'", dir, methods[k]);
        CHECK(sh("search %s%s", args, "") == 0 && file_has("/tmp/clipc_ft_out.txt", ".png") &&
                  file_has("/tmp/clipc_ft_err.txt", "using the index's model"),
              "%s: its index does not search", methods[k]);
        /* and serves it */
        int port = 19000 + (int)(getpid() % 500) * 5 + k;
        char cmd[2000], *body = NULL;
        size_t len;
        snprintf(cmd, sizeof cmd, "%s serve --db %s/%s.db --port %d >/dev/null 2>&1 & echo $! > %s/serve.pid", clipc_binary,
                 dir, methods[k], port, dir);
        run_cmd(cmd);
        int status = -1;
        for (int i = 0; i < 100 && status < 0; i++) {
            usleep(50000);
            status = test_http(port, "GET", "/api/search?q=a%20bag&k=1", NULL, 0, &body, &len);
        }
        CHECK(status == 200 && body && strstr(body, "\"results\"") && strstr(body, ".png"),
              "%s: clipc serve with the fine-tuned model: %d %s", methods[k], status, body ? body : "");
        free(body);
        snprintf(cmd, sizeof cmd, "kill $(cat %s/serve.pid) 2>/dev/null; sleep 0.2", dir);
        run_cmd(cmd);
    }
    /* CoOp with a context per class: its model classifies the dataset's classes */
    snprintf(out, sizeof out, "%s/csc", dir);
    CHECK(sh("finetune --method coop --csc --ctx 4 --dataset fashion-mnist --shots 2 --steps 3 --eval-limit 50 --out %s%s", out,
             "") == 0 && file_has("/tmp/clipc_ft_err.txt", "after fine-tuning"),
          "finetune --method coop --csc");
    snprintf(path, sizeof path, "%s/csc/model.safetensors", dir);
    CHECK(sh("eval zeroshot -m %s --dataset fashion-mnist --json --out %s/eval", path, dir) == 0 &&
              sh("classify -m %s --labels 'cat,bag' %s/img/*/*.png", path, dir) != 0 &&
              file_has("/tmp/clipc_ft_err.txt", "'cat' is not among"),
          "the --csc model evaluates fashion-mnist and refuses a class it has no context for");
    snprintf(path, sizeof path, "%s/lora/adapter.safetensors", dir);
    CHECK(file_has(path, "base_model.model.vision_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"),
          "LoRA's adapter.safetensors lacks PEFT's names");
    /* bad input: one error line, a non-zero exit, nothing left behind */
    static const char *const bad[][2] = {
        {"--method dora", "unknown --method"},
        {"--method lora --targets q,z", "unknown target 'z'"},
        {"--method lora --rank 1000", "larger than"},
        {"--method coop --shots 7000", "has only 6000"},
        {"--method coop --ctx 3 --ctx-init 'a photo of a'", "is 4 tokens"},
        {"--method lora --csc", "--csc (a context per class) is CoOp's"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(out, sizeof out, "%s/bad%zu", dir, i);
        char args[512];
        snprintf(args, sizeof args, "%s --dataset fashion-mnist --steps 2 --out", bad[i][0]);
        int rc = sh("finetune %s %s", args, out);
        CHECK(rc != 0 && file_has("/tmp/clipc_ft_err.txt", bad[i][1]), "finetune %s: exit %d, wanted '%s'", bad[i][0],
              rc, bad[i][1]);
        struct stat st;
        CHECK(stat(out, &st) != 0, "finetune %s left %s behind", bad[i][0], out);
    }
    /* clipc train --init: --freeze survives --stop-at and --resume; --init with --arch is refused */
    snprintf(out, sizeof out, "%s/lit", dir);
    CHECK(sh("train --init models/clipc-fmnist.safetensors --freeze image --data fashion-mnist --steps 4 --batch 16 "
             "--eval-every 100 --eval-limit 50 --stop-at 2 --out %s%s", out, "") == 0 &&
              sh("train --resume --data fashion-mnist --eval-limit 50 --out %s%s", out, "") == 0,
          "train --init --freeze image, stopped and resumed");
    snprintf(path, sizeof path, "%s/lit/model.safetensors", dir);
    clipc_error err;
    clipc_model *lit = clipc_model_load(path, &err), *src = clipc_model_load("models/clipc-fmnist.safetensors", &err);
    CHECK(lit && src && same_range(lit->params, src->params, 0, src->L.t_tok) &&
              !same_range(lit->params, src->params, src->L.t_tok, src->L.logit_scale),
          "train --init --freeze image: the image tower must stay, the text tower move");
    clipc_model_free(lit), clipc_model_free(src);
    CHECK(sh("train --resume --steps 8 --data fashion-mnist --out %s%s", out, "") != 0 &&
              file_has("/tmp/clipc_ft_err.txt", "--steps and --epochs cannot change it"),
          "train --resume with a new --steps is refused, not ignored");
    CHECK(sh("train --init models/clipc-fmnist.safetensors --arch tiny --data fashion-mnist --steps 2 --out %s/x%s", dir,
             "") != 0 && file_has("/tmp/clipc_ft_err.txt", "drop --arch"),
          "train --init with --arch is refused");
    /* a CSV of class numbers has no names to prompt with */
    char cmd2[1600];
    snprintf(cmd2, sizeof cmd2, "{ echo filepath,label; i=0; for f in %s/img/*/*.png; do echo \"$f,$((i %% 2))\"; i=$((i+1)); done; } "
             "> %s/numbered.csv", dir, dir);
    run_cmd(cmd2);
    snprintf(cmd2, sizeof cmd2, "--dataset %s/numbered.csv --test-dataset %s/numbered.csv --steps 2", dir, dir);
    snprintf(out, sizeof out, "%s/numbered", dir);
    CHECK(sh("finetune --method coop %s --out %s", cmd2, out) != 0 &&
              file_has("/tmp/clipc_ft_err.txt", "its classes are numbers (0..1): give --classnames"),
          "a CSV of class numbers without --classnames");
    /* clipc wise */
    snprintf(path, sizeof path, "%s/lora/model.safetensors", dir);
    snprintf(out, sizeof out, "%s/wise.safetensors", dir);
    CHECK(sh("wise --finetuned %s --alpha 0.5 -o %s", path, out) == 0 && access(out, F_OK) == 0, "clipc wise failed");
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf %s /tmp/clipc_ft_out.txt /tmp/clipc_ft_err.txt", dir);
    run_cmd(cmd);
}

void test_finetune(void) {
    clipc_error err;
    clipc_model *m = clipc_model_init("tiny", 3, &err);
    clipc_tokenizer *tok = clipc_tokenizer_new(&err);
    if (!m || !tok) {
        CHECK(0, "%s", err.message);
        return;
    }
    check_lora_gradients(m, tok);
    check_lora_identities(m, tok);
    check_coop(m, tok);
    check_cocoop_identity(m, tok);
    check_csc(m, tok);
    check_adapter_and_loss(m);
    check_wise(m);
    check_shots();
    check_method_gradients(m, tok);
    check_resnet_methods(tok);
    check_against_pytorch();
    check_train_init(m, tok);
    check_command();
    clipc_model_free(m);
    clipc_tokenizer_free(tok);
}
