/* What the relay, the splice and the thread share: the per-VDI counters,
 * the output watch, the pool of pipes and the hand-backs to Python (see
 * _lane.c).  Calls nothing of relay.c, splice.c or thread.c. */

#include "lane.h"

#include <fcntl.h>

/* -- per-VDI counters (under mu) ------------------------------------------- */

void lane_count(Lane *L, struct pair *p, double seconds) {
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


void lane_want_out(Lane *L, struct pair *p, int side, int on) {
    unsigned *cur = side ? &p->up_mask : &p->down_mask;
    unsigned mask = WATCH | (on ? EPOLLOUT : 0);
    if (*cur == mask || !*cur) /* unchanged, or no longer watched */
        return;
    struct epoll_event ev = {.events = mask, .data.u64 = (uint64_t)(uintptr_t)p | (uint64_t)side};
    epoll_ctl(L->epfd, EPOLL_CTL_MOD, side ? p->up : p->down, &ev);
    *cur = mask;
}

/* -- the pipes of spliced answers (see splice.c) --------------------------- */

static void close_pipe(int r, int w) {
    close(r);
    close(w);
}

/* A pipe for the pair's answer (0), or -1 when splicing is off or no pipe
 * can be had (the answer then goes the copying way). */
int lane_pipe_get(Lane *L, struct pair *p) {
    int fds[2];
    size_t cap = 64 * 1024; /* a pipe's size unless it can be made larger */
    if (!L->splice)
        return -1;
    if (L->pipes_free) {
        L->pipes_free--;
        fds[0] = L->pipes[L->pipes_free].r;
        fds[1] = L->pipes[L->pipes_free].w;
        cap = L->pipes[L->pipes_free].cap;
    } else {
        if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
            return -1;
        int got = fcntl(fds[1], F_SETPIPE_SZ, PIPE_WANT);
        if (got > 0)
            cap = (size_t)got;
    }
    p->pipe_r = fds[0];
    p->pipe_w = fds[1];
    p->pipe_cap = cap;
    p->piped = 0;
    p->spliced = 1;
    atomic_fetch_add(&L->spliced, 1);
    return 0;
}

/* The pair's pipe back to the pool (empty) or closed (bytes left in it). */
void lane_pipe_put(Lane *L, struct pair *p) {
    if (!p->spliced)
        return;
    p->spliced = 0;
    if (!p->piped && L->pipes_free < PIPE_POOL) {
        L->pipes[L->pipes_free].r = p->pipe_r;
        L->pipes[L->pipes_free].w = p->pipe_w;
        L->pipes[L->pipes_free].cap = p->pipe_cap;
        L->pipes_free++;
        return;
    }
    close_pipe(p->pipe_r, p->pipe_w);
    p->piped = 0;
}

void lane_pipes_close(Lane *L) {
    while (L->pipes_free) {
        L->pipes_free--;
        close_pipe(L->pipes[L->pipes_free].r, L->pipes[L->pipes_free].w);
    }
}

/* -- hand-backs ------------------------------------------------------------- */

void lane_release(Lane *L, struct pair *p) {
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
void lane_hand_back(Lane *L, struct pair *p, int reason, const unsigned char *req,
                      size_t req_len, const unsigned char *ans, size_t ans_len,
                      const unsigned char *rest, size_t rest_len, int broken, const char *msg) {
    struct handback *h = calloc(1, sizeof(*h));
    epoll_ctl(L->epfd, EPOLL_CTL_DEL, p->down, NULL);
    epoll_ctl(L->epfd, EPOLL_CTL_DEL, p->up, NULL);
    lane_release(L, p);
    lane_pipe_put(L, p);
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
void lane_hand_back_request(Lane *L, struct pair *p, int reason) {
    size_t n = p->req_got + p->extra_len;
    unsigned char *all = n ? malloc(n) : NULL;
    if (all != NULL) {
        memcpy(all, p->req, p->req_got);
        if (p->extra_len)
            memcpy(all + p->req_got, p->extra, p->extra_len);
    }
    lane_hand_back(L, p, reason, NULL, 0, NULL, 0, all ? all : (const unsigned char *)"",
              all ? n : 0, 0, NULL);
    free(all);
}

void lane_bury(Lane *L) {
    while (L->graveyard != NULL) {
        struct pair *p = L->graveyard;
        L->graveyard = p->next;
        lane_pipe_put(L, p); /* held at close: no hand-back took it */
        free(p->req);
        free(p->ans);
        free(p->out);
        free(p->extra);
        free(p);
    }
}

void lane_fail_up(Lane *L, struct pair *p, const char *msg) {
    int in_flight = p->state != S_REQ;
    lane_hand_back(L, p, R_UPSTREAM, p->req, in_flight ? p->req_len : 0, NULL, 0, NULL, 0,
              in_flight && p->hdr_passed, msg);
}
