/* The lane's thread: its epoll loop, adoptions and the sweep of timeouts
 * (see _lane.c). */

#include "lane.h"

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
            if (p->spliced) {
                /* the node is answering: no byte moved for ``stall`` seconds
                 * (a client that takes nothing with the pipe full, or a node
                 * gone quiet) puts the rest on the copying path, where each
                 * is timed as on it */
                if (now - p->progress > L->stall) {
                    if (lane_unsplice(L, p) < 0)
                        p->down_dead = 1;
                    while (!p->dead && lane_up_in(L, p, 0))
                        ;
                }
            } else if (now - p->started > L->request_timeout) {
                char msg[96];
                snprintf(msg, sizeof(msg), "no answer within %g s", L->request_timeout);
                lane_fail_up(L, p, msg);
            }
            break;
        case S_OUT:
            if (now - p->progress <= L->stall)
                break;
            if (p->spliced && lane_unsplice(L, p) < 0) {
                p->down_dead = 1; /* the pipe's bytes are lost: the client's frame too */
                lane_hand_back(L, p, R_CLOSED, NULL, 0, NULL, 0, NULL, 0, 0, NULL);
            } else {
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
            if (ev & EPOLLOUT && p->spliced) {
                lane_move_spliced(L, p);
            } else if (ev & EPOLLOUT && p->out_len > p->out_sent) {
                lane_down_out(L, p);
            }
            if (p->dead || !(ev & in))
                continue;
            if (p->state == S_REQ) {
                while (lane_down_in(L, p, drain))
                    ;
            } else if (ev & (EPOLLHUP | EPOLLERR)) { /* hung up under its request */
                p->down_dead = 1;
                epoll_ctl(L->epfd, EPOLL_CTL_DEL, p->down, NULL);
                p->down_mask = 0;
                if (p->spliced) { /* the rest of the answer is received and dropped */
                    lane_move_spliced(L, p);
                } else if (p->state == S_OUT) {
                    lane_finish(L, p);
                }
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

