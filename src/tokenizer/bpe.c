/* bpe.c — OpenAI's SimpleTokenizer (clip/simple_tokenizer.py) and
 * clip.tokenize().
 *
 *  1. clean the text (clean.c);
 *  2. split it with CLIP's pattern, tried in this order at each position:
 *       <|startoftext|>  <|endoftext|>  's 't 're 've 'm 'll 'd
 *       [\p{L}]+  [\p{N}]  [^\s\p{L}\p{N}]+
 *  3. map each piece's UTF-8 bytes to printable symbols (bytes_to_unicode),
 *     mark the last symbol with </w>, and merge pairs by rank (BPE);
 *  4. look the merged symbols up in the 49408-entry vocabulary.
 * The merge list is linked into the library (vocab_blob.S). */
#include "../internal.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include <zlib.h>

extern const unsigned char clipc_bpe_gz[], clipc_bpe_gz_end[];

#define N_MERGES (49152 - 256 - 2)
#define VOCAB_SIZE 49408

/* Open-addressing hash of 64-bit keys to int values. */
typedef struct hmap {
    uint64_t *keys;
    int32_t *vals;
    size_t cap; /* power of two */
} hmap;

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

static int hmap_init(hmap *h, size_t n) {
    h->cap = 1;
    while (h->cap < 2 * n) h->cap <<= 1;
    h->keys = malloc(h->cap * sizeof *h->keys);
    h->vals = malloc(h->cap * sizeof *h->vals);
    if (!h->keys || !h->vals) return -1;
    memset(h->keys, 0xff, h->cap * sizeof *h->keys); /* empty = all ones */
    return 0;
}

static void hmap_put(hmap *h, uint64_t key, int32_t val) {
    size_t i = mix64(key) & (h->cap - 1);
    while (h->keys[i] != UINT64_MAX && h->keys[i] != key) i = (i + 1) & (h->cap - 1);
    h->keys[i] = key;
    h->vals[i] = val;
}

static int32_t hmap_get(const hmap *h, uint64_t key) {
    size_t i = mix64(key) & (h->cap - 1);
    while (h->keys[i] != UINT64_MAX) {
        if (h->keys[i] == key) return h->vals[i];
        i = (i + 1) & (h->cap - 1);
    }
    return -1;
}

static uint64_t hash_str(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h & ~(1ULL << 63); /* never UINT64_MAX */
}

struct clipc_tokenizer {
    char **vocab;        /* id -> symbol string (UTF-8) */
    hmap by_string;      /* hash(symbol) -> id (strings verified on lookup) */
    hmap merges;         /* (left id << 32 | right id) -> rank */
    int32_t *merged;     /* rank -> id of the merged symbol */
    int32_t byte_id[256];/* byte -> id of its symbol; +256 for the </w> form */
    spm_tokenizer *spm;  /* a SentencePiece tokenizer (spm.c) instead of the BPE above */
};

static int32_t vocab_id(const clipc_tokenizer *t, const char *s, size_t n) {
    uint64_t h = hash_str(s, n);
    /* Linear probing on the hash; collisions are resolved by string compare. */
    size_t i = mix64(h) & (t->by_string.cap - 1);
    while (t->by_string.keys[i] != UINT64_MAX) {
        if (t->by_string.keys[i] == h) {
            int32_t id = t->by_string.vals[i];
            if (strlen(t->vocab[id]) == n && !memcmp(t->vocab[id], s, n)) return id;
        }
        i = (i + 1) & (t->by_string.cap - 1);
    }
    return -1;
}

static void vocab_add(clipc_tokenizer *t, int32_t id) {
    const char *s = t->vocab[id];
    uint64_t h = hash_str(s, strlen(s));
    size_t i = mix64(h) & (t->by_string.cap - 1);
    /* A later duplicate replaces an earlier one, as in dict(zip(vocab, ids)). */
    while (t->by_string.keys[i] != UINT64_MAX) {
        if (t->by_string.keys[i] == h && !strcmp(t->vocab[t->by_string.vals[i]], s)) break;
        i = (i + 1) & (t->by_string.cap - 1);
    }
    t->by_string.keys[i] = h;
    t->by_string.vals[i] = id;
}

/* bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the
 * other 68 bytes are shifted to U+0100 onwards. Returns the symbol order. */
