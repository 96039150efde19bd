/* test_cli.c — the clipc command end to end: outputs against the reference
 * fixtures, and the bad-input contract: one clear error line naming the
 * input, a non-zero exit, no crash, no output file left behind. */
#include "test.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[] = "/tmp/clipc_cli_XXXXXX";

/* Runs `clipc ARGS`, stdout to dir/out.txt and stderr to dir/err.txt;
 * returns the exit status. */
static int clipc(const char *args) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s %s >%s/out.txt 2>%s/err.txt", clipc_binary, args, dir, dir);
    return run_cmd(cmd);
}

static char *slurp(const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unsigned char *data;
    size_t len;
    clipc_error err;
    if (read_file(path, &data, &len, &err)) return strdup("");
    char *s = realloc(data, len + 1);
    s[len] = 0;
    return s;
}

static bool exists(const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

/* A failing command: non-zero exit, a one-line message containing want,
 * nothing on stdout, and no file `output` created. */
static void expect_error(const char *args, const char *want, const char *output) {
    int rc = clipc(args);
    char *err = slurp("err.txt"), *out = slurp("out.txt");
    int lines = 0;
    for (char *p = err; *p; p++) lines += *p == '\n';
    CHECK(rc == 1 && strstr(err, want) && lines == 1 && !strncmp(err, "clipc: error: ", 14),
          "`clipc %s` -> exit %d, stderr '%s' (wanted one line with '%s')", args, rc, err, want);
    CHECK(!output || !exists(output), "`clipc %s` left %s behind", args, output);
    CHECK(!out[0], "`clipc %s` printed to stdout: %s", args, out);
    free(err);
    free(out);
}

static void write_bytes(const char *name, const void *data, size_t len) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (len) fwrite(data, 1, len, f);
    fclose(f);
}

