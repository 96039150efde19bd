/* test_arch.c — architecture options that OpenAI's checkpoints do not use,
 * against the reference implementations' own outputs (tests/data/arch/,
 * made by tools/ref/gen_arch_refs.py with transformers and open_clip on
 * random weights): MLP widths of 2.5x, 4.3637x and 4.9231x, LayerScale,
 * LayerNorm eps 1e-6 and 1e-3, a different activation per tower. Plus the
 * options the loader refuses by name. */
#include "test.h"
#include "../src/train/train.h"

#include <omp.h>
#include <zip.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Loads dir/file and compares its features with dir's reference outputs. */
static void check_file(const char *dir, const char *file, const char *name) {
    char path[512];
    clipc_error err;
    snprintf(path, sizeof path, "%s/%s", dir, file);
    clipc_model *m = clipc_model_load(path, &err);
    CHECK(m != NULL, "%s: %s", name, m ? "" : err.message);
    if (!m) return;
    npy_array images, tokens, img_ref, txt_ref;
    const char *files[4] = {"images", "tokens", "image_features", "text_features"};
    npy_array *arrays[4] = {&images, &tokens, &img_ref, &txt_ref};
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s.npy", dir, files[i]);
        if (npy_read(path, arrays[i], &err)) {
            CHECK(0, "%s", err.message);
            for (int j = 0; j < i; j++) npy_free(arrays[j]);
            clipc_model_free(m);
            return;
        }
    }
    int E = clipc_model_config(m)->embed_dim, ni = (int)images.shape[0], nt = (int)tokens.shape[0];
    float *img = malloc((size_t)ni * E * sizeof *img), *txt = malloc((size_t)nt * E * sizeof *txt);
    CHECK(clipc_encode_image(m, images.data, ni, img, &err) == 0, "%s", err.message);
    CHECK(clipc_encode_text(m, tokens.data, nt, txt, &err) == 0, "%s", err.message);
    double scale_i = 0, scale_t = 0;
    for (size_t i = 0; i < img_ref.count; i++) scale_i = fmax(scale_i, fabs(((float *)img_ref.data)[i]));
    for (size_t i = 0; i < txt_ref.count; i++) scale_t = fmax(scale_t, fabs(((float *)txt_ref.data)[i]));
    double di = max_abs_diff(img, img_ref.data, img_ref.count) / scale_i;
    double dt = max_abs_diff(txt, txt_ref.data, txt_ref.count) / scale_t;
    double ci = min_row_cosine(img, img_ref.data, ni, E), ct = min_row_cosine(txt, txt_ref.data, nt, E);
    CHECK(di <= 1e-4 && ci >= 0.99999, "%s image: max diff %.3g of the largest, min cosine %.8f", name, di, ci);
    CHECK(dt <= 1e-4 && ct >= 0.99999, "%s text: max diff %.3g of the largest, min cosine %.8f", name, dt, ct);
    printf("  %s: image max diff %.2g (relative), cosine %.8f; text %.2g, cosine %.8f\n", name, di, ci, dt, ct);
    /* the reduced precisions run the same options */
    for (int p = CLIPC_BF16; p <= CLIPC_INT8; p++) {
        CHECK(clipc_model_set_precision(m, p, &err) == 0, "%s", err.message);
        clipc_encode_image(m, images.data, ni, img, &err);
        clipc_encode_text(m, tokens.data, nt, txt, &err);
        double bound = p == CLIPC_BF16 ? 0.9999 : 0.998;
        ci = min_row_cosine(img, img_ref.data, ni, E), ct = min_row_cosine(txt, txt_ref.data, nt, E);
        CHECK(ci >= bound && ct >= bound, "%s at %s: cosine image %.6f text %.6f", name, clipc_precision_name(p), ci, ct);
    }
    free(img), free(txt);
    for (int i = 0; i < 4; i++) npy_free(arrays[i]);
    clipc_model_free(m);
}

static void check_case(const char *name) {
    char dir[256];
    snprintf(dir, sizeof dir, "tests/data/arch/%s", name);
    check_file(dir, "model.safetensors", name);
}

/* ---- PyTorch archives -------------------------------------------------------------- */

