/* cmd_train.c — `clipc train`: contrastive training from scratch on
 * Fashion-MNIST image/caption pairs, with checkpoints, resume, a JSONL log,
 * a learning-curve picture and periodic zero-shot evaluation. */
#include "cli.h"
#include "../train/train.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) { interrupted = sig; }

static const char TRAIN_USAGE[] =
    "usage: clipc train --data fashion-mnist|FILE.csv --out DIR [--arch NAME | --init MODEL] [--batch B] [--accum K]\n"
    "                   (--steps N | --epochs E) [--lr LR] [--lr-temperature LR] [--freeze image|text|none]\n"
    "                   [--wd WD] [--warmup STEPS] [--loss clip|siglip]\n"
    "                   [--eval-every N] [--eval-limit N] [--grad-clip C] [--seed S] [--stop-at STEP] [--resume]\n"
    "                   [--csv-img-key filepath] [--csv-caption-key title] [--csv-separator C]\n"
    "                   [--contrastive-weight W] [--caption-weight W]\n"
    "  Trains a CLIP model (default arch: fmnist) on Fashion-MNIST images paired with captions\n"
    "  generated from their labels, or on the image/caption pairs of a CSV/TSV file (OpenCLIP's\n"
    "  columns; comma for .csv, tab otherwise; images get RandomResizedCrop(scale 0.9-1); unreadable\n"
    "  ones are skipped and counted). DIR receives checkpoint.safetensors (model + optimiser, for\n"
    "  --resume), model.safetensors (for embed/classify), log.jsonl and curve.svg.\n"
    "  --init MODEL starts from a checkpoint (a file or a pulled name) instead of a random --arch:\n"
    "  contrastive fine-tuning of both towers; --freeze image keeps the image tower fixed (LiT; a\n"
    "  ResNet image tower can only be trained this way), --freeze text the text tower. logit_scale\n"
    "  learns at --lr-temperature (default: 10 x --lr with --init, else --lr) on the same schedule.\n"
    "  Defaults: --batch 128 --accum 1 --lr 5e-4 --wd 0.2 --warmup 5%% of the steps (at most 500;\n"
    "  at least 10, or half of a run shorter than 20 steps)\n"
    "  --loss clip --eval-every 500 --grad-clip 1 --seed 0. --eval-limit evaluates on the first N\n"
    "  test images only; --stop-at ends this session after STEP, with a checkpoint to --resume from.\n"
    "  The dataset is read from " FMNIST_DIR " (or $CLIPC_FASHION_MNIST_DIR).\n"
    "  Under mpirun (mpirun -np R clipc train ...), --batch is the global batch: each rank takes\n"
    "  batch/R pairs of every micro-batch, the loss sees all of them, and rank 0 writes the log\n"
    "  and checkpoints. A run resumes with any number of ranks.\n"
    "  A CoCa architecture (--arch coca-fmnist) trains with OpenCLIP's CoCaLoss: --contrastive-weight (1)\n"
    "  times InfoNCE plus --caption-weight (2) times the captions' token cross-entropy; `clipc caption`\n"
    "  then writes captions with the model.\n";

/* On resume, the curve continues from the log of the earlier run(s), and
 * the log is cut back to the checkpoint's step: lines a crashed session
 * wrote after its last checkpoint would otherwise appear twice. */
static void history_from_log(history *h, const char *path, long up_to) {
    FILE *f = fopen(path, "r");
    if (!f) return;
    char tmp[4200]; /* path + ".tmp" */
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *kept = fopen(tmp, "w");
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        cJSON *j = cJSON_Parse(line);
        cJSON *st = cJSON_GetObjectItem(j, "step"), *loss = cJSON_GetObjectItem(j, "loss"),
              *acc = cJSON_GetObjectItem(j, "zeroshot_top1");
        if (cJSON_IsNumber(st) && st->valuedouble <= up_to) {
            if (cJSON_IsNumber(acc)) history_eval(h, (long)st->valuedouble, (float)acc->valuedouble);
            else if (cJSON_IsNumber(loss)) history_add(h, (long)st->valuedouble, (float)loss->valuedouble);
            if (kept) fputs(line, kept);
        }
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    if (kept && fclose(kept) == 0) rename(tmp, path);
}

