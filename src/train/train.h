/* train.h — training internals: the towers' forward passes that keep their
 * activations, their backward passes, the contrastive losses and AdamW.
 * Gradients live in one float array laid out exactly like the parameters
 * (model->table offsets), so every kernel indexes both the same way. */
#ifndef CLIPC_TRAIN_H
#define CLIPC_TRAIN_H

#include "../internal.h"
#include "../model/tower.h" /* block_cache: what one residual block keeps for its backward pass; LoRA */

/* What one tower's forward pass keeps. Owns one allocation (mem). */
typedef struct tower_cache {
    int n, T, D, max_len;
    int *start, *len, *pool_row;  /* packing: sequences back to back */
    size_t *probs_offset;
    float *patches;               /* ViT: unrolled patches [n*G*G, 3*P*P] */
    const int32_t *tokens;        /* text: the caller's token rows */
    float *x0;                    /* embeddings + positions [T, D] */
    block_cache *blocks;
    const lora_tower *lora;       /* the LoRA the forward pass applied (NULL: none) */
    float *x_out;                 /* after the last block [T, D] */
    float *pooled_in, *pooled;    /* pooled rows before / after the final LayerNorm [n, D] */
    /* CoCa's attentional pooler (ViT): ln_k(x) [T, W], keys and values [T, 2E], ln_q(query) and q [Q, E],
     * probabilities [n][heads][Q][S], attention and out_proj outputs, ln_post's [n * Q, E] (row i Q
     * pools image i, rows i Q + 1 .. i Q + Q - 1 are its tokens for the decoder), the pooled rows [n, E] */
    float *cp_lnk, *cp_kv, *cp_lnq, *cp_q, *cp_probs, *cp_att, *cp_pre, *cp_y, *cp_first;
    unsigned char *hidden;        /* CoCa's text: rows its CLS token does not attend (owned; NULL: none) */
    void *mem;                    /* the activations; kept between steps and grown on need */
    size_t mem_cap;               /* floats */
    int n_cap, layers_cap;        /* capacity of the packing arrays and of blocks */
} tower_cache;

/* Releases everything; a zeroed cache is empty. A cache may be reused for
 * the next forward pass without freeing: its buffers are kept. */
void tower_cache_free(tower_cache *c);

/* Forward passes that fill a cache (zeroed, or one from an earlier pass,
 * whose buffers are reused); features [n, embed_dim] as encode_*. lora
 * (NULL: none) adds its low-rank updates to the tower's blocks; prompt
 * (NULL: none) sets the text's context vectors. The model must be at fp32. */
int vit_train_forward(const clipc_model *m, const lora_tower *lora, const float *pixels, int n, float *features,
                      tower_cache *c, clipc_error *err);
int text_train_forward(const clipc_model *m, const lora_tower *lora, const text_prompt *prompt, const int32_t *tokens,
                       int n, float *features, tower_cache *c, clipc_error *err);
/* Backward passes: dfeatures [n, embed_dim] in, parameter gradients added
 * into grads (laid out like model->params; NULL: none, for a frozen
 * tower), LoRA gradients into the forward pass's lora. dx0 (NULL: not
 * wanted) receives the gradient w.r.t. the text tower's input embeddings
 * [T, width], the packed rows of the cache (c->start, c->len). */
int vit_train_backward(const clipc_model *m, const tower_cache *c, const float *dfeatures, float *grads,
                       clipc_error *err);
/* CoCa: the same with the gradient of the pooler's token rows too, dtokens
 * laid out like c->cp_y [n * Q, E] (rows i Q ignored; NULL: none). */
int vit_train_backward_tokens(const clipc_model *m, const tower_cache *c, const float *dfeatures,
                              const float *dtokens, float *grads, clipc_error *err);
int text_train_backward(const clipc_model *m, const tower_cache *c, const float *dfeatures, float *grads, float *dx0,
                        clipc_error *err);
/* The same with dtokens [T, width] (the cache's rows, NULL: none) added to the
 * gradient of the blocks' output: what CoCa's decoder sends back. */
int text_train_backward_tokens(const clipc_model *m, const tower_cache *c, const float *dfeatures,
                               const float *dtokens, float *grads, float *dx0, clipc_error *err);

/* CoCa's captioning loss (OpenCLIP's CoCaLoss caption term) on the n texts
 * of a text cache under the images of an image cache (their forward passes
 * done): the decoder reads each text's unimodal outputs before its EOT
 * (teacher forcing) and each image's pooler tokens; the cross-entropy of
 * the next tokens, padding id 0 ignored, is summed into *loss_sum over
 * *targets targets; its gradient times weight (caption_weight / all the
 * step's targets) goes into grads (the decoder's parameters), dtext (the
 * text cache's rows, [T, width], added into) and dimage (the image cache's
 * cp_y layout, added into). */
