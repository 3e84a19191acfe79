/* dvic_log.h - the dvic_log library for C and C++ (single header, C99 / C++11, POSIX, no other dependency).
 *
 * A demo writes its log records to $DVIC_LOG_DIR/dvic_log_<token> (default /tmp); the DVIC node
 * daemon follows the file and ships every record to the central server. The file format is
 * docs/log-format.md; this header writes exactly the bytes the Python library writes
 * (tests/conformance holds it to that).
 *
 * Use (stb style): in ONE .c or .cpp file of the program
 *
 *     #define DVIC_LOG_IMPLEMENTATION
 *     #include "dvic_log.h"          (include it first in that file: it sets POSIX feature macros)
 *
 * and include "dvic_log.h" without the define everywhere else. Define DVIC_LOG_STATIC as well to
 * make every function static (a program of one file). Link with -pthread.
 *
 *     dvic_log_t *log = dvic_log_open("robot-arm");
 *     dvic_log_info(log, "calibrated in %d ms", ms);
 *     dvic_log_heartbeat(log);        (in the main loop: at most one record a second is written)
 *     dvic_log_close(log);
 *
 * Never in the way of the demo: no call aborts or throws; a log that cannot be opened
 * (missing or unwritable directory) is NULL, which every call accepts and ignores; a failure is
 * reported on stderr once (one line starting with "dvic_log:") until writing works again.
 * Thread-safe (one mutex per log); after fork() a child that logs gets its own file.
 */
#ifndef DVIC_LOG_H
#define DVIC_LOG_H

#include <stdarg.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DVIC_LOG_VERSION "0.1.0"

/* Levels: Python logging's numbers. Other numbers map down to the nearest one (25 -> INFO). */
#define DVIC_LOG_DEBUG 10
#define DVIC_LOG_INFO 20
#define DVIC_LOG_WARNING 30
#define DVIC_LOG_ERROR 40
#define DVIC_LOG_CRITICAL 50

/* A length meaning "up to the terminating NUL". */
#define DVIC_LOG_NTS ((size_t)-1)

#ifdef DVIC_LOG_STATIC
#define DVIC_LOG_DEF static
#else
#define DVIC_LOG_DEF extern
#endif

#if defined(__GNUC__) || defined(__clang__)
#define DVIC_LOG_PRINTF(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#else
#define DVIC_LOG_PRINTF(fmt_index, first_arg)
#endif

typedef struct dvic_log dvic_log_t;

/* One record with every optional field (docs/log-format.md "Records"). Text may hold any bytes,
 * NUL included when its length is given: invalid UTF-8 is written as U+FFFD. */
typedef struct dvic_log_record {
    int level;             /* DVIC_LOG_DEBUG ... DVIC_LOG_CRITICAL */
    const char *logger;    /* the logger's name; NULL: the demo's name */
    size_t logger_len;     /* or DVIC_LOG_NTS */
    const char *msg;       /* the message (NULL: empty) */
    size_t msg_len;        /* or DVIC_LOG_NTS */
    const char *exc;       /* traceback / stack text; NULL: none */
    size_t exc_len;        /* or DVIC_LOG_NTS */
} dvic_log_record_t;

/* Open the log of the demo `name` (1-200 characters, one line) in $DVIC_LOG_DIR (default /tmp),
 * capped at $DVIC_LOG_MAX_BYTES per file (default 8 MiB). NULL (and one line on stderr) when it
 * cannot be opened; every other call accepts NULL and does nothing. */
DVIC_LOG_DEF dvic_log_t *dvic_log_open(const char *name);

/* As dvic_log_open, with a directory and a cap instead of the environment's (NULL / 0: the
 * environment's). */
DVIC_LOG_DEF dvic_log_t *dvic_log_open_in(const char *name, const char *directory, long long max_bytes);

/* printf-style records from the demo's own logger (its name). 0 when written, -1 when not. */
DVIC_LOG_DEF int dvic_log_debug(dvic_log_t *log, const char *fmt, ...) DVIC_LOG_PRINTF(2, 3);
DVIC_LOG_DEF int dvic_log_info(dvic_log_t *log, const char *fmt, ...) DVIC_LOG_PRINTF(2, 3);
DVIC_LOG_DEF int dvic_log_warning(dvic_log_t *log, const char *fmt, ...) DVIC_LOG_PRINTF(2, 3);
DVIC_LOG_DEF int dvic_log_error(dvic_log_t *log, const char *fmt, ...) DVIC_LOG_PRINTF(2, 3);
DVIC_LOG_DEF int dvic_log_critical(dvic_log_t *log, const char *fmt, ...) DVIC_LOG_PRINTF(2, 3);
DVIC_LOG_DEF int dvic_log_printf(dvic_log_t *log, int level, const char *logger, const char *fmt, ...)
    DVIC_LOG_PRINTF(4, 5);
DVIC_LOG_DEF int dvic_log_vprintf(dvic_log_t *log, int level, const char *logger, const char *fmt, va_list ap);

/* A message as it is (no format): logger NULL means the demo's own. */
DVIC_LOG_DEF int dvic_log_write(dvic_log_t *log, int level, const char *logger, const char *msg);
/* Every field, with lengths (text holding NUL). */
DVIC_LOG_DEF int dvic_log_write_record(dvic_log_t *log, const dvic_log_record_t *record);

/* "Still running": a heartbeat record, at most one a second (docs/log-format.md "Heartbeats").
 * 1 when one was written, 0 when skipped (the last one is less than a second old), -1 on failure. */
DVIC_LOG_DEF int dvic_log_heartbeat(dvic_log_t *log);

/* The live file's path and the stream's token (they change after fork and on a new stream);
 * valid until the next call on this log. NULL for a NULL log. */
DVIC_LOG_DEF const char *dvic_log_path(dvic_log_t *log);
DVIC_LOG_DEF const char *dvic_log_token(dvic_log_t *log);

/* Close and free the log (the file stays: the daemon still reads it). NULL is fine. */
DVIC_LOG_DEF void dvic_log_close(dvic_log_t *log);

#ifdef __cplusplus
}
#endif
#endif /* DVIC_LOG_H */

/* ================================ implementation ================================================ */
#if defined(DVIC_LOG_IMPLEMENTATION) && !defined(DVIC_LOG_IMPLEMENTED)
#define DVIC_LOG_IMPLEMENTED

#if !defined(_XOPEN_SOURCE) && !defined(_GNU_SOURCE) && !defined(_DEFAULT_SOURCE)
#define _XOPEN_SOURCE 700 /* POSIX.1-2008 with XSI: O_CLOEXEC, O_NOFOLLOW, fchmod, linkat, getpwuid_r */
#endif

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#ifndef O_CLOEXEC
#define O_CLOEXEC 0
#endif
#ifndef O_NOFOLLOW
#define O_NOFOLLOW 0
#endif

