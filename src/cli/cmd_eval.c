/* cmd_eval.c — `clipc eval zeroshot|retrieval|linear-probe` and
 * `clipc retrieve`: evaluation as LAION's CLIP_benchmark reports it (its
 * JSON layout: dataset, model, task, metrics), plus a confusion-matrix
 * picture, and text→image look-ups over a labelled image set. */
#include "cli.h"
#include "../eval/eval.h"

#include <cblas.h>
#include <ctype.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char EVAL_USAGE[] =
    "usage: clipc eval TASK [-m MODEL] ...   (-m defaults to the shipped model)\n"
    "\n"
    "  clipc eval zeroshot [-m MODEL] --dataset fashion-mnist|DIR|FILE.csv [--classnames FILE]\n"
    "                      [--templates simple|imagenet|FILE] [--out DIR]\n"
    "      top-1, top-5, mean per-class recall, confusion matrix (text, and DIR/confusion.svg)\n"
    "      and DIR/zeroshot.json. DIR datasets have one sub-folder per class; a CSV has the\n"
    "      columns --csv-img-key (filepath) and --csv-label-key (label). Templates default to\n"
    "      'simple' (\"a photo of a {}.\") for fashion-mnist and 'imagenet' (OpenAI's 80) otherwise.\n"
    "\n"
    "  clipc eval retrieval [-m MODEL] --data FILE.csv [--csv-img-key filepath] [--csv-caption-key title]\n"
    "                       [--out DIR]\n"
    "      image->text and text->image recall@1/5/10; rows with the same image give it several captions.\n"
    "\n"
    "  clipc eval linear-probe [-m MODEL] --dataset fashion-mnist|DIR|FILE.csv [--test-dataset D]\n"
    "                          [--shots K] [--seed N] [--out DIR]\n"
    "      logistic regression on frozen image features; L2 strength swept on a validation split\n"
    "      of the training set. fashion-mnist uses its train/test parts; a DIR with train/ and\n"
    "      test/ sub-folders uses those; otherwise give --test-dataset.\n"
    "\n"
    "  clipc eval captioning [-m COCA] (--data FILE.csv | --dataset fashion-mnist) [--limit N]\n"
    "                        [--beam N | --top-k K | --top-p P] [--max-len L] [--out DIR]\n"
    "      captions of the images (default: the shipped CoCa, beam search) scored against the references\n"
    "      (a CSV's captions of each image; Fashion-MNIST's caption templates of the class): BLEU-1..4 and\n"
    "      CIDEr-D as pycocoevalcap computes them, and for Fashion-MNIST the share naming the class.\n"
    "\n"
    "  Results go to --out DIR (default clipc-eval/TASK-DATASET, e.g. clipc-eval/zeroshot-fashion-mnist);\n"
    "  --json prints the JSON to stdout as well.\n";

typedef struct eval_args {
    const char *model, *dataset, *test_dataset, *data, *classnames, *templates, *out;
    const char *img_key, *label_key, *caption_key;
    long shots, seed, limit;
    bool json;
    clipc_caption_options caption; /* captioning's decoding */
    bool sampling, beam_given;
} eval_args;

static int parse_eval_args(int argc, char **argv, eval_args *a) {
    *a = (eval_args){.out = NULL, .img_key = "filepath", .label_key = "label", .caption_key = "title",
                     .seed = 0};
    clipc_caption_defaults(&a->caption);
    long lv;
    for (int i = 0; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char **slot = !strcmp(f, "-m")                ? &a->model
                            : !strcmp(f, "--dataset")       ? &a->dataset
                            : !strcmp(f, "--test-dataset")  ? &a->test_dataset
                            : !strcmp(f, "--data")          ? &a->data
                            : !strcmp(f, "--classnames")    ? &a->classnames
                            : !strcmp(f, "--templates")     ? &a->templates
                            : !strcmp(f, "--out")           ? &a->out
                            : !strcmp(f, "--csv-img-key")   ? &a->img_key
                            : !strcmp(f, "--csv-label-key") ? &a->label_key
                            : !strcmp(f, "--csv-caption-key") ? &a->caption_key
                                                            : NULL;
        if (slot) {
            if (!v) return cli_error("%s needs a value", f);
            *slot = v;
            i++;
        } else if (!strcmp(f, "--shots")) {
            if (!cli_int("--shots", v, 1, 1000000, &a->shots)) return 1;
            i++;
        } else if (!strcmp(f, "--seed")) {
            if (!cli_int("--seed", v, 0, 1L << 62, &a->seed)) return 1;
            i++;
        } else if (!strcmp(f, "--limit")) {
            if (!cli_int("--limit", v, 1, 1L << 30, &a->limit)) return 1;
            i++;
        } else if (!strcmp(f, "--beam")) {
            if (!cli_int("--beam", v, 1, 64, &lv)) return 1;
            a->caption.beams = (int)lv, a->beam_given = true, i++;
            if (a->caption.beams % a->caption.beam_groups) a->caption.beam_groups = 1;
        } else if (!strcmp(f, "--top-k")) {
            if (!cli_int("--top-k", v, 1, 1 << 20, &lv)) return 1;
            a->caption.top_k = (int)lv, a->sampling = true, i++;
        } else if (!strcmp(f, "--top-p")) {
            char *end;
            double p = v ? strtod(v, &end) : -1;
            if (!v || end == v || *end || !(p >= 0 && p <= 1)) return cli_error("--top-p needs a number in 0..1");
            a->caption.top_p = (float)p, a->caption.top_k = 0, a->sampling = true, i++;
        } else if (!strcmp(f, "--max-len")) {
            if (!cli_int("--max-len", v, 2, 4096, &lv)) return 1;
            a->caption.max_len = (int)lv, i++;
        } else if (!strcmp(f, "--json")) a->json = true;
        else return cli_unexpected("eval", cmd_eval, f);
    }
    return 0;
}

/* Progress with a start time: the context is the label, the start kept here. */
typedef struct progress_ctx {
    const char *what;
    double start;
} progress_ctx;

static void progress_cb(void *ctx, long done, long total) {
    progress_ctx *p = ctx;
    cli_progress(p->what, done, total, p->start);
}

