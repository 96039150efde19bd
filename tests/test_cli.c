/* test_cli.c — the clipc command end to end: outputs against the reference
 * fixtures, and the bad-input contract: one clear error line naming the
 * input, a non-zero exit, no crash, no output file left behind. */
#include "test.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <netinet/in.h>
#include <sqlite3.h>
#include <sys/socket.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>

static char dir[] = "/tmp/clipc_cli_XXXXXX";

/* Runs `clipc ARGS`, stdout to dir/out.txt and stderr to dir/err.txt;
 * returns the exit status. */
static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int clipc(const char *args) {
    char cmd[16384 + 1200];
    snprintf(cmd, sizeof cmd, "%s %s >%s/out.txt 2>%s/err.txt", clipc_binary, args, dir, dir);
    return run_cmd(cmd);
}

static char *slurp(const char *name) {
    char path[1024];
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
    /* --npy writes the rows embed --tokens reads: the same embeddings as embed --text */
    snprintf(args, sizeof args, "tokenize --npy %s/tk.npy 'a photo of a bag' 'a red shirt'", dir);
    CHECK(clipc(args) == 0, "tokenize --npy");
    snprintf(args, sizeof args, "embed --tokens %s/tk.npy -o %s/e1.npy", dir, dir);
    CHECK(clipc(args) == 0, "embed --tokens of tokenize --npy rows");
    snprintf(args, sizeof args, "embed --text 'a photo of a bag' 'a red shirt' -o %s/e2.npy", dir);
    CHECK(clipc(args) == 0, "embed --text");
    snprintf(args, sizeof args, "cmp -s %s/e1.npy %s/e2.npy", dir, dir);
    CHECK(run_cmd(args) == 0, "embeddings of tokenize --npy rows differ from embed --text's");
    CHECK(clipc("tokenize --ids --npy /tmp/never.npy 'a'") != 0, "tokenize --ids --npy is refused");
    /* a misspelt command or flag gets a suggestion */
    static const char *const misspelt[][2] = {{"finetnue", "did you mean 'finetune'?"},
                                              {"train --step 3 --data fashion-mnist --out /tmp/never", "did you mean '--steps'?"},
                                              {"finetune --metod coop", "did you mean '--method'?"},
                                              {"embed --imge x.png -o /tmp/never.npy", "did you mean '--image'?"},
                                              {"classify --lables a,b x.png", "did you mean '--labels'?"},
                                              {"eval zeroshot --datset fashion-mnist", "did you mean '--dataset'?"},
                                              {"search --db x.db --jsno cat", "did you mean '--json'?"},
                                              {"index --db x.db --precison bf16 photos", "did you mean '--precision'?"},
                                              {"serve --prot 8080", "did you mean '--port'?"},
                                              {"convert -m x --dtyp int8 -o y", "did you mean '--dtype'?"}};
    for (size_t i = 0; i < sizeof misspelt / sizeof *misspelt; i++) {
        int rc = clipc(misspelt[i][0]);
        char *msg = slurp("err.txt");
        CHECK(rc != 0 && strstr(msg, misspelt[i][1]), "clipc %s: %s", misspelt[i][0], msg);
        free(msg);
    }
    /* make install to a prefix, then make uninstall: nothing is left */
    snprintf(args, sizeof args, "make -s install PREFIX=%s/pfx >/dev/null 2>&1 && test -x %s/pfx/bin/clipc && "
             "make -s uninstall PREFIX=%s/pfx >/dev/null 2>&1 && test -z \"$(find %s/pfx -type f)\"", dir, dir, dir, dir);
    CHECK(run_cmd(args) == 0, "make uninstall leaves files that make install put");

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
        double lr[6] = {0};
        char line[1024];
        while (f && fgets(line, sizeof line, f)) {
            const char *at = strstr(line, "\"lr\": ");
            if (at && steps < 6) lr[steps] = atof(at + 6);
            steps += strstr(line, "\"loss\"") != NULL, evals += strstr(line, "zeroshot_top1") != NULL;
        }
        if (f) fclose(f);
        CHECK(steps == 6 && evals == 2, "%s: %d step lines, %d evaluations", a, steps, evals);
        /* the default warm-up of a 6-step run is half of it: 1/3, 2/3, then the full 5e-4 */
        CHECK(fabs(lr[0] - 5e-4 / 3) < 1e-6 && fabs(lr[1] - 1e-3 / 3) < 1e-6 && fabs(lr[2] - 5e-4) < 1e-6 && lr[5] < lr[2],
              "%s: learning rates %g %g %g ... %g", a, lr[0], lr[1], lr[2], lr[5]);
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
 * fields): a missing and a corrupt image are skipped with a warning that
 * counts files. */
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
    /* two bad files, drawn once in each of the 2 steps: counted as files (2), not draws (4) */
    CHECK(rc == 0 && strstr(err, "on 6 ") && strstr(err, "warning: 2 unreadable image files so far") &&
              !strstr(err, "warning: 4 unreadable") &&
              (strstr(err, "does-not-exist.jpg: No such file") || strstr(err, "bad.jpg: corrupt JPEG")),
          "CSV training: exit %d, %s", rc, err);
    free(err);
    CHECK(exists("csvrun/model.safetensors"), "CSV training wrote no model");
    snprintf(args, sizeof args, "train --data %s --csv-img-key image --arch tiny --steps 2 --out %s/csvrun2", path, dir);
    expect_error(args, "no 'image' column (--csv-img-key)", NULL);
}

/* Parses dir/NAME as JSON (NULL when missing or malformed). */
static cJSON *read_json(const char *name) {
    char *text = slurp(name);
    cJSON *j = cJSON_Parse(text);
    free(text);
    return j;
}

static double json_number(const cJSON *j, const char *object, const char *key) {
    const cJSON *o = object ? cJSON_GetObjectItem(j, object) : j, *v = cJSON_GetObjectItem(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

static void link_image(const char *images_dir, const char *sub, const char *name) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "mkdir -p %s/%s && ln -sf %s/%s %s/%s/%s", dir, sub, images_dir, name, dir, sub, name);
    run_cmd(cmd);
}

/* clipc eval on small folders and CSVs of the reference photos, with the
 * random tiny model: the files and JSON layout, agreement with `classify`,
 * and the errors. (The metrics themselves are checked in test_eval.c.) */
