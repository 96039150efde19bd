/* dataset.c — labelled image sets for evaluation: Fashion-MNIST from
 * Debian's package, a folder with one sub-folder per class (torchvision's
 * ImageFolder layout: classes in sorted order), or a CSV/TSV of image path
 * and class label. */
#include "eval.h"

#include <ctype.h>
#include <limits.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

static int compare_strings(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Appends to a growing array of strings; the string is taken over. */
static int push(char ***list, int *n, int *cap, char *s) {
    if (!s) return -1;
    if (*n == *cap) {
        int nc = *cap ? 2 * *cap : 64;
        char **nl = realloc(*list, (size_t)nc * sizeof *nl);
        if (!nl) {
            free(s);
            return -1;
        }
        *list = nl, *cap = nc;
    }
    (*list)[(*n)++] = s;
    return 0;
}

static void free_strings(char **list, int n) {
    for (int i = 0; i < n; i++) free(list[i]);
    free(list);
}

/* Sorted names of the entries of dir that are directories (want_dirs) or image files. */
static int list_dir(const char *dir, bool want_dirs, char ***names, int *n, clipc_error *err) {
    *names = NULL, *n = 0;
    int cap = 0;
    DIR *d = opendir(dir);
    if (!d) return clipc_fail(err, "%s: cannot open the folder", dir);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[4096];
        struct stat st;
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path || stat(path, &st)) continue;
        bool ok = want_dirs ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode) && is_image_file_name(e->d_name);
        if (ok && push(names, n, &cap, strdup(e->d_name))) {
            closedir(d);
            free_strings(*names, *n);
            return clipc_fail(err, "out of memory");
        }
    }
    closedir(d);
    if (*n) qsort(*names, (size_t)*n, sizeof **names, compare_strings);
    return 0;
}

static int open_folder(const char *dir, image_set *s, clipc_error *err) {
    char **classes;
    int n_classes, cap = 0, label_cap = 0;
    if (list_dir(dir, true, &classes, &n_classes, err)) return -1;
    if (n_classes == 0) return clipc_fail(err, "%s: no class sub-folders (expected DIR/CLASS/IMAGE.jpg)", dir);
    s->class_names = classes, s->n_classes = n_classes;
    for (int c = 0; c < n_classes; c++) {
        char sub[4096];
        snprintf(sub, sizeof sub, "%s/%s", dir, classes[c]);
        char **files;
        int n_files;
        if (list_dir(sub, false, &files, &n_files, err)) return -1;
        for (int f = 0; f < n_files; f++) {
            size_t len = strlen(sub) + strlen(files[f]) + 2;
            char *path = malloc(len);
            if (path) snprintf(path, len, "%s/%s", sub, files[f]);
            if (s->count == label_cap) {
                label_cap = label_cap ? 2 * label_cap : 1024;
                int *nl = realloc(s->labels, (size_t)label_cap * sizeof *nl);
                if (!nl) {
                    free(path);
                    path = NULL;
                } else s->labels = nl;
            }
            int count_before = s->count;
            if (!path || push(&s->paths, &s->count, &cap, path)) {
                free_strings(files, n_files);
                return clipc_fail(err, "out of memory");
            }
            s->labels[count_before] = c;
        }
        free_strings(files, n_files);
        /* "ankle_boot" reads as "ankle boot" in a prompt */
        for (char *p = classes[c]; *p; p++)
            if (*p == '_') *p = ' ';
    }
    if (s->count == 0) return clipc_fail(err, "%s: no .jpg/.jpeg/.png images in the class folders", dir);
    return 0;
}

static bool is_number(const char *s) {
    if (!*s) return false;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s)) return false;
    return true;
}

