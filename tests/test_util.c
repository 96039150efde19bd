/* test_util.c — the small pieces: half-precision conversions against known
 * bit patterns, .npy and .safetensors round trips, F16/BF16 checkpoints. */
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void check_half(void) {
    /* IEEE binary16 bit patterns (numpy.float16(x).view(uint16)) */
    struct { float f; uint16_t h; } cases[] = {
        {1.0f, 0x3C00}, {-2.0f, 0xC000}, {65504.0f, 0x7BFF}, {0.1f, 0x2E66}, {6.1035156e-05f, 0x0400},
        {5.9604645e-08f, 0x0001}, {1e-9f, 0x0000}, {1e6f, 0x7C00}, {0.33325195f, 0x3555},
        {2049.0f, 0x6800}, /* tie to even: 2048 */ {2051.0f, 0x6802}, /* tie to even: 2052 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        CHECK(f32_to_f16(cases[i].f) == cases[i].h, "f32_to_f16(%g) = 0x%04x, want 0x%04x", cases[i].f,
              f32_to_f16(cases[i].f), cases[i].h);
        if (cases[i].h != 0x7C00 && cases[i].f > 1e-8f)
            CHECK(fabsf(f16_to_f32(cases[i].h) - cases[i].f) <= fabsf(cases[i].f) * 1e-3f, "f16_to_f32(0x%04x)", cases[i].h);
    }
    CHECK(f16_to_f32(0x0001) == 5.9604645e-08f && f16_to_f32(0x8000) == 0.0f && isinf(f16_to_f32(0x7C00)), "f16 specials");
    /* bfloat16 keeps the top 16 bits, rounded to nearest even */
    CHECK(f32_to_bf16(1.0f) == 0x3F80 && bf16_to_f32(0x3F80) == 1.0f, "bf16 1.0");
    CHECK(f32_to_bf16(1.00390625f) == 0x3F80, "bf16 tie rounds to even (down)");
    CHECK(f32_to_bf16(1.01171875f) == 0x3F82, "bf16 tie rounds to even (up)");
}

static void check_npy(void) {
    char path[] = "/tmp/clipc_npy_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    float data[6] = {1, 2, 3, 4, 5, -6.5f};
    int64_t shape[2] = {2, 3};
    clipc_error err;
    CHECK(npy_write(path, "<f4", 2, shape, data, &err) == 0, "npy_write: %s", err.message);
    npy_array a;
    CHECK(npy_read(path, &a, &err) == 0 && a.ndim == 2 && a.shape[0] == 2 && a.shape[1] == 3 &&
              !strcmp(a.dtype, "<f4") && !memcmp(a.data, data, sizeof data),
          "npy round trip");
    npy_free(&a);
    int64_t one[1] = {3};
    CHECK(npy_write(path, "<f4", 1, one, data, &err) == 0 && npy_read(path, &a, &err) == 0 && a.ndim == 1 &&
              a.shape[0] == 3, "1-d npy round trip");
    npy_free(&a);
    CHECK(truncate(path, 100) == 0 && npy_read(path, &a, &err) == -1 && strstr(err.message, "truncated"),
          "truncated npy: %s", err.message);
    unlink(path);
}

static void check_dtypes(void) {
    clipc_error err;
    clipc_model *m = clipc_model_init("tiny", 11, &err);
    if (!m) {
        CHECK(0, "%s", err.message);
        return;
    }
    const char *dtypes[] = {"F16", "BF16"};
    npy_array images, tokens;
    if (load_npy("tiny/images.npy", &images) || load_npy("tiny/tokens.npy", &tokens)) return;
    float ref_i[12 * 32], ref_t[30 * 32], out_i[12 * 32], out_t[30 * 32];
    clipc_encode_image(m, images.data, 12, ref_i, &err);
    clipc_encode_text(m, tokens.data, 30, ref_t, &err);
    for (int d = 0; d < 2; d++) {
        char path[] = "/tmp/clipc_half_XXXXXX";
        int fd = mkstemp(path);
        close(fd);
        CHECK(clipc_model_save_as(m, path, dtypes[d], &err) == 0, "save %s: %s", dtypes[d], err.message);
        clipc_model *h = clipc_model_load(path, &err);
        CHECK(h != NULL, "load %s: %s", dtypes[d], h ? "" : err.message);
        if (!h) continue;
        /* the weights' dtype names the file; its F32 logit_scale does not make it "mixed" */
        CHECK(!strcmp(clipc_model_source_dtype(h), dtypes[d]), "%s file reports dtype %s", dtypes[d],
              clipc_model_source_dtype(h));
        /* every weight is exactly the 16-bit rounding of the original */
        size_t bad = 0;
        for (int i = 0; i < m->table.count; i++) {
            const param_spec *p = &m->table.items[i];
            for (size_t j = 0; j < p->numel; j++) {
                float x = m->params[p->offset + j], y = h->params[p->offset + j];
                float want = p->ndim == 0 ? x : d == 0 ? f16_to_f32(f32_to_f16(x)) : bf16_to_f32(f32_to_bf16(x));
                bad += y != want;
            }
        }
        CHECK(bad == 0, "%s: %zu weights differ from their rounding", dtypes[d], bad);
        clipc_encode_image(h, images.data, 12, out_i, &err);
        clipc_encode_text(h, tokens.data, 30, out_t, &err);
        double ci = min_row_cosine(out_i, ref_i, 12, 32), ct = min_row_cosine(out_t, ref_t, 30, 32);
        CHECK(ci > 0.999 && ct > 0.999, "%s outputs drift: cosine %.5f / %.5f", dtypes[d], ci, ct);
        clipc_model_free(h);
        unlink(path);
    }
    npy_free(&images);
    npy_free(&tokens);
    clipc_model_free(m);
}

void test_util(void) {
    check_half();
    check_npy();
    check_dtypes();
}
