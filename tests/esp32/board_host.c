/* The ESP32 logging core on the host (tests/esp32/test_board_logs.py): a scripted "board".
 *
 * Commands on stdin, one per line:
 *   log LEVEL TEXT     enqueue a record (LEVEL: a number); TEXT may hold \n, \t, \\ and \xHH escapes
 *   send               one keep-alive: prints "POST <n>" and the n-byte body on stdout, then reads
 *                      "ANSWER <status> <n>" and the n-byte answer body on stdin (the test posts it
 *                      to the real server, or drops the answer to simulate a lost one)
 *   stats              prints {"count":..,"dropped":..,"sent":..,"base_known":..,"token":".."}
 *   bench N            enqueues N 100-byte records, prints {"ns_per_log": ..}
 * The post function is the one small piece the Arduino sketch replaces with an HTTPClient POST.
 */
#define _POSIX_C_SOURCE 200809L /* the host harness only: clock_gettime */
#define DVIC_BOARD_LOG_IMPLEMENTATION
#include "dvic_board_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef __cplusplus
#define CAST(type, value) static_cast<type>(value)
#else
#define CAST(type, value) ((type)(value))
#endif

static struct timespec boot;

static uint64_t host_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return CAST(uint64_t, t.tv_sec - boot.tv_sec) * 1000u + CAST(uint64_t, (t.tv_nsec - boot.tv_nsec) / 1000000L);
}

static uint32_t host_random(void) {
    uint32_t r = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) {
        if (fread(&r, sizeof r, 1, f) != 1) r = 0;
        fclose(f);
    }
    return r;
}

/* The "HTTP call": hand the body to the test through stdout, read its answer from stdin. */
static int post_through_test(void *ctx, const char *body, size_t len, char *answer, size_t cap) {
    int status = 0;
    size_t n = 0, got;
    char line[128];
    (void)ctx;
    printf("POST %lu\n", CAST(unsigned long, len));
    fwrite(body, 1, len, stdout);
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin) || sscanf(line, "ANSWER %d %lu", &status, CAST(unsigned long *, &n)) != 2)
        return 0;
    got = 0;
    while (got < n) {
        int c = getchar();
        if (c == EOF) break;
        if (got < cap - 1) answer[got] = CAST(char, c);
        got++;
    }
    answer[got < cap ? got : cap - 1] = 0;
    return status;
}

static void unescape(char *s) {
    char *out = s;
    while (*s) {
        if (s[0] == '\\' && s[1]) {
            s++;
            if (*s == 'n') *out++ = '\n';
            else if (*s == 't') *out++ = '\t';
            else if (*s == 'x' && s[1] && s[2]) {
                char hex[3] = {s[1], s[2], 0};
                *out++ = CAST(char, strtol(hex, NULL, 16));
                s += 2;
            } else *out++ = *s;
            s++;
        } else {
            *out++ = *s++;
        }
    }
    *out = 0;
}

int main(int argc, char **argv) {
    static unsigned char ring[64 * 1024];
    static char body[16 * 1024], line[70000];
    dvic_board_log_t blog;
    dvic_board_log_config_t cfg;
    size_t ring_bytes = argc > 1 ? CAST(size_t, atol(argv[1])) : 4096;
    clock_gettime(CLOCK_MONOTONIC, &boot);
    memset(&cfg, 0, sizeof cfg);
    cfg.storage = ring;
    cfg.storage_bytes = ring_bytes < sizeof ring ? ring_bytes : sizeof ring;
    cfg.max_msg = argc > 2 ? CAST(size_t, atol(argv[2])) : 120;
    cfg.name = argc > 3 ? argv[3] : "board-demo";
    cfg.now_ms = host_ms;
    cfg.random32 = host_random;
    if (dvic_board_log_init(&blog, &cfg) != 0) {
        fprintf(stderr, "board_host: bad configuration\n");
        return 2;
    }
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (strncmp(line, "log ", 4) == 0) {
            char *text = strchr(line + 4, ' ');
            int level = atoi(line + 4);
            text = text ? text + 1 : line + strlen(line);
            unescape(text);
            dvic_board_log(&blog, level, text);
        } else if (strcmp(line, "send") == 0) {
            int status = dvic_board_keepalive(&blog, post_through_test, NULL, "\"free_mem\":123456,\"rssi\":-61",
                                              body, sizeof body);
            printf("STATUS %d\n", status);
        } else if (strcmp(line, "stats") == 0) {
            printf("{\"count\":%lu,\"dropped\":%lu,\"sent\":%lu,\"base_known\":%d,\"token\":\"%s\"}\n",
                   CAST(unsigned long, blog.count), CAST(unsigned long, blog.dropped_total),
                   CAST(unsigned long, blog.sent_total), blog.base_known, blog.token);
        } else if (strncmp(line, "bench ", 6) == 0) {
            long i, n = atol(line + 6);
            char msg[101];
            struct timespec a, b;
            memset(msg, 'm', 100);
            msg[100] = 0;
            clock_gettime(CLOCK_MONOTONIC, &a);
            for (i = 0; i < n; i++) dvic_board_log(&blog, DVIC_BOARD_INFO, msg);
            clock_gettime(CLOCK_MONOTONIC, &b);
            printf("{\"ns_per_log\":%.1f}\n",
                   (CAST(double, b.tv_sec - a.tv_sec) * 1e9 + CAST(double, b.tv_nsec - a.tv_nsec)) / CAST(double, n));
        }
        fflush(stdout);
    }
    return 0;
}
