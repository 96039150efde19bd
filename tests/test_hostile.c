/* test_hostile.c — the reproducers of hostile input that once crashed or
 * ballooned clipc: each must end in one clear error line and exit status 1
 * (no signal, no sanitizer report), within a bounded peak memory measured
 * on the child process (wait4's ru_maxrss). */
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define RSS_BOUND_KB (512 * 1024) /* the documented bound: 512 MB */

/* clipc ARGS, with the environment assignments env (may be ""), must fail
 * with exactly one line containing expect. */
static void refused_env(const char *what, const char *dir, const char *env, const char *args, const char *expect) {
    char cmd[4096], check[4096];
    snprintf(cmd, sizeof cmd, "exec env %s %s %s >/dev/null 2>%s/err", env, clipc_binary, args, dir);
    long rss = 0;
    int rc = run_measured(cmd, &rss);
    snprintf(check, sizeof check, "test $(wc -l < %s/err) = 1 && grep -q -- \"%s\" %s/err", dir, expect, dir);
    CHECK(rc == 1, "%s: exit status %d, expected 1", what, rc);
    CHECK(run_cmd(check) == 0, "%s: not one error line with '%s'", what, expect);
    CHECK(rss < RSS_BOUND_KB, "%s: peak memory %ld MB", what, rss >> 10);
    printf("  %s: refused in one line, peak memory %ld MB\n", what, rss >> 10);
}

static void refused(const char *what, const char *dir, const char *args, const char *expect) {
    refused_env(what, dir, "", args, expect);
}

/* The tiny model saved with one extra tensor of the given shape (data zeros) at dir/name. */
static void save_with_extra(const char *dir, const char *name, const char *tensor, int ndim, int64_t rows, int64_t cols,
                            int64_t depth) {
    clipc_error err;
    clipc_model *m = clipc_model_init("tiny", 1, &err);
    float *zeros = calloc((size_t)(rows * (ndim > 1 ? cols : 1) * (ndim > 2 ? depth : 1)), sizeof *zeros);
    st_out_tensor extra = {tensor, ndim, {rows, cols, depth}, zeros, ST_F32};
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    CHECK(m && zeros && model_save_with(m, path, "F32", &extra, 1, NULL, NULL, 0, &err) == 0, "writing %s", name);
    free(zeros);
    clipc_model_free(m);
}

/* The test unigram model with a normaliser charsmap appended (protobuf
 * merges it: the last precompiled_charsmap wins): a 512-unit Darts trie
 * whose one path, the byte 'a', ends in a leaf naming replacement offset
 * leaf_value in the strings "x\0". Written to dir/name. */
static void write_charsmap_model(const char *dir, const char *name, uint32_t leaf_value) {
    enum { UNITS = 512 };
    static unsigned char map[4 + 4 * UNITS + 2];
    uint32_t units[UNITS] = {0};
    units[0] = 0;                                   /* root: offset 0, so its base is unit 0 */
    units['a'] = 'a' | 1u << 8 | (('a' ^ 0x100u) << 10); /* label 'a', has a leaf, offset to unit 0x100 */
    units[0x100] = leaf_value | 0x80000000u;        /* the leaf: a value unit */
    uint32_t trie_len = 4 * UNITS;
    for (int b = 0; b < 4; b++) map[b] = (unsigned char)(trie_len >> (8 * b));
    for (int i = 0; i < UNITS; i++)
        for (int b = 0; b < 4; b++) map[4 + 4 * i + b] = (unsigned char)(units[i] >> (8 * b));
    memcpy(map + 4 + 4 * UNITS, "x", 2);
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *out = fopen(path, "wb"), *in = fopen("tests/data/siglip/unigram/spiece.model", "rb");
    CHECK(out && in, "writing %s", path);
    if (!out || !in) {
        if (out) fclose(out);
        if (in) fclose(in);
        return;
    }
    int ch;
    while ((ch = fgetc(in)) != EOF) fputc(ch, out);
    size_t inner = 1 + 2 + sizeof map; /* NormalizerSpec { 2: precompiled_charsmap } */
    unsigned char head[] = {0x1a, (unsigned char)(0x80 | (inner & 0x7f)), (unsigned char)(inner >> 7), 0x12,
                            (unsigned char)(0x80 | (sizeof map & 0x7f)), (unsigned char)(sizeof map >> 7)};
    fwrite(head, 1, sizeof head, out);
    fwrite(map, 1, sizeof map, out);
    fclose(in);
    fclose(out);
}

