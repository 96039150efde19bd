/*
 * internal.h — what the modules of libclipc share with each other (and with
 * the tests), but not with users. The public API is include/clipc.h.
 */
#ifndef CLIPC_INTERNAL_H
#define CLIPC_INTERNAL_H

#include "clipc.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- util/error.c ------------------------------------------------------ */

/* Formats a message into err (if non-NULL) and returns -1. */
int clipc_fail(clipc_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefixes the message already in err with "what: ". Returns -1. */
int clipc_fail_prefix(clipc_error *err, const char *what);

/* ---- size arithmetic on untrusted input ---------------------------------- */

/* *out = a * b; false (and *out untouched) when that overflows size_t.
 * Every parser multiplies shapes and element sizes through this. */
static inline bool size_mul(size_t a, size_t b, size_t *out) {
    size_t r;
    if (__builtin_mul_overflow(a, b, &r)) return false;
    *out = r;
    return true;
}

/* ---- util/arena.c: bump allocator, one per forward pass ---------------- */

typedef struct arena {
    float *base;
    size_t used, cap; /* in floats */
} arena;

/* Grows the arena (dropping its contents) so cap >= floats. */
int arena_reserve(arena *a, size_t floats, clipc_error *err);
/* Returns floats uninitialised floats, 64-byte aligned. Never fails once
 * arena_reserve sized the arena for the pass: overflow is a programming error
 * and returns NULL (callers check with the pass's size computation). */
float *arena_alloc(arena *a, size_t floats);
void arena_free(arena *a);

/* ---- util/shares.c: a batch as independent per-thread shares ----------- */

/* Runs work(ctx, s, err) for every s in [0, shares). One share runs on the
 * calling thread, whose OpenMP regions and BLAS calls then use every
 * thread. Several run one per thread, each keeping its OpenMP regions to
 * itself. Returns 0, or -1 with err from a failing share. */
int run_shares(int shares, int (*work)(void *ctx, int s, clipc_error *err), void *ctx, clipc_error *err);
/* Of omp_get_max_threads(), how many have a CPU to themselves now: fewer
 * when other processes are runnable (/proc/loadavg's running count less
 * this process's running threads). At least 1. */
int threads_available(void);

/* ---- util/npy.c -------------------------------------------------------- */

typedef struct npy_array {
    char dtype[8];    /* "<f4", "<i4", "|u1", "<i8" */
    int ndim;
    int64_t shape[8];
    void *data;       /* malloc'd, owned */
    size_t count;     /* number of elements */
} npy_array;

int npy_read(const char *path, npy_array *out, clipc_error *err);
void npy_free(npy_array *a);
/* Writes atomically (temporary file + rename). dtype "<f4", "<i4" or "|u1". */
int npy_write(const char *path, const char *dtype, int ndim, const int64_t *shape,
              const void *data, clipc_error *err);

/* ---- util/fileio.c ----------------------------------------------------- */

/* Opens a regular file for reading: its descriptor and size, or -1. */
int open_regular_file(const char *path, size_t *len, clipc_error *err);
int read_file(const char *path, unsigned char **data, size_t *len, clipc_error *err);
/* Creates path atomically: data goes to path.tmp.PID, is fsynced, renamed. */
int write_file_atomic(const char *path, const void *data, size_t len, clipc_error *err);
/* mkdir -p: every missing folder of path; an error names the one that failed. */
int make_dirs(const char *path, clipc_error *err);
/* A name clipc decodes as an image: .jpg, .jpeg, .png (any case). */
bool is_image_file_name(const char *name);
/* The image files under dir, recursively (links not followed, hidden entries
 * skipped), sorted by path: *paths malloc'd, each path too. */
int list_images(const char *dir, char ***paths, int *n, clipc_error *err);

/* ---- util/limits.c: the bounds on untrusted input ---------------------- */

typedef enum limit_id {
    LIMIT_IMAGE_PIXELS,             /* an image's pixels, before decoding and after the resize */
    LIMIT_CSV_RECORD_BYTES,         /* one record (line) of a CSV/TSV file */
    LIMIT_CSV_ROWS,                 /* rows of a CSV/TSV file */
    LIMIT_CLASSES,                  /* classes of a labelled set (class numbers below it) */
    LIMIT_SPM_BYTES,                /* a SentencePiece model file */
    LIMIT_SAFETENSORS_HEADER_BYTES, /* a safetensors file's JSON header */
    LIMIT_PICKLE_BYTES,             /* a PyTorch checkpoint's data.pkl */
    LIMIT_COUNT
} limit_id;
/* The limit: the default, or its environment variable (limit_env) when
 * that holds a positive integer. */
long long limit_of(limit_id id);
const char *limit_env(limit_id id);

/* ---- util/rng.c: deterministic random numbers --------------------------- */

typedef struct rng { uint64_t s[4]; } rng;
void rng_seed(rng *r, uint64_t seed);
uint64_t rng_next(rng *r);
double rng_uniform(rng *r);   /* [0, 1) */
double rng_normal(rng *r);    /* N(0, 1) */
/* perm = a Fisher-Yates shuffle of 0..n-1 drawn from seed. */
void rng_permutation(uint64_t seed, int n, int *perm);

/* ---- util/half.c ------------------------------------------------------- */

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

/* bfloat16 is the top half of a float: inline, so the reduced-precision
 * kernels' loops over them vectorise. Round to nearest even, as torch's
 * .to(torch.bfloat16) and oneDNN round; NaN stays a (quiet) NaN. */
static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16; /* branch-free, so it vectorises */
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : rounded);
}

