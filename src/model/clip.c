/* clip.c — the clipc_model object: creation, random initialisation, saving,
 * and the two encoders of the public API. */
#include "tower.h"

#include <cjson/cJSON.h>

#include <math.h>
#include <stdio.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* Fills a config's per-tower details left at 0 with OpenAI's values (MLP
 * 4x the width, LayerNorm eps 1e-5). */
static void config_defaults(clipc_config *c) {
    if (c->vision_mlp_width <= 0 && c->vision_tower == CLIPC_VIT) c->vision_mlp_width = 4 * c->vision_width;
    if (c->text_mlp_width <= 0) c->text_mlp_width = 4 * c->text_width;
    if (!(c->vision_ln_eps > 0.0f)) c->vision_ln_eps = 1e-5f;
    if (!(c->text_ln_eps > 0.0f)) c->text_ln_eps = 1e-5f;
}

int config_validate(const clipc_config *c, clipc_error *err) {
    bool acts_ok = c->activation >= CLIPC_QUICK_GELU && c->activation <= CLIPC_GELU_TANH &&
                   c->vision_activation >= CLIPC_QUICK_GELU && c->vision_activation <= CLIPC_GELU_TANH;
    if (c->family < CLIPC_CLIP || c->family > CLIPC_COCA) return clipc_fail(err, "unknown model family %d", c->family);
    if (c->family == CLIPC_COCA &&
        (c->vision_tower != CLIPC_VIT || c->embed_dim != c->text_width || c->pool_queries < 2 || c->pool_queries > 4096 ||
         c->pool_heads <= 0 || c->embed_dim % c->pool_heads || c->decoder_layers <= 0 || c->decoder_layers > 256 ||
         c->decoder_heads <= 0 || c->text_width % c->decoder_heads || c->prompt_ctx || c->adapter_hidden))
        return clipc_fail(err, "invalid CoCa configuration (embedding %d, text width %d, %d pooler queries with %d heads, "
                               "%d decoder layers with %d heads)", c->embed_dim, c->text_width, c->pool_queries,
                          c->pool_heads, c->decoder_layers, c->decoder_heads);
    if (c->family == CLIPC_SIGLIP &&
        (c->vision_tower != CLIPC_VIT || c->embed_dim != c->vision_width || c->prompt_ctx || c->adapter_hidden))
        return clipc_fail(err, "invalid SigLIP configuration: a ViT whose width (%d) is the embedding size (%d), and no "
                               "fine-tuning additions", c->vision_width, c->embed_dim);
    if (!acts_ok) return clipc_fail(err, "unknown activation (text %d, image %d)", c->activation, c->vision_activation);
    if (!(c->vision_ln_eps > 0.0f && c->vision_ln_eps < 1.0f && c->text_ln_eps > 0.0f && c->text_ln_eps < 1.0f))
        return clipc_fail(err, "invalid LayerNorm epsilon (image %g, text %g)", c->vision_ln_eps, c->text_ln_eps);
    if (c->text_mlp_width <= 0 || c->text_mlp_width > (1 << 20) ||
        (c->vision_tower == CLIPC_VIT && (c->vision_mlp_width <= 0 || c->vision_mlp_width > (1 << 20))))
        return clipc_fail(err, "invalid MLP width (image %d, text %d)", c->vision_mlp_width, c->text_mlp_width);
    if (c->embed_dim <= 0 || c->context_length <= 0 || c->context_length > 4096 || c->vocab_size <= 0 ||
        c->text_width <= 0 || c->text_layers <= 0 || c->text_heads <= 0 || c->text_width % c->text_heads)
        return clipc_fail(err, "invalid text tower configuration (width %d, heads %d, layers %d, context %d)",
                          c->text_width, c->text_heads, c->text_layers, c->context_length);
    if (c->prompt_ctx < 0 || (c->prompt_ctx > 0 && c->prompt_ctx > c->context_length - 3))
        return clipc_fail(err, "%d prompt context vectors do not fit a context of %d tokens", c->prompt_ctx, c->context_length);
    if (c->prompt_classes < 0 || c->prompt_classes > (1 << 16) || (c->prompt_classes > 0 && !c->prompt_ctx) ||
        (c->prompt_classes > 0 && c->prompt_meta_hidden > 0))
        return clipc_fail(err, "invalid class-specific prompt count %d (it needs a learned prompt, and no meta-network)",
                          c->prompt_classes);
    if (c->prompt_meta_hidden < 0 || c->prompt_meta_hidden > (1 << 16) || (c->prompt_meta_hidden > 0 && !c->prompt_ctx))
        return clipc_fail(err, "invalid CoCoOp meta-network width %d (it needs a learned prompt)", c->prompt_meta_hidden);
    if (c->adapter_hidden < 0 || c->adapter_hidden > (1 << 16))
        return clipc_fail(err, "invalid adapter width %d", c->adapter_hidden);
    if (c->family == CLIPC_CLIP && c->vocab_size <= CLIPC_EOT)
        return clipc_fail(err, "vocabulary of %d ids cannot hold CLIP's special tokens", c->vocab_size);
    if (c->vision_tower == CLIPC_VIT) {
        if (c->vision_width <= 0 || c->vision_layers <= 0 || c->vision_heads <= 0 ||
            c->vision_width % c->vision_heads || c->vision_patch_size <= 0 ||
            c->image_resolution % c->vision_patch_size || c->image_resolution <= 0)
            return clipc_fail(err, "invalid ViT configuration (width %d, heads %d, layers %d, patch %d, resolution %d)",
                              c->vision_width, c->vision_heads, c->vision_layers, c->vision_patch_size,
                              c->image_resolution);
    } else if (c->vision_tower == CLIPC_RESNET) {
        bool ok = c->vision_width > 0 && c->vision_width % 2 == 0 && c->image_resolution > 0 &&
                  c->image_resolution % 32 == 0 && c->vision_heads > 0 && (c->vision_width * 32) % c->vision_heads == 0;
        for (int s = 0; s < 4; s++) ok = ok && c->vision_resnet_layers[s] > 0;
        if (!ok)
            return clipc_fail(err, "invalid ResNet configuration (width %d, heads %d, resolution %d)",
                              c->vision_width, c->vision_heads, c->image_resolution);
    } else {
        return clipc_fail(err, "unknown vision tower %d", c->vision_tower);
    }
    return 0;
}

