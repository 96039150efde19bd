/* spm.c — the SentencePiece tokenizers of SigLIP and SigLIP 2, as
 * Hugging Face's tokenizers drive them:
 *
 *   SigLIP (SiglipTokenizer, a T5 unigram spiece.model):
 *       text = canonicalize("▁" + lower(text))     (clean.c)
 *       ids  = sp.encode("<unk>" + text)[len(sp.encode("<unk>")):] + [</s>]
 *   with the model's add_dummy_prefix switched off, as the tokenizer does;
 *   SigLIP 2 (GemmaTokenizer, a BPE tokenizer.model):
 *       ids  = [<bos>] + sp.encode(text)
 *   then padded to the model's text length with the pad id
 *   (padding="max_length", as SigLIP was trained: the text tower pools the
 *   last position, padding included).
 *
 * A tokenizer_config.json beside the .model file, when there is one, says
 * which of the two it is (tokenizer_class) and overrides the defaults
 * (do_lower_case, add_bos_token, add_eos_token, the special tokens,
 * padding_side). Special-token strings inside a text are ordinary text
 * here (Hugging Face would split them out). */
#include "../internal.h"
#include "spm.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { SPM_SIGLIP, SPM_GEMMA };

struct spm_tokenizer {
    spm_model *model;
    int style;
    bool lower, add_bos, add_eos, pad_left;
    int bos_id, eos_id, pad_id;
    int unk_len; /* SigLIP: the pieces of "<unk>", dropped from the front */
};


/* ---- the normaliser's charsmap, checked before libsentencepiece sees it ----
 *
 * SentencePiece normalises text through a "precompiled charsmap" stored in
 * the model (NormalizerSpec.precompiled_charsmap): a little-endian u32 trie
 * size, a Darts-clone double array of that many bytes, then NUL-terminated
 * replacement strings that the trie's leaves point into. The library trusts
 * it: its Darts lookup indexes the array without bounds, and the normaliser
 * reads the string at a leaf's offset with strlen (a mutated model file
 * crashed clipc's fuzz target there). So every node a text can reach is
 * walked here first, and the model is refused unless each array index it
 * can touch is inside the array and each leaf names a terminated string. */

/* One protobuf varint; false when it runs past end or beyond 64 bits. */
static bool pb_varint(const unsigned char **p, const unsigned char *end, uint64_t *v) {
    *v = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        unsigned char b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return true;
    }
    return false;
}

/* Calls found(ctx, bytes, len) for each occurrence of length-delimited
 * field `field` in the message [p, end), in order (protobuf: for a bytes
 * field the last wins, an embedded message merges). -1 on malformed wire
 * data or a group (wire types 3/4, which clipc does not read). */
static int pb_fields(const unsigned char *p, const unsigned char *end, uint64_t field,
                     void (*found)(void *ctx, const unsigned char *bytes, size_t len), void *ctx) {
    while (p < end) {
        uint64_t key, v;
        if (!pb_varint(&p, end, &key)) return -1;
        switch (key & 7) {
        case 0: if (!pb_varint(&p, end, &v)) return -1; break;
        case 1: if (end - p < 8) return -1; p += 8; break;
        case 5: if (end - p < 4) return -1; p += 4; break;
        case 2:
            if (!pb_varint(&p, end, &v) || v > (uint64_t)(end - p)) return -1;
            if (key >> 3 == field) found(ctx, p, (size_t)v);
            p += v;
            break;
        default: return -1;
        }
    }
    return 0;
}

typedef struct charsmap {
    const unsigned char *bytes; /* the last precompiled_charsmap seen, as protobuf keeps it */
    size_t len;
    bool malformed;
} charsmap;

static void found_charsmap(void *ctx, const unsigned char *bytes, size_t len) {
    charsmap *c = ctx;
    c->bytes = bytes, c->len = len;
}

static void found_normalizer(void *ctx, const unsigned char *bytes, size_t len) {
    charsmap *c = ctx; /* NormalizerSpec field 2: precompiled_charsmap */
    if (pb_fields(bytes, bytes + len, 2, found_charsmap, c)) c->malformed = true;
}

