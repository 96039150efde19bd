/* cmd_pull.c — `clipc pull` and `clipc models`: published checkpoints by
 * name, downloaded into the cache with progress, resume and SHA-256. */
#include "cli.h"
#include "../hub/hub.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void progress(void *ctx, const char *what, long long done, long long total) {
    double *start = ctx;
    if (total > 0) cli_progress(what, (long)(done >> 10), (long)(total >> 10), *start);
}

int cmd_pull(int argc, char **argv) {
    const char *name = NULL, *cache_arg = NULL, *url = NULL, *sha = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--cache") && i + 1 < argc) cache_arg = argv[++i];
        else if (!strcmp(argv[i], "--url") && i + 1 < argc) url = argv[++i];
        else if (!strcmp(argv[i], "--sha256") && i + 1 < argc) sha = argv[++i];
        else if (!strcmp(argv[i], "--help")) {
            printf("usage: clipc pull NAME [--cache DIR]            a published checkpoint (see clipc models)\n"
                   "       clipc pull --url URL [--sha256 HEX] [--cache DIR] [NAME]\n"
                   "                                                any file, kept as NAME (default: its file name)\n"
                   "Files go to DIR (default $XDG_CACHE_HOME/clipc, else ~/.cache/clipc), resume where an earlier\n"
                   "run stopped, and land only complete and checked against their published SHA-256.\n"
                   "Then -m NAME works on every command (with $CLIPC_CACHE for a --cache DIR).\n");
            return 0;
        } else if (argv[i][0] != '-' && !name) name = argv[i];
        else return cli_unexpected("pull", cmd_pull, argv[i]);
    }
    if (!name && !url) return cli_error("pull: needs a model name (see 'clipc models') or --url URL");
    if (sha && (strlen(sha) != 64 || strspn(sha, "0123456789abcdef") != 64))
        return cli_error("pull: --sha256 needs 64 lower-case hex digits");
    hub_model custom = {0};
    const hub_model *m;
    if (url) {
        const char *base = strrchr(url, '/');
        custom.name = name ? name : base && base[1] ? base + 1 : "download";
        custom.source = "URL";
        custom.urls[0] = url;
        custom.sha256[0] = sha;
        m = &custom;
    } else if (!(m = hub_find(name))) {
        return cli_error("pull: unknown model '%s' (run 'clipc models' for the list, or use --url)", name);
    }
    clipc_error err;
    char cache[4096], path[4096];
    if (hub_cache_dir(cache_arg, cache, sizeof cache, &err)) return cli_error("%s", err.message);
    double start = cli_now();
    int unverified = 0;
    if (hub_pull(m, cache, progress, &start, path, sizeof path, &unverified, &err)) {
        if (cli_progress_enabled()) fputc('\n', stderr);
        return cli_error("%s", err.message);
    }
    fprintf(stderr, "%s: %s%s\n", m->name, path, unverified ? " (no published checksum to verify against)" : "");
    printf("%s\n", path);
    return 0;
}

int cmd_models(int argc, char **argv) {
    if (argc > 0 && !strcmp(argv[0], "--help")) {
        printf("usage: clipc models   the checkpoints 'clipc pull NAME' knows, and which are in the cache\n");
        return 0;
    }
    if (argc > 0) return cli_error("models: unexpected argument '%s'", argv[0]);
    clipc_error err;
    char cache[4096], path[4096];
    bool have_cache = hub_cache_dir(getenv("CLIPC_CACHE"), cache, sizeof cache, &err) == 0;
    int n;
    const hub_model *all = hub_models(&n);
    printf("%-34s %-13s %-7s %s\n", "name", "source", "pulled", "url");
    for (int i = 0; i < n; i++) {
        bool pulled = have_cache && hub_path(cache, &all[i], 0, path, sizeof path) == 0 && access(path, R_OK) == 0;
        printf("%-34s %-13s %-7s %s\n", all[i].name, all[i].source, pulled ? "yes" : "-", all[i].urls[0]);
    }
    return 0;
}
