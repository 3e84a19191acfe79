// A plain C++11 demo that logs through dvic_log and sends heartbeats (docs/libraries.md, "C and C++").
//
// Build without CMake (one line):
//   g++ -std=c++11 -pthread -I lib/c -DDVIC_LOG_EXAMPLE_STANDALONE lib/c/examples/heartbeat_demo.cpp -o heartbeat_demo
// Run:                   ./heartbeat_demo [seconds]      (default: until Ctrl-C / SIGTERM)
#ifdef DVIC_LOG_EXAMPLE_STANDALONE
#define DVIC_LOG_IMPLEMENTATION  // this file holds the library's implementation (stb style)
#endif
#include "dvic_log.h"

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <thread>
#include <unistd.h>

static volatile std::sig_atomic_t stop = 0;

static void on_signal(int) { stop = 1; }

int main(int argc, char **argv) {
    const double seconds = argc > 1 ? std::atof(argv[1]) : 0.0;  // 0: run until stopped
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);

    dvic_log_t *log = dvic_log_open("c-example");  // NULL if it cannot log: every call accepts that
    dvic_log_info(log, "starting (pid %d)", static_cast<int>(getpid()));
    dvic_log_debug(log, "settings: frame every %d ms", 100);
    dvic_log_write(log, DVIC_LOG_INFO, "c-example.camera", "camera 0 opened");

    const auto start = std::chrono::steady_clock::now();
    for (long frame = 1; !stop; ++frame) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the demo's work
        dvic_log_heartbeat(log);  // every frame: at most one record a second reaches the file
        if (frame % 50 == 0) dvic_log_info(log, "frame %ld rendered", frame);
        if (frame % 120 == 0) dvic_log_warning(log, "frame %ld took longer than usual", frame);
        const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
        if (seconds > 0 && elapsed.count() >= seconds) break;
    }
    dvic_log_error(log, "stopping: %s", stop ? "signal received" : "time is up");
    dvic_log_close(log);
    return 0;
}