/* Darts-clone's unit fields (darts.h: DoubleArrayUnit). */
static uint32_t darts_unit(const unsigned char *a, uint32_t i) {
    return (uint32_t)a[4 * (size_t)i] | (uint32_t)a[4 * (size_t)i + 1] << 8 | (uint32_t)a[4 * (size_t)i + 2] << 16 |
           (uint32_t)a[4 * (size_t)i + 3] << 24;
}
static bool darts_has_leaf(uint32_t u) { return (u >> 8) & 1; }
static uint32_t darts_value(uint32_t u) { return u & 0x7fffffffu; }
static uint32_t darts_label(uint32_t u) { return u & (0x80000000u | 0xffu); }
static uint32_t darts_offset(uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }

/* Every lookup path of the trie, as Darts' commonPrefixSearch takes it for
 * any text: from base b, byte c reads unit b ^ c (so b | 0xff must be in
 * the array); a unit whose label is c moves to b' = (b ^ c) ^ offset, and
 * when it has a leaf, unit b' holds the offset of a replacement string. */
static int check_trie(const unsigned char *trie, uint32_t units, const unsigned char *strings, size_t strings_len,
                      const char *path, clipc_error *err) {
    if (units == 0) return clipc_fail(err, "%s: the normaliser's charsmap has an empty trie", path);
    unsigned char *seen = calloc((size_t)units / 8 + 1, 1);
    uint32_t *stack = malloc((size_t)units * sizeof *stack);
    if (!seen || !stack) {
        free(seen), free(stack);
        return clipc_fail(err, "out of memory");
    }
    int rc = 0;
    size_t top = 0;
    uint32_t root = darts_offset(darts_unit(trie, 0));
    stack[top++] = root;
    if (root < units) seen[root / 8] |= (unsigned char)(1u << (root % 8));
    while (top && rc == 0) {
        uint32_t base = stack[--top];
        if ((base | 0xffu) >= units) {
            rc = clipc_fail(err, "%s: the normaliser's charsmap points outside its trie (refused)", path);
            break;
        }
        for (uint32_t c = 0; c < 256 && rc == 0; c++) {
            uint32_t child = base ^ c, u = darts_unit(trie, child);
            if (darts_label(u) != c) continue;
            uint32_t next = child ^ darts_offset(u);
            if (next >= units) {
                rc = clipc_fail(err, "%s: the normaliser's charsmap points outside its trie (refused)", path);
                break;
            }
            if (darts_has_leaf(u)) {
                uint32_t at = darts_value(darts_unit(trie, next));
                if (at >= strings_len || !memchr(strings + at, 0, strings_len - at))
                    rc = clipc_fail(err, "%s: the normaliser's charsmap names a replacement outside its strings "
                                         "(refused)", path);
            }
            if (!(seen[next / 8] & (1u << (next % 8)))) {
                seen[next / 8] |= (unsigned char)(1u << (next % 8));
                stack[top++] = next;
            }
        }
    }
    free(seen), free(stack);
    return rc;
}

/* The model file's charsmap (ModelProto field 3, normalizer_spec), checked
 * as described above; a model without one normalises nothing and passes. */
static int check_charsmap(const unsigned char *data, size_t len, const char *path, clipc_error *err) {
    charsmap c = {0};
    if (pb_fields(data, data + len, 3, found_normalizer, &c) || c.malformed)
        return clipc_fail(err, "%s: not a SentencePiece model (malformed protobuf)", path);
    if (!c.len) return 0;
    if (c.len < 4) return clipc_fail(err, "%s: the normaliser's charsmap is truncated", path);
    uint32_t trie_len = darts_unit(c.bytes, 0);
    if (trie_len > c.len - 4 || trie_len % 4)
        return clipc_fail(err, "%s: the normaliser's charsmap claims a %u-byte trie in %zu bytes", path, trie_len,
                          c.len - 4);
    return check_trie(c.bytes + 4, trie_len / 4, c.bytes + 4 + trie_len, c.len - 4 - trie_len, path, err);
}

