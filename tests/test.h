/* test.h — a small test harness: CHECK records a pass or a failure with a
 * message; main() runs every suite and ends with "N passed, N failed". */
#ifndef CLIPC_TEST_H
#define CLIPC_TEST_H

#include "../src/internal.h"

#include <stdio.h>

extern int test_passed, test_failed;
extern const char *test_reference; /* ../shared/reference, or $CLIPC_REFERENCE */
extern const char *clipc_binary;   /* the clipc binary, $CLIPC */

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (cond) {                                                           \
            test_passed++;                                                    \
        } else {                                                              \
            test_failed++;                                                    \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                       \
            printf(__VA_ARGS__);                                              \
            printf("\n");                                                     \
        }                                                                     \
    } while (0)

/* Path under the reference directory (static buffer, rotated 8 ways). */
const char *ref_path(const char *rel);
/* Max |a-b| over n floats. */
double max_abs_diff(const float *a, const float *b, size_t n);
/* Smallest row cosine between a and b, rows of length dim. */
double min_row_cosine(const float *a, const float *b, int rows, int dim);
/* Loads an .npy fixture or records a failure. */
int load_npy(const char *rel, npy_array *a);
/* Runs a shell command, returns its exit status; output goes to out_path
 * when non-NULL. */
int run_cmd(const char *cmd);
/* Runs sh -c cmd from a small helper process: its exit status (128 +
 * signal if killed, -1 if it could not run) and peak RSS in KiB. */
int run_measured(const char *cmd, long *maxrss_kb);

/* A one-shot HTTP/1.0 request to 127.0.0.1:port: the status (-1: no connection) and the body in
 * *body (malloc'd, NUL-terminated; *len bytes). */
int test_http(int port, const char *method, const char *target, const void *data, size_t data_len, char **body,
              size_t *len);

void test_model(void);
void test_tokenizer(void);
void test_image(void);
void test_cli(void);
void test_util(void);
void test_train(void);
void test_eval(void);
void test_index(void);
void test_precision(void);
void test_arch(void);
void test_pull(void);
void test_hostile(void);
void test_finetune(void);
void test_siglip(void);
void test_coca(void);
void test_readme(void);

#endif
