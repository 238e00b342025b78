/*
 * loadgen: a load generator for framed echo servers, fast enough not to be the
 * bottleneck (one thread, epoll, no allocation on the hot path).
 *
 *   loadgen (--tcp HOST:PORT | --unix PATH) [--framing line|length] [--conns N]
 *           [--depth D] [--size B] [--duration S] [--warmup S] [--idle N [--pause]]
 *
 * Closed loop: each connection keeps D frames in flight; every echo received is
 * checked byte for byte against the frame it answers (each payload starts with
 * its 16-hex-digit sequence number) and answered with a new frame. Latency is
 * measured per frame from the write that sent it to the read that completed its
 * echo, into a 1-microsecond histogram. Prints one JSON object on stdout with
 * frames, seconds, latency percentiles, errors and the generator's own CPU time.
 *
 * --idle N first opens N more connections, each doing one verified round trip
 * (so the server has accepted and served it) and then staying idle until the
 * end; at most IDLE_BATCH are opened at a time, so no server's accept backlog
 * overflows. With --pause it then writes "idle ready" on stderr and waits for a
 * line on stdin (the suite measures the server's memory meanwhile) before the
 * measured connections start.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define SEQ_DIGITS 16
#define RECV_SIZE 65536
#define HIST_US 1000000 /* 1 us buckets up to 1 s; slower goes in the last one */
#define IDLE_BATCH 100

typedef struct {
    int fd;
    int id;
    int alive;
    uint64_t next_send, next_recv;
    uint64_t *sent_at; /* ring of depth timestamps (ns) */
    char *out;         /* pending wire bytes */
    size_t out_len, out_cap;
    char *in;
    size_t in_len;
    int want_write;
} conn_t;

static int framing_length = 0; /* 0: line, 1: 4-byte big-endian length */
static int depth = 1, nconns = 1;
static size_t frame_size = 64, payload_size;
static char *filler;
static uint64_t *hist;
static uint64_t frames_measured, errors;
static char first_error[256];
static int measuring = 0;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void fail(conn_t *c, const char *what) {
    errors++;
    if (!first_error[0])
        snprintf(first_error, sizeof first_error, "connection %d: %s", c->id, what);
    c->alive = 0;
}

static void seq_hex(char *dst, int id, uint64_t seq) {
    static const char digits[] = "0123456789abcdef";
    uint64_t v = ((uint64_t)id << 40) | seq;
    for (int i = SEQ_DIGITS - 1; i >= 0; i--, v >>= 4) dst[i] = digits[v & 15];
}

static void queue_frames(conn_t *c, int count, uint64_t t) {
    size_t need = c->out_len + (size_t)count * frame_size;
    if (need > c->out_cap) {
        c->out_cap = need * 2;
        c->out = realloc(c->out, c->out_cap);
    }
    for (int i = 0; i < count; i++) {
        char *p = c->out + c->out_len;
        if (framing_length) {
            uint32_t n = htonl((uint32_t)payload_size);
            memcpy(p, &n, 4);
            p += 4;
        }
        seq_hex(p, c->id, c->next_send);
        memcpy(p + SEQ_DIGITS, filler, payload_size - SEQ_DIGITS);
        if (!framing_length) p[payload_size] = '\n';
        c->sent_at[c->next_send % depth] = t;
        c->next_send++;
        c->out_len += frame_size;
    }
}

static void flush(conn_t *c, int ep) {
    while (c->out_len) {
        ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) break;
            fail(c, strerror(errno));
            return;
        }
        memmove(c->out, c->out + n, c->out_len - (size_t)n);
        c->out_len -= (size_t)n;
    }
    int want = c->out_len > 0;
    if (want != c->want_write) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_write = want;
    }
}

/* Parse complete echoes; return how many, or -1 after a mismatch. */
static int consume(conn_t *c, uint64_t t) {
    size_t pos = 0;
    int done = 0;
    char expect[SEQ_DIGITS];
    while (c->in_len - pos >= frame_size) {
        const char *f = c->in + pos;
        const char *payload = f + (framing_length ? 4 : 0);
        if (c->next_recv >= c->next_send) { fail(c, "more echoes than frames sent"); return -1; }
        seq_hex(expect, c->id, c->next_recv);
        int ok = memcmp(payload, expect, SEQ_DIGITS) == 0 &&
                 memcmp(payload + SEQ_DIGITS, filler, payload_size - SEQ_DIGITS) == 0;
        if (ok && framing_length) {
            uint32_t n;
            memcpy(&n, f, 4);
            ok = ntohl(n) == payload_size;
        } else if (ok) {
            ok = payload[payload_size] == '\n';
        }
        if (!ok) { fail(c, "echo does not match the frame sent"); return -1; }
        if (measuring) {
            uint64_t us = (t - c->sent_at[c->next_recv % depth]) / 1000;
            hist[us < HIST_US ? us : HIST_US - 1]++;
            frames_measured++;
        }
        c->next_recv++;
        pos += frame_size;
        done++;
    }
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
    return done;
}