/* Features [s->count, E] of a set's images; with rows, of rows[0..n_rows)
 * only, at their row positions (the others are zero, and not read). */
static int features_of(clipc_model *m, const image_set *s, const int *rows, int n_rows, const char *what,
                       float **features) {
    int E = clipc_model_config(m)->embed_dim, n = rows ? n_rows : s->count;
    *features = calloc((size_t)s->count * E, sizeof **features);
    float *compact = rows ? malloc((size_t)n * E * sizeof *compact) : *features;
    if (!*features || !compact) {
        if (rows) free(compact);
        return cli_error("out of memory");
    }
    progress_ctx p = {what, cli_now()};
    clipc_error err;
    int rc = image_set_features(m, s, rows, 0, n, compact, progress_cb, &p, &err) ? cli_error("%s", err.message) : 0;
    if (rows) {
        for (int i = 0; i < n && rc == 0; i++)
            memcpy(*features + (size_t)rows[i] * E, compact + (size_t)i * E, (size_t)E * sizeof *compact);
        free(compact);
    }
    return rc;
}

static int make_out_dir(const char *dir) {
    clipc_error err;
    return make_dirs(dir, &err) ? cli_error("%s", err.message) : 0; /* parents too */
}

/* CLIP_benchmark's result layout, written atomically to DIR/NAME.json. */
static int write_result(const eval_args *a, const char *file, const char *dataset, const char *task, cJSON *metrics,
                        cJSON *extra) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "dataset", dataset);
    cJSON_AddStringToObject(root, "model", a->model ? a->model : DEFAULT_MODEL_FILE);
    cJSON_AddStringToObject(root, "pretrained", a->model ? a->model : DEFAULT_MODEL_FILE);
    cJSON_AddStringToObject(root, "task", task);
    cJSON_AddItemToObject(root, "metrics", metrics);
    cJSON_AddStringToObject(root, "language", "en");
    if (extra) cJSON_AddItemToObject(root, "details", extra);
    char *text = cJSON_Print(root), path[4096];
    cJSON_Delete(root);
    if (!text) return cli_error("out of memory");
    snprintf(path, sizeof path, "%s/%s", a->out, file);
    clipc_error err;
    int rc = write_file_atomic(path, text, strlen(text), &err) ? cli_error("%s", err.message) : 0;
    if (rc == 0 && a->json) printf("%s\n", text);
    fflush(stdout); /* results before the file notes on stderr */
    if (rc == 0) fprintf(stderr, "wrote %s\n", path);
    free(text);
    return rc;
}

static void print_metrics(const class_metrics *cm, char *const *names, bool matrix) {
    printf("  top-1 %.2f%%   top-%d %.2f%%   mean per-class recall %.2f%%\n", 100 * cm->acc1,
           cm->n_classes < 5 ? cm->n_classes : 5, 100 * cm->acc5, 100 * cm->mean_per_class_recall);
    if (!matrix || cm->n_classes > 30) return;
    int C = cm->n_classes, w = 12;
    printf("\nconfusion matrix (rows: true class, columns: predicted)\n%*s", w, "");
    for (int k = 0; k < C; k++) printf(" %6.6s", names[k]);
    printf("  recall\n");
    for (int r = 0; r < C; r++) {
        long total = 0;
        for (int k = 0; k < C; k++) total += cm->confusion[(size_t)r * C + k];
        printf("%*.*s", w, w, names[r]);
        for (int k = 0; k < C; k++) printf(" %6ld", cm->confusion[(size_t)r * C + k]);
        printf("  %5.1f%%\n", total ? 100.0 * cm->confusion[(size_t)r * C + r] / total : 0.0);
    }
}

static cJSON *class_metrics_json(const class_metrics *cm, const char *prefix) {
    cJSON *m = cJSON_CreateObject();
    char key[64];
    snprintf(key, sizeof key, "%sacc1", prefix);
    cJSON_AddNumberToObject(m, key, cm->acc1);
    snprintf(key, sizeof key, "%sacc5", prefix);
    cJSON_AddNumberToObject(m, key, cm->acc5);
    snprintf(key, sizeof key, "%smean_per_class_recall", prefix);
    cJSON_AddNumberToObject(m, key, cm->mean_per_class_recall);
    return m;
}

static cJSON *confusion_json(const class_metrics *cm, char *const *names) {
    cJSON *d = cJSON_CreateObject(), *rows = cJSON_AddArrayToObject(d, "confusion_matrix");
    cJSON_AddItemToObject(d, "classnames", cJSON_CreateStringArray((const char *const *)names, cm->n_classes));
    for (int r = 0; r < cm->n_classes; r++) {
        cJSON *row = cJSON_CreateArray();
        for (int k = 0; k < cm->n_classes; k++)
            cJSON_AddItemToArray(row, cJSON_CreateNumber((double)cm->confusion[(size_t)r * cm->n_classes + k]));
        cJSON_AddItemToArray(rows, row);
    }
    return d;
}

/* ---- zero-shot ---------------------------------------------------------------- */