#define DL_DEFAULT_DIR "/tmp"
#define DL_DEFAULT_MAX_BYTES (8LL * 1024 * 1024)
#define DL_MIN_MAX_BYTES 4096LL
#define DL_DEFAULT_KEEP_DAYS 7.0
#define DL_MAX_NAME_CHARS 200
#define DL_MAX_LOGGER_CHARS 200
#define DL_TOKEN_ATTEMPTS 16
#define DL_ROTATED_FIELD_SLACK 24
#define DL_MAX_ARGS 64
#define DL_MAX_ARG_CHARS 256
#define DL_TRUNCATION_MARK " [dvic_log: truncated]"

#ifdef __cplusplus
#define DL_CAST(type, value) static_cast<type>(value)
#define DL_BYTES(type, value) reinterpret_cast<type>(value)
#else
#define DL_CAST(type, value) ((type)(value))
#define DL_BYTES(type, value) ((type)(value))
#endif

/* ----- a growable byte buffer ---------------------------------------------------------------- */
typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} dl_buf;

static int dl_reserve(dl_buf *b, size_t extra) {
    size_t want, cap;
    char *p;
    if (b->oom) return -1;
    if (b->n + extra <= b->cap) return 0;
    want = b->n + extra;
    cap = b->cap ? b->cap : 256;
    while (cap < want) cap *= 2;
    p = DL_CAST(char *, realloc(b->p, cap));
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static void dl_put(dl_buf *b, const char *s, size_t n) {
    if (n == 0 || dl_reserve(b, n) != 0) return;
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void dl_puts(dl_buf *b, const char *s) { dl_put(b, s, strlen(s)); }

static void dl_free(dl_buf *b) {
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
    b->oom = 0;
}

/* ----- UTF-8: decoding with replacement, JSON escaping as json.dumps(ensure_ascii=False) ------ */

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 when invalid; *bad gets the length
 * of the maximal invalid subpart (what one U+FFFD replaces, as Python's decoder does). */
static size_t dl_utf8_seq(const unsigned char *s, size_t n, size_t *bad, unsigned *cp) {
    unsigned c = s[0], lo = 0x80, hi = 0xBF;
    size_t need, i;
    *bad = 1;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c >= 0xE0 && c <= 0xEF) need = 2;
    else if (c >= 0xF0 && c <= 0xF4) need = 3;
    else return 0;
    if (c == 0xE0) lo = 0xA0;
    else if (c == 0xED) hi = 0x9F;
    else if (c == 0xF0) lo = 0x90;
    else if (c == 0xF4) hi = 0x8F;
    *cp = c & (need == 1 ? 0x1F : need == 2 ? 0x0F : 0x07);
    for (i = 1; i <= need; i++) {
        unsigned d;
        if (i >= n) {
            *bad = i;
            return 0;
        }
        d = s[i];
        if (d < lo || d > hi) {
            *bad = i;
            return 0;
        }
        lo = 0x80;
        hi = 0xBF;
        *cp = (*cp << 6) | (d & 0x3F);
    }
    return need + 1;
}

/* Bytes the code point cp (given as its valid UTF-8 sequence of len bytes) takes in a line. */
static size_t dl_escaped_len(unsigned cp, size_t len) {
    if (cp < 0x20) return (cp == '\n' || cp == '\r' || cp == '\t' || cp == '\b' || cp == '\f') ? 2 : 6;
    if (cp == '"' || cp == '\\') return 2;
    if (cp == 0x85 || cp == 0x2028 || cp == 0x2029) return 6;
    return len;
}

/* Append the escaped form of s (any bytes) without quotes; invalid UTF-8 becomes U+FFFD. */
static void dl_put_escaped(dl_buf *b, const char *str, size_t n) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = DL_BYTES(const unsigned char *, str);
    size_t i = 0, run = 0;
    if (dl_reserve(b, n + 16) != 0) return;
    while (i < n) {
        unsigned c = s[i], cp;
        size_t len, bad;
        char esc[6];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') { /* the common case: copied in runs */
            i++;
            run++;
            continue;
        }
        if (run) {
            dl_put(b, DL_BYTES(const char *, s + i - run), run);
            run = 0;
        }
        len = dl_utf8_seq(s + i, n - i, &bad, &cp);
        if (len == 0) {
            dl_put(b, "\xEF\xBF\xBD", 3);
            i += bad;
            continue;
        }
        if (cp < 0x20 || cp == '"' || cp == '\\' || cp == 0x85 || cp == 0x2028 || cp == 0x2029) {
            esc[0] = '\\';
            switch (cp) {
            case '"': esc[1] = '"'; dl_put(b, esc, 2); break;
            case '\\': esc[1] = '\\'; dl_put(b, esc, 2); break;
            case '\n': esc[1] = 'n'; dl_put(b, esc, 2); break;
            case '\r': esc[1] = 'r'; dl_put(b, esc, 2); break;
            case '\t': esc[1] = 't'; dl_put(b, esc, 2); break;
            case '\b': esc[1] = 'b'; dl_put(b, esc, 2); break;
            case '\f': esc[1] = 'f'; dl_put(b, esc, 2); break;
            default:
                esc[1] = 'u';
                esc[2] = hex[(cp >> 12) & 15];
                esc[3] = hex[(cp >> 8) & 15];
                esc[4] = hex[(cp >> 4) & 15];
                esc[5] = hex[cp & 15];
                dl_put(b, esc, 6);
            }
        } else {
            dl_put(b, DL_BYTES(const char *, s + i), len);
        }
        i += len;
    }
    if (run) dl_put(b, DL_BYTES(const char *, s + n - run), run);
}

static void dl_put_string(dl_buf *b, const char *s, size_t n) {
    dl_put(b, "\"", 1);
    dl_put_escaped(b, s, n);
    dl_put(b, "\"", 1);
}

/* Escaped size of s (any bytes), as dl_put_escaped would write it. */
static size_t dl_escaped_size(const char *str, size_t n) {
    const unsigned char *s = DL_BYTES(const unsigned char *, str);
    size_t i = 0, size = 0;
    while (i < n) {
        unsigned cp;
        size_t bad, len = dl_utf8_seq(s + i, n - i, &bad, &cp);
        if (len == 0) {
            size += 3;
            i += bad;
        } else {
            size += dl_escaped_len(cp, len);
            i += len;
        }
    }
    return size;
}

