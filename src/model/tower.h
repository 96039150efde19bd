/* tower.h — what the model's towers share inside src/model. */
#ifndef CLIPC_TOWER_H
#define CLIPC_TOWER_H

#include "../internal.h"

/* Where each sequence sits among the packed rows. */
typedef struct packing {
    const int *start, *len;
    int n_seq, total, max_len;
    const size_t *probs_offset; /* training: where each sequence's attention probabilities go */
    const unsigned char *hidden; /* CoCa: rows its CLS token (each sequence's last row) does not attend */
} packing;

/* LoRA (Hu et al. 2021, eq. 3): a frozen weight W [out, in] gains a
 * trainable low-rank update, h = x W^T + scale (x A^T) B^T with A [r, in],
 * B [out, r] and scale = alpha / r. In a block, q, k and v are the three
 * row ranges of in_proj, out is out_proj, fc and proj the MLP's c_fc and
 * c_proj (Hugging Face: q_proj, k_proj, v_proj, out_proj, fc1, fc2). */
enum lora_target { LORA_Q, LORA_K, LORA_V, LORA_OUT, LORA_FC, LORA_PROJ, LORA_TARGETS };
typedef struct lora_pair {
    float *A, *B;   /* NULL: this weight is not adapted */
    float *dA, *dB; /* their gradients (added into), same shapes */
} lora_pair;
typedef struct lora_tower {
    lora_pair (*blocks)[LORA_TARGETS]; /* [layers][LORA_TARGETS] */
    int rank;
    float scale;
} lora_tower;

/* Where one block's intermediates go. Inference points them into shared
 * buffers (x_mid the residual stream itself, fc_pre == fc_act: the MLP
 * fused); training gives each its own, kept for the backward pass. */
typedef struct block_cache {
    float *x_in, *ln1, *qkv, *probs, *att, *x_mid, *ln2, *fc_pre, *fc_act;
    float *lora_u[LORA_TARGETS]; /* training with LoRA: x A^T [T, r] of each adapted weight */
} block_cache;

/* CoOp's learned context (Zhou et al. 2022): n_ctx vectors [n_ctx, width]
 * that replace the token embeddings at positions 1..n_ctx of every text
 * (the positional embedding is still added). stride 0: one context for all
 * texts; else text i's starts at ctx + i * stride (CoCoOp). */
typedef struct text_prompt {
    const float *ctx;
    int n_ctx;
    size_t stride;
} text_prompt;

/* One transformer tower's blocks and settings. */
typedef struct tower_spec {
    const block_offsets *blocks;
    int layers, D, heads, H; /* H: the MLP's hidden width */
    int act;                 /* CLIPC_QUICK_GELU, CLIPC_GELU or CLIPC_GELU_TANH */
    float eps;               /* LayerNorm epsilon */
    bool causal;             /* the text tower's mask */
    const char *prefix;      /* tensor-name prefix, for the debug tap */
    const lora_tower *lora;  /* training with LoRA; NULL otherwise (a merged LoRA is plain weights) */
} tower_spec;
tower_spec vision_tower_spec(const clipc_model *m);
tower_spec text_tower_spec(const clipc_model *m);

/* The LoRA of target tg in block `layer` of the tower, or NULL. */
static inline const lora_pair *lora_of(const tower_spec *t, int layer, int tg) {
    return t->lora && t->lora->blocks[layer][tg].A ? &t->lora->blocks[layer][tg] : NULL;
}

/* One residual block, x_out = block(k->x_in), for every row of pk; x_out
 * may be k->x_in (in place). tmp [T, D] is needed with LayerScale or tap;
 * scratch: attention_scratch floats; ws: lowp_scratch floats. The one block
 * forward of the model: inference and training both run it. */
void block_forward(const clipc_model *m, const tower_spec *t, int layer, const packing *pk, const block_cache *k,
                   float *x_out, float *tmp, float *scratch, float *ws, bool tap);
size_t transformer_scratch(int T, int D, int H, int max_len, int heads, int n_seq);
/* Runs the blocks over x [T, D]; pooled [n_seq, D] receives the final hidden
 * state of row pool_row[s] of each sequence (x itself is left partly
 * updated: only the pooled rows are defined after the call). */
void transformer_forward(const clipc_model *m, arena *a, const tower_spec *t, float *x, const packing *pk,
                         const int *pool_row, float *pooled);
void model_tap(const clipc_model *m, const char *name, const float *x, int rows, int cols);

/* Each tower: the arena size its forward pass needs for n inputs, and the
 * pass itself writing [n, embed_dim] features, with its activations in
 * arena a (one per concurrent pass; the model itself is only read). */
size_t vit_scratch(const clipc_config *c, int n);
void vit_embed(const clipc_model *m, const float *pixels, int n, float *patches, float *emb, float *x, float *ws);
int vit_forward(const clipc_model *m, arena *a, const float *pixels, int n, float *out);
/* CoCa: the embeddings and (tokens non-NULL) the pooler's other outputs
 * [n, pool_queries - 1, embed_dim], which the decoder attends to. */
int vit_forward_tokens(const clipc_model *m, arena *a, const float *pixels, int n, float *out, float *tokens);
size_t coca_pool_scratch(const clipc_config *c, int n);
size_t resnet_scratch(const clipc_config *c, int n);
int resnet_forward(const clipc_model *m, arena *a, const float *pixels, int n, float *out);
/* x = token_embedding[tokens] + positional_embedding, with the prompt's
 * context vectors in place of tokens 1..n_ctx (prompt NULL: none). */
void text_embed(const clipc_model *m, const int32_t *tokens, int n, const int *start, const int *len,
                const text_prompt *prompt, float *x);
int text_eot_positions(const clipc_config *c, const int32_t *tokens, int n, int *eot, clipc_error *err);
size_t text_scratch(const clipc_config *c, int total_tokens, int n, int max_len);
int text_forward(const clipc_model *m, arena *a, const int32_t *tokens, int n, const int *eot, const text_prompt *prompt,
                 float *out);

#endif