void spm_tokenizer_free(spm_tokenizer *t) {
    if (!t) return;
    spm_free(t->model);
    free(t);
}

/* A special token in tokenizer_config.json: a string or {"content": ...}. */
static const char *json_token(cJSON *cfg, const char *key, const char *fallback) {
    cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(v) ? v->valuestring : fallback;
}

static bool json_bool(cJSON *cfg, const char *key, bool fallback) {
    cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : fallback;
}

static int special_id(const spm_tokenizer *t, const char *path, const char *what, const char *piece, int *id,
                      clipc_error *err) {
    *id = spm_piece_id(t->model, piece);
    if (*id < 0) return clipc_fail(err, "%s: the model has no %s token '%s'", path, what, piece);
    return 0;
}

/* The tokenizer_config.json beside path (NULL when there is none). */
static int read_config(const char *path, cJSON **cfg, clipc_error *err) {
    char cfg_path[4096];
    const char *slash = strrchr(path, '/');
    snprintf(cfg_path, sizeof cfg_path, "%.*stokenizer_config.json", slash ? (int)(slash - path + 1) : 0, path);
    *cfg = NULL;
    if (access(cfg_path, F_OK) != 0) return 0;
    unsigned char *text;
    size_t len;
    if (read_file(cfg_path, &text, &len, err)) return -1;
    *cfg = cJSON_ParseWithLength((const char *)text, len);
    free(text);
    if (!*cfg || !cJSON_IsObject(*cfg)) {
        cJSON_Delete(*cfg);
        *cfg = NULL;
        return clipc_fail(err, "%s: not a JSON object", cfg_path);
    }
    return 0;
}

spm_tokenizer *spm_tokenizer_load(const char *path, clipc_error *err) {
    size_t len;
    int fd = open_regular_file(path, &len, err);
    if (fd < 0) return NULL;
    close(fd);
    if ((long long)len > limit_of(LIMIT_SPM_BYTES)) {
        clipc_fail(err, "%s: %zu bytes is too large for a SentencePiece model (at most %lld; %s raises it)", path, len,
                   limit_of(LIMIT_SPM_BYTES), limit_env(LIMIT_SPM_BYTES));
        return NULL;
    }
    cJSON *cfg;
    if (read_config(path, &cfg, err)) return NULL;
    spm_tokenizer *t = calloc(1, sizeof *t);
    unsigned char *data = NULL;
    if (!t) {
        clipc_fail(err, "out of memory");
        goto fail;
    }
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    t->style = !strcmp(base, "tokenizer.model") ? SPM_GEMMA : SPM_SIGLIP;
    const char *cls = json_token(cfg, "tokenizer_class", NULL);
    if (cls && !strcmp(cls, "SiglipTokenizer")) t->style = SPM_SIGLIP;
    else if (cls && (!strcmp(cls, "GemmaTokenizer") || !strcmp(cls, "GemmaTokenizerFast"))) t->style = SPM_GEMMA;
    else if (cls) {
        clipc_fail(err, "%s: tokenizer_class '%s' is not supported (SiglipTokenizer or GemmaTokenizer)", path, cls);
        goto fail;
    }
    bool siglip = t->style == SPM_SIGLIP;
    t->lower = json_bool(cfg, "do_lower_case", siglip);
    t->add_bos = json_bool(cfg, "add_bos_token", !siglip);
    t->add_eos = json_bool(cfg, "add_eos_token", siglip);
    cJSON *side = cJSON_GetObjectItemCaseSensitive(cfg, "padding_side");
    t->pad_left = cJSON_IsString(side) && !strcmp(side->valuestring, "left");

    if (read_file(path, &data, &len, err)) goto fail;
    if (siglip) { /* SiglipTokenizer's normalizer_spec.add_dummy_prefix = False, as a protobuf merge:
                   * ModelProto field 3 (normalizer_spec) { field 3 (add_dummy_prefix): 0 } */
        unsigned char *grown = realloc(data, len + 4);
        if (!grown) {
            clipc_fail(err, "out of memory");
            goto fail;
        }
        data = grown;
        memcpy(data + len, "\x1a\x02\x18\x00", 4);
        len += 4;
    }
    char msg[256];
    if (check_charsmap(data, len, path, err)) goto fail;
    if (!(t->model = spm_load(data, len, msg, sizeof msg))) {
        clipc_fail(err, "%s: %s", path, msg);
        goto fail;
    }
    free(data);
    data = NULL;
    const char *eos = json_token(cfg, "eos_token", siglip ? "</s>" : "<eos>");
    if ((t->add_eos && special_id(t, path, "end-of-text", eos, &t->eos_id, err)) ||
        (t->add_bos && special_id(t, path, "start-of-text", json_token(cfg, "bos_token", "<bos>"), &t->bos_id, err)) ||
        special_id(t, path, "padding", json_token(cfg, "pad_token", siglip ? "</s>" : "<pad>"), &t->pad_id, err))
        goto fail;
    if (siglip) {
        int32_t *ids;
        if (spm_encode(t->model, "<unk>", 5, &ids, &t->unk_len, msg, sizeof msg)) {
            clipc_fail(err, "%s: %s", path, msg);
            goto fail;
        }
        free(ids);
    }
    cJSON_Delete(cfg);
    return t;
fail:
    free(data);
    cJSON_Delete(cfg);
    spm_tokenizer_free(t);
    return NULL;
}