int coca_caption_train(const clipc_model *m, const tower_cache *text, const tower_cache *image, float weight, float *grads,
                       float *dtext, float *dimage, double *loss_sum, long *targets, clipc_error *err);
/* The caption targets among n token rows (positions 1..EOT whose id is not 0). */
long coca_caption_targets(const clipc_config *c, const int32_t *tokens, int n);

/* ---- data parallelism over MPI (dist.c) ---------------------------------- */

/* The process's place in the job: rank 0 of 1 without mpirun (or in a
 * build without MPI), where every collective below is the identity. */
typedef struct dist {
    int rank, size;
    bool active; /* MPI was started */
} dist;

int dist_init(int *argc, char ***argv, dist *d, clipc_error *err);
void dist_finalize(dist *d);
/* Ends every rank of the job (MPI_Abort); no-op for one process. */
void dist_abort(const dist *d, int code);
/* all [size * count] = every rank's local [count], in rank order. */
void dist_allgather(const dist *d, const float *local, int count, float *all);
/* local [count] = the sum over ranks of their all[rank * count ...]. */
void dist_reduce_scatter(const dist *d, const float *all, int count, float *local);
void dist_sum_doubles(const dist *d, double *x, int count);
int dist_max_int(const dist *d, int x);
/* Rank 0's x to every rank. */
void dist_broadcast(const dist *d, float *x, size_t count);
/* Sums of float arrays over ranks, in buckets, started now and completed
 * by dist_sum_floats_finish (so communication can overlap compute). */
typedef struct dist_pending dist_pending;
dist_pending *dist_pending_new(void);
void dist_sum_floats_start(const dist *d, float *x, size_t count, dist_pending *p);
void dist_sum_floats_finish(const dist *d, dist_pending *p);
void dist_pending_free(dist_pending *p);

/* ---- losses (loss.c) ----------------------------------------------------- */

enum train_loss { LOSS_CLIP = 0, LOSS_SIGLIP = 1 };

typedef struct loss_metrics {
    float loss;
    float pos_sim;       /* mean cosine of the matching pairs */
    float hard_neg_sim;  /* mean over rows of the largest non-matching cosine */
    float margin;        /* pos_sim - hard_neg_sim */
    float acc_i2t, acc_t2i; /* in-batch retrieval accuracy */
    float contrastive, caption; /* CoCa: the two terms of loss (the caption term: mean token cross-entropy) */
} loss_metrics;

/* CLIP's symmetric InfoNCE on un-normalised features img, txt [B, E]:
 *   logits = exp(logit_scale) * norm(img) norm(txt)^T
 *   loss = (CE(logits, arange) + CE(logits^T, arange)) / 2
 * Writes d_img, d_txt [B, E] and *d_logit_scale (gradients of the loss).
 * Returns 0, or -1 when out of memory. */
int clip_loss(const float *img, const float *txt, int B, int E, float logit_scale, float *d_img, float *d_txt,
               float *d_logit_scale, loss_metrics *out);

/* SigLIP's sigmoid loss: logits = exp(t') cos + b, z = +1 on the diagonal and
 * -1 elsewhere, loss = -(1/B) sum_ij log sigmoid(z_ij logits_ij).
 * Writes d_img, d_txt, *d_t_prime and *d_bias. */
int siglip_loss(const float *img, const float *txt, int B, int E, float t_prime, float bias, float *d_img,
                 float *d_txt, float *d_t_prime, float *d_bias, loss_metrics *out);

/* Either loss on this rank's b pairs of a global batch of b * d->size (d
 * NULL: one process). img, txt [b, E] un-normalised features; writes the
 * exact gradient of the global loss w.r.t. them, this rank's part of the
 * temperature (and, for SigLIP, bias) gradient, and the global loss and
 * metrics. scale_param is logit_scale (CLIP) or t' (SigLIP). */
int contrastive_loss(const dist *d, int kind, const float *img, const float *txt, int b, int E, float scale_param,
                     float bias_param, float *d_img, float *d_txt, float *d_scale, float *d_bias, loss_metrics *out);

/* ---- data (data.c) ---------------------------------------------------------- */

#define FMNIST_DIR "/usr/share/datasets/fashion-mnist"
extern const char *const FMNIST_CLASSES[10];

typedef struct fmnist {
    unsigned char *images; /* count x height x width, uint8 */
    unsigned char *labels;
    int count, height, width;
} fmnist;

