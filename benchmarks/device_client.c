/* Apple Wallet devices calling passpush's PassKit web service: the load client of
 * `python -m benchmarks device-pull` (benchmarks/device_client.py builds and runs it).
 *
 *   device_client <host> <port> <mode> <devices file> <prefix> <pass type> <rounds>
 *                 <connections> <out path>
 *
 * One thread, `connections` keep-alive HTTP/1.1 connections, one request at a time on each:
 * a device's requests go in order on one connection. Connection k walks devices k, k+C,
 * k+2C... of the devices file (a line per device: library id, serial, ApplePass token,
 * update tag, push token; tab-separated), `rounds` times (0: until SIGINT). Modes:
 *   register  POST {prefix}/v1/devices/{id}/registrations/{type}/{serial}   (200/201)
 *   serials   GET  {prefix}/v1/devices/{id}/registrations/{type}?passesUpdatedSince={tag}
 *             (200 listing the device's serial)
 *   pull      serials as above, then GET {prefix}/v1/passes/{type}/{serial} with the token
 *             (200 with a .pkpass): what a device does after a push
 * When every connection's rounds are over, or on SIGINT, it writes <out path>.summary (each
 * connection's counts, the statuses, the first failures and its own CPU time), .latency
 * (microseconds, one a line) and .tags (each device's lastUpdated, the tag it asks from
 * next time), and exits.
 *
 * Why not wrk and a Lua script, as before: wrk's Lua API names no connection, so each
 * device needed a thread of its own (16 threads on two cores, woken at every response),
 * and every response body became a Lua string (a .pkpass is ~60 KB, hashed and interned).
 * wrk spent 0.21-0.25 ms of CPU a device update (44% of it in LuaJIT, 11% switching
 * threads), a sixth of the machine the server shares with it; see benchmarks/README.md.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum mode { REGISTER, SERIALS, PULL };

typedef struct {
    char *library_id, *serial, *token, *tag, *push;
    char *answered_tag; /* the lastUpdated it was answered, if any */
} device;

typedef struct {
    int id, fd;
    size_t count, position; /* its devices: id, id + C, id + 2C, ...; which one now */
    long round;
    int fetching, finished, closing;
    char request[2048];
    size_t request_len, request_sent;
    char *in;
    size_t in_len, in_cap, header_len, body_len; /* header_len 0: headers not complete */
    long long started_us, first_us, last_us;
    long requests, bad;
} connection;

static enum mode mode;
static const char *host, *port, *prefix, *pass_type, *out_path;
static long rounds;
static device *devices;
static size_t device_count, connection_count;
static connection *connections;
static int epoll_fd;
static long statuses[600];
static char *failures[10];
static int failure_count;
static long long *latencies;
static size_t latency_count, latency_cap;
static volatile sig_atomic_t interrupted;

static long long now_us(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now); /* the benchmark's time.time() */
    return (long long)now.tv_sec * 1000000 + now.tv_nsec / 1000;
}

static void *grown(void *data, size_t size) {
    void *more = realloc(data, size);
    if (more == NULL) {
        perror("realloc");
        exit(2);
    }
    return more;
}

static device *current(connection *c) {
    return &devices[c->id + c->position * connection_count];
}

static void read_devices(const char *path) {
    FILE *file = fopen(path, "r");
    if (file == NULL) {
        perror(path);
        exit(2);
    }
    char *line = NULL;
    size_t cap = 0, allocated = 0;
    while (getline(&line, &cap, file) > 0) {
        line[strcspn(line, "\r\n")] = '\0';
        char *fields[5], *rest = line;
        for (int i = 0; i < 5; i++) {
            fields[i] = strsep(&rest, "\t");
            if (fields[i] == NULL) {
                fprintf(stderr, "%s: a line without 5 fields\n", path);
                exit(2);
            }
        }
        if (device_count == allocated) {
            allocated = allocated ? allocated * 2 : 1024;
            devices = grown(devices, allocated * sizeof *devices);
        }
        devices[device_count++] = (device){strdup(fields[0]), strdup(fields[1]),
                                           strdup(fields[2]), strdup(fields[3]),
                                           strdup(fields[4]), NULL};
    }
    free(line);
    fclose(file);
}

