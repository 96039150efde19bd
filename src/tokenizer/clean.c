/* clean.c — the text normalisation in front of CLIP's tokenizer:
 *
 *   SimpleTokenizer.encode(text) tokenizes
 *       whitespace_clean(basic_clean(text)).lower()
 *   basic_clean   = ftfy.fix_text, html.unescape twice, strip
 *   whitespace_clean = re.sub(r'\s+', ' '), strip
 *
 * ftfy.fix_text is reproduced for its deterministic fixes (ftfy 6.3.1,
 * fix_and_explain): per line, repeat until nothing changes — unescape HTML
 * entities (unless the text holds '<'), fix_encoding (mojibake, with ftfy's
 * badness heuristic and encodings), C1 controls as cp1252, Latin ligatures, full/half-width forms,
 * curly quotes, line breaks, terminal escapes, control characters, NFC.
 * Text is processed as arrays of code points. */
#include "../internal.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

typedef struct cpbuf {
    int32_t *cp;
    size_t n, cap;
    bool oom;
} cpbuf;

static void push(cpbuf *b, int32_t c) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 64;
        int32_t *p = realloc(b->cp, cap * sizeof *p);
        if (!p) {
            b->oom = true;
            return;
        }
        b->cp = p;
        b->cap = cap;
    }
    b->cp[b->n++] = c;
}

static void push_utf8(cpbuf *b, const char *s) {
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    while (*p) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(p, -1, &c);
        if (k <= 0) return;
        push(b, c);
        p += k;
    }
}

static void push_range(cpbuf *b, const int32_t *cp, size_t n) {
    for (size_t i = 0; i < n; i++) push(b, cp[i]);
}

static bool equal(const cpbuf *a, const cpbuf *b) {
    return a->n == b->n && (a->n == 0 || !memcmp(a->cp, b->cp, a->n * sizeof *a->cp));
}

/* Windows-1252 for bytes 0x80..0x9F; "sloppy" as in ftfy: the five
 * undefined bytes map to the C1 code point of the same value. */
static const int32_t CP1252_HIGH[32] = {
    0x20AC, 0x81,   0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
    0x2039, 0x0152, 0x8D,   0x017D, 0x8F,   0x90,   0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
    0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D,   0x017E, 0x0178,
};

/* ---- HTML entities --------------------------------------------------------- */

struct html_entity {
    const char *name, *value;
};
#include "html_entities.inc"

static const char *entity_lookup(const struct html_entity *table, size_t count, const char *name, size_t len) {
    size_t lo = 0, hi = count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strncmp(table[mid].name, name, len);
        if (c == 0 && table[mid].name[len] != '\0') c = 1;
        if (c == 0) return table[mid].value;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}
#define HTML5_LOOKUP(name, len) entity_lookup(HTML5_ENTITIES, sizeof HTML5_ENTITIES / sizeof *HTML5_ENTITIES, name, len)

