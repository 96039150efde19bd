/* cmd_finetune.c — `clipc finetune` (LoRA, CLIP-Adapter, CoOp, full) on a
 * labelled image set, and `clipc wise` (WiSE-FT). */
#include "cli.h"
#include "../finetune/finetune.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char FINETUNE_USAGE[] =
    "usage: clipc finetune [-m MODEL] --method lora|adapter|coop|cocoop|full --dataset D [--test-dataset D2]\n"
    "                      [--source-test-dataset D3] [--shots K] [--seed S] (--epochs E | --steps N)\n"
    "                      [--lr LR] [--wd WD] [--batch B] [--rank R] [--alpha A] [--targets q,k,v,out,fc,proj]\n"
    "                      [--tower image|text|both] [--ctx N] [--ctx-init \"a photo of a\"] [--csc] [--residual-ratio A]\n"
    "                      [--templates simple|imagenet|FILE] [--classnames FILE] [--eval-limit N] [--wise A]\n"
    "                      [--csv-img-key filepath] [--csv-label-key label] --out DIR\n"
    "  Adapts a pretrained model to a labelled dataset (fashion-mnist, fashion-mnist-inverted, a folder\n"
    "  of class folders, or a CSV of path + label) with the cross-entropy of logit_scale * cos(image,\n"
    "  class text) over its classes. --shots K takes K training images per class (seeded).\n"
    "  Methods and defaults:\n"
    "    lora     --rank 2 --alpha 1 --targets q,k,v --tower both --lr 1e-3 (Hu et al.; CLIP-LoRA)\n"
    "    adapter  --residual-ratio 0.2 --lr 1e-3, on cached image features (CLIP-Adapter)\n"
    "    coop     --ctx 16, random N(0, 0.02) (or --ctx-init \"a photo of a\": its tokens) --lr 2e-3 (CoOp);\n"
    "             --csc learns a context per class (CoOp's CSC; the model then classifies those classes)\n"
    "    cocoop   --ctx-init \"a photo of a\", the context shifted per image by a meta-network on its\n"
    "             features --lr 2e-3 (CoCoOp)\n"
    "    full     --tower image --lr 1e-5 --wd 0.1 (the classifier head: the zero-shot class embeddings)\n"
    "  --batch 32, --templates simple. DIR receives model.safetensors (a complete model every command\n"
    "  loads), adapter.safetensors (the method's parameters; LoRA in PEFT's naming, with\n"
    "  adapter_config.json), log.jsonl, curve.svg and finetune.json (zero-shot top-1 on --test-dataset,\n"
    "  default the dataset's test split, before and after; trainable parameters; wall time).\n"
    "  --wise A also writes wise.safetensors, WiSE-FT's (1-A) zero-shot + A fine-tuned (lora, full).\n";

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) { interrupted = sig; }

typedef struct ft_args {
    const char *model, *method, *dataset, *test_dataset, *source_test, *out, *targets, *tower, *ctx_init, *templates,
        *classnames, *img_key, *label_key;
    long shots, seed, epochs, steps, batch, rank, ctx, eval_limit;
    double lr, wd, alpha, ratio, wise;
    bool given_ctx_init, csc;
} ft_args;

static bool parse_real(const char *flag, const char *v, double lo, double hi, double *out) {
    char *end;
    double d = v ? strtod(v, &end) : 0;
    if (!v || *end || !(d >= lo && d <= hi)) {
        cli_error("%s: '%s' is not a number in %g..%g", flag, v ? v : "", lo, hi);
        return false;
    }
    *out = d;
    return true;
}

