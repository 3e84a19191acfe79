/* dvic_board_log.h - log lines of an ESP32 board, sent with its keep-alive (docs/esp32.md).
 *
 * Plain C99 (also C++11): no heap, no POSIX, no Arduino. Records wait in a bounded RAM ring the
 * program provides; each keep-alive carries a batch of them (the `logs` object of the keep-alive
 * body, docs/protocol.md section 3) and they leave the ring once the server answered 200. A full
 * ring drops its oldest record and the next keep-alive tells the server the range of `seq` it
 * lost (a stored `log_gap` event). The HTTP call sits behind one function pointer (an Arduino
 * HTTPClient POST on the board; the host tests post with Python against the real server).
 *
 * stb style: in ONE file   #define DVIC_BOARD_LOG_IMPLEMENTATION   then   #include "dvic_board_log.h".
 *
 *     static unsigned char ring[8192];
 *     static dvic_board_log_t blog;
 *     dvic_board_log_config_t cfg = {ring, sizeof ring, 160, "lamp", board_ms, board_random, 0, 0, 0};
 *     dvic_board_log_init(&blog, &cfg);
 *     dvic_board_info(&blog, "button pressed %d times", n);                 (fast: a copy into the ring)
 *     dvic_board_keepalive(&blog, post, NULL, "\"rssi\":-60", body, sizeof body);  (every interval)
 */
#ifndef DVIC_BOARD_LOG_H
#define DVIC_BOARD_LOG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DVIC_BOARD_LOGS_VERSION 1 /* the `logs.v` of the keep-alive body */

#define DVIC_BOARD_DEBUG 10
#define DVIC_BOARD_INFO 20
#define DVIC_BOARD_WARNING 30
#define DVIC_BOARD_ERROR 40
#define DVIC_BOARD_CRITICAL 50

/* POST body (len bytes of JSON) to the keep-alive URL with the node's bearer token; put the
 * answer's body (NUL-terminated, cut to answer_cap) in answer. Returns the HTTP status, or 0 when
 * no answer came (no network, timeout, TLS failure). */
typedef int (*dvic_board_post_fn)(void *ctx, const char *body, size_t len, char *answer, size_t answer_cap);

typedef struct {
    void *storage;            /* the ring's memory: records are kept here, never on the heap */
    size_t storage_bytes;
    size_t max_msg;           /* bytes of a message kept (longer ones are cut and flagged truncated) */
    const char *name;         /* the demo name the console shows for these lines (e.g. the firmware's) */
    uint64_t (*now_ms)(void); /* milliseconds since boot (esp_timer_get_time() / 1000) */
    uint32_t (*random32)(void); /* a random number (esp_random()), for the boot token */
    void (*lock)(void *);     /* optional: called around every ring access (a FreeRTOS mutex or */
    void (*unlock)(void *);   /* critical section) when several tasks log; NULL: one task only */
    void *lock_arg;
} dvic_board_log_config_t;

typedef struct {
    dvic_board_log_config_t cfg;
    size_t slot_bytes, slots;
    uint32_t first;        /* local index of the oldest record kept (indices start at 1 each boot) */
    uint32_t count;        /* records kept */
    uint32_t next;         /* local index of the next record */
    uint32_t gap_first, gap_last; /* local indices of records dropped and not yet reported (0: none) */
    uint32_t sent_through; /* the last record of the keep-alive under way (0: none) */
    uint32_t gap_sent_last;
    uint64_t base;         /* seq = base + local index; base is the server's last_seq at first contact */
    int base_known;
    char token[17];        /* this boot's token: the `demo` of its lines */
    uint32_t dropped_total, sent_total;
} dvic_board_log_t;

/* 0, or -1 when the storage cannot hold one record. */
int dvic_board_log_init(dvic_board_log_t *log, const dvic_board_log_config_t *cfg);
/* Enqueue one record (never blocks, never allocates); 0, or -1 for a NULL log. */
int dvic_board_log(dvic_board_log_t *log, int level, const char *msg);
int dvic_board_logv(dvic_board_log_t *log, int level, const char *fmt, va_list ap);
int dvic_board_debug(dvic_board_log_t *log, const char *fmt, ...);
int dvic_board_info(dvic_board_log_t *log, const char *fmt, ...);
int dvic_board_warning(dvic_board_log_t *log, const char *fmt, ...);
int dvic_board_error(dvic_board_log_t *log, const char *fmt, ...);
int dvic_board_critical(dvic_board_log_t *log, const char *fmt, ...);

/* Build the keep-alive body into body[cap]: {"uptime":<s>,<extra>,"logs":{...}} with as many
 * records as fit (extra: more fields without braces, e.g. "\"rssi\":-60,\"firmware\":\"lamp-1\"",
 * or NULL). Returns its length, 0 if cap is too small even without records. */