static void check_commands(void) {
    char args[4096], tiny[512];
    snprintf(tiny, sizeof tiny, "%s", ref_path("tiny/model.safetensors"));

    /* init + info */
    snprintf(args, sizeof args, "init --arch tiny --seed 3 -o %s/m.safetensors", dir);
    CHECK(clipc(args) == 0 && exists("m.safetensors"), "init failed");
    snprintf(args, sizeof args, "info %s", tiny);
    char *out = (clipc(args), slurp("out.txt"));
    CHECK(strstr(out, "ViT, width 64, 2 layers") && strstr(out, "parameters:") && strstr(out, "F32"), "info: %s", out);
    free(out);
    snprintf(args, sizeof args, "info %s", ref_path("tiny-rn/model.safetensors"));
    out = (clipc(args), slurp("out.txt"));
    CHECK(strstr(out, "ModifiedResNet, width 8, layers (2, 1, 1, 1), 4 attention-pool heads"), "info rn: %s", out);
    free(out);

    /* tokenize: the clip.tokenize row of the reference's first caption */
    CHECK(clipc("tokenize --context 8 'a photo of a cat.'") == 0, "tokenize");
    out = slurp("out.txt");
    CHECK(!strcmp(out, "49406 320 1125 539 320 2368 269 49407\n"), "tokenize output: %s", out);
    free(out);
    CHECK(clipc("tokenize --ids 'Hello, World!' 'b'") == 0, "tokenize --ids");
    out = slurp("out.txt");
    CHECK(!strcmp(out, "3306 267 1002 256\n321\n"), "tokenize --ids output: %s", out);
    free(out);

    /* preprocess equals the reference tensor */
    snprintf(args, sizeof args, "preprocess --size 32 %s %s -o %s/p.npy", ref_path("preprocess/images/astronaut_512x512.png"),
             ref_path("preprocess/images/coffee_palette_200x150.png"), dir);
    CHECK(clipc(args) == 0, "preprocess");
    npy_array ours, ref;
    char path[512];
    snprintf(path, sizeof path, "%s/p.npy", dir);
    clipc_error err;
    if (npy_read(path, &ours, &err) == 0 && load_npy("preprocess/preprocess_32.npy", &ref) == 0) {
        size_t per = 3 * 32 * 32;
        CHECK(ours.ndim == 4 && ours.shape[0] == 2 && ours.shape[2] == 32, "preprocess shape");
        CHECK(!memcmp(ours.data, ref.data, per * 4) && !memcmp((float *)ours.data + per, (float *)ref.data + 7 * per, per * 4),
              "preprocess output differs from _transform(32)");
        npy_free(&ours);
        npy_free(&ref);
    } else {
        CHECK(0, "preprocess output unreadable");
    }

    /* embed --pixels / --tokens --raw equal encode_image / encode_text */
    snprintf(args, sizeof args, "embed -m %s --pixels %s --raw -o %s/ei.npy", tiny, ref_path("tiny/images.npy"), dir);
    CHECK(clipc(args) == 0, "embed --pixels");
    snprintf(path, sizeof path, "%s/ei.npy", dir);
    if (npy_read(path, &ours, &err) == 0 && load_npy("tiny/image_features.npy", &ref) == 0) {
        CHECK(ours.count == ref.count && max_abs_diff(ours.data, ref.data, ref.count) <= 1e-4, "embed --pixels --raw");
        npy_free(&ours);
        npy_free(&ref);
    }
    snprintf(args, sizeof args, "embed -m %s --tokens %s --raw -o %s/et.npy", tiny, ref_path("tiny/tokens.npy"), dir);
    CHECK(clipc(args) == 0, "embed --tokens");
    snprintf(path, sizeof path, "%s/et.npy", dir);
    if (npy_read(path, &ours, &err) == 0 && load_npy("tiny/text_features.npy", &ref) == 0) {
        CHECK(ours.count == ref.count && max_abs_diff(ours.data, ref.data, ref.count) <= 1e-4, "embed --tokens --raw");
        npy_free(&ours);
        npy_free(&ref);
    }
    /* --text (normalised) equals the normalised reference row of caption 0 */
    snprintf(args, sizeof args, "embed -m %s --text 'a photo of a cat.' -o %s/t.npy", tiny, dir);
    CHECK(clipc(args) == 0, "embed --text");
    snprintf(path, sizeof path, "%s/t.npy", dir);
    if (npy_read(path, &ours, &err) == 0 && load_npy("tiny/text_features.npy", &ref) == 0) {
        clipc_normalize_rows(ref.data, 1, 32);
        CHECK(ours.count == 32 && max_abs_diff(ours.data, ref.data, 32) <= 1e-5, "embed --text");
        npy_free(&ours);
        npy_free(&ref);
    }
    /* --image equals --pixels of the same file */
    snprintf(args, sizeof args, "embed -m %s --image %s -o %s/i.npy", tiny, ref_path("preprocess/images/astronaut_512x512.png"), dir);
    CHECK(clipc(args) == 0, "embed --image");
    snprintf(path, sizeof path, "%s/i.npy", dir);
    if (npy_read(path, &ours, &err) == 0 && load_npy("tiny/image_features.npy", &ref) == 0) {
        float *row6 = (float *)ref.data + 6 * 32; /* images.npy row 6 is this photo */
        clipc_normalize_rows(row6, 1, 32);
        CHECK(max_abs_diff(ours.data, row6, 32) <= 1e-5, "embed --image differs from the reference photo row");
        npy_free(&ours);
        npy_free(&ref);
    }

    /* classify: probabilities sum to 1 and follow softmax(scale * cos) */
    snprintf(args, sizeof args, "classify -m %s --labels 'cat, dog,rocket' --templates simple --top 3 --json %s", tiny,
             ref_path("preprocess/images/chelsea_451x300.png"));
    CHECK(clipc(args) == 0, "classify");
    out = slurp("out.txt");
    CHECK(strstr(out, "\"predictions\"") && strstr(out, "\"label\": \"rocket\""), "classify json: %s", out);
    double total = 0;
    for (char *p = strstr(out, "\"probability\": "); p; p = strstr(p + 1, "\"probability\": ")) total += atof(p + 15);
    CHECK(total > 0.9999 && total < 1.0001, "classify probabilities sum to %f", total);
    free(out);
    snprintf(path, sizeof path, "%s/templates.txt", dir);
    FILE *f = fopen(path, "w");
    fputs("a photo of a {}.\n\nitap of a {}.\n", f);
    fclose(f);
    snprintf(args, sizeof args, "classify -m %s --labels cat,dog --templates %s %s", tiny, path,
             ref_path("preprocess/images/chelsea_451x300.png"));
    CHECK(clipc(args) == 0, "classify with a template file");
}