/* ---- weights/safetensors.c ---------------------------------------------- */

enum st_dtype { ST_F32, ST_F16, ST_BF16, ST_I64, ST_I32, ST_I8, ST_OTHER };

typedef struct st_tensor {
    char *name;
    int dtype;
    int ndim;
    int64_t shape[8];
    const unsigned char *data; /* points into the mapping */
    size_t nbytes;
} st_tensor;

typedef struct st_file {
    void *map;
    size_t map_len;
    st_tensor *tensors;
    int count;
    char *metadata_json; /* the "__metadata__" object as JSON text, or NULL */
    unsigned char **owned; /* PyTorch archives: each tensor's own copy of its data (else NULL) */
} st_file;

int st_open(const char *path, st_file *f, clipc_error *err);
/* weights/pytorch.c: a torch.save zip archive (.pt, .pth, .bin) into the
 * same structure, through a restricted unpickler that refuses any global
 * but the few torch.save uses. */
int pt_open(const char *path, st_file *f, clipc_error *err);
/* The unpickler alone on a data.pkl (the fuzz target): 0 and the number of
 * tensors it names, or -1 with the refusal. */
int pickle_check(const unsigned char *pkl, size_t len, int *tensors, clipc_error *err);
void st_close(st_file *f);
const st_tensor *st_find(const st_file *f, const char *name);
/* Copies a float tensor (F32/F16/BF16) into dst as float32. */
void st_to_f32(const st_tensor *t, float *dst);
/* A metadata value as a string (malloc'd), or NULL when absent. */
char *st_metadata_get(const st_file *f, const char *key);

typedef struct st_out_tensor {
    const char *name;
    int ndim;
    int64_t shape[8];
    const float *data;   /* (ST_I8: int8_t values) */
    int dtype; /* stored as ST_F32 (0, the default), ST_F16, ST_BF16, or ST_I8 as it is */
} st_out_tensor;
/* Writes float tensors and string metadata (keys[i] -> values[i]) atomically. */
int st_write(const char *path, const st_out_tensor *tensors, int count, const char *const *meta_keys,
             const char *const *meta_values, int meta_count, clipc_error *err);

/* ---- image/preprocess.c: a model's preprocessing -------------------------- */

/* Pillow's resample filters (PIL.Image.Resampling's numbers). */
enum { RESAMPLE_BILINEAR = 2, RESAMPLE_BICUBIC = 3 };
/* How a SigLIP model's images are prepared (Hugging Face's
 * preprocessor_config.json): convert('RGB'), resize the whole image with
 * resample, x / 255, (x - mean) / std. */
typedef struct image_style {
    int resample;
    float mean[3], std[3];
} image_style;

/* ---- model/params.c: the one list of a model's tensors ------------------ */