size_t dvic_board_keepalive_body(dvic_board_log_t *log, const char *extra, char *body, size_t cap);
/* Tell the log how the keep-alive of the last body went (status as the post function returns
 * it): on 200 the records it carried leave the ring; otherwise they are sent again next time. */
void dvic_board_keepalive_done(dvic_board_log_t *log, int status, const char *answer);
/* Both, around post(): the body is built in body[cap] (a few KiB; 64 KiB at most). Returns the status. */
int dvic_board_keepalive(dvic_board_log_t *log, dvic_board_post_fn post, void *ctx, const char *extra, char *body,
                         size_t cap);

#ifdef __cplusplus
}
#endif
#endif /* DVIC_BOARD_LOG_H */

/* ================================ implementation ================================================ */
#if defined(DVIC_BOARD_LOG_IMPLEMENTATION) && !defined(DVIC_BOARD_LOG_IMPLEMENTED)
#define DVIC_BOARD_LOG_IMPLEMENTED

#include <stdio.h>
#include <string.h>

#ifdef __cplusplus
#define DB_CAST(type, value) static_cast<type>(value)
#define DB_BYTES(type, value) reinterpret_cast<type>(value)
#else
#define DB_CAST(type, value) ((type)(value))
#define DB_BYTES(type, value) ((type)(value))
#endif

/* A slot: [0..7] ms since boot, [8..11] local index, [12..13] length, [14] level, [15] truncated, message. */
#define DB_SLOT_HEAD 16

static unsigned char *db_slot(dvic_board_log_t *log, uint32_t index) {
    return DB_CAST(unsigned char *, log->cfg.storage) + (index % log->slots) * log->slot_bytes;
}

static void db_lock(dvic_board_log_t *log) {
    if (log->cfg.lock) log->cfg.lock(log->cfg.lock_arg);
}

static void db_unlock(dvic_board_log_t *log) {
    if (log->cfg.unlock) log->cfg.unlock(log->cfg.lock_arg);
}

int dvic_board_log_init(dvic_board_log_t *log, const dvic_board_log_config_t *cfg) {
    static const char hex[] = "0123456789abcdef";
    int i;
    if (!log || !cfg || !cfg->storage || !cfg->now_ms || cfg->max_msg < 16 || cfg->max_msg > 65535) return -1;
    memset(log, 0, sizeof *log);
    log->cfg = *cfg;
    log->slot_bytes = (DB_SLOT_HEAD + cfg->max_msg + 1 + 7) & ~DB_CAST(size_t, 7); /* + room for a NUL */
    log->slots = cfg->storage_bytes / log->slot_bytes;
    if (log->slots < 1) return -1;
    log->first = log->next = 1;
    for (i = 0; i < 16; i += 8) {
        uint32_t r1 = cfg->random32 ? cfg->random32() : DB_CAST(uint32_t, cfg->now_ms() * 2654435761u);
        uint32_t r2 = cfg->random32 ? cfg->random32() : r1 * 2246822519u + 1;
        int k;
        for (k = 0; k < 4; k++) log->token[i + k] = hex[(r1 >> (28 - 4 * k)) & 15];
        for (k = 0; k < 4; k++) log->token[i + 4 + k] = hex[(r2 >> (28 - 4 * k)) & 15];
    }
    log->token[16] = 0;
    return 0;
}

/* Room for one more record: the oldest goes, and the gap says so. Called with the lock held. */
static unsigned char *db_claim(dvic_board_log_t *log) {
    unsigned char *slot;
    if (log->count == log->slots) {
        if (!log->gap_first) log->gap_first = log->first;
        log->gap_last = log->first;
        log->first++;
        log->count--;
        log->dropped_total++;
    }
    slot = db_slot(log, log->next);
    log->count++;
    return slot;
}

static void db_fill(dvic_board_log_t *log, unsigned char *slot, int level, size_t len, int truncated) {
    uint64_t ms = log->cfg.now_ms();
    uint32_t index = log->next++;
    memcpy(slot, &ms, 8);
    memcpy(slot + 8, &index, 4);
    slot[12] = DB_CAST(unsigned char, len & 0xFF);
    slot[13] = DB_CAST(unsigned char, len >> 8);
    slot[14] = DB_CAST(unsigned char, level < 0 ? 0 : level > 255 ? 255 : level);
    slot[15] = DB_CAST(unsigned char, truncated);
}

int dvic_board_log(dvic_board_log_t *log, int level, const char *msg) {
    size_t len;
    unsigned char *slot;
    int truncated;
    if (!log) return -1;
    if (!msg) msg = "";
    len = strlen(msg);
    truncated = len > log->cfg.max_msg;
    if (truncated) len = log->cfg.max_msg;
    db_lock(log);
    slot = db_claim(log);
    memcpy(slot + DB_SLOT_HEAD, msg, len);
    db_fill(log, slot, level, len, truncated);
    db_unlock(log);
    return 0;
}

