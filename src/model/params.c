/* params.c — the one list of a CLIP model's tensors.
 *
 * From a config we derive every parameter's OpenAI/OpenCLIP name, shape and
 * place in one contiguous float array, plus how random initialisation fills
 * it (OpenAI's initialize_parameters(); PyTorch's default uniform inits are
 * replaced by normals of the same standard deviation). Loading, saving,
 * initialisation — and gradients, which share the offsets — all walk it. */
#include "../internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t add(param_table *t, int init, float std, int ndim, const int64_t *shape,
                  const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static size_t add(param_table *t, int init, float std, int ndim, const int64_t *shape,
                  const char *fmt, ...) {
    if (t->count == t->cap) {
        int cap = t->cap ? 2 * t->cap : 256;
        param_spec *items = realloc(t->items, (size_t)cap * sizeof *items);
        if (!items) {
            t->oom = true;
            return 0;
        }
        t->items = items;
        t->cap = cap;
    }
    param_spec *p = &t->items[t->count++];
    memset(p, 0, sizeof *p);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->name, sizeof p->name, fmt, ap);
    va_end(ap);
    p->ndim = ndim;
    p->numel = 1;
    for (int i = 0; i < ndim; i++) {
        p->shape[i] = shape[i];
        p->numel *= (size_t)shape[i];
    }
    p->offset = t->total;
    p->init = init;
    p->init_std = std;
    /* Keep every tensor 16-float (64-byte) aligned for the kernels. */
    t->total += (p->numel + 15) / 16 * 16;
    return p->offset;
}

#define SHAPE(...) (const int64_t[]){__VA_ARGS__}

/* PyTorch's nn.Linear / nn.Conv2d default init is U(+-1/sqrt(fan_in)),
 * whose standard deviation is 1/sqrt(3 fan_in). */
static float default_std(int64_t fan_in) { return (float)(1.0 / sqrt(3.0 * (double)fan_in)); }

/* A residual attention block (OpenAI's ResidualAttentionBlock). The text
 * tower uses initialize_parameters()' stds, the ViT keeps PyTorch defaults
 * (xavier for in_proj, default Linear elsewhere), as in OpenAI's code. */
static void add_block_in(param_table *t, block_offsets *b, const char *prefix, const char *group, int i, int64_t W,
                         int64_t H, int layers, bool text, bool layer_scale, bool cross) {
    float attn_std = text ? (float)pow((double)W, -0.5) : (float)sqrt(2.0 / (double)(W + 3 * W));
    float proj_std = text ? (float)(pow((double)W, -0.5) * pow(2.0 * layers, -0.5)) : default_std(W);
    float fc_std = text ? (float)pow(2.0 * (double)W, -0.5) : default_std(W);
    float cproj_std = text ? proj_std : default_std(H);
    b->ln1_w = add(t, PI_ONES, 0, 1, SHAPE(W), "%s%s.%d.ln_1.weight", prefix, group, i);
    b->ln1_b = add(t, PI_ZEROS, 0, 1, SHAPE(W), "%s%s.%d.ln_1.bias", prefix, group, i);
    b->ls1 = b->ls2 = b->lnkv_w = b->lnkv_b = (size_t)-1;
    b->qkv_w = add(t, PI_NORMAL, attn_std, 2, SHAPE(3 * W, W), "%s%s.%d.attn.in_proj_weight", prefix, group, i);
    b->qkv_b = add(t, PI_ZEROS, 0, 1, SHAPE(3 * W), "%s%s.%d.attn.in_proj_bias", prefix, group, i);
    b->out_w = add(t, PI_NORMAL, proj_std, 2, SHAPE(W, W), "%s%s.%d.attn.out_proj.weight", prefix, group, i);
    b->out_b = add(t, PI_ZEROS, 0, 1, SHAPE(W), "%s%s.%d.attn.out_proj.bias", prefix, group, i);
    if (cross) { /* OpenCLIP's cross-attention block normalises the image tokens with its own LayerNorm */
        b->lnkv_w = add(t, PI_ONES, 0, 1, SHAPE(W), "%s%s.%d.ln_1_kv.weight", prefix, group, i);
        b->lnkv_b = add(t, PI_ZEROS, 0, 1, SHAPE(W), "%s%s.%d.ln_1_kv.bias", prefix, group, i);
    }
    b->ln2_w = add(t, PI_ONES, 0, 1, SHAPE(W), "%s%s.%d.ln_2.weight", prefix, group, i);
    b->ln2_b = add(t, PI_ZEROS, 0, 1, SHAPE(W), "%s%s.%d.ln_2.bias", prefix, group, i);
    b->fc_w = add(t, PI_NORMAL, fc_std, 2, SHAPE(H, W), "%s%s.%d.mlp.c_fc.weight", prefix, group, i);
    b->fc_b = add(t, PI_ZEROS, 0, 1, SHAPE(H), "%s%s.%d.mlp.c_fc.bias", prefix, group, i);
    b->proj_w = add(t, PI_NORMAL, cproj_std, 2, SHAPE(W, H), "%s%s.%d.mlp.c_proj.weight", prefix, group, i);
    b->proj_b = add(t, PI_ZEROS, 0, 1, SHAPE(W), "%s%s.%d.mlp.c_proj.bias", prefix, group, i);
    if (layer_scale) { /* OpenCLIP's LayerScale, in its state_dict order (after the block's other tensors) */
        b->ls1 = add(t, PI_ONES, 0, 1, SHAPE(W), "%s%s.%d.ls_1.gamma", prefix, group, i);
        b->ls2 = add(t, PI_ONES, 0, 1, SHAPE(W), "%s%s.%d.ls_2.gamma", prefix, group, i);
    }
}

