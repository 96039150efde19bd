/* resize.c — Pillow's Image.resize(size, BICUBIC) (and BILINEAR), reproduced
 * in its own arithmetic (Pillow 9.4, libImaging/Resample.c and Geometry.c):
 *
 *  - coefficients: cubic convolution with a = -0.5, support 2 * max(scale,1)
 *    (antialiasing when shrinking; BILINEAR: the triangle 1 - |x|, support
 *    1 * max(scale, 1)), pixel centres at (i + 0.5) * scale,
 *    normalised to sum 1, then rounded to 22-bit fixed point;
 *  - two passes, horizontal first; each rounds (+2^21, >>22) and clips to
 *    uint8; a pass whose size does not change is skipped;
 *  - LA and RGBA are resized premultiplied and un-premultiplied after;
 *  - P and 1 use NEAREST: source = int((x + 0.5) * scale), accumulated in
 *    double as Pillow's ImagingScaleAffine does;
 *  - I (16-bit gray PNG) resamples in double and rounds half away from zero. */
#include "../internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PRECISION_BITS (32 - 8 - 2)

static double bicubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

static double bilinear(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

typedef struct coeffs {
    int ksize;
    int *bounds;   /* [out][2]: first input index, count */
    double *k;     /* [out][ksize] */
    int32_t *fixed;/* the same in fixed point */
} coeffs;

static int precompute(int in_size, int out_size, int filter, coeffs *c) {
    double scale = (double)in_size / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double (*fn)(double) = filter == RESAMPLE_BILINEAR ? bilinear : bicubic;
    double support = (filter == RESAMPLE_BILINEAR ? 1.0 : 2.0) * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    c->ksize = ksize;
    c->bounds = malloc((size_t)out_size * 2 * sizeof *c->bounds);
    c->k = calloc((size_t)out_size * ksize, sizeof *c->k);
    c->fixed = malloc((size_t)out_size * ksize * sizeof *c->fixed);
    if (!c->bounds || !c->k || !c->fixed) return -1;
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double *k = c->k + (size_t)xx * ksize;
        for (int x = 0; x < xmax; x++) {
            double w = fn((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (int x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        c->bounds[2 * xx] = xmin;
        c->bounds[2 * xx + 1] = xmax;
    }
    for (size_t i = 0; i < (size_t)out_size * ksize; i++)
        c->fixed[i] = c->k[i] < 0 ? (int32_t)(-0.5 + c->k[i] * (1 << PRECISION_BITS))
                                  : (int32_t)(0.5 + c->k[i] * (1 << PRECISION_BITS));
    return 0;
}

static void coeffs_free(coeffs *c) {
    free(c->bounds);
    free(c->k);
    free(c->fixed);
}

static unsigned char clip8(int32_t v) {
    v >>= PRECISION_BITS; /* arithmetic shift: floor, as Pillow's lookup */
    return (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* One 8-bit pass along x (horizontal) or y (vertical); channels independent. */
static void pass_8bpc(const unsigned char *in, int iw, int ih, unsigned char *out, int ow, int oh, int ch,
                      const coeffs *c, bool horizontal) {
#pragma omp parallel for if ((size_t)ow * oh > 65536)
    for (int y = 0; y < oh; y++)
        for (int x = 0; x < ow; x++) {
            int o = horizontal ? x : y;
            int first = c->bounds[2 * o], count = c->bounds[2 * o + 1];
            const int32_t *k = c->fixed + (size_t)o * c->ksize;
            for (int b = 0; b < ch; b++) {
                int32_t ss = 1 << (PRECISION_BITS - 1);
                for (int i = 0; i < count; i++) {
                    size_t src = horizontal ? ((size_t)y * iw + first + i) : ((size_t)(first + i) * iw + x);
                    ss += in[src * ch + b] * k[i];
                }
                out[((size_t)y * ow + x) * ch + b] = clip8(ss);
            }
        }
    (void)ih;
}

static int round_up(double f) { return (int)(f >= 0.0 ? f + 0.5 : f - 0.5); }

static void pass_32bpc(const int32_t *in, int iw, int32_t *out, int ow, int oh, const coeffs *c, bool horizontal) {
    for (int y = 0; y < oh; y++)
        for (int x = 0; x < ow; x++) {
            int o = horizontal ? x : y;
            int first = c->bounds[2 * o], count = c->bounds[2 * o + 1];
            const double *k = c->k + (size_t)o * c->ksize;
            double ss = 0.0;
            for (int i = 0; i < count; i++)
                ss += in[horizontal ? ((size_t)y * iw + first + i) : ((size_t)(first + i) * iw + x)] * k[i];
            out[(size_t)y * ow + x] = round_up(ss);
        }
}

/* MULDIV255: (a * b + 128) rounded division by 255, as Pillow computes it. */
static unsigned char muldiv255(unsigned a, unsigned b) {
    unsigned t = a * b + 128;
    return (unsigned char)(((t >> 8) + t) >> 8);
}

static int resample(const image *in, int w, int h, int filter, image *out, clipc_error *err) {
    int ch = in->channels;
    bool wide = in->mode == IM_I;
    size_t esz = wide ? 4 : 1;
    const unsigned char *src = in->pixels;
    unsigned char *premul = NULL, *tmp = NULL, *dst = NULL;
    coeffs cx = {0}, cy = {0};
    int rc = -1;
    bool alpha = in->mode == IM_RGBA || in->mode == IM_LA;
    if (alpha) { /* RGBA -> RGBa, LA -> La */
        size_t n = (size_t)in->width * in->height;
        premul = malloc(n * ch);
        if (!premul) goto done;
        for (size_t i = 0; i < n; i++) {
            const unsigned char *p = in->pixels + i * ch;
            unsigned a = p[ch - 1];
            for (int b = 0; b < ch - 1; b++) premul[i * ch + b] = muldiv255(p[b], a);
            premul[i * ch + ch - 1] = (unsigned char)a;
        }
        src = premul;
    }
    if (precompute(in->width, w, filter, &cx) || precompute(in->height, h, filter, &cy)) goto done;
    int cw = in->width;
    if (w != in->width) {
        tmp = malloc((size_t)w * in->height * ch * esz);
        if (!tmp) goto done;
        if (wide)
            pass_32bpc((const int32_t *)src, in->width, (int32_t *)tmp, w, in->height, &cx, true);
        else
            pass_8bpc(src, in->width, in->height, tmp, w, in->height, ch, &cx, true);
        src = tmp;
        cw = w;
    }
    dst = malloc((size_t)w * h * ch * esz);
    if (!dst) goto done;
    if (h != in->height) {
        if (wide)
            pass_32bpc((const int32_t *)src, cw, (int32_t *)dst, w, h, &cy, false);
        else
            pass_8bpc(src, cw, in->height, dst, w, h, ch, &cy, false);
    } else {
        memcpy(dst, src, (size_t)w * h * ch * esz);
    }
    if (alpha) { /* RGBa -> RGBA */
        for (size_t i = 0; i < (size_t)w * h; i++) {
            unsigned char *p = dst + i * ch;
            unsigned a = p[ch - 1];
            if (a != 255 && a != 0)
                for (int b = 0; b < ch - 1; b++) {
                    unsigned v = 255u * p[b] / a;
                    p[b] = (unsigned char)(v > 255 ? 255 : v);
                }
        }
    }
    *out = *in;
    out->width = w;
    out->height = h;
    out->pixels = dst;
    dst = NULL;
    rc = 0;
done:
    coeffs_free(&cx);
    coeffs_free(&cy);
    free(premul);
    free(tmp);
    free(dst);
    return rc ? clipc_fail(err, "out of memory resizing a %dx%d image", in->width, in->height) : 0;
}

/* Pillow's ImagingScaleAffine: NEAREST for palette and bilevel images. */
static int nearest(const image *in, int w, int h, image *out, clipc_error *err) {
    int ch = in->channels;
    unsigned char *dst = malloc((size_t)w * h * ch);
    int *xin = malloc((size_t)w * sizeof *xin);
    if (!dst || !xin) {
        free(dst);
        free(xin);
        return clipc_fail(err, "out of memory resizing");
    }
    double ax = (double)in->width / w, ay = (double)in->height / h;
    double xo = ax * 0.5, yo = ay * 0.5;
    for (int x = 0; x < w; x++, xo += ax) {
        int xi = xo < 0.0 ? -1 : (int)xo;
        xin[x] = xi < in->width ? xi : in->width - 1;
    }
    for (int y = 0; y < h; y++, yo += ay) {
        int yi = yo < 0.0 ? -1 : (int)yo;
        if (yi >= in->height) yi = in->height - 1;
        for (int x = 0; x < w; x++)
            memcpy(dst + ((size_t)y * w + x) * ch, in->pixels + ((size_t)yi * in->width + xin[x]) * ch, (size_t)ch);
    }
    free(xin);
    *out = *in;
    out->width = w;
    out->height = h;
    out->pixels = dst;
    return 0;
}

int image_resize(const image *in, int w, int h, image *out, clipc_error *err) {
    return image_resize_filter(in, w, h, RESAMPLE_BICUBIC, out, err);
}

int image_resize_filter(const image *in, int w, int h, int filter, image *out, clipc_error *err) {
    if (w == in->width && h == in->height) { /* Pillow returns a copy */
        size_t n = (size_t)w * h * in->channels * (in->mode == IM_I ? 4 : 1);
        *out = *in;
        out->pixels = malloc(n);
        if (!out->pixels) return clipc_fail(err, "out of memory");
        memcpy(out->pixels, in->pixels, n);
        return 0;
    }
    if (in->mode == IM_P || in->mode == IM_1) return nearest(in, w, h, out, err);
    return resample(in, w, h, filter, out, err);
}

/* Pillow's convert('RGB') for each mode. */
void image_to_rgb(const image *im, unsigned char *rgb) {
    size_t n = (size_t)im->width * im->height;
    for (size_t i = 0; i < n; i++) {
        const unsigned char *p = im->pixels + i * im->channels;
        unsigned char *o = rgb + 3 * i;
        switch (im->mode) {
        case IM_L: case IM_1: case IM_LA: o[0] = o[1] = o[2] = p[0]; break;
        case IM_RGB: case IM_RGBA: o[0] = p[0], o[1] = p[1], o[2] = p[2]; break;
        case IM_P: memcpy(o, im->palette + 3 * p[0], 3); break;
        case IM_I: {
            int32_t v = ((const int32_t *)im->pixels)[i];
            o[0] = o[1] = o[2] = (unsigned char)(v <= 0 ? 0 : v >= 255 ? 255 : v);
            break;
        }
        case IM_CMYK: { /* cmyk2rgb: nk - MULDIV255(c, nk) */
            unsigned nk = 255u - p[3];
            for (int b = 0; b < 3; b++) {
                int v = (int)nk - muldiv255(p[b], nk);
                o[b] = (unsigned char)(v < 0 ? 0 : v);
            }
            break;
        }
        }
    }
}

/* A copy of the w x h region at (x, y), as Pillow's Image.crop. */
int image_crop(const image *in, int x, int y, int w, int h, image *out, clipc_error *err) {
    size_t esz = (size_t)in->channels * (in->mode == IM_I ? 4 : 1);
    if (x < 0 || y < 0 || w < 1 || h < 1 || x + w > in->width || y + h > in->height)
        return clipc_fail(err, "crop box outside the image");
    *out = *in;
    out->width = w;
    out->height = h;
    out->pixels = malloc((size_t)w * h * esz);
    if (!out->pixels) return clipc_fail(err, "out of memory");
    for (int r = 0; r < h; r++)
        memcpy(out->pixels + (size_t)r * w * esz, in->pixels + ((size_t)(y + r) * in->width + x) * esz, (size_t)w * esz);
    return 0;
}
