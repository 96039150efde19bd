/* test_image.c — decoding and _transform(n) against the reference tensors
 * (every photo at 224 and 32), the decoded JPEG pixels, the uint8 images
 * before ToTensor; and the refusal of corrupt, truncated, unsupported and
 * oversized files. */
#include "test.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

static cJSON *load_json(const char *rel) {
    unsigned char *text;
    size_t len;
    clipc_error err;
    if (read_file(ref_path(rel), &text, &len, &err)) return NULL;
    cJSON *j = cJSON_ParseWithLength((const char *)text, len);
    free(text);
    return j;
}

static void check_transform(cJSON *images, int size) {
    char rel[64];
    snprintf(rel, sizeof rel, "preprocess/preprocess_%d.npy", size);
    npy_array ref;
    if (load_npy(rel, &ref)) return;
    size_t per = (size_t)3 * size * size;
    float *ours = malloc(per * sizeof *ours);
    int i = 0, exact = 0;
    double worst = 0;
    for (cJSON *e = images->child; e; e = e->next, i++) {
        const char *file = cJSON_GetObjectItem(e, "file")->valuestring;
        char path[128];
        snprintf(path, sizeof path, "preprocess/images/%s", file);
        clipc_error err;
        if (clipc_preprocess_file(ref_path(path), size, ours, &err)) {
            CHECK(0, "%s", err.message);
            continue;
        }
        double d = max_abs_diff(ours, (float *)ref.data + i * per, per);
        worst = d > worst ? d : worst;
        exact += d == 0.0;
        CHECK(d <= 1e-5, "_transform(%d) of %s: max abs diff %.3g", size, file, d);
    }
    CHECK(i == 13, "13 reference photos, got %d", i);
    printf("  _transform(%d): %d photos, max abs diff %.3g, %d bit-exact\n", size, i, worst, exact);
    free(ours);
    npy_free(&ref);
}

static void check_resized_u8(cJSON *images) {
    npy_array ref;
    if (load_npy("preprocess/resized_u8_32.npy", &ref)) return;
    unsigned char rgb[32 * 32 * 3];
    int i = 0;
    for (cJSON *e = images->child; e; e = e->next, i++) {
        const char *file = cJSON_GetObjectItem(e, "file")->valuestring;
        char path[128];
        snprintf(path, sizeof path, "preprocess/images/%s", file);
        unsigned char *data;
        size_t len;
        clipc_error err;
        image im;
        if (read_file(ref_path(path), &data, &len, &err) || image_decode(data, len, file, &im, &err)) {
            CHECK(0, "%s", err.message);
            continue;
        }
        CHECK(image_resize_crop_rgb(&im, 32, rgb, &err) == 0, "%s", err.message);
        CHECK(!memcmp(rgb, (unsigned char *)ref.data + (size_t)i * sizeof rgb, sizeof rgb),
              "resized uint8 pixels of %s differ", file);
        image_free(&im);
        free(data);
    }
    npy_free(&ref);
}

static void check_decoded(cJSON *images) {
    for (cJSON *e = images->child; e; e = e->next) {
        cJSON *dec = cJSON_GetObjectItem(e, "decoded");
        if (!dec) continue;
        const char *file = cJSON_GetObjectItem(e, "file")->valuestring;
        char path[128], rel[128];
        snprintf(path, sizeof path, "preprocess/images/%s", file);
        snprintf(rel, sizeof rel, "preprocess/%s", dec->valuestring);
        npy_array ref;
        if (load_npy(rel, &ref)) continue;
        unsigned char *data;
        size_t len;
        clipc_error err;
        image im;
        if (read_file(ref_path(path), &data, &len, &err) || image_decode(data, len, file, &im, &err)) {
            CHECK(0, "%s", err.message);
            npy_free(&ref);
            continue;
        }
        CHECK(ref.count == (size_t)im.width * im.height * im.channels && !memcmp(im.pixels, ref.data, ref.count),
              "decoded pixels of %s differ from PIL's", file);
        image_free(&im);
        free(data);
        npy_free(&ref);
    }
}

static void png_chunk(FILE *f, const char *type, const unsigned char *data, unsigned len) {
    unsigned char hdr[8] = {len >> 24, len >> 16, len >> 8, len, type[0], type[1], type[2], type[3]};
    fwrite(hdr, 1, 8, f);
    fwrite(data, 1, len, f);
    uLong crc = crc32(0, hdr + 4, 4);
    crc = crc32(crc, data, len);
    unsigned char c[4] = {crc >> 24, crc >> 16, crc >> 8, crc};
    fwrite(c, 1, 4, f);
}

