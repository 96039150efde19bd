/* fuzz_npy.c — libFuzzer target for the .npy reader (src/util/npy.c), which
 * `clipc embed --tokens/--pixels` and the tests feed: any file must be read
 * or refused cleanly, never a crash, a leak, undefined behaviour or an
 * allocation the file cannot back (the shape × element size product is
 * overflow-checked before anything is allocated). A file that is read must
 * hold exactly what its header says: the element count is the product of
 * the shape. Seeds: tests/fuzz/corpus/npy (and any .npy of tests/data). */
#include "../../src/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char path[64];
static void teardown(void) { unlink(path); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!path[0]) {
        snprintf(path, sizeof path, "/tmp/clipc_fuzz_npy_%d.npy", (int)getpid());
        atexit(teardown);
    }
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    bool ok = fwrite(data, 1, size, f) == size;
    if (fclose(f) != 0 || !ok) return 0;
    npy_array a;
    clipc_error err;
    if (npy_read(path, &a, &err)) return 0;
    size_t count = 1;
    for (int d = 0; d < a.ndim; d++) count *= (size_t)a.shape[d];
    if (count != a.count || a.ndim < 0 || a.ndim > 8) abort(); /* the header and the data disagree */
    /* every element is readable: the allocation really holds count elements */
    volatile unsigned char sink = 0;
    size_t bytes = a.count * (size_t)(a.dtype[2] - '0'); /* "<f4": 4 bytes, "|u1": 1, "<f2": 2 */
    for (size_t i = 0; i < bytes; i += 4096) sink ^= ((unsigned char *)a.data)[i];
    if (bytes) sink ^= ((unsigned char *)a.data)[bytes - 1];
    npy_free(&a);
    return 0;
}