static bool is_ascii_alnum(int32_t c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
static bool is_digit(int32_t c) { return c >= '0' && c <= '9'; }
static bool is_hex(int32_t c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

/* html.unescape's numeric character reference rules (HTML5 spec). */
static void push_charref(cpbuf *out, const int32_t *digits, size_t n, int base) {
    unsigned long long num = 0;
    bool huge = false;
    for (size_t i = 0; i < n; i++) {
        int32_t c = digits[i];
        int v = is_digit(c) ? c - '0' : (c | 0x20) - 'a' + 10;
        num = num * (unsigned)base + (unsigned)v;
        if (num > 0x10FFFF) huge = true, num = 0x110000;
    }
    if (!huge && num == 0) push(out, 0xFFFD);
    else if (!huge && num == 13) push(out, '\r');
    else if (!huge && num >= 0x80 && num <= 0x9F) push(out, CP1252_HIGH[num - 0x80]);
    else if (huge || (num >= 0xD800 && num <= 0xDFFF)) push(out, 0xFFFD);
    else if ((num >= 1 && num <= 8) || num == 0xB || (num >= 0xE && num <= 0x1F) || (num >= 0x7F && num <= 0x9F) ||
             (num >= 0xFDD0 && num <= 0xFDEF) || (num & 0xFFFE) == 0xFFFE)
        ; /* invalid code points are dropped */
    else push(out, (int32_t)num);
}

/* Python's html.unescape: &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?) */
static void html_unescape(const cpbuf *in, cpbuf *out) {
    const int32_t *s = in->cp;
    size_t n = in->n, i = 0;
    while (i < n) {
        if (s[i] != '&') {
            push(out, s[i++]);
            continue;
        }
        size_t j = i + 1;
        if (j < n && s[j] == '#') {
            int base = 10;
            size_t k = j + 1;
            if (k < n && (s[k] == 'x' || s[k] == 'X')) base = 16, k++;
            size_t d0 = k;
            while (k < n && (base == 16 ? is_hex(s[k]) : is_digit(s[k]))) k++;
            if (k > d0) {
                push_charref(out, s + d0, k - d0, base);
                i = k < n && s[k] == ';' ? k + 1 : k;
                continue;
            }
            push(out, s[i++]);
            continue;
        }
        size_t k = j;
        while (k < n && k - j < 32 && s[k] != '\t' && s[k] != '\n' && s[k] != '\f' && s[k] != ' ' && s[k] != '<' &&
               s[k] != '&' && s[k] != '#' && s[k] != ';')
            k++;
        if (k == j) {
            push(out, s[i++]);
            continue;
        }
        size_t end = k < n && s[k] == ';' ? k + 1 : k; /* the matched name, with its ';' */
        /* Names are ASCII: the whole match is looked up only if it is ASCII,
         * and a prefix only within its leading ASCII characters (so
         * "&copy\u00a0" still gives "\u00a9\u00a0", as html.unescape does). */
        char name[40];
        size_t len = 0, ascii_len = 0;
        bool ascii = true;
        for (size_t t = j; t < end; t++) {
            if (s[t] > 127) ascii = false;
            if (ascii) ascii_len++;
            name[len++] = (char)s[t];
        }
        const char *value = ascii ? HTML5_LOOKUP(name, len) : NULL;
        if (value) {
            push_utf8(out, value);
            i = end;
            continue;
        }
        /* the longest prefix that is an entity (the legacy ones without ';') */
        size_t x = ascii_len < len - 1 ? ascii_len : len - 1;
        for (; x >= 2; x--)
            if ((value = HTML5_LOOKUP(name, x))) break;
        if (x >= 2 && value) {
            push_utf8(out, value);
            push_range(out, s + j + x, end - j - x);
        } else {
            push_range(out, s + i, end - i);
        }
        i = end;
    }
}

/* ftfy.fixes.unescape_html: only complete "&name;" / "&#...;" references. */
static void ftfy_unescape_html(const cpbuf *in, cpbuf *out) {
    const int32_t *s = in->cp;
    size_t n = in->n, i = 0;
    while (i < n) {
        if (s[i] == '&') {
            size_t j = i + 1;
            bool numeric = j < n && s[j] == '#';
            if (numeric) j++;
            size_t k = j;
            while (k < n && k - j < 24 && is_ascii_alnum(s[k])) k++;
            if (k > j && k < n && s[k] == ';') {
                char name[32];
                size_t len = 0;
                for (size_t t = j; t <= k; t++) name[len++] = (char)s[t];
                const char *value = NULL;
                if (!numeric) {
                    value = HTML5_LOOKUP(name, len);
                    if (!value)
                        value = entity_lookup(FTFY_UPPER_ENTITIES, sizeof FTFY_UPPER_ENTITIES / sizeof *FTFY_UPPER_ENTITIES,
                                              name, len);
                    if (value) {
                        push_utf8(out, value);
                        i = k + 1;
                        continue;
                    }
                } else {
                    /* html.unescape of the reference; kept only if it consumed the ';' */
                    cpbuf ref = {0}, dec = {0};
                    push_range(&ref, s + i, k + 1 - i);
                    html_unescape(&ref, &dec);
                    bool has_semicolon = false;
                    for (size_t t = 0; t < dec.n; t++) has_semicolon |= dec.cp[t] == ';';
                    if (!has_semicolon) {
                        push_range(out, dec.cp, dec.n);
                        i = k + 1;
                    }
                    free(ref.cp);
                    free(dec.cp);
                    if (!has_semicolon) continue;
                }
            }
        }
        push(out, s[i++]);
    }
}

/* ---- mojibake: ftfy's fix_encoding ---------------------------------------- */

/* ftfy 6.3.1's fix_encoding, step for step (ftfy/__init__.py,
 * _fix_encoding_one_step_and_explain): text that looks like mojibake
 * (is_bad: ftfy's BADNESS_RE) is re-encoded in the first of its single-byte
 * encodings that can hold it and decoded as UTF-8 (after restoring 0xA0
 * bytes that became spaces, and marking lossy sequences), else its
 * embedded UTF-8 runs are fixed alone (decode_inconsistent_utf8), else
 * Latin-1 is read as Windows-1252 and C1 controls as their Windows-1252
 * characters. The tables are ftfy's own (tools/gen_ftfy_tables.py). */
#include "ftfy_tables.inc"

static bool py_isspace(int32_t c);

/* Python's \w on str: [A-Za-z0-9_] and every letter or number */
static bool py_isword(int32_t c) {
    if (c == '_' || is_ascii_alnum(c)) return true;
    if (c < 0x80 || c > 0x10FFFF) return false;
    utf8proc_category_t k = utf8proc_category(c);
    return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) || (k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO);
}

static bool set_has(int index, int32_t c) {
    const ftfy_set *s = &FTFY_SETS[index];
    size_t lo = s->first, hi = (size_t)s->first + s->count;
    bool in = false;
    while (lo < hi && !in) { /* the ranges are sorted and disjoint */
        size_t mid = (lo + hi) / 2;
        if ((uint32_t)c < FTFY_RANGES[mid][0]) hi = mid;
        else if ((uint32_t)c > FTFY_RANGES[mid][1]) lo = mid + 1;
        else in = true;
    }
    if (!in && s->space) in = py_isspace(c);
    if (!in && s->word) in = py_isword(c);
    if (!in && s->digit) in = c >= 0 && c <= 0x10FFFF && utf8proc_category(c) == UTF8PROC_CATEGORY_ND;
    return s->negate ? !in : in;
}

/* One alternative of BADNESS_RE at pos (an optional element: with it first, as the regex). */
static bool match_elements(const ftfy_element *e, int k, const int32_t *t, size_t n, size_t pos) {
    if (k == 0) return true;
    if (e->kind == 2) return pos == 0 && match_elements(e + 1, k - 1, t, n, pos);
    bool here = pos < n && (e->kind == 1 ? t[pos] != '\n' : set_has(e->set, t[pos]));
    if (here && match_elements(e + 1, k - 1, t, n, pos + 1)) return true;
    return e->optional && match_elements(e + 1, k - 1, t, n, pos);
}

/* ftfy.badness.is_bad: BADNESS_RE.search(text) */
static bool is_bad(const int32_t *t, size_t n) {
    for (size_t pos = 0; pos < n; pos++)
        for (size_t a = 0; a < sizeof FTFY_BADNESS / sizeof *FTFY_BADNESS; a++)
            if (match_elements(FTFY_ELEMENTS + FTFY_BADNESS[a].first, FTFY_BADNESS[a].count, t, n, pos)) return true;
    return false;
}

/* The byte of c in encoding e, or -1 (possible_encoding's character set:
 * ASCII but 0x1A, and whatever bytes 0x80-0xFF and 0x1A decode to). */
static int encode_byte(int e, int32_t c) {
    if (c >= 0 && c < 0x80 && c != 0x1A) return c;
    if ((uint32_t)c == FTFY_DECODE[e][0x1A]) return 0x1A;
    for (int b = 0x80; b < 0x100; b++)
        if ((uint32_t)c == FTFY_DECODE[e][b]) return b;
    return -1;
}

/* text.encode(encoding) when chardata.possible_encoding says it can, into bytes[n] */
static bool encode_in(int e, const int32_t *t, size_t n, unsigned char *bytes) {
    for (size_t i = 0; i < n; i++) {
        int b = encode_byte(e, t[i]);
        if (b < 0) return false;
        bytes[i] = (unsigned char)b;
    }
    return true;
}

/* Byte patterns (ALTERED_UTF8_RE, LOSSY_UTF8_RE, A_GRAVE_WORD_RE): up to six
 * positions, each a class of bytes written as "lo-hi" pairs. */
typedef struct byte_pattern {
    int len;
    const char *cls[6]; /* each a string of lo,hi byte pairs */
} byte_pattern;

static bool byte_in(const char *cls, unsigned char b) {
    for (; cls[0]; cls += 2)
        if (b >= (unsigned char)cls[0] && b <= (unsigned char)cls[1]) return true;
    return false;
}

/* The first pattern (in order) matching at pos, or -1 */
static int match_bytes(const byte_pattern *p, int np, const unsigned char *b, size_t n, size_t pos) {
    for (int k = 0; k < np; k++) {
        bool ok = pos + (size_t)p[k].len <= n;
        for (int j = 0; ok && j < p[k].len; j++) ok = byte_in(p[k].cls[j], b[pos + (size_t)j]);
        if (ok) return k;
    }
    return -1;
}

#define ANY_CONT "\x80\xbf"
static const byte_pattern ALTERED_UTF8[] = { /* the spaces that were bytes 0xA0 */
    {2, {"\xc2\xc3\xc5\xc5\xce\xce\xd0\xd0\xd9\xd9", "  "}},
    {3, {"\xe2\xe3", "  ", "\x80\x84\x86\x9f\xa1\xbf"}},
    {3, {"\xe0\xe3", "\x80\x84\x86\x9f\xa1\xbf", "  "}},
    {4, {"\xf0\xf0", "  ", ANY_CONT, ANY_CONT}},
    {4, {"\xf0\xf0", ANY_CONT, "  ", ANY_CONT}},
    {4, {"\xf0\xf0", ANY_CONT, ANY_CONT, "  "}},
};
static const byte_pattern LOSSY_UTF8[] = { /* UTF-8 with lost bytes (0x1A, or one '?') */
    {2, {"\xc2\xdf", "\x1a\x1a"}},
    {2, {"\xc2\xc3", "??"}},
    {6, {"\xed\xed", "\xa0\xaf", "\x1a\x1a??", "\xed\xed", "\xb0\xbf", "\x1a\x1a??\x80\xbf"}},
    {6, {"\xed\xed", "\xa0\xaf", "\x1a\x1a??\x80\xbf", "\xed\xed", "\xb0\xbf", "\x1a\x1a??"}},
    {3, {"\xe0\xef", "\x1a\x1a??", "\x1a\x1a\x80\xbf"}},
    {3, {"\xe0\xef", "\x1a\x1a\x80\xbf", "\x1a\x1a??"}},
    {4, {"\xf0\xf4", "\x1a\x1a??", "\x1a\x1a\x80\xbf", "\x1a\x1a\x80\xbf"}},
    {4, {"\xf0\xf4", "\x1a\x1a\x80\xbf", "\x1a\x1a??", "\x1a\x1a\x80\xbf"}},
    {4, {"\xf0\xf4", "\x1a\x1a\x80\xbf", "\x1a\x1a\x80\xbf", "\x1a\x1a??"}},
    {1, {"\x1a\x1a"}},
};

/* fixes.restore_byte_a0: "\xc3 " not before " ", "quele", "quela", "quilo"
 * or "s " gets its 0xA0 back, then the spaces of ALTERED_UTF8 runs become
 * 0xA0. bytes[*n] grows by at most one byte per "\xc3 ". */
static void restore_byte_a0(unsigned char *bytes, size_t *n) {
    unsigned char *t = malloc(*n * 2 + 1);
    if (!t) return;
    size_t m = 0;
    static const char *const keep[] = {" ", "quele", "quela", "quilo", "s "};
    for (size_t i = 0; i < *n; i++) {
        t[m++] = bytes[i];
        if (bytes[i] != 0xC3 || i + 1 >= *n || bytes[i + 1] != ' ') continue;
        bool kept = false;
        for (size_t k = 0; k < 5 && !kept; k++)
            kept = *n - (i + 2) >= strlen(keep[k]) && !memcmp(bytes + i + 2, keep[k], strlen(keep[k]));
        if (!kept) t[m++] = 0xA0; /* "\xc3 " -> "\xc3\xa0 " */
    }
    for (size_t i = 0; i < m;) {
        int k = match_bytes(ALTERED_UTF8, 6, t, m, i);
        if (k < 0) {
            i++;
            continue;
        }
        for (int j = 0; j < ALTERED_UTF8[k].len; j++)
            if (t[i + (size_t)j] == ' ') t[i + (size_t)j] = 0xA0;
        i += (size_t)ALTERED_UTF8[k].len;
    }
    memcpy(bytes, t, m);
    *n = m;
    free(t);
}

static bool search_bytes(const byte_pattern *p, int np, const unsigned char *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (match_bytes(p, np, b, n, i) >= 0) return true;
    return false;
}

/* fixes.replace_lossy_sequences: each LOSSY_UTF8 run becomes U+FFFD's UTF-8
 * (out has room for 3 bytes per input byte). */
static size_t replace_lossy(const unsigned char *b, size_t n, unsigned char *out) {
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        int k = match_bytes(LOSSY_UTF8, 10, b, n, i);
        if (k < 0) {
            out[m++] = b[i++];
            continue;
        }
        out[m++] = 0xEF, out[m++] = 0xBF, out[m++] = 0xBD;
        i += (size_t)LOSSY_UTF8[k].len;
    }
    return m;
}

