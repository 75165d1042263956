/*
 * The gateway's compiled lane: steady-state object I/O of paired connections,
 * relayed by one C thread that never takes the GIL.
 *
 * How it works: the relay (lane.py) lends the lane a pair - a client
 * connection and the upstream connection to a node it is paired with - once
 * the pair is quiet and nothing needs the gateway's judgment.  The lane's
 * thread waits in its own epoll over every pair it holds, one request at a
 * time per pair (tgt's store sends one request per connection and waits for
 * its answer): it reads a request (header, then its payload straight into a
 * buffer of its own size), sends it to the node, and passes the answer on to
 * the client as it arrives.  An object read or write so costs two receives
 * and two sends and no Python.
 *
 * Anything that needs judgment goes back to Python (a "hand-back": the pair
 * leaves the lane's epoll, a record joins the hand-back list and an eventfd
 * wakes the gateway's loop, which re-registers both connections):
 *   REQUEST   a request the lane does not relay (not a READ_OBJ/WRITE_OBJ of a
 *             data object, too large for the lane's budget, the lane paused,
 *             bytes that followed a request before its answer) - its bytes
 *             go back unsent, to be framed by Python as if just received;
 *   ANSWER    an answer with a non-zero result, a higher epoch than the lane
 *             was told, or a write's answer while the lane is paused (the
 *             replay must keep it) - the request and the whole answer;
 *   UPSTREAM  the node's connection failed, sent what nobody asked for, or did
 *             not answer in time - the request, if one was in flight (BROKEN:
 *             part of its answer already reached the client);
 *   CLOSED    the client closed or its connection failed;
 *   STALLED   the client stopped reading an answer - its unsent tail;
 *   IDLE      the pair was quiet for ``idle`` seconds, or the lane paused, or
 *             ``recall`` asked for the quiet pairs (requests wait for an upstream).
 * The lane never closes a file descriptor: Python owns them.
 *
 * Shared with Python threads, under ``mu``: the adopt queue, the hand-back
 * list, the per-VDI counters and ``epoch``.  ``paused`` and ``inflight_writes``
 * are atomics.  Everything else (the pairs, their buffers, the budget) belongs
 * to the lane's thread.  Memory: a request's cost (its payload, or its
 * answer's length for a read) is taken from the lane's budget before it is
 * relayed; a request that does not fit goes back to Python's admission.
 */

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
    uint32_t epoch;
    struct vstat *stats;
    size_t stats_cap, stats_used;
    /* lane thread only */
    struct pair head;
    struct pair *graveyard; /* handed back in this epoll batch: freed after it */
    atomic_llong npairs;
    atomic_size_t used;
    unsigned char *scratch;
    size_t max_payload, budget;
    double idle, request_timeout, stall;
    /* counters (read under mu) */
    unsigned long long relayed, handed[6];
} Lane;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}
static uint64_t le64(const unsigned char *p) {
    return (uint64_t)le32(p) | ((uint64_t)le32(p + 4) << 32);
}

/* -- per-VDI counters (under mu) ------------------------------------------- */

static void count(Lane *L, struct pair *p, double seconds) {
    uint32_t vid = VID_OF(p->oid);
    pthread_mutex_lock(&L->mu);
    if ((L->stats_used + 1) * 2 > L->stats_cap) {
        size_t cap = L->stats_cap ? L->stats_cap * 2 : 64;
        struct vstat *grown = calloc(cap, sizeof(*grown));
        if (grown == NULL) {
            pthread_mutex_unlock(&L->mu);
            return;
        }
        for (size_t i = 0; i < L->stats_cap; i++) {
            if (!L->stats[i].used)
                continue;
            size_t j = (L->stats[i].vid * 2654435761u) & (cap - 1);
            while (grown[j].used)
                j = (j + 1) & (cap - 1);
            grown[j] = L->stats[i];
        }
        free(L->stats);
        L->stats = grown;
        L->stats_cap = cap;
    }
    size_t j = (vid * 2654435761u) & (L->stats_cap - 1);
    while (L->stats[j].used && L->stats[j].vid != vid)
        j = (j + 1) & (L->stats_cap - 1);
    struct vstat *s = &L->stats[j];
    if (!s->used) {
        s->used = 1;
        s->vid = vid;
        L->stats_used++;
    }
    if (p->op == OP_READ) {
        s->reads++;
        s->read_bytes += p->ans_len;
    } else {
        s->writes++;
        s->write_bytes += p->req_len - HDR;
    }
    s->busy += seconds;
    if (seconds > s->max)
        s->max = seconds;
    L->relayed++;
    pthread_mutex_unlock(&L->mu);
}

/* -- epoll ------------------------------------------------------------------ */

/* Both connections are watched edge-triggered for input from adoption to
 * hand-back (no epoll_ctl per request); output only while a send waits.  A
 * short receive means drained, unless the event also reported a hang-up
 * (EPOLLRDHUP, HUP, ERR): then receiving goes on to the end (a close that
 * comes later raises an edge of its own). */
#define WATCH (EPOLLIN | EPOLLET | EPOLLRDHUP)
#define HANGUP (EPOLLRDHUP | EPOLLHUP | EPOLLERR)