static void check_eval(void) {
    char args[8192], tiny[512], images[4096];
    snprintf(tiny, sizeof tiny, "%s", ref_path("tiny/model.safetensors"));
    if (!realpath(ref_path("preprocess/images"), images)) snprintf(images, sizeof images, "/nonexistent");
    const char *cats[] = {"chelsea_224x224.png", "chelsea_451x300.png", "chelsea_gray_259x300.jpg", "chelsea_rgba_300x200.png"};
    const char *rockets[] = {"rocket_427x640_q85.jpg", "rocket_exif6_320x480.jpg", "rocket_small_60x90.png"};
    const char *cups[] = {"coffee_600x400_q90.jpg", "coffee_palette_200x150.png", "coffee_progressive_480x320.jpg"};
    for (int i = 0; i < 4; i++) link_image(images, i < 2 ? "ev/train/cat" : "ev/test/cat", cats[i]);
    for (int i = 0; i < 3; i++) link_image(images, i < 2 ? "ev/train/space_rocket" : "ev/test/space_rocket", rockets[i]);
    for (int i = 0; i < 3; i++) link_image(images, i < 2 ? "ev/train/mug" : "ev/test/mug", cups[i]);
    for (int i = 0; i < 3; i++) link_image(images, "ev/all/mug", cups[i]);
    for (int i = 0; i < 3; i++) link_image(images, "ev/all/space_rocket", rockets[i]);
    for (int i = 0; i < 4; i++) link_image(images, "ev/all/cat", cats[i]);

    /* zero-shot on a folder of class folders: classes sorted, '_' read as a space */
    snprintf(args, sizeof args, "eval zeroshot -m %s --dataset %s/ev/all --templates simple --out %s/evout", tiny, dir, dir);
    int rc = clipc(args);
    char *out = slurp("out.txt");
    cJSON *j = read_json("evout/zeroshot.json");
    const cJSON *names = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "details"), "classnames");
    const cJSON *matrix = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "details"), "confusion_matrix");
    CHECK(rc == 0 && j && !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "task")), "zeroshot_classification") &&
              !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "dataset")), "all") &&
              cJSON_GetArraySize(names) == 3 && !strcmp(cJSON_GetStringValue(cJSON_GetArrayItem(names, 1)), "mug") &&
              !strcmp(cJSON_GetStringValue(cJSON_GetArrayItem(names, 2)), "space rocket") &&
              json_number(j, "details", "n_samples") == 10 && exists("evout/confusion.svg") &&
              strstr(out, "confusion matrix"),
          "eval zeroshot on a folder: exit %d, %s", rc, out);
    /* top-1 must agree with `clipc classify` image by image */
    int diagonal = 0, total = 0;
    for (int r = 0; r < cJSON_GetArraySize(matrix); r++)
        for (int k = 0; k < 3; k++) {
            int v = (int)cJSON_GetArrayItem(cJSON_GetArrayItem(matrix, r), k)->valuedouble;
            total += v;
            diagonal += r == k ? v : 0;
        }
    int agree = 0;
    const char *const *groups[3] = {cats, cups, rockets};
    const int sizes[3] = {4, 3, 3};
    const char *label_of[3] = {"cat", "mug", "space rocket"};
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < sizes[c]; i++) {
            snprintf(args, sizeof args, "classify -m %s --labels \"cat,mug,space rocket\" --templates simple --top 1 --json %s/%s",
                     tiny, images, groups[c][i]);
            clipc(args);
            cJSON *cj = read_json("out.txt");
            const cJSON *pred = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetArrayItem(cj, 0), "predictions"), 0), "label");
            agree += cJSON_IsString(pred) && !strcmp(pred->valuestring, label_of[c]);
            cJSON_Delete(cj);
        }
    CHECK(total == 10 && fabs(json_number(j, "metrics", "acc1") - diagonal / 10.0) < 1e-9 && diagonal == agree,
          "zero-shot top-1 %g, confusion diagonal %d of %d, classify agrees on %d", json_number(j, "metrics", "acc1"),
          diagonal, total, agree);
    CHECK(json_number(j, "metrics", "acc5") == 1.0, "top-5 of 3 classes is always 1: %g", json_number(j, "metrics", "acc5"));
    cJSON_Delete(j);
    free(out);

    /* the same run twice gives the same JSON */
    char *first = slurp("evout/zeroshot.json");
    snprintf(args, sizeof args, "eval zeroshot -m %s --dataset %s/ev/all --templates simple --out %s/evout", tiny, dir, dir);
    clipc(args);
    char *second = slurp("evout/zeroshot.json");
    CHECK(!strcmp(first, second), "eval zeroshot is not reproducible run to run");
    free(first), free(second);

    /* a CSV of path + label, with class names from a file */
    char path[512];
    snprintf(path, sizeof path, "%s/labels.csv", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "filepath,label\n%s/%s,0\n%s/%s,1\n%s/%s,1\n", images, cats[0], images, cups[0], images, cups[1]);
    fclose(f);
    write_bytes("names.txt", "cat\nmug\n", 8);
    snprintf(args, sizeof args, "eval zeroshot -m %s --dataset %s --classnames %s/names.txt --out %s/evcsv", tiny, path, dir, dir);
    rc = clipc(args);
    j = read_json("evcsv/zeroshot.json");
    names = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "details"), "classnames");
    CHECK(rc == 0 && json_number(j, "details", "n_samples") == 3 && json_number(j, "details", "n_templates") == 80 &&
              !strcmp(cJSON_GetStringValue(cJSON_GetArrayItem(names, 1)), "mug"),
          "eval zeroshot on a CSV: exit %d", rc);
    cJSON_Delete(j);
    write_bytes("names3.txt", "cat\nmug\ndog\n", 12);
    snprintf(args, sizeof args, "eval zeroshot -m %s --dataset %s --classnames %s/names3.txt --out %s/evcsv2", tiny, path, dir, dir);
    expect_error(args, "names3.txt: more than the dataset's 2 classes", "evcsv2/zeroshot.json");

    /* linear probe on DIR/train + DIR/test */
    snprintf(args, sizeof args, "eval linear-probe -m %s --dataset %s/ev --out %s/evlp", tiny, dir, dir);
    rc = clipc(args);
    j = read_json("evlp/linear_probe.json");
    double lp = json_number(j, "metrics", "lp_acc1");
    CHECK(rc == 0 && !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "task")), "linear_probe") && lp >= 0 && lp <= 1 &&
              json_number(j, "details", "n_val") == 1 && json_number(j, "details", "n_fit") == 5 &&
              json_number(j, "details", "l2_lambda") > 0 && !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "dataset")), "ev"),
          "eval linear-probe: exit %d, lp_acc1 %g, dataset '%s' (the folder's name, not 'train')", rc, lp,
          cJSON_GetStringValue(cJSON_GetObjectItem(j, "dataset")));
    cJSON_Delete(j);
    /* without --out: one folder per task and dataset, so the two runs keep their results; in a log
     * (stderr not a terminal) progress comes as plain lines, here every 1 us */
    char abs_bin[4096], abs_tiny[4096], cmd[24576];
    if (!realpath(clipc_binary, abs_bin)) snprintf(abs_bin, sizeof abs_bin, "%s", clipc_binary);
    if (!realpath(tiny, abs_tiny)) snprintf(abs_tiny, sizeof abs_tiny, "%s", tiny);
    snprintf(cmd, sizeof cmd, "cd %s && CLIPC_PROGRESS_EVERY=0.000001 %s eval linear-probe -m %s --dataset ev > /dev/null 2> lp.err && "
             "%s eval zeroshot -m %s --dataset ev/all --templates simple > /dev/null 2>&1 && "
             "test -f clipc-eval/linear-probe-ev/linear_probe.json && test -f clipc-eval/zeroshot-all/zeroshot.json",
             dir, abs_bin, abs_tiny, abs_bin, abs_tiny);
    CHECK(run_cmd(cmd) == 0, "eval without --out writes clipc-eval/TASK-DATASET/");
    char *lp_err = slurp("lp.err");
    CHECK(strstr(lp_err, "train images: 5/6") == NULL && strstr(lp_err, "train images: 6/6") && strstr(lp_err, "test images: "),
          "progress lines in a log: %s", lp_err);
    free(lp_err);
    snprintf(args, sizeof args, "eval linear-probe -m %s --dataset %s/ev/all --out %s/evlp2", tiny, dir, dir);
    expect_error(args, "has no train/ and test/ sub-folders", NULL);

    /* retrieval: 4 images, one with three captions and one with two */
    snprintf(path, sizeof path, "%s/captions.csv", dir);
    f = fopen(path, "w");
    fprintf(f, "filepath,title\n%s/%s,a cat\n%s/%s,a mug of coffee\n%s/%s,a cat on a table\n%s/%s,a rocket\n"
               "%s/%s,a tabby cat\n%s/%s,a launch\n%s/%s,coffee\n",
            images, cats[0], images, cups[0], images, cats[0], images, rockets[0], images, cats[0], images, rockets[0],
            images, cups[1]);
    fclose(f);
    snprintf(args, sizeof args, "eval retrieval -m %s --data %s --out %s/evret", tiny, path, dir);
    rc = clipc(args);
    j = read_json("evret/retrieval.json");
    double r1 = json_number(j, "metrics", "image_retrieval_recall@1"), r10 = json_number(j, "metrics", "image_retrieval_recall@10");
    double t10 = json_number(j, "metrics", "text_retrieval_recall@10");
    CHECK(rc == 0 && json_number(j, "details", "n_images") == 4 && json_number(j, "details", "n_captions") == 7 &&
              r1 >= 0 && r1 <= 1 && r10 == 1 && t10 == 1,
          "eval retrieval: exit %d, R@1 %g, R@10 %g/%g (10 > 4 images: every query hits)", rc, r1, r10, t10);
    cJSON_Delete(j);
    snprintf(args, sizeof args, "eval retrieval -m %s --out %s/evret2", tiny, dir);
    expect_error(args, "needs --data FILE.csv", NULL);

    /* retrieve: k best images per query, from the folder */
    snprintf(args, sizeof args, "retrieve -m %s --dataset %s/ev/all -k 3 --sheet %s/sheet.svg \"a cat\" \"mugs\"", tiny,
             dir, dir);
    rc = clipc(args);
    out = slurp("out.txt");
    int lines = 0;
    for (char *p = out; *p; p++) lines += *p == '\n';
    CHECK(rc == 0 && lines == 10 && strstr(out, "\"mugs\"\n   1. ") && strstr(out, "   3. "), "retrieve: exit %d, %s", rc, out);
    /* each query's wanted class is the one it names ("mugs": a plural); hits of other classes are
     * marked, and the count of the others is the summary's, in the text and on the sheet */
    int marked = 0, counted = 0, in_class, total_in = 0;
    for (char *p = strstr(out, "<- not "); p; p = strstr(p + 1, "<- not ")) marked++;
    for (const char *p = out; (p = strstr(p, " of 3 in '")); p++)
        if (sscanf(p - 1, "%d", &in_class) == 1) counted++, total_in += in_class;
    char *sheet = slurp("sheet.svg");
    int frames_hit = 0, frames_miss = 0;
    for (char *p = strstr(sheet, "class=\"hit\""); p; p = strstr(p + 1, "class=\"hit\"")) frames_hit++;
    for (char *p = strstr(sheet, "class=\"miss\""); p; p = strstr(p + 1, "class=\"miss\"")) frames_miss++;
    CHECK(counted == 2 && marked == 6 - total_in && frames_hit == total_in && frames_miss == marked &&
              strstr(out, "in 'cat' (the class the query names)") && strstr(out, "in 'mug' (the class the query names)"),
          "retrieve marks the hits of other classes: %d marked, %d in class, sheet %d/%d: %s", marked, total_in, frames_hit,
          frames_miss, out);
    free(sheet);
    free(out);

    expect_error("eval zeroshot --dataset /nonexistent/x", "/nonexistent/x: no such dataset", NULL);
    expect_error("eval bogus --dataset fashion-mnist", "unknown task 'bogus'", NULL);
    expect_error("eval zeroshot --dataset fashion-mnist --shots x", "--shots: 'x' is not an integer", NULL);
    expect_error("retrieve \"\"", "query 1 is empty", NULL);
}