/* Every parameter of a model is a named, shaped slice of one float array.
 * The table is built from the config in OpenAI's state_dict order; loading,
 * saving, initialisation and (later) gradients all walk this one table. */
typedef struct param_spec {
    char name[96];
    int ndim;
    int64_t shape[4];
    size_t offset;  /* in floats from the start of the parameter array */
    size_t numel;
    int init;       /* how clipc_model_init fills it (PI_* below) */
    float init_std;
} param_spec;

enum param_init { PI_NORMAL, PI_ONES, PI_ZEROS, PI_LOGIT_SCALE, PI_BN_VAR, PI_LOGIT_BIAS };

typedef struct param_table {
    param_spec *items;
    int count, cap;
    size_t total; /* floats */
    bool oom;     /* an allocation failed while building */
} param_table;

/* Offsets of one residual attention block's tensors. */
typedef struct block_offsets {
    size_t ln1_w, ln1_b, qkv_w, qkv_b, out_w, out_b, ln2_w, ln2_b, fc_w, fc_b, proj_w, proj_b;
    size_t ls1, ls2; /* LayerScale gammas, (size_t)-1 without */
    size_t lnkv_w, lnkv_b; /* CoCa's cross-attention blocks: the LayerNorm of the image tokens (keys, values) */
} block_offsets;

/* BatchNorm tensors. */
typedef struct bn_offsets { size_t weight, bias, mean, var; } bn_offsets;

typedef struct bottleneck_offsets {
    size_t conv1, conv2, conv3, down_conv; /* down_conv == (size_t)-1 without downsample */
    bn_offsets bn1, bn2, bn3, down_bn;
    int inplanes, planes, stride;
} bottleneck_offsets;

typedef struct model_layout {
    /* ViT */
    size_t v_class, v_pos, v_conv, v_ln_pre_w, v_ln_pre_b, v_ln_post_w, v_ln_post_b, v_proj;
    block_offsets *v_blocks;
    /* SigLIP's ViT: the patch embedding's bias, and the MAP head (a learned
     * probe attending over every token, then LayerNorm and a residual MLP) */
    size_t v_conv_b, v_probe, v_head_ln_w, v_head_ln_b;
    block_offsets v_head; /* qkv_*, out_* (the attention), fc_*, proj_* (the MLP) */
    /* CoCa's attentional pooler (OpenCLIP's AttentionalPooler): queries
     * [Q, E] attend over the image tokens; q [E, E], k and v [E, W] */
    size_t cp_query, cp_q_w, cp_k_w, cp_v_w, cp_in_b, cp_out_w, cp_out_b, cp_lnq_w, cp_lnq_b, cp_lnk_w, cp_lnk_b;
    /* ResNet */
    size_t r_conv[3];
    bn_offsets r_bn[3];
    bottleneck_offsets *r_blocks;
    int r_block_count;
    size_t ap_pos, ap_q_w, ap_q_b, ap_k_w, ap_k_b, ap_v_w, ap_v_b, ap_c_w, ap_c_b;
    /* text */
    size_t t_tok, t_pos, t_ln_w, t_ln_b, t_proj;
    size_t t_head_b; /* SigLIP: t_proj is the head nn.Linear [embed_dim, width], with this bias */
    size_t t_cls;    /* CoCa: the CLS embedding appended to every text */
    /* CoCa's multimodal decoder: self-attention and cross-attention blocks, ln_final, the vocabulary projection */
    block_offsets *d_self, *d_cross;
    size_t d_ln_w, d_ln_b, d_proj;
    block_offsets *t_blocks;
    size_t logit_scale;
    size_t logit_bias; /* SigLIP only (cfg.has_logit_bias) */
    size_t prompt_ctx;                              /* cfg.prompt_ctx > 0 */
    size_t meta_w1, meta_b1, meta_w2, meta_b2;      /* cfg.prompt_meta_hidden > 0 */
    size_t adapter_fc1, adapter_fc2, adapter_ratio; /* cfg.adapter_hidden > 0 */
} model_layout;

int params_build(const clipc_config *cfg, param_table *table, model_layout *layout,
                 clipc_error *err);
