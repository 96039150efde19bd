/* checkpoint.c — from a .safetensors file to a model's parameter array.
 *
 * Two namings are understood. OpenAI's (also OpenCLIP's) is our canonical
 * one. Hugging Face's CLIPModel renames every tensor, splits attention
 * in_proj into q/k/v and stores both projections transposed; its config.json
 * supplies head counts and the activation. The config is inferred from
 * tensor shapes exactly as OpenAI's build_model() does. */
#include "../internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* OpenAI's names (clipc's own); Hugging Face's CLIPModel / SiglipModel;
 * OpenCLIP's SigLIP (CustomTextCLIP: a timm trunk, "visual.trunk.*", and
 * the text tower under "text.*"); OpenCLIP's CoCa (its text tower under
 * "text.*", the decoder under "text_decoder.*"). */
enum naming { NAMING_OPENAI, NAMING_HF, NAMING_OPENCLIP_SIGLIP, NAMING_OPENCLIP_COCA };

static const st_tensor *need(const st_file *f, const char *name, int ndim, clipc_error *err) {
    const st_tensor *t = st_find(f, name);
    if (!t) {
        clipc_fail(err, "missing tensor '%s'", name);
        return NULL;
    }
    if (t->ndim != ndim) {
        clipc_fail(err, "tensor '%s' has %d dimensions, expected %d", name, t->ndim, ndim);
        return NULL;
    }
    return t;
}

/* The number of distinct block indices i among names "prefix<i>.suffix". */
static int count_blocks(const st_file *f, const char *prefix, const char *suffix) {
    int max = -1;
    size_t pl = strlen(prefix);
    for (int i = 0; i < f->count; i++) {
        const char *n = f->tensors[i].name;
        if (strncmp(n, prefix, pl) != 0) continue;
        char *end;
        long idx = strtol(n + pl, &end, 10);
        if (end == n + pl || *end != '.' || (suffix && strcmp(end + 1, suffix) != 0)) continue;
        if (idx > max && idx < 10000) max = (int)idx;
    }
    return max + 1;
}

static int meta_int(const st_file *f, const char *key, int fallback) {
    char *s = st_metadata_get(f, key);
    int v = fallback;
    if (s && atoi(s) > 0) v = atoi(s);
    free(s);
    return v;
}

/* Activation: metadata "activation" (gelu | quick_gelu) or OpenCLIP's
 * "quick_gelu" flag; OpenAI weights default to QuickGELU. */
static int meta_activation(const st_file *f) {
    char *act = st_metadata_get(f, "activation"), *qg = st_metadata_get(f, "quick_gelu");
    int a = CLIPC_QUICK_GELU;
    if ((act && !strcmp(act, "gelu")) || (qg && (!strcmp(qg, "false") || !strcmp(qg, "False"))))
        a = CLIPC_GELU;
    if (act && !strcmp(act, "gelu_tanh")) a = CLIPC_GELU_TANH;
    free(act);
    free(qg);
    return a;
}

static float meta_float(const st_file *f, const char *key, float fallback) {
    char *s = st_metadata_get(f, key);
    float v = fallback;
    if (s) {
        char *end;
        double d = strtod(s, &end);
        if (end != s && !*end && d > 0 && d < 1) v = (float)d;
    }
    free(s);
    return v;
}

/* The MLP's hidden width: rows of block 0's first MLP weight (0 when absent;
 * the parameter table then reports the missing tensor). */
static int mlp_width(const st_file *f, const char *name) {
    const st_tensor *t = st_find(f, name);
    return t && t->ndim == 2 && t->shape[0] > 0 && t->shape[0] <= (1 << 20) ? (int)t->shape[0] : 0;
}

static int infer_openai(const st_file *f, clipc_config *c, clipc_error *err) {
    const st_tensor *t;
    bool siglip = st_find(f, "visual.head.probe") != NULL; /* clipc's names for a SigLIP model */
    if (siglip) {
        c->family = CLIPC_SIGLIP;
        c->vision_tower = CLIPC_VIT;
        if (!(t = need(f, "visual.conv1.weight", 4, err))) return -1;
        c->vision_width = (int)t->shape[0];
        c->vision_patch_size = (int)t->shape[3];
        c->vision_layers = count_blocks(f, "visual.transformer.resblocks.", "attn.in_proj_weight");
        if (!(t = need(f, "visual.positional_embedding", 2, err))) return -1;
        c->image_resolution = c->vision_patch_size * (int)lround(sqrt((double)t->shape[0]));
        c->vision_heads = meta_int(f, "vision_heads", c->vision_width / 64 > 0 ? c->vision_width / 64 : 1);
        c->vision_mlp_width = mlp_width(f, "visual.transformer.resblocks.0.mlp.c_fc.weight");
    } else if (st_find(f, "visual.proj")) {
        c->vision_tower = CLIPC_VIT;
        if (!(t = need(f, "visual.conv1.weight", 4, err))) return -1;
        c->vision_width = (int)t->shape[0];
        c->vision_patch_size = (int)t->shape[3];
        c->vision_layers = count_blocks(f, "visual.transformer.resblocks.", "attn.in_proj_weight");
        if (!(t = need(f, "visual.positional_embedding", 2, err))) return -1;
        c->image_resolution = c->vision_patch_size * (int)lround(sqrt((double)(t->shape[0] - 1)));
        c->vision_heads = meta_int(f, "vision_heads", c->vision_width / 64 > 0 ? c->vision_width / 64 : 1);
        c->vision_mlp_width = mlp_width(f, "visual.transformer.resblocks.0.mlp.c_fc.weight");
        c->vision_layer_scale = st_find(f, "visual.transformer.resblocks.0.ls_1.gamma") != NULL;
    } else if (st_find(f, "visual.layer1.0.conv1.weight")) {
        c->vision_tower = CLIPC_RESNET;
        for (int s = 0; s < 4; s++) {
            char prefix[32];
            snprintf(prefix, sizeof prefix, "visual.layer%d.", s + 1);
            c->vision_resnet_layers[s] = count_blocks(f, prefix, NULL);
        }
        if (!(t = need(f, "visual.layer1.0.conv1.weight", 4, err))) return -1;
        c->vision_width = (int)t->shape[0];
        if (!(t = need(f, "visual.attnpool.positional_embedding", 2, err))) return -1;
        c->image_resolution = 32 * (int)lround(sqrt((double)(t->shape[0] - 1)));
        c->vision_heads = meta_int(f, "vision_heads", c->vision_width * 32 / 64);
    } else {
        return clipc_fail(err, "missing tensor 'visual.proj' (ViT) or 'visual.layer1.0.conv1.weight' (ResNet): not a CLIP checkpoint?");
    }
    if (!(t = need(f, siglip ? "text_head.weight" : "text_projection", 2, err))) return -1;
    c->embed_dim = (int)t->shape[siglip ? 0 : 1];
    if (!(t = need(f, "positional_embedding", 2, err))) return -1;
    c->context_length = (int)t->shape[0];
    if (!(t = need(f, "token_embedding.weight", 2, err))) return -1;
    c->vocab_size = (int)t->shape[0];
    if (!(t = need(f, "ln_final.weight", 1, err))) return -1;
    c->text_width = (int)t->shape[0];
    c->text_layers = count_blocks(f, "transformer.resblocks.", NULL);
    c->text_heads = meta_int(f, "transformer_heads", c->text_width / 64 > 0 ? c->text_width / 64 : 1);
    c->activation = meta_activation(f);
    c->text_mlp_width = mlp_width(f, "transformer.resblocks.0.mlp.c_fc.weight");
    c->text_layer_scale = st_find(f, "transformer.resblocks.0.ls_1.gamma") != NULL;
    c->vision_ln_eps = meta_float(f, "vision_ln_eps", 1e-5f);
    c->text_ln_eps = meta_float(f, "text_ln_eps", 1e-5f);
    char *va = st_metadata_get(f, "vision_activation");
    c->vision_activation = !va                     ? c->activation
                           : !strcmp(va, "gelu")      ? CLIPC_GELU
                           : !strcmp(va, "gelu_tanh") ? CLIPC_GELU_TANH
                                                      : CLIPC_QUICK_GELU;
    free(va);
    return 0;
}

