/*
 * Systerns lab miner: a second training miner, neither XMRig nor the held-out
 * family's Python stand-in. Worker threads run a memory-hard hash loop (fill a
 * scratchpad, then read-modify-write it at data-dependent offsets, the shape of
 * scrypt's ROMix and CryptoNight) and submit shares over stratum JSON-RPC to the
 * lab's fake pool on 127.0.0.1. It is compiled with gcc when the corpus is
 * recorded and only ever runs inside its own network namespace.
 *
 * Usage: labminer -o HOST:PORT -u USER [-t THREADS] [--mem KIB]
 *        [--share-bits N] [--affinity] [--keepalive S] [--print S]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BLOB_BYTES 76
#define MAX_THREADS 16

static int sock_fd = -1;
static volatile sig_atomic_t stopping;
static pthread_mutex_t send_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t job_lock = PTHREAD_MUTEX_INITIALIZER;
static char job_id[64];
static unsigned char job_blob[BLOB_BYTES];
static unsigned job_serial;
static uint64_t hashes[MAX_THREADS];

static int n_threads = 1;
static size_t mem_kib = 1024;
static int share_bits = 10;
static int pin_threads;
static int keepalive_s;
static int print_s;
static const char *user = "lab";
static char host[64] = "127.0.0.1";
static int port = 3333;

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static uint64_t hash_nonce(uint64_t *pad, size_t n, const unsigned char *blob,
                           uint32_t nonce) {
    uint64_t s = 0x9e3779b97f4a7c15ULL ^ nonce;
    for (int i = 0; i < BLOB_BYTES; i++) s = mix64(s ^ blob[i]);
    for (size_t i = 0; i < n; i++) {
        s = mix64(s + i);
        pad[i] = s;
    }
    for (size_t i = 0; i < n; i++) {
        size_t j = (size_t)(s % n);
        s = mix64(s ^ pad[j]);
        pad[j] = s + i;
    }
    return s;
}

static void send_line(const char *line) {
    pthread_mutex_lock(&send_lock);
    size_t len = strlen(line), off = 0;
    while (off < len) {
        ssize_t w = send(sock_fd, line + off, len - off, MSG_NOSIGNAL);
        if (w <= 0) break;
        off += (size_t)w;
    }
    pthread_mutex_unlock(&send_lock);
}

static void *worker(void *arg) {
    int k = (int)(intptr_t)arg;
    if (pin_threads) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(k % sysconf(_SC_NPROCESSORS_ONLN), &set);
        pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    }
    size_t n = mem_kib * 1024 / sizeof(uint64_t);
    uint64_t *pad = malloc(n * sizeof(uint64_t));
    if (pad == NULL) return NULL;
    unsigned char blob[BLOB_BYTES];
    char id[64], line[256];
    unsigned seen = 0;
    uint32_t nonce = (uint32_t)k;
    uint64_t mask = (1ULL << share_bits) - 1;
    while (!stopping) {
        pthread_mutex_lock(&job_lock);
        if (seen != job_serial) {
            memcpy(blob, job_blob, sizeof blob);
            memcpy(id, job_id, sizeof id);
            seen = job_serial;
            nonce = (uint32_t)k;
        }
        pthread_mutex_unlock(&job_lock);
        uint64_t h = hash_nonce(pad, n, blob, nonce);
        hashes[k]++;
        if ((h & mask) == 0) {
            snprintf(line, sizeof line,
                     "{\"id\":4,\"method\":\"mining.submit\",\"params\":"
                     "[\"%s\",\"%s\",\"%08x\"]}\n", user, id, nonce);
            send_line(line);
        }
        nonce += (uint32_t)n_threads;
    }
    free(pad);
    return NULL;
}

/* The first two JSON strings after "params" of a mining.notify line. */
static int read_notify(const char *line) {
    const char *p = strstr(line, "\"params\"");
    if (p == NULL) return 0;
    p += 8;
    char fields[2][200];
    for (int f = 0; f < 2; f++) {
        p = strchr(p, '"');
        if (p == NULL) return 0;
        const char *end = strchr(p + 1, '"');
        if (end == NULL || end - p - 1 >= (long)sizeof fields[f]) return 0;
        memcpy(fields[f], p + 1, (size_t)(end - p - 1));
        fields[f][end - p - 1] = 0;
        p = end + 1;
    }
    pthread_mutex_lock(&job_lock);
    snprintf(job_id, sizeof job_id, "%.63s", fields[0]);
    for (int i = 0; i < BLOB_BYTES && fields[1][2 * i] && fields[1][2 * i + 1]; i++) {
        unsigned v;
        sscanf(fields[1] + 2 * i, "%2x", &v);
        job_blob[i] = (unsigned char)v;
    }
    job_serial++;
    pthread_mutex_unlock(&job_lock);
    return 1;
}