/* A zip archive with the given entries (stored unless compress). */
static int write_zip(const char *path, const char *const *names, const unsigned char *const *data, const size_t *lens,
                     int n, bool compress) {
    int zerr;
    zip_t *z = zip_open(path, ZIP_CREATE | ZIP_TRUNCATE, &zerr);
    if (!z) return -1;
    for (int i = 0; i < n; i++) {
        zip_source_t *src = zip_source_buffer(z, data[i], lens[i], 0);
        zip_int64_t idx = src ? zip_file_add(z, names[i], src, ZIP_FL_OVERWRITE) : -1;
        if (idx < 0) {
            zip_source_free(src);
            zip_discard(z);
            return -1;
        }
        zip_set_file_compression(z, (zip_uint64_t)idx, compress ? ZIP_CM_DEFLATE : ZIP_CM_STORE, 0);
    }
    return zip_close(z);
}

/* A hand-written pickle in a torch.save-shaped archive: the load fails
 * with a message containing expect. */
static void check_bad_archive(const char *dir, const char *what, const unsigned char *pkl, size_t len,
                              const unsigned char *storage, size_t slen, bool compress, const char *expect) {
    char path[512];
    snprintf(path, sizeof path, "%s/bad.pt", dir);
    const char *names[2] = {"bad/data.pkl", "bad/data/0"};
    const unsigned char *data[2] = {pkl, storage};
    size_t lens[2] = {len, slen};
    CHECK(write_zip(path, names, data, lens, storage ? 2 : 1, compress) == 0, "%s: could not write the archive", what);
    clipc_error err;
    clipc_model *m = clipc_model_load(path, &err);
    CHECK(!m && strstr(err.message, expect), "%s: %s", what, m ? "(loaded)" : err.message);
    clipc_model_free(m);
}

/* A pickle of {"w": _rebuild_tensor_v2(storage 0 of 4 floats, 0, (size,), (1,), False, OrderedDict())}. */
static size_t tensor_pickle(unsigned char *out, int size) {
    static const char head[] = "\x80\x02}q\x00(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\nq\x01((X\x07\x00\x00\x00"
                               "storagectorch\nFloatStorage\nX\x01\x00\x00\x00" "0X\x03\x00\x00\x00" "cpuK\x04tQK\x00K";
    static const char tail[] = "\x85K\x01\x85\x89" "ccollections\nOrderedDict\n)RtRu.";
    size_t n = sizeof head - 1;
    memcpy(out, head, n);
    out[n++] = (unsigned char)size;
    memcpy(out + n, tail, sizeof tail - 1);
    return n + sizeof tail - 1;
}

