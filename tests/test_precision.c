/* test_precision.c — bf16 and int8 against the fp32 path: the reference
 * models (tiny ViT, tiny ModifiedResNet) on their fixtures, random-init
 * ViT-B-32 and RN50 on real preprocessed photos, the shipped model's
 * zero-shot accuracy, the sgemm emulation against oneDNN's kernels, the
 * int8 checkpoint round trip, and (through the CLI, in child processes)
 * oneDNN capped to smaller ISAs with ONEDNN_MAX_CPU_ISA. */
#include "test.h"
#include "../src/train/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The documented bounds (README, "Precision"): min row cosine against fp32. */
#define BF16_MIN_COSINE 0.9999
#define INT8_MIN_COSINE 0.998

static double bound_for(int precision) { return precision == CLIPC_BF16 ? BF16_MIN_COSINE : INT8_MIN_COSINE; }

/* Image and text features of a model at a precision. */
static int encode_both(clipc_model *m, const float *pixels, int ni, const int32_t *tokens, int nt, float *img,
                       float *txt) {
    clipc_error err;
    int rc = clipc_encode_image(m, pixels, ni, img, &err);
    if (rc == 0) rc = clipc_encode_text(m, tokens, nt, txt, &err);
    CHECK(rc == 0, "encode: %s", err.message);
    return rc;
}

/* Every precision against fp32 on one model and its inputs; also checks
 * that going back to fp32 reproduces fp32 exactly and that the emulation
 * agrees with the native kernels. */
static void check_precisions(const char *what, clipc_model *m, const float *pixels, int ni, const int32_t *tokens,
                             int nt, bool bounded) {
    clipc_error err;
    int E = clipc_model_config(m)->embed_dim;
    float *img32 = malloc((size_t)ni * E * sizeof(float)), *txt32 = malloc((size_t)nt * E * sizeof(float));
    float *img = malloc((size_t)ni * E * sizeof(float)), *txt = malloc((size_t)nt * E * sizeof(float));
    float *img_e = malloc((size_t)ni * E * sizeof(float)), *txt_e = malloc((size_t)nt * E * sizeof(float));
    CHECK(clipc_model_set_precision(m, CLIPC_FP32, &err) == 0, "%s", err.message);
    if (encode_both(m, pixels, ni, tokens, nt, img32, txt32)) goto done;
    for (int p = CLIPC_BF16; p <= CLIPC_INT8; p++) {
        const char *name = clipc_precision_name(p);
        CHECK(clipc_model_set_precision(m, p, &err) == 0, "%s %s: %s", what, name, err.message);
        CHECK(clipc_model_precision(m) == p, "%s: precision not set", what);
        /* every converted matrix is found where the GEMMs look it up (else it silently stays fp32) */
        int found = 0;
        for (int i = 0; i < m->n_lowp; i++) found += model_lowp_find(m, m->lowp[i].offset) == &m->lowp[i];
        CHECK(m->n_lowp > 0 && found == m->n_lowp, "%s %s: %d of %d converted weights found by offset", what, name,
              found, m->n_lowp);
        /* on AMX the weights are reordered once into oneDNN's blocked layout
         * (the fast path these cosines then test), elsewhere they stay plain */
        char kernel[256];
        int packed = 0;
        for (int i = 0; i < m->n_lowp; i++) packed += m->lowp[i].packed != NULL;
        if (strstr(clipc_precision_kernel(p, kernel, sizeof kernel), "amx"))
            CHECK(packed > 0, "%s %s: AMX kernel but no weight packed for it", what, name);
        if (encode_both(m, pixels, ni, tokens, nt, img, txt)) continue;
        double ci = min_row_cosine(img, img32, ni, E), ct = min_row_cosine(txt, txt32, nt, E);
        CHECK(!bounded || (ci >= bound_for(p) && ct >= bound_for(p)), "%s %s: min cosine vs fp32 image %.6f text %.6f (bound %.3f)",
              what, name, ci, ct, bound_for(p));
        /* the sgemm emulation (CPUs without a oneDNN kernel) computes the same numbers */
        CHECK(model_set_precision_emulated(m, p, true, &err) == 0, "%s", err.message);
        if (encode_both(m, pixels, ni, tokens, nt, img_e, txt_e)) continue;
        double ei = min_row_cosine(img_e, img, ni, E), et = min_row_cosine(txt_e, txt, nt, E);
        CHECK(ei >= 0.99999 && et >= 0.99999, "%s %s: emulated vs oneDNN min cosine image %.7f text %.7f", what, name,
              ei, et);
        printf("  %s %s: min cosine vs fp32 image %.6f text %.6f; emulation vs oneDNN %.7f / %.7f (%d of %d weights packed)\n",
               what, name, ci, ct, ei, et, packed, m->n_lowp);
    }
    CHECK(model_lowp_fallbacks() == 0, "%s: %ld reduced-precision GEMMs found no kernel and ran at fp32", what,
          model_lowp_fallbacks());
    /* back to fp32: the reference path again (equal up to the float
     * rounding of a different batch split, which a busy machine causes) */
    CHECK(clipc_model_set_precision(m, CLIPC_FP32, &err) == 0, "%s", err.message);
    if (encode_both(m, pixels, ni, tokens, nt, img, txt) == 0) {
        double di = max_abs_diff(img, img32, (size_t)ni * E), dt = max_abs_diff(txt, txt32, (size_t)nt * E);
        CHECK(di <= 1e-5 && dt <= 1e-5, "%s: fp32 after a reduced precision differs from before by %.3g / %.3g", what,
              di, dt);
    }
done:
    free(img32), free(txt32), free(img), free(txt), free(img_e), free(txt_e);
}