static int eval_zeroshot(const eval_args *a) {
    if (!a->dataset) return cli_error("eval zeroshot: needs --dataset fashion-mnist|DIR|FILE.csv");
    image_set set;
    clipc_error err;
    if (image_set_open(a->dataset, "test", a->img_key, a->label_key, &set, &err)) return cli_error("%s", err.message);
    int rc = 0;
    if (a->classnames && image_set_read_classnames(&set, a->classnames, &err)) rc = cli_error("%s", err.message);
    if (rc == 0 && !a->classnames && image_set_numbered(&set)) /* zero-shot prompts need the classes' names */
        rc = cli_error("%s: its classes are numbers (0..%d): give --classnames FILE with their names, one per line",
                       set.name, set.n_classes - 1);
    const char *template_arg = a->templates ? a->templates : set.paths ? "imagenet" : "simple";
    char *template_text = NULL;
    const char **templates = NULL;
    int n_templates = 0;
    if (rc == 0) rc = cli_templates(template_arg, &template_text, &templates, &n_templates);
    clipc_model *m = rc == 0 ? cli_load_model(a->model) : NULL;
    if (!m) rc = 1;
    if (rc == 0) rc = make_out_dir(a->out);
    class_metrics cm = {0};
    clipc_tokenizer *tok = NULL;
    if (rc == 0) {
        progress_ctx p = {"images", cli_now()};
        tok = clipc_model_tokenizer(m, &err);
        if (!tok || zeroshot_evaluate(m, tok, &set, 0, templates, n_templates, progress_cb, &p, &cm, &err))
            rc = cli_error("%s", err.message);
    }
    if (rc == 0) {
        printf("zero-shot classification of %s: %d images, %d classes, %d template%s\n", set.name, set.count,
               set.n_classes, n_templates, n_templates == 1 ? "" : "s");
        print_metrics(&cm, set.class_names, true);
        fflush(stdout);
        char svg[4096], title[256];
        snprintf(svg, sizeof svg, "%s/confusion.svg", a->out);
        snprintf(title, sizeof title, "zero-shot %s: top-1 %.2f%%", set.name, 100 * cm.acc1);
        if (write_confusion_svg(svg, &cm, set.class_names, title, &err)) rc = cli_error("%s", err.message);
        else fprintf(stderr, "wrote %s\n", svg);
    }
    if (rc == 0) {
        cJSON *details = confusion_json(&cm, set.class_names);
        cJSON_AddNumberToObject(details, "n_samples", set.count);
        cJSON_AddNumberToObject(details, "n_templates", n_templates);
        rc = write_result(a, "zeroshot.json", set.name, "zeroshot_classification", class_metrics_json(&cm, ""), details);
    }
    class_metrics_free(&cm);
    clipc_tokenizer_free(tok);
    if (template_text) free((void *)templates);
    free(template_text);
    clipc_model_free(m);
    image_set_free(&set);
    return rc;
}

/* ---- retrieval ---------------------------------------------------------------- */

static int compare_path_index(const void *x, const void *y, void *paths) {
    const int *a = x, *b = y;
    int c = strcmp(((char **)paths)[*a], ((char **)paths)[*b]);
    return c ? c : (*a > *b) - (*a < *b);
}

/* Texts in batches, L2-normalised features [n, E]. */
static int text_features(clipc_model *m, char *const *texts, int n, float *features) {
    const clipc_config *c = clipc_model_config(m);
    enum { TEXT_BATCH = 256 };
    int32_t *tokens = malloc((size_t)TEXT_BATCH * c->context_length * sizeof *tokens);
    clipc_error err;
    clipc_tokenizer *tok = clipc_model_tokenizer(m, &err);
    int rc = tokens && tok ? 0 : cli_error("%s", tok ? "out of memory" : err.message);
    double start = cli_now();
    for (int done = 0; done < n && rc == 0; done += TEXT_BATCH) {
        int b = n - done < TEXT_BATCH ? n - done : TEXT_BATCH;
        for (int i = 0; i < b && rc == 0; i++) /* CLIP_benchmark's tokenizers truncate to the context */
            if (clipc_tokenize(tok, texts[done + i], c->context_length, 1, tokens + (size_t)i * c->context_length, &err))
                rc = cli_error("caption %d: %s", done + i + 1, err.message);
        if (rc == 0 && clipc_encode_text(m, tokens, b, features + (size_t)done * c->embed_dim, &err))
            rc = cli_error("%s", err.message);
        if (rc == 0) clipc_normalize_rows(features + (size_t)done * c->embed_dim, b, c->embed_dim);
        if (rc == 0) cli_progress("texts", done + b, n, start);
    }
    free(tokens);
    clipc_tokenizer_free(tok);
    return rc;
}

static int eval_retrieval(const eval_args *a) {
    if (!a->data) return cli_error("eval retrieval: needs --data FILE.csv (image path and caption columns)");
    csv_pairs rows;
    clipc_error err;
    if (csv_load(a->data, a->img_key, a->caption_key, 0, &rows, &err)) return cli_error("%s", err.message);
    /* One image per distinct path (in order of first appearance), each row one caption. */
    int n = rows.count, n_img = 0;
    int *order = malloc((size_t)n * sizeof *order), *text_image = malloc((size_t)n * sizeof *text_image);
    int *first_row = malloc((size_t)n * sizeof *first_row);
    image_set images = {0};
    images.paths = malloc((size_t)n * sizeof *images.paths);
    int rc = order && text_image && first_row && images.paths ? 0 : cli_error("out of memory");
    if (rc == 0) {
        for (int i = 0; i < n; i++) order[i] = i;
        qsort_r(order, (size_t)n, sizeof *order, compare_path_index, rows.paths);
        for (int s = 0; s < n;) { /* each run of equal paths: one image, named by its first row */
            int e = s;
            while (e < n && !strcmp(rows.paths[order[e]], rows.paths[order[s]])) e++;
            for (int j = s; j < e; j++) first_row[order[j]] = order[s];
            s = e;
        }
        for (int i = 0; i < n; i++) {
            if (first_row[i] == i) {
                text_image[i] = n_img;
                images.paths[n_img++] = rows.paths[i];
            } else text_image[i] = text_image[first_row[i]];
        }
        images.count = n_img;
    }
    clipc_model *m = rc == 0 ? cli_load_model(a->model) : NULL;
    if (!m) rc = 1;
    if (rc == 0) rc = make_out_dir(a->out);
    float *img_feats = NULL, *txt_feats = NULL;
    if (rc == 0) rc = features_of(m, &images, NULL, 0, "images", &img_feats);
    if (rc == 0) {
        int E = clipc_model_config(m)->embed_dim;
        txt_feats = malloc((size_t)n * E * sizeof *txt_feats);
        rc = txt_feats ? text_features(m, rows.captions, n, txt_feats) : cli_error("out of memory");
        static const int ks[3] = {1, 5, 10};
        double i2t[3], t2i[3];
        if (rc == 0 && retrieval_recall(img_feats, n_img, txt_feats, n, E, text_image, ks, 3, i2t, t2i, &err))
            rc = cli_error("%s", err.message);
        if (rc == 0) {
            printf("retrieval on %s: %d images, %d captions\n", a->data, n_img, n);
            printf("  image->text  R@1 %.2f%%  R@5 %.2f%%  R@10 %.2f%%\n", 100 * i2t[0], 100 * i2t[1], 100 * i2t[2]);
            printf("  text->image  R@1 %.2f%%  R@5 %.2f%%  R@10 %.2f%%\n", 100 * t2i[0], 100 * t2i[1], 100 * t2i[2]);
            /* CLIP_benchmark's names: "image retrieval" is text->image, "text retrieval" image->text */
            cJSON *metrics = cJSON_CreateObject();
            char key[64];
            for (int j = 0; j < 3; j++) {
                snprintf(key, sizeof key, "image_retrieval_recall@%d", ks[j]);
                cJSON_AddNumberToObject(metrics, key, t2i[j]);
                snprintf(key, sizeof key, "text_retrieval_recall@%d", ks[j]);
                cJSON_AddNumberToObject(metrics, key, i2t[j]);
            }
            cJSON *details = cJSON_CreateObject();
            cJSON_AddNumberToObject(details, "n_images", n_img);
            cJSON_AddNumberToObject(details, "n_captions", n);
            const char *base = strrchr(a->data, '/');
            rc = write_result(a, "retrieval.json", base ? base + 1 : a->data, "zeroshot_retrieval", metrics, details);
        }
    }
    free(img_feats), free(txt_feats), free(order), free(text_image), free(first_row), free(images.paths);
    csv_free(&rows);
    clipc_model_free(m);
    return rc;
}

