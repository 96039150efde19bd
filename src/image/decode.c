/* decode.c — JPEG and PNG (TIFF: tiff.c, WebP: webp.c) into the image modes Pillow gives them on
 * Image.open, with the decoders Pillow itself uses (libjpeg-turbo with its
 * defaults, libpng), so pixels match bit for bit:
 *   JPEG: gray -> L, YCbCr/RGB -> RGB, CMYK/YCCK -> CMYK (Adobe-inverted)
 *   PNG:  gray 1-bit -> 1, 2/4/8-bit -> L, 16-bit -> I; gray+alpha -> LA;
 *         RGB -> RGB; RGBA -> RGBA (16-bit ones keep the high byte);
 *         palette -> P. Transparency chunks and gamma are ignored, as by
 *         convert('RGB'). EXIF orientation is ignored, as by OpenAI's code. */
#include "../internal.h"

#include <stdio.h> /* before jpeglib.h, which uses FILE */

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

void image_free(image *im) {
    free(im->pixels);
    im->pixels = NULL;
}

int image_check_size(const char *name, long long w, long long h, clipc_error *err) {
    if (w <= 0 || h <= 0) return clipc_fail(err, "%s: image has no pixels (%lldx%lld)", name, w, h);
    long long max = limit_of(LIMIT_IMAGE_PIXELS);
    if (w > max || h > max || w * h > max)
        return clipc_fail(err, "%s: image is %lldx%lld = %lld pixels, over the limit of %lld (%s raises it)", name, w,
                          h, w * h, max, limit_env(LIMIT_IMAGE_PIXELS));
    return 0;
}

/* ---- JPEG -------------------------------------------------------------------- */

typedef struct jpeg_failure {
    struct jpeg_error_mgr base;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
    bool truncated;
} jpeg_failure;

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_failure *f = (jpeg_failure *)cinfo->err;
    f->base.format_message(cinfo, f->message);
    longjmp(f->jump, 1);
}

/* libjpeg pads a truncated file with gray and only warns; Pillow refuses
 * it ("image file is truncated"), and so do we. Other warnings are ignored. */
static void jpeg_on_message(j_common_ptr cinfo, int level) {
    jpeg_failure *f = (jpeg_failure *)cinfo->err;
    if (level < 0 && f->base.msg_code == JWRN_JPEG_EOF) f->truncated = true;
}

