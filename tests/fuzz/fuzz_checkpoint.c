/* fuzz_checkpoint.c — libFuzzer target for checkpoint loading
 * (src/weights/checkpoint.c over safetensors.c): whatever a .safetensors
 * header says must load as a model or be refused cleanly, never a crash, a
 * leak, undefined behaviour or an allocation the file cannot back. That
 * covers the header JSON, the architecture inference from tensor names and
 * shapes, dtypes and offsets, int8 scales, and what clipc finetune adds
 * (CoOp and CoCoOp prompts with their class names, CLIP-Adapter).
 *
 * Input: a 4-byte little-endian data length L (at most 16 MiB), then the
 * header JSON. The file loaded is [u64 header length][header][L zero
 * bytes]: mutations land on what the loader interprets, not on tensor bytes
 * it only copies. `make fuzz` builds and runs it on seeds made from real
 * files (tests/fuzz/checkpoint_seeds.sh); the test suite runs it for a
 * bounded time. */
#include "../../src/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char path[64];
static void teardown(void) { unlink(path); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static unsigned char zeros[65536];
    if (size < 4) return 0;
    uint32_t data_len = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 | (uint32_t)data[3] << 24;
    if (data_len > (16u << 20)) data_len %= 16u << 20;
    uint64_t header_len = size - 4;
    if (!path[0]) {
        snprintf(path, sizeof path, "/tmp/clipc_fuzz_ckpt_%d.safetensors", (int)getpid());
        atexit(teardown);
    }
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(header_len >> (8 * i));
    bool ok = fwrite(len8, 1, 8, f) == 8 && fwrite(data + 4, 1, header_len, f) == header_len;
    for (uint32_t left = data_len; ok && left > 0;) {
        uint32_t n = left < sizeof zeros ? left : (uint32_t)sizeof zeros;
        ok = fwrite(zeros, 1, n, f) == n;
        left -= n;
    }
    if (fclose(f) != 0 || !ok) return 0;
    clipc_error err;
    clipc_model_free(clipc_model_load(path, &err));
    return 0;
}
