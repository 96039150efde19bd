/* cli.h — what the clipc commands share: error reporting and argument
 * helpers. Each command is `int cmd_NAME(int argc, char **argv)` returning
 * the process exit status. */
#ifndef CLIPC_CLI_H
#define CLIPC_CLI_H

#include "../internal.h"

#include <stdbool.h>

/* Prints "clipc: error: <context><message>" on one line of stderr and
 * returns 1. The context is empty, or "rank R: " in an MPI job. */
int cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern char cli_error_context[32];
/* Integer flag value with range check; returns false after reporting. */
bool cli_int(const char *flag, const char *value, long min, long max, long *out);
/* Collects the values after a multi-value flag (until the next "-x"/"--x"). */
int cli_collect(int argc, char **argv, int i, const char ***out, int *count);
/* True when stderr is a terminal (progress lines are drawn there). */
bool cli_progress_enabled(void);
void cli_progress(const char *what, long done, long total, double start_time);
double cli_now(void);
/* The model shipped with clipc, used when -m is left out: $CLIPC_MODEL,
 * else models/DEFAULT_MODEL_FILE beside the build (build/clipc ->
 * models/), else PREFIX/share/clipc/ of an installed binary. */
#define DEFAULT_MODEL_FILE "clipc-fmnist.safetensors"
/* One line on stderr when the shipped default model (no -m, no
 * $CLIPC_MODEL) is given images unlike its 28x28 gray training data. */
void cli_note_default_model(const char *model_path, const char *const *images, int n);
/* Loads a model (path NULL: the default one), printing the error; NULL on failure. */
clipc_model *cli_load_model(const char *path);
/* The same with another default: default_file in models/ or share/clipc/, or $envname. */
clipc_model *cli_load_model_or(const char *path, const char *default_file, const char *envname);
/* The shipped CoCa, the default of `clipc caption` ($CLIPC_CAPTION_MODEL overrides). */
#define DEFAULT_CAPTION_MODEL_FILE "clipc-fmnist-coca.safetensors"

/* The model to query an index with: model_path (-m) when given, else the one
 * `clipc index -m` recorded in it (copied into path, cap bytes; a note on
 * stderr), else NULL: the default model. */
struct clip_index;
const char *cli_index_model(struct clip_index *ix, const char *model_path, char *path, size_t cap);
/* --templates: "imagenet" (OpenAI's 80), "simple" ("a photo of a {}."), or a
 * file with one template per line. *text is the file's text (free it, and
 * then *templates, when non-NULL). Returns 0 or 1 after reporting. */
int cli_templates(const char *arg, char **text, const char ***templates, int *n);
/* The candidate within two edits of word (the closest, the first on a tie), or NULL: "did you mean". */
const char *cli_nearest(const char *word, const char *const *candidates, int n);
/* The error for an argument command does not take: "did you mean" the nearest
 * flag of the command's own --help text (cmd run with --help, its output
 * captured), else a pointer to --help. Returns 1. */
int cli_unexpected(const char *command, int (*cmd)(int, char **), const char *arg);
/* Prints s as a JSON string literal on stdout. */
void cli_json_string(const char *s);

/* Image arguments with every folder replaced by the JPEG/PNG files under it,
 * recursively, sorted by path (files stay as given, in order); *paths owned
 * (cli_free_paths). Returns 0, or 1 after reporting. */
int cli_expand_images(const char *const *args, int n, char ***paths, int *count);
void cli_free_paths(char **paths, int n);

/* Encodes image files in batches, decoding on all cores; features [n, E].
 * Returns 0, or 1 after reporting the first failing file. */
int cli_encode_image_files(clipc_model *m, const char *const *paths, int n, float *features);

int cmd_init(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_preprocess(int argc, char **argv);
int cmd_embed(int argc, char **argv);
int cmd_classify(int argc, char **argv);
int cmd_caption(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_retrieve(int argc, char **argv);
int cmd_index(int argc, char **argv);
int cmd_search(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_export_images(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_pull(int argc, char **argv);
int cmd_models(int argc, char **argv);
int cmd_finetune(int argc, char **argv);
int cmd_wise(int argc, char **argv);

#endif