static void check_errors(void) {
    char args[4096], tiny[512];
    snprintf(tiny, sizeof tiny, "%s", ref_path("tiny/model.safetensors"));
    char model[512];
    snprintf(model, sizeof model, "%s/m.safetensors", dir);

    /* weights */
    write_bytes("garbage.safetensors", "\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ", 24);
    snprintf(args, sizeof args, "embed -m %s/garbage.safetensors --text hi -o %s/o1.npy", dir, dir);
    expect_error(args, "garbage.safetensors: not a safetensors file", "o1.npy");
    snprintf(args, sizeof args, "cp %s %s/trunc.safetensors && truncate -s 2000000 %s/trunc.safetensors", tiny, dir, dir);
    run_cmd(args);
    snprintf(args, sizeof args, "info %s/trunc.safetensors", dir);
    expect_error(args, "truncated", NULL);
    snprintf(args, sizeof args, "embed -m %s/missing.safetensors --text hi -o %s/o1.npy", dir, dir);
    expect_error(args, "missing.safetensors: No such file", "o1.npy");

    /* images: corrupt, truncated, unsupported, oversized, directory */
    write_bytes("bad.jpg", "\xff\xd8\xff\xe0 this is not really a jpeg", 30);
    snprintf(args, sizeof args, "embed -m %s --image %s %s/bad.jpg -o %s/o2.npy", tiny,
             ref_path("preprocess/images/astronaut_512x512.png"), dir, dir);
    expect_error(args, "bad.jpg: corrupt JPEG", "o2.npy");
    snprintf(args, sizeof args, "head -c 20000 %s > %s/trunc.jpg", ref_path("preprocess/images/coffee_600x400_q90.jpg"), dir);
    run_cmd(args);
    snprintf(args, sizeof args, "classify -m %s --labels a,b %s/trunc.jpg", tiny, dir);
    expect_error(args, "trunc.jpg: JPEG file is truncated", NULL);
    write_bytes("x.gif", "GIF89a", 6);
    snprintf(args, sizeof args, "preprocess %s/x.gif -o %s/o3.npy", dir, dir);
    expect_error(args, "x.gif: unsupported image format", "o3.npy");
    snprintf(args, sizeof args, "preprocess %s -o %s/o3.npy", dir, dir);
    expect_error(args, "not a regular file", "o3.npy");

    /* text: empty, invalid UTF-8, too long without --truncate */
    snprintf(args, sizeof args, "embed -m %s --text 'ok' '' -o %s/o4.npy", tiny, dir);
    expect_error(args, "text 2 is empty", "o4.npy");
    char bash_args[4200];
    snprintf(bash_args, sizeof bash_args, "bash -c \"%s embed -m %s --text \\$'caf\\\\xc3' -o %s/o4.npy\" >%s/out.txt 2>%s/err.txt",
             clipc_binary, tiny, dir, dir, dir);
    int rc = run_cmd(bash_args);
    char *err = slurp("err.txt");
    CHECK(rc == 1 && strstr(err, "invalid UTF-8") && !exists("o4.npy"), "invalid UTF-8: exit %d, %s", rc, err);
    free(err);
    char long_text[3000] = "";
    for (int i = 0; i < 100; i++) strcat(long_text, "cat ");
    snprintf(args, sizeof args, "embed -m %s --text '%s' -o %s/o4.npy", tiny, long_text, dir);
    expect_error(args, "too long for context length 77 (use --truncate)", "o4.npy");
    snprintf(args, sizeof args, "embed -m %s --truncate --text '%s' -o %s/o4.npy", tiny, long_text, dir);
    CHECK(clipc(args) == 0 && exists("o4.npy"), "--truncate embeds a long text");
    expect_error("tokenize ''", "text 1 is empty", NULL);

    /* arguments */
    snprintf(args, sizeof args, "embed -m %s --pixels %s -o %s/o5.npy", tiny, ref_path("tiny-rn/images.npy"), dir);
    expect_error(args, "expected float32 pixels of shape [n, 3, 32, 32]", "o5.npy");
    snprintf(args, sizeof args, "embed -m %s --text a --image b.jpg -o %s/o5.npy", tiny, dir);
    expect_error(args, "exactly one of", "o5.npy");
    expect_error("init --arch ViT-Z-99 -o /tmp/never.safetensors", "unknown architecture 'ViT-Z-99'", NULL);
    expect_error("tokenize --context x hi", "--context: 'x' is not an integer", NULL);
    snprintf(args, sizeof args, "classify -m %s --labels 'a,,b' %s", model, ref_path("preprocess/images/astronaut_512x512.png"));
    expect_error(args, "label 2 is empty", NULL);
    expect_error("frobnicate", "unknown command 'frobnicate'", NULL);
}