/* ---- linear probe --------------------------------------------------------------- */

static int open_probe_sets(const eval_args *a, image_set *train, image_set *test) {
    clipc_error err;
    struct stat st;
    char train_dir[4096], test_dir[4096];
    const char *train_spec = a->dataset, *test_spec = a->test_dataset;
    bool fm = !strcmp(a->dataset, "fashion-mnist") || !strcmp(a->dataset, "fashion-mnist-inverted");
    if (!fm && !test_spec) { /* DIR/train + DIR/test */
        snprintf(train_dir, sizeof train_dir, "%s/train", a->dataset);
        snprintf(test_dir, sizeof test_dir, "%s/test", a->dataset);
        if (stat(train_dir, &st) || !S_ISDIR(st.st_mode) || stat(test_dir, &st) || !S_ISDIR(st.st_mode))
            return cli_error("eval linear-probe: %s has no train/ and test/ sub-folders; give --test-dataset",
                             a->dataset);
        train_spec = train_dir, test_spec = test_dir;
    }
    if (!test_spec) test_spec = a->dataset; /* Fashion-MNIST's test split */
    if (image_set_open(train_spec, "train", a->img_key, a->label_key, train, &err)) return cli_error("%s", err.message);
    if (image_set_open(test_spec, "test", a->img_key, a->label_key, test, &err) ||
        image_set_align_classes(train, test, &err))
        return cli_error("%s", err.message);
    if (a->classnames && image_set_read_classnames(train, a->classnames, &err)) return cli_error("%s", err.message);
    if (train_spec == train_dir) dataset_name(a->dataset, train->name, sizeof train->name); /* DIR, not "train" */
    return 0;
}

static int eval_captioning(const eval_args *a);

static int eval_linear_probe(const eval_args *a) {
    if (!a->dataset) return cli_error("eval linear-probe: needs --dataset fashion-mnist|DIR|FILE.csv");
    image_set train = {0}, test = {0};
    int rc = open_probe_sets(a, &train, &test);
    clipc_model *m = rc == 0 ? cli_load_model(a->model) : NULL;
    if (!m) rc = 1;
    if (rc == 0) rc = make_out_dir(a->out);
    float *ftr = NULL, *fte = NULL;
    probe_result pr = {0};
    /* k-shot: embed only the training images the probe fits and validates on */
    int *rows = NULL, n_rows = 0;
    if (rc == 0 && a->shots) {
        clipc_error err;
        if (!(rows = malloc((size_t)train.count * sizeof *rows))) rc = cli_error("out of memory");
        else if (probe_rows(train.labels, train.count, train.n_classes, (int)a->shots, (uint64_t)a->seed, rows, &n_rows,
                            &err))
            rc = cli_error("%s", err.message);
    }
    if (rc == 0) rc = features_of(m, &train, rows, n_rows, "train images", &ftr);
    if (rc == 0) rc = features_of(m, &test, NULL, 0, "test images", &fte);
    free(rows);
    if (rc == 0) {
        clipc_error err;
        int E = clipc_model_config(m)->embed_dim;
        fprintf(stderr, "fitting logistic regression (L2 sweep 1e-6..1e2)...\n");
        double start = cli_now();
        if (linear_probe(ftr, train.labels, train.count, fte, test.labels, test.count, E, train.n_classes,
                         (int)a->shots, (uint64_t)a->seed, &pr, &err))
            rc = cli_error("%s", err.message);
        else fprintf(stderr, "fitted in %.1f s\n", cli_now() - start);
    }
    if (rc == 0) {
        printf("linear probe on %s: %d training images, %d test images, %d classes, embed dim %d\n", train.name,
               train.count, test.count, train.n_classes, clipc_model_config(m)->embed_dim);
        if (a->shots)
            printf("  %ld-shot: %d images to fit, %d to validate (only these were embedded)\n", a->shots, pr.n_train,
                   pr.n_val);
        printf("  L2 strength %.3g chosen on %d validation images (top-1 %.2f%% there)\n", pr.lambda, pr.n_val,
               100 * pr.val_acc1);
        print_metrics(&pr.test, train.class_names, false);
        cJSON *metrics = class_metrics_json(&pr.test, "lp_");
        cJSON *details = confusion_json(&pr.test, train.class_names);
        cJSON_AddNumberToObject(details, "l2_lambda", pr.lambda);
        cJSON_AddNumberToObject(details, "val_acc1", pr.val_acc1);
        cJSON_AddNumberToObject(details, "n_fit", pr.n_train);
        cJSON_AddNumberToObject(details, "n_val", pr.n_val);
        cJSON_AddNumberToObject(details, "shots", (double)a->shots);
        cJSON_AddNumberToObject(details, "seed", (double)a->seed);
        rc = write_result(a, a->shots ? "linear_probe_fewshot.json" : "linear_probe.json", train.name, "linear_probe",
                          metrics, details);
    }
    class_metrics_free(&pr.test);
    free(ftr), free(fte);
    clipc_model_free(m);
    image_set_free(&train);
    image_set_free(&test);
    return rc;
}

