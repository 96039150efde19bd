/* eval.h — evaluation the way the research community reports CLIP models
 * (LAION's CLIP_benchmark and the CLIP paper): zero-shot top-1/top-5 and
 * mean per-class recall, retrieval recall@k, and linear probes on frozen
 * image features. Internal to libclipc; the CLI and the tests use it. */
#ifndef CLIPC_EVAL_H
#define CLIPC_EVAL_H

#include "../train/train.h"

/* ---- labelled image sets (dataset.c) ------------------------------------------- */

/* Fashion-MNIST (decoded in memory), a folder with one sub-folder per
 * class, or a CSV/TSV of image path + class label. */
typedef struct image_set {
    int count, n_classes;
    char **class_names; /* n_classes, owned */
    int *labels;        /* count, in 0..n_classes-1 */
    char **paths;       /* count image files, or NULL for Fashion-MNIST */
    fmnist fm;          /* the images when paths == NULL */
    char name[64];      /* "fashion-mnist", the folder's or the file's name */
} image_set;

/* A dataset argument's name: "fashion-mnist", or the folder's or file's
 * last path component ("photos/" -> "photos"). */
void dataset_name(const char *spec, char *name, size_t cap);

/* spec is "fashion-mnist", "fashion-mnist-inverted" (its intensities
 * inverted: the domain-shift benchmark), a directory or a .csv/.tsv file. split picks
 * Fashion-MNIST's "train" or "test" part (ignored otherwise). A CSV needs
 * the columns img_key (image path) and label_key (class name or number). */
int image_set_open(const char *spec, const char *split, const char *img_key, const char *label_key, image_set *out,
                   clipc_error *err);
/* Replaces the class names with the lines of a file (one per class, in
 * class order: sorted folder names, or numeric CSV labels). */
int image_set_read_classnames(image_set *s, const char *path, clipc_error *err);
/* True when every class name is a number (a CSV of class numbers before
 * --classnames names them): prompts like "a photo of a 3." mean nothing. */
bool image_set_numbered(const image_set *s);
/* Image i as the model's input [3, R, R] (clipc_model_preprocess_file). */
int image_set_pixels(const image_set *s, int i, const clipc_model *m, float *out, clipc_error *err);
/* Images rows[0..n) (rows NULL: first..first+n-1) as the model's input [n, 3, R, R],
 * decoded on all cores; a failure reports the first failing image's error. */
int image_set_pixels_batch(const image_set *s, const int *rows, int first, int n, const clipc_model *m, float *out,
                           clipc_error *err);
/* Image i resized and center-cropped to size x size RGB bytes (thumbnails). */
int image_set_rgb(const image_set *s, int i, int size, unsigned char *rgb, clipc_error *err);
void image_set_free(image_set *s);
/* Renumbers s's labels into ref's classes, by name (a test set that holds
 * a subset of the training classes); fails on a class ref lacks. */
int image_set_align_classes(const image_set *ref, image_set *s, clipc_error *err);

/* Called after each encoded batch (NULL for none). */
typedef void (*eval_progress)(void *ctx, long done, long total);

/* L2-normalised image features [n, E] of images rows[0..n) (rows NULL:
 * first..first+n-1), decoded on all cores in batches. */
int image_set_features(clipc_model *m, const image_set *s, const int *rows, int first, int n, float *features, eval_progress progress,
                       void *ctx, clipc_error *err);

/* ---- metrics (metrics.c) --------------------------------------------------------- */

/* Position of scores[target] when the n scores are sorted in descending
 * order with ties broken by index (a stable sort): 0 is the top. Every
 * metric here ranks this way, so results are deterministic under ties. */
int rank_of(const float *scores, int n, int target);

typedef struct class_metrics {
    double acc1, acc5;            /* top-1, top-min(5, C) accuracy */
    double mean_per_class_recall; /* mean over classes that occur of correct/occurrences */
    long *confusion;              /* C x C counts: row = true class, column = top-1 prediction; owned */
    int n_classes;
} class_metrics;

/* From scores [n, C] and true labels. */
int classification_metrics(const float *scores, int n, int C, const int *labels, class_metrics *out,
                           clipc_error *err);
void class_metrics_free(class_metrics *m);

/* Zero-shot classification of the first n images of s (0: all): class
 * embeddings from the templates, each image scored by its cosine with
 * each class (logit_scale does not change the order), then the metrics. */
