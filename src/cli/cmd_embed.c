/* cmd_embed.c — `clipc embed` (features of images, texts, pixel or token
 * arrays) and `clipc classify` (zero-shot classification of images). */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Tokenizes texts into [n, ctx] rows with the model's tokenizer; empty texts are refused. */
static int tokenize_texts(const clipc_model *m, const char *const *texts, int n, int ctx, bool truncate, int32_t *tokens) {
    clipc_error err;
    clipc_tokenizer *tok = clipc_model_tokenizer(m, &err);
    if (!tok) return cli_error("%s", err.message);
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!texts[i][0]) rc = cli_error("text %d is empty", i + 1);
        else if (clipc_tokenize(tok, texts[i], ctx, truncate, tokens + (size_t)i * ctx, &err))
            rc = cli_error("text %d (\"%.40s\"): %s%s", i + 1, texts[i], err.message,
                           strstr(err.message, "too long") ? " (use --truncate)" : "");
    }
    clipc_tokenizer_free(tok);
    return rc;
}

/* An int32 [n, ctx] token array from an .npy of int32 or int64. */
static int load_tokens(const char *path, int ctx, int32_t **tokens, int *n) {
    npy_array a;
    clipc_error err;
    if (npy_read(path, &a, &err)) return cli_error("%s", err.message);
    if (a.ndim != 2 || a.shape[1] != ctx || (strcmp(a.dtype, "<i4") && strcmp(a.dtype, "<i8"))) {
        npy_free(&a);
        return cli_error("%s: expected int32 or int64 tokens of shape [n, %d]", path, ctx);
    }
    *n = (int)a.shape[0];
    *tokens = malloc(a.count * sizeof **tokens + 1);
    if (!*tokens) {
        npy_free(&a);
        return cli_error("out of memory");
    }
    for (size_t i = 0; i < a.count; i++)
        (*tokens)[i] = !strcmp(a.dtype, "<i4") ? ((int32_t *)a.data)[i] : (int32_t)((int64_t *)a.data)[i];
    npy_free(&a);
    return 0;
}