/* The longest prefix of s made of whole characters (an invalid subpart counts as one) whose escaped
 * size is at most budget: its length in bytes of s. */
static size_t dl_cut_escaped(const char *str, size_t n, size_t budget) {
    const unsigned char *s = DL_BYTES(const unsigned char *, str);
    size_t i = 0, size = 0;
    while (i < n) {
        unsigned cp;
        size_t bad, len = dl_utf8_seq(s + i, n - i, &bad, &cp), step, cost;
        step = len ? len : bad;
        cost = len ? dl_escaped_len(cp, len) : 3;
        if (size + cost > budget) break;
        size += cost;
        i += step;
    }
    return i;
}

/* Prefix of s of at most max_chars characters (code points; an invalid subpart counts as one). */
static size_t dl_cut_chars(const char *str, size_t n, size_t max_chars, int *cut) {
    const unsigned char *s = DL_BYTES(const unsigned char *, str);
    size_t i = 0, chars = 0;
    while (i < n && chars < max_chars) {
        unsigned cp;
        size_t bad, len = dl_utf8_seq(s + i, n - i, &bad, &cp);
        i += len ? len : bad;
        chars++;
    }
    *cut = i < n;
    return i;
}

/* ----- time -------------------------------------------------------------------------------- */

/* Unix time in milliseconds (a record's ts is rounded to the millisecond). */
static long long dl_now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return DL_CAST(long long, t.tv_sec) * 1000 + (t.tv_nsec + 500000) / 1000000;
}

static double dl_monotonic(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return DL_CAST(double, t.tv_sec) + t.tv_nsec / 1e9;
}

/* A millisecond timestamp as Python's repr(round(ts, 3)): "1764000000.12", "1764000000.0". */
static void dl_put_ts(dl_buf *b, long long ms) {
    char text[40];
    long long sec = ms / 1000;
    int frac = DL_CAST(int, ms % 1000);
    int len;
    if (frac < 0) {
        frac += 1000;
        sec -= 1;
    }
    if (frac == 0) len = snprintf(text, sizeof text, "%lld.0", sec);
    else if (frac % 100 == 0) len = snprintf(text, sizeof text, "%lld.%d", sec, frac / 100);
    else if (frac % 10 == 0) len = snprintf(text, sizeof text, "%lld.%02d", sec, frac / 10);
    else len = snprintf(text, sizeof text, "%lld.%03d", sec, frac);
    dl_put(b, text, DL_CAST(size_t, len));
}

/* ----- the process: pid start time, exe, argv, user, host ------------------------------------ */

typedef struct {
    long pid;
    long long pid_start; /* -1: unknown */
    char *exe;
    char **argv; /* argc strings, each as the program sees it (raw bytes) */
    size_t argc;
    char *user;
    char *host;
} dl_identity;

static long long dl_read_pid_start(long pid) {
    char path[64], data[1024], *end, *p;
    int fd, field;
    ssize_t n;
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    n = read(fd, data, sizeof data - 1);
    close(fd);
    if (n <= 0) return -1;
    data[n] = 0;
    end = strrchr(data, ')'); /* comm (field 2) may hold spaces and ')' */
    if (!end) return -1;
    p = end + 1;
    for (field = 3; field <= 22; field++) { /* field 3 is the state */
        while (*p == ' ') p++;
        if (!*p) return -1;
        if (field == 22) return strtoll(p, NULL, 10);
        while (*p && *p != ' ') p++;
    }
    return -1;
}

static char *dl_strndup(const char *s, size_t n) {
    char *p = DL_CAST(char *, malloc(n + 1));
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

static char *dl_strdup(const char *s) { return dl_strndup(s, strlen(s)); }

static void dl_identity_free(dl_identity *id) {
    size_t i;
    free(id->exe);
    for (i = 0; i < id->argc; i++) free(id->argv[i]);
    free(id->argv);
    free(id->user);
    free(id->host);
    memset(id, 0, sizeof *id);
}

static void dl_read_argv(dl_identity *id) {
    dl_buf all = {NULL, 0, 0, 0};
    char chunk[4096];
    size_t start, i, count = 0;
    ssize_t n;
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        while ((n = read(fd, chunk, sizeof chunk)) > 0) dl_put(&all, chunk, DL_CAST(size_t, n));
        close(fd);
    }
    for (i = 0; i < all.n; i++)
        if (all.p[i] == 0) count++;
    if (all.n && all.p[all.n - 1] != 0) count++;
    id->argv = DL_CAST(char **, calloc(count ? count : 1, sizeof(char *)));
    if (!id->argv) {
        dl_free(&all);
        return;
    }
    for (start = 0, i = 0; i <= all.n && id->argc < count; i++) {
        if (i == all.n || all.p[i] == 0) {
            id->argv[id->argc] = dl_strndup(all.p + start, i - start);
            if (id->argv[id->argc]) id->argc++;
            start = i + 1;
        }
    }
    dl_free(&all);
}