static bool same_file(const char *a, const char *b) {
    unsigned char *x, *y;
    size_t nx, ny;
    clipc_error err;
    if (read_file(a, &x, &nx, &err)) return false;
    if (read_file(b, &y, &ny, &err)) {
        free(x);
        return false;
    }
    bool same = nx == ny && !memcmp(x, y, nx);
    free(x);
    free(y);
    return same;
}

/* clipc train: a run stopped at step 3 and resumed ends bit-identical to a
 * run straight through; the trained model loads for classify; refusals. */
static void check_train(void) {
    char args[4096], a[512], b[512];
    const char *common = "--data fashion-mnist --arch tiny --batch 8 --steps 6 --eval-every 3 --eval-limit 64 --seed 1";
    snprintf(args, sizeof args, "train %s --out %s/A", common, dir);
    CHECK(clipc(args) == 0, "train A failed: %s", slurp("err.txt"));
    snprintf(args, sizeof args, "train %s --stop-at 3 --out %s/B", common, dir);
    CHECK(clipc(args) == 0, "train B (stop at 3) failed");
    char *err = slurp("err.txt");
    CHECK(strstr(err, "stopped at step 3 of 6"), "stop-at message: %s", err);
    free(err);
    /* as if a crashed session had logged a step after its last checkpoint */
    snprintf(b, sizeof b, "%s/B/log.jsonl", dir);
    FILE *stray = fopen(b, "a");
    if (stray) fputs("{\"step\": 4, \"loss\": 9.99}\n", stray), fclose(stray);
    snprintf(args, sizeof args, "train --resume --eval-every 3 --eval-limit 64 --out %s/B", dir);
    CHECK(clipc(args) == 0, "resume B failed");
    err = slurp("err.txt");
    CHECK(strstr(err, "resuming") && strstr(err, "at step 3 of 6"), "resume message: %s", err);
    free(err);
    snprintf(a, sizeof a, "%s/A/checkpoint.safetensors", dir);
    snprintf(b, sizeof b, "%s/B/checkpoint.safetensors", dir);
    CHECK(same_file(a, b), "resumed checkpoint differs from the uninterrupted run's");
    snprintf(a, sizeof a, "%s/A/model.safetensors", dir);
    snprintf(b, sizeof b, "%s/B/model.safetensors", dir);
    CHECK(same_file(a, b), "resumed model differs from the uninterrupted run's");
    for (int run = 0; run < 2; run++) { /* B's log: the stray line is gone */
        snprintf(a, sizeof a, "%s/%s/log.jsonl", dir, run ? "B" : "A");
        FILE *f = fopen(a, "r");
        int steps = 0, evals = 0;
        char line[1024];
        while (f && fgets(line, sizeof line, f))
            steps += strstr(line, "\"loss\"") != NULL, evals += strstr(line, "zeroshot_top1") != NULL;
        if (f) fclose(f);
        CHECK(steps == 6 && evals == 2, "%s: %d step lines, %d evaluations", a, steps, evals);
    }
    snprintf(a, sizeof a, "%s/A/curve.svg", dir);
    char *svg = NULL;
    unsigned char *data;
    size_t len;
    clipc_error e;
    if (read_file(a, &data, &len, &e) == 0) svg = (char *)data;
    CHECK(svg && len > 100 && !strncmp(svg, "<svg", 4) && strstr(svg, "polyline"), "curve.svg");
    free(svg);
    /* the trained model is an ordinary checkpoint for the other commands */
    snprintf(args, sizeof args, "classify -m %s/A/model.safetensors --labels sandal,bag --templates simple %s", dir,
             ref_path("preprocess/images/astronaut_512x512.png"));
    CHECK(clipc(args) == 0, "classify with the trained model");
    snprintf(args, sizeof args, "info %s/A/checkpoint.safetensors", dir);
    CHECK(clipc(args) == 0, "info reads a training checkpoint");

    snprintf(args, sizeof args, "train %s --out %s/A", common, dir);
    expect_error(args, "already holds a run: use --resume", NULL);
    snprintf(args, sizeof args, "train --resume --out %s/nothing", dir);
    expect_error(args, "checkpoint.safetensors: No such file", NULL);
    snprintf(args, sizeof args, "train --data images.csv --steps 2 --out %s/C", dir);
    expect_error(args, "images.csv: No such file or directory", NULL);
    snprintf(args, sizeof args, "train --data fashion-mnist --out %s/C", dir);
    expect_error(args, "give exactly one of --steps and --epochs", NULL);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "CLIPC_FASHION_MNIST_DIR=/nonexistent %s train %s --out %s/D >%s/out.txt 2>%s/err.txt",
             clipc_binary, common, dir, dir, dir);
    int rc = run_cmd(cmd);
    err = slurp("err.txt");
    CHECK(rc == 1 && strstr(err, "/nonexistent/train-images-idx3-ubyte.gz: cannot open"), "missing dataset: %s", err);
    free(err);
}