static void want_out(Lane *L, struct pair *p, int side, int on) {
    unsigned *cur = side ? &p->up_mask : &p->down_mask;
    unsigned mask = WATCH | (on ? EPOLLOUT : 0);
    if (*cur == mask || !*cur) /* unchanged, or no longer watched */
        return;
    struct epoll_event ev = {.events = mask, .data.u64 = (uint64_t)(uintptr_t)p | (uint64_t)side};
    epoll_ctl(L->epfd, EPOLL_CTL_MOD, side ? p->up : p->down, &ev);
    *cur = mask;
}

/* -- hand-backs ------------------------------------------------------------- */

static void release(Lane *L, struct pair *p) {
    L->used -= p->cost;
    if (p->cost && p->op == OP_WRITE)
        atomic_fetch_sub(&L->inflight_writes, 1);
    p->cost = 0;
}

static unsigned char *copy_of(const unsigned char *b, size_t n) {
    unsigned char *c = n ? malloc(n) : NULL;
    if (c != NULL)
        memcpy(c, b, n);
    return c;
}

/* Give the pair back to Python: ``req`` a whole request to take up again
 * (with ``ans``, its answer or the answer's unsent tail), ``rest`` bytes of
 * the client not framed yet (NULL: what followed the request). */
static void hand_back(Lane *L, struct pair *p, int reason, const unsigned char *req,
                      size_t req_len, const unsigned char *ans, size_t ans_len,
                      const unsigned char *rest, size_t rest_len, int broken, const char *msg) {
    struct handback *h = calloc(1, sizeof(*h));
    epoll_ctl(L->epfd, EPOLL_CTL_DEL, p->down, NULL);
    epoll_ctl(L->epfd, EPOLL_CTL_DEL, p->up, NULL);
    release(L, p);
    if (rest == NULL) {
        rest = p->extra;
        rest_len = p->extra_len;
    }
    if (h != NULL) {
        h->token = p->token;
        h->reason = reason;
        h->broken = broken;
        if ((h->req = copy_of(req, req_len)) != NULL)
            h->req_len = req_len;
        if ((h->ans = copy_of(ans, ans_len)) != NULL)
            h->ans_len = ans_len;
        if ((h->rest = copy_of(rest, rest_len)) != NULL)
            h->rest_len = rest_len;
        if (msg != NULL)
            snprintf(h->msg, sizeof(h->msg), "%s", msg);
    }
    p->prev->next = p->next;
    p->next->prev = p->prev;
    L->npairs--;
    p->dead = 1;
    p->next = L->graveyard;
    L->graveyard = p;
    pthread_mutex_lock(&L->mu);
    L->handed[reason]++;
    int wake = 0;
    if (h != NULL) {
        if (L->hb_tail)
            L->hb_tail->next = h;
        else
            L->hb_head = h;
        L->hb_tail = h;
        wake = !L->noted;
        L->noted = 1;
    }
    pthread_mutex_unlock(&L->mu);
    if (wake) {
        uint64_t one = 1;
        ssize_t w = write(L->note_fd, &one, sizeof(one));
        (void)w;
    }
}

/* The request's bytes as received so far, then any that followed it: all
 * unframed, for Python to frame. */
static void hand_back_request(Lane *L, struct pair *p, int reason) {
    size_t n = p->req_got + p->extra_len;
    unsigned char *all = n ? malloc(n) : NULL;
    if (all != NULL) {
        memcpy(all, p->req, p->req_got);
        if (p->extra_len)
            memcpy(all + p->req_got, p->extra, p->extra_len);
    }
    hand_back(L, p, reason, NULL, 0, NULL, 0, all ? all : (const unsigned char *)"",
              all ? n : 0, 0, NULL);
    free(all);
}

static void bury(Lane *L) {
    while (L->graveyard != NULL) {
        struct pair *p = L->graveyard;
        L->graveyard = p->next;
        free(p->req);
        free(p->ans);
        free(p->out);
        free(p->extra);
        free(p);
    }
}

static void fail_up(Lane *L, struct pair *p, const char *msg) {
    int in_flight = p->state != S_REQ;
    hand_back(L, p, R_UPSTREAM, p->req, in_flight ? p->req_len : 0, NULL, 0, NULL, 0,
              in_flight && p->hdr_passed, msg);
}

/* -- the request ------------------------------------------------------------ */

static int grow(unsigned char **buf, size_t *cap, size_t want) {
    if (*cap >= want)
        return 0;
    unsigned char *b = realloc(*buf, want);
    if (b == NULL)
        return -1;
    *buf = b;
    *cap = want;
    return 0;
}

/* The header (p->req) is whole: take the request on (0), or -1 when the
 * lane does not relay it (the caller hands the bytes back). */