/* SiglipImageProcessor's defaults */
const image_style SIGLIP_STYLE = {RESAMPLE_BICUBIC, {0.5f, 0.5f, 0.5f}, {0.5f, 0.5f, 0.5f}};

clipc_model *model_new(const clipc_config *cfg, clipc_error *err) { return model_new_within(cfg, SIZE_MAX, err); }

clipc_model *model_new_within(const clipc_config *cfg, size_t held_bytes, clipc_error *err) {
    clipc_model *m = calloc(1, sizeof *m);
    if (!m) {
        clipc_fail(err, "out of memory");
        return NULL;
    }
    m->cfg = *cfg;
    m->style = SIGLIP_STYLE;
    config_defaults(&m->cfg);
    if (params_build(&m->cfg, &m->table, &m->L, err)) {
        free(m);
        return NULL;
    }
    size_t params = clipc_model_param_count_of(&m->table);
    if (held_bytes < params) {
        clipc_fail(err, "the tensors hold %zu bytes, too few for the %zu parameters of the architecture their names describe",
                   held_bytes, params);
        params_free(&m->table, &m->L);
        free(m);
        return NULL;
    }
    void *p = NULL;
    if (posix_memalign(&p, 64, m->table.total * sizeof(float)) != 0) {
        clipc_fail(err, "out of memory for %zu MiB of parameters", m->table.total * 4 >> 20);
        params_free(&m->table, &m->L);
        free(m);
        return NULL;
    }
    m->params = p;
    memset(m->params, 0, m->table.total * sizeof(float));
    snprintf(m->source_dtype, sizeof m->source_dtype, "F32");
    return m;
}

