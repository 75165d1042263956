/* The compiled lane's shared layouts (see _lane.c for how it works). */

#ifndef SHEEPDOG_LANE_H
#define SHEEPDOG_LANE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define HDR 48
#define SCRATCH (256 * 1024)
#define STREAM_FROM (128 * 1024) /* smaller answers reach the client whole or not at all */
#define KEEP (64 * 1024)         /* a pair keeps buffers up to this size between requests */
#define PIPE_WANT (1024 * 1024)  /* a spliced answer's pipe: F_SETPIPE_SZ asks for this */
#define PIPE_POOL 16             /* empty pipes the lane keeps for the next answers */
#define OP_READ 0x02
#define OP_WRITE 0x03
#define FLAG_WRITE 0x01
#define FLAG_PIGGYBACK 0x10
#define TYPE_BITS (0xF8ULL << 56) /* VDI, VMSTATE, ATTR, BTREE, LEDGER */
#define VID_OF(oid) ((uint32_t)(((oid) >> 32) & 0xFFFFFF))

enum reason { R_IDLE, R_REQUEST, R_ANSWER, R_UPSTREAM, R_CLOSED, R_STALLED };
enum state { S_REQ, S_SEND, S_ANS, S_OUT };

struct pair {
    struct pair *prev, *next;
    long long token;
    int down, up;
    int state;
    unsigned down_mask, up_mask;
    /* the request: header and payload, as received */
    unsigned char *req;
    size_t req_cap, req_got, req_len, req_sent; /* req_len 0: header not whole yet */
    uint8_t op;
    uint32_t id;
    uint64_t oid;
    size_t cost;
    /* the answer */
    unsigned char ahdr[HDR];
    size_t ahdr_got, ans_len, ans_got; /* ans_len: payload bytes */
    int judge;                          /* collect the answer for Python */
    int collect;                        /* collect a small answer, then pass it on */
    unsigned char *ans;                 /* judged: header + payload */
    unsigned char *out;                 /* passed on: bytes the client has not taken */
    size_t out_len, out_sent, out_cap;
    int hdr_passed, down_dead, dead;
    int maybe_more;  /* the client may have sent more than was read: read on after the answer */
    unsigned serial; /* requests taken: a receive loop stops at the next one */
    int up_bad; /* 1: the node sent bytes nobody asked for, 2: it closed */
    unsigned char *extra; /* bytes that came after the request */
    size_t extra_len;
    double last, started, progress;
    /* a spliced answer (splice.c): its pipe and the bytes in it */
    int spliced, pipe_r, pipe_w;
    size_t pipe_cap, piped;
};

struct handback {
    struct handback *next;
    long long token;
    int reason, broken;
    unsigned char *req, *ans, *rest;
    size_t req_len, ans_len, rest_len;
    char msg[96];
};

struct adopt {
    struct adopt *next;
    long long token;
    int down, up;
};

struct vstat {
    uint32_t vid;
    int used;
    unsigned long long reads, writes, read_bytes, write_bytes;
    double busy, max;
};

typedef struct {
    PyObject_HEAD
    pthread_t thread;
    int running;
    int epfd, cmd_fd, note_fd;
    pthread_mutex_t mu;
    struct adopt *adopts;
    struct handback *hb_head, *hb_tail;
    int noted;
    int stop;
    atomic_int paused;
    atomic_int recall; /* a pause asked for: hand idle pairs back */
    atomic_llong inflight_writes;
    atomic_uint epoch; /* the highest the gateway has seen (raise_epoch) */
    struct vstat *stats;
    size_t stats_cap, stats_used;
    /* lane thread only */
    struct pair head;
    struct pair *graveyard; /* handed back in this epoll batch: freed after it */
    atomic_llong npairs;
    atomic_size_t used;
    unsigned char *scratch;
    int splice; /* large answers go through pipes (splice.c) */
    struct {
        int r, w;
        size_t cap;
    } pipes[PIPE_POOL];
    int pipes_free;
    size_t max_payload, budget;
    double idle, request_timeout, stall;
    atomic_ullong spliced; /* answers that went through a pipe */
    /* counters (read under mu) */
    unsigned long long relayed, handed[6];
} Lane;

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}
static inline uint64_t le64(const unsigned char *p) {
    return (uint64_t)le32(p) | ((uint64_t)le32(p + 4) << 32);
}

/* Both connections are watched edge-triggered for input from adoption to
 * hand-back (no epoll_ctl per request); output only while a send waits.  A
 * short receive means drained, unless the event also reported a hang-up
 * (EPOLLRDHUP, HUP, ERR): then receiving goes on to the end (a close that
 * comes later raises an edge of its own). */
#define WATCH (EPOLLIN | EPOLLET | EPOLLRDHUP)
#define HANGUP (EPOLLRDHUP | EPOLLHUP | EPOLLERR)

/* The highest epoch seen: at least ``epoch`` from now on (any thread). */
static inline void raise_epoch(Lane *L, unsigned epoch) {
    unsigned known = atomic_load(&L->epoch);
    while (epoch > known && !atomic_compare_exchange_weak(&L->epoch, &known, epoch))
        ;
}

static inline int lane_grow(unsigned char **buf, size_t *cap, size_t want) {
    if (*cap >= want)
        return 0;
    unsigned char *b = realloc(*buf, want);
    if (b == NULL)
        return -1;
    *buf = b;
    *cap = want;
    return 0;
}

/* Send what the kernel takes of buf[*sent:len]: 0 all sent, 1 it would
 * block, -1 it failed (errno says why). */
static inline int lane_send_some(int fd, const unsigned char *buf, size_t len, size_t *sent,
                                 double *at) {
    while (*sent < len) {
        ssize_t n = send(fd, buf + *sent, len - *sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN ? 1 : -1;
        }
        *sent += (size_t)n;
        *at = now_s();
    }
    return 0;
}

/* handback.c: counters, the output watch, pipes, hand-backs */
int lane_pipe_get(Lane *L, struct pair *p);
void lane_pipe_put(Lane *L, struct pair *p);
void lane_pipes_close(Lane *L);
void lane_count(Lane *L, struct pair *p, double seconds);
void lane_want_out(Lane *L, struct pair *p, int side, int on);
void lane_release(Lane *L, struct pair *p);
void lane_hand_back(Lane *L, struct pair *p, int reason, const unsigned char *req, size_t req_len,
               const unsigned char *ans, size_t ans_len, const unsigned char *rest,
               size_t rest_len, int broken, const char *msg);
void lane_hand_back_request(Lane *L, struct pair *p, int reason);
void lane_bury(Lane *L);
void lane_fail_up(Lane *L, struct pair *p, const char *msg);

/* thread.c: the thread */
void lane_take_adopts(Lane *L);
void lane_sweep(Lane *L, double now);
void *lane_run(void *arg);

/* splice.c: a large answer through a pipe */
int lane_splice_pump(Lane *L, struct pair *p);
int lane_unsplice(Lane *L, struct pair *p);

/* relay.c: one pair's request and answer */
int lane_down_in(Lane *L, struct pair *p, int drain);
int lane_up_in(Lane *L, struct pair *p, int drain);
void lane_send_request(Lane *L, struct pair *p);
void lane_move_spliced(Lane *L, struct pair *p);
void lane_down_out(Lane *L, struct pair *p);
void lane_finish(Lane *L, struct pair *p);

#endif