static void add_block(param_table *t, block_offsets *b, const char *prefix, int i, int64_t W, int64_t H,
                      int layers, bool text, bool layer_scale) {
    add_block_in(t, b, prefix, "resblocks", i, W, H, layers, text, layer_scale, false);
}

static void add_bn(param_table *t, bn_offsets *bn, const char *name, int64_t C, bool zero_gain) {
    bn->weight = add(t, zero_gain ? PI_ZEROS : PI_ONES, 0, 1, SHAPE(C), "%s.weight", name);
    bn->bias = add(t, PI_ZEROS, 0, 1, SHAPE(C), "%s.bias", name);
    bn->mean = add(t, PI_ZEROS, 0, 1, SHAPE(C), "%s.running_mean", name);
    bn->var = add(t, PI_BN_VAR, 0, 1, SHAPE(C), "%s.running_var", name);
}

static size_t add_conv(param_table *t, const char *name, int64_t cout, int64_t cin, int64_t k) {
    return add(t, PI_NORMAL, default_std(cin * k * k), 4, SHAPE(cout, cin, k, k), "%s", name);
}

/* SigLIP's ViT (Hugging Face SiglipVisionTransformer, in clipc's names):
 * no class token and no ln_pre; the patch embedding has a bias; the
 * MultiheadAttentionPoolingHead replaces the class token and proj. */