int cmd_eval(int argc, char **argv) {
    if (argc < 1 || !strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
        fputs(EVAL_USAGE, argc < 1 ? stderr : stdout);
        return argc < 1 ? 2 : 0;
    }
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help")) {
            fputs(EVAL_USAGE, stdout);
            return 0;
        }
    eval_args a;
    if (parse_eval_args(argc - 1, argv + 1, &a)) return 1;
    /* one folder per task and dataset by default, so that one evaluation
     * does not overwrite another's results */
    char out[4200], name[64] = "";
    if (!a.out) {
        if (a.dataset || a.data) dataset_name(a.dataset ? a.dataset : a.data, name, sizeof name);
        snprintf(out, sizeof out, "clipc-eval/%s%s%s", argv[0], name[0] ? "-" : "", name);
        a.out = out;
    }
    if (!strcmp(argv[0], "zeroshot")) return eval_zeroshot(&a);
    if (!strcmp(argv[0], "retrieval")) return eval_retrieval(&a);
    if (!strcmp(argv[0], "linear-probe")) return eval_linear_probe(&a);
    if (!strcmp(argv[0], "captioning")) return eval_captioning(&a);
    return cli_error("eval: unknown task '%s' (zeroshot, retrieval, linear-probe, captioning)", argv[0]);
}

/* ---- captioning ------------------------------------------------------------------- */

/* Whether the normalised caption names the class: one of its four names as whole words. */
static bool names_class(const char *caption, int label) {
    char padded[1024], name[128];
    snprintf(padded, sizeof padded, " %s ", caption);
    for (int k = 0; k < 4; k++) {
        char *norm = caption_normalize(fmnist_synonym(label, k));
        if (!norm) continue;
        snprintf(name, sizeof name, " %s ", norm);
        free(norm);
        if (strstr(padded, name)) return true;
    }
    return false;
}