static int header_read(Lane *L, struct pair *p) {
    const unsigned char *h = p->req;
    uint8_t op = h[1];
    uint16_t flags = le16(h + 2);
    uint32_t length = le32(h + 12);
    size_t plen = (flags & FLAG_WRITE) ? length : 0;
    uint64_t oid = le64(h + 16);
    uint32_t id = le32(h + 8); /* h is gone once the buffer grows */
    int ok = (op == OP_READ && !plen) || (op == OP_WRITE && plen == length && plen);
    if (!ok || (oid & TYPE_BITS) || length > L->max_payload || atomic_load(&L->paused))
        return -1;
    size_t cost = plen && !(flags & FLAG_PIGGYBACK) ? plen : plen + length;
    if (L->used + cost > L->budget || grow(&p->req, &p->req_cap, HDR + plen) < 0)
        return -1;
    p->op = op;
    p->id = id;
    p->oid = oid;
    p->req_len = HDR + plen;
    p->cost = cost;
    L->used += cost;
    if (op == OP_WRITE)
        atomic_fetch_add(&L->inflight_writes, 1);
    return 0;
}

static void send_request(Lane *L, struct pair *p);

static void request_whole(Lane *L, struct pair *p) {
    p->state = S_SEND;
    p->req_sent = 0;
    p->started = p->progress = now_s();
    p->ahdr_got = p->ans_got = p->ans_len = 0;
    p->judge = p->collect = p->hdr_passed = 0;
    p->serial++;
    send_request(L, p); /* one request at a time: the client's next bytes wait */
}

static void take_request(Lane *L, struct pair *p, size_t have);

/* One receive of the client's request; 1 when it filled all it asked for
 * (edge-triggered: receive again), 0 when the socket is drained for now or
 * the request went out. */
static int down_in(Lane *L, struct pair *p, int drain) {
    ssize_t n;
    size_t asked;
    unsigned char *into;
    if (p->req_len) { /* a payload: straight into the request's buffer */
        into = p->req + p->req_got;
        asked = p->req_len - p->req_got;
    } else if (p->req_got) { /* the rest of a header */
        into = p->req + p->req_got;
        asked = HDR - p->req_got;
    } else {
        into = L->scratch;
        asked = SCRATCH;
    }
    n = recv(p->down, into, asked, 0);
    if (n < 0) {
        if (errno == EINTR)
            return 1;
        if (errno != EAGAIN)
            hand_back_request(L, p, R_CLOSED);
        return 0;
    }
    if (n == 0) {
        hand_back_request(L, p, p->req_got ? R_REQUEST : R_CLOSED);
        return 0;
    }
    p->last = now_s();
    if (into != L->scratch) {
        p->req_got += (size_t)n;
        if (!p->req_len && p->req_got == HDR && header_read(L, p) < 0) {
            hand_back_request(L, p, R_REQUEST);
            return 0;
        }
        if (p->req_len && p->req_got == p->req_len)
            request_whole(L, p);
    } else {
        take_request(L, p, (size_t)n);
    }
    if (((size_t)n < asked && !drain) || p->dead)
        return 0;
    if (p->state == S_REQ)
        return 1;
    p->maybe_more = 1; /* the request is out; what follows is read after its answer */
    return 0;
}

/* The first receive of a request, in the scratch buffer: its header, and
 * what of its payload came. */
static void take_request(Lane *L, struct pair *p, size_t have) {
    if (grow(&p->req, &p->req_cap, HDR) < 0) {
        hand_back(L, p, R_REQUEST, NULL, 0, NULL, 0, L->scratch, have, 0, NULL);
        return;
    }
    if (have < HDR) {
        memcpy(p->req, L->scratch, have);
        p->req_got = have;
        return;
    }
    memcpy(p->req, L->scratch, HDR);
    if (header_read(L, p) < 0) { /* every byte of this receive goes back */
        hand_back(L, p, R_REQUEST, NULL, 0, NULL, 0, L->scratch, have, 0, NULL);
        return;
    }
    p->req_got = HDR;
    size_t take = have - HDR < p->req_len - HDR ? have - HDR : p->req_len - HDR;
    memcpy(p->req + HDR, L->scratch + HDR, take);
    p->req_got += take;
    if (have > HDR + take) { /* the client sent more before this answer */
        p->extra_len = have - HDR - take;
        p->extra = malloc(p->extra_len);
        if (p->extra == NULL)
            p->extra_len = 0; /* cannot happen short of OOM; the bytes are lost */
        else
            memcpy(p->extra, L->scratch + HDR + take, p->extra_len);
    }
    if (p->req_got == p->req_len)
        request_whole(L, p);
}

static void send_request(Lane *L, struct pair *p) {
    while (p->req_sent < p->req_len) {
        ssize_t n = send(p->up, p->req + p->req_sent, p->req_len - p->req_sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                want_out(L, p, 1, 1);
                return;
            }
            char msg[96];
            snprintf(msg, sizeof(msg), "send failed: %s", strerror(errno));
            fail_up(L, p, msg);
            return;
        }
        p->req_sent += (size_t)n;
    }
    p->state = S_ANS;
    want_out(L, p, 1, 0);
}

/* -- the answer ------------------------------------------------------------- */

static void finish(Lane *L, struct pair *p);

/* Pass ``n`` bytes (``hdr`` first, when given) on to the client, keeping what
 * it does not take now. */