int cmd_embed(int argc, char **argv) {
    const char *model_path = NULL, *out = NULL, *pixels_path = NULL, *tokens_path = NULL;
    const char **images = NULL, **texts = NULL;
    int n_images = 0, n_texts = 0;
    bool raw = false, truncate = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc) model_path = argv[++i];
        else if (!strcmp(argv[i], "-o") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--pixels") && i + 1 < argc) pixels_path = argv[++i];
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) tokens_path = argv[++i];
        else if (!strcmp(argv[i], "--raw")) raw = true;
        else if (!strcmp(argv[i], "--truncate")) truncate = true;
        else if (!strcmp(argv[i], "--image")) i = cli_collect(argc, argv, i + 1, &images, &n_images) - 1;
        else if (!strcmp(argv[i], "--text")) i = cli_collect(argc, argv, i + 1, &texts, &n_texts) - 1;
        else if (!strcmp(argv[i], "--help")) {
            printf("usage: clipc embed [-m MODEL] (--image FILE|DIR... | --text STR... | --pixels FILE.npy | --tokens FILE.npy)\n"
                   "                   [--raw] [--truncate] -o OUT.npy\n"
                   "  writes float32 [n, embed_dim] rows in input order; L2-normalised unless --raw\n"
                   "  (--raw gives encode_image / encode_text). --truncate cuts texts longer than the context.\n"
                   "  A DIR stands for the JPEG/PNG/TIFF/WebP files under it, recursively, sorted by path; with --image\n"
                   "  the rows' paths go to OUT.paths.txt, one per line.\n");
            return 0;
        } else return cli_unexpected("embed", cmd_embed, argv[i]);
    }
    int kinds = (n_images > 0) + (n_texts > 0) + (pixels_path != NULL) + (tokens_path != NULL);
    if (kinds != 1) return cli_error("embed: give exactly one of --image, --text, --pixels, --tokens (with values)");
    if (!out) return cli_error("embed: needs -o OUT.npy");
    clipc_model *m = cli_load_model(model_path);
    if (!m) return 1;
    const clipc_config *c = clipc_model_config(m);
    int E = c->embed_dim, ctx = c->context_length, n = 0, rc = 0;
    float *features = NULL;
    int32_t *tokens = NULL;
    clipc_error err;
    char **files = NULL; /* --image's files, folders expanded */
    if (n_images) {
        rc = cli_expand_images(images, n_images, &files, &n);
        if (rc == 0 && n == 0) rc = cli_error("embed: no images in the folders given");
        features = rc == 0 ? malloc((size_t)n * E * sizeof *features) : NULL;
        if (rc == 0) cli_note_default_model(model_path, (const char *const *)files, n);
        if (rc == 0) rc = features ? cli_encode_image_files(m, (const char *const *)files, n, features) : cli_error("out of memory");
    } else if (pixels_path) {
        npy_array a;
        int R = c->image_resolution;
        if (npy_read(pixels_path, &a, &err)) rc = cli_error("%s", err.message);
        else if (strcmp(a.dtype, "<f4") || a.ndim != 4 || a.shape[1] != 3 || a.shape[2] != R || a.shape[3] != R)
            rc = cli_error("%s: expected float32 pixels of shape [n, 3, %d, %d] for this model", pixels_path, R, R);
        else {
            n = (int)a.shape[0];
            features = malloc((size_t)n * E * sizeof *features + 1);
            if (!features) rc = cli_error("out of memory");
            else if (clipc_encode_image(m, a.data, n, features, &err)) rc = cli_error("%s", err.message);
        }
        if (a.data || rc == 0) npy_free(&a);
    } else {
        if (tokens_path) rc = load_tokens(tokens_path, ctx, &tokens, &n);
        else {
            n = n_texts;
            tokens = malloc((size_t)n * ctx * sizeof *tokens);
            rc = tokens ? tokenize_texts(m, texts, n, ctx, truncate, tokens) : cli_error("out of memory");
        }
        if (rc == 0) {
            features = malloc((size_t)n * E * sizeof *features + 1);
            if (!features) rc = cli_error("out of memory");
            else if (clipc_encode_text(m, tokens, n, features, &err)) rc = cli_error("%s", err.message);
        }
    }
    if (rc == 0) {
        if (!raw) clipc_normalize_rows(features, n, E);
        int64_t shape[2] = {n, E};
        if (npy_write(out, "<f4", 2, shape, features, &err)) rc = cli_error("%s", err.message);
    }
    if (rc == 0 && files) { /* the row order: one image path per line, beside the .npy (OUT.paths.txt) */
        size_t len = strlen(out), total = 0;
        char *name = malloc(len + 16);
        for (int i = 0; i < n; i++) total += strlen(files[i]) + 1;
        char *text = malloc(total + 1);
        if (name && text) {
            size_t stem = len > 4 && !strcmp(out + len - 4, ".npy") ? len - 4 : len, o = 0;
            snprintf(name, len + 16, "%.*s.paths.txt", (int)stem, out);
            for (int i = 0; i < n; i++) o += (size_t)sprintf(text + o, "%s\n", files[i]);
            if (write_file_atomic(name, text, o, &err)) rc = cli_error("%s", err.message);
        } else {
            rc = cli_error("out of memory");
        }
        free(name), free(text);
    }
    cli_free_paths(files, files ? n : 0);
    free(tokens);
    free(features);
    clipc_model_free(m);
    return rc;
}

/* ---- classify ------------------------------------------------------------------ */

