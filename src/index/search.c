/* search.c — queries against the index: parsing text/arithmetic queries
 * ("beach" + "sunset" - "people", 2:"red dress"), combining their
 * embeddings, exact top-k by a matrix-vector product, and ANN candidates
 * re-ranked exactly. */
#include "index.h"

#include <cblas.h>
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- exact top-k ---------------------------------------------------------------- */

/* A min-heap of the best k so far; "better" = higher score, then lower row. */
static bool better(const search_hit *a, const search_hit *b) {
    return a->score > b->score || (a->score == b->score && a->row < b->row);
}

static void sift_down(search_hit *h, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, worst = i;
        if (l < n && better(&h[worst], &h[l])) worst = l;
        if (r < n && better(&h[worst], &h[r])) worst = r;
        if (worst == i) return;
        search_hit t = h[i];
        h[i] = h[worst], h[worst] = t;
        i = worst;
    }
}

static int compare_hits(const void *a, const void *b) {
    return better(a, b) ? -1 : better(b, a) ? 1 : 0;
}

/* Keeps the best k of n scored rows in hits (sorted best first). */
static int top_k(const float *scores, const int64_t *rows, int64_t n, int k, search_hit *hits) {
    int have = 0;
    for (int64_t i = 0; i < n; i++) {
        search_hit c = {rows ? rows[i] : i, 0, scores[i]};
        if (have < k) {
            hits[have++] = c;
            if (have == k)
                for (int j = k / 2 - 1; j >= 0; j--) sift_down(hits, k, j);
        } else if (better(&c, &hits[0])) {
            hits[0] = c;
            sift_down(hits, k, 0);
        }
    }
    qsort(hits, (size_t)have, sizeof *hits, compare_hits);
    return have;
}

int search_exact(const float *rows, int64_t n, int dim, const float *q, int k, search_hit *hits) {
    if (n <= 0 || k <= 0) return 0;
    enum { BLOCK = 1 << 16 };
    float *scores = malloc((size_t)(n < BLOCK ? n : BLOCK) * sizeof *scores);
    if (!scores) return -1;
    /* blocks keep the score buffer small; the heap carries over */
    search_hit *best = malloc((size_t)k * 2 * sizeof *best);
    if (!best) {
        free(scores);
        return -1;
    }
    int have = 0;
    for (int64_t at = 0; at < n; at += BLOCK) {
        int64_t m = n - at < BLOCK ? n - at : BLOCK;
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)m, dim, 1.0f, rows + (size_t)at * dim, dim, q, 1, 0.0f, scores, 1);
        int got = top_k(scores, NULL, m, k, best + have);
        for (int i = 0; i < got; i++) best[have + i].row += at;
        have += got;
        /* merge: keep the best k of the 2k */
        qsort(best, (size_t)have, sizeof *best, compare_hits);
        if (have > k) have = k;
    }
    memcpy(hits, best, (size_t)have * sizeof *hits);
    free(best), free(scores);
    return have;
}

int search_ann(const ann_index *a, const float *rows, int64_t n, int dim, const float *q, int k, search_hit *hits,
               clipc_error *err) {
    int want = k * 10 > 100 ? k * 10 : 100;
    if (want > n) want = (int)n;
    int64_t *cand = malloc((size_t)want * sizeof *cand);
    float *scores = malloc((size_t)want * sizeof *scores);
    int rc = cand && scores ? 0 : clipc_fail(err, "out of memory");
    if (rc == 0) rc = ann_search(a, q, want, cand, scores, err);
    int m = 0;
    for (int i = 0; rc == 0 && i < want; i++) { /* exact scores from the matrix; FAISS pads with -1 */
        if (cand[i] < 0 || cand[i] >= n) continue;
        cand[m] = cand[i];
        scores[m++] = cblas_sdot(dim, rows + (size_t)cand[i] * dim, 1, q, 1);
    }
    int got = rc == 0 ? top_k(scores, cand, m, k, hits) : -1;
    free(cand), free(scores);
    return got;
}

/* ---- queries ------------------------------------------------------------------------- */

static const char *skip_space(const char *p) {
    while (isspace((unsigned char)*p)) p++;
    return p;
}

void query_terms_free(query_term *terms, int n) {
    for (int i = 0; i < n; i++) free(terms[i].text);
    free(terms);
}