void params_free(param_table *table, model_layout *layout);
const param_spec *params_find(const param_table *table, const char *name);
/* Parameters (not BatchNorm statistics) of a table. */
size_t clipc_model_param_count_of(const param_table *table);

/* ---- model/clip.c ------------------------------------------------------- */

struct clipc_model {
    clipc_config cfg;
    param_table table;
    model_layout L;
    float *params;          /* table.total floats, owned */
    char source_dtype[8];
    arena *scratch;         /* activations: one arena per concurrent forward pass */
    int n_scratch;
    /* Reduced precision (model/precision.c): the towers' GEMM weights
     * converted once for CLIPC_BF16 / CLIPC_INT8, sorted by offset. */
    int precision;
    bool lowp_native;       /* oneDNN has a kernel (else emulated on sgemm) */
    struct lowp_weight *lowp;
    int n_lowp;
    /* CoOp's class-specific contexts (cfg.prompt_classes > 0): the class of
     * each, in the order of prompt_learner.ctx (owned, cfg.prompt_classes strings). */
    char **prompt_labels;
    /* SigLIP: the SentencePiece model found beside the checkpoint (owned; NULL: none) */
    char *tokenizer_path;
    /* SigLIP: its image preprocessing (SIGLIP_STYLE unless preprocessor_config.json says otherwise) */
    image_style style;
    /* Debug tap: when set, called with named intermediate activations
     * (rows x cols, row-major) so tests can localise a mismatch. */
    void (*tap)(void *ctx, const char *name, const float *x, int rows, int cols);
    void *tap_ctx;
};

/* Checks a config for values the model code cannot run. */
int config_validate(const clipc_config *cfg, clipc_error *err);
/* A model with its parameter table built and parameters zeroed. */
clipc_model *model_new(const clipc_config *cfg, clipc_error *err);
/* The same for a checkpoint whose tensors hold held_bytes: refused, before
 * the parameters are allocated, when that is fewer bytes than parameters
 * (an architecture guessed from names must not cost gigabytes to refuse). */
clipc_model *model_new_within(const clipc_config *cfg, size_t held_bytes, clipc_error *err);
/* Copies n class names into m->prompt_labels (n must be cfg.prompt_classes). */
int model_set_prompt_labels(clipc_model *m, char *const *names, int n, clipc_error *err);
/* A named architecture's config (NULL if unknown). */
const clipc_config *arch_config(const char *name);
/* Fills the model's parameters with its initialisation, from seed. */
void model_randomize(clipc_model *m, uint64_t seed);
/* The config as safetensors string metadata; returns the count. */
#define MODEL_META_MAX 24
int model_metadata(const clipc_model *m, char values[][64], const char **keys);
/* Saves the model plus extra F32 tensors and metadata in one file. */
int model_save_with(const clipc_model *m, const char *path, const char *dtype, const st_out_tensor *extra,
                    int n_extra, const char *const *extra_keys, const char *const *extra_values, int n_extra_meta,
                    clipc_error *err);

/* template with its "{}" replaced by label (malloc'd), or NULL (no "{}", or out of memory) */
char *template_fill(const char *pattern, const char *label);
/* CoCoOp's meta-network on normalised image features f [n, E]: hid [n, h], shift [n, text width]. */
void prompt_meta_forward(const clipc_model *m, const float *f, int n, float *hid, float *shift);
/* ctx [n, C, n_ctx, width]: the model's context plus image i's shift, for each of C prompts. */
void cocoop_contexts(const clipc_model *m, const float *shift, int n, int C, float *ctx);
/* scores [n, C]: cosines of L2-normalised image features with the classes (the template or
 * learned-prompt classifier; a CoCoOp model's per-image classifiers). */
int zeroshot_cosines(clipc_model *m, clipc_tokenizer *tok, const char *const *labels, int C,
                     const char *const *templates, int n_templates, const float *features, int n, float *scores,
                     clipc_error *err);
struct text_prompt; /* model/tower.h */
/* The tokens of CoOp's prompt "X X ... X label." (n_ctx placeholders, whose
 * embeddings the learned context replaces), truncated to context. */
int prompt_tokens(clipc_tokenizer *tok, const char *label, int n_ctx, int context, int32_t *out, clipc_error *err);
/* clipc_encode_text with CoOp's context vectors in place of tokens 1..n_ctx
 * (prompt NULL: plain clipc_encode_text). */