static int build_siglip_vit(const clipc_config *c, param_table *t, model_layout *L) {
    int64_t W = c->vision_width, P = c->vision_patch_size, G = c->image_resolution / c->vision_patch_size;
    int64_t H = c->vision_mlp_width;
    L->v_conv = add_conv(t, "visual.conv1.weight", W, 3, P);
    L->v_conv_b = add(t, PI_ZEROS, 0, 1, SHAPE(W), "visual.conv1.bias");
    L->v_pos = add(t, PI_NORMAL, (float)pow((double)W, -0.5), 2, SHAPE(G * G, W), "visual.positional_embedding");
    L->v_blocks = calloc((size_t)c->vision_layers, sizeof *L->v_blocks);
    if (!L->v_blocks) return -1;
    for (int i = 0; i < c->vision_layers; i++)
        add_block(t, &L->v_blocks[i], "visual.transformer.", i, W, H, c->vision_layers, false, false);
    L->v_ln_post_w = add(t, PI_ONES, 0, 1, SHAPE(W), "visual.ln_post.weight");
    L->v_ln_post_b = add(t, PI_ZEROS, 0, 1, SHAPE(W), "visual.ln_post.bias");
    block_offsets *h = &L->v_head;
    h->ls1 = h->ls2 = (size_t)-1;
    L->v_probe = add(t, PI_NORMAL, 1.0f, 3, SHAPE(1, 1, W), "visual.head.probe");
    h->qkv_w = add(t, PI_NORMAL, (float)sqrt(2.0 / (double)(4 * W)), 2, SHAPE(3 * W, W), "visual.head.attn.in_proj_weight");
    h->qkv_b = add(t, PI_ZEROS, 0, 1, SHAPE(3 * W), "visual.head.attn.in_proj_bias");
    h->out_w = add(t, PI_NORMAL, default_std(W), 2, SHAPE(W, W), "visual.head.attn.out_proj.weight");
    h->out_b = add(t, PI_ZEROS, 0, 1, SHAPE(W), "visual.head.attn.out_proj.bias");
    L->v_head_ln_w = add(t, PI_ONES, 0, 1, SHAPE(W), "visual.head.ln.weight");
    L->v_head_ln_b = add(t, PI_ZEROS, 0, 1, SHAPE(W), "visual.head.ln.bias");
    h->fc_w = add(t, PI_NORMAL, default_std(W), 2, SHAPE(H, W), "visual.head.mlp.c_fc.weight");
    h->fc_b = add(t, PI_ZEROS, 0, 1, SHAPE(H), "visual.head.mlp.c_fc.bias");
    h->proj_w = add(t, PI_NORMAL, default_std(H), 2, SHAPE(W, H), "visual.head.mlp.c_proj.weight");
    h->proj_b = add(t, PI_ZEROS, 0, 1, SHAPE(W), "visual.head.mlp.c_proj.bias");
    return 0;
}

static int build_vit(const clipc_config *c, param_table *t, model_layout *L) {
    if (c->family == CLIPC_SIGLIP) return build_siglip_vit(c, t, L);
    int64_t W = c->vision_width, P = c->vision_patch_size, G = c->image_resolution / c->vision_patch_size;
    float scale = (float)pow((double)W, -0.5);
    L->v_class = add(t, PI_NORMAL, scale, 1, SHAPE(W), "visual.class_embedding");
    L->v_pos = add(t, PI_NORMAL, scale, 2, SHAPE(G * G + 1, W), "visual.positional_embedding");
    L->v_proj = add(t, PI_NORMAL, scale, 2, SHAPE(c->family == CLIPC_COCA ? c->embed_dim : W, c->embed_dim), "visual.proj");
    L->v_conv = add_conv(t, "visual.conv1.weight", W, 3, P);
    L->v_ln_pre_w = add(t, PI_ONES, 0, 1, SHAPE(W), "visual.ln_pre.weight");
    L->v_ln_pre_b = add(t, PI_ZEROS, 0, 1, SHAPE(W), "visual.ln_pre.bias");
    L->v_blocks = calloc((size_t)c->vision_layers, sizeof *L->v_blocks);
    if (!L->v_blocks) return -1;
    for (int i = 0; i < c->vision_layers; i++)
        add_block(t, &L->v_blocks[i], "visual.transformer.", i, W, c->vision_mlp_width, c->vision_layers, false,
                  c->vision_layer_scale);
    if (c->family == CLIPC_COCA) { /* OpenCLIP's AttentionalPooler, then ln_post and proj on its E-wide outputs */
        int64_t E = c->embed_dim, Q = c->pool_queries;
        float std = default_std(E);
        L->cp_query = add(t, PI_NORMAL, 1.0f, 2, SHAPE(Q, E), "visual.attn_pool.query");
        L->cp_q_w = add(t, PI_NORMAL, std, 2, SHAPE(E, E), "visual.attn_pool.attn.q_proj_weight");
        L->cp_k_w = add(t, PI_NORMAL, default_std(W), 2, SHAPE(E, W), "visual.attn_pool.attn.k_proj_weight");
        L->cp_v_w = add(t, PI_NORMAL, default_std(W), 2, SHAPE(E, W), "visual.attn_pool.attn.v_proj_weight");
        L->cp_in_b = add(t, PI_ZEROS, 0, 1, SHAPE(3 * E), "visual.attn_pool.attn.in_proj_bias");
        L->cp_out_w = add(t, PI_NORMAL, std, 2, SHAPE(E, E), "visual.attn_pool.attn.out_proj.weight");
        L->cp_out_b = add(t, PI_ZEROS, 0, 1, SHAPE(E), "visual.attn_pool.attn.out_proj.bias");
        L->cp_lnq_w = add(t, PI_ONES, 0, 1, SHAPE(E), "visual.attn_pool.ln_q.weight");
        L->cp_lnq_b = add(t, PI_ZEROS, 0, 1, SHAPE(E), "visual.attn_pool.ln_q.bias");
        L->cp_lnk_w = add(t, PI_ONES, 0, 1, SHAPE(W), "visual.attn_pool.ln_k.weight");
        L->cp_lnk_b = add(t, PI_ZEROS, 0, 1, SHAPE(W), "visual.attn_pool.ln_k.bias");
        W = E;
    }
    L->v_ln_post_w = add(t, PI_ONES, 0, 1, SHAPE(W), "visual.ln_post.weight");
    L->v_ln_post_b = add(t, PI_ZEROS, 0, 1, SHAPE(W), "visual.ln_post.bias");
    return 0;
}