/* Python's strict UTF-8 decoder, or ftfy's "utf-8-variants" (variants:
 * also CESU-8 surrogate pairs and Java's C0 80 for U+0000). */
static bool decode_utf8_strict(const unsigned char *b, size_t n, bool variants, cpbuf *out) {
    size_t i = 0;
    while (i < n) {
        unsigned c = b[i];
        if (variants && c == 0xC0 && i + 1 < n && b[i + 1] == 0x80) {
            push(out, 0);
            i += 2;
            continue;
        }
        if (variants && c == 0xED && i + 5 < n && b[i + 1] >= 0xA0 && b[i + 1] <= 0xAF && b[i + 2] >= 0x80 &&
            b[i + 2] <= 0xBF && b[i + 3] == 0xED && b[i + 4] >= 0xB0 && b[i + 4] <= 0xBF && b[i + 5] >= 0x80 &&
            b[i + 5] <= 0xBF) {
            int32_t hi = 0xD000 | ((b[i + 1] & 0x3F) << 6) | (b[i + 2] & 0x3F);
            int32_t lo = 0xD000 | ((b[i + 4] & 0x3F) << 6) | (b[i + 5] & 0x3F);
            push(out, 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00));
            i += 6;
            continue;
        }
        int len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (len == 0 || i + (size_t)len > n) return false;
        unsigned lo2 = 0x80, hi2 = 0xBF; /* the second byte's range excludes overlongs, surrogates, > U+10FFFF */
        if (c == 0xE0) lo2 = 0xA0;
        else if (c == 0xED) hi2 = 0x9F;
        else if (c == 0xF0) lo2 = 0x90;
        else if (c == 0xF4) hi2 = 0x8F;
        int32_t cp = len == 1 ? (int32_t)c : (int32_t)(c & (0x7F >> len));
        for (int j = 1; j < len; j++) {
            unsigned cb = b[i + (size_t)j];
            if (cb < (j == 1 ? lo2 : 0x80) || cb > (j == 1 ? hi2 : 0xBF)) return false;
            cp = (cp << 6) | (int32_t)(cb & 0x3F);
        }
        push(out, cp);
        i += (size_t)len;
    }
    return true;
}