static int eval_captioning(const eval_args *a) {
    if (!a->data == !a->dataset)
        return cli_error("eval captioning: give --data FILE.csv (image path and caption columns) or --dataset fashion-mnist");
    if (a->sampling && a->beam_given) return cli_error("eval captioning: --beam searches, --top-k/--top-p sample: give one");
    clipc_caption_options o = a->caption;
    if (a->sampling) o.beams = 1;
    clipc_error err;
    csv_pairs rows = {0};
    image_set set = {0};
    bool fm = a->dataset != NULL;
    int n = 0, rc = 0, *first = NULL;
    const char **refs = NULL;
    char (*variants)[128] = NULL; /* Fashion-MNIST: every caption of every class, [10 * V] */
    int V = fmnist_caption_variants();
    if (fm) {
        if (strcmp(a->dataset, "fashion-mnist"))
            return cli_error("eval captioning: --dataset takes fashion-mnist (its generated captions are the references); "
                             "for other images give --data FILE.csv");
        if (image_set_open("fashion-mnist", "test", NULL, NULL, &set, &err)) return cli_error("%s", err.message);
        n = a->limit > 0 && a->limit < set.count ? (int)a->limit : set.count;
        variants = malloc((size_t)10 * V * sizeof *variants);
        refs = malloc((size_t)n * V * sizeof *refs);
        first = malloc(((size_t)n + 1) * sizeof *first);
        if (!variants || !refs || !first) rc = cli_error("out of memory");
        for (int l = 0; rc == 0 && l < 10; l++)
            for (int k = 0; k < V; k++) fmnist_caption_variant(l, k, variants[l * V + k], sizeof variants[0]);
        for (int i = 0; rc == 0 && i < n; i++) {
            first[i] = i * V;
            for (int k = 0; k < V; k++) refs[i * V + k] = variants[set.labels[i] * V + k];
        }
        if (rc == 0) first[n] = n * V;
    } else {
        if (csv_load(a->data, a->img_key, a->caption_key, 0, &rows, &err)) return cli_error("%s", err.message);
        /* one image per distinct path, in order of first appearance; its rows' captions are its references */
        int *order = malloc((size_t)rows.count * sizeof *order);
        set.paths = malloc((size_t)rows.count * sizeof *set.paths);
        refs = malloc((size_t)rows.count * sizeof *refs);
        first = malloc(((size_t)rows.count + 1) * sizeof *first);
        int *image_of = malloc((size_t)rows.count * sizeof *image_of);
        if (!order || !set.paths || !refs || !first || !image_of) rc = cli_error("out of memory");
        for (int i = 0; rc == 0 && i < rows.count; i++) order[i] = i;
        if (rc == 0) qsort_r(order, (size_t)rows.count, sizeof *order, compare_path_index, rows.paths);
        for (int s = 0; rc == 0 && s < rows.count;) { /* a run of equal paths: one image, at its first row */
            int e = s, lo = order[s];
            while (e < rows.count && !strcmp(rows.paths[order[e]], rows.paths[order[s]])) lo = order[e] < lo ? order[e] : lo, e++;
            for (int j = s; j < e; j++) image_of[order[j]] = lo;
            s = e;
        }
        /* images numbered by first appearance, references grouped per image */
        int *number = malloc((size_t)rows.count * sizeof *number), *count = calloc((size_t)rows.count + 1, sizeof *count);
        if (rc == 0 && (!number || !count)) rc = cli_error("out of memory");
        for (int i = 0; rc == 0 && i < rows.count; i++)
            if (image_of[i] == i) number[i] = n, set.paths[n++] = rows.paths[i];
        for (int i = 0; rc == 0 && i < rows.count; i++) count[number[image_of[i]] + 1]++;
        for (int i = 0; rc == 0 && i < n; i++) count[i + 1] += count[i];
        for (int i = 0; rc == 0 && i <= n; i++) first[i] = count[i];
        for (int i = 0; rc == 0 && i < rows.count; i++) refs[count[number[image_of[i]]]++] = rows.captions[i];
        if (a->limit > 0 && a->limit < n) n = (int)a->limit;
        set.count = n;
        free(order), free(image_of), free(number), free(count);
    }
    clipc_model *m = rc == 0 ? cli_load_model_or(a->model, DEFAULT_CAPTION_MODEL_FILE, "CLIPC_CAPTION_MODEL") : NULL;
    if (rc == 0 && !m) rc = 1;
    if (rc == 0 && clipc_model_config(m)->family != CLIPC_COCA)
        rc = cli_error("eval captioning: the model is %s; captions need a CoCa model", clipc_model_family_name(m));
    if (rc == 0 && o.max_len > clipc_model_config(m)->context_length) o.max_len = clipc_model_config(m)->context_length;
    if (rc == 0) rc = make_out_dir(a->out);
    clipc_tokenizer *tok = rc == 0 ? clipc_tokenizer_new(&err) : NULL;
    if (rc == 0 && !tok) rc = cli_error("%s", err.message);
    char **captions = rc == 0 ? calloc((size_t)n, sizeof *captions) : NULL;
    int R = m ? clipc_model_config(m)->image_resolution : 0, B = 16;
    float *pixels = rc == 0 ? malloc((size_t)B * 3 * R * R * sizeof *pixels) : NULL;
    if (rc == 0 && (!captions || !pixels)) rc = cli_error("out of memory");
    double start = cli_now();
    for (int done = 0; rc == 0 && done < n; done += B) {
        int b = n - done < B ? n - done : B;
        int32_t *ids[16];
        int lens[16];
        if (image_set_pixels_batch(&set, NULL, done, b, m, pixels, &err) || clipc_caption(m, pixels, b, &o, ids, lens, &err)) {
            rc = cli_error("%s", err.message);
            break;
        }
        for (int i = 0; i < b; i++) {
            if (rc == 0 && !(captions[done + i] = clipc_tokenizer_decode(tok, ids[i], lens[i], &err)))
                rc = cli_error("%s", err.message);
            free(ids[i]);
        }
        cli_progress("captions", done + b, n, start);
    }
    caption_scores sc;
    double *cider = rc == 0 ? malloc((size_t)n * sizeof *cider) : NULL;
    if (rc == 0 && (!cider || caption_scores_compute((const char *const *)captions, refs, first, n, &sc, cider, &err)))
        rc = cli_error("%s", cider ? err.message : "out of memory");
    int named = 0;
    for (int i = 0; rc == 0 && fm && i < n; i++) {
        char *norm = caption_normalize(captions[i]);
        named += norm && names_class(norm, set.labels[i]);
        free(norm);
    }
    if (rc == 0) {
        printf("captioning of %s: %d images, %s decoding\n", fm ? "fashion-mnist (test)" : a->data, n,
               o.beams > 1 ? "beam search" : o.top_k == 1 ? "greedy" : "sampled");
        printf("  BLEU-1 %.4f  BLEU-2 %.4f  BLEU-3 %.4f  BLEU-4 %.4f  CIDEr-D %.4f\n", sc.bleu[0], sc.bleu[1], sc.bleu[2],
               sc.bleu[3], sc.cider);
        if (fm) printf("  captions naming the right class: %d of %d (%.2f%%)\n", named, n, 100.0 * named / n);
        cJSON *root = cJSON_CreateObject(), *metrics = cJSON_AddObjectToObject(root, "metrics"), *list;
        cJSON_AddStringToObject(root, "dataset", fm ? "fashion-mnist" : a->data);
        cJSON_AddStringToObject(root, "model", a->model ? a->model : DEFAULT_CAPTION_MODEL_FILE);
        cJSON_AddStringToObject(root, "task", "captioning");
        for (int k = 0; k < 4; k++) {
            char key[24];
            snprintf(key, sizeof key, "bleu_%d", k + 1);
            cJSON_AddNumberToObject(metrics, key, sc.bleu[k]);
        }
        cJSON_AddNumberToObject(metrics, "cider_d", sc.cider);
        if (fm) cJSON_AddNumberToObject(metrics, "class_named", (double)named / n);
        list = cJSON_AddArrayToObject(root, "captions");
        for (int i = 0; i < n; i++) {
            cJSON *e = cJSON_CreateObject();
            if (fm) cJSON_AddNumberToObject(e, "index", i), cJSON_AddStringToObject(e, "class", set.class_names[set.labels[i]]);
            else cJSON_AddStringToObject(e, "image", set.paths[i]);
            cJSON_AddStringToObject(e, "caption", captions[i]);
            cJSON_AddNumberToObject(e, "cider_d", cider[i]);
            cJSON_AddItemToArray(list, e);
        }
        char path[4200], *json = cJSON_Print(root);
        snprintf(path, sizeof path, "%s/captioning.json", a->out);
        if (!json || write_file_atomic(path, json, strlen(json), &err)) rc = cli_error("%s", json ? err.message : "out of memory");
        else if (a->json) printf("%s\n", json);
        else printf("wrote %s\n", path);
        free(json);
        cJSON_Delete(root);
    }
    for (int i = 0; captions && i < n; i++) free(captions[i]);
    free(captions), free(cider), free(pixels), free(refs), free(first), free(variants);
    clipc_tokenizer_free(tok);
    clipc_model_free(m);
    if (fm) image_set_free(&set);
    else free(set.paths), csv_free(&rows);
    return rc;
}

/* ---- retrieve ---------------------------------------------------------------- */

/* Whether text holds name (ASCII case-insensitive, '_' as a space) as whole
 * words, allowing a plural "s"/"es": "a pair of trousers" holds "trouser". */
static bool holds_name(const char *text, const char *name) {
    size_t n = strlen(name);
    for (const char *p = text; *p; p++) {
        if (p > text && isalnum((unsigned char)p[-1])) continue;
        size_t i = 0;
        while (i < n && p[i] && tolower((unsigned char)p[i]) == tolower((unsigned char)(name[i] == '_' ? ' ' : name[i]))) i++;
        if (i < n) continue;
        const char *after = p + n;
        if (*after == 's') after++;
        else if (after[0] == 'e' && after[1] == 's') after += 2;
        if (!isalnum((unsigned char)*after)) return true;
    }
    return false;
}

