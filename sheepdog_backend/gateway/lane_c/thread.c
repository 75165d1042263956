/* The lane's thread: its epoll loop, adoptions, the sweep of timeouts, the
 * hand-backs to Python and the per-VDI counters (see _lane.c). */

#include "lane.h"

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

/* -- the thread ------------------------------------------------------------- */

void lane_take_adopts(Lane *L) {
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
                lane_hand_back(L, p, R_IDLE, NULL, 0, NULL, 0, NULL, 0, 0, NULL);
        }
        free(a);
        a = next;
    }
}

void lane_sweep(Lane *L, double now) {
    int recall = atomic_exchange(&L->recall, 0);
    struct pair *p = L->head.next;
    while (p != &L->head) {
        struct pair *next = p->next;
        switch (p->state) {
        case S_REQ:
            if (recall && !p->req_got)
                lane_hand_back(L, p, R_IDLE, NULL, 0, NULL, 0, NULL, 0, 0, NULL);
            else if (now - p->last >= L->idle)
                lane_hand_back_request(L, p, p->req_got ? R_REQUEST : R_IDLE);
            break;
        case S_SEND:
        case S_ANS:
            if (now - p->started > L->request_timeout) {
                char msg[96];
                snprintf(msg, sizeof(msg), "no answer within %g s", L->request_timeout);
                lane_fail_up(L, p, msg);
            }
            break;
        case S_OUT:
            if (now - p->progress > L->stall) {
                unsigned char *tail = p->out + p->out_sent;
                size_t n = p->out_len - p->out_sent;
                /* the request's cost goes with it: Python charges it again */
                lane_hand_back(L, p, R_STALLED, p->req, p->req_len, tail, n, NULL, 0, 0, NULL);
            }
            break;
        }
        p = next;
    }
}

void *lane_run(void *arg) {
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
                lane_take_adopts(L);
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
                    lane_send_request(L, p);
                if (!p->dead && ev & in)
                    while (lane_up_in(L, p, drain))
                        ;
                continue;
            }
            if (ev & EPOLLOUT && p->out_len > p->out_sent)
                lane_down_out(L, p);
            if (p->dead || !(ev & in))
                continue;
            if (p->state == S_REQ) {
                while (lane_down_in(L, p, drain))
                    ;
            } else if (ev & (EPOLLHUP | EPOLLERR)) { /* hung up under its request */
                p->down_dead = 1;
                epoll_ctl(L->epfd, EPOLL_CTL_DEL, p->down, NULL);
                p->down_mask = 0;
                if (p->state == S_OUT)
                    lane_finish(L, p);
            } else {
                p->maybe_more = 1; /* sent on before its answer: read after it */
            }
        }
        lane_bury(L);
        double now = now_s();
        if (now >= next_sweep || atomic_load(&L->recall)) {
            lane_sweep(L, now);
            lane_bury(L);
            next_sweep = now + 0.1;
        }
    }
    return NULL;
}