static void bytes_to_unicode(int32_t order[256], int32_t cp_of_byte[256]) {
    int n = 0, extra = 0;
    bool printable[256] = {false};
    for (int b = '!'; b <= '~'; b++) printable[b] = true;
    for (int b = 0xA1; b <= 0xAC; b++) printable[b] = true;
    for (int b = 0xAE; b <= 0xFF; b++) printable[b] = true;
    for (int b = 0; b < 256; b++)
        if (printable[b]) order[n++] = b, cp_of_byte[b] = b;
    for (int b = 0; b < 256; b++)
        if (!printable[b]) order[n++] = b, cp_of_byte[b] = 256 + extra++;
}

static char *utf8_dup(const int32_t *cps, int n, const char *suffix) {
    char *s = malloc((size_t)n * 4 + strlen(suffix) + 1);
    if (!s) return NULL;
    size_t len = 0;
    for (int i = 0; i < n; i++) len += (size_t)utf8proc_encode_char(cps[i], (utf8proc_uint8_t *)s + len);
    strcpy(s + len, suffix);
    return s;
}

static int inflate_merges(unsigned char **out, size_t *out_len, clipc_error *err) {
    size_t cap = 2u << 20, len = 0;
    unsigned char *buf = malloc(cap);
    if (!buf) return clipc_fail(err, "out of memory");
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) {
        free(buf);
        return clipc_fail(err, "zlib initialisation failed");
    }
    z.next_in = (unsigned char *)clipc_bpe_gz;
    z.avail_in = (unsigned)(clipc_bpe_gz_end - clipc_bpe_gz);
    int rc;
    do {
        if (len == cap) {
            unsigned char *p = realloc(buf, cap *= 2);
            if (!p) {
                inflateEnd(&z);
                free(buf);
                return clipc_fail(err, "out of memory");
            }
            buf = p;
        }
        z.next_out = buf + len;
        z.avail_out = (unsigned)(cap - len);
        rc = inflate(&z, Z_NO_FLUSH);
        len = cap - z.avail_out;
    } while (rc == Z_OK);
    inflateEnd(&z);
    if (rc != Z_STREAM_END) {
        free(buf);
        return clipc_fail(err, "built-in BPE vocabulary is corrupt");
    }
    *out = buf;
    *out_len = len;
    return 0;
}

void clipc_tokenizer_free(clipc_tokenizer *t) {
    if (!t) return;
    spm_tokenizer_free(t->spm);
    if (t->vocab)
        for (int i = 0; i < VOCAB_SIZE; i++) free(t->vocab[i]);
    free(t->vocab);
    free(t->by_string.keys);
    free(t->by_string.vals);
    free(t->merges.keys);
    free(t->merges.vals);
    free(t->merged);
    free(t);
}