static void check_bad_files(void) {
    float out[3 * 32 * 32];
    clipc_error err;
    char path[] = "/tmp/clipc_img_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    unsigned char *jpg;
    size_t len;
    CHECK(read_file(ref_path("preprocess/images/coffee_600x400_q90.jpg"), &jpg, &len, &err) == 0, "read");

    FILE *f = fopen(path, "wb");
    fwrite(jpg, 1, len / 2, f);
    fclose(f);
    CHECK(clipc_preprocess_file(path, 32, out, &err) == -1 && strstr(err.message, "truncated") && strstr(err.message, path),
          "truncated JPEG: %s", err.message);

    memset(jpg + 600, 0x55, 4000);
    f = fopen(path, "wb");
    fwrite(jpg, 1, 4000, f);
    fclose(f);
    CHECK(clipc_preprocess_file(path, 32, out, &err) == -1 && strstr(err.message, path), "corrupt JPEG: %s",
          err.message);
    free(jpg);

    unsigned char *png;
    CHECK(read_file(ref_path("preprocess/images/rocket_small_60x90.png"), &png, &len, &err) == 0, "read");
    f = fopen(path, "wb");
    fwrite(png, 1, len - 200, f);
    fclose(f);
    CHECK(clipc_preprocess_file(path, 32, out, &err) == -1 && strstr(err.message, "PNG"), "truncated PNG: %s",
          err.message);
    free(png);

    f = fopen(path, "wb");
    fputs("GIF89a not supported", f);
    fclose(f);
    CHECK(clipc_preprocess_file(path, 32, out, &err) == -1 && strstr(err.message, "unsupported image format"),
          "GIF: %s", err.message);
    f = fopen(path, "wb");
    fclose(f);
    CHECK(clipc_preprocess_file(path, 32, out, &err) == -1 && strstr(err.message, "empty"), "empty: %s", err.message);
    CHECK(clipc_preprocess_file("/nonexistent/x.jpg", 32, out, &err) == -1 && strstr(err.message, "No such file"),
          "missing: %s", err.message);

    /* A valid PNG header announcing 20000 x 20000 pixels is refused before
     * any pixel memory is allocated. */
    f = fopen(path, "wb");
    fwrite("\x89PNG\r\n\x1a\n", 1, 8, f);
    unsigned char ihdr[13] = {0, 0, 0x4e, 0x20, 0, 0, 0x4e, 0x20, 8, 2, 0, 0, 0};
    png_chunk(f, "IHDR", ihdr, 13);
    png_chunk(f, "IDAT", (const unsigned char *)"\x78\x9c\x03\x00\x00\x00\x00\x01", 8);
    png_chunk(f, "IEND", (const unsigned char *)"", 0);
    fclose(f);
    CHECK(clipc_preprocess_file(path, 32, out, &err) == -1 && strstr(err.message, "over the limit"), "oversized: %s",
          err.message);
    unlink(path);
}

/* Modes the shared reference lacks, against Pillow 9.4 (tests/data/modes,
 * made by tools/gen_mode_fixtures.py). */
static void check_more_modes(void) {
    npy_array ref;
    clipc_error err;
    if (npy_read("tests/data/modes/expected_32.npy", &ref, &err)) {
        CHECK(0, "%s", err.message);
        return;
    }
    FILE *f = fopen("tests/data/modes/files.txt", "r");
    char name[128];
    int i = 0;
    float ours[3 * 32 * 32];
    while (f && fscanf(f, "%127s", name) == 1) {
        char path[256];
        snprintf(path, sizeof path, "tests/data/modes/%s", name);
        int rc = clipc_preprocess_file(path, 32, ours, &err);
        CHECK(rc == 0, "%s", err.message);
        double d = rc ? INFINITY : max_abs_diff(ours, (float *)ref.data + (size_t)i * 3 * 32 * 32, 3 * 32 * 32);
        CHECK(d == 0.0, "_transform(32) of %s differs from Pillow 9.4 by %.3g", name, d);
        i++;
    }
    CHECK(i == 7 && (size_t)i * 3 * 32 * 32 == ref.count, "mode fixtures: %d images", i);
    if (f) fclose(f);
    npy_free(&ref);
}

/* TIFF and WebP against Pillow 9.4 (tests/data/formats, made by
 * tools/gen_format_fixtures.py): the decoded pixels, as convert('RGB')
 * gives them, and _transform(24), both bit for bit. */