typedef struct args {
    const char *data, *out, *arch, *init, *img_key, *caption_key;
    char separator;
    long batch, accum, steps, epochs, warmup, eval_every, seed, eval_limit, stop_at;
    double lr, wd, grad_clip, lr_temperature, contrastive_weight, caption_weight;
    int loss, freeze;
    bool resume, given_batch, given_accum, given_loss, given_eval_every, given_eval_limit, given_arch, given_freeze;
} args;

static int parse(int argc, char **argv, args *a) {
    *a = (args){.arch = "fmnist", .img_key = "filepath", .caption_key = "title", .batch = 128, .accum = 1, .warmup = -1,
                .eval_every = 500, .lr = 5e-4, .wd = 0.2, .grad_clip = 1.0, .lr_temperature = -1};
    for (int i = 0; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = true;
        if (!strcmp(f, "--data") && v) a->data = v;
        else if (!strcmp(f, "--out") && v) a->out = v;
        else if (!strcmp(f, "--arch") && v) a->arch = v, a->given_arch = true;
        else if (!strcmp(f, "--init") && v) a->init = v;
        else if (!strcmp(f, "--freeze") && v) {
            a->freeze = !strcmp(v, "image") ? FREEZE_IMAGE : !strcmp(v, "text") ? FREEZE_TEXT : !strcmp(v, "none") ? 0 : -1;
            if (a->freeze < 0) return cli_error("--freeze: '%s' is not image, text or none", v);
            a->given_freeze = true;
        }
        else if (!strcmp(f, "--csv-img-key") && v) a->img_key = v;
        else if (!strcmp(f, "--csv-caption-key") && v) a->caption_key = v;
        else if (!strcmp(f, "--csv-separator") && v) {
            if (strlen(v) != 1 && strcmp(v, "\\t")) return cli_error("--csv-separator: one character (or \\t)");
            a->separator = !strcmp(v, "\\t") ? '\t' : v[0];
        }
        else if (!strcmp(f, "--loss") && v) {
            if (strcmp(v, "clip") && strcmp(v, "siglip")) return cli_error("--loss: '%s' is not clip or siglip", v);
            a->loss = !strcmp(v, "siglip") ? LOSS_SIGLIP : LOSS_CLIP;
            a->given_loss = true;
        } else if (!strcmp(f, "--batch")) {
            if (!cli_int(f, v, 2, 65536, &a->batch)) return 1;
            a->given_batch = true;
        } else if (!strcmp(f, "--accum")) {
            if (!cli_int(f, v, 1, 4096, &a->accum)) return 1;
            a->given_accum = true;
        } else if (!strcmp(f, "--steps")) {
            if (!cli_int(f, v, 1, 100000000, &a->steps)) return 1;
        } else if (!strcmp(f, "--epochs")) {
            if (!cli_int(f, v, 1, 100000, &a->epochs)) return 1;
        } else if (!strcmp(f, "--warmup")) {
            if (!cli_int(f, v, 0, 100000000, &a->warmup)) return 1;
        } else if (!strcmp(f, "--eval-every")) {
            if (!cli_int(f, v, 1, 100000000, &a->eval_every)) return 1;
            a->given_eval_every = true;
        } else if (!strcmp(f, "--eval-limit")) {
            if (!cli_int(f, v, 1, 100000000, &a->eval_limit)) return 1;
            a->given_eval_limit = true;
        } else if (!strcmp(f, "--stop-at")) {
            if (!cli_int(f, v, 1, 100000000, &a->stop_at)) return 1;
        } else if (!strcmp(f, "--seed")) {
            if (!cli_int(f, v, 0, 0x7fffffffffffffffL, &a->seed)) return 1;
        } else if (!strcmp(f, "--contrastive-weight") || !strcmp(f, "--caption-weight")) {
            char *end;
            double d = v ? strtod(v, &end) : 0;
            if (!v || *end || !(d > 0) || d > 100) return cli_error("%s: '%s' is not a number in (0, 100]", f, v ? v : "");
            *(!strcmp(f, "--caption-weight") ? &a->caption_weight : &a->contrastive_weight) = d;
        } else if (!strcmp(f, "--lr") || !strcmp(f, "--wd") || !strcmp(f, "--grad-clip") || !strcmp(f, "--lr-temperature")) {
            char *end;
            double d = v ? strtod(v, &end) : 0;
            if (!v || *end || !(d >= 0) || d > 10) return cli_error("%s: '%s' is not a number in 0..10", f, v ? v : "");
            if (!strcmp(f, "--lr-temperature") && d == 0)
                return cli_error("--lr-temperature: give a positive learning rate (a tiny one keeps logit_scale "
                                 "nearly fixed)");
            *(!strcmp(f, "--lr") ? &a->lr : !strcmp(f, "--wd") ? &a->wd : !strcmp(f, "--grad-clip") ? &a->grad_clip
                                                                                              : &a->lr_temperature) = d;
        } else {
            takes = false;
            if (!strcmp(f, "--resume")) a->resume = true;
            else if (!strcmp(f, "--help")) {
                printf(TRAIN_USAGE);
                return -1;
            } else {
                static const char *const flags[] = {
                    "--data", "--out", "--arch", "--init", "--freeze", "--csv-img-key", "--csv-caption-key",
                    "--csv-separator", "--loss", "--batch", "--accum", "--steps", "--epochs", "--warmup", "--eval-every",
                    "--eval-limit", "--stop-at", "--seed", "--lr", "--wd", "--grad-clip", "--lr-temperature", "--resume",
                    "--contrastive-weight", "--caption-weight", "--help"};
                const char *near = cli_nearest(f, flags, (int)(sizeof flags / sizeof *flags));
                if (near) return cli_error("train: unexpected argument '%s': did you mean '%s'?", f, near);
                return cli_error("train: unexpected argument '%s' (see clipc train --help)", f);
            }
        }
        if (takes) i++;
    }
    if (!a->out) return cli_error("train: needs --out DIR");
    if (!a->data && a->resume) a->data = "fashion-mnist";
    if (!a->data) return cli_error("train: needs --data fashion-mnist|FILE.csv");
    if (!a->resume && !a->steps == !a->epochs) return cli_error("train: give exactly one of --steps and --epochs");
    if (a->init && a->given_arch) return cli_error("train: --init MODEL brings its own architecture; drop --arch");
    if (a->init && a->resume) return cli_error("train: --resume continues from DIR's checkpoint; drop --init");
    if (a->resume && (a->given_freeze || a->lr_temperature > 0))
        return cli_error("train: --resume keeps the run's --freeze and --lr-temperature");
    return 0;
}

