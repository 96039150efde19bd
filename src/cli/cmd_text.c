/* cmd_text.c — `clipc tokenize`: one line of token ids per text. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cmd_tokenize(int argc, char **argv) {
    long context = 77;
    bool truncate = false, ids_only = false, context_given = false;
    const char *model_path = NULL, *spm_path = NULL;
    const char *npy = NULL; /* --npy OUT.npy: the rows as int32 [n, context], for embed --tokens */
    const char **texts = malloc((size_t)(argc + 1) * sizeof *texts);
    int n = 0;
    if (!texts) return cli_error("out of memory");
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--context")) {
            if (!cli_int("--context", i + 1 < argc ? argv[++i] : NULL, 2, 4096, &context)) {
                free(texts);
                return 1;
            }
            context_given = true;
        } else if (!strcmp(argv[i], "-m") && i + 1 < argc) {
            model_path = argv[++i];
        } else if (!strcmp(argv[i], "--spm") && i + 1 < argc) {
            spm_path = argv[++i];
        } else if (!strcmp(argv[i], "--npy") && i + 1 < argc) {
            npy = argv[++i];
        } else if (!strcmp(argv[i], "--truncate")) truncate = true;
        else if (!strcmp(argv[i], "--ids")) ids_only = true;
        else if (!strcmp(argv[i], "--help")) {
            printf("usage: clipc tokenize [-m MODEL | --spm FILE.model] [--context N] [--truncate] [--ids | --npy OUT.npy] TEXT...\n"
                   "  prints clip.tokenize(TEXT) rows: SOT, ids, EOT, zero padding to N (77);\n"
                   "  --ids prints only the BPE ids (SimpleTokenizer.encode); --npy writes the rows as\n"
                   "  int32 [texts, N] instead (what embed --tokens reads).\n"
                   "  -m: the model's tokenizer at its context length (a SigLIP model's SentencePiece\n"
                   "  tokenizer, rows padded as Hugging Face's padding=\"max_length\"); --spm: a SentencePiece\n"
                   "  model file (spiece.model, tokenizer.model) as SigLIP / SigLIP 2 use it\n");
            free(texts);
            return 0;
        } else if (!strcmp(argv[i], "--")) { /* everything after is text */
            while (++i < argc) texts[n++] = argv[i];
        } else if (argv[i][0] == '-' && argv[i][1] && !(argv[i][1] >= '0' && argv[i][1] <= '9')) {
            free(texts);
            return cli_error("tokenize: unknown option '%s' (put texts starting with '-' after --)", argv[i]);
        } else {
            texts[n++] = argv[i];
        }
    }
    if (n == 0 || (npy && ids_only)) {
        free(texts);
        return cli_error("%s", n == 0 ? "tokenize: no text given" : "tokenize: --npy writes full rows; drop --ids");
    }
    clipc_error err;
    if (model_path && spm_path) {
        free(texts);
        return cli_error("tokenize: give -m or --spm, not both");
    }
    clipc_model *m = model_path ? cli_load_model(model_path) : NULL;
    if (model_path && !m) {
        free(texts);
        return 1;
    }
    if (m && !context_given) context = clipc_model_config(m)->context_length;
    clipc_tokenizer *tok = m ? clipc_model_tokenizer(m, &err) : spm_path ? clipc_tokenizer_load(spm_path, &err)
                                                                         : clipc_tokenizer_new(&err);
    clipc_model_free(m);
    if (!tok) {
        free(texts);
        return cli_error("%s", err.message);
    }
    int32_t *rows = malloc((size_t)(npy ? n : 1) * context * sizeof *rows), *row = rows;
    int rc = rows ? 0 : cli_error("out of memory");
    for (int t = 0; t < n && rc == 0; t++) {
        if (!texts[t][0]) {
            rc = cli_error("text %d is empty", t + 1);
            break;
        }
        int32_t *ids = NULL;
        int count = (int)context;
        if (npy) row = rows + (size_t)t * context;
        int fail = ids_only ? clipc_tokenizer_encode(tok, texts[t], &ids, &count, &err)
                            : clipc_tokenize(tok, texts[t], (int)context, truncate, row, &err);
        if (fail) {
            rc = cli_error("text %d (\"%.40s\"): %s", t + 1, texts[t], err.message);
            break;
        }
        const int32_t *out = ids_only ? ids : row;
        for (int k = 0; k < count && !npy; k++) printf(k ? " %d" : "%d", out[k]);
        if (!npy) printf("\n");
        free(ids);
    }
    int64_t shape[2] = {n, context};
    if (rc == 0 && npy && npy_write(npy, "<i4", 2, shape, rows, &err)) rc = cli_error("%s", err.message);
    free(rows);
    free(texts);
    clipc_tokenizer_free(tok);
    return rc;
}