static int parse(int argc, char **argv, ft_args *a) {
    *a = (ft_args){.img_key = "filepath", .label_key = "label", .batch = 32, .lr = -1, .wd = -1, .alpha = -1,
                   .ratio = 0.2, .rank = 2, .ctx = -1, .wise = -1, .tower = NULL, .targets = "q,k,v"};
    for (int i = 0; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char **s = !strcmp(f, "-m") || !strcmp(f, "--model") ? &a->model
                         : !strcmp(f, "--method")                   ? &a->method
                         : !strcmp(f, "--dataset")                  ? &a->dataset
                         : !strcmp(f, "--test-dataset")             ? &a->test_dataset
                         : !strcmp(f, "--source-test-dataset")      ? &a->source_test
                         : !strcmp(f, "--out")                      ? &a->out
                         : !strcmp(f, "--targets")                  ? &a->targets
                         : !strcmp(f, "--tower")                    ? &a->tower
                         : !strcmp(f, "--ctx-init")                 ? &a->ctx_init
                         : !strcmp(f, "--templates")                ? &a->templates
                         : !strcmp(f, "--classnames")               ? &a->classnames
                         : !strcmp(f, "--csv-img-key")              ? &a->img_key
                         : !strcmp(f, "--csv-label-key")            ? &a->label_key
                                                                    : NULL;
        if (s) {
            if (!v) return cli_error("%s needs a value", f);
            *s = v;
            a->given_ctx_init |= s == &a->ctx_init;
            i++;
            continue;
        }
        bool ok = true;
        if (!strcmp(f, "--csc")) { /* a flag: no value */
            a->csc = true;
            continue;
        }
        if (!strcmp(f, "--shots")) ok = cli_int(f, v, 1, 100000, &a->shots);
        else if (!strcmp(f, "--seed")) ok = cli_int(f, v, 0, 0x7fffffffffffffffL, &a->seed);
        else if (!strcmp(f, "--epochs")) ok = cli_int(f, v, 1, 100000, &a->epochs);
        else if (!strcmp(f, "--steps")) ok = cli_int(f, v, 1, 100000000, &a->steps);
        else if (!strcmp(f, "--batch")) ok = cli_int(f, v, 1, 4096, &a->batch);
        else if (!strcmp(f, "--rank")) ok = cli_int(f, v, 1, 4096, &a->rank);
        else if (!strcmp(f, "--ctx")) ok = cli_int(f, v, 1, 64, &a->ctx);
        else if (!strcmp(f, "--eval-limit")) ok = cli_int(f, v, 1, 100000000, &a->eval_limit);
        else if (!strcmp(f, "--lr")) ok = parse_real(f, v, 1e-9, 10, &a->lr);
        else if (!strcmp(f, "--wd")) ok = parse_real(f, v, 0, 10, &a->wd);
        else if (!strcmp(f, "--alpha")) ok = parse_real(f, v, 1e-6, 1e6, &a->alpha);
        else if (!strcmp(f, "--residual-ratio")) ok = parse_real(f, v, 0, 1, &a->ratio);
        else if (!strcmp(f, "--wise")) ok = parse_real(f, v, 0, 1, &a->wise);
        else if (!strcmp(f, "--help")) {
            printf(FINETUNE_USAGE);
            return -1;
        } else {
            static const char *const flags[] = {
                "-m", "--model", "--method", "--dataset", "--test-dataset", "--source-test-dataset", "--out", "--targets",
                "--tower", "--ctx-init", "--templates", "--classnames", "--csv-img-key", "--csv-label-key", "--csc",
                "--shots", "--seed", "--epochs", "--steps", "--batch", "--rank", "--ctx", "--eval-limit", "--lr", "--wd",
                "--alpha", "--residual-ratio", "--wise", "--help"};
            const char *near = cli_nearest(f, flags, (int)(sizeof flags / sizeof *flags));
            if (near) return cli_error("finetune: unexpected argument '%s': did you mean '%s'?", f, near);
            return cli_error("finetune: unexpected argument '%s' (see clipc finetune --help)", f);
        }
        if (!ok) return 1;
        i++;
    }
    if (!a->method) return cli_error("finetune: needs --method lora|adapter|coop|cocoop|full");
    if (finetune_method_parse(a->method) < 0)
        return cli_error("finetune: unknown --method '%s' (lora, adapter, coop, cocoop or full)", a->method);
    if (!a->dataset) return cli_error("finetune: needs --dataset fashion-mnist|DIR|FILE.csv");
    if (!a->out) return cli_error("finetune: needs --out DIR");
    if (!a->steps == !a->epochs) return cli_error("finetune: give exactly one of --steps and --epochs");
    if (a->csc && strcmp(a->method, "coop"))
        return cli_error("finetune: --csc (a context per class) is CoOp's: --method coop");
    if (a->wise >= 0 && strcmp(a->method, "lora") && strcmp(a->method, "full"))
        return cli_error("finetune: --wise interpolates weights: it applies to --method lora and full");
    return 0;
}

