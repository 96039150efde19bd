/* data.c — training pairs from Fashion-MNIST (Debian's dataset-fashion-mnist:
 * gzipped IDX files), with captions generated from the labels through
 * varied templates and descriptive phrases.
 *
 * Every batch is a pure function of (seed, step): the data order is a
 * per-epoch permutation drawn from (seed, epoch) and each caption's choices
 * from (seed, step, index). So a run resumed at step s sees exactly the
 * batches it would have seen, with no loader state to save. */
#include "train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

const char *const FMNIST_CLASSES[10] = {"t-shirt", "trouser", "pullover", "dress", "coat",
                                        "sandal", "shirt", "sneaker", "bag", "ankle boot"};

/* Other ways people describe each class. */
static const char *const SYNONYMS[10][4] = {
    {"t-shirt", "tee", "top", "short-sleeved shirt"},
    {"trouser", "pair of trousers", "pair of pants", "pair of slacks"},
    {"pullover", "sweater", "jumper", "knit pullover"},
    {"dress", "frock", "gown", "summer dress"},
    {"coat", "jacket", "overcoat", "winter coat"},
    {"sandal", "summer sandal", "open shoe", "strappy sandal"},
    {"shirt", "button-up shirt", "collared shirt", "blouse"},
    {"sneaker", "trainer", "running shoe", "athletic shoe"},
    {"bag", "handbag", "purse", "tote bag"},
    {"ankle boot", "boot", "short boot", "chelsea boot"},
};

static const char *const TEMPLATES[] = {
    "a photo of a {}.", "a black and white photo of a {}.", "a picture of a {}.", "an image of a {}.",
    "a low resolution photo of a {}.", "a product photo of a {}.", "a grayscale image of a {}.",
    "a small photo of a {}.", "a {}.", "this is a {}.", "a catalog picture of a {}.", "a blurry photo of a {}.",
    "a close-up photo of a {}.", "a {} on a plain background.", "a thumbnail of a {}.",
};

static int read_idx(const char *path, int want_dims, unsigned char **data, int *count, int *rows, int *cols,
                    clipc_error *err) {
    gzFile f = gzopen(path, "rb");
    if (!f) return clipc_fail(err, "%s: cannot open (install Debian's dataset-fashion-mnist)", path);
    unsigned char hdr[16];
    int hlen = want_dims == 3 ? 16 : 8;
    if (gzread(f, hdr, (unsigned)hlen) != hlen || hdr[0] || hdr[1] || hdr[2] != 8 || hdr[3] != want_dims) {
        gzclose(f);
        return clipc_fail(err, "%s: not an IDX file of %d dimensions", path, want_dims);
    }
    *count = hdr[4] << 24 | hdr[5] << 16 | hdr[6] << 8 | hdr[7];
    *rows = want_dims == 3 ? (hdr[8] << 24 | hdr[9] << 16 | hdr[10] << 8 | hdr[11]) : 1;
    *cols = want_dims == 3 ? (hdr[12] << 24 | hdr[13] << 16 | hdr[14] << 8 | hdr[15]) : 1;
    size_t n = (size_t)*count * *rows * *cols;
    if (*count <= 0 || *rows <= 0 || *cols <= 0 || n > (1u << 30)) {
        gzclose(f);
        return clipc_fail(err, "%s: implausible IDX shape", path);
    }
    *data = malloc(n);
    if (!*data) {
        gzclose(f);
        return clipc_fail(err, "out of memory");
    }
    if (gzread(f, *data, (unsigned)n) != (int)n) {
        free(*data);
        gzclose(f);
        return clipc_fail(err, "%s: truncated", path);
    }
    gzclose(f);
    return 0;
}