int model_set_prompt_labels(clipc_model *m, char *const *names, int n, clipc_error *err) {
    if (n != m->cfg.prompt_classes)
        return clipc_fail(err, "%d class names for %d class-specific contexts", n, m->cfg.prompt_classes);
    char **copy = calloc((size_t)(n > 0 ? n : 1), sizeof *copy);
    for (int i = 0; copy && i < n; i++)
        if (!(copy[i] = strdup(names[i]))) {
            while (i > 0) free(copy[--i]);
            free(copy);
            copy = NULL;
        }
    if (!copy) return clipc_fail(err, "out of memory");
    for (int i = 0; m->prompt_labels && i < m->cfg.prompt_classes; i++) free(m->prompt_labels[i]);
    free(m->prompt_labels);
    m->prompt_labels = copy;
    return 0;
}

void clipc_model_free(clipc_model *m) {
    if (!m) return;
    for (int i = 0; m->prompt_labels && i < m->cfg.prompt_classes; i++) free(m->prompt_labels[i]);
    free(m->prompt_labels);
    free(m->tokenizer_path);
    model_lowp_free(m);
    free(m->params);
    params_free(&m->table, &m->L);
    for (int i = 0; i < m->n_scratch; i++) arena_free(&m->scratch[i]);
    free(m->scratch);
    free(m);
}

clipc_model *clipc_model_load(const char *path, clipc_error *err) { return checkpoint_load(path, err); }

/* ---- named architectures ------------------------------------------------- */

typedef struct arch {
    const char *name;
    clipc_config cfg;
} arch;

/* OpenAI's published configurations, the two tiny test configurations of
 * the reference fixtures, a small ViT sized for Fashion-MNIST (28x28
 * gray images, patch 4: 49 patches) that trains on two cores, and SigLIP's
 * B/16 (for benchmarks: SigLIP models are loaded, not trained). */
#define VIT(E, R, L, W, P, H, TW, TH, TL)                                                                   \
    {.vision_tower = CLIPC_VIT, .embed_dim = E, .image_resolution = R, .vision_layers = L, .vision_width = W, \
     .vision_patch_size = P, .vision_heads = H, .context_length = 77, .vocab_size = 49408, .text_width = TW,   \
     .text_heads = TH, .text_layers = TL, .activation = CLIPC_QUICK_GELU, .vision_activation = CLIPC_QUICK_GELU}
#define SIGLIP(W, R, L, P, H, CTX, VOCAB)                                                                           \
    {.family = CLIPC_SIGLIP, .vision_tower = CLIPC_VIT, .embed_dim = W, .image_resolution = R, .vision_layers = L,  \
     .vision_width = W, .vision_patch_size = P, .vision_heads = H, .context_length = CTX, .vocab_size = VOCAB,      \
     .text_width = W, .text_heads = H, .text_layers = L, .activation = CLIPC_GELU_TANH,                             \
     .vision_activation = CLIPC_GELU_TANH, .vision_ln_eps = 1e-6f, .text_ln_eps = 1e-6f, .has_logit_bias = 1}
#define COCA(E, R, L, W, P, H, TL, TH, CTX, Q, QH, DL, DH)                                                           \
    {.family = CLIPC_COCA, .vision_tower = CLIPC_VIT, .embed_dim = E, .image_resolution = R, .vision_layers = L,      \
     .vision_width = W, .vision_patch_size = P, .vision_heads = H, .context_length = CTX, .vocab_size = 49408,       \
     .text_width = E, .text_heads = TH, .text_layers = TL, .activation = CLIPC_GELU, .vision_activation = CLIPC_GELU, \
     .pool_queries = Q, .pool_heads = QH, .decoder_layers = DL, .decoder_heads = DH}
#define RESNET(E, R, L0, L1, L2, L3, W, H, TW, TH, TL)                                                          \
    {.vision_tower = CLIPC_RESNET, .embed_dim = E, .image_resolution = R, .vision_resnet_layers = {L0, L1, L2, L3}, \
     .vision_width = W, .vision_heads = H, .context_length = 77, .vocab_size = 49408, .text_width = TW,           \
     .text_heads = TH, .text_layers = TL, .activation = CLIPC_QUICK_GELU, .vision_activation = CLIPC_QUICK_GELU}
