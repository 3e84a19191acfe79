/* Behaviours of dvic_log.h the conformance script does not reach (tests/c/test_c_library.py builds
 * this as C99 and as C++11 with the sanitizers, then runs it with DVIC_LOG_DIR set).
 * Prints one line per check; exits non-zero at the first failure. */
#define DVIC_LOG_IMPLEMENTATION
#include "dvic_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stdout, "FAILED line %d: %s\n", __LINE__, #cond);            \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

static int count_lines(const char *path, const char *needle) {
    char line[8192];
    int n = 0;
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (strstr(line, needle)) n++;
    fclose(f);
    return n;
}

static void sleep_ms(long ms) {
    struct timespec t;
    t.tv_sec = ms / 1000;
    t.tv_nsec = (ms % 1000) * 1000000L;
    nanosleep(&t, NULL);
}

int main(void) {
    dvic_log_t *log;
    char path[4096];
    int i, found = 0;
    struct stat st;

    /* NULL is accepted everywhere and does nothing. */
    CHECK(dvic_log_info(NULL, "x %d", 1) == -1);
    CHECK(dvic_log_write(NULL, DVIC_LOG_INFO, NULL, "x") == -1);
    CHECK(dvic_log_heartbeat(NULL) == -1);
    CHECK(dvic_log_path(NULL) == NULL && dvic_log_token(NULL) == NULL);
    dvic_log_close(NULL);
    puts("null log: ok");

    /* Bad names: NULL, and one stderr line each (the test counts them). */
    CHECK(dvic_log_open("") == NULL);
    CHECK(dvic_log_open("two\nlines") == NULL);
    CHECK(dvic_log_open(NULL) == NULL);
    puts("bad names: ok");

    log = dvic_log_open("  unit-demo  ");
    CHECK(log != NULL);
    CHECK(strlen(dvic_log_token(log)) == 16);
    snprintf(path, sizeof path, "%s", dvic_log_path(log));
    CHECK(count_lines(path, "\"name\":\"unit-demo\"") == 1); /* trimmed, like Python's strip() */

    /* Heartbeats: the first is written, the next within a second is not. */
    CHECK(dvic_log_heartbeat(log) == 1);
    CHECK(dvic_log_heartbeat(log) == 0);
    CHECK(count_lines(path, "\"heartbeat\":1") == 1);
    puts("heartbeat once a second: ok");

    /* Levels map down; a long printf message is formatted whole. */
    CHECK(dvic_log_write(log, 25, NULL, "custom level") == 0);
    CHECK(dvic_log_write(log, 5, "unit-demo.low", "below debug") == 0);
    CHECK(dvic_log_write(log, 99, NULL, "above critical") == 0);
    CHECK(count_lines(path, "\"level\":\"INFO\",\"msg\":\"custom level\"") == 1);
    CHECK(count_lines(path, "\"level\":\"DEBUG\",\"msg\":\"below debug\",\"logger\":\"unit-demo.low\"") == 1);
    CHECK(count_lines(path, "\"level\":\"CRITICAL\",\"msg\":\"above critical\"") == 1);
    CHECK(dvic_log_info(log, "%s|%0*d|end", "long", 3000, 7) == 0);
    CHECK(count_lines(path, "0007|end") == 1);
    puts("levels and printf: ok");

    /* A deleted file is created again at the same path within about a second. */
    CHECK(unlink(path) == 0);
    for (i = 0; i < 300 && !found; i++) {
        dvic_log_info(log, "after delete %d", i);
        found = stat(path, &st) == 0;
        if (!found) sleep_ms(10);
    }
    CHECK(found);
    CHECK(count_lines(path, "\"rotated\":1") == 1);
    puts("deleted file recreated: ok");

    dvic_log_close(log);
    puts("all ok");
    return 0;
}