/* Splits "a, b ,c" into trimmed labels; empty labels are refused. */
static int split_labels(char *list, char ***labels, int *n) {
    int cap = 1;
    for (char *p = list; *p; p++) cap += *p == ',';
    *labels = malloc((size_t)cap * sizeof **labels);
    if (!*labels) return cli_error("out of memory");
    *n = 0;
    for (char *tok = list;; ) {
        char *comma = strchr(tok, ',');
        if (comma) *comma = '\0';
        while (*tok == ' ' || *tok == '\t') tok++;
        char *end = tok + strlen(tok);
        while (end > tok && (end[-1] == ' ' || end[-1] == '\t')) *--end = '\0';
        if (!*tok) return cli_error("--labels: label %d is empty", *n + 1);
        (*labels)[(*n)++] = tok;
        if (!comma) break;
        tok = comma + 1;
    }
    return 0;
}

/* Templates from a file: one per line, each with "{}". */
static int read_templates(const char *path, char **text, const char ***templates, int *n) {
    *templates = NULL;
    unsigned char *data;
    size_t len;
    clipc_error err;
    if (read_file(path, &data, &len, &err)) return cli_error("%s", err.message);
    *text = realloc(data, len + 1);
    if (!*text) {
        free(data);
        return cli_error("out of memory");
    }
    (*text)[len] = '\0';
    int cap = 1;
    for (size_t i = 0; i < len; i++) cap += (*text)[i] == '\n';
    *templates = malloc((size_t)cap * sizeof **templates);
    if (!*templates) return cli_error("out of memory");
    *n = 0;
    int line = 0;
    for (char *s = *text; s && *s;) {
        char *nl = strchr(s, '\n');
        if (nl) *nl = '\0';
        line++;
        if (nl && nl > s && nl[-1] == '\r') nl[-1] = '\0';
        if (*s) {
            if (!strstr(s, "{}")) return cli_error("%s:%d: template has no {} for the class name", path, line);
            (*templates)[(*n)++] = s;
        }
        s = nl ? nl + 1 : NULL;
    }
    if (*n == 0) return cli_error("%s: no templates", path);
    return 0;
}

int cli_templates(const char *arg, char **text, const char ***templates, int *n) {
    static const char *simple[] = {"a photo of a {}."};
    *text = NULL;
    if (!strcmp(arg, "imagenet")) {
        *templates = (const char **)clipc_imagenet_templates(n);
        return 0;
    }
    if (!strcmp(arg, "simple")) {
        *templates = simple, *n = 1;
        return 0;
    }
    return read_templates(arg, text, templates, n);
}

void cli_json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') printf("\\%c", ch);
        else if (ch < 0x20) printf("\\u%04x", ch);
        else putchar(ch);
    }
    putchar('"');
}