clipc_tokenizer *clipc_tokenizer_new(clipc_error *err) {
    clipc_tokenizer *t = calloc(1, sizeof *t);
    unsigned char *text = NULL;
    size_t text_len = 0;
    if (!t || inflate_merges(&text, &text_len, err)) {
        free(t);
        if (!t) clipc_fail(err, "out of memory");
        return NULL;
    }
    t->vocab = calloc(VOCAB_SIZE, sizeof *t->vocab);
    t->merged = malloc(N_MERGES * sizeof *t->merged);
    if (!t->vocab || !t->merged || hmap_init(&t->by_string, VOCAB_SIZE) || hmap_init(&t->merges, N_MERGES))
        goto oom;
    int32_t order[256], cp_of_byte[256];
    bytes_to_unicode(order, cp_of_byte);
    for (int i = 0; i < 256; i++) {
        int32_t cp = cp_of_byte[order[i]];
        t->vocab[i] = utf8_dup(&cp, 1, "");
        t->vocab[256 + i] = utf8_dup(&cp, 1, "</w>");
        if (!t->vocab[i] || !t->vocab[256 + i]) goto oom;
        t->byte_id[order[i]] = i;
    }
    for (int i = 0; i < 512; i++) vocab_add(t, i);
    /* Merges: lines 1 .. N_MERGES of the file, "left right". */
    char *p = (char *)text, *end = (char *)text + text_len;
    char *nl = memchr(p, '\n', (size_t)(end - p));
    p = nl ? nl + 1 : end;
    const char *lines[2];
    int n = 0;
    for (; n < N_MERGES && p < end; n++) {
        nl = memchr(p, '\n', (size_t)(end - p));
        char *line_end = nl ? nl : end;
        char *space = memchr(p, ' ', (size_t)(line_end - p));
        if (!space) break;
        lines[0] = p;
        lines[1] = space + 1;
        size_t l0 = (size_t)(space - p), l1 = (size_t)(line_end - space - 1);
        char *joined = malloc(l0 + l1 + 1);
        if (!joined) goto oom;
        memcpy(joined, lines[0], l0);
        memcpy(joined + l0, lines[1], l1);
        joined[l0 + l1] = 0;
        t->vocab[512 + n] = joined;
        /* ranks refer to symbol ids, so resolve both halves now */
        t->merged[n] = 512 + n;
        int32_t a = -1, b = -1;
        a = vocab_id(t, lines[0], l0);
        b = vocab_id(t, lines[1], l1);
        if (a < 0 || b < 0) {
            free(text);
            clipc_tokenizer_free(t);
            clipc_fail(err, "built-in BPE vocabulary: merge %d refers to an unknown symbol", n + 1);
            return NULL;
        }
        if (hmap_get(&t->merges, (uint64_t)a << 32 | (uint32_t)b) < 0) hmap_put(&t->merges, (uint64_t)a << 32 | (uint32_t)b, n);
        vocab_add(t, 512 + n);
        p = nl ? nl + 1 : end;
    }
    free(text);
    text = NULL;
    if (n != N_MERGES) {
        clipc_tokenizer_free(t);
        clipc_fail(err, "built-in BPE vocabulary has %d merges, expected %d", n, N_MERGES);
        return NULL;
    }
    t->vocab[CLIPC_SOT] = strdup("<|startoftext|>");
    t->vocab[CLIPC_EOT] = strdup("<|endoftext|>");
    if (!t->vocab[CLIPC_SOT] || !t->vocab[CLIPC_EOT]) goto oom;
    vocab_add(t, CLIPC_SOT);
    vocab_add(t, CLIPC_EOT);
    return t;
oom:
    free(text);
    clipc_tokenizer_free(t);
    clipc_fail(err, "out of memory loading the BPE vocabulary");
    return NULL;
}

/* ---- encoding --------------------------------------------------------------- */

typedef struct idbuf {
    int32_t *ids;
    int n, cap;
} idbuf;

static int id_push(idbuf *b, int32_t id) {
    if (b->n == b->cap) {
        int cap = b->cap ? 2 * b->cap : 64;
        int32_t *p = realloc(b->ids, (size_t)cap * sizeof *p);
        if (!p) return -1;
        b->ids = p;
        b->cap = cap;
    }
    b->ids[b->n++] = id;
    return 0;
}

/* SimpleTokenizer.bpe(): start from one symbol per byte (the last with
 * </w>), repeatedly merge every occurrence of the lowest-ranked adjacent
 * pair, left to right, until no pair has a rank. */
static int bpe_piece_long(const clipc_tokenizer *t, const unsigned char *bytes, size_t n, idbuf *out);
extern size_t bpe_long_threshold;

static int bpe_piece(const clipc_tokenizer *t, const unsigned char *bytes, size_t n, idbuf *out) {
    if (n > bpe_long_threshold) return bpe_piece_long(t, bytes, n, out);
    int32_t local[64];
    int32_t *word = n <= 64 ? local : malloc(n * sizeof *word);
    if (!word) return -1;
    for (size_t i = 0; i < n; i++) word[i] = t->byte_id[bytes[i]] + (i + 1 == n ? 256 : 0);
    size_t len = n;
    while (len > 1) {
        int32_t best_rank = INT32_MAX;
        for (size_t i = 0; i + 1 < len; i++) {
            int32_t r = hmap_get(&t->merges, (uint64_t)word[i] << 32 | (uint32_t)word[i + 1]);
            if (r >= 0 && r < best_rank) best_rank = r;
        }
        if (best_rank == INT32_MAX) break;
        /* the pair's halves, recovered from any occurrence */
        int32_t first = -1, second = -1;
        for (size_t i = 0; i + 1 < len; i++)
            if (hmap_get(&t->merges, (uint64_t)word[i] << 32 | (uint32_t)word[i + 1]) == best_rank) {
                first = word[i];
                second = word[i + 1];
                break;
            }
        size_t o = 0;
        for (size_t i = 0; i < len;) {
            if (i + 1 < len && word[i] == first && word[i + 1] == second) {
                word[o++] = t->merged[best_rank];
                i += 2;
            } else {
                word[o++] = word[i++];
            }
        }
        len = o;
    }
    int rc = 0;
    for (size_t i = 0; i < len && rc == 0; i++) rc = id_push(out, word[i]);
    if (word != local) free(word);
    return rc;
}

