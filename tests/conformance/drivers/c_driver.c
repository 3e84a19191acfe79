/* Conformance driver of the C/C++ library (tests/conformance/README.md): `driver SCRIPT.json`.
 *
 * Valid C99 and C++11: built both ways (drivers/c.json, drivers/cpp.json) with -Wall -Wextra
 * -Werror -pedantic. Plain records go through the printf-style calls a demo uses
 * (dvic_log_info(log, "%s", msg)); a record with a logger, a traceback, raw bytes or a NUL goes
 * through dvic_log_write_record. C strings cannot hold lone UTF-16 surrogates: those ops are skipped.
 */
#define DVIC_LOG_IMPLEMENTATION
#include "dvic_log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef __cplusplus
#define CAST(type, value) static_cast<type>(value)
#else
#define CAST(type, value) ((type)(value))
#endif

/* ----- a small JSON reader (the script is trusted test data) --------------------------------- */

enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct jv {
    int type;
    double num;
    char *str; /* UTF-8 (lone surrogates as their 3-byte form) */
    size_t len;
    struct jv **items; /* array items, or object values */
    char **keys;       /* object keys */
    size_t count;
} jv;

typedef struct {
    const char *p, *end;
    int bad;
} jparser;

static jv *jnew(int type) {
    jv *v = CAST(jv *, calloc(1, sizeof(jv)));
    if (!v) {
        fprintf(stderr, "c_driver: out of memory\n");
        exit(2);
    }
    v->type = type;
    return v;
}

static void jskip(jparser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\n' || *ps->p == '\r' || *ps->p == '\t')) ps->p++;
}