int cmd_classify(int argc, char **argv) {
    const char *model_path = NULL, *labels_arg = NULL, *templates_arg = "imagenet";
    const char **images = malloc((size_t)(argc + 1) * sizeof *images);
    int n_images = 0;
    if (!images) return cli_error("out of memory");
    long top = 5;
    bool json = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc) model_path = argv[++i];
        else if (!strcmp(argv[i], "--labels") && i + 1 < argc) labels_arg = argv[++i];
        else if (!strcmp(argv[i], "--templates") && i + 1 < argc) templates_arg = argv[++i];
        else if (!strcmp(argv[i], "--top")) {
            if (!cli_int("--top", i + 1 < argc ? argv[++i] : NULL, 1, 100000, &top)) return 1;
        } else if (!strcmp(argv[i], "--json")) json = true;
        else if (!strcmp(argv[i], "--help")) {
            printf("usage: clipc classify [-m MODEL] --labels \"a,b,c\" [--templates imagenet|simple|FILE] [--top K] [--json] IMAGE|DIR...\n"
                   "  class embeddings average the prompt templates (OpenAI's 80 ImageNet ones by default;\n"
                   "  'simple' is \"a photo of a {}.\", FILE has one template with {} per line);\n"
                   "  probabilities are softmax(logit_scale * cosine) (a SigLIP model's: sigmoids).\n"
                   "  A DIR stands for the JPEG/PNG/TIFF/WebP files under it, recursively, sorted by path.\n");
            free(images);
            return 0;
        } else if (argv[i][0] == '-') {
            free(images);
            return cli_unexpected("classify", cmd_classify, argv[i]);
        } else {
            images[n_images++] = argv[i];
        }
    }
    if (!labels_arg || n_images == 0) {
        free(images);
        return cli_error(!labels_arg ? "classify: needs --labels \"a,b,c\"" : "classify: no images given");
    }
    char **files = NULL; /* the images, folders expanded */
    int n_files = 0;
    if (cli_expand_images(images, n_images, &files, &n_files)) {
        free(images);
        return 1;
    }
    free(images);
    images = (const char **)files, n_images = n_files;
    if (n_images == 0) {
        cli_free_paths(files, 0);
        return cli_error("classify: no images in the folders given");
    }
    char *labels_copy = strdup(labels_arg), **labels = NULL, *template_text = NULL;
    const char **templates = NULL;
    int n_labels = 0, n_templates = 0, rc = 0;
    rc = labels_copy ? split_labels(labels_copy, &labels, &n_labels) : cli_error("out of memory");
    if (rc == 0) rc = cli_templates(templates_arg, &template_text, &templates, &n_templates);
    clipc_model *m = rc == 0 ? cli_load_model(model_path) : NULL;
    if (!m) rc = 1;
    float *features = NULL, *probs = NULL;
    clipc_error err;
    clipc_tokenizer *tok = NULL;
    if (rc == 0) {
        int E = clipc_model_config(m)->embed_dim;
        features = malloc((size_t)n_images * E * sizeof *features);
        probs = malloc((size_t)n_images * n_labels * sizeof *probs);
        tok = clipc_model_tokenizer(m, &err);
        if (!features || !probs || !tok) rc = cli_error("%s", tok ? "out of memory" : err.message);
    }
    if (rc == 0) cli_note_default_model(model_path, images, n_images);
    if (rc == 0) rc = cli_encode_image_files(m, images, n_images, features);
    if (rc == 0 && clipc_zeroshot_classify(m, tok, (const char *const *)labels, n_labels, templates, n_templates, features,
                                           n_images, probs, &err))
        rc = cli_error("%s", err.message);
    clipc_tokenizer_free(tok);
    if (rc == 0) {
        int k = top < n_labels ? (int)top : n_labels;
        int *order = malloc((size_t)n_labels * sizeof *order);
        if (json) printf("[");
        for (int i = 0; i < n_images && order; i++) {
            const float *p = probs + (size_t)i * n_labels;
            /* top k by probability, ties in label order */
            for (int l = 0; l < n_labels; l++) order[l] = l;
            for (int a = 0; a < k; a++)
                for (int b = a + 1; b < n_labels; b++)
                    if (p[order[b]] > p[order[a]]) {
                        int t = order[a];
                        order[a] = order[b];
                        order[b] = t;
                    }
            if (json) {
                printf("%s\n  {\"image\": ", i ? "," : "");
                cli_json_string(images[i]);
                printf(", \"predictions\": [");
                for (int a = 0; a < k; a++) {
                    printf("%s{\"label\": ", a ? ", " : "");
                    cli_json_string(labels[order[a]]);
                    printf(", \"probability\": %.6f}", p[order[a]]);
                }
                printf("]}");
            } else {
                /* SigLIP's are independent sigmoids: they need not sum to 1 */
                if (i == 0 && clipc_model_config(m)->family == CLIPC_SIGLIP)
                    printf("(SigLIP: each label's own probability, sigmoid(scale cos + bias))\n");
                printf("%s\n", images[i]);
                for (int a = 0; a < k; a++) printf("  %7.2f%%  %s\n", 100.0 * p[order[a]], labels[order[a]]);
            }
        }
        if (json) printf("\n]\n");
        if (!order) rc = cli_error("out of memory");
        free(order);
    }
    free(features);
    free(probs);
    free(labels);
    free(labels_copy);
    cli_free_paths(files, n_files);
    if (template_text) free((void *)templates); /* read from a file: ours */
    free(template_text);
    clipc_model_free(m);
    return rc;
}