static void pass_on(Lane *L, struct pair *p, const unsigned char *hdr, const unsigned char *b,
                    size_t n) {
    size_t hn = hdr ? HDR : 0, sent = 0;
    if (p->down_dead)
        return;
    if (p->out_len == p->out_sent) {
        struct iovec iov[2] = {{(void *)hdr, hn}, {(void *)b, n}};
        struct msghdr m = {.msg_iov = hdr ? iov : iov + 1, .msg_iovlen = hdr ? 2 : 1};
        ssize_t w;
        do {
            w = sendmsg(p->down, &m, MSG_NOSIGNAL);
        } while (w < 0 && errno == EINTR);
        if (w < 0 && errno != EAGAIN) {
            p->down_dead = 1;
            return;
        }
        sent = w < 0 ? 0 : (size_t)w;
        p->out_len = p->out_sent = 0;
        if (sent == hn + n)
            return;
    }
    size_t left = hn + n - sent;
    if (grow(&p->out, &p->out_cap, p->out_len + left) < 0) {
        p->down_dead = 1; /* cannot keep it: the client's frame is broken */
        return;
    }
    if (sent < hn) {
        memcpy(p->out + p->out_len, hdr + sent, hn - sent);
        p->out_len += hn - sent;
        sent = hn;
    }
    memcpy(p->out + p->out_len, b + (sent - hn), n - (sent - hn));
    p->out_len += n - (sent - hn);
    want_out(L, p, 0, 1);
}

static void answer_header(Lane *L, struct pair *p) {
    uint32_t epoch = le32(p->ahdr + 4);
    uint32_t id = le32(p->ahdr + 8);
    uint32_t length = le32(p->ahdr + 12);
    uint32_t result = le32(p->ahdr + 16);
    char msg[96];
    if (id != p->id) {
        snprintf(msg, sizeof(msg), "an unexpected answer (opcode %#x, id %u)", p->ahdr[1], id);
        fail_up(L, p, msg);
        return;
    }
    if (length > L->max_payload || (p->op == OP_READ && length > le32(p->req + 12))) {
        snprintf(msg, sizeof(msg), "an answer of %u bytes; the limit is %zu", length,
                 p->op == OP_READ ? (size_t)le32(p->req + 12) : L->max_payload);
        fail_up(L, p, msg);
        return;
    }
    p->ans_len = length;
    pthread_mutex_lock(&L->mu);
    uint32_t known = L->epoch;
    pthread_mutex_unlock(&L->mu);
    p->judge = result != 0 || epoch > known || (p->op == OP_WRITE && atomic_load(&L->paused));
    if (p->judge) {
        free(p->ans);
        p->ans = malloc(HDR + length);
        if (p->ans == NULL) {
            fail_up(L, p, "out of memory for an answer");
            return;
        }
        memcpy(p->ans, p->ahdr, HDR);
    }
}

static void answer_whole(Lane *L, struct pair *p) {
    if (p->judge) {
        if (le32(p->ahdr + 4) > L->epoch) {
            pthread_mutex_lock(&L->mu);
            if (le32(p->ahdr + 4) > L->epoch)
                L->epoch = le32(p->ahdr + 4); /* Python hears of it once, from this answer */
            pthread_mutex_unlock(&L->mu);
        }
        hand_back(L, p, R_ANSWER, p->req, p->req_len, p->ans, HDR + p->ans_len, NULL, 0, 0,
                  NULL);
        return;
    }
    if (p->collect) {
        pass_on(L, p, NULL, p->ans, HDR + p->ans_len);
        p->hdr_passed = 1;
    }
    count(L, p, now_s() - p->started);
    if (p->out_len > p->out_sent) {
        p->state = S_OUT;
        return;
    }
    finish(L, p);
}

static void answer_bytes(Lane *L, struct pair *p, size_t n);

/* One receive of the node's answer; 1 when it filled all it asked for and
 * the same answer is still arriving (edge-triggered: receive again). */
