/* tiff.c — TIFF into the mode Pillow 9.4 gives it on Image.open, through
 * libtiff (the library Pillow decodes compressed TIFFs with).
 *
 * The first image of the file, 8-bit samples (1, 2 and 4 bits for gray
 * and palette), chunky (interleaved) samples, in strips or tiles, with any
 * compression libtiff decodes. Modes, as Pillow's OPEN_INFO table maps
 * (photometric, bits, extra samples):
 *   min-is-black / min-is-white gray -> 1 (1-bit) or L (2/4 bits scaled
 *   by 85/17, 8 bits; min-is-white inverted); gray + unassociated alpha
 *   -> LA; RGB -> RGB; RGB + unassociated (or unspecified-by-tag) alpha ->
 *   RGBA; RGB + associated alpha -> RGBA, un-premultiplied (Pillow's
 *   "RGBa" unpacker: c * 255 / a); RGB + an unspecified extra sample ->
 *   RGBX, i.e. RGB; palette (1/2/4/8 bits) -> P with the colour map's high
 *   bytes; CMYK -> CMYK; YCbCr with JPEG compression -> RGB (libtiff's
 *   JPEGCOLORMODE_RGB, as Pillow sets it). 16-bit, float, planar and other
 *   layouts are refused by name. */
#include "../internal.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tiffio.h>

/* ---- libtiff reading from memory, its messages captured ---------------------- */

typedef struct tiff_source {
    const unsigned char *data;
    size_t len, pos;
    char message[256]; /* libtiff's first error */
} tiff_source;

static tmsize_t src_read(thandle_t h, void *buf, tmsize_t n) {
    tiff_source *s = h;
    size_t left = s->len - s->pos, k = (size_t)n < left ? (size_t)n : left;
    memcpy(buf, s->data + s->pos, k);
    s->pos += k;
    return (tmsize_t)k;
}
static tmsize_t src_write(thandle_t h, void *buf, tmsize_t n) { (void)h, (void)buf, (void)n; return -1; }
static toff_t src_seek(thandle_t h, toff_t off, int whence) {
    tiff_source *s = h;
    int64_t base = whence == SEEK_CUR ? (int64_t)s->pos : whence == SEEK_END ? (int64_t)s->len : 0;
    int64_t delta = (int64_t)off; /* libtiff passes a negative offset as its two's complement */
    if (delta < -base || delta > (int64_t)s->len - base) return (toff_t)-1;
    s->pos = (size_t)(base + delta);
    return s->pos;
}
static int src_close(thandle_t h) { (void)h; return 0; }
static toff_t src_size(thandle_t h) { return ((tiff_source *)h)->len; }
static int src_map(thandle_t h, void **base, toff_t *size) { (void)h, (void)base, (void)size; return 0; }
static void src_unmap(thandle_t h, void *base, toff_t size) { (void)h, (void)base, (void)size; }

static int on_error(TIFF *tif, void *user, const char *module, const char *fmt, va_list ap) {
    (void)tif, (void)module;
    tiff_source *s = user;
    if (!s->message[0]) vsnprintf(s->message, sizeof s->message, fmt, ap);
    return 1; /* handled: libtiff prints nothing */
}
static int on_warning(TIFF *tif, void *user, const char *module, const char *fmt, va_list ap) {
    (void)tif, (void)user, (void)module, (void)fmt, (void)ap;
    return 1; /* ignored, as Pillow ignores them */
}

/* ---- the layouts Pillow opens ------------------------------------------------ */

typedef struct tiff_layout {
    int mode, channels;      /* the image's */
    int samples, bits;       /* per pixel in the file */
    bool invert, unpremultiply;
} tiff_layout;