/* dir NULL: $CLIPC_FASHION_MNIST_DIR when set and non-empty, else FMNIST_DIR. */
int fmnist_load(const char *dir, bool train, fmnist *out, clipc_error *err);
void fmnist_free(fmnist *d);
/* Image index as an 8-bit gray image (pixels point into d). */
image fmnist_image(const fmnist *d, int index);
/* Image index as CLIP input [3, R, R]. */
int fmnist_pixels(const fmnist *d, int index, int R, float *out, clipc_error *err);
/* A caption for label, chosen by (seed, step, index). */
void fmnist_caption(int label, uint64_t seed, long step, int index, char *out, size_t cap);
/* Every caption fmnist_caption can write for a label: variant k of fmnist_caption_variants()
 * (a template with one of the class's four names); and name k (0..3) of a class. */
int fmnist_caption_variants(void);
void fmnist_caption_variant(int label, int k, char *out, size_t cap);
const char *fmnist_synonym(int label, int k);
/* The i-th sample of an epoch's seeded permutation (perm_cache: count ints). */
int data_order_index(uint64_t seed, long epoch, int count, int i, int *perm_cache, long *cached_epoch);

/* ---- CSV/TSV pairs (csv.c) ------------------------------------------------------ */

typedef struct csv_pairs {
    char **paths, **captions;
    int count;
} csv_pairs;

/* sep 0 picks by extension: ',' for .csv, tab otherwise (OpenCLIP's default). */
int csv_load(const char *path, const char *img_key, const char *caption_key, char sep, csv_pairs *out, clipc_error *err);
void csv_free(csv_pairs *c);
/* Decodes an image with RandomResizedCrop(R, scale (0.9, 1)) drawn from
 * (seed, step, index), as CLIP input [3, R, R]. */
int augmented_pixels(const char *path, int R, uint64_t seed, long step, int index, float *out, clipc_error *err);

/* ---- AdamW (adamw.c) ----------------------------------------------------- */

typedef struct adamw {
    float lr, beta1, beta2, eps, weight_decay;
    long step;
    float *m, *v;        /* first and second moments, like params */
    unsigned char *decay;/* per float: 1 where weight decay applies */
    size_t count;
    /* A parameter group with its own learning rate (PyTorch's param_groups):
     * floats [group_first, group_first + group_count) step with group_lr. */
    size_t group_first, group_count;
    float group_lr;
} adamw;

/* Decay applies to tensors with two or more dimensions; gains, biases, the
 * class embedding and logit_scale (all ndim < 2) get none. */
int adamw_init(adamw *opt, const clipc_model *m, float lr, float beta1, float beta2, float eps, float weight_decay,
               clipc_error *err);
/* The same over count floats of one flat vector, decay applying to all. */
int adamw_init_flat(adamw *opt, size_t count, float lr, float beta1, float beta2, float eps, float weight_decay,
                    clipc_error *err);
void adamw_free(adamw *opt);
/* One step of PyTorch's AdamW with the current opt->lr (and group_lr). */
void adamw_step(adamw *opt, float *params, const float *grads);

/* ---- the training step (trainer.c) -------------------------------------------- */

typedef struct train_options {
    int loss;                  /* LOSS_CLIP or LOSS_SIGLIP */
    int batch, accum;          /* a step is accum micro-batches of batch pairs */
    float lr, beta1, beta2, eps, weight_decay, grad_clip; /* grad_clip <= 0: none */
    long warmup, total_steps;
    long eval_every, eval_limit; /* the run's --eval-every and --eval-limit, kept for --resume (0: not recorded / all) */
    float lr_temperature;      /* logit_scale's (and logit_bias's) learning rate, same schedule; <= 0: lr */
    int freeze;                /* FREEZE_NONE, or the tower kept fixed (FREEZE_IMAGE: LiT) */
    /* CoCa (OpenCLIP's CoCaLoss): loss = contrastive_weight InfoNCE + caption_weight token cross-entropy;
     * <= 0: its defaults, 1 and 2 */
    float contrastive_weight, caption_weight;
} train_options;

/* A frozen tower gets no gradients: its features come from the inference
 * forward (no activations kept), it runs no backward pass, and AdamW
 * neither moves nor decays it. */
enum train_freeze { FREEZE_NONE = 0, FREEZE_IMAGE = 1, FREEZE_TEXT = 2 };
/* "none", "image", "text" */
const char *train_freeze_name(int freeze);

