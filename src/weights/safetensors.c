/* safetensors.c — the .safetensors container: an 8-byte little-endian
 * header length, a JSON header naming each tensor's dtype, shape and byte
 * range, then the raw data. Files are memory-mapped; every header field is
 * checked against the file before any tensor is touched. */
#include "../internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int parse_dtype(const char *s, size_t *size) {
    static const struct { const char *name; int dtype; size_t size; } table[] = {
        {"F32", ST_F32, 4}, {"F16", ST_F16, 2}, {"BF16", ST_BF16, 2},
        {"I64", ST_I64, 8}, {"I32", ST_I32, 4},
        {"I8", ST_I8, 1}, {"F64", ST_OTHER, 8}, {"U8", ST_OTHER, 1},
        {"I16", ST_OTHER, 2}, {"BOOL", ST_OTHER, 1},
    };
    for (size_t i = 0; i < sizeof table / sizeof *table; i++)
        if (!strcmp(s, table[i].name)) {
            *size = table[i].size;
            return table[i].dtype;
        }
    return -1;
}

void st_close(st_file *f) {
    for (int i = 0; i < f->count; i++) {
        free(f->tensors[i].name);
        if (f->owned) free(f->owned[i]);
    }
    free(f->owned);
    free(f->tensors);
    free(f->metadata_json);
    if (f->map) munmap(f->map, f->map_len);
    memset(f, 0, sizeof *f);
}

int st_open(const char *path, st_file *f, clipc_error *err) {
    memset(f, 0, sizeof *f);
    size_t len;
    int fd = open_regular_file(path, &len, err);
    if (fd < 0) return -1;
    if (len < 8) {
        close(fd);
        return clipc_fail(err, "%s: not a safetensors file (only %zu bytes)", path, len);
    }
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return clipc_fail(err, "%s: mmap failed: %s", path, strerror(errno));
    f->map = map;
    f->map_len = len;
    const unsigned char *p = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | p[i];
    if (hlen > (uint64_t)limit_of(LIMIT_SAFETENSORS_HEADER_BYTES)) {
        st_close(f);
        return clipc_fail(err, "%s: a %llu-byte safetensors header is over the limit of %lld (%s raises it)", path,
                          (unsigned long long)hlen, limit_of(LIMIT_SAFETENSORS_HEADER_BYTES),
                          limit_env(LIMIT_SAFETENSORS_HEADER_BYTES));
    }
    if (hlen < 2 || hlen > len - 8) {
        st_close(f);
        return clipc_fail(err, "%s: not a safetensors file (bad header length %llu)", path,
                          (unsigned long long)hlen);
    }
    cJSON *root = cJSON_ParseWithLength((const char *)p + 8, (size_t)hlen);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        st_close(f);
        return clipc_fail(err, "%s: not a safetensors file (header is not a JSON object)", path);
    }
    const unsigned char *data = p + 8 + hlen;
    size_t data_len = len - 8 - (size_t)hlen;
    int n = cJSON_GetArraySize(root);
    f->tensors = calloc((size_t)n + 1, sizeof *f->tensors);
    if (!f->tensors) goto oom;
    for (cJSON *e = root->child; e; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) {
            f->metadata_json = cJSON_PrintUnformatted(e);
            if (!f->metadata_json) goto oom;
            continue;
        }
        st_tensor *t = &f->tensors[f->count];
        cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
        cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        size_t esz = 0;
        if (!cJSON_IsString(dt) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs) ||
            cJSON_GetArraySize(offs) != 2 || cJSON_GetArraySize(shape) > 8) {
            clipc_fail(err, "%s: tensor '%s' has a malformed header entry", path, e->string);
            goto fail;
        }
        t->dtype = parse_dtype(dt->valuestring, &esz);
        if (t->dtype < 0) {
            clipc_fail(err, "%s: tensor '%s' has unknown dtype '%s'", path, e->string, dt->valuestring);
            goto fail;
        }
        size_t numel = 1;
        for (cJSON *d = shape->child; d; d = d->next) {
            if (!cJSON_IsNumber(d) || d->valuedouble < 0 || d->valuedouble > 1e12) {
                clipc_fail(err, "%s: tensor '%s' has a bad shape", path, e->string);
                goto fail;
            }
            t->shape[t->ndim++] = (int64_t)d->valuedouble;
            if (!size_mul(numel, (size_t)d->valuedouble, &numel)) {
                clipc_fail(err, "%s: tensor '%s' has a shape too large", path, e->string);
                goto fail;
            }
        }
        double b = cJSON_GetArrayItem(offs, 0)->valuedouble, en = cJSON_GetArrayItem(offs, 1)->valuedouble;
        size_t bytes;
        if (b < 0 || en < b || en > (double)data_len || !size_mul(numel, esz, &bytes) || (size_t)(en - b) != bytes) {
            clipc_fail(err, "%s: tensor '%s' has data offsets outside the file or not matching its shape (file truncated?)",
                       path, e->string);
            goto fail;
        }
        t->name = strdup(e->string);
        if (!t->name) goto oom;
        t->data = data + (size_t)b;
        t->nbytes = (size_t)(en - b);
        f->count++;
    }
    cJSON_Delete(root);
    return 0;