static const arch ARCHS[] = {
    {"ViT-B-32", VIT(512, 224, 12, 768, 32, 12, 512, 8, 12)},
    {"ViT-B-16", VIT(512, 224, 12, 768, 16, 12, 512, 8, 12)},
    {"ViT-L-14", VIT(768, 224, 24, 1024, 14, 16, 768, 12, 12)},
    {"RN50", RESNET(1024, 224, 3, 4, 6, 3, 64, 32, 512, 8, 12)},
    {"tiny", VIT(32, 32, 2, 64, 8, 1, 32, 1, 2)},
    {"tiny-rn", RESNET(32, 64, 2, 1, 1, 1, 8, 4, 16, 2, 2)},
    {"fmnist", VIT(64, 28, 4, 64, 4, 4, 64, 4, 2)},
    /* SigLIP's B/16 at 224 (OpenCLIP's ViT-B-16-SigLIP, google/siglip-base-patch16-224) */
    {"ViT-B-16-SigLIP", SIGLIP(768, 224, 12, 16, 12, 64, 32000)},
    /* CoCa (OpenCLIP's architecture, exact GELU): the Fashion-MNIST captioner clipc ships, and a tiny one for tests */
    {"coca-fmnist", COCA(64, 28, 4, 64, 4, 4, 2, 4, 32, 17, 4, 2, 4)},
    {"coca-tiny", COCA(16, 16, 1, 16, 8, 2, 1, 2, 12, 5, 2, 1, 2)},
    {"coca_ViT-B-32", COCA(512, 224, 12, 768, 32, 12, 12, 8, 76, 256, 8, 12, 8)}, /* OpenCLIP's coca_ViT-B-32.json */
};
#define N_ARCHS (sizeof ARCHS / sizeof *ARCHS)

const char *const *clipc_arch_names(void) {
    static const char *names[N_ARCHS + 1];
    for (size_t i = 0; i < N_ARCHS; i++) names[i] = ARCHS[i].name;
    names[N_ARCHS] = NULL;
    return names;
}

const clipc_config *arch_config(const char *name) {
    for (size_t i = 0; i < N_ARCHS; i++)
        if (!strcmp(ARCHS[i].name, name)) return &ARCHS[i].cfg;
    return NULL;
}

void model_randomize(clipc_model *m, uint64_t seed) {
    rng r;
    rng_seed(&r, seed);
    for (int i = 0; i < m->table.count; i++) {
        const param_spec *p = &m->table.items[i];
        float *dst = m->params + p->offset;
        for (size_t j = 0; j < p->numel; j++) {
            switch (p->init) {
            case PI_NORMAL: dst[j] = (float)(rng_normal(&r) * p->init_std); break;
            case PI_ONES: case PI_BN_VAR: dst[j] = 1.0f; break;
            case PI_ZEROS: dst[j] = 0.0f; break;
            case PI_LOGIT_SCALE: dst[j] = (float)log(1.0 / 0.07); break; /* CLIP paper, sec. 2.5 */
            case PI_LOGIT_BIAS: dst[j] = -10.0f; break;                 /* SigLIP paper, sec. 3.2 */
            }
        }
    }
}

clipc_model *clipc_model_init(const char *name, uint64_t seed, clipc_error *err) {
    const clipc_config *cfg = arch_config(name);
    if (!cfg) {
        char list[256] = "";
        for (size_t i = 0; i < N_ARCHS; i++) {
            strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
            strncat(list, ARCHS[i].name, sizeof list - strlen(list) - 1);
        }
        clipc_fail(err, "unknown architecture '%s' (known: %s)", name, list);
        return NULL;
    }
    clipc_model *m = model_new(cfg, err);
    if (m) model_randomize(m, seed);
    return m;
}

/* ---- saving ---------------------------------------------------------------- */

int clipc_model_save(const clipc_model *m, const char *path, clipc_error *err) {
    return clipc_model_save_as(m, path, "F32", err);
}

/* The constructor arguments of clip.model.CLIP, as the reference files and
 * OpenCLIP tooling record them, as string metadata. */
