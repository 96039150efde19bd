/* fuzz_config.c — libFuzzer target for the JSON files that come beside a
 * checkpoint and decide how it is built: Hugging Face's config.json (CLIP
 * and SigLIP), preprocessor_config.json (SigLIP's image processor),
 * OpenCLIP's open_clip_config.json (OpenAI-named CLIP, SigLIP, CoCa) and
 * tokenizer_config.json (the SentencePiece tokenizer's special tokens and
 * padding). The checkpoints are real test models; only the JSON is fuzzed.
 * Whatever it says — wrong types, missing or contradicting sizes, unknown
 * activations, absurd epsilons and head counts — the model must load and
 * run, or be refused cleanly: never a crash, a leak, undefined behaviour.
 *
 * Input: one byte choosing the case below, then the JSON text. Run from the
 * source tree (or set CLIPC_ROOT to it): the models are read from
 * tests/data. Seeds: the cases' real files (made by `make fuzz-build`). */
#include "../../src/internal.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* a checkpoint, the JSON file that is fuzzed beside it, and the real files it also needs */
static const struct fuzz_case {
    const char *model, *json, *also[2];
} cases[] = {
    {"tests/data/arch/hf_mlp2.5_eps_mixed_act/model.safetensors", "config.json", {NULL, NULL}},
    {"tests/data/siglip/b_like/model.safetensors", "config.json", {"tests/data/siglip/unigram/spiece.model", NULL}},
    {"tests/data/siglip/b_like/model.safetensors", "preprocessor_config.json",
     {"tests/data/siglip/b_like/config.json", "tests/data/siglip/unigram/spiece.model"}},
    {"tests/data/siglip/openclip/open_clip_model.safetensors", "open_clip_config.json",
     {"tests/data/siglip/openclip/spiece.model", NULL}},
    {"tests/data/coca/open_clip_model.safetensors", "open_clip_config.json", {NULL, NULL}},
    {"tests/data/pytorch/model.safetensors", "open_clip_config.json", {NULL, NULL}},
    {"tests/data/siglip/b_like/model.safetensors", "tokenizer_config.json",
     {"tests/data/siglip/b_like/config.json", "tests/data/siglip/unigram/spiece.model"}},
};
enum { N_CASES = sizeof cases / sizeof *cases };
static char dirs[N_CASES][PATH_MAX], models[N_CASES][PATH_MAX];

static char base[64];
static void teardown(void) {
    char cmd[96];
    snprintf(cmd, sizeof cmd, "rm -rf %s", base);
    if (system(cmd)) return;
}

/* Each case gets its own folder in /tmp with links to the real files. */
static void setup(void) {
    const char *root = getenv("CLIPC_ROOT") ? getenv("CLIPC_ROOT") : ".";
    char src[PATH_MAX], abs[PATH_MAX], link[PATH_MAX + 64];
    snprintf(base, sizeof base, "/tmp/clipc_fuzz_config_%d", (int)getpid());
    mkdir(base, 0700);
    atexit(teardown);
    for (int i = 0; i < N_CASES; i++) {
        snprintf(dirs[i], sizeof dirs[i], "%s/%d", base, i);
        mkdir(dirs[i], 0700);
        for (int k = -1; k < 2; k++) {
            const char *file = k < 0 ? cases[i].model : cases[i].also[k];
            if (!file) continue;
            snprintf(src, sizeof src, "%s/%s", root, file);
            if (!realpath(src, abs)) {
                fprintf(stderr, "fuzz_config: %s not found (run from the source tree or set CLIPC_ROOT)\n", src);
                abort();
            }
            snprintf(link, sizeof link, "%s/%s", dirs[i], strrchr(file, '/') + 1);
            unlink(link);
            if (symlink(abs, link)) abort();
            if (k < 0) snprintf(models[i], sizeof models[i], "%s", link);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!dirs[0][0]) setup();
    if (size < 1) return 0;
    int c = data[0] % N_CASES;
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", dirs[c], cases[c].json);
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    bool ok = fwrite(data + 1, 1, size - 1, f) == size - 1;
    if (fclose(f) != 0 || !ok) return 0;
    clipc_error err;
    clipc_model *m = clipc_model_load(models[c], &err);
    if (!m) return 0;
    /* what was loaded must run: one text through the tokenizer and the text tower */
    const clipc_config *cfg = clipc_model_config(m);
    clipc_tokenizer *tok = clipc_model_tokenizer(m, &err);
    int32_t *tokens = malloc((size_t)cfg->context_length * sizeof *tokens);
    float *e = malloc((size_t)cfg->embed_dim * sizeof *e);
    if (tok && tokens && e && clipc_tokenize(tok, "a photo of a cat.", cfg->context_length, 1, tokens, &err) == 0)
        clipc_encode_text(m, tokens, 1, e, &err);
    free(tokens), free(e);
    clipc_tokenizer_free(tok);
    clipc_model_free(m);
    return 0;
}
