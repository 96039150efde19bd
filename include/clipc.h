/*
 * clipc.h — CLIP (Contrastive Language-Image Pre-training) in C.
 *
 * The one public header of libclipc. What lives here:
 *   - models:     load a checkpoint (.safetensors or PyTorch .pt/.bin, OpenAI/OpenCLIP
 *                 or Hugging Face naming) of the CLIP, SigLIP or CoCa family, create a
 *                 randomly initialised one, save, encode at fp32, bf16 or int8.
 *   - tokenizer:  OpenAI's byte-level BPE tokenizer, exactly (and its decoding);
 *                 SigLIP's and SigLIP 2's SentencePiece tokenizers.
 *   - images:     decode JPEG/PNG and preprocess exactly as OpenAI's _transform(n),
 *                 or as a model's own image processor.
 *   - captions:   CoCa's decoder: beam search and sampling (clipc_caption).
 *   - zero-shot:  classifiers and probabilities (softmax, or SigLIP's sigmoids).
 *   - errors:     every fallible call takes a clipc_error* and returns 0 on
 *                 success, -1 (or NULL) on failure with err->message set.
 *
 * The library never prints and never exits. Objects are owned by the caller
 * and freed with the matching *_free function. A model may be used by one
 * thread at a time (it owns its scratch arena); it uses OpenMP/BLAS threads
 * internally.
 */
#ifndef CLIPC_H
#define CLIPC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CLIPC_VERSION "0.1.0"

/* ---- errors ------------------------------------------------------------ */

typedef struct clipc_error {
    char message[512];
} clipc_error;

/* ---- models ------------------------------------------------------------ */

enum clipc_vision_tower { CLIPC_VIT = 0, CLIPC_RESNET = 1 };
enum clipc_activation { CLIPC_QUICK_GELU = 0, CLIPC_GELU = 1, CLIPC_GELU_TANH = 2 };
/* CLIP (OpenAI, OpenCLIP): softmax over cosines, class/EOT-token pooling.
 * SigLIP (Zhai et al. 2023; SigLIP 2's fixed-resolution models): a sigmoid
 * per image-text pair, attention-pooled image tokens (the "MAP" head), a
 * bidirectional text tower pooled at its last position, SentencePiece.
 * CoCa (Yu et al. 2022, OpenCLIP's CoCa): CLIP plus an attentional pooler
 * on the image tokens, a learned CLS token at the end of each text, and a
 * multimodal decoder that writes captions (clipc_caption). */
enum clipc_family { CLIPC_CLIP = 0, CLIPC_SIGLIP = 1, CLIPC_COCA = 2 };

/* The constructor arguments of OpenAI's clip.model.CLIP, plus the head
 * counts and activation that build_model() would otherwise guess. */
typedef struct clipc_config {
    int vision_tower;          /* CLIPC_VIT or CLIPC_RESNET */
    int embed_dim;             /* joint embedding size */
    int image_resolution;      /* input side in pixels */
    int vision_layers;         /* ViT: depth */
    int vision_resnet_layers[4]; /* ResNet: bottlenecks per stage */
    int vision_width;          /* ViT: width; ResNet: stem width (64 for RN50) */
    int vision_patch_size;     /* ViT only */
    int vision_heads;
    int context_length;        /* 77 */
    int vocab_size;            /* 49408 */
    int text_width;
    int text_heads;
    int text_layers;
    int activation;            /* CLIPC_QUICK_GELU or CLIPC_GELU */
    int has_logit_bias;        /* SigLIP-trained: a learnable scalar "logit_bias" */
    /* Per tower, as Hugging Face and OpenCLIP models vary them: the MLP's
     * hidden width (OpenAI: 4x the tower width), the LayerNorm epsilon
     * (1e-5), the image tower's activation (`activation` is the text
     * tower's), and OpenCLIP's LayerScale (learned per-channel gains
     * ls_1/ls_2 on both residual branches of every block). */
    int vision_mlp_width, text_mlp_width;
    float vision_ln_eps, text_ln_eps;
    int vision_activation;
    int vision_layer_scale, text_layer_scale;
    /* What `clipc finetune` adds to a model (0: none). prompt_ctx: CoOp's
     * learned context vectors ("prompt_learner.ctx" [prompt_ctx, text_width]),
     * which then replace the templates of the zero-shot classifier;
     * adapter_hidden: CLIP-Adapter's bottleneck on the image features
     * ("adapter.visual.fc1.weight" [adapter_hidden, embed_dim], fc2 back,
     * and the residual ratio "adapter.visual.ratio"), applied by encode_image;
     * prompt_meta_hidden: CoCoOp's meta-network ("prompt_learner.meta_net.
     * linear1/linear2", embed_dim -> hidden -> text_width), which shifts the
     * context by a vector computed from each image; prompt_classes: CoOp's
     * class-specific contexts (CSC), "prompt_learner.ctx" [prompt_classes,
     * prompt_ctx, text_width], one per class the file names in its
     * "prompt_classnames" metadata (a JSON array), which the classifier's
     * labels are matched against. */
    int prompt_ctx, adapter_hidden, prompt_meta_hidden, prompt_classes;
    int family; /* CLIPC_CLIP, CLIPC_SIGLIP (embed_dim is then the image tower's width) or CLIPC_COCA */
    /* CoCa: the attentional pooler's learned queries and heads (the first
     * query's output is the image embedding, the others the tokens the
     * decoder reads), and the multimodal decoder's layers (a causal
     * self-attention block and a cross-attention block each) and heads; the
     * decoder is as wide as the text tower, which is embed_dim wide. */
    int pool_queries, pool_heads, decoder_layers, decoder_heads;
} clipc_config;

