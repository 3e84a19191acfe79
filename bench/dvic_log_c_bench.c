/* Records/s of lib/c/dvic_log.h writing 100-byte messages (bench/dvic_log_langs.py builds and runs it).
 * Usage: dvic_log_c_bench RECORDS THREADS   (DVIC_LOG_DIR set). Prints {"records": N, "seconds": S}. */
#define DVIC_LOG_IMPLEMENTATION
#include "dvic_log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static dvic_log_t *log_;
static long per_thread;
static char message[101];

static void *work(void *arg) {
    long i;
    (void)arg;
    for (i = 0; i < per_thread; i++) dvic_log_write(log_, DVIC_LOG_INFO, NULL, message);
    return NULL;
}

int main(int argc, char **argv) {
    long records = argc > 1 ? atol(argv[1]) : 1000000, threads = argc > 2 ? atol(argv[2]) : 1, t;
    pthread_t ids[64];
    struct timespec a, b;
    if (threads < 1 || threads > 64) return 2;
    memset(message, 'x', 100);
    memcpy(message, "bench record with a plain ASCII message of exactly one hundred bytes: ", 71);
    log_ = dvic_log_open("bench-c");
    if (!log_) return 1;
    per_thread = records / threads;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (t = 0; t < threads; t++) pthread_create(&ids[t], NULL, work, NULL);
    for (t = 0; t < threads; t++) pthread_join(ids[t], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    dvic_log_close(log_);
    printf("{\"records\": %ld, \"seconds\": %.6f}\n", per_thread * threads,
           (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
