// DVIC ESP32 example: keep-alive with the board's log lines (docs/esp32.md).
// Next to this sketch: dvic_node_config.h (from `dvic add-node --kind esp32`) and a copy of
// lib/esp32/dvic_board_log.h. Arduino core for ESP32 (WiFi, WiFiClientSecure, HTTPClient).
#include <WiFi.h>
#include <WiFiClientSecure.h>
#include <HTTPClient.h>
#include "esp_timer.h"
#include "dvic_node_config.h"
#define DVIC_BOARD_LOG_IMPLEMENTATION
#include "dvic_board_log.h"

static const char *WIFI_SSID = "lab";
static const char *WIFI_PASS = "...";

static unsigned char ring[8192];    // records wait here until a keep-alive delivered them
static char body[8192];             // one keep-alive body
static dvic_board_log_t blog;
static SemaphoreHandle_t ring_mutex;

static uint64_t board_ms(void) { return (uint64_t)(esp_timer_get_time() / 1000); }
static uint32_t board_random(void) { return esp_random(); }
static void ring_lock(void *) { xSemaphoreTake(ring_mutex, portMAX_DELAY); }
static void ring_unlock(void *) { xSemaphoreGive(ring_mutex); }

// The one function the logging core needs from the board: POST the body, return the status.
static int post_keepalive(void *, const char *data, size_t len, char *answer, size_t cap) {
  WiFiClientSecure tls;
  tls.setCACert(DVIC_CA_PEM);  // pin the DVIC CA: no other server is trusted
  HTTPClient http;
  if (!http.begin(tls, DVIC_KEEPALIVE_URL)) return 0;
  http.addHeader("Authorization", "Bearer " DVIC_NODE_TOKEN);
  http.addHeader("Content-Type", "application/json");
  int status = http.POST((uint8_t *)data, len);  // < 0: no answer (the lines are sent again)
  if (status > 0) {
    String text = http.getString();
    strncpy(answer, text.c_str(), cap - 1);
    answer[cap - 1] = 0;
  }
  http.end();
  return status > 0 ? status : 0;
}

void setup() {
  Serial.begin(115200);
  ring_mutex = xSemaphoreCreateMutex();
  dvic_board_log_config_t cfg = {ring, sizeof ring, 160, "lamp", board_ms, board_random,
                                 ring_lock, ring_unlock, NULL};
  dvic_board_log_init(&blog, &cfg);
  dvic_board_info(&blog, "booted, firmware lamp-1.0");
  WiFi.begin(WIFI_SSID, WIFI_PASS);
  while (WiFi.status() != WL_CONNECTED) delay(250);
  configTime(0, 0, "pool.ntp.org");  // TLS needs the time to check the certificate's validity
  dvic_board_info(&blog, "wifi up, rssi %d", WiFi.RSSI());
}

void loop() {
  static unsigned long last = 0;
  if (digitalRead(0) == LOW) dvic_board_warning(&blog, "button held");  // any task may log
  if (millis() - last >= DVIC_INTERVAL_MS) {
    last = millis();
    char extra[96];
    snprintf(extra, sizeof extra, "\"free_mem\":%u,\"rssi\":%d,\"firmware\":\"lamp-1.0\"",
             ESP.getFreeHeap(), WiFi.RSSI());
    int status = dvic_board_keepalive(&blog, post_keepalive, NULL, extra, body, sizeof body);
    if (status != 200) Serial.printf("keep-alive: HTTP %d (lines kept for the next one)\n", status);
  }
  delay(20);
}