static int up_in(Lane *L, struct pair *p, int drain) {
    ssize_t n;
    if (p->state == S_REQ || p->state == S_OUT) { /* nothing asked */
        n = recv(p->up, L->scratch, SCRATCH, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return 0;
        if (p->state == S_OUT) { /* the answer is whole: fail once it is out */
            p->up_bad = n == 0 ? 2 : 1;
            epoll_ctl(L->epfd, EPOLL_CTL_DEL, p->up, NULL);
            p->up_mask = 0;
            return 0;
        }
        fail_up(L, p, n == 0 ? "the node closed the connection" : "an unexpected answer");
        return 0;
    }
    size_t asked = p->ahdr_got < HDR ? SCRATCH : p->ans_len - p->ans_got;
    if (asked > SCRATCH)
        asked = SCRATCH;
    if (!asked)
        asked = 1;
    int direct = p->ahdr_got == HDR && (p->judge || p->collect);
    if (direct)
        asked = p->ans_len - p->ans_got;
    n = recv(p->up, direct ? p->ans + HDR + p->ans_got : L->scratch, asked, 0);
    if (n < 0) {
        if (errno == EINTR)
            return 1;
        if (errno != EAGAIN) {
            char msg[96];
            snprintf(msg, sizeof(msg), "receive failed: %s", strerror(errno));
            fail_up(L, p, msg);
        }
        return 0;
    }
    if (n == 0) {
        fail_up(L, p, "the node closed the connection");
        return 0;
    }
    p->progress = now_s();
    unsigned serial = p->serial;
    if (direct) {
        p->ans_got += (size_t)n;
        if (p->ans_got == p->ans_len)
            answer_whole(L, p);
    } else {
        answer_bytes(L, p, (size_t)n);
    }
    return ((size_t)n == asked || drain) && !p->dead && p->serial == serial &&
           (p->state == S_SEND || p->state == S_ANS);
}

/* Answer bytes received in the scratch buffer: the header, then the payload
 * passed on (or collected). */
static void answer_bytes(Lane *L, struct pair *p, size_t n) {
    const unsigned char *b = L->scratch;
    size_t left = n;
    if (p->ahdr_got < HDR) {
        size_t take = HDR - p->ahdr_got < left ? HDR - p->ahdr_got : left;
        memcpy(p->ahdr + p->ahdr_got, b, take);
        p->ahdr_got += take;
        b += take;
        left -= take;
        if (p->ahdr_got < HDR)
            return;
        answer_header(L, p);
        if (p->dead)
            return;
        if (!p->judge && p->ans_len < STREAM_FROM) {
            if (left >= p->ans_len) { /* the whole answer is here: on at once */
                if (left > p->ans_len)
                    p->up_bad = 1;
                pass_on(L, p, p->ahdr, b, p->ans_len);
                p->hdr_passed = 1;
                p->ans_got = p->ans_len;
                answer_whole(L, p);
                return;
            }
            free(p->ans);
            if ((p->ans = malloc(HDR + p->ans_len)) == NULL) {
                fail_up(L, p, "out of memory for an answer");
                return;
            }
            memcpy(p->ans, p->ahdr, HDR);
            p->collect = 1;
        }
        if (p->judge || p->collect) {
            size_t take2 = left < p->ans_len ? left : p->ans_len;
            memcpy(p->ans + HDR, b, take2);
            p->ans_got = take2;
            if (left > take2)
                p->up_bad = 1;
            if (p->ans_got == p->ans_len)
                answer_whole(L, p);
            return;
        }
    }
    size_t take = left < p->ans_len - p->ans_got ? left : p->ans_len - p->ans_got;
    if (left > take)
        p->up_bad = 1; /* more than the answer: the connection goes after it */
    pass_on(L, p, p->hdr_passed ? NULL : p->ahdr, b, take);
    p->hdr_passed = 1;
    p->ans_got += take;
    if (p->ans_got == p->ans_len)
        answer_whole(L, p);
}

static void down_out(Lane *L, struct pair *p) {
    while (p->out_sent < p->out_len) {
        ssize_t w = send(p->down, p->out + p->out_sent, p->out_len - p->out_sent, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return;
            p->down_dead = 1;
            break;
        }
        p->out_sent += (size_t)w;
        p->progress = now_s();
    }
    p->out_len = p->out_sent = 0;
    want_out(L, p, 0, 0);
    if (p->state == S_OUT)
        finish(L, p);
}

/* The answer is out: the pair waits for the client's next request. */
static void finish(Lane *L, struct pair *p) {
    release(L, p);
    free(p->ans);
    p->ans = NULL;
    if (p->req_cap > KEEP) { /* memory held while idle stays small */
        free(p->req);
        p->req = NULL;
        p->req_cap = 0;
    }
    if (p->out_cap > KEEP) {
        free(p->out);
        p->out = NULL;
        p->out_cap = 0;
    }
    p->state = S_REQ;
    p->req_got = p->req_len = 0;
    p->last = now_s();
    if (p->down_dead) {
        hand_back(L, p, R_CLOSED, NULL, 0, NULL, 0, NULL, 0, 0, NULL);
        return;
    }
    if (p->up_bad) {
        hand_back(L, p, R_UPSTREAM, NULL, 0, NULL, 0, NULL, 0, 0,
                  p->up_bad == 2 ? "the node closed the connection"
                                 : "the node sent bytes nobody asked for");
        return;
    }
    if (p->extra_len) {
        hand_back(L, p, R_REQUEST, NULL, 0, NULL, 0, NULL, 0, 0, NULL);
        return;
    }
    if (atomic_load(&L->paused)) {
        hand_back(L, p, R_IDLE, NULL, 0, NULL, 0, NULL, 0, 0, NULL);
        return;
    }
    if (p->maybe_more) { /* edge-triggered: what came meanwhile raised no new event */
        p->maybe_more = 0;
        while (!p->dead && p->state == S_REQ && down_in(L, p, 0))
            ;
    }
}

/* -- the thread ------------------------------------------------------------- */

static void take_adopts(Lane *L) {
    uint64_t v;
    ssize_t r = read(L->cmd_fd, &v, sizeof(v));
    (void)r;
    pthread_mutex_lock(&L->mu);
    struct adopt *a = L->adopts;
    L->adopts = NULL;
    pthread_mutex_unlock(&L->mu);
    while (a != NULL) {
        struct adopt *next = a->next;
        struct pair *p = calloc(1, sizeof(*p));
        if (p != NULL) {
            p->token = a->token;
            p->down = a->down;
            p->up = a->up;
            p->state = S_REQ;
            p->last = now_s();
            p->next = L->head.next;
            p->prev = &L->head;
            L->head.next->prev = p;
            L->head.next = p;
            L->npairs++;
            struct epoll_event ev = {.events = WATCH, .data.u64 = (uint64_t)(uintptr_t)p};
            struct epoll_event eu = {.events = WATCH, .data.u64 = (uint64_t)(uintptr_t)p | 1};
            p->down_mask = p->up_mask = WATCH;
            if (epoll_ctl(L->epfd, EPOLL_CTL_ADD, p->down, &ev) < 0 ||
                epoll_ctl(L->epfd, EPOLL_CTL_ADD, p->up, &eu) < 0 || atomic_load(&L->paused))
                hand_back(L, p, R_IDLE, NULL, 0, NULL, 0, NULL, 0, 0, NULL);
        }
        free(a);
        a = next;
    }
}

static void sweep(Lane *L, double now) {
    int recall = atomic_exchange(&L->recall, 0);
    struct pair *p = L->head.next;
    while (p != &L->head) {
        struct pair *next = p->next;
        switch (p->state) {
        case S_REQ:
            if (recall && !p->req_got)
                hand_back(L, p, R_IDLE, NULL, 0, NULL, 0, NULL, 0, 0, NULL);
            else if (now - p->last >= L->idle)
                hand_back_request(L, p, p->req_got ? R_REQUEST : R_IDLE);
            break;
        case S_SEND:
        case S_ANS:
            if (now - p->started > L->request_timeout) {
                char msg[96];
                snprintf(msg, sizeof(msg), "no answer within %g s", L->request_timeout);
                fail_up(L, p, msg);
            }
            break;
        case S_OUT:
            if (now - p->progress > L->stall) {
                unsigned char *tail = p->out + p->out_sent;
                size_t n = p->out_len - p->out_sent;
                /* the request's cost goes with it: Python charges it again */
                hand_back(L, p, R_STALLED, p->req, p->req_len, tail, n, NULL, 0, 0, NULL);
            }
            break;
        }
        p = next;
    }
}

static void *run(void *arg) {
    Lane *L = arg;
    struct epoll_event events[256];
    double next_sweep = now_s() + 0.1;
    for (;;) {
        int n = epoll_wait(L->epfd, events, 256, 100);
        pthread_mutex_lock(&L->mu);
        int stop = L->stop;
        pthread_mutex_unlock(&L->mu);
        if (stop)
            break;
        for (int i = 0; i < n; i++) {
            uint64_t d = events[i].data.u64;
            if (d == 0) {
                take_adopts(L);
                continue;
            }
            struct pair *p = (struct pair *)(uintptr_t)(d & ~(uint64_t)1);
            int side = (int)(d & 1);
            unsigned ev = events[i].events;
            if (p->dead) /* handed back earlier in this batch */
                continue;
            unsigned in = EPOLLIN | HANGUP;
            int drain = (ev & HANGUP) != 0;
            if (side) {
                if (ev & EPOLLOUT && p->state == S_SEND)
                    send_request(L, p);
                if (!p->dead && ev & in)
                    while (up_in(L, p, drain))
                        ;
                continue;
            }
            if (ev & EPOLLOUT && p->out_len > p->out_sent)
                down_out(L, p);
            if (p->dead || !(ev & in))
                continue;
            if (p->state == S_REQ) {
                while (down_in(L, p, drain))
                    ;
            } else if (ev & (EPOLLHUP | EPOLLERR)) { /* hung up under its request */
                p->down_dead = 1;
                epoll_ctl(L->epfd, EPOLL_CTL_DEL, p->down, NULL);
                p->down_mask = 0;
                if (p->state == S_OUT)
                    finish(L, p);
            } else {
                p->maybe_more = 1; /* sent on before its answer: read after it */
            }
        }
        bury(L);
        double now = now_s();
        if (now >= next_sweep || atomic_load(&L->recall)) {
            sweep(L, now);
            bury(L);
            next_sweep = now + 0.1;
        }
    }
    return NULL;
}

/* -- the Python type ---------------------------------------------------------- */

static void wake_lane(Lane *L) {
    uint64_t one = 1;
    ssize_t w = write(L->cmd_fd, &one, sizeof(one));
    (void)w;
}

static int Lane_init(Lane *L, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"max_payload", "budget", "idle", "request_timeout", "stall", NULL};
    Py_ssize_t max_payload, budget;
    double idle, request_timeout, stall;
    if (L->running) {
        PyErr_SetString(PyExc_RuntimeError, "the lane is already running");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nnddd", kwlist, &max_payload, &budget, &idle,
                                     &request_timeout, &stall))
        return -1;
    if (max_payload <= 0 || budget < 0 || idle <= 0 || request_timeout <= 0 || stall <= 0) {
        PyErr_SetString(PyExc_ValueError,
                        "max_payload, idle, request_timeout and stall must be positive, "
                        "budget not negative");
        return -1;
    }
    L->max_payload = (size_t)max_payload;
    L->budget = (size_t)budget;
    L->idle = idle;
    L->request_timeout = request_timeout;
    L->stall = stall;
    L->head.next = L->head.prev = &L->head;
    L->epfd = epoll_create1(EPOLL_CLOEXEC);
    L->cmd_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    L->note_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    L->scratch = malloc(SCRATCH);
    if (L->epfd < 0 || L->cmd_fd < 0 || L->note_fd < 0 || L->scratch == NULL) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0};
    if (epoll_ctl(L->epfd, EPOLL_CTL_ADD, L->cmd_fd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    pthread_mutex_init(&L->mu, NULL);
    int err = pthread_create(&L->thread, NULL, run, L);
    if (err) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    L->running = 1;
    return 0;
}

static PyObject *Lane_close(Lane *L, PyObject *Py_UNUSED(ignored)) {
    if (L->running) {
        pthread_mutex_lock(&L->mu);
        L->stop = 1;
        pthread_mutex_unlock(&L->mu);
        wake_lane(L);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(L->thread, NULL);
        Py_END_ALLOW_THREADS
        L->running = 0;
        /* the pairs still held: their connections are Python's to close */
        struct pair *p = L->head.next;
        while (p != &L->head) {
            struct pair *next = p->next;
            p->next = L->graveyard;
            L->graveyard = p;
            p = next;
        }
        L->head.next = L->head.prev = &L->head;
        L->npairs = 0;
        bury(L);
    }
    Py_RETURN_NONE;
}

static void free_handbacks(struct handback *h) {
    while (h != NULL) {
        struct handback *next = h->next;
        free(h->req);
        free(h->ans);
        free(h->rest);
        free(h);
        h = next;
    }
}

static void Lane_dealloc(Lane *L) {
    Lane_close(L, NULL);
    free_handbacks(L->hb_head);
    struct adopt *a = L->adopts;
    while (a != NULL) {
        struct adopt *next = a->next;
        free(a);
        a = next;
    }
    if (L->epfd > 0)
        close(L->epfd);
    if (L->cmd_fd > 0)
        close(L->cmd_fd);
    if (L->note_fd > 0)
        close(L->note_fd);
    free(L->scratch);
    free(L->stats);
    Py_TYPE(L)->tp_free((PyObject *)L);
}

static int check_running(Lane *L) {
    if (!L->running) {
        PyErr_SetString(PyExc_RuntimeError, "the lane is closed");
        return -1;
    }
    return 0;
}

static PyObject *Lane_fileno(Lane *L, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(L->note_fd);
}

static PyObject *Lane_adopt(Lane *L, PyObject *args) {
    long long token;
    int down, up;
    if (!PyArg_ParseTuple(args, "Lii", &token, &down, &up) || check_running(L) < 0)
        return NULL;
    if (down < 0 || up < 0 || down == up) {
        PyErr_SetString(PyExc_ValueError, "two distinct open file descriptors are needed");
        return NULL;
    }
    struct adopt *a = malloc(sizeof(*a));
    if (a == NULL)
        return PyErr_NoMemory();
    a->token = token;
    a->down = down;
    a->up = up;
    pthread_mutex_lock(&L->mu);
    a->next = L->adopts;
    L->adopts = a;
    pthread_mutex_unlock(&L->mu);
    wake_lane(L);
    Py_RETURN_NONE;
}

static PyObject *Lane_set_epoch(Lane *L, PyObject *args) {
    unsigned int epoch;
    if (!PyArg_ParseTuple(args, "I", &epoch))
        return NULL;
    pthread_mutex_lock(&L->mu);
    if (epoch > L->epoch)
        L->epoch = epoch;
    pthread_mutex_unlock(&L->mu);
    Py_RETURN_NONE;
}

static PyObject *Lane_pause(Lane *L, PyObject *Py_UNUSED(ignored)) {
    if (!atomic_exchange(&L->paused, 1)) {
        atomic_store(&L->recall, 1);
        if (L->running)
            wake_lane(L);
    }
    Py_RETURN_NONE;
}

static PyObject *Lane_recall(Lane *L, PyObject *Py_UNUSED(ignored)) {
    atomic_store(&L->recall, 1);
    if (L->running)
        wake_lane(L);
    Py_RETURN_NONE;
}

static PyObject *Lane_resume(Lane *L, PyObject *Py_UNUSED(ignored)) {
    atomic_store(&L->paused, 0);
    Py_RETURN_NONE;
}

static PyObject *Lane_paused(Lane *L, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(atomic_load(&L->paused));
}

static PyObject *Lane_inflight_writes(Lane *L, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLongLong(atomic_load(&L->inflight_writes));
}

static PyObject *Lane_handbacks(Lane *L, PyObject *Py_UNUSED(ignored)) {
    uint64_t v;
    ssize_t r = read(L->note_fd, &v, sizeof(v));
    (void)r;
    pthread_mutex_lock(&L->mu);
    struct handback *h = L->hb_head;
    L->hb_head = L->hb_tail = NULL;
    L->noted = 0;
    pthread_mutex_unlock(&L->mu);
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        free_handbacks(h);
        return NULL;
    }
    for (struct handback *i = h; i != NULL; i = i->next) {
        /* y# gives None for NULL: an empty field is b"" */
        PyObject *t = Py_BuildValue("(Liy#y#y#Os)", i->token, i->reason,
                                    i->req ? (char *)i->req : "", (Py_ssize_t)i->req_len,
                                    i->ans ? (char *)i->ans : "", (Py_ssize_t)i->ans_len,
                                    i->rest ? (char *)i->rest : "", (Py_ssize_t)i->rest_len,
                                    i->broken ? Py_True : Py_False, i->msg);
        if (t == NULL || PyList_Append(list, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(list);
            free_handbacks(h);
            return NULL;
        }
        Py_DECREF(t);
    }
    free_handbacks(h);
    return list;
}

static PyObject *Lane_take_stats(Lane *L, PyObject *Py_UNUSED(ignored)) {
    pthread_mutex_lock(&L->mu);
    struct vstat *stats = L->stats;
    size_t cap = L->stats_cap;
    L->stats = NULL;
    L->stats_cap = L->stats_used = 0;
    pthread_mutex_unlock(&L->mu);
    PyObject *list = PyList_New(0);
    for (size_t i = 0; list != NULL && i < cap; i++) {
        struct vstat *s = &stats[i];
        if (!s->used)
            continue;
        PyObject *t = Py_BuildValue("(kKKKKdd)", (unsigned long)s->vid, s->reads, s->writes,
                                    s->read_bytes, s->write_bytes, s->busy, s->max);
        if (t == NULL || PyList_Append(list, t) < 0) {
            Py_XDECREF(t);
            Py_CLEAR(list);
        } else {
            Py_DECREF(t);
        }
    }
    free(stats);
    return list;
}

static PyObject *Lane_counts(Lane *L, PyObject *Py_UNUSED(ignored)) {
    static const char *names[] = {"idle", "request", "answer", "upstream", "closed", "stalled"};
    pthread_mutex_lock(&L->mu);
    unsigned long long relayed = L->relayed, handed[6];
    memcpy(handed, L->handed, sizeof(handed));
    pthread_mutex_unlock(&L->mu);
    PyObject *d = Py_BuildValue("{s:L,s:K,s:n,s:L}", "pairs", (long long)atomic_load(&L->npairs),
                                "relayed", relayed, "budget_used",
                                (Py_ssize_t)atomic_load(&L->used), "inflight_writes",
                                (long long)atomic_load(&L->inflight_writes));
    if (d == NULL)
        return NULL;
    PyObject *h = PyDict_New();
    for (int i = 0; h != NULL && i < 6; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(handed[i]);
        if (v == NULL || PyDict_SetItemString(h, names[i], v) < 0)
            Py_CLEAR(h);
        Py_XDECREF(v);
    }
    if (h == NULL || PyDict_SetItemString(d, "handed_back", h) < 0) {
        Py_XDECREF(h);
        Py_DECREF(d);
        return NULL;
    }
    Py_DECREF(h);
    return d;
}

static PyMethodDef Lane_methods[] = {
    {"fileno", (PyCFunction)Lane_fileno, METH_NOARGS,
     "The eventfd that is readable while hand-backs wait."},
    {"adopt", (PyCFunction)Lane_adopt, METH_VARARGS,
     "adopt(token, down_fd, up_fd): relay a quiet pair until it needs judgment."},
    {"set_epoch", (PyCFunction)Lane_set_epoch, METH_VARARGS,
     "The highest epoch the gateway has seen; a higher one in an answer is handed back."},
    {"pause", (PyCFunction)Lane_pause, METH_NOARGS,
     "Take no new request; every pair comes back at its next request boundary."},
    {"resume", (PyCFunction)Lane_resume, METH_NOARGS, "Relay again after a pause."},
    {"recall", (PyCFunction)Lane_recall, METH_NOARGS,
     "Give back every pair that waits for its client's next request (now)."},
    {"inflight_writes", (PyCFunction)Lane_inflight_writes, METH_NOARGS,
     "Writes sent to a node and not yet answered or handed back."},
    {"handbacks", (PyCFunction)Lane_handbacks, METH_NOARGS,
     "The pairs given back: (token, reason, request, answer, rest, broken, message)."},
    {"take_stats", (PyCFunction)Lane_take_stats, METH_NOARGS,
     "Per-VDI counters since the last call: (vid, reads, writes, read_bytes, write_bytes, "
     "busy_seconds, max_latency)."},
    {"counts", (PyCFunction)Lane_counts, METH_NOARGS, "The lane's counters."},
    {"close", (PyCFunction)Lane_close, METH_NOARGS,
     "Stop the thread; the pairs it held are forgotten (their sockets are the caller's)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Lane_getset[] = {
    {"paused", (getter)Lane_paused, NULL, "Whether the lane is paused.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sheepdog_backend.gateway._lane.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The gateway's compiled lane (see _lane.c).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_methods = Lane_methods,
    .tp_getset = Lane_getset,
};

static struct PyModuleDef lane_module = {
    PyModuleDef_HEAD_INIT, "_lane", "The gateway's compiled lane.", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__lane(void) {
    if (PyType_Ready(&LaneType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&lane_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&LaneType);
    if (PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0 ||
        PyModule_AddIntConstant(m, "IDLE", R_IDLE) < 0 ||
        PyModule_AddIntConstant(m, "REQUEST", R_REQUEST) < 0 ||
        PyModule_AddIntConstant(m, "ANSWER", R_ANSWER) < 0 ||
        PyModule_AddIntConstant(m, "UPSTREAM", R_UPSTREAM) < 0 ||
        PyModule_AddIntConstant(m, "CLOSED", R_CLOSED) < 0 ||
        PyModule_AddIntConstant(m, "STALLED", R_STALLED) < 0) {
        Py_DECREF(&LaneType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
