/* limits.c — the bounds on untrusted input, in one place. Each is checked
 * before anything it governs is allocated, and each can be raised (or
 * lowered) with its environment variable, a positive integer; an unset or
 * unparsable variable means the default. The errors name the variable, so
 * whoever hits a limit on honest data knows how to lift it. The README's
 * Limits section lists the same table. */
#include "../internal.h"

#include <stdlib.h>

static const struct {
    const char *env;
    long long fallback;
} limits[LIMIT_COUNT] = {
    [LIMIT_IMAGE_PIXELS] = {"CLIPC_MAX_IMAGE_PIXELS", CLIPC_MAX_IMAGE_PIXELS},
    [LIMIT_CSV_RECORD_BYTES] = {"CLIPC_MAX_CSV_RECORD_BYTES", 1LL << 20},
    [LIMIT_CSV_ROWS] = {"CLIPC_MAX_CSV_ROWS", 100000000LL},
    [LIMIT_CLASSES] = {"CLIPC_MAX_CLASSES", 10000},
    [LIMIT_SPM_BYTES] = {"CLIPC_MAX_SPM_BYTES", 64LL << 20},
    [LIMIT_SAFETENSORS_HEADER_BYTES] = {"CLIPC_MAX_SAFETENSORS_HEADER_BYTES", 100LL << 20},
    [LIMIT_PICKLE_BYTES] = {"CLIPC_MAX_PICKLE_BYTES", 256LL << 20},
};

long long limit_of(limit_id id) {
    const char *v = getenv(limits[id].env);
    if (v && *v) {
        char *end;
        long long x = strtoll(v, &end, 10);
        if (!*end && x > 0) return x;
    }
    return limits[id].fallback;
}

const char *limit_env(limit_id id) { return limits[id].env; }