static void fail(connection *c, int status, const char *why, const char *body, size_t len) {
    c->bad++;
    if (failure_count < 10) {
        char text[400];
        int n = snprintf(text, sizeof text, "%s %s: %d %s", mode == REGISTER ? "register" :
                         mode == SERIALS ? "serials" : "pull", current(c)->library_id,
                         status, why);
        for (size_t i = 0; i < len && i < 200 && n < (int)sizeof text - 1; i++)
            text[n++] = (body[i] == '\r' || body[i] == '\n') ? ' ' : body[i];
        text[n < (int)sizeof text ? n : (int)sizeof text - 1] = '\0';
        failures[failure_count++] = strdup(text);
    }
}

static void open_connection(connection *c) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *found;
    int error = getaddrinfo(host, port, &hints, &found);
    if (error != 0) {
        fprintf(stderr, "%s:%s: %s\n", host, port, gai_strerror(error));
        exit(2);
    }
    c->fd = socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || connect(c->fd, found->ai_addr, found->ai_addrlen) < 0) {
        perror("connect");
        exit(2);
    }
    freeaddrinfo(found);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* Blocking: a request is a few hundred bytes, which a connection's send buffer always
     * takes at once, and the reads only follow epoll's word that there is something. */
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, c->fd, &event) < 0) {
        perror("epoll_ctl");
        exit(2);
    }
    c->closing = 0;
}

static void reopen(connection *c) {
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    open_connection(c);
}

static void send_request(connection *c) {
    device *d = current(c);
    int n;
    if (mode == REGISTER) {
        char body[600];
        int body_len = snprintf(body, sizeof body, "{\"pushToken\":\"%s\"}", d->push);
        n = snprintf(c->request, sizeof c->request,
                     "POST %s/v1/devices/%s/registrations/%s/%s HTTP/1.1\r\nHost: %s:%s\r\n"
                     "Authorization: ApplePass %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\n\r\n%s",
                     prefix, d->library_id, pass_type, d->serial, host, port, d->token,
                     body_len, body);
    } else if (c->fetching) {
        n = snprintf(c->request, sizeof c->request,
                     "GET %s/v1/passes/%s/%s HTTP/1.1\r\nHost: %s:%s\r\n"
                     "Authorization: ApplePass %s\r\n\r\n",
                     prefix, pass_type, d->serial, host, port, d->token);
    } else {
        n = snprintf(c->request, sizeof c->request,
                     "GET %s/v1/devices/%s/registrations/%s?passesUpdatedSince=%s HTTP/1.1\r\n"
                     "Host: %s:%s\r\n\r\n",
                     prefix, d->library_id, pass_type, d->tag, host, port);
    }
    if (n < 0 || n >= (int)sizeof c->request) {
        fprintf(stderr, "a request longer than %zu bytes\n", sizeof c->request);
        exit(2);
    }
    c->request_len = (size_t)n;
    c->in_len = c->header_len = c->body_len = 0;
    c->started_us = now_us();
    if (c->first_us == 0) c->first_us = c->started_us;
    for (c->request_sent = 0; c->request_sent < c->request_len;) {
        ssize_t sent = send(c->fd, c->request + c->request_sent,
                            c->request_len - c->request_sent, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR) continue;
            /* The server closed the kept-alive connection as it went idle: a new one. */
            reopen(c);
            c->request_sent = 0;
            continue;
        }
        c->request_sent += (size_t)sent;
    }
}

static void next_device(connection *c) {
    c->fetching = 0;
    if (++c->position >= c->count) {
        c->position = 0;
        if (rounds > 0 && ++c->round > rounds) c->finished = 1;
    }
}