/* OpenAI's ModifiedResNet: a three-conv stem, four stages of Bottlenecks
 * (stride by average pooling), and an attention-pooling head. */
static int build_resnet(const clipc_config *c, param_table *t, model_layout *L) {
    int64_t w = c->vision_width;
    L->r_conv[0] = add_conv(t, "visual.conv1.weight", w / 2, 3, 3);
    add_bn(t, &L->r_bn[0], "visual.bn1", w / 2, false);
    L->r_conv[1] = add_conv(t, "visual.conv2.weight", w / 2, w / 2, 3);
    add_bn(t, &L->r_bn[1], "visual.bn2", w / 2, false);
    L->r_conv[2] = add_conv(t, "visual.conv3.weight", w, w / 2, 3);
    add_bn(t, &L->r_bn[2], "visual.bn3", w, false);
    int total = 0;
    for (int s = 0; s < 4; s++) total += c->vision_resnet_layers[s];
    L->r_blocks = calloc((size_t)total, sizeof *L->r_blocks);
    if (!L->r_blocks) return -1;
    L->r_block_count = total;
    int inplanes = (int)w, bi = 0;
    for (int s = 0; s < 4; s++) {
        int planes = (int)w << s;
        for (int j = 0; j < c->vision_resnet_layers[s]; j++) {
            bottleneck_offsets *b = &L->r_blocks[bi++];
            char name[96];
            b->inplanes = inplanes;
            b->planes = planes;
            b->stride = (j == 0 && s > 0) ? 2 : 1;
            snprintf(name, sizeof name, "visual.layer%d.%d.conv1.weight", s + 1, j);
            b->conv1 = add_conv(t, name, planes, inplanes, 1);
            snprintf(name, sizeof name, "visual.layer%d.%d.bn1", s + 1, j);
            add_bn(t, &b->bn1, name, planes, false);
            snprintf(name, sizeof name, "visual.layer%d.%d.conv2.weight", s + 1, j);
            b->conv2 = add_conv(t, name, planes, planes, 3);
            snprintf(name, sizeof name, "visual.layer%d.%d.bn2", s + 1, j);
            add_bn(t, &b->bn2, name, planes, false);
            snprintf(name, sizeof name, "visual.layer%d.%d.conv3.weight", s + 1, j);
            b->conv3 = add_conv(t, name, planes * 4, planes, 1);
            snprintf(name, sizeof name, "visual.layer%d.%d.bn3", s + 1, j);
            add_bn(t, &b->bn3, name, planes * 4, true); /* OpenAI zero-inits bn3 */
            b->down_conv = (size_t)-1;
            if (b->stride > 1 || inplanes != planes * 4) {
                snprintf(name, sizeof name, "visual.layer%d.%d.downsample.0.weight", s + 1, j);
                b->down_conv = add_conv(t, name, planes * 4, inplanes, 1);
                snprintf(name, sizeof name, "visual.layer%d.%d.downsample.1", s + 1, j);
                add_bn(t, &b->down_bn, name, planes * 4, false);
            }
            inplanes = planes * 4;
        }
    }
    int64_t E = w * 32, S = c->image_resolution / 32, O = c->embed_dim;
    float std = (float)pow((double)E, -0.5);
    L->ap_pos = add(t, PI_NORMAL, std, 2, SHAPE(S * S + 1, E), "visual.attnpool.positional_embedding");
    L->ap_k_w = add(t, PI_NORMAL, std, 2, SHAPE(E, E), "visual.attnpool.k_proj.weight");
    L->ap_k_b = add(t, PI_ZEROS, 0, 1, SHAPE(E), "visual.attnpool.k_proj.bias");
    L->ap_q_w = add(t, PI_NORMAL, std, 2, SHAPE(E, E), "visual.attnpool.q_proj.weight");
    L->ap_q_b = add(t, PI_ZEROS, 0, 1, SHAPE(E), "visual.attnpool.q_proj.bias");
    L->ap_v_w = add(t, PI_NORMAL, std, 2, SHAPE(E, E), "visual.attnpool.v_proj.weight");
    L->ap_v_b = add(t, PI_ZEROS, 0, 1, SHAPE(E), "visual.attnpool.v_proj.bias");
    L->ap_c_w = add(t, PI_NORMAL, std, 2, SHAPE(O, E), "visual.attnpool.c_proj.weight");
    L->ap_c_b = add(t, PI_ZEROS, 0, 1, SHAPE(O), "visual.attnpool.c_proj.bias");
    return 0;
}