int query_parse(const char *query, query_term **terms, int *n, clipc_error *err) {
    *terms = NULL, *n = 0;
    const char *p = skip_space(query);
    if (!*p) return clipc_fail(err, "empty query");
    size_t cap = strlen(query) / 2 + 2;
    query_term *t = calloc(cap, sizeof *t);
    if (!t) return clipc_fail(err, "out of memory");
    if (!strchr(query, '"')) { /* plain text: one term */
        size_t len = strlen(p);
        while (len && isspace((unsigned char)p[len - 1])) len--;
        t[0] = (query_term){1.0f, strndup(p, len)};
        *terms = t, *n = 1;
        return t[0].text ? 0 : clipc_fail(err, "out of memory");
    }
    int count = 0;
    while (*p) {
        float sign = 1.0f;
        if (*p == '+' || *p == '-') {
            sign = *p == '-' ? -1.0f : 1.0f;
            p = skip_space(p + 1);
        } else if (count > 0) {
            query_terms_free(t, count);
            return clipc_fail(err, "query: expected + or - before \"%.20s\"", p);
        }
        float weight = 1.0f;
        if (*p != '"') { /* a weight: NUMBER ':' */
            char *end;
            weight = strtof(p, &end);
            if (end == p || *skip_space(end) != ':' || !isfinite(weight)) {
                query_terms_free(t, count);
                return clipc_fail(err, "query: expected a quoted term or WEIGHT:\"term\" at \"%.20s\"", p);
            }
            p = skip_space(skip_space(end) + 1);
            if (*p != '"') {
                query_terms_free(t, count);
                return clipc_fail(err, "query: expected a quoted term after the weight at \"%.20s\"", p);
            }
        }
        const char *start = ++p; /* inside the quotes; \" and \\ escape */
        char *text = malloc(strlen(start) + 1), *o = text;
        if (!text) {
            query_terms_free(t, count);
            return clipc_fail(err, "out of memory");
        }
        while (*p && *p != '"') {
            if (*p == '\\' && (p[1] == '"' || p[1] == '\\')) p++;
            *o++ = *p++;
        }
        *o = '\0';
        if (*p != '"') {
            free(text);
            query_terms_free(t, count);
            return clipc_fail(err, "query: unterminated quote");
        }
        p = skip_space(p + 1);
        if (!text[0]) {
            free(text);
            query_terms_free(t, count);
            return clipc_fail(err, "query: empty term \"\"");
        }
        t[count++] = (query_term){sign * weight, text};
    }
    *terms = t, *n = count;
    return 0;
}

int query_combine(const query_term *terms, int n, const float *e, int dim, float *q, clipc_error *err) {
    double *acc = calloc((size_t)dim, sizeof *acc);
    if (!acc) return clipc_fail(err, "out of memory");
    for (int i = 0; i < n; i++) {
        double norm = 0;
        for (int j = 0; j < dim; j++) norm += (double)e[(size_t)i * dim + j] * e[(size_t)i * dim + j];
        norm = sqrt(norm);
        for (int j = 0; j < dim && norm > 0; j++) acc[j] += terms[i].weight * e[(size_t)i * dim + j] / norm;
    }
    double norm = 0;
    for (int j = 0; j < dim; j++) norm += acc[j] * acc[j];
    norm = sqrt(norm);
    if (!(norm > 1e-6)) {
        free(acc);
        return clipc_fail(err, "the query's terms cancel out");
    }
    for (int j = 0; j < dim; j++) q[j] = (float)(acc[j] / norm);
    free(acc);
    return 0;
}

int query_vector(clipc_model *m, clipc_tokenizer *tok, const char *query, float *q, clipc_error *err) {
    query_term *terms;
    int n;
    if (query_parse(query, &terms, &n, err)) return -1;
    const clipc_config *c = clipc_model_config(m);
    int32_t *tokens = malloc((size_t)n * c->context_length * sizeof *tokens);
    float *e = malloc((size_t)n * c->embed_dim * sizeof *e);
    int rc = tokens && e ? 0 : clipc_fail(err, "out of memory");
    for (int i = 0; i < n && rc == 0; i++)
        rc = clipc_tokenize(tok, terms[i].text, c->context_length, 1, tokens + (size_t)i * c->context_length, err);
    if (rc == 0) rc = clipc_encode_text(m, tokens, n, e, err);
    if (rc == 0) rc = query_combine(terms, n, e, c->embed_dim, q, err);
    free(tokens), free(e);
    query_terms_free(terms, n);
    return rc;
}