/* The reference fixtures' models and inputs. */
static void check_reference(const char *dir) {
    char rel[256];
    clipc_error err;
    snprintf(rel, sizeof rel, "%s/model.safetensors", dir);
    clipc_model *m = clipc_model_load(ref_path(rel), &err);
    CHECK(m != NULL, "%s", m ? "" : err.message);
    if (!m) return;
    npy_array images, tokens;
    snprintf(rel, sizeof rel, "%s/images.npy", dir);
    int ok = load_npy(rel, &images) == 0;
    snprintf(rel, sizeof rel, "%s/tokens.npy", dir);
    ok = ok && load_npy(rel, &tokens) == 0;
    if (ok) check_precisions(dir, m, images.data, (int)images.shape[0], tokens.data, (int)tokens.shape[0], true);
    if (ok) npy_free(&images), npy_free(&tokens);
    clipc_model_free(m);
}

/* Layers of 2,048 inputs and more, which the AMX path multiplies in
 * chunks of inputs (precision.c, k_chunk_for): a one-block tiny model
 * widened to a 2,048-wide image tower (chunked qkv, out_proj and c_fc,
 * whose bf16 output then goes through a float buffer) and a 2,048-wide
 * text MLP (chunked c_proj), against the unchunked emulation. Its cosines
 * against fp32 are printed, not bounded: the documented bounds are for the
 * reference and published shapes, not this made-up one. */
static void check_wide_layers(void) {
    clipc_error err;
    npy_array images, tokens;
    if (load_npy("tiny/images.npy", &images)) return;
    if (load_npy("tiny/tokens.npy", &tokens)) {
        npy_free(&images);
        return;
    }
    clipc_config c = *arch_config("tiny");
    c.vision_width = 2048, c.vision_heads = 16, c.vision_mlp_width = 128, c.text_mlp_width = 2048;
    clipc_model *m = model_new(&c, &err);
    CHECK(m != NULL, "%s", m ? "" : err.message);
    if (m) {
        model_randomize(m, 11);
        check_precisions("wide", m, images.data, (int)images.shape[0], tokens.data, (int)tokens.shape[0], false);
        clipc_model_free(m);
    }
    npy_free(&images), npy_free(&tokens);
}

static float bf16_round(float v) { return bf16_to_f32(f32_to_bf16(v)); }

/* Attention's two bf16 products (attention_bf16.c) with each kernel this
 * CPU has (sgemm always; AVX512-BF16 dot products; AMX tiles) against
 * double sums of the same bf16 values, on shapes off the kernels' 4 / 16 /
 * 32 / 64 grids: head widths 32, 64 and 80, 1 to 77 keys, one query or
 * many, rows further apart than a head. */