static void fix_encoding(const int32_t *t, size_t n, cpbuf *out, int depth);

/* fixes.decode_inconsistent_utf8: each run of UTF8_DETECTOR_RE (UTF-8 lead
 * and continuation characters of the single-byte encodings, not preceded by
 * a strict continuation character) that is shorter than the text and bad
 * is fixed on its own. */
static void decode_inconsistent_utf8(const int32_t *t, size_t n, cpbuf *out, int depth) {
    for (size_t i = 0; i < n;) {
        size_t end = i;
        if (i == 0 || !set_has(FTFY_UTF8_CONTINUATION_STRICT, t[i - 1]))
            for (;;) { /* ( first_of_2 cont | first_of_3 cont{2} | first_of_4 cont{3} )+ */
                static const int firsts[3] = {FTFY_UTF8_FIRST_OF_2, FTFY_UTF8_FIRST_OF_3, FTFY_UTF8_FIRST_OF_4};
                size_t unit = 0;
                for (int k = 0; k < 3 && !unit; k++) {
                    size_t need = (size_t)k + 2;
                    if (end + need > n || !set_has(firsts[k], t[end])) continue;
                    bool ok = true;
                    for (size_t j = 1; j < need && ok; j++) ok = set_has(FTFY_UTF8_CONTINUATION, t[end + j]);
                    if (ok) unit = need;
                }
                if (!unit) break;
                end += unit;
            }
        if (end == i) {
            push(out, t[i++]);
            continue;
        }
        if (end - i < n && is_bad(t + i, end - i)) fix_encoding(t + i, end - i, out, depth + 1);
        else push_range(out, t + i, end - i);
        i = end;
    }
}