static int layout_of(TIFF *tif, const char *name, tiff_layout *l, clipc_error *err) {
    uint16_t photometric = 0, samples = 1, bits = 1, format = SAMPLEFORMAT_UINT, planar = PLANARCONFIG_CONTIG;
    uint16_t n_extra = 0, *extra = NULL, compression = COMPRESSION_NONE;
    if (!TIFFGetField(tif, TIFFTAG_PHOTOMETRIC, &photometric)) return clipc_fail(err, "%s: TIFF without a photometric tag", name);
    TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLESPERPIXEL, &samples);
    TIFFGetFieldDefaulted(tif, TIFFTAG_BITSPERSAMPLE, &bits);
    TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLEFORMAT, &format);
    TIFFGetFieldDefaulted(tif, TIFFTAG_PLANARCONFIG, &planar);
    TIFFGetFieldDefaulted(tif, TIFFTAG_COMPRESSION, &compression);
    if (!TIFFGetField(tif, TIFFTAG_EXTRASAMPLES, &n_extra, &extra)) n_extra = 0;
    *l = (tiff_layout){.samples = samples, .bits = bits};
    if (format != SAMPLEFORMAT_UINT || (bits != 8 && !(samples == 1 && (bits == 1 || bits == 2 || bits == 4))))
        return clipc_fail(err, "%s: TIFF with %u-bit %s samples is not read (8-bit, or 1/2/4-bit gray and palette)", name,
                          bits, format == SAMPLEFORMAT_IEEEFP ? "float" : format == SAMPLEFORMAT_INT ? "signed" : "unsigned");
    if (planar != PLANARCONFIG_CONTIG && samples > 1)
        return clipc_fail(err, "%s: TIFF with separate colour planes is not read", name);
    int extra0 = n_extra ? extra[0] : -1;
    switch (photometric) {
    case PHOTOMETRIC_MINISWHITE:
    case PHOTOMETRIC_MINISBLACK:
        l->invert = photometric == PHOTOMETRIC_MINISWHITE;
        if (samples == 1) l->mode = bits == 1 ? IM_1 : IM_L, l->channels = 1;
        else if (samples == 2 && extra0 == EXTRASAMPLE_UNASSALPHA && !l->invert) l->mode = IM_LA, l->channels = 2;
        break;
    case PHOTOMETRIC_RGB:
        if (samples == 3) l->mode = IM_RGB, l->channels = 3;
        else if (samples == 4 && extra0 == EXTRASAMPLE_UNSPECIFIED) l->mode = IM_RGB, l->channels = 3; /* RGBX */
        else if (samples == 4) l->mode = IM_RGBA, l->channels = 4, l->unpremultiply = extra0 == EXTRASAMPLE_ASSOCALPHA;
        break;
    case PHOTOMETRIC_PALETTE:
        if (samples == 1) l->mode = IM_P, l->channels = 1;
        break;
    case PHOTOMETRIC_SEPARATED:
        if (samples == 4 && n_extra == 0) l->mode = IM_CMYK, l->channels = 4;
        break;
    case PHOTOMETRIC_YCBCR:
        if (samples == 3 && compression == COMPRESSION_JPEG && TIFFSetField(tif, TIFFTAG_JPEGCOLORMODE, JPEGCOLORMODE_RGB))
            l->mode = IM_RGB, l->channels = 3;
        break;
    }
    if (!l->channels)
        return clipc_fail(err, "%s: TIFF layout not read (photometric %u, %u samples of %u bits, %u extra)", name,
                          photometric, samples, bits, n_extra);
    return 0;
}

/* Row r of a decoded chunk (samples x bits per pixel, rows padded to bytes)
 * into w pixels of the image's mode. */
static void convert_row(const tiff_layout *l, const unsigned char *in, int w, unsigned char *out) {
    if (l->bits < 8) { /* 1/2/4-bit gray or palette indices, MSB first */
        int per = 8 / l->bits, mask = (1 << l->bits) - 1, scale = l->mode == IM_P ? 1 : 255 / mask;
        for (int x = 0; x < w; x++) {
            int v = (in[x / per] >> (8 - l->bits * (x % per + 1))) & mask;
            if (l->invert) v = mask - v;
            out[x] = (unsigned char)(l->mode == IM_1 ? (v ? 255 : 0) : v * scale);
        }
        return;
    }
    for (int x = 0; x < w; x++) {
        const unsigned char *p = in + (size_t)x * l->samples;
        unsigned char *o = out + (size_t)x * l->channels;
        for (int c = 0; c < l->channels; c++) o[c] = l->invert ? (unsigned char)(255 - p[c]) : p[c];
        if (l->unpremultiply) { /* Pillow's unpackRGBa */
            int a = p[3];
            for (int c = 0; c < 3; c++) o[c] = (unsigned char)(a == 0 ? 0 : a == 255 ? p[c] : (p[c] * 255 / a > 255 ? 255 : p[c] * 255 / a));
        }
    }
}