/* clipc train on a CSV of image/caption pairs (OpenCLIP's columns, quoted
 * fields): a missing and a corrupt image are skipped with a warning. */
static void check_train_csv(void) {
    char path[512], args[4096];
    snprintf(path, sizeof path, "%s/pairs.csv", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "title,filepath\n");
    const char *imgs[] = {"astronaut_512x512.png", "chelsea_451x300.png", "coffee_600x400_q90.jpg", "rocket_427x640_q85.jpg"};
    char images_dir[4096];
    if (!realpath(ref_path("preprocess/images"), images_dir)) snprintf(images_dir, sizeof images_dir, "/nonexistent");
    for (int i = 0; i < 4; i++) /* absolute paths; relative ones are relative to the CSV */
        fprintf(f, "\"a photo, with \"\"quotes\"\" %d\",%s/%s\n", i, images_dir, imgs[i]);
    fprintf(f, "a missing photo,does-not-exist.jpg\n");
    fprintf(f, "a corrupt photo,bad.jpg\n");
    fclose(f);
    static const char not_a_jpeg[] = "\xff\xd8\xff\xe0 not a jpeg";
    write_bytes("bad.jpg", not_a_jpeg, sizeof not_a_jpeg - 1);
    snprintf(args, sizeof args, "train --data %s --arch tiny --batch 6 --steps 2 --out %s/csvrun", path, dir);
    int rc = clipc(args);
    char *err = slurp("err.txt");
    /* which bad file comes first depends on the shuffled order */
    CHECK(rc == 0 && strstr(err, "on 6 ") && strstr(err, "warning: skipped") &&
              (strstr(err, "does-not-exist.jpg: No such file") || strstr(err, "bad.jpg: corrupt JPEG")),
          "CSV training: exit %d, %s", rc, err);
    free(err);
    CHECK(exists("csvrun/model.safetensors"), "CSV training wrote no model");
    snprintf(args, sizeof args, "train --data %s --csv-img-key image --arch tiny --steps 2 --out %s/csvrun2", path, dir);
    expect_error(args, "no 'image' column (--csv-img-key)", NULL);
}

void test_cli(void) {
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp");
        return;
    }
    check_commands();
    check_errors();
    check_train();
    check_train_csv();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    run_cmd(cmd);
}