/* The same merges for a long word in O(n log n). The passes above cost
 * O(n) per merge, so a 300,000-letter word took ~44 s (OpenAI's tokenizer
 * has the same shape). Here the symbols form a linked list and a min-heap
 * holds each adjacent pair as (rank, position); entries made stale by a
 * merge are skipped when popped. Every merge has its own rank, and a pair
 * a merge creates always ranks after it (its symbol did not exist before),
 * so taking pairs in (rank, position) order merges exactly what the passes
 * above merge: all occurrences of the best pair, left to right, and
 * overlapping ones ("aaa") as the left-to-right scan does. */
typedef struct heap_pair {
    int32_t rank, pos, left, right;
} heap_pair;

static bool pair_before(const heap_pair *a, const heap_pair *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(heap_pair *h, size_t *n, heap_pair x) {
    size_t i = (*n)++;
    while (i > 0 && pair_before(&x, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = x;
}

static heap_pair heap_pop(heap_pair *h, size_t *n) {
    heap_pair top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && pair_before(&h[c + 1], &h[c])) c++;
        if (!pair_before(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

size_t bpe_long_threshold = 256; /* words longer than this take the heap path (tests move it) */

static int bpe_piece_long(const clipc_tokenizer *t, const unsigned char *bytes, size_t n, idbuf *out) {
    int32_t *sym = malloc(n * sizeof *sym), *next = malloc(n * sizeof *next), *prev = malloc(n * sizeof *prev);
    heap_pair *heap = malloc(3 * n * sizeof *heap); /* n - 1 pairs, then at most 2 per merge */
    int rc = sym && next && prev && heap ? 0 : -1;
    size_t hn = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        sym[i] = t->byte_id[bytes[i]] + (i + 1 == n ? 256 : 0);
        next[i] = i + 1 < n ? (int32_t)(i + 1) : -1;
        prev[i] = (int32_t)i - 1;
    }
#define PUSH_PAIR(p)                                                                                    \
    do {                                                                                                \
        int32_t q_ = next[p];                                                                           \
        int32_t r_ = q_ < 0 ? -1 : hmap_get(&t->merges, (uint64_t)sym[p] << 32 | (uint32_t)sym[q_]);   \
        if (r_ >= 0) heap_push(heap, &hn, (heap_pair){r_, (int32_t)(p), sym[p], sym[q_]});             \
    } while (0)
    for (size_t i = 0; rc == 0 && i + 1 < n; i++) PUSH_PAIR(i);
    while (rc == 0 && hn > 0) {
        heap_pair e = heap_pop(heap, &hn);
        int32_t p = e.pos, q = next[p];
        /* stale: the left symbol was merged into its neighbour, or changed */
        if (sym[p] < 0 || q < 0 || sym[p] != e.left || sym[q] != e.right) continue;
        sym[p] = t->merged[e.rank];
        next[p] = next[q];
        if (next[q] >= 0) prev[next[q]] = p;
        sym[q] = -1; /* gone */
        if (prev[p] >= 0) PUSH_PAIR(prev[p]);
        PUSH_PAIR(p);
    }
#undef PUSH_PAIR
    for (int32_t i = 0; rc == 0 && n > 0 && i >= 0; i = next[i]) rc = id_push(out, sym[i]);
    free(sym), free(next), free(prev), free(heap);
    return rc;
}

static bool is_letter(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT ||
           k == UTF8PROC_CATEGORY_LM || k == UTF8PROC_CATEGORY_LO;
}

static bool is_number(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
}

/* The regex module's \s (Unicode White_Space). */
static bool is_white_space(int32_t c) {
    return (c >= 0x9 && c <= 0xD) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Decoded code point at s[i] (s is valid UTF-8 here), its byte length in *k. */
static int32_t cp_at(const unsigned char *s, size_t len, size_t i, size_t *k) {
    utf8proc_int32_t c;
    utf8proc_ssize_t n = utf8proc_iterate(s + i, (utf8proc_ssize_t)(len - i), &c);
    *k = n > 0 ? (size_t)n : 1;
    return n > 0 ? c : 0xFFFD;
}

/* The length in bytes of the contraction at s[i] ('s 't 're 've 'm 'll 'd,
 * case-insensitively as re.IGNORECASE matches them, ſ folding to s), or 0. */
static size_t contraction(const unsigned char *s, size_t len, size_t i) {
    if (s[i] != '\'' || i + 1 >= len) return 0;
    size_t k;
    int32_t c1 = cp_at(s, len, i + 1, &k);
    if (c1 == 0x17F) c1 = 's';
    c1 = utf8proc_tolower(c1);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 1 + k;
    if (i + 1 + k < len) {
        size_t k2;
        int32_t c2 = utf8proc_tolower(cp_at(s, len, i + 1 + k, &k2));
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 1 + k + k2;
    }
    return 0;
}

clipc_tokenizer *clipc_tokenizer_load(const char *path, clipc_error *err) {
    clipc_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        clipc_fail(err, "out of memory");
        return NULL;
    }
    if (!(t->spm = spm_tokenizer_load(path, err))) {
        free(t);
        return NULL;
    }
    return t;
}

clipc_tokenizer *clipc_model_tokenizer(const clipc_model *m, clipc_error *err) {
    if (m->cfg.family != CLIPC_SIGLIP) return clipc_tokenizer_new(err);
    if (!m->tokenizer_path) {
        clipc_fail(err, "a SigLIP model needs its SentencePiece tokenizer beside the checkpoint (spiece.model, or "
                        "tokenizer.model for SigLIP 2, with its tokenizer_config.json)");
        return NULL;
    }
    clipc_tokenizer *t = clipc_tokenizer_load(m->tokenizer_path, err);
    if (t && spm_tokenizer_vocab(t->spm) > m->cfg.vocab_size) {
        clipc_fail(err, "%s has %d pieces, more than the model's %d token embeddings", m->tokenizer_path,
                   spm_tokenizer_vocab(t->spm), m->cfg.vocab_size);
        clipc_tokenizer_free(t);
        return NULL;
    }
    return t;
}

int clipc_tokenizer_vocab_size(const clipc_tokenizer *t) { return t->spm ? spm_tokenizer_vocab(t->spm) : VOCAB_SIZE; }

int clipc_tokenizer_encode(clipc_tokenizer *t, const char *text, int32_t **ids, int *n_ids, clipc_error *err) {
    if (t->spm) return spm_tokenizer_encode(t->spm, text, ids, n_ids, err);
    *ids = NULL;
    *n_ids = 0;
    char *clean = text_clean(text, err);
    if (!clean) return -1;
    const unsigned char *s = (const unsigned char *)clean;
    size_t len = strlen(clean), i = 0;
    idbuf out = {0};
    int rc = 0;
    static const char SOT[] = "<|startoftext|>", EOT[] = "<|endoftext|>";
    while (i < len && rc == 0) {
        size_t k, end;
        int32_t c = cp_at(s, len, i, &k);
        if (!strncmp((const char *)s + i, SOT, sizeof SOT - 1)) {
            rc = id_push(&out, CLIPC_SOT);
            i += sizeof SOT - 1;
            continue;
        }
        if (!strncmp((const char *)s + i, EOT, sizeof EOT - 1)) {
            rc = id_push(&out, CLIPC_EOT);
            i += sizeof EOT - 1;
            continue;
        }
        if ((end = contraction(s, len, i)) > 0) {
            end += i;
        } else if (is_letter(c)) {
            end = i + k;
            while (end < len && is_letter(cp_at(s, len, end, &k))) end += k;
        } else if (is_number(c)) {
            end = i + k;
        } else if (!is_white_space(c)) {
            end = i + k;
            for (int32_t d; end < len && !is_white_space(d = cp_at(s, len, end, &k)) && !is_letter(d) && !is_number(d);)
                end += k;
        } else {
            i += k; /* whitespace separates pieces */
            continue;
        }
        rc = bpe_piece(t, s + i, end - i, &out);
        i = end;
    }
    free(clean);
    if (rc) {
        free(out.ids);
        return clipc_fail(err, "out of memory tokenizing");
    }
    *ids = out.ids;
    *n_ids = out.n;
    return 0;
}

int clipc_tokenize(clipc_tokenizer *t, const char *text, int context, int truncate, int32_t *out,
                   clipc_error *err) {
    if (t->spm) return spm_tokenizer_row(t->spm, text, context, truncate, out, err);
    if (context < 2) return clipc_fail(err, "context length %d is too short for SOT and EOT", context);
    int32_t *ids;
    int n;
    if (clipc_tokenizer_encode(t, text, &ids, &n, err)) return -1;
    if (n + 2 > context && !truncate) {
        free(ids);
        return clipc_fail(err, "text of %d tokens is too long for context length %d", n + 2, context);
    }
    memset(out, 0, (size_t)context * sizeof *out);
    out[0] = CLIPC_SOT;
    int keep = n + 2 > context ? context - 2 : n;
    if (keep > 0) memcpy(out + 1, ids, (size_t)keep * sizeof *ids);
    /* clip.tokenize: a truncated row keeps context tokens, the last being EOT */
    out[n + 2 > context ? context - 1 : keep + 1] = CLIPC_EOT;
    free(ids);
    return 0;
}

/* ---- decoding (CoCa's captions) ---------------------------------------------------------- */

char *clipc_tokenizer_decode(clipc_tokenizer *t, const int32_t *ids, int n, clipc_error *err) {
    if (t->spm) {
        clipc_fail(err, "decoding is for CLIP's BPE ids (CoCa's captions)");
        return NULL;
    }
    /* SimpleTokenizer.decode: each id's symbol, its code points back to the bytes bytes_to_unicode() gave
     * them, "</w>" a space; the bytes are then UTF-8 with errors replaced (U+FFFD) */
    int32_t order[256], cp_of_byte[256];
    int byte_of_cp[512];
    bytes_to_unicode(order, cp_of_byte);
    for (int c = 0; c < 512; c++) byte_of_cp[c] = -1;
    for (int b = 0; b < 256; b++) byte_of_cp[cp_of_byte[b]] = b;
    size_t cap = 64, len = 0;
    unsigned char *bytes = malloc(cap);
    if (!bytes) {
        clipc_fail(err, "out of memory");
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        if (ids[i] == CLIPC_SOT) continue;
        if (ids[i] == CLIPC_EOT) break; /* what follows is padding */
        if (ids[i] < 0 || ids[i] >= VOCAB_SIZE) {
            free(bytes);
            clipc_fail(err, "token id %d at position %d is outside the vocabulary (0..%d)", ids[i], i, VOCAB_SIZE - 1);
            return NULL;
        }
        const char *s = t->vocab[ids[i]];
        size_t sl = strlen(s);
        if (len + sl + 1 > cap) {
            while (len + sl + 1 > cap) cap *= 2;
            unsigned char *grown = realloc(bytes, cap);
            if (!grown) {
                free(bytes);
                clipc_fail(err, "out of memory");
                return NULL;
            }
            bytes = grown;
        }
        for (size_t k = 0; k < sl;) {
            if (sl - k >= 4 && !memcmp(s + k, "</w>", 4)) {
                bytes[len++] = ' ';
                k += 4;
                continue;
            }
            utf8proc_int32_t c;
            utf8proc_ssize_t step = utf8proc_iterate((const utf8proc_uint8_t *)s + k, (utf8proc_ssize_t)(sl - k), &c);
            if (step <= 0) break;
            if (c >= 0 && c < 512 && byte_of_cp[c] >= 0) bytes[len++] = (unsigned char)byte_of_cp[c];
            k += (size_t)step;
        }
    }
    /* the bytes as UTF-8, invalid sequences replaced by U+FFFD, stripped */
    char *out = malloc(len * 3 + 1);
    size_t o = 0;
    for (size_t k = 0; out && k < len;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t step = utf8proc_iterate(bytes + k, (utf8proc_ssize_t)(len - k), &c);
        if (step <= 0) { /* one invalid byte: one replacement character */
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            k++;
            continue;
        }
        memcpy(out + o, bytes + k, (size_t)step);
        o += (size_t)step;
        k += (size_t)step;
    }
    free(bytes);
    if (!out) {
        clipc_fail(err, "out of memory");
        return NULL;
    }
    while (o > 0 && out[o - 1] == ' ') o--;
    out[o] = 0;
    size_t lead = 0;
    while (out[lead] == ' ') lead++;
    memmove(out, out + lead, o - lead + 1);
    return out;
}