int params_build(const clipc_config *c, param_table *t, model_layout *L, clipc_error *err) {
    memset(t, 0, sizeof *t);
    memset(L, 0, sizeof *L);
    if (config_validate(c, err)) return -1;
    int rc = c->vision_tower == CLIPC_VIT ? build_vit(c, t, L) : build_resnet(c, t, L);
    int64_t Wt = c->text_width;
    L->t_tok = add(t, PI_NORMAL, 0.02f, 2, SHAPE(c->vocab_size, Wt), "token_embedding.weight");
    bool coca = c->family == CLIPC_COCA; /* its CLS token takes one more position */
    L->t_pos = add(t, PI_NORMAL, 0.01f, 2, SHAPE(c->context_length + coca, Wt), "positional_embedding");
    if (coca) L->t_cls = add(t, PI_NORMAL, 0.01f, 1, SHAPE(Wt), "cls_emb");
    L->t_blocks = calloc((size_t)c->text_layers, sizeof *L->t_blocks);
    if (rc || !L->t_blocks) {
        params_free(t, L);
        return clipc_fail(err, "out of memory building the parameter table");
    }
    for (int i = 0; i < c->text_layers; i++)
        add_block(t, &L->t_blocks[i], "transformer.", i, Wt, c->text_mlp_width, c->text_layers, true,
                  c->text_layer_scale);
    L->t_ln_w = add(t, PI_ONES, 0, 1, SHAPE(Wt), "ln_final.weight");
    L->t_ln_b = add(t, PI_ZEROS, 0, 1, SHAPE(Wt), "ln_final.bias");
    if (c->family == CLIPC_SIGLIP) { /* SigLIP's text head: nn.Linear(width, embed_dim) */
        L->t_proj = add(t, PI_NORMAL, default_std(Wt), 2, SHAPE(c->embed_dim, Wt), "text_head.weight");
        L->t_head_b = add(t, PI_ZEROS, 0, 1, SHAPE(c->embed_dim), "text_head.bias");
    } else {
        L->t_proj = add(t, PI_NORMAL, (float)pow((double)Wt, -0.5), 2, SHAPE(Wt, c->embed_dim), "text_projection");
    }
    if (coca) { /* OpenCLIP's MultimodalTransformer: per layer a causal block, then a cross-attention block */
        L->d_self = calloc((size_t)c->decoder_layers, sizeof *L->d_self);
        L->d_cross = calloc((size_t)c->decoder_layers, sizeof *L->d_cross);
        if (!L->d_self || !L->d_cross) {
            params_free(t, L);
            return clipc_fail(err, "out of memory building the parameter table");
        }
        for (int i = 0; i < c->decoder_layers; i++) {
            add_block_in(t, &L->d_self[i], "text_decoder.", "resblocks", i, Wt, c->text_mlp_width, c->decoder_layers,
                         true, false, false);
            add_block_in(t, &L->d_cross[i], "text_decoder.", "cross_attn", i, Wt, c->text_mlp_width, c->decoder_layers,
                         true, false, true);
        }
        L->d_ln_w = add(t, PI_ONES, 0, 1, SHAPE(Wt), "text_decoder.ln_final.weight");
        L->d_ln_b = add(t, PI_ZEROS, 0, 1, SHAPE(Wt), "text_decoder.ln_final.bias");
        L->d_proj = add(t, PI_NORMAL, (float)pow((double)Wt, -0.5), 2, SHAPE(Wt, c->vocab_size), "text_decoder.text_projection");
    }
    L->logit_scale = add(t, PI_LOGIT_SCALE, 0, 0, NULL, "logit_scale");
    if (c->has_logit_bias) L->logit_bias = add(t, PI_LOGIT_BIAS, 0, 0, NULL, "logit_bias");
    /* fine-tuned additions (finetune/): initialised by the method that trains them */
    if (c->prompt_ctx > 0 && c->prompt_classes > 0) /* CoOp's class-specific contexts */
        L->prompt_ctx = add(t, PI_NORMAL, 0.02f, 3, SHAPE(c->prompt_classes, c->prompt_ctx, Wt), "prompt_learner.ctx");
    else if (c->prompt_ctx > 0)
        L->prompt_ctx = add(t, PI_NORMAL, 0.02f, 2, SHAPE(c->prompt_ctx, Wt), "prompt_learner.ctx");
    if (c->prompt_meta_hidden > 0) { /* CoCoOp's meta_net: Linear(E, h), ReLU, Linear(h, text width) */
        int h = c->prompt_meta_hidden;
        L->meta_w1 = add(t, PI_NORMAL, 0.02f, 2, SHAPE(h, c->embed_dim), "prompt_learner.meta_net.linear1.weight");
        L->meta_b1 = add(t, PI_ZEROS, 0, 1, SHAPE(h), "prompt_learner.meta_net.linear1.bias");
        L->meta_w2 = add(t, PI_NORMAL, 0.02f, 2, SHAPE(Wt, h), "prompt_learner.meta_net.linear2.weight");
        L->meta_b2 = add(t, PI_ZEROS, 0, 1, SHAPE(Wt), "prompt_learner.meta_net.linear2.bias");
    }
    if (c->adapter_hidden > 0) {
        L->adapter_fc1 = add(t, PI_NORMAL, 0.02f, 2, SHAPE(c->adapter_hidden, c->embed_dim), "adapter.visual.fc1.weight");
        L->adapter_fc2 = add(t, PI_NORMAL, 0.02f, 2, SHAPE(c->embed_dim, c->adapter_hidden), "adapter.visual.fc2.weight");
        L->adapter_ratio = add(t, PI_ZEROS, 0, 0, NULL, "adapter.visual.ratio");
    }
    if (t->oom) {
            params_free(t, L);
            return clipc_fail(err, "out of memory building the parameter table");
    }
    return 0;
}

void params_free(param_table *t, model_layout *L) {
    free(t->items);
    free(L->v_blocks);
    free(L->r_blocks);
    free(L->t_blocks);
    free(L->d_self);
    free(L->d_cross);
    memset(t, 0, sizeof *t);
    memset(L, 0, sizeof *L);
}

const param_spec *params_find(const param_table *t, const char *name) {
    for (int i = 0; i < t->count; i++)
        if (!strcmp(t->items[i].name, name)) return &t->items[i];
    return NULL;
}