/* Zero-shot top-1 of m on the first limit images of s (0: all). */
static int zeroshot_top1(clipc_model *m, clipc_tokenizer *tok, const image_set *s, long limit,
                         const char *const *templates, int n_templates, double *top1) {
    class_metrics cm;
    clipc_error err;
    int n = limit > 0 && limit < s->count ? (int)limit : s->count;
    if (zeroshot_evaluate(m, tok, s, n, templates, n_templates, NULL, NULL, &cm, &err))
        return cli_error("evaluation: %s", err.message);
    *top1 = cm.acc1;
    class_metrics_free(&cm);
    return 0;
}

typedef struct progress_state {
    FILE *log;
    history curve;
    double start, last;
} progress_state;

static void on_step(void *ctx, long step, long total, float loss, float acc, float lr) {
    progress_state *p = ctx;
    double now = cli_now();
    if (p->log)
        fprintf(p->log, "{\"step\": %ld, \"loss\": %.6f, \"batch_acc\": %.4f, \"lr\": %.6g, \"elapsed_s\": %.2f}\n", step,
                loss, acc, lr, now - p->start);
    history_add(&p->curve, step, loss);
    if (now - p->last > (cli_progress_enabled() ? 0.3 : 20.0) || step == total) {
        double rate = step / (now - p->start > 0 ? now - p->start : 1e-9);
        fprintf(stderr, "%sstep %ld/%ld  loss %.4f  batch acc %.2f  lr %.3g  %.1f steps/s  ETA %.0fs%s",
                cli_progress_enabled() ? "\r" : "", step, total, loss, acc, lr, rate, (total - step) / rate,
                cli_progress_enabled() ? "   " : "\n");
        p->last = now;
    }
}

static int stop_requested(void *ctx) {
    (void)ctx;
    return interrupted != 0;
}