int model_encode_text_prompted(clipc_model *m, const int32_t *tokens, int n, const struct text_prompt *prompt,
                               float *out, clipc_error *err);

/* ---- model/coca.c ------------------------------------------------------------ */

/* The decoder's logits [n, vocab] for a caption given token by token (teacher
 * forcing) under one image: the cached step path, for tests. */
int coca_teacher_logits(clipc_model *m, const float *pixels, const int32_t *tokens, int n, float *logits,
                        clipc_error *err);

/* ---- model/precision.c: the linear layers at the model's precision ---- */

/* One weight matrix W [out, in] (at params offset `offset`) converted for
 * the model's precision. */
typedef struct lowp_weight {
    size_t offset;
    int out, in;
    uint16_t *bf16;   /* bf16: W rounded, [out, in] (freed once packed) */
    int8_t *q;        /* int8: [out, in], W[r, :] ~ scale[r] q[r, :] (kept: files are written from it) */
    float *scale;     /* [out] */
    float *emulated;  /* without a oneDNN kernel: the bf16 or int8 values as floats */
    void *packed;     /* the same values in oneDNN's blocked layout, or NULL (plain [out, in]) */
    int packed_tag;   /* its dnnl_format_tag_t (64 output channels per block), or -1: packed_desc */
    void *packed_desc;   /* a dnnl_memory_desc_t of a layout no tag names (int8 without AMX), or NULL */
    size_t packed_block; /* bytes from one block of 64 output channels to the next */
    int k_chunk;         /* packed: inputs per chunk (the chunks follow each other) */
    size_t packed_chunk; /* packed: bytes from one chunk of inputs to the next */
} lowp_weight;

void model_lowp_free(clipc_model *m);
/* clipc_model_set_precision, with emulate forcing the sgemm emulation
 * that CPUs without a oneDNN kernel get (for tests). */
int model_set_precision_emulated(clipc_model *m, int precision, bool emulate, clipc_error *err);
/* The converted weight that is exactly the matrix at params offset w_off, or NULL. */
lowp_weight *model_lowp_find(const clipc_model *m, size_t w_off);
/* Replaces an int8 weight's values and scales (an int8 checkpoint's own)
 * and lays them out for the kernel again. -1 when out of memory. */
int model_lowp_adopt_int8(lowp_weight *w, const void *q, const void *scale);
/* How many reduced-precision GEMMs found no kernel and ran at fp32 (all models, this process). */
long model_lowp_fallbacks(void);
/* Floats of workspace model_gemm needs for rows x [in] -> [out]. */
size_t lowp_scratch(int rows, int in, int out);
/* y (=|+=) act(x W^T + b) with W = params + w_off (a whole weight matrix
 * or a row range of one), at the model's precision: gemm_rows for fp32 and
 * for weights that have no converted copy. act: -1 for none, or
 * CLIPC_QUICK_GELU / CLIPC_GELU (not with accumulate), fused into the GEMM
 * where the kernel can. ws: lowp_scratch floats. */
void model_gemm(const clipc_model *m, float *y, int ldy, const float *x, int ldx, size_t w_off, const float *b, int n,
                int in, int out, bool accumulate, int act, float *ws);
/* x [n, D] += c_proj(act(c_fc(ln))) (OpenAI's MLP, H the hidden width, act
 * CLIPC_QUICK_GELU or CLIPC_GELU), the
 * hidden layer kept at the GEMMs' precision; hid [n, H] is used at fp32. */
void model_mlp(const clipc_model *m, float *x, const float *ln, size_t fc_w, const float *fc_b, size_t proj_w,
               const float *proj_b, int n, int D, int H, int act, float *hid, float *ws);

/* ---- weights/checkpoint.c ------------------------------------------------ */

clipc_model *checkpoint_load(const char *path, clipc_error *err);

/* ---- model/layers.c: the kernels, forward (backward comes with training) - */

/* y[n, out] (=, or += when accumulate) x[n, in] · W[out, in]^T + b
 * (PyTorch nn.Linear layout; b may be NULL). */
