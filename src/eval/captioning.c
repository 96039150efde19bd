/* captioning.c — caption metrics as the COCO caption evaluation
 * (pycocoevalcap) computes them, on texts tokenized the same simple way on
 * both sides:
 *   BLEU-1..4 (Papineni et al. 2002; pycocoevalcap's BleuScorer): corpus
 *     n-gram precisions clipped by each reference's counts, the geometric
 *     mean, a brevity penalty with the "closest" reference length, and its
 *     1e-9 / 1e-15 guards;
 *   CIDEr-D (Vedantam et al. 2015; pycocoevalcap's CiderScorer): n-gram
 *     tf-idf vectors (idf from the references of the whole corpus), their
 *     cosine per n with the hypothesis' weights clipped to the reference's,
 *     a Gaussian penalty (sigma 6) on the length difference, averaged over
 *     n = 1..4 and the references, times 10. As in pycocoevalcap, "length"
 *     there counts a text's bigrams.
 * An n-gram is up to four 16-bit word ids packed in 64 bits (ids from 1, so
 * the packing is unique); sorted arrays of them stand in for Python's dicts. */
#include "eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define MAX_WORDS 65535

char *caption_normalize(const char *text) {
    size_t len = strlen(text);
    char *out = malloc(len * 4 + 1);
    if (!out) return NULL;
    size_t o = 0, i = 0;
    bool space = true;
    while (i < len) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)text + i, (utf8proc_ssize_t)(len - i), &c);
        if (k <= 0) { /* invalid UTF-8: the byte is dropped */
            i++;
            continue;
        }
        i += (size_t)k;
        utf8proc_category_t cat = utf8proc_category(c);
        bool punct = cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
        bool white = cat == UTF8PROC_CATEGORY_ZS || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
        if (punct || white) {
            if (!space) out[o++] = ' ';
            space = true;
            continue;
        }
        o += (size_t)utf8proc_encode_char(utf8proc_tolower(c), (utf8proc_uint8_t *)out + o);
        space = false;
    }
    while (o > 0 && out[o - 1] == ' ') o--;
    out[o] = 0;
    return out;
}

/* ---- words and n-grams ------------------------------------------------------------------ */

typedef struct vocab {
    char **words;
    uint64_t *hashes;
    int *slots; /* open addressing: word id + 1, 0 empty */
    int n, cap_slots;
} vocab;

static uint64_t hash_word(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

/* The id (1..) of a word, added when new; 0 when the vocabulary is full or memory runs out. */
static int word_id(vocab *v, const char *s, size_t n) {
    if (v->n * 2 + 2 > v->cap_slots) {
        int cap = v->cap_slots ? v->cap_slots * 2 : 1024;
        int *slots = calloc((size_t)cap, sizeof *slots);
        if (!slots) return 0;
        for (int w = 0; w < v->n; w++) {
            size_t at = v->hashes[w] & (size_t)(cap - 1);
            while (slots[at]) at = (at + 1) & (size_t)(cap - 1);
            slots[at] = w + 1;
        }
        free(v->slots);
        v->slots = slots;
        v->cap_slots = cap;
        char **words = realloc(v->words, (size_t)cap / 2 * sizeof *words);
        uint64_t *hashes = realloc(v->hashes, (size_t)cap / 2 * sizeof *hashes);
        if (words) v->words = words;
        if (hashes) v->hashes = hashes;
        if (!words || !hashes) return 0;
    }
    uint64_t h = hash_word(s, n);
    size_t at = h & (size_t)(v->cap_slots - 1);
    while (v->slots[at]) {
        int w = v->slots[at] - 1;
        if (v->hashes[w] == h && strlen(v->words[w]) == n && !memcmp(v->words[w], s, n)) return w + 1;
        at = (at + 1) & (size_t)(v->cap_slots - 1);
    }
    if (v->n >= MAX_WORDS) return 0;
    char *copy = malloc(n + 1);
    if (!copy) return 0;
    memcpy(copy, s, n);
    copy[n] = 0;
    v->words[v->n] = copy;
    v->hashes[v->n] = h;
    v->slots[at] = ++v->n;
    return v->n;
}

static void vocab_free(vocab *v) {
    for (int w = 0; w < v->n; w++) free(v->words[w]);
    free(v->words), free(v->hashes), free(v->slots);
}

/* A text's n-grams (n = 1..4) with their counts, sorted by key. */
typedef struct grams {
    uint64_t *key;
    int *count;
    int n;     /* distinct n-grams */
    int words; /* the text's length in words */
    int bigrams; /* CIDEr's "length" */
} grams;

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int gram_order(uint64_t key) { return key >> 48 ? 4 : key >> 32 ? 3 : key >> 16 ? 2 : 1; }

/* Tokenizes a normalised text (space-separated) into g; -1 on memory or vocabulary exhaustion. */
static int grams_of(vocab *v, const char *text, grams *g) {
    memset(g, 0, sizeof *g);
    int cap = 16, nw = 0, *ids = malloc((size_t)cap * sizeof *ids);
    if (!ids) return -1;
    for (const char *p = text; *p;) {
        while (*p == ' ') p++;
        const char *end = p;
        while (*end && *end != ' ') end++;
        if (end == p) break;
        if (nw == cap) {
            int *grown = realloc(ids, (size_t)(cap *= 2) * sizeof *ids);
            if (!grown) {
                free(ids);
                return -1;
            }
            ids = grown;
        }
        if (!(ids[nw++] = word_id(v, p, (size_t)(end - p)))) {
            free(ids);
            return -1;
        }
        p = end;
    }
    g->words = nw;
    g->bigrams = nw > 1 ? nw - 1 : 0;
    size_t total = (size_t)4 * (nw > 0 ? nw : 1);
    uint64_t *all = malloc(total * sizeof *all);
    g->key = malloc(total * sizeof *g->key);
    g->count = malloc(total * sizeof *g->count);
    if (!all || !g->key || !g->count) {
        free(ids), free(all), free(g->key), free(g->count);
        return -1;
    }
    size_t m = 0;
    for (int k = 1; k <= 4; k++)
        for (int i = 0; i + k <= nw; i++) {
            uint64_t key = 0;
            for (int j = 0; j < k; j++) key |= (uint64_t)ids[i + j] << (16 * j);
            all[m++] = key;
        }
    qsort(all, m, sizeof *all, cmp_u64);
    for (size_t i = 0; i < m;) {
        size_t j = i;
        while (j < m && all[j] == all[i]) j++;
        g->key[g->n] = all[i];
        g->count[g->n++] = (int)(j - i);
        i = j;
    }
    free(all), free(ids);
    return 0;
}

static void grams_free(grams *g) { free(g->key), free(g->count); }

/* The count of key in g (0 when absent). */
static int grams_count(const grams *g, uint64_t key) {
    int lo = 0, hi = g->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (g->key[mid] == key) return g->count[mid];
        if (g->key[mid] < key) lo = mid + 1;
        else hi = mid - 1;
    }
    return 0;
}

