/* fileio.c — whole-file reads and atomic writes: a file we create is either
 * absent or complete, never half-written (temporary file, fsync, rename). */
#include "../internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