void linear_forward(float *y, const float *x, const float *W, const float *b, int n, int in,
                    int out, bool accumulate);
/* The same with row strides: y rows ldy apart, x rows ldx apart. */
void gemm_rows(float *y, int ldy, const float *x, int ldx, const float *W, const float *b, int n, int in,
               int out, bool accumulate);
/* Its backward: dx (+)= dy W (dx may be NULL), dW += dy^T x, db += sum dy. */
void linear_backward(float *dx, float *dW, float *db, const float *dy, const float *x, const float *W, int n,
                     int in, int out, bool accumulate_dx);
/* y[n, out] = x[n, in] · W[in, out]          (OpenAI's proj / text_projection) */
void matmul_forward(float *y, const float *x, const float *W, int n, int in, int out);
/* Its backward: dx = dy W^T, dW += x^T dy. */
void matmul_backward(float *dx, float *dW, const float *dy, const float *x, const float *W, int n, int in, int out);
void layernorm_forward(float *y, const float *x, const float *w, const float *b, int n, int dim, float eps);
/* Its backward from the input x: dx (=|+=) ..., dw += ..., db += ... */
void layernorm_backward(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w, int n,
                        int dim, float eps, bool accumulate_dx);
/* dx = dy * act'(x) for CLIPC_QUICK_GELU / CLIPC_GELU, x the pre-activation. */
void activation_backward(float *dx, const float *dy, const float *x, size_t n, int activation);
void quick_gelu_forward(float *x, size_t n);
/* x = act(x) for CLIPC_QUICK_GELU / CLIPC_GELU. */
void activation_forward(float *x, size_t n, int activation);
void gelu_forward(float *x, size_t n);
void relu_forward(float *x, size_t n);
/* Multi-head self-attention on packed sequences. qkv [T, 3D] rows of all
 * sequences back to back; seq_start[s], seq_len[s] locate sequence s; causal
 * masks future positions; query_row (NULL = all rows) limits sequence s to
 * the query at absolute row query_row[s]. out [T, D] (only computed rows are
 * written). bf16: Q K^T and P V with bf16 inputs in sequences of 32 or
 * more (the reduced precisions; shorter ones stay fp32).
 * scratch needs attention_scratch floats. For training, probs (non-NULL,
 * with query_row NULL, fp32) receives each head's [len, len] probabilities
 * at probs_offset[s] + h * len * len. */
size_t attention_scratch(int max_len, int head_dim);
void attention_forward(float *out, const float *qkv, const int *seq_start, const int *seq_len,
                       const int *query_row, int n_seq, int D, int heads, bool causal, bool bf16, float *scratch,
                       float *probs, const size_t *probs_offset, const unsigned char *hidden);
/* Attention's two products with bf16 inputs and fp32 sums
 * (attention_bf16.c), on AMX tiles where the CPU has them, else on
 * AVX512-BF16 dot products, else sgemm on the same bf16 values. scores
 * [nq, lds] = Q K^T (unscaled) with lds = attention_bf16_stride(len); out
 * [nq, hd] (rows ldo apart) = P V with P [nq, lds]; q, k, v rows ld apart.
 * scratch: attention_bf16_scratch floats. attention_bf16_best is the
 * fastest kernel here; attention_bf16_use(k) runs k (or the best, if k is
 * not available or < 0) from then on, for tests of each kernel. */
enum { ATTENTION_BF16_SGEMM, ATTENTION_BF16_DOTS, ATTENTION_BF16_AMX };
int attention_bf16_best(void);
int attention_bf16_use(int kernel);
const char *attention_bf16_name(int kernel);
int attention_bf16_stride(int len);
size_t attention_bf16_scratch(int max_len, int head_dim);
void attention_scores_bf16(float *scores, int lds, const float *q, const float *k, int ld, int nq, int len, int hd,
                           float *scratch);
void attention_values_bf16(float *out, int ldo, const float *p, int lds, const float *v, int ld, int nq, int len,
                           int hd, float *scratch);
/* hidden (NULL: none): per packed row, whether the last row of its sequence
 * (CoCa's CLS token) must not attend it (OpenCLIP's cls mask of padding). */
