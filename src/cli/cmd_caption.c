/* cmd_caption.c — `clipc caption`: captions of images from a CoCa model. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char USAGE_CAPTION[] =
    "usage: clipc caption [-m MODEL] [--beam N | --top-k K | --top-p P] [--temperature T] [--max-len L]\n"
    "                     [--min-len L] [--seed S] [--json] IMAGE...\n"
    "  one caption per image from a CoCa model (default: the shipped " DEFAULT_CAPTION_MODEL_FILE ").\n"
    "  Decoding is OpenCLIP's generate(): beam search by default (--beam 6, in 3 groups); --top-k K or\n"
    "  --top-p P sample instead (--top-k 1 is greedy), at --temperature T (1) from --seed S (0).\n"
    "  Captions have --min-len 5 to --max-len 30 tokens, start and end tokens included.\n";

static bool parse_float(const char *flag, const char *v, double lo, double hi, float *out) {
    char *end;
    double d = v ? strtod(v, &end) : 0;
    if (!v || end == v || *end || !(d >= lo && d <= hi)) {
        cli_error("%s needs a number in %g..%g", flag, lo, hi);
        return false;
    }
    *out = (float)d;
    return true;
}

int cmd_caption(int argc, char **argv) {
    const char *model_path = NULL;
    clipc_caption_options o;
    clipc_caption_defaults(&o);
    bool json = false, sampling = false, beam_given = false;
    const char **images = malloc((size_t)(argc + 1) * sizeof *images);
    int n = 0;
    if (!images) return cli_error("out of memory");
    long v;
    for (int i = 0; i < argc; i++) {
        const char *f = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true;
        if (!strcmp(f, "-m") && val) model_path = argv[++i];
        else if (!strcmp(f, "--json")) json = true;
        else if (!strcmp(f, "--beam")) {
            if ((ok = cli_int("--beam", val, 1, 64, &v))) o.beams = (int)v, beam_given = true, i++;
            if (ok && o.beams % o.beam_groups) o.beam_groups = 1; /* OpenCLIP's 3 groups need a multiple of 3 */
        } else if (!strcmp(f, "--top-k")) {
            if ((ok = cli_int("--top-k", val, 1, 1 << 20, &v))) o.top_k = (int)v, sampling = true, i++;
        } else if (!strcmp(f, "--top-p")) {
            if ((ok = parse_float("--top-p", val, 0.0, 1.0, &o.top_p))) sampling = true, i++;
            if (ok) o.top_k = 0;
        } else if (!strcmp(f, "--temperature")) {
            if ((ok = parse_float("--temperature", val, 1e-3, 100.0, &o.temperature))) i++;
        } else if (!strcmp(f, "--max-len")) {
            if ((ok = cli_int("--max-len", val, 2, 4096, &v))) o.max_len = (int)v, i++;
        } else if (!strcmp(f, "--min-len")) {
            if ((ok = cli_int("--min-len", val, 0, 4096, &v))) o.min_len = (int)v, i++;
        } else if (!strcmp(f, "--seed")) {
            if ((ok = cli_int("--seed", val, 0, 1L << 62, &v))) o.seed = (uint64_t)v, i++;
        } else if (!strcmp(f, "--help")) {
            fputs(USAGE_CAPTION, stdout);
            free(images);
            return 0;
        } else if (f[0] == '-') {
            static const char *const flags[] = {"-m", "--beam", "--top-k", "--top-p", "--temperature", "--max-len",
                                                "--min-len", "--seed", "--json"};
            const char *near = cli_nearest(f, flags, (int)(sizeof flags / sizeof *flags));
            free(images);
            return near ? cli_error("caption: unknown option '%s' (did you mean %s?)", f, near)
                        : cli_error("caption: unknown option '%s' (clipc caption --help)", f);
        } else {
            images[n++] = f;
        }
        if (!ok) {
            free(images);
            return 1;
        }
    }
    if (sampling && beam_given) {
        free(images);
        return cli_error("caption: --beam searches, --top-k and --top-p sample: give one of them");
    }
    if (sampling) o.beams = 1;
    if (n == 0) {
        free(images);
        return cli_error("caption: no images given (clipc caption --help)");
    }
    clipc_model *m = cli_load_model_or(model_path, DEFAULT_CAPTION_MODEL_FILE, "CLIPC_CAPTION_MODEL");
    if (!m) {
        free(images);
        return 1;
    }
    const clipc_config *c = clipc_model_config(m);
    clipc_error err;
    int rc = 0, R = c->image_resolution;
    if (c->family != CLIPC_COCA) rc = cli_error("caption: %s is a %s model; captions need a CoCa model",
                                                model_path ? model_path : "the model", clipc_model_family_name(m));
    if (rc == 0 && o.max_len > c->context_length) o.max_len = c->context_length; /* a short-context model's own limit */
    clipc_tokenizer *tok = rc == 0 ? clipc_tokenizer_new(&err) : NULL;
    if (rc == 0 && !tok) rc = cli_error("%s", err.message);
    float *pixels = rc == 0 ? malloc((size_t)3 * R * R * sizeof *pixels) : NULL;
    if (rc == 0 && !pixels) rc = cli_error("out of memory");
    if (json && rc == 0) printf("[");
    double start = cli_now();
    for (int i = 0; i < n && rc == 0; i++) { /* an image at a time: a bad file stops with its name */
        int32_t *ids = NULL;
        int len = 0;
        if (clipc_model_preprocess_file(m, images[i], pixels, &err) || clipc_caption(m, pixels, 1, &o, &ids, &len, &err)) {
            rc = cli_error("%s", err.message);
            break;
        }
        char *text = clipc_tokenizer_decode(tok, ids, len, &err);
        free(ids);
        if (!text) {
            rc = cli_error("%s", err.message);
            break;
        }
        if (json) {
            printf("%s\n  {\"image\": ", i ? "," : "");
            cli_json_string(images[i]);
            printf(", \"caption\": ");
            cli_json_string(text);
            printf("}");
        } else {
            printf("%s\t%s\n", images[i], text);
        }
        fflush(stdout);
        free(text);
        if (n > 1) cli_progress("captions", i + 1, n, start);
    }
    if (json && rc == 0) printf("\n]\n");
    free(pixels);
    clipc_tokenizer_free(tok);
    clipc_model_free(m);
    free(images);
    return rc;
}
