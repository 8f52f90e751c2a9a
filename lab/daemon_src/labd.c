/*
 * Systerns lab daemon (C, pthreads): a long-running service recorded as a
 * benign hard negative. A listener thread accepts connections on 127.0.0.1
 * and queues them to a pool of worker threads (mutex and condition variable,
 * so futex waits), which answer with a file of the served folder; a ticker
 * thread checks the folder on a timer and appends log lines. With -s, every
 * wait is a select() instead (listener and ticker), as in older servers.
 *
 * Usage: labd [-s] DIR LOGFILE TICK_MS WORKERS PORT   (TICK_MS 0: no ticker)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define QUEUE 64
#define MAX_WORKERS 16

static const char *folder;
static long tick_ms;
static int use_select;
static FILE *logf;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ready = PTHREAD_COND_INITIALIZER;
static int queue[QUEUE];
static int head, count;

static void log_line(const char *what, const char *detail, long n) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    pthread_mutex_lock(&lock);
    fprintf(logf, "%ld.%06ld %s %s %ld\n", (long)ts.tv_sec, ts.tv_nsec / 1000, what, detail, n);
    fflush(logf);
    pthread_mutex_unlock(&lock);
}

static void answer(int fd) {
    char req[2048], path[4096], body[65536];
    ssize_t got = read(fd, req, sizeof req - 1);
    if (got <= 0) return;
    req[got] = 0;
    char *start = strchr(req, '/'), *end = start ? strchr(start, ' ') : NULL;
    char *name = start ? start + 1 : "";
    if (end) *end = 0;
    char *slash = strrchr(name, '/');
    if (slash) name = slash + 1;
    snprintf(path, sizeof path, "%s/%s", folder, name);
    int f = *name ? open(path, O_RDONLY) : -1;
    if (f < 0) {
        const char *nf = "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        (void)!write(fd, nf, strlen(nf));
        return;
    }
    struct stat st;
    fstat(f, &st);
    char hdr[128];
    int n = snprintf(hdr, sizeof hdr, "HTTP/1.0 200 OK\r\nContent-Length: %ld\r\n\r\n", (long)st.st_size);
    (void)!write(fd, hdr, n);
    long sent = 0;
    ssize_t r;
    while ((r = read(f, body, sizeof body)) > 0) {
        if (write(fd, body, r) != r) break;
        sent += r;
    }
    close(f);
    log_line("get", name, sent);
}

static void *worker(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&lock);
        while (count == 0) pthread_cond_wait(&ready, &lock);
        int fd = queue[head];
        head = (head + 1) % QUEUE;
        count--;
        pthread_mutex_unlock(&lock);
        answer(fd);
        close(fd);
    }
    return NULL;
}

static void *ticker(void *arg) {
    (void)arg;
    struct timespec pause = {tick_ms / 1000, (tick_ms % 1000) * 1000000L};
    char path[4096];
    for (;;) {
        if (use_select) {
            struct timeval tv = {tick_ms / 1000, (tick_ms % 1000) * 1000L};
            select(0, NULL, NULL, NULL, &tv);
        } else {
            nanosleep(&pause, NULL);
        }
        DIR *d = opendir(folder);
        if (!d) continue;
        long files = 0, bytes = 0;
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            struct stat st;
            snprintf(path, sizeof path, "%s/%s", folder, e->d_name);
            if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
                files++;
                bytes += st.st_size;
            }
        }
        closedir(d);
        log_line("tick", "files", files);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc == 7 && strcmp(argv[1], "-s") == 0) {
        use_select = 1;
        argv++;
        argc--;
    }
    if (argc != 6) {
        fprintf(stderr, "usage: labd [-s] DIR LOGFILE TICK_MS WORKERS PORT\n");
        return 2;
    }
    folder = argv[1];
    logf = fopen(argv[2], "a");
    tick_ms = atol(argv[3]);
    int workers = atoi(argv[4]);
    if (!logf || tick_ms < 0 || workers < 1 || workers > MAX_WORKERS) return 2;
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[5]))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(ls, 16) != 0) {
        perror("listen");
        return 1;
    }
    pthread_t t;
    for (int i = 0; i < workers; i++) pthread_create(&t, NULL, worker, NULL);
    if (tick_ms > 0) pthread_create(&t, NULL, ticker, NULL);
    struct pollfd p = {.fd = ls, .events = POLLIN};
    for (;;) {
        if (use_select) {
            fd_set r;
            FD_ZERO(&r);
            FD_SET(ls, &r);
            struct timeval tv = {1, 0};
            if (select(ls + 1, &r, NULL, NULL, &tv) <= 0) continue;
        } else if (poll(&p, 1, 1000) <= 0) {
            continue;
        }
        int fd = accept(ls, NULL, NULL);
        if (fd < 0) continue;
        pthread_mutex_lock(&lock);
        if (count < QUEUE) {
            queue[(head + count) % QUEUE] = fd;
            count++;
            pthread_cond_signal(&ready);
        } else {
            close(fd);
        }
        pthread_mutex_unlock(&lock);
    }
}