/* The shipped model, found without -m: its zero-shot result on the
 * Fashion-MNIST test set equals the committed evaluation JSON, and text
 * queries find the right clothes. */
static void check_default_model(void) {
    char args[8192], models[4096], want_path[4200];
    snprintf(models, sizeof models, "%s", clipc_binary);
    char *slash = strrchr(models, '/');
    snprintf(slash ? slash : models, sizeof models - (size_t)(slash ? slash - models : 0), "%s", slash ? "/../models" : "models");
    snprintf(want_path, sizeof want_path, "%s/clipc-fmnist.zeroshot.json", models);
    unsigned char *text;
    size_t len;
    clipc_error err;
    cJSON *want = NULL;
    if (read_file(want_path, &text, &len, &err) == 0) {
        char *z = realloc(text, len + 1);
        z[len] = 0;
        want = cJSON_Parse(z);
        free(z);
    }
    CHECK(want != NULL, "cannot read %s", want_path);
    snprintf(args, sizeof args, "eval zeroshot --dataset fashion-mnist --out %s/evdefault", dir);
    int rc = clipc(args);
    cJSON *got = read_json("evdefault/zeroshot.json");
    char *a = cJSON_PrintUnformatted(cJSON_GetObjectItem(got, "metrics"));
    char *b = cJSON_PrintUnformatted(cJSON_GetObjectItem(want, "metrics"));
    char *c = cJSON_PrintUnformatted(cJSON_GetObjectItem(cJSON_GetObjectItem(got, "details"), "confusion_matrix"));
    char *d = cJSON_PrintUnformatted(cJSON_GetObjectItem(cJSON_GetObjectItem(want, "details"), "confusion_matrix"));
    CHECK(rc == 0 && a && b && !strcmp(a, b) && c && d && !strcmp(c, d) && json_number(got, "metrics", "acc1") >= 0.90,
          "shipped model on Fashion-MNIST test: exit %d, metrics %s, committed %s", rc, a ? a : "-", b ? b : "-");
    free(a), free(b), free(c), free(d);
    cJSON_Delete(got);
    cJSON_Delete(want);

    rc = clipc("retrieve -k 5 \"a pair of trousers\" \"a handbag\"");
    char *out = slurp("out.txt");
    int trousers = 0, bags = 0;
    for (char *p = strstr(out, "(trouser)"); p; p = strstr(p + 1, "(trouser)")) trousers++;
    for (char *p = strstr(out, "(bag)"); p; p = strstr(p + 1, "(bag)")) bags++;
    CHECK(rc == 0 && trousers == 5 && bags == 5, "retrieve with the shipped model: %d trousers, %d bags of 5: %s",
          trousers, bags, out);
    free(out);
    snprintf(args, sizeof args, "CLIPC_MODEL=/nonexistent/m.safetensors %s info >%s/out.txt 2>%s/err.txt", clipc_binary,
             dir, dir);
    rc = run_cmd(args);
    char *e = slurp("err.txt");
    CHECK(rc == 1 && strstr(e, "/nonexistent/m.safetensors"), "CLIPC_MODEL pointing nowhere: exit %d, %s", rc, e);
    free(e);
}