static bool json_triple(const cJSON *v, float out[3]);
static int json_only(cJSON *obj, const char *tower, const char *key, const char *supported, const char *cfg_path,
                     clipc_error *err);

static int json_int(cJSON *obj, const char *key, int fallback) {
    cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNumber(v) ? v->valueint : fallback;
}

static float json_eps_key(cJSON *obj, const char *key, float fallback) {
    cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNumber(v) && v->valuedouble > 0 && v->valuedouble < 1 ? (float)v->valuedouble : fallback;
}

static float json_eps(cJSON *obj, float fallback) { return json_eps_key(obj, "layer_norm_eps", fallback); }

/* A tower's hidden_act (transformers' default: quick_gelu); anything but
 * the two CLIP uses is refused by name rather than computed wrongly. */
static int json_activation(cJSON *obj, const char *tower, const char *cfg_path, const char *fallback, int *act,
                           clipc_error *err) {
    cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, "hidden_act");
    const char *s = cJSON_IsString(v) ? v->valuestring : fallback;
    if (!strcmp(s, "quick_gelu")) *act = CLIPC_QUICK_GELU;
    else if (!strcmp(s, "gelu")) *act = CLIPC_GELU;
    /* both are 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
    else if (!strcmp(s, "gelu_pytorch_tanh") || !strcmp(s, "gelu_new")) *act = CLIPC_GELU_TANH;
    else
        return clipc_fail(err, "%s: %s.hidden_act '%s' is not supported (quick_gelu, gelu, gelu_pytorch_tanh)", cfg_path,
                          tower, s);
    return 0;
}

/* The file beside the checkpoint, or "" (no directory part: the current one). */
static void beside(const char *path, const char *file, char *out, size_t cap) {
    const char *slash = strrchr(path, '/');
    int dirlen = slash ? (int)(slash - path + 1) : 0;
    snprintf(out, cap, "%.*s%s", dirlen, path, file);
}

/* Hugging Face's SiglipModel: shapes from the tensors, heads, epsilons and
 * activations from config.json (transformers' SiglipConfig defaults). */
static int infer_hf_siglip(const st_file *f, const char *cfg_path, cJSON *tc, cJSON *vc, clipc_config *c,
                           clipc_error *err) {
    const st_tensor *t;
    c->family = CLIPC_SIGLIP;
    c->vision_tower = CLIPC_VIT;
    if (cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(vc, "vision_use_head")))
        return clipc_fail(err, "%s: vision_config.vision_use_head false (no pooling head) is not supported", cfg_path);
    if (!(t = need(f, "vision_model.embeddings.patch_embedding.weight", 4, err))) return -1;
    c->vision_width = (int)t->shape[0];
    c->vision_patch_size = (int)t->shape[3];
    c->vision_layers = count_blocks(f, "vision_model.encoder.layers.", "self_attn.q_proj.weight");
    if (!(t = need(f, "vision_model.embeddings.position_embedding.weight", 2, err))) return -1;
    c->image_resolution = c->vision_patch_size * (int)lround(sqrt((double)t->shape[0]));
    if (!(t = need(f, "text_model.head.weight", 2, err))) return -1;
    c->embed_dim = (int)t->shape[0];
    if (!(t = need(f, "text_model.embeddings.position_embedding.weight", 2, err))) return -1;
    c->context_length = (int)t->shape[0];
    if (!(t = need(f, "text_model.embeddings.token_embedding.weight", 2, err))) return -1;
    c->vocab_size = (int)t->shape[0];
    c->text_width = (int)t->shape[1];
    c->text_layers = count_blocks(f, "text_model.encoder.layers.", "self_attn.q_proj.weight");
    c->text_heads = json_int(tc, "num_attention_heads", 12);
    c->vision_heads = json_int(vc, "num_attention_heads", 12);
    if (json_activation(tc, "text_config", cfg_path, "gelu_pytorch_tanh", &c->activation, err) ||
        json_activation(vc, "vision_config", cfg_path, "gelu_pytorch_tanh", &c->vision_activation, err))
        return -1;
    c->text_ln_eps = json_eps(tc, 1e-6f);
    c->vision_ln_eps = json_eps(vc, 1e-6f);
    c->vision_mlp_width = mlp_width(f, "vision_model.encoder.layers.0.mlp.fc1.weight");
    c->text_mlp_width = mlp_width(f, "text_model.encoder.layers.0.mlp.fc1.weight");
    return 0;
}

/* OpenCLIP's SigLIP models: shapes from the tensors; head counts, epsilons
 * and activations from open_clip_config.json beside the file when there is
 * one (else timm's and OpenCLIP's defaults: exact GELU, eps 1e-6, 64-wide
 * heads, or 16 heads for the 1152-wide So400m). */
