/* test_siglip.c — SigLIP against the reference implementations' own outputs
 * (tests/data/siglip/, made by tools/ref/gen_siglip_refs.py): the
 * SentencePiece tokenizers on a 1,200-string corpus against the
 * sentencepiece library and Hugging Face's SiglipTokenizer / GemmaTokenizer,
 * two random-init SiglipModels against transformers, SiglipImageProcessor's
 * pixels, the loader's refusals, and the commands on a SigLIP model. */
#include "test.h"
#include "../src/tokenizer/spm.h"

#include <cjson/cJSON.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DATA "tests/data/siglip"

static cJSON *read_json(const char *path) {
    unsigned char *text;
    size_t len;
    clipc_error err;
    if (read_file(path, &text, &len, &err)) {
        CHECK(0, "%s", err.message);
        return NULL;
    }
    cJSON *j = cJSON_ParseWithLength((const char *)text, len);
    free(text);
    CHECK(j != NULL, "%s: invalid JSON", path);
    return j;
}

/* Whether the JSON array of ints equals ids[0..n). */
static bool same_ids(const cJSON *want, const int32_t *ids, int n) {
    if (cJSON_GetArraySize(want) != n) return false;
    int i = 0;
    for (const cJSON *v = want->child; v; v = v->next, i++)
        if (v->valueint != ids[i]) return false;
    return true;
}

/* The raw library's ids (sp.encode on the unmodified model) and the
 * tokenizer's padded rows (Hugging Face's ids, padding="max_length") for
 * every corpus string. */
static void check_tokenizer(const cJSON *refs, const char *model, const char *sp_key, const char *hf_key) {
    const cJSON *strings = cJSON_GetObjectItem(refs, "strings"), *sp = cJSON_GetObjectItem(refs, sp_key),
                *hf = cJSON_GetObjectItem(refs, hf_key);
    clipc_error err;
    unsigned char *data;
    size_t len;
    char msg[256];
    if (read_file(model, &data, &len, &err)) {
        CHECK(0, "%s", err.message);
        return;
    }
    spm_model *raw = spm_load(data, len, msg, sizeof msg);
    free(data);
    clipc_tokenizer *tok = clipc_tokenizer_load(model, &err);
    CHECK(raw && tok, "%s: %s", model, tok ? msg : err.message);
    if (!raw || !tok) {
        spm_free(raw);
        clipc_tokenizer_free(tok);
        return;
    }
    int n = cJSON_GetArraySize(strings), sp_bad = 0, hf_bad = 0;
    const cJSON *s = strings->child, *a = sp->child, *b = hf->child;
    for (int i = 0; i < n; i++, s = s->next, a = a->next, b = b->next) {
        int32_t *ids, row[64];
        int k;
        if (spm_encode(raw, s->valuestring, strlen(s->valuestring), &ids, &k, msg, sizeof msg) || !same_ids(a, ids, k)) {
            if (sp_bad++ == 0) printf("  %s: sentencepiece ids differ for string %d\n", model, i);
        }
        free(ids);
        if (clipc_tokenize(tok, s->valuestring, 64, 1, row, &err) || !same_ids(b, row, 64)) {
            if (hf_bad++ == 0) {
                char *want = cJSON_PrintUnformatted(b);
                printf("  %s: string %d %s\n    want %s\n    got ", model, i, s->valuestring, want);
                for (int j = 0; j < 64; j++) printf("%d,", row[j]);
                printf("\n");
                free(want);
            }
        }
    }
    CHECK(sp_bad == 0, "%s: %d of %d strings' ids differ from the sentencepiece library's", model, sp_bad, n);
    CHECK(hf_bad == 0, "%s: %d of %d padded rows differ from Hugging Face's tokenizer", model, hf_bad, n);
    printf("  %s: %d strings, ids equal to sentencepiece's (%d differ) and Hugging Face's padded rows (%d differ)\n",
           model, n, sp_bad, hf_bad);
    spm_free(raw);
    clipc_tokenizer_free(tok);
}

