/* fuzz_image.c — libFuzzer target for the image decoders (JPEG, PNG, TIFF,
 * WebP: src/image/decode.c, tiff.c, webp.c) and OpenAI's _transform resize
 * and crop after them: any byte string must give an image or a clean
 * refusal, never a crash, a leak, undefined behaviour or an allocation
 * beyond the pixel limit. `make fuzz` runs it; the test suite runs it for a
 * bounded time. Seeds: the image fixtures of tests/data (made into
 * build-fuzz/corpus-image). */
#include "../../src/internal.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    clipc_error err;
    image im;
    if (image_decode(data, size, "fuzz", &im, &err)) return 0;
    unsigned char rgb[3 * 16 * 16];
    image_resize_crop_rgb(&im, 16, rgb, &err);
    image_free(&im);
    return 0;
}