static int infer_openclip_siglip(const st_file *f, const char *path, clipc_config *c, image_style *style,
                                 clipc_error *err) {
    const st_tensor *t;
    c->family = CLIPC_SIGLIP;
    c->vision_tower = CLIPC_VIT;
    if (!(t = need(f, "visual.trunk.patch_embed.proj.weight", 4, err))) return -1;
    c->vision_width = (int)t->shape[0];
    c->vision_patch_size = (int)t->shape[3];
    c->vision_layers = count_blocks(f, "visual.trunk.blocks.", "attn.qkv.weight");
    if (!(t = need(f, "visual.trunk.pos_embed", 3, err))) return -1;
    c->image_resolution = c->vision_patch_size * (int)lround(sqrt((double)t->shape[1]));
    if (!(t = need(f, "text.text_projection.weight", 2, err))) return -1;
    c->embed_dim = (int)t->shape[0];
    if (!(t = need(f, "text.positional_embedding", 2, err))) return -1;
    c->context_length = (int)t->shape[0];
    if (!(t = need(f, "text.token_embedding.weight", 2, err))) return -1;
    c->vocab_size = (int)t->shape[0];
    c->text_width = (int)t->shape[1];
    c->text_layers = count_blocks(f, "text.transformer.resblocks.", "attn.in_proj_weight");
    c->vision_mlp_width = mlp_width(f, "visual.trunk.blocks.0.mlp.fc1.weight");
    c->text_mlp_width = mlp_width(f, "text.transformer.resblocks.0.mlp.c_fc.weight");
    c->vision_heads = c->vision_width == 1152 ? 16 : c->vision_width / 64 > 0 ? c->vision_width / 64 : 1;
    c->text_heads = c->text_width == 1152 ? 16 : c->text_width / 64 > 0 ? c->text_width / 64 : 1;
    c->activation = c->vision_activation = CLIPC_GELU;
    c->vision_ln_eps = c->text_ln_eps = 1e-6f;

    char cfg_path[4096];
    beside(path, "open_clip_config.json", cfg_path, sizeof cfg_path);
    if (access(cfg_path, F_OK) != 0) return 0;
    unsigned char *text;
    size_t len;
    if (read_file(cfg_path, &text, &len, err)) return -1;
    cJSON *root = cJSON_ParseWithLength((const char *)text, len);
    free(text);
    if (!root) return clipc_fail(err, "%s: invalid JSON", cfg_path);
    cJSON *mc = cJSON_GetObjectItemCaseSensitive(root, "model_cfg");
    if (!cJSON_IsObject(mc)) mc = root;
    cJSON *vc = cJSON_GetObjectItemCaseSensitive(mc, "vision_cfg"), *tc = cJSON_GetObjectItemCaseSensitive(mc, "text_cfg");
    int rc = -1;
    if (json_only(vc, "vision_cfg", "timm_pool", "map", cfg_path, err) ||
        json_only(vc, "vision_cfg", "timm_proj", "none", cfg_path, err) ||
        json_only(tc, "text_cfg", "pool_type", "last", cfg_path, err))
        goto done;
    cJSON *causal = cJSON_GetObjectItemCaseSensitive(tc, "no_causal_mask");
    if (causal && !cJSON_IsTrue(causal)) {
        clipc_fail(err, "%s: a SigLIP text tower with a causal mask (text_cfg.no_causal_mask false) is not supported",
                   cfg_path);
        goto done;
    }
    cJSON *timm = cJSON_GetObjectItemCaseSensitive(vc, "timm_model_name");
    if (cJSON_IsString(timm) && (strstr(timm->valuestring, "so400m") || strstr(timm->valuestring, "giant") ||
                                 strstr(timm->valuestring, "large")))
        c->vision_heads = 16; /* timm's vit_{so400m,giantopt,large}_*_siglip */
    int head_width = json_int(vc, "head_width", 0); /* OpenCLIP's vision_cfg key, where a file gives it */
    if (head_width > 0 && c->vision_width % head_width == 0) c->vision_heads = c->vision_width / head_width;
    c->text_heads = json_int(tc, "heads", c->text_heads);
    cJSON *norm = cJSON_GetObjectItemCaseSensitive(tc, "norm_kwargs");
    c->text_ln_eps = cJSON_IsObject(norm) ? json_eps_key(norm, "eps", c->text_ln_eps) : c->text_ln_eps;
    cJSON *act = cJSON_GetObjectItemCaseSensitive(tc, "act_kwargs");
    cJSON *approx = cJSON_IsObject(act) ? cJSON_GetObjectItemCaseSensitive(act, "approximate") : NULL;
    if (cJSON_IsString(approx) && !strcmp(approx->valuestring, "tanh")) c->activation = CLIPC_GELU_TANH;
    /* preprocessing: mean, std and the interpolation of OpenCLIP's preprocess_cfg */
    cJSON *pc = cJSON_GetObjectItemCaseSensitive(root, "preprocess_cfg");
    cJSON *interp = cJSON_GetObjectItemCaseSensitive(pc, "interpolation"), *mode = cJSON_GetObjectItemCaseSensitive(pc, "resize_mode");
    if (cJSON_IsString(mode) && strcmp(mode->valuestring, "squash")) {
        clipc_fail(err, "%s: preprocess_cfg.resize_mode '%s' is not supported for SigLIP ('squash')", cfg_path,
                   mode->valuestring);
        goto done;
    }
    if (cJSON_IsString(interp)) {
        if (!strcmp(interp->valuestring, "bilinear")) style->resample = RESAMPLE_BILINEAR;
        else if (!strcmp(interp->valuestring, "bicubic")) style->resample = RESAMPLE_BICUBIC;
        else {
            clipc_fail(err, "%s: preprocess_cfg.interpolation '%s' is not supported (bicubic, bilinear)", cfg_path,
                       interp->valuestring);
            goto done;
        }
    }
    if ((cJSON_GetObjectItemCaseSensitive(pc, "mean") && !json_triple(cJSON_GetObjectItemCaseSensitive(pc, "mean"), style->mean)) ||
        (cJSON_GetObjectItemCaseSensitive(pc, "std") && !json_triple(cJSON_GetObjectItemCaseSensitive(pc, "std"), style->std))) {
        clipc_fail(err, "%s: preprocess_cfg mean and std must be three numbers", cfg_path);
        goto done;
    }
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

/* OpenCLIP's CoCa: shapes from the tensors, head counts and the activation
 * from open_clip_config.json beside the file (else OpenCLIP's defaults: 64-wide
 * image heads, 8 text, pooler and decoder heads, exact GELU). */
static int infer_openclip_coca(const st_file *f, const char *path, const char *tp, clipc_config *c, clipc_error *err) {
    const st_tensor *t;
    char name[128];
#define TP(n) (snprintf(name, sizeof name, "%s%s", tp, n), name)
    c->family = CLIPC_COCA;
    c->vision_tower = CLIPC_VIT;
    if (!(t = need(f, "visual.conv1.weight", 4, err))) return -1;
    c->vision_width = (int)t->shape[0];
    c->vision_patch_size = (int)t->shape[3];
    c->vision_layers = count_blocks(f, "visual.transformer.resblocks.", "attn.in_proj_weight");
    if (!(t = need(f, "visual.positional_embedding", 2, err))) return -1;
    c->image_resolution = c->vision_patch_size * (int)lround(sqrt((double)(t->shape[0] - 1)));
    c->vision_mlp_width = mlp_width(f, "visual.transformer.resblocks.0.mlp.c_fc.weight");
    if (!(t = need(f, "visual.attn_pool.query", 2, err))) return -1;
    c->pool_queries = t->shape[0] > 0 && t->shape[0] <= 4096 ? (int)t->shape[0] : 0;
    if (!(t = need(f, "visual.proj", 2, err))) return -1;
    c->embed_dim = (int)t->shape[1];
    if (!(t = need(f, TP("positional_embedding"), 2, err))) return -1;
    c->context_length = (int)t->shape[0] - 1; /* the CLS token's position is the last */
    if (!(t = need(f, TP("token_embedding.weight"), 2, err))) return -1;
    c->vocab_size = (int)t->shape[0];
    c->text_width = (int)t->shape[1];
    c->text_layers = count_blocks(f, TP("transformer.resblocks."), "attn.in_proj_weight");
    c->text_mlp_width = mlp_width(f, TP("transformer.resblocks.0.mlp.c_fc.weight"));
    c->decoder_layers = count_blocks(f, "text_decoder.resblocks.", "attn.in_proj_weight");
#undef TP
    /* clipc's own files keep the head counts in their metadata */
    c->vision_heads = meta_int(f, "vision_heads", c->vision_width / 64 > 0 ? c->vision_width / 64 : 1);
    c->text_heads = meta_int(f, "transformer_heads", 8);
    c->pool_heads = meta_int(f, "pool_heads", 8);
    c->decoder_heads = meta_int(f, "decoder_heads", 8);
    c->activation = c->vision_activation = *tp ? CLIPC_GELU : meta_activation(f);
    c->vision_ln_eps = c->text_ln_eps = 1e-5f;
    char cfg_path[4096];
    beside(path, "open_clip_config.json", cfg_path, sizeof cfg_path);
    if (access(cfg_path, F_OK) != 0) return 0;
    unsigned char *text;
    size_t len;
    if (read_file(cfg_path, &text, &len, err)) return -1;
    cJSON *root = cJSON_ParseWithLength((const char *)text, len);
    free(text);
    if (!root) return clipc_fail(err, "%s: invalid JSON", cfg_path);
    cJSON *mc = cJSON_GetObjectItemCaseSensitive(root, "model_cfg");
    if (!cJSON_IsObject(mc)) mc = root;
    cJSON *vc = cJSON_GetObjectItemCaseSensitive(mc, "vision_cfg"), *tc = cJSON_GetObjectItemCaseSensitive(mc, "text_cfg");
    cJSON *dc = cJSON_GetObjectItemCaseSensitive(mc, "multimodal_cfg");
    int rc = 0;
    cJSON *pool = cJSON_GetObjectItemCaseSensitive(vc, "attentional_pool");
    if (cJSON_IsString(pool)) /* 'parallel' and 'cascade': a second pooler for the embedding */
        rc = clipc_fail(err, "%s: vision_cfg.attentional_pool '%s' is not supported (OpenCLIP's original CoCa pooler)",
                        cfg_path, pool->valuestring);
    int head_width = json_int(vc, "head_width", 64);
    if (head_width > 0 && c->vision_width % head_width == 0) c->vision_heads = c->vision_width / head_width;
    c->pool_heads = json_int(vc, "attn_pooler_heads", 8);
    c->text_heads = json_int(tc, "heads", 8);
    c->decoder_heads = json_int(dc, "heads", 8);
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(mc, "quick_gelu"))) c->activation = c->vision_activation = CLIPC_QUICK_GELU;
    cJSON_Delete(root);
    return rc;
}