static double percentile(double q) {
    uint64_t total = 0, seen = 0;
    for (int i = 0; i < HIST_US; i++) total += hist[i];
    if (!total) return -1;
    uint64_t rank = (uint64_t)(q * (double)total);
    if (rank < 1) rank = 1;
    for (int i = 0; i < HIST_US; i++) {
        seen += hist[i];
        if (seen >= rank) return i + 0.5;
    }
    return HIST_US;
}

static int open_conn(const char *tcp, const char *unix_path) {
    int fd;
    if (unix_path) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        strncpy(sa.sun_path, unix_path, sizeof sa.sun_path - 1);
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) return -1;
    } else {
        char host[256];
        snprintf(host, sizeof host, "%s", tcp);
        char *colon = strrchr(host, ':');
        if (!colon) return -1;
        *colon = 0;
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
        if (getaddrinfo(host, colon + 1, &hints, &res)) return -1;
        fd = socket(res->ai_family, SOCK_STREAM, 0);
        if (connect(fd, res->ai_addr, res->ai_addrlen) < 0) { freeaddrinfo(res); return -1; }
        freeaddrinfo(res);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

/* Wait up to 10 s for fd to be readable; 0 on timeout or error. */
static int readable(int fd) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    return poll(&pfd, 1, 10000) == 1;
}

/* Open n idle connections (one verified round trip each); return their fds or NULL. */
static int *open_idle(int n, const char *tcp, const char *unix_path) {
    int *fds = calloc((size_t)n, sizeof *fds);
    char *frame = malloc(frame_size), *echo = malloc(frame_size);
    for (int first = 0; first < n; first += IDLE_BATCH) {
        int last = first + IDLE_BATCH < n ? first + IDLE_BATCH : n;
        for (int i = first; i < last; i++) {
            fds[i] = open_conn(tcp, unix_path);
            if (fds[i] < 0) {
                fprintf(stderr, "loadgen: idle connection %d: cannot connect: %s\n", i, strerror(errno));
                return NULL;
            }
            char *payload = frame + (framing_length ? 4 : 0);
            if (framing_length) {
                uint32_t size = htonl((uint32_t)payload_size);
                memcpy(frame, &size, 4);
            }
            memcpy(payload, filler, payload_size);
            seq_hex(payload, nconns + i, 0);
            if (!framing_length) payload[payload_size] = '\n';
            if (send(fds[i], frame, frame_size, MSG_NOSIGNAL) != (ssize_t)frame_size) {
                fprintf(stderr, "loadgen: idle connection %d: send failed\n", i);
                return NULL;
            }
        }
        for (int i = first; i < last; i++) {
            size_t got = 0;
            while (got < frame_size) {
                ssize_t r = readable(fds[i]) ? recv(fds[i], echo + got, frame_size - got, 0) : 0;
                if (r < 0 && errno == EAGAIN) continue; /* woken, nothing yet */
                if (r <= 0) { /* timed out, closed, or failed */
                    fprintf(stderr, "loadgen: idle connection %d: no echo within 10 s\n", i);
                    return NULL;
                }
                got += (size_t)r;
            }
            char *payload = frame + (framing_length ? 4 : 0);
            seq_hex(payload, nconns + i, 0);
            if (memcmp(echo, frame, frame_size) != 0) {
                fprintf(stderr, "loadgen: idle connection %d: echo does not match\n", i);
                return NULL;
            }
        }
    }
    free(frame);
    free(echo);
    return fds;
}