typedef struct trainer {
    clipc_model *m;
    train_options o;    /* o.batch is the global micro-batch, over all ranks */
    const dist *d;      /* the ranks sharing each step (one process: size 1) */
    int local_batch;    /* o.batch / d->size pairs per micro-batch on this rank */
    dist_pending *pending; /* gradient sums in flight */
    adamw opt;          /* opt.step = steps taken */
    float *grads;       /* like m->params */
    /* Each micro-batch is cut into `shares` contiguous shares, one per
     * thread, for models too narrow to share one GEMM between threads
     * (trainer.c). Share s keeps its activations in image[s], text[s]
     * (reused from step to step) and, for s > 0, its gradients in
     * share_grads[(s - 1) * table.total ...]. */
    int shares;
    tower_cache *image, *text;
    float *share_grads;
    /* CoCa: per share, the decoder's gradients for the text rows and the image tokens, and its loss */
    float **dtext, **dimage;
    size_t *dtext_cap, *dimage_cap;
    double *caption_loss;
    float caption_scale;      /* caption_weight / the step's caption targets */
} trainer;

typedef struct step_stats {
    loss_metrics metrics;
    float grad_norm, lr, logit_scale;
} step_stats;

float lr_at(float base, long step, long warmup, long total);
/* d NULL: one process. o->batch must divide by the number of ranks. */
int trainer_init(trainer *t, clipc_model *m, const train_options *o, const dist *d, clipc_error *err);
void trainer_free(trainer *t);
/* Loss and gradients (into t->grads, summed over ranks) of a step's
 * accum * batch pairs, of which this rank holds accum * local_batch:
 * pixels [accum*local_batch, 3, R, R], tokens [accum*local_batch, context]. */
int trainer_compute_grads(trainer *t, const float *pixels, const int32_t *tokens, loss_metrics *lm, clipc_error *err);
/* A whole step: gradients, clipping, AdamW, logit_scale clamp. Refuses a
 * non-finite loss or gradient without changing the parameters. */
int trainer_step(trainer *t, const float *pixels, const int32_t *tokens, step_stats *st, clipc_error *err);

/* ---- checkpoints (state.c) ------------------------------------------------------ */

/* Model + AdamW moments + step/options, atomically, in one safetensors file
 * that clipc_model_load also reads (it skips the optimizer.* tensors). */
int train_checkpoint_save(const trainer *t, const char *path, uint64_t seed, clipc_error *err);
/* Loads a checkpoint into a new model and an initialised trainer (options
 * from the file; d as for trainer_init); *step = steps already taken. */
int train_checkpoint_load(const char *path, clipc_model **model, train_options *o, uint64_t *seed, long *step,
                          trainer *t, const dist *d, clipc_error *err);

/* ---- background batches (loader.c) ------------------------------------------------- */

typedef struct loader loader;
/* Where pairs come from: Fashion-MNIST with generated captions, or a CSV. */
typedef struct pair_source {
    const fmnist *fm;
    const csv_pairs *csv;
    int count;
} pair_source;
/* Produces the batches of steps first .. end-1: of each step's batch_pairs
 * pairs, the shard_count starting at shard_first (all of them: 0, batch_pairs). */
loader *loader_start(pair_source src, int batch_pairs, int shard_first, int shard_count, int resolution, int context,
                     uint64_t seed, long first, long end, clipc_error *err);
/* Unreadable images skipped so far, and the first one's message. */
long loader_skipped(loader *l, char *first, size_t cap);
/* Waits for step's batch; valid until loader_release(step). */
int loader_get(loader *l, long step, const float **pixels, const int32_t **tokens, clipc_error *err);
void loader_release(loader *l, long step);
void loader_stop(loader *l);

/* ---- evaluation (evaluate.c) ---------------------------------------------------------- */

/* Zero-shot top-1 on the first limit (0 = all) images with one template. */
int fmnist_zeroshot(clipc_model *m, clipc_tokenizer *tok, const fmnist *test, int limit, const char *template,
                    float *top1, clipc_error *err);

/* ---- curves (curve.c) --------------------------------------------------------------- */

/* The points of a run's curves, grown as they come (an allocation failure
 * keeps what was collected: the curve is a convenience). */
typedef struct history {
    long *steps, *eval_steps;
    float *loss, *acc;
    int n, n_eval, cap, cap_eval;
} history;
void history_add(history *h, long step, float loss);
void history_eval(history *h, long step, float acc);
void history_free(history *h);

/* The number of points the loss curve's running mean spans (n points). */
int curve_mean_window(int n);
int write_curve_svg(const char *path, const long *steps, const float *loss, int n, const long *eval_steps,
                    const float *acc, int n_eval, long total_steps, clipc_error *err);

#endif