static int infer_hf(const st_file *f, const char *path, clipc_config *c, clipc_error *err) {
    char cfg_path[4096];
    beside(path, "config.json", cfg_path, sizeof cfg_path);
    unsigned char *text;
    size_t len;
    if (read_file(cfg_path, &text, &len, err))
        return clipc_fail(err, "Hugging Face checkpoint needs its config.json beside it: %s", err->message);
    cJSON *root = cJSON_ParseWithLength((const char *)text, len);
    free(text);
    if (!root) return clipc_fail(err, "%s: invalid JSON", cfg_path);
    cJSON *tc = cJSON_GetObjectItemCaseSensitive(root, "text_config");
    cJSON *vc = cJSON_GetObjectItemCaseSensitive(root, "vision_config");
    cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    const st_tensor *t;
    int rc = -1;
    if (cJSON_IsString(type) && !strcmp(type->valuestring, "siglip2")) {
        clipc_fail(err, "%s: model_type 'siglip2' (Siglip2Model, NaFlex variable resolution) is not supported; the "
                        "fixed-resolution SigLIP 2 checkpoints (model_type 'siglip') are", cfg_path);
        goto done;
    }
    if ((cJSON_IsString(type) && !strcmp(type->valuestring, "siglip")) || st_find(f, "vision_model.head.probe")) {
        rc = infer_hf_siglip(f, cfg_path, tc, vc, c, err);
        goto done;
    }
    c->vision_tower = CLIPC_VIT;
    if (!(t = need(f, "vision_model.embeddings.patch_embedding.weight", 4, err))) goto done;
    c->vision_width = (int)t->shape[0];
    c->vision_patch_size = (int)t->shape[3];
    c->vision_layers = count_blocks(f, "vision_model.encoder.layers.", "self_attn.q_proj.weight");
    if (!(t = need(f, "vision_model.embeddings.position_embedding.weight", 2, err))) goto done;
    c->image_resolution = c->vision_patch_size * (int)lround(sqrt((double)(t->shape[0] - 1)));
    if (!(t = need(f, "text_projection.weight", 2, err))) goto done;
    c->embed_dim = (int)t->shape[0];
    if (!(t = need(f, "text_model.embeddings.position_embedding.weight", 2, err))) goto done;
    c->context_length = (int)t->shape[0];
    if (!(t = need(f, "text_model.embeddings.token_embedding.weight", 2, err))) goto done;
    c->vocab_size = (int)t->shape[0];
    c->text_width = (int)t->shape[1];
    c->text_layers = count_blocks(f, "text_model.encoder.layers.", "self_attn.q_proj.weight");
    /* transformers' CLIPTextConfig / CLIPVisionConfig defaults */
    c->text_heads = json_int(tc, "num_attention_heads", 8);
    c->vision_heads = json_int(vc, "num_attention_heads", 12);
    if (json_activation(tc, "text_config", cfg_path, "quick_gelu", &c->activation, err) ||
        json_activation(vc, "vision_config", cfg_path, "quick_gelu", &c->vision_activation, err))
        goto done;
    c->text_ln_eps = json_eps(tc, 1e-5f);
    c->vision_ln_eps = json_eps(vc, 1e-5f);
    c->vision_mlp_width = mlp_width(f, "vision_model.encoder.layers.0.mlp.fc1.weight");
    c->text_mlp_width = mlp_width(f, "text_model.encoder.layers.0.mlp.fc1.weight");
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

/* Where a canonical (OpenAI) tensor lives in a Hugging Face or OpenCLIP
 * file: one tensor, one transposed tensor, or row blocks (Hugging Face's
 * q, k, v; timm's q and kv) stacked into it; squeeze: the file's tensor
 * has a leading dimension of 1 more (timm's pos_embed [1, N, D]). */
typedef struct source {
    char name[3][160];
    int parts;
    int64_t rows[3]; /* rows of each part (0: the rows split evenly) */
    bool transpose, squeeze;
    int64_t slice_from; /* >= 0: the tensor is rows slice_from.. of a larger file tensor (else -1) */
} source;

/* OpenCLIP's CoCa: the image tower, decoder and logit_scale keep clipc's
 * (OpenAI's) names; the text tower's are under "text.". When the image
 * tower is as wide as the embedding, PyTorch's MultiheadAttention keeps the
 * pooler's q, k and v in one in_proj_weight (pool_combined): clipc's three
 * matrices are its row ranges. */
static void openclip_coca_source(const char *name, bool pool_combined, int64_t E, source *s) {
    memset(s, 0, sizeof s[0]);
    s->parts = 1;
    s->slice_from = -1;
    static const char *const qkv[3] = {"visual.attn_pool.attn.q_proj_weight", "visual.attn_pool.attn.k_proj_weight",
                                       "visual.attn_pool.attn.v_proj_weight"};
    for (int i = 0; i < 3 && pool_combined; i++)
        if (!strcmp(name, qkv[i])) {
            snprintf(s->name[0], sizeof s->name[0], "visual.attn_pool.attn.in_proj_weight");
            s->slice_from = i * E;
            return;
        }
    bool same = !strncmp(name, "visual.", 7) || !strncmp(name, "text_decoder.", 13) || !strcmp(name, "logit_scale");
    snprintf(s->name[0], sizeof s->name[0], "%s%s", same ? "" : "text.", name);
}

/* OpenCLIP's SigLIP: clipc's name for a tensor -> its name there. */
static void openclip_siglip_source(const char *name, source *s) {
    memset(s, 0, sizeof s[0]);
    s->parts = 1;
    s->slice_from = -1;
    static const struct { const char *ours, *theirs; } fixed[] = {
        {"visual.conv1.weight", "visual.trunk.patch_embed.proj.weight"},
        {"visual.conv1.bias", "visual.trunk.patch_embed.proj.bias"},
        {"visual.positional_embedding", "visual.trunk.pos_embed"},
        {"visual.ln_post.weight", "visual.trunk.norm.weight"},
        {"visual.ln_post.bias", "visual.trunk.norm.bias"},
        {"visual.head.probe", "visual.trunk.attn_pool.latent"},
        {"visual.head.attn.out_proj.weight", "visual.trunk.attn_pool.proj.weight"},
        {"visual.head.attn.out_proj.bias", "visual.trunk.attn_pool.proj.bias"},
        {"visual.head.ln.weight", "visual.trunk.attn_pool.norm.weight"},
        {"visual.head.ln.bias", "visual.trunk.attn_pool.norm.bias"},
        {"visual.head.mlp.c_fc.weight", "visual.trunk.attn_pool.mlp.fc1.weight"},
        {"visual.head.mlp.c_fc.bias", "visual.trunk.attn_pool.mlp.fc1.bias"},
        {"visual.head.mlp.c_proj.weight", "visual.trunk.attn_pool.mlp.fc2.weight"},
        {"visual.head.mlp.c_proj.bias", "visual.trunk.attn_pool.mlp.fc2.bias"},
        {"text_head.weight", "text.text_projection.weight"},
        {"text_head.bias", "text.text_projection.bias"},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
        if (!strcmp(name, fixed[i].ours)) {
            snprintf(s->name[0], sizeof s->name[0], "%s", fixed[i].theirs);
            s->squeeze = !strcmp(name, "visual.positional_embedding");
            return;
        }
    if (!strncmp(name, "visual.head.attn.in_proj_", 25)) { /* timm's AttentionPoolLatent: q [D, D] and kv [2D, D] */
        const char *kind = name + 25;
        s->parts = 2;
        snprintf(s->name[0], sizeof s->name[0], "visual.trunk.attn_pool.q.%s", kind);
        snprintf(s->name[1], sizeof s->name[1], "visual.trunk.attn_pool.kv.%s", kind);
        s->rows[0] = -1; /* filled by the loader: a third of the rows, and two thirds */
        return;
    }
    const char *p = strstr(name, "resblocks.");
    if (strncmp(name, "visual.", 7) || !p) { /* the text tower keeps OpenAI's names under "text." */
        bool top = !strcmp(name, "logit_scale") || !strcmp(name, "logit_bias");
        snprintf(s->name[0], sizeof s->name[0], "%s%s", top ? "" : "text.", name);
        return;
    }
    static const struct { const char *ours, *theirs; } block[] = {
        {"ln_1.", "norm1."}, {"ln_2.", "norm2."}, {"attn.in_proj_weight", "attn.qkv.weight"},
        {"attn.in_proj_bias", "attn.qkv.bias"}, {"attn.out_proj.", "attn.proj."}, {"mlp.c_fc.", "mlp.fc1."},
        {"mlp.c_proj.", "mlp.fc2."},
    };
    int layer = atoi(p + 10);
    const char *rest = strchr(p + 10, '.') + 1;
    for (size_t i = 0; i < sizeof block / sizeof *block; i++)
        if (!strncmp(rest, block[i].ours, strlen(block[i].ours))) {
            snprintf(s->name[0], sizeof s->name[0], "visual.trunk.blocks.%d.%s%s", layer, block[i].theirs,
                     rest + strlen(block[i].ours));
            return;
        }
    snprintf(s->name[0], sizeof s->name[0], "%s", name);
}

static const char *hf_block_part(const char *rest, int which) {
    static const struct { const char *openai, *hf; } map[] = {
        {"ln_1.", "layer_norm1."}, {"ln_2.", "layer_norm2."}, {"attn.out_proj.", "self_attn.out_proj."},
        {"mlp.c_fc.", "mlp.fc1."}, {"mlp.c_proj.", "mlp.fc2."},
    };
    (void)which;
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        if (!strncmp(rest, map[i].openai, strlen(map[i].openai))) return map[i].hf;
    return NULL;
}

static void hf_source(const char *name, source *s) {
    memset(s, 0, sizeof *s);
    s->parts = 1;
    s->slice_from = -1;
    static const struct { const char *openai, *hf; bool transpose; } fixed[] = {
        {"visual.class_embedding", "vision_model.embeddings.class_embedding", false},
        {"visual.positional_embedding", "vision_model.embeddings.position_embedding.weight", false},
        {"visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight", false},
        {"visual.ln_pre.weight", "vision_model.pre_layrnorm.weight", false},
        {"visual.ln_pre.bias", "vision_model.pre_layrnorm.bias", false},
        {"visual.ln_post.weight", "vision_model.post_layernorm.weight", false},
        {"visual.ln_post.bias", "vision_model.post_layernorm.bias", false},
        {"visual.proj", "visual_projection.weight", true},
        {"token_embedding.weight", "text_model.embeddings.token_embedding.weight", false},
        {"positional_embedding", "text_model.embeddings.position_embedding.weight", false},
        {"ln_final.weight", "text_model.final_layer_norm.weight", false},
        {"ln_final.bias", "text_model.final_layer_norm.bias", false},
        {"text_projection", "text_projection.weight", true},
        {"logit_scale", "logit_scale", false},
        {"logit_bias", "logit_bias", false},
        /* SigLIP */
        {"visual.conv1.bias", "vision_model.embeddings.patch_embedding.bias", false},
        {"visual.head.probe", "vision_model.head.probe", false},
        {"visual.head.attn.in_proj_weight", "vision_model.head.attention.in_proj_weight", false},
        {"visual.head.attn.in_proj_bias", "vision_model.head.attention.in_proj_bias", false},
        {"visual.head.attn.out_proj.weight", "vision_model.head.attention.out_proj.weight", false},
        {"visual.head.attn.out_proj.bias", "vision_model.head.attention.out_proj.bias", false},
        {"visual.head.ln.weight", "vision_model.head.layernorm.weight", false},
        {"visual.head.ln.bias", "vision_model.head.layernorm.bias", false},
        {"visual.head.mlp.c_fc.weight", "vision_model.head.mlp.fc1.weight", false},
        {"visual.head.mlp.c_fc.bias", "vision_model.head.mlp.fc1.bias", false},
        {"visual.head.mlp.c_proj.weight", "vision_model.head.mlp.fc2.weight", false},
        {"visual.head.mlp.c_proj.bias", "vision_model.head.mlp.fc2.bias", false},
        {"text_head.weight", "text_model.head.weight", false},
        {"text_head.bias", "text_model.head.bias", false},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
        if (!strcmp(name, fixed[i].openai)) {
            snprintf(s->name[0], sizeof s->name[0], "%s", fixed[i].hf);
            s->transpose = fixed[i].transpose;
            return;
        }
    const char *tower = !strncmp(name, "visual.", 7) ? "vision_model" : "text_model";
    const char *p = strstr(name, "resblocks.");
    if (!p) { /* not a CLIP ViT tensor; leave the name as is */
        snprintf(s->name[0], sizeof s->name[0], "%s", name);
        return;
    }
    int layer = atoi(p + 10);
    const char *rest = strchr(p + 10, '.') + 1;
    if (!strncmp(rest, "attn.in_proj_", 13)) {
        const char *kind = !strcmp(rest + 13, "weight") ? "weight" : "bias";
        const char *qkv[3] = {"q", "k", "v"};
        s->parts = 3;
        for (int i = 0; i < 3; i++)
            snprintf(s->name[i], sizeof s->name[i], "%s.encoder.layers.%d.self_attn.%s_proj.%s", tower, layer, qkv[i], kind);
        return;
    }
    const char *hf = hf_block_part(rest, 0);
    const char *leaf = strrchr(rest, '.') + 1;
    snprintf(s->name[0], sizeof s->name[0], "%s.encoder.layers.%d.%s%s", tower, layer, hf ? hf : "?", leaf);
}

static bool ignorable(const char *name) {
    size_t n = strlen(name);
    /* attn_mask: the causal mask, a tensor attribute of OpenAI's and
     * OpenCLIP's modules that TorchScript archives carry */
    static const char *suffixes[] = {"num_batches_tracked", "position_ids", "attn_mask"};
    for (size_t i = 0; i < 3; i++) {
        size_t k = strlen(suffixes[i]);
        if (n >= k && !strcmp(name + n - k, suffixes[i])) return true;
    }
    /* clipc's training checkpoints add the optimiser state */
    if (!strncmp(name, "optimizer.", 10)) return true;
    /* OpenAI's JIT archives carry these scalars; build_model() drops them. */
    return !strcmp(name, "input_resolution") || !strcmp(name, "context_length") || !strcmp(name, "vocab_size");
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (used < cap) snprintf(buf + used, cap - used, "]");
}

/* The row count of a fine-tuning tensor clipc finetune adds (0 when the
 * file has none): a matrix of 1..max rows, else an error naming it. */
static int finetune_rows(const st_file *f, const char *name, int64_t max, int *rows, clipc_error *err) {
    const st_tensor *t = st_find(f, name);
    *rows = 0;
    if (!t) return 0;
    if (t->ndim == 2 && t->shape[0] >= 1 && t->shape[0] <= max) {
        *rows = (int)t->shape[0];
        return 0;
    }
    char shape[160];
    shape_str(shape, sizeof shape, t->ndim, t->shape);
    return clipc_fail(err, "tensor '%s' has shape %s: not a matrix of 1..%lld rows", name, shape, (long long)max);
}

static bool is_float(int dtype) { return dtype == ST_F32 || dtype == ST_F16 || dtype == ST_BF16; }

/* An int8 weight as clipc convert writes it: I8 values [out, ...] and an
 * F32 "<name>.scale" [out]; NULL (err set) when the scale is missing or
 * mis-shaped. */
static const st_tensor *int8_scale(const st_file *f, const st_tensor *t, clipc_error *err) {
    char name[200];
    snprintf(name, sizeof name, "%s.scale", t->name);
    const st_tensor *s = st_find(f, name);
    if (!s || s->dtype != ST_F32 || s->ndim != 1 || t->ndim < 1 || s->shape[0] != t->shape[0]) {
        clipc_fail(err, "int8 tensor '%s' needs an F32 tensor '%s' of shape [%lld]", t->name, name,
                   (long long)(t->ndim ? t->shape[0] : 0));
        return NULL;
    }
    return s;
}

/* q * scale[row] into dst. */
static void dequantize_int8(const st_tensor *t, const st_tensor *scale, float *dst) {
    size_t rows = (size_t)t->shape[0], cols = rows ? t->nbytes / rows : 0;
    const int8_t *q = (const int8_t *)t->data;
    for (size_t r = 0; r < rows; r++) {
        float sc;
        memcpy(&sc, scale->data + 4 * r, sizeof sc);
        for (size_t j = 0; j < cols; j++) dst[r * cols + j] = (float)q[r * cols + j] * sc;
    }
}

/* Copies every parameter of the table out of the file, checking names,
 * shapes and dtypes; then refuses tensors the model has no place for. */
static int load_params(const st_file *f, enum naming naming, const param_table *table, float *params,
                       char *dtype_out, clipc_error *err) {
    bool *used = calloc((size_t)f->count + 1, sizeof *used);
    if (!used) return clipc_fail(err, "out of memory");
    const param_spec *q_spec = params_find(table, "visual.attn_pool.attn.q_proj_weight");
    bool coca_combined = q_spec && st_find(f, "visual.attn_pool.attn.in_proj_weight");
    int64_t coca_E = q_spec ? q_spec->shape[0] : 0;
    int seen_dtype = -1;
    bool mixed = false, any_int8 = false;
    for (int i = 0; i < table->count; i++) {
        const param_spec *p = &table->items[i];
        source src;
        if (naming == NAMING_OPENAI) {
            memset(&src, 0, sizeof src);
            src.parts = 1;
            src.slice_from = -1;
            snprintf(src.name[0], sizeof src.name[0], "%s", p->name);
        } else if (naming == NAMING_HF) {
            hf_source(p->name, &src);
        } else if (naming == NAMING_OPENCLIP_COCA) {
            openclip_coca_source(p->name, coca_combined, coca_E, &src);
        } else {
            openclip_siglip_source(p->name, &src);
        }
        if (src.rows[0] < 0) src.rows[0] = p->shape[0] / 3, src.rows[1] = p->shape[0] - src.rows[0];
        size_t row_numel = p->ndim ? p->numel / (size_t)p->shape[0] : 1, rows_done = 0;
        for (int k = 0; k < src.parts; k++) {
            int64_t part_rows = src.rows[k] ? src.rows[k] : (p->ndim ? p->shape[0] / src.parts : 1);
            size_t part_numel = src.parts > 1 ? (size_t)part_rows * row_numel : p->numel;
            const st_tensor *t = st_find(f, src.name[k]);
            if (!t) {
                free(used);
                return clipc_fail(err, "missing tensor '%s'", src.name[k]);
            }
            used[t - f->tensors] = true;
            int64_t want[5];
            int wnd = p->ndim;
            memcpy(want, p->shape, sizeof p->shape);
            if (src.parts > 1) want[0] = part_rows;
            if (src.transpose) {
                want[0] = p->shape[1];
                want[1] = p->shape[0];
            }
            if (src.squeeze) {
                memmove(want + 1, want, (size_t)wnd * sizeof *want);
                want[0] = 1;
                wnd++;
            }
            bool int8 = t->dtype == ST_I8 && naming == NAMING_OPENAI;
            if (wnd == 0 && t->ndim == 1 && t->shape[0] == 1) { /* a scalar stored as [1] (SigLIP's logit_scale) */
                wnd = 1;
                want[0] = 1;
            }
            bool ok = t->ndim == wnd && (is_float(t->dtype) || int8);
            for (int d = 0; ok && d < wnd; d++) ok = t->shape[d] == want[d] || (d == 0 && src.slice_from >= 0);
            if (ok && src.slice_from >= 0) ok = !int8 && t->shape[0] >= src.slice_from + want[0];
            if (!ok) {
                char got_s[96], want_s[96];
                shape_str(got_s, sizeof got_s, t->ndim, t->shape);
                shape_str(want_s, sizeof want_s, wnd, want);
                free(used);
                if (!is_float(t->dtype) && !int8)
                    return clipc_fail(err, "tensor '%s' has a non-float dtype", src.name[k]);
                return clipc_fail(err, "tensor '%s' has shape %s, expected %s", src.name[k], got_s, want_s);
            }
            if (t->dtype == ST_I8) {
                any_int8 = true;
            } else if (p->ndim > 0 && !strstr(p->name, "running_")) {
                /* the weights' dtype: scalars and BatchNorm statistics stay
                 * F32 in reduced-precision files (clipc's, OpenAI's) */
                if (seen_dtype >= 0 && seen_dtype != t->dtype) mixed = true;
                seen_dtype = t->dtype;
            }
            float *dst = params + p->offset + rows_done * row_numel;
            rows_done += (size_t)part_rows;
            if (int8) {
                const st_tensor *scale = int8_scale(f, t, err);
                if (!scale) {
                    free(used);
                    return -1;
                }
                used[scale - f->tensors] = true;
                dequantize_int8(t, scale, dst);
            } else if (src.slice_from >= 0) { /* rows slice_from .. slice_from + rows of the file tensor */
                size_t all = t->nbytes / (t->dtype == ST_F32 ? 4 : 2);
                float *tmp = malloc(all * sizeof *tmp);
                if (!tmp) {
                    free(used);
                    return clipc_fail(err, "out of memory");
                }
                st_to_f32(t, tmp);
                memcpy(dst, tmp + (size_t)src.slice_from * row_numel, part_numel * sizeof *dst);
                free(tmp);
            } else if (!src.transpose) {
                st_to_f32(t, dst);
            } else {
                float *tmp = malloc(part_numel * sizeof *tmp);
                if (!tmp) {
                    free(used);
                    return clipc_fail(err, "out of memory");
                }
                st_to_f32(t, tmp);
                int64_t R = p->shape[0], C = p->shape[1];
                for (int64_t r = 0; r < R; r++)
                    for (int64_t c = 0; c < C; c++) dst[r * C + c] = tmp[c * R + r];
                free(tmp);
            }
        }
    }
    for (int i = 0; i < f->count; i++)
        if (!used[i] && !ignorable(f->tensors[i].name)) {
            int rc = clipc_fail(err, "unexpected tensor '%s' (not part of the inferred architecture)", f->tensors[i].name);
            free(used);
            return rc;
        }
    free(used);
    const char *names[] = {"F32", "F16", "BF16"};
    snprintf(dtype_out, 8, "%s", mixed ? "mixed" : seen_dtype >= 0 && seen_dtype <= ST_BF16 ? names[seen_dtype] : "?");
    if (any_int8) snprintf(dtype_out, 8, "int8");
    return 0;
}

/* An int8 checkpoint computes at int8 with the file's own values and
 * scales (not requantised from their product). */
static int adopt_int8(const st_file *f, clipc_model *m, clipc_error *err) {
    if (clipc_model_set_precision(m, CLIPC_INT8, err)) return -1;
    for (int i = 0; i < m->table.count; i++) {
        const param_spec *p = &m->table.items[i];
        const st_tensor *t = st_find(f, p->name);
        lowp_weight *w = model_lowp_find(m, p->offset);
        if (!t || t->dtype != ST_I8 || !w || (size_t)w->out * w->in != t->nbytes) continue;
        const st_tensor *scale = int8_scale(f, t, err);
        if (!scale) return -1;
        if (model_lowp_adopt_int8(w, t->data, scale->data))
            return clipc_fail(err, "out of memory laying out the int8 weights");
    }
    return 0;
}

static bool json_true(cJSON *obj, const char *key) { return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(obj, key)); }

/* A string option that, when present, must have the one value clipc computes. */
static int json_only(cJSON *obj, const char *tower, const char *key, const char *supported, const char *cfg_path,
                     clipc_error *err) {
    cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsString(v) && strcmp(v->valuestring, supported))
        return clipc_fail(err, "%s: %s.%s '%s' is not supported (only '%s')", cfg_path, tower, key, v->valuestring,
                          supported);
    return 0;
}

/* OpenCLIP's open_clip_config.json beside an OpenAI-named checkpoint (as
 * its Hugging Face repositories ship it): head counts and the activation
 * come from it, and the pooling and layout options clipc does not compute
 * are refused by name instead of being computed wrongly. */
static int openclip_config(const char *path, clipc_config *c, clipc_error *err) {
    char cfg_path[4096];
    beside(path, "open_clip_config.json", cfg_path, sizeof cfg_path);
    if (access(cfg_path, F_OK) != 0) return 0;
    unsigned char *text;
    size_t len;
    if (read_file(cfg_path, &text, &len, err)) return -1;
    cJSON *root = cJSON_ParseWithLength((const char *)text, len);
    free(text);
    if (!root) return clipc_fail(err, "%s: invalid JSON", cfg_path);
    cJSON *mc = cJSON_GetObjectItemCaseSensitive(root, "model_cfg");
    if (!cJSON_IsObject(mc)) mc = root; /* the bare model config of open_clip's model_configs/ */
    cJSON *vc = cJSON_GetObjectItemCaseSensitive(mc, "vision_cfg"), *tc = cJSON_GetObjectItemCaseSensitive(mc, "text_cfg");
    int rc = -1;
    static const char *const vision_flags[] = {"global_average_pool", "attentional_pool", "final_ln_after_pool",
                                               "no_ln_pre", "output_tokens"};
    static const char *const text_flags[] = {"embed_cls", "proj_bias", "no_causal_mask"};
    for (size_t i = 0; i < sizeof vision_flags / sizeof *vision_flags; i++)
        if (json_true(vc, vision_flags[i])) {
            clipc_fail(err, "%s: vision_cfg.%s is not supported", cfg_path, vision_flags[i]);
            goto done;
        }
    for (size_t i = 0; i < sizeof text_flags / sizeof *text_flags; i++)
        if (json_true(tc, text_flags[i])) {
            clipc_fail(err, "%s: text_cfg.%s is not supported", cfg_path, text_flags[i]);
            goto done;
        }
    if (json_only(vc, "vision_cfg", "pool_type", "tok", cfg_path, err) ||
        json_only(tc, "text_cfg", "pool_type", "argmax", cfg_path, err) ||
        json_only(tc, "text_cfg", "text_pool_type", "argmax", cfg_path, err))
        goto done;
    if (cJSON_GetObjectItemCaseSensitive(tc, "hf_model_name")) {
        clipc_fail(err, "%s: text_cfg.hf_model_name (a Hugging Face text tower) is not supported", cfg_path);
        goto done;
    }
    if (c->vision_tower == CLIPC_VIT) {
        int head_width = json_int(vc, "head_width", 64);
        if (head_width > 0 && c->vision_width % head_width == 0) c->vision_heads = c->vision_width / head_width;
    }
    c->text_heads = json_int(tc, "heads", c->text_heads);
    /* OpenCLIP's default is nn.GELU; quick_gelu: true selects OpenAI's */
    cJSON *qg = cJSON_GetObjectItemCaseSensitive(mc, "quick_gelu");
    c->activation = c->vision_activation = cJSON_IsTrue(qg) ? CLIPC_QUICK_GELU : CLIPC_GELU;
    /* preprocessing: clipc normalises with OpenAI's mean and std */
    static const double clip_mean[3] = {0.48145466, 0.4578275, 0.40821073}, clip_std[3] = {0.26862954, 0.26130258, 0.27577711};
    cJSON *pc = cJSON_GetObjectItemCaseSensitive(root, "preprocess_cfg");
    const char *keys[2] = {"mean", "std"};
    const double *want[2] = {clip_mean, clip_std};
    for (int k = 0; k < 2; k++) {
        cJSON *arr = cJSON_GetObjectItemCaseSensitive(pc, keys[k]);
        if (!cJSON_IsArray(arr)) continue;
        bool same = cJSON_GetArraySize(arr) == 3;
        for (int i = 0; same && i < 3; i++) {
            cJSON *x = cJSON_GetArrayItem(arr, i);
            same = cJSON_IsNumber(x) && fabs(x->valuedouble - want[k][i]) < 1e-6;
        }
        if (!same) {
            clipc_fail(err, "%s: preprocess_cfg.%s differs from CLIP's normalisation, which is all clipc applies", cfg_path,
                       keys[k]);
            goto done;
        }
    }
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

/* A zip archive (torch.save) starts with a local file header. */
static bool is_zip(const char *path) {
    unsigned char magic[4] = {0};
    FILE *fp = fopen(path, "rb");
    size_t got = fp ? fread(magic, 1, 4, fp) : 0;
    if (fp) fclose(fp);
    return got == 4 && !memcmp(magic, "PK\x03\x04", 4);
}

/* The classes of CoOp's class-specific contexts: "prompt_classnames", a JSON array of one string per context. */
static int read_prompt_labels(const st_file *f, clipc_model *m, clipc_error *err) {
    int C = m->cfg.prompt_classes;
    if (C <= 0) return 0;
    char *text = st_metadata_get(f, "prompt_classnames");
    cJSON *a = text ? cJSON_Parse(text) : NULL;
    free(text);
    int n = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : -1, rc = 0;
    char **names = n == C && C > 0 ? calloc((size_t)C, sizeof *names) : NULL;
    for (int i = 0; names && i < C && rc == 0; i++) {
        const cJSON *s = cJSON_GetArrayItem(a, i);
        if (!cJSON_IsString(s)) rc = -1;
        else names[i] = s->valuestring;
    }
    if (!names || rc)
        rc = clipc_fail(err, "prompt_learner.ctx holds %d class-specific contexts: the metadata 'prompt_classnames' must "
                             "name their %d classes as a JSON array of strings", C, C);
    else
        rc = model_set_prompt_labels(m, names, C, err);
    free(names);
    cJSON_Delete(a);
    return rc;
}

/* A SigLIP model's SentencePiece tokenizer: the file beside the checkpoint
 * (Hugging Face's names: SigLIP's spiece.model, SigLIP 2's tokenizer.model).
 * Its absence is not an error until texts are encoded. */
static int find_tokenizer(const char *path, clipc_model *m, clipc_error *err) {
    static const char *const names[] = {"spiece.model", "tokenizer.model"};
    char spm[4096];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        beside(path, names[i], spm, sizeof spm);
        if (access(spm, F_OK) == 0) {
            if (!(m->tokenizer_path = strdup(spm))) return clipc_fail(err, "out of memory");
            return 0;
        }
    }
    return 0;
}

/* Three numbers (or one, for all three channels) from a JSON value. */
static bool json_triple(const cJSON *v, float out[3]) {
    if (cJSON_IsNumber(v)) {
        out[0] = out[1] = out[2] = (float)v->valuedouble;
        return true;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 3) return false;
    for (int i = 0; i < 3; i++) {
        const cJSON *x = cJSON_GetArrayItem(v, i);
        if (!cJSON_IsNumber(x)) return false;
        out[i] = (float)x->valuedouble;
    }
    return true;
}

/* A SigLIP model's image processor: Hugging Face's preprocessor_config.json
 * beside the checkpoint (SiglipImageProcessor's settings), or the metadata
 * clipc saved them in; what clipc does not compute is refused by name. */
static int image_style_config(const char *path, const st_file *f, clipc_model *m, clipc_error *err) {
    char *meta[3] = {st_metadata_get(f, "image_resample"), st_metadata_get(f, "image_mean"),
                     st_metadata_get(f, "image_std")};
    int rc = 0;
    if (meta[0]) m->style.resample = atoi(meta[0]);
    for (int k = 1; k < 3 && rc == 0; k++) {
        cJSON *v = meta[k] ? cJSON_Parse(meta[k]) : NULL;
        if (meta[k] && !json_triple(v, k == 1 ? m->style.mean : m->style.std))
            rc = clipc_fail(err, "metadata '%s' is not three numbers", k == 1 ? "image_mean" : "image_std");
        cJSON_Delete(v);
    }
    for (int k = 0; k < 3; k++) free(meta[k]);
    if (rc == 0 && m->style.resample != RESAMPLE_BILINEAR && m->style.resample != RESAMPLE_BICUBIC)
        rc = clipc_fail(err, "metadata image_resample %d is not supported (2 bilinear, 3 bicubic)", m->style.resample);
    char cfg_path[4096];
    beside(path, "preprocessor_config.json", cfg_path, sizeof cfg_path);
    if (rc || access(cfg_path, F_OK) != 0) return rc;
    unsigned char *text;
    size_t len;
    if (read_file(cfg_path, &text, &len, err)) return -1;
    cJSON *root = cJSON_ParseWithLength((const char *)text, len);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return clipc_fail(err, "%s: not a JSON object", cfg_path);
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "image_processor_type");
    const cJSON *size = cJSON_GetObjectItemCaseSensitive(root, "size");
    const cJSON *resample = cJSON_GetObjectItemCaseSensitive(root, "resample");
    const cJSON *factor = cJSON_GetObjectItemCaseSensitive(root, "rescale_factor");
    int R = m->cfg.image_resolution;
    static const char *const flags[] = {"do_resize", "do_rescale", "do_normalize"};
    for (size_t i = 0; i < 3 && rc == 0; i++)
        if (cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(root, flags[i])))
            rc = clipc_fail(err, "%s: %s false is not supported", cfg_path, flags[i]);
    if (rc == 0 && cJSON_IsString(type) && strncmp(type->valuestring, "SiglipImageProcessor", 20))
        rc = clipc_fail(err, "%s: image_processor_type '%s' is not supported (SiglipImageProcessor)", cfg_path,
                        type->valuestring);
    if (rc == 0 && size &&
        (json_int((cJSON *)size, "height", R) != R || json_int((cJSON *)size, "width", R) != R))
        rc = clipc_fail(err, "%s: size %dx%d differs from the model's %dx%d input", cfg_path,
                        json_int((cJSON *)size, "width", R), json_int((cJSON *)size, "height", R), R, R);
    if (rc == 0 && resample) {
        if (!cJSON_IsNumber(resample) || (resample->valueint != RESAMPLE_BILINEAR && resample->valueint != RESAMPLE_BICUBIC))
            rc = clipc_fail(err, "%s: resample %d is not supported (2 bilinear, 3 bicubic)", cfg_path,
                            cJSON_IsNumber(resample) ? resample->valueint : -1);
        else
            m->style.resample = resample->valueint;
    }
    if (rc == 0 && factor && !(cJSON_IsNumber(factor) && fabs(factor->valuedouble - 1.0 / 255.0) < 1e-9))
        rc = clipc_fail(err, "%s: rescale_factor must be 1/255", cfg_path);
    const char *keys[2] = {"image_mean", "image_std"};
    for (int k = 0; k < 2 && rc == 0; k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, keys[k]);
        if (v && !json_triple(v, k == 0 ? m->style.mean : m->style.std))
            rc = clipc_fail(err, "%s: %s is not three numbers", cfg_path, keys[k]);
    }
    for (int c = 0; c < 3 && rc == 0; c++)
        if (!(m->style.std[c] > 0.0f)) rc = clipc_fail(err, "%s: image_std must be positive", cfg_path);
    cJSON_Delete(root);
    return rc;
}