/* Saves checkpoint.safetensors (for --resume) and model.safetensors. */
static int save(const trainer *t, const char *out, uint64_t seed) {
    char path[4096];
    clipc_error err;
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", out);
    if (train_checkpoint_save(t, path, seed, &err)) return cli_error("%s", err.message);
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    if (clipc_model_save(t->m, path, &err)) return cli_error("%s", err.message);
    return 0;
}

/* Removes what a killed run's atomic writes left half-done (NAME.tmp.PID). */
static void remove_stale_temporaries(const char *out) {
    static const char *const names[] = {"checkpoint.safetensors", "model.safetensors"};
    DIR *dir = opendir(out);
    struct dirent *e;
    while (dir && (e = readdir(dir)))
        for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
            size_t n = strlen(names[i]);
            if (!strncmp(e->d_name, names[i], n) && !strncmp(e->d_name + n, ".tmp.", 5)) {
                char path[4400];
                snprintf(path, sizeof path, "%s/%s", out, e->d_name);
                remove(path);
            }
        }
    if (dir) closedir(dir);
}

static int train_main(int argc, char **argv, const dist *d);

int cmd_train(int argc, char **argv) {
    dist d;
    clipc_error err;
    if (dist_init(NULL, NULL, &d, &err)) return cli_error("%s", err.message);
    if (d.size > 1) snprintf(cli_error_context, sizeof cli_error_context, "rank %d: ", d.rank);
    int rc = train_main(argc, argv, &d);
    /* A rank that failed alone must not leave the others waiting in a
     * collective: it ends the whole job, naming itself. (3: every rank
     * stopped together, as on a diverged loss.) */
    if (rc == 3) rc = 1;
    else if (rc != 0 && rc != 130 && d.size > 1) dist_abort(&d, rc);
    dist_finalize(&d);
    return rc;
}