int spm_tokenizer_vocab(const spm_tokenizer *t) { return spm_piece_count(t->model); }

int spm_tokenizer_encode(const spm_tokenizer *t, const char *text, int32_t **ids, int *n, clipc_error *err) {
    char msg[256];
    *ids = NULL;
    *n = 0;
    if (t->style == SPM_GEMMA) {
        if (spm_encode(t->model, text, strlen(text), ids, n, msg, sizeof msg)) return clipc_fail(err, "%s", msg);
        return 0;
    }
    char *canon = text_siglip_canonical(text, t->lower, err);
    if (!canon) return -1;
    size_t len = strlen(canon);
    char *withunk = malloc(len + 6);
    if (!withunk) {
        free(canon);
        return clipc_fail(err, "out of memory");
    }
    memcpy(withunk, "<unk>", 5);
    memcpy(withunk + 5, canon, len + 1);
    free(canon);
    int rc = spm_encode(t->model, withunk, len + 5, ids, n, msg, sizeof msg);
    free(withunk);
    if (rc) return clipc_fail(err, "%s", msg);
    if (*n >= t->unk_len) { /* drop the pieces of the "<unk>" prefix */
        memmove(*ids, *ids + t->unk_len, (size_t)(*n - t->unk_len) * sizeof **ids);
        *n -= t->unk_len;
    }
    return 0;
}

int spm_tokenizer_row(const spm_tokenizer *t, const char *text, int context, int truncate, int32_t *out,
                      clipc_error *err) {
    int specials = t->add_bos + t->add_eos;
    if (context <= specials) return clipc_fail(err, "context length %d is too short for the special tokens", context);
    int32_t *ids;
    int n;
    if (spm_tokenizer_encode(t, text, &ids, &n, err)) return -1;
    if (n + specials > context && !truncate) {
        free(ids);
        return clipc_fail(err, "text of %d tokens is too long for context length %d", n + specials, context);
    }
    /* Hugging Face's truncation: the text's ids are cut, then the special tokens added */
    int keep = n + specials > context ? context - specials : n, used = keep + specials;
    int32_t *row = out + (t->pad_left ? context - used : 0);
    for (int i = 0; i < context; i++) out[i] = t->pad_id;
    int k = 0;
    if (t->add_bos) row[k++] = t->bos_id;
    memcpy(row + k, ids, (size_t)keep * sizeof *ids);
    k += keep;
    if (t->add_eos) row[k] = t->eos_id;
    free(ids);
    return 0;
}