/* ---- CIDEr-D's tf-idf vectors --------------------------------------------------------- */

typedef struct df_table {
    uint64_t *key;
    int *df;
    int n;
} df_table;

static double df_of(const df_table *t, uint64_t key) {
    int lo = 0, hi = t->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (t->key[mid] == key) return t->df[mid];
        if (t->key[mid] < key) lo = mid + 1;
        else hi = mid - 1;
    }
    return 0;
}

/* tf-idf weight of each n-gram of g (in g's order) and the norm per order. */
static void tfidf(const grams *g, const df_table *t, double ref_len, double *w, double norm[4]) {
    for (int k = 0; k < 4; k++) norm[k] = 0;
    for (int i = 0; i < g->n; i++) {
        double df = log(fmax(1.0, df_of(t, g->key[i])));
        w[i] = (double)g->count[i] * (ref_len - df);
        norm[gram_order(g->key[i]) - 1] += w[i] * w[i];
    }
    for (int k = 0; k < 4; k++) norm[k] = sqrt(norm[k]);
}

int caption_scores_compute(const char *const *hyps, const char *const *refs, const int *ref_first, int n,
                           caption_scores *out, double *cider_each, clipc_error *err) {
    memset(out, 0, sizeof *out);
    if (n <= 0) return clipc_fail(err, "no captions to score");
    vocab v = {0};
    grams *hg = calloc((size_t)n, sizeof *hg);
    int n_refs = ref_first[n];
    grams *rg = calloc((size_t)(n_refs > 0 ? n_refs : 1), sizeof *rg);
    double *cider = calloc((size_t)n, sizeof *cider);
    int rc = hg && rg && cider ? 0 : clipc_fail(err, "out of memory");
    for (int i = 0; i < n && rc == 0; i++) {
        if (ref_first[i + 1] <= ref_first[i]) rc = clipc_fail(err, "image %d has no reference caption", i);
        char *t = rc ? NULL : caption_normalize(hyps[i]);
        if (rc == 0 && (!t || grams_of(&v, t, &hg[i]))) rc = clipc_fail(err, "out of memory or over %d words", MAX_WORDS);
        free(t);
    }
    for (int r = 0; r < n_refs && rc == 0; r++) {
        char *t = caption_normalize(refs[r]);
        if (!t || grams_of(&v, t, &rg[r])) rc = clipc_fail(err, "out of memory or over %d words", MAX_WORDS);
        free(t);
    }
    /* BLEU: corpus sums of clipped matches and guesses per order; the closest reference length */
    double correct[4] = {0}, guess[4] = {0}, testlen = 0, reflen = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const grams *h = &hg[i];
        int best_len = -1, best_diff = 0;
        for (int r = ref_first[i]; r < ref_first[i + 1]; r++) {
            int d = abs(rg[r].words - h->words);
            if (best_len < 0 || d < best_diff || (d == best_diff && rg[r].words < best_len)) best_len = rg[r].words, best_diff = d;
        }
        testlen += h->words;
        reflen += best_len;
        for (int k = 0; k < 4; k++) guess[k] += h->words - k > 0 ? h->words - k : 0;
        for (int g = 0; g < h->n; g++) {
            int maxref = 0;
            for (int r = ref_first[i]; r < ref_first[i + 1]; r++) {
                int c = grams_count(&rg[r], h->key[g]);
                maxref = c > maxref ? c : maxref;
            }
            correct[gram_order(h->key[g]) - 1] += h->count[g] < maxref ? h->count[g] : maxref;
        }
    }
    if (rc == 0) {
        double bleu = 1.0, ratio = (testlen + 1e-15) / (reflen + 1e-9);
        for (int k = 0; k < 4; k++) {
            bleu *= (correct[k] + 1e-15) / (guess[k] + 1e-9);
            out->bleu[k] = pow(bleu, 1.0 / (k + 1));
            if (ratio < 1) out->bleu[k] *= exp(1 - 1 / ratio);
        }
    }
    /* CIDEr-D: document frequency = the number of images whose references hold the n-gram */
    df_table t = {0};
    if (rc == 0) {
        size_t total = 0;
        for (int r = 0; r < n_refs; r++) total += (size_t)rg[r].n;
        uint64_t *all = malloc((total + 1) * sizeof *all);
        t.key = malloc((total + 1) * sizeof *t.key);
        t.df = malloc((total + 1) * sizeof *t.df);
        if (!all || !t.key || !t.df) rc = clipc_fail(err, "out of memory");
        size_t m = 0;
        for (int i = 0; i < n && rc == 0; i++) {
            size_t first = m;
            for (int r = ref_first[i]; r < ref_first[i + 1]; r++)
                for (int g = 0; g < rg[r].n; g++) all[m++] = rg[r].key[g];
            qsort(all + first, m - first, sizeof *all, cmp_u64); /* this image's set: duplicates dropped */
            size_t w = first;
            for (size_t j = first; j < m; j++)
                if (j == first || all[j] != all[j - 1]) all[w++] = all[j];
            m = w;
        }
        if (rc == 0) {
            qsort(all, m, sizeof *all, cmp_u64);
            for (size_t i = 0; i < m;) {
                size_t j = i;
                while (j < m && all[j] == all[i]) j++;
                t.key[t.n] = all[i];
                t.df[t.n++] = (int)(j - i);
                i = j;
            }
        }
        free(all);
    }
    double ref_len = log((double)n), sum = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const grams *h = &hg[i];
        double *wh = malloc(((size_t)h->n + 1) * sizeof *wh), nh[4], score[4] = {0};
        if (!wh) {
            rc = clipc_fail(err, "out of memory");
            break;
        }
        tfidf(h, &t, ref_len, wh, nh);
        for (int r = ref_first[i]; r < ref_first[i + 1] && rc == 0; r++) {
            double *wr = malloc(((size_t)rg[r].n + 1) * sizeof *wr), nr[4], val[4] = {0};
            if (!wr) {
                rc = clipc_fail(err, "out of memory");
                break;
            }
            tfidf(&rg[r], &t, ref_len, wr, nr);
            for (int g = 0, j = 0; g < h->n; g++) { /* both sorted: a merge finds the shared n-grams */
                while (j < rg[r].n && rg[r].key[j] < h->key[g]) j++;
                if (j < rg[r].n && rg[r].key[j] == h->key[g])
                    val[gram_order(h->key[g]) - 1] += fmin(wh[g], wr[j]) * wr[j];
            }
            double delta = (double)(h->bigrams - rg[r].bigrams);
            for (int k = 0; k < 4; k++) {
                if (nh[k] != 0 && nr[k] != 0) val[k] /= nh[k] * nr[k];
                val[k] *= exp(-(delta * delta) / (2 * 6.0 * 6.0));
                score[k] += val[k];
            }
            free(wr);
        }
        free(wh);
        double avg = (score[0] + score[1] + score[2] + score[3]) / 4 / (ref_first[i + 1] - ref_first[i]) * 10.0;
        cider[i] = avg;
        sum += avg;
    }
    if (rc == 0) {
        out->cider = sum / n;
        if (cider_each) memcpy(cider_each, cider, (size_t)n * sizeof *cider);
    }
    free(t.key), free(t.df);
    for (int i = 0; hg && i < n; i++) grams_free(&hg[i]);
    for (int r = 0; rg && r < n_refs; r++) grams_free(&rg[r]);
    free(hg), free(rg), free(cider);
    vocab_free(&v);
    return rc;
}