int model_metadata(const clipc_model *m, char values[][64], const char **keys) {
    const clipc_config *c = &m->cfg;
    int k = 0;
#define META(key, ...) (keys[k] = key, snprintf(values[k], 64, __VA_ARGS__), k++)
    META("naming", "openai");
    META("format", "pt");
    if (c->family == CLIPC_COCA) {
        META("family", "coca");
        META("pool_heads", "%d", c->pool_heads);
        META("decoder_heads", "%d", c->decoder_heads);
    }
    if (c->family == CLIPC_SIGLIP) {
        META("family", "siglip");
        /* its image processor's settings, where they are not SiglipImageProcessor's defaults */
        const image_style *st = &m->style;
        if (st->resample != SIGLIP_STYLE.resample) META("image_resample", "%d", st->resample);
        if (memcmp(st->mean, SIGLIP_STYLE.mean, sizeof st->mean))
            META("image_mean", "[%.9g, %.9g, %.9g]", st->mean[0], st->mean[1], st->mean[2]);
        if (memcmp(st->std, SIGLIP_STYLE.std, sizeof st->std))
            META("image_std", "[%.9g, %.9g, %.9g]", st->std[0], st->std[1], st->std[2]);
    }
    META("embed_dim", "%d", c->embed_dim);
    META("image_resolution", "%d", c->image_resolution);
    if (c->vision_tower == CLIPC_VIT) {
        META("vision_layers", "%d", c->vision_layers);
        META("vision_patch_size", "%d", c->vision_patch_size);
        META("vision_tower", "VisionTransformer");
    } else {
        META("vision_layers", "[%d, %d, %d, %d]", c->vision_resnet_layers[0], c->vision_resnet_layers[1],
             c->vision_resnet_layers[2], c->vision_resnet_layers[3]);
        META("vision_patch_size", "null");
        META("vision_tower", "ModifiedResNet");
    }
    META("vision_width", "%d", c->vision_width);
    META("vision_heads", "%d", c->vision_heads);
    META("context_length", "%d", c->context_length);
    META("vocab_size", "%d", c->vocab_size);
    META("transformer_width", "%d", c->text_width);
    META("transformer_heads", "%d", c->text_heads);
    META("transformer_layers", "%d", c->text_layers);
    static const char *const act_names[] = {"quick_gelu", "gelu", "gelu_tanh"};
    META("activation", "%s", act_names[c->activation]);
    /* only what differs from OpenAI's: files of OpenAI-shaped models stay as they were */
    if (c->vision_tower == CLIPC_VIT && c->vision_activation != c->activation)
        META("vision_activation", "%s", act_names[c->vision_activation]);
    if (c->vision_ln_eps != 1e-5f) META("vision_ln_eps", "%.9g", c->vision_ln_eps);
    if (c->text_ln_eps != 1e-5f) META("text_ln_eps", "%.9g", c->text_ln_eps);
#undef META
    return k;
}