static int decode_jpeg(const unsigned char *data, size_t len, const char *name, image *out, clipc_error *err) {
    struct jpeg_decompress_struct cinfo;
    jpeg_failure fail;
    memset(&fail, 0, sizeof fail);
    cinfo.err = jpeg_std_error(&fail.base);
    fail.base.error_exit = jpeg_on_error;
    fail.base.emit_message = jpeg_on_message;
    unsigned char *volatile pixels = NULL;
    if (setjmp(fail.jump)) {
        jpeg_destroy_decompress(&cinfo);
        free(pixels);
        return clipc_fail(err, "%s: corrupt JPEG: %s", name, fail.message);
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)len);
    jpeg_read_header(&cinfo, TRUE);
    if (image_check_size(name, cinfo.image_width, cinfo.image_height, err)) {
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    switch (cinfo.jpeg_color_space) {
    case JCS_GRAYSCALE: out->mode = IM_L, out->channels = 1, cinfo.out_color_space = JCS_GRAYSCALE; break;
    case JCS_CMYK: case JCS_YCCK: out->mode = IM_CMYK, out->channels = 4, cinfo.out_color_space = JCS_CMYK; break;
    default: out->mode = IM_RGB, out->channels = 3, cinfo.out_color_space = JCS_RGB; break;
    }
    jpeg_start_decompress(&cinfo);
    out->width = (int)cinfo.output_width;
    out->height = (int)cinfo.output_height;
    size_t stride = (size_t)out->width * out->channels;
    pixels = malloc(stride * out->height);
    if (!pixels) {
        jpeg_destroy_decompress(&cinfo);
        return clipc_fail(err, "%s: out of memory", name);
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = pixels + stride * cinfo.output_scanline;
        jpeg_read_scanlines(&cinfo, &row, 1);
        if (fail.truncated) break;
    }
    if (fail.truncated) {
        jpeg_destroy_decompress(&cinfo);
        free(pixels);
        return clipc_fail(err, "%s: JPEG file is truncated", name);
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    if (out->mode == IM_CMYK) /* Pillow reads CMYK JPEGs as "CMYK;I" (Adobe) */
        for (size_t i = 0; i < stride * out->height; i++) pixels[i] = (unsigned char)(255 - pixels[i]);
    out->pixels = pixels;
    return 0;
}

/* ---- PNG ------------------------------------------------------------------------ */

typedef struct png_source {
    const unsigned char *data;
    size_t len, pos;
} png_source;

typedef struct png_failure {
    jmp_buf jump;
    char message[256];
} png_failure;

static void png_on_error(png_structp png, png_const_charp msg) {
    png_failure *f = png_get_error_ptr(png);
    snprintf(f->message, sizeof f->message, "%s", msg);
    longjmp(f->jump, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

static void png_read_mem(png_structp png, png_bytep dst, png_size_t n) {
    png_source *s = png_get_io_ptr(png);
    if (s->len - s->pos < n) png_error(png, "file is truncated");
    memcpy(dst, s->data + s->pos, n);
    s->pos += n;
}

static int decode_png(const unsigned char *data, size_t len, const char *name, image *out, clipc_error *err) {
    png_failure fail;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &fail, png_on_error, png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        return clipc_fail(err, "%s: out of memory", name);
    }
    unsigned char *volatile pixels = NULL;
    png_bytep *volatile rows = NULL;
    if (setjmp(fail.jump)) {
        png_destroy_read_struct(&png, &info, NULL);
        free(pixels);
        free(rows);
        return clipc_fail(err, "%s: corrupt PNG: %s", name, fail.message);
    }
    png_source src = {data, len, 0};
    png_set_read_fn(png, &src, png_read_mem);
    png_set_crc_action(png, PNG_CRC_ERROR_QUIT, PNG_CRC_ERROR_QUIT);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    if (image_check_size(name, w, h, err)) {
        png_destroy_read_struct(&png, &info, NULL);
        return -1;
    }
    int type = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
    bool gray16 = false;
    switch (type) {
    case PNG_COLOR_TYPE_GRAY:
        if (depth == 16) {
            gray16 = true; /* Pillow mode I: values 0..65535 */
            out->mode = IM_I, out->channels = 1;
        } else {
            if (depth < 8) png_set_expand_gray_1_2_4_to_8(png); /* L;2 / L;4 scale like this */
            out->mode = depth == 1 ? IM_1 : IM_L, out->channels = 1;
        }
        break;
    case PNG_COLOR_TYPE_GRAY_ALPHA: out->mode = IM_LA, out->channels = 2; break;
    case PNG_COLOR_TYPE_RGB: out->mode = IM_RGB, out->channels = 3; break;
    case PNG_COLOR_TYPE_RGB_ALPHA: out->mode = IM_RGBA, out->channels = 4; break;
    case PNG_COLOR_TYPE_PALETTE: {
        out->mode = IM_P, out->channels = 1;
        if (depth < 8) png_set_packing(png);
        png_colorp pal;
        int n = 0;
        memset(out->palette, 0, sizeof out->palette);
        if (png_get_PLTE(png, info, &pal, &n))
            for (int i = 0; i < n && i < 256; i++) {
                out->palette[3 * i] = pal[i].red;
                out->palette[3 * i + 1] = pal[i].green;
                out->palette[3 * i + 2] = pal[i].blue;
            }
        break;
    }
    default: png_error(png, "unsupported color type");
    }
    if (depth == 16 && !gray16) png_set_strip_16(png); /* Pillow's ;16B raw modes keep the high byte */
    if (gray16) png_set_swap(png);                      /* native-endian 16-bit samples */
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    size_t stride = png_get_rowbytes(png, info);
    pixels = malloc(stride * h);
    rows = malloc(h * sizeof *rows);
    if (!pixels || !rows) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) rows[y] = pixels + y * stride;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    out->width = (int)w;
    out->height = (int)h;
    if (gray16) { /* widen to int32 samples, as Pillow's I mode holds them */
        int32_t *wide = malloc((size_t)w * h * sizeof *wide);
        if (!wide) {
            free(pixels);
            return clipc_fail(err, "%s: out of memory", name);
        }
        const uint16_t *src16 = (const uint16_t *)pixels;
        for (size_t i = 0; i < (size_t)w * h; i++) wide[i] = src16[i];
        free(pixels);
        out->pixels = (unsigned char *)wide;
        return 0;
    }
    if (out->mode == IM_1) /* mode 1 holds 0 or 255 */
        for (size_t i = 0; i < (size_t)w * h; i++) pixels[i] = pixels[i] ? 255 : 0;
    out->pixels = pixels;
    return 0;
}

int image_decode(const unsigned char *data, size_t len, const char *name, image *out, clipc_error *err) {
    memset(out, 0, sizeof *out);
    if (len >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return decode_jpeg(data, len, name, out, err);
    if (len >= 8 && !memcmp(data, "\x89PNG\r\n\x1a\n", 8)) return decode_png(data, len, name, out, err);
    if (len >= 4 && (!memcmp(data, "II*\0", 4) || !memcmp(data, "MM\0*", 4))) return decode_tiff(data, len, name, out, err);
    if (len >= 12 && !memcmp(data, "RIFF", 4) && !memcmp(data + 8, "WEBP", 4)) return decode_webp(data, len, name, out, err);
    if (len == 0) return clipc_fail(err, "%s: empty file", name);
    return clipc_fail(err, "%s: unsupported image format (clipc reads JPEG, PNG, TIFF and WebP)", name);
}
