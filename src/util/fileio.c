/* fileio.c — whole-file reads and atomic writes: a file we create is either
 * absent or complete, never half-written (temporary file, fsync, rename). */
#include "../internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

int open_regular_file(const char *path, size_t *len, clipc_error *err) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return clipc_fail(err, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return clipc_fail(err, "%s: not a regular file", path);
    }
    *len = (size_t)st.st_size;
    return fd;
}

int read_file(const char *path, unsigned char **data, size_t *len, clipc_error *err) {
    size_t n;
    int fd = open_regular_file(path, &n, err);
    if (fd < 0) return -1;
    unsigned char *buf = malloc(n ? n : 1);
    if (!buf) {
        close(fd);
        return clipc_fail(err, "%s: out of memory (%zu bytes)", path, n);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            free(buf);
            close(fd);
            return clipc_fail(err, "%s: read failed: %s", path, r < 0 ? strerror(errno) : "file shrank");
        }
        got += (size_t)r;
    }
    close(fd);
    *data = buf;
    *len = n;
    return 0;
}

int write_file_atomic(const char *path, const void *data, size_t len, clipc_error *err) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return clipc_fail(err, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return clipc_fail(err, "%s: %s", path, strerror(errno));
    const unsigned char *p = data;
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, p + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) goto fail;
        done += (size_t)w;
    }
    if (fsync(fd) != 0) goto fail;
    if (close(fd) != 0) {
        fd = -1;
        goto fail;
    }
    if (rename(tmp, path) != 0) {
        fd = -1;
        goto fail;
    }
    return 0;
fail:;
    int e = errno;
    if (fd >= 0) close(fd);
    unlink(tmp);
    return clipc_fail(err, "%s: write failed: %s", path, strerror(e));
}

int make_dirs(const char *path, clipc_error *err) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return clipc_fail(err, "path too long: %.80s...", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            struct stat st;
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) return clipc_fail(err, "%s: %s", buf, strerror(errno));
            if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) return clipc_fail(err, "%s: not a folder", buf);
            *p = c;
            if (!c) break;
        }
    }
    return 0;
}

bool is_image_file_name(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot && (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".png") ||
                   !strcasecmp(dot, ".tif") || !strcasecmp(dot, ".tiff") || !strcasecmp(dot, ".webp"));
}

static int compare_paths(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Depth-first; symbolic links are not followed (no cycles), hidden entries skipped. */
static int walk_images(const char *dir, char ***paths, int *n, int *cap, int depth, clipc_error *err) {
    if (depth > 64) return 0;
    DIR *d = opendir(dir);
    if (!d) return depth == 0 ? clipc_fail(err, "%s: %s", dir, strerror(errno)) : 0;
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[4096];
        struct stat st;
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path || lstat(path, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            rc = walk_images(path, paths, n, cap, depth + 1, err);
        } else if (S_ISREG(st.st_mode) && is_image_file_name(e->d_name)) {
            if (*n == *cap) {
                int grown = *cap ? 2 * *cap : 256;
                char **np = realloc(*paths, (size_t)grown * sizeof *np);
                if (!np) {
                    rc = clipc_fail(err, "out of memory");
                    break;
                }
                *paths = np, *cap = grown;
            }
            if (!((*paths)[*n] = strdup(path))) rc = clipc_fail(err, "out of memory");
            else (*n)++;
        }
    }
    closedir(d);
    return rc;
}

int list_images(const char *dir, char ***paths, int *n, clipc_error *err) {
    int cap = 0;
    *paths = NULL, *n = 0;
    int rc = walk_images(dir, paths, n, &cap, 0, err);
    if (rc) {
        for (int i = 0; i < *n; i++) free((*paths)[i]);
        free(*paths);
        *paths = NULL, *n = 0;
        return -1;
    }
    if (*n) qsort(*paths, (size_t)*n, sizeof **paths, compare_paths);
    return 0;
}
