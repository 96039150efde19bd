/* fuzz_query.c — libFuzzer target for the search-query parser
 * (src/index/search.c: `clipc search` and `clipc serve`'s q=): plain text,
 * or quoted terms joined by + and -, each with an optional WEIGHT: prefix
 * and \" \\ escapes. Any text must parse into non-empty terms with finite
 * weights or be refused cleanly; the combined vector of the parsed terms
 * (over stand-in embeddings) is unit length or refused as cancelling out. */
#include "../../src/internal.h"
#include "../../src/index/index.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { DIM = 8 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 4096) return 0; /* serve bounds q to 1,000 bytes */
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0'; /* queries are C strings: an embedded NUL ends one */
    query_term *terms;
    int n;
    clipc_error err;
    if (query_parse(text, &terms, &n, &err) == 0) {
        if (n < 1) abort();
        float *e = malloc((size_t)n * DIM * sizeof *e), q[DIM];
        for (int i = 0; i < n; i++) {
            if (!terms[i].text || !terms[i].text[0] || !isfinite(terms[i].weight)) abort();
            /* a stand-in embedding per term, from its bytes */
            unsigned h = 2166136261u;
            for (const char *c = terms[i].text; *c; c++) h = (h ^ (unsigned char)*c) * 16777619u;
            for (int j = 0; j < DIM; j++) e[(size_t)i * DIM + j] = (float)((h >> (j * 4)) & 15) - 7.5f;
        }
        if (query_combine(terms, n, e, DIM, q, &err) == 0) {
            double norm = 0;
            for (int j = 0; j < DIM; j++) norm += (double)q[j] * q[j];
            if (fabs(norm - 1) > 1e-4) abort();
        }
        free(e);
        query_terms_free(terms, n);
    }
    free(text);
    return 0;
}