oom:
    clipc_fail(err, "%s: out of memory reading header", path);
fail:
    cJSON_Delete(root);
    st_close(f);
    return -1;
}

const st_tensor *st_find(const st_file *f, const char *name) {
    for (int i = 0; i < f->count; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

void st_to_f32(const st_tensor *t, float *dst) {
    size_t n = t->nbytes / (t->dtype == ST_F32 ? 4 : 2);
    const unsigned char *p = t->data;
    if (t->dtype == ST_F32) {
        memcpy(dst, p, t->nbytes);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t h = (uint16_t)(p[2 * i] | p[2 * i + 1] << 8);
        dst[i] = t->dtype == ST_F16 ? f16_to_f32(h) : bf16_to_f32(h);
    }
}

char *st_metadata_get(const st_file *f, const char *key) {
    if (!f->metadata_json) return NULL;
    cJSON *m = cJSON_Parse(f->metadata_json);
    cJSON *v = cJSON_GetObjectItemCaseSensitive(m, key);
    char *s = cJSON_IsString(v) ? strdup(v->valuestring) : NULL;
    cJSON_Delete(m);
    return s;
}

int st_write(const char *path, const st_out_tensor *tensors, int count, const char *const *meta_keys,
             const char *const *meta_values, int meta_count, clipc_error *err) {
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
    for (int i = 0; i < meta_count; i++) cJSON_AddStringToObject(meta, meta_keys[i], meta_values[i]);
    size_t offset = 0;
    for (int i = 0; i < count; i++) {
        const st_out_tensor *t = &tensors[i];
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= (size_t)t->shape[d];
        size_t esz = t->dtype == ST_F32 ? 4 : t->dtype == ST_I8 ? 1 : 2;
        cJSON *e = cJSON_AddObjectToObject(root, t->name);
        cJSON_AddStringToObject(e, "dtype",
                                t->dtype == ST_F16 ? "F16" : t->dtype == ST_BF16 ? "BF16" : t->dtype == ST_I8 ? "I8" : "F32");
        cJSON *shape = cJSON_AddArrayToObject(e, "shape");
        for (int d = 0; d < t->ndim; d++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
        cJSON *offs = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)offset));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(offset + numel * esz)));
        offset += numel * esz;
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!json) return clipc_fail(err, "%s: out of memory", path);
    size_t jlen = strlen(json), padded = (jlen + 7) / 8 * 8;
    size_t total = 8 + padded + offset;
    unsigned char *buf = malloc(total);
    if (!buf) {
        free(json);
        return clipc_fail(err, "%s: out of memory (%zu MiB)", path, total >> 20);
    }
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, json, jlen);
    memset(buf + 8 + jlen, ' ', padded - jlen);
    free(json);
    unsigned char *dst = buf + 8 + padded;
    for (int i = 0; i < count; i++) {
        size_t numel = 1;
        for (int d = 0; d < tensors[i].ndim; d++) numel *= (size_t)tensors[i].shape[d];
        const float *src = tensors[i].data;
        if (tensors[i].dtype == ST_F32 || tensors[i].dtype == ST_I8) {
            size_t bytes = numel * (tensors[i].dtype == ST_I8 ? 1 : 4);
            memcpy(dst, src, bytes);
            dst += bytes;
            continue;
        }
        for (size_t j = 0; j < numel; j++, dst += 2) { /* little-endian 16-bit */
            uint16_t h = tensors[i].dtype == ST_F16 ? f32_to_f16(src[j]) : f32_to_bf16(src[j]);
            dst[0] = (unsigned char)(h & 0xff);
            dst[1] = (unsigned char)(h >> 8);
        }
    }
    int rc = write_file_atomic(path, buf, total, err);
    free(buf);
    return rc;
}