static double largest(const npy_array *a) {
    double m = 0;
    for (size_t i = 0; i < a->count; i++) m = fmax(m, fabs(((float *)a->data)[i]));
    return m;
}

/* A model case: features and logits against the reference's; the texts
 * tokenized by the model's own tokenizer equal the reference's ids. */
static void check_model(const char *name, const char *file) {
    char path[512];
    clipc_error err;
    snprintf(path, sizeof path, DATA "/%s/%s", name, file);
    clipc_model *m = clipc_model_load(path, &err);
    CHECK(m != NULL, "%s: %s", name, m ? "" : err.message);
    if (!m) return;
    const clipc_config *c = clipc_model_config(m);
    CHECK(c->family == CLIPC_SIGLIP && !strcmp(clipc_model_family_name(m), "SigLIP"), "%s: family %d", name, c->family);
    npy_array images, tokens, img_ref, txt_ref, logits;
    const char *files[5] = {"images", "tokens", "image_features", "text_features", "logits_per_image"};
    npy_array *arrays[5] = {&images, &tokens, &img_ref, &txt_ref, &logits};
    for (int i = 0; i < 5; i++) {
        snprintf(path, sizeof path, DATA "/%s/%s.npy", name, files[i]);
        if (npy_read(path, arrays[i], &err)) {
            CHECK(0, "%s", err.message);
            while (i > 0) npy_free(arrays[--i]);
            clipc_model_free(m);
            return;
        }
    }
    int E = c->embed_dim, ni = (int)images.shape[0], nt = (int)tokens.shape[0], L = c->context_length;
    float *img = malloc((size_t)ni * E * sizeof *img), *txt = malloc((size_t)nt * E * sizeof *txt);
    CHECK(clipc_encode_image(m, images.data, ni, img, &err) == 0, "%s", err.message);
    CHECK(clipc_encode_text(m, tokens.data, nt, txt, &err) == 0, "%s", err.message);
    double di = max_abs_diff(img, img_ref.data, img_ref.count) / largest(&img_ref);
    double dt = max_abs_diff(txt, txt_ref.data, txt_ref.count) / largest(&txt_ref);
    double ci = min_row_cosine(img, img_ref.data, ni, E), ct = min_row_cosine(txt, txt_ref.data, nt, E);
    CHECK(di <= 1e-4 && ci >= 0.99999, "%s image: max diff %.3g of the largest, min cosine %.8f", name, di, ci);
    CHECK(dt <= 1e-4 && ct >= 0.99999, "%s text: max diff %.3g of the largest, min cosine %.8f", name, dt, ct);
    /* logits_per_image = exp(logit_scale) cos + logit_bias */
    float *ni_img = malloc((size_t)ni * E * sizeof *ni_img), *ni_txt = malloc((size_t)nt * E * sizeof *ni_txt);
    memcpy(ni_img, img, (size_t)ni * E * sizeof *img);
    memcpy(ni_txt, txt, (size_t)nt * E * sizeof *txt);
    clipc_normalize_rows(ni_img, ni, E);
    clipc_normalize_rows(ni_txt, nt, E);
    double dl = 0;
    for (int i = 0; i < ni; i++)
        for (int t = 0; t < nt; t++) {
            double dot = 0;
            for (int j = 0; j < E; j++) dot += (double)ni_img[(size_t)i * E + j] * ni_txt[(size_t)t * E + j];
            double logit = clipc_model_logit_scale(m) * dot + clipc_model_logit_bias(m);
            dl = fmax(dl, fabs(logit - ((float *)logits.data)[i * nt + t]));
        }
    CHECK(dl <= 1e-4 * largest(&logits), "%s logits: max diff %.3g", name, dl);
    printf("  %s: image max diff %.2g (relative), cosine %.8f; text %.2g, cosine %.8f; logits %.2g\n", name, di, ci, dt,
           ct, dl);
    /* sigmoid probabilities, independent per label */
    float *probs = malloc((size_t)ni * nt * sizeof *probs);
    clipc_zeroshot_probs(m, img, ni, ni_txt, nt, probs);
    double dp = 0;
    for (int i = 0; i < ni * nt; i++) dp = fmax(dp, fabs(probs[i] - 1.0 / (1.0 + exp(-((float *)logits.data)[i]))));
    CHECK(dp < 1e-5, "%s: probabilities differ from sigmoid(logits) by %.3g", name, dp);
    /* the model's tokenizer (spiece.model beside it) gives the reference's ids */
    snprintf(path, sizeof path, DATA "/%s/texts.json", name);
    cJSON *texts = read_json(path);
    clipc_tokenizer *tok = clipc_model_tokenizer(m, &err);
    CHECK(tok != NULL, "%s: %s", name, tok ? "" : err.message);
    int32_t *row = malloc((size_t)L * sizeof *row);
    int i = 0;
    for (const cJSON *s = texts ? texts->child : NULL; s && tok; s = s->next, i++) {
        CHECK(clipc_tokenize(tok, s->valuestring, L, 1, row, &err) == 0, "%s", err.message);
        CHECK(!memcmp(row, (int32_t *)tokens.data + (size_t)i * L, (size_t)L * sizeof *row), "%s: text %d's ids differ",
              name, i);
    }
    /* the reduced precisions run the SigLIP towers too */
    for (int p = CLIPC_BF16; p <= CLIPC_INT8; p++) {
        CHECK(clipc_model_set_precision(m, p, &err) == 0, "%s", err.message);
        clipc_encode_image(m, images.data, ni, img, &err);
        clipc_encode_text(m, tokens.data, nt, txt, &err);
        double bound = p == CLIPC_BF16 ? 0.9999 : 0.998;
        ci = min_row_cosine(img, img_ref.data, ni, E), ct = min_row_cosine(txt, txt_ref.data, nt, E);
        CHECK(ci >= bound && ct >= bound, "%s at %s: cosine image %.6f text %.6f", name, clipc_precision_name(p), ci, ct);
    }
    /* saved in clipc's names and loaded back: the same features */
    char dir[] = "/tmp/clipc_siglip_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(clipc_model_set_precision(m, CLIPC_FP32, &err) == 0 && clipc_model_save(m, path, &err) == 0, "%s", err.message);
    clipc_model *back = clipc_model_load(path, &err);
    CHECK(back != NULL, "%s saved: %s", name, back ? "" : err.message);
    if (back) {
        float *again = malloc((size_t)ni * E * sizeof *again);
        clipc_encode_image(m, images.data, ni, img, &err);
        CHECK(clipc_encode_image(back, images.data, ni, again, &err) == 0 &&
                  max_abs_diff(img, again, (size_t)ni * E) <= 1e-5 * largest(&img_ref) &&
                  clipc_model_config(back)->family == CLIPC_SIGLIP, /* (thread shares may differ run to run) */
              "%s: the saved model computes other image features", name);
        clipc_tokenizer *none = clipc_model_tokenizer(back, &err);
        CHECK(!none && strstr(err.message, "spiece.model"), "without a tokenizer beside it: %s",
              none ? "(loaded)" : err.message);
        clipc_tokenizer_free(none);
        free(again);
        clipc_model_free(back);
    }
    unlink(path);
    rmdir(dir);
    free(row);
    cJSON_Delete(texts);
    clipc_tokenizer_free(tok);
    free(probs), free(ni_img), free(ni_txt), free(img), free(txt);
    for (int k = 0; k < 5; k++) npy_free(arrays[k]);
    clipc_model_free(m);
}