/* The value of a header (case-insensitive name) among `headers`, or NULL. */
static const char *header(const char *headers, size_t len, const char *name) {
    size_t name_len = strlen(name);
    for (const char *line = memchr(headers, '\n', len); line != NULL && line < headers + len;
         line = memchr(line, '\n', headers + len - line)) {
        line++;
        if ((size_t)(headers + len - line) > name_len && strncasecmp(line, name, name_len) == 0 &&
            line[name_len] == ':') {
            const char *value = line + name_len + 1;
            while (*value == ' ') value++;
            return value;
        }
    }
    return NULL;
}

static void answered(connection *c, int status, const char *body, size_t len) {
    long long ended = now_us();
    c->last_us = ended;
    c->requests++;
    statuses[status]++;
    if (latency_count == latency_cap) {
        latency_cap = latency_cap ? latency_cap * 2 : 65536;
        latencies = grown(latencies, latency_cap * sizeof *latencies);
    }
    latencies[latency_count++] = ended - c->started_us;
    device *d = current(c);
    if (mode == REGISTER) {
        if (status != 201 && status != 200) fail(c, status, "", body, len);
        return next_device(c);
    }
    if (c->fetching) { /* the pass */
        if (status != 200 || len < 2 || memcmp(body, "PK", 2) != 0)
            fail(c, status, "no .pkpass", "", 0);
        return next_device(c);
    }
    /* the serials */
    const char *listed = status == 200 ? memmem(body, len, "\"serialNumbers\":[", 17) : NULL;
    const char *end = listed ? memchr(listed, ']', body + len - listed) : NULL;
    char quoted[300];
    int quoted_len = snprintf(quoted, sizeof quoted, "\"%s\"", d->serial);
    if (end == NULL || memmem(listed, end - listed, quoted, quoted_len) == NULL) {
        fail(c, status, "serial not listed: ", body, len);
        return next_device(c);
    }
    const char *tag = memmem(body, len, "\"lastUpdated\":\"", 15);
    if (tag != NULL) {
        tag += 15;
        size_t digits = 0;
        while (tag + digits < body + len && tag[digits] >= '0' && tag[digits] <= '9') digits++;
        free(d->answered_tag);
        d->answered_tag = strndup(tag, digits);
    }
    if (mode == PULL)
        c->fetching = 1;
    else
        next_device(c);
}

/* Reads what the connection has; once a whole response is in, handles it and sends the next
 * request. */