/* Relative difference of two models' parameters: over the whole parameter
 * vector, ||a - b|| / ||b||, and the largest per tensor (with its name). */
static double model_difference(const char *pa, const char *pb, double *worst_tensor, char *worst, size_t cap) {
    clipc_error err;
    clipc_model *a = clipc_model_load(pa, &err), *b = a ? clipc_model_load(pb, &err) : NULL;
    double all_diff = 0, all_norm = 0;
    *worst_tensor = a && b ? 0 : INFINITY;
    snprintf(worst, cap, "%s", a && b ? "-" : err.message);
    for (int i = 0; a && b && i < a->table.count; i++) {
        const param_spec *p = &a->table.items[i];
        double diff = 0, norm = 0;
        for (size_t k = 0; k < p->numel; k++) {
            double x = a->params[p->offset + k], y = b->params[p->offset + k];
            diff += (x - y) * (x - y);
            norm += y * y;
        }
        all_diff += diff, all_norm += norm;
        double rel = sqrt(diff) / (sqrt(norm) > 1e-12 ? sqrt(norm) : 1e-12);
        if (rel > *worst_tensor) *worst_tensor = rel, snprintf(worst, cap, "%s", p->name);
    }
    clipc_model_free(a);
    clipc_model_free(b);
    return a && b ? sqrt(all_diff) / sqrt(all_norm) : INFINITY;
}

/* Largest relative difference between the per-step losses of two logs. */
static double log_difference(const char *a, const char *b, int *steps) {
    char *ta = slurp(a), *tb = slurp(b), *pa = ta, *pb = tb;
    double max = 0;
    *steps = 0;
    for (;;) {
        pa = strstr(pa, "\"loss\": "), pb = pb ? strstr(pb, "\"loss\": ") : NULL;
        if (!pa || !pb) {
            if (pa || pb) max = INFINITY; /* different numbers of steps */
            break;
        }
        double x = strtod(pa + 8, &pa), y = strtod(pb + 8, &pb), rel = fabs(x - y) / fabs(y);
        if (rel > max) max = rel;
        ++*steps;
    }
    free(ta), free(tb);
    return max;
}

/* mpirun -np 2 gives the losses and weights of one process with the same
 * global batch, for both losses, with and without accumulation; a rank
 * killed mid-run ends the job with an error naming it, and the last
 * checkpoint loads and resumes on a different number of ranks. */