/* The class a retrieval query asks for, so the hits of other classes can be
 * marked: the longest class name the query holds, else the class whose
 * "a photo of a {}." embedding is nearest the query's (q, class_emb: L2-normalised). */
static int query_class(const image_set *s, const char *query, const float *q, const float *class_emb, int E,
                       bool *named) {
    int best = -1;
    for (int c = 0; c < s->n_classes; c++)
        if (holds_name(query, s->class_names[c]) && (best < 0 || strlen(s->class_names[c]) > strlen(s->class_names[best])))
            best = c;
    *named = best >= 0;
    if (best >= 0 || !class_emb) return best;
    float top = -2;
    for (int c = 0; c < s->n_classes; c++) {
        float cos = cblas_sdot(E, q, 1, class_emb + (size_t)c * E, 1);
        if (cos > top) top = cos, best = c;
    }
    return best;
}

int cmd_retrieve(int argc, char **argv) {
    const char *model = NULL, *dataset = "fashion-mnist", *split = "test", *sheet = NULL;
    long k = 5;
    const char **queries = malloc((size_t)(argc + 1) * sizeof *queries);
    int n_queries = 0;
    if (!queries) return cli_error("out of memory");
    for (int i = 0; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "-m") && v) model = argv[++i];
        else if (!strcmp(argv[i], "--dataset") && v) dataset = argv[++i];
        else if (!strcmp(argv[i], "--split") && v) split = argv[++i];
        else if (!strcmp(argv[i], "--sheet") && v) sheet = argv[++i];
        else if (!strcmp(argv[i], "-k")) {
            if (!cli_int("-k", v, 1, 1000, &k)) {
                free(queries);
                return 1;
            }
            i++;
        } else if (!strcmp(argv[i], "--help")) {
            printf("usage: clipc retrieve [-m MODEL] [--dataset fashion-mnist|DIR|FILE.csv] [--split test|train] [-k K]\n"
                   "                      [--sheet FILE.svg] QUERY...\n"
                   "  the K images of the dataset (default: the Fashion-MNIST test set) closest to each text\n"
                   "  query (cosine of L2-normalised embeddings), with their class; --sheet draws them.\n"
                   "  Hits outside the class the query asks for (the class it names, else the class whose\n"
                   "  prompt \"a photo of a {}.\" is nearest it) are marked, and counted per query.\n"
                   "  -m defaults to the shipped model\n");
            free(queries);
            return 0;
        } else if (!strcmp(argv[i], "--")) {
            while (++i < argc) queries[n_queries++] = argv[i];
        } else if (argv[i][0] == '-') {
            free(queries);
            return cli_unexpected("retrieve", cmd_retrieve, argv[i]);
        } else queries[n_queries++] = argv[i];
    }
    if (n_queries == 0) {
        free(queries);
        return cli_error("retrieve: no query text given");
    }
    for (int q = 0; q < n_queries; q++)
        if (!queries[q][0]) {
            free(queries);
            return cli_error("retrieve: query %d is empty", q + 1);
        }
    image_set set;
    clipc_error err;
    if (image_set_open(dataset, split, "filepath", "label", &set, &err)) {
        free(queries);
        return cli_error("%s", err.message);
    }
    clipc_model *m = cli_load_model(model);
    int rc = m ? 0 : 1;
    float *img = NULL, *txt = NULL, *scores = NULL, *top_scores = NULL, *class_emb = NULL;
    int *top = NULL, *wanted = NULL, E = m ? clipc_model_config(m)->embed_dim : 0;
    char **prompts = NULL;
    if (k > set.count) k = set.count;
    if (rc == 0) rc = features_of(m, &set, NULL, 0, "images", &img);
    if (rc == 0) {
        txt = malloc((size_t)n_queries * E * sizeof *txt);
        scores = malloc((size_t)set.count * sizeof *scores);
        top = malloc((size_t)n_queries * k * sizeof *top);
        top_scores = malloc((size_t)n_queries * k * sizeof *top_scores);
        wanted = malloc((size_t)n_queries * sizeof *wanted);
        class_emb = malloc((size_t)set.n_classes * E * sizeof *class_emb);
        prompts = calloc((size_t)set.n_classes, sizeof *prompts);
        rc = txt && scores && top && top_scores && wanted && class_emb && prompts
                 ? text_features(m, (char *const *)queries, n_queries, txt)
                 : cli_error("out of memory");
    }
    for (int c = 0; c < set.n_classes && rc == 0; c++) { /* for the queries that name no class */
        size_t len = strlen(set.class_names[c]) + 16;
        if (!(prompts[c] = malloc(len))) rc = cli_error("out of memory");
        else snprintf(prompts[c], len, "a photo of a %s.", set.class_names[c]);
    }
    if (rc == 0) rc = text_features(m, prompts, set.n_classes, class_emb);
    for (int q = 0; q < n_queries && rc == 0; q++) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, set.count, E, 1.0f, img, E, txt + (size_t)q * E, 1, 0.0f, scores, 1);
        bool named;
        int want = wanted[q] = query_class(&set, queries[q], txt + (size_t)q * E, class_emb, E, &named), right = 0;
        printf("\"%s\"\n", queries[q]);
        /* top k by repeated selection, ties to the lower index (as rank_of) */
        for (int r = 0; r < k; r++) {
            int best = -1;
            for (int i = 0; i < set.count; i++)
                if (scores[i] > -2.0f && (best < 0 || scores[i] > scores[best])) best = i;
            top[(size_t)q * k + r] = best, top_scores[(size_t)q * k + r] = scores[best];
            const char *mark = set.labels[best] == want ? "" : "  <- not " ;
            right += set.labels[best] == want;
            if (set.paths) printf("  %2d. %.4f  %s  (%s)%s%s\n", r + 1, scores[best], set.paths[best],
                                  set.class_names[set.labels[best]], mark, *mark ? set.class_names[want] : "");
            else printf("  %2d. %.4f  %s image %d  (%s)%s%s\n", r + 1, scores[best], set.name, best,
                        set.class_names[set.labels[best]], mark, *mark ? set.class_names[want] : "");
            scores[best] = -3.0f; /* cosines are >= -1: taken */
        }
        printf("  %d of %ld in '%s' (%s)\n", right, k, set.class_names[want],
               named ? "the class the query names" : "the class prompt nearest the query");
    }
    if (rc == 0 && sheet) {
        fflush(stdout);
        if (write_retrieval_sheet(sheet, &set, queries, n_queries, (int)k, top, top_scores, wanted, &err))
            rc = cli_error("%s", err.message);
        else fprintf(stderr, "wrote %s\n", sheet);
    }
    for (int c = 0; prompts && c < set.n_classes; c++) free(prompts[c]);
    free(prompts), free(class_emb), free(wanted);
    free(img), free(txt), free(scores), free(top), free(top_scores), free(queries);
    clipc_model_free(m);
    image_set_free(&set);
    return rc;
}

