/* error.c — the library's one way to report failure: a message in a
 * caller-owned clipc_error and a -1 return. */
#include "../internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int clipc_fail(clipc_error *err, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int clipc_fail_prefix(clipc_error *err, const char *what) {
    if (err) {
        size_t cap = sizeof err->message, wl = strlen(what);
        if (wl > cap / 2) wl = cap / 2;
        memmove(err->message + wl + 2, err->message, cap - wl - 3);
        err->message[cap - 1] = '\0';
        memcpy(err->message, what, wl);
        err->message[wl] = ':';
        err->message[wl + 1] = ' ';
    }
    return -1;
}
