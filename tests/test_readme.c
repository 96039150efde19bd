/* test_readme.c — every shell example of the README runs as written.
 *
 * tests/readme_examples.sh runs the ```sh blocks top to bottom in one
 * scratch folder on the built tree (see its header); each block's result is
 * one check here. The runner is first shown to catch a failing example and
 * to honour its skip marker, on a small README of its own. The C library
 * example is compiled and run, against the build and an installed prefix. */
#include "test.h"

#include <libgen.h>
#include <stdlib.h>
#include <string.h>

/* Runs the runner on readme with the build folder of clipc_binary; its
 * report in *out (malloc'd). Returns the runner's status. */
static int run_examples(const char *readme, const char *report, char **out) {
    char build[1024], cmd[4096];
    snprintf(build, sizeof build, "%s", clipc_binary);
    snprintf(cmd, sizeof cmd, "bash tests/readme_examples.sh %s %s > %s 2>&1", readme, dirname(build), report);
    int rc = run_cmd(cmd);
    size_t len;
    clipc_error err;
    unsigned char *text;
    if (read_file(report, &text, &len, &err)) {
        *out = strdup("");
        return rc;
    }
    *out = malloc(len + 1); /* a C string: the report is read as text */
    if (*out) memcpy(*out, text, len), (*out)[len] = '\0';
    free(text);
    return rc;
}

static int count_lines(const char *text, const char *prefix) {
    int n = 0;
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        n += !strncmp(p, prefix, strlen(prefix));
    return n;
}

/* The README's library example, cut out of the README, compiled against the built library and
 * run on the shipped model and a SigLIP test model (its cosine is the library's own), then built
 * with pkg-config against a make install prefix and run there as is. */
static void check_library_example(const char *dir) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "awk '/^## Library/{lib=1} lib && /^```c$/{on=1; next} on && /^```$/{exit} on' README.md > %s/app.c && "
             "cc -std=c11 -Wall -Wextra -Werror -Iinclude %s/app.c -Lbuild -lclipc -Wl,-rpath,$PWD/build -o %s/app 2> %s/app.err",
             dir, dir, dir, dir);
    CHECK(run_cmd(cmd) == 0, "the README's library example compiles (%s/app.err)", dir);
    snprintf(cmd, sizeof cmd, "%s export-images --limit 1 --out %s/readme_img > /dev/null 2>&1", clipc_binary, dir);
    run_cmd(cmd);
    char img[700];
    snprintf(cmd, sizeof cmd, "find %s/readme_img -name '*.png' | head -1 > %s/readme_img.txt", dir, dir);
    run_cmd(cmd);
    snprintf(img, sizeof img, "%s/readme_img.txt", dir);
    FILE *f = fopen(img, "r");
    if (!f || !fgets(img, sizeof img, f)) img[0] = 0;
    if (f) fclose(f);
    img[strcspn(img, "\n")] = 0;
    const char *cases[2][3] = {{"models/clipc-fmnist.safetensors", img, "CLIP"},
                               {"tests/data/siglip/b_like/model.safetensors", ref_path("preprocess/images/chelsea_224x224.png"), "SigLIP"}};
    for (int k = 0; k < 2; k++) {
        snprintf(cmd, sizeof cmd, "%s/app %s %s 'a photo of a sneaker.' > %s/app.out 2>&1", dir, cases[k][0], cases[k][1], dir);
        int rc = run_cmd(cmd);
        char out[512] = "", path[600];
        snprintf(path, sizeof path, "%s/app.out", dir);
        f = fopen(path, "r");
        if (f && !fgets(out, sizeof out, f)) out[0] = 0;
        if (f) fclose(f);
        /* the same cosine from the library */
        clipc_error err;
        clipc_model *m = clipc_model_load(cases[k][0], &err);
        clipc_tokenizer *tok = m ? clipc_model_tokenizer(m, &err) : NULL;
        double want = -2;
        if (tok && clipc_model_set_precision(m, CLIPC_BF16, &err) == 0) {
            const clipc_config *c = clipc_model_config(m);
            float *px = malloc(sizeof(float) * 3 * c->image_resolution * c->image_resolution);
            float *a = malloc(sizeof(float) * c->embed_dim), *b = malloc(sizeof(float) * c->embed_dim);
            int32_t *t = malloc(sizeof(int32_t) * c->context_length);
            if (clipc_model_preprocess_file(m, cases[k][1], px, &err) == 0 && clipc_encode_image(m, px, 1, a, &err) == 0 &&
                clipc_tokenize(tok, "a photo of a sneaker.", c->context_length, 1, t, &err) == 0 &&
                clipc_encode_text(m, t, 1, b, &err) == 0) {
                clipc_normalize_rows(a, 1, c->embed_dim), clipc_normalize_rows(b, 1, c->embed_dim);
                want = 0;
                for (int j = 0; j < c->embed_dim; j++) want += a[j] * b[j];
            }
            free(px), free(a), free(b), free(t);
        }
        char expect[64];
        snprintf(expect, sizeof expect, "%s model, cosine %.4f", cases[k][2], want);
        CHECK(rc == 0 && !strncmp(out, expect, strlen(expect)), "README example on %s: '%s', expected '%s...'", cases[k][0],
              out, expect);
        if (k == 0) { /* and as the README says: built against an installed prefix with pkg-config, run as is */
            snprintf(cmd, sizeof cmd,
                     /* the plain build's library, not an outer make's: make sanitize passes BUILD=, OPT=
                      * and LDLIBS= down, and make exports command-line variables to the environment */
                     "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u BUILD -u OPT -u LDLIBS make -s install PREFIX=%s/inst >/dev/null 2>&1 && "
                     "cc -std=c11 %s/app.c $(PKG_CONFIG_PATH=%s/inst/lib/pkgconfig pkg-config --cflags --libs clipc) -o %s/app2 && "
                     "readelf -d %s/inst/lib/libclipc.so | grep -q 'SONAME.*libclipc.so.0' && "
                     "env -u LD_LIBRARY_PATH %s/app2 %s/inst/share/clipc/clipc-fmnist.safetensors %s 'a photo of a sneaker.' "
                     "> %s/app2.out 2>&1 && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u BUILD make -s uninstall PREFIX=%s/inst >/dev/null 2>&1",
                     dir, dir, dir, dir, dir, dir, dir, cases[k][1], dir, dir);
            CHECK(run_cmd(cmd) == 0, "the README's example built with pkg-config against make install runs (%s/app2.out)", dir);
            snprintf(path, sizeof path, "%s/app2.out", dir);
            char out2[512] = "";
            f = fopen(path, "r");
            if (f && !fgets(out2, sizeof out2, f)) out2[0] = 0;
            if (f) fclose(f);
            CHECK(!strncmp(out2, expect, strlen(expect)), "installed build: '%s', expected '%s...'", out2, expect);
        }
        clipc_tokenizer_free(tok);
        clipc_model_free(m);
    }
}

