/* methods.h — what finetune.c's loop asks of a method (methods.c). */
#ifndef CLIPC_FINETUNE_METHODS_H
#define CLIPC_FINETUNE_METHODS_H

#include "finetune.h"

typedef struct method_run {
    const finetune_options *o;
    clipc_tokenizer *tok;
    const image_set *set;
    clipc_model *m;          /* the model being fine-tuned (owned by the loop) */
    int C, E, n;             /* classes, embedding width, training images */
    float scale;             /* exp(logit_scale), kept fixed */
    int *labels;             /* [n] */
    float *pixels;           /* [n, 3, R, R] */
    /* The trained parameters as one flat vector and its gradient (full:
     * the model's own parameters); decay: where weight decay applies
     * (NULL: everywhere). */
    float *theta, *grad;
    float *theta_mem;        /* theta's allocation when it is not the model's own tensors (lora) */
    size_t count;
    size_t trainable;        /* parameters that learn (full: the trained towers' share of count) */
    unsigned char *decay;
    /* caches of what cannot change during the run */
    float *img_feat;         /* [n, E] features of a frozen image tower */
    float *cls_feat;         /* [C, E] embeddings of the classes with a frozen text tower */
    int32_t *cls_tokens;     /* [C, context] the class prompts when the text tower runs */
    /* per step */
    tower_cache icache, tcache;
    int *by;                 /* the batch's labels */
    float *bpix, *bfeat, *dfeat; /* pixels, image features and their gradient [B, E] */
    float *cfeat, *dcls;     /* class embeddings and their gradient [C, E] */
    float *hid, *act, *aout; /* adapter: its intermediates and output */
    float *dx0;              /* coop, cocoop: the text tower's input gradient */
    float *fn, *shift, *ctxs, *dshift, *dhid; /* cocoop: normalised features, the meta-network's shift
                                               * [B, width], the B C contexts, their gradients */
    /* lora */
    lora_tower lora[2];      /* [0] image, [1] text */
    lora_pair *pairs[2];
} method_run;

/* The class cross-entropy on un-normalised img [B, E] and cls [C, E]:
 * mean over i of CE(scale cos(img_i, cls_c), y_i). Writes d_img and d_cls
 * (either NULL) and the top-1 hits; NAN when out of memory. */
float class_cross_entropy(const float *img, const float *cls, const int *y, int B, int C, int E, float scale,
                          float *d_img, float *d_cls, int *correct);

/* A run before its first step: the model copy being trained (with the method's tensors),
 * the training images rows[0..n) of set, method_setup done (finetune_run = this, the steps,
 * method_finish). finetune_release frees it all, the model too when with_model. */
int finetune_prepare(method_run *run, clipc_model *m0, clipc_tokenizer *tok, const image_set *set, const int *rows,
                     int n, const finetune_options *o, clipc_error *err);
void finetune_release(method_run *run, bool with_model);

/* m0: the pretrained model (for cached features). Sets theta, grad, count. */
int method_setup(method_run *r, clipc_model *m0, clipc_error *err);
/* Loss and gradient (added into r->grad) of the batch rows[0..B). */
int method_step(method_run *r, const int *rows, int B, float *loss, int *correct, clipc_error *err);
/* Writes the trained parameters into r->m (LoRA merged) and the method's tensors into res. */
int method_finish(method_run *r, finetune_result *res, clipc_error *err);
void method_free(method_run *r);

#endif