void test_hostile(void) {
    char dir[] = "/tmp/clipc_hostile_XXXXXX", cmd[4096], args[2048];
    if (!mkdtemp(dir)) return;
    const char *photo = ref_path("preprocess/images/coffee_600x400_q90.jpg");
    /* labelled CSV: class numbers larger than the row count */
    snprintf(cmd, sizeof cmd, "printf 'filepath,label\\n%s,100000\\n' > %s/big.csv && "
             "printf 'filepath,label\\n%s,3\\n%s,0\\n%s,1\\n' > %s/sparse.csv", photo, dir, photo, photo, photo, dir);
    run_cmd(cmd);
    snprintf(args, sizeof args, "eval zeroshot --dataset %s/big.csv --out %s/o1", dir, dir);
    refused("CSV class number 100000", dir, args, "class number 100000 is too large");
    /* (zero-shot needs the classes' names: numbers alone are refused, with what to do) */
    snprintf(cmd, sizeof cmd, "printf 'zero\\none\\ntwo\\nthree\\n' > %s/names4.txt && %s eval zeroshot --dataset %s/sparse.csv "
             "--classnames %s/names4.txt --out %s/o2 >/dev/null 2>%s/err2 || cat %s/err2", dir, clipc_binary, dir, dir, dir,
             dir, dir);
    CHECK(run_cmd(cmd) == 0, "CSV class numbers 3, 0, 1 over three rows evaluate");
    snprintf(args, sizeof args, "eval zeroshot --dataset %s/sparse.csv --out %s/o3", dir, dir);
    refused("CSV class numbers without --classnames", dir, args, "its classes are numbers (0..3): give --classnames");
    /* .npy whose shape times the element size wraps around */
    snprintf(cmd, sizeof cmd,
             "h=\"{'descr': '<i4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }\"; "
             "h=$(printf '%%-117s' \"$h\"); { printf '\\223NUMPY\\001\\000\\166\\000'; printf '%%s\\n' \"$h\"; "
             "head -c 64 /dev/zero; } > %s/wrap.npy",
             dir);
    run_cmd(cmd);
    snprintf(args, sizeof args, "embed --tokens %s/wrap.npy -o %s/x.npy", dir, dir);
    refused(".npy shape that wraps size_t", dir, args, "shape too large");
    /* the limits of the Limits table, each lowered through its variable (and the CSV one raised);
     * the CSV paths are absolute, as relative ones are read from the CSV's folder */
    char *photo_abs = realpath(photo, NULL);
    CHECK(photo_abs != NULL, "%s exists", photo);
    if (!photo_abs) return;
    snprintf(cmd, sizeof cmd, "printf 'filepath,title\\n%s,a cat\\n%s,a dog\\n%s,' > %s/rows.csv && "
             "head -c 2000000 /dev/zero | tr '\\0' x >> %s/rows.csv && printf '\\n' >> %s/rows.csv && "
             "printf 'filepath,label\\n%s,cat\\n%s,dog\\n%s,bird\\n' > %s/names.csv",
             photo_abs, photo_abs, photo_abs, dir, dir, dir, photo_abs, photo_abs, photo_abs, dir);
    run_cmd(cmd);
    snprintf(args, sizeof args, "eval retrieval --data %s/rows.csv --out %s/o4", dir, dir);
    refused("a 2 MB CSV record", dir, args, "rows.csv:4: a record longer than 1048576 bytes (CLIPC_MAX_CSV_RECORD_BYTES");
    snprintf(cmd, sizeof cmd, "CLIPC_MAX_CSV_RECORD_BYTES=3000000 %s eval retrieval --data %s/rows.csv --out %s/o5 "
             ">/dev/null 2>%s/err5 || cat %s/err5", clipc_binary, dir, dir, dir, dir);
    CHECK(run_cmd(cmd) == 0, "CLIPC_MAX_CSV_RECORD_BYTES=3000000 reads the 2 MB record");
    refused_env("CLIPC_MAX_CSV_ROWS=2 over three rows", dir, "CLIPC_MAX_CSV_ROWS=2 CLIPC_MAX_CSV_RECORD_BYTES=3000000", args,
                "more than 2 rows (CLIPC_MAX_CSV_ROWS raises the limit)");
    snprintf(args, sizeof args, "eval zeroshot --dataset %s/names.csv --out %s/o6", dir, dir);
    refused_env("CLIPC_MAX_CLASSES=2 over three named classes", dir, "CLIPC_MAX_CLASSES=2", args,
                "3 distinct labels are more classes than the limit of 2 (CLIPC_MAX_CLASSES raises it)");
    snprintf(args, sizeof args, "preprocess %s -o %s/p.npy", photo, dir);
    refused_env("CLIPC_MAX_IMAGE_PIXELS=100000 on a 600x400 photo", dir, "CLIPC_MAX_IMAGE_PIXELS=100000", args,
                "600x400 = 240000 pixels, over the limit of 100000 (CLIPC_MAX_IMAGE_PIXELS raises it)");
    free(photo_abs);
    /* a SentencePiece model whose normaliser names a replacement string past its end (found by
     * fuzz_tokenizer: libsentencepiece read it with strlen); the same trie naming "x" is used */
    write_charsmap_model(dir, "bad_charsmap.model", 0x7fffff);
    write_charsmap_model(dir, "good_charsmap.model", 0);
    snprintf(args, sizeof args, "tokenize --spm %s/bad_charsmap.model --ids 'a cat'", dir);
    refused("a SentencePiece charsmap pointing past its strings", dir, args,
            "charsmap names a replacement outside its strings");
    snprintf(cmd, sizeof cmd, "a=$(%s tokenize --spm %s/good_charsmap.model --ids 'a cat') && "
             "x=$(%s tokenize --spm %s/good_charsmap.model --ids 'x cxt') && test -n \"$a\" && test \"$a\" = \"$x\"",
             clipc_binary, dir, clipc_binary, dir);
    CHECK(run_cmd(cmd) == 0, "a well-formed charsmap is used: it normalises 'a' to 'x'");
    /* an architecture guessed from a small header, far larger than its data */
    refused("safetensors claiming 9.7 billion parameters in 3 KB", dir, "info tests/data/bomb_arch.safetensors",
            "too few for the");
    /* a 1x600000 PNG (1,244 bytes) whose resize would be 224 x 134 million */
    snprintf(args, sizeof args, "preprocess --size 224 tests/data/bomb_1x600000.png -o %s/p.npy", dir);
    refused("1x600000 PNG resized to 224", dir, args, "CLIPC_MAX_IMAGE_PIXELS");
    /* fine-tuning's tensors (prompt_learner.ctx, adapter.visual.*) with shapes no fine-tuning writes */
    save_with_extra(dir, "ctx_huge.safetensors", "prompt_learner.ctx", 2, 5000, 32, 0);
    save_with_extra(dir, "ctx_1d.safetensors", "prompt_learner.ctx", 1, 32, 0, 0);
    save_with_extra(dir, "ctx_long.safetensors", "prompt_learner.ctx", 2, 80, 32, 0);
    save_with_extra(dir, "adapter_half.safetensors", "adapter.visual.fc1.weight", 2, 8, 32, 0);
    save_with_extra(dir, "csc_unnamed.safetensors", "prompt_learner.ctx", 3, 3, 4, 32); /* no prompt_classnames */
    snprintf(args, sizeof args, "info %s/ctx_huge.safetensors", dir);
    refused("a 5000-vector prompt", dir, args, "prompt_learner.ctx' has shape \\[5000, 32\\]: not a matrix of 1..4096 rows");
    snprintf(args, sizeof args, "info %s/ctx_1d.safetensors", dir);
    refused("a one-dimensional prompt", dir, args, "prompt_learner.ctx' has shape \\[32\\]");
    snprintf(args, sizeof args, "info %s/ctx_long.safetensors", dir);
    refused("a prompt longer than the context", dir, args, "80 prompt context vectors do not fit a context of 77 tokens");
    snprintf(args, sizeof args, "info %s/adapter_half.safetensors", dir);
    refused("an adapter without its second layer", dir, args, "missing tensor 'adapter.visual.fc2.weight'");
    snprintf(args, sizeof args, "info %s/csc_unnamed.safetensors", dir);
    refused("class-specific contexts without their class names", dir, args, "must name their 3 classes");
    /* --out folders are made with their parents; a file in the way is named */
    snprintf(cmd, sizeof cmd, "%s export-images --limit 2 --out %s/a/b/c >/dev/null 2>&1 && ls %s/a/b/c | grep -q . && "
             "touch %s/plain && %s export-images --limit 2 --out %s/plain/sub 2>&1 | grep -q 'plain: not a folder'",
             clipc_binary, dir, dir, dir, clipc_binary, dir);
    CHECK(run_cmd(cmd) == 0, "--out makes parent folders, and names a file in the way");
    /* --resume keeps the run's --eval-every and --eval-limit */
    snprintf(cmd, sizeof cmd,
             "%s train --data fashion-mnist --arch tiny --steps 8 --batch 16 --eval-every 3 --eval-limit 50 --stop-at 3 "
             "--out %s/deep/run >/dev/null 2>&1 && %s train --out %s/deep/run --resume 2>&1 | grep -q 'step 6: zero-shot top-1 on 50 test images'",
             clipc_binary, dir, clipc_binary, dir);
    CHECK(run_cmd(cmd) == 0, "--resume keeps --eval-every 3 and --eval-limit 50");
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    run_cmd(cmd);
}