/* One step of ftfy's fix_encoding; false when it leaves the text as it is. */
static bool fix_encoding_step(const int32_t *t, size_t n, cpbuf *out, int depth) {
    bool ascii = true;
    for (size_t i = 0; i < n && ascii; i++) ascii = t[i] < 0x80;
    if (n == 0 || ascii || !is_bad(t, n)) return false;
    unsigned char *bytes = malloc(n * 2 + 1), *lossless = malloc(n * 6 + 3);
    bool latin1 = false, fixed = false;
    for (int e = 0; e < FTFY_N_ENCODINGS && bytes && lossless && !fixed; e++) {
        if (!encode_in(e, t, n, bytes)) continue;
        latin1 |= e == 0;
        size_t m = n;
        if (strcmp(FTFY_ENCODING_NAMES[e], "macroman") && search_bytes(ALTERED_UTF8, 6, bytes, m)) restore_byte_a0(bytes, &m);
        if (!strncmp(FTFY_ENCODING_NAMES[e], "sloppy", 6)) m = replace_lossy(bytes, m, lossless);
        else memcpy(lossless, bytes, m);
        bool variants = memchr(lossless, 0xED, m) || memchr(lossless, 0xC0, m);
        size_t before = out->n;
        fixed = decode_utf8_strict(lossless, m, variants, out);
        if (!fixed) out->n = before;
    }
    free(bytes);
    free(lossless);
    if (fixed) return true;
    /* embedded UTF-8 runs */
    size_t before = out->n;
    if (depth < 8) {
        decode_inconsistent_utf8(t, n, out, depth);
        if (out->n - before != n || memcmp(out->cp + before, t, n * sizeof *t)) return true;
        out->n = before;
    }
    /* Latin-1 meant as Windows-1252 (strictly: the five undefined bytes fail) */
    if (latin1) {
        bool ok = true;
        for (size_t i = 0; i < n && ok; i++) {
            int32_t c = t[i];
            if (c >= 0x80 && c <= 0x9F) {
                uint32_t w = FTFY_DECODE[1][c];
                ok = w != (uint32_t)c; /* sloppy passes 81, 8D, 8F, 90, 9D through: strict fails */
                push(out, (int32_t)w);
            } else push(out, c);
        }
        bool changed = ok && (out->n - before != n || memcmp(out->cp + before, t, n * sizeof *t));
        if (changed) return true;
        out->n = before;
    }
    /* fix_c1_controls */
    bool c1 = false;
    for (size_t i = 0; i < n && !c1; i++) c1 = t[i] >= 0x80 && t[i] <= 0x9F;
    if (!c1) return false;
    for (size_t i = 0; i < n; i++) push(out, t[i] >= 0x80 && t[i] <= 0x9F ? (int32_t)FTFY_DECODE[1][t[i]] : t[i]);
    return true;
}