static void check_pytorch(void) {
    /* the same model as torch.save zips: float32, float16, and strided
     * views nested under "state_dict" with "module." keys */
    check_file("tests/data/pytorch", "f32.pt", "torch.save f32");
    check_file("tests/data/pytorch", "f16.pt", "torch.save f16");
    check_file("tests/data/pytorch", "strided.bin", "torch.save strided views, nested state_dict");
    check_file("tests/data/pytorch", "torchscript.pt", "TorchScript archive");
    check_file("tests/data/pytorch", "torchscript_f16.pt", "TorchScript archive, float16");
    check_file("tests/data/pytorch", "model.safetensors", "safetensors, float16");
    /* the same values however stored: bit-identical features */
    static const char *const same[] = {"model.safetensors", "f32.pt", "f16.pt", "strided.bin", "torchscript.pt",
                                       "torchscript_f16.pt"};
    float first[64 * 3], got[64 * 3];
    npy_array px;
    clipc_error e2;
    int saved_threads = omp_get_max_threads();
    omp_set_num_threads(1); /* one share always: bit-for-bit comparable */
    if (npy_read("tests/data/pytorch/images.npy", &px, &e2) == 0) {
        for (int i = 0; i < 6; i++) {
            char p2[256];
            snprintf(p2, sizeof p2, "tests/data/pytorch/%s", same[i]);
            clipc_model *mm = clipc_model_load(p2, &e2);
            CHECK(mm != NULL, "%s", mm ? "" : e2.message);
            if (!mm) continue;
            clipc_encode_image(mm, px.data, 3, i ? got : first, &e2);
            size_t bytes = (size_t)3 * clipc_model_config(mm)->embed_dim * sizeof(float);
            if (i) CHECK(!memcmp(first, got, bytes), "%s: features differ from the safetensors file's", same[i]);
            clipc_model_free(mm);
        }
        npy_free(&px);
    }
    omp_set_num_threads(saved_threads);
    char dir[] = "/tmp/clipc_pt_XXXXXX", cmd[2048], path[600];
    if (!mkdtemp(dir)) return;
    /* clipc convert IN -o OUT.safetensors gives a file with the same features */
    snprintf(cmd, sizeof cmd, "%s convert tests/data/pytorch/f16.pt --dtype F32 -o %s/model.safetensors 2>/dev/null && "
             "cp tests/data/pytorch/*.npy tests/data/pytorch/open_clip_config.json %s/", clipc_binary, dir, dir);
    CHECK(run_cmd(cmd) == 0, "convert a .pt to safetensors");
    check_file(dir, "model.safetensors", "converted from f16.pt");
    /* refusals: a global that runs code, an opcode torch.save does not
     * write, a tensor past its storage, a compressed entry, truncation */
    static const unsigned char evil[] = "\x80\x02" "cos\nsystem\nq\x00X\x17\x00\x00\x00touch /tmp/clipc_pwned_xq\x01\x85q\x02Rq\x03.";
    unlink("/tmp/clipc_pwned_x");
    check_bad_archive(dir, "os.system", evil, sizeof evil - 1, NULL, 0, false, "the global 'os.system'");
    CHECK(access("/tmp/clipc_pwned_x", F_OK) != 0, "nothing ran");
    static const unsigned char inst[] = "\x80\x02(ios\nsystem\nX\x01\x00\x00\x00x.";
    check_bad_archive(dir, "INST opcode", inst, sizeof inst - 1, NULL, 0, false, "opcode 0x69");
    static const unsigned char builtins[] = "\x80\x02" "c__builtin__\neval\nq\x00.";
    check_bad_archive(dir, "builtins.eval", builtins, sizeof builtins - 1, NULL, 0, false, "'__builtin__.eval'");
    unsigned char pkl[256], storage[16] = {0};
    size_t len = tensor_pickle(pkl, 100);
    check_bad_archive(dir, "tensor past its storage", pkl, len, storage, sizeof storage, false, "reaches past its storage");
    /* shape (2^32, 2^32), strides (0, 0): its element count wraps to 0 in 64 bits */
    static const char wrap_head[] = "\x80\x02}q\x00(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\nq\x01((X\x07\x00\x00\x00"
                                    "storagectorch\nFloatStorage\nX\x01\x00\x00\x00" "0X\x03\x00\x00\x00" "cpuK\x04tQK\x00";
    static const char wrap_tail[] = "\x8a\x05\x00\x00\x00\x00\x01\x8a\x05\x00\x00\x00\x00\x01\x86K\x00K\x00\x86\x89"
                                    "ccollections\nOrderedDict\n)RtRu.";
    len = 0;
    memcpy(pkl, wrap_head, sizeof wrap_head - 1), len += sizeof wrap_head - 1;
    memcpy(pkl + len, wrap_tail, sizeof wrap_tail - 1), len += sizeof wrap_tail - 1;
    check_bad_archive(dir, "a shape whose element count wraps", pkl, len, storage, sizeof storage, false,
                      "reaches past its storage");
    len = tensor_pickle(pkl, 4);
    check_bad_archive(dir, "compressed entry", pkl, len, storage, sizeof storage, true, "is compressed");
    check_bad_archive(dir, "truncated pickle", pkl, len - 3, storage, sizeof storage, false, "truncated");
    /* a corrupted archive (bytes of a storage overwritten): one clear line, exit 1 */
    snprintf(cmd, sizeof cmd, "cp tests/data/pytorch/f32.pt %s/bad.pt && printf 'XXXXXXXXXXXXXXXX' | "
             "dd of=%s/bad.pt bs=1 seek=2000000 conv=notrunc 2>/dev/null && %s info %s/bad.pt >/dev/null 2>%s/err; "
             "test $? = 1 && test $(wc -l < %s/err) = 1 && grep -q 'could not be read' %s/err",
             dir, dir, clipc_binary, dir, dir, dir, dir);
    CHECK(run_cmd(cmd) == 0, "a corrupted archive gives one clear error line");
    /* convert without --dtype keeps the source's */
    snprintf(cmd, sizeof cmd, "%s convert tests/data/pytorch/f16.pt -o %s/same.safetensors 2>/dev/null && "
             "%s info %s/same.safetensors | grep -q 'dtype:          F16'", clipc_binary, dir, clipc_binary, dir);
    CHECK(run_cmd(cmd) == 0, "clipc convert IN -o OUT keeps the dtype");
    snprintf(cmd, sizeof cmd, "head -c 500000 tests/data/pytorch/f32.pt > %s/cut.pt", dir);
    run_cmd(cmd);
    snprintf(path, sizeof path, "%s/cut.pt", dir);
    clipc_error err;
    clipc_model *m = clipc_model_load(path, &err);
    CHECK(!m && strstr(err.message, "not a readable zip archive"), "truncated archive: %s", m ? "(loaded)" : err.message);
    clipc_model_free(m);
    snprintf(cmd, sizeof cmd, "rm -rf %s /tmp/clipc_pwned_x", dir);
    run_cmd(cmd);
}

