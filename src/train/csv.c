/* csv.c — image/caption pairs listed in a CSV or TSV file, OpenCLIP's
 * convention: a header row naming the columns, an image-path column
 * (--csv-img-key, default "filepath") and a caption column
 * (--csv-caption-key, default "title"). Fields may be quoted (RFC 4180).
 * Relative image paths are relative to the file's directory.
 *
 * Training images get OpenCLIP's augmentation, RandomResizedCrop(R,
 * scale=(0.9, 1.0), ratio=(3/4, 4/3), bicubic), with the crop drawn from
 * (seed, step, index) so batches stay reproducible. */
#include "train.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void free_fields(char **f, int n) {
    for (int i = 0; i < n; i++) free(f[i]);
    free(f);
}

/* Splits one record starting at *p into fields (quotes honoured); returns
 * the field count, -1 at end of input, -2 when out of memory, -3 when the
 * record is longer than max bytes. Fields are malloc'd. */
static int read_record(const char **p, const char *end, char sep, size_t max, char ***fields) {
    if (*p >= end) return -1;
    const char *start = *p;
    int n = 0, cap = 8;
    char **fs = malloc((size_t)cap * sizeof *fs);
    if (!fs) return -2;
    const char *s = *p;
    for (;;) {
        size_t len = 0, fcap = 64;
        char *f = malloc(fcap);
        if (!f) goto oom;
        bool quoted = s < end && *s == '"';
        if (quoted) s++;
        while (s < end) {
            char ch = *s;
            if (quoted) {
                if (ch == '"' && s + 1 < end && s[1] == '"') s++;
                else if (ch == '"') {
                    quoted = false;
                    s++;
                    continue;
                }
            } else if (ch == sep || ch == '\n' || ch == '\r') {
                break;
            }
            if (len + 2 > fcap) {
                char *g = realloc(f, fcap *= 2);
                if (!g) {
                    free(f);
                    goto oom;
                }
                f = g;
            }
            f[len++] = ch;
            s++;
            if ((size_t)(s - start) > max) {
                free(f);
                free_fields(fs, n);
                return -3;
            }
        }
        f[len] = '\0';
        if (n == cap) {
            char **g = realloc(fs, (size_t)(cap *= 2) * sizeof *fs);
            if (!g) {
                free(f);
                goto oom;
            }
            fs = g;
        }
        fs[n++] = f;
        if (s < end && *s == sep) {
            s++;
            continue;
        }
        if (s < end && *s == '\r') s++;
        if (s < end && *s == '\n') s++;
        break;
    }
    *p = s;
    *fields = fs;
    return n;
oom:
    free_fields(fs, n);
    return -2;
}

int csv_load(const char *path, const char *img_key, const char *caption_key, char sep, csv_pairs *out, clipc_error *err) {
    memset(out, 0, sizeof *out);
    unsigned char *text;
    size_t len;
    if (read_file(path, &text, &len, err)) return -1;
    if (!sep) { /* by extension: .tsv (and OpenCLIP's default) tab, .csv comma */
        size_t pl = strlen(path);
        sep = pl > 4 && !strcmp(path + pl - 4, ".csv") ? ',' : '\t';
    }
    const char *p = (const char *)text, *end = p + len;
    size_t max_record = (size_t)limit_of(LIMIT_CSV_RECORD_BYTES);
    long long max_rows = limit_of(LIMIT_CSV_ROWS);
    if (max_rows > INT_MAX / 2) max_rows = INT_MAX / 2; /* row counts are ints */
    char **header;
    int nh = read_record(&p, end, sep, max_record, &header), img_col = -1, cap_col = -1;
    if (nh == -2 || nh == -3) {
        free(text);
        if (nh == -3)
            return clipc_fail(err, "%s:1: a record longer than %zu bytes (%s raises the limit)", path, max_record,
                              limit_env(LIMIT_CSV_RECORD_BYTES));
        return clipc_fail(err, "out of memory reading %s", path);
    }
    for (int i = 0; i < nh; i++) {
        if (!strcmp(header[i], img_key)) img_col = i;
        if (!strcmp(header[i], caption_key)) cap_col = i;
    }
    if (nh > 0) free_fields(header, nh);
    if (img_col < 0 || cap_col < 0) {
        free(text);
        return clipc_fail(err, "%s: the header has no '%s' column (--csv-img-key) or no '%s' column (--csv-caption-key)",
                          path, img_key, caption_key);
    }
    const char *slash = strrchr(path, '/');
    size_t dir_len = slash ? (size_t)(slash - path + 1) : 0;
    int cap = 0, line = 1;
    char **fields;
    int nf;
    while ((nf = read_record(&p, end, sep, max_record, &fields)) != -1) {
        line++;
        if (nf == -2 || nf == -3) {
            free(text);
            csv_free(out);
            if (nf == -3)
                return clipc_fail(err, "%s:%d: a record longer than %zu bytes (%s raises the limit)", path, line,
                                  max_record, limit_env(LIMIT_CSV_RECORD_BYTES));
            return clipc_fail(err, "out of memory reading %s", path);
        }
        if (nf == 1 && !fields[0][0]) { /* blank line */
            free_fields(fields, nf);
            continue;
        }
        if (out->count >= max_rows) {
            free_fields(fields, nf);
            free(text);
            csv_free(out);
            return clipc_fail(err, "%s: more than %lld rows (%s raises the limit)", path, max_rows,
                              limit_env(LIMIT_CSV_ROWS));
        }
        if (nf <= img_col || nf <= cap_col || !fields[img_col][0]) {
            free_fields(fields, nf);
            free(text);
            csv_free(out);
            return clipc_fail(err, "%s:%d: missing the image or caption field", path, line);
        }
        if (out->count == cap) {
            cap = cap ? 2 * cap : 1024;
            char **np = realloc(out->paths, (size_t)cap * sizeof *np);
            if (np) out->paths = np;
            char **nc = np ? realloc(out->captions, (size_t)cap * sizeof *nc) : NULL;
            if (nc) out->captions = nc;
            if (!np || !nc) {
                free_fields(fields, nf);
                free(text);
                csv_free(out);
                return clipc_fail(err, "out of memory reading %s", path);
            }
        }
        const char *img = fields[img_col];
        size_t need = (img[0] == '/' ? 0 : dir_len) + strlen(img) + 1;
        char *full = malloc(need), *caption = strdup(fields[cap_col]);
        if (full) snprintf(full, need, "%.*s%s", img[0] == '/' ? 0 : (int)dir_len, path, img);
        free_fields(fields, nf);
        if (!full || !caption) {
            free(full);
            free(caption);
            free(text);
            csv_free(out);
            return clipc_fail(err, "out of memory reading %s", path);
        }
        out->paths[out->count] = full;
        out->captions[out->count] = caption;
        out->count++;
    }
    free(text);
    if (out->count == 0) return clipc_fail(err, "%s: no image/caption rows", path);
    return 0;
}