/* ftfy.fix_encoding: steps until the text stops changing. */
static void fix_encoding(const int32_t *t, size_t n, cpbuf *out, int depth) {
    cpbuf cur = {0}, next = {0};
    push_range(&cur, t, n);
    for (int round = 0; round < 16 && !cur.oom; round++) {
        next.n = 0;
        if (!fix_encoding_step(cur.cp, cur.n, &next, depth)) break;
        if (next.n == cur.n && (cur.n == 0 || !memcmp(next.cp, cur.cp, cur.n * sizeof *cur.cp))) break;
        cpbuf swap = cur;
        cur = next, next = swap;
    }
    push_range(out, cur.cp, cur.n);
    out->oom |= cur.oom || next.oom;
    free(cur.cp);
    free(next.cp);
}

/* ---- the per-character fixes ---------------------------------------------- */

static const struct { int32_t from; const char *to; } LIGATURES[] = {
    {0x0132, "IJ"}, {0x0133, "ij"}, {0x0149, "\xca\xbcn"}, {0x01F1, "DZ"}, {0x01F2, "Dz"}, {0x01F3, "dz"},
    {0x01C4, "D\xc5\xbd"}, {0x01C5, "D\xc5\xbe"}, {0x01C6, "d\xc5\xbe"}, {0x01C7, "LJ"}, {0x01C8, "Lj"},
    {0x01C9, "lj"}, {0x01CA, "NJ"}, {0x01CB, "Nj"}, {0x01CC, "nj"}, {0xFB00, "ff"}, {0xFB01, "fi"},
    {0xFB02, "fl"}, {0xFB03, "ffi"}, {0xFB04, "ffl"}, {0xFB05, "\xc5\xbft"}, {0xFB06, "st"},
};

static void push_nfkc(cpbuf *out, int32_t c) {
    utf8proc_uint8_t buf[8];
    utf8proc_ssize_t k = utf8proc_encode_char(c, buf);
    buf[k] = 0;
    utf8proc_uint8_t *norm = utf8proc_NFKC(buf);
    if (norm) {
        push_utf8(out, (const char *)norm);
        free(norm);
    } else {
        push(out, c);
    }
}

static bool is_control_to_remove(int32_t c) {
    return (c >= 0 && c <= 8) || c == 0xB || (c >= 0xE && c <= 0x1F) || c == 0x7F || (c >= 0x206A && c <= 0x206F) ||
           c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
}

/* fix_c1_controls .. remove_control_chars, in ftfy's order. Terminal
 * escapes (ESC '[' [0-9;]* [A-Za-z]) are dropped before the control pass. */
