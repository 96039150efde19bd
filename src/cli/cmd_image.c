/* cmd_image.c — `clipc preprocess`, and the batched image encoding that
 * embed and classify share: a batch of files is decoded and preprocessed
 * on all cores, then encoded in one forward pass. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define FILE_BATCH 32

/* Preprocesses paths[0..n) into pixels, as model m takes them (m NULL:
 * CLIP's at size); on failure reports the first bad file (in input order)
 * and returns 1. */
static int preprocess_batch(const clipc_model *m, const char *const *paths, int n, int size, float *pixels) {
    size_t per = (size_t)3 * size * size;
    clipc_error *errs = calloc((size_t)n, sizeof *errs);
    int *failed = calloc((size_t)n, sizeof *failed);
    if (!errs || !failed) {
        free(errs);
        free(failed);
        return cli_error("out of memory");
    }
#pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < n; i++)
        failed[i] = m ? clipc_model_preprocess_file(m, paths[i], pixels + i * per, &errs[i])
                      : clipc_preprocess_file(paths[i], size, pixels + i * per, &errs[i]);
    int rc = 0;
    for (int i = 0; i < n && !rc; i++)
        if (failed[i]) rc = cli_error("%s", errs[i].message);
    free(errs);
    free(failed);
    return rc;
}

int cli_expand_images(const char *const *args, int n, char ***paths, int *count) {
    *paths = NULL, *count = 0;
    int cap = 0;
    for (int i = 0; i < n; i++) {
        struct stat st;
        char **found = NULL;
        int k = 0;
        clipc_error err;
        if (stat(args[i], &st) == 0 && S_ISDIR(st.st_mode)) {
            if (list_images(args[i], &found, &k, &err)) return cli_error("%s", err.message);
            if (k == 0) {
                fprintf(stderr, "clipc: warning: %s holds no JPEG or PNG images\n", args[i]);
                continue;
            }
        } else { /* a file (or a missing one: its error comes when it is read) */
            found = malloc(sizeof *found);
            if (found && !(found[0] = strdup(args[i]))) free(found), found = NULL;
            k = 1;
            if (!found) return cli_error("out of memory");
        }
        if (*count + k > cap) {
            int grown = (*count + k) * 2;
            char **np = realloc(*paths, (size_t)grown * sizeof *np);
            if (!np) {
                for (int j = 0; j < k; j++) free(found[j]);
                free(found);
                return cli_error("out of memory");
            }
            *paths = np, cap = grown;
        }
        memcpy(*paths + *count, found, (size_t)k * sizeof *found);
        *count += k;
        free(found);
    }
    return 0;
}

void cli_free_paths(char **paths, int n) {
    for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
}

int cli_encode_image_files(clipc_model *m, const char *const *paths, int n, float *features) {
    const clipc_config *c = clipc_model_config(m);
    int R = c->image_resolution, E = c->embed_dim;
    float *pixels = malloc((size_t)FILE_BATCH * 3 * R * R * sizeof *pixels);
    if (!pixels) return cli_error("out of memory");
    double start = cli_now();
    int rc = 0;
    for (int done = 0; done < n && rc == 0; done += FILE_BATCH) {
        int b = n - done < FILE_BATCH ? n - done : FILE_BATCH;
        rc = preprocess_batch(m, paths + done, b, R, pixels);
        clipc_error err;
        if (rc == 0 && clipc_encode_image(m, pixels, b, features + (size_t)done * E, &err))
            rc = cli_error("%s", err.message);
        if (n > FILE_BATCH) cli_progress("images", done + b, n, start);
    }
    free(pixels);
    return rc;
}

int cmd_preprocess(int argc, char **argv) {
    long size = 224;
    const char *out = NULL, *model_path = NULL;
    bool sized = false;
    const char **files = malloc((size_t)(argc + 1) * sizeof *files);
    int n = 0;
    if (!files) return cli_error("out of memory");
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--size")) {
            if (!cli_int("--size", i + 1 < argc ? argv[++i] : NULL, 1, 4096, &size)) {
                free(files);
                return 1;
            }
            sized = true;
        } else if (!strcmp(argv[i], "-o") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "-m") && i + 1 < argc) model_path = argv[++i];
        else if (!strcmp(argv[i], "--help")) {
            printf("usage: clipc preprocess [--size N | -m MODEL] IMAGE... -o FILE.npy\n"
                   "  OpenAI's _transform(N) (default 224): float32 [n, 3, N, N];\n"
                   "  -m: the preprocessing that model takes (a SigLIP model's: the whole image resized to\n"
                   "  its resolution, mean = std = 0.5), at its resolution\n");
            free(files);
            return 0;
        } else if (argv[i][0] == '-') {
            free(files);
            return cli_unexpected("preprocess", cmd_preprocess, argv[i]);
        } else {
            files[n++] = argv[i];
        }
    }
    int rc = 0;
    if (!out) rc = cli_error("preprocess: needs -o FILE.npy");
    else if (n == 0) rc = cli_error("preprocess: no images given");
    else if (model_path && sized) rc = cli_error("preprocess: give --size or -m, not both (a model has its resolution)");
    clipc_model *m = rc == 0 && model_path ? cli_load_model(model_path) : NULL;
    if (model_path && rc == 0 && !m) rc = 1;
    if (m) size = clipc_model_config(m)->image_resolution;
    size_t per = (size_t)3 * size * size;
    float *pixels = rc ? NULL : malloc((size_t)n * per * sizeof *pixels);
    if (rc == 0 && !pixels) rc = cli_error("out of memory for %d images", n);
    for (int done = 0; done < n && rc == 0; done += FILE_BATCH) {
        int b = n - done < FILE_BATCH ? n - done : FILE_BATCH;
        rc = preprocess_batch(m, files + done, b, (int)size, pixels + (size_t)done * per);
    }
    clipc_model_free(m);
    clipc_error err;
    int64_t shape[4] = {n, 3, size, size};
    if (rc == 0 && npy_write(out, "<f4", 4, shape, pixels, &err)) rc = cli_error("%s", err.message);
    free(pixels);
    free(files);
    return rc;
}