int dvic_board_logv(dvic_board_log_t *log, int level, const char *fmt, va_list ap) {
    unsigned char *slot;
    int n;
    size_t len;
    if (!log) return -1;
    db_lock(log);
    slot = db_claim(log);
    n = vsnprintf(DB_BYTES(char *, slot + DB_SLOT_HEAD), log->cfg.max_msg + 1, fmt ? fmt : "", ap);
    len = n < 0 ? 0 : DB_CAST(size_t, n) > log->cfg.max_msg ? log->cfg.max_msg : DB_CAST(size_t, n);
    db_fill(log, slot, level, len, n >= 0 && DB_CAST(size_t, n) > log->cfg.max_msg);
    db_unlock(log);
    return 0;
}

#define DB_LEVEL_FUNCTION(fname, level)                                  \
    int fname(dvic_board_log_t *log, const char *fmt, ...) {             \
        va_list ap;                                                      \
        int rc;                                                          \
        va_start(ap, fmt);                                               \
        rc = dvic_board_logv(log, level, fmt, ap);                       \
        va_end(ap);                                                      \
        return rc;                                                       \
    }
DB_LEVEL_FUNCTION(dvic_board_debug, DVIC_BOARD_DEBUG)
DB_LEVEL_FUNCTION(dvic_board_info, DVIC_BOARD_INFO)
DB_LEVEL_FUNCTION(dvic_board_warning, DVIC_BOARD_WARNING)
DB_LEVEL_FUNCTION(dvic_board_error, DVIC_BOARD_ERROR)
DB_LEVEL_FUNCTION(dvic_board_critical, DVIC_BOARD_CRITICAL)
#undef DB_LEVEL_FUNCTION

/* ----- the body ------------------------------------------------------------------------------ */

typedef struct {
    char *p;
    size_t n, cap;
    int full;
} db_out;

static void db_put(db_out *o, const char *s, size_t n) {
    if (o->full || o->n + n >= o->cap) {
        o->full = 1;
        return;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
    o->p[o->n] = 0;
}

static void db_puts(db_out *o, const char *s) { db_put(o, s, strlen(s)); }

static void db_putu(db_out *o, uint64_t v) {
    char text[24];
    int i = 23;
    text[i] = 0;
    do {
        text[--i] = DB_CAST(char, '0' + v % 10);
        v /= 10;
    } while (v);
    db_puts(o, text + i);
}

/* JSON string content: escapes, and invalid UTF-8 as U+FFFD (the server reads strict UTF-8). */
static void db_put_text(db_out *o, const unsigned char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i], need = 0, k;
        if (c == '"' || c == '\\') {
            char esc[2];
            esc[0] = '\\';
            esc[1] = DB_CAST(char, c);
            db_put(o, esc, 2);
            i++;
            continue;
        }
        if (c < 0x20 || c == 0x7f) {
            char esc[6] = {'\\', 'u', '0', '0', 0, 0};
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            db_put(o, esc, 6);
            i++;
            continue;
        }
        if (c < 0x80) {
            db_put(o, DB_BYTES(const char *, s + i), 1);
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c >= 0xE0 && c <= 0xEF) need = 2;
        else if (c >= 0xF0 && c <= 0xF4) need = 3;
        for (k = 1; need && k <= need; k++) {
            unsigned d = i + k < n ? s[i + k] : 0, lo = 0x80, hi = 0xBF;
            if (k == 1 && c == 0xE0) lo = 0xA0;
            if (k == 1 && c == 0xED) hi = 0x9F;
            if (k == 1 && c == 0xF0) lo = 0x90;
            if (k == 1 && c == 0xF4) hi = 0x8F;
            if (d < lo || d > hi) need = 0;
        }
        if (need) {
            db_put(o, DB_BYTES(const char *, s + i), need + 1);
            i += need + 1;
        } else {
            db_put(o, "\xEF\xBF\xBD", 3);
            i++;
        }
    }
}

static const char *db_level_name(int level) {
    if (level >= DVIC_BOARD_CRITICAL) return "CRITICAL";
    if (level >= DVIC_BOARD_ERROR) return "ERROR";
    if (level >= DVIC_BOARD_WARNING) return "WARNING";
    if (level >= DVIC_BOARD_INFO) return "INFO";
    return "DEBUG";
}