static void char_fixes(const cpbuf *in, cpbuf *out) {
    cpbuf a = {0}, b = {0};
    for (size_t i = 0; i < in->n; i++) { /* C1 controls, ligatures, width, quotes */
        int32_t c = in->cp[i];
        if (c >= 0x80 && c <= 0x9F) c = CP1252_HIGH[c - 0x80];
        bool done = false;
        for (size_t l = 0; l < sizeof LIGATURES / sizeof *LIGATURES && !done; l++)
            if (LIGATURES[l].from == c) {
                push_utf8(&a, LIGATURES[l].to);
                done = true;
            }
        if (done) continue;
        if (c == 0x3000) {
            push(&a, ' ');
        } else if (c >= 0xFF01 && c <= 0xFFEF) {
            push_nfkc(&a, c);
        } else {
            push(&a, c);
        }
    }
    for (size_t i = 0; i < a.n; i++) { /* quotes (after ligatures: ŉ gives U+02BC) */
        int32_t c = a.cp[i];
        if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B)) c = '\'';
        else if (c >= 0x201C && c <= 0x201F) c = '"';
        a.cp[i] = c;
    }
    for (size_t i = 0; i < a.n; i++) { /* line breaks */
        int32_t c = a.cp[i];
        if (c == '\r' && i + 1 < a.n && a.cp[i + 1] == '\n') continue;
        push(&b, (c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x85) ? '\n' : c);
    }
    for (size_t i = 0; i < b.n; i++) { /* terminal escapes, then control characters */
        if (b.cp[i] == 0x1B && i + 1 < b.n && b.cp[i + 1] == '[') {
            size_t k = i + 2;
            while (k < b.n && (is_digit(b.cp[k]) || b.cp[k] == ';')) k++;
            if (k < b.n && ((b.cp[k] | 0x20) >= 'a' && (b.cp[k] | 0x20) <= 'z')) {
                i = k;
                continue;
            }
        }
        if (!is_control_to_remove(b.cp[i])) push(out, b.cp[i]);
    }
    if (a.oom || b.oom) out->oom = true;
    free(a.cp);
    free(b.cp);
}

static void nfc(const cpbuf *in, cpbuf *out) {
    utf8proc_uint8_t *utf8 = malloc(in->n * 4 + 1);
    if (!utf8) {
        out->oom = true;
        return;
    }
    size_t len = 0;
    for (size_t i = 0; i < in->n; i++) len += (size_t)utf8proc_encode_char(in->cp[i], utf8 + len);
    utf8[len] = 0;
    utf8proc_uint8_t *norm = NULL;
    /* NUL-free by now: control characters are removed first. */
    norm = utf8proc_NFC(utf8);
    free(utf8);
    if (!norm) {
        out->oom = true;
        return;
    }
    push_utf8(out, (const char *)norm);
    free(norm);
}

static void swap_clear(cpbuf *a, cpbuf *b) {
    cpbuf t = *a;
    *a = *b;
    *b = t;
    b->n = 0;
    a->oom |= b->oom;
}

/* ftfy.fix_text: line by line (each line keeps its '\n'), each fixed until
 * stable. Once a line containing '<' is seen, HTML unescaping stays off. */
static void ftfy_fix_text(const cpbuf *in, cpbuf *out) {
    bool unescape = true;
    size_t pos = 0;
    while (pos < in->n) {
        size_t end = pos;
        while (end < in->n && in->cp[end] != '\n') end++;
        if (end < in->n) end++;
        cpbuf cur = {0}, next = {0}, orig = {0};
        push_range(&cur, in->cp + pos, end - pos);
        for (size_t i = 0; i < cur.n; i++)
            if (cur.cp[i] == '<') unescape = false;
        for (int round = 0; round < 16; round++) {
            orig.n = 0;
            push_range(&orig, cur.cp, cur.n);
            if (unescape) {
                ftfy_unescape_html(&cur, &next);
                swap_clear(&cur, &next);
            }
            fix_encoding(cur.cp, cur.n, &next, 0);
            swap_clear(&cur, &next);
            char_fixes(&cur, &next);
            swap_clear(&cur, &next);
            nfc(&cur, &next);
            swap_clear(&cur, &next);
            if (equal(&cur, &orig)) break;
        }
        push_range(out, cur.cp, cur.n);
        out->oom |= cur.oom || next.oom || orig.oom;
        free(cur.cp);
        free(next.cp);
        free(orig.cp);
        pos = end;
    }
}

/* ---- whitespace and case ------------------------------------------------------ */