int fmnist_load(const char *dir, bool train, fmnist *out, clipc_error *err) {
    memset(out, 0, sizeof *out);
    if (!dir) {
        dir = getenv("CLIPC_FASHION_MNIST_DIR");
        if (!dir || !*dir) dir = FMNIST_DIR;
    }
    char ip[1024], lp[1024];
    const char *prefix = train ? "train" : "t10k";
    snprintf(ip, sizeof ip, "%s/%s-images-idx3-ubyte.gz", dir, prefix);
    snprintf(lp, sizeof lp, "%s/%s-labels-idx1-ubyte.gz", dir, prefix);
    int n_labels, one, one2;
    if (read_idx(ip, 3, &out->images, &out->count, &out->height, &out->width, err)) return -1;
    if (read_idx(lp, 1, &out->labels, &n_labels, &one, &one2, err)) {
        fmnist_free(out);
        return -1;
    }
    if (n_labels != out->count) {
        fmnist_free(out);
        return clipc_fail(err, "%s: %d labels for %d images", dir, n_labels, out->count);
    }
    for (int i = 0; i < out->count; i++)
        if (out->labels[i] > 9) {
            fmnist_free(out);
            return clipc_fail(err, "%s: label %d out of range", lp, out->labels[i]);
        }
    return 0;
}

void fmnist_free(fmnist *d) {
    free(d->images);
    free(d->labels);
    memset(d, 0, sizeof *d);
}

/* A 28x28 gray digit as _transform(R) would give it: bicubic resize (when R
 * differs), gray to RGB, CLIP normalisation. */
image fmnist_image(const fmnist *d, int index) {
    return (image){.mode = IM_L, .width = d->width, .height = d->height, .channels = 1,
                   .pixels = d->images + (size_t)index * d->width * d->height};
}

int fmnist_pixels(const fmnist *d, int index, int R, float *out, clipc_error *err) {
    image im = fmnist_image(d, index);
    unsigned char *rgb = malloc((size_t)R * R * 3);
    if (!rgb) return clipc_fail(err, "out of memory");
    int rc = image_resize_crop_rgb(&im, R, rgb, err);
    if (rc == 0) image_normalize(rgb, R, out);
    free(rgb);
    return rc;
}

int fmnist_caption_variants(void) { return (int)(sizeof TEMPLATES / sizeof *TEMPLATES) * 4; }

void fmnist_caption_variant(int label, int k, char *out, size_t cap) {
    const char *t = TEMPLATES[k / 4], *name = SYNONYMS[label][k % 4], *hole = strstr(t, "{}");
    /* "a {}" before a vowel sound reads "an {}": the template's "a " gives way to "an " */
    int an = (hole - t >= 2 && !strncmp(hole - 2, "a ", 2) && strchr("aeiou", name[0]));
    snprintf(out, cap, "%.*s%s%s%s", (int)(hole - t) - (an ? 2 : 0), t, an ? "an " : "", name, hole + 2);
}

const char *fmnist_synonym(int label, int k) { return SYNONYMS[label][k]; }

/* splitmix64 of a few words: the stateless randomness of the data order. */
static uint64_t mix(uint64_t a, uint64_t b, uint64_t c) {
    uint64_t z = a * 0x9e3779b97f4a7c15ULL ^ (b + 0x632be59bd9b4e019ULL) * 0xbf58476d1ce4e5b9ULL ^ c * 0x94d049bb133111ebULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void fmnist_caption(int label, uint64_t seed, long step, int index, char *out, size_t cap) {
    uint64_t r = mix(seed, (uint64_t)step, (uint64_t)index + 1);
    int t = (int)(r % (sizeof TEMPLATES / sizeof *TEMPLATES)), name = (int)((r >> 20) % 4);
    fmnist_caption_variant(label, t * 4 + name, out, cap);
}

/* Sample i of epoch e: a Fisher-Yates permutation drawn from (seed, e). */
int data_order_index(uint64_t seed, long epoch, int count, int i, int *perm_cache, long *cached_epoch) {
    if (*cached_epoch != epoch) {
        rng_permutation(mix(seed, (uint64_t)epoch, 0xda7a), count, perm_cache);
        *cached_epoch = epoch;
    }
    return perm_cache[i];
}