int cmd_finetune(int argc, char **argv) {
    ft_args a;
    int rc = parse(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    int method = finetune_method_parse(a.method);
    finetune_options o = {.method = method, .batch = (int)a.batch, .seed = (uint64_t)a.seed, .rank = (int)a.rank,
                          .ratio = (float)a.ratio, .csc = a.csc};
    static const float default_lr[] = {[FT_LORA] = 1e-3f, [FT_ADAPTER] = 1e-3f, [FT_COOP] = 2e-3f, [FT_FULL] = 1e-5f,
                                       [FT_COCOOP] = 2e-3f};
    o.lr = a.lr > 0 ? (float)a.lr : default_lr[method];
    o.wd = a.wd >= 0 ? (float)a.wd : method == FT_FULL ? 0.1f : 0.0f;
    o.alpha = a.alpha > 0 ? (float)a.alpha : 1.0f;
    const char *tower = a.tower ? a.tower : method == FT_FULL ? "image" : "both";
    o.towers = !strcmp(tower, "image") ? FT_IMAGE : !strcmp(tower, "text") ? FT_TEXT : !strcmp(tower, "both") ? 3 : 0;
    if (!o.towers) return cli_error("--tower: '%s' is not image, text or both", tower);
    char bad[64];
    if ((o.targets = lora_targets_parse(a.targets, bad, sizeof bad)) <= 0)
        return cli_error("--targets: unknown target '%s' (q, k, v, out, fc, proj)", o.targets ? bad : "");
    clipc_error err;
    clipc_tokenizer *tok = clipc_tokenizer_new(&err);
    if (!tok) return cli_error("%s", err.message);
    if (method == FT_COOP || method == FT_COCOOP) {
        /* the papers' defaults: CoOp 16 random vectors, CoCoOp "a photo of a"'s embeddings; --ctx N alone: random */
        o.ctx_init = a.given_ctx_init ? a.ctx_init : a.ctx > 0 || method == FT_COOP ? NULL : "a photo of a";
        if (!o.ctx_init && a.ctx <= 0) a.ctx = 16;
        if (o.ctx_init) {
            int32_t *ids = NULL;
            if (clipc_tokenizer_encode(tok, o.ctx_init, &ids, &o.n_ctx, &err)) {
                clipc_tokenizer_free(tok);
                return cli_error("--ctx-init: %s", err.message);
            }
            free(ids);
            if (a.ctx > 0 && a.ctx != o.n_ctx) {
                clipc_tokenizer_free(tok);
                return cli_error("--ctx %ld, but --ctx-init '%s' is %d tokens", a.ctx, o.ctx_init, o.n_ctx);
            }
            if (o.n_ctx < 1) {
                clipc_tokenizer_free(tok);
                return cli_error("--ctx-init '%s' has no tokens", o.ctx_init);
            }
        } else {
            o.n_ctx = (int)a.ctx;
        }
    }
    image_set train = {0}, test = {0}, source = {0};
    clipc_model *m = NULL, *ft = NULL, *wise = NULL;
    char *template_text = NULL;
    const char **templates = NULL;
    int n_templates = 0, *rows = NULL, n_rows = 0;
    finetune_result res = {0};
    progress_state ps = {0};
    bool made_dir = false, cut_short = false; /* cut short by Ctrl-C: outputs kept, exit 130 */
    const char *test_spec = a.test_dataset ? a.test_dataset : a.dataset;
    if (image_set_open(a.dataset, "train", a.img_key, a.label_key, &train, &err) ||
        (a.classnames && image_set_read_classnames(&train, a.classnames, &err)) ||
        image_set_open(test_spec, "test", a.img_key, a.label_key, &test, &err) ||
        (!a.test_dataset && a.classnames && image_set_read_classnames(&test, a.classnames, &err)) ||
        image_set_align_classes(&train, &test, &err) ||
        (a.source_test && (image_set_open(a.source_test, "test", a.img_key, a.label_key, &source, &err) ||
                           image_set_align_classes(&train, &source, &err)))) {
        rc = cli_error("%s", err.message);
        goto done;
    }
    if (!a.classnames && image_set_numbered(&train)) {
        rc = cli_error("%s: its classes are numbers (0..%d): give --classnames FILE with their names, one per line",
                       train.name, train.n_classes - 1);
        goto done;
    }
    if ((rc = cli_templates(a.templates ? a.templates : "simple", &template_text, &templates, &n_templates))) goto done;
    o.templates = templates, o.n_templates = n_templates;
    if (a.shots > 0) {
        if (few_shot_rows(&train, (int)a.shots, o.seed, &rows, &n_rows, &err)) {
            rc = cli_error("%s", err.message);
            goto done;
        }
    } else {
        n_rows = train.count;
        if (!(rows = malloc((size_t)n_rows * sizeof *rows))) {
            rc = cli_error("out of memory");
            goto done;
        }
        for (int i = 0; i < n_rows; i++) rows[i] = i;
    }
    int B = (int)(a.batch < n_rows ? a.batch : n_rows);
    if (a.batch > n_rows)
        fprintf(stderr, "note: --batch %ld is more than the %d training images: batches of %d\n", a.batch, n_rows, B);
    o.steps = a.steps ? a.steps : a.epochs * ((n_rows + B - 1) / B);
    if (!(m = cli_load_model(a.model))) {
        rc = 1;
        goto done;
    }
    if (clipc_model_set_precision(m, CLIPC_FP32, &err) || /* an int8 file's weights, trained at fp32 */
        finetune_check(m, &o, &err)) { /* before the zero-shot evaluation and any output */
        rc = cli_error("%s", err.message);
        goto done;
    }
    double before = 0, after = 0, src_before = NAN, src_after = NAN, wise_acc = NAN, wise_src = NAN;
    fprintf(stderr, "zero-shot before fine-tuning on %s...\n", test.name);
    if ((rc = zeroshot_top1(m, tok, &test, a.eval_limit, templates, n_templates, &before))) goto done;
    if (a.source_test && (rc = zeroshot_top1(m, tok, &source, a.eval_limit, templates, n_templates, &src_before))) goto done;
    long warmup = finetune_warmup(o.steps);
    fprintf(stderr, "zero-shot top-1 %.2f%%; fine-tuning (%s) on %d images of %d classes: %ld steps of %d, lr %g "
                    "(linear warm-up over %ld steps, then cosine to 0), weight decay %g\n",
            100 * before, a.method, n_rows, train.n_classes, o.steps, B, o.lr, warmup, o.wd);
    if (make_dirs(a.out, &err)) {
        rc = cli_error("%s", err.message);
        goto done;
    }
    made_dir = true;
    char path[4200];
    snprintf(path, sizeof path, "%s/log.jsonl", a.out);
    if (!(ps.log = fopen(path, "w"))) {
        rc = cli_error("cannot write %s", path);
        goto done;
    }
    ps.start = ps.last = cli_now();
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    o.stop = stop_requested;
    if (finetune_run(m, tok, &train, rows, n_rows, &o, on_step, &ps, &ft, &res, &err)) {
        fprintf(stderr, "\n");
        rc = cli_error("%s", err.message);
        goto done;
    }
    if ((cut_short = res.steps_done < o.steps)) /* Ctrl-C: what was trained is kept, as train keeps a checkpoint */
        fprintf(stderr, "\ninterrupted at step %ld of %ld: saving the model as trained so far\n", res.steps_done, o.steps);
    double wall = cli_now() - ps.start;
    if ((rc = zeroshot_top1(ft, tok, &test, a.eval_limit, templates, n_templates, &after))) goto done;
    if (a.source_test && (rc = zeroshot_top1(ft, tok, &source, a.eval_limit, templates, n_templates, &src_after))) goto done;
    fprintf(stderr, "\nafter fine-tuning: top-1 %.2f%% on %s (was %.2f%%)", 100 * after, test.name, 100 * before);
    if (a.source_test) fprintf(stderr, "; %.2f%% on %s (was %.2f%%)", 100 * src_after, source.name, 100 * src_before);
    fprintf(stderr, "; %zu trainable parameters, %.1f s\n", res.trainable, wall);
    snprintf(path, sizeof path, "%s/model.safetensors", a.out);
    if (clipc_model_save(ft, path, &err)) {
        rc = cli_error("%s", err.message);
        goto done;
    }
    if (res.n_tensors > 0) {
        snprintf(path, sizeof path, "%s/adapter.safetensors", a.out);
        const char *keys[] = {"method"}, *vals[] = {a.method};
        if (st_write(path, res.tensors, res.n_tensors, keys, vals, 1, &err)) {
            rc = cli_error("%s", err.message);
            goto done;
        }
    }
    if (method == FT_LORA) { /* PEFT's adapter_config.json */
        cJSON *c = cJSON_CreateObject();
        cJSON_AddStringToObject(c, "peft_type", "LORA");
        cJSON_AddNumberToObject(c, "r", o.rank);
        cJSON_AddNumberToObject(c, "lora_alpha", o.alpha);
        cJSON_AddNumberToObject(c, "lora_dropout", 0);
        cJSON_AddStringToObject(c, "bias", "none");
        static const char *const hf[] = {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"};
        cJSON *t = cJSON_AddArrayToObject(c, "target_modules");
        for (int k = 0; k < 6; k++)
            if (o.targets & (1 << k)) cJSON_AddItemToArray(t, cJSON_CreateString(hf[k]));
        snprintf(path, sizeof path, "%s/adapter_config.json", a.out);
        char *text = cJSON_Print(c);
        rc = text && write_file_atomic(path, text, strlen(text), &err) == 0 ? 0 : cli_error("cannot write %s", path);
        free(text);
        cJSON_Delete(c);
        if (rc) goto done;
    }
    if (a.wise >= 0) {
        if (!(wise = wise_interpolate(m, ft, (float)a.wise, &err))) {
            rc = cli_error("%s", err.message);
            goto done;
        }
        snprintf(path, sizeof path, "%s/wise.safetensors", a.out);
        if (clipc_model_save(wise, path, &err)) {
            rc = cli_error("%s", err.message);
            goto done;
        }
        if ((rc = zeroshot_top1(wise, tok, &test, a.eval_limit, templates, n_templates, &wise_acc))) goto done;
        if (a.source_test && (rc = zeroshot_top1(wise, tok, &source, a.eval_limit, templates, n_templates, &wise_src)))
            goto done;
        fprintf(stderr, "WiSE-FT alpha %.2f: top-1 %.2f%% on %s", a.wise, 100 * wise_acc, test.name);
        if (a.source_test) fprintf(stderr, ", %.2f%% on %s", 100 * wise_src, source.name);
        fprintf(stderr, "\n");
    }
    fclose(ps.log);
    ps.log = NULL;
    snprintf(path, sizeof path, "%s/curve.svg", a.out);
    if (write_curve_svg(path, ps.curve.steps, ps.curve.loss, ps.curve.n, NULL, NULL, 0, o.steps, &err))
        fprintf(stderr, "clipc: warning: %s\n", err.message);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "method", a.method);
    cJSON_AddStringToObject(j, "model", a.model ? a.model : "default");
    cJSON_AddStringToObject(j, "dataset", train.name);
    cJSON_AddStringToObject(j, "test_dataset", test.name);
    cJSON_AddNumberToObject(j, "shots", (double)a.shots);
    cJSON_AddNumberToObject(j, "train_images", n_rows);
    cJSON_AddNumberToObject(j, "test_images", a.eval_limit > 0 && a.eval_limit < test.count ? a.eval_limit : test.count);
    cJSON_AddNumberToObject(j, "seed", (double)a.seed);
    cJSON_AddNumberToObject(j, "steps", (double)o.steps);
    cJSON_AddNumberToObject(j, "steps_done", (double)res.steps_done);
    cJSON_AddNumberToObject(j, "batch", B);
    cJSON_AddNumberToObject(j, "lr", o.lr);
    cJSON_AddStringToObject(j, "lr_schedule", "linear warm-up, then cosine to 0");
    cJSON_AddNumberToObject(j, "warmup_steps", (double)finetune_warmup(o.steps));
    cJSON_AddNumberToObject(j, "weight_decay", o.wd);
    if (method == FT_LORA) {
        cJSON_AddNumberToObject(j, "rank", o.rank);
        cJSON_AddNumberToObject(j, "alpha", o.alpha);
        cJSON_AddStringToObject(j, "targets", a.targets);
    }
    if (method == FT_LORA || method == FT_FULL) cJSON_AddStringToObject(j, "tower", tower);
    if (method == FT_COOP || method == FT_COCOOP) {
        cJSON_AddNumberToObject(j, "ctx", o.n_ctx);
        cJSON_AddStringToObject(j, "ctx_init", o.ctx_init ? o.ctx_init : "random N(0, 0.02)");
        if (method == FT_COOP) cJSON_AddBoolToObject(j, "class_specific_context", o.csc);
    }
    if (method == FT_ADAPTER) cJSON_AddNumberToObject(j, "residual_ratio", o.ratio);
    cJSON_AddNumberToObject(j, "zeroshot_top1_before", before);
    cJSON_AddNumberToObject(j, "zeroshot_top1_after", after);
    if (a.source_test) {
        cJSON_AddStringToObject(j, "source_test_dataset", source.name);
        cJSON_AddNumberToObject(j, "source_top1_before", src_before);
        cJSON_AddNumberToObject(j, "source_top1_after", src_after);
    }
    if (a.wise >= 0) {
        cJSON_AddNumberToObject(j, "wise_alpha", a.wise);
        cJSON_AddNumberToObject(j, "wise_top1", wise_acc);
        if (a.source_test) cJSON_AddNumberToObject(j, "wise_source_top1", wise_src);
    }
    cJSON_AddNumberToObject(j, "trainable_parameters", (double)res.trainable);
    cJSON_AddNumberToObject(j, "wall_time_s", wall);
    char *text = cJSON_Print(j);
    snprintf(path, sizeof path, "%s/finetune.json", a.out);
    rc = text && write_file_atomic(path, text, strlen(text), &err) == 0 ? 0 : cli_error("cannot write %s", path);
    free(text);
    cJSON_Delete(j);
done:
    if (ps.log) fclose(ps.log);
    if (rc && made_dir) { /* nothing half-written is left behind */
        static const char *const files[] = {"log.jsonl", "model.safetensors", "adapter.safetensors",
                                            "adapter_config.json", "wise.safetensors", "curve.svg", "finetune.json"};
        for (size_t k = 0; k < sizeof files / sizeof *files; k++) {
            snprintf(path, sizeof path, "%s/%s", a.out, files[k]);
            remove(path);
        }
        rmdir(a.out); /* only when empty */
    }
    history_free(&ps.curve);
    finetune_result_free(&res);
    clipc_model_free(wise);
    clipc_model_free(ft);
    clipc_model_free(m);
    free(rows);
    if (template_text) free((void *)templates);
    free(template_text);
    image_set_free(&train);
    image_set_free(&test);
    image_set_free(&source);
    clipc_tokenizer_free(tok);
    return rc ? rc : cut_short ? 130 : 0;
}

int cmd_wise(int argc, char **argv) {
    const char *model = NULL, *finetuned = NULL, *out = NULL;
    double alpha = -1;
    for (int i = 0; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if ((!strcmp(f, "-m") || !strcmp(f, "--model")) && v) model = argv[++i];
        else if (!strcmp(f, "--finetuned") && v) finetuned = argv[++i];
        else if (!strcmp(f, "-o") && v) out = argv[++i];
        else if (!strcmp(f, "--alpha")) {
            if (!parse_real(f, v, 0, 1, &alpha)) return 1;
            i++;
        } else if (!strcmp(f, "--help")) {
            printf("usage: clipc wise -m ZERO_SHOT --finetuned FT --alpha A -o OUT\n"
                   "  WiSE-FT (Wortsman et al. 2022): OUT = (1 - A) ZERO_SHOT + A FT, tensor by tensor (A in 0..1:\n"
                   "  0 is the zero-shot model, 1 the fine-tuned one). FT must be ZERO_SHOT fine-tuned.\n");
            return 0;
        } else return cli_unexpected("wise", cmd_wise, f);
    }
    if (!finetuned || !out || alpha < 0) return cli_error("wise: needs --finetuned FT --alpha A -o OUT");
    clipc_model *z = cli_load_model(model), *f = z ? cli_load_model(finetuned) : NULL;
    clipc_error err;
    clipc_model *w = f ? wise_interpolate(z, f, (float)alpha, &err) : NULL;
    int rc = 0;
    if (z && f && !w) rc = cli_error("%s", err.message);
    else if (!w) rc = 1;
    else if (clipc_model_save(w, out, &err)) rc = cli_error("%s", err.message);
    else fprintf(stderr, "wrote %s: %.2f x zero-shot + %.2f x %s\n", out, 1 - alpha, alpha, finetuned);
    clipc_model_free(w);
    clipc_model_free(f);
    clipc_model_free(z);
    return rc;
}