typedef struct clipc_model clipc_model;

/* Loads a checkpoint: .safetensors, or a torch.save zip archive (.pt, .pth,
 * .bin; read by a restricted unpickler that refuses anything but tensors).
 * The naming (OpenAI/OpenCLIP or Hugging Face CLIPModel) is detected from
 * the tensor names; Hugging Face files need the config.json that sits
 * beside them, and an OpenCLIP open_clip_config.json beside a file is read
 * too. F32, F16 and BF16 tensors are read, and clipc's own int8 files.
 * A missing, unexpected or mis-shaped tensor is an error naming that tensor. */
clipc_model *clipc_model_load(const char *path, clipc_error *err);

/* A model of a named architecture (see clipc_arch_names) with OpenAI's
 * initialize_parameters() distributions, deterministic in seed. */
clipc_model *clipc_model_init(const char *arch, uint64_t seed, clipc_error *err);

/* Writes the model as .safetensors in OpenAI naming, F32, with the config in
 * the metadata. The file appears atomically (temporary file + rename). */
int clipc_model_save(const clipc_model *model, const char *path, clipc_error *err);
/* The same with the weights stored as "F32", "F16" or "BF16" (logit_scale
 * and BatchNorm statistics stay F32). Loading converts back to F32. */
int clipc_model_save_as(const clipc_model *model, const char *path, const char *dtype, clipc_error *err);

void clipc_model_free(clipc_model *model);

/* Names accepted by clipc_model_init, NULL-terminated. */
const char *const *clipc_arch_names(void);

const clipc_config *clipc_model_config(const clipc_model *model);
size_t clipc_model_param_count(const clipc_model *model);
/* The dtype the weights had in the file ("F32", "F16", "BF16", "int8", or "mixed";
 * scalars and BatchNorm statistics, kept F32 in 16-bit files, do not count). */
const char *clipc_model_source_dtype(const clipc_model *model);
/* exp(logit_scale): the inverse temperature that multiplies cosines. */
float clipc_model_logit_scale(const clipc_model *model);
/* logit_bias (SigLIP: logits = exp(logit_scale) cos + logit_bias), 0 without. */
float clipc_model_logit_bias(const clipc_model *model);
/* "CLIP" or "SigLIP". */
const char *clipc_model_family_name(const clipc_model *model);

/* encode_image: pixels are n preprocessed images [n,3,R,R] (R =
 * image_resolution); out receives [n, embed_dim] un-normalised projections,
 * as OpenAI's model.encode_image. */
int clipc_encode_image(clipc_model *model, const float *pixels, int n, float *out,
                       clipc_error *err);

/* encode_text: tokens are n rows of context_length ids (as clipc_tokenize
 * writes them); pooling takes the first position of the largest id (EOT).
 * out receives [n, embed_dim] un-normalised projections. */