static void check_mpi(void) {
    char cmd[16384], out1[600], out2[600];
    snprintf(cmd, sizeof cmd, "%s --version | grep -q 'with MPI'", clipc_binary);
    if (run_cmd(cmd) != 0) {
        printf("  (MPI tests skipped: this clipc was built without MPI)\n");
        return;
    }
    CHECK(run_cmd("command -v mpirun >/dev/null") == 0, "mpirun is not installed (Debian's openmpi-bin)");
    /* Under `make sanitize`, OpenMPI's own allocations (its dlopen'ed MCA
     * components) outlive MPI_Finalize; leak checking is off for ranks. */
    /* In containers that forbid cross-process memory access, OpenMPI's
     * shared-memory transport needs its single-copy mechanism off. */
#define MPIRUN                                                                                                  \
    "env ASAN_OPTIONS=detect_leaks=0 mpirun --allow-run-as-root --oversubscribe "                               \
    "--mca btl_vader_single_copy_mechanism none -x OMP_NUM_THREADS=1 -x ASAN_OPTIONS"
    const char *mpirun = MPIRUN " -np 2";
    static const struct { const char *loss; int accum; } runs[] = {{"clip", 1}, {"clip", 2}, {"siglip", 1}, {"siglip", 2}};
    for (int r = 0; r < 4; r++) {
        const char *common = "--data fashion-mnist --arch fmnist --batch 16 --steps 20 --lr 1e-3 --eval-every 1000 --eval-limit 50";
        snprintf(out1, sizeof out1, "%s/mpi_%s_%d_one", dir, runs[r].loss, runs[r].accum);
        snprintf(out2, sizeof out2, "%s/mpi_%s_%d_two", dir, runs[r].loss, runs[r].accum);
        snprintf(cmd, sizeof cmd, "%s train %s --loss %s --accum %d --out %s >%s/out.txt 2>%s/err.txt", clipc_binary,
                 common, runs[r].loss, runs[r].accum, out1, dir, dir);
        int rc1 = run_cmd(cmd);
        snprintf(cmd, sizeof cmd, "%s %s train %s --loss %s --accum %d --out %s >%s/out.txt 2>%s/err.txt", mpirun,
                 clipc_binary, common, runs[r].loss, runs[r].accum, out2, dir, dir);
        int rc2 = run_cmd(cmd);
        char *err = slurp("err.txt");
        CHECK(rc1 == 0 && rc2 == 0 && strstr(err, "data-parallel over 2 ranks: 8 pairs"),
              "%s accum %d: one process exit %d, mpirun exit %d: %s", runs[r].loss, runs[r].accum, rc1, rc2, err);
        free(err);
        char la[700], lb[700], ma[700], mb[700], worst[600];
        snprintf(la, sizeof la, "%s/log.jsonl", out1 + strlen(dir) + 1);
        snprintf(lb, sizeof lb, "%s/log.jsonl", out2 + strlen(dir) + 1);
        snprintf(ma, sizeof ma, "%s/model.safetensors", out1);
        snprintf(mb, sizeof mb, "%s/model.safetensors", out2);
        int steps;
        double worst_tensor, dl = log_difference(la, lb, &steps);
        double dw = model_difference(mb, ma, &worst_tensor, worst, sizeof worst);
        printf("  mpirun -np 2 vs one process, %s loss, accum %d: %d losses within %.1e; weights within %.1e "
               "(worst tensor %.1e, %s)\n", runs[r].loss, runs[r].accum, steps, dl, dw, worst_tensor, worst);
        /* Per tensor, zero-initialised biases that moved little measure
         * float rounding against a small norm; hence the looser bound. */
        CHECK(steps == 20 && dl <= 1e-5 && dw <= 1e-5 && worst_tensor <= 1e-4,
              "%s accum %d: %d steps, losses differ by %.2g, weights by %.2g (worst tensor %.2g, %s)", runs[r].loss,
              runs[r].accum, steps, dl, dw, worst_tensor, worst);
    }

    /* A rank that fails on its own (here rank 1 cannot find the data) ends
     * the whole job with an error naming it. */
    snprintf(out2, sizeof out2, "%s/mpi_fail", dir);
    snprintf(cmd, sizeof cmd,
             "timeout 120 " MPIRUN " -np 1 %s train --data fashion-mnist --arch fmnist --batch 16 --steps 20 --out %s : "
             "-np 1 -x CLIPC_FASHION_MNIST_DIR=/nonexistent %s train --data fashion-mnist --arch fmnist --batch 16 "
             "--steps 20 --out %s >%s/out.txt 2>%s/err.txt",
             clipc_binary, out2, clipc_binary, out2, dir, dir);
    int failed_rc = run_cmd(cmd);
    char *failed_err = slurp("err.txt");
    /* (OpenMPI's own "MPI_ABORT was invoked on rank 1" banner is usually
     * printed too, but not always: it races with the abort.) */
    CHECK(failed_rc != 0 && failed_rc != 124 &&
              strstr(failed_err, "clipc: error: rank 1: /nonexistent/train-images-idx3-ubyte.gz: cannot open"),
          "a failing rank: exit %d (124: the job hung), %s", failed_rc, failed_err);
    free(failed_err);

    /* Kill rank 1 once a checkpoint exists. */
    snprintf(out2, sizeof out2, "%s/mpi_kill", dir);
    /* The ranks are found through /proc (no procps needed); `timeout`
     * guarantees the test ends even if the kill missed. */
    snprintf(cmd, sizeof cmd,
             "timeout 300 %s %s train --data fashion-mnist --arch fmnist --batch 16 --steps 5000 --eval-every 10 "
             "--eval-limit 20 --out %s >%s/out.txt 2>%s/err.txt & job=$!; "
             "for i in $(seq 600); do [ -f %s/checkpoint.safetensors ] && break; sleep 0.1; done; sleep 0.5; "
             "for d in /proc/[0-9]*; do "
             "  tr '\\0' ' ' < $d/cmdline 2>/dev/null | grep -q 'clipc train --data fashion-mnist --arch fmnist --batch 16 --steps 5000' "
             "  && grep -qz '^OMPI_COMM_WORLD_RANK=1$' $d/environ 2>/dev/null && kill -9 ${d#/proc/}; done; "
             "wait $job",
             mpirun, clipc_binary, out2, dir, dir, out2);
    int rc = run_cmd(cmd);
    char *err = slurp("err.txt");
    CHECK(rc != 0 && strstr(err, "rank 1") && (strstr(err, "signal 9") || strstr(err, "Killed")),
          "killed rank: mpirun exit %d, stderr: %s", rc, err);
    free(err);
    snprintf(cmd, sizeof cmd, "info %s/checkpoint.safetensors", out2);
    CHECK(clipc(cmd) == 0, "the last checkpoint of the killed job does not load");
    /* resume with one process: the step count continues and no temporary is left */
    snprintf(cmd, sizeof cmd, "train --resume --out %s --stop-at 30", out2);
    rc = clipc(cmd);
    err = slurp("err.txt");
    snprintf(cmd, sizeof cmd, "ls %s | grep -q '\\.tmp\\.'", out2);
    CHECK(rc == 0 && strstr(err, "resuming") && run_cmd(cmd) != 0, "resume after the kill: exit %d, %s", rc, err);
    free(err);
}

/* Index 2,000 exported Fashion-MNIST PNGs with the shipped model: killed
 * mid-run, the index is consistent and the next run completes it; a second
 * writer is refused; then search (text, arithmetic, image, JSON), export,
 * the HTTP API, and the web page in headless Chromium. */