/* SiglipImageProcessor's pixel_values, bit for bit. */
static void check_preprocess(void) {
    cJSON *list = read_json(DATA "/preprocess.json");
    if (!list) return;
    const cJSON *files = cJSON_GetObjectItem(list, "files"), *up = cJSON_GetObjectItem(list, "upscaled_96");
    const cJSON *sets[3] = {files, up, files};
    const char *npys[3] = {DATA "/preprocess_48.npy", DATA "/preprocess_96.npy", DATA "/preprocess_48_bilinear_imagenet.npy"};
    int sizes[3] = {48, 96, 48};
    /* the third: preprocessor_config.json's resample 2 (bilinear) and ImageNet's mean and std */
    const image_style imagenet = {RESAMPLE_BILINEAR, {0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}};
    const image_style *styles[3] = {&SIGLIP_STYLE, &SIGLIP_STYLE, &imagenet};
    for (int k = 0; k < 3; k++) {
        npy_array want;
        clipc_error err;
        if (npy_read(npys[k], &want, &err)) {
            CHECK(0, "%s", err.message);
            continue;
        }
        size_t per = (size_t)3 * sizes[k] * sizes[k];
        float *px = malloc(per * sizeof *px);
        int i = 0, exact = 0;
        double worst = 0;
        for (const cJSON *f = sets[k]->child; f; f = f->next, i++) {
            char path[512];
            const char *name = f->valuestring;
            if (!strncmp(name, "modes/", 6)) snprintf(path, sizeof path, "tests/data/%s", name);
            else snprintf(path, sizeof path, "%s", ref_path((snprintf(path, sizeof path, "preprocess/images/%s", name), path)));
            unsigned char *data;
            size_t len;
            if (read_file(path, &data, &len, &err)) {
                CHECK(0, "%s", err.message);
                continue;
            }
            int rc = image_style_pixels(data, len, name, styles[k], sizes[k], px, &err);
            free(data);
            CHECK(rc == 0, "%s", err.message);
            double d = max_abs_diff(px, (float *)want.data + (size_t)i * per, per);
            worst = fmax(worst, d);
            exact += d == 0;
            CHECK(d == 0, "%s at %d: differs from SiglipImageProcessor by up to %.3g", name, sizes[k], d);
        }
        printf("  SiglipImageProcessor at %dx%d%s: %d of %d images bit-exact (max diff %.2g)\n", sizes[k], sizes[k],
               k == 2 ? ", bilinear, ImageNet mean/std" : "", exact, i, worst);
        free(px);
        npy_free(&want);
    }
    cJSON_Delete(list);
}