int model_save_with(const clipc_model *m, const char *path, const char *dtype, const st_out_tensor *extra,
                    int n_extra, const char *const *extra_keys, const char *const *extra_values, int n_extra_meta,
                    clipc_error *err) {
    bool int8 = !strcmp(dtype, "int8") || !strcmp(dtype, "I8");
    if (m->cfg.prompt_classes > 0 && !m->prompt_labels)
        return clipc_fail(err, "the model's %d class-specific contexts have no class names", m->cfg.prompt_classes);
    int st_dtype = !strcmp(dtype, "F32") ? ST_F32 : !strcmp(dtype, "F16") ? ST_F16 : !strcmp(dtype, "BF16") ? ST_BF16
                 : int8 ? ST_F32 : -1;
    if (st_dtype < 0) return clipc_fail(err, "unknown dtype '%s' (F32, F16, BF16 or int8)", dtype);
    if (int8 && m->precision != CLIPC_INT8)
        return clipc_fail(err, "an int8 checkpoint is written from a model set to int8 precision");
    /* int8: each converted weight matrix is stored as its I8 values plus an
     * F32 "<name>.scale" [out] beside it; everything else stays F32. */
    int cap = m->table.count * (int8 ? 2 : 1) + n_extra;
    st_out_tensor *ts = calloc((size_t)cap, sizeof *ts);
    char (*scale_names)[112] = int8 ? calloc((size_t)m->table.count, sizeof *scale_names) : NULL;
    char (*values)[64] = calloc(MODEL_META_MAX + (size_t)n_extra_meta, sizeof *values);
    const char **keys = calloc(MODEL_META_MAX + 1 + (size_t)n_extra_meta, sizeof *keys);
    const char **vals = calloc(MODEL_META_MAX + 1 + (size_t)n_extra_meta, sizeof *vals);
    char *classnames = NULL; /* CoOp's class-specific contexts: their classes, as a JSON array */
    if (m->cfg.prompt_classes > 0 && m->prompt_labels) {
        cJSON *a = cJSON_CreateStringArray((const char *const *)m->prompt_labels, m->cfg.prompt_classes);
        classnames = a ? cJSON_PrintUnformatted(a) : NULL;
        cJSON_Delete(a);
    }
    int rc = -1, count = 0;
    if (!ts || !values || !keys || !vals || (int8 && !scale_names) || (m->cfg.prompt_classes > 0 && !classnames)) {
        clipc_fail(err, "out of memory");
        goto done;
    }
    for (int i = 0; i < m->table.count; i++) {
        const param_spec *p = &m->table.items[i];
        st_out_tensor *t = &ts[count++];
        t->name = p->name;
        t->ndim = p->ndim;
        memcpy(t->shape, p->shape, sizeof p->shape);
        t->data = m->params + p->offset;
        /* logit_scale and BatchNorm statistics stay F32, as mixed-precision
         * checkpoints keep them */
        bool keep32 = p->ndim == 0 || strstr(p->name, "running_") != NULL;
        t->dtype = keep32 ? ST_F32 : st_dtype;
        const lowp_weight *w = int8 ? model_lowp_find(m, p->offset) : NULL;
        if (w && (size_t)w->out * w->in == p->numel) {
            t->dtype = ST_I8;
            t->data = (const float *)(const void *)w->q;
            st_out_tensor *s = &ts[count++];
            snprintf(scale_names[i], sizeof scale_names[i], "%s.scale", p->name);
            s->name = scale_names[i];
            s->ndim = 1;
            s->shape[0] = w->out;
            s->data = w->scale;
            s->dtype = ST_F32;
        }
    }
    for (int i = 0; i < n_extra; i++) ts[count++] = extra[i];
    int k = model_metadata(m, values, keys);
    for (int i = 0; i < k; i++) vals[i] = values[i];
    if (classnames) keys[k] = "prompt_classnames", vals[k++] = classnames;
    for (int i = 0; i < n_extra_meta; i++) keys[k + i] = extra_keys[i], vals[k + i] = extra_values[i];
    rc = st_write(path, ts, count, keys, vals, k + n_extra_meta, err);
done:
    free(classnames);
    free(ts);
    free(scale_names);
    free(values);
    free(keys);
    free(vals);
    return rc;
}

int clipc_model_save_as(const clipc_model *m, const char *path, const char *dtype, clipc_error *err) {
    return model_save_with(m, path, dtype, NULL, 0, NULL, NULL, 0, err);
}

/* ---- accessors ------------------------------------------------------------ */

const clipc_config *clipc_model_config(const clipc_model *m) { return &m->cfg; }

size_t clipc_model_param_count(const clipc_model *m) { return clipc_model_param_count_of(&m->table); }

size_t clipc_model_param_count_of(const param_table *t) {
    size_t n = 0;
    for (int i = 0; i < t->count; i++) {
        const char *name = t->items[i].name;
        size_t len = strlen(name);
        /* BatchNorm running statistics are buffers, not parameters. */
        if (len > 13 && (!strcmp(name + len - 13, ".running_mean") || !strcmp(name + len - 12, ".running_var")))
            continue;
        n += t->items[i].numel;
    }
    return n;
}

const char *clipc_model_source_dtype(const clipc_model *m) { return m->source_dtype; }

float clipc_model_logit_scale(const clipc_model *m) { return expf(m->params[m->L.logit_scale]); }

float clipc_model_logit_bias(const clipc_model *m) { return m->cfg.has_logit_bias ? m->params[m->L.logit_bias] : 0.0f; }

const char *clipc_model_tokenizer_path(const clipc_model *m) { return m->tokenizer_path; }

const char *clipc_model_family_name(const clipc_model *m) {
    return m->cfg.family == CLIPC_SIGLIP ? "SigLIP" : m->cfg.family == CLIPC_COCA ? "CoCa" : "CLIP";
}