int zeroshot_evaluate(clipc_model *m, clipc_tokenizer *tok, const image_set *s, int n, const char *const *templates,
                      int n_templates, eval_progress progress, void *ctx, class_metrics *out, clipc_error *err);

/* Recall@k both ways over L2-normalised features: images [n_img, E], texts
 * [n_txt, E], text t describing image text_image[t] (an image may have
 * several texts). Image→text: hit when any of the image's texts ranks in
 * the top k; text→image: when its image does. k above the set size counts
 * every query as a hit. Writes i2t[j], t2i[j] for each ks[j]. */
int retrieval_recall(const float *images, int n_img, const float *texts, int n_txt, int E, const int *text_image,
                     const int *ks, int n_k, double *i2t, double *t2i, clipc_error *err);

/* ---- linear probe (linprobe.c) ---------------------------------------------------- */

/* Multinomial logistic regression with an L2 penalty on the weights (not
 * the biases), minimised with L-BFGS:
 *   J(W, b) = (1/n) sum_i CE(softmax(W x_i + b), y_i) + (lambda/2) |W|^2
 * W is [C, d+1], the last column the bias. Warm-starts from W's contents. */
int logreg_fit(const float *X, const int *y, int n, int d, int C, double lambda, double *W, clipc_error *err);
/* Scores [n, C] = W x + b. */
void logreg_scores(const double *W, const float *X, int n, int d, int C, float *scores);

typedef struct probe_result {
    double lambda;       /* chosen on the validation split */
    double val_acc1;     /* validation top-1 at that lambda */
    int n_train, n_val;  /* sizes of the split used for the sweep */
    class_metrics test;  /* of the final fit (on all training rows) on the test set */
} probe_result;

/* The seeded order of n training images from which the linear probe, and
 * fine-tuning's --shots, take the first K of each class: the same seed
 * gives both the same shots. */
void shot_order(uint64_t seed, int n, int *order);

/* The training rows linear_probe reads with these arguments (the fit and
 * validation rows; all of them unless shots > 0), ascending, in rows[ntr]:
 * a k-shot probe needs the features of those images only. */
int probe_rows(const int *ytr, int ntr, int C, int shots, uint64_t seed, int *rows, int *n_rows, clipc_error *err);

/* The CLIP paper's protocol: carve a validation split from the training
 * features (20%, or with shots > 0 a disjoint min(shots, 4) per class),
 * sweep lambda over 1e-6..1e2 (every decade, then a refinement around the
 * best), refit on the training rows with the best lambda and score the
 * test features. shots > 0 trains on `shots` examples per class. */
int linear_probe(const float *Xtr, const int *ytr, int ntr, const float *Xte, const int *yte, int nte, int d, int C,
                 int shots, uint64_t seed, probe_result *out, clipc_error *err);

/* ---- captions (captioning.c) --------------------------------------------------------- */

/* The tokens both sides are scored on: lower-cased, Unicode punctuation
 * made spaces, whitespace runs one space, stripped (malloc'd; NULL: out of memory). */
char *caption_normalize(const char *text);

typedef struct caption_scores {
    double bleu[4]; /* BLEU-1..4 over the corpus */
    double cider;   /* CIDEr-D, the mean over images */
} caption_scores;

/* pycocoevalcap's Bleu(4) and Cider for n images: hyps[i] is image i's
 * caption, refs[ref_first[i] .. ref_first[i + 1]) its references (at least
 * one); cider_each (NULL: not wanted) receives each image's CIDEr-D. */
int caption_scores_compute(const char *const *hyps, const char *const *refs, const int *ref_first, int n,
                           caption_scores *out, double *cider_each, clipc_error *err);

/* ---- reports (report.c) ------------------------------------------------------------ */

/* The confusion matrix as a heat map: rows true, columns predicted, each
 * cell shaded by its share of the row. */
int write_confusion_svg(const char *path, const class_metrics *m, char *const *class_names, const char *title,
                        clipc_error *err);

/* Text→image results as a picture: one row per query, its k images as
 * embedded PNG thumbnails with class and score, framed green when of the
 * query's wanted class (wanted[n_q]) and red, crossed, when not; each row
 * says how many are. hits/scores are [n_q, k]. */
int write_retrieval_sheet(const char *path, const image_set *s, const char *const *queries, int n_q, int k,
                          const int *hits, const float *scores, const int *wanted, clipc_error *err);

#endif
