/* npy.c — NumPy .npy files, format 1.0/2.0, little-endian C order: the
 * exchange format of `clipc preprocess` and `clipc embed` and of the
 * reference fixtures. */
#include "../internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t dtype_size(const char *d) {
    if (!strcmp(d, "<f4") || !strcmp(d, "<i4")) return 4;
    if (!strcmp(d, "<i8") || !strcmp(d, "<f8")) return 8;
    if (!strcmp(d, "|u1")) return 1;
    if (!strcmp(d, "<f2")) return 2;
    return 0;
}

int npy_read(const char *path, npy_array *out, clipc_error *err) {
    memset(out, 0, sizeof *out);
    unsigned char *buf;
    size_t len;
    if (read_file(path, &buf, &len, err)) return -1;
    if (len < 10 || memcmp(buf, "\x93NUMPY", 6) != 0) {
        free(buf);
        return clipc_fail(err, "%s: not a .npy file", path);
    }
    size_t hlen, hstart;
    if (buf[6] == 1) {
        hlen = buf[8] | (size_t)buf[9] << 8;
        hstart = 10;
    } else if (len >= 12) {
        hlen = buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 | (size_t)buf[11] << 24;
        hstart = 12;
    } else {
        free(buf);
        return clipc_fail(err, "%s: truncated .npy header", path);
    }
    if (hstart + hlen > len || hlen > 65536) {
        free(buf);
        return clipc_fail(err, "%s: truncated .npy header", path);
    }
    char header[65537];
    memcpy(header, buf + hstart, hlen);
    header[hlen] = 0;
    const char *d = strstr(header, "'descr':");
    const char *f = strstr(header, "'fortran_order':");
    const char *s = strstr(header, "'shape':");
    if (!d || !f || !s) {
        free(buf);
        return clipc_fail(err, "%s: malformed .npy header", path);
    }
    d = strchr(d + 8, '\'');
    if (!d || sscanf(d + 1, "%7[^']", out->dtype) != 1 || !dtype_size(out->dtype)) {
        free(buf);
        return clipc_fail(err, "%s: unsupported .npy dtype", path);
    }
    if (strncmp(f + 16, " False", 6) != 0) {
        free(buf);
        return clipc_fail(err, "%s: Fortran-order .npy arrays are not supported", path);
    }
    s = strchr(s, '(');
    if (!s) {
        free(buf);
        return clipc_fail(err, "%s: malformed .npy shape", path);
    }
    s++;
    out->count = 1;
    while (*s && *s != ')') {
        char *end;
        long long v = strtoll(s, &end, 10);
        if (end == s) {
            s++;
            continue;
        }
        if (out->ndim == 8 || v < 0) {
            free(buf);
            return clipc_fail(err, "%s: unsupported .npy shape", path);
        }
        out->shape[out->ndim++] = v;
        if (!size_mul(out->count, (size_t)v, &out->count)) {
            free(buf);
            return clipc_fail(err, "%s: .npy shape too large", path);
        }
        s = end;
    }
    size_t esz = dtype_size(out->dtype), need;
    if (!size_mul(out->count, esz, &need)) {
        free(buf);
        return clipc_fail(err, "%s: .npy shape too large", path);
    }
    if (len - hstart - hlen < need) {
        free(buf);
        return clipc_fail(err, "%s: truncated .npy data (%zu of %zu bytes)", path,
                          len - hstart - hlen, need);
    }
    out->data = malloc(need ? need : 1);
    if (!out->data) {
        free(buf);
        return clipc_fail(err, "%s: out of memory", path);
    }
    memcpy(out->data, buf + hstart + hlen, need);
    free(buf);
    return 0;
}

void npy_free(npy_array *a) {
    free(a->data);
    a->data = NULL;
}

int npy_write(const char *path, const char *dtype, int ndim, const int64_t *shape,
              const void *data, clipc_error *err) {
    char header[256];
    char shp[160] = "";
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        char part[32];
        snprintf(part, sizeof part, "%lld%s", (long long)shape[i], ndim == 1 ? "," : (i + 1 < ndim ? ", " : ""));
        strncat(shp, part, sizeof shp - strlen(shp) - 1);
        count *= (size_t)shape[i];
    }
    int n = snprintf(header, sizeof header, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }",
                     dtype, shp);
    /* Pad so the data starts on a 64-byte boundary, ending with '\n'. */
    int total = 10 + n + 1;
    int pad = (64 - total % 64) % 64;
    size_t hlen = (size_t)(n + pad + 1);
    size_t esz = dtype_size(dtype);
    size_t len = 10 + hlen + count * esz;
    unsigned char *buf = malloc(len);
    if (!buf) return clipc_fail(err, "%s: out of memory", path);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (unsigned char)(hlen & 0xff);
    buf[9] = (unsigned char)(hlen >> 8);
    memcpy(buf + 10, header, (size_t)n);
    memset(buf + 10 + n, ' ', (size_t)pad);
    buf[10 + hlen - 1] = '\n';
    if (count) memcpy(buf + 10 + hlen, data, count * esz);
    int rc = write_file_atomic(path, buf, len, err);
    free(buf);
    return rc;
}