static void check_search(void) {
    char args[8192], fm[600], db[600];
    snprintf(fm, sizeof fm, "%s/fm", dir);
    snprintf(db, sizeof db, "%s/fm.db", dir);
    snprintf(args, sizeof args, "export-images --limit 2000 --out %s", fm);
    CHECK(clipc(args) == 0, "export-images failed");

    /* kill -9 once a few batches are in */
    char cmd[16384];
    snprintf(cmd, sizeof cmd,
             "%s index --db %s %s >%s/idx1.txt 2>&1 & pid=$!; "
             "for i in $(seq 300); do sleep 0.05; "
             "  n=$(%s search --db %s -k 1 x 2>/dev/null | wc -l); [ \"$n\" = 1 ] && break; done; "
             "%s index --db %s %s >%s/idx2.txt 2>&1; echo $? > %s/second_rc.txt; "
             "kill -9 $pid; wait $pid 2>/dev/null; true",
             clipc_binary, db, fm, dir, clipc_binary, db, clipc_binary, db, fm, dir, dir);
    run_cmd(cmd);
    char *second = slurp("idx2.txt"), *second_rc = slurp("second_rc.txt");
    CHECK(atoi(second_rc) == 1 && strstr(second, "index is locked"), "a second writer: exit %s, %s", second_rc, second);
    free(second), free(second_rc);
    sqlite3 *sq = NULL;
    long long rows = -1, bad_blobs = -1;
    char integrity[64] = "";
    if (sqlite3_open_v2(db, &sq, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(sq, "PRAGMA integrity_check", -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
            snprintf(integrity, sizeof integrity, "%s", (const char *)sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
        if (sqlite3_prepare_v2(sq, "SELECT COUNT(*), SUM(length(embedding) != 256) FROM images", -1, &st, NULL) ==
                SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW)
            rows = sqlite3_column_int64(st, 0), bad_blobs = sqlite3_column_int64(st, 1);
        sqlite3_finalize(st);
    }
    sqlite3_close(sq);
    printf("  indexer killed with %lld of 2000 images committed\n", rows);
    CHECK(!strcmp(integrity, "ok") && rows > 0 && rows < 2000 && rows % 32 == 0 && bad_blobs == 0,
          "after kill -9: integrity '%s', %lld rows (whole batches of 32 expected), %lld bad embeddings", integrity, rows,
          bad_blobs);
    snprintf(args, sizeof args, "index --db %s %s", db, fm);
    int rc = clipc(args);
    char *out = slurp("out.txt"), want[128];
    snprintf(want, sizeof want, "2000 images. This run: 2000 found, %lld unchanged, %lld added", rows, 2000 - rows);
    CHECK(rc == 0 && strstr(out, want), "the re-run after the kill: exit %d, %s", rc, out);
    free(out);

    /* search: text, arithmetic, image, JSON; export */
    snprintf(args, sizeof args, "search --db %s -k 5 \"a handbag\"", db);
    rc = clipc(args);
    out = slurp("out.txt");
    int bags = 0;
    for (char *p = strstr(out, "/bag/"); p; p = strstr(p + 1, "/bag/")) bags++;
    CHECK(rc == 0 && bags == 5, "search 'a handbag': %d of 5 are bags: %s", bags, out);
    free(out);
    snprintf(args, sizeof args, "search --db %s -k 1 '2:\"a pair of trousers\" + \"a photo\" - 0.5:\"a dress\"'", db);
    rc = clipc(args);
    out = slurp("out.txt");
    CHECK(rc == 0 && strstr(out, "  1  ") && strstr(out, "/trouser/"), "arithmetic search: %s", out);
    free(out);
    char some_bag[1024];
    snprintf(cmd, sizeof cmd, "ls %s/bag | head -1 > %s/one.txt", fm, dir);
    run_cmd(cmd);
    char *name = slurp("one.txt");
    name[strcspn(name, "\n")] = 0;
    snprintf(some_bag, sizeof some_bag, "%s/bag/%s", fm, name);
    free(name);
    snprintf(args, sizeof args, "search --db %s -k 2 --json --image %s", db, some_bag);
    rc = clipc(args);
    cJSON *j = read_json("out.txt");
    const cJSON *top = cJSON_GetArrayItem(j, 0);
    const char *top_path = cJSON_GetStringValue(cJSON_GetObjectItem(top, "path"));
    CHECK(rc == 0 && cJSON_GetArraySize(j) == 2 && top_path && strstr(top_path, some_bag + strlen(dir)) &&
              json_number(top, NULL, "score") > 0.9999,
          "search by image: the image itself should come first with score 1");
    cJSON_Delete(j);
    snprintf(args, sizeof args, "search --db %s -m %s \"a cat\"", db, ref_path("tiny/model.safetensors"));
    expect_error(args, "holds 64-d embeddings, but this model makes", NULL);
    snprintf(args, sizeof args, "search --db %s '\"unterminated'", db);
    expect_error(args, "unterminated quote", NULL);
    snprintf(args, sizeof args, "index --db %s/nofolder.db %s/does-not-exist", dir, dir);
    expect_error(args, "does-not-exist: No such file or directory", "nofolder.db");
    snprintf(args, sizeof args, "index --db %s/nofolder.db %s", dir, db);
    expect_error(args, "fm.db: not a folder", "nofolder.db");
    snprintf(args, sizeof args, "export --db %s --npy %s/emb.npy --meta %s/meta.csv", db, dir, dir);
    rc = clipc(args);
    npy_array a = {0};
    clipc_error err;
    char npy_path[700];
    snprintf(npy_path, sizeof npy_path, "%s/emb.npy", dir);
    int read = npy_read(npy_path, &a, &err) == 0;
    char *meta = slurp("meta.csv");
    int lines = 0;
    for (char *p = meta; *p; p++) lines += *p == '\n';
    CHECK(rc == 0 && read && !strcmp(a.dtype, "<f2") && a.ndim == 2 && a.shape[0] == 2000 && a.shape[1] == 64 &&
              lines == 2001 && !strncmp(meta, "image_path,id\n", 14),
          "export: exit %d, %s [%lld, %lld], %d CSV lines", rc, a.dtype, (long long)a.shape[0], (long long)a.shape[1],
          lines);
    if (read) { /* rows are unit vectors, to float16 precision */
        const uint16_t *h = a.data;
        double norm = 0;
        for (int i = 0; i < 64; i++) norm += (double)f16_to_f32(h[i]) * f16_to_f32(h[i]);
        CHECK(fabs(norm - 1) < 2e-3, "exported row 0 has squared norm %g", norm);
        npy_free(&a);
    }
    free(meta);

    /* a file whose name is not UTF-8, indexed beside the others */
    snprintf(cmd, sizeof cmd, "mkdir -p %s/odd && cp %s %s/odd/caf$(printf '\\351').png && %s index --db %s %s/odd >/dev/null 2>&1",
             dir, some_bag, dir, clipc_binary, db, dir);
    CHECK(run_cmd(cmd) == 0, "index a folder with a Latin-1 file name");

    /* the server */
    int port = 18000 + (int)(getpid() % 1000);
    snprintf(cmd, sizeof cmd, "%s serve --db %s --port %d --max-upload-mb 1 >%s/serve.txt 2>&1 & echo $! > %s/serve.pid",
             clipc_binary, db, port, dir, dir);
    run_cmd(cmd);
    char *body;
    size_t len;
    int status = -1;
    for (int i = 0; i < 100 && status < 0; i++) {
        usleep(50000);
        status = test_http(port, "GET", "/", NULL, 0, &body, &len);
        if (status < 0) continue;
        CHECK(status == 200 && body && strstr(body, "<title>clipc search</title>"), "GET /: %d", status);
        free(body);
    }
    CHECK(status == 200, "the server did not come up on port %d", port);
    status = test_http(port, "GET", "/api/search?q=a%20handbag&k=3", NULL, 0, &body, &len);
    j = cJSON_Parse(body ? body : "");
    const cJSON *results = cJSON_GetObjectItem(j, "results");
    bags = 0;
    for (int i = 0; i < cJSON_GetArraySize(results); i++) {
        const char *p = cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetArrayItem(results, i), "path"));
        bags += p && strstr(p, "/bag/") != NULL;
    }
    CHECK(status == 200 && cJSON_GetArraySize(results) == 3 && bags == 3, "GET /api/search: %d, %s", status, body);
    double first_id = json_number(cJSON_GetArrayItem(results, 0), NULL, "id");
    cJSON_Delete(j);
    free(body);
    char target[256];
    status = test_http(port, "GET", "/search?q=a%20handbag&k=3", NULL, 0, &body, &len); /* the same without /api */
    CHECK(status == 200 && body && strstr(body, "\"results\"") && strstr(body, "/bag/"), "GET /search: %d", status);
    free(body);
    snprintf(target, sizeof target, "/api/similar?id=%.0f&k=2", first_id);
    status = test_http(port, "GET", target, NULL, 0, &body, &len);
    j = cJSON_Parse(body ? body : "");
    results = cJSON_GetObjectItem(j, "results");
    CHECK(status == 200 && json_number(cJSON_GetArrayItem(results, 0), NULL, "id") == first_id &&
              json_number(cJSON_GetArrayItem(results, 0), NULL, "score") > 0.9999,
          "GET %s: %d %s", target, status, body);
    cJSON_Delete(j);
    free(body);
    snprintf(target, sizeof target, "/api/thumb/%.0f", first_id);
    status = test_http(port, "GET", target, NULL, 0, &body, &len);
    CHECK(status == 200 && len > 8 && !memcmp(body, "\x89PNG", 4), "GET %s: %d, %zu bytes", target, status, len);
    free(body);
    unsigned char *png_data = NULL;
    size_t png_len = 0;
    read_file(some_bag, &png_data, &png_len, &err);
    status = test_http(port, "POST", "/api/search?k=3", png_data, png_len, &body, &len);
    /* paths relative to the indexed folder, led by its name; never the absolute path */
    CHECK(status == 200 && body && strstr(body, some_bag + strlen(dir) + 1) && !strstr(body, dir),
          "POST an image: %d %s", status, body);
    /* the copy under odd/ is as similar; its Latin-1 name arrives as valid UTF-8 (U+FFFD for the byte) */
    CHECK(body && strstr(body, "\"odd/caf\xef\xbf\xbd.png\""), "a non-UTF-8 file name in JSON: %s", body);
    free(body), free(png_data);
    { /* 1,100 slow clients (headers never finished) hold connections; a normal request is still answered */
        enum { SLOW = 1100 };
        struct rlimit fds;
        getrlimit(RLIMIT_NOFILE, &fds);
        if (fds.rlim_cur < SLOW + 64 && fds.rlim_max >= SLOW + 64) fds.rlim_cur = SLOW + 64, setrlimit(RLIMIT_NOFILE, &fds);
        int *slow = malloc(SLOW * sizeof *slow), opened = 0;
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
        for (int i = 0; i < SLOW; i++) {
            int fd = socket(AF_INET, SOCK_STREAM, 0);
            if (fd < 0) break;
            if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || write(fd, "GET / HTTP/1.1\r\nHost: x\r\n", 26) != 26) {
                close(fd);
                break;
            }
            slow[opened++] = fd;
        }
        double t0 = now_seconds();
        status = test_http(port, "GET", "/api/search?q=a%20handbag&k=3", NULL, 0, &body, &len);
        double took = now_seconds() - t0;
        printf("  serve: %d slow clients connected; a search among them answered in %.3f s\n", opened, took);
        CHECK(opened == SLOW && status == 200 && body && strstr(body, "/bag/") && took < 2.0,
              "with %d slow clients, a normal search: %d in %.2f s", opened, status, took);
        free(body);
        for (int i = 0; i < opened; i++) close(slow[i]);
        free(slow);
    }
    static const struct { const char *method, *target; int status; const char *message; } bad[] = {
        {"GET", "/api/search?q=x&k=0", 400, "k must be a number"},
        {"GET", "/api/search?q=x&k=101", 400, "k must be a number"},
        {"GET", "/api/search", 400, "missing q"},
        {"GET", "/api/search?q=%22open", 400, "unterminated quote"},
        {"GET", "/api/similar?id=abc", 400, "id must be a number"},
        {"GET", "/api/similar?id=999999", 404, "no indexed image"},
        {"GET", "/api/thumb/999999", 404, "no indexed image"},
        {"GET", "/api/thumb/..%2F..%2Fetc%2Fpasswd", 400, "must be a number"},
        {"GET", "/../../etc/passwd", 404, "no such page"},
        {"DELETE", "/api/search", 405, "only GET and POST"},
        {"POST", "/api/search?k=1", 400, "POST an image"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        status = test_http(port, bad[i].method, bad[i].target, NULL, 0, &body, &len);
        j = cJSON_Parse(body ? body : "");
        const char *e = cJSON_GetStringValue(cJSON_GetObjectItem(j, "error"));
        CHECK(status == bad[i].status && e && strstr(e, bad[i].message), "%s %s: %d %s (want %d, '%s')", bad[i].method,
              bad[i].target, status, body ? body : "", bad[i].status, bad[i].message);
        cJSON_Delete(j);
        free(body);
    }
    char *big = calloc(1, 2 << 20);
    status = test_http(port, "POST", "/api/search?k=1", big, 2 << 20, &body, &len);
    CHECK(status == 413, "a 2 MB upload over the 1 MB limit: %d %s", status, body ? body : "");
    free(big), free(body);
    { /* the query's length is bounded */
        char *long_q = malloc(1200 + 32);
        int at = snprintf(long_q, 64, "/api/search?q=");
        memset(long_q + at, 'a', 1100);
        long_q[at + 1100] = 0;
        status = test_http(port, "GET", long_q, NULL, 0, &body, &len);
        CHECK(status == 400 && body && strstr(body, "longer than 1000"), "a 1100-byte query: %d", status);
        free(long_q), free(body);
    }

    /* The page in headless Chromium: loads, searches (?q= runs the search), shows thumbnails. */
    if (run_cmd("command -v chromium >/dev/null") != 0) {
        CHECK(0, "chromium is not installed (scripts/deps.sh --test installs it)");
    } else {
        const char *flags = "--headless --no-sandbox --disable-gpu --disable-dev-shm-usage --virtual-time-budget=15000";
        snprintf(cmd, sizeof cmd, "chromium %s --dump-dom 'http://127.0.0.1:%d/?q=a%%20handbag' >%s/dom.html 2>/dev/null",
                 flags, port, dir);
        run_cmd(cmd);
        char *dom = slurp("dom.html");
        int hits = 0;
        for (char *p = strstr(dom, "class=\"hit\""); p; p = strstr(p + 1, "class=\"hit\"")) hits++;
        CHECK(hits == 24 && strstr(dom, "24 results for") && strstr(dom, "/api/thumb/"),
              "Chromium: %d result tiles on the page", hits);
        free(dom);
        snprintf(cmd, sizeof cmd,
                 "chromium %s --window-size=1280,900 --screenshot=%s/page.png 'http://127.0.0.1:%d/?q=a%%20handbag' "
                 ">/dev/null 2>&1; cp %s/page.png build/search-page.png 2>/dev/null; true",
                 flags, dir, port, dir);
        run_cmd(cmd);
        char *shot = slurp("page.png");
        CHECK(!memcmp(shot, "\x89PNG", 4), "Chromium saved no screenshot");
        free(shot);
    }
    snprintf(cmd, sizeof cmd, "kill $(cat %s/serve.pid)", dir);
    run_cmd(cmd);
}

/* The man page (every command's section, rendered by groff without a warning) and the bash
 * completion (commands, and a command's flags) */
static void check_man_and_completion(void) {
    char cmd[4096], bin[512];
    snprintf(bin, sizeof bin, "%s", clipc_binary); /* the build folder: where the binary and its man page are */
    char *slash = strrchr(bin, '/');
    if (slash) *slash = 0;
    else snprintf(bin, sizeof bin, ".");
    snprintf(cmd, sizeof cmd, "test -f %s/clipc.1 && for c in embed classify caption train finetune eval index search serve; do "
             "grep -q \"^.SS $c$\" %s/clipc.1 || exit 1; done && groff -man -Tutf8 -ww %s/clipc.1 2>%s/groff.err >/dev/null && "
             "test ! -s %s/groff.err", bin, bin, bin, dir, dir);
    CHECK(run_cmd(cmd) == 0, "build/clipc.1 has every command and renders without a warning (%s/groff.err)", dir);
    const char *cases[][3] = {{"clipc cla", "1", "classify"}, {"clipc classify --la", "2", "--labels"},
                              {"clipc caption --te", "2", "--temperature"}, {"clipc finetune --me", "2", "--method"}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(cmd, sizeof cmd, "PATH=%s:$PATH bash -c 'source scripts/clipc-completion.bash; COMP_WORDS=(%s); COMP_CWORD=%s; "
                 "_clipc; echo \"${COMPREPLY[*]}\"' | grep -qw -- '%s'", bin, cases[i][0], cases[i][1], cases[i][2]);
        CHECK(run_cmd(cmd) == 0, "completing '%s' offers %s", cases[i][0], cases[i][2]);
    }
}

/* embed and classify take folders: the images under them, recursively, sorted by path */
static void check_folders(void) {
    char args[2048];
    snprintf(args, sizeof args, "export-images --limit 6 --out %s/fold", dir);
    CHECK(clipc(args) == 0, "export-images");
    /* a nested folder and a hidden file, which is skipped */
    snprintf(args, sizeof args, "mkdir -p %s/fold/deeper/more && cp %s %s/fold/deeper/more/x.png && cp %s %s/fold/.hidden.png",
             dir, ref_path("preprocess/images/rocket_small_60x90.png"), dir, ref_path("preprocess/images/rocket_small_60x90.png"), dir);
    CHECK(run_cmd(args) == 0, "prepare the folder");
    snprintf(args, sizeof args, "embed --image %s/fold -o %s/fold.npy", dir, dir);
    CHECK(clipc(args) == 0, "embed --image DIR");
    char path[600];
    snprintf(path, sizeof path, "%s/fold.paths.txt", dir);
    FILE *f = fopen(path, "r");
    char line[8][600];
    int n = 0;
    while (f && n < 8 && fgets(line[n], sizeof line[n], f)) line[n][strcspn(line[n], "\n")] = 0, n++;
    if (f) fclose(f);
    bool sorted = n == 7;
    int deep = -1;
    for (int i = 1; i < n; i++) sorted = sorted && strcmp(line[i - 1], line[i]) < 0;
    for (int i = 0; i < n; i++)
        if (strstr(line[i], "deeper/more/x.png")) deep = i;
    CHECK(sorted && deep >= 0 && !strstr(line[n - 1], ".hidden"), "embed DIR: 7 paths (the nested one, not the hidden one), sorted: %d",
          n);
    /* row i is the embedding of path i */
    snprintf(args, sizeof args, "embed --image %s -o %s/one.npy", deep >= 0 ? line[deep] : "?", dir);
    CHECK(clipc(args) == 0, "embed one file");
    npy_array all, one;
    clipc_error err;
    snprintf(path, sizeof path, "%s/fold.npy", dir);
    int rc = npy_read(path, &all, &err);
    snprintf(path, sizeof path, "%s/one.npy", dir);
    rc |= npy_read(path, &one, &err);
    CHECK(rc == 0 && deep >= 0 && all.shape[0] == 7 &&
              max_abs_diff((float *)all.data + (size_t)deep * one.shape[1], one.data, one.count) < 1e-5,
          "the folder's row of the nested file is that file's embedding");
    if (rc == 0) npy_free(&all), npy_free(&one);
    snprintf(args, sizeof args, "classify --labels 'a,b' --templates simple --json %s/fold", dir);
    CHECK(clipc(args) == 0, "classify DIR");
    char *out = slurp("out.txt");
    int images = 0;
    for (const char *p = out; (p = strstr(p, "\"image\"")); p++) images++;
    CHECK(images == 7, "classify DIR classifies its 7 images (%d)", images);
    free(out);
    snprintf(args, sizeof args, "mkdir -p %s/empty && %s classify --labels a,b %s/empty 2>&1 | grep -q 'no images in the folders'",
             dir, clipc_binary, dir);
    CHECK(run_cmd(args) == 0, "classify on an empty folder says so");
    /* TIFF and WebP files are images too: embedded from a folder, and indexed */
    snprintf(args, sizeof args,
             "mkdir -p %s/fmts && cp tests/data/formats/rgb_lzw.tif tests/data/formats/lossy.webp tests/data/modes/la.png %s/fmts/ && "
             "%s embed --image %s/fmts -o %s/fmts.npy > /dev/null 2>&1 && test $(wc -l < %s/fmts.paths.txt) = 3 && "
             "%s index --db %s/fmts.db %s/fmts > /dev/null 2>&1 && "
             "test $(%s search --db %s/fmts.db -k 10 'a cat' 2>/dev/null | grep -c -E 'rgb_lzw.tif|lossy.webp|la.png') = 3",
             dir, dir, clipc_binary, dir, dir, dir, clipc_binary, dir, dir, clipc_binary, dir);
    CHECK(run_cmd(args) == 0, "a folder's TIFF and WebP files are embedded and indexed");
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
    check_eval();
    check_default_model();
    check_mpi();
    check_search();
    check_folders();
    check_man_and_completion();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    run_cmd(cmd);
}