static int open_csv(const char *path, const char *img_key, const char *label_key, image_set *s, clipc_error *err) {
    csv_pairs rows;
    if (csv_load(path, img_key, label_key, 0, &rows, err)) return -1;
    s->count = rows.count;
    s->paths = rows.paths; /* taken over */
    s->labels = malloc((size_t)rows.count * sizeof *s->labels);
    char **names = malloc((size_t)rows.count * sizeof *names);
    int rc = 0, n_names = 0;
    if (!s->labels || !names) rc = clipc_fail(err, "out of memory");
    bool numeric = true;
    for (int i = 0; i < rows.count && rc == 0; i++) numeric = numeric && is_number(rows.captions[i]);
    if (rc == 0 && numeric) { /* class numbers: names "0", "1", ... until --classnames names them */
        int max = 0;
        long long classes = limit_of(LIMIT_CLASSES);
        for (int i = 0; i < rows.count && rc == 0; i++) {
            long long v = strtoll(rows.captions[i], NULL, 10);
            if (v >= classes || v >= INT_MAX) /* a confusion matrix of n² counts: bounded before any allocation */
                rc = clipc_fail(err, "%s: class number %lld is too large (class numbers go up to %lld; %s raises it)",
                                path, v, classes - 1, limit_env(LIMIT_CLASSES));
            else s->labels[i] = (int)v;
            if (rc == 0 && v > max) max = (int)v;
        }
        /* one name per class number up to the largest, which may exceed the
         * row count (labels 3, 0, 1): the array is sized for that */
        char **grown = rc == 0 ? realloc(names, ((size_t)max + 1) * sizeof *names) : NULL;
        if (rc == 0 && !grown) rc = clipc_fail(err, "out of memory");
        if (grown) names = grown;
        for (int c = 0; c <= max && rc == 0; c++) {
            char num[16];
            snprintf(num, sizeof num, "%d", c);
            if (!(names[n_names++] = strdup(num))) rc = clipc_fail(err, "out of memory");
        }
    } else if (rc == 0) { /* class names: the sorted distinct labels */
        for (int i = 0; i < rows.count; i++) names[n_names++] = rows.captions[i];
        qsort(names, (size_t)n_names, sizeof *names, compare_strings);
        int u = 0;
        for (int i = 0; i < n_names; i++)
            if (u == 0 || strcmp(names[u - 1], names[i])) names[u++] = names[i];
        n_names = u;
        if (n_names > limit_of(LIMIT_CLASSES)) /* the same n² bound for named classes */
            rc = clipc_fail(err, "%s: %d distinct labels are more classes than the limit of %lld (%s raises it)", path,
                            n_names, limit_of(LIMIT_CLASSES), limit_env(LIMIT_CLASSES));
        for (int i = 0; i < rows.count; i++) {
            char **hit = bsearch(&rows.captions[i], names, (size_t)n_names, sizeof *names, compare_strings);
            s->labels[i] = (int)(hit - names);
        }
        /* the names become the set's own copies; on failure it owns only those made */
        int owned = 0;
        while (rc == 0 && owned < n_names) {
            if (!(names[owned] = strdup(names[owned]))) rc = clipc_fail(err, "out of memory");
            else owned++;
        }
        n_names = owned;
    }
    for (int i = 0; i < rows.count; i++) free(rows.captions[i]);
    free(rows.captions);
    s->class_names = names, s->n_classes = n_names;
    return rc;
}

void dataset_name(const char *spec, char *name, size_t cap) {
    size_t len = strlen(spec);
    while (len > 1 && spec[len - 1] == '/') len--;
    const char *base = spec + len;
    while (base > spec && base[-1] != '/') base--;
    snprintf(name, cap, "%.*s", (int)(spec + len - base), base);
}

int image_set_open(const char *spec, const char *split, const char *img_key, const char *label_key, image_set *out,
                   clipc_error *err) {
    memset(out, 0, sizeof *out);
    int rc;
    struct stat st;
    bool inverted = !strcmp(spec, "fashion-mnist-inverted");
    if (!strcmp(spec, "fashion-mnist") || inverted) {
        rc = fmnist_load(NULL, !strcmp(split, "train"), &out->fm, err);
        if (rc == 0) {
            out->count = out->fm.count, out->n_classes = 10;
            out->labels = malloc((size_t)out->count * sizeof *out->labels);
            out->class_names = calloc(10, sizeof *out->class_names);
            if (!out->labels || !out->class_names) rc = clipc_fail(err, "out of memory");
            for (int i = 0; i < out->count && rc == 0; i++) out->labels[i] = out->fm.labels[i];
            for (int c = 0; c < 10 && rc == 0; c++)
                if (!(out->class_names[c] = strdup(FMNIST_CLASSES[c]))) rc = clipc_fail(err, "out of memory");
        }
        /* the domain shift of the fine-tuning benchmark: dark clothes on a white ground, as catalogue photos */
        if (rc == 0 && inverted)
            for (size_t i = 0; i < (size_t)out->fm.count * out->fm.height * out->fm.width; i++)
                out->fm.images[i] = (unsigned char)(255 - out->fm.images[i]);
        snprintf(out->name, sizeof out->name, "%s", spec);
    } else if (stat(spec, &st)) {
        return clipc_fail(err, "%s: no such dataset (fashion-mnist, a folder of class folders, or a .csv/.tsv)", spec);
    } else {
        rc = S_ISDIR(st.st_mode) ? open_folder(spec, out, err) : open_csv(spec, img_key, label_key, out, err);
        dataset_name(spec, out->name, sizeof out->name);
    }
    if (rc) image_set_free(out);
    return rc;
}

int image_set_read_classnames(image_set *s, const char *path, clipc_error *err) {
    unsigned char *text;
    size_t len;
    if (read_file(path, &text, &len, err)) return -1;
    char **names = calloc((size_t)s->n_classes, sizeof *names);
    int n = 0, rc = names ? 0 : clipc_fail(err, "out of memory");
    for (char *line = (char *)text; rc == 0 && line < (char *)text + len;) {
        char *nl = memchr(line, '\n', (size_t)((char *)text + len - line));
        char *end = nl ? nl : (char *)text + len;
        while (end > line && (end[-1] == '\r' || end[-1] == ' ')) end--;
        if (end > line) {
            if (n == s->n_classes) rc = clipc_fail(err, "%s: more than the dataset's %d classes", path, s->n_classes);
            else if (!(names[n++] = strndup(line, (size_t)(end - line)))) rc = clipc_fail(err, "out of memory");
        }
        line = nl ? nl + 1 : (char *)text + len;
    }
    if (rc == 0 && n != s->n_classes)
        rc = clipc_fail(err, "%s: %d class names for the dataset's %d classes", path, n, s->n_classes);
    free(text);
    if (rc) {
        if (names) free_strings(names, n);
        return rc;
    }
    free_strings(s->class_names, s->n_classes);
    s->class_names = names;
    return 0;
}