static void check_attention_bf16(int kernel) {
    const int shapes[][3] = {{1, 50, 64}, {50, 50, 64}, {5, 77, 80}, {77, 77, 64}, {17, 1, 32}, {33, 65, 80}, {7, 33, 64}};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        int nq = shapes[t][0], len = shapes[t][1], hd = shapes[t][2], ld = 3 * hd + 8, lds = attention_bf16_stride(len);
        float *q = malloc((size_t)nq * ld * sizeof(float)), *kv = malloc((size_t)len * ld * sizeof(float));
        float *scores = malloc((size_t)(nq + 15) / 16 * 16 * lds * sizeof(float));
        float *out = malloc((size_t)nq * (hd + 3) * sizeof(float));
        float *scratch = malloc(attention_bf16_scratch(len > nq ? len : nq, hd) * sizeof(float));
        uint64_t r = 88172645463325252ull + t;
        for (size_t i = 0; i < (size_t)nq * ld; i++) q[i] = (float)((r = r * 6364136223846793005ull + 1) >> 40) / (1 << 23) - 1.0f;
        for (size_t i = 0; i < (size_t)len * ld; i++) kv[i] = (float)((r = r * 6364136223846793005ull + 1) >> 40) / (1 << 23) - 1.0f;
        const float *k = kv, *v = kv + hd + 4;
        attention_scores_bf16(scores, lds, q, k, ld, nq, len, hd, scratch);
        double worst = 0.0;
        for (int i = 0; i < nq; i++)
            for (int j = 0; j < len; j++) {
                double want = 0.0;
                for (int d = 0; d < hd; d++)
                    want += (double)bf16_round(q[(size_t)i * ld + d]) * bf16_round(k[(size_t)j * ld + d]);
                double e = fabs(scores[(size_t)i * lds + j] - want);
                worst = e > worst ? e : worst;
            }
        CHECK(worst <= 1e-4, "bf16 Q K^T %dx%dx%d: off by %.3g", nq, len, hd, worst);
        /* P: any values in [0, 1] (the product does not care that rows sum to 1) */
        for (int i = 0; i < nq; i++)
            for (int j = 0; j < len; j++) scores[(size_t)i * lds + j] = (float)((i * 7 + j * 3) % 11) / 11.0f;
        attention_values_bf16(out, hd + 3, scores, lds, v, ld, nq, len, hd, scratch);
        worst = 0.0;
        for (int i = 0; i < nq; i++)
            for (int d = 0; d < hd; d++) {
                double want = 0.0;
                for (int j = 0; j < len; j++)
                    want += (double)bf16_round(scores[(size_t)i * lds + j]) * bf16_round(v[(size_t)j * ld + d]);
                double e = fabs(out[(size_t)i * (hd + 3) + d] - want);
                worst = e > worst ? e : worst;
            }
        CHECK(worst <= 1e-4, "bf16 P V %dx%dx%d: off by %.3g", nq, len, hd, worst);
        free(q), free(kv), free(scores), free(out), free(scratch);
    }
    printf("  bf16 attention products on %s: %zu shapes within 1e-4 of double sums\n", attention_bf16_name(kernel),
           sizeof shapes / sizeof shapes[0]);
}

/* Random-init published shapes on real photos (the reference's
 * _transform(224) tensors) and real captions. */
static void check_published_shapes(void) {
    static const char *const texts[] = {"a photo of a dog.", "a red sports car parked on the street.",
                                        "a bowl of fresh fruit on a wooden table.", "an aerial view of a city at night.",
                                        "a cup of coffee", "a rocket on the launch pad, ready to lift off into space"};
    npy_array photos;
    if (load_npy("preprocess/preprocess_224.npy", &photos)) return;
    clipc_error err;
    clipc_tokenizer *tok = clipc_tokenizer_new(&err);
    int nt = 6, ni = photos.shape[0] < 6 ? (int)photos.shape[0] : 6;
    int32_t tokens[6 * 77];
    for (int i = 0; i < nt; i++) clipc_tokenize(tok, texts[i], 77, 1, tokens + i * 77, &err);
    const char *archs[] = {"ViT-B-32", "RN50"};
    for (int a = 0; a < 2; a++) {
        clipc_model *m = clipc_model_init(archs[a], 5, &err);
        CHECK(m != NULL, "%s", m ? "" : err.message);
        if (!m) continue;
        check_precisions(archs[a], m, photos.data, ni, tokens, nt, true);
        clipc_model_free(m);
    }
    clipc_tokenizer_free(tok);
    npy_free(&photos);
}