static int dl_identity_read(dl_identity *id) {
    char buf[4096];
    ssize_t n;
    struct passwd pw, *found = NULL;
    memset(id, 0, sizeof *id);
    id->pid = DL_CAST(long, getpid());
    id->pid_start = dl_read_pid_start(id->pid);
    n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    id->exe = dl_strndup(buf, n > 0 ? DL_CAST(size_t, n) : 0);
    dl_read_argv(id);
    if (getpwuid_r(geteuid(), &pw, buf, sizeof buf, &found) == 0 && found) id->user = dl_strdup(pw.pw_name);
    else {
        char uid[32];
        snprintf(uid, sizeof uid, "%lu", DL_CAST(unsigned long, geteuid()));
        id->user = dl_strdup(uid);
    }
    if (gethostname(buf, sizeof buf - 1) != 0) buf[0] = 0;
    buf[sizeof buf - 1] = 0;
    id->host = dl_strdup(buf);
    if (!id->exe || !id->user || !id->host || !id->argv) {
        dl_identity_free(id);
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

/* ----- the log ------------------------------------------------------------------------------- */

struct dvic_log {
    pthread_mutex_t mu;
    char *name;
    char *dir;
    long long max_bytes;
    dl_identity id;
    long arg_limit, char_limit; /* how argv is shortened in the header (-1: not shortened further) */
    size_t exe_limit;
    char token[17];
    char *path; /* dir/dvic_log_<token> */
    int fd;
    long long size;
    long long max_line;
    long rotated;
    long long start_ms;
    long pid; /* the process this stream belongs to (another after fork) */
    dl_buf pending; /* the rest of a line a full disk cut short */
    dl_buf line, scratch; /* reused for every record */
    int failing; /* a failure was reported: quiet until a write works */
    double last_heartbeat; /* monotonic; < 0: none yet */
    double next_vanish_check;
    struct dvic_log *next;
};

static pthread_mutex_t dl_registry_mu = PTHREAD_MUTEX_INITIALIZER;
static struct dvic_log *dl_registry = NULL;
static pthread_once_t dl_atfork_once = PTHREAD_ONCE_INIT;

/* fork(): every log's lock is taken before and released on both sides, so a child never
 * inherits a lock held by a thread that does not exist in it. */
static void dl_prepare_fork(void) {
    struct dvic_log *l;
    pthread_mutex_lock(&dl_registry_mu);
    for (l = dl_registry; l; l = l->next) pthread_mutex_lock(&l->mu);
}

static void dl_after_fork(void) {
    struct dvic_log *l;
    for (l = dl_registry; l; l = l->next) pthread_mutex_unlock(&l->mu);
    pthread_mutex_unlock(&dl_registry_mu);
}

static void dl_install_atfork(void) { pthread_atfork(dl_prepare_fork, dl_after_fork, dl_after_fork); }

/* One line on stderr, in one write(2). */
static void dl_report(const char *fmt, ...) DVIC_LOG_PRINTF(1, 2);
static void dl_report(const char *fmt, ...) {
    char text[1024];
    va_list ap;
    int n, i;
    int saved = errno;
    memcpy(text, "dvic_log: ", 10);
    va_start(ap, fmt);
    n = vsnprintf(text + 10, sizeof text - 11, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if (DL_CAST(size_t, n) > sizeof text - 12) n = DL_CAST(int, sizeof text - 12);
    for (i = 10; i < 10 + n; i++) /* one line, and nothing that drives a terminal */
        if (DL_CAST(unsigned char, text[i]) < 0x20 || text[i] == 0x7f) text[i] = '?';
    text[10 + n] = '\n';
    if (write(2, text, DL_CAST(size_t, 11 + n)) < 0) { /* nothing more can be done */
    }
    errno = saved;
}

static int dl_no_room(int err) {
#ifdef EDQUOT
    if (err == EDQUOT) return 1;
#endif
    return err == ENOSPC || err == EFBIG;
}

static const char *dl_level_name(int level) {
    if (level >= DVIC_LOG_CRITICAL) return "CRITICAL";
    if (level >= DVIC_LOG_ERROR) return "ERROR";
    if (level >= DVIC_LOG_WARNING) return "WARNING";
    if (level >= DVIC_LOG_INFO) return "INFO";
    return "DEBUG";
}

static void dl_new_token(char out[17]) {
    static const char hex[] = "0123456789abcdef";
    static unsigned long long counter = 0;
    unsigned char raw[8];
    int i, fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    ssize_t got = fd >= 0 ? read(fd, raw, sizeof raw) : -1;
    if (fd >= 0) close(fd);
    if (got != DL_CAST(ssize_t, sizeof raw)) { /* no /dev/urandom: time, pid and a counter, mixed */
        unsigned long long x = DL_CAST(unsigned long long, dl_now_ms()) * 0x9E3779B97F4A7C15ULL;
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        x ^= (DL_CAST(unsigned long long, getpid()) << 32) ^ DL_CAST(unsigned long long, t.tv_nsec) ^ ++counter;
        for (i = 0; i < 8; i++) {
            x ^= x >> 33;
            x *= 0xFF51AFD7ED558CCDULL;
            x ^= x >> 29;
            raw[i] = DL_CAST(unsigned char, x);
        }
    }
    for (i = 0; i < 8; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[16] = 0;
}

/* The header line (with its newline) into b. `token` NULL: the log's own. */
static void dl_header(struct dvic_log *log, dl_buf *b, long rotated, const char *token) {
    char num[64];
    size_t i, limit, n;
    int cut;
    const dl_identity *id = &log->id;
    b->n = 0;
    dl_puts(b, "{\"dvic_log\":1,\"token\":\"");
    dl_puts(b, token ? token : log->token);
    dl_puts(b, "\",\"name\":");
    dl_put_string(b, log->name, strlen(log->name));
    snprintf(num, sizeof num, ",\"pid\":%ld,\"pid_start\":", id->pid);
    dl_puts(b, num);
    if (id->pid_start >= 0) {
        snprintf(num, sizeof num, "%lld", id->pid_start);
        dl_puts(b, num);
    } else {
        dl_puts(b, "null");
    }
    dl_puts(b, ",\"exe\":");
    n = dl_cut_chars(id->exe, strlen(id->exe), log->exe_limit, &cut);
    dl_put_string(b, id->exe, n);
    dl_puts(b, ",\"argv\":[");
    limit = log->arg_limit < 0 ? DL_MAX_ARGS : DL_CAST(size_t, log->arg_limit);
    for (i = 0; i < id->argc && i < limit; i++) {
        const char *a = id->argv[i];
        size_t chars = log->char_limit < 0 ? DL_MAX_ARG_CHARS : DL_CAST(size_t, log->char_limit);
        n = dl_cut_chars(a, strlen(a), chars, &cut);
        if (i) dl_puts(b, ",");
        dl_puts(b, "\"");
        dl_put_escaped(b, a, n);
        if (cut && log->char_limit < 0) dl_puts(b, "..."); /* only the first bound marks the cut */
        dl_puts(b, "\"");
    }
    if (id->argc > limit) {
        snprintf(num, sizeof num, "%s\"... (%lu more arguments)\"", i ? "," : "",
                 DL_CAST(unsigned long, id->argc - limit));
        dl_puts(b, num);
    }
    dl_puts(b, "],\"user\":");
    dl_put_string(b, id->user, strlen(id->user));
    dl_puts(b, ",\"host\":");
    dl_put_string(b, id->host, strlen(id->host));
    dl_puts(b, ",\"start\":");
    dl_put_ts(b, log->start_ms);
    if (rotated) {
        snprintf(num, sizeof num, ",\"rotated\":%ld", rotated);
        dl_puts(b, num);
    }
    dl_puts(b, "}\n");
}

/* Shorten argv and exe until the header takes at most a quarter of the cap (as Python does). */
static void dl_fit_identity(struct dvic_log *log) {
    static const long steps[][2] = {{-1, -1}, {16, 64}, {4, 32}, {1, 32}, {0, 0}};
    size_t s;
    log->exe_limit = DL_CAST(size_t, -1);
    for (s = 0; s < sizeof steps / sizeof steps[0]; s++) {
        log->arg_limit = steps[s][0];
        log->char_limit = steps[s][1];
        if (s > 0) log->exe_limit = 256;
        dl_header(log, &log->scratch, 1000000000L, "0000000000000000");
        if (DL_CAST(long long, log->scratch.n) <= log->max_bytes / 4) return;
    }
}

/* The Python library's first bound: 64 arguments of 256 characters, "..." after a cut argument.
 * Later steps (dl_fit_identity) cut harder; with arg_limit >= 0 the "... (N more)" item follows. */

static int dl_write_all(int fd, const char *p, size_t n, size_t *written) {
    *written = 0;
    while (*written < n) {
        ssize_t w = write(fd, p + *written, n - *written);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (w == 0) {
            errno = ENOSPC;
            return -1;
        }
        *written += DL_CAST(size_t, w);
    }
    return 0;
}

static int dl_unlink_if_present(const char *path) {
    if (unlink(path) == 0 || errno == ENOENT) return 0;
    return -1;
}

/* Create path exclusively (never through a symlink), mode 0644, holding only the header. */
static int dl_create_with_header(const char *path, const dl_buf *header) {
    size_t written;
    int err, fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    if (fchmod(fd, 0644) != 0 || dl_write_all(fd, header->p, header->n, &written) != 0) {
        err = errno;
        close(fd);
        unlink(path);
        errno = err;
        return -1;
    }
    return fd;
}

static char *dl_join(const char *dir, const char *token, const char *suffix) {
    size_t n = strlen(dir) + strlen(token) + strlen(suffix) + 16;
    char *p = DL_CAST(char *, malloc(n));
    if (p) snprintf(p, n, "%s/dvic_log_%s%s", dir, token, suffix);
    return p;
}

/* A new stream: new token, new file, header with rotated = 0. */
static int dl_open_stream(struct dvic_log *log) {
    int attempt, fd;
    log->pid = DL_CAST(long, getpid());
    log->start_ms = dl_now_ms();
    log->rotated = 0;
    log->pending.n = 0;
    for (attempt = 0; attempt < DL_TOKEN_ATTEMPTS; attempt++) {
        char *path;
        dl_new_token(log->token);
        path = dl_join(log->dir, log->token, "");
        if (!path) return -1;
        dl_header(log, &log->scratch, 0, NULL);
        if (log->scratch.oom) {
            free(path);
            errno = ENOMEM;
            return -1;
        }
        fd = dl_create_with_header(path, &log->scratch);
        if (fd < 0) {
            int err = errno;
            free(path);
            errno = err;
            if (err == EEXIST) continue; /* a token collision or a name planted in advance */
            return -1;
        }
        free(log->path);
        log->path = path;
        log->fd = fd;
        log->size = DL_CAST(long long, log->scratch.n);
        log->max_line = log->max_bytes - log->size - DL_ROTATED_FIELD_SLACK;
        log->next_vanish_check = dl_monotonic() + 1.0;
        return 0;
    }
    errno = EEXIST;
    return -1;
}

static int dl_rotate_with_link(struct dvic_log *log, const dl_buf *header) {
    char *prepared = dl_join(log->dir, log->token, ".new"), *backup = dl_join(log->dir, log->token, ".1");
    int fd = -1, err;
    if (!prepared || !backup) {
        errno = ENOMEM;
        goto fail;
    }
    if (dl_unlink_if_present(prepared) != 0) goto fail; /* left by a crash in an earlier rotation */
    fd = dl_create_with_header(prepared, header);
    if (fd < 0) goto fail;
    if (dl_unlink_if_present(backup) != 0 || linkat(AT_FDCWD, log->path, AT_FDCWD, backup, 0) != 0 ||
        rename(prepared, log->path) != 0) {
        err = errno;
        close(fd);
        unlink(prepared);
        errno = err;
        fd = -1;
    }
fail:
    err = errno;
    free(prepared);
    free(backup);
    errno = err;
    return fd;
}

static int dl_rotate_with_rename(struct dvic_log *log, const dl_buf *header) {
    char *backup = dl_join(log->dir, log->token, ".1");
    int fd = -1, err;
    if (!backup) {
        errno = ENOMEM;
        return -1;
    }
    if (dl_unlink_if_present(backup) == 0 && (rename(log->path, backup) == 0 || errno == ENOENT))
        fd = dl_create_with_header(log->path, header);
    err = errno;
    free(backup);
    errno = err;
    return fd;
}

/* Move the live file to .1 and go on in a fresh one (docs/log-format.md "The size cap and rotation"). */
static int dl_rotate(struct dvic_log *log) {
    long rotated = log->rotated + 1;
    int fd, old;
    dl_header(log, &log->scratch, rotated, NULL);
    if (log->scratch.oom) {
        errno = ENOMEM;
        return -1;
    }
    fd = dl_rotate_with_link(log, &log->scratch);
    if (fd < 0) {
        if (dl_no_room(errno)) return -1;
        fd = dl_rotate_with_rename(log, &log->scratch);
        if (fd < 0) {
            if (dl_no_room(errno)) return -1;
            old = log->fd; /* .1 is unusable: go on under a new token */
            if (dl_open_stream(log) != 0) return -1;
            close(old);
            return 0;
        }
    }
    old = log->fd;
    log->fd = fd;
    log->size = DL_CAST(long long, log->scratch.n);
    log->rotated = rotated;
    close(old);
    return 0;
}

/* If the file was deleted under us, start a fresh one at the same path (as a rotation). */
static int dl_check_vanished(struct dvic_log *log) {
    struct stat st;
    double now = dl_monotonic();
    int fd, old;
    if (now < log->next_vanish_check) return 0;
    log->next_vanish_check = now + 1.0;
    if (fstat(log->fd, &st) != 0 || st.st_nlink > 0) return 0;
    log->pending.n = 0; /* the unfinished line went away with the deleted file */
    dl_header(log, &log->scratch, log->rotated + 1, NULL);
    fd = dl_create_with_header(log->path, &log->scratch);
    old = log->fd;
    if (fd < 0) {
        if (errno != EEXIST) return -1;
        if (dl_open_stream(log) != 0) return -1; /* something else took the name */
        close(old);
        return 0;
    }
    log->fd = fd;
    log->size = DL_CAST(long long, log->scratch.n);
    log->rotated += 1;
    close(old);
    return 0;
}

/* A forked child logs: it gets its own file, so each file describes one process. */
static int dl_reopen_after_fork(struct dvic_log *log) {
    dl_identity fresh;
    if (log->fd >= 0) close(log->fd); /* the parent's descriptor: the parent keeps its own copy */
    log->fd = -1;
    log->last_heartbeat = -1.0;
    if (dl_identity_read(&fresh) != 0) return -1;
    dl_identity_free(&log->id);
    log->id = fresh;
    dl_fit_identity(log);
    return dl_open_stream(log);
}

static int dl_finish_pending(struct dvic_log *log) {
    size_t written;
    int rc = dl_write_all(log->fd, log->pending.p, log->pending.n, &written);
    log->size += DL_CAST(long long, written);
    memmove(log->pending.p, log->pending.p + written, log->pending.n - written);
    log->pending.n -= written;
    return rc;
}

/* Append one line (the lock held): rotation, a deleted file, a torn line before it. */
static int dl_append(struct dvic_log *log, const char *line, size_t n) {
    size_t written;
    if (log->pid != DL_CAST(long, getpid()) && dl_reopen_after_fork(log) != 0) return -1;
    if (log->fd < 0) {
        errno = EBADF;
        return -1;
    }
    if (dl_check_vanished(log) != 0) return -1;
    if (log->pending.n && dl_finish_pending(log) != 0) return -1;
    if (log->size + DL_CAST(long long, n) > log->max_bytes && dl_rotate(log) != 0) return -1;
    if (dl_write_all(log->fd, line, n, &written) != 0) {
        int err = errno;
        log->size += DL_CAST(long long, written);
        if (written) { /* part of the line is on disk: the rest goes first, next time */
            log->pending.n = 0;
            dl_put(&log->pending, line + written, n - written);
        }
        errno = err;
        return -1;
    }
    log->size += DL_CAST(long long, n);
    return 0;
}

static void dl_failed(struct dvic_log *log, const char *what) {
    if (log->failing) return;
    log->failing = 1;
    dl_report("demo '%s': cannot write to %s: %s (%s); records are dropped until writing works again",
              log->name, log->path ? log->path : log->dir, strerror(errno), what);
}

/* ----- building a record --------------------------------------------------------------------- */

typedef struct {
    const char *p;
    size_t n;
    int present;
} dl_field;

static void dl_record_line(dl_buf *b, long long ms, const char *level, const dl_field f[3], const int cut[3]) {
    static const char *const keys[3] = {",\"msg\":\"", ",\"logger\":\"", ",\"exc\":\""};
    int k;
    b->n = 0;
    dl_puts(b, "{\"ts\":");
    dl_put_ts(b, ms);
    dl_puts(b, ",\"level\":\"");
    dl_puts(b, level);
    dl_puts(b, "\"");
    for (k = 0; k < 3; k++) {
        if (!f[k].present) continue;
        dl_puts(b, keys[k]);
        dl_put_escaped(b, f[k].p, f[k].n);
        if (cut[k]) dl_puts(b, DL_TRUNCATION_MARK);
        dl_puts(b, "\"");
    }
    dl_puts(b, "}\n");
}

/* A record too long for the file is cut as Python's fit_record cuts it: the room left with every
 * field replaced by the mark is shared, smallest field first, each taking what it needs up to an
 * even share of what is left; a field over its share keeps its longest prefix that fits + the mark. */
static void dl_fit(struct dvic_log *log, long long ms, const char *level, dl_field f[3]) {
    /* Python's order of the shared fields: msg, exc, logger (sorted by size, stably). */
    static const int order[3] = {0, 2, 1};
    size_t sizes[3] = {0, 0, 0}, shares[3] = {0, 0, 0};
    int cut[3] = {0, 0, 0}, marks[3], idx[3], count = 0, i, j, k;
    long long room;
    for (k = 0; k < 3; k++) marks[k] = f[k].present && f[k].n > 0;
    {
        dl_field only_marks[3];
        for (k = 0; k < 3; k++) {
            only_marks[k] = f[k];
            if (marks[k]) only_marks[k].n = 0;
        }
        dl_record_line(&log->line, ms, level, only_marks, marks);
    }
    room = log->max_line - DL_CAST(long long, log->line.n);
    for (i = 0; i < 3; i++) {
        k = order[i];
        if (marks[k]) {
            sizes[k] = dl_escaped_size(f[k].p, f[k].n);
            idx[count++] = k;
        }
    }
    for (i = 1; i < count; i++) /* stable insertion sort by size */
        for (j = i; j > 0 && sizes[idx[j - 1]] > sizes[idx[j]]; j--) {
            int t = idx[j];
            idx[j] = idx[j - 1];
            idx[j - 1] = t;
        }
    for (i = 0; i < count; i++) {
        long long fair = room / (count - i), share;
        if (room < 0 && room % (count - i)) fair -= 1; /* Python's floor division */
        share = fair < 0 ? 0 : fair;
        k = idx[i];
        shares[k] = DL_CAST(long long, sizes[k]) < share ? sizes[k] : DL_CAST(size_t, share);
        room -= DL_CAST(long long, shares[k]);
    }
    for (k = 0; k < 3; k++) {
        if (marks[k] && shares[k] < sizes[k]) {
            f[k].n = dl_cut_escaped(f[k].p, f[k].n, shares[k]);
            cut[k] = 1;
        }
    }
    dl_record_line(&log->line, ms, level, f, cut);
}

static size_t dl_len(const char *s, size_t n) { return s == NULL ? 0 : n == DVIC_LOG_NTS ? strlen(s) : n; }

DVIC_LOG_DEF int dvic_log_write_record(dvic_log_t *log, const dvic_log_record_t *record) {
    dl_field f[3];
    int cut[3] = {0, 0, 0}, rc, chars_cut;
    long long ms;
    const char *level;
    if (!log || !record) {
        errno = EINVAL;
        return -1;
    }
    ms = dl_now_ms();
    level = dl_level_name(record->level);
    f[0].p = record->msg ? record->msg : "";
    f[0].n = dl_len(record->msg, record->msg_len);
    f[0].present = 1;
    f[1].p = record->logger ? record->logger : log->name;
    f[1].n = record->logger ? dl_len(record->logger, record->logger_len) : strlen(log->name);
    f[1].n = dl_cut_chars(f[1].p, f[1].n, DL_MAX_LOGGER_CHARS, &chars_cut);
    f[1].present = f[1].n > 0;
    f[2].p = record->exc;
    f[2].n = dl_len(record->exc, record->exc_len);
    f[2].present = f[2].n > 0;
    pthread_mutex_lock(&log->mu);
    dl_record_line(&log->line, ms, level, f, cut);
    if (!log->line.oom && DL_CAST(long long, log->line.n) > log->max_line) dl_fit(log, ms, level, f);
    if (log->line.oom) {
        dl_free(&log->line); /* try again with a fresh buffer next time */
        errno = ENOMEM;
        rc = -1;
    } else {
        rc = dl_append(log, log->line.p, log->line.n);
    }
    if (rc != 0) dl_failed(log, "a record");
    else log->failing = 0;
    pthread_mutex_unlock(&log->mu);
    return rc;
}

DVIC_LOG_DEF int dvic_log_write(dvic_log_t *log, int level, const char *logger, const char *msg) {
    dvic_log_record_t r;
    r.level = level;
    r.logger = logger;
    r.logger_len = DVIC_LOG_NTS;
    r.msg = msg;
    r.msg_len = DVIC_LOG_NTS;
    r.exc = NULL;
    r.exc_len = 0;
    return dvic_log_write_record(log, &r);
}

DVIC_LOG_DEF int dvic_log_vprintf(dvic_log_t *log, int level, const char *logger, const char *fmt, va_list ap) {
    char stack[1024];
    char *text = stack;
    int n, rc;
    va_list again;
    if (!log) return -1;
    va_copy(again, ap);
    n = vsnprintf(stack, sizeof stack, fmt ? fmt : "", ap);
    if (n < 0) {
        va_end(again);
        return dvic_log_write(log, level, logger, fmt ? fmt : "");
    }
    if (DL_CAST(size_t, n) >= sizeof stack) {
        text = DL_CAST(char *, malloc(DL_CAST(size_t, n) + 1));
        if (!text) {
            va_end(again);
            errno = ENOMEM;
            pthread_mutex_lock(&log->mu);
            dl_failed(log, "formatting a record");
            pthread_mutex_unlock(&log->mu);
            return -1;
        }
        vsnprintf(text, DL_CAST(size_t, n) + 1, fmt, again);
    }
    va_end(again);
    {
        dvic_log_record_t r;
        r.level = level;
        r.logger = logger;
        r.logger_len = DVIC_LOG_NTS;
        r.msg = text;
        r.msg_len = DL_CAST(size_t, n);
        r.exc = NULL;
        r.exc_len = 0;
        rc = dvic_log_write_record(log, &r);
    }
    if (text != stack) free(text);
    return rc;
}

DVIC_LOG_DEF int dvic_log_printf(dvic_log_t *log, int level, const char *logger, const char *fmt, ...) {
    va_list ap;
    int rc;
    va_start(ap, fmt);
    rc = dvic_log_vprintf(log, level, logger, fmt, ap);
    va_end(ap);
    return rc;
}

#define DL_LEVEL_FUNCTION(fname, level)                                 \
    DVIC_LOG_DEF int fname(dvic_log_t *log, const char *fmt, ...) {     \
        va_list ap;                                                     \
        int rc;                                                         \
        va_start(ap, fmt);                                              \
        rc = dvic_log_vprintf(log, level, NULL, fmt, ap);               \
        va_end(ap);                                                     \
        return rc;                                                      \
    }
DL_LEVEL_FUNCTION(dvic_log_debug, DVIC_LOG_DEBUG)
DL_LEVEL_FUNCTION(dvic_log_info, DVIC_LOG_INFO)
DL_LEVEL_FUNCTION(dvic_log_warning, DVIC_LOG_WARNING)
DL_LEVEL_FUNCTION(dvic_log_error, DVIC_LOG_ERROR)
DL_LEVEL_FUNCTION(dvic_log_critical, DVIC_LOG_CRITICAL)
#undef DL_LEVEL_FUNCTION

DVIC_LOG_DEF int dvic_log_heartbeat(dvic_log_t *log) {
    double now = dl_monotonic();
    int rc;
    if (!log) return -1;
    pthread_mutex_lock(&log->mu);
    if (log->pid != DL_CAST(long, getpid())) log->last_heartbeat = -1.0; /* a forked child's first */
    if (log->last_heartbeat >= 0 && now - log->last_heartbeat < 1.0) {
        pthread_mutex_unlock(&log->mu);
        return 0;
    }
    log->line.n = 0;
    dl_puts(&log->line, "{\"ts\":");
    dl_put_ts(&log->line, dl_now_ms());
    dl_puts(&log->line, ",\"level\":\"DEBUG\",\"msg\":\"heartbeat\",\"heartbeat\":1}\n");
    if (log->line.oom) {
        dl_free(&log->line);
        errno = ENOMEM;
        rc = -1;
    } else {
        rc = dl_append(log, log->line.p, log->line.n);
    }
    if (rc == 0) {
        log->failing = 0;
        log->last_heartbeat = now;
        rc = 1;
    } else {
        dl_failed(log, "a heartbeat");
    }
    pthread_mutex_unlock(&log->mu);
    return rc;
}

/* ----- settings and opening ------------------------------------------------------------------ */

/* Retention (docs/log-format.md): once per process and directory, remove this user's dvic_log
 * files not modified for DVIC_LOG_KEEP_DAYS whose writer is gone. Never fails the caller. */
static int dl_writer_alive(const char *path) {
    char data[4096], *p;
    long pid;
    long long start = -1;
    ssize_t n;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return 0;
    n = read(fd, data, sizeof data - 1);
    close(fd);
    if (n <= 0) return 0;
    data[n] = 0;
    p = strstr(data, "\"pid\":");
    if (!p || !strchr(data, '\n') || p > strchr(data, '\n')) return 0;
    pid = strtol(p + 6, NULL, 10);
    if (pid <= 0) return 0;
    p = strstr(data, "\"pid_start\":");
    if (p && p < strchr(data, '\n') && p[12] != 'n') start = strtoll(p + 12, NULL, 10);
    if (start >= 0) return dl_read_pid_start(pid) == start;
    return kill(DL_CAST(pid_t, pid), 0) == 0 || errno == EPERM;
}

static int dl_prunable_name(const char *name) {
    size_t i, n = strlen(name);
    if (n < 25 || strncmp(name, "dvic_log_", 9) != 0) return 0;
    for (i = 9; i < 25; i++)
        if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f'))) return 0;
    return n == 25 || strcmp(name + 25, ".1") == 0 || strcmp(name + 25, ".new") == 0;
}

static void dl_prune_once(const char *dir) {
    static char *done[16];
    static int ndone = 0;
    char real[PATH_MAX], *path;
    const char *raw = getenv("DVIC_LOG_KEEP_DAYS");
    double keep_days = DL_DEFAULT_KEEP_DAYS, now = DL_CAST(double, dl_now_ms()) / 1000.0;
    DIR *d;
    struct dirent *e;
    int i, count = 0;
    if (raw && *raw) {
        char *end;
        keep_days = strtod(raw, &end);
        if (*end || !(keep_days >= 0)) return; /* reported nowhere: retention is housekeeping */
    }
    if (keep_days <= 0 || !realpath(dir, real)) return;
    pthread_mutex_lock(&dl_registry_mu);
    for (i = 0; i < ndone; i++)
        if (strcmp(done[i], real) == 0) break;
    if (i < ndone || ndone == 16) {
        pthread_mutex_unlock(&dl_registry_mu);
        return;
    }
    done[ndone] = dl_strdup(real);
    if (done[ndone]) ndone++;
    pthread_mutex_unlock(&dl_registry_mu);
    d = opendir(dir);
    if (!d) return;
    while ((e = readdir(d)) != NULL && count++ < 20000) {
        struct stat st;
        size_t n;
        if (!dl_prunable_name(e->d_name)) continue;
        n = strlen(dir) + strlen(e->d_name) + 2;
        path = DL_CAST(char *, malloc(n));
        if (!path) break;
        snprintf(path, n, "%s/%s", dir, e->d_name);
        if (lstat(path, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
            now - DL_CAST(double, st.st_mtime) >= keep_days * 86400.0 && !dl_writer_alive(path))
            unlink(path);
        free(path);
    }
    closedir(d);
}

/* A demo name as the operator sees it: trimmed, 1-200 characters, one line, no NUL. */
static char *dl_check_name(const char *name) {
    size_t start = 0, end, chars = 0, i;
    if (!name) return NULL;
    end = strlen(name);
    while (start < end && (name[start] == ' ' || (name[start] >= '\t' && name[start] <= '\r'))) start++;
    while (end > start && (name[end - 1] == ' ' || (name[end - 1] >= '\t' && name[end - 1] <= '\r'))) end--;
    if (start == end) return NULL;
    for (i = start; i < end; i++) {
        if (name[i] == '\n' || name[i] == '\r') return NULL;
        if ((DL_CAST(unsigned char, name[i]) & 0xC0) != 0x80) chars++;
    }
    if (chars > DL_MAX_NAME_CHARS) return NULL;
    return dl_strndup(name + start, end - start);
}

/* Frees what a handle holds in memory, and the handle (its file is closed already). */
static void dl_release(struct dvic_log *log) {
    pthread_mutex_destroy(&log->mu);
    dl_identity_free(&log->id);
    dl_free(&log->pending);
    dl_free(&log->line);
    dl_free(&log->scratch);
    free(log->dir);
    free(log->name);
    free(log->path);
    free(log);
}

DVIC_LOG_DEF dvic_log_t *dvic_log_open_in(const char *name, const char *directory, long long max_bytes) {
    struct dvic_log *log;
    struct stat st;
    const char *dir = directory, *source = "directory argument";
    char *clean = dl_check_name(name);
    if (!clean) {
        dl_report("the demo name %s%s%s must be 1-%d characters on one line", name ? "'" : "", name ? name : "NULL",
                  name ? "'" : "", DL_MAX_NAME_CHARS);
        errno = EINVAL;
        return NULL;
    }
    if (!dir) {
        dir = getenv("DVIC_LOG_DIR");
        source = "DVIC_LOG_DIR";
        if (!dir || !*dir) {
            dir = DL_DEFAULT_DIR;
            source = "default directory";
        }
    }
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        dl_report("demo '%s': %s '%s' is not an existing directory; its records are dropped", clean, source, dir);
        free(clean);
        errno = ENOENT;
        return NULL;
    }
    if (max_bytes <= 0) {
        const char *raw = getenv("DVIC_LOG_MAX_BYTES");
        max_bytes = DL_DEFAULT_MAX_BYTES;
        if (raw && *raw) {
            char *end;
            errno = 0;
            max_bytes = strtoll(raw, &end, 10);
            while (*end == ' ' || *end == '\t' || *end == '\n') end++;
            if (errno || *end || end == raw) {
                dl_report("demo '%s': DVIC_LOG_MAX_BYTES='%s' is not a whole number of bytes; its records are dropped",
                          clean, raw);
                free(clean);
                errno = EINVAL;
                return NULL;
            }
        }
    }
    if (max_bytes < DL_MIN_MAX_BYTES) {
        dl_report("demo '%s': the cap of %lld bytes is below the minimum of %lld bytes; its records are dropped",
                  clean, max_bytes, DL_MIN_MAX_BYTES);
        free(clean);
        errno = EINVAL;
        return NULL;
    }
    log = DL_CAST(struct dvic_log *, calloc(1, sizeof *log));
    if (!log || !(log->dir = dl_strdup(dir))) {
        dl_report("demo '%s': out of memory; its records are dropped", clean);
        free(log);
        free(clean);
        return NULL;
    }
    log->name = clean;
    log->fd = -1;
    log->max_bytes = max_bytes;
    log->last_heartbeat = -1.0;
    pthread_mutex_init(&log->mu, NULL);
    if (dl_identity_read(&log->id) != 0) {
        dl_report("demo '%s': cannot read this process's identity: %s; its records are dropped", clean,
                  strerror(errno));
        goto fail;
    }
    dl_fit_identity(log);
    if (dl_open_stream(log) != 0) {
        dl_report("demo '%s': cannot create a log file in %s: %s; its records are dropped", clean, dir,
                  strerror(errno));
        goto fail;
    }
    pthread_once(&dl_atfork_once, dl_install_atfork);
    pthread_mutex_lock(&dl_registry_mu);
    log->next = dl_registry;
    dl_registry = log;
    pthread_mutex_unlock(&dl_registry_mu);
    dl_prune_once(log->dir);
    return log;
fail:
    dl_release(log);
    return NULL;
}

DVIC_LOG_DEF dvic_log_t *dvic_log_open(const char *name) { return dvic_log_open_in(name, NULL, 0); }

DVIC_LOG_DEF const char *dvic_log_path(dvic_log_t *log) { return log ? log->path : NULL; }

DVIC_LOG_DEF const char *dvic_log_token(dvic_log_t *log) { return log ? log->token : NULL; }

DVIC_LOG_DEF void dvic_log_close(dvic_log_t *log) {
    struct dvic_log **p;
    if (!log) return;
    pthread_mutex_lock(&dl_registry_mu);
    for (p = &dl_registry; *p; p = &(*p)->next) {
        if (*p == log) {
            *p = log->next;
            break;
        }
    }
    pthread_mutex_unlock(&dl_registry_mu);
    pthread_mutex_lock(&log->mu);
    if (log->fd >= 0 && log->pending.n && log->pid == DL_CAST(long, getpid())) dl_finish_pending(log);
    if (log->fd >= 0) close(log->fd);
    pthread_mutex_unlock(&log->mu);
    dl_release(log);
}

#endif /* DVIC_LOG_IMPLEMENTATION */
