/* One pair's request and answer: read the client's request, send it to the
 * node, pass the answer on or collect it for Python (see _lane.c). */

#include "lane.h"

/* -- the request ------------------------------------------------------------ */

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
    if (L->used + cost > L->budget || lane_grow(&p->req, &p->req_cap, HDR + plen) < 0)
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

static void request_whole(Lane *L, struct pair *p) {
    p->state = S_SEND;
    p->req_sent = 0;
    p->started = p->progress = now_s();
    p->ahdr_got = p->ans_got = p->ans_len = 0;
    p->judge = p->collect = p->hdr_passed = 0;
    p->serial++;
    lane_send_request(L, p); /* one request at a time: the client's next bytes wait */
}

static void take_request(Lane *L, struct pair *p, size_t have);

/* One receive of the client's request; 1 when it filled all it asked for
 * (edge-triggered: receive again), 0 when the socket is drained for now or
 * the request went out. */
int lane_down_in(Lane *L, struct pair *p, int drain) {
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
            lane_hand_back_request(L, p, R_CLOSED);
        return 0;
    }
    if (n == 0) {
        lane_hand_back_request(L, p, p->req_got ? R_REQUEST : R_CLOSED);
        return 0;
    }
    p->last = now_s();
    if (into != L->scratch) {
        p->req_got += (size_t)n;
        if (!p->req_len && p->req_got == HDR && header_read(L, p) < 0) {
            lane_hand_back_request(L, p, R_REQUEST);
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
    if (lane_grow(&p->req, &p->req_cap, HDR) < 0) {
        lane_hand_back(L, p, R_REQUEST, NULL, 0, NULL, 0, L->scratch, have, 0, NULL);
        return;
    }
    if (have < HDR) {
        memcpy(p->req, L->scratch, have);
        p->req_got = have;
        return;
    }
    memcpy(p->req, L->scratch, HDR);
    if (header_read(L, p) < 0) { /* every byte of this receive goes back */
        lane_hand_back(L, p, R_REQUEST, NULL, 0, NULL, 0, L->scratch, have, 0, NULL);
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

void lane_send_request(Lane *L, struct pair *p) {
    int r = lane_send_some(p->up, p->req, p->req_len, &p->req_sent, &p->progress);
    if (r > 0) {
        lane_want_out(L, p, 1, 1);
        return;
    }
    if (r < 0) {
        char msg[96];
        snprintf(msg, sizeof(msg), "send failed: %s", strerror(errno));
        lane_fail_up(L, p, msg);
        return;
    }
    p->state = S_ANS;
    lane_want_out(L, p, 1, 0);
}

/* -- the answer ------------------------------------------------------------- */

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
    if (lane_grow(&p->out, &p->out_cap, p->out_len + left) < 0) {
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
    lane_want_out(L, p, 0, 1);
}

static void answer_header(Lane *L, struct pair *p) {
    uint32_t epoch = le32(p->ahdr + 4);
    uint32_t id = le32(p->ahdr + 8);
    uint32_t length = le32(p->ahdr + 12);
    uint32_t result = le32(p->ahdr + 16);
    char msg[96];
    if (id != p->id) {
        snprintf(msg, sizeof(msg), "an unexpected answer (opcode %#x, id %u)", p->ahdr[1], id);
        lane_fail_up(L, p, msg);
        return;
    }
    if (length > L->max_payload || (p->op == OP_READ && length > le32(p->req + 12))) {
        snprintf(msg, sizeof(msg), "an answer of %u bytes; the limit is %zu", length,
                 p->op == OP_READ ? (size_t)le32(p->req + 12) : L->max_payload);
        lane_fail_up(L, p, msg);
        return;
    }
    p->ans_len = length;
    p->judge = result != 0 || epoch > atomic_load(&L->epoch) ||
               (p->op == OP_WRITE && atomic_load(&L->paused));
    if (p->judge) {
        free(p->ans);
        p->ans = malloc(HDR + length);
        if (p->ans == NULL) {
            lane_fail_up(L, p, "out of memory for an answer");
            return;
        }
        memcpy(p->ans, p->ahdr, HDR);
    }
}

static void answer_whole(Lane *L, struct pair *p) {
    if (p->judge) {
        raise_epoch(L, le32(p->ahdr + 4)); /* Python hears of it once, from this answer */
        lane_hand_back(L, p, R_ANSWER, p->req, p->req_len, p->ans, HDR + p->ans_len, NULL, 0, 0,
                  NULL);
        return;
    }
    if (p->collect) {
        pass_on(L, p, NULL, p->ans, HDR + p->ans_len);
        p->hdr_passed = 1;
    }
    lane_count(L, p, now_s() - p->started);
    if (p->out_len > p->out_sent) {
        p->state = S_OUT;
        return;
    }
    lane_finish(L, p);
}

static void answer_bytes(Lane *L, struct pair *p, size_t n);

/* One receive of the node's answer; 1 when it filled all it asked for and
 * the same answer is still arriving (edge-triggered: receive again). */
int lane_up_in(Lane *L, struct pair *p, int drain) {
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
        lane_fail_up(L, p, n == 0 ? "the node closed the connection" : "an unexpected answer");
        return 0;
    }
    if (p->spliced) {
        lane_move_spliced(L, p);
        return 0;
    }
    /* a large read's header alone: its payload may go through a pipe */
    int large = L->splice && p->op == OP_READ && le32(p->req + 12) >= STREAM_FROM;
    size_t asked = p->ahdr_got < HDR ? (large ? HDR - p->ahdr_got : SCRATCH)
                                     : p->ans_len - p->ans_got;
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
            lane_fail_up(L, p, msg);
        }
        return 0;
    }
    if (n == 0) {
        lane_fail_up(L, p, "the node closed the connection");
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
        if (!p->judge && p->ans_len >= STREAM_FROM && !left && lane_pipe_get(L, p) == 0) {
            pass_on(L, p, NULL, p->ahdr, HDR); /* the header; its payload by splice */
            p->hdr_passed = 1;
            lane_move_spliced(L, p);
            return;
        }
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
                lane_fail_up(L, p, "out of memory for an answer");
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

void lane_down_out(Lane *L, struct pair *p) {
    int r = lane_send_some(p->down, p->out, p->out_len, &p->out_sent, &p->progress);
    if (r > 0)
        return;
    if (r < 0)
        p->down_dead = 1;
    p->out_len = p->out_sent = 0;
    lane_want_out(L, p, 0, 0);
    if (p->state == S_OUT)
        lane_finish(L, p);
}

/* A spliced answer moves what it can (splice.c); the pair is done once it
 * is out. */
void lane_move_spliced(Lane *L, struct pair *p) {
    if (lane_splice_pump(L, p))
        lane_finish(L, p);
}

/* The answer is out: the pair waits for the client's next request. */
void lane_finish(Lane *L, struct pair *p) {
    lane_release(L, p);
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
        lane_hand_back(L, p, R_CLOSED, NULL, 0, NULL, 0, NULL, 0, 0, NULL);
        return;
    }
    if (p->up_bad) {
        lane_hand_back(L, p, R_UPSTREAM, NULL, 0, NULL, 0, NULL, 0, 0,
                  p->up_bad == 2 ? "the node closed the connection"
                                 : "the node sent bytes nobody asked for");
        return;
    }
    if (p->extra_len) {
        lane_hand_back(L, p, R_REQUEST, NULL, 0, NULL, 0, NULL, 0, 0, NULL);
        return;
    }
    if (atomic_load(&L->paused)) {
        lane_hand_back(L, p, R_IDLE, NULL, 0, NULL, 0, NULL, 0, 0, NULL);
        return;
    }
    if (p->maybe_more) { /* edge-triggered: what came meanwhile raised no new event */
        p->maybe_more = 0;
        while (!p->dead && p->state == S_REQ && lane_down_in(L, p, 0))
            ;
    }
}