int clipc_encode_text(clipc_model *model, const int32_t *tokens, int n, float *out,
                      clipc_error *err);

/* ---- precision ----------------------------------------------------------- */

/* The arithmetic of the towers' linear layers. fp32 is the reference.
 * bf16: bf16 weights and GEMM inputs, fp32 accumulation; int8: int8
 * weights (per output channel scales) and dynamically quantised inputs (per
 * row), int32 accumulation. LayerNorm, softmax, activations, attention and
 * the residual stream stay fp32. Kernels come from oneDNN, chosen at run
 * time for the CPU (AMX, AVX512-BF16/VNNI, AVX-512, AVX2). */
enum clipc_precision { CLIPC_FP32 = 0, CLIPC_BF16 = 1, CLIPC_INT8 = 2 };

/* Converts the weights once for that precision (fp32 drops the copies).
 * A model loaded from an int8 checkpoint starts at CLIPC_INT8, any other
 * at CLIPC_FP32. */
int clipc_model_set_precision(clipc_model *model, int precision, clipc_error *err);
int clipc_model_precision(const clipc_model *model);
/* "fp32", "bf16", "int8"; and back (an unknown name is an error). */
const char *clipc_precision_name(int precision);
int clipc_precision_parse(const char *name, int *precision, clipc_error *err);
/* Which GEMM implementation runs at that precision on this CPU, e.g.
 * "oneDNN 2.6.3 brg:avx512_core_amx_bf16"; written into buf. */
const char *clipc_precision_kernel(int precision, char *buf, size_t cap);

/* Divides each of the n rows of length dim by its L2 norm. */
void clipc_normalize_rows(float *rows, int n, int dim);

/* ---- tokenizer --------------------------------------------------------- */

typedef struct clipc_tokenizer clipc_tokenizer;

#define CLIPC_SOT 49406
#define CLIPC_EOT 49407

/* The BPE merges built into the library (OpenAI's bpe_simple_vocab_16e6). */
clipc_tokenizer *clipc_tokenizer_new(clipc_error *err);
/* A SentencePiece model file: SigLIP's spiece.model (Hugging Face's
 * SiglipTokenizer: lower-cased, punctuation removed, </s> appended) or
 * SigLIP 2's Gemma tokenizer.model (<bos> prepended); a tokenizer_config.json
 * beside it says which and overrides the special tokens. clipc_tokenize
 * then pads rows with the pad id, as padding="max_length" does. */
clipc_tokenizer *clipc_tokenizer_load(const char *path, clipc_error *err);
/* The tokenizer a model's texts need: the built-in BPE for CLIP models; for
 * SigLIP, the SentencePiece model found beside its checkpoint at load. */
clipc_tokenizer *clipc_model_tokenizer(const clipc_model *model, clipc_error *err);
/* SigLIP: the SentencePiece file found beside the checkpoint at load (NULL: none). */
const char *clipc_model_tokenizer_path(const clipc_model *model);
/* How many ids the tokenizer can produce. */
int clipc_tokenizer_vocab_size(const clipc_tokenizer *tok);
void clipc_tokenizer_free(clipc_tokenizer *tok);

/* SimpleTokenizer.encode: BPE ids of the cleaned text, no SOT/EOT.
 * *ids is malloc'd and owned by the caller. Invalid UTF-8 is an error. */
int clipc_tokenizer_encode(clipc_tokenizer *tok, const char *text, int32_t **ids,
                           int *n_ids, clipc_error *err);

/* clip.tokenize: [SOT] + ids + [EOT], zero-padded to context. Longer texts
 * are an error unless truncate is set, in which case the row is cut and its
 * last entry becomes EOT. out must hold context entries. */
int clipc_tokenize(clipc_tokenizer *tok, const char *text, int context, int truncate,
                   int32_t *out, clipc_error *err);

/* ---- images ------------------------------------------------------------ */

/* The decoded-image limit's default: larger images are refused before
 * decoding (Pillow's decompression-bomb error threshold is 2x89.5 MP; ours
 * is 1/2). The environment variable of the same name overrides it. */
#define CLIPC_MAX_IMAGE_PIXELS (89478485LL)