void csv_free(csv_pairs *c) {
    for (int i = 0; i < c->count; i++) free(c->paths[i]), free(c->captions[i]);
    free(c->paths);
    free(c->captions);
    memset(c, 0, sizeof *c);
}

/* torchvision's RandomResizedCrop.get_params, with our generator. */
static void random_crop_box(int w, int h, rng *r, int *x, int *y, int *cw, int *ch) {
    double area = (double)w * h, log_lo = log(3.0 / 4.0), log_hi = log(4.0 / 3.0);
    for (int attempt = 0; attempt < 10; attempt++) {
        double target = area * (0.9 + 0.1 * rng_uniform(r));
        double ratio = exp(log_lo + (log_hi - log_lo) * rng_uniform(r));
        int tw = (int)lround(sqrt(target * ratio)), th = (int)lround(sqrt(target / ratio));
        if (tw > 0 && tw <= w && th > 0 && th <= h) {
            *y = (int)(rng_next(r) % (uint64_t)(h - th + 1));
            *x = (int)(rng_next(r) % (uint64_t)(w - tw + 1));
            *cw = tw, *ch = th;
            return;
        }
    }
    /* fallback: the central crop at the clamped aspect ratio */
    double in_ratio = (double)w / h;
    if (in_ratio < 3.0 / 4.0) *cw = w, *ch = (int)lround(w / (3.0 / 4.0));
    else if (in_ratio > 4.0 / 3.0) *ch = h, *cw = (int)lround(h * (4.0 / 3.0));
    else *cw = w, *ch = h;
    *x = (w - *cw) / 2, *y = (h - *ch) / 2;
}

int augmented_pixels(const char *path, int R, uint64_t seed, long step, int index, float *out, clipc_error *err) {
    unsigned char *data;
    size_t len;
    if (read_file(path, &data, &len, err)) return -1;
    image im, crop, resized;
    int rc = image_decode(data, len, path, &im, err);
    free(data);
    if (rc) return -1;
    rng r;
    rng_seed(&r, seed * 0x9e3779b97f4a7c15ULL ^ (uint64_t)step * 0xbf58476d1ce4e5b9ULL ^ (uint64_t)index);
    int x, y, cw, ch;
    random_crop_box(im.width, im.height, &r, &x, &y, &cw, &ch);
    rc = image_crop(&im, x, y, cw, ch, &crop, err);
    image_free(&im);
    if (rc) return -1;
    rc = image_resize(&crop, R, R, &resized, err);
    image_free(&crop);
    if (rc) return -1;
    unsigned char *rgb = malloc((size_t)R * R * 3);
    if (!rgb) {
        image_free(&resized);
        return clipc_fail(err, "out of memory");
    }
    image_to_rgb(&resized, rgb);
    image_normalize(rgb, R, out);
    free(rgb);
    image_free(&resized);
    return 0;
}
