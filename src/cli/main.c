/* main.c — the clipc command: dispatch to one of the subcommands. */
#include "cli.h"
#include "../hub/hub.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char USAGE[] =
    "clipc " CLIPC_VERSION " — CLIP in C\n"
    "\n"
    "usage: clipc COMMAND [OPTIONS]\n"
    "\n"
    "  init --arch NAME [--seed N] -o FILE     random model (ViT-B-32, RN50, ..., ViT-B-16-SigLIP, coca-fmnist)\n"
    "  info [FILE]                             architecture, parameter count, dtypes\n"
    "  tokenize [-m MODEL | --spm FILE.model] [--context N] [--truncate] [--ids | --npy OUT.npy] TEXT...\n"
    "                                          one line of token ids per text\n"
    "  preprocess [--size N | -m MODEL] IMAGE... -o FILE.npy\n"
    "                                          OpenAI's _transform(N) as float32 [n,3,N,N]\n"
    "  embed [-m MODEL] (--image FILE|DIR... | --text STR... | --pixels FILE.npy | --tokens FILE.npy)\n"
    "        [--raw] -o OUT.npy                 float32 embeddings, L2-normalised unless --raw\n"
    "  classify [-m MODEL] --labels \"a,b,c\" [--templates imagenet|simple|FILE] [--top K] [--json] IMAGE|DIR...\n"
    "                                          zero-shot classification\n"
    "  caption [-m MODEL] [--beam N | --top-k K | --top-p P] [--temperature T] [--max-len L] [--json] IMAGE...\n"
    "                                          captions from a CoCa model\n"
    "  train --data fashion-mnist --out DIR (--steps N | --epochs E) [--resume] ...\n"
    "                                          contrastive training from scratch (see train --help)\n"
    "  finetune [-m MODEL] --method lora|adapter|coop|full --dataset D (--steps N | --epochs E) --out DIR\n"
    "                                          adapt a model to a labelled dataset (see finetune --help)\n"
    "  wise -m ZERO_SHOT --finetuned FT --alpha A -o OUT\n"
    "                                          WiSE-FT: the two models' weights interpolated\n"
    "  eval zeroshot|retrieval|linear-probe|captioning [-m MODEL] --dataset|--data ...\n"
    "                                          CLIP_benchmark-style evaluation (see eval --help)\n"
    "  retrieve [-m MODEL] --dataset D [-k K] QUERY...\n"
    "                                          the dataset's images that best match each text\n"
    "  index --db FILE [-m MODEL] DIR...       incremental image index (SQLite)\n"
    "  search --db FILE [-k K] [--json] (QUERY | --image FILE)\n"
    "                                          text, image or \"a\" + \"b\" - \"c\" queries over the index\n"
    "  export --db FILE --npy EMB.npy --meta META.csv\n"
    "                                          float16 embeddings + metadata (clip-retrieval's layout)\n"
    "  serve --db FILE [--port 8080]           JSON search API and a web page\n"
    "  export-images --out DIR [--limit N]     Fashion-MNIST images as PNG class folders (sample data)\n"
    "\n"
    "  pull NAME [--cache DIR]                 download a published checkpoint (resumable, SHA-256 checked)\n"
    "  models                                  the checkpoints pull knows, and which are pulled\n"
    "  convert [-m MODEL] --dtype F32|F16|BF16|int8 -o OUT.safetensors\n"
    "                                          the model stored at another precision\n"
    "\n"
    "-m defaults to the shipped Fashion-MNIST model (models/" DEFAULT_MODEL_FILE "; caption's: models/"
    DEFAULT_CAPTION_MODEL_FILE ").\n"
    "embed, classify, caption, eval, retrieve, index, search, serve and info take --precision fp32|bf16|int8\n"
    "(default: $CLIPC_PRECISION, else the model's own: fp32, or int8 for an int8 checkpoint).\n"
    "Run 'clipc COMMAND --help' for a command's details.\n";

char cli_error_context[32];

int cli_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("clipc: error: ", stderr);
    fputs(cli_error_context, stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

bool cli_int(const char *flag, const char *value, long min, long max, long *out) {
    if (!value) {
        cli_error("%s needs a value", flag);
        return false;
    }
    char *end;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno || end == value || *end || v < min || v > max) {
        cli_error("%s: '%s' is not an integer in %ld..%ld", flag, value, min, max);
        return false;
    }
    *out = v;
    return true;
}

int cli_collect(int argc, char **argv, int i, const char ***out, int *count) {
    int start = i;
    while (i < argc && !(argv[i][0] == '-' && argv[i][1] != '\0' && !(argv[i][1] >= '0' && argv[i][1] <= '9'))) i++;
    *out = (const char **)(argv + start);
    *count = i - start;
    return i;
}

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

bool cli_progress_enabled(void) { return isatty(STDERR_FILENO); }

/* CLIPC_PROGRESS_EVERY: seconds between progress lines in a log (default 30). */
static double log_progress_every(void) {
    const char *e = getenv("CLIPC_PROGRESS_EVERY");
    double s = e ? atof(e) : 0;
    return s > 0 ? s : 30.0;
}