/* A config option clipc does not compute is refused with its name. */
static void check_refusals(void) {
    char dir[] = "/tmp/clipc_arch_XXXXXX", cmd[2048], path[600];
    if (!mkdtemp(dir)) return;
    snprintf(cmd, sizeof cmd,
             "cp tests/data/arch/hf_mlp2.5_eps_mixed_act/model.safetensors %s/ && "
             "sed 's/\"hidden_act\": \"gelu\"/\"hidden_act\": \"silu\"/' tests/data/arch/hf_mlp2.5_eps_mixed_act/config.json > %s/config.json",
             dir, dir);
    CHECK(run_cmd(cmd) == 0, "prepare");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    clipc_error err;
    clipc_model *m = clipc_model_load(path, &err);
    CHECK(!m && strstr(err.message, "vision_config.hidden_act 'silu' is not supported"), "silu: %s",
          m ? "(loaded)" : err.message);
    clipc_model_free(m);
    /* OpenCLIP's open_clip_config.json beside the file: heads come from it,
     * options clipc does not compute are refused by name */
    static const struct { const char *json, *expect; } cfgs[] = {
        {"{\"model_cfg\": {\"quick_gelu\": true, \"vision_cfg\": {\"width\": 64, \"head_width\": 16}, "
         "\"text_cfg\": {\"heads\": 2}}}", NULL},
        {"{\"model_cfg\": {\"vision_cfg\": {\"head_width\": 32}}}", "heads 2"},
        {"{\"model_cfg\": {\"vision_cfg\": {\"global_average_pool\": true}}}", "vision_cfg.global_average_pool is not supported"},
        {"{\"model_cfg\": {\"vision_cfg\": {\"final_ln_after_pool\": true}}}", "vision_cfg.final_ln_after_pool is not supported"},
        {"{\"model_cfg\": {\"text_cfg\": {\"pool_type\": \"last\"}}}", "text_cfg.pool_type 'last' is not supported"},
        {"{\"model_cfg\": {\"text_cfg\": {\"embed_cls\": true}}}", "text_cfg.embed_cls is not supported"},
        {"{\"vision_cfg\": {\"attentional_pool\": true}}", "vision_cfg.attentional_pool is not supported"},
    };
    char dir2[] = "/tmp/clipc_occ_XXXXXX";
    if (mkdtemp(dir2)) {
        snprintf(cmd, sizeof cmd, "cp tests/data/arch/openclip_mlp4.3637_layerscale/model.safetensors %s/", dir2);
        run_cmd(cmd);
        snprintf(path, sizeof path, "%s/model.safetensors", dir2);
        for (size_t i = 0; i < sizeof cfgs / sizeof *cfgs; i++) {
            char cfg[600];
            snprintf(cfg, sizeof cfg, "%s/open_clip_config.json", dir2);
            FILE *f = fopen(cfg, "w");
            if (f) fputs(cfgs[i].json, f), fclose(f);
            clipc_model *om = clipc_model_load(path, &err);
            if (!cfgs[i].expect) {
                CHECK(om != NULL, "open_clip_config %zu: %s", i, om ? "" : err.message);
            } else if (!strcmp(cfgs[i].expect, "heads 2")) {
                CHECK(om && clipc_model_config(om)->vision_heads == 2, "head_width 32 gives 2 heads");
            } else {
                CHECK(!om && strstr(err.message, cfgs[i].expect) && strstr(err.message, "open_clip_config.json"),
                      "open_clip_config %zu: %s", i, om ? "(loaded)" : err.message);
            }
            clipc_model_free(om);
        }
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir2);
        run_cmd(cmd);
    }
    /* LayerScale models load and run, but training them is refused */
    m = clipc_model_load("tests/data/arch/openclip_mlp4.3637_layerscale/model.safetensors", &err);
    if (m) {
        train_options o = {.batch = 2, .accum = 1, .lr = 1e-4f, .beta1 = 0.9f, .beta2 = 0.98f, .eps = 1e-6f,
                           .total_steps = 1};
        trainer t;
        CHECK(trainer_init(&t, m, &o, NULL, &err) != 0 && strstr(err.message, "LayerScale"), "training LayerScale: %s",
              err.message);
        clipc_model_free(m);
    }
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    run_cmd(cmd);
}