static void jput(char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
    if (*len + n + 1 > *cap) {
        while (*len + n + 1 > *cap) *cap = *cap ? *cap * 2 : 64;
        *buf = CAST(char *, realloc(*buf, *cap));
        if (!*buf) exit(2);
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = 0;
}

static void jput_cp(char **buf, size_t *len, size_t *cap, unsigned cp) {
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = CAST(char, cp);
        n = 1;
    } else if (cp < 0x800) {
        u[0] = CAST(char, 0xC0 | (cp >> 6));
        u[1] = CAST(char, 0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = CAST(char, 0xE0 | (cp >> 12));
        u[1] = CAST(char, 0x80 | ((cp >> 6) & 0x3F));
        u[2] = CAST(char, 0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = CAST(char, 0xF0 | (cp >> 18));
        u[1] = CAST(char, 0x80 | ((cp >> 12) & 0x3F));
        u[2] = CAST(char, 0x80 | ((cp >> 6) & 0x3F));
        u[3] = CAST(char, 0x80 | (cp & 0x3F));
        n = 4;
    }
    jput(buf, len, cap, u, n);
}

static unsigned jhex4(jparser *ps) {
    unsigned v = 0;
    int i;
    for (i = 0; i < 4; i++) {
        char c = ps->p < ps->end ? *ps->p++ : 0;
        v <<= 4;
        if (c >= '0' && c <= '9') v |= CAST(unsigned, c - '0');
        else if (c >= 'a' && c <= 'f') v |= CAST(unsigned, c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= CAST(unsigned, c - 'A' + 10);
        else ps->bad = 1;
    }
    return v;
}

static char *jstring(jparser *ps, size_t *out_len) {
    char *buf = NULL;
    size_t len = 0, cap = 0;
    jput(&buf, &len, &cap, "", 0);
    ps->p++; /* the opening quote */
    while (ps->p < ps->end && *ps->p != '"') {
        if (*ps->p != '\\') {
            jput(&buf, &len, &cap, ps->p, 1);
            ps->p++;
            continue;
        }
        ps->p++;
        if (ps->p >= ps->end) break;
        switch (*ps->p++) {
        case 'n': jput(&buf, &len, &cap, "\n", 1); break;
        case 'r': jput(&buf, &len, &cap, "\r", 1); break;
        case 't': jput(&buf, &len, &cap, "\t", 1); break;
        case 'b': jput(&buf, &len, &cap, "\b", 1); break;
        case 'f': jput(&buf, &len, &cap, "\f", 1); break;
        case 'u': {
            unsigned cp = jhex4(ps);
            if (cp >= 0xD800 && cp < 0xDC00 && ps->end - ps->p >= 6 && ps->p[0] == '\\' && ps->p[1] == 'u') {
                const char *save = ps->p;
                unsigned lo;
                ps->p += 2;
                lo = jhex4(ps);
                if (lo >= 0xDC00 && lo < 0xE000) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                else ps->p = save;
            }
            jput_cp(&buf, &len, &cap, cp);
            break;
        }
        default: jput(&buf, &len, &cap, ps->p - 1, 1); /* \" \\ \/ */
        }
    }
    if (ps->p < ps->end) ps->p++;
    else ps->bad = 1;
    *out_len = len;
    return buf;
}

static jv *jparse(jparser *ps) {
    jv *v;
    jskip(ps);
    if (ps->p >= ps->end) {
        ps->bad = 1;
        return jnew(J_NULL);
    }
    if (*ps->p == '{' || *ps->p == '[') {
        int obj = *ps->p == '{';
        v = jnew(obj ? J_OBJ : J_ARR);
        ps->p++;
        jskip(ps);
        while (ps->p < ps->end && *ps->p != (obj ? '}' : ']') && !ps->bad) {
            size_t klen;
            v->items = CAST(jv **, realloc(v->items, (v->count + 1) * sizeof(jv *)));
            v->keys = CAST(char **, realloc(v->keys, (v->count + 1) * sizeof(char *)));
            if (!v->items || !v->keys) exit(2);
            v->keys[v->count] = NULL;
            if (obj) {
                jskip(ps);
                if (ps->p >= ps->end || *ps->p != '"') {
                    ps->bad = 1;
                    break;
                }
                v->keys[v->count] = jstring(ps, &klen);
                jskip(ps);
                if (ps->p >= ps->end || *ps->p != ':') {
                    ps->bad = 1;
                    break;
                }
                ps->p++;
            }
            v->items[v->count++] = jparse(ps);
            jskip(ps);
            if (ps->p < ps->end && *ps->p == ',') ps->p++;
            jskip(ps);
        }
        if (ps->p < ps->end) ps->p++;
        return v;
    }
    if (*ps->p == '"') {
        v = jnew(J_STR);
        v->str = jstring(ps, &v->len);
        return v;
    }
    if (strncmp(ps->p, "true", 4) == 0 || strncmp(ps->p, "false", 5) == 0) {
        v = jnew(J_BOOL);
        v->num = *ps->p == 't';
        ps->p += *ps->p == 't' ? 4 : 5;
        return v;
    }
    if (strncmp(ps->p, "null", 4) == 0) {
        ps->p += 4;
        return jnew(J_NULL);
    }
    v = jnew(J_NUM);
    {
        char *end;
        v->num = strtod(ps->p, &end);
        if (end == ps->p) ps->bad = 1;
        ps->p = end;
    }
    return v;
}

static void jfree(jv *v) {
    size_t i;
    for (i = 0; i < v->count; i++) {
        jfree(v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->str);
    free(v);
}

static jv *jget(const jv *obj, const char *key) {
    size_t i;
    if (!obj || obj->type != J_OBJ) return NULL;
    for (i = 0; i < obj->count; i++)
        if (strcmp(obj->keys[i], key) == 0) return obj->items[i];
    return NULL;
}

static const char *jstr(const jv *obj, const char *key, size_t *len) {
    jv *v = jget(obj, key);
    if (!v || v->type != J_STR) return NULL;
    if (len) *len = v->len;
    return v->str;
}

static long jint(const jv *obj, const char *key, long fallback) {
    jv *v = jget(obj, key);
    return v && v->type == J_NUM ? CAST(long, v->num) : fallback;
}

/* ----- running the ops ----------------------------------------------------------------------- */

#define MAX_LOGS 16
static const char *log_names[MAX_LOGS];
static dvic_log_t *logs[MAX_LOGS];
static int nlogs = 0;

static dvic_log_t *log_of(const jv *op) {
    const char *name = jstr(op, "log", NULL);
    int i;
    for (i = 0; name && i < nlogs; i++)
        if (strcmp(log_names[i], name) == 0) return logs[i];
    return NULL;
}

static int level_of(const char *name) {
    if (!name) return DVIC_LOG_INFO;
    if (strcmp(name, "DEBUG") == 0) return DVIC_LOG_DEBUG;
    if (strcmp(name, "WARNING") == 0) return DVIC_LOG_WARNING;
    if (strcmp(name, "ERROR") == 0) return DVIC_LOG_ERROR;
    if (strcmp(name, "CRITICAL") == 0) return DVIC_LOG_CRITICAL;
    return DVIC_LOG_INFO;
}

/* msg with {t} and {i} replaced (malloc'ed). */
static char *fill(const char *msg, long t, long i) {
    char *buf = NULL, num[32];
    size_t len = 0, cap = 0;
    const char *p = msg;
    jput(&buf, &len, &cap, "", 0);
    while (*p) {
        if ((p[0] == '{' && (p[1] == 'i' || p[1] == 't') && p[2] == '}')) {
            snprintf(num, sizeof num, "%ld", p[1] == 'i' ? i : t);
            jput(&buf, &len, &cap, num, strlen(num));
            p += 3;
        } else {
            jput(&buf, &len, &cap, p, 1);
            p++;
        }
    }
    return buf;
}

static void plain(dvic_log_t *log, int level, const char *msg) {
    switch (level) {
    case DVIC_LOG_DEBUG: dvic_log_debug(log, "%s", msg); break;
    case DVIC_LOG_WARNING: dvic_log_warning(log, "%s", msg); break;
    case DVIC_LOG_ERROR: dvic_log_error(log, "%s", msg); break;
    case DVIC_LOG_CRITICAL: dvic_log_critical(log, "%s", msg); break;
    default: dvic_log_info(log, "%s", msg);
    }
}

static void write_op(const jv *op, const char *msg, size_t msg_len) {
    dvic_log_t *log = log_of(op);
    size_t logger_len = 0, exc_len = 0;
    const char *logger = jstr(op, "logger", &logger_len), *exc = jstr(op, "exc", &exc_len);
    int level = level_of(jstr(op, "level", NULL));
    if (!logger && !exc && strlen(msg) == msg_len) {
        plain(log, level, msg);
        return;
    }
    dvic_log_record_t r = {level, logger, logger_len, msg, msg_len, exc, exc_len};  /* in the documented order */
    dvic_log_write_record(log, &r);
}

static void op_write(const jv *op) {
    size_t len = 0, i;
    const char *msg = jstr(op, "msg", &len), *hex = jstr(op, "msg_hex", NULL);
    long repeat = jint(op, "repeat", 1);
    char *text;
    if (hex) {
        size_t n = strlen(hex) / 2;
        text = CAST(char *, malloc(n + 1));
        if (!text) exit(2);
        for (i = 0; i < n; i++) {
            unsigned byte;
            sscanf(hex + 2 * i, "%2x", &byte);
            text[i] = CAST(char, byte);
        }
        text[n] = 0;
        write_op(op, text, n);
    } else {
        if (!msg) msg = "";
        text = CAST(char *, malloc(len * CAST(size_t, repeat) + 1));
        if (!text) exit(2);
        for (i = 0; i < CAST(size_t, repeat); i++) memcpy(text + i * len, msg, len);
        text[len * CAST(size_t, repeat)] = 0;
        write_op(op, text, len * CAST(size_t, repeat));
    }
    free(text);
}

typedef struct {
    dvic_log_t *log;
    const char *msg;
    long t, count;
    pthread_barrier_t *start;
} thread_arg;

static void *thread_main(void *p) {
    thread_arg *a = CAST(thread_arg *, p);
    long i;
    pthread_barrier_wait(a->start);
    for (i = 0; i < a->count; i++) {
        char *text = fill(a->msg, a->t, i);
        dvic_log_info(a->log, "%s", text);
        free(text);
    }
    return NULL;
}

static void op_threads(const jv *op) {
    long n = jint(op, "threads", 1), t;
    pthread_t *ids = CAST(pthread_t *, calloc(CAST(size_t, n), sizeof(pthread_t)));
    thread_arg *args = CAST(thread_arg *, calloc(CAST(size_t, n), sizeof(thread_arg)));
    pthread_barrier_t start;
    if (!ids || !args) exit(2);
    pthread_barrier_init(&start, NULL, CAST(unsigned, n));
    for (t = 0; t < n; t++) {
        args[t].log = log_of(op);
        args[t].msg = jstr(op, "msg", NULL);
        args[t].t = t;
        args[t].count = jint(op, "count", 0);
        args[t].start = &start;
        pthread_create(&ids[t], NULL, thread_main, &args[t]);
    }
    for (t = 0; t < n; t++) pthread_join(ids[t], NULL);
    pthread_barrier_destroy(&start);
    free(ids);
    free(args);
}

static void op_fork(const jv *op) {
    long i, count = jint(op, "count", 0);
    pid_t pid;
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        for (i = 0; i < count; i++) {
            char *text = fill(jstr(op, "msg", NULL), 0, i);
            dvic_log_info(log_of(op), "%s", text);
            free(text);
        }
        _exit(0);
    }
    if (pid > 0) waitpid(pid, NULL, 0);
}

static int has_capability(const char *what) {
    return strcmp(what, "bytes") == 0 || strcmp(what, "fork") == 0 || strcmp(what, "threads") == 0;
}

int main(int argc, char **argv) {
    FILE *f;
    char *data;
    long size, skipped[256];
    size_t i, nskipped = 0;
    jparser ps;
    jv *script, *ops;
    if (argc != 2 || !(f = fopen(argv[1], "rb"))) {
        fprintf(stderr, "c_driver: usage: driver SCRIPT.json\n");
        return 2;
    }
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    fseek(f, 0, SEEK_SET);
    data = CAST(char *, malloc(CAST(size_t, size) + 1));
    if (!data || fread(data, 1, CAST(size_t, size), f) != CAST(size_t, size)) {
        fprintf(stderr, "c_driver: cannot read %s\n", argv[1]);
        return 2;
    }
    fclose(f);
    ps.p = data;
    ps.end = data + size;
    ps.bad = 0;
    script = jparse(&ps);
    ops = jget(script, "ops");
    if (ps.bad || !ops || ops->type != J_ARR) {
        fprintf(stderr, "c_driver: %s is not a conformance script\n", argv[1]);
        return 2;
    }
    for (i = 0; i < ops->count; i++) {
        const jv *op = ops->items[i];
        const char *kind = jstr(op, "op", NULL), *requires = jstr(op, "requires", NULL);
        if (!kind) continue;
        if (requires && !has_capability(requires)) {
            if (nskipped < 256) skipped[nskipped++] = CAST(long, i);
            continue;
        }
        if (strcmp(kind, "open") == 0 && nlogs < MAX_LOGS) {
            log_names[nlogs] = jstr(op, "log", NULL);
            logs[nlogs++] = dvic_log_open(jstr(op, "name", NULL));
        } else if (strcmp(kind, "write") == 0) {
            op_write(op);
        } else if (strcmp(kind, "write_many") == 0) {
            long n, count = jint(op, "count", 0);
            for (n = 0; n < count; n++) {
                char *text = fill(jstr(op, "msg", NULL), 0, n);
                write_op(op, text, strlen(text));
                free(text);
            }
        } else if (strcmp(kind, "heartbeat") == 0) {
            dvic_log_heartbeat(log_of(op));
        } else if (strcmp(kind, "fork") == 0) {
            op_fork(op);
        } else if (strcmp(kind, "threads") == 0) {
            op_threads(op);
        } else if (strcmp(kind, "close") == 0) {
            int k;
            for (k = 0; k < nlogs; k++) {
                if (log_names[k] && strcmp(log_names[k], jstr(op, "log", NULL)) == 0) {
                    dvic_log_close(logs[k]);
                    logs[k] = NULL;
                }
            }
        }
    }
    printf("{\"pid\": %ld, \"skipped\": [", CAST(long, getpid()));
    for (i = 0; i < nskipped; i++) printf("%s%ld", i ? ", " : "", skipped[i]);
    printf("]}\n");
    fflush(stdout);
    jfree(script);
    free(data);
    return 0;
}