void cli_progress(const char *what, long done, long total, double start) {
    double now = cli_now(), elapsed = now - start, rate = done / (elapsed > 1e-9 ? elapsed : 1e-9);
    double eta = rate > 0 ? (total - done) / rate : 0;
    if (!cli_progress_enabled()) { /* a log: a plain line every 30 s of a long task, none for a short one */
        static double task_start = -1, last_line;
        if (start != task_start) task_start = start, last_line = start;
        if (now - last_line < log_progress_every()) return;
        last_line = now;
        fprintf(stderr, "%s: %ld/%ld  %.1f/s  ETA %.0fs\n", what, done, total, rate, eta);
        return;
    }
    int width = 30, filled = total ? (int)(width * done / total) : width;
    fprintf(stderr, "\r%s [%.*s%*s] %ld/%ld  %.1f/s  ETA %.0fs ", what, filled,
            "##############################", width - filled, "", done, total, rate, eta);
    if (done == total) fputc('\n', stderr);
    fflush(stderr);
}

/* Where a default model lives, relative to this executable ($env overrides). */
static const char *default_model_path(const char *file, const char *envname, char *buf, size_t cap) {
    const char *env = getenv(envname);
    if (env && *env) return env;
    char exe[4096];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0) return NULL;
    exe[len] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash) return NULL;
    *slash = '\0'; /* the executable's directory */
    static const char *const places[] = {"%s/../models/%s", "%s/../share/clipc/%s"};
    for (size_t i = 0; i < sizeof places / sizeof *places; i++) {
        snprintf(buf, cap, places[i], exe, file);
        if (access(buf, R_OK) == 0) return buf;
    }
    return NULL;
}

/* --precision (or $CLIPC_PRECISION) for the commands that encode; -1: the
 * model's own (fp32, or int8 for an int8 checkpoint). */
static int cli_precision = -1;

clipc_model *cli_load_model(const char *path) {
    return cli_load_model_or(path, DEFAULT_MODEL_FILE, "CLIPC_MODEL");
}

clipc_model *cli_load_model_or(const char *path, const char *default_file, const char *envname) {
    char buf[4200];
    if (!path && !(path = default_model_path(default_file, envname, buf, sizeof buf))) {
        cli_error("no -m MODEL given, and the default model %s is not in models/ beside the build nor in share/clipc/ "
                  "(set %s)", default_file, envname);
        return NULL;
    }
    clipc_error err;
    char pulled[4200];
    if (access(path, F_OK) != 0) { /* not a file: a pulled model's name? */
        int rc = hub_resolve(path, pulled, sizeof pulled, &err);
        if (rc < 0) {
            cli_error("%s", err.message);
            return NULL;
        }
        if (rc == 0) path = pulled;
    }
    clipc_model *m = clipc_model_load(path, &err);
    if (!m) {
        cli_error("%s", err.message);
        return NULL;
    }
    if (cli_precision >= 0 && cli_precision != clipc_model_precision(m) &&
        clipc_model_set_precision(m, cli_precision, &err)) {
        cli_error("%s", err.message);
        clipc_model_free(m);
        return NULL;
    }
    return m;
}

/* Damerau-free Levenshtein distance of two short words (at most 63 bytes counted). */
static int edit_distance(const char *a, const char *b) {
    int la = (int)strnlen(a, 63), lb = (int)strnlen(b, 63), row[64];
    for (int j = 0; j <= lb; j++) row[j] = j;
    for (int i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = i;
        for (int j = 1; j <= lb; j++) {
            int up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            diag = up;
            row[j] = best;
        }
    }
    return row[lb];
}

const char *cli_nearest(const char *word, const char *const *candidates, int n) {
    const char *best = NULL;
    int best_d = 3; /* a suggestion within two edits, no further */
    for (int i = 0; i < n; i++) {
        int d = edit_distance(word, candidates[i]);
        if (d < best_d) best_d = d, best = candidates[i];
    }
    return best;
}

/* The commands that encode take --precision (main takes it out of argv). */
static bool encodes(const char *command) {
    static const char *const encoding[] = {"embed", "classify", "caption", "eval", "retrieve", "index", "search", "serve", "info"};
    for (size_t i = 0; i < sizeof encoding / sizeof *encoding; i++)
        if (!strcmp(command, encoding[i])) return true;
    return false;
}

