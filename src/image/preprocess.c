/* preprocess.c — OpenAI's _transform(n) (clip/clip.py), and at the end
 * SigLIP's image processor:
 *     Resize(n, BICUBIC)  short side to n, long side int(n * long / short)
 *     CenterCrop(n)       offset int(round((size - n) / 2)), half to even
 *     convert("RGB")
 *     ToTensor, Normalize(mean, std)  in float32 */
#include "../internal.h"

#include <limits.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const float CLIP_MEAN[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float CLIP_STD[3] = {0.26862954f, 0.26130258f, 0.27577711f};

/* Python's round() of x/2 for integer x: halves go to the even neighbour. */
static int round_half_even_div2(int x) {
    int q = x / 2;
    if (x % 2 != 0 && q % 2 != 0) q += x > 0 ? 1 : -1;
    return q;
}

int image_resize_crop_rgb(const image *im, int size, unsigned char *rgb, clipc_error *err) {
    int w = im->width, h = im->height, rw, rh;
    /* torchvision's Resize(int): the short side becomes size. A long thin
     * image grows with it (1 x 600000 becomes 224 x 134 million), so the
     * resized size is bounded before anything is allocated. */
    long long lw, lh;
    if (w <= h) {
        lw = size;
        lh = (long long)size * h / w;
    } else {
        lh = size;
        lw = (long long)size * w / h;
    }
    long long max = limit_of(LIMIT_IMAGE_PIXELS);
    if (lw > max || lh > max || lw * lh > max || lw > INT_MAX || lh > INT_MAX)
        return clipc_fail(err, "a %dx%d image resized to %lldx%lld would exceed the limit of %lld pixels "
                               "(%s raises it)", w, h, lw, lh, max, limit_env(LIMIT_IMAGE_PIXELS));
    rw = (int)lw, rh = (int)lh;
    image resized;
    if (image_resize(im, rw, rh, &resized, err)) return -1;
    /* torchvision pads when the image is smaller than the crop; Resize makes
     * the short side exactly size, so that never happens here. */
    int left = round_half_even_div2(rw - size), top = round_half_even_div2(rh - size);
    unsigned char *full = malloc((size_t)rw * rh * 3);
    if (!full) {
        image_free(&resized);
        return clipc_fail(err, "out of memory");
    }
    image_to_rgb(&resized, full);
    for (int y = 0; y < size; y++)
        memcpy(rgb + (size_t)y * size * 3, full + ((size_t)(y + top) * rw + left) * 3, (size_t)size * 3);
    free(full);
    image_free(&resized);
    return 0;
}

void image_normalize(const unsigned char *rgb, int size, float *out) {
    size_t plane = (size_t)size * size;
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < plane; i++)
            out[c * plane + i] = ((float)rgb[i * 3 + c] / 255.0f - CLIP_MEAN[c]) / CLIP_STD[c];
}

int image_memory_rgb(const void *data, size_t len, const char *name, int size, unsigned char *rgb, clipc_error *err) {
    image im;
    if (image_decode(data, len, name, &im, err)) return -1;
    int rc = image_resize_crop_rgb(&im, size, rgb, err);
    if (rc != 0) clipc_fail_prefix(err, name);
    image_free(&im);
    return rc;
}

int image_file_rgb(const char *path, int size, unsigned char *rgb, clipc_error *err) {
    unsigned char *data;
    size_t len;
    if (read_file(path, &data, &len, err)) return -1;
    int rc = image_memory_rgb(data, len, path, size, rgb, err);
    free(data);
    return rc;
}

int clipc_preprocess_memory(const void *data, size_t len, const char *name, int size, float *out, clipc_error *err) {
    if (size < 1 || size > 4096) return clipc_fail(err, "preprocess size %d is out of range (1..4096)", size);
    unsigned char *rgb = malloc((size_t)size * size * 3);
    if (!rgb) return clipc_fail(err, "out of memory");
    int rc = image_memory_rgb(data, len, name, size, rgb, err);
    if (rc == 0) image_normalize(rgb, size, out);
    free(rgb);
    return rc;
}

/* SiglipImageProcessor: convert('RGB') first, then PIL's resize of the
 * whole image to size x size (no crop: the aspect ratio is not kept). */
int image_resize_square_rgb(const image *im, int size, int filter, unsigned char *rgb, clipc_error *err) {
    image in = {.mode = IM_RGB, .width = im->width, .height = im->height, .channels = 3};
    if (!(in.pixels = malloc((size_t)im->width * im->height * 3))) return clipc_fail(err, "out of memory");
    image_to_rgb(im, in.pixels);
    image resized;
    int rc = image_resize_filter(&in, size, size, filter, &resized, err);
    free(in.pixels);
    if (rc) return -1;
    memcpy(rgb, resized.pixels, (size_t)size * size * 3);
    image_free(&resized);
    return 0;
}

/* rescale (x * 1/255 in float64, stored float32) then normalize ((x - mean) / std in float32), as
 * transformers' image_transforms compute them. */
static void style_normalize(const image_style *st, const unsigned char *rgb, int size, float *out) {
    size_t plane = (size_t)size * size;
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < plane; i++)
            out[c * plane + i] = ((float)(rgb[i * 3 + c] * (1.0 / 255.0)) - st->mean[c]) / st->std[c];
}

int image_pixels(const image *im, const image_style *style, int size, float *out, clipc_error *err) {
    if (size < 1 || size > 4096) return clipc_fail(err, "preprocess size %d is out of range (1..4096)", size);
    unsigned char *rgb = malloc((size_t)size * size * 3);
    if (!rgb) return clipc_fail(err, "out of memory");
    int rc = style ? image_resize_square_rgb(im, size, style->resample, rgb, err) : image_resize_crop_rgb(im, size, rgb, err);
    if (rc == 0 && style) style_normalize(style, rgb, size, out);
    else if (rc == 0) image_normalize(rgb, size, out);
    free(rgb);
    return rc;
}

int image_style_pixels(const void *data, size_t len, const char *name, const image_style *style, int size, float *out,
                       clipc_error *err) {
    image im;
    if (image_decode(data, len, name, &im, err)) return -1;
    int rc = image_pixels(&im, style, size, out, err);
    if (rc) clipc_fail_prefix(err, name);
    image_free(&im);
    return rc;
}

int clipc_model_preprocess_memory(const clipc_model *m, const void *data, size_t len, const char *name, float *out,
                                  clipc_error *err) {
    const image_style *style = m->cfg.family == CLIPC_SIGLIP ? &m->style : NULL;
    return image_style_pixels(data, len, name, style, m->cfg.image_resolution, out, err);
}

int clipc_model_preprocess_file(const clipc_model *m, const char *path, float *out, clipc_error *err) {
    unsigned char *data;
    size_t len;
    if (read_file(path, &data, &len, err)) return -1;
    int rc = clipc_model_preprocess_memory(m, data, len, path, out, err);
    free(data);
    return rc;
}

int clipc_preprocess_file(const char *path, int size, float *out, clipc_error *err) {
    unsigned char *data;
    size_t len;
    if (read_file(path, &data, &len, err)) return -1;
    int rc = clipc_preprocess_memory(data, len, path, size, out, err);
    free(data);
    return rc;
}
