/* encode.c — PNG encoding with libpng, into memory: thumbnails for the
 * pictures clipc draws (retrieval sheets). */
#include "../internal.h"

#include <png.h>
#include <stdlib.h>
#include <string.h>

typedef struct png_buffer {
    unsigned char *data;
    size_t len, cap;
    int failed;
} png_buffer;

static void write_to_buffer(png_structp png, png_bytep bytes, png_size_t n) {
    png_buffer *b = png_get_io_ptr(png);
    if (b->failed) return;
    if (b->len + n > b->cap) {
        size_t cap = (b->cap ? 2 * b->cap : 4096);
        while (cap < b->len + n) cap *= 2;
        unsigned char *d = realloc(b->data, cap);
        if (!d) {
            b->failed = 1;
            return;
        }
        b->data = d, b->cap = cap;
    }
    memcpy(b->data + b->len, bytes, n);
    b->len += n;
}

static void flush_nothing(png_structp png) { (void)png; }

int image_encode_png(const unsigned char *rgb, int width, int height, unsigned char **out, size_t *len,
                     clipc_error *err) {
    png_buffer buf = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_write_struct(&png, &info);
        return clipc_fail(err, "out of memory");
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(buf.data);
        return clipc_fail(err, "PNG encoding failed");
    }
    png_set_write_fn(png, &buf, write_to_buffer, flush_nothing);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < height; y++) png_write_row(png, (png_bytep)(rgb + (size_t)y * width * 3));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    if (buf.failed) {
        free(buf.data);
        return clipc_fail(err, "out of memory");
    }
    *out = buf.data, *len = buf.len;
    return 0;
}