void clipc_normalize_rows(float *rows, int n, int dim) {
    for (int i = 0; i < n; i++) {
        float *r = rows + (size_t)i * dim;
        double ss = 0.0;
        for (int j = 0; j < dim; j++) ss += (double)r[j] * r[j];
        float inv = ss > 0.0 ? (float)(1.0 / sqrt(ss)) : 0.0f;
        for (int j = 0; j < dim; j++) r[j] *= inv;
    }
}

/* ---- encoders ------------------------------------------------------------- */

#define IMAGE_CHUNK 32  /* images per forward pass: bounds activation memory */
#define TEXT_CHUNK 256

/* Batch-parallel encoding. A batch is cut into one contiguous share per
 * thread, and each share runs the whole tower on its own thread with its
 * own arena (run_shares). So the threads never wait for each other inside
 * a pass, and the element-wise kernels split evenly. A single input runs
 * as one pass whose layers use every thread; so does a model with a debug
 * tap, whose intermediates must arrive in order.
 *
 * On a shared machine (another process runnable) a thread can lose its
 * core for a whole time slice, and every OpenMP region then waits for it:
 * measured here with one of the two CPUs busy, a 2-thread ViT-B-32 batch-1
 * encode ran 4-20x slower than 1 thread. So a single input then runs on
 * the threads that have a core, and a batch is cut into twice as many
 * shares as threads, pulled dynamically, so a slowed thread does fewer.
 * *inner is the thread count for a single share's layers. */
static int shares_for(const clipc_model *m, int n, int *inner) {
    int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
    *inner = threads;
    if (m->tap) return 1;
    int avail = threads > 1 ? threads_available() : threads;
    if (n < 2) {
        *inner = avail;
        return 1;
    }
    int shares = avail < threads ? 2 * threads : threads;
    return n < shares ? n : shares;
}

/* run_shares with a single share's layers on `inner` threads. */
static int run_encode(int shares, int inner, int (*work)(void *, int, clipc_error *), void *job, clipc_error *err) {
    int saved = omp_get_max_threads();
    if (shares == 1 && inner != saved) omp_set_num_threads(inner);
    int rc = run_shares(shares, work, job, err);
    if (shares == 1 && inner != saved) omp_set_num_threads(saved);
    return rc;
}

/* Makes sure the model has at least `count` arenas. */
static int ensure_arenas(clipc_model *m, int count, clipc_error *err) {
    if (count <= m->n_scratch) return 0;
    arena *grown = realloc(m->scratch, (size_t)count * sizeof *grown);
    if (!grown) return clipc_fail(err, "out of memory");
    memset(grown + m->n_scratch, 0, (size_t)(count - m->n_scratch) * sizeof *grown);
    m->scratch = grown;
    m->n_scratch = count;
    return 0;
}

/* One chunk of an encode call: share s covers inputs [bound[s], bound[s + 1]). */
typedef struct encode_job {
    clipc_model *m;
    const float *pixels;   /* images, or NULL */
    const int32_t *tokens; /* texts */
    const int *eot;
    const text_prompt *prompt; /* CoOp's context (NULL: none) */
    const int *bound;
    float *out;
} encode_job;

static int encode_share(void *ctx, int s, clipc_error *err) {
    const encode_job *j = ctx;
    const clipc_config *c = &j->m->cfg;
    int first = j->bound[s], count = j->bound[s + 1] - first;
    arena *a = &j->m->scratch[s];
    float *out = j->out + (size_t)first * c->embed_dim;
    if (j->pixels) {
        const float *px = j->pixels + (size_t)first * 3 * c->image_resolution * c->image_resolution;
        int rc = c->vision_tower == CLIPC_VIT ? vit_forward(j->m, a, px, count, out) : resnet_forward(j->m, a, px, count, out);
        return rc ? clipc_fail(err, "out of memory encoding images") : 0;
    }
    text_prompt share = {0}, *prompt = NULL;
    if (j->prompt) { /* text i's context is at ctx + i * stride */
        share = *j->prompt;
        share.ctx += (size_t)first * share.stride;
        prompt = &share;
    }
    if (count > 0 && text_forward(j->m, a, j->tokens + (size_t)first * c->context_length, count, j->eot + first, prompt, out))
        return clipc_fail(err, "out of memory encoding text");
    return 0;
}