/* The shipped model's zero-shot top-1 on 2,000 Fashion-MNIST test images
 * moves by at most 0.5 points at bf16 and 1 point at int8. */
static void check_shipped_accuracy(void) {
    clipc_error err;
    clipc_model *m = clipc_model_load("models/clipc-fmnist.safetensors", &err);
    fmnist test;
    CHECK(m != NULL, "%s", m ? "" : err.message);
    if (!m) return;
    if (fmnist_load(NULL, false, &test, &err)) {
        CHECK(0, "%s", err.message);
        clipc_model_free(m);
        return;
    }
    clipc_tokenizer *tok = clipc_tokenizer_new(&err);
    float top1[3] = {0};
    for (int p = CLIPC_FP32; p <= CLIPC_INT8; p++) {
        CHECK(clipc_model_set_precision(m, p, &err) == 0, "%s", err.message);
        CHECK(fmnist_zeroshot(m, tok, &test, 2000, "a photo of a {}.", &top1[p], &err) == 0, "%s", err.message);
    }
    CHECK(fabsf(top1[1] - top1[0]) <= 0.005f && fabsf(top1[2] - top1[0]) <= 0.01f,
          "zero-shot top-1 fp32 %.4f bf16 %.4f int8 %.4f", top1[0], top1[1], top1[2]);
    printf("  shipped model, zero-shot top-1 on 2,000 test images: fp32 %.2f%%, bf16 %.2f%%, int8 %.2f%%\n",
           100 * top1[0], 100 * top1[1], 100 * top1[2]);
    clipc_tokenizer_free(tok);
    fmnist_free(&test);
    clipc_model_free(m);
}

/* An int8 checkpoint holds exactly the weights int8 computes with: saved
 * and loaded, it starts at int8 and gives the same features bit for bit. */
static void check_int8_checkpoint(void) {
    clipc_error err;
    char path[] = "/tmp/clipc_int8_XXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0) close(fd);
    clipc_model *m = clipc_model_init("tiny", 4, &err);
    const clipc_config *c = clipc_model_config(m);
    int R = c->image_resolution, E = c->embed_dim;
    float *px = malloc((size_t)3 * 3 * R * R * sizeof *px), a[3 * 64], b[3 * 64];
    for (int i = 0; i < 3 * 3 * R * R; i++) px[i] = cosf(i * 0.11f);
    CHECK(clipc_model_save_as(m, path, "int8", &err) != 0 && strstr(err.message, "int8 precision"),
          "an int8 save of an fp32 model is refused: %s", err.message);
    CHECK(clipc_model_set_precision(m, CLIPC_INT8, &err) == 0, "%s", err.message);
    CHECK(clipc_model_save_as(m, path, "int8", &err) == 0, "%s", err.message);
    clipc_model *back = clipc_model_load(path, &err);
    CHECK(back != NULL, "load int8: %s", back ? "" : err.message);
    if (back) {
        CHECK(clipc_model_precision(back) == CLIPC_INT8, "an int8 checkpoint loads at int8");
        CHECK(!strcmp(clipc_model_source_dtype(back), "int8"), "source dtype %s", clipc_model_source_dtype(back));
        clipc_encode_image(m, px, 3, a, &err);
        clipc_encode_image(back, px, 3, b, &err);
        CHECK(!memcmp(a, b, (size_t)3 * E * sizeof *a), "int8 round trip: features differ by %.3g",
              max_abs_diff(a, b, (size_t)3 * E));
        /* the dequantised weights are the fp32 view of the same model */
        CHECK(clipc_model_set_precision(back, CLIPC_FP32, &err) == 0, "%s", err.message);
        clipc_encode_image(back, px, 3, b, &err);
        CHECK(min_row_cosine(a, b, 3, E) >= INT8_MIN_COSINE, "int8 file at fp32: cosine %.5f",
              min_row_cosine(a, b, 3, E));
        clipc_model_free(back);
    }
    /* an I8 tensor without its scale is refused, naming both */
    st_file f;
    if (st_open(path, &f, &err) == 0) {
        int count = 0;
        st_out_tensor *ts = calloc((size_t)f.count, sizeof *ts);
        for (int i = 0; i < f.count; i++) {
            if (strstr(f.tensors[i].name, "c_fc.weight.scale")) continue;
            ts[count].name = f.tensors[i].name;
            ts[count].ndim = f.tensors[i].ndim;
            memcpy(ts[count].shape, f.tensors[i].shape, sizeof ts[count].shape);
            ts[count].data = (const float *)(const void *)f.tensors[i].data;
            ts[count].dtype = f.tensors[i].dtype;
            count++;
        }
        char bad[300];
        snprintf(bad, sizeof bad, "%s.bad", path);
        CHECK(st_write(bad, ts, count, NULL, NULL, 0, &err) == 0, "%s", err.message);
        clipc_model *broken = clipc_model_load(bad, &err);
        CHECK(!broken && strstr(err.message, "needs an F32 tensor") && strstr(err.message, "c_fc.weight.scale"),
              "missing scale: %s", broken ? "(loaded)" : err.message);
        clipc_model_free(broken);
        unlink(bad);
        free(ts);
        st_close(&f);
    }
    int p;
    CHECK(clipc_precision_parse("fp16", &p, &err) != 0 && strstr(err.message, "fp32, bf16 or int8"), "parse: %s",
          err.message);
    CHECK(clipc_precision_parse("bf16", &p, &err) == 0 && p == CLIPC_BF16, "parse bf16");
    unlink(path);
    free(px);
    clipc_model_free(m);
}

