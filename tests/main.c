/* main.c — runs every test suite. */
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

int test_passed, test_failed;
const char *test_reference = "../shared/reference";
const char *clipc_binary = "build/clipc";

const char *ref_path(const char *rel) {
    static char bufs[8][1024];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", test_reference, rel);
    return b;
}

double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || isnan(d)) m = isnan(d) ? INFINITY : d;
    }
    return m;
}

double min_row_cosine(const float *a, const float *b, int rows, int dim) {
    double worst = 1.0;
    for (int r = 0; r < rows; r++) {
        double ab = 0, aa = 0, bb = 0;
        for (int j = 0; j < dim; j++) {
            double x = a[(size_t)r * dim + j], y = b[(size_t)r * dim + j];
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
        double c = ab / sqrt(aa * bb + 1e-300);
        if (c < worst || isnan(c)) worst = isnan(c) ? -1.0 : c;
    }
    return worst;
}

int load_npy(const char *rel, npy_array *a) {
    clipc_error err;
    if (npy_read(ref_path(rel), a, &err)) {
        CHECK(0, "cannot load fixture: %s", err.message);
        return -1;
    }
    return 0;
}

int run_cmd(const char *cmd) {
    int st = system(cmd);
    if (st == -1) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int main(int argc, char **argv) {
    if (getenv("CLIPC_REFERENCE")) test_reference = getenv("CLIPC_REFERENCE");
    if (getenv("CLIPC")) clipc_binary = getenv("CLIPC");
    struct { const char *name; void (*fn)(void); } suites[] = {
        {"util", test_util}, {"tokenizer", test_tokenizer}, {"image", test_image},
        {"model", test_model}, {"train", test_train}, {"eval", test_eval}, {"index", test_index}, {"precision", test_precision}, {"arch", test_arch}, {"pull", test_pull}, {"hostile", test_hostile}, {"cli", test_cli},
    };
    for (size_t i = 0; i < sizeof suites / sizeof *suites; i++) {
        if (argc > 1 && strcmp(argv[1], suites[i].name) != 0) continue;
        int p = test_passed, f = test_failed;
        suites[i].fn();
        printf("suite %-10s %d passed, %d failed\n", suites[i].name, test_passed - p, test_failed - f);
    }
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}
