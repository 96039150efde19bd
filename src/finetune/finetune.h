/* finetune.h — adapting a pretrained CLIP to a labelled image set: LoRA,
 * CLIP-Adapter, CoOp and full fine-tuning, all with the published few-shot
 * objective, the cross-entropy of logit_scale * cos(image, class text)
 * over the classes; and WiSE-FT's weight-space interpolation.
 *
 * What each method trains, and what a step costs:
 *   lora     low-rank A, B on the chosen weights of the chosen towers (Hu et
 *            al. 2021; CLIP-LoRA, Zanella & Ben Ayed 2024). Forward of the
 *            adapted towers, backward for dx only (no weight-gradient GEMMs
 *            for the frozen W); a text-only LoRA uses cached image features.
 *   adapter  CLIP-Adapter (Gao et al. 2021) on cached image features: no
 *            tower runs after the first pass over the images.
 *   coop     CoOp's context vectors (Zhou et al. 2022): image features
 *            cached; each step runs the text tower over the C class prompts,
 *            forward and backward to the input embeddings.
 *   cocoop   CoCoOp (Zhou et al. 2022b): CoOp's context shifted per image by
 *            a meta-network on its (cached) features; each step runs the
 *            text tower over batch x C prompts.
 *   full     every weight of the chosen towers, with AdamW and weight decay.
 * Internal to libclipc; the CLI and the tests use it. */
#ifndef CLIPC_FINETUNE_H
#define CLIPC_FINETUNE_H

#include "../eval/eval.h"

enum finetune_method { FT_LORA, FT_ADAPTER, FT_COOP, FT_FULL, FT_COCOOP };
enum finetune_towers { FT_IMAGE = 1, FT_TEXT = 2 };

/* "lora", "adapter", "coop", "full", "cocoop" -> FT_*, or -1. */
int finetune_method_parse(const char *name);
const char *finetune_method_name(int method);
/* "q,k,v,out,fc,proj" -> a bitmask of 1 << LORA_*; -1 on an unknown name. */
int lora_targets_parse(const char *list, char *bad, size_t cap);

typedef struct finetune_options {
    int method;
    long steps;
    int batch;
    float lr, wd;
    uint64_t seed;
    int towers;          /* FT_IMAGE | FT_TEXT: what lora and full train */
    int rank;            /* lora */
    float alpha;
    int targets;         /* lora: 1 << LORA_* */
    int n_ctx;           /* coop: context length (with ctx_init: its token count) */
    bool csc;            /* coop: a context per class (CoOp's class-specific context, CSC) */
    const char *ctx_init;/* coop: "a photo of a", or NULL for N(0, 0.02) */
    float ratio;         /* adapter: the residual ratio alpha of eq. 3 */
    const char *const *templates; /* the fixed class embeddings' templates */
    int n_templates;
    int (*stop)(void *ctx);       /* polled before each step (with progress's ctx): non-zero ends the run
                                   * there, the model as trained so far (NULL: never) */
} finetune_options;

/* Called after every step (NULL for none). */
typedef void (*finetune_progress)(void *ctx, long step, long total, float loss, float batch_acc, float lr);

typedef struct finetune_result {
    size_t trainable;   /* parameters the method trained */
    long steps_done;    /* o->steps, or fewer when o->stop ended the run early */
    /* The method's parameters alone, for adapter.safetensors (lora: PEFT's
     * names; none for full). Owned: finetune_result_free. */
    st_out_tensor *tensors;
    int n_tensors;
    char (*names)[128];
    float *data;
} finetune_result;
void finetune_result_free(finetune_result *r);

/* The learning-rate schedule: linear warm-up over finetune_warmup(steps)
 * steps (5%, at most 50), then cosine to 0 (lr_at). */
long finetune_warmup(long steps);
/* Whether the method trains that tower's weights (lora, full). */
bool finetune_trains(const finetune_options *o, int tower);
/* Refuses what the model cannot do with these options, before any work: a
 * reduced precision, an image tower that is not a ViT for a method that
 * trains it, a LoRA rank above a trained tower's width. */
int finetune_check(const clipc_model *m, const finetune_options *o, clipc_error *err);

/* Fine-tunes a copy of m on images rows[0..n) of set (labels set->labels,
 * class names set->class_names); m itself is only read. On success *out
 * is the complete fine-tuned model: LoRA merged into the weights, CoOp's
 * context and CLIP-Adapter as extra tensors its config announces. */
int finetune_run(clipc_model *m, clipc_tokenizer *tok, const image_set *set, const int *rows, int n,
                 const finetune_options *o, finetune_progress progress, void *ctx, clipc_model **out,
                 finetune_result *res, clipc_error *err);

/* K rows per class of set, drawn with seed (CoOp's protocol; the same as
 * the linear probe's with that seed, shot_order); *rows is
 * malloc'd. A class with fewer than K images is an error naming it. */
int few_shot_rows(const image_set *set, int shots, uint64_t seed, int **rows, int *n, clipc_error *err);

/* WiSE-FT (Wortsman et al. 2022, eq. 1): theta = (1 - alpha) theta_zero_shot
 * + alpha theta_fine_tuned, tensor by tensor; parameters only the fine-tuned
 * model has (a learned prompt, an adapter) are kept as they are. */
clipc_model *wise_interpolate(const clipc_model *zero_shot, const clipc_model *fine_tuned, float alpha,
                              clipc_error *err);

/* A copy of m with cfg's extra tensors (prompt_ctx, adapter_hidden) added
 * and zeroed; cfg must otherwise be m's. */
clipc_model *model_extend(const clipc_model *m, const clipc_config *cfg, clipc_error *err);

#endif
