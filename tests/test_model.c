/* test_model.c — both towers against OpenAI's CLIP on the reference
 * fixtures: features, logits, and every recorded intermediate activation;
 * plus save/load round trips and loader error messages. */
#include "test.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- collecting intermediates through the model's debug tap -------------- */

typedef struct tapped {
    char name[128];
    float *data;
    int rows, cols;
} tapped;

typedef struct tap_log {
    tapped items[128];
    int count;
} tap_log;

static void record(void *ctx, const char *name, const float *x, int rows, int cols) {
    tap_log *log = ctx;
    if (log->count == 128) return;
    tapped *t = &log->items[log->count++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->rows = rows;
    t->cols = cols;
    t->data = malloc((size_t)rows * cols * sizeof(float));
    memcpy(t->data, x, (size_t)rows * cols * sizeof(float));
}

static const tapped *tap_find(const tap_log *log, const char *name) {
    for (int i = 0; i < log->count; i++)
        if (!strcmp(log->items[i].name, name)) return &log->items[i];
    return NULL;
}

static void tap_clear(tap_log *log) {
    for (int i = 0; i < log->count; i++) free(log->items[i].data);
    log->count = 0;
}

/* Compares every reference intermediate with ours. Token sequences are
 * [2, L, D] in the reference and packed up to each EOT in ours. */
static void check_intermediates(const char *dir, clipc_model *m, const npy_array *images,
                                const npy_array *tokens) {
    char rel[256];
    snprintf(rel, sizeof rel, "%s/intermediates.safetensors", dir);
    st_file f;
    clipc_error err;
    if (st_open(ref_path(rel), &f, &err)) {
        CHECK(0, "%s", err.message);
        return;
    }
    const clipc_config *c = clipc_model_config(m);
    int R = c->image_resolution, ctx = c->context_length;
    size_t per_image = (size_t)3 * R * R;
    float *px = malloc(2 * per_image * sizeof *px);
    memcpy(px, (float *)images->data, per_image * sizeof *px);
    memcpy(px + per_image, (float *)images->data + 6 * per_image, per_image * sizeof *px);
    int32_t tok[2 * 77];
    memcpy(tok, tokens->data, (size_t)ctx * 4);
    memcpy(tok + ctx, (int32_t *)tokens->data + 29 * ctx, (size_t)ctx * 4);
    int len[2];
    for (int s = 0; s < 2; s++) {
        int best = 0;
        for (int p = 0; p < ctx; p++)
            if (tok[s * ctx + p] > tok[s * ctx + best]) best = p;
        len[s] = best + 1;
    }
    tap_log log = {0};
    m->tap = record;
    m->tap_ctx = &log;
    float out[2 * 1024];
    CHECK(clipc_encode_image(m, px, 2, out, &err) == 0, "encode_image: %s", err.message);
    CHECK(clipc_encode_text(m, tok, 2, out, &err) == 0, "encode_text: %s", err.message);
    m->tap = NULL;

    int compared = 0;
    for (int i = 0; i < f.count; i++) {
        const st_tensor *t = &f.tensors[i];
        if (t->dtype != ST_F32) continue;
        const char *name = t->name;
        if (!strcmp(name, "ln_final")) name = "text.pooled"; /* we normalise only pooled rows */
        const tapped *mine = tap_find(&log, name);
        if (!mine) {
            CHECK(0, "%s: no intermediate '%s' recorded", dir, name);
            continue;
        }
        size_t n = t->nbytes / 4;
        float *ref = malloc(n * sizeof *ref);
        st_to_f32(t, ref);
        double worst = 0;
        bool text_seq = t->ndim == 3 && t->shape[1] == ctx;
        if (!strcmp(t->name, "ln_final")) {
            /* reference [2, L, D]: compare each sequence's EOT row */
            int D = (int)t->shape[2];
            for (int s = 0; s < 2; s++) {
                double d = max_abs_diff(mine->data + (size_t)s * D, ref + ((size_t)s * ctx + len[s] - 1) * D, (size_t)D);
                worst = d > worst ? d : worst;
            }
        } else if (text_seq) {
            int D = (int)t->shape[2], off = 0;
            for (int s = 0; s < 2; s++) {
                double d = max_abs_diff(mine->data + (size_t)off * D, ref + (size_t)s * ctx * D, (size_t)len[s] * D);
                worst = d > worst ? d : worst;
                off += len[s];
            }
        } else if (!strcmp(t->name, "visual.conv1")) {
            /* reference NCHW [2, W, G, G]; ours [2*G*G, W] */
            int W = (int)t->shape[1], GG = (int)(t->shape[2] * t->shape[3]);
            for (int s = 0; s < 2; s++)
                for (int w = 0; w < W; w++)
                    for (int p = 0; p < GG; p++) {
                        double d = fabs(mine->data[((size_t)s * GG + p) * W + w] - ref[((size_t)s * W + w) * GG + p]);
                        worst = d > worst ? d : worst;
                    }
        } else {
            CHECK((size_t)mine->rows * mine->cols == n, "%s: %s has %d x %d values, reference %zu", dir,
                  name, mine->rows, mine->cols, n);
            if ((size_t)mine->rows * mine->cols == n) worst = max_abs_diff(mine->data, ref, n);
        }
        CHECK(worst <= 1e-4, "%s: intermediate %s max abs diff %.3g", dir, t->name, worst);
        compared++;
        free(ref);
    }
    CHECK(compared >= 10, "%s: only %d intermediates compared", dir, compared);
    tap_clear(&log);
    free(px);
    st_close(&f);
}

static void check_model(const char *dir, const char *weights) {
    char rel[256];
    clipc_error err;
    snprintf(rel, sizeof rel, "%s/%s", dir, weights);
    clipc_model *m = clipc_model_load(ref_path(rel), &err);
    CHECK(m != NULL, "load %s: %s", rel, m ? "" : err.message);
    if (!m) return;
    npy_array images, tokens, img_ref, txt_ref, lpi_ref;
    snprintf(rel, sizeof rel, "%s/images.npy", dir);
    load_npy(rel, &images);
    snprintf(rel, sizeof rel, "%s/tokens.npy", dir);
    load_npy(rel, &tokens);
    snprintf(rel, sizeof rel, "%s/image_features.npy", dir);
    load_npy(rel, &img_ref);
    snprintf(rel, sizeof rel, "%s/text_features.npy", dir);
    load_npy(rel, &txt_ref);
    snprintf(rel, sizeof rel, "%s/logits_per_image.npy", dir);
    load_npy(rel, &lpi_ref);
    const clipc_config *c = clipc_model_config(m);
    int E = c->embed_dim, ni = (int)images.shape[0], nt = (int)tokens.shape[0];
    float *img = calloc((size_t)ni * E, sizeof *img), *txt = calloc((size_t)nt * E, sizeof *txt);
    CHECK(clipc_encode_image(m, images.data, ni, img, &err) == 0, "encode_image: %s", err.message);
    CHECK(clipc_encode_text(m, tokens.data, nt, txt, &err) == 0, "encode_text: %s", err.message);
    double di = max_abs_diff(img, img_ref.data, (size_t)ni * E), dt = max_abs_diff(txt, txt_ref.data, (size_t)nt * E);
    double ci = min_row_cosine(img, img_ref.data, ni, E), ct = min_row_cosine(txt, txt_ref.data, nt, E);
    CHECK(di <= 1e-4 && ci >= 0.99999, "%s/%s encode_image max abs diff %.3g, min cosine %.8f", dir, weights, di, ci);
    CHECK(dt <= 1e-4 && ct >= 0.99999, "%s/%s encode_text max abs diff %.3g, min cosine %.8f", dir, weights, dt, ct);
    printf("  %s/%s: encode_image max|diff| %.2g cos %.8f; encode_text max|diff| %.2g cos %.8f\n", dir, weights,
           di, ci, dt, ct);

    /* logits_per_image = exp(logit_scale) * normalised image . normalised text */
    clipc_normalize_rows(img, ni, E);
    clipc_normalize_rows(txt, nt, E);
    float scale = clipc_model_logit_scale(m);
    float *logits = malloc((size_t)ni * nt * sizeof *logits);
    for (int i = 0; i < ni; i++)
        for (int j = 0; j < nt; j++) {
            double s = 0;
            for (int k = 0; k < E; k++) s += (double)img[(size_t)i * E + k] * txt[(size_t)j * E + k];
            logits[(size_t)i * nt + j] = (float)(scale * s);
        }
    double dl = max_abs_diff(logits, lpi_ref.data, (size_t)ni * nt);
    CHECK(dl <= 1e-4 * scale, "%s/%s logits max abs diff %.3g", dir, weights, dl);

    /* Batched and one-at-a-time encodes agree (packing must not leak). */
    float one[1024];
    CHECK(clipc_encode_text(m, (int32_t *)tokens.data + 5 * c->context_length, 1, one, &err) == 0, "%s", err.message);
    clipc_normalize_rows(one, 1, E);
    CHECK(max_abs_diff(one, txt + 5 * E, (size_t)E) <= 1e-5, "%s single vs batched text differ", dir);

    check_intermediates(dir, m, &images, &tokens);
    free(logits);
    free(img);
    free(txt);
    npy_free(&images);
    npy_free(&tokens);
    npy_free(&img_ref);
    npy_free(&txt_ref);
    npy_free(&lpi_ref);
    clipc_model_free(m);
}

/* init -> save -> load gives the same tensors; the loader names the
 * offending tensor for a missing, extra or mis-shaped tensor. */
static void check_round_trip_and_errors(void) {
    clipc_error err;
    clipc_model *a = clipc_model_init("tiny", 7, &err);
    CHECK(a != NULL, "init tiny: %s", a ? "" : err.message);
    if (!a) return;
    char path[] = "/tmp/clipc_test_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    CHECK(clipc_model_save(a, path, &err) == 0, "save: %s", err.message);
    clipc_model *b = clipc_model_load(path, &err);
    CHECK(b != NULL, "reload: %s", b ? "" : err.message);
    if (b) {
        CHECK(a->table.total == b->table.total && !memcmp(a->params, b->params, a->table.total * sizeof(float)),
              "round trip changed the parameters");
        CHECK(!memcmp(&a->cfg, &b->cfg, sizeof a->cfg), "round trip changed the config");
        clipc_model_free(b);
    }
    clipc_model *c = clipc_model_init("tiny", 7, &err);
    CHECK(c && !memcmp(a->params, c->params, a->table.total * sizeof(float)), "init is not deterministic");
    clipc_model_free(c);

    /* Rewrite the file with one tensor missing, one extra, one mis-shaped. */
    st_out_tensor *ts = calloc((size_t)a->table.count + 1, sizeof *ts);
    for (int i = 0; i < a->table.count; i++) {
        ts[i].name = a->table.items[i].name;
        ts[i].ndim = a->table.items[i].ndim;
        memcpy(ts[i].shape, a->table.items[i].shape, sizeof ts[i].shape);
        ts[i].data = a->params + a->table.items[i].offset;
    }
    const char *k[] = {"transformer_heads", "vision_heads"}, *v[] = {"1", "1"};
    int idx = -1;
    for (int i = 0; i < a->table.count; i++)
        if (!strcmp(ts[i].name, "visual.ln_post.weight")) idx = i;
    st_out_tensor saved = ts[idx];
    ts[idx] = ts[a->table.count - 1];
    CHECK(st_write(path, ts, a->table.count - 1, k, v, 2, &err) == 0, "%s", err.message);
    b = clipc_model_load(path, &err);
    CHECK(!b && strstr(err.message, "missing tensor 'visual.ln_post.weight'"), "missing: %s", err.message);
    ts[idx] = saved;
    ts[a->table.count] = ts[0];
    ts[a->table.count].name = "visual.surprise";
    CHECK(st_write(path, ts, a->table.count + 1, k, v, 2, &err) == 0, "%s", err.message);
    b = clipc_model_load(path, &err);
    CHECK(!b && strstr(err.message, "unexpected tensor 'visual.surprise'"), "extra: %s", err.message);
    ts[idx].shape[0] = 63;
    CHECK(st_write(path, ts, a->table.count, k, v, 2, &err) == 0, "%s", err.message);
    b = clipc_model_load(path, &err);
    CHECK(!b && strstr(err.message, "tensor 'visual.ln_post.weight' has shape [63], expected [64]"), "shape: %s",
          err.message);
    /* A truncated file. */
    CHECK(clipc_model_save(a, path, &err) == 0, "%s", err.message);
    CHECK(truncate(path, 100000) == 0, "truncate");
    b = clipc_model_load(path, &err);
    CHECK(!b && strstr(err.message, "truncated"), "truncated: %s", b ? "loaded" : err.message);
    free(ts);
    unlink(path);
    clipc_model_free(a);
}

/* The two activations at known values, and the checkpoint switches that
 * select GELU: OpenAI metadata "activation" and HF config hidden_act. */
static void check_activations(void) {
    float x[4] = {-2.0f, -0.5f, 1.0f, 3.0f}, y[4];
    memcpy(y, x, sizeof x);
    gelu_forward(y, 4); /* 0.5 x (1 + erf(x / sqrt 2)) */
    const double gelu[4] = {-0.045500263896, -0.154268803, 0.841344746069, 2.995950129};
    for (int i = 0; i < 4; i++) CHECK(fabs(y[i] - gelu[i]) < 1e-6, "gelu(%g) = %.9f", x[i], y[i]);
    memcpy(y, x, sizeof x);
    quick_gelu_forward(y, 4); /* x sigmoid(1.702 x) */
    for (int i = 0; i < 4; i++) {
        double want = x[i] / (1.0 + exp(-1.702 * x[i]));
        CHECK(fabs(y[i] - want) < 1e-6 * (1 + fabs(want)), "quick_gelu(%g) = %.9f, want %.9f", x[i], y[i], want);
    }

    clipc_error err;
    char dir[] = "/tmp/clipc_act_XXXXXX";
    if (!mkdtemp(dir)) return;
    char cmd[1024], path[512];
    snprintf(cmd, sizeof cmd, "cp %s %s/ && sed 's/\"quick_gelu\"/\"gelu\"/g' %s > %s/config.json", ref_path("tiny/model_hf.safetensors"),
             dir, ref_path("tiny/config.json"), dir);
    CHECK(run_cmd(cmd) == 0, "copy HF model");
    snprintf(path, sizeof path, "%s/model_hf.safetensors", dir);
    clipc_model *hf = clipc_model_load(path, &err);
    CHECK(hf && clipc_model_config(hf)->activation == CLIPC_GELU, "HF hidden_act gelu: %s", hf ? "not GELU" : err.message);
    clipc_model *openai = clipc_model_load(ref_path("tiny/model.safetensors"), &err);
    if (hf && openai) {
        npy_array tokens;
        if (load_npy("tiny/tokens.npy", &tokens) == 0) {
            float a[32], b[32];
            clipc_encode_text(hf, tokens.data, 1, a, &err);
            clipc_encode_text(openai, tokens.data, 1, b, &err);
            CHECK(max_abs_diff(a, b, 32) > 1e-3, "GELU and QuickGELU give the same features");
            npy_free(&tokens);
        }
        /* the OpenAI-naming switch survives a save/load round trip */
        openai->cfg.activation = CLIPC_GELU;
        snprintf(path, sizeof path, "%s/gelu.safetensors", dir);
        CHECK(clipc_model_save(openai, path, &err) == 0, "%s", err.message);
        clipc_model *back = clipc_model_load(path, &err);
        CHECK(back && clipc_model_config(back)->activation == CLIPC_GELU, "metadata activation=gelu not honoured");
        clipc_model_free(back);
    }
    clipc_model_free(hf);
    clipc_model_free(openai);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    run_cmd(cmd);
}

/* Batch-parallel encoding: a batch cut into 1, 2 or 3 shares (one per
 * thread; 3 does not divide 7) gives the features one share gives, for the
 * ViT, the ResNet and texts of different lengths. */
static void check_thread_shares(void) {
    clipc_error err;
    const char *archs[2] = {"tiny", "tiny-rn"};
    static const char *const texts[7] = {"a dog", "a photo of a red car parked on a quiet street at night", "x",
                                         "two cats", "a bowl of fruit on a wooden table", "sunset", "a b c d e f"};
    int saved = omp_get_max_threads(), n = 7;
    clipc_tokenizer *tok = clipc_tokenizer_new(&err);
    for (int a = 0; a < 2; a++) {
        clipc_model *m = clipc_model_init(archs[a], 9, &err);
        CHECK(m != NULL, "%s", err.message);
        if (!m) continue;
        const clipc_config *c = clipc_model_config(m);
        size_t px = (size_t)3 * c->image_resolution * c->image_resolution;
        float *pixels = malloc(n * px * sizeof *pixels), *base = malloc((size_t)2 * n * c->embed_dim * sizeof *base);
        float *got = malloc((size_t)2 * n * c->embed_dim * sizeof *got);
        int32_t *tokens = malloc((size_t)n * c->context_length * sizeof *tokens);
        for (size_t i = 0; i < n * px; i++) pixels[i] = sinf((float)i * 0.37f);
        for (int i = 0; i < n; i++) clipc_tokenize(tok, texts[i], c->context_length, 1, tokens + (size_t)i * c->context_length, &err);
        for (int threads = 1; threads <= 3; threads++) {
            omp_set_num_threads(threads);
            float *out = threads == 1 ? base : got;
            CHECK(clipc_encode_image(m, pixels, n, out, &err) == 0, "%s", err.message);
            CHECK(clipc_encode_text(m, tokens, n, out + (size_t)n * c->embed_dim, &err) == 0, "%s", err.message);
            if (threads == 1) continue;
            double diff = 0;
            for (size_t i = 0; i < (size_t)2 * n * c->embed_dim; i++) diff = fmax(diff, fabs((double)base[i] - got[i]));
            CHECK(diff <= 1e-5, "%s, %d shares: features differ by %.3g", archs[a], threads, diff);
            printf("  %s: %d images and %d texts in %d thread shares vs one: within %.2g\n", archs[a], n, n, threads,
                   diff);
        }
        omp_set_num_threads(saved);
        free(pixels), free(base), free(got), free(tokens);
        clipc_model_free(m);
    }
    clipc_tokenizer_free(tok);
}

void test_model(void) {
    check_activations();
    check_model("tiny", "model.safetensors");
    check_model("tiny", "model_hf.safetensors");
    check_model("tiny-rn", "model.safetensors");
    check_round_trip_and_errors();
    check_thread_shares();
}
