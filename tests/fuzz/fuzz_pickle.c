/* fuzz_pickle.c — libFuzzer target for the restricted unpickler that reads
 * PyTorch checkpoints (src/weights/pytorch.c): any byte string as data.pkl
 * must end in a state dict or a clean refusal, never a crash, a leak or
 * undefined behaviour. `make fuzz` builds and runs it; the test suite runs
 * it for a bounded time. Seeds: tests/fuzz/corpus/pickle/. */
#include "../../src/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    clipc_error err;
    int tensors = 0;
    pickle_check(data, size, &tensors, &err);
    return 0;
}