clipc_model *checkpoint_load(const char *path, clipc_error *err) {
    st_file f;
    if (is_zip(path) ? pt_open(path, &f, err) : st_open(path, &f, err)) return NULL;
    clipc_config cfg;
    memset(&cfg, 0, sizeof cfg);
    enum naming naming = st_find(&f, "text_model.embeddings.token_embedding.weight") ? NAMING_HF
                         : st_find(&f, "visual.trunk.attn_pool.latent")               ? NAMING_OPENCLIP_SIGLIP
                         : st_find(&f, "text.token_embedding.weight")                 ? NAMING_OPENCLIP_COCA
                                                                                      : NAMING_OPENAI;
    bool coca = st_find(&f, "text_decoder.text_projection") != NULL; /* OpenCLIP's names, or clipc's */
    image_style style = SIGLIP_STYLE;
    int rc = naming == NAMING_HF                ? infer_hf(&f, path, &cfg, err)
             : naming == NAMING_OPENCLIP_SIGLIP ? infer_openclip_siglip(&f, path, &cfg, &style, err)
             : coca                             ? infer_openclip_coca(&f, path, naming == NAMING_OPENCLIP_COCA ? "text." : "",
                                                                      &cfg, err)
                                                : infer_openai(&f, &cfg, err);
    if (rc == 0 && naming == NAMING_OPENAI && !coca) rc = openclip_config(path, &cfg, err);
    cfg.has_logit_bias = st_find(&f, "logit_bias") != NULL; /* SigLIP-trained (OpenCLIP's name) */
    /* what clipc finetune adds: sizes from shapes (config_validate and load_params check the rest) */
    const st_tensor *ctx = st_find(&f, "prompt_learner.ctx");
    if (rc == 0 && ctx && ctx->ndim == 3) { /* CoOp's class-specific contexts [classes, n_ctx, width] */
        if (ctx->shape[0] < 1 || ctx->shape[0] > (1 << 16) || ctx->shape[1] < 1 || ctx->shape[1] > 4096)
            rc = clipc_fail(err, "tensor 'prompt_learner.ctx' has %lld contexts of %lld vectors: out of range",
                            (long long)ctx->shape[0], (long long)ctx->shape[1]);
        cfg.prompt_classes = (int)ctx->shape[0], cfg.prompt_ctx = (int)ctx->shape[1];
    } else if (rc == 0) {
        rc = finetune_rows(&f, "prompt_learner.ctx", 4096, &cfg.prompt_ctx, err);
    }
    if (rc == 0) rc = finetune_rows(&f, "adapter.visual.fc1.weight", 1 << 16, &cfg.adapter_hidden, err);
    if (rc == 0) rc = finetune_rows(&f, "prompt_learner.meta_net.linear1.weight", 1 << 16, &cfg.prompt_meta_hidden, err);
    /* the architecture was guessed from names and a few shapes: the file
     * must hold at least a byte per parameter before they are allocated */
    size_t held = 0;
    for (int i = 0; i < f.count; i++) held += f.tensors[i].nbytes;
    clipc_model *m = NULL;
    if (rc == 0) m = model_new_within(&cfg, held, err);
    if (m && (load_params(&f, naming, &m->table, m->params, m->source_dtype, err) ||
              (!strcmp(m->source_dtype, "int8") && adopt_int8(&f, m, err)) || read_prompt_labels(&f, m, err))) {
        clipc_model_free(m);
        m = NULL;
    }
    if (m) m->style = style;
    if (m && m->cfg.family == CLIPC_SIGLIP && (find_tokenizer(path, m, err) || image_style_config(path, &f, m, err))) {
        clipc_model_free(m);
        m = NULL;
    }
    st_close(&f);
    if (!m) clipc_fail_prefix(err, path);
    return m;
}
