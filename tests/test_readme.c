/* test_readme.c — every shell example of the README runs as written.
 *
 * tests/readme_examples.sh runs the ```sh blocks top to bottom in one
 * scratch folder on the built tree (see its header); each block's result is
 * one check here. The runner is first shown to catch a failing example and
 * to honour its skip marker, on a small README of its own. */
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
    if (read_file(report, (unsigned char **)out, &len, &err)) *out = strdup("");
    return rc;
}

static int count_lines(const char *text, const char *prefix) {
    int n = 0;
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        n += !strncmp(p, prefix, strlen(prefix));
    return n;
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
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    run_cmd(cmd);
}
