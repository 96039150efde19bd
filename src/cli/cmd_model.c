/* cmd_model.c — `clipc init` and `clipc info`. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int cmd_init(int argc, char **argv) {
    const char *arch = NULL, *out = NULL, *dtype = "F32";
    long seed = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--arch") && i + 1 < argc) arch = argv[++i];
        else if (!strcmp(argv[i], "--seed")) {
            if (!cli_int("--seed", i + 1 < argc ? argv[++i] : NULL, 0, 0x7fffffffffffffffL, &seed)) return 1;
        } else if (!strcmp(argv[i], "-o") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) dtype = argv[++i];
        else if (!strcmp(argv[i], "--help")) {
            printf("usage: clipc init --arch NAME [--seed N] [--dtype F32|F16|BF16] -o FILE.safetensors\n  architectures:");
            for (const char *const *n = clipc_arch_names(); *n; n++) printf(" %s", *n);
            printf("\n");
            return 0;
        } else return cli_unexpected("init", cmd_init, argv[i]);
    }
    if (!arch || !out) return cli_error("init: needs --arch NAME and -o FILE");
    clipc_error err;
    clipc_model *m = clipc_model_init(arch, (uint64_t)seed, &err);
    if (!m) return cli_error("%s", err.message);
    int rc = clipc_model_save_as(m, out, dtype, &err);
    if (rc == 0)
        fprintf(stderr, "wrote %s: %s, %zu parameters, seed %ld\n", out, arch, clipc_model_param_count(m), seed);
    clipc_model_free(m);
    return rc ? cli_error("%s", err.message) : 0;
}

int cmd_info(int argc, char **argv) {
    if (argc > 1 || (argc == 1 && !strcmp(argv[0], "--help"))) {
        printf("usage: clipc info [--precision fp32|bf16|int8] [MODEL.safetensors]   (default: the shipped model)\n");
        return argc == 1 ? 0 : 1;
    }
    clipc_model *m = cli_load_model(argc ? argv[0] : NULL);
    if (!m) return 1;
    const clipc_config *c = clipc_model_config(m);
    static const char *const act_names[] = {"QuickGELU", "GELU", "GELU (tanh)"};
    printf("file:           %s\n", argc ? argv[0] : "the default model (" DEFAULT_MODEL_FILE ")");
    printf("family:         %s\n", clipc_model_family_name(m));
    if (c->vision_tower == CLIPC_VIT)
        printf("vision:         ViT, width %d, %d layers, %d heads, patch %d, %dx%d input\n", c->vision_width,
               c->vision_layers, c->vision_heads, c->vision_patch_size, c->image_resolution, c->image_resolution);
    else
        printf("vision:         ModifiedResNet, width %d, layers (%d, %d, %d, %d), %d attention-pool heads, %dx%d input\n",
               c->vision_width, c->vision_resnet_layers[0], c->vision_resnet_layers[1], c->vision_resnet_layers[2],
               c->vision_resnet_layers[3], c->vision_heads, c->image_resolution, c->image_resolution);
    printf("text:           width %d, %d layers, %d heads, context %d, vocabulary %d\n", c->text_width,
           c->text_layers, c->text_heads, c->context_length, c->vocab_size);
    printf("embedding:      %d\n", c->embed_dim);
    if (c->vision_tower == CLIPC_VIT)
        printf("vision details: MLP %d wide, LayerNorm eps %g, %s%s%s\n", c->vision_mlp_width, c->vision_ln_eps,
               act_names[c->vision_activation], c->vision_layer_scale ? ", LayerScale" : "",
               c->family == CLIPC_SIGLIP ? ", no class token, attention-pooling (MAP) head" : "");
    printf("text details:   MLP %d wide, LayerNorm eps %g, %s%s%s\n", c->text_mlp_width, c->text_ln_eps,
           act_names[c->activation], c->text_layer_scale ? ", LayerScale" : "",
           c->family == CLIPC_SIGLIP ? ", bidirectional, pooled at the last position" : "");
    if (c->family == CLIPC_COCA)
        printf("captioner:      attentional pooler of %d queries (%d heads); decoder of %d layers (%d heads), "
               "%d-token captions at most\n", c->pool_queries, c->pool_heads, c->decoder_layers, c->decoder_heads,
               c->context_length);
    printf("parameters:     %zu\n", clipc_model_param_count(m));
    char kernel[256];
    int prec = clipc_model_precision(m);
    printf("dtype:          %s\n", clipc_model_source_dtype(m));
    printf("precision:      %s (GEMMs: %s)\n", clipc_precision_name(prec), clipc_precision_kernel(prec, kernel, sizeof kernel));
    printf("logit scale:    %.4f\n", clipc_model_logit_scale(m));
    if (c->has_logit_bias) printf("logit bias:     %.4f\n", clipc_model_logit_bias(m));
    if (c->family == CLIPC_SIGLIP) {
        const char *tp = clipc_model_tokenizer_path(m);
        printf("tokenizer:      %s\n", tp ? tp : "none found beside the checkpoint (spiece.model or tokenizer.model)");
    }
    clipc_model_free(m);
    return 0;
}

/* clipc convert: the same model stored at another precision. int8 writes
 * the weights exactly as --precision int8 computes with them (I8 values
 * and per-row F32 scales), so the file loads straight into int8. */
