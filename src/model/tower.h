/* tower.h — what the model's towers share inside src/model. */
#ifndef CLIPC_TOWER_H
#define CLIPC_TOWER_H

#include "../internal.h"

/* Where each sequence sits among the packed rows. */
typedef struct packing {
    const int *start, *len;
    int n_seq, total, max_len;
} packing;

/* One transformer tower's blocks and settings. */
typedef struct tower_spec {
    const block_offsets *blocks;
    int layers, D, heads, H; /* H: the MLP's hidden width */
    int act;                 /* CLIPC_QUICK_GELU or CLIPC_GELU */
    float eps;               /* LayerNorm epsilon */
    bool causal;             /* the text tower's mask */
    const char *prefix;      /* tensor-name prefix, for the debug tap */
} tower_spec;
tower_spec vision_tower_spec(const clipc_model *m);
tower_spec text_tower_spec(const clipc_model *m);

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
size_t resnet_scratch(const clipc_config *c, int n);
int resnet_forward(const clipc_model *m, arena *a, const float *pixels, int n, float *out);
void text_embed(const clipc_model *m, const int32_t *tokens, int n, const int *start, const int *len, float *x);
int text_eot_positions(const clipc_config *c, const int32_t *tokens, int n, int *eot, clipc_error *err);
size_t text_scratch(const clipc_config *c, int total_tokens, int n, int max_len);
int text_forward(const clipc_model *m, arena *a, const int32_t *tokens, int n, const int *eot, float *out);

#endif