/* The parsers' fuzz targets (make fuzz-build), each for a bounded time on its seeds: the
 * unpickler, checkpoint loading on the headers of files clipc writes, SentencePiece model files
 * and texts, the image decoders, the JSON configs beside checkpoints, .npy, the CSV readers, the
 * search-query parser and the server's HTTP handling. Any crash, leak or UB report fails it, and
 * the input that caused it is printed (base64) with the report, so CI shows the reproducer. */
static void check_fuzz(void) {
    const char *secs = getenv("CLIPC_FUZZ_SECONDS") ? getenv("CLIPC_FUZZ_SECONDS") : "20";
    static const char *const targets[][3] = {
        {"fuzz_pickle", "tests/fuzz/corpus/pickle", "the unpickler"},
        {"fuzz_checkpoint", "build-fuzz/corpus-checkpoint", "checkpoint loading"},
        {"fuzz_tokenizer", "build-fuzz/corpus-tokenizer", "the SentencePiece tokenizers"},
        {"fuzz_image", "build-fuzz/corpus-image", "the JPEG, PNG, TIFF and WebP decoders"},
        {"fuzz_config", "build-fuzz/corpus-config", "the JSON configs beside checkpoints"},
        {"fuzz_npy", "tests/fuzz/corpus/npy", "the .npy reader"},
        {"fuzz_csv", "tests/fuzz/corpus/csv", "the CSV readers"},
        {"fuzz_query", "tests/fuzz/corpus/query", "the search-query parser"},
        {"fuzz_http", "tests/fuzz/corpus/http", "the server's HTTP handling"},
    };
    for (size_t i = 0; i < sizeof targets / sizeof *targets; i++) {
        char cmd[1400], bin[64];
        snprintf(bin, sizeof bin, "build-fuzz/%s", targets[i][0]);
        CHECK(access(bin, X_OK) == 0, "%s is not built (make fuzz-build)", bin);
        snprintf(cmd, sizeof cmd,
                 "d=$(mktemp -d) && %s -max_total_time=%s -print_final_stats=1 -artifact_prefix=$d/ $d %s >$d.log 2>&1; "
                 "rc=$?; grep -E 'stat::number_of_executed_units' $d.log | sed 's/^/  %s: /'; "
                 "if [ $rc != 0 ]; then tail -30 $d.log; for f in $d/crash-* $d/leak-* $d/timeout-* $d/oom-*; do "
                 "[ -f \"$f\" ] && echo \"  reproducer $(basename $f) (base64):\" && base64 -w 76 \"$f\" | head -40; "
                 "done; fi; rm -rf $d $d.log; exit $rc",
                 bin, secs, targets[i][1], targets[i][0]);
        CHECK(run_cmd(cmd) == 0, "the fuzz target of %s failed (reproducer above)", targets[i][2]);
    }
}

void test_arch(void) {
    check_case("hf_mlp2.5_eps_mixed_act");
    check_case("openclip_mlp4.3637_layerscale");
    check_case("openclip_mlp4.9231_gelu");
    check_refusals();
    check_pytorch();
    check_fuzz();
}