static int train_main(int argc, char **argv, const dist *d) {
    args a;
    bool lead = d->rank == 0; /* rank 0 prints, logs and saves */
    int rc = parse(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    clipc_error derr;
    if (make_dirs(a.out, &derr)) return cli_error("%s", derr.message); /* parents too */
    char ckpt[4096], log_path[4096], curve[4096];
    snprintf(ckpt, sizeof ckpt, "%s/checkpoint.safetensors", a.out);
    snprintf(log_path, sizeof log_path, "%s/log.jsonl", a.out);
    snprintf(curve, sizeof curve, "%s/curve.svg", a.out);
    if (lead) remove_stale_temporaries(a.out);
    clipc_error err;
    fmnist train = {0}, test = {0};
    csv_pairs csv = {0};
    bool fm = !strcmp(a.data, "fashion-mnist");
    if (fm ? fmnist_load(NULL, true, &train, &err) || fmnist_load(NULL, false, &test, &err)
           : csv_load(a.data, a.img_key, a.caption_key, a.separator, &csv, &err)) {
        fmnist_free(&train);
        return cli_error("%s", err.message);
    }
    pair_source src = {fm ? &train : NULL, fm ? NULL : &csv, fm ? train.count : csv.count};
    if (!a.resume && d->rank == 0 && a.batch * a.accum > src.count)
        fprintf(stderr, "clipc: warning: a step of %ld pairs is more than the %d the data has: pairs repeat within a "
                        "step\n", a.batch * a.accum, src.count);

    clipc_model *m = NULL;
    trainer t = {0};
    /* with --init, logit_scale learns 10x faster by default, as CLIP fine-tuning recipes set it */
    float lr_t = a.lr_temperature > 0 ? (float)a.lr_temperature : a.init ? 10 * (float)a.lr : (float)a.lr;
    train_options o = {.loss = a.loss, .batch = (int)a.batch, .accum = (int)a.accum, .lr = (float)a.lr, .beta1 = 0.9f,
                       .beta2 = 0.98f, .eps = 1e-6f, .weight_decay = (float)a.wd, .grad_clip = (float)a.grad_clip,
                       .lr_temperature = lr_t, .freeze = a.freeze, .contrastive_weight = (float)a.contrastive_weight,
                       .caption_weight = (float)a.caption_weight};
    uint64_t seed = (uint64_t)a.seed;
    long step = 0;
    if (a.resume) {
        if (train_checkpoint_load(ckpt, &m, &o, &seed, &step, &t, d, &err)) {
            rc = cli_error("--resume: %s", err.message);
            goto done;
        }
        if ((a.given_batch && a.batch != o.batch) || (a.given_accum && a.accum != o.accum) ||
            (a.given_loss && a.loss != o.loss)) {
            rc = cli_error("--resume: the checkpoint was trained with --batch %d --accum %d --loss %s", o.batch, o.accum,
                           o.loss == LOSS_SIGLIP ? "siglip" : "clip");
            goto done;
        }
        if (a.steps || a.epochs) { /* the cosine schedule was laid out for the run's own length */
            rc = cli_error("--resume continues the run to its step %ld; --steps and --epochs cannot change it (to train "
                           "further, start a new run from it: --init %s/model.safetensors)", o.total_steps, a.out);
            goto done;
        }
        /* the run's own --eval-every unless this command gives one */
        if (!a.given_eval_every && o.eval_every > 0) a.eval_every = o.eval_every;
        if (!a.given_eval_limit && o.eval_every > 0) a.eval_limit = o.eval_limit;
        if (lead) fprintf(stderr, "resuming %s at step %ld of %ld\n", ckpt, step, o.total_steps);
    } else {
        if (access(ckpt, F_OK) == 0) {
            rc = cli_error("%s already holds a run: use --resume, or another --out", a.out);
            goto done;
        }
        if (a.init) { /* a pretrained model, at fp32 whatever its file held */
            if (!(m = cli_load_model(a.init))) {
                rc = 1;
                goto done;
            }
            if (clipc_model_set_precision(m, CLIPC_FP32, &err)) {
                rc = cli_error("%s", err.message);
                goto done;
            }
        } else {
            const clipc_config *base = arch_config(a.arch);
            if (!base) {
                clipc_model *probe = clipc_model_init(a.arch, 0, &err); /* for its error message */
                clipc_model_free(probe);
                rc = cli_error("%s", err.message);
                goto done;
            }
            clipc_config cfg = *base;
            cfg.has_logit_bias = a.loss == LOSS_SIGLIP;
            if (!(m = model_new(&cfg, &err))) {
                rc = cli_error("%s", err.message);
                goto done;
            }
            model_randomize(m, seed);
            if (a.loss == LOSS_SIGLIP) m->params[m->L.logit_scale] = logf(10.0f); /* SigLIP: t' = ln 10, b = -10 */
        }
        long per_epoch = (src.count + a.batch * a.accum - 1) / (a.batch * a.accum);
        o.total_steps = a.steps ? a.steps : a.epochs * per_epoch;
        /* 5% of the steps, at most 500; a short run still warms up, over up to 10 steps (or half
         * the run): from a random start, a 3-step ViT-B/32 run at the full rate went from 10.3 to 23.8 */
        if (a.warmup >= 0) o.warmup = a.warmup;
        else {
            long short_run = (o.total_steps + 1) / 2 < 10 ? (o.total_steps + 1) / 2 : 10;
            o.warmup = o.total_steps / 20 > short_run ? o.total_steps / 20 : short_run;
            if (o.warmup > 500) o.warmup = 500;
        }
        if (trainer_init(&t, m, &o, d, &err)) {
            rc = cli_error("%s", err.message);
            goto done;
        }
        if (lead) remove(log_path);
    }
    t.o.eval_every = a.eval_every, t.o.eval_limit = a.eval_limit; /* recorded in every checkpoint, for --resume */
    /* every rank starts from rank 0's weights, bit for bit */
    dist_broadcast(d, m->params, m->table.total);
    const clipc_config *c = clipc_model_config(m);
    int N = o.batch * o.accum, shard = t.local_batch * o.accum; /* pairs per step: global, this rank's */
    clipc_tokenizer *tok = clipc_tokenizer_new(&err);
    loader *ld = tok ? loader_start(src, N, d->rank * shard, shard, c->image_resolution, c->context_length, seed, step,
                                    o.total_steps, &err)
                     : NULL;
    history h = {0};
    if (lead) history_from_log(&h, log_path, step);
    FILE *log = fopen(lead ? log_path : "/dev/null", "a");
    if (!tok || !ld || !log) {
        rc = cli_error("%s", !log ? "cannot open the log" : err.message);
        clipc_tokenizer_free(tok);
        loader_stop(ld);
        if (log) fclose(log);
        goto done;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (lead)
        fprintf(stderr, "training %s (%zu parameters) on %d %s pairs: %ld steps of %d x %d pairs, %s loss\n",
                a.resume ? "resumed model" : a.init ? a.init : a.arch, clipc_model_param_count(m), src.count,
                fm ? "Fashion-MNIST" : a.data, o.total_steps, o.accum, o.batch,
                m->cfg.family == CLIPC_COCA ? "CoCa (contrastive + caption)" : o.loss == LOSS_SIGLIP ? "SigLIP" : "CLIP");
    if (lead && (t.o.freeze || t.o.lr_temperature != t.o.lr))
        fprintf(stderr, "frozen tower: %s; logit_scale's learning rate %g (the others' %g)\n",
                train_freeze_name(t.o.freeze), t.o.lr_temperature, t.o.lr);
    if (lead && d->size > 1)
        fprintf(stderr, "data-parallel over %d ranks: %d pairs of each micro-batch per rank\n", d->size, t.local_batch);
    if (lead && t.shares > 1)
        fprintf(stderr, "data-parallel over %d threads%s: each takes its share of every micro-batch\n", t.shares,
                d->size > 1 ? " per rank" : "");
    long skipped_reported = 0;
    double start = cli_now(), last_print = 0;
    long first = step;
    long stop = a.stop_at > 0 && a.stop_at < o.total_steps ? a.stop_at : o.total_steps;
    while (step < stop && !dist_max_int(d, interrupted)) { /* all ranks stop at the same step */
        const float *pixels;
        const int32_t *tokens;
        step_stats st;
        if (loader_get(ld, step, &pixels, &tokens, &err)) {
            rc = cli_error("data: %s", err.message);
            break;
        }
        int fail = trainer_step(&t, pixels, tokens, &st, &err);
        loader_release(ld, step);
        if (fail) {
            /* divergence is seen by every rank at once (the loss and the
             * gradient norm are global): they stop together, rank 0 speaks */
            bool diverged = !isfinite(st.metrics.loss) || !isfinite(st.grad_norm);
            if (diverged && !lead) {
                rc = 3;
                break;
            }
            if (diverged || d->size == 1) rc = cli_error("%s; the last good checkpoint is %s", err.message, ckpt);
            else rc = cli_error("%s", err.message);
            if (diverged) rc = 3; /* all ranks end normally, with this status */
            break;
        }
        step++;
        double now = cli_now(), rate = (double)(step - first) * N / (now - start);
        const loss_metrics *lm = &st.metrics;
        fprintf(log,
                "{\"step\": %ld, \"loss\": %.6f, \"lr\": %.6g, \"logit_scale\": %.4f, \"grad_norm\": %.4f, "
                "\"pos_sim\": %.4f, \"hard_neg_sim\": %.4f, \"margin\": %.4f, \"acc_i2t\": %.4f, \"acc_t2i\": %.4f, "
                "\"pairs_per_s\": %.1f, \"elapsed_s\": %.1f",
                step, lm->loss, st.lr, st.logit_scale, st.grad_norm, lm->pos_sim, lm->hard_neg_sim, lm->margin,
                lm->acc_i2t, lm->acc_t2i, rate, now - start);
        if (m->cfg.family == CLIPC_COCA) fprintf(log, ", \"contrastive\": %.6f, \"caption\": %.6f", lm->contrastive, lm->caption);
        fprintf(log, "}\n");
        history_add(&h, step, lm->loss);
        char first_skip[512];
        long skipped = loader_skipped(ld, first_skip, sizeof first_skip);
        if (skipped > skipped_reported) { /* each rank reports the images of its own shard */
            fprintf(stderr, "%sclipc: warning: %ld unreadable image file%s so far, each replaced by the next pair (first: %s)\n",
                    cli_progress_enabled() ? "\n" : "", skipped, skipped == 1 ? "" : "s", first_skip);
            skipped_reported = skipped;
        }
        if (lead && (now - last_print > (cli_progress_enabled() ? 0.5 : 30.0) || step == o.total_steps)) {
            double eta = (o.total_steps - step) * N / (rate > 0 ? rate : 1);
            char caption[48] = "";
            if (m->cfg.family == CLIPC_COCA) snprintf(caption, sizeof caption, " (caption %.3f)", lm->caption);
            fprintf(stderr, "%sstep %ld/%ld  loss %.4f%s  lr %.3g  scale %.2f  i2t %.2f  %.0f pairs/s  ETA %.0fs%s",
                    cli_progress_enabled() ? "\r" : "", step, o.total_steps, lm->loss, caption, st.lr, st.logit_scale,
                    lm->acc_i2t, rate, eta, cli_progress_enabled() ? "   " : "\n");
            last_print = now;
        }
        if (lead && (step % a.eval_every == 0 || step == o.total_steps)) {
            float acc = 0;
            if (fm && fmnist_zeroshot(m, tok, &test, (int)a.eval_limit, "a photo of a {}.", &acc, &err)) {
                rc = cli_error("evaluation: %s", err.message);
                break;
            }
            if (fm) {
                fprintf(log, "{\"step\": %ld, \"zeroshot_top1\": %.4f, \"elapsed_s\": %.1f}\n", step, acc,
                        cli_now() - start);
                history_eval(&h, step, acc);
                int n_eval = a.eval_limit > 0 && a.eval_limit < test.count ? (int)a.eval_limit : test.count;
                fprintf(stderr, "%sstep %ld: zero-shot top-1 on %d test images: %.2f%%\n",
                        cli_progress_enabled() ? "\n" : "", step, n_eval, 100.0 * acc);
            }
            /* the log first: a kill during the checkpoint write keeps its lines */
            fflush(log);
            fsync(fileno(log));
            if ((rc = save(&t, a.out, seed))) break;
            if (write_curve_svg(curve, h.steps, h.loss, h.n, h.eval_steps, h.acc, h.n_eval, o.total_steps, &err))
                fprintf(stderr, "clipc: warning: %s\n", err.message);
        }
    }
    if (rc == 0 && step < stop) { /* some rank was interrupted */
        if (lead) fprintf(stderr, "\ninterrupted at step %ld: saving a checkpoint (resume with --resume)\n", step);
        rc = lead && save(&t, a.out, seed) ? 1 : 130;
    } else if (rc == 0 && step < o.total_steps) {
        if (lead) fprintf(stderr, "stopped at step %ld of %ld (--stop-at): resume with --resume\n", step, o.total_steps);
        rc = lead ? save(&t, a.out, seed) : 0;
    }
    loader_stop(ld);
    clipc_tokenizer_free(tok);
    fclose(log);
    history_free(&h);
done:
    if (t.grads) trainer_free(&t);
    clipc_model_free(m);
    fmnist_free(&train);
    fmnist_free(&test);
    csv_free(&csv);
    return rc;
}