int decode_tiff(const unsigned char *data, size_t len, const char *name, image *out, clipc_error *err) {
    tiff_source src = {data, len, 0, ""};
    TIFFOpenOptions *opts = TIFFOpenOptionsAlloc();
    if (!opts) return clipc_fail(err, "%s: out of memory", name);
    TIFFOpenOptionsSetErrorHandlerExtR(opts, on_error, &src);
    TIFFOpenOptionsSetWarningHandlerExtR(opts, on_warning, &src);
    TIFFOpenOptionsSetMaxSingleMemAlloc(opts, (tmsize_t)256 << 20); /* libtiff's own buffers, for hostile files */
    /* "rm": read, no memory mapping (the data is already in memory) */
    TIFF *tif = TIFFClientOpenExt(name, "rm", &src, src_read, src_write, src_seek, src_close, src_size, src_map,
                                  src_unmap, opts);
    TIFFOpenOptionsFree(opts);
    if (!tif) return clipc_fail(err, "%s: corrupt TIFF: %s", name, src.message[0] ? src.message : "unreadable header");
    uint32_t w = 0, h = 0;
    tiff_layout l = {0};
    int rc = TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &w) && TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &h)
                 ? image_check_size(name, w, h, err)
                 : clipc_fail(err, "%s: TIFF without a size", name);
    if (rc == 0) rc = layout_of(tif, name, &l, err);
    unsigned char *pixels = NULL, *chunk = NULL;
    if (rc == 0) {
        pixels = malloc((size_t)w * h * l.channels);
        if (!pixels) rc = clipc_fail(err, "%s: out of memory", name);
    }
    /* strips are tiles as wide as the image */
    bool tiled = TIFFIsTiled(tif);
    uint32_t tw = w, th = h;
    if (rc == 0) {
        if (tiled) TIFFGetField(tif, TIFFTAG_TILEWIDTH, &tw), TIFFGetField(tif, TIFFTAG_TILELENGTH, &th);
        else if (!TIFFGetFieldDefaulted(tif, TIFFTAG_ROWSPERSTRIP, &th) || th > h) th = h;
        tmsize_t size = tiled ? TIFFTileSize(tif) : TIFFStripSize(tif);
        size_t row_bytes = ((size_t)tw * l.samples * l.bits + 7) / 8;
        /* the decoded chunk is bounded by the image: never more than its pixels' bytes in a tile or strip */
        if (tw == 0 || th == 0 || tw > (1u << 20) || th > (1u << 20) || size <= 0 || (size_t)size < row_bytes * th ||
            (size_t)size > row_bytes * th + 64)
            rc = clipc_fail(err, "%s: corrupt TIFF: bad strip or tile size", name);
        else if (!(chunk = malloc((size_t)size))) rc = clipc_fail(err, "%s: out of memory", name);
        for (uint32_t y0 = 0; y0 < h && rc == 0; y0 += th)
            for (uint32_t x0 = 0; x0 < w && rc == 0; x0 += tw) {
                tmsize_t got = tiled ? TIFFReadEncodedTile(tif, TIFFComputeTile(tif, x0, y0, 0, 0), chunk, size)
                                     : TIFFReadEncodedStrip(tif, TIFFComputeStrip(tif, y0, 0), chunk, size);
                uint32_t rows = y0 + th <= h ? th : h - y0, cols = x0 + tw <= w ? tw : w - x0;
                /* a strip's last rows may be absent; libtiff reports the bytes it decoded */
                if (got < 0 || (size_t)got < row_bytes * (tiled ? th : rows)) {
                    rc = clipc_fail(err, "%s: corrupt TIFF: %s", name, src.message[0] ? src.message : "truncated data");
                    break;
                }
                for (uint32_t r = 0; r < rows; r++)
                    convert_row(&l, chunk + r * row_bytes, (int)cols,
                                pixels + ((size_t)(y0 + r) * w + x0) * l.channels);
            }
    }
    if (rc == 0 && l.mode == IM_P) { /* Pillow: the colour map's high bytes */
        uint16_t *red, *green, *blue;
        if (!TIFFGetField(tif, TIFFTAG_COLORMAP, &red, &green, &blue)) rc = clipc_fail(err, "%s: palette TIFF without a colour map", name);
        else
            for (int i = 0; i < (1 << l.bits) && i < 256; i++) {
                out->palette[3 * i] = (unsigned char)(red[i] >> 8);
                out->palette[3 * i + 1] = (unsigned char)(green[i] >> 8);
                out->palette[3 * i + 2] = (unsigned char)(blue[i] >> 8);
            }
    }
    free(chunk);
    TIFFClose(tif);
    if (rc) {
        free(pixels);
        return rc;
    }
    out->mode = l.mode, out->width = (int)w, out->height = (int)h, out->channels = l.channels, out->pixels = pixels;
    return 0;
}