/* Queries attending over one set of keys and values, no mask: per head,
 * out [nq, D] (rows ldo apart) = softmax(q K^T / sqrt(D / heads)) V, with q
 * rows ldq apart and k, v rows ldkv apart; scores: nq * nk floats. One
 * thread. Cross-attention (CoCa's pooler and decoder, SigLIP's MAP head) and
 * the decoder's cached self-attention run it. */
void attention_queries(float *out, int ldo, const float *q, int ldq, const float *k, const float *v, int ldkv, int nq,
                       int nk, int D, int heads, float *scores);
/* The same keeping (keep) each head's probabilities in probs [heads][nq][nk]
 * for the backward pass (else probs is nq * nk floats of work). */
void attention_queries_keep(float *out, int ldo, const float *q, int ldq, const float *k, const float *v, int ldkv,
                            int nq, int nk, int D, int heads, float *probs, bool keep);
/* x = softmax(x) in place (vectorised exp); returns logsumexp of the input. */
double softmax_row(float *x, int n);
/* Its backward from the kept probabilities: dq (=), dk and dv (+=); ds: nq * nk floats. */
void attention_queries_backward(float *dq, int ldq, float *dk, float *dv, int ldkv, const float *dout, int ldo,
                                const float *q, const float *k, const float *v, const float *probs, int nq, int nk,
                                int D, int heads, float *ds);
/* Its backward from the kept probabilities: dqkv [T, 3D] is overwritten. */
size_t attention_backward_scratch(int max_len, int head_dim);
void attention_backward(float *dqkv, const float *dout, const float *qkv, const float *probs,
                        const size_t *probs_offset, const int *seq_start, const int *seq_len, int n_seq, int D,
                        int heads, float *scratch);
/* conv2d (no bias), NCHW, square kernel, via im2col + GEMM. */
size_t conv2d_scratch(int C, int H, int W, int k, int stride, int pad);
void conv2d_forward(float *y, const float *x, const float *w, int N, int C, int H, int W, int Cout,
                    int k, int stride, int pad, float *scratch);
/* Eval-mode BatchNorm (eps 1e-5), optionally followed by ReLU, in place. */
void batchnorm_forward(float *x, const float *w, const float *b, const float *mean,
                       const float *var, int N, int C, int HW, bool relu);
/* AvgPool2d(k) with stride k, NCHW. */
void avgpool_forward(float *y, const float *x, int N, int C, int H, int W, int k);
/* CLIP-Adapter (Gao et al. 2021, eq. 2-3) on image features f [n, E]:
 *   hid = relu(f W1^T) [n, h],  a = relu(hid W2^T) [n, E],  out = ratio a + (1 - ratio) f
 * out may be f; hid and a keep the intermediates for the backward. */
void adapter_forward(float *out, float *hid, float *a, const float *f, const float *W1, const float *W2, float ratio,
                     int n, int E, int h);
/* Its backward: dW1, dW2 added into; df (NULL: not wanted) overwritten. */
void adapter_backward(float *df, float *dW1, float *dW2, const float *dout, const float *f, const float *hid,
                      const float *a, const float *W1, const float *W2, float ratio, int n, int E, int h);

/* ---- image/ -------------------------------------------------------------- */

/* An image as Pillow holds it after Image.open: mode decides how it is
 * resized and converted to RGB. */
enum image_mode {
    IM_L,     /* 8-bit gray */
    IM_LA,    /* gray + alpha (resized premultiplied) */
    IM_RGB,
    IM_RGBA,  /* resized premultiplied (RGBa), alpha dropped by convert */
    IM_CMYK,  /* Adobe-inverted CMYK JPEG */
    IM_P,     /* palette indices; resized with NEAREST */
    IM_I,     /* 32-bit integer gray (16-bit PNG); resized in double precision */
    IM_1      /* bilevel; resized with NEAREST */
};

typedef struct image {
    int mode;
    int width, height;
    int channels;           /* bytes per pixel for 8-bit modes; 1 for I (int32) */
    unsigned char *pixels;  /* IM_I: int32_t samples */
    unsigned char palette[256 * 3];
} image;

int image_decode(const unsigned char *data, size_t len, const char *name, image *out,
                 clipc_error *err);