int cmd_convert(int argc, char **argv) {
    const char *model = NULL, *out = NULL, *dtype = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "-o") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) dtype = argv[++i];
        else if (!strcmp(argv[i], "--help")) {
            printf("usage: clipc convert [-m MODEL | MODEL] [--dtype F32|F16|BF16|int8] -o OUT.safetensors\n"
                   "  MODEL: any checkpoint clipc reads (.safetensors, PyTorch .pt/.bin/TorchScript);\n"
                   "  the dtype defaults to the source's (F16 stays F16; F32 otherwise).\n"
                   "  F16/BF16 halve the file (computed in fp32 unless --precision says otherwise);\n"
                   "  int8 stores the towers' weight matrices as int8 with per-row scales (a quarter\n"
                   "  of their F32 size) and loads at int8 precision.\n");
            return 0;
        } else if (argv[i][0] != '-' && !model) model = argv[i];
        else return cli_unexpected("convert", cmd_convert, argv[i]);
    }
    if (!out) return cli_error("convert: needs -o OUT.safetensors (and optionally --dtype F32|F16|BF16|int8)");
    clipc_model *m = cli_load_model(model);
    if (!m) return 1;
    /* without --dtype the file keeps the source's: F16 stays F16 */
    const char *src = clipc_model_source_dtype(m);
    if (!dtype) dtype = !strcmp(src, "F16") || !strcmp(src, "BF16") || !strcmp(src, "int8") ? src : "F32";
    const char *st = !strcasecmp(dtype, "f32") || !strcasecmp(dtype, "fp32") ? "F32"
                   : !strcasecmp(dtype, "f16") || !strcasecmp(dtype, "fp16") ? "F16"
                   : !strcasecmp(dtype, "bf16") ? "BF16" : !strcasecmp(dtype, "int8") || !strcasecmp(dtype, "i8") ? "int8" : NULL;
    if (!st) {
        clipc_model_free(m);
        return cli_error("convert: unknown --dtype '%s' (F32, F16, BF16 or int8)", dtype);
    }
    clipc_error err;
    int rc = 0;
    if (!strcmp(st, "int8") && clipc_model_precision(m) != CLIPC_INT8) rc = clipc_model_set_precision(m, CLIPC_INT8, &err);
    if (rc == 0) rc = clipc_model_save_as(m, out, st, &err);
    if (rc == 0) fprintf(stderr, "wrote %s (%s)\n", out, st);
    clipc_model_free(m);
    return rc ? cli_error("%s", err.message) : 0;
}