/* Python's str.isspace(), which re's \s and str.strip() use. */
static bool py_isspace(int32_t c) {
    return (c >= 0x9 && c <= 0xD) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

static bool is_cased(int32_t c) {
    utf8proc_category_t cat = utf8proc_category(c);
    return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT ||
           utf8proc_tolower(c) != c || utf8proc_toupper(c) != c;
}

static bool is_case_ignorable(int32_t c) {
    utf8proc_category_t cat = utf8proc_category(c);
    return cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_ME || cat == UTF8PROC_CATEGORY_CF ||
           cat == UTF8PROC_CATEGORY_LM || cat == UTF8PROC_CATEGORY_SK || c == '\'' || c == '.' || c == ':' ||
           c == 0xB7 || c == 0x387 || c == 0x5F4 || c == 0x2018 || c == 0x2019 || c == 0x2024 || c == 0x2027 ||
           c == 0xFE13 || c == 0xFE52 || c == 0xFE55 || c == 0xFF07 || c == 0xFF0E || c == 0xFF1A;
}

/* Python's str.lower(): simple lower-case mappings, plus the full mapping of
 * U+0130 (i + combining dot) and (final_sigma) the final-sigma rule for
 * U+03A3, which a character lower-cased on its own does not get. */
static void py_lower_chars(const cpbuf *in, cpbuf *out, bool final_sigma) {
    for (size_t i = 0; i < in->n; i++) {
        int32_t c = in->cp[i];
        if (c == 0x130) {
            push(out, 'i');
            push(out, 0x307);
        } else if (c == 0x3A3 && final_sigma) {
            size_t j = i;
            bool before = false, after = false;
            while (j > 0 && is_case_ignorable(in->cp[j - 1])) j--;
            before = j > 0 && is_cased(in->cp[j - 1]);
            j = i + 1;
            while (j < in->n && is_case_ignorable(in->cp[j])) j++;
            after = j < in->n && is_cased(in->cp[j]);
            push(out, before && !after ? 0x3C2 : 0x3C3);
        } else {
            push(out, utf8proc_tolower(c));
        }
    }
}

static void py_lower(const cpbuf *in, cpbuf *out) { py_lower_chars(in, out, true); }

/* b as a malloc'd UTF-8 string; NULL with err set when any buffer ran out of memory (oom). */
static char *utf8_of(const cpbuf *b, bool oom, const char *what, clipc_error *err) {
    char *out = oom ? NULL : malloc(b->n * 4 + 1);
    if (!out) {
        clipc_fail(err, "out of memory %s", what);
        return NULL;
    }
    size_t o = 0;
    for (size_t i = 0; i < b->n; i++) o += (size_t)utf8proc_encode_char(b->cp[i], (utf8proc_uint8_t *)out + o);
    out[o] = 0;
    return out;
}

/* Appends the code points of text to b; -1 with err set on invalid UTF-8. */
static int decode_utf8(const char *text, cpbuf *b, clipc_error *err) {
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)text;
    size_t len = strlen(text), pos = 0;
    while (pos < len) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(p + pos, (utf8proc_ssize_t)(len - pos), &c);
        if (k <= 0) return clipc_fail(err, "invalid UTF-8 at byte %zu", pos);
        push(b, c);
        pos += (size_t)k;
    }
    return 0;
}

char *text_clean(const char *text, clipc_error *err) {
    cpbuf in = {0}, a = {0}, b = {0};
    if (decode_utf8(text, &in, err)) {
        free(in.cp);
        return NULL;
    }
    ftfy_fix_text(&in, &a);
    html_unescape(&a, &b);
    a.n = 0;
    html_unescape(&b, &a);
    /* collapse whitespace runs to one space, strip both ends */
    b.n = 0;
    bool pending = false;
    for (size_t i = 0; i < a.n; i++) {
        if (py_isspace(a.cp[i])) {
            pending = b.n > 0;
            continue;
        }
        if (pending) push(&b, ' ');
        pending = false;
        push(&b, a.cp[i]);
    }
    a.n = 0;
    py_lower(&b, &a);
    char *out = utf8_of(&a, in.oom || a.oom || b.oom, "cleaning text", err);
    free(in.cp);
    free(a.cp);
    free(b.cp);
    return out;
}

/* ---- SigLIP's canonical text ------------------------------------------------ */

/* string.punctuation: the 32 ASCII punctuation characters. */
static bool is_ascii_punctuation(int32_t c) {
    return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) || (c >= 0x7B && c <= 0x7E);
}

char *text_siglip_canonical(const char *text, bool lower, clipc_error *err) {
    /* SiglipTokenizer.tokenize: "▁" + text.replace("▁", " "), lower-cased
     * (do_lower_case), then canonicalize_text (big_vision's): punctuation
     * removed, re.sub(r"\s+", " "), strip(). */
    cpbuf in = {0}, a = {0};
    push(&in, 0x2581);
    if (decode_utf8(text, &in, err)) {
        free(in.cp);
        return NULL;
    }
    for (size_t i = 1; i < in.n; i++)
        if (in.cp[i] == 0x2581) in.cp[i] = ' ';
    const cpbuf *src = &in;
    cpbuf low = {0};
    if (lower) { /* Hugging Face's do_lower_case lower-cases one character at a time (re.sub of "(.+?)") */
        py_lower_chars(&in, &low, false);
        src = &low;
    }
    bool space = false;
    for (size_t i = 0; i < src->n; i++) {
        int32_t c = src->cp[i];
        if (is_ascii_punctuation(c)) continue;
        if (py_isspace(c)) {
            space = true;
            continue;
        }
        if (space && a.n > 0) push(&a, ' '); /* strip(): no space leads (the "▁" does) or trails */
        space = false;
        push(&a, c);
    }
    char *out = utf8_of(&a, in.oom || a.oom || low.oom, "canonicalising text", err);
    free(in.cp);
    free(a.cp);
    free(low.cp);
    return out;
}