int cli_unexpected(const char *command, int (*cmd)(int, char **), const char *arg) {
    /* the command's flags, from its own --help text (captured from stdout) */
    char *flags[128];
    int n = 0;
    FILE *tmp = arg[0] == '-' ? tmpfile() : NULL;
    int saved = tmp ? dup(1) : -1;
    if (saved >= 0) {
        fflush(stdout);
        dup2(fileno(tmp), 1);
        char help[] = "--help", *av[] = {help, NULL};
        cmd(1, av);
        fflush(stdout);
        dup2(saved, 1);
        close(saved);
        rewind(tmp);
        char word[64];
        int c, k = -1;
        while ((c = fgetc(tmp)) != EOF && n < 128) { /* every "-x" or "--xxx" token */
            bool part = c == '-' || (k > 0 && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')));
            if (k < 0 && c == '-') k = 0;
            if (k >= 0 && part && k < 63) {
                word[k++] = (char)c;
                continue;
            }
            if (k > 1 && word[k - 1] != '-') {
                word[k] = 0;
                bool seen = false;
                for (int i = 0; i < n && !seen; i++) seen = !strcmp(flags[i], word);
                if (!seen && (flags[n] = strdup(word))) n++;
            }
            k = c == '-' ? 0 : -1;
            if (k == 0) word[k++] = '-';
        }
    }
    if (tmp) fclose(tmp);
    /* --precision is taken out of argv (and added to --help) by main, for
     * the commands that encode */
    if (n < 128 && encodes(command) && (flags[n] = strdup("--precision"))) n++;
    const char *near = cli_nearest(arg, (const char *const *)flags, n);
    int rc = near ? cli_error("%s: unexpected argument '%s': did you mean '%s'?", command, arg, near)
                  : cli_error("%s: unexpected argument '%s' (see clipc %s --help)", command, arg, command);
    for (int i = 0; i < n; i++) free(flags[i]);
    return rc;
}

void cli_note_default_model(const char *model_path, const char *const *images, int n) {
    if (model_path || n <= 0 || getenv("CLIPC_MODEL")) return;
    unsigned char *data;
    size_t len;
    clipc_error err;
    image im;
    if (read_file(images[0], &data, &len, &err)) return;
    int rc = image_decode(data, len, images[0], &im, &err);
    free(data);
    if (rc) return;
    bool like_training = im.width == 28 && im.height == 28; /* clipc export-images writes them as RGB */
    image_free(&im);
    if (!like_training)
        fprintf(stderr, "note: the default model knows 28x28 Fashion-MNIST clothing images only; for photos, "
                        "pull a real one: clipc pull ViT-B-32, then -m ViT-B-32\n");
}

/* Takes --precision P out of argv (before a "--"), else reads
 * $CLIPC_PRECISION. Returns 0, or 1 after reporting. */
static int take_precision(int *argc, char **argv) {
    const char *value = getenv("CLIPC_PRECISION");
    const char *from = "CLIPC_PRECISION";
    if (value && !*value) value = NULL;
    for (int i = 0; i < *argc && strcmp(argv[i], "--"); i++) {
        if (strcmp(argv[i], "--precision")) continue;
        if (i + 1 >= *argc) return cli_error("--precision needs a value (fp32, bf16 or int8)");
        value = argv[i + 1];
        from = "--precision";
        memmove(argv + i, argv + i + 2, (size_t)(*argc - i - 2) * sizeof *argv);
        *argc -= 2;
        i--;
    }
    if (!value) return 0;
    clipc_error err;
    if (clipc_precision_parse(value, &cli_precision, &err)) return cli_error("%s: %s", from, err.message);
    return 0;
}

int main(int argc, char **argv) {
    static const struct { const char *name; int (*fn)(int, char **); } commands[] = {
        {"init", cmd_init},         {"info", cmd_info},   {"tokenize", cmd_tokenize},
        {"preprocess", cmd_preprocess}, {"embed", cmd_embed}, {"classify", cmd_classify}, {"caption", cmd_caption},
        {"train", cmd_train},       {"eval", cmd_eval},   {"retrieve", cmd_retrieve},
        {"index", cmd_index},       {"search", cmd_search}, {"export", cmd_export}, {"serve", cmd_serve},
        {"export-images", cmd_export_images}, {"convert", cmd_convert}, {"pull", cmd_pull},
        {"models", cmd_models},     {"finetune", cmd_finetune}, {"wise", cmd_wise},
    };
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
#ifdef CLIPC_MPI
        printf("clipc %s (with MPI)\n", CLIPC_VERSION);
#else
        printf("clipc %s (without MPI)\n", CLIPC_VERSION);
#endif
        return 0;
    }
    bool encoding = encodes(argv[1]), help = false;
    for (int i = 2; i < argc && strcmp(argv[i], "--"); i++) help |= !strcmp(argv[i], "--help");
    if (encoding && take_precision(&argc, argv)) return 1;
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (!strcmp(argv[1], commands[i].name)) {
            int rc = commands[i].fn(argc - 2, argv + 2);
            if (encoding && help && rc == 0)
                printf("  --precision fp32|bf16|int8   arithmetic of the linear layers (default: $CLIPC_PRECISION,\n"
                       "                               else the model's own: fp32, or int8 for an int8 checkpoint)\n");
            return rc;
        }
    const char *names[sizeof commands / sizeof *commands];
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) names[i] = commands[i].name;
    const char *near = cli_nearest(argv[1], names, (int)(sizeof commands / sizeof *commands));
    if (near) return cli_error("unknown command '%s': did you mean '%s'? (run 'clipc --help')", argv[1], near);
    return cli_error("unknown command '%s' (run 'clipc --help')", argv[1]);
}