/* A copy of a case in a fresh folder with its config file edited by sed. */
static clipc_model *load_edited_case(const char *name, const char *file, const char *config, const char *sed,
                                     clipc_error *err) {
    char dir[] = "/tmp/clipc_siglip_XXXXXX", cmd[1024], path[512];
    if (!mkdtemp(dir)) return NULL;
    snprintf(cmd, sizeof cmd, "cp " DATA "/%s/%s %s/ && sed '%s' " DATA "/%s/%s > %s/%s", name, file, dir, sed, name,
             config, dir, config);
    run_cmd(cmd);
    snprintf(path, sizeof path, "%s/%s", dir, file);
    clipc_model *m = clipc_model_load(path, err);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    run_cmd(cmd);
    return m;
}

static clipc_model *load_edited(const char *sed, clipc_error *err) {
    return load_edited_case("b_like", "model.safetensors", "config.json", sed, err);
}

/* preprocessor_config.json beside a checkpoint sets the model's preprocessing; a save keeps it. */
static void check_processor_config(void) {
    char dir[] = "/tmp/clipc_siglip_XXXXXX", cmd[1024], path[600];
    clipc_error err;
    if (!mkdtemp(dir)) return;
    const char *cfgs[][2] = {
        {"{\"image_processor_type\": \"SiglipImageProcessor\", \"resample\": 2, \"size\": {\"height\": 32, \"width\": 32}, "
         "\"image_mean\": [0.485, 0.456, 0.406], \"image_std\": [0.229, 0.224, 0.225], \"rescale_factor\": 0.00392156862745098}", NULL},
        {"{\"resample\": 1}", "resample 1 is not supported"},
        {"{\"size\": {\"height\": 224, \"width\": 224}}", "differs from the model's 32x32 input"},
        {"{\"do_normalize\": false}", "do_normalize false"},
        {"{\"image_processor_type\": \"CLIPImageProcessor\"}", "'CLIPImageProcessor' is not supported"},
        {"{\"image_std\": [1, 0, 1]}", "image_std must be positive"},
    };
    for (size_t i = 0; i < sizeof cfgs / sizeof *cfgs; i++) {
        snprintf(cmd, sizeof cmd, "cp " DATA "/b_like/model.safetensors " DATA "/b_like/config.json %s/ && printf '%%s' '%s' > %s/preprocessor_config.json",
                 dir, cfgs[i][0], dir);
        CHECK(run_cmd(cmd) == 0, "prepare");
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        clipc_model *m = clipc_model_load(path, &err);
        if (cfgs[i][1]) {
            CHECK(!m && strstr(err.message, cfgs[i][1]), "preprocessor_config %s: %s", cfgs[i][0], m ? "(loaded)" : err.message);
            clipc_model_free(m);
            continue;
        }
        CHECK(m && m->style.resample == RESAMPLE_BILINEAR && m->style.mean[0] == 0.485f && m->style.std[2] == 0.225f,
              "preprocessor_config.json read: %s", m ? "other values" : err.message);
        if (!m) continue;
        snprintf(path, sizeof path, "%s/saved.safetensors", dir);
        CHECK(clipc_model_save(m, path, &err) == 0, "%s", err.message);
        snprintf(cmd, sizeof cmd, "mkdir -p %s/alone && mv %s %s/alone/", dir, path, dir);
        run_cmd(cmd);
        snprintf(path, sizeof path, "%s/alone/saved.safetensors", dir);
        clipc_model *back = clipc_model_load(path, &err);
        CHECK(back && !memcmp(&back->style, &m->style, sizeof m->style), "the saved model keeps its preprocessing: %s",
              back ? "it differs" : err.message);
        /* and the model preprocesses with it */
        unsigned char *data;
        size_t len;
        float a[3 * 32 * 32], b[3 * 32 * 32];
        const char *img = ref_path("preprocess/images/chelsea_451x300.png");
        if (back && read_file(img, &data, &len, &err) == 0) {
            CHECK(clipc_model_preprocess_file(back, img, a, &err) == 0 &&
                      image_style_pixels(data, len, img, &m->style, 32, b, &err) == 0 && !memcmp(a, b, sizeof a),
                  "clipc_model_preprocess_file uses the model's style");
            free(data);
        }
        clipc_model_free(back);
        clipc_model_free(m);
    }
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    run_cmd(cmd);
}