/* ---- the CLI in child processes, with oneDNN capped to smaller ISAs ------------------------ */

static double npy_min_cosine(const char *a_path, const char *b_path) {
    npy_array a, b;
    clipc_error err;
    if (npy_read(a_path, &a, &err) || npy_read(b_path, &b, &err)) return -2;
    double c = a.count == b.count && a.ndim == 2 ? min_row_cosine(a.data, b.data, (int)a.shape[0], (int)a.shape[1]) : -3;
    npy_free(&a);
    npy_free(&b);
    return c;
}

static void check_cli(void) {
    char dir[] = "/tmp/clipc_prec_XXXXXX", cmd[4096], out[256], ref[256];
    if (!mkdtemp(dir)) return;
    static const char *const photos[] = {"preprocess/images/coffee_600x400_q90.jpg",
                                         "preprocess/images/rocket_427x640_q85.jpg",
                                         "preprocess/images/chelsea_gray_259x300.jpg"};
    char images[2048] = "";
    for (int i = 0; i < 3; i++) {
        strcat(images, " ");
        strcat(images, ref_path(photos[i]));
    }
    snprintf(cmd, sizeof cmd, "%s init --arch ViT-B-32 --seed 2 -o %s/b32.safetensors 2>/dev/null", clipc_binary, dir);
    CHECK(run_cmd(cmd) == 0, "init ViT-B-32");
    snprintf(ref, sizeof ref, "%s/fp32.npy", dir);
    snprintf(cmd, sizeof cmd, "%s embed -m %s/b32.safetensors --precision fp32 --image%s -o %s 2>/dev/null", clipc_binary,
             dir, images, ref);
    CHECK(run_cmd(cmd) == 0, "embed fp32");
    /* each precision at each ISA cap: AMX or AVX512-BF16/VNNI where the
     * CPU has them, AVX-512 without them, AVX2 (no bf16 kernel: emulated) */
    static const char *const caps[] = {"", "AVX512_CORE_BF16", "AVX512_CORE", "AVX2"};
    for (int p = CLIPC_BF16; p <= CLIPC_INT8; p++)
        for (int k = 0; k < 4; k++) {
            snprintf(out, sizeof out, "%s/%d_%d.npy", dir, p, k);
            snprintf(cmd, sizeof cmd,
                     "ONEDNN_MAX_CPU_ISA=%s %s embed -m %s/b32.safetensors --precision %s --image%s -o %s 2>/dev/null",
                     caps[k], clipc_binary, dir, clipc_precision_name(p), images, out);
            CHECK(run_cmd(cmd) == 0, "embed %s at ISA cap '%s'", clipc_precision_name(p), caps[k]);
            double cs = npy_min_cosine(out, ref);
            CHECK(cs >= bound_for(p), "%s with ONEDNN_MAX_CPU_ISA=%s: min cosine vs fp32 %.6f", clipc_precision_name(p),
                  caps[k][0] ? caps[k] : "(none)", cs);
            printf("  CLI %s, ONEDNN_MAX_CPU_ISA=%-16s min cosine vs fp32 %.6f\n", clipc_precision_name(p),
                   caps[k][0] ? caps[k] : "(none)", cs);
        }
    /* what runs is reported; without a kernel, the emulation says so */
    snprintf(cmd, sizeof cmd, "ONEDNN_MAX_CPU_ISA=AVX2 %s info --precision bf16 | grep -q 'emulated on OpenBLAS'",
             clipc_binary);
    CHECK(run_cmd(cmd) == 0, "info names the emulation under AVX2");
    /* the same precision line as --precision int8, whatever kernel this CPU (and ISA cap) runs */
    snprintf(cmd, sizeof cmd,
             "test \"$(CLIPC_PRECISION=int8 %s info | grep '^precision:')\" = \"$(%s info --precision int8 | grep '^precision:')\" && "
             "CLIPC_PRECISION=int8 %s info | grep -q '^precision:      int8 (GEMMs: '",
             clipc_binary, clipc_binary, clipc_binary);
    CHECK(run_cmd(cmd) == 0, "$CLIPC_PRECISION sets the precision");
    /* bad values: one line, exit 1 */
    snprintf(cmd, sizeof cmd, "%s embed --precision fp64 --text a -o %s/x.npy 2>%s/err.txt", clipc_binary, dir, dir);
    CHECK(run_cmd(cmd) == 1, "--precision fp64 fails");
    snprintf(cmd, sizeof cmd, "test $(wc -l < %s/err.txt) = 1 && grep -q \"unknown precision 'fp64'\" %s/err.txt && test ! -e %s/x.npy",
             dir, dir, dir);
    CHECK(run_cmd(cmd) == 0, "--precision fp64: one clear line, no output");
    snprintf(cmd, sizeof cmd, "CLIPC_PRECISION=half %s info 2>&1 | grep -q 'CLIPC_PRECISION: unknown precision'", clipc_binary);
    CHECK(run_cmd(cmd) == 0, "a bad $CLIPC_PRECISION is named");
    /* convert -> info -> embed */
    snprintf(cmd, sizeof cmd, "%s convert -m %s/b32.safetensors --dtype int8 -o %s/b32-int8.safetensors 2>/dev/null && "
             "%s info %s/b32-int8.safetensors | grep -q 'dtype:          int8'",
             clipc_binary, dir, dir, clipc_binary, dir);
    CHECK(run_cmd(cmd) == 0, "convert --dtype int8, info shows it");
    snprintf(out, sizeof out, "%s/int8file.npy", dir);
    /* under the same (empty) ISA cap as the --precision int8 run it is compared with: int8's
     * rounding of activations turns the last-bit differences of another kernel into larger ones */
    snprintf(cmd, sizeof cmd, "ONEDNN_MAX_CPU_ISA= %s embed -m %s/b32-int8.safetensors --image%s -o %s 2>/dev/null",
             clipc_binary, dir, images, out);
    CHECK(run_cmd(cmd) == 0, "embed with the int8 file");
    snprintf(ref, sizeof ref, "%s/%d_0.npy", dir, CLIPC_INT8);
    CHECK(npy_min_cosine(out, ref) >= 0.9999999, "the int8 file computes what --precision int8 does: %.8f",
          npy_min_cosine(out, ref));
    snprintf(cmd, sizeof cmd, "%s convert -m %s/b32.safetensors --dtype fp8 -o %s/y.safetensors 2>&1 | grep -q \"unknown --dtype 'fp8'\" && test ! -e %s/y.safetensors",
             clipc_binary, dir, dir, dir);
    CHECK(run_cmd(cmd) == 0, "convert refuses an unknown dtype");
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    run_cmd(cmd);
}

void test_precision(void) {
    check_reference("tiny");
    check_reference("tiny-rn");
    check_wide_layers();
    for (int k = ATTENTION_BF16_SGEMM; k <= attention_bf16_best(); k++) check_attention_bf16(attention_bf16_use(k));
    attention_bf16_use(-1);
    check_published_shapes();
    check_shipped_accuracy();
    check_int8_checkpoint();
    check_cli();
}