int main(int argc, char **argv) {
    const char *tcp = NULL, *unix_path = NULL;
    double duration = 5, warmup = 1;
    int idle = 0, pause = 0;
    for (int i = 1; i < argc; i += 2) {
        if (!strcmp(argv[i], "--pause")) { pause = 1; i--; continue; }
        if (i + 1 >= argc) { fprintf(stderr, "loadgen: %s needs a value\n", argv[i]); return 2; }
        if (!strcmp(argv[i], "--tcp")) tcp = argv[i + 1];
        else if (!strcmp(argv[i], "--idle")) idle = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--unix")) unix_path = argv[i + 1];
        else if (!strcmp(argv[i], "--framing")) framing_length = !strcmp(argv[i + 1], "length");
        else if (!strcmp(argv[i], "--conns")) nconns = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--depth")) depth = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--size")) frame_size = (size_t)atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--duration")) duration = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--warmup")) warmup = atof(argv[i + 1]);
        else { fprintf(stderr, "loadgen: unknown option %s\n", argv[i]); return 2; }
    }
    if ((!tcp) == (!unix_path) || nconns < 1 || depth < 1) {
        fprintf(stderr, "loadgen: give --tcp HOST:PORT or --unix PATH, and positive counts\n");
        return 2;
    }
    size_t overhead = framing_length ? 4 : 1;
    if (frame_size < overhead + SEQ_DIGITS) {
        fprintf(stderr, "loadgen: --size must be at least %zu\n", overhead + SEQ_DIGITS);
        return 2;
    }
    payload_size = frame_size - overhead;
    filler = malloc(payload_size);
    memset(filler, '.', payload_size);
    hist = calloc(HIST_US, sizeof *hist);
    if (idle > 0) {
        if (!open_idle(idle, tcp, unix_path)) return 1;
        if (pause) {
            fprintf(stderr, "idle ready\n");
            char line[16];
            if (!fgets(line, sizeof line, stdin)) return 1;
        }
    }
    int ep = epoll_create1(0);
    conn_t *conns = calloc((size_t)nconns, sizeof *conns);
    uint64_t t0 = now_ns();
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        c->id = i;
        c->fd = open_conn(tcp, unix_path);
        if (c->fd < 0) { fprintf(stderr, "loadgen: cannot connect: %s\n", strerror(errno)); return 1; }
        c->alive = 1;
        c->sent_at = calloc((size_t)depth, sizeof *c->sent_at);
        c->in = malloc(RECV_SIZE + frame_size);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        queue_frames(c, depth, now_ns());
        flush(c, ep);
    }
    uint64_t start_measure = t0 + (uint64_t)(warmup * 1e9);
    uint64_t end = start_measure + (uint64_t)(duration * 1e9);
    double cpu_start = 0;
    uint64_t measured_from = 0;
    struct epoll_event events[256];
    for (;;) {
        uint64_t t = now_ns();
        if (!measuring && t >= start_measure) {
            measuring = 1;
            cpu_start = cpu_seconds();
            measured_from = t;
        }
        if (t >= end) break;
        uint64_t next = measuring ? end : start_measure;
        int timeout_ms = (int)((next - t) / 1000000) + 1;
        int n = epoll_wait(ep, events, 256, timeout_ms);
        uint64_t arrived = now_ns();
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (!c->alive) continue;
            if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                int total = 0;
                for (;;) {
                    ssize_t r = recv(c->fd, c->in + c->in_len, RECV_SIZE + frame_size - c->in_len, 0);
                    if (r < 0) {
                        if (errno != EAGAIN) fail(c, strerror(errno));
                        break;
                    }
                    if (r == 0) { fail(c, "server closed the connection"); break; }
                    c->in_len += (size_t)r;
                    int done = consume(c, arrived);
                    if (done < 0) break;
                    total += done;
                    if ((size_t)r < RECV_SIZE / 2) break; /* drained for now */
                }
                if (!c->alive) { epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); continue; }
                if (total) queue_frames(c, total, now_ns());
            }
            flush(c, ep);
        }
    }
    uint64_t finished = now_ns();
    double seconds = (double)(finished - measured_from) / 1e9;
    double cpu = cpu_seconds() - cpu_start;
    char escaped[512];
    size_t j = 0;
    for (size_t i = 0; first_error[i] && j < sizeof escaped - 2; i++) {
        if (first_error[i] == '"' || first_error[i] == '\\') escaped[j++] = '\\';
        escaped[j++] = first_error[i];
    }
    escaped[j] = 0;
    printf("{\"frames\": %llu, \"seconds\": %.6f, \"frames_per_second\": %.1f, "
           "\"p50_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, \"errors\": %llu, "
           "\"first_error\": \"%s\", \"client_cpu_seconds\": %.6f, \"conns\": %d, "
           "\"depth\": %d, \"size\": %zu, \"idle\": %d}\n",
           (unsigned long long)frames_measured, seconds, frames_measured / seconds,
           percentile(0.50), percentile(0.99), percentile(0.999),
           (unsigned long long)errors, escaped, cpu, nconns, depth, frame_size, idle);
    return 0;
}