static void check_refusals(void) {
    clipc_error err;
    clipc_model *m = load_edited("s/\"model_type\": \"siglip\"/\"model_type\": \"siglip2\"/", &err);
    CHECK(!m && strstr(err.message, "NaFlex"), "SigLIP 2 NaFlex: %s", m ? "(loaded)" : err.message);
    clipc_model_free(m);
    m = load_edited("s/\"patch_size\": 8/\"patch_size\": 8, \"vision_use_head\": false/", &err);
    CHECK(!m && strstr(err.message, "vision_use_head"), "no pooling head: %s", m ? "(loaded)" : err.message);
    clipc_model_free(m);
    m = load_edited("s/gelu_pytorch_tanh/relu/", &err);
    CHECK(!m && strstr(err.message, "'relu' is not supported"), "relu: %s", m ? "(loaded)" : err.message);
    clipc_model_free(m);
    /* OpenCLIP's open_clip_config.json: what clipc does not compute is refused by name */
    static const char *const openclip[][2] = {
        {"s/\"timm_pool\": \"map\"/\"timm_pool\": \"avg\"/", "timm_pool 'avg' is not supported"},
        {"s/\"pool_type\": \"last\"/\"pool_type\": \"argmax\"/", "pool_type 'argmax' is not supported"},
        {"s/\"no_causal_mask\": true/\"no_causal_mask\": false/", "causal mask"},
        {"s/\"squash\"/\"shortest\"/", "resize_mode 'shortest'"},
        {"s/\"bicubic\"/\"lanczos\"/", "interpolation 'lanczos'"},
    };
    for (size_t i = 0; i < sizeof openclip / sizeof *openclip; i++) {
        m = load_edited_case("openclip", "open_clip_model.safetensors", "open_clip_config.json", openclip[i][0], &err);
        CHECK(!m && strstr(err.message, openclip[i][1]), "open_clip_config %s: %s", openclip[i][0],
              m ? "(loaded)" : err.message);
        clipc_model_free(m);
    }
    m = load_edited_case("openclip", "open_clip_model.safetensors", "open_clip_config.json", "s/\"bicubic\"/\"bilinear\"/",
                         &err);
    CHECK(m && m->style.resample == RESAMPLE_BILINEAR, "open_clip_config interpolation bilinear: %s",
          m ? "not read" : err.message);
    clipc_model_free(m);
    /* tokenizer files: garbage, too large, an unknown tokenizer_class */
    char dir[] = "/tmp/clipc_spm_XXXXXX", path[512], cmd[1024];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/spiece.model", dir);
    write_file_atomic(path, "not a protobuf at all", 21, &err);
    clipc_tokenizer *t = clipc_tokenizer_load(path, &err);
    CHECK(!t && strstr(err.message, "not a SentencePiece model"), "garbage model: %s", t ? "(loaded)" : err.message);
    clipc_tokenizer_free(t);
    snprintf(cmd, sizeof cmd, "truncate -s 65M %s", path);
    run_cmd(cmd);
    t = clipc_tokenizer_load(path, &err);
    CHECK(!t && strstr(err.message, "too large"), "a 65 MiB model: %s", t ? "(loaded)" : err.message);
    clipc_tokenizer_free(t);
    snprintf(cmd, sizeof cmd, "cp " DATA "/unigram/spiece.model %s/ && printf '{\"tokenizer_class\": \"T5Tokenizer\"}' > %s/tokenizer_config.json",
             dir, dir);
    run_cmd(cmd);
    t = clipc_tokenizer_load(path, &err);
    CHECK(!t && strstr(err.message, "T5Tokenizer"), "unknown tokenizer_class: %s", t ? "(loaded)" : err.message);
    clipc_tokenizer_free(t);
    /* a config that names the special tokens: a missing one is refused by name */
    snprintf(cmd, sizeof cmd, "printf '{\"tokenizer_class\": \"SiglipTokenizer\", \"eos_token\": \"<end>\"}' > %s/tokenizer_config.json", dir);
    run_cmd(cmd);
    t = clipc_tokenizer_load(path, &err);
    CHECK(!t && strstr(err.message, "'<end>'"), "missing eos token: %s", t ? "(loaded)" : err.message);
    clipc_tokenizer_free(t);
    /* and one that lets padding_side left, Gemma-style, through */
    snprintf(cmd, sizeof cmd, "cp " DATA "/bpe/tokenizer.model %s/ && printf '{\"tokenizer_class\": \"GemmaTokenizerFast\", \"padding_side\": \"left\", \"add_eos_token\": true}' > %s/tokenizer_config.json", dir, dir);
    run_cmd(cmd);
    snprintf(path, sizeof path, "%s/tokenizer.model", dir);
    t = clipc_tokenizer_load(path, &err);
    CHECK(t != NULL, "Gemma tokenizer with a config: %s", t ? "" : err.message);
    if (t) {
        int32_t row[16];
        CHECK(clipc_tokenize(t, "a cat", 16, 1, row, &err) == 0, "%s", err.message);
        CHECK(row[0] == 0 && row[15] == 1 && row[16 - 1 - 1] != 0, "left padding, <bos> ... <eos> at the end: %d %d %d",
              row[0], row[14], row[15]);
        int first = 0;
        while (first < 16 && row[first] == 0) first++;
        CHECK(first < 16 && row[first] == 2, "<bos> follows the padding (row[%d] = %d)", first, first < 16 ? row[first] : -1);
        CHECK(clipc_tokenize(t, "a photo of a cat on a street in the middle of the night", 8, 0, row, &err) == -1 &&
                  strstr(err.message, "too long"), "too long without truncation: %s", err.message);
    }
    clipc_tokenizer_free(t);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    run_cmd(cmd);
}