static void on_signal(int sig) {
    (void)sig;
    stopping = 1;
}

static void parse_url(const char *url) {
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    const char *colon = strrchr(p, ':');
    if (colon == NULL) return;
    size_t len = (size_t)(colon - p);
    if (len >= sizeof host) len = sizeof host - 1;
    memcpy(host, p, len);
    host[len] = 0;
    port = atoi(colon + 1);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "-o")) { parse_url(v); i++; }
        else if (!strcmp(a, "-u")) { user = v; i++; }
        else if (!strcmp(a, "-t")) { n_threads = atoi(v); i++; }
        else if (!strcmp(a, "--mem")) { mem_kib = (size_t)atol(v); i++; }
        else if (!strcmp(a, "--share-bits")) { share_bits = atoi(v); i++; }
        else if (!strcmp(a, "--keepalive")) { keepalive_s = atoi(v); i++; }
        else if (!strcmp(a, "--print")) { print_s = atoi(v); i++; }
        else if (!strcmp(a, "--affinity")) pin_threads = 1;
    }
    if (n_threads < 1 || n_threads > MAX_THREADS || mem_kib < 16) return 2;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) return 2;
    sock_fd = socket(AF_INET, SOCK_STREAM, 0);
    if (sock_fd < 0 || connect(sock_fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("connect");
        return 1;
    }
    char line[512];
    send_line("{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"labminer/1.0\"]}\n");
    snprintf(line, sizeof line,
             "{\"id\":2,\"method\":\"mining.authorize\",\"params\":[\"%s\",\"x\"]}\n",
             user);
    send_line(line);

    pthread_t tids[MAX_THREADS];
    int started = 0;
    char buf[8192];
    size_t used = 0;
    time_t last_ping = time(NULL), last_print = time(NULL);
    uint64_t last_total = 0;
    while (!stopping) {
        struct pollfd pfd = {.fd = sock_fd, .events = POLLIN};
        int ready = poll(&pfd, 1, 1000);
        time_t now = time(NULL);
        if (keepalive_s > 0 && now - last_ping >= keepalive_s) {
            send_line("{\"id\":3,\"method\":\"keepalived\",\"params\":[]}\n");
            last_ping = now;
        }
        if (print_s > 0 && now - last_print >= print_s) {
            uint64_t total = 0;
            for (int k = 0; k < n_threads; k++) total += hashes[k];
            printf("speed %.1f H/s\n", (double)(total - last_total) / (double)(now - last_print));
            fflush(stdout);
            last_total = total;
            last_print = now;
        }
        if (ready <= 0) continue;
        ssize_t got = recv(sock_fd, buf + used, sizeof buf - used - 1, 0);
        if (got <= 0) break;
        used += (size_t)got;
        buf[used] = 0;
        char *start = buf, *nl;
        while ((nl = strchr(start, '\n')) != NULL) {
            *nl = 0;
            if (strstr(start, "mining.notify") && read_notify(start) && !started) {
                for (int k = 0; k < n_threads; k++)
                    pthread_create(&tids[k], NULL, worker, (void *)(intptr_t)k);
                started = 1;
            }
            start = nl + 1;
        }
        used = strlen(start);
        memmove(buf, start, used);
        if (used >= sizeof buf - 1) used = 0;
    }
    stopping = 1;
    if (started)
        for (int k = 0; k < n_threads; k++) pthread_join(tids[k], NULL);
    close(sock_fd);
    return 0;
}