void test_readme(void) {
    char dir[] = "/tmp/clipc_readme_XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp");
        return;
    }
    char path[1200], report[1200], cmd[2600];
    /* the runner itself: a failing command is named, a skipped block is not run */
    snprintf(path, sizeof path, "%s/README.md", dir);
    FILE *f = fopen(path, "w");
    if (f) {
        fputs("# t\n\n```sh\nclipc --version\n```\n\n<!-- readme-test: skip not here -->\n```sh\nfalse\n```\n\n"
              "```sh\n# a comment\nclipc tokenize --ids \\\n    \"a cat\"\nclipc no-such-command\ntrue\n```\n", f);
        fclose(f);
    }
    snprintf(report, sizeof report, "%s/self.txt", dir);
    char *out = NULL;
    int rc = run_examples(path, report, &out);
    CHECK(rc == 1 && strstr(out, "ok 3\n") && strstr(out, "skip 8: not here\n") &&
              strstr(out, "FAIL 12: clipc no-such-command") && strstr(out, "unknown command"),
          "the README runner on a small README: status %d, report:\n%s", rc, out);
    free(out);

    /* the README: one result per ```sh block, none failed */
    snprintf(report, sizeof report, "%s/readme.txt", dir);
    rc = run_examples("README.md", report, &out);
    size_t len;
    unsigned char *readme = NULL;
    clipc_error err;
    int blocks = 0;
    if (read_file("README.md", &readme, &len, &err) == 0) {
        readme = realloc(readme, len + 1);
        readme[len] = 0;
        blocks = count_lines((char *)readme, "```sh");
    }
    free(readme);
    int ok = count_lines(out, "ok "), failed = count_lines(out, "FAIL "), skipped = count_lines(out, "skip ");
    CHECK(blocks > 10 && ok + failed + skipped == blocks, "README: %d sh blocks, %d results", blocks, ok + failed + skipped);
    CHECK(skipped <= 5, "README: %d examples skipped (at most 5: internet, root, cluster, the set-up, long)", skipped);
    for (const char *p = out; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (!strncmp(p, "ok ", 3)) test_passed++; /* one passed example */
        else if (!strncmp(p, "FAIL ", 5)) {
            const char *end = p + 5;
            while (*end && strncmp(end, "\nok ", 4) && strncmp(end, "\nFAIL ", 6) && strncmp(end, "\nskip ", 6)) end++;
            CHECK(0, "README example at line %.*s", (int)(end - p - 5), p + 5);
        }
    }
    CHECK(rc == failed, "the README runner's status %d, %d failed", rc, failed);
    free(out);
    check_library_example(dir);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    run_cmd(cmd);
}