/* The commands on a SigLIP model: info names the family, classify prints
 * sigmoid probabilities, embed and index/search run with its tokenizer and
 * preprocessing. */
static void check_cli(void) {
    char cmd[2048], dir[] = "/tmp/clipc_siglip_cli_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    const char *model = DATA "/b_like/model.safetensors";
    snprintf(cmd, sizeof cmd, "%s info %s > %s/info.txt 2>&1 && grep -q 'family: *SigLIP' %s/info.txt", clipc_binary,
             model, dir, dir);
    CHECK(run_cmd(cmd) == 0, "clipc info names the family (%s/info.txt)", dir);
    const char *img = ref_path("preprocess/images/chelsea_224x224.png");
    snprintf(cmd, sizeof cmd, "%s classify -m %s --labels 'cat,dog,rocket' --templates simple --json %s > %s/classify.json 2> %s/err.txt",
             clipc_binary, model, img, dir, dir);
    CHECK(run_cmd(cmd) == 0, "clipc classify on a SigLIP model (%s/err.txt)", dir);
    char path[600];
    snprintf(path, sizeof path, "%s/classify.json", dir);
    cJSON *j = read_json(path);
    /* the probabilities: sigmoid(scale cos + bias) of the features that embed writes */
    snprintf(cmd, sizeof cmd, "%s embed -m %s -o %s/img.npy --image %s && %s embed -m %s -o %s/txt.npy --text 'a photo of a cat.' 'a photo of a dog.' 'a photo of a rocket.'",
             clipc_binary, model, dir, img, clipc_binary, model, dir);
    CHECK(run_cmd(cmd) == 0, "clipc embed images and texts with a SigLIP model");
    npy_array fi, ft;
    clipc_error err;
    snprintf(path, sizeof path, "%s/img.npy", dir);
    int rc = npy_read(path, &fi, &err);
    snprintf(path, sizeof path, "%s/txt.npy", dir);
    rc |= npy_read(path, &ft, &err);
    clipc_model *m = clipc_model_load(model, &err);
    CHECK(rc == 0 && m && j, "%s", err.message);
    if (rc == 0 && m && j) {
        int E = clipc_model_config(m)->embed_dim;
        clipc_normalize_rows(ft.data, 3, E);
        float probs[3];
        clipc_zeroshot_probs(m, fi.data, 1, ft.data, 3, probs);
        const cJSON *first = cJSON_IsArray(j) ? j->child : j;
        const cJSON *ranked = cJSON_GetObjectItem(first, "predictions");
        int found = 0;
        for (const cJSON *r = ranked ? ranked->child : NULL; r; r = r->next) {
            const char *label = cJSON_GetObjectItem(r, "label")->valuestring;
            double p = cJSON_GetObjectItem(r, "probability")->valuedouble;
            int l = !strcmp(label, "cat") ? 0 : !strcmp(label, "dog") ? 1 : 2;
            found += fabs(p - probs[l]) < 1e-4;
        }
        CHECK(found == 3, "classify's probabilities are the sigmoids of the embeddings' logits (%d of 3 match)", found);
        npy_free(&fi), npy_free(&ft);
    }
    cJSON_Delete(j);
    clipc_model_free(m);
    /* index a folder and search it by text */
    snprintf(cmd, sizeof cmd, "mkdir -p %s/photos && cp %s %s %s/photos/ && %s index -m %s --db %s/p.db %s/photos > /dev/null 2>&1 && "
             "%s search --db %s/p.db -k 2 'a cat' > %s/search.txt 2>&1 && grep -c png %s/search.txt | grep -q 2",
             dir, img, ref_path("preprocess/images/rocket_small_60x90.png"), dir, clipc_binary, model, dir, dir,
             clipc_binary, dir, dir, dir);
    CHECK(run_cmd(cmd) == 0, "index and search with a SigLIP model (%s/search.txt)", dir);
    /* serve that index: a text query and an uploaded image */
    int port = 19700 + (int)(getpid() % 200);
    snprintf(cmd, sizeof cmd, "%s serve --db %s/p.db --port %d >/dev/null 2>&1 & echo $! > %s/serve.pid", clipc_binary, dir,
             port, dir);
    run_cmd(cmd);
    char *body = NULL;
    size_t len;
    int status = -1;
    for (int i = 0; i < 100 && status < 0; i++) {
        usleep(50000);
        status = test_http(port, "GET", "/api/search?q=a%20cat&k=2", NULL, 0, &body, &len);
    }
    CHECK(status == 200 && body && strstr(body, "\"results\"") && strstr(body, "chelsea"), "serve a SigLIP index: %d %s",
          status, body ? body : "");
    free(body), body = NULL;
    unsigned char *png;
    size_t png_len;
    if (read_file(img, &png, &png_len, &err) == 0) {
        status = test_http(port, "POST", "/api/search?k=1", png, png_len, &body, &len);
        /* the uploaded image is one of the indexed ones: it finds itself first */
        CHECK(status == 200 && body && strstr(body, "chelsea_224x224"), "serve: search by an uploaded image: %d %s", status,
              body ? body : "");
        free(body), free(png);
    }
    snprintf(cmd, sizeof cmd, "kill $(cat %s/serve.pid) 2>/dev/null; sleep 0.2", dir);
    run_cmd(cmd);
    /* eval zeroshot ranks by the logits: its accuracy is the library's own predictions' */
    const char *ds_files[4][2] = {{"cat", "chelsea_224x224.png"}, {"cat", "chelsea_451x300.png"},
                                  {"rocket", "rocket_small_60x90.png"}, {"rocket", "rocket_427x640_q85.jpg"}};
    m = clipc_model_load(model, &err);
    clipc_tokenizer *tok = m ? clipc_model_tokenizer(m, &err) : NULL;
    int correct = 0;
    const char *labels[2] = {"cat", "rocket"}, *simple[1] = {"a photo of a {}."};
    for (int i = 0; i < 4 && tok; i++) {
        snprintf(cmd, sizeof cmd, "mkdir -p %s/ds/%s && cp %s %s/ds/%s/", dir, ds_files[i][0],
                 ref_path((snprintf(path, sizeof path, "preprocess/images/%s", ds_files[i][1]), path)), dir, ds_files[i][0]);
        run_cmd(cmd);
        float px[3 * 32 * 32], f[64], probs[2];
        CHECK(clipc_model_preprocess_file(m, ref_path(path), px, &err) == 0 && clipc_encode_image(m, px, 1, f, &err) == 0 &&
                  clipc_zeroshot_classify(m, tok, labels, 2, simple, 1, f, 1, probs, &err) == 0,
              "%s", err.message);
        correct += (probs[1] > probs[0]) == (i >= 2);
    }
    clipc_tokenizer_free(tok);
    clipc_model_free(m);
    snprintf(cmd, sizeof cmd, "%s eval zeroshot -m %s --dataset %s/ds --templates simple --out %s/eval > %s/eval.txt 2>&1",
             clipc_binary, model, dir, dir, dir);
    CHECK(run_cmd(cmd) == 0, "eval zeroshot with a SigLIP model (%s/eval.txt)", dir);
    snprintf(path, sizeof path, "%s/eval/zeroshot.json", dir);
    j = read_json(path);
    const cJSON *acc = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "metrics"), "acc1");
    CHECK(cJSON_IsNumber(acc) && fabs(acc->valuedouble - correct / 4.0) < 1e-9, "eval's top-1 %.2f, the library's %.2f",
          cJSON_IsNumber(acc) ? acc->valuedouble : -1.0, correct / 4.0);
    cJSON_Delete(j);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (test_failed == 0) run_cmd(cmd);
}

void test_siglip(void) {
    cJSON *refs = read_json(DATA "/tokenizer.json");
    if (refs) {
        check_tokenizer(refs, DATA "/unigram/spiece.model", "unigram_sp", "unigram_hf");
        check_tokenizer(refs, DATA "/bpe/tokenizer.model", "bpe_sp", "bpe_hf");
        cJSON_Delete(refs);
    }
    check_model("b_like", "model.safetensors");    /* transformers' SiglipModel */
    check_model("odd", "model.safetensors");
    check_model("openclip", "open_clip_model.safetensors"); /* OpenCLIP's CustomTextCLIP, a timm trunk */
    check_preprocess();
    check_processor_config();
    check_refusals();
    check_cli();
}