static void check_formats(void) {
    npy_array rgb, t24;
    clipc_error err;
    if (npy_read("tests/data/formats/rgb.npy", &rgb, &err) || npy_read("tests/data/formats/t24.npy", &t24, &err)) {
        CHECK(0, "%s", err.message);
        return;
    }
    FILE *f = fopen("tests/data/formats/files.txt", "r");
    char name[128], mode[16];
    int i = 0, w, h, tiffs = 0, webps = 0;
    size_t offset = 0;
    float ours[3 * 24 * 24];
    while (f && fscanf(f, "%127s %d %d %15s", name, &w, &h, mode) == 4) {
        char path[256];
        snprintf(path, sizeof path, "tests/data/formats/%s", name);
        unsigned char *data = NULL, *pixels = NULL;
        size_t len = 0, n = (size_t)w * h * 3;
        image im;
        int rc = read_file(path, &data, &len, &err);
        if (rc == 0) rc = image_decode(data, len, name, &im, &err);
        CHECK(rc == 0, "%s", err.message);
        if (rc == 0) {
            pixels = malloc(n);
            image_to_rgb(&im, pixels);
            CHECK(im.width == w && im.height == h && offset + n <= rgb.count &&
                      !memcmp(pixels, (unsigned char *)rgb.data + offset, n),
                  "%s (%s): decoded pixels differ from Pillow 9.4's", name, mode);
            image_free(&im);
            free(pixels);
        }
        free(data);
        offset += n;
        rc = clipc_preprocess_file(path, 24, ours, &err);
        CHECK(rc == 0, "%s", err.message);
        double d = rc ? INFINITY : max_abs_diff(ours, (float *)t24.data + (size_t)i * 3 * 24 * 24, 3 * 24 * 24);
        CHECK(d == 0.0, "_transform(24) of %s differs from Pillow 9.4 by %.3g", name, d);
        tiffs += strstr(name, ".tif") != NULL, webps += strstr(name, ".webp") != NULL;
        i++;
    }
    CHECK(tiffs == 20 && webps == 5 && offset == rgb.count && (size_t)i * 3 * 24 * 24 == t24.count,
          "format fixtures: %d TIFF, %d WebP", tiffs, webps);
    if (f) fclose(f);
    npy_free(&rgb);
    npy_free(&t24);
    /* what is not read says so, in one line */
    static const unsigned char tiff16[] = "II*\0\x08\0\0\0\x06\0"
                                          "\x00\x01\x03\0\x01\0\0\0\x02\0\0\0"  /* width 2 */
                                          "\x01\x01\x03\0\x01\0\0\0\x02\0\0\0"  /* height 2 */
                                          "\x02\x01\x03\0\x01\0\0\0\x10\0\0\0"  /* 16 bits */
                                          "\x06\x01\x03\0\x01\0\0\0\x01\0\0\0"  /* min-is-black */
                                          "\x11\x01\x04\0\x01\0\0\0\x56\0\0\0"  /* the strip at 86 */
                                          "\x17\x01\x04\0\x01\0\0\0\x08\0\0\0"  /* of 8 bytes */
                                          "\0\0\0\0" "\1\1\2\2\3\3\4\4";
    image im;
    CHECK(image_decode(tiff16, sizeof tiff16 - 1, "x.tif", &im, &err) == -1 && strstr(err.message, "16-bit") &&
              strstr(err.message, "x.tif"),
          "16-bit TIFF: %s", err.message);
    static const unsigned char bad_webp[] = "RIFF\x20\0\0\0WEBPVP8 \x10\0\0\0garbagegarbage!!";
    CHECK(image_decode(bad_webp, sizeof bad_webp - 1, "x.webp", &im, &err) == -1 && strstr(err.message, "corrupt WebP"),
          "corrupt WebP: %s", err.message);
    static const unsigned char bad_tiff[] = "II*\0\xff\xff\xff\x7f";
    CHECK(image_decode(bad_tiff, sizeof bad_tiff - 1, "y.tif", &im, &err) == -1 && strstr(err.message, "corrupt TIFF"),
          "corrupt TIFF: %s", err.message);
}

void test_image(void) {
    check_more_modes();
    check_formats();
    cJSON *meta = load_json("preprocess/preprocess.json");
    CHECK(meta != NULL, "cannot read preprocess.json");
    if (!meta) return;
    cJSON *images = cJSON_GetObjectItem(meta, "images");
    check_transform(images, 224);
    check_transform(images, 32);
    check_resized_u8(images);
    check_decoded(images);
    check_bad_files();
    cJSON_Delete(meta);
}