/* The formats' decoders (image_decode picks one by the file's signature),
 * and the pixel-count bound each applies before allocating. */
int decode_tiff(const unsigned char *data, size_t len, const char *name, image *out, clipc_error *err);
int decode_webp(const unsigned char *data, size_t len, const char *name, image *out, clipc_error *err);
int image_check_size(const char *name, long long w, long long h, clipc_error *err);
void image_free(image *im);
/* Pillow's Image.resize(size, BICUBIC) (NEAREST for P and 1). */
int image_resize(const image *in, int width, int height, image *out, clipc_error *err);
int image_resize_filter(const image *in, int width, int height, int filter, image *out, clipc_error *err);

/* Pillow's Image.crop((x, y, x + w, y + h)). */
int image_crop(const image *in, int x, int y, int w, int h, image *out, clipc_error *err);
/* Pillow's convert('RGB') into packed uint8 RGB. */
void image_to_rgb(const image *im, unsigned char *rgb);
/* _transform(size) up to ToTensor: resize short side, center-crop, RGB.
 * rgb receives size*size*3 bytes. */
int image_resize_crop_rgb(const image *im, int size, unsigned char *rgb, clipc_error *err);
/* The same from an encoded image in memory, or a file: decode, resize,
 * crop. Errors name the image. */
int image_memory_rgb(const void *data, size_t len, const char *name, int size, unsigned char *rgb, clipc_error *err);
int image_file_rgb(const char *path, int size, unsigned char *rgb, clipc_error *err);
/* SigLIP's: convert('RGB'), then a resize to size x size (no crop). */
int image_resize_square_rgb(const image *im, int size, int filter, unsigned char *rgb, clipc_error *err);
/* A decoded image as a model takes it: [3, size, size] floats; style NULL:
 * CLIP's _transform, else SigLIP's image processor with those settings. */
int image_pixels(const image *im, const image_style *style, int size, float *out, clipc_error *err);
/* SigLIP's defaults: bicubic, mean = std = 0.5. */
extern const image_style SIGLIP_STYLE;
/* An encoded image preprocessed in that style at size x size. */
int image_style_pixels(const void *data, size_t len, const char *name, const image_style *style, int size, float *out,
                       clipc_error *err);
/* ToTensor + Normalize(CLIP mean, std): packed RGB -> [3, size, size]. */
void image_normalize(const unsigned char *rgb, int size, float *out);
/* RGB pixels [height, width, 3] as a PNG file in memory (*out malloc'd). */
int image_encode_png(const unsigned char *rgb, int width, int height, unsigned char **out, size_t *len,
                     clipc_error *err);

/* ---- tokenizer/bpe.c ------------------------------------------------------ */

/* Words longer than this many bytes are merged by the O(n log n) heap path
 * (identical ids); tests set it to compare both paths. */
extern size_t bpe_long_threshold;

/* ---- tokenizer/spm.c: SigLIP's and Gemma's SentencePiece tokenizers ---- */

typedef struct spm_tokenizer spm_tokenizer;
spm_tokenizer *spm_tokenizer_load(const char *path, clipc_error *err);
void spm_tokenizer_free(spm_tokenizer *t);
int spm_tokenizer_vocab(const spm_tokenizer *t);
int spm_tokenizer_encode(const spm_tokenizer *t, const char *text, int32_t **ids, int *n, clipc_error *err);
/* One padded row of context ids (clipc_tokenize for a SentencePiece tokenizer). */
int spm_tokenizer_row(const spm_tokenizer *t, const char *text, int context, int truncate, int32_t *out,
                      clipc_error *err);

/* ---- tokenizer/clean.c --------------------------------------------------- */

/* SigLIP's text before SentencePiece: "▁" + text (its "▁" made spaces),
 * lower-cased if lower, ASCII punctuation removed, whitespace runs made one
 * space, stripped (malloc'd, or NULL with err set). */
char *text_siglip_canonical(const char *text, bool lower, clipc_error *err);

/* basic_clean + whitespace_clean + lower(): the text that the pre-split regex
 * sees. Returns a malloc'd UTF-8 string, or NULL with err set. */
char *text_clean(const char *text, clipc_error *err);

#endif