int clipc_encode_image(clipc_model *m, const float *pixels, int n, float *out, clipc_error *err) {
    const clipc_config *c = &m->cfg;
    bool vit = c->vision_tower == CLIPC_VIT;
    int bound[IMAGE_CHUNK + 1];
    for (int done = 0; done < n; done += IMAGE_CHUNK) {
        int inner, b = n - done < IMAGE_CHUNK ? n - done : IMAGE_CHUNK, shares = shares_for(m, b, &inner);
        if (ensure_arenas(m, shares, err)) return -1;
        for (int s = 0; s <= shares; s++) bound[s] = done + s * b / shares; /* equal shares */
        for (int s = 0; s < shares; s++) {
            int count = bound[s + 1] - bound[s];
            if (arena_reserve(&m->scratch[s], vit ? vit_scratch(c, count) : resnet_scratch(c, count), err)) return -1;
        }
        encode_job job = {m, pixels, NULL, NULL, NULL, bound, out};
        if (run_encode(shares, inner, encode_share, &job, err)) return -1;
    }
    if (c->adapter_hidden > 0) { /* a fine-tuned CLIP-Adapter on the features */
        const float *P = m->params;
        float *hid = malloc(((size_t)n * c->adapter_hidden + (size_t)n * c->embed_dim) * sizeof *hid);
        if (!hid) return clipc_fail(err, "out of memory");
        adapter_forward(out, hid, hid + (size_t)n * c->adapter_hidden, out, P + m->L.adapter_fc1, P + m->L.adapter_fc2,
                        P[m->L.adapter_ratio], n, c->embed_dim, c->adapter_hidden);
        free(hid);
    }
    if (m->tap) model_tap(m, "encode_image", out, n, c->embed_dim);
    return 0;
}

/* Sequences [first, first + count) of a text batch: tokens in the share and
 * its longest sequence. */
static void text_share_size(const int *eot, int first, int count, int *total, int *max_len) {
    *total = *max_len = 0;
    for (int i = first; i < first + count; i++) {
        *total += eot[i] + 1;
        *max_len = eot[i] + 1 > *max_len ? eot[i] + 1 : *max_len;
    }
}

int clipc_encode_text(clipc_model *m, const int32_t *tokens, int n, float *out, clipc_error *err) {
    return model_encode_text_prompted(m, tokens, n, NULL, out, err);
}

int model_encode_text_prompted(clipc_model *m, const int32_t *tokens, int n, const text_prompt *prompt, float *out,
                               clipc_error *err) {
    const clipc_config *c = &m->cfg;
    int *eot = malloc((size_t)(n > 0 ? n : 1) * sizeof *eot);
    if (!eot) return clipc_fail(err, "out of memory");
    if (text_eot_positions(c, tokens, n, eot, err)) {
        free(eot);
        return -1;
    }
    int rc = 0, bound[TEXT_CHUNK + 1];
    for (int done = 0; done < n && rc == 0; done += TEXT_CHUNK) {
        int inner, b = n - done < TEXT_CHUNK ? n - done : TEXT_CHUNK, shares = shares_for(m, b, &inner), total, longest;
        /* Shares of equal token counts (a text's cost grows with its
         * length): share s starts at the first text whose tokens before it
         * reach s/shares of the chunk's. */
        text_share_size(eot, done, b, &total, &longest);
        bound[0] = done, bound[shares] = done + b;
        for (int s = 1, i = done, seen = 0; s < shares; s++) {
            while (i < done + b && (long)seen * shares < (long)total * s) seen += eot[i++] + 1;
            bound[s] = i > bound[s - 1] ? i : bound[s - 1];
        }
        rc = ensure_arenas(m, shares, err);
        for (int s = 0; s < shares && rc == 0; s++) {
            int count = bound[s + 1] - bound[s];
            text_share_size(eot, bound[s], count, &total, &longest);
            rc = arena_reserve(&m->scratch[s], text_scratch(c, total, count, longest), err);
        }
        encode_job job = {m, NULL, tokens, eot, prompt, bound, out};
        if (rc == 0) rc = run_encode(shares, inner, encode_share, &job, err);
    }
    free(eot);
    if (rc == 0 && m->tap) model_tap(m, "encode_text", out, n, c->embed_dim);
    return rc;
}
