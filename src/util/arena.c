/* arena.c — a bump allocator for the activations of one forward pass.
 * A pass computes its size up front, reserves once, and allocates without
 * failure paths; the arena is reused by the next pass. */
#include "../internal.h"

#include <stdlib.h>

#define ARENA_ALIGN 16 /* floats = 64 bytes, a cache line */

int arena_reserve(arena *a, size_t floats, clipc_error *err) {
    a->used = 0;
    if (floats <= a->cap) return 0;
    free(a->base);
    a->base = NULL;
    a->cap = 0;
    void *p = NULL;
    if (posix_memalign(&p, 64, floats * sizeof(float)) != 0)
        return clipc_fail(err, "out of memory: %zu MiB of activations", floats * 4 >> 20);
    a->base = p;
    a->cap = floats;
    return 0;
}

float *arena_alloc(arena *a, size_t floats) {
    size_t rounded = (floats + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    if (a->used + rounded > a->cap) return NULL;
    float *p = a->base + a->used;
    a->used += rounded;
    return p;
}

void arena_free(arena *a) {
    free(a->base);
    a->base = NULL;
    a->cap = a->used = 0;
}