size_t dvic_board_keepalive_body(dvic_board_log_t *log, const char *extra, char *body, size_t cap) {
    db_out o;
    uint64_t now;
    uint32_t i, last = 0;
    if (!log || !body || cap < 2) return 0;
    o.p = body;
    o.n = 0;
    o.cap = cap;
    o.full = 0;
    now = log->cfg.now_ms();
    db_puts(&o, "{\"uptime\":");
    db_putu(&o, now / 1000);
    if (extra && *extra) {
        db_puts(&o, ",");
        db_puts(&o, extra);
    }
    db_puts(&o, ",\"logs\":{\"v\":1,\"token\":\"");
    db_puts(&o, log->token);
    db_puts(&o, "\",\"name\":\"");
    db_put_text(&o, DB_BYTES(const unsigned char *, log->cfg.name ? log->cfg.name : ""),
                log->cfg.name ? strlen(log->cfg.name) : 0);
    db_puts(&o, "\",\"now_ms\":");
    db_putu(&o, now);
    db_lock(log);
    log->gap_sent_last = 0;
    if (log->base_known && log->gap_first) {
        db_puts(&o, ",\"gap\":{\"first_seq\":");
        db_putu(&o, log->base + log->gap_first);
        db_puts(&o, ",\"last_seq\":");
        db_putu(&o, log->base + log->gap_last);
        db_puts(&o, "}");
        log->gap_sent_last = log->gap_last;
    }
    db_puts(&o, ",\"lines\":[");
    /* The closing "]}}" must always fit: keep 4 bytes in reserve while adding records. */
    o.cap -= 4;
    for (i = 0; log->base_known && i < log->count && i < 500; i++) {
        uint32_t index = log->first + i;
        unsigned char *slot = db_slot(log, index);
        uint64_t ms;
        size_t len = DB_CAST(size_t, slot[12]) | DB_CAST(size_t, slot[13]) << 8, mark = o.n;
        memcpy(&ms, slot, 8);
        db_puts(&o, i ? ",{\"seq\":" : "{\"seq\":");
        db_putu(&o, log->base + index);
        db_puts(&o, ",\"ms\":");
        db_putu(&o, ms);
        db_puts(&o, ",\"level\":\"");
        db_puts(&o, db_level_name(slot[14]));
        db_puts(&o, "\",\"msg\":\"");
        db_put_text(&o, slot + DB_SLOT_HEAD, len);
        db_puts(&o, slot[15] ? "\",\"truncated\":true}" : "\"}");
        if (o.full) { /* this record does not fit: it goes with the next keep-alive */
            o.full = 0;
            o.n = mark;
            o.p[o.n] = 0;
            break;
        }
        last = index;
    }
    o.cap += 4;
    log->sent_through = last;
    db_unlock(log);
    db_puts(&o, "]}}");
    return o.full ? 0 : o.n;
}

static uint64_t db_last_seq(const char *answer, int *found) {
    const char *p = answer ? strstr(answer, "\"last_seq\"") : NULL;
    uint64_t v = 0;
    *found = 0;
    if (!p) return 0;
    p += 10;
    while (*p == ' ' || *p == ':') p++;
    while (*p >= '0' && *p <= '9') {
        v = v * 10 + DB_CAST(uint64_t, *p++ - '0');
        *found = 1;
    }
    return v;
}

void dvic_board_keepalive_done(dvic_board_log_t *log, int status, const char *answer) {
    int found;
    uint64_t last_seq;
    if (!log) return;
    db_lock(log);
    if (status == 200) {
        last_seq = db_last_seq(answer, &found);
        if (!log->base_known && found) {
            /* Every seq of this boot lies above what the server holds: no earlier boot's line collides. */
            log->base = last_seq;
            log->base_known = 1;
        }
        while (log->count && log->sent_through && log->first <= log->sent_through) {
            log->first++;
            log->count--;
            log->sent_total++;
        }
        if (log->gap_sent_last) {
            if (log->gap_last == log->gap_sent_last) log->gap_first = log->gap_last = 0;
            else log->gap_first = log->gap_sent_last + 1; /* more were dropped meanwhile */
        }
    } else if (status == 400 || status == 413) {
        /* The server refuses this batch as it is: sending it again would stop every later line. */
        while (log->count && log->sent_through && log->first <= log->sent_through) {
            if (!log->gap_first) log->gap_first = log->first;
            log->gap_last = log->first;
            log->first++;
            log->count--;
            log->dropped_total++;
        }
    }
    log->sent_through = 0;
    log->gap_sent_last = 0;
    db_unlock(log);
}

int dvic_board_keepalive(dvic_board_log_t *log, dvic_board_post_fn post, void *ctx, const char *extra, char *body,
                         size_t cap) {
    char answer[256];
    size_t len;
    int status;
    if (!log || !post) return 0;
    len = dvic_board_keepalive_body(log, extra, body, cap);
    if (!len) return 0;
    answer[0] = 0;
    status = post(ctx, body, len, answer, sizeof answer);
    answer[sizeof answer - 1] = 0;
    dvic_board_keepalive_done(log, status, answer);
    return status;
}

#endif /* DVIC_BOARD_LOG_IMPLEMENTATION */
