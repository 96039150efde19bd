/* fuzz_tokenizer.c — libFuzzer target for the tokenizers: CLIP's (the
 * ftfy text cleaning of src/tokenizer/clean.c and the BPE of bpe.c) and
 * the SentencePiece side (src/tokenizer/spm.c and the libsentencepiece
 * shim). The first byte picks what the rest is:
 *   even: a SentencePiece model file (from a stranger's checkpoint folder),
 *         loaded through clipc_tokenizer_load and, if accepted, used;
 *   odd:  a text for CLIP's tokenizer and the SigLIP and Gemma tokenizers
 *         of tests/data/siglip (invalid UTF-8, mojibake, entities, huge
 *         words, odd whitespace).
 * Either must end in ids or a clean refusal, never a crash, a leak or
 * undefined behaviour. Run from the repository root (the test suite does). */
#include "../../src/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void use(clipc_tokenizer *t, const char *text) {
    clipc_error err;
    int32_t row[64], *ids;
    int n;
    if (clipc_tokenize(t, text, 64, 1, row, &err) == 0)
        for (int i = 0; i < 64; i++)
            if (row[i] < 0 || row[i] >= clipc_tokenizer_vocab_size(t)) abort(); /* an id outside the vocabulary */
    if (clipc_tokenizer_encode(t, text, &ids, &n, &err) == 0) free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static clipc_tokenizer *clip, *siglip, *gemma;
    clipc_error err;
    if (!siglip) {
        clip = clipc_tokenizer_new(&err);
        siglip = clipc_tokenizer_load("tests/data/siglip/unigram/spiece.model", &err);
        gemma = clipc_tokenizer_load("tests/data/siglip/bpe/tokenizer.model", &err);
        if (!clip || !siglip || !gemma) abort();
    }
    if (size < 1) return 0;
    if (data[0] & 1) {
        char *text = malloc(size);
        if (!text) return 0;
        memcpy(text, data + 1, size - 1);
        text[size - 1] = 0;
        use(clip, text);
        use(siglip, text);
        use(gemma, text);
        free(text);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof path, "/tmp/fuzz_spm_%d.model", (int)getpid());
    if (write_file_atomic(path, data + 1, size - 1, &err) == 0) {
        clipc_tokenizer *t = clipc_tokenizer_load(path, &err);
        if (t) use(t, "A photo of a cat, 12 ΟΔΟΣ 😀.");
        clipc_tokenizer_free(t);
        unlink(path);
    }
    return 0;
}