/* Decodes a JPEG or PNG file and applies OpenAI's _transform(size):
 * bicubic resize of the short side to size (Pillow's arithmetic),
 * center crop, convert('RGB'), CLIP mean/std normalisation.
 * out receives [3, size, size] float32. */
int clipc_preprocess_file(const char *path, int size, float *out, clipc_error *err);

/* The same from an encoded image in memory (name is used in messages). */
int clipc_preprocess_memory(const void *data, size_t len, const char *name, int size,
                            float *out, clipc_error *err);

/* The preprocessing a model was trained with, at its image_resolution R:
 * CLIP's above, or SigLIP's (Hugging Face's SiglipImageProcessor:
 * convert('RGB'), bicubic resize of the whole image to R x R without
 * cropping, mean = std = 0.5). out receives [3, R, R]. */
int clipc_model_preprocess_file(const clipc_model *model, const char *path, float *out, clipc_error *err);
int clipc_model_preprocess_memory(const clipc_model *model, const void *data, size_t len, const char *name,
                                  float *out, clipc_error *err);

/* ---- captions (CoCa) --------------------------------------------------------- */

/* How clipc_caption decodes. Beam search (beams > 1; the default is
 * OpenCLIP's: 6 beams in 3 groups, scores summing the raw logits, as its
 * generate() does) or sampling (beams <= 1): top_k most likely tokens
 * (top_k 1: greedy) or the top_p nucleus, at a temperature, from seed.
 * Captions have at least min_len and at most max_len tokens, SOT and EOT
 * included (OpenCLIP's min_seq_len 5 and seq_len 30). */
typedef struct clipc_caption_options {
    int beams, beam_groups;
    int top_k;
    float top_p;       /* 0: off; else keep the smallest set of tokens holding top_p of the probability */
    float temperature;
    int min_len, max_len;
    uint64_t seed;
} clipc_caption_options;

void clipc_caption_defaults(clipc_caption_options *o);
/* Captions of n preprocessed images [n, 3, R, R] (a CoCa model): ids[i] is
 * malloc'd, lens[i] ids long, SOT first and EOT last unless max_len cut it. */
int clipc_caption(clipc_model *model, const float *pixels, int n, const clipc_caption_options *o, int32_t **ids,
                  int *lens, clipc_error *err);
/* SimpleTokenizer.decode: BPE ids back to text (bytes joined, "</w>" made
 * spaces), SOT, EOT and padding left out, stripped; malloc'd. */
char *clipc_tokenizer_decode(clipc_tokenizer *tok, const int32_t *ids, int n, clipc_error *err);

/* ---- zero-shot classification -------------------------------------------- */

/* OpenAI's 80 ImageNet prompt templates ("a bad photo of a {}.", ...). */
const char *const *clipc_imagenet_templates(int *count);

/* The zero-shot classifier of OpenAI's prompt-engineering notebook: for each
 * label, the normalised mean of the normalised text embeddings of every
 * template with "{}" replaced by the label. weights: [n_labels, embed_dim].
 * A model fine-tuned with CoOp (config prompt_ctx > 0) uses its learned
 * prompt "[ctx] label." instead of the templates; with class-specific
 * contexts (prompt_classes > 0) each label must be one of its classes. */
int clipc_zeroshot_classifier(clipc_model *model, clipc_tokenizer *tok, const char *const *labels, int n_labels,
                              const char *const *templates, int n_templates, float *weights, clipc_error *err);

/* Zero-shot probabilities [n_images, n_labels] of every kind of model: the
 * classifier above with clipc_zeroshot_probs, or, for a model fine-tuned
 * with CoCoOp (config prompt_meta_hidden > 0), a classifier per image.
 * image_features as clipc_encode_image writes them. */
int clipc_zeroshot_classify(clipc_model *model, clipc_tokenizer *tok, const char *const *labels, int n_labels,
                            const char *const *templates, int n_templates, const float *image_features, int n_images,
                            float *probs, clipc_error *err);

/* probs[i, l] = softmax_l(exp(logit_scale) * cos(image_features[i], weights[l]));
 * SigLIP: sigmoid(exp(logit_scale) * cos + logit_bias), independent per label. */
void clipc_zeroshot_probs(const clipc_model *model, const float *image_features, int n_images,
                          const float *weights, int n_labels, float *probs);

#ifdef __cplusplus
}
#endif
#endif /* CLIPC_H */
