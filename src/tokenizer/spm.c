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

#define SPM_MAX_FILE (64u << 20) /* the largest tokenizer model accepted (Gemma's is 4 MB) */

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
    if (len > SPM_MAX_FILE) {
        clipc_fail(err, "%s: %zu MiB is too large for a SentencePiece model (at most %u MiB)", path, len >> 20,
                   SPM_MAX_FILE >> 20);
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