/* ---- export-images ------------------------------------------------------------- */

/* One CSV field, quoted (RFC 4180) when it holds a comma, quote or line break. */
static void csv_field(FILE *f, const char *s) {
    if (!strpbrk(s, ",\"\r\n")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

/* Writes a labelled set's images as PNG files in class folders
 * (DIR/CLASS/NAME.png): sample data for `index`, and a folder dataset for
 * `eval --dataset DIR`. */
int cmd_export_images(int argc, char **argv) {
    const char *dataset = "fashion-mnist", *split = "test", *out = NULL, *csv_path = NULL;
    long limit = 0;
    for (int i = 0; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--dataset") && v) dataset = argv[++i];
        else if (!strcmp(argv[i], "--split") && v) split = argv[++i];
        else if (!strcmp(argv[i], "--out") && v) out = argv[++i];
        else if (!strcmp(argv[i], "--csv") && v) csv_path = argv[++i];
        else if (!strcmp(argv[i], "--limit")) {
            if (!cli_int("--limit", v, 1, 100000000, &limit)) return 1;
            i++;
        } else if (!strcmp(argv[i], "--help")) {
            printf("usage: clipc export-images [--dataset fashion-mnist] [--split test|train] [--limit N] --out DIR\n"
                   "                           [--csv FILE]\n"
                   "  The dataset's first N images as PNG files, DIR/CLASS/SPLIT_INDEX.png (class folders,\n"
                   "  '_' for spaces): sample photos for clipc index, and a folder dataset for clipc eval.\n"
                   "  --csv FILE   also a CSV of the images: filepath,title,label,label_index (title: a\n"
                   "               caption as clipc train makes them from the label; label: the class name;\n"
                   "               label_index: its number), for train --data, eval retrieval and eval zeroshot\n");
            return 0;
        } else return cli_unexpected("export-images", cmd_export_images, argv[i]);
    }
    if (!out) return cli_error("export-images: needs --out DIR");
    if (strcmp(split, "test") && strcmp(split, "train")) return cli_error("--split: 'test' or 'train'");
    image_set set;
    clipc_error err;
    if (image_set_open(dataset, split, "filepath", "label", &set, &err)) return cli_error("%s", err.message);
    int rc = make_out_dir(out), n = limit && limit < set.count ? (int)limit : set.count;
    int size = set.paths ? 224 : set.fm.width;
    unsigned char *rgb = malloc((size_t)size * size * 3);
    if (rc == 0 && !rgb) rc = cli_error("out of memory");
    for (int c = 0; c < set.n_classes && rc == 0; c++) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/%s", out, set.class_names[c]);
        for (char *p = dir + strlen(out) + 1; *p; p++)
            if (*p == ' ' || *p == '/') *p = '_';
        rc = make_out_dir(dir);
    }
    /* the CSV is written beside the images and renamed into place at the end */
    char csv_tmp[4200];
    FILE *csv = NULL;
    if (rc == 0 && csv_path) {
        snprintf(csv_tmp, sizeof csv_tmp, "%s.part", csv_path);
        if (!(csv = fopen(csv_tmp, "w"))) rc = cli_error("%s: %s", csv_tmp, strerror(errno));
        else fprintf(csv, "filepath,title,label,label_index\n");
    }
    double start = cli_now();
    for (int i = 0; i < n && rc == 0; i++) {
        unsigned char *png = NULL;
        size_t len = 0;
        char path[4200];
        int printed = snprintf(path, sizeof path, "%s/%s", out, set.class_names[set.labels[i]]);
        for (char *p = path + strlen(out) + 1; *p; p++)
            if (*p == ' ' || *p == '/') *p = '_';
        snprintf(path + printed, sizeof path - (size_t)printed, "/%s_%05d.png", split, i);
        if (image_set_rgb(&set, i, size, rgb, &err) || image_encode_png(rgb, size, size, &png, &len, &err) ||
            write_file_atomic(path, png, len, &err))
            rc = cli_error("%s", err.message);
        free(png);
        if (rc == 0 && csv) {
            char title[256];
            int label = set.labels[i];
            if (set.paths) snprintf(title, sizeof title, "a photo of a %s.", set.class_names[label]);
            else fmnist_caption(label, 0, 0, i, title, sizeof title);
            csv_field(csv, path);
            fputc(',', csv);
            csv_field(csv, title);
            fputc(',', csv);
            csv_field(csv, set.class_names[label]);
            fprintf(csv, ",%d\n", label);
        }
        if ((i + 1) % 256 == 0 || i + 1 == n) cli_progress("images", i + 1, n, start);
    }
    if (csv) {
        if ((fclose(csv) || rc) && rc == 0) rc = cli_error("%s: %s", csv_tmp, strerror(errno));
        if (rc == 0 && rename(csv_tmp, csv_path)) rc = cli_error("%s: %s", csv_path, strerror(errno));
        if (rc) remove(csv_tmp);
    }
    if (rc == 0) fprintf(stderr, "wrote %d images of %s (%s) to %s/CLASS/\n", n, set.name, split, out);
    free(rgb);
    image_set_free(&set);
    return rc;
}