static void readable(connection *c) {
    if (c->in_cap - c->in_len < 65536) {
        c->in_cap = c->in_cap ? c->in_cap * 2 : 131072;
        c->in = grown(c->in, c->in_cap);
    }
    ssize_t got = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    if (got < 0) {
        if (errno == EINTR || errno == EAGAIN) return;
        got = 0;
    }
    if (got == 0) { /* closed by the server */
        if (c->finished) {
            epoll_ctl(epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
            return;
        }
        if (c->in_len > 0) {
            fail(c, 0, "the connection closed in the middle of an answer", "", 0);
            next_device(c);
        }
        reopen(c);
        if (!c->finished) send_request(c);
        return;
    }
    c->in_len += (size_t)got;
    if (c->header_len == 0) {
        char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
        if (end == NULL) return;
        c->header_len = (size_t)(end + 4 - c->in);
        int status = atoi(c->in + 9); /* "HTTP/1.1 200 ..." */
        const char *length = header(c->in, c->header_len, "content-length");
        const char *connection_header = header(c->in, c->header_len, "connection");
        c->closing = connection_header && strncasecmp(connection_header, "close", 5) == 0;
        if (length != NULL) {
            c->body_len = strtoul(length, NULL, 10);
        } else if (status == 204 || status == 304 || status < 200) {
            c->body_len = 0;
        } else { /* chunked: no device response of passpush's is */
            fail(c, status, "no Content-Length", "", 0);
            next_device(c);
            reopen(c);
            if (!c->finished) send_request(c);
            return;
        }
    }
    if (c->in_len < c->header_len + c->body_len) return;
    int status = atoi(c->in + 9);
    if (status < 100 || status >= 600) status = 0;
    answered(c, status, c->in + c->header_len, c->body_len);
    if (c->closing) reopen(c);
    if (!c->finished) send_request(c);
}

static void write_figures(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s.latency", out_path);
    FILE *file = fopen(path, "w");
    for (size_t i = 0; file && i < latency_count; i++) fprintf(file, "%lld\n", latencies[i]);
    if (file) fclose(file);
    snprintf(path, sizeof path, "%s.tags", out_path);
    file = fopen(path, "w");
    for (size_t i = 0; file && i < device_count; i++)
        if (devices[i].answered_tag)
            fprintf(file, "%s\t%s\n", devices[i].library_id, devices[i].answered_tag);
    if (file) fclose(file);
    snprintf(path, sizeof path, "%s.summary", out_path);
    file = fopen(path, "w");
    if (file == NULL) {
        perror(path);
        exit(2);
    }
    for (size_t k = 0; k < connection_count; k++) {
        connection *c = &connections[k];
        fprintf(file, "connection %d %ld %ld %lld %lld %s\n", c->id + 1, c->requests, c->bad,
                c->first_us, c->last_us, c->finished ? "true" : "false");
    }
    for (int status = 0; status < 600; status++)
        if (statuses[status]) fprintf(file, "status %d %ld\n", status, statuses[status]);
    for (int i = 0; i < failure_count; i++) fprintf(file, "failure %s\n", failures[i]);
    struct rusage used;
    getrusage(RUSAGE_SELF, &used);
    fprintf(file, "cpu %.3f\n", used.ru_utime.tv_sec + used.ru_stime.tv_sec +
                                    (used.ru_utime.tv_usec + used.ru_stime.tv_usec) / 1e6);
    fclose(file);
}

static void on_interrupt(int signal_number) {
    (void)signal_number;
    interrupted = 1;
}

int main(int argc, char **argv) {
    if (argc != 10) {
        fprintf(stderr, "usage: %s host port register|serials|pull devices-file prefix "
                        "pass-type rounds connections out-path\n", argv[0]);
        return 2;
    }
    host = argv[1];
    port = argv[2];
    if (strcmp(argv[3], "register") == 0) {
        mode = REGISTER;
    } else if (strcmp(argv[3], "serials") == 0) {
        mode = SERIALS;
    } else if (strcmp(argv[3], "pull") == 0) {
        mode = PULL;
    } else {
        fprintf(stderr, "no mode %s\n", argv[3]);
        return 2;
    }
    prefix = argv[5];
    pass_type = argv[6];
    rounds = atol(argv[7]);
    connection_count = strtoul(argv[8], NULL, 10);
    out_path = argv[9];
    read_devices(argv[4]);
    if (connection_count > device_count) connection_count = device_count;
    if (connection_count == 0) {
        write_figures();
        return 0;
    }
    struct sigaction action = {.sa_handler = on_interrupt};
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    connections = calloc(connection_count, sizeof *connections);
    for (size_t k = 0; k < connection_count; k++) {
        connection *c = &connections[k];
        c->id = (int)k;
        c->count = (device_count - k + connection_count - 1) / connection_count;
        c->round = 1;
        open_connection(c);
    }
    for (size_t k = 0; k < connection_count; k++) send_request(&connections[k]);
    struct epoll_event events[64];
    for (;;) {
        size_t busy = 0;
        for (size_t k = 0; k < connection_count; k++) busy += !connections[k].finished;
        if (busy == 0 || interrupted) break;
        int ready = epoll_wait(epoll_fd, events, 64, 100);
        for (int i = 0; i < ready; i++) readable(events[i].data.ptr);
    }
    write_figures();
    return 0;
}