bool image_set_numbered(const image_set *s) {
    for (int c = 0; c < s->n_classes; c++)
        if (!is_number(s->class_names[c])) return false;
    return s->n_classes > 0;
}

int image_set_pixels(const image_set *s, int i, const clipc_model *m, float *out, clipc_error *err) {
    const clipc_config *c = clipc_model_config(m);
    if (s->paths) return clipc_model_preprocess_file(m, s->paths[i], out, err);
    if (c->family == CLIPC_CLIP) return fmnist_pixels(&s->fm, i, c->image_resolution, out, err);
    image im = fmnist_image(&s->fm, i);
    return image_pixels(&im, &m->style, c->image_resolution, out, err);
}

int image_set_rgb(const image_set *s, int i, int size, unsigned char *rgb, clipc_error *err) {
    if (!s->paths) {
        image im = fmnist_image(&s->fm, i);
        return image_resize_crop_rgb(&im, size, rgb, err);
    }
    return image_file_rgb(s->paths[i], size, rgb, err);
}

void image_set_free(image_set *s) {
    if (s->class_names) free_strings(s->class_names, s->n_classes);
    if (s->paths) free_strings(s->paths, s->count);
    free(s->labels);
    fmnist_free(&s->fm);
    memset(s, 0, sizeof *s);
}

enum { FEATURE_BATCH = 64 };

int image_set_pixels_batch(const image_set *s, const int *rows, int first, int n, const clipc_model *m, float *out,
                           clipc_error *err) {
    int R = clipc_model_config(m)->image_resolution;
    size_t image_floats = (size_t)3 * R * R;
    clipc_error *errs = calloc((size_t)(n > 0 ? n : 1), sizeof *errs);
    int *failed = calloc((size_t)(n > 0 ? n : 1), sizeof *failed);
    int rc = errs && failed ? 0 : clipc_fail(err, "out of memory");
    if (rc == 0) {
        #pragma omp parallel for schedule(dynamic)
        for (int i = 0; i < n; i++)
            failed[i] = image_set_pixels(s, rows ? rows[i] : first + i, m, out + i * image_floats, &errs[i]);
    }
    for (int i = 0; i < n && rc == 0; i++)
        if (failed[i]) {
            *err = errs[i];
            rc = -1;
        }
    free(errs), free(failed);
    return rc;
}

int image_set_features(clipc_model *m, const image_set *s, const int *rows, int first, int n, float *features, eval_progress progress,
                       void *ctx, clipc_error *err) {
    const clipc_config *c = clipc_model_config(m);
    int R = c->image_resolution, E = c->embed_dim;
    size_t image_floats = (size_t)3 * R * R;
    float *pixels = malloc(FEATURE_BATCH * image_floats * sizeof *pixels);
    int rc = pixels ? 0 : clipc_fail(err, "out of memory");
    for (int done = 0; done < n && rc == 0; done += FEATURE_BATCH) {
        int b = n - done < FEATURE_BATCH ? n - done : FEATURE_BATCH;
        rc = image_set_pixels_batch(s, rows ? rows + done : NULL, first + done, b, m, pixels, err);
        if (rc == 0) rc = clipc_encode_image(m, pixels, b, features + (size_t)done * E, err);
        if (rc == 0) clipc_normalize_rows(features + (size_t)done * E, b, E);
        if (rc == 0 && progress) progress(ctx, done + b, n);
    }
    free(pixels);
    return rc;
}

int image_set_align_classes(const image_set *ref, image_set *s, clipc_error *err) {
    int *map = malloc((size_t)s->n_classes * sizeof *map);
    if (!map) return clipc_fail(err, "out of memory");
    for (int c = 0; c < s->n_classes; c++) {
        map[c] = -1;
        for (int k = 0; k < ref->n_classes && map[c] < 0; k++)
            if (!strcmp(s->class_names[c], ref->class_names[k])) map[c] = k;
    }
    for (int i = 0; i < s->count; i++)
        if (map[s->labels[i]] < 0) {
            int c = s->labels[i];
            free(map);
            return clipc_fail(err, "%s: class '%s' is not among the %s's classes", s->name, s->class_names[c], ref->name);
        }
    for (int i = 0; i < s->count; i++) s->labels[i] = map[s->labels[i]];
    free(map);
    char **names = malloc((size_t)ref->n_classes * sizeof *names);
    int rc = names ? 0 : clipc_fail(err, "out of memory");
    for (int k = 0; k < ref->n_classes && rc == 0; k++)
        if (!(names[k] = strdup(ref->class_names[k]))) {
            free_strings(names, k);
            rc = clipc_fail(err, "out of memory");
        }
    if (rc == 0) {
        free_strings(s->class_names, s->n_classes);
        s->class_names = names, s->n_classes = ref->n_classes;
    }
    return rc;
}
